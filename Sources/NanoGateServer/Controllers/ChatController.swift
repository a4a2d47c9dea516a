import AsyncAlgorithms
import Crypto
import ExtrasBase64
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NanoGateCore
import NanoGateStorage
import NIOCore
import NIOFoundationCompat
import Upstream

/// `POST /v1/chat/completions`: conversation with image output, streamed or not.
///
/// Each image is shown once by every known client (OpenRouter's convention, refined): a client that
/// asks for images with `modalities` (e.g. `["image","text"]`) gets `message.images` /
/// `delta.images` (`[{"type":"image_url","image_url":{"url"}}]`) and text-only `content`. Any
/// other *stream* gets Markdown `![image](url)` in `content` only, because Open WebUI renders both
/// shapes of a stream. Any other *non-streamed* answer gets both: LobeChat's image-by-chat-model
/// feature (`generateByChatModel`) reads only `message.images`, while its chat view and plain
/// clients read only `content`. Cherry Studio is the one known client that renders both shapes of
/// a non-streamed answer; it names itself (`X-Title: Cherry Studio`) and gets Markdown only. The operator
/// can fix one shape, or both, with `NANOGATE_CHAT_IMAGES`. The URL is a signed gateway URL or a `data:` URL, by the same rules as
/// the images API: `response_format` (or `image_response_format`) `url`/`b64_json` if given, else
/// the key's group (default → URL, gemini → data URL); base64-only model names always give data URLs.
///
/// Gemini 3 needs the `thoughtSignature` of every earlier model part back; OpenAI clients cannot
/// carry it, so signatures are kept server-side, keyed by the API key and a fingerprint of the
/// image (or the SHA-256 of the assistant text), and restored on later turns of the same key
/// only. History the gateway never produced gets Google's documented bypass value.
///
/// Limits, checked before any image is fetched: `maxMessages` messages, `maxParts` content
/// parts, the model's own maximum of input images (the catalog's `maxInputImages`, Markdown and
/// `message.images` of assistant turns included), and the prompt limit over all text.
/// How chat replies carry images (`NANOGATE_CHAT_IMAGES`).
public enum ChatImageStyle: String, Sendable, CaseIterable {
    /// `images` when the request's `modalities` names `image`; else Markdown for streams and
    /// both for non-streamed answers (Markdown only for a caller known to render both).
    case auto
    /// Always Markdown in `content`.
    case markdown
    /// Always `message.images` / `delta.images`, text-only `content`.
    case images
    /// Both (the gateway's behaviour before 2026-12; clients that render both show images twice).
    case both

    /// The shape for one request. `callerRendersBoth`: the caller shows `message.images` and
    /// Markdown images of a non-streamed answer both (see `ChatClient`).
    func resolved(modalities: [String]?, streamed: Bool, callerRendersBoth: Bool) -> (markdown: Bool, images: Bool) {
        switch self {
        case .auto:
            let asksForImages = modalities?.contains { $0.lowercased() == "image" } ?? false
            if asksForImages { return (false, true) }
            return (true, !streamed && !callerRendersBoth)
        case .markdown: return (true, false)
        case .images: return (false, true)
        case .both: return (true, true)
        }
    }
}

/// What the gateway knows of the calling chat client from its own headers.
enum ChatClient {
    /// Cherry Studio sends its app headers (`X-Title: Cherry Studio`, `HTTP-Referer:
    /// https://cherry-ai.com`, BaseApiClient.defaultHeaders) and renders a non-streamed answer's
    /// `message.images` and its Markdown both (OpenAIApiClient.ts, getResponseChunkTransformer).
    static func rendersBothImageShapes(_ headers: HTTPFields) -> Bool {
        let title = HTTPField.Name("X-Title")!
        let referer = HTTPField.Name("HTTP-Referer")!
        return headers[title]?.lowercased() == "cherry studio" || headers[referer]?.lowercased().hasPrefix("https://cherry-ai.com") == true
    }
}

