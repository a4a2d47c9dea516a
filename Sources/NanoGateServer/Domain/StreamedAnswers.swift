import Foundation
import NanoGateCore
import NanoGateStorage
import NIOCore
import NIOPosix
import Upstream

/// Reads one streamed answer through the scanner, within its deadline and size limit, keeping
/// where the first image stands. Used from one task at a time.
///
/// A fault of the answer itself (it broke off, could not be read, took too long, was Google's
/// error) is thrown as `AnswerReadFailure`, which says whether another attempt may help;
/// errors thrown by the caller's `body` pass through as they are.
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

    /// Images begun so far (thought images included), in document order.
    var imageCount: Int { scanner.imageCount }

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
                throw AnswerReadFailure(UpstreamError(.unreadable, detail: "\(error)"), retry: true)
            }
        }
    }

    /// The next piece, within the answer's deadline and size limit.
    private func nextPiece() async throws(AnswerReadFailure) -> ByteBuffer? {
        guard ContinuousClock.now < answer.deadline else {
            throw AnswerReadFailure(UpstreamError(.timeout, detail: "Google's answer did not finish in time"), retry: false)
        }
        if iterator == nil { iterator = answer.pieces.makeAsyncIterator() }
        let piece: ByteBuffer?
        do {
            piece = try await iterator!.next()
        } catch {
            throw answer.failure(reading: error)
        }
        read += piece?.readableBytes ?? 0
        guard read <= answer.maxBytes else { throw AnswerReadFailure(UpstreamError(.tooLarge, detail: "larger than \(answer.maxBytes) bytes"), retry: false) }
        return piece
    }

    /// The whole answer once it has been read (its images' `data` empty). Google's error body
    /// is its failure; nothing of it is billed yet (`record`).
    func response() throws(AnswerReadFailure) -> GeminiWire.Response {
        let response: GeminiWire.Response
        do {
            response = try SplicedJSON.decode(GeminiWire.Response.self, from: scanner.skeleton)
        } catch {
            throw AnswerReadFailure(UpstreamError(.unreadable), retry: true)
        }
        // Google's own text is not passed on by the classification: it is untrusted.
        if let error = response.error { throw answer.failure(describedBy: error) }
        return response
    }

    /// Records a read answer's usage as billed and its tier as served.
    static func record(_ response: GeminiWire.Response, in settlement: Settlement) {
        settlement.billed(ImageTranslation.usage(of: response.usageMetadata))
        settlement.served(tier: ServiceTier(echoed: response.usageMetadata?.serviceTier))
    }

    /// The whole answer's outcome once it has been read: its usage recorded as billed.
    func finishedOutcome(settlement: Settlement) throws(GatewayError) -> ImageTranslation.Outcome {
        let response: GeminiWire.Response
        do {
            response = try self.response()
        } catch {
            throw GatewayError(upstream: error.error)
        }
        Self.record(response, in: settlement)
        return try ImageTranslation.outcome(of: response)
    }
}

extension GatewayError {
    /// What a client is told of a streamed answer's failure: a fault of Google's answer as the
    /// upstream error it is, the gateway's own errors as they are.
    init(reading error: any Error) {
        switch error {
        case let failure as AnswerReadFailure: self.init(upstream: failure.error)
        case let error as GatewayError: self = error
        default: self = .badGateway("The answer from Google broke off.")
        }
    }
}

/// Gathers the pieces Google's answer arrives in (a few KiB each) into writes of at least
/// `writeBytes`: each write is a hop to another thread. A piece that big on its own goes on as it is.
struct PieceGatherer {
    static let writeBytes = 64 * 1024
    private var gathered = ByteBuffer()

    /// What to write now, if anything: `piece`, or what was gathered with it.
    mutating func add(_ piece: ByteBuffer) -> ByteBuffer? {
        if gathered.readableBytes == 0, piece.readableBytes >= Self.writeBytes { return piece }
        var piece = piece
        gathered.writeBuffer(&piece)
        return gathered.readableBytes >= Self.writeBytes ? rest() : nil
    }

    /// What is gathered and not yet written.
    mutating func rest() -> ByteBuffer? {
        guard gathered.readableBytes > 0 else { return nil }
        defer { gathered = ByteBuffer() }
        return gathered
    }
}

