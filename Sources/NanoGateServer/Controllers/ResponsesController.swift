import ExtrasBase64
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NanoGateCore
import NanoGateStorage
import NIOCore
import Synchronization
import Upstream

/// OpenAI's Responses API for the image models: `POST /v1/responses` (streamed or not, in the
/// background or not), `GET` and `DELETE /v1/responses/{id}`, `POST /v1/responses/{id}/cancel`.
///
/// A response is a conversation turn: its input (a string, or OpenAI's input items) becomes
/// user and model turns for Gemini as chat's messages do (`ChatController.assemble`: thought
/// signatures restored, the same limits), after the turns of `previous_response_id` when given.
/// Images come back as `image_generation_call` items (base64 `result`, with the size, format
/// and quality read from the bytes, as on the images API); text as an `output_text` message; the
/// model's thought summary as a `reasoning` item. Image options come from an `image_generation`
/// tool, answered by the images API's rules; any other tool is refused.
///
/// Stored responses (`store`, true by default) keep the conversation for `previous_response_id`
/// and answer `GET` for the key that made them only (404 for any other). Their images live in
/// the image store, by name, and expire with the image URLs (`NANOGATE_URL_TTL`).
struct ResponsesController {
    let catalog: ModelCatalog
    let pipeline: RequestPipeline
    /// Conversations: turns to Gemini contents, thought signatures.
    let chat: ChatController
    let store: SQLStore
    let inputs: InputImageLoader
    let publicURL: PublicURL
    let keepAliveInterval: Duration
    /// Background responses run here, each holding its own settlement.
    let background: BackgroundResponses
    /// The longest a request can run (every upstream attempt at its longest timeout, or the
    /// deadline, and a margin): a background response older than this is no longer running.
    let staleAfter: TimeInterval

    var images: any ImageRepository { pipeline.images.images }

    func addRoutes(to group: RouterGroup<GatewayRequestContext>) {
        group.post("responses", use: create)
        group.get("responses/:id", use: retrieve)
        group.delete("responses/:id", use: delete)
        group.post("responses/:id/cancel", use: cancel)
    }

    /// A validated response request, its Gemini request built.
    struct ResponseJob: Sendable {
        var id: String
        var key: APIKey
        var model: CatalogModel
        var spec: ImageSpec
        var options: ImageOptions
        var gemini: GeminiWire.Request
        /// The response as it starts (`in_progress`, no output): what the answer fills in.
        var shell: ResponseObject
        /// The conversation up to this answer, for `store` (nil when not stored).
        var conversation: [StoredResponse.Turn]?
        var baseURL: String
    }

    // MARK: Create

    @Sendable func create(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        let key = try context.requireKey()
        let input = try await request.decodeJSON(ResponsesRequest.self, limit: inputs.limits.maxRequestBytes)
        let baseURL = publicURL.base(of: request)
        let tier = try pipeline.tier(try ServiceTier.requested(input.serviceTier), key: key, background: input.background)
        var opened: Settlement?
        let job: ResponseJob
        do {
            job = try await prepare(input, key: key, baseURL: baseURL) { (model, spec, prompt, images) throws(GatewayError) in
                let estimate = pipeline.estimate(key: key, model: model, spec: spec, count: 1, prompt: prompt, inputImages: images, tier: tier)
                let info = RequestInfo(requestID: context.requestID, started: context.started, observation: context.observation, requestedSize: spec.label)
                opened = try await pipeline.open(key: key, endpoint: .responses, model: model, info: info, estimateMicroUSD: estimate, tier: tier, logger: context.logger)
            }
        } catch {
            if let opened { await pipeline.settle(opened, status: error.status, errorCode: error.code, logger: context.logger) }
            throw error
        }
        guard let settlement = opened else { throw GatewayError.internal("The request was not admitted.") }
        context.logger.info("response", metadata: ["model": "\(job.model.name)", "stream": "\(input.stream)", "background": "\(input.background)"])

        if input.background {
            var queued = job.shell
            queued.status = "queued"
            do {
                try await save(queued, job: job, answer: nil)
            } catch {
                await pipeline.settle(settlement, status: 500, errorCode: "internal_error", logger: context.logger)
                throw GatewayError.internal("The background response could not be stored.")
            }
            let logger = context.logger
            background.start(id: job.id) {
                await self.runInBackground(job, settlement: settlement, logger: logger)
            }
            return try json(queued, sortedKeys: false)
        }
        if input.stream {
            return try await streamed(job, settlement: settlement, logger: context.logger)
        }
        if let interval = KeepAliveAnswer.requested(request, defaultInterval: keepAliveInterval) ?? job.model.keepAliveSeconds.map({ .seconds($0) }) {
            // Status and headers now, spaces while Google works, then the response (or its error).
            let logger = context.logger
            let pipeline = self.pipeline
            return KeepAliveAnswer.response(interval: interval, survivesDisconnect: request.headers[IdempotencyMiddleware.header] != nil, logger: logger) {
                try SplicedJSON.encode(try await pipeline.settling(settlement, logger: logger) { () throws(GatewayError) -> ResponseObject in
                    try await self.answer(job, settlement: settlement, logger: logger)
                })
            }
        }
        var response = try await pipeline.settling(settlement, logger: context.logger) { () throws(GatewayError) -> Response in
            let answer = try await answer(job, settlement: settlement, logger: context.logger)
            do {
                return try json(answer, sortedKeys: false)
            } catch {
                throw .internal("The answer could not be encoded.")
            }
        }
        response.headers[ImagesController.upstreamModelHeader] = settlement.servedBy.id
        response.headers[ImagesController.costHeader] = Pricing.usdText(settlement.chargeMicroUSD)
        return response
    }

