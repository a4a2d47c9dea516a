import AsyncHTTPClient
import Foundation
import Logging
import NanoGateCore
import NIOCore
import NIOHTTP1
import NIOFoundationCompat

/// Another OpenAI-compatible gateway (a reseller such as the spec's vendor, or another NanoGate)
/// as a channel. The Gemini request is relayed as the OpenAI call that carries it:
/// a single user turn without images is `POST /v1/images/generations`, one with images
/// `POST /v1/images/edits` (multipart), and a conversation `POST /v1/chat/completions`. The
/// answer's images and `usage` come back as a Gemini response, so the pipeline settles it like
/// any other. Streaming is not relayed: the whole answer arrives as one event.
struct OpenAIChannel: UpstreamChannel {
    let configuration: ChannelConfiguration
    /// The clients calls go through (`LoopPinnedClients.current`: the calling loop's own).
    let clients: LoopPinnedClients
    var httpClient: HTTPClient { clients.current }
    let maxResponseBytes: Int
    let redact: @Sendable (String) -> String

    init(configuration: ChannelConfiguration, httpClient: HTTPClient, maxResponseBytes: Int) {
        self.init(configuration: configuration, clients: LoopPinnedClients(single: httpClient), maxResponseBytes: maxResponseBytes)
    }

    init(configuration: ChannelConfiguration, clients: LoopPinnedClients, maxResponseBytes: Int) {
        self.configuration = configuration
        self.clients = clients
        self.maxResponseBytes = maxResponseBytes
        self.redact = redactor(secrets: configuration.apiKeys)
    }

    var credentialCount: Int { configuration.apiKeys.count }
    var provider: UpstreamError.Provider { .openAICompatible }

    private var base: String {
        var base = configuration.baseURL ?? ""
        if base.hasSuffix("/") { base.removeLast() }
        if base.hasSuffix("/v1") { base.removeLast(3) }
        return base
    }

    func generate(model: String, request: GeminiWire.Request, body: ByteBuffer, credential: Int, timeout: Duration, logger: Logger) async -> Result<GeminiWire.Response, ChannelFailure> {
        let call: HTTPClientRequest
        do {
            call = try relayed(model: model, request: request, credential: credential)
        } catch {
            return .failure(.init(error: error, disposition: .fatal))
        }
        let response: HTTPClientResponse
        do {
            response = try await httpClient.execute(call, timeout: .init(timeout))
        } catch {
            return .failure(HTTPFailures.transport(error, provider: .openAICompatible))
        }
        guard response.status == .ok else {
            if (300..<400).contains(response.status.code) {
                return .failure(.init(error: .init(.redirect, status: Int(response.status.code), provider: .openAICompatible), disposition: .fatal))
            }
            let errorBody = await HTTPFailures.errorBody(response)
            return .failure(classify(status: Int(response.status.code), body: errorBody, retryAfter: HTTPFailures.retryAfter(response), logger: logger))
        }
        let bytes: ByteBuffer
        do {
            bytes = try await response.body.collect(upTo: maxResponseBytes)
        } catch is NIOTooManyBytesError {
            return .failure(.init(error: .init(.tooLarge, provider: .openAICompatible), disposition: .fatal))
        } catch {
            return .failure(HTTPFailures.transport(error, provider: .openAICompatible))
        }
        guard let answer = Self.geminiResponse(from: bytes, model: model) else {
            return .failure(.init(error: .init(.unreadable, provider: .openAICompatible), disposition: .transient))
        }
        return .success(answer)
    }

    func stream(model: String, request: GeminiWire.Request, body: ByteBuffer, credential: Int, deadline: ContinuousClock.Instant, logger: Logger) async -> Result<GeminiEventStream, ChannelFailure> {
        switch await generate(model: model, request: request, body: body, credential: credential, timeout: ContinuousClock.now.duration(to: deadline), logger: logger) {
        case .success(let response): return .success(GeminiEventStream(single: response, deadline: deadline))
        case .failure(let failure): return .failure(failure)
        }
    }

