public import Hummingbird
import Logging
import NanoGateCore
public import Upstream
import CImageCodecs
import ExtrasBase64
import Foundation
import NIOCore
import NIOFoundationCompat
public import NIOPosix
import Synchronization

/// How the offline Gemini behaves.
public struct EmulatorConfiguration: Sendable {
    /// Keys accepted in `x-goog-api-key`; nil accepts any non-empty key.
    public var acceptedKeys: Set<String>?
    /// Time each generation takes (0 for benchmarks).
    public var latency: Duration
    /// Model id it serves as 2.5 Flash Image.
    public var flashModel: String
    /// Model id it serves as 3 Pro Image.
    public var proModel: String
    /// Model id it serves as 3.1 Flash Image (the one with `imageSize` `512` and 14 ratios);
    /// shut down by Google on 2026-10-29, so retired unless a test serves it again.
    public var flash31Model: String
    /// Model id it serves as Nano Banana 2.1 (`1K`/`2K`/`4K`, 14 ratios; its table assumed).
    public var flash21Model = "gemini-nano-banana-2.1"
    /// Models Google serves only to projects that used them before (2.5 since 2026-09-18, F1):
    /// a "new project" key gets 403 PERMISSION_DENIED naming the model.
    public var projectLimitedModels: Set<String> = ["gemini-2.5-flash-image"]
    /// Keys of new projects (refused on `projectLimitedModels`); the others are old projects.
    public var newProjectKeys: Set<String> = []
    /// Every key is a new project's (a new operator today: `serve --demo --new-project`).
    public var everyKeyIsNewProject = false
    /// Where PNGs are made (seconds of CPU at 4K). In tests the gateway runs in the same process
    /// and its SQLite work uses NIO's shared pool: a pool of the emulator's own keeps the
    /// gateway's queries from queueing behind image encodes.
    public var renderThreadPool: NIOThreadPool = .singleton
    /// Ids Google shut down: `generateContent` answers 404 NOT_FOUND and the model list omits
    /// them. By default the two preview ids retired on 2026-06-25 (wire-formats.md E1); add a
    /// served id to test a gateway's fallback.
    /// And `gemini-3.1-flash-image`, shut down on 2026-10-29 (F1).
    public var retiredModels: Set<String> = ["gemini-3-pro-image-preview", "gemini-3.1-flash-image-preview", "gemini-3.1-flash-image"]
    /// Models per page of `GET /v1beta/models` when the caller asks for more (Google pages too).
    public var maxPageSize = 1000
    /// Ids the model list also offers, as Google lists a new model before a gateway knows it
    /// (`nanogate models check` suggests a catalog entry for an image one); never served.
    public var extraListedModels: [String] = []
    /// Bearer tokens accepted on the Vertex AI paths; nil accepts any non-empty token.
    public var acceptedBearerTokens: Set<String>?
    /// A fault every generation answers with, whatever the prompt (changeable while running).
    public var control = EmulatorControl()
    /// The `RetryInfo.retryDelay` of its 429s, in seconds.
    public var retryDelaySeconds = 27
    /// How long a batch (`:batchGenerateContent`) stays pending before it is answered (Google
    /// targets 24 h; the demo and tests want seconds).
    public var batchDelay: Duration = .seconds(2)

    /// A configuration; the defaults accept any key and answer at once.
    public init(
        acceptedKeys: Set<String>? = nil, latency: Duration = .zero,
        flashModel: String = "gemini-2.5-flash-image", proModel: String = "gemini-3-pro-image",
        flash31Model: String = "gemini-3.1-flash-image"
    ) {
        self.acceptedKeys = acceptedKeys
        self.latency = latency
        self.flashModel = flashModel
        self.proModel = proModel
        self.flash31Model = flash31Model
    }

    /// Whether `key` (a new project's) is refused on `model`.
    func refuses(_ model: String, key: String?) -> Bool {
        projectLimitedModels.contains(model) && (everyKeyIsNewProject || key.map(newProjectKeys.contains) == true)
    }

    /// The image models it serves, by id (retired ones excluded).
    var models: [String: GoogleImageModel] {
        [flashModel: .flash25, proModel: .pro3, flash31Model: .flash31, flash21Model: .flash21].filter { !retiredModels.contains($0.key) }
    }

    /// What `GET /v1beta/models` lists: the image models and, as Google does, text models beside them.
    var listedModels: [String] {
        (["gemini-2.5-flash", "gemini-2.5-pro", "gemini-3-pro"] + [flashModel, proModel, flash31Model, flash21Model] + extraListedModels).filter { !retiredModels.contains($0) }
    }
}

/// Switches an emulator's behaviour while it runs: one emulator stands for a channel that is
/// rate limited, overloaded or down, then recovers.
public final class EmulatorControl: Sendable {
    private let state = Mutex<String?>(nil)

    public init(fault: String? = nil) { state.withLock { $0 = fault } }

    /// A fault directive (`429`, `503`, `500`, `garbage`) every generation answers with; nil: none.
    public var fault: String? {
        get { state.withLock { $0 } }
        set { state.withLock { $0 = newValue } }
    }
}

