public import Hummingbird
import Logging
public import NanoGateCore
import ExtrasBase64
import Foundation
import NIOCore
import NIOFoundationCompat
import NIOPosix
import Synchronization

/// How the offline Gemini behaves.
public struct EmulatorConfiguration: Sendable {
    /// Keys accepted in `x-goog-api-key`; nil accepts any non-empty key.
    public var acceptedKeys: Set<String>?
    /// Time each generation takes (0 for benchmarks).
    public var latency: Duration
    /// Model ids it serves as 2.5 Flash Image and 3 Pro Image.
    public var flashModel: String
    public var proModel: String

    public init(
        acceptedKeys: Set<String>? = nil, latency: Duration = .zero,
        flashModel: String = "gemini-2.5-flash-image", proModel: String = "gemini-3-pro-image-preview"
    ) {
        self.acceptedKeys = acceptedKeys
        self.latency = latency
        self.flashModel = flashModel
        self.proModel = proModel
    }
}

/// What the emulator received, for tests that check what the gateway sent to Google.
public final class EmulatorRecorder: Sendable {
    /// One received `generateContent` call.
    public struct Call: Sendable {
        public var model: String
        public var apiKey: String?
        public var body: GeminiWire.Request
    }

    private let calls = Mutex<[Call]>([])

    public init() {}

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
/// | `jpeg` | the image is JPEG bytes labelled `image/png` (as Gemini sometimes does) |
/// | `garbage` | 200 with a body that is not JSON |
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
public struct GeminiEmulator: Sendable {
    let configuration: EmulatorConfiguration
    let recorder: EmulatorRecorder?
    private let state = State()

    /// Mutable state shared by all requests: generated images by size, `flaky` call counts.
    final class State: Sendable {
        let images = Mutex<[PixelSize: ByteBuffer]>([:])
        let flakyCalls = Mutex<[String: Int]>([:])
        let signatures = Mutex<Set<String>>([])
    }

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
        router.get("/v1beta/models") { _, _ in
            Self.json(["models": [configuration.flashModel, configuration.proModel].map { ["name": "models/\($0)"] }])
        }
        return router
    }

    func handle(_ request: Request, context: BasicRequestContext) async throws -> Response {
        let target = context.parameters.get("target") ?? ""
        let pieces = target.split(separator: ":", maxSplits: 1).map(String.init)
        guard pieces.count == 2, ["generateContent", "streamGenerateContent"].contains(pieces[1]) else {
            return Self.error(404, "NOT_FOUND", "Method not found: \(target).")
        }
        let streaming = pieces[1] == "streamGenerateContent"
        let model = pieces[0]
        let apiKey = request.headers[.init("x-goog-api-key")!]
        let bodyBytes = try await request.body.collect(upTo: 128 * 1024 * 1024)
        let decoded = Result { try SplicedJSON.decode(GeminiWire.Request.self, from: bodyBytes) }
        if case .success(let body) = decoded {
            recorder?.append(.init(model: model, apiKey: apiKey, body: body))
        }

        let family: ModelFamily
        switch model {
        case configuration.flashModel: family = .flash25
        case configuration.proModel: family = .pro3
        default: return Self.error(404, "NOT_FOUND", "models/\(model) is not found for API version v1beta, or is not supported for generateContent.")
        }
        guard let apiKey, !apiKey.isEmpty else {
            return Self.error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.")
        }
        if let accepted = configuration.acceptedKeys, !accepted.contains(apiKey) {
            return Self.error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", reason: "API_KEY_INVALID")
        }
        let body: GeminiWire.Request
        switch decoded {
        case .success(let decodedBody): body = decodedBody
        case .failure(let error): return Self.error(400, "INVALID_ARGUMENT", "Invalid JSON payload received. \(error)")
        }
        if let problem = validate(body, family: family) {
            return Self.error(400, "INVALID_ARGUMENT", problem)
        }

        let promptText = body.contents.flatMap { $0.parts ?? [] }.compactMap(\.text).joined(separator: "\n")
        let directives = Directives(text: promptText)
        if let milliseconds = directives.values["slow"].flatMap(Int.init) {
            try await Task.sleep(for: .milliseconds(milliseconds))
        } else if configuration.latency > .zero {
            try await Task.sleep(for: configuration.latency)
        }
        if let fault = faultResponse(directives, prompt: promptText) { return fault }
        if family == .pro3, let problem = missingSignature(body) {
            return Self.error(400, "INVALID_ARGUMENT", problem)
        }
        let response = await generate(body, family: family, model: model, directives: directives, promptText: promptText)
        if family == .pro3 {
            let issued = (response.candidates ?? []).flatMap { $0.content?.parts ?? [] }.compactMap(\.thoughtSignature)
            state.signatures.withLock { $0.formUnion(issued) }
        }
        return streaming ? Self.stream(response) : Self.encode(response)
    }