    /// Validates the request against the catalog and the key, builds the conversation (the
    /// stored one of `previous_response_id`, then this input) and calls `admit` with the model,
    /// size, prompt text and image count before any image is read or fetched.
    func prepare(
        _ input: ResponsesRequest, key: APIKey, baseURL: String, admit: (CatalogModel, ImageSpec, String, Int) async throws(GatewayError) -> Void
    ) async throws(GatewayError) -> ResponseJob {
        guard let name = input.model, !name.isEmpty else {
            throw .invalidParameter("model", "Missing required parameter: 'model'.", code: "missing_required_parameter")
        }
        guard let model = catalog.model(named: name), key.mayUse(model: name) else {
            throw .unknownModel(name, known: catalog.names.filter { key.mayUse(model: $0) })
        }
        var imageTool: ResponseTool?
        for (index, tool) in input.tools.enumerated() {
            guard tool.type == "image_generation" else {
                throw .invalidParameter(
                    "tools[\(index)].type", "Tools of type '\(tool.type)' are not supported: NanoGate's image models take only the 'image_generation' tool.",
                    code: "unsupported_value"
                )
            }
            guard imageTool == nil else { throw .invalidParameter("tools[\(index)]", "Send at most one 'image_generation' tool.") }
            imageTool = tool
        }
        var toolOptions = imageTool?.options ?? [:]
        // Fields of OpenAI's tool that the images API has no parameter for.
        let size = toolOptions.removeValue(forKey: "size")
        let ratio = toolOptions.removeValue(forKey: "aspect_ratio")
        toolOptions["model"] = nil
        toolOptions["stream"] = nil
        let options = try ImageOptions.parse(toolOptions)
        if options.outputFormat == .webp, !ImageConverter.webpAvailable {
            throw .invalidParameter("output_format", "WebP output needs libwebp, which this server does not have; ask for png or jpeg.", code: "unsupported_value")
        }
        let spec = try SizeRules.resolve(model: model, size: size == "auto" ? nil : size, aspectRatio: ratio, quality: options.quality)
        let effort = try ReasoningEffort.parse(input.reasoningEffort)
        if effort != nil, model.family.thinkingLevels.isEmpty { throw ReasoningEffort.unsupported(model: model.name) }
        if input.background, !input.store {
            throw .invalidParameter("background", "A background response must be stored: leave out 'store' or set it to true.")
        }
        if input.background, input.stream {
            throw .invalidParameter("stream", "A background response cannot stream here; poll GET /v1/responses/{id} instead.")
        }
        guard !input.input.isEmpty else { throw .invalidParameter("input", "'input' must not be empty.", code: "missing_required_parameter") }

        // The stored conversation first, then this input.
        var earlier: [StoredResponse.Turn] = []
        if let previous = input.previousResponseID {
            guard let stored = try await loadStored(id: previous, keyID: key.id) else {
                throw GatewayError(
                    status: 404, type: "invalid_request_error", code: "previous_response_not_found", param: "previous_response_id",
                    message: "Previous response with id '\(previous)' not found."
                )
            }
            earlier = stored.conversation
        }
        var system = input.instructions.map { [$0] } ?? []
        var pending: [(role: String, text: String, urls: [(url: String, param: String)])] = []
        var parts = 0
        for (index, item) in input.input.enumerated() {
            switch item {
            case .ignored:
                continue
            case .unsupported(let type):
                throw .invalidParameter("input[\(index)]", "Input items of type '\(type)' are not supported; send messages (input_text, input_image) or earlier image_generation_call items.")
            case .generatedImage(let result):
                guard let result, !result.isEmpty else { continue }
                parts += 1
                pending.append(("model", "", [("data:image/png;base64,\(result)", "input[\(index)].result")]))
            case .message(let role, let content):
                var texts: [String] = []
                var urls: [(url: String, param: String)] = []
                for (partIndex, part) in content.enumerated() {
                    parts += 1
                    switch part {
                    case .text(let text): texts.append(text)
                    case .image(let url): urls.append((url, "input[\(index)].content[\(partIndex)].image_url"))
                    case .ignored: continue
                    case .unsupported(let type):
                        throw .invalidParameter("input[\(index)].content[\(partIndex)]", "Content parts of type '\(type)' are not supported; send input_text and input_image (with image_url).")
                    }
                }
                let text = texts.joined(separator: "\n")
                switch role {
                case "system", "developer":
                    system.append(text)
                case "user", "assistant":
                    guard !text.isEmpty || !urls.isEmpty else { continue }
                    pending.append((role == "assistant" ? "model" : "user", text, urls))
                default:
                    throw .invalidParameter("input[\(index)].role", "Role '\(role)' is not supported; use user, assistant, system or developer.")
                }
            }
        }
        guard parts <= ChatController.maxParts else {
            throw .invalidParameter("input", "Too many content parts: \(parts); at most \(ChatController.maxParts) are accepted.", code: "too_many_parts")
        }
        guard pending.contains(where: { $0.role == "user" }) else {
            throw .invalidParameter("input", "The input needs at least one user message.")
        }
        // Every limit before the first read or fetch.
        let imageCount = earlier.reduce(0) { $0 + $1.images.count } + pending.reduce(0) { $0 + $1.urls.count }
        guard imageCount <= model.maxInputImages else {
            throw .invalidParameter("input", "'\(model.name)' takes at most \(model.maxInputImages) images per request (earlier turns included); \(imageCount) were sent.", code: "too_many_images")
        }
        let prompt = (system + earlier.map(\.text) + pending.map(\.text)).joined(separator: "\n")
        try PromptLimit.check(prompt, param: "input")
        try await admit(model, spec, prompt, imageCount)

        var turns: [ChatController.ConversationTurn] = []
        for turn in earlier {
            var loaded: [GeminiWire.InlineData] = []
            for image in turn.images {
                loaded.append(try await load(image, param: "previous_response_id"))
            }
            turns.append(.init(role: turn.role, text: turn.text, images: loaded))
        }
        let storedSoFar = turns.count
        for turn in pending {
            var loaded: [GeminiWire.InlineData] = []
            for reference in turn.urls {
                loaded.append(try await inputs.load(url: reference.url, param: reference.param, baseURLs: [baseURL]))
            }
            turns.append(.init(role: turn.role, text: turn.text, images: loaded))
        }
        var gemini = ImageTranslation.geminiRequest(prompt: "", spec: spec, family: model.family, reasoningEffort: effort)
        gemini.contents = try await chat.assemble(turns, system: system, family: model.family, keyID: key.id, param: "input")

        var conversation: [StoredResponse.Turn]?
        if input.store {
            // This input's images go to the image store, so that a later turn reads them by name.
            var kept = earlier
            for turn in turns[storedSoFar...] {
                var names: [StoredResponse.Image] = []
                for image in turn.images { names.append(try await keep(image)) }
                // Instructions are not carried over to a later response, as on OpenAI.
                kept.append(.init(role: turn.role, text: turn.text, images: names))
            }
            conversation = kept
        }
        let id = Self.newID("resp_")
        let shell = ResponseObject(
            id: id, createdAt: Int(Date().timeIntervalSince1970), status: "in_progress", background: input.background,
            instructions: input.instructions, metadata: input.metadata ?? [:], model: model.name,
            previousResponseID: input.previousResponseID, store: input.store, tools: input.tools
        )
        return ResponseJob(id: id, key: key, model: model, spec: spec, options: options, gemini: gemini, shell: shell, conversation: conversation, baseURL: baseURL)
    }