/// What the emulator received, for tests that check what the gateway sent to Google.
public final class EmulatorRecorder: Sendable {
    /// One received `generateContent` call.
    public struct Call: Sendable {
        /// The model id in the path.
        public var model: String
        /// The `x-goog-api-key` header.
        public var apiKey: String?
        /// The request path (Gemini API or Vertex AI form) and the `Authorization` header.
        public var path: String = ""
        public var authorization: String?
        /// The body read with the gateway's own `GeminiWire` types (convenient, but lenient: it
        /// cannot show a misspelt field; use `json` or `request` for that).
        public var body: GeminiWire.Request
        /// The body exactly as received.
        public var rawBody: ByteBuffer
        /// The emulator's own reading of the body (Google's rules); nil when it refused the body.
        public var request: GoogleRequest?

        /// The body as plain JSON objects (`[String: Any]` trees), keys exactly as the gateway spelled them.
        public var json: [String: any Sendable] {
            (try? JSONSerialization.jsonObject(with: Data(buffer: rawBody))) as? [String: any Sendable] ?? [:]
        }
    }

    private let calls = Mutex<[Call]>([])

    /// An empty recorder.
    public init() {}

    /// Every call received so far, oldest first.
    public var all: [Call] { calls.withLock { $0 } }

    func append(_ call: Call) {
        calls.withLock { $0.append(call) }
    }
}

/// Fault injection, written into the prompt as `[emulate:NAME]` or `[emulate:NAME=VALUE]`:
///
/// | directive | effect |
/// |---|---|
/// | `429` | HTTP 429 `RESOURCE_EXHAUSTED` with `RetryInfo.retryDelay` `"27s"` |
/// | `503`, `500` | HTTP 503 `UNAVAILABLE` / 500 `INTERNAL` |
/// | `flaky=503` (or `=429`, `=500`) | that error for the first call with this prompt, success afterwards |
/// | `slow=MS` | answer after MS milliseconds |
/// | `image_safety`, `prohibited` | 200, `finishReason` `IMAGE_SAFETY` / `IMAGE_PROHIBITED_CONTENT`, no image |
/// | `no_image` | 200, `finishReason` `NO_IMAGE`, no `content` |
/// | `prompt_block` | 200, `promptFeedback.blockReason` `PROHIBITED_CONTENT`, no candidates |
/// | `jpeg` | the image is a real JPEG at the table's size, labelled `image/png` (as Gemini sometimes does) |
/// | `garbage` | 200 with a body that is not JSON |
/// | `cut` | 200 whose body stops half way through (the connection closes mid-image) |
/// | `batch_early` | in a batch: this request was answered before the batch was cancelled (a cancelled batch answers these only) |
struct Directives {
    var values: [String: String] = [:]

    init(text: String) {
        var rest = Substring(text)
        while let start = rest.range(of: "[emulate:") {
            guard let end = rest[start.upperBound...].firstIndex(of: "]") else { break }
            let item = rest[start.upperBound..<end]
            let pair = item.split(separator: "=", maxSplits: 1).map(String.init)
            values[pair[0]] = pair.count > 1 ? pair[1] : ""
            rest = rest[end...]
        }
    }

    func has(_ name: String) -> Bool { values[name] != nil }
}

/// The offline Gemini API: `POST /v1beta/models/{model}:generateContent`.
///
/// Requests are read by `GoogleRequest` (Google's documented format and its proto-JSON rules,
/// independent of the gateway's types) and checked against the emulator's own model table
/// (`GoogleImageModel`); images are rendered at the pixels of that table.
public struct GeminiEmulator: Sendable {
    let configuration: EmulatorConfiguration
    let recorder: EmulatorRecorder?
    private let state = State()

    /// Mutable state shared by all requests: generated images by size, `flaky` call counts.
    final class State: Sendable {
        let images = Mutex<[ImageKey: ByteBuffer]>([:])
        let flakyCalls = Mutex<[String: Int]>([:])
        let signatures = Mutex<Set<String>>([])
        let batches = Mutex<[String: Batch]>([:])
    }

    /// A submitted batch: its requests as sent, and their answers once made.
    struct Batch: Sendable {
        var model: String
        var apiKey: String?
        var displayName: String
        var items: [(key: String, body: [UInt8])]
        var created: ContinuousClock.Instant
        var output: [UInt8]?
        var cancelled = false
    }

    /// An emulator; `recorder`, if given, keeps every call for tests.
    public init(configuration: EmulatorConfiguration, recorder: EmulatorRecorder? = nil) {
        self.configuration = configuration
        self.recorder = recorder
    }

