import AsyncAlgorithms
import Foundation
import Hummingbird
import Logging
import NanoGateCore
import NanoGateStorage
import NIOCore
import NIOFoundationCompat
import Synchronization
import Upstream

extension ChatController {
    /// The streamed reply: Server-Sent Events of `chat.completion.chunk`s, then `data: [DONE]`.
    ///
    /// Upstream errors before Google answers are ordinary HTTP errors; after that they arrive as
    /// an SSE `error` event (the OpenAI SDKs raise on it), mid-stream Google errors included.
    /// Upstream events pass through a channel that suspends the reader until the writer took
    /// the previous event, so memory holds at most one event (one image) per stream.
    ///
    /// Settled on every path, by what the client received: a client that disconnects after an
    /// image chunk keeps the image (its URL works), so the gateway reads Google's answer to its
    /// end (without writing) to learn the usage, and charges it; one that leaves before any
    /// image costs nothing and Google's stream is cancelled.
    func streamed(_ job: ChatJob, settlement: Settlement, logger: Logger) async throws -> Response {
        // Errors until Google's head (within one keep-alive interval) are plain HTTP errors.
        let pipeline = self.pipeline
        let call = try await UpstreamStream.start(job.gemini, size: job.spec.imageSize, pipeline: pipeline, settlement: settlement, within: keepAliveInterval, logger: logger)
        let id = Self.completionID()
        let created = Int(Date().timeIntervalSince1970)
        let controller = self
        let interval = keepAliveInterval
        let chunked = chunkedImages(job)

        return Response(
            status: .ok,
            headers: [.contentType: "text/event-stream", .cacheControl: "no-cache", .init("X-Accel-Buffering")!: "no"],
            body: .init { writer in
                /// One SSE event; image payloads go out as their own writes, never copied. The chunk
                /// with the usage says the tier Google served.
                func frame(_ choices: [ChatChoice], usage: ChatUsage? = nil, tier: ServiceTier? = nil) throws -> [ByteBuffer] {
                    var completion = ChatCompletion(id: id, object: "chat.completion.chunk", created: created, model: job.model.name, choices: choices, usage: usage)
                    completion.serviceTier = tier?.openAIName
                    var pieces = try SplicedJSON.encode(completion)
                    pieces.insert(ByteBuffer(string: "data: "), at: 0)
                    pieces.append(ByteBuffer(string: "\n\n"))
                    return pieces
                }
                func send(_ choices: [ChatChoice], usage: ChatUsage? = nil, tier: ServiceTier? = nil) async throws {
                    for piece in try frame(choices, usage: usage, tier: tier) { try await writer.write(piece) }
                }
                var collector = Collector()
                /// The image being written as it arrives (`chunked`), and the fingerprints of
                /// the current event's images already written (for their thought signatures).
                var image: ImageInFlight?
                var streamedImages: [String] = []
                /// An image's chunk split where its base64 goes (written once the image's type is known).
                func imageFrame(_ mimeType: String) throws -> (prefix: [ByteBuffer], suffix: [ByteBuffer]) {
                    let url = SplicedString("data:\(mimeType);base64,") + SplicedString(ImageInFlight.marker)
                    return try ImageInFlight.split(frame([ChatChoice(delta: controller.imageDelta(url, collector: collector, job: job), finishReason: nil)]))
                }
                var failure: GatewayError?
                var clientGone = false
                do {
                    try await send([ChatChoice(delta: ChatMessageOut(role: "assistant", content: ""), finishReason: nil)])
                } catch {
                    clientGone = true
                    call.cancel()
                }

                if !clientGone {
                    let channel = AsyncChannel<UpstreamStreamItem>()
                    await withTaskGroup(of: Void.self) { group in
                        group.addTask {
                            await call.forward(into: channel, pieces: chunked ? ImagePieceGatherer(channel: channel) : nil)
                        }
                        group.addTask {
                            for await _ in Heartbeat.ticks(every: interval) { await channel.send(.tick) }
                        }
                        loop: for await item in channel {
                            switch item {
                            case .imageBegin:
                                image = ImageInFlight()
                            case .imageBytes(let bytes):
                                do {
                                    try await image?.take(bytes, frame: imageFrame) { try await writer.write($0) }
                                } catch {
                                    clientGone = true
                                    break loop
                                }
                            case .imageEnd:
                                guard var finished = image else { break }
                                image = nil
                                do {
                                    try await finished.end(frame: imageFrame) { try await writer.write($0) }
                                } catch {
                                    clientGone = true
                                    break loop
                                }
                                // Delivered once its chunk is whole.
                                collector.imageURLs.append(SplicedString(""))
                                collector.deliveredImages += 1
                                streamedImages.append(finished.fingerprint.hash(keyID: job.key.id))
                            case .event(let event):
                                let deltas: [ChatMessageOut]
                                defer { streamedImages = [] }
                                switch await controller.absorbed(event, into: &collector, job: job, streamedImages: streamedImages) {
                                case .success(let value): deltas = value
                                case .failure(let error):
                                    failure = error
                                    break loop
                                }
                                do {
                                    for delta in deltas {
                                        try await send([ChatChoice(delta: delta, finishReason: nil)])
                                        // Delivered once written: from here on the client has it.
                                        // An image counts whichever shape carried it (Markdown only, for most clients).
                                        collector.deliveredImages += delta.carriedImages
                                        if delta.carriedImages == 0, delta.content?.isEmpty == false { collector.deliveredText = true }
                                    }
                                } catch {
                                    clientGone = true
                                    break loop
                                }
                            case .tick:
                                do {
                                    try await writer.write(Heartbeat.sseComment)
                                } catch {
                                    clientGone = true
                                    break loop
                                }
                            case .finished:
                                break loop
                            case .failed(let error):
                                failure = error
                                break loop
                            }
                        }
                        if clientGone, collector.deliveredImages > 0 || collector.deliveredText {
                            // The client has an image or text: read on for the usage Google reports at the end.
                            let rest = await UpstreamStream.drain(channel)
                            if let usage = rest.usage { collector.usage = usage }
                            if let broke = rest.failure { failure = broke }
                        }
                        group.cancelAll()
                        channel.finish()
                    }
                }
                // Google's last usage names the tier it served: the charge follows it on every path.
                if let usage = collector.usage { settlement.served(tier: ServiceTier(echoed: usage.serviceTier)) }

                // An image cut off mid-chunk: the connection is closed without the stream's end
                // below (never an event that parses with half an image).
                let brokenMidImage = image?.begunWriting == true && !clientGone
                if !clientGone, !brokenMidImage {
                    do {
                        if let failure {
                            var buffer = ByteBuffer(string: "data: ")
                            buffer.writeImmutableBuffer(try SplicedJSON.encodeJoined(ErrorResponse(failure)))
                            buffer.writeString("\n\ndata: [DONE]\n\n")
                            try await writer.write(buffer)
                        } else {
                            if let refusal = collector.blocked {
                                try await send([ChatChoice(delta: ChatMessageOut(refusal: refusal), finishReason: nil)])
                            }
                            let finish = ImageTranslation.chatFinishReason(collector.finishReason, blocked: collector.blocked != nil)
                            // What `account` will charge below: the last chunk says it (`usage.cost`).
                            let charged = collector.blocked == nil && (collector.deliveredImages > 0 || collector.deliveredText)
                            let cost = charged ? settlement.charge(after: ImageTranslation.usage(of: collector.usage)) : settlement.chargeMicroUSD
                            let tier = settlement.servedTier
                            if job.includeUsage {
                                try await send([ChatChoice(delta: ChatMessageOut(), finishReason: finish)])
                                try await send([], usage: controller.chatUsage(collector, costMicroUSD: cost), tier: tier)
                            } else {
                                try await send([ChatChoice(delta: ChatMessageOut(), finishReason: finish)], usage: controller.chatUsage(collector, costMicroUSD: cost), tier: tier)
                            }
                            try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
                        }
                        try await writer.finish(nil)
                    } catch {
                        clientGone = true
                    }
                }

                // A stream Google broke, or the client left, before any image is a failed answer:
                // its text is not charged (Google's usage would bill the image it never received).
                if failure != nil || clientGone, collector.deliveredImages == 0 { collector.deliveredText = false }
                // A stream has no single answer to bill when it arrives: bill what it carried.
                settlement.billed(await controller.account(collector, job: job, settlement: settlement, logger: logger))
                let outcome = clientGone ? GatewayError.clientDisconnected : failure
                await pipeline.settle(settlement, status: outcome?.status ?? 200, errorCode: outcome?.code, logger: logger)
                if brokenMidImage {
                    logger.error("the image broke off mid-answer; the client's stream ends broken", metadata: ["error": "\(failure?.message ?? "")"])
                    throw failure ?? GatewayError.badGateway("The stream from Google broke.")
                }
            }
        )
    }