    // MARK: Answer

    /// The non-streamed answer: Google's reply read into output items, the client's charge
    /// settled from what it receives, the response stored when asked. Settled by the caller.
    func answer(_ job: ResponseJob, settlement: Settlement, logger: Logger) async throws(GatewayError) -> ResponseObject {
        let reply = try await pipeline.generate(job.gemini, size: job.spec.imageSize, settlement: settlement, logger: logger)
        var answer = ResponseAnswer()
        _ = answer.absorb(reply)
        var response = job.shell
        var results: [String: FinishedImage] = [:]
        var imageItems: [ResponseOutputItem] = []
        for image in answer.images {
            var item = ResponseOutputItem.image(id: Self.newID("ig_"), status: "completed")
            let finished = try await finish(image.data, into: &item, job: job, revisedPrompt: answer.text)
            results[item.id] = finished
            imageItems.append(item)
        }
        if imageItems.isEmpty { imageItems = [ResponseOutputItem.image(id: Self.newID("ig_"), status: "failed")] }
        response.output = imageItems + answer.closingItems()
        try await complete(&response, answer: answer, delivered: results, job: job, settlement: settlement, logger: logger)
        return response
    }

    /// Ends a response: its status from what Google did, the charge (a refusal costs nothing),
    /// signatures and the stored copy. `delivered`: the images the client has, by item id.
    ///
    /// The charge follows what the client has: the images it received, or an answer of text
    /// alone that reached it whole (`textDelivered`). A stream the client left before its image
    /// costs nothing, whatever text was written before.
    func complete(
        _ response: inout ResponseObject, answer: ResponseAnswer, delivered: [String: FinishedImage], textDelivered: Bool = true, job: ResponseJob,
        settlement: Settlement, logger: Logger
    ) async throws(GatewayError) {
        if let usage = answer.usage { settlement.served(tier: ServiceTier(echoed: usage.serviceTier)) }
        let usage = ImageTranslation.usage(of: answer.usage)
        if answer.blocked != nil {
            settlement.note("content_filter")
            response.status = "incomplete"
            response.incompleteDetails = .init(reason: "content_filter")
        } else {
            if !delivered.isEmpty || (textDelivered && answer.images.isEmpty && !answer.text.isEmpty) {
                let first = response.output.first { delivered[$0.id] != nil }.flatMap { delivered[$0.id] }
                settlement.delivered(images: delivered.count, usage: usage, pixels: first?.pixels)
            }
            // A stream that broke stays failed; what it delivered is still charged.
            if response.status != "failed" { response.status = "completed" }
        }
        response.serviceTier = settlement.servedTier.openAIName
        response.usage = ResponseUsage(usage, reasoningTokens: answer.usage?.thoughtsTokenCount ?? 0, cost: TokenPrices.usd(settlement.chargeMicroUSD))
        await saveSignatures(answer, keyID: job.key.id, logger: logger)
        guard job.conversation != nil else { return }
        do {
            try await save(response, job: job, answer: answer, delivered: delivered)
        } catch {
            // The client has its answer; only the continuation is lost.
            logger.error("could not store a response", metadata: ["error": "\(error)"])
        }
    }