    /// The router with the emulator's routes.
    public func router() -> Router<BasicRequestContext> {
        let router = Router()
        router.post("/v1beta/models/{target}") { request, context in
            try await self.handle(request, context: context)
        }
        // Vertex AI: a project's publisher model (bearer token), and express mode (API key).
        router.post("/v1/projects/{project}/locations/{location}/publishers/google/models/{target}") { request, context in
            try await self.handle(request, context: context, vertex: .serviceAccount)
        }
        router.post("/v1/publishers/google/models/{target}") { request, context in
            try await self.handle(request, context: context, vertex: .express)
        }
        router.get("/v1beta/batches/{id}") { request, context in
            try await self.batch(id: context.parameters.get("id") ?? "", request: request)
        }
        router.post("/v1beta/batches/{id}") { request, context in
            // `batches/{id}:cancel`
            let target = context.parameters.get("id") ?? ""
            guard target.hasSuffix(":cancel") else { return Self.error(404, "NOT_FOUND", "Method not found.") }
            let name = "batches/\(target.dropLast(":cancel".count))"
            let known = self.state.batches.withLock { batches -> Bool in
                guard batches[name] != nil else { return false }
                batches[name]?.cancelled = true
                return true
            }
            return known ? Self.json([:]) : Self.error(404, "NOT_FOUND", "Batch \(name) not found.")
        }
        router.get("/v1beta/models") { request, _ in
            // Google's ListModels: `pageSize` (default 50), `pageToken` from the previous page's `nextPageToken`.
            let query = request.uri.queryParameters
            let size = min(max(1, query.get("pageSize", as: Int.self) ?? 50), configuration.maxPageSize)
            let start = query.get("pageToken").flatMap { Int($0.dropFirst(5)) } ?? 0
            let key = request.headers[.init("x-goog-api-key")!] ?? request.uri.queryParameters.get("key")
            let all = configuration.listedModels.filter { !configuration.refuses($0, key: key) }
            let page = all.dropFirst(start).prefix(size)
            var body: [String: any Sendable] = [
                "models": page.map { id -> [String: any Sendable] in
                    ["name": "models/\(id)", "displayName": id, "supportedGenerationMethods": ["generateContent", "countTokens"]]
                }
            ]
            if start + size < all.count { body["nextPageToken"] = "page-\(start + size)" }
            return Self.json(body)
        }
        return router
    }

    /// One `generateContent`/`streamGenerateContent` call: model, key, Google's parse, checks, faults, answer.
    /// Which Vertex AI form a call came in by (nil: the Gemini API).
    enum VertexForm { case serviceAccount, express }

    func handle(_ request: Request, context: BasicRequestContext, vertex: VertexForm? = nil) async throws -> Response {
        try await handle(target: context.parameters.get("target") ?? "", request: request, vertex: vertex)
    }

    func handle(target: String, request: Request, vertex: VertexForm? = nil) async throws -> Response {
        let pieces = target.split(separator: ":", maxSplits: 1).map(String.init)
        if pieces.count == 2, pieces[1] == "batchGenerateContent", vertex == nil {
            return try await submitBatch(model: pieces[0], request: request)
        }
        guard pieces.count == 2, ["generateContent", "streamGenerateContent", "countTokens"].contains(pieces[1]) else {
            return Self.error(404, "NOT_FOUND", "Method not found: \(target).")
        }
        let streaming = pieces[1] == "streamGenerateContent"
        let model = pieces[0]
        let apiKey = request.headers[.init("x-goog-api-key")!] ?? (vertex == .express ? request.uri.queryParameters.get("key") : nil)
        let authorization = request.headers[.authorization]
        let bodyBytes = try await request.body.collect(upTo: 128 * 1024 * 1024)
        let parsed = GoogleRequest.parse(bodyBytes)
        if let recorder, let wire = try? SplicedJSON.decode(GeminiWire.Request.self, from: bodyBytes) {
            var call = EmulatorRecorder.Call(model: model, apiKey: apiKey, body: wire, rawBody: bodyBytes, request: try? parsed.get())
            call.path = request.uri.path
            call.authorization = authorization
            recorder.append(call)
        }

        guard let spec = configuration.models[model] else {
            return Self.error(404, "NOT_FOUND", "models/\(model) is not found for API version v1beta, or is not supported for generateContent.")
        }
        if vertex == .serviceAccount {
            let token = authorization.flatMap { $0.hasPrefix("Bearer ") ? String($0.dropFirst(7)) : nil } ?? ""
            guard !token.isEmpty, configuration.acceptedBearerTokens.map({ $0.contains(token) }) ?? true else {
                return Self.error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.")
            }
        } else {
            guard let apiKey, !apiKey.isEmpty else {
                return Self.error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.")
            }
            if let accepted = configuration.acceptedKeys, !accepted.contains(apiKey) {
                return Self.error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", reason: "API_KEY_INVALID")
            }
            if configuration.refuses(model, key: apiKey) {
                return Self.error(403, "PERMISSION_DENIED", "Model \(model) is only available to projects that used it before; use gemini-nano-banana-2.1.")
            }
        }
        if pieces[1] == "countTokens" {
            let text = (try? parsed.get())?.promptText ?? ""
            return Self.json(["totalTokens": max(1, text.utf8.count / 4)])
        }
        let body: GoogleRequest
        switch parsed {
        case .success(let read): body = read
        case .failure(let refusal): return Self.badRequest(refusal)
        }
        if let problem = validate(body, model: spec, id: model) {
            return Self.error(400, "INVALID_ARGUMENT", problem)
        }

        if vertex != nil, let index = body.contents.firstIndex(where: { ($0.role ?? "").isEmpty }) {
            // Vertex AI requires a role on every content, even a lone user turn (§A10).
            return Self.error(400, "INVALID_ARGUMENT", "Please use a valid role: user, model. (contents[\(index)] has none)")
        }
        let promptText = body.promptText
        var directives = Directives(text: promptText)
        if let fault = configuration.control.fault { directives.values[fault] = "" }
        if let milliseconds = directives.values["slow"].flatMap(Int.init) {
            try await Task.sleep(for: .milliseconds(milliseconds))
        } else if configuration.latency > .zero {
            try await Task.sleep(for: configuration.latency)
        }
        if let fault = faultResponse(directives, prompt: promptText) { return fault }
        // Flex is "sheddable" (F3): `[emulate:shed_flex]` or `--fault shed_flex` sheds it, as Google does under load.
        if body.serviceTier == "flex", directives.has("shed_flex") {
            return Self.error(503, "UNAVAILABLE", "The flex tier is at capacity. Please retry later or use the standard tier.")
        }
        if spec.thinks, let problem = missingSignature(body) {
            return Self.error(400, "INVALID_ARGUMENT", problem)
        }
        let response = await generate(body, model: spec, id: model, directives: directives, promptText: promptText)
        if spec.thinks {
            let issued = (response.candidates ?? []).flatMap { $0.content?.parts ?? [] }.compactMap(\.thoughtSignature)
            state.signatures.withLock { $0.formUnion(issued) }
        }
        if directives.has("cut"), !streaming { return Self.cut(response) }
        return streaming ? Self.stream(response) : Self.encode(response)
    }

