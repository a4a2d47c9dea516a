import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NanoGateCore
import NanoGateStorage
import NIOCore
import NIOFoundationCompat

/// Background image jobs: `POST /v1/images/generations` or `/v1/images/edits` with `Prefer:
/// respond-async` (or `"async": true` in a JSON body) answers 202 at once; the job is stored in
/// the database, run by any instance's `JobRunner`, and read at `GET /v1/images/jobs/{id}` by
/// the key that made it. For generations that outlast every proxy and client timeout.
struct ImageJobs: Sendable {
    let store: SQLStore
    /// How long a finished job's answer is kept (the image URLs in it expire then too).
    let resultTTL: Duration
    let webhookPolicy: WebhookPolicy
    /// Admission: the key's balance and per-minute limit are checked at submission.
    let pipeline: RequestPipeline
    /// Where a job's input images are kept until it runs.
    let images: any ImageRepository
    /// Jobs one key may have queued or running at once (`NANOGATE_JOB_QUEUE_PER_KEY`).
    var maxPendingPerKey = 16

    static let preferAsync = "respond-async"

    /// What a JSON body may say about running in the background.
    struct AsyncFields: Decodable {
        var async: Bool?
        var webhook_url: String?
    }

    /// Whether the client asked for a job: `Prefer: respond-async`, or `"async": true` in `body`.
    static func requested(_ request: Request, body: ByteBuffer? = nil) -> Bool {
        let prefers = request.headers[values: .init("Prefer")!].contains { field in
            field.split(separator: ",").contains { $0.split(separator: ";")[0].trimmingCharacters(in: .whitespaces).lowercased() == preferAsync }
        }
        if prefers { return true }
        guard let body else { return false }
        return (try? JSONDecoder().decode(AsyncFields.self, from: body))?.async == true
    }

    /// Validates the request as if it ran now (bad input is a 400 now, not a failed job
    /// later), admits it within the key's means (its balance covers the job's worst case, its
    /// per-minute limit counts the submission, its queue has room), stores it, and answers 202
    /// with the job and its `Location`.
    func submit(
        _ request: Request, body: ByteBuffer, key: APIKey, endpoint: Endpoint, baseURL: String, context: GatewayRequestContext,
        prepare: (Request) async throws -> ImageRequest
    ) async throws -> Response {
        // A key with nothing left to spend fetches nothing (the precise check follows validation).
        if let balance = key.balanceMicroUSD, balance <= 0 {
            throw GatewayError.insufficientQuota(balanceMicroUSD: balance, neededMicroUSD: 1)
        }
        // Queue room and the per-minute limit too, before an edit's image URLs are fetched.
        guard try await store.pendingJobs(keyID: key.id) < maxPendingPerKey else {
            throw GatewayError(
                status: 429, type: "rate_limit_error", code: "job_queue_full", param: nil,
                message: "This key has \(maxPendingPerKey) image jobs queued or running; wait for one to finish.", retryAfterSeconds: 5
            )
        }
        try await pipeline.limiter.admitRate(key, logger: context.logger)
        var replay = request
        replay.body = RequestBody(buffer: body)
        let job = try await prepare(replay)
        if job.options.stream {
            throw GatewayError.invalidParameter("stream", "A background job cannot stream; leave out 'stream' or 'Prefer: respond-async'.")
        }
        let tier = try pipeline.tier(job.options.serviceTier, key: key, background: true)
        if let balance = key.balanceMicroUSD {
            let estimate = pipeline.estimate(key: key, model: job.model, spec: job.spec, count: job.count, prompt: job.prompt, inputImages: job.inputImages.count, tier: tier)
            guard balance >= estimate else { throw GatewayError.insufficientQuota(balanceMicroUSD: balance, neededMicroUSD: estimate) }
        }
        let fields = (request.headers[.contentType] ?? "").lowercased().hasPrefix("application/json") ? try? JSONDecoder().decode(AsyncFields.self, from: body) : nil
        var secret: String?
        if let webhook = fields?.webhook_url, !webhook.isEmpty {
            try webhookPolicy.checkSyntax(webhook)
            secret = "whsec_" + randomHex(bytes: 24)
        }
        // The validated request is what is kept (its input images in the image store), never
        // the HTTP body: the runner calls the pipeline with it as it is.
        let stored: [UInt8]
        do {
            stored = Array(try JSONEncoder().encode(try await StoredImageRequest.saving(job, in: images)))
        } catch {
            context.logger.error("could not keep a job's request", metadata: ["error": "\(String(reflecting: error))"])
            throw GatewayError.internal("The job could not be stored; retry.")
        }
        let record = ImageJobRecord(
            id: "imgjob_" + randomHex(bytes: 12), keyID: key.id, endpoint: endpoint.rawValue, model: job.model.name,
            contentType: StoredImageRequest.contentType, body: stored, baseURL: baseURL,
            webhookURL: fields?.webhook_url.flatMap { $0.isEmpty ? nil : $0 }, webhookSecret: secret
        )
        do {
            try await store.createJob(record)
        } catch {
            context.logger.error("could not store a job", metadata: ["error": "\(String(reflecting: error))"])
            throw GatewayError.internal("The job could not be stored; retry.")
        }
        context.logger.info("image job queued", metadata: ["job": "\(record.id)", "model": "\(record.model)"])
        var view = JobView(record)
        view.webhook_secret = secret
        var response = try Self.json(view, status: .accepted)
        response.headers[.location] = "/v1/images/jobs/\(record.id)"
        return response
    }