    /// The image as delivered (the format the client asked for), its description on the item.
    func finish(_ image: GeminiWire.InlineData, into item: inout ResponseOutputItem, job: ResponseJob, revisedPrompt: String) async throws(GatewayError) -> FinishedImage {
        let finished = try await pipeline.images.finish(image, options: job.options)
        item.result = finished.base64
        item.outputFormat = finished.format?.rawValue
        item.size = finished.pixels?.description
        item.quality = ImageQuality.reported(for: job.spec.imageSize)
        item.background = "opaque"
        item.revisedPrompt = revisedPrompt.isEmpty ? nil : revisedPrompt
        return finished
    }

    func saveSignatures(_ answer: ResponseAnswer, keyID: String, logger: Logger) async {
        var signatures: [String: String] = [:]
        for image in answer.images {
            if let signature = image.signature { signatures[ChatController.hash(image: image.data, keyID: keyID)] = signature }
        }
        if let signature = answer.textSignature, !answer.text.isEmpty { signatures[ChatController.hash(text: answer.text, keyID: keyID)] = signature }
        guard !signatures.isEmpty else { return }
        do { try await chat.signatures.saveSignatures(signatures) } catch { logger.error("could not store thought signatures", metadata: ["error": "\(error)"]) }
    }

    static func newID(_ prefix: String) -> String {
        prefix + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased() + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased().prefix(16)
    }