    /// Whether the reply's images are written as they arrive from Google rather than once each
    /// is whole: `data:` URLs in one shape only (the base64 goes out once), from a family that
    /// makes no interim thought images (Google's JSON says a part is a thought only after its
    /// data, too late to hold a thought image back). `url` replies store the image first.
    func chunkedImages(_ job: ChatJob) -> Bool {
        job.format == .b64JSON && job.markdownImages != job.imagesField && job.model.family != .pro3
    }

    /// The delta of an image chunk, as `absorb` makes it.
    func imageDelta(_ url: SplicedString, collector: Collector, job: ChatJob) -> ChatMessageOut {
        let markdown = SplicedString(collector.text.isEmpty && collector.imageURLs.isEmpty ? "" : "\n\n") + ChatTranslation.markdown(imageURL: url)
        return ChatMessageOut(
            content: job.markdownImages ? markdown : nil,
            images: job.imagesField ? [ChatImage(url: url, index: collector.imageURLs.count)] : nil
        )
    }

    /// `absorb` as a result (typed throws do not survive the SSE writer's closure).
    func absorbed(_ event: GeminiWire.Response, into collector: inout Collector, job: ChatJob, streamedImages: [String] = []) async -> Result<[ChatMessageOut], GatewayError> {
        do throws(GatewayError) {
            return .success(try await absorb(event, into: &collector, job: job, streamedImages: streamedImages))
        } catch {
            return .failure(error)
        }
    }
}