    /// What Google rejects with 400 INVALID_ARGUMENT (the parts a gateway could get wrong).
    func validate(_ body: GeminiWire.Request, family: ModelFamily) -> String? {
        guard !body.contents.isEmpty, body.contents.allSatisfy({ !($0.parts ?? []).isEmpty }) else {
            return "* GenerateContentRequest.contents: contents is not specified"
        }
        for content in body.contents {
            guard let role = content.role, ["user", "model"].contains(role) else {
                return "Please use a valid role: user, model."
            }
            for part in content.parts ?? [] {
                if let inline = part.inlineData {
                    guard ["image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"].contains(inline.mimeType) else {
                        return "Unsupported MIME type: \(inline.mimeType)"
                    }
                    guard (try? Base64.decode(bytes: inline.data.bytes.readableBytesView)) != nil else {
                        return "Invalid value at 'contents[0].parts[0].inline_data.data' (TYPE_BYTES), Base64 decoding failed"
                    }
                }
            }
        }
        if let count = body.generationConfig?.candidateCount, count > 1 {
            return "Multiple candidates is not enabled for models/\(family == .pro3 ? configuration.proModel : configuration.flashModel)"
        }
        if let image = body.generationConfig?.imageConfig {
            if let ratio = image.aspectRatio, AspectRatio(rawValue: ratio) == nil {
                return "* GenerateContentRequest.generation_config.image_config.aspect_ratio: unsupported aspect ratio \(ratio)"
            }
            if let size = image.imageSize {
                if family == .flash25 { return "* GenerateContentRequest.generation_config.image_config.image_size: not supported by this model" }
                if ImageSize(rawValue: size) == nil { return "* GenerateContentRequest.generation_config.image_config.image_size: invalid value \(size); use 1K, 2K or 4K" }
            }
        }
        return nil
    }

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
                        "message": "You exceeded your current quota, please check your plan and billing details. Please retry in 27.4s.",
                        "status": "RESOURCE_EXHAUSTED",
                        "details": [["@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "27s"]],
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

    func generate(_ body: GeminiWire.Request, family: ModelFamily, model: String, directives: Directives, promptText: String) async -> GeminiWire.Response {
        let inputImages = body.contents.flatMap { $0.parts ?? [] }.compactMap(\.inlineData)
        let textTokens = max(1, promptText.utf8.count / 4)
        let imageTokensIn = inputImages.count * (family == .pro3 ? 560 : 258)
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
        let size = family == .pro3 ? (imageConfig?.imageSize.flatMap(ImageSize.init(rawValue:)) ?? .oneK) : nil
        let ratio = imageConfig?.aspectRatio.flatMap(AspectRatio.init(rawValue:)) ?? inputRatio(inputImages) ?? .square
        let pixels = family.pixels(ratio, size)
        let imageTokens = family.outputImageTokens(size)
        let caption = "Here is your image."
        let captionTokens = 5
        let thoughtTokens = family == .pro3 ? 212 : 0

        let imageBase64 = Base64Text(bytes: directives.has("jpeg") ? ByteBuffer(string: Self.jpegBase64) : await base64Image(pixels))
        let mimeType = "image/png"  // also for `jpeg`: Gemini has been seen labelling JPEG bytes image/png
        var parts: [GeminiWire.Part] = []
        if family == .pro3 {
            parts.append(.init(text: "**Composing the scene**\n\nPlanning the layout for: \(promptText.prefix(80))", thought: true))
            parts.append(.init(inlineData: .init(mimeType: "image/png", data: Base64Text(Self.thoughtImage)), thought: true))
            parts.append(.init(text: caption, thoughtSignature: Self.signature("text", responseID)))
            parts.append(.init(inlineData: .init(mimeType: mimeType, data: imageBase64), thoughtSignature: Self.signature("image", responseID)))
        } else {
            parts.append(.init(text: caption))
            parts.append(.init(inlineData: .init(mimeType: mimeType, data: imageBase64)))
        }
        let usage = GeminiWire.UsageMetadata(
            promptTokenCount: promptTokens, candidatesTokenCount: imageTokens + captionTokens,
            thoughtsTokenCount: thoughtTokens == 0 ? nil : thoughtTokens,
            totalTokenCount: promptTokens + imageTokens + captionTokens + thoughtTokens,
            promptTokensDetails: promptDetails,
            candidatesTokensDetails: [.init(modality: "IMAGE", tokenCount: imageTokens), .init(modality: "TEXT", tokenCount: captionTokens)]
        )
        let response = GeminiWire.Response(
            candidates: [.init(content: .init(role: "model", parts: parts), finishReason: "STOP", index: 0)],
            usageMetadata: usage, modelVersion: model, responseId: responseID
        )
        return response
    }


    /// Google's rule for Gemini 3 multi-turn: every model turn's first non-thought part and each
    /// of its images must carry a signature Google issued (or the documented bypass value).
    func missingSignature(_ body: GeminiWire.Request) -> String? {
        let issued = state.signatures.withLock { $0 }
        for (contentIndex, content) in body.contents.enumerated() where content.role == "model" {
            let parts = content.parts ?? []
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

    /// The ratio of the first input image, as Gemini follows the input when no ratio is asked for.
    func inputRatio(_ images: [GeminiWire.InlineData]) -> AspectRatio? {
        guard let first = images.first, let bytes = try? Base64.decode(bytes: first.data.bytes.readableBytesView), let size = PNGEncoder.dimensions(of: bytes) else { return nil }
        let wanted = log(Double(size.width) / Double(size.height))
        return AspectRatio.allCases.min { lhs, rhs in
            abs(Self.logRatio(lhs) - wanted) < abs(Self.logRatio(rhs) - wanted)
        }
    }

    static func logRatio(_ ratio: AspectRatio) -> Double {
        let sides = ratio.rawValue.split(separator: ":").compactMap { Double($0) }
        return log(sides[0] / sides[1])
    }

    /// Base64 of a PNG of this size, made once per size and kept. Making one takes seconds at 4K,
    /// so it runs on NIO's thread pool, never on the Swift concurrency pool whose few threads
    /// also run every timer and handler of the process.
    func base64Image(_ pixels: PixelSize) async -> ByteBuffer {
        if let cached = state.images.withLock({ $0[pixels] }) { return cached }
        let encoded = (try? await NIOThreadPool.singleton.runIfActive {
            ByteBuffer(bytes: Base64.encodeToBytes(bytes: PNGEncoder.photoLike(width: pixels.width, height: pixels.height)))
        }) ?? ByteBuffer(bytes: Base64.encodeToBytes(bytes: PNGEncoder.photoLike(width: pixels.width, height: pixels.height)))
        state.images.withLock { $0[pixels] = encoded }
        return encoded
    }

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

    static func error(_ code: Int, _ status: String, _ message: String, reason: String? = nil) -> Response {
        var error: [String: any Sendable] = ["code": code, "message": message, "status": status]
        if let reason {
            error["details"] = [["@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason, "domain": "googleapis.com"]]
        }
        return json(["error": error], status: .init(code: code))
    }

    static func json(_ object: [String: any Sendable], status: HTTPResponse.Status = .ok) -> Response {
        let data = try! JSONSerialization.data(withJSONObject: object, options: [.withoutEscapingSlashes])
        return Response(status: status, headers: [.contentType: "application/json; charset=UTF-8"], body: .init(byteBuffer: ByteBuffer(data: data)))
    }
}