/// A file that an image's base64 is decoded into as it arrives (a piece may split a quartet:
/// up to three characters wait for the next). Decoded bytes are gathered and written in
/// pieces of `writeBytes` on the blocking pool. Keeps the image's first bytes until its
/// format and pixel size are known. Used from one task at a time.
final class ImageFileSink: @unchecked Sendable {
    /// The least written to the file at a time (but the last piece): each write is a hop to
    /// the blocking pool. The same for spooled images: 512 KiB pieces cut a 4K `b64_json` answer's p50 from 165 to 106 ms
    /// but doubled the memory per answer in flight under load (bench/ANALYSIS.md, 2026-12-07).
    static let writeBytes = 64 * 1024
    /// Enough of an image for its header, whatever the format (JPEG metadata included).
    static let headBytes = 64 * 1024

    let path: URL
    /// Whether the base64 is decoded into the file (`url` answers) or kept as it came (a
    /// spooled `b64_json` answer, `RequestPipeline.spooledImage`).
    let decodes: Bool
    private let handle: FileHandle
    /// Bytes written to the file so far.
    private(set) var size = 0
    /// A spooled image's first base64 characters, decoded only for its header.
    private var headText: [UInt8] = []
    private var carry: [UInt8] = []
    private var pending: [UInt8] = []
    private var head: [UInt8] = []
    private var headRead = false
    /// Whether the whole image is in the file (and the file closed).
    private(set) var finished = false
    /// The image's type, read from its first bytes.
    private(set) var mimeType: String?
    /// The image's pixel size, once its header has been read.
    private(set) var pixels: PixelSize?

    init(directory: URL, decodes: Bool = true) throws {
        self.decodes = decodes
        path = directory.appendingPathComponent("stream-\(randomHex(bytes: 12)).part")
        guard FileManager.default.createFile(atPath: path.path, contents: nil, attributes: [.posixPermissions: 0o600]) else {
            throw GatewayError.internal("A streamed image could not be written.")
        }
        handle = try FileHandle(forWritingTo: path)
    }

    func append(base64 chunk: ByteBuffer) async throws {
        guard decodes else {
            if !headRead {
                headText.append(contentsOf: chunk.readableBytesView.prefix(Self.headBytes / 3 * 4 - headText.count))
                if headText.count >= Self.headBytes / 3 * 4 { readSpooledHead() }
            }
            pending.append(contentsOf: chunk.readableBytesView)
            if pending.count >= Self.writeBytes { try await flush() }
            return
        }
        var text = carry
        text.append(contentsOf: chunk.readableBytesView)
        let whole = text.count / 4 * 4
        carry = Array(text[whole...])
        guard whole > 0 else { return }
        guard let bytes = SafeBase64.decode(text[..<whole]) else { throw Self.notBase64 }
        try await take(bytes)
    }

    /// Writes what is left and closes the file.
    func finish() async throws {
        if !decodes, !headRead { readSpooledHead() }
        if !carry.isEmpty {
            guard let bytes = SafeBase64.decode(carry) else { throw Self.notBase64 }
            carry = []
            try await take(bytes)
        }
        try await flush()
        try handle.close()
        finished = true
        readHead(complete: true)
    }

    /// Google's image is no base64: a fault of the answer.
    static let notBase64 = AnswerReadFailure(UpstreamError(.unreadable, detail: "an image is not valid base64"), retry: true)

    /// Removes the file if it is still here (the store took it otherwise).
    func discard() {
        if !finished { try? handle.close() }
        try? FileManager.default.removeItem(at: path)
    }

    private func take(_ bytes: [UInt8]) async throws {
        if !headRead {
            head.append(contentsOf: bytes.prefix(Self.headBytes - head.count))
            readHead(complete: head.count >= Self.headBytes)
        }
        pending.append(contentsOf: bytes)
        if pending.count >= Self.writeBytes { try await flush() }
    }

    /// A spooled image's header from its first base64 characters (not a base64 image: none).
    private func readSpooledHead() {
        let bytes = SafeBase64.decode(headText.prefix(headText.count / 4 * 4)) ?? []
        head = Array(bytes.prefix(Self.headBytes))
        headText = []
        readHead(complete: true)
    }

    /// Reads the type and size once the header is in (then lets the head go).
    private func readHead(complete: Bool) {
        guard !headRead else { return }
        if mimeType == nil, head.count >= 16 || complete { mimeType = ImageSniffer.mimeType(of: head.prefix(16)) }
        if pixels == nil { pixels = ImageConverter.dimensions(of: head) }
        if (mimeType != nil && pixels != nil) || complete {
            headRead = true
            head = []
        }
    }

    private func flush() async throws {
        guard !pending.isEmpty else { return }
        let bytes = pending
        size += bytes.count
        pending = []
        pending.reserveCapacity(Self.writeBytes)
        let handle = self.handle
        try await NIOThreadPool.singleton.runIfActive { try handle.write(contentsOf: bytes) }
    }
}
