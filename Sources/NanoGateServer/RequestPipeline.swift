import Foundation
import Logging
import NanoGateCore
import NanoGateStorage
import NIOCore
import Synchronization
import Upstream

/// What one image request asks for, after validation against the catalog.
struct ImageJob: Sendable {
    var key: APIKey
    var endpoint: String
    var model: CatalogModel
    var spec: ImageSpec
    var prompt: String
    var inputImages: [GeminiWire.InlineData]
    var count: Int
    var format: ResponseFormat
    /// Where image URLs point (scheme and authority, no trailing slash).
    var baseURL: String
}

/// One request's account, from its first upstream call to its usage-log row: what Google
/// billed (every answer it returned, delivered or not) and what the client received (the only
/// thing charged). Written to the usage log exactly once, whatever path the request ends on.
final class Settlement: Sendable {
    let key: APIKey
    let endpoint: String
    let model: CatalogModel
    /// Counts the upstream attempts for the row.
    let trace = UpstreamTrace()
    private let state = Mutex(State())

    private struct State {
        var billed = ImageUsage.zero
        var delivered = ImageUsage.zero
        var deliveredImages = 0
        var note: String?
        var settled = false
    }

    init(key: APIKey, endpoint: String, model: CatalogModel) {
        self.key = key
        self.endpoint = endpoint
        self.model = model
    }

    /// Google answered with this usage (it bills it whether or not the client gets anything).
    func billed(_ usage: ImageUsage) {
        state.withLock { $0.billed = $0.billed + usage }
    }

    /// The client received `images` images (or text) produced with `usage`: this is charged.
    func delivered(images: Int, usage: ImageUsage) {
        state.withLock {
            $0.deliveredImages += images
            $0.delivered = $0.delivered + usage
        }
    }

    /// A code for the log row of a request that succeeded with a remark (`content_filter`).
    func note(_ code: String) {
        state.withLock { $0.note = code }
    }

    /// The usage-log row, or nil when it was already written.
    fileprivate func close(status: Int, errorCode: String?) -> UsageRecord? {
        state.withLock { state -> UsageRecord? in
            guard !state.settled else { return nil }
            state.settled = true
            let billed = state.billed
            return UsageRecord(
                keyID: key.id, endpoint: endpoint, model: model.name, status: status, images: state.deliveredImages,
                inputTokens: billed.inputTokens, outputTokens: billed.outputTokens, totalTokens: billed.totalTokens,
                costMicroUSD: Pricing.costMicroUSD(state.delivered, prices: model.prices), errorCode: errorCode ?? state.note,
                upstreamCostMicroUSD: Pricing.costMicroUSD(billed, prices: model.prices), attempts: trace.attempts
            )
        }
    }
}

/// The request pipeline every endpoint shares (generations, edits, chat streamed and not):
/// authenticate (middleware) → validate against the catalog (controller) → call Google through
/// the pool → deliver → settle.
///
/// Settlement is by what was delivered, never by how the request ended: a client that received
/// an image is charged for it even if it disconnected right after, and a failure costs nothing.
/// The usage log records Google's own token counts (what Google billed) beside the charge and
/// the number of upstream attempts. Credit reservation (the operators issue) belongs beside
/// `open`, before the first upstream call, and its release or commit in `settle`.
struct RequestPipeline: Sendable {
    let upstream: UpstreamPool
    let usage: any UsageLog
    let images: ImageURLService

    /// A new account for a validated request.
    func open(key: APIKey, endpoint: String, model: CatalogModel) -> Settlement {
        Settlement(key: key, endpoint: endpoint, model: model)
    }

    /// Writes the request's usage-log row (once; later calls do nothing).
    func settle(_ settlement: Settlement, status: Int, errorCode: String?, logger: Logger) async {
        guard let record = settlement.close(status: status, errorCode: errorCode) else { return }
        do {
            try await usage.record(record)
        } catch {
            logger.error("could not write the usage log", metadata: ["error": "\(error)"])
        }
    }

    /// Runs `body` and settles the request on whatever way it ends (a thrown error settles with
    /// that error's status; what was delivered before it is still charged).
    func settling<Value>(_ settlement: Settlement, logger: Logger, _ body: () async throws(GatewayError) -> Value) async throws(GatewayError) -> Value {
        do {
            let value = try await body()
            await settle(settlement, status: 200, errorCode: nil, logger: logger)
            return value
        } catch {
            await settle(settlement, status: error.status, errorCode: error.code, logger: logger)
            throw error
        }
    }

