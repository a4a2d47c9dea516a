import Foundation
import Hummingbird
import Logging
import NanoGateCore
import Upstream
import NIOCore

/// One event of OpenAI's image stream (`image_generation.*`, `image_edit.*`).
struct ImageStreamEvent: Encodable, Sendable {
    var type: String
    var b64JSON: Base64Text
    var createdAt: Int
    var size: String?
    var quality: String
    var background = "opaque"
    var outputFormat: String?
    var partialImageIndex: Int?
    var usage: ImageUsage?

    enum CodingKeys: String, CodingKey {
        case type, size, quality, background, usage
        case b64JSON = "b64_json"
        case createdAt = "created_at"
        case outputFormat = "output_format"
        case partialImageIndex = "partial_image_index"
    }
}

extension ImagesController {
    /// `stream: true`: OpenAI's image stream as Server-Sent Events. Up to `partial_images`
    /// `*.partial_image` events carry Gemini 3 Pro's interim thought images (Google does not
    /// charge them; the 2.5 and 3.1 Flash models make none), then one `*.completed` event per
    /// image with its usage. Google is called without streaming, so the partial images arrive
    /// together with the final one; keep-alive comments flow while it works.
    ///
    /// Events always carry `b64_json` (OpenAI's stream has no URL form). An image is charged
    /// once its `completed` event was written; a failure is an `error` event at no cost.
    func streamed(_ job: ImageRequest, settlement: Settlement, logger: Logger) -> Response {
        if eventsStreamThrough(job) { return streamedThrough(job, settlement: settlement, logger: logger) }
        let pipeline = self.pipeline
        let prefix = job.endpoint == .imageEdits ? "image_edit" : "image_generation"
        let interval = keepAliveInterval
        return Response(
            status: .ok,
            headers: [.contentType: "text/event-stream", .cacheControl: "no-cache", .init("X-Accel-Buffering")!: "no"],
            body: .init { writer in
                let work = Task { () -> Result<[ImageTranslation.Outcome], GatewayError> in
                    do throws(GatewayError) {
                        return .success(try await pipeline.produceImages(job, settlement: settlement, logger: logger))
                    } catch {
                        return .failure(error)
                    }
                }
                var failure: GatewayError?
                do {
                    let result = try await Heartbeat.wait(for: work, every: interval) { try await writer.write(Heartbeat.sseComment) }
                    switch result {
                    case .failure(let error):
                        failure = error
                        try await Self.write(StreamError(error: .init(error)), event: "error", to: &writer)
                    case .success(let outcomes):
                        let created = Int(Date().timeIntervalSince1970)
                        let quality = ImageQuality.reported(for: job.spec.imageSize)
                        var partialIndex = 0
                        for outcome in outcomes {
                            for draft in outcome.thoughtImages where partialIndex < job.options.partialImages {
                                let image = try await pipeline.images.finish(draft, options: job.options)
                                let event = ImageStreamEvent(
                                    type: "\(prefix).partial_image", b64JSON: image.base64, createdAt: created, size: image.pixels?.description,
                                    quality: quality, outputFormat: image.format?.rawValue, partialImageIndex: partialIndex
                                )
                                try await Self.write(event, event: event.type, to: &writer)
                                partialIndex += 1
                            }
                            let image = try await pipeline.images.finish(outcome.images[0], options: job.options)
                            // This image's share of the charge: the events' costs add up to the usage row's.
                            var usage = outcome.usage
                            usage.cost = TokenPrices.usd(settlement.charge(after: outcome.usage) - settlement.chargeMicroUSD)
                            let event = ImageStreamEvent(
                                type: "\(prefix).completed", b64JSON: image.base64, createdAt: created, size: image.pixels?.description,
                                quality: quality, outputFormat: image.format?.rawValue, usage: usage
                            )
                            try await Self.write(event, event: event.type, to: &writer)
                            settlement.delivered(images: 1, usage: outcome.usage, pixels: image.pixels)
                        }
                    }
                    // Settled before the stream's end: a client that reads its usage next sees it.
                    await pipeline.settle(settlement, status: failure?.status ?? 200, errorCode: failure?.code, logger: logger)
                    try await writer.finish(nil)
                } catch let error as GatewayError {
                    // A conversion failed after Google answered: tell the client, charge what it got.
                    failure = error
                    try? await Self.write(StreamError(error: .init(error)), event: "error", to: &writer)
                    await pipeline.settle(settlement, status: failure?.status ?? 200, errorCode: failure?.code, logger: logger)
                    try? await writer.finish(nil)
                } catch {
                    work.cancel()
                    failure = .clientDisconnected
                }
                await pipeline.settle(settlement, status: failure?.status ?? 200, errorCode: failure?.code, logger: logger)
            }
        )
    }

    /// Whether the image stream's one `completed` event carries Google's base64 as it arrives:
    /// one image, no conversion, from a family that makes no interim thought images (so no
    /// partial images to tell apart, which Google's JSON does only after each image's data).
    func eventsStreamThrough(_ job: ImageRequest) -> Bool {
        job.count == 1 && job.options.outputFormat == nil && job.options.outputCompression == nil && job.model.family != .pro3
    }

