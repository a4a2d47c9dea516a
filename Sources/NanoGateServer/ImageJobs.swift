import AsyncHTTPClient
import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NanoGateCore
import NanoGateStorage
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import ServiceLifecycle
import Synchronization

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
        _ request: Request, body: ByteBuffer, key: APIKey, endpoint: String, baseURL: String, context: GatewayRequestContext,
        prepare: (Request) async throws -> ImageJob
    ) async throws -> Response {
        // A key with nothing left to spend fetches nothing (the precise check follows validation).
        if let balance = key.balanceMicroUSD, balance <= 0 {
            throw GatewayError.insufficientQuota(balanceMicroUSD: balance, neededMicroUSD: 1)
        }
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
        guard try await store.pendingJobs(keyID: key.id) < maxPendingPerKey else {
            throw GatewayError(
                status: 429, type: "rate_limit_error", code: "job_queue_full", param: nil,
                message: "This key has \(maxPendingPerKey) image jobs queued or running; wait for one to finish.", retryAfterSeconds: 5
            )
        }
        try await pipeline.limiter.admitRate(key, logger: context.logger)
        let fields = (request.headers[.contentType] ?? "").lowercased().hasPrefix("application/json") ? try? JSONDecoder().decode(AsyncFields.self, from: body) : nil
        var secret: String?
        if let webhook = fields?.webhook_url, !webhook.isEmpty {
            try webhookPolicy.checkSyntax(webhook)
            secret = "whsec_" + randomHex(bytes: 24)
        }
        let record = ImageJobRecord(
            id: "imgjob_" + randomHex(bytes: 12), keyID: key.id, endpoint: endpoint, model: job.model.name,
            contentType: request.headers[.contentType] ?? "application/json", body: Array(body.readableBytesView), baseURL: baseURL,
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

    static func json(_ view: JobView, status: HTTPResponse.Status = .ok) throws -> Response {
        Response(status: status, headers: [.contentType: "application/json", .cacheControl: "no-store"], body: .init(byteBuffer: try view.encoded()))
    }
}

/// `GET /v1/images/jobs`, `GET /v1/images/jobs/{id}`, `DELETE /v1/images/jobs/{id}`: only the
/// key that made a job sees it (another key gets the same 404 as for no job at all).
struct ImageJobsController {
    let store: SQLStore

    func addRoutes(to group: RouterGroup<GatewayRequestContext>) {
        group.get("images/jobs", use: list)
        group.get("images/jobs/{id}", use: show)
        group.delete("images/jobs/{id}", use: cancel)
    }

    static func notFound(_ id: String) -> GatewayError {
        GatewayError(status: 404, type: "invalid_request_error", code: "job_not_found", param: "id", message: "No image job '\(id)' for this key (finished jobs are kept as long as their image URLs).")
    }

    @Sendable func show(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        guard let key = context.apiKey else { throw GatewayError.unauthorized("Missing API key.") }
        let id = context.parameters.get("id") ?? ""
        guard let job = try await store.job(id: id, keyID: key.id) else { throw Self.notFound(id) }
        return try ImageJobs.json(ImageJobs.JobView(job))
    }

    @Sendable func list(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        guard let key = context.apiKey else { throw GatewayError.unauthorized("Missing API key.") }
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
        guard let key = context.apiKey else { throw GatewayError.unauthorized("Missing API key.") }
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

/// Runs queued jobs in the background, a few at a time per instance, until the gateway stops.
/// A job whose gateway died (its lease ran out) is taken over; one charged before its answer
/// was stored is refunded before it runs again, so it is charged once.
struct JobRunner: Service {
    let store: SQLStore
    let owner: String
    let lease: Duration
    let workers: Int
    let resultTTL: Duration
    let pollInterval: Duration
    let webhooks: WebhookSender
    let logger: Logger
    /// Validates the stored request again for its key and runs it: the images answer.
    let execute: @Sendable (ImageJobRecord, APIKey) async throws -> ByteBuffer

    /// How many times a job may start before it fails (its gateways kept dying under it).
    static let maxAttempts = 3

    /// Webhook deliveries in flight at once (each outside the worker slots).
    var webhookConcurrency = 4

    func run() async throws {
        let running = RunningJobs()
        // Finished jobs whose webhook is due: delivered beside the workers, a few at a time, so
        // a slow receiver never holds a worker (nor another key's job) back.
        let (finished, finishedInput) = AsyncStream.makeStream(of: ImageJobRecord.self, bufferingPolicy: .bufferingOldest(1024))
        await withDiscardingTaskGroup { group in
            group.addTask {
                await withTaskGroup(of: Void.self) { deliveries in
                    var active = 0
                    for await job in finished {
                        if active >= webhookConcurrency {
                            await deliveries.next()
                            active -= 1
                        }
                        deliveries.addTask {
                            var logger = self.logger
                            logger[metadataKey: "job"] = "\(job.id)"
                            await webhooks.deliver(job, logger: logger)
                        }
                        active += 1
                    }
                }
            }
            // Leases of the jobs running here, renewed while they run.
            group.addTask {
                while !Task.isCancelled && !Task.isShuttingDownGracefully {
                    try? await cancelWhenGracefulShutdown { try await Task.sleep(for: lease / 3) }
                    let ids = Array(running.ids.withLock { $0 })
                    try? await store.renewJobLeases(ids: ids, owner: owner, until: Date().addingTimeInterval(TimeInterval(lease.components.seconds)))
                }
            }
            while !Task.isCancelled && !Task.isShuttingDownGracefully {
                let busy = running.ids.withLock { $0.count } >= workers
                var claimed: ImageJobRecord?
                if !busy {
                    do {
                        claimed = try await store.claimJob(owner: owner, leaseUntil: Date().addingTimeInterval(TimeInterval(lease.components.seconds)))
                    } catch {
                        logger.warning("could not claim a job", metadata: ["error": "\(String(reflecting: error))"])
                    }
                }
                guard let job = claimed else {
                    try? await cancelWhenGracefulShutdown { try await Task.sleep(for: pollInterval) }
                    continue
                }
                running.ids.withLock { _ = $0.insert(job.id) }
                group.addTask {
                    if let finishedJob = await perform(job), finishedJob.webhookURL != nil {
                        if case .dropped = finishedInput.yield(finishedJob) {
                            logger.error("webhook dropped: too many deliveries waiting", metadata: ["job": "\(job.id)"])
                        }
                    }
                    running.ids.withLock { _ = $0.remove(job.id) }
                }
            }
            // Stopping: the running jobs are cancelled and given back (another instance, or
            // this one's restart, runs them), rather than holding the stop for minutes.
            finishedInput.finish()
            group.cancelAll()
        }
    }

    /// Runs a job and stores its outcome; the finished job (for its webhook), or nil.
    private func perform(_ job: ImageJobRecord) async -> ImageJobRecord? {
        var logger = self.logger
        logger[metadataKey: "job"] = "\(job.id)"
        logger.info("image job started", metadata: ["attempt": "\(job.attempts)"])
        let outcome: Result<ByteBuffer, GatewayError>
        if job.attempts > Self.maxAttempts {
            outcome = .failure(.internal("The job was interrupted \(job.attempts - 1) times (its gateway stopped); submit it again."))
        } else {
            do {
                if job.attempts > 1 { try await refundInterruptedRun(job, logger: logger) }
                guard let key = try await store.key(id: job.keyID), key.revokedAt == nil, !key.disabled else {
                    throw GatewayError.unauthorized("The key that made this job was revoked or disabled before it ran.")
                }
                outcome = .success(try await execute(job, key))
            } catch {
                if Task.isCancelled {
                    // The gateway is stopping: the job goes back to the queue (from a task of its
                    // own: the database refuses work from a cancelled one).
                    let (store, owner) = (self.store, self.owner)
                    await Task { try? await store.requeueJob(id: job.id, owner: owner) }.value
                    logger.info("image job given back", metadata: ["reason": "the gateway is stopping"])
                    return nil
                }
                if let error = error as? GatewayError {
                    outcome = .failure(error)
                } else {
                    logger.error("image job failed unexpectedly", metadata: ["error": "\(String(reflecting: error))"])
                    outcome = .failure(.internal("The job failed unexpectedly; the error has been logged."))
                }
            }
        }
        let expires = Date().addingTimeInterval(TimeInterval(resultTTL.components.seconds))
        do {
            switch outcome {
            case .success(let answer):
                try await store.finishJob(id: job.id, owner: owner, status: .succeeded, result: String(buffer: answer), error: nil, expiresAt: expires)
            case .failure(let error):
                let body = String(decoding: (try? JSONEncoder().encode(ErrorResponse(error))) ?? Data(), as: UTF8.self)
                try await store.finishJob(id: job.id, owner: owner, status: .failed, result: nil, error: body, expiresAt: expires)
            }
        } catch {
            logger.error("could not store a job's outcome", metadata: ["error": "\(String(reflecting: error))"])
            return nil
        }
        logger.info("image job finished", metadata: ["status": "\(outcome.isSuccess ? "succeeded" : "failed")"])
        guard job.webhookURL != nil else { return nil }
        return try? await store.job(id: job.id, keyID: job.keyID)
    }

    /// A job taken over may have been charged by the gateway that died before storing its
    /// answer (the answer is lost with it): that charge is refunded (a ledger entry of its own),
    /// and the run now charges once.
    private func refundInterruptedRun(_ job: ImageJobRecord, logger: Logger) async throws {
        let unrefunded = try await store.unrefundedMicroUSD(jobID: job.id, keyID: job.keyID)
        guard unrefunded > 0 else { return }
        try await store.refund(Refund(keyID: job.keyID, jobID: job.id, amountMicroUSD: unrefunded, reason: "job_interrupted"))
        logger.warning("refunded an interrupted job's charge before running it again", metadata: ["micro_usd": "\(unrefunded)"])
    }
}

/// The ids of the jobs running in this instance.
final class RunningJobs: Sendable {
    let ids = Mutex(Set<String>())
}

extension Result {
    var isSuccess: Bool { if case .success = self { true } else { false } }
}

/// Where webhooks may go: the image-fetch policy (no loopback, private or reserved address
/// unless `NANOGATE_ALLOW_PRIVATE_FETCH` or an allowed network; `https` unless plain HTTP is
/// allowed).
struct WebhookPolicy: Sendable {
    let limits: InputLimits

    func checkSyntax(_ url: String) throws(GatewayError) {
        let allowed = limits.allowPlainHTTP ? ["https", "http"] : ["https"]
        guard let components = URLComponents(string: url), let scheme = components.scheme?.lowercased(), allowed.contains(scheme),
            let host = components.host, !host.isEmpty, url.utf8.count <= 2048
        else {
            throw .invalidParameter("webhook_url", "'webhook_url' must be an \(limits.allowPlainHTTP ? "http(s)" : "https") URL.", code: "invalid_webhook_url")
        }
    }
}

/// Delivers a finished job to its `webhook_url`: a POST of the job (as `GET` shows it) with
///
///     NanoGate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(webhook_secret, "<t>.<body>")>
///
/// (the scheme Stripe uses: the timestamp is signed, so a receiver can refuse old replays).
/// Retried with backoff (1, 2, 4, 8 s) until a 2xx; the target is checked like an image fetch.
struct WebhookSender: Sendable {
    let policy: WebhookPolicy
    let resolver: ThreadPoolResolver
    let attempts = 5
    /// The most one attempt may take, from the address look-up to the answer's last byte (a
    /// receiver that trickles its answer is cut off, not waited on).
    var attemptDeadline: Duration = .seconds(10)

    static let signatureHeader = "NanoGate-Signature"

    static func signature(secret: String, timestamp: Int, body: [UInt8]) -> String {
        let mac = HMAC<SHA256>.authenticationCode(for: Array("\(timestamp).".utf8) + body, using: SymmetricKey(data: Array(secret.utf8)))
        return "t=\(timestamp),v1=" + mac.map { String(format: "%02x", $0) }.joined()
    }

    func deliver(_ job: ImageJobRecord, logger: Logger) async {
        guard let url = job.webhookURL, let secret = job.webhookSecret,
            let body = try? ImageJobs.JobView(job).encoded()
        else { return }
        let bytes = Array(body.readableBytesView)
        for attempt in 1...attempts {
            if attempt > 1 {
                try? await Task.sleep(for: .seconds(1 << (attempt - 2)))
            }
            do {
                let status = try await Deadline.run(until: .now.advanced(by: attemptDeadline), orThrow: GatewayError.requestTimeout("The webhook took longer than \(attemptDeadline).")) {
                    try await post(url: url, body: bytes, secret: secret, jobID: job.id)
                }
                if (200..<300).contains(status) {
                    logger.info("webhook delivered", metadata: ["status": "\(status)", "attempt": "\(attempt)"])
                    return
                }
                logger.warning("webhook refused", metadata: ["status": "\(status)", "attempt": "\(attempt)"])
            } catch {
                logger.warning("webhook failed", metadata: ["error": "\(error)", "attempt": "\(attempt)"])
            }
        }
        logger.error("webhook given up", metadata: ["attempts": "\(attempts)"])
    }

    private func post(url: String, body: [UInt8], secret: String, jobID: String) async throws -> Int {
        try policy.checkSyntax(url)
        guard let components = URLComponents(string: url), let rawHost = components.host else { throw GatewayError.invalidParameter("webhook_url", "bad URL") }
        let host = rawHost.hasPrefix("[") && rawHost.hasSuffix("]") ? String(rawHost.dropFirst().dropLast()) : rawHost
        let address = try await resolver.checkedAddress(of: host, limits: policy.limits, param: "webhook_url")
        var configuration = HTTPClient.Configuration()
        configuration.redirectConfiguration = .disallow
        configuration.timeout = .init(connect: .seconds(10), read: .seconds(30))
        configuration.dnsOverride = [host: AddressPolicy.text(address)]
        configuration.connectionPool.retryConnectionEstablishment = false
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        var request = HTTPClientRequest(url: url)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "User-Agent", value: "NanoGate-Webhook")
        request.headers.add(name: "NanoGate-Webhook-Id", value: jobID)
        request.headers.add(name: Self.signatureHeader, value: Self.signature(secret: secret, timestamp: Int(Date().timeIntervalSince1970), body: body))
        request.body = .bytes(ByteBuffer(bytes: body))
        let status: Result<Int, any Error>
        do {
            let response = try await client.execute(request, timeout: .seconds(30))
            _ = try? await response.body.collect(upTo: 64 * 1024)
            status = .success(Int(response.status.code))
        } catch {
            status = .failure(error)
        }
        try? await client.shutdown()
        return try status.get()
    }
}
