import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NanoGateCore
import NanoGateStorage
import NIOCore
import NIOPosix
import Upstream

/// Google's answer streamed into the client's (`NANOGATE_STREAM_IMAGES`, issue 24; off by
/// default while it covers one case): a generation of one image, with no conversion, on a
/// family that makes no interim thought images. Memory holds one piece of the answer and its
/// small skeleton (`GeminiAnswerScanner`), never the image. A `url` answer streams into the
/// store instead (`storeThrough`).
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
        streamImages && job.count == 1 && (job.format == .b64JSON || pipeline.images.scratchDirectory != nil) && !job.options.stream && job.options.outputFormat == nil
            && job.options.outputCompression == nil && [.flash25, .flash21, .flash31].contains(job.model.family)
            && KeepAliveAnswer.requested(request, defaultInterval: keepAliveInterval) == nil && job.model.keepAliveSeconds == nil
    }

    /// How much of the image's base64 is read before the head goes out: enough for its header
    /// (format and pixel size) whatever the format.
    static let headBase64Bytes = 64 * 1024
    /// The least the image is written to the client in (but its last piece).
    static let writeBytes = 64 * 1024

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
        if job.format == .url { return try await storeThrough(job, reader: reader, settlement: settlement, logger: logger) }
        // Up to the image's first 64 KiB (or its end, or the answer's): what the head depends on.
        var head = ByteBuffer()
        do {
            try await reader.read { event in
                switch event {
                case .imageBegin: return true
                case .imageEnd: return false
                case .imageBytes(var chunk):
                    head.writeBuffer(&chunk)
                    return head.readableBytes < Self.headBase64Bytes
                }
            }
        } catch {
            let failure = error as? GatewayError ?? .badGateway("The answer from Google broke off.")
            await pipeline.settle(settlement, status: failure.status, errorCode: failure.code, logger: logger)
            throw failure
        }
        if !reader.imageBegan {
            // No image came: the answer says why (safety, no image, a prompt block).
            let error: GatewayError
            do {
                _ = try reader.finishedOutcome(settlement: settlement)
                error = .badGateway("Google's answer held no image.")
            } catch let failure {
                error = failure
            }
            await pipeline.settle(settlement, status: error.status, errorCode: error.code, logger: logger)
            throw error
        }
        let joinedHead = head
        let headBytes = SafeBase64.decode(joinedHead.readableBytesView.prefix(joinedHead.readableBytes / 4 * 4)) ?? []
        let format = ImageSniffer.mimeType(of: headBytes.prefix(16)).flatMap(OutputFormat.init(mimeType:))
        let pixels = ImageConverter.dimensions(of: headBytes)
        let created = Int(Date().timeIntervalSince1970)
        let pipeline = self.pipeline
        let headers: HTTPFields = [
            .contentType: "application/json", Self.upstreamModelHeader: settlement.servedBy.id, .init("Trailer")!: "X-NanoGate-Cost",
        ]
        return Response(status: .ok, headers: headers, body: ResponseBody { writer in
            let failure: GatewayError
            do {
                try await writer.write(ByteBuffer(string: #"{"created":\#(created),"data":[{"b64_json":""#))
                try await writer.write(joinedHead)
                // The rest of the image as it arrives, then the rest of the answer (usage).
                // Small pieces are gathered into writes of `writeBytes`: each write is a hop to the
                // connection's event loop, and Google's answer arrives in pieces of a few KiB.
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

extension ImagesController {
    /// `url` answers streamed through: the base64 is decoded piece by piece into a file, which
    /// the store then takes (a rename into the folder, or a multipart upload to the bucket).
    /// Nothing is sent before the image is stored, so every failure is still a proper error,
    /// and the charge is the usual header.
    func storeThrough(_ job: ImageRequest, reader: AnswerReader, settlement: Settlement, logger: Logger) async throws -> Response {
        let images = pipeline.images
        do {
            guard let scratch = images.scratchDirectory else { throw GatewayError.internal("No scratch directory for streamed images.") }
            let sink = try ImageFileSink(directory: scratch)
            defer { sink.discard() }
            try await reader.read { event in
                if case .imageBytes(let chunk) = event, reader.inFirstImage { try await sink.append(base64: chunk) }
                return true
            }
            let outcome = try reader.finishedOutcome(settlement: settlement)
            guard reader.firstImageEnded else { throw GatewayError.badGateway("Google's answer ended inside the image.") }
            try await sink.finish()
            guard let mime = ImageSniffer.mimeType(of: sink.head.prefix(16)) else { throw GatewayError.badGateway("Google's image is no image this gateway knows.") }
            let name = try await images.images.saveFile(at: sink.path, fileExtension: ImageSniffer.fileExtension(for: mime))
            let url = images.images.url(name: name, baseURL: job.baseURL, ttl: images.ttl, now: Date())
            settlement.delivered(images: 1, usage: outcome.usage)
            var usage = outcome.usage
            usage.cost = TokenPrices.usd(settlement.chargeMicroUSD)
            var answer = ImagesResponse(
                created: Int(Date().timeIntervalSince1970), data: [ImageObject(url: url, revisedPrompt: outcome.text)], usage: usage, background: "opaque",
                outputFormat: OutputFormat(mimeType: mime)?.rawValue, size: ImageConverter.dimensions(of: sink.head)?.description,
                quality: ImageQuality.reported(for: job.spec.imageSize)
            )
            answer.serviceTier = settlement.servedTier.openAIName
            await pipeline.settle(settlement, status: 200, errorCode: nil, logger: logger)
            var response = try json(answer, sortedKeys: false)
            response.headers[Self.upstreamModelHeader] = settlement.servedBy.id
            response.headers[Self.costHeader] = Pricing.usdText(settlement.chargeMicroUSD)
            return response
        } catch {
            let failure = error as? GatewayError ?? .internal("The image could not be stored for a URL answer; retry with response_format b64_json.")
            if !(error is GatewayError) { logger.error("could not store a streamed image", metadata: ["error": "\(String(reflecting: error))"]) }
            await pipeline.settle(settlement, status: failure.status, errorCode: failure.code, logger: logger)
            throw failure
        }
    }
}

/// A file that base64 pieces are decoded into as they arrive (a piece may split a quartet:
/// up to three characters wait for the next), written on the blocking pool. Keeps the first
/// 64 KiB of the decoded image for its format and size. Used from one task at a time.
final class ImageFileSink: @unchecked Sendable {
    let path: URL
    private let handle: FileHandle
    private var carry: [UInt8] = []
    private(set) var head: [UInt8] = []
    private var closed = false

    init(directory: URL) throws {
        path = directory.appendingPathComponent("stream-\(UUID().uuidString).part")
        guard FileManager.default.createFile(atPath: path.path, contents: nil, attributes: [.posixPermissions: 0o600]) else {
            throw GatewayError.internal("A streamed image could not be written.")
        }
        handle = try FileHandle(forWritingTo: path)
    }

    func append(base64 chunk: ByteBuffer) async throws {
        var text = carry
        text.append(contentsOf: chunk.readableBytesView)
        let whole = text.count / 4 * 4
        carry = Array(text[whole...])
        guard whole > 0 else { return }
        guard let bytes = SafeBase64.decode(text[..<whole]) else { throw GatewayError.badGateway("Google's image is not valid base64.") }
        try await write(bytes)
    }

    /// Writes what is left and closes the file.
    func finish() async throws {
        if !carry.isEmpty {
            guard let bytes = SafeBase64.decode(carry) else { throw GatewayError.badGateway("Google's image is not valid base64.") }
            carry = []
            try await write(bytes)
        }
        try handle.close()
        closed = true
    }

    /// Removes the file if it is still here (the store took it otherwise).
    func discard() {
        if !closed { try? handle.close() }
        try? FileManager.default.removeItem(at: path)
    }

    private func write(_ bytes: [UInt8]) async throws {
        if head.count < 64 * 1024 { head.append(contentsOf: bytes.prefix(64 * 1024 - head.count)) }
        let handle = self.handle
        try await NIOThreadPool.singleton.runIfActive { try handle.write(contentsOf: bytes) }
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

/// Reads one streamed answer through the scanner, within its deadline and size limit, keeping
/// where the first image stands. Used from one task at a time.
///
/// AsyncHTTPClient's deadline ends with the head, so the answer's own deadline is checked at
/// every piece (a Google that trickles its answer is cut there); a Google that falls silent
/// is cut by the client's read timeout.
final class AnswerReader: @unchecked Sendable {
    private let answer: GeminiAnswerBody
    private var iterator: (any AsyncIteratorProtocol<ByteBuffer, any Error>)?
    private var scanner = GeminiAnswerScanner()
    private var pending: [GeminiAnswerScanner.Event] = []
    private var read = 0
    private var finished = false
    private(set) var imageBegan = false
    private(set) var firstImageEnded = false

    init(answer: GeminiAnswerBody) { self.answer = answer }

    /// Whether the bytes now handed out belong to the first image (later ones are dropped).
    var inFirstImage: Bool { imageBegan && !firstImageEnded && scanner.imageCount == 1 }

    /// Hands each event to `body` until it answers false or the answer ends.
    func read(_ body: (GeminiAnswerScanner.Event) async throws -> Bool) async throws {
        while true {
            while !pending.isEmpty {
                let event = pending.removeFirst()
                switch event {
                case .imageBegin(let index): if index == 0 { imageBegan = true }
                case .imageEnd(let index): if index == 0 { firstImageEnded = true }
                case .imageBytes: break
                }
                if try await !body(event) { return }
            }
            if finished { return }
            guard let piece = try await nextPiece() else {
                finished = true
                return
            }
            do {
                pending = try scanner.feed(piece)
            } catch {
                throw GatewayError.badGateway("Google's answer could not be read (\(error)).")
            }
        }
    }

    /// The next piece, within the answer's deadline and size limit.
    private func nextPiece() async throws(GatewayError) -> ByteBuffer? {
        guard ContinuousClock.now < answer.deadline else {
            throw GatewayError(upstream: UpstreamError(.timeout, detail: "Google's answer did not finish in time"))
        }
        if iterator == nil { iterator = answer.pieces.makeAsyncIterator() }
        let piece: ByteBuffer?
        do {
            piece = try await iterator!.next()
        } catch {
            throw GatewayError.badGateway("The answer from Google broke off.")
        }
        read += piece?.readableBytes ?? 0
        guard read <= answer.maxBytes else { throw GatewayError.badGateway("Google's answer is larger than \(answer.maxBytes) bytes.") }
        return piece
    }

    /// The whole answer's outcome once it has been read: its usage recorded as billed.
    func finishedOutcome(settlement: Settlement) throws(GatewayError) -> ImageTranslation.Outcome {
        let response: GeminiWire.Response
        do {
            response = try SplicedJSON.decode(GeminiWire.Response.self, from: scanner.skeleton)
        } catch {
            throw GatewayError.badGateway("Google's answer could not be read.")
        }
        settlement.billed(ImageTranslation.usage(of: response.usageMetadata))
        settlement.served(tier: ServiceTier(echoed: response.usageMetadata?.serviceTier))
        // Google's own text is not passed on: it is untrusted and may name the credential.
        if response.error != nil { throw GatewayError.badGateway("Google answered an error instead of an image.") }
        return try ImageTranslation.outcome(of: response)
    }
}
