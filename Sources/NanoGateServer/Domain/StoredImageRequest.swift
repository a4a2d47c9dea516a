import ExtrasBase64
import Foundation
import NanoGateCore
import Upstream
import NanoGateStorage
import NIOCore

/// A validated images request as kept for work that runs later (a background job): everything
/// the pipeline needs, with the input images saved in the image store and only their names
/// here. The runner turns it back into an `ImageRequest` and calls the pipeline; nothing is
/// parsed or validated again, and no HTTP request is rebuilt.
struct StoredImageRequest: Codable, Sendable, Equatable {
    /// The job row's content type for this form (earlier rows hold the raw HTTP body).
    static let contentType = "application/vnd.nanogate.image-request+json"

    struct InputImage: Codable, Sendable, Equatable {
        /// Its name in the image store.
        var name: String
        var mimeType: String
    }

    var endpoint: Endpoint
    var model: String
    var spec: ImageSpec
    var prompt: String
    var count: Int
    var format: ResponseFormat
    var baseURL: String
    var options: ImageOptions
    var inputImages: [InputImage]

    /// Saves `job`'s input images in `images` and answers the stored form.
    static func saving(_ job: ImageRequest, in images: any ImageRepository) async throws -> StoredImageRequest {
        var inputs: [InputImage] = []
        for image in job.inputImages {
            guard let bytes = SafeBase64.decode(image.data.bytes.readableBytesView) else { throw GatewayError.internal("An input image could not be kept for the job.") }
            let name = try await images.save(bytes, fileExtension: ImageSniffer.fileExtension(for: image.mimeType))
            inputs.append(InputImage(name: name, mimeType: image.mimeType))
        }
        return StoredImageRequest(
            endpoint: job.endpoint, model: job.model.name, spec: job.spec, prompt: job.prompt, count: job.count, format: job.format,
            baseURL: job.baseURL, options: job.options, inputImages: inputs
        )
    }

    /// The request again for `key`: its model from the catalog (a model the operator removed
    /// since is a clear failure), its input images loaded from the store.
    func request(key: APIKey, catalog: ModelCatalog, images: any ImageRepository) async throws(GatewayError) -> ImageRequest {
        guard let model = catalog.model(named: model) else {
            throw GatewayError.unknownModel(self.model, known: catalog.names.filter { key.mayUse(model: $0) })
        }
        var inline: [GeminiWire.InlineData] = []
        for input in inputImages {
            let bytes: [UInt8]?
            do {
                bytes = try await images.load(name: input.name)
            } catch {
                throw GatewayError.internal("The job's input images could not be read from the image store; retry the job.")
            }
            guard let bytes else {
                throw GatewayError.invalidParameter("image", "The job's input images are no longer kept (the job waited longer than images are); submit it again.", code: "input_expired")
            }
            inline.append(GeminiWire.InlineData(mimeType: input.mimeType, data: Base64Text(bytes: ByteBuffer(bytes: Base64.encodeToBytes(bytes: bytes)))))
        }
        return ImageRequest(
            key: key, endpoint: endpoint, model: model, spec: spec, prompt: prompt, inputImages: inline, count: count, format: format,
            baseURL: baseURL, options: options
        )
    }
}
