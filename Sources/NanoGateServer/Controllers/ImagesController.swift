import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NanoGateCore
import NanoGateStorage
import NIOCore
import NIOFoundationCompat

/// `POST /v1/images/generations` and `POST /v1/images/edits`.
struct ImagesController {
    let catalog: ModelCatalog
    let pipeline: RequestPipeline
    let publicURL: PublicURL
    let maxJSONBodyBytes: Int
    let inputs: InputImageLoader
    /// How often a silent image stream gets an SSE comment.
    let keepAliveInterval: Duration
    /// Background jobs (`Prefer: respond-async`); nil: answered inline only.
    var jobs: ImageJobs?
    /// `b64_json` answers streamed into the client's where the request allows
    /// (`NANOGATE_STREAM_IMAGES=on`; `ImagesController+StreamThrough.swift`).
    var streamImages = false

    /// Turns a request's fields into the one `ImageRequest` every path runs.
    var validator: ImageRequestValidator { ImageRequestValidator(catalog: catalog) }

    /// The OpenAI paths and the spec's singular spellings (`/v1/image/generations`, its endpoint
    /// table), one handler each.
    static let pathPrefixes = ["images", "image"]

    func addRoutes(to group: RouterGroup<GatewayRequestContext>) {
        for prefix in Self.pathPrefixes {
            group.post("\(prefix)/generations", use: generations)
            group.post("\(prefix)/edits", use: edits)
        }
    }

    @Sendable func generations(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        let key = try context.requireKey()
        let baseURL = publicURL.base(of: request)
        var request = request
        let body = try await request.collectBody(limit: maxJSONBodyBytes)
        request.body = RequestBody(buffer: body)
        if let jobs, ImageJobs.requested(request, body: body) {
            return try await jobs.submit(request, body: body, key: key, endpoint: .imageGenerations, baseURL: baseURL, context: context) { replay in
                try await generationJob(replay, key: key, baseURL: baseURL)
            }
        }
        let job = try await generationJob(request, key: key, baseURL: baseURL)
        context.logger.info("image generation", metadata: ["model": "\(job.model.name)", "n": "\(job.count)", "format": "\(job.format.rawValue)"])
        return try await answer(job, request: request, context: context)
    }

    /// A generation request read and validated.
    func generationJob(_ request: Request, key: APIKey, baseURL: String) async throws -> ImageRequest {
        let input = try await request.decodeJSON(ImageGenerationRequest.self, limit: maxJSONBodyBytes)
        return try validator.validate(input, key: key, baseURL: baseURL, endpoint: .imageGenerations)
    }

    /// Runs a validated job: one JSON body, or OpenAI's image stream (`stream: true`). The
    /// `X-NanoGate-Upstream-Model` header names the Google model that answered (the fallback
    /// when the catalog's id is retired).
    func answer(_ job: ImageRequest, request: Request, context: GatewayRequestContext) async throws -> Response {
        let settlement = try await open(job, inputImages: job.inputImages.count, context: context)
        return try await answer(job, settlement: settlement, request: request, context: context)
    }

    /// The request's account: its limits checked and its worst case reserved, before any input
    /// image is fetched or Google called (`inputImages`: how many it names, fetched or not).
    func open(_ job: ImageRequest, inputImages: Int, context: GatewayRequestContext) async throws(GatewayError) -> Settlement {
        let tier = try pipeline.tier(job.options.serviceTier, key: job.key)
        let estimate = pipeline.estimate(key: job.key, model: job.model, spec: job.spec, count: job.count, prompt: job.prompt, inputImages: inputImages, tier: tier)
        let info = RequestInfo(requestID: context.requestID, started: context.started, observation: context.observation, requestedSize: job.spec.label)
        return try await pipeline.open(key: job.key, endpoint: job.endpoint, model: job.model, info: info, estimateMicroUSD: estimate, tier: tier, logger: context.logger)
    }