    /// One `generateContent` call on behalf of `settlement`; Google's usage is recorded as billed.
    func generate(_ request: GeminiWire.Request, settlement: Settlement, logger: Logger) async throws(GatewayError) -> GeminiWire.Response {
        let response = try await upstream.generateContent(model: settlement.model.upstreamModel, request: request, trace: settlement.trace, logger: logger)
        settlement.billed(ImageTranslation.usage(of: response.usageMetadata))
        return response
    }

    /// One `streamGenerateContent` call on behalf of `settlement` (usage is recorded by the reader).
    func stream(_ request: GeminiWire.Request, settlement: Settlement, logger: Logger) async throws(GatewayError) -> GeminiEventStream {
        try await upstream.streamGenerateContent(model: settlement.model.upstreamModel, request: request, trace: settlement.trace, logger: logger)
    }

    /// The images endpoints: `n` parallel calls (Gemini rejects `candidateCount` > 1).
    ///
    /// When some calls fail, the images that succeeded are returned and charged (OpenAI clients
    /// accept fewer than `n`); the request fails only when no image came back, with the first
    /// call's error. Every answer Google returned is in the log's token counts either way.
    func generateImages(_ job: ImageJob, logger: Logger) async throws(GatewayError) -> ImagesResponse {
        let settlement = open(key: job.key, endpoint: job.endpoint, model: job.model)
        return try await settling(settlement, logger: logger) { () throws(GatewayError) -> ImagesResponse in
            let request = ImageTranslation.geminiRequest(prompt: job.prompt, inputImages: job.inputImages, spec: job.spec, family: job.model.family)
            let results = await withTaskGroup(of: (Int, Result<ImageTranslation.Outcome, GatewayError>).self) { group in
                for index in 0..<job.count {
                    group.addTask {
                        do throws(GatewayError) {
                            let response = try await generate(request, settlement: settlement, logger: logger)
                            return (index, .success(try ImageTranslation.outcome(of: response)))
                        } catch {
                            return (index, .failure(error))
                        }
                    }
                }
                var collected: [(Int, Result<ImageTranslation.Outcome, GatewayError>)] = []
                for await result in group { collected.append(result) }
                return collected.sorted { $0.0 < $1.0 }.map(\.1)
            }
            let outcomes = results.compactMap { try? $0.get() }
            guard !outcomes.isEmpty else {
                for case .failure(let error) in results { throw error }
                throw .internal("No upstream call was made.")
            }
            if outcomes.count < results.count {
                logger.warning("some images of the request failed; answering with the others", metadata: ["delivered": "\(outcomes.count)", "asked": "\(job.count)"])
            }

            var data: [ImageObject] = []
            var delivered = ImageUsage.zero
            for outcome in outcomes {
                // One image per upstream call: Gemini may add more, but `n` is what the client asked for.
                let image = outcome.images[0]
                switch job.format {
                case .b64JSON:
                    data.append(ImageObject(b64JSON: image.data, revisedPrompt: outcome.text))
                case .url:
                    do {
                        let url = try await images.store(base64: image.data, baseURL: job.baseURL)
                        data.append(ImageObject(url: url, revisedPrompt: outcome.text))
                    } catch {
                        logger.error("could not store a generated image", metadata: ["error": "\(error)"])
                        continue
                    }
                }
                delivered = delivered + outcome.usage
            }
            guard !data.isEmpty else {
                throw .internal("The image was generated but could not be stored for a URL answer; retry with response_format b64_json.")
            }
            settlement.delivered(images: data.count, usage: delivered)
            return ImagesResponse(created: Int(Date().timeIntervalSince1970), data: data, usage: delivered)
        }
    }
}

/// Stores generated images and hands out signed, expiring URLs to them.
struct ImageURLService: Sendable {
    let store: ImageStore
    let signer: URLSigner
    let ttl: Duration

    /// Decodes Google's base64, sniffs the real type (Gemini mislabels JPEG as PNG), writes the
    /// file and returns its signed URL. Bytes that are no image Google makes are refused rather
    /// than stored under an image extension.
    func store(base64: Base64Text, baseURL: String) async throws -> String {
        guard let bytes = SafeBase64.decode(base64.bytes.readableBytesView) else { throw ImageStoreError.notAnImage }
        guard let mime = ImageSniffer.mimeType(of: bytes) else { throw ImageStoreError.notAnImage }
        let name = try await store.save(bytes, fileExtension: ImageSniffer.fileExtension(for: mime))
        let expires = Int(Date().timeIntervalSince1970) + Int(ttl.components.seconds)
        return "\(baseURL)/v1/files/images/\(name)?expires=\(expires)&signature=\(signer.signature(name: name, expires: expires))"
    }
}
