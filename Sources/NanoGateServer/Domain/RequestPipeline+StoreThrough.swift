import Foundation
import Logging
import NanoGateCore
import NanoGateStorage
import Upstream

/// `url` answers without holding the image (issue 24): each call's answer is read as it
/// arrives, every image's base64 decoded piece by piece into a file of its own (a Pro answer's
/// thought images come before its final one, and whether an image is a thought shows only
/// after its data), and the final image's file handed to the store (a rename into the folder,
/// a multipart upload to the bucket). Nothing is sent before the images are stored, so every
/// failure is still a proper error and the answer reads exactly like one built whole.
extension RequestPipeline {
    /// The most images one answer may hold before it is refused (Google sends one final image,
    /// after at most a few thought images; the answer is untrusted).
    static let maxImagesPerAnswer = 8

    /// Whether `job`'s images stream into the store: a `url` answer with no conversion, when
    /// the gateway streams (`ImageURLService.scratchDirectory`).
    func storesThrough(_ job: ImageRequest) -> Bool {
        job.format == .url && images.scratchDirectory != nil && job.options.outputFormat == nil && job.options.outputCompression == nil
    }

    /// A stored image of one call: its URL and what the answer said about it.
    struct StoredImage: Sendable {
        var url: String
        var text: String?
        var usage: ImageUsage
        var format: OutputFormat?
        var pixels: PixelSize?
    }

    /// The `url` images answer for `job`, its images streamed into the store: `n` parallel
    /// calls; when some fail, the images that were stored are answered and charged (as
    /// `generateImages` does), and it throws only when none was, with the first call's error.
    func generateStoredImages(_ job: ImageRequest, settlement: Settlement, logger: Logger) async throws(GatewayError) -> ImagesResponse {
        try await settling(settlement, logger: logger) { () throws(GatewayError) -> ImagesResponse in
            let request = ImageTranslation.geminiRequest(
                prompt: job.prompt, inputImages: job.inputImages, spec: job.spec, family: job.model.family, reasoningEffort: job.options.reasoningEffort
            )
            let stored = try await perImage(job, logger: logger) { () throws(GatewayError) in
                try await storedImage(request, job: job, settlement: settlement, logger: logger)
            }
            return imagesResponse(
                job, data: stored.map { ImageObject(url: $0.url, revisedPrompt: $0.text) }, usage: stored.reduce(.zero) { $0 + $1.usage },
                format: stored.first?.format, pixels: stored.first?.pixels, settlement: settlement
            )
        }
    }

    /// One call whose final image goes from Google's answer into the store. The answer is read
    /// within the upstream attempt, so one that breaks off or cannot be read is retried as a
    /// whole answer would be (and is never billed: its usage never arrived).
    func storedImage(_ request: GeminiWire.Request, job: ImageRequest, settlement: Settlement, logger: Logger) async throws(GatewayError) -> StoredImage {
        guard let scratch = images.scratchDirectory else { throw .internal("No scratch directory for streamed images.") }
        let stored = try await answerRead(request, size: job.spec.imageSize, settlement: settlement, logger: logger) { answer in
            await Self.readImages(of: answer, into: scratch, logger: logger)
        }.get()
        defer { stored.sinks.discardAll() }
        AnswerReader.record(stored.response, in: settlement)
        let outcome = try ImageTranslation.outcome(of: stored.response)
        guard let index = Self.finalImageIndex(in: stored.response, imagesRead: stored.imagesRead), index < stored.sinks.items.count,
            stored.sinks.items[index].finished
        else {
            throw .badGateway("Google's answer could not be read.")
        }
        let sink = stored.sinks.items[index]
        guard let mime = sink.mimeType else {
            logger.error("could not store a generated image", metadata: ["error": "\(ImageStoreError.notAnImage)"])
            throw .notStored
        }
        do {
            let name = try await images.images.saveFile(at: sink.path, fileExtension: ImageSniffer.fileExtension(for: mime))
            return StoredImage(
                url: images.images.url(name: name, baseURL: job.baseURL, ttl: images.ttl, now: Date()), text: outcome.text, usage: outcome.usage,
                format: OutputFormat(mimeType: mime), pixels: sink.pixels
            )
        } catch {
            logger.error("could not store a generated image", metadata: ["error": "\(error)"])
            throw .notStored
        }
    }

    /// An answer read with its images in files of their own.
    struct ReadImages: Sendable {
        var response: GeminiWire.Response
        var imagesRead: Int
        var sinks: SinkList
    }

    /// Reads one attempt's answer, each image into a file of its own. A fault of the answer is
    /// the attempt's (its files are removed; the next attempt starts afresh); a file the
    /// gateway could not write is its own error, inside the attempt's success (Google's answer
    /// was not at fault, and is not tried again).
    static func readImages(
        of answer: GeminiAnswerBody, into scratch: URL, decoding: Bool = true, logger: Logger
    ) async -> Result<Result<ReadImages, GatewayError>, AnswerReadFailure> {
        let reader = AnswerReader(answer: answer)
        let sinks = SinkList()
        do {
            try await reader.read { event in
                switch event {
                case .imageBegin(let index):
                    guard index < maxImagesPerAnswer else {
                        throw AnswerReadFailure(UpstreamError(.unreadable, detail: "more than \(maxImagesPerAnswer) images"), retry: true)
                    }
                    sinks.items.append(try ImageFileSink(directory: scratch, decodes: decoding))
                case .imageBytes(let chunk):
                    try await sinks.items.last?.append(base64: chunk)
                case .imageEnd:
                    try await sinks.items.last?.finish()
                }
                return true
            }
            return .success(.success(ReadImages(response: try reader.response(), imagesRead: reader.imageCount, sinks: sinks)))
        } catch let failure as AnswerReadFailure {
            sinks.discardAll()
            return .failure(failure)
        } catch {
            logger.error("could not write a streamed image", metadata: ["error": "\(String(reflecting: error))"])
            sinks.discardAll()
            return .success(.failure(.notStored))
        }
    }

    /// Which image of the answer (in document order, as the scanner counted them) is the
    /// first candidate's first final one; nil when the answer's images do not add up.
    static func finalImageIndex(in response: GeminiWire.Response, imagesRead: Int) -> Int? {
        let candidates = response.candidates ?? []
        let listed = candidates.reduce(0) { $0 + ($1.content?.parts ?? []).filter { $0.inlineData != nil }.count }
        guard listed == imagesRead else { return nil }
        var index = 0
        for part in candidates.first?.content?.parts ?? [] where part.inlineData != nil {
            if part.isFinalImage { return index }
            index += 1
        }
        return nil
    }
}

/// The files one answer's images are written to (used from one task at a time).
final class SinkList: @unchecked Sendable {
    var items: [ImageFileSink] = []

    func discardAll(except kept: Int? = nil) {
        for (index, sink) in items.enumerated() where index != kept { sink.discard() }
    }
}