    // MARK: Stored responses

    /// Keeps an image in the image store for a later turn.
    func keep(_ image: GeminiWire.InlineData) async throws(GatewayError) -> StoredResponse.Image {
        guard let bytes = SafeBase64.decode(image.data.bytes.readableBytesView) else { throw .internal("An image could not be kept for the conversation.") }
        do {
            return StoredResponse.Image(name: try await images.save(bytes, fileExtension: ImageSniffer.fileExtension(for: image.mimeType)), mimeType: image.mimeType)
        } catch {
            throw .internal("An image could not be kept for the conversation.")
        }
    }

    /// An image of a stored conversation, read back.
    func load(_ image: StoredResponse.Image, param: String) async throws(GatewayError) -> GeminiWire.InlineData {
        let bytes: [UInt8]?
        do { bytes = try await images.load(name: image.name) } catch { throw .internal("The conversation's images could not be read from the image store.") }
        guard let bytes else {
            throw .invalidParameter(param, "The images of this conversation are no longer kept (they expire with image URLs); start a new conversation.", code: "input_expired")
        }
        return GeminiWire.InlineData(mimeType: image.mimeType, data: Base64Text(bytes: ByteBuffer(bytes: Base64.encodeToBytes(bytes: bytes))))
    }

    /// Writes the stored form: the response without base64, the delivered images and the
    /// conversation (with this answer's turn, Google's own images, for their signatures) by name.
    func save(_ response: ResponseObject, job: ResponseJob, answer: ResponseAnswer?, delivered: [String: FinishedImage] = [:]) async throws {
        var stored = StoredResponse(response: response, resultNames: [:], conversation: job.conversation ?? [])
        for index in stored.response.output.indices {
            stored.response.output[index].result = nil
            let id = stored.response.output[index].id
            if let image = delivered[id] {
                guard let bytes = image.bytes ?? SafeBase64.decode(image.base64.bytes.readableBytesView) else { continue }
                stored.resultNames[id] = try await images.save(bytes, fileExtension: ImageSniffer.fileExtension(for: image.format?.mimeType ?? "image/png"))
            }
        }
        if let answer, answer.blocked == nil, !answer.images.isEmpty || !answer.text.isEmpty {
            // Google's own bytes (their signatures are keyed on them): the delivered copy's name
            // when no conversion changed them, else a copy of their own.
            let imageIDs = stored.response.output.filter { $0.type == "image_generation_call" }.map(\.id)
            var names: [StoredResponse.Image] = []
            for (index, image) in answer.images.enumerated() {
                if index < imageIDs.count, let name = stored.resultNames[imageIDs[index]], delivered[imageIDs[index]]?.base64 == image.data.data {
                    names.append(StoredResponse.Image(name: name, mimeType: image.data.mimeType))
                } else {
                    names.append(try await keep(image.data))
                }
            }
            stored.conversation.append(.init(role: "model", text: answer.text, images: names))
        }
        let body = String(decoding: try JSONEncoder().encode(stored), as: UTF8.self)
        let expires = Date().addingTimeInterval(TimeInterval(pipeline.images.ttl.components.seconds))
        // In a task of its own: SQLKit refuses calls from a cancelled task, and a cancelled
        // background response still records how it ended.
        try await Task { [store, keyID = job.key.id] in
            try await store.saveResponse(id: response.id, keyID: keyID, status: response.status, body: body, expiresAt: expires)
        }.value
    }