    /// The OpenAI call that carries `request`.
    func relayed(model: String, request: GeminiWire.Request, credential: Int) throws(UpstreamError) -> HTTPClientRequest {
        let imageConfig = request.generationConfig?.imageConfig
        var call: HTTPClientRequest
        let last = request.contents.last
        let prompt = (last?.parts ?? []).compactMap { $0.thought == true ? nil : $0.text }.joined(separator: "\n")
        let images = (last?.parts ?? []).compactMap(\.inlineData)
        // The size the other gateway understands: a tier for models that have one, else the ratio.
        var fields: [(String, String)] = [("model", model), ("prompt", prompt), ("n", "1"), ("response_format", "b64_json")]
        if let size = imageConfig?.imageSize {
            fields.append(("size", size))
            if let ratio = imageConfig?.aspectRatio { fields.append(("aspect_ratio", ratio)) }
        } else if let ratio = imageConfig?.aspectRatio {
            fields.append(("size", ratio))
        }
        if request.contents.count > 1 || request.systemInstruction != nil {
            call = HTTPClientRequest(url: "\(base)/v1/chat/completions")
            guard let body = try? JSONSerialization.data(withJSONObject: Self.chatBody(model: model, request: request)) else {
                throw UpstreamError(.invalidRequest, detail: "the conversation could not be encoded", provider: .openAICompatible)
            }
            call.headers.add(name: "Content-Type", value: "application/json")
            call.body = .bytes(ByteBuffer(data: body))
        } else if images.isEmpty {
            call = HTTPClientRequest(url: "\(base)/v1/images/generations")
            var object: [String: Any] = [:]
            for (name, value) in fields { object[name] = name == "n" ? 1 : value }
            guard let body = try? JSONSerialization.data(withJSONObject: object) else { throw UpstreamError(.invalidRequest, provider: .openAICompatible) }
            call.headers.add(name: "Content-Type", value: "application/json")
            call.body = .bytes(ByteBuffer(data: body))
        } else {
            call = HTTPClientRequest(url: "\(base)/v1/images/edits")
            let boundary = "nanogate-" + UUID().uuidString
            var body = ByteBuffer()
            for (name, value) in fields {
                body.writeString("--\(boundary)\r\nContent-Disposition: form-data; name=\"\(name)\"\r\n\r\n\(value)\r\n")
            }
            for (index, image) in images.enumerated() {
                guard let bytes = try? Base64Decoding.decode(image.data) else {
                    throw UpstreamError(.invalidRequest, detail: "an input image is not base64", provider: .openAICompatible)
                }
                let ext = image.mimeType.split(separator: "/").last.map(String.init) ?? "png"
                body.writeString("--\(boundary)\r\nContent-Disposition: form-data; name=\"image[]\"; filename=\"image\(index).\(ext)\"\r\nContent-Type: \(image.mimeType)\r\n\r\n")
                body.writeBytes(bytes)
                body.writeString("\r\n")
            }
            body.writeString("--\(boundary)--\r\n")
            call.headers.add(name: "Content-Type", value: "multipart/form-data; boundary=\(boundary)")
            call.body = .bytes(body)
        }
        call.method = .POST
        call.headers.add(name: "Authorization", value: "Bearer \(configuration.apiKeys[credential])")
        return call
    }

    /// A Gemini conversation as OpenAI chat messages (images as data URLs).
    static func chatBody(model: String, request: GeminiWire.Request) -> [String: Any] {
        var messages: [[String: Any]] = []
        if let system = request.systemInstruction {
            messages.append(["role": "system", "content": (system.parts ?? []).compactMap(\.text).joined(separator: "\n")])
        }
        for content in request.contents {
            var parts: [[String: Any]] = []
            for part in content.parts ?? [] where part.thought != true {
                if let text = part.text { parts.append(["type": "text", "text": text]) }
                if let image = part.inlineData {
                    parts.append(["type": "image_url", "image_url": ["url": "data:\(image.mimeType);base64,\(image.data.string)"]])
                }
            }
            messages.append(["role": content.role == "model" ? "assistant" : "user", "content": parts])
        }
        return ["model": model, "messages": messages, "stream": false, "modalities": ["image", "text"]]
    }