    /// A 200 whose body stops half way (the connection then closes): a reset mid-image.
    static func cut(_ response: GeminiWire.Response) -> Response {
        let whole = try! SplicedJSON.encodeJoined(response)
        let half = whole.getSlice(at: whole.readerIndex, length: whole.readableBytes / 2)!
        return Response(status: .ok, headers: [.contentType: "application/json; charset=UTF-8"], body: ResponseBody { writer in
            try await writer.write(half)
            throw CancellationError()
        })
    }

    /// MIME types Google takes for input images (§A2; GIF is refused).
    static let inputImageTypes: Set<String> = ["image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"]

    /// What Google rejects with 400 INVALID_ARGUMENT after the body has parsed: the checks of
    /// meaning a gateway could get wrong, against the emulator's own table for `model`.
    func validate(_ body: GoogleRequest, model: GoogleImageModel, id: String) -> String? {
        guard !body.contents.isEmpty else {
            return "* GenerateContentRequest.contents: contents is not specified"
        }
        for (contentIndex, content) in body.contents.enumerated() {
            guard !content.parts.isEmpty else {
                return "* GenerateContentRequest.contents[\(contentIndex)].parts: contents.parts must not be empty."
            }
            // The Gemini API tolerates a missing role on a lone user turn (§A2); otherwise user or model.
            let role = content.role ?? ""
            guard ["user", "model"].contains(role) || (role.isEmpty && body.contents.count == 1) else {
                return "Please use a valid role: user, model."
            }
            for (partIndex, part) in content.parts.enumerated() {
                let path = "GenerateContentRequest.contents[\(contentIndex)].parts[\(partIndex)]"
                guard part.dataField != nil else {
                    return "* \(path).data: required oneof field 'data' must have one initialized field"
                }
                if let inline = part.inlineData, !Self.inputImageTypes.contains(inline.mimeType) {
                    return "Unsupported MIME type: \(inline.mimeType)"
                }
                if part.fileData != nil {
                    return "* \(path).file_data.file_uri: the emulator holds no uploaded files; send the image as inlineData"
                }
            }
        }
        guard let config = body.generationConfig else { return nil }
        if let count = config.candidateCount, count > 1 {
            return "Multiple candidates is not enabled for models/\(id)"
        }
        if let modalities = config.responseModalities, let other = modalities.first(where: { !["TEXT", "IMAGE"].contains($0) }) {
            return "The requested combination of response modalities (\(other)) is not supported by the model models/\(id)."
        }
        if let level = config.thinkingLevel, !model.thinkingLevels.contains(level.uppercased()) {
            return model.thinkingLevels.isEmpty
                ? "* GenerateContentRequest.generation_config.thinking_config.thinking_level: thinking level is not supported for models/\(id)"
                : "* GenerateContentRequest.generation_config.thinking_config.thinking_level: unsupported value \(level); use \(model.thinkingLevels.joined(separator: ", "))"
        }
        if let image = config.imageConfig {
            if let ratio = image.aspectRatio, !model.aspectRatios.contains(ratio) {
                return "* GenerateContentRequest.generation_config.image_config.aspect_ratio: unsupported aspect ratio \(ratio)"
            }
            if let size = image.imageSize {
                if model.imageSizes.isEmpty { return "* GenerateContentRequest.generation_config.image_config.image_size: not supported by this model" }
                if !model.imageSizes.contains(size) {
                    let accepted = model.imageSizes.dropLast().joined(separator: ", ") + " or " + model.imageSizes.last!
                    return "* GenerateContentRequest.generation_config.image_config.image_size: invalid value \(size); use \(accepted)"
                }
            }
        }
        return nil
    }