struct ChatController {
    let catalog: ModelCatalog
    let pipeline: RequestPipeline
    let signatures: any SignatureStore
    let inputs: InputImageLoader
    let publicURL: PublicURL
    /// How often a silent stream gets an SSE comment, so proxies do not cut a slow generation.
    let keepAliveInterval: Duration
    let chatImages: ChatImageStyle

    static let bypassSignature = ImageTranslation.bypassSignature
    /// Most messages in one request.
    static let maxMessages = 256
    /// Most content parts over all messages.
    static let maxParts = 1024

    var urls: ImageURLService { pipeline.images }

    func addRoutes(to group: RouterGroup<GatewayRequestContext>) {
        group.post("chat/completions", use: completions)
    }

    /// A validated chat request.
    struct ChatJob: Sendable {
        var key: APIKey
        var model: CatalogModel
        var spec: ImageSpec
        var gemini: GeminiWire.Request
        var format: ResponseFormat
        var baseURL: String
        var includeUsage: Bool
        /// Whether reply images go in `content` as Markdown, in `images`, or both.
        var markdownImages = true
        var imagesField = true
        /// Assistant-turn images that could not be read and were left out of what went to Google.
        var droppedImages = 0
    }

    static let droppedImagesHeader = HTTPField.Name("X-NanoGate-Dropped-Images")!

    @Sendable func completions(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        let key = try context.requireKey()
        let input = try await request.decodeJSON(ChatCompletionRequest.self, limit: inputs.limits.maxRequestBytes)
        let baseURL = publicURL.base(of: request)
        // The tier is checked before any image of the conversation is read.
        let tier = try pipeline.tier(try ServiceTier.requested(input.serviceTier), key: key)
        // The account is opened (limits checked, worst case reserved) once the conversation is
        // validated and before any of its image URLs is fetched.
        var opened: Settlement?
        let job: ChatJob
        do {
            job = try await prepare(input, key: key, baseURL: baseURL, callerRendersBoth: ChatClient.rendersBothImageShapes(request.headers)) { (model, spec, prompt, images) throws(GatewayError) in
                let estimate = pipeline.estimate(key: key, model: model, spec: spec, count: 1, prompt: prompt, inputImages: images, tier: tier)
                let info = RequestInfo(requestID: context.requestID, started: context.started, observation: context.observation, requestedSize: spec.label)
                opened = try await pipeline.open(key: key, endpoint: .chatCompletions, model: model, info: info, estimateMicroUSD: estimate, tier: tier, logger: context.logger)
            }
        } catch {
            if let opened { await pipeline.settle(opened, status: error.status, errorCode: error.code, logger: context.logger) }
            throw error
        }
        guard let settlement = opened else { throw GatewayError.internal("The request was not admitted.") }
        context.logger.info("chat completion", metadata: ["model": "\(job.model.name)", "stream": "\(input.stream == true)", "turns": "\(job.gemini.contents.count)"])
        var response: Response
        if input.stream == true {
            response = try await streamed(job, settlement: settlement, logger: context.logger)
        } else if let interval = KeepAliveAnswer.requested(request, defaultInterval: keepAliveInterval) ?? job.model.keepAliveSeconds.map({ .seconds($0) }) {
            // Status and headers now, spaces while Google works, then the completion (or its error).
            let logger = context.logger
            return KeepAliveAnswer.response(interval: interval, survivesDisconnect: request.headers[IdempotencyMiddleware.header] != nil, logger: logger) {
                let whole = try await pipeline.settling(settlement, logger: logger) { () throws(GatewayError) -> Response in
                    try await self.whole(job, settlement: settlement, logger: logger)
                }
                let collector = CollectingWriter()
                try await whole.body.write(collector.writer)
                return [ByteBuffer(bytes: collector.bytes)]
            }
        } else {
            response = try await pipeline.settling(settlement, logger: context.logger) { () throws(GatewayError) -> Response in
                try await whole(job, settlement: settlement, logger: context.logger)
            }
        }
        response.headers[ImagesController.upstreamModelHeader] = settlement.servedBy.id
        if input.stream != true { response.headers[ImagesController.costHeader] = Pricing.usdText(settlement.chargeMicroUSD) }
        if job.droppedImages > 0 { response.headers[Self.droppedImagesHeader] = "\(job.droppedImages)" }
        return response
    }

