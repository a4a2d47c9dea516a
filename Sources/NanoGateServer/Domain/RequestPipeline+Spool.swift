import Foundation
import Logging
import NanoGateCore
import NanoGateStorage
import NIOCore
import NIOPosix
import Synchronization
import Upstream

/// `b64_json` answers of 2K and 4K images without holding them in memory (issue 24), as nginx
/// spools a large upstream answer to a temporary file: each call's answer is read as it arrives,
/// every image's base64 written as it came into a file of its own (a Pro answer's thought images
/// come first, and whether an image is a thought shows only after its data), and the answer
/// then written from the final images' files. The whole answer is known before its head goes
/// out, so its status, its `Content-Length` and its `X-NanoGate-Cost` header are those of an
/// answer built whole; memory holds one piece of it at a time. 1K answers (about 1.4 MB) are
/// still built whole: the file round trip would cost them latency for little memory.
extension RequestPipeline {
    /// Whether `job`'s images can be spooled: a `b64_json` answer with no conversion, when the
    /// gateway streams (`ImageURLService.scratchDirectory`).
    func canSpool(_ job: ImageRequest) -> Bool {
        job.format == .b64JSON && images.scratchDirectory != nil && job.options.outputFormat == nil && job.options.outputCompression == nil
    }

    /// How a `b64_json` or `url` answer of the images API is made.
    enum AnswerPath {
        /// Built whole in memory; the token (if any) counts it among the held answers until it goes.
        case whole(HeldAnswers.Token?)
        case spooled
    }

    /// Spooled when its images are 2K or 4K, or when `held`'s bound of answers is already in
    /// memory; else built whole.
    func answerPath(for job: ImageRequest) -> AnswerPath {
        guard canSpool(job) else { return .whole(nil) }
        guard ![.twoK, .fourK].contains(job.spec.imageSize), let token = held.take() else { return .spooled }
        return .whole(token)
    }

    /// A `b64_json` images answer whose images wait in files: `response` holds a marker in place
    /// of each image's base64 (`SpooledAnswer.marker(index)`), `files` the images in order.
    struct SpooledAnswer: Sendable {
        var response: ImagesResponse
        var files: SpoolFiles

        static func marker(_ index: Int) -> String { "NANOGATE-SPOOLED-IMAGE-\(index)-9d41" }
    }

    /// One call's final image in its file, and what the answer said about it.
    struct SpooledImage: Sendable {
        var path: URL
        var bytes: Int
        var text: String?
        var usage: ImageUsage
        var format: OutputFormat?
        var pixels: PixelSize?
    }

    /// The answer for `job` with its images spooled: `n` parallel calls; when some fail, the
    /// images that came are answered and charged (as `generateImages` does).
    func generateSpooledImages(_ job: ImageRequest, settlement: Settlement, logger: Logger) async throws(GatewayError) -> SpooledAnswer {
        let files = SpoolFiles()
        return try await settling(settlement, logger: logger) { () throws(GatewayError) -> SpooledAnswer in
            let request = ImageTranslation.geminiRequest(
                prompt: job.prompt, inputImages: job.inputImages, spec: job.spec, family: job.model.family, reasoningEffort: job.options.reasoningEffort
            )
            let spooled = try await perImage(job, logger: logger) { () throws(GatewayError) in
                let image = try await spooledImage(request, job: job, settlement: settlement, logger: logger)
                files.add(image.path)
                return image
            }
            files.keep(spooled.map { ($0.path, $0.bytes) })
            let data = spooled.indices.map { ImageObject(b64JSON: Base64Text(bytes: ByteBuffer(string: SpooledAnswer.marker($0))), revisedPrompt: spooled[$0].text) }
            let response = imagesResponse(
                job, data: data, usage: spooled.reduce(.zero) { $0 + $1.usage }, format: spooled.first?.format, pixels: spooled.first?.pixels, settlement: settlement
            )
            return SpooledAnswer(response: response, files: files)
        }
    }