/// An image of a chat reply being written as its base64 arrives: its first characters are held
/// until its type is known (the chunk's `data:` URL names it), then every piece goes out as it
/// came (`ImagePieceGatherer` has gathered them).
struct ImageInFlight {
    /// Stands where the base64 goes in the encoded chunk (no JSON escaping touches it).
    static let marker = "NANOGATE-IMAGE-BASE64-7f3a9c"

    private var head = ByteBuffer()
    /// What follows the base64 in the chunk, once the part before it was written.
    private var suffix: [ByteBuffer]?
    private(set) var fingerprint = ChatController.ImageFingerprint()
    /// Whether any of the chunk went out (a failure after that cannot be an SSE event).
    var begunWriting: Bool { suffix != nil }

    /// `frame(mimeType)` gives the chunk split around the base64.
    mutating func take(
        _ bytes: ByteBuffer, frame: (String) throws -> (prefix: [ByteBuffer], suffix: [ByteBuffer]), write: (ByteBuffer) async throws -> Void
    ) async throws {
        fingerprint.add(bytes)
        if suffix == nil {
            var bytes = bytes
            head.writeBuffer(&bytes)
            guard head.readableBytes >= 32 else { return }
            try await begin(frame: frame, write: write)
            return
        }
        try await write(bytes)
    }

    /// The image's base64 ended: the rest of the chunk.
    mutating func end(frame: (String) throws -> (prefix: [ByteBuffer], suffix: [ByteBuffer]), write: (ByteBuffer) async throws -> Void) async throws {
        if suffix == nil { try await begin(frame: frame, write: write) }
        for piece in suffix ?? [] { try await write(piece) }
    }

    private mutating func begin(frame: (String) throws -> (prefix: [ByteBuffer], suffix: [ByteBuffer]), write: (ByteBuffer) async throws -> Void) async throws {
        let decoded = SafeBase64.decode(head.readableBytesView.prefix(head.readableBytes / 4 * 4)) ?? []
        let parts = try frame(ImageSniffer.mimeType(of: decoded.prefix(16)) ?? "image/png")
        suffix = parts.suffix
        for piece in parts.prefix { try await write(piece) }
        try await write(head)
        head = ByteBuffer()
    }

    /// An encoded chunk split at `marker`.
    static func split(_ pieces: [ByteBuffer]) throws -> (prefix: [ByteBuffer], suffix: [ByteBuffer]) {
        var joined = ByteBuffer()
        for var piece in pieces { joined.writeBuffer(&piece) }
        let text = String(buffer: joined)
        guard let range = text.range(of: marker) else { throw GatewayError.internal("An image chunk could not be framed.") }
        return ([ByteBuffer(string: String(text[..<range.lowerBound]))], [ByteBuffer(string: String(text[range.upperBound...]))])
    }
}

/// Forwards the pieces of a chunked stream to the writer, an image's base64 gathered
/// (`PieceGatherer`): each send is a hop between tasks. Used from the reading task alone.
final class ImagePieceGatherer: @unchecked Sendable {
    let channel: AsyncChannel<UpstreamStreamItem>
    private var gatherer = PieceGatherer()

    init(channel: AsyncChannel<UpstreamStreamItem>) { self.channel = channel }

    func forward(_ piece: GeminiEventStream.Piece) async {
        switch piece {
        case .imageBytes(let bytes):
            if let piece = gatherer.add(bytes) { await channel.send(.imageBytes(piece)) }
        case .imageBegin:
            await flush()
            await channel.send(.imageBegin)
        case .imageEnd:
            await flush()
            await channel.send(.imageEnd)
        case .event(let event):
            await flush()
            await channel.send(.event(event))
        }
    }

    func flush() async {
        if let piece = gatherer.rest() { await channel.send(.imageBytes(piece)) }
    }
}