    /// Runs a validated job on its open account.
    func answer(_ job: ImageRequest, settlement: Settlement, request: Request, context: GatewayRequestContext) async throws -> Response {
        let logger = context.logger
        if job.options.stream {
            return streamed(job, settlement: settlement, logger: logger)
        }
        if streamsThrough(job, request: request) {
            return try await streamThrough(job, settlement: settlement, logger: logger)
        }
        if let interval = KeepAliveAnswer.requested(request, defaultInterval: keepAliveInterval) ?? job.model.keepAliveSeconds.map({ .seconds($0) }) {
            let pipeline = self.pipeline
            return KeepAliveAnswer.response(interval: interval, survivesDisconnect: request.headers[IdempotencyMiddleware.header] != nil, logger: logger) {
                try SplicedJSON.encode(try await pipeline.generateImages(job, settlement: settlement, logger: logger))
            }
        }
        settlement.commitAlongsideAnswer()
        var response: Response
        switch pipeline.answerPath(for: job) {
        case .whole(let held):
            response = try json(try await pipeline.generateImages(job, settlement: settlement, logger: logger), sortedKeys: false) {
                await settlement.committed()
                withExtendedLifetime(held) {}  // written but its last byte: the answer's memory goes with the token
            }
        case .spooled:
            response = try Self.spooled(try await pipeline.generateSpooledImages(job, settlement: settlement, logger: logger), beforeLastByte: settlement.committed)
        }
        response.headers[Self.upstreamModelHeader] = settlement.servedBy.id
        response.headers[Self.costHeader] = Pricing.usdText(settlement.chargeMicroUSD)
        return response
    }

    /// A spooled answer (`RequestPipeline.generateSpooledImages`): its JSON with each image's
    /// base64 read from its file in place of the image's marker, its length known up front. The
    /// files go once it is written (or when the answer is dropped unwritten).
    static func spooled(_ answer: RequestPipeline.SpooledAnswer, beforeLastByte: @escaping @Sendable () async -> Void) throws -> Response {
        var joined = ByteBuffer()
        for var piece in try SplicedJSON.encode(answer.response) { joined.writeBuffer(&piece) }
        var text = Substring(String(buffer: joined))
        var segments: [ByteBuffer] = []
        for index in answer.files.sizes.indices {
            guard let range = text.range(of: RequestPipeline.SpooledAnswer.marker(index)) else { throw GatewayError.internal("The answer could not be encoded.") }
            segments.append(ByteBuffer(string: String(text[..<range.lowerBound])))
            text = text[range.upperBound...]
        }
        let last = ByteBuffer(string: String(text))
        let length = segments.reduce(last.readableBytes) { $0 + $1.readableBytes } + answer.files.sizes.reduce(0, +)
        // The last byte waits for `beforeLastByte` (the settlement's ledger write).
        let lead = last.getSlice(at: last.readerIndex, length: last.readableBytes - 1)!
        let lastByte = last.getSlice(at: last.readerIndex + last.readableBytes - 1, length: 1)!
        let files = answer.files
        return Response(status: .ok, headers: [.contentType: "application/json"], body: ResponseBody(contentLength: length) { [segments] writer in
            defer { files.removeAll() }
            for (index, path) in files.files.enumerated() {
                try await writer.write(segments[index])
                try await SpoolFiles.stream(path, bytes: files.sizes[index]) { try await writer.write($0) }
            }
            try await writer.write(lead)
            await beforeLastByte()
            try await writer.write(lastByte)
            try await writer.finish(nil)
        })
    }

    static let upstreamModelHeader = HTTPField.Name("X-NanoGate-Upstream-Model")!
    /// The usage row's charge of a whole answer, in USD (`0.038713`).
    static let costHeader = HTTPField.Name("X-NanoGate-Cost")!

