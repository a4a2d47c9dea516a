import AsyncAlgorithms
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NanoGateCore
import NanoGateStorage
import NIOCore
import Upstream

/// Google's answer streamed into the client's (`NANOGATE_STREAM_IMAGES=on`, issue 24; not the
/// default, because the charge can then only follow the image: see below): a `b64_json`
/// generation of `n` images, with no conversion, on a family that makes no interim thought
/// images. Memory holds one piece of the answer and its small skeleton
/// (`GeminiAnswerScanner`), never the image. `url` answers stream into the store by default
/// (`RequestPipeline.generateStoredImages`).
///
/// The status and head go out once the image has begun and its first 64 KiB are in (a safety
/// block, a missing image or an upstream error before that is still a proper 4xx/5xx); the
/// base64 follows as it arrives; `revised_prompt`, `usage` and the other fields come after
/// it, and the charge, known only then, is the `X-NanoGate-Cost` trailer and `usage.cost`.
/// An answer that breaks mid-image ends the client's answer broken (the connection closes
/// without the chunked body's end: never a truncated 200 that parses), is not charged, and is
/// logged.
extension ImagesController {
    /// Whether `job` takes the streamed path.
    func streamsThrough(_ job: ImageRequest, request: Request) -> Bool {
        streamImages && job.format == .b64JSON && !job.options.stream && job.options.outputFormat == nil
            && job.options.outputCompression == nil && [.flash25, .flash21, .flash31].contains(job.model.family)
            && KeepAliveAnswer.requested(request, defaultInterval: keepAliveInterval) == nil && job.model.keepAliveSeconds == nil
    }

    /// One call's answer whose image has begun: its reader (from here on used by the writer
    /// alone) and the image's head.
    struct BegunImage: @unchecked Sendable {
        var reader: AnswerReader
        var head: ImageHead
    }

    /// The calls' images in the order they begin; each call waits in `send` (its answer held back
    /// by TCP, not in memory) until the writer takes it. Used by one task at a time.
    final class BegunImages: @unchecked Sendable {
        let channel = AsyncChannel<Result<BegunImage, GatewayError>>()
        private var iterator: AsyncChannel<Result<BegunImage, GatewayError>>.AsyncIterator?
        var failures: [GatewayError] = []

