import Foundation
import Hummingbird
import HTTPTypes
import Logging
import NanoGateCore
import NanoGateStorage
import NIOCore
import NIOFoundationCompat
import Upstream

/// Google's own API, passed through for clients that use Google's SDKs (`google-genai`):
/// `POST /v1beta/models/{model}:generateContent` and `:streamGenerateContent` (and the same
/// under `/v1/`), `GET /v1beta/models` and `GET /v1beta/models/{model}`.
///
/// The NanoGate key comes in `x-goog-api-key`, `?key=` or `Authorization: Bearer`; `{model}` is
/// a catalog name or an upstream id. The request goes through the same pipeline as every other
/// (channels, limits, reservation, usage log), and Google's answer is relayed as Google sent it:
/// image bytes stay base64 text end to end, never decoded. Errors are Google's shape
/// (`{"error":{"code","message","status"}}`, see `GoogleErrorShape`).
struct NativeController {
    let catalog: ModelCatalog
    let pipeline: RequestPipeline
    let maxRequestBytes: Int

    static let sseHeaders: HTTPFields = [.contentType: "text/event-stream", .cacheControl: "no-cache", .init("X-Accel-Buffering")!: "no"]

    func addRoutes(to group: RouterGroup<GatewayRequestContext>, listModels: Bool) {
        group.post("models/{id}") { request, context in
            try await generate(request, context: context)
        }
        guard listModels else { return }
        group.get("models") { _, context in
            try NanoGateServer.json(ModelList(models: models(for: context.identity).map(GoogleModel.init)), sortedKeys: false)
        }
        group.get("models/{id}") { _, context in
            let name = (context.parameters.get("id") ?? "").removingPercentEncoding ?? ""
            let bare = name.hasPrefix("models/") ? String(name.dropFirst(7)) : name
            guard let model = resolve(bare, key: context.identity) else { throw GatewayError.unknownModel(bare, known: models(for: context.identity).map(\.name)) }
            return try NanoGateServer.json(GoogleModel(model), sortedKeys: false)
        }
    }

    /// The models a key may use.
    func models(for key: APIKey?) -> [CatalogModel] {
        guard let key else { return [] }
        return catalog.models.filter { key.mayUse(model: $0.name) }
    }

    /// A catalog name, or an upstream id the catalog serves (its first model by that id).
    func resolve(_ name: String, key: APIKey?) -> CatalogModel? {
        Self.resolve(name, in: catalog, key: key)
    }

    static func resolve(_ name: String, in catalog: ModelCatalog, key: APIKey?) -> CatalogModel? {
        let candidates = catalog.model(named: name).map { [$0] } ?? catalog.models.filter { $0.upstreamModel == name }
        return candidates.first { key?.mayUse(model: $0.name) ?? false }
    }

    /// `GET /v1beta/models`' entries, shaped as Google's `Model`.
    struct GoogleModel: Codable {
        var name: String
        var baseModelId: String
        var version = "nanogate"
        var displayName: String
        var description: String
        var inputTokenLimit = 65_536
        var outputTokenLimit = 32_768
        var supportedGenerationMethods = ["generateContent", "streamGenerateContent"]

        init(_ model: CatalogModel) {
            name = "models/\(model.name)"
            baseModelId = model.upstreamModel
            displayName = model.name
            description = "Served by NanoGate as \(model.upstreamModel) (\(model.family.rawValue))."
        }
    }

    struct ModelList: Codable {
        var models: [GoogleModel]
    }