    /// The error or garbage a fault directive asks for, if any.
    func faultResponse(_ directives: Directives, prompt: String) -> Response? {
        var code = directives.values.keys.first { ["429", "500", "503"].contains($0) }
        if let flaky = directives.values["flaky"] {
            let seen = state.flakyCalls.withLock { calls -> Int in
                calls[prompt, default: 0] += 1
                return calls[prompt]!
            }
            if seen == 1 { code = flaky.isEmpty ? "503" : flaky }
        }
        switch code {
        case "429":
            return Self.json(
                [
                    "error": [
                        "code": 429,
                        "message": "You exceeded your current quota, please check your plan and billing details. Please retry in \(configuration.retryDelaySeconds).4s.",
                        "status": "RESOURCE_EXHAUSTED",
                        "details": [["@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "\(configuration.retryDelaySeconds)s"]],
                    ] as [String: any Sendable]
                ], status: .tooManyRequests)
        case "500": return Self.error(500, "INTERNAL", "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting")
        case "503": return Self.error(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")
        default: break
        }
        if directives.has("garbage") {
            return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: "<html>upstream proxy error")))
        }
        return nil
    }

    /// Google's answer to an accepted request: pixels and tokens from the emulator's table for the
    /// model, thought parts and signatures for the thinking models, fault directives applied.
    func generate(_ body: GoogleRequest, model spec: GoogleImageModel, id model: String, directives: Directives, promptText: String) async -> GeminiWire.Response {
        let inputImages = body.inlineImages
        let textTokens = max(1, promptText.utf8.count / 4)
        let imageTokensIn = inputImages.count * spec.inputImageTokens
        var promptDetails = [GeminiWire.ModalityTokenCount(modality: "TEXT", tokenCount: textTokens)]
        if imageTokensIn > 0 { promptDetails.append(.init(modality: "IMAGE", tokenCount: imageTokensIn)) }
        let promptTokens = textTokens + imageTokensIn
        let promptOnly = GeminiWire.UsageMetadata(
            promptTokenCount: promptTokens, candidatesTokenCount: nil, thoughtsTokenCount: nil, totalTokenCount: promptTokens,
            promptTokensDetails: promptDetails, candidatesTokensDetails: nil
        )
        let responseID = "emu-" + UUID().uuidString.prefix(8).lowercased()

        if directives.has("prompt_block") {
            return .init(candidates: nil, promptFeedback: .init(blockReason: "PROHIBITED_CONTENT"), usageMetadata: promptOnly, modelVersion: model, responseId: responseID)
        }
        if directives.has("image_safety") || directives.has("prohibited") {
            let reason = directives.has("prohibited") ? "IMAGE_PROHIBITED_CONTENT" : "IMAGE_SAFETY"
            return .init(
                candidates: [.init(content: .init(role: "model", parts: []), finishReason: reason, finishMessage: "Unable to show the generated image. The image was filtered out because it violated Google's Generative AI Prohibited Use policy.", index: 0)],
                usageMetadata: promptOnly, modelVersion: model, responseId: responseID)
        }
        if directives.has("no_image") {
            return .init(candidates: [.init(content: nil, finishReason: "NO_IMAGE", index: 0)], usageMetadata: promptOnly, modelVersion: model, responseId: responseID)
        }

        let imageConfig = body.generationConfig?.imageConfig
        let size = spec.imageSizes.isEmpty ? nil : (imageConfig?.imageSize ?? spec.defaultSize)
        let ratio = imageConfig?.aspectRatio ?? inputRatio(inputImages, among: spec.aspectRatios) ?? "1:1"
        // validate() let only table values through, so the lookup cannot miss.
        let pixels = spec.pixels(ratio: ratio, size: size) ?? EmulatorPixels(1024, 1024)
        let wantsImage = body.generationConfig?.responseModalities.flatMap { $0.isEmpty ? nil : $0.contains("IMAGE") } ?? true
        let imageTokens = wantsImage ? spec.outputImageTokens(size: size) : 0
        let caption = wantsImage ? "Here is your image." : "I can only describe it in words: \(promptText.prefix(80))"
        let captionTokens = 5
        let thoughtTokens = spec.thinks ? 212 : 0

        let mimeType = "image/png"  // also for `jpeg`: Gemini has been seen labelling JPEG bytes image/png
        var parts: [GeminiWire.Part] = []
        if spec.thinks {
            parts.append(.init(text: "**Composing the scene**\n\nPlanning the layout for: \(promptText.prefix(80))", thought: true))
            if spec.line == .pro3 {
                parts.append(.init(inlineData: .init(mimeType: "image/png", data: Base64Text(Self.thoughtImage)), thought: true))
            }
        }
        parts.append(.init(text: caption, thoughtSignature: spec.thinks ? Self.signature("text", responseID) : nil))
        if wantsImage {
            let imageBase64 = Base64Text(bytes: await base64Image(pixels, jpeg: directives.has("jpeg")))
            parts.append(.init(inlineData: .init(mimeType: mimeType, data: imageBase64), thoughtSignature: spec.thinks ? Self.signature("image", responseID) : nil))
        }
        var usage = GeminiWire.UsageMetadata(
            promptTokenCount: promptTokens, candidatesTokenCount: imageTokens + captionTokens,
            thoughtsTokenCount: thoughtTokens == 0 ? nil : thoughtTokens,
            totalTokenCount: promptTokens + imageTokens + captionTokens + thoughtTokens,
            promptTokensDetails: promptDetails,
            candidatesTokensDetails: (wantsImage ? [.init(modality: "IMAGE", tokenCount: imageTokens)] : []) + [.init(modality: "TEXT", tokenCount: captionTokens)]
        )
        // The tier actually used is echoed (F3).
        usage.serviceTier = body.serviceTier ?? "standard"
        let response = GeminiWire.Response(
            candidates: [.init(content: .init(role: "model", parts: parts), finishReason: "STOP", index: 0)],
            usageMetadata: usage, modelVersion: model, responseId: responseID
        )
        return response
    }