        /// Hands `image` to the writer, unless the writer has not taken it by `deadline` (its
        /// answer could not be read after that anyway; and a response whose body never ran
        /// must not hold the call forever).
        func offer(_ image: BegunImage, until deadline: ContinuousClock.Instant) async {
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await self.channel.send(.success(image)) }
                group.addTask { try? await Task.sleep(until: deadline) }
                await group.next()
                group.cancelAll()
            }
        }

        /// The next call whose image began (failures are kept), nil when every call has ended.
        func next() async -> BegunImage? {
            if iterator == nil { iterator = channel.makeAsyncIterator() }
            while let result = await iterator!.next() {
                switch result {
                case .success(let image): return image
                case .failure(let error): failures.append(error)
                }
            }
            return nil
        }
    }

    /// `n` calls at once; the first image to begin is written as it arrives, then each of the
    /// others as it comes (a call still working is waited for, one already done was held back
    /// by TCP). A call that fails before its image is left out, as an answer built whole leaves
    /// it out (the images that came are answered and charged). Nothing is charged until the
    /// whole answer is written: an answer that breaks anywhere is one the client cannot read.
    func streamThrough(_ job: ImageRequest, settlement: Settlement, logger: Logger) async throws -> Response {
        let gemini = ImageTranslation.geminiRequest(
            prompt: job.prompt, inputImages: job.inputImages, spec: job.spec, family: job.model.family, reasoningEffort: job.options.reasoningEffort
        )
        let pipeline = self.pipeline
        let begun = BegunImages()
        let calls = Task {
            await withTaskGroup(of: Void.self) { group in
                for _ in 0..<job.count {
                    group.addTask {
                        do {
                            let answer = try await pipeline.answerBody(gemini, size: job.spec.imageSize, settlement: settlement, logger: logger)
                            let reader = AnswerReader(answer: answer)
                            let head = try await ImageHead.read(from: reader, settlement: settlement)
                            await begun.offer(BegunImage(reader: reader, head: head), until: answer.deadline)
                        } catch {
                            await begun.channel.send(.failure(GatewayError(reading: error)))
                        }
                    }
                }
            }
            begun.channel.finish()
        }
        let first = await withTaskCancellationHandler { await begun.next() } onCancel: { calls.cancel() }
        guard let first else {
            let failure = begun.failures.first ?? .badGateway("Google's answer held no image.")
            await pipeline.settle(settlement, status: failure.status, errorCode: failure.code, logger: logger)
            throw failure
        }
        let (format, pixels) = (first.head.format, first.head.pixels)
        let created = Int(Date().timeIntervalSince1970)
        let headers: HTTPFields = [
            .contentType: "application/json", Self.upstreamModelHeader: settlement.servedBy.id, .init("Trailer")!: "X-NanoGate-Cost",
        ]
        return Response(status: .ok, headers: headers, body: ResponseBody { writer in
            let failure: GatewayError
            do {
                try await writer.write(ByteBuffer(string: #"{"created":\#(created),"data":["#))
                var delivered: [ImageTranslation.Outcome] = []
                var image: BegunImage? = first
                while let current = image {
                    try await writer.write(ByteBuffer(string: delivered.isEmpty ? #"{"b64_json":""# : #",{"b64_json":""#))
                    try await current.head.passImage(of: current.reader, to: &writer)
                    let outcome = try current.reader.finishedOutcome(settlement: settlement)
                    try await writer.write(StreamedTail.imageEnd(revisedPrompt: outcome.text))
                    delivered.append(outcome)
                    image = await begun.next()
                }
                for failed in begun.failures {
                    logger.warning("one of the images of the request failed; the others are answered", metadata: ["error": "\(failed.message)"])
                }
                var usage = ImageUsage.zero
                for outcome in delivered {
                    usage = usage + outcome.usage
                    settlement.delivered(images: 1, usage: outcome.usage, pixels: pixels)
                }
                usage.cost = TokenPrices.usd(settlement.chargeMicroUSD)
                let tail = StreamedTail(
                    usage: usage, outputFormat: format?.rawValue, size: pixels?.description,
                    quality: ImageQuality.reported(for: job.spec.imageSize), serviceTier: settlement.servedTier.openAIName
                )
                try await writer.write(tail.encoded())
                await pipeline.settle(settlement, status: 200, errorCode: nil, logger: logger)
                try await writer.finish([Self.costHeader: Pricing.usdText(settlement.chargeMicroUSD)])
                return
            } catch let error as GatewayError {
                failure = error
            } catch let error as AnswerReadFailure {
                failure = GatewayError(upstream: error.error)
            } catch {
                // A write failed: the client went away.
                failure = .clientDisconnected
            }
            calls.cancel()
            if failure.code != GatewayError.clientDisconnected.code {
                logger.error("an image broke off mid-answer; the client's answer ends broken", metadata: ["error": "\(failure.message)"])
            }
            await pipeline.settle(settlement, status: failure.status, errorCode: failure.code, logger: logger)
            // Throwing closes the connection without the body's end: the client sees a broken answer.
            throw failure
        })
    }
}

/// What follows the images in a streamed answer: the rest of the images response (the same
/// fields as an answer built whole); `imageEnd` closes each image's object.
struct StreamedTail: Encodable {
    var usage: ImageUsage
    var background = "opaque"
    var outputFormat: String?
    var size: String?
    var quality: String?
    var serviceTier: String?

    enum CodingKeys: String, CodingKey {
        case usage, background, size, quality
        case serviceTier = "service_tier"
        case outputFormat = "output_format"
    }

    /// `"` ends an image's base64, then its `revised_prompt`, then its object.
    static func imageEnd(revisedPrompt: String?) -> ByteBuffer {
        var text = "\""
        if let revisedPrompt, let quoted = try? String(decoding: JSONEncoder().encode(revisedPrompt), as: UTF8.self) {
            text += ",\"revised_prompt\":" + quoted
        }
        return ByteBuffer(string: text + "}")
    }

    func encoded() throws -> ByteBuffer {
        let fields = String(decoding: try JSONEncoder().encode(self), as: UTF8.self)
        // `{…}` → `],…}`: the data list closes, the rest of the top object follows.
        return ByteBuffer(string: "]," + fields.dropFirst())
    }
}

/// The first image of an answer read through `AnswerReader`, as far as a streamed answer needs
/// it before its head goes out: its first 64 KiB of base64 (enough for the header of any format),
/// its format and pixel size. Then `passImage` writes it and the rest of the image as it arrives.
struct ImageHead {
    /// How much of the image's base64 is read before anything is written.
    static let base64Bytes = 64 * 1024

    var base64: ByteBuffer
    var format: OutputFormat?
    var pixels: PixelSize?

    /// Reads up to the image's first 64 KiB (or its end, or the answer's). An answer with no
    /// image is the error it says (safety, no image, a prompt block), its usage billed.
    static func read(from reader: AnswerReader, settlement: Settlement) async throws -> ImageHead {
        var head = ByteBuffer()
        try await reader.read { event in
            switch event {
            case .imageBegin: return true
            case .imageEnd: return false
            case .imageBytes(var chunk):
                head.writeBuffer(&chunk)
                return head.readableBytes < Self.base64Bytes
            }
        }
        guard reader.imageBegan else {
            _ = try reader.finishedOutcome(settlement: settlement)
            throw GatewayError.badGateway("Google's answer held no image.")
        }
        let bytes = SafeBase64.decode(head.readableBytesView.prefix(head.readableBytes / 4 * 4)) ?? []
        return ImageHead(
            base64: head, format: ImageSniffer.mimeType(of: bytes.prefix(16)).flatMap(OutputFormat.init(mimeType:)),
            pixels: ImageConverter.dimensions(of: bytes)
        )
    }

    /// Writes the head, then the rest of the first image as it arrives, then reads the answer to
    /// its end (usage). An answer that ends inside the image throws.
    func passImage(of reader: AnswerReader, to writer: inout any ResponseBodyWriter) async throws {
        try await writer.write(base64)
        var gatherer = PieceGatherer()
        try await reader.read { event in
            guard case .imageBytes(let chunk) = event, reader.inFirstImage else { return true }
            if let piece = gatherer.add(chunk) { try await writer.write(piece) }
            return true
        }
        if let piece = gatherer.rest() { try await writer.write(piece) }
        guard reader.firstImageEnded else { throw GatewayError.badGateway("Google's answer ended inside the image.") }
    }
}