    /// Runs a background job's request: the images answer as JSON (its usage row carries the
    /// job's id, as request id and as the job it belongs to).
    func runInBackground(_ job: ImageRequest, jobID: String, logger: Logger) async throws(GatewayError) -> ByteBuffer {
        let tier = try pipeline.tier(job.options.serviceTier, key: job.key, background: true)
        let estimate = pipeline.estimate(key: job.key, model: job.model, spec: job.spec, count: job.count, prompt: job.prompt, inputImages: job.inputImages.count, tier: tier)
        let info = RequestInfo(requestID: jobID, started: .now, observation: nil, requestedSize: job.spec.label, jobID: jobID)
        let settlement = try await pipeline.open(key: job.key, endpoint: job.endpoint, model: job.model, info: info, estimateMicroUSD: estimate, tier: tier, logger: logger)
        let answer = try await pipeline.generateImages(job, settlement: settlement, logger: logger)
        do {
            return try SplicedJSON.encodeJoined(answer)
        } catch {
            throw .internal("The answer could not be encoded.")
        }
    }

    /// Runs a stored job for its key: the validated request it was stored as, its input
    /// images read back from the image store (nothing parsed or validated again).
    func runStoredJob(_ record: ImageJobRecord, key: APIKey, images: any ImageRepository, logger: Logger) async throws(GatewayError) -> ByteBuffer {
        guard record.contentType == StoredImageRequest.contentType,
            let stored = try? JSONDecoder().decode(StoredImageRequest.self, from: Data(record.body))
        else {
            throw GatewayError.invalidBody("This job was stored by an earlier version of the gateway, which kept the raw request; submit it again.")
        }
        let job = try await stored.request(key: key, catalog: catalog, images: images)
        return try await runInBackground(job, jobID: record.id, logger: logger)
    }
}

/// `GET /v1/files/images/{name}?expires=…&signature=…`: the stored image, while the URL is valid.
struct ImageFilesController {
    /// The folder the route serves, and the secret its URLs are signed with.
    let store: ImageStore
    let fileIO = FileIO()

    func addRoutes(to router: Router<GatewayRequestContext>) {
        router.get("v1/files/images/{name}", use: serve)
    }

    @Sendable func serve(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        let name = context.parameters.get("name") ?? ""
        let query = request.uri.queryParameters
        let expires = query.get("expires", as: Int.self) ?? 0
        switch store.check(name: name, expires: query.get("expires", as: Int.self), signature: query.get("signature"), now: Date()) {
        case .badSignature:
            throw GatewayError(status: 403, type: "invalid_request_error", code: "invalid_signature", param: nil, message: "This image URL is not valid (its signature does not match).")
        case .expired:
            throw GatewayError(status: 410, type: "invalid_request_error", code: "url_expired", param: nil, message: "This image URL has expired. Image URLs are valid for a few hours; download images promptly.")
        case .valid:
            break
        }
        guard let path = store.path(of: name), FileManager.default.fileExists(atPath: path) else {
            throw GatewayError(status: 404, type: "invalid_request_error", code: "not_found", param: nil, message: "This image is no longer stored.")
        }
        let ext = (name as NSString).pathExtension
        let mime = ImageStore.mimeType(ofExtension: ext)
        // One read for the whole image (a few MB): far fewer thread hops than 128 KiB chunks.
        let body: ResponseBody
        do {
            body = try await fileIO.loadFile(path: path, context: context, chunkLength: 8 * 1024 * 1024)
        } catch {
            // Swept between the check above and the read.
            throw GatewayError(status: 404, type: "invalid_request_error", code: "not_found", param: nil, message: "This image is no longer stored.")
        }
        return Response(
            status: .ok,
            headers: [
                .contentType: mime, .cacheControl: "private, max-age=\(max(0, expires - Int(Date().timeIntervalSince1970)))",
                // Never let a browser guess another type for stored bytes.
                .init("X-Content-Type-Options")!: "nosniff",
            ],
            body: body
        )
    }
}