    /// Google's rule for Gemini 3 multi-turn: every model turn's first non-thought part and each
    /// of its images must carry a signature Google issued (or the documented bypass value).
    func missingSignature(_ body: GoogleRequest) -> String? {
        let issued = state.signatures.withLock { $0 }
        for (contentIndex, content) in body.contents.enumerated() where content.role == "model" {
            let parts = content.parts
            let firstAnswerPart = parts.firstIndex { $0.thought != true }
            for (partIndex, part) in parts.enumerated() where part.thought != true && (partIndex == firstAnswerPart || part.inlineData != nil) {
                guard let signature = part.thoughtSignature else {
                    let kind = part.inlineData != nil ? "Image" : "Text"
                    return "\(kind) part is missing a thought_signature in content position \(contentIndex + 1), part position \(partIndex + 1)."
                }
                guard issued.contains(signature) || Self.bypassSignatures.contains(signature) else {
                    return "Corrupted thought signature in content position \(contentIndex + 1), part position \(partIndex + 1)."
                }
            }
        }
        return nil
    }

    /// Values Google documents for history it did not produce.
    static let bypassSignatures: Set<String> = ["context_engineering_is_the_way_to_go", "skip_thought_signature_validator"]

    /// `streamGenerateContent?alt=sse`: one event per group of parts, CRLF framing as Google's,
    /// the image whole in the last event with `finishReason` and the full usage. No `[DONE]`.
    static func stream(_ response: GeminiWire.Response) -> Response {
        var events: [GeminiWire.Response] = []
        let candidate = response.candidates?.first
        let parts = candidate?.content?.parts ?? []
        if parts.isEmpty {
            events = [response]
        } else {
            let early = GeminiWire.UsageMetadata(
                promptTokenCount: response.usageMetadata?.promptTokenCount, candidatesTokenCount: nil, thoughtsTokenCount: nil,
                totalTokenCount: response.usageMetadata?.promptTokenCount, promptTokensDetails: response.usageMetadata?.promptTokensDetails, candidatesTokensDetails: nil
            )
            let thoughts = parts.filter { $0.thought == true }
            let texts = parts.filter { $0.thought != true && $0.inlineData == nil }
            let images = parts.filter { $0.thought != true && $0.inlineData != nil }
            for group in [thoughts, texts] where !group.isEmpty {
                events.append(.init(candidates: [.init(content: .init(role: "model", parts: group), finishReason: nil, index: 0)], usageMetadata: early, modelVersion: response.modelVersion, responseId: response.responseId))
            }
            events.append(.init(candidates: [.init(content: .init(role: "model", parts: images), finishReason: candidate?.finishReason, index: 0)], usageMetadata: response.usageMetadata, modelVersion: response.modelVersion, responseId: response.responseId))
        }
        let encoded = events.map { event -> ByteBuffer in
            var buffer = ByteBuffer(string: "data: ")
            buffer.writeImmutableBuffer(try! SplicedJSON.encodeJoined(event))
            buffer.writeString("\r\n\r\n")
            return buffer
        }
        return Response(
            status: .ok, headers: [.contentType: "text/event-stream"],
            body: .init { writer in
                for event in encoded { try await writer.write(event) }
                try await writer.finish(nil)
            }
        )
    }

    /// The ratio (of `ratios`) nearest the first input image's, as Gemini follows the input when no ratio is asked for.
    func inputRatio(_ images: [GoogleRequest.Blob], among ratios: [String]) -> String? {
        guard let first = images.first else { return nil }
        // The PNG header (24 bytes) is in the first 32 base64 characters; bytes may be URL-safe base64.
        let head = String(first.data.prefix(32)).replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        guard let bytes = Data(base64Encoded: head), let size = PNGEncoder.dimensions(of: bytes) else { return nil }
        let wanted = log(Double(size.width) / Double(size.height))
        return ratios.min { abs(Self.logRatio($0) - wanted) < abs(Self.logRatio($1) - wanted) }
    }

    /// ln(width/height) of a ratio such as `16:9`.
    static func logRatio(_ ratio: String) -> Double {
        let sides = ratio.split(separator: ":").compactMap { Double($0) }
        return log(sides[0] / sides[1])
    }

    /// Base64 of a PNG of this size, made once per size and kept. Making one takes seconds at 4K,
    /// so it runs on NIO's thread pool, never on the Swift concurrency pool whose few threads
    /// also run every timer and handler of the process.
    func base64Image(_ pixels: EmulatorPixels, jpeg: Bool = false) async -> ByteBuffer {
        let key = ImageKey(pixels: pixels, jpeg: jpeg)
        if let cached = state.images.withLock({ $0[key] }) { return cached }
        let render = { @Sendable () -> ByteBuffer in
            let png = PNGEncoder.photoLike(width: pixels.width, height: pixels.height)
            return ByteBuffer(bytes: Base64.encodeToBytes(bytes: jpeg ? Self.jpeg(fromPNG: png) : png))
        }
        let encoded = (try? await configuration.renderThreadPool.runIfActive(render)) ?? render()
        state.images.withLock { $0[key] = encoded }
        return encoded
    }