    /// The key's stored response. A background response still `queued` or `in_progress` past
    /// the longest time a request can run (`staleAfter`), and not running here, was lost with the
    /// instance that ran it (a restart or a crash; its credit hold ran out uncharged): it is
    /// answered, and stored, as failed, so that a client polling it stops.
    func loadStored(id: String, keyID: String, now: Date = Date()) async throws(GatewayError) -> StoredResponse? {
        let row: StoredResponseRow?
        do { row = try await store.response(id: id, keyID: keyID) } catch { throw .internal("Stored responses could not be read.") }
        guard let row else { return nil }
        var stored: StoredResponse
        do {
            stored = try JSONDecoder().decode(StoredResponse.self, from: Data(row.body.utf8))
        } catch {
            throw .internal("A stored response could not be read.")
        }
        let started = Date(timeIntervalSince1970: TimeInterval(stored.response.createdAt))
        if stored.response.background, ["queued", "in_progress"].contains(stored.response.status), !background.isRunning(id: id),
            now.timeIntervalSince(started) > staleAfter
        {
            stored.response.status = "failed"
            stored.response.error = .init(code: "response_lost", message: "The gateway instance running this background response stopped before it finished; create it again.")
            if let body = try? String(decoding: JSONEncoder().encode(stored), as: UTF8.self) {
                try? await store.saveResponse(id: id, keyID: keyID, status: "failed", body: body, expiresAt: row.expiresAt)
            }
        }
        return stored
    }

    static func notFound(_ id: String) -> GatewayError {
        GatewayError(status: 404, type: "invalid_request_error", code: "not_found", param: nil, message: "No response with id '\(id)' found.")
    }

    @Sendable func retrieve(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        let key = try context.requireKey()
        let id = try context.parameters.require("id")
        guard var stored = try await loadStored(id: id, keyID: key.id) else { throw Self.notFound(id) }
        for index in stored.response.output.indices {
            guard let name = stored.resultNames[stored.response.output[index].id], let bytes = try? await images.load(name: name) else { continue }
            stored.response.output[index].result = Base64Text(bytes: ByteBuffer(bytes: Base64.encodeToBytes(bytes: bytes)))
        }
        return try json(stored.response, sortedKeys: false)
    }

    @Sendable func delete(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        let key = try context.requireKey()
        let id = try context.parameters.require("id")
        // A background response running here stops (and writes how it ended) before the row goes.
        if try await loadStored(id: id, keyID: key.id) != nil, let running = background.cancel(id: id) { await running.value }
        let deleted: Bool
        do { deleted = try await store.deleteResponse(id: id, keyID: key.id) } catch { throw GatewayError.internal("Stored responses could not be changed.") }
        guard deleted else { throw Self.notFound(id) }
        struct Deleted: Encodable {
            var id: String
            var object = "response"
            var deleted = true
        }
        return try json(Deleted(id: id), sortedKeys: false)
    }

    /// Cancels a background response still queued or running here and answers it as it ended:
    /// `cancelled` (nothing charged) when the cancel came before Google's answer was taken,
    /// else `completed` (charged, its images kept).
    @Sendable func cancel(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        let key = try context.requireKey()
        let id = try context.parameters.require("id")
        guard var stored = try await loadStored(id: id, keyID: key.id) else { throw Self.notFound(id) }
        guard stored.response.background else {
            throw GatewayError.invalidParameter(nil, "Only background responses can be cancelled.")
        }
        if ["queued", "in_progress"].contains(stored.response.status), let running = background.cancel(id: id) {
            // The task writes how it ended (one writer: no cancelled row over a charged answer).
            await running.value
            stored = try await loadStored(id: id, keyID: key.id) ?? stored
        }
        return try json(stored.response, sortedKeys: false)
    }

    // MARK: Background

    /// Runs a background response to its end and stores each state; settled on every path (a
    /// cancel before Google answered costs nothing).
    func runInBackground(_ job: ResponseJob, settlement: Settlement, logger: Logger) async {
        var running = job.shell
        running.status = "in_progress"
        try? await save(running, job: job, answer: nil)
        do {
            _ = try await pipeline.settling(settlement, logger: logger) { () throws(GatewayError) -> ResponseObject in
                if Task.isCancelled { throw GatewayError.clientDisconnected }
                return try await answer(job, settlement: settlement, logger: logger)
            }
        } catch {
            var ended = job.shell
            if Task.isCancelled {
                ended.status = "cancelled"
            } else {
                ended.status = "failed"
                ended.error = .init(code: error.code ?? "server_error", message: error.message)
            }
            try? await save(ended, job: job, answer: nil)
        }
    }
}