    /// The OpenAI answer (an images response or a chat completion) as Gemini's, or nil when it is neither.
    static func geminiResponse(from body: ByteBuffer, model: String) -> GeminiWire.Response? {
        struct Answer: Decodable {
            struct Datum: Decodable {
                var b64_json: Base64Text?
                var revised_prompt: String?
            }
            struct Usage: Decodable {
                struct Details: Decodable {
                    var text_tokens: Int?
                    var image_tokens: Int?
                }
                var input_tokens: Int?
                var output_tokens: Int?
                var input_tokens_details: Details?
                var output_tokens_details: Details?
                var prompt_tokens: Int?
                var completion_tokens: Int?
            }
            struct Choice: Decodable {
                struct Message: Decodable {
                    struct Image: Decodable {
                        struct Location: Decodable { var url: String }
                        var image_url: Location
                    }
                    var content: String?
                    var images: [Image]?
                }
                var message: Message?
                var finish_reason: String?
            }
            var data: [Datum]?
            var choices: [Choice]?
            var usage: Usage?
        }
        guard let answer = try? SplicedJSON.decode(Answer.self, from: body) else { return nil }
        var parts: [GeminiWire.Part] = []
        if let data = answer.data {
            for datum in data {
                if let text = datum.revised_prompt { parts.append(.init(text: text)) }
                if let image = datum.b64_json { parts.append(.init(inlineData: .init(mimeType: mimeType(of: image), data: image))) }
            }
        } else if let message = answer.choices?.first?.message {
            var text = message.content ?? ""
            var urls = (message.images ?? []).map(\.image_url.url)
            // Markdown images in the text: `![…](data:image/png;base64,…)`.
            while let start = text.range(of: "](data:image/"), let end = text[start.upperBound...].firstIndex(of: ")") {
                let open = text[..<start.lowerBound].lastIndex(of: "!") ?? start.lowerBound
                urls.append(String(text[text.index(after: start.lowerBound)..<end]))
                text.removeSubrange(open...end)
            }
            let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
            if !trimmed.isEmpty { parts.append(.init(text: trimmed)) }
            // An answer may carry the same image in `images` and as Markdown: one image.
            var seen = Set<String>()
            for url in urls where url.hasPrefix("data:") && seen.insert(url).inserted {
                guard let comma = url.firstIndex(of: ",") else { continue }
                let mime = url.dropFirst(5).prefix { $0 != ";" && $0 != "," }
                parts.append(.init(inlineData: .init(mimeType: String(mime), data: Base64Text(String(url[url.index(after: comma)...])))))
            }
        } else {
            return nil
        }
        let usage = answer.usage
        let input = clamp(usage?.input_tokens ?? usage?.prompt_tokens ?? 0)
        let output = clamp(usage?.output_tokens ?? usage?.completion_tokens ?? 0)
        let imageIn = clamp(usage?.input_tokens_details?.image_tokens ?? 0)
        let textIn = clamp(usage?.input_tokens_details?.text_tokens ?? max(0, input - imageIn))
        var promptDetails = [GeminiWire.ModalityTokenCount(modality: "TEXT", tokenCount: textIn)]
        if imageIn > 0 { promptDetails.append(.init(modality: "IMAGE", tokenCount: imageIn)) }
        let hasImage = parts.contains { $0.inlineData != nil }
        // Output by modality when the answer says (text and image tokens are priced apart); else all of one kind.
        var outputDetails = [GeminiWire.ModalityTokenCount(modality: hasImage ? "IMAGE" : "TEXT", tokenCount: output)]
        if let details = usage?.output_tokens_details, details.text_tokens != nil || details.image_tokens != nil {
            let imageOut = clamp(details.image_tokens ?? 0)
            let textOut = clamp(details.text_tokens ?? max(0, output - imageOut))
            outputDetails = [.init(modality: "TEXT", tokenCount: textOut), .init(modality: "IMAGE", tokenCount: imageOut)]
        }
        let metadata = GeminiWire.UsageMetadata(
            promptTokenCount: input, candidatesTokenCount: output, thoughtsTokenCount: nil, totalTokenCount: input + output,
            promptTokensDetails: promptDetails, candidatesTokensDetails: outputDetails
        )
        return GeminiWire.Response(
            candidates: [.init(content: .init(role: "model", parts: parts), finishReason: hasImage ? "STOP" : "NO_IMAGE", index: 0)],
            usageMetadata: metadata, modelVersion: model
        )
    }

    private static func clamp(_ value: Int) -> Int { min(max(0, value), UpstreamNumbers.maxTokens) }

