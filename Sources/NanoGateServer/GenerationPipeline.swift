import ExtrasBase64
import Foundation
import Logging
import NanoGateCore
import NanoGateStorage
import NIOCore
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

/// The request pipeline every image endpoint shares:
/// authenticate (middleware) → validate against the catalog (controller) → reserve credit →
/// pick an upstream and call Google → settle → answer.
///
/// Credit reservation is the hook where per-key quotas will go; today every active key may spend,
/// and settlement writes the usage log with Google's price for what was actually produced.
/// A failed generation is logged with zero cost.
struct GenerationPipeline: Sendable {
    let upstream: UpstreamPool
    let usage: any UsageLog
    let images: ImageURLService

    func run(_ job: ImageJob, logger: Logger) async throws(GatewayError) -> ImagesResponse {
        let request = ImageTranslation.geminiRequest(prompt: job.prompt, inputImages: job.inputImages, spec: job.spec, family: job.model.family)
        let outcomes: [ImageTranslation.Outcome]
        do {
            outcomes = try await generate(request, count: job.count, model: job.model.upstreamModel, logger: logger)
        } catch {
            await settle(job, status: error.status, images: 0, usage: .zero, errorCode: error.code, logger: logger)
            throw error
        }

        let total = outcomes.map(\.usage).reduce(.zero, +)
        var data: [ImageObject] = []
        do {
            for outcome in outcomes {
                // One image per upstream call: Gemini may add more, but `n` is what the client asked for.
                guard let image = outcome.images.first else { continue }
                switch job.format {
                case .b64JSON:
                    data.append(ImageObject(b64JSON: image.data, revisedPrompt: outcome.text))
                case .url:
                    let url = try await images.store(base64: image.data, baseURL: job.baseURL)
                    data.append(ImageObject(url: url, revisedPrompt: outcome.text))
                }
            }
        } catch {
            // Google produced (and billed) the images even though we could not store them.
            await settle(job, status: 500, images: outcomes.count, usage: total, errorCode: "image_store_failed", logger: logger)
            logger.error("could not store generated image", metadata: ["error": "\(error)"])
            throw .internal("The image was generated but could not be stored for a URL answer; retry with response_format b64_json.")
        }
        await settle(job, status: 200, images: data.count, usage: total, errorCode: nil, logger: logger)
        return ImagesResponse(created: Int(Date().timeIntervalSince1970), data: data, usage: total)
    }

    /// `n` parallel calls (Gemini rejects `candidateCount` > 1); the request fails if any call fails.
    private func generate(_ request: GeminiWire.Request, count: Int, model: String, logger: Logger) async throws(GatewayError) -> [ImageTranslation.Outcome] {
        let results = await withTaskGroup(of: (Int, Result<ImageTranslation.Outcome, GatewayError>).self) { group in
            for index in 0..<count {
                group.addTask {
                    do throws(GatewayError) {
                        let response = try await upstream.generateContent(model: model, request: request, logger: logger)
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
        var outcomes: [ImageTranslation.Outcome] = []
        for result in results {
            switch result {
            case .success(let outcome): outcomes.append(outcome)
            case .failure(let error): throw error
            }
        }
        return outcomes
    }

    private func settle(_ job: ImageJob, status: Int, images: Int, usage total: ImageUsage, errorCode: String?, logger: Logger) async {
        let cost = status == 200 ? Pricing.costMicroUSD(total, prices: job.model.prices) : 0
        let record = UsageRecord(
            keyID: job.key.id, endpoint: job.endpoint, model: job.model.name, status: status, images: images,
            inputTokens: total.inputTokens, outputTokens: total.outputTokens, totalTokens: total.totalTokens,
            costMicroUSD: cost, errorCode: errorCode
        )
        do {
            try await usage.record(record)
        } catch {
            logger.error("could not write the usage log", metadata: ["error": "\(error)"])
        }
    }
}

/// Stores generated images and hands out signed, expiring URLs to them.
struct ImageURLService: Sendable {
    let store: ImageStore
    let signer: URLSigner
    let ttl: Duration

    /// Decodes Google's base64, sniffs the real type (Gemini mislabels JPEG as PNG), writes the
    /// file and returns its signed URL.
    func store(base64: Base64Text, baseURL: String) async throws -> String {
        let bytes = try Base64.decode(bytes: base64.bytes.readableBytesView)
        let mime = ImageSniffer.mimeType(of: bytes) ?? "image/png"
        let name = try await store.save(bytes, fileExtension: ImageSniffer.fileExtension(for: mime))
        let expires = Int(Date().timeIntervalSince1970) + Int(ttl.components.seconds)
        return "\(baseURL)/v1/files/images/\(name)?expires=\(expires)&signature=\(signer.signature(name: name, expires: expires))"
    }
}