    // MARK: Request

    /// The validated request, Gemini's contents built. `admit` is called once everything was
    /// validated and before any image URL is fetched, with the model, the size, the prompt text
    /// and the number of images the conversation names.
    func prepare(
        _ input: ChatCompletionRequest, key: APIKey, baseURL: String, callerRendersBoth: Bool = false,
        admit: (CatalogModel, ImageSpec, String, Int) async throws(GatewayError) -> Void
    ) async throws(GatewayError) -> ChatJob {
        guard let name = input.model, !name.isEmpty else {
            throw .invalidParameter("model", "Missing required parameter: 'model'.", code: "missing_required_parameter")
        }
        guard let model = catalog.model(named: name), key.mayUse(model: name) else {
            throw .unknownModel(name, known: catalog.names.filter { key.mayUse(model: $0) })
        }
        guard input.n == nil || input.n == 1 else {
            throw .invalidParameter("n", "Gemini image models return one choice; 'n' must be 1.")
        }
        guard !input.messages.isEmpty else { throw .invalidParameter("messages", "'messages' must not be empty.") }
        guard input.messages.count <= Self.maxMessages else {
            throw .invalidParameter("messages", "Too many messages: \(input.messages.count); at most \(Self.maxMessages) are accepted.", code: "too_many_messages")
        }
        let parts = input.messages.reduce(0) { $0 + $1.content.count }
        guard parts <= Self.maxParts else {
            throw .invalidParameter("messages", "Too many content parts: \(parts); at most \(Self.maxParts) are accepted.", code: "too_many_parts")
        }

        // The images API's rule (SizeRules), unchanged: chat adds only OpenRouter's spellings.
        let size = input.size ?? input.imageConfig?.imageSize
        let ratio = input.aspectRatio ?? input.imageConfig?.aspectRatio
        let spec = try SizeRules.resolve(model: model, size: size, aspectRatio: ratio)
        let format = try ImageRequestValidator.responseFormat(input.imageFormat, model: model, group: key.groupSettings)
        let effort = try ReasoningEffort.parse(input.reasoningEffort)
        if effort != nil, model.family.thinkingLevels.isEmpty { throw ReasoningEffort.unsupported(model: model.name) }

        let (contents, dropped) = try await geminiContents(input.messages, model: model, keyID: key.id, baseURL: baseURL) { (prompt, images) throws(GatewayError) in
            try await admit(model, spec, prompt, images)
        }
        var request = ImageTranslation.geminiRequest(prompt: "", spec: spec, family: model.family, reasoningEffort: effort)
        request.contents = contents
        let shape = chatImages.resolved(modalities: input.modalities, streamed: input.stream == true, callerRendersBoth: callerRendersBoth)
        return ChatJob(
            key: key, model: model, spec: spec, gemini: request, format: format, baseURL: baseURL, includeUsage: input.includeUsage,
            markdownImages: shape.markdown, imagesField: shape.images, droppedImages: dropped
        )
    }