    struct ImageKey: Hashable {
        var pixels: EmulatorPixels
        var jpeg: Bool
    }

    /// A real JPEG of the same picture (libjpeg-turbo), as Gemini 3 returns; the tiny fixed JPEG if that fails.
    static func jpeg(fromPNG png: [UInt8]) -> [UInt8] {
        var output = ng_buffer(data: nil, size: 0)
        var reason = [CChar](repeating: 0, count: 128)
        let status = png.withUnsafeBufferPointer { ng_convert($0.baseAddress, $0.count, NG_FORMAT_JPEG, 90, &output, &reason, reason.count) }
        defer { ng_buffer_free(&output) }
        guard status == 0, let data = output.data else { return (try? Base64.decode(string: jpegBase64)) ?? [] }
        return Array(UnsafeBufferPointer(start: data, count: output.size))
    }

    /// The emulator's thought signature for one part of one response (base64, recognisable in tests).
    static func signature(_ kind: String, _ responseID: String) -> String {
        Data("emulator-signature:\(kind):\(responseID)".utf8).base64EncodedString()
    }

    /// A small interim "thought" image (3-pro shows its drafts; they must never reach the client).
    static let thoughtImage = Base64.encodeToString(bytes: PNGEncoder.photoLike(width: 64, height: 64, seed: 7))

    /// A 1×1 JPEG, for the mislabelled-JPEG case.
    static let jpegBase64 =
        "/9j/4AAQSkZJRgABAQEASABIAAD/2wBDAP//////////////////////////////////////////////////////////////////////////////////////wgALCAABAAEBAREA/8QAFBABAAAAAAAAAAAAAAAAAAAAAP/aAAgBAQABPxA="

    /// The response as JSON; image bytes are spliced in rather than run through the JSON coder.
    static func encode(_ response: GeminiWire.Response) -> Response {
        Response(status: .ok, headers: [.contentType: "application/json; charset=UTF-8"], body: .init(byteBuffer: try! SplicedJSON.encodeJoined(response)))
    }

    /// Google's answer to a body its JSON front end refuses: 400 with `google.rpc.BadRequest` field violations.
    static func badRequest(_ refusal: GoogleRequestError) -> Response {
        let violations = refusal.violations.map { violation -> [String: any Sendable] in
            var entry: [String: any Sendable] = ["description": violation.description]
            if let field = violation.field { entry["field"] = field }
            return entry
        }
        let error: [String: any Sendable] = [
            "code": 400, "message": refusal.message, "status": "INVALID_ARGUMENT",
            "details": [["@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": violations] as [String: any Sendable]],
        ]
        return json(["error": error], status: .badRequest)
    }

    /// A `google.rpc.Status` error body, with an `ErrorInfo` when `reason` is given.
    // MARK: Batch API