    func generate(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        // `nano-banana%3AgenerateContent` (a client that encodes the colon) is the same method.
        let target = (context.parameters.get("id") ?? "").removingPercentEncoding ?? ""
        guard let colon = target.lastIndex(of: ":") else {
            throw GatewayError(status: 404, type: "invalid_request_error", code: "not_found", param: nil, message: "Unknown method: POST \(request.uri.path).")
        }
        let name = String(target[..<colon])
        let method = String(target[target.index(after: colon)...])
        guard method == "generateContent" || method == "streamGenerateContent" else {
            throw GatewayError(status: 404, type: "invalid_request_error", code: "not_found", param: nil, message: "Method not found: \(method).")
        }
        let key = try context.requireKey()
        guard let model = resolve(name, key: key) else {
            throw GatewayError.unknownModel(name, known: models(for: key).map(\.name))
        }
        let body = try await request.collectBody(limit: maxRequestBytes)
        let gemini: GeminiWire.Request
        do {
            gemini = try SplicedJSON.decode(GeminiWire.Request.self, from: body)
        } catch {
            throw GatewayError.invalidBody("The body is not a GenerateContentRequest: \(error)")
        }
        guard !gemini.contents.isEmpty, gemini.contents.allSatisfy({ !($0.parts ?? []).isEmpty }) else {
            throw GatewayError.invalidParameter("contents", "contents must not be empty, and every content needs parts.")
        }
        let imageConfig = gemini.generationConfig?.imageConfig
        let spec = ImageSpec(
            aspectRatio: imageConfig?.aspectRatio.flatMap(AspectRatio.init(rawValue:)),
            imageSize: imageConfig?.imageSize.flatMap { ImageSize(rawValue: $0.uppercased()) }
        )
        let lastTurn = gemini.contents.last?.parts ?? []
        let prompt = lastTurn.compactMap(\.text).joined(separator: "\n")
        let inputImages = gemini.contents.reduce(0) { $0 + ($1.parts ?? []).filter { $0.inlineData != nil }.count }
        let endpoint: Endpoint = method == "generateContent" ? .geminiGenerateContent : .geminiStreamGenerateContent
        // Google's own `serviceTier` passes through, within what the key may use.
        var requestedTier: ServiceTier?
        if let text = gemini.serviceTier {
            guard let known = ServiceTier(rawValue: text.lowercased()) else {
                throw GatewayError.invalidParameter("serviceTier", "serviceTier must be flex, standard or priority.", code: "unsupported_value")
            }
            requestedTier = known
        }
        let tier = try pipeline.tier(requestedTier, key: key)
        let settlement = try await pipeline.open(
            key: key, endpoint: endpoint, model: model, info: RequestInfo(requestID: context.requestID, started: context.started, observation: context.observation, requestedSize: spec.label),
            estimateMicroUSD: pipeline.estimate(key: key, model: model, spec: spec, count: 1, prompt: prompt, inputImages: inputImages, tier: tier),
            tier: tier, logger: context.logger
        )
        if method == "generateContent" {
            let answer = try await pipeline.settling(settlement, logger: context.logger) { () throws(GatewayError) -> GeminiWire.Response in
                let answer = try await pipeline.generate(gemini, size: spec.imageSize, settlement: settlement, logger: context.logger)
                settlement.delivered(images: Self.finalImages(in: answer), usage: ImageTranslation.usage(of: answer.usageMetadata))
                return answer
            }
            var response = try Self.json(answer, upstreamModel: settlement.servedBy.id)
            response.headers[ImagesController.costHeader] = Pricing.usdText(settlement.chargeMicroUSD)
            return response
        }
        let events: GeminiEventStream
        do {
            events = try await pipeline.stream(gemini, size: spec.imageSize, settlement: settlement, logger: context.logger)
        } catch {
            await pipeline.settle(settlement, status: error.status, errorCode: error.code, logger: context.logger)
            throw error
        }
        return streamed(events, settlement: settlement, logger: context.logger)
    }