    /// OpenAI messages → Gemini contents: roles `user`/`model`, images as `inlineData`, system
    /// text at the start of the first user turn (whether the image models honour
    /// `systemInstruction` is undocumented), signatures restored on model turns.
    ///
    /// An assistant turn's images go upstream once each, however often the client repeats them
    /// (the SDK's message object sent back holds each image in `images` and in the Markdown).
    /// An assistant-turn image the gateway cannot read (Open WebUI rewrites earlier images into
    /// its own relative `/api/v1/files/…` URLs) is left out rather than failing the turn; the
    /// count comes back as the second value. A user-turn image that cannot be read is a 400.
    func geminiContents(
        _ messages: [ChatMessage], model: CatalogModel, keyID: String, baseURL: String, admit: (String, Int) async throws(GatewayError) -> Void
    ) async throws(GatewayError) -> ([GeminiWire.Content], dropped: Int) {
        let family = model.family
        var system: [String] = []
        var pending: [(role: String, text: String, urls: [(url: String, param: String)])] = []
        for (index, message) in messages.enumerated() {
            var texts: [String] = []
            var imageURLs: [String] = []
            for part in message.content {
                switch part {
                case .text(let text): texts.append(text)
                case .imageURL(let url): imageURLs.append(url)
                case .unsupported(let type):
                    throw .invalidParameter("messages[\(index)].content", "Content parts of type '\(type)' are not supported; send 'text' and 'image_url' parts.")
                }
            }
            var text = texts.joined(separator: "\n")
            switch message.role {
            case "system", "developer":
                system.append(text)
                continue
            case "user":
                break
            case "assistant":
                let split = ChatTranslation.splitMarkdownImages(text)
                text = split.text
                var seen = Set<String>()
                imageURLs = (split.urls + message.images + imageURLs).filter { seen.insert($0).inserted }
            default:
                throw .invalidParameter("messages[\(index)].role", "Role '\(message.role)' is not supported; use system, user or assistant.")
            }
            guard !text.isEmpty || !imageURLs.isEmpty else { continue }
            pending.append((message.role == "assistant" ? "model" : "user", text, imageURLs.enumerated().map { ($1, "messages[\(index)].content[\($0)]") }))
        }
        // Every limit before the first fetch: a body can name thousands of URLs.
        let imageCount = pending.reduce(0) { $0 + $1.urls.count }
        guard imageCount <= model.maxInputImages else {
            throw .invalidParameter("messages", "'\(model.name)' takes at most \(model.maxInputImages) images per request (earlier turns included); \(imageCount) were sent.", code: "too_many_images")
        }
        let prompt = (system + pending.map(\.text)).joined(separator: "\n")
        try PromptLimit.check(prompt, param: "messages")
        guard pending.contains(where: { $0.role == "user" }) else {
            throw .invalidParameter("messages", "The conversation needs at least one user message.")
        }
        try await admit(prompt, imageCount)

        var turns: [ConversationTurn] = []
        var dropped = 0
        for turn in pending {
            var images: [GeminiWire.InlineData] = []
            var fingerprints = Set<String>()
            for reference in turn.urls {
                let image: GeminiWire.InlineData
                do {
                    image = try await inputs.load(url: reference.url, param: reference.param, baseURLs: [baseURL])
                } catch {
                    // Only the model's own earlier images may be left out; what the user sends must arrive.
                    guard turn.role == "model", error.status < 500 || error.code == "image_fetch_failed" else { throw error }
                    dropped += 1
                    continue
                }
                // The same image by another URL (a data URL and its gateway URL) also goes once.
                if turn.role == "model", !fingerprints.insert(Self.hash(image: image, keyID: keyID)).inserted { continue }
                images.append(image)
            }
            turns.append(ConversationTurn(role: turn.role, text: turn.text, images: images))
        }
        return (try await assemble(turns, system: system, family: family, keyID: keyID, param: "messages"), dropped)
    }

    /// A turn of a conversation, its images read: what chat and the Responses API both give Gemini.
    struct ConversationTurn: Sendable {
        /// `user` or `model`.
        var role: String
        var text: String
        var images: [GeminiWire.InlineData]
    }