/// What Google said in one answer (or one stream, event by event), read for the Responses API.
struct ResponseAnswer: Sendable {
    var text = ""
    var textSignature: String?
    var reasoning = ""
    /// Result images (never thought images), with Google's signature.
    var images: [(data: GeminiWire.InlineData, signature: String?)] = []
    var blocked: String?
    var usage: GeminiWire.UsageMetadata?

    /// One piece of an answer, in the order Google sent it.
    enum Piece: Sendable {
        case text(String)
        /// More of the thought summary (`reasoning` holds it whole).
        case reasoning
        case image(GeminiWire.InlineData)
        /// An interim thought image (Gemini 3 Pro): a partial image for a stream.
        case thoughtImage(GeminiWire.InlineData)
    }

    mutating func absorb(_ response: GeminiWire.Response) -> [Piece] {
        if let metadata = response.usageMetadata { usage = metadata }
        if let block = response.promptFeedback?.blockReason { blocked = "Google blocked the prompt: \(block)." }
        guard let candidate = response.candidates?.first else { return [] }
        if let reason = candidate.finishReason, ImageTranslation.policyReasons.contains(reason) {
            blocked = "Google's safety filter stopped the reply (\(reason))" + (candidate.finishMessage.map { ": \($0)" } ?? ".")
        }
        var pieces: [Piece] = []
        for part in candidate.content?.parts ?? [] {
            if part.thought == true {
                if let image = part.inlineData { pieces.append(.thoughtImage(image)) }
                if let text = part.text, !text.isEmpty {
                    reasoning += text
                    pieces.append(.reasoning)
                }
                continue
            }
            if let image = part.inlineData {
                images.append((image, part.thoughtSignature))
                pieces.append(.image(image))
            } else if let text = part.text, !text.isEmpty {
                if let signature = part.thoughtSignature { textSignature = textSignature ?? signature }
                self.text += text
                pieces.append(.text(text))
            }
        }
        return pieces
    }

    /// The items after the images: the thought summary, then the text or the refusal.
    func closingItems() -> [ResponseOutputItem] {
        var items: [ResponseOutputItem] = []
        if !reasoning.isEmpty { items.append(.reasoning(id: ResponsesController.newID("rs_"), text: reasoning)) }
        var content: [ResponseContentPart] = []
        if !text.isEmpty { content.append(.outputText(text)) }
        if let blocked { content.append(.refusal(blocked)) }
        if !content.isEmpty { items.append(.message(id: ResponsesController.newID("msg_"), status: "completed", content: content)) }
        return items
    }
}

/// A stored response's JSON (`stored_responses.body`).
struct StoredResponse: Codable, Sendable {
    struct Image: Codable, Sendable {
        var name: String
        var mimeType: String
    }

    struct Turn: Codable, Sendable {
        /// `user` or `model`.
        var role: String
        var text: String
        var images: [Image]
    }

    /// The response with every `result` left out.
    var response: ResponseObject
    /// Each delivered image's name in the image store, by output item id.
    var resultNames: [String: String]
    /// The conversation through this response's answer.
    var conversation: [Turn]
}

/// Background responses running on this instance, so that a cancel or a delete can stop one.
final class BackgroundResponses: Sendable {
    private let tasks = Mutex<[String: Task<Void, Never>]>([:])

    func start(id: String, _ work: @escaping @Sendable () async -> Void) {
        // Registered under the lock before it can finish (its end takes the same lock).
        tasks.withLock { tasks in
            tasks[id] = Task { [weak self] in
                await work()
                self?.finished(id: id)
            }
        }
    }

    private func finished(id: String) {
        _ = tasks.withLock { $0.removeValue(forKey: id) }
    }

    func isRunning(id: String) -> Bool {
        tasks.withLock { $0[id] != nil }
    }

    /// Cancels the response's task and returns it (to await its end); nil when none runs here.
    func cancel(id: String) -> Task<Void, Never>? {
        guard let task = tasks.withLock({ $0.removeValue(forKey: id) }) else { return nil }
        task.cancel()
        return task
    }
}