    /// One call whose final image goes from Google's answer into a file, its base64 as it came.
    /// The answer is read within the upstream attempt, so one that breaks off or cannot be read
    /// is retried as a whole answer would be.
    func spooledImage(_ request: GeminiWire.Request, job: ImageRequest, settlement: Settlement, logger: Logger) async throws(GatewayError) -> SpooledImage {
        guard let scratch = images.scratchDirectory else { throw .internal("No scratch directory for spooled images.") }
        let read = try await answerRead(request, size: job.spec.imageSize, settlement: settlement, logger: logger) { answer in
            await Self.readImages(of: answer, into: scratch, decoding: false, logger: logger)
        }.get()
        AnswerReader.record(read.response, in: settlement)
        let outcome: ImageTranslation.Outcome
        do {
            outcome = try ImageTranslation.outcome(of: read.response)
        } catch {
            read.sinks.discardAll()
            throw error
        }
        guard let index = Self.finalImageIndex(in: read.response, imagesRead: read.imagesRead), index < read.sinks.items.count,
            read.sinks.items[index].finished
        else {
            read.sinks.discardAll()
            throw .badGateway("Google's answer could not be read.")
        }
        read.sinks.discardAll(except: index)
        let sink = read.sinks.items[index]
        return SpooledImage(
            path: sink.path, bytes: sink.size, text: outcome.text, usage: outcome.usage, format: sink.mimeType.flatMap(OutputFormat.init(mimeType:)),
            pixels: sink.pixels
        )
    }
}

/// The files of one spooled answer: removed once the answer has been written, or when the last
/// reference goes (a failed request, an answer never written).
final class SpoolFiles: Sendable {
    private struct State {
        var paths: [URL] = []
        var sizes: [Int] = []
    }

    private let state = Mutex(State())

    func add(_ path: URL) {
        state.withLock { $0.paths.append(path) }
    }

    /// Keeps only these files (with their sizes), in this order; removes the rest.
    func keep(_ kept: [(path: URL, bytes: Int)]) {
        let dropped = state.withLock { state -> [URL] in
            let dropped = state.paths.filter { path in !kept.contains { $0.path == path } }
            state.paths = kept.map(\.path)
            state.sizes = kept.map(\.bytes)
            return dropped
        }
        for path in dropped { try? FileManager.default.removeItem(at: path) }
    }

    var files: [URL] { state.withLock { $0.paths } }
    var sizes: [Int] { state.withLock { $0.sizes } }

    /// Hands each file's bytes to `write`, in pieces of up to 1 MiB read on the blocking pool.
    static func stream(_ path: URL, bytes: Int, to write: (ByteBuffer) async throws -> Void) async throws {
        let handle = try FileHandle(forReadingFrom: path)
        defer { try? handle.close() }
        let descriptor = handle.fileDescriptor
        var left = bytes
        while left > 0 {
            let count = min(left, 1 << 20)
            // Read straight into the buffer that is written (no `Data` in between).
            let piece = try await NIOThreadPool.singleton.runIfActive { () throws -> ByteBuffer in
                var buffer = ByteBufferAllocator().buffer(capacity: count)
                try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { pointer in
                    let read = Foundation.read(descriptor, pointer.baseAddress, count)
                    guard read >= 0 else { throw GatewayError.internal("A spooled image could not be read.") }
                    return read
                }
                return buffer
            }
            guard piece.readableBytes > 0 else { throw GatewayError.internal("A spooled image ended early.") }
            left -= piece.readableBytes
            try await write(piece)
        }
    }

    func removeAll() {
        let gone = state.withLock { state -> [URL] in
            defer { state.paths = [] }
            return state.paths
        }
        for path in gone { try? FileManager.default.removeItem(at: path) }
    }

    deinit {
        removeAll()
    }
}

/// How many `b64_json` answers are held whole in memory at once (`NANOGATE_HELD_ANSWERS`):
/// below the bound a 1K answer is built whole (the fastest path), above it spooled, so that
/// thousands of answers arriving together cost files, not gigabytes of heap.
final class HeldAnswers: Sendable {
    let limit: Int
    private let count = Mutex(0)

    init(limit: Int) { self.limit = limit }

    /// A place for one more answer, or nil when all are taken.
    func take() -> Token? {
        let taken = count.withLock { count -> Bool in
            guard count < limit else { return false }
            count += 1
            return true
        }
        return taken ? Token(self) : nil
    }

    fileprivate func release() {
        count.withLock { $0 -= 1 }
    }

    /// One held answer: its place is given back when the token goes.
    final class Token: Sendable {
        private let owner: HeldAnswers

        fileprivate init(_ owner: HeldAnswers) { self.owner = owner }

        deinit { owner.release() }
    }
}