    /// Turns → Gemini contents: system text at the start of the first user turn, the thought
    /// signatures Google gave this key's earlier answers restored on model turns (Google's
    /// documented bypass value where none is known), consecutive turns of one role merged.
    func assemble(_ turns: [ConversationTurn], system: [String], family: ModelFamily, keyID: String, param: String) async throws(GatewayError) -> [GeminiWire.Content] {
        var turns = turns
        guard turns.contains(where: { $0.role == "user" }) else {
            throw .invalidParameter(param, "The conversation needs at least one user message.")
        }
        if !system.isEmpty, let first = turns.firstIndex(where: { $0.role == "user" }) {
            turns[first].text = (system + [turns[first].text]).filter { !$0.isEmpty }.joined(separator: "\n\n")
        }

        // Restore signatures on model turns in one look-up.
        var hashes: [String] = []
        for turn in turns where turn.role == "model" {
            if !turn.text.isEmpty { hashes.append(Self.hash(text: turn.text, keyID: keyID)) }
            hashes += turn.images.map { Self.hash(image: $0, keyID: keyID) }
        }
        let known: [String: String]
        do {
            known = try await signatures.signatures(for: hashes)
        } catch {
            throw .internal("Could not read stored thought signatures.")
        }

        var contents: [GeminiWire.Content] = []
        for turn in turns {
            var parts: [GeminiWire.Part] = []
            if !turn.text.isEmpty {
                parts.append(GeminiWire.Part(text: turn.text, thoughtSignature: turn.role == "model" ? known[Self.hash(text: turn.text, keyID: keyID)] : nil))
            }
            for image in turn.images {
                parts.append(GeminiWire.Part(inlineData: image, thoughtSignature: turn.role == "model" ? known[Self.hash(image: image, keyID: keyID)] : nil))
            }
            if turn.role == "model" && family.thinks {
                // History Gemini did not produce (or whose signature expired): Google's documented bypass.
                for index in parts.indices where (index == 0 || parts[index].inlineData != nil) && parts[index].thoughtSignature == nil {
                    parts[index].thoughtSignature = Self.bypassSignature
                }
            }
            guard !parts.isEmpty else { continue }
            if let last = contents.last, last.role == turn.role {
                contents[contents.count - 1].parts = (last.parts ?? []) + parts
            } else {
                contents.append(GeminiWire.Content(role: turn.role, parts: parts))
            }
        }
        return contents
    }

    /// The signature-store key of an assistant text, scoped to the API key (a common reply such
    /// as "Here is your image." must not hand one tenant another's signature).
    static func hash(text: String, keyID: String) -> String {
        var hasher = SHA256()
        hasher.update(data: Array("\(keyID)\n".utf8))
        hasher.update(data: Array(text.trimmingCharacters(in: .whitespacesAndNewlines).utf8))
        return "t:" + hasher.finalize().lowercaseHex
    }

    /// A fingerprint of the image's base64 text, scoped to the API key: its length and its first
    /// and last 256 KiB. Hashing all of a 4K image (~47 MB of base64) on every streamed reply
    /// cost more than the rest of the request; Google's images differ within their first bytes.
    static func hash(image: GeminiWire.InlineData, keyID: String) -> String {
        var fingerprint = ImageFingerprint()
        fingerprint.add(image.data.bytes)
        return fingerprint.hash(keyID: keyID)
    }

    /// `hash(image:keyID:)` of an image that passes by in pieces: keeps its first and last
    /// 256 KiB of base64, never the whole (copied with `memcpy`, never byte by byte: a 4K
    /// image is 47 MB).
    struct ImageFingerprint {
        static let sample = 256 * 1024
        private(set) var count = 0
        /// The first `2 × sample` bytes.
        private var head = ByteBuffer()
        /// The bytes after `head`, trimmed to their last `sample` (or up to twice that).
        private var tail = ByteBuffer()

        mutating func add(_ bytes: ByteBuffer) {
            var rest = bytes
            count += rest.readableBytes
            if head.readableBytes < 2 * Self.sample {
                var taken = rest.readSlice(length: min(2 * Self.sample - head.readableBytes, rest.readableBytes))!
                head.writeBuffer(&taken)
            }
            guard rest.readableBytes > 0 else { return }
            if rest.readableBytes >= Self.sample {
                rest.moveReaderIndex(forwardBy: rest.readableBytes - Self.sample)
                tail.clear()
            }
            tail.writeBuffer(&rest)
            if tail.readableBytes > 2 * Self.sample {
                tail.moveReaderIndex(forwardBy: tail.readableBytes - Self.sample)
                tail.discardReadBytes()
            }
        }

