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
/// generation of one image, with no conversion, on a family that makes no interim thought
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
        streamImages && job.count == 1 && job.format == .b64JSON && !job.options.stream && job.options.outputFormat == nil
            && job.options.outputCompression == nil && [.flash25, .flash21, .flash31].contains(job.model.family)
            && KeepAliveAnswer.requested(request, defaultInterval: keepAliveInterval) == nil && job.model.keepAliveSeconds == nil
    }

    func streamThrough(_ job: ImageRequest, settlement: Settlement, logger: Logger) async throws -> Response {
        let gemini = ImageTranslation.geminiRequest(
            prompt: job.prompt, inputImages: job.inputImages, spec: job.spec, family: job.model.family, reasoningEffort: job.options.reasoningEffort
        )
        let answer: GeminiAnswerBody
        do {
            answer = try await pipeline.answerBody(gemini, size: job.spec.imageSize, settlement: settlement, logger: logger)
        } catch {
            await pipeline.settle(settlement, status: error.status, errorCode: error.code, logger: logger)
            throw error
        }
        let reader = AnswerReader(answer: answer)
        let head: ImageHead
        do {
            head = try await ImageHead.read(from: reader, settlement: settlement)
        } catch {
            let failure = GatewayError(reading: error)
            await pipeline.settle(settlement, status: failure.status, errorCode: failure.code, logger: logger)
            throw failure
        }
        let (format, pixels) = (head.format, head.pixels)
        let created = Int(Date().timeIntervalSince1970)
        let pipeline = self.pipeline
        let headers: HTTPFields = [
            .contentType: "application/json", Self.upstreamModelHeader: settlement.servedBy.id, .init("Trailer")!: "X-NanoGate-Cost",
        ]
        return Response(status: .ok, headers: headers, body: ResponseBody { writer in
            let failure: GatewayError
            do {
                try await writer.write(ByteBuffer(string: #"{"created":\#(created),"data":[{"b64_json":""#))
                try await head.passImage(of: reader, to: &writer)
                let outcome = try reader.finishedOutcome(settlement: settlement)
                settlement.delivered(images: 1, usage: outcome.usage)
                var usage = outcome.usage
                usage.cost = TokenPrices.usd(settlement.chargeMicroUSD)
                let tail = StreamedTail(
                    revisedPrompt: outcome.text, usage: usage, outputFormat: format?.rawValue, size: pixels?.description,
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
            if failure.code != GatewayError.clientDisconnected.code {
                logger.error("the image broke off mid-answer; the client's answer ends broken", metadata: ["error": "\(failure.message)"])
            }
            await pipeline.settle(settlement, status: failure.status, errorCode: failure.code, logger: logger)
            // Throwing closes the connection without the body's end: the client sees a broken answer.
            throw failure
        })
    }
}

/// What follows the image in a streamed answer: `"` ends its base64, then the rest of the
/// images response (the same fields as an answer built whole).
struct StreamedTail: Encodable {
    var revisedPrompt: String?
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

    func encoded() throws -> ByteBuffer {
        var text = "\""
        if let revisedPrompt, let quoted = try? String(decoding: JSONEncoder().encode(revisedPrompt), as: UTF8.self) {
            text += ",\"revised_prompt\":" + quoted
        }
        let fields = String(decoding: try JSONEncoder().encode(self), as: UTF8.self)
        // `{…}` → `}],…}`: the image object and the data list close, the rest of the top object follows.
        text += "}]," + fields.dropFirst()
        return ByteBuffer(string: text)
    }
}

/// The first image of an answer read through `AnswerReader`, as far as a streamed answer needs
/// it before its head goes out: its first 64 KiB of base64 (enough for the header of any format),
/// its format and pixel size. Then `passImage` writes it and the rest of the image as it arrives.
struct ImageHead {
    /// How much of the image's base64 is read before anything is written.
    static let base64Bytes = 64 * 1024
    /// The least the image is written to the client in (but its last piece): each write is a hop
    /// to the connection's event loop, and Google's answer arrives in pieces of a few KiB.
    static let writeBytes = 64 * 1024

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
        var outgoing = ByteBuffer()
        try await reader.read { event in
            guard case .imageBytes(var chunk) = event, reader.inFirstImage else { return true }
            if outgoing.readableBytes == 0, chunk.readableBytes >= Self.writeBytes {
                try await writer.write(chunk)
                return true
            }
            outgoing.writeBuffer(&chunk)
            if outgoing.readableBytes >= Self.writeBytes {
                try await writer.write(outgoing)
                outgoing = ByteBuffer()
            }
            return true
        }
        if outgoing.readableBytes > 0 { try await writer.write(outgoing) }
        guard reader.firstImageEnded else { throw GatewayError.badGateway("Google's answer ended inside the image.") }
    }
}