    /// The type from the first bytes (base64 of a PNG starts `iVBOR`, a JPEG `/9j/`, a WebP `UklGR`).
    private static func mimeType(of image: Base64Text) -> String {
        let head = String(buffer: image.bytes.getSlice(at: image.bytes.readerIndex, length: min(8, image.bytes.readableBytes)) ?? ByteBuffer())
        if head.hasPrefix("/9j/") { return "image/jpeg" }
        if head.hasPrefix("UklGR") { return "image/webp" }
        return "image/png"
    }

    /// An OpenAI error body, for the client and for the pool.
    func classify(status: Int, body: ByteBuffer, retryAfter: Double?, logger: Logger) -> ChannelFailure {
        struct Envelope: Decodable {
            struct Detail: Decodable {
                var message: String?
                var code: String?
            }
            var error: Detail?
        }
        let envelope = try? JSONDecoder().decode(Envelope.self, from: body)
        let message = redact(String((envelope?.error?.message ?? "no message").prefix(500)))
        let code = envelope?.error?.code
        func failure(_ code: UpstreamError.Code, _ disposition: Disposition, retry: Int? = nil) -> ChannelFailure {
            .init(error: .init(code, status: status, detail: message, retryAfterSeconds: retry, provider: .openAICompatible), disposition: disposition)
        }
        switch status {
        case 401, 403:
            logger.error("the upstream gateway rejected the channel's key", metadata: ["http.status": "\(status)", "upstream.message": "\(message)"])
            return failure(.authFailed, .credentialRejected)
        case 402:
            return failure(.authFailed, .credentialRejected)
        case 429 where code == "insufficient_quota":
            logger.error("the upstream gateway says the channel's key has no credit left", metadata: ["upstream.message": "\(message)"])
            return failure(.authFailed, .credentialRejected)
        case 429:
            let wait = retryAfter ?? 30
            return failure(.rateLimited, .coolDown(.milliseconds(Int64(wait * 1000)), modelOnly: true), retry: max(1, Int(wait.rounded(.up))))
        case 404:
            return failure(.modelNotFound, .fatal)
        case 400, 413, 415, 422:
            return failure(.invalidRequest, .fatal)
        case 503:
            return failure(.overloaded, .transient, retry: retryAfter.map { max(1, Int($0.rounded(.up))) })
        case 504:
            return failure(.timeout, .transient)
        default:
            return failure(.serverError, .transient)
        }
    }

    func listModels(logger: Logger) async throws(UpstreamError) -> Set<String>? {
        struct List: Decodable {
            struct Model: Decodable { var id: String }
            var data: [Model]
        }
        guard let key = configuration.apiKeys.first else { return nil }
        var request = HTTPClientRequest(url: "\(base)/v1/models")
        request.headers.add(name: "Authorization", value: "Bearer \(key)")
        let status: Int
        let body: ByteBuffer
        do {
            let response = try await httpClient.execute(request, timeout: .seconds(30))
            status = Int(response.status.code)
            body = try await response.body.collect(upTo: 4 * 1024 * 1024)
        } catch {
            throw HTTPFailures.transport(error, provider: .openAICompatible).error
        }
        guard status == 200 else { throw classify(status: status, body: body, retryAfter: nil, logger: logger).error }
        guard let list = try? JSONDecoder().decode(List.self, from: body) else { throw UpstreamError(.unreadable, provider: .openAICompatible) }
        return Set(list.data.map(\.id))
    }

    func probe(model: String, logger: Logger) async throws(UpstreamError) -> String {
        guard let models = try await listModels(logger: logger) else { throw UpstreamError(.noChannel) }
        guard models.contains(model) else {
            throw UpstreamError(.modelNotFound, detail: "GET /v1/models does not list \(model)", provider: .openAICompatible)
        }
        return "GET /v1/models lists \(model) (\(models.count) models)"
    }

    func shutdown() async {
        await clients.shutdown()
    }
}

/// Standard base64 of `Base64Text` to bytes.
enum Base64Decoding {
    static func decode(_ text: Base64Text) throws -> [UInt8] {
        guard let data = Data(base64Encoded: Data(buffer: text.bytes), options: .ignoreUnknownCharacters) else { throw UpstreamError(.invalidRequest) }
        return [UInt8](data)
    }
}