        func hash(keyID: String) -> String {
            var hasher = SHA256()
            hasher.update(data: Array("\(keyID)\n\(count):".utf8))
            if count <= 2 * Self.sample {
                head.withUnsafeReadableBytes { hasher.update(bufferPointer: $0) }
            } else {
                head.withUnsafeReadableBytes { hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: $0.prefix(Self.sample))) }
                // The last `sample` bytes: from the tail, and from the head's end when the tail is shorter.
                let fromTail = min(tail.readableBytes, Self.sample)
                head.withUnsafeReadableBytes { hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: $0.suffix(Self.sample - fromTail))) }
                tail.withUnsafeReadableBytes { hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: $0.suffix(fromTail))) }
            }
            return "i:" + hasher.finalize().lowercaseHex
        }
    }

    // MARK: Reply

    /// Turns image parts into client URLs and remembers the signatures the answer carried.
    struct Collector {
        var text = ""
        var reasoning = ""
        var textSignature: String?
        var imageURLs: [SplicedString] = []
        var signatures: [String: String] = [:]
        var finishReason: String?
        var blocked: String?
        var usage: GeminiWire.UsageMetadata?
        /// Images and text the client actually received (written to it, or returned whole).
        var deliveredImages = 0
        var deliveredText = false
    }

    func imageURL(for image: GeminiWire.InlineData, job: ChatJob) async throws(GatewayError) -> SplicedString {
        switch job.format {
        case .url:
            do {
                return SplicedString(try await urls.store(base64: image.data, baseURL: job.baseURL))
            } catch {
                throw .internal("The image was generated but could not be stored; retry with response_format b64_json.")
            }
        case .b64JSON:
            let head = SafeBase64.decode(image.data.bytes.readableBytesView.prefix(24)) ?? []
            return SplicedString([.text("data:\(ImageSniffer.mimeType(of: head) ?? image.mimeType);base64,"), .raw(image.data.bytes)])
        }
    }

    /// Reads the parts of one Gemini answer (or stream event) into the collector; returns the
    /// deltas to send: text, reasoning, and image URLs, in order.
    ///
    /// `streamedImages`: the fingerprints of this event's images that were already written to
    /// the client as they arrived (their `data` is empty here), in document order.
    func absorb(_ response: GeminiWire.Response, into collector: inout Collector, job: ChatJob, streamedImages: [String] = []) async throws(GatewayError) -> [ChatMessageOut] {
        if let metadata = response.usageMetadata { collector.usage = metadata }
        if let block = response.promptFeedback?.blockReason {
            collector.blocked = "Google blocked the prompt: \(block)."
        }
        guard let candidate = response.candidates?.first else { return [] }
        if let reason = candidate.finishReason {
            collector.finishReason = reason
            if ImageTranslation.policyReasons.contains(reason) {
                collector.blocked = "Google's safety filter stopped the reply (\(reason))" + (candidate.finishMessage.map { ": \($0)" } ?? ".")
            }
        }
        var deltas: [ChatMessageOut] = []
        var streamed = streamedImages[...]
        for part in candidate.content?.parts ?? [] {
            if part.inlineData != nil, let fingerprint = streamed.popFirst() {
                if part.thought != true, let signature = part.thoughtSignature { collector.signatures[fingerprint] = signature }
                continue
            }
            if part.thought == true {
                if let text = part.text, !text.isEmpty {
                    collector.reasoning += text
                    deltas.append(ChatMessageOut(reasoningContent: text))
                }
                continue  // interim thought images are never results
            }
            if let image = part.inlineData {
                let url = try await imageURL(for: image, job: job)
                if let signature = part.thoughtSignature { collector.signatures[Self.hash(image: image, keyID: job.key.id)] = signature }
                collector.imageURLs.append(url)
                let markdown = SplicedString(collector.text.isEmpty && collector.imageURLs.count == 1 ? "" : "\n\n") + ChatTranslation.markdown(imageURL: url)
                deltas.append(ChatMessageOut(
                    content: job.markdownImages ? markdown : nil,
                    images: job.imagesField ? [ChatImage(url: url, index: collector.imageURLs.count - 1)] : nil,
                    carriedImages: 1
                ))
            } else {
                if let signature = part.thoughtSignature { collector.textSignature = collector.textSignature ?? signature }
                if let text = part.text, !text.isEmpty {
                    collector.text += text
                    deltas.append(ChatMessageOut(content: SplicedString(text)))
                }
            }
        }
        return deltas
    }

    /// Stores the signatures of this answer and charges what the client received: its usage as
    /// Google reported it, or (when the stream broke before the usage arrived) the catalog's
    /// figure for the delivered images. A refusal costs nothing. Returns the usage it used.
    @discardableResult
    func account(_ collector: Collector, job: ChatJob, settlement: Settlement, logger: Logger) async -> ImageUsage {
        var signatures = collector.signatures
        if let signature = collector.textSignature, !collector.text.isEmpty { signatures[Self.hash(text: collector.text, keyID: job.key.id)] = signature }
        if !signatures.isEmpty {
            do { try await self.signatures.saveSignatures(signatures) } catch { logger.error("could not store thought signatures", metadata: ["error": "\(error)"]) }
        }
        var usage = ImageTranslation.usage(of: collector.usage)
        if collector.usage == nil, collector.deliveredImages > 0 {
            let tokens = settlement.servedBy.family.outputImageTokens(job.spec.imageSize) * collector.deliveredImages
            usage = ImageUsage(
                inputTokens: 0, inputTokensDetails: .init(imageTokens: 0, textTokens: 0),
                outputTokens: tokens, outputTokensDetails: .init(imageTokens: tokens, textTokens: 0), totalTokens: tokens
            )
        }
        if collector.blocked != nil { settlement.note("content_filter") }
        if collector.blocked == nil, collector.deliveredImages > 0 || collector.deliveredText {
            settlement.delivered(images: collector.deliveredImages, usage: usage)
        }
        return usage
    }

    func chatUsage(_ collector: Collector, costMicroUSD: Int? = nil) -> ChatUsage {
        var usage = ChatUsage(ImageTranslation.usage(of: collector.usage), reasoningTokens: collector.usage?.thoughtsTokenCount ?? 0)
        usage.cost = costMicroUSD.map(TokenPrices.usd)
        return usage
    }

    static func completionID() -> String {
        "chatcmpl-" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased().prefix(24)
    }

    /// The non-streamed reply (settled by the caller, on every path).
    func whole(_ job: ChatJob, settlement: Settlement, logger: Logger) async throws(GatewayError) -> Response {
        var collector = Collector()
        // Billed by the pipeline as soon as Google answers, whether or not it can be delivered.
        let response = try await pipeline.generate(job.gemini, size: job.spec.imageSize, settlement: settlement, logger: logger)
        _ = try await absorb(response, into: &collector, job: job)
        collector.deliveredImages = collector.imageURLs.count
        collector.deliveredText = !collector.text.isEmpty
        await account(collector, job: job, settlement: settlement, logger: logger)

        var content = SplicedString(collector.text)
        for url in collector.imageURLs where job.markdownImages {
            content = content + SplicedString(content.isEmpty ? "" : "\n\n") + ChatTranslation.markdown(imageURL: url)
        }
        let message = ChatMessageOut(
            role: "assistant",
            content: collector.blocked != nil && content.isEmpty ? nil : content,
            refusal: collector.blocked,
            images: collector.imageURLs.isEmpty || !job.imagesField ? nil : collector.imageURLs.enumerated().map { ChatImage(url: $1, index: $0) },
            reasoningContent: collector.reasoning.isEmpty ? nil : collector.reasoning
        )
        var completion = ChatCompletion(
            id: Self.completionID(), object: "chat.completion", created: Int(Date().timeIntervalSince1970), model: job.model.name,
            choices: [ChatChoice(message: message, finishReason: ImageTranslation.chatFinishReason(collector.finishReason, blocked: collector.blocked != nil))],
            usage: chatUsage(collector, costMicroUSD: settlement.chargeMicroUSD)
        )
        completion.serviceTier = settlement.servedTier.openAIName
        do {
            return try json(completion, sortedKeys: false)
        } catch {
            throw .internal("The answer could not be encoded.")
        }
    }
}