    /// `POST models/{m}:batchGenerateContent` with inline requests: the operation, pending.
    func submitBatch(model: String, request: Request) async throws -> Response {
        let apiKey = request.headers[.init("x-goog-api-key")!]
        guard let apiKey, !apiKey.isEmpty, configuration.acceptedKeys.map({ $0.contains(apiKey) }) ?? true else {
            return Self.error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", reason: "API_KEY_INVALID")
        }
        guard configuration.models[model] != nil else { return Self.error(404, "NOT_FOUND", "models/\(model) is not found for API version v1beta.") }
        let bytes = try await request.body.collect(upTo: 128 * 1024 * 1024)
        guard let envelope = (try? JSONSerialization.jsonObject(with: Data(buffer: bytes))) as? [String: Any],
            let batch = envelope["batch"] as? [String: Any],
            let input = batch["inputConfig"] as? [String: Any] ?? batch["input_config"] as? [String: Any],
            let list = (input["requests"] as? [String: Any])?["requests"] as? [[String: Any]], !list.isEmpty
        else {
            return Self.error(400, "INVALID_ARGUMENT", "batch.inputConfig.requests.requests is required.")
        }
        var items: [(key: String, body: [UInt8])] = []
        for (index, item) in list.enumerated() {
            guard let body = item["request"] as? [String: Any], let data = try? JSONSerialization.data(withJSONObject: body) else {
                return Self.error(400, "INVALID_ARGUMENT", "requests[\(index)].request is required.")
            }
            let key = ((item["metadata"] as? [String: Any])?["key"] as? String) ?? "\(index)"
            items.append((key, Array(data)))
        }
        let id = UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "").prefix(20)
        let name = "batches/\(id)"
        let displayName = batch["displayName"] as? String ?? batch["display_name"] as? String ?? ""
        state.batches.withLock { $0[name] = Batch(model: model, apiKey: apiKey, displayName: displayName, items: items, created: .now) }
        return Self.json(operation(name: name, model: model, displayName: displayName, state: "BATCH_STATE_PENDING", count: items.count))
    }

    private func operation(name: String, model: String, displayName: String, state: String, count: Int) -> [String: any Sendable] {
        [
            "name": name,
            "metadata": [
                "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatch",
                "name": name, "model": "models/\(model)", "displayName": displayName, "state": state,
                "batchStats": ["requestCount": "\(count)"],
            ] as [String: any Sendable],
        ]
    }

    /// `GET batches/{id}`: pending until `batchDelay` has passed, then every request answered
    /// as `generateContent` answers it (faults included), inline.
    func batch(id: String, request: Request) async throws -> Response {
        let name = "batches/\(id)"
        guard let batch = state.batches.withLock({ $0[name] }) else { return Self.error(404, "NOT_FOUND", "Batch \(name) not found.") }
        guard request.headers[.init("x-goog-api-key")!] == batch.apiKey else {
            return Self.error(403, "PERMISSION_DENIED", "The caller does not have permission.")
        }
        if batch.cancelled {
            // Requests whose prompt says `[emulate:batch_early]` were answered before the cancel;
            // the rest never ran.
            let early = batch.items.filter { $0.body.firstRange(of: Array("[emulate:batch_early]".utf8)) != nil }
            if early.isEmpty {
                var head = operation(name: name, model: batch.model, displayName: batch.displayName, state: "BATCH_STATE_CANCELLED", count: batch.items.count)
                head["done"] = true
                return Self.json(head)
            }
            let bytes = try await output(name: name, batch: batch, items: early, state: "BATCH_STATE_CANCELLED")
            return Response(status: .ok, headers: [.contentType: "application/json; charset=UTF-8"], body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
        }
        guard batch.created.duration(to: .now) >= configuration.batchDelay else {
            return Self.json(operation(name: name, model: batch.model, displayName: batch.displayName, state: "BATCH_STATE_RUNNING", count: batch.items.count))
        }
        var output = batch.output
        if output == nil {
            let bytes = try await self.output(name: name, batch: batch, items: batch.items, state: "BATCH_STATE_SUCCEEDED")
            output = bytes
            state.batches.withLock { $0[name]?.output = bytes }
        }
        return Response(status: .ok, headers: [.contentType: "application/json; charset=UTF-8"], body: .init(byteBuffer: ByteBuffer(bytes: output ?? [])))
    }

    /// A finished batch operation answering `items` as `generateContent` answers them:
    /// `{"name":…,"metadata":{…},"done":true,"response":{"@type":…,"inlinedResponses":{"inlinedResponses":[…]}}}`.
    private func output(name: String, batch: Batch, items: [(key: String, body: [UInt8])], state: String) async throws -> [UInt8] {
        var entries: [[UInt8]] = []
        for item in items {
            let call = Request(
                head: HTTPRequest(method: .post, scheme: "http", authority: "emulator", path: "/v1beta/models/\(batch.model):generateContent",
                                  headerFields: [.init("x-goog-api-key")!: batch.apiKey ?? "", .contentType: "application/json"]),
                body: RequestBody(buffer: ByteBuffer(bytes: item.body))
            )
            let answer = try await handle(target: "\(batch.model):generateContent", request: call)
            var collected = Collected()
            try await answer.body.write(collected.writer)
            let key = String(decoding: try JSONSerialization.data(withJSONObject: ["key": item.key]), as: UTF8.self)
            let field = answer.status == .ok ? "response" : "error"
            var body = collected.box.bytes
            if field == "error", let wrapped = (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any], let error = wrapped["error"] {
                body = Array((try? JSONSerialization.data(withJSONObject: error)) ?? Data())
            }
            entries.append(Array("{\"\(field)\":".utf8) + body + Array(",\"metadata\":\(key)}".utf8))
        }
        var head = operation(name: name, model: batch.model, displayName: batch.displayName, state: state, count: batch.items.count)
        head["done"] = true
        var bytes = Array(try JSONSerialization.data(withJSONObject: head))
        bytes.removeLast()
        bytes += Array(#","response":{"@type":"type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatchOutput","inlinedResponses":{"inlinedResponses":["#.utf8)
        for (index, entry) in entries.enumerated() {
            if index > 0 { bytes.append(UInt8(ascii: ",")) }
            bytes += entry
        }
        bytes += Array("]}}}".utf8)
        return bytes
    }

    /// A response body read back (the batch's answers are the emulator's own `generateContent` answers).
    struct Collected {
        final class Box: @unchecked Sendable { var bytes: [UInt8] = [] }
        struct Writer: ResponseBodyWriter {
            let box: Box
            mutating func write(_ buffer: ByteBuffer) async throws { box.bytes += buffer.readableBytesView }
            consuming func finish(_ trailingHeaders: HTTPFields?) async throws {}
        }
        let box = Box()
        var writer: Writer { Writer(box: box) }
    }

    static func error(_ code: Int, _ status: String, _ message: String, reason: String? = nil) -> Response {
        var error: [String: any Sendable] = ["code": code, "message": message, "status": status]
        if let reason {
            error["details"] = [["@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason, "domain": "googleapis.com"]]
        }
        return json(["error": error], status: .init(code: code))
    }

    /// A JSON response.
    static func json(_ object: [String: any Sendable], status: HTTPResponse.Status = .ok) -> Response {
        let data = try! JSONSerialization.data(withJSONObject: object, options: [.withoutEscapingSlashes])
        return Response(status: status, headers: [.contentType: "application/json; charset=UTF-8"], body: .init(byteBuffer: ByteBuffer(data: data)))
    }
}