    /// A job as the API shows it; `result` is the usual images answer, spliced in as stored.
    struct JobView: Encodable {
        var id: String
        var object = "image.job"
        var status: String
        var endpoint: String
        var model: String
        var created_at: Int
        var completed_at: Int?
        var expires_at: Int?
        var attempts: Int
        var webhook_url: String?
        /// Only in the 202 answer: the key the webhook's signature is made with.
        var webhook_secret: String?
        var error: ErrorObject?
        var rawResult: String?

        struct ErrorObject: Codable {
            var message: String
            var type: String
            var param: String?
            var code: String?
        }

        enum CodingKeys: String, CodingKey {
            case id, object, status, endpoint, model, created_at, completed_at, expires_at, attempts, webhook_url, webhook_secret, error
        }

        init(_ record: ImageJobRecord) {
            id = record.id
            status = record.status.rawValue
            endpoint = record.endpoint
            model = record.model
            created_at = Int(record.createdAt.timeIntervalSince1970)
            completed_at = record.completedAt.map { Int($0.timeIntervalSince1970) }
            expires_at = record.expiresAt.map { Int($0.timeIntervalSince1970) }
            attempts = record.attempts
            webhook_url = record.webhookURL
            error = record.error.flatMap { try? JSONDecoder().decode(ErrorResponseBody.self, from: Data($0.utf8)).error }
            rawResult = record.result
        }

        struct ErrorResponseBody: Decodable { var error: ErrorObject }

        /// The JSON: the fields, then `"result":` and the stored answer (never re-parsed: a 4K
        /// answer is tens of MB of base64).
        func encoded() throws -> ByteBuffer {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            var fields = try encoder.encode(self)
            if let rawResult {
                fields.removeLast()  // "}"
                fields.append(contentsOf: Array(#","result":"#.utf8))
                fields.append(contentsOf: Array(rawResult.utf8))
                fields.append(UInt8(ascii: "}"))
            }
            return ByteBuffer(data: fields)
        }
    }

    /// The job with its answer read from the image store (rows of earlier versions hold it).
    static func withAnswer(_ record: ImageJobRecord, images: any ImageRepository) async -> ImageJobRecord {
        guard record.result == nil, let name = record.resultName, let bytes = try? await images.load(name: name) else { return record }
        var record = record
        record.result = String(decoding: bytes, as: UTF8.self)
        return record
    }

    static func json(_ view: JobView, status: HTTPResponse.Status = .ok) throws -> Response {
        Response(status: status, headers: [.contentType: "application/json", .cacheControl: "no-store"], body: .init(byteBuffer: try view.encoded()))
    }
}

/// `GET /v1/images/jobs`, `GET /v1/images/jobs/{id}`, `DELETE /v1/images/jobs/{id}`: only the
/// key that made a job sees it (another key gets the same 404 as for no job at all).
struct ImageJobsController {
    let store: SQLStore
    /// Where finished jobs' answers are kept.
    let images: any ImageRepository

    func addRoutes(to group: RouterGroup<GatewayRequestContext>) {
        group.get("images/jobs", use: list)
        group.get("images/jobs/{id}", use: show)
        group.delete("images/jobs/{id}", use: cancel)
    }

    static func notFound(_ id: String) -> GatewayError {
        GatewayError(status: 404, type: "invalid_request_error", code: "job_not_found", param: "id", message: "No image job '\(id)' for this key (finished jobs are kept as long as their image URLs).")
    }

    @Sendable func show(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        let key = try context.requireKey()
        let id = context.parameters.get("id") ?? ""
        guard let job = try await store.job(id: id, keyID: key.id) else { throw Self.notFound(id) }
        return try ImageJobs.json(ImageJobs.JobView(await ImageJobs.withAnswer(job, images: images)))
    }

    @Sendable func list(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        let key = try context.requireKey()
        let limit = request.uri.queryParameters.get("limit", as: Int.self) ?? 100
        let jobs = try await store.jobs(keyID: key.id, limit: limit)
        // The list names the jobs; each one's answer is read at its own URL.
        var views = jobs.map(ImageJobs.JobView.init)
        for index in views.indices { views[index].rawResult = nil }
        var body = ByteBuffer(string: #"{"object":"list","data":["#)
        for (index, view) in views.enumerated() {
            if index > 0 { body.writeString(",") }
            var encoded = try view.encoded()
            body.writeBuffer(&encoded)
        }
        body.writeString("]}")
        return Response(status: .ok, headers: [.contentType: "application/json", .cacheControl: "no-store"], body: .init(byteBuffer: body))
    }

    @Sendable func cancel(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        let key = try context.requireKey()
        let id = context.parameters.get("id") ?? ""
        if try await store.cancelJob(id: id, keyID: key.id), let job = try await store.job(id: id, keyID: key.id) {
            return try ImageJobs.json(ImageJobs.JobView(job))
        }
        guard let job = try await store.job(id: id, keyID: key.id) else { throw Self.notFound(id) }
        throw GatewayError(
            status: 409, type: "invalid_request_error", code: "job_not_cancellable", param: "id",
            message: "Image job '\(id)' is \(job.status.rawValue); only a queued job can be cancelled."
        )
    }
}