    /// Google's events relayed as SSE. Usage is Google's last figure. Whatever reached the
    /// client is charged, text and thoughts included (a `["TEXT"]` answer costs what
    /// `:generateContent` charges for it): a client that leaves after something was written is
    /// charged (the rest of the stream is read, unwritten, for Google's final usage); one that
    /// leaves before anything was written costs nothing and the upstream stream is dropped. A
    /// stream Google breaks before its image costs nothing (a failed answer is never charged).
    func streamed(_ events: GeminiEventStream, settlement: Settlement, logger: Logger) -> Response {
        var headers = Self.sseHeaders
        headers[ImagesController.upstreamModelHeader] = settlement.servedBy.id
        let pipeline = self.pipeline
        return Response(status: .ok, headers: headers, body: .init { writer in
            var usage: GeminiWire.UsageMetadata?
            var images = 0
            var wroteContent = false
            var clientGone = false
            var failure: GatewayError?
            do {
                for try await event in events {
                    if let metadata = event.usageMetadata { usage = metadata }
                    let count = Self.finalImages(in: event)
                    guard !clientGone else { continue }
                    var line = ByteBuffer(string: "data: ")
                    var json = try SplicedJSON.encodeJoined(event)
                    line.writeBuffer(&json)
                    line.writeString("\r\n\r\n")
                    do {
                        try await writer.write(line)
                        images += count
                        if Self.hasContent(event) { wroteContent = true }
                    } catch {
                        clientGone = true
                        // Nothing delivered: stop here, nothing to charge.
                        if !wroteContent { break }
                    }
                }
            } catch let error as UpstreamError {
                failure = GatewayError(upstream: error)
            } catch {
                failure = .badGateway("The stream from the upstream broke.")
            }
            if let failure, !clientGone, images == 0 {
                // Google failed mid-stream before any image: say so in Google's shape, as an event.
                var line = ByteBuffer(string: "data: ")
                line.writeBytes(GoogleErrorShape.body(for: failure))
                line.writeString("\r\n\r\n")
                try? await writer.write(line)
            }
            let used = ImageTranslation.usage(of: usage)
            settlement.billed(used)
            if let usage { settlement.served(tier: ServiceTier(echoed: usage.serviceTier)) }
            let charged = images > 0 || (wroteContent && failure == nil)
            if charged { settlement.delivered(images: images, usage: used) }
            let outcome = charged ? nil : (failure ?? (clientGone ? GatewayError.clientDisconnected : nil))
            await pipeline.settle(settlement, status: outcome?.status ?? 200, errorCode: outcome?.code, logger: logger)
            try? await writer.finish(nil)
        })
    }

    /// Whether an event carries any part (text, thought or image) for the client.
    static func hasContent(_ response: GeminiWire.Response) -> Bool {
        (response.candidates ?? []).contains { !($0.content?.parts ?? []).isEmpty }
    }

    /// Final (non-thought) images in an answer.
    static func finalImages(in response: GeminiWire.Response) -> Int {
        (response.candidates ?? []).reduce(0) { $0 + ($1.content?.parts ?? []).filter(\.isFinalImage).count }
    }

    static func json(_ answer: GeminiWire.Response, upstreamModel: String) throws -> Response {
        try NanoGateServer.json(answer, headers: [ImagesController.upstreamModelHeader: upstreamModel], sortedKeys: false)
    }
}

/// Google's error shape, for the native routes: `{"error":{"code":404,"message":"…","status":"NOT_FOUND"}}`.
enum GoogleErrorShape {
    /// Whether a request came in by Google's API (its errors then use Google's shape).
    static func applies(to request: Request) -> Bool {
        let path = request.uri.path
        return path.hasPrefix("/v1beta/") || path == "/v1beta" || path.contains(":generateContent") || path.contains(":streamGenerateContent")
            || (path.hasPrefix("/v1/models") && request.headers[.authorization] == nil && request.headers[GoogleKey.header] != nil)
    }

    static func status(for code: Int) -> String {
        switch code {
        case 400, 413, 422: "INVALID_ARGUMENT"
        case 401: "UNAUTHENTICATED"
        case 402, 403: "PERMISSION_DENIED"
        case 404: "NOT_FOUND"
        case 405: "UNIMPLEMENTED"
        case 408, 504: "DEADLINE_EXCEEDED"
        case 409: "ABORTED"
        case 429: "RESOURCE_EXHAUSTED"
        case 499: "CANCELLED"
        case 500: "INTERNAL"
        case 502, 503: "UNAVAILABLE"
        default: code >= 500 ? "INTERNAL" : "FAILED_PRECONDITION"
        }
    }

    static func body(for error: GatewayError) -> [UInt8] {
        struct Envelope: Encodable {
            struct Status: Encodable {
                var code: Int
                var message: String
                var status: String
            }
            var error: Status
        }
        let envelope = Envelope(error: .init(code: error.status, message: error.message, status: status(for: error.status)))
        return Array((try? JSONEncoder().encode(envelope)) ?? Data())
    }
}

/// The native routes' key header.
enum GoogleKey {
    static let header = HTTPField.Name("x-goog-api-key")!
}