    /// The image stream with its `completed` event written as Google's answer arrives (memory
    /// holds one piece of it, never the image): the event's `b64_json` first, the fields that
    /// need the whole answer (`usage`) after it. A failure before the image began is an `error`
    /// event at no cost; an answer that breaks inside the image ends the stream broken (never
    /// an event that parses with half an image), uncharged, and logged.
    func streamedThrough(_ job: ImageRequest, settlement: Settlement, logger: Logger) -> Response {
        let pipeline = self.pipeline
        let type = (job.endpoint == .imageEdits ? "image_edit" : "image_generation") + ".completed"
        let interval = keepAliveInterval
        let gemini = ImageTranslation.geminiRequest(
            prompt: job.prompt, inputImages: job.inputImages, spec: job.spec, family: job.model.family, reasoningEffort: job.options.reasoningEffort
        )
        return Response(
            status: .ok,
            headers: [.contentType: "text/event-stream", .cacheControl: "no-cache", .init("X-Accel-Buffering")!: "no"],
            body: .init { writer in
                let call = Task { () -> Result<GeminiAnswerBody, GatewayError> in
                    do throws(GatewayError) {
                        return .success(try await pipeline.answerBody(gemini, size: job.spec.imageSize, settlement: settlement, logger: logger))
                    } catch {
                        return .failure(error)
                    }
                }
                var failure: GatewayError?
                var begun = false
                do {
                    let answer = try await Heartbeat.wait(for: call, every: interval) { try await writer.write(Heartbeat.sseComment) }.get()
                    let reader = AnswerReader(answer: answer)
                    let head = try await ImageHead.read(from: reader, settlement: settlement)
                    begun = true
                    try await writer.write(ByteBuffer(string: #"event: \#(type)\#ndata: {"type":"\#(type)","b64_json":""#))
                    try await head.passImage(of: reader, to: &writer)
                    let outcome = try reader.finishedOutcome(settlement: settlement)
                    var usage = outcome.usage
                    usage.cost = TokenPrices.usd(settlement.charge(after: outcome.usage))
                    let rest = CompletedEventTail(
                        createdAt: Int(Date().timeIntervalSince1970), size: head.pixels?.description, quality: ImageQuality.reported(for: job.spec.imageSize),
                        outputFormat: head.format?.rawValue, usage: usage
                    )
                    try await writer.write(rest.encoded())
                    settlement.delivered(images: 1, usage: outcome.usage, pixels: head.pixels)
                    // Settled before the stream's end: a client that reads its usage next sees it.
                    await pipeline.settle(settlement, status: failure?.status ?? 200, errorCode: failure?.code, logger: logger)
                    try await writer.finish(nil)
                } catch let error as GatewayError where !begun {
                    failure = error
                    try? await Self.write(StreamError(error: .init(error)), event: "error", to: &writer)
                    await pipeline.settle(settlement, status: failure?.status ?? 200, errorCode: failure?.code, logger: logger)
                    try? await writer.finish(nil)
                } catch let error as AnswerReadFailure where !begun {
                    failure = GatewayError(upstream: error.error)
                    try? await Self.write(StreamError(error: .init(failure!)), event: "error", to: &writer)
                    await pipeline.settle(settlement, status: failure?.status ?? 200, errorCode: failure?.code, logger: logger)
                    try? await writer.finish(nil)
                } catch let error as GatewayError {
                    failure = error
                } catch let error as AnswerReadFailure {
                    failure = GatewayError(upstream: error.error)
                } catch {
                    // A write failed: the client went away.
                    call.cancel()
                    failure = .clientDisconnected
                }
                await pipeline.settle(settlement, status: failure?.status ?? 200, errorCode: failure?.code, logger: logger)
                if begun, let failure, failure.code != GatewayError.clientDisconnected.code {
                    logger.error("the image broke off mid-answer; the client's stream ends broken", metadata: ["error": "\(failure.message)"])
                    // Throwing closes the connection without the body's end.
                    throw failure
                }
            }
        )
    }

    /// What follows the base64 in a streamed `completed` event: `"` ends it, then the event's
    /// other fields (the same as an event built whole).
    struct CompletedEventTail: Encodable {
        var createdAt: Int
        var size: String?
        var quality: String
        var background = "opaque"
        var outputFormat: String?
        var usage: ImageUsage

        enum CodingKeys: String, CodingKey {
            case size, quality, background, usage
            case createdAt = "created_at"
            case outputFormat = "output_format"
        }

        func encoded() throws -> ByteBuffer {
            let fields = String(decoding: try JSONEncoder().encode(self), as: UTF8.self)
            return ByteBuffer(string: "\"," + fields.dropFirst() + "\n\n")
        }
    }

    /// `{"type":"error","error":{…}}`: the OpenAI SDKs raise on an event whose data has `error`.
    struct StreamError: Encodable {
        var type = "error"
        var error: ErrorResponse.Body

        init(error: ErrorResponse) {
            self.error = error.error
        }
    }

    static func write(_ value: some Encodable, event: String, to writer: inout any ResponseBodyWriter) async throws {
        let pieces: [ByteBuffer]
        do {
            pieces = try SplicedJSON.encode(value)
        } catch {
            throw GatewayError.internal("The event could not be encoded.")
        }
        try await writer.write(ByteBuffer(string: "event: \(event)\ndata: "))
        for piece in pieces { try await writer.write(piece) }
        try await writer.write(ByteBuffer(string: "\n\n"))
    }
}
