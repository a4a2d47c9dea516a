import Foundation
import Hummingbird
import Logging
import NanoGateCore
import Upstream
import NIOCore

/// One event of OpenAI's image stream (`image_generation.*`, `image_edit.*`).
struct ImageStreamEvent: Encodable, Sendable {
    var type: String
    var b64JSON: Base64Text
    var createdAt: Int
    var size: String?
    var quality: String
    var background = "opaque"
    var outputFormat: String?
    var partialImageIndex: Int?
    var usage: ImageUsage?

    enum CodingKeys: String, CodingKey {
        case type, size, quality, background, usage
        case b64JSON = "b64_json"
        case createdAt = "created_at"
        case outputFormat = "output_format"
        case partialImageIndex = "partial_image_index"
    }
}

extension ImagesController {
    /// `stream: true`: OpenAI's image stream as Server-Sent Events. Up to `partial_images`
    /// `*.partial_image` events carry Gemini 3 Pro's interim thought images (Google does not
    /// charge them; the 2.5 and 3.1 Flash models make none), then one `*.completed` event per
    /// image with its usage. Google is called without streaming, so the partial images arrive
    /// together with the final one; keep-alive comments flow while it works.
    ///
    /// Events always carry `b64_json` (OpenAI's stream has no URL form). An image is charged
    /// once its `completed` event was written; a failure is an `error` event at no cost.
    func streamed(_ job: ImageRequest, settlement: Settlement, logger: Logger) -> Response {
        let pipeline = self.pipeline
        let prefix = job.endpoint == .imageEdits ? "image_edit" : "image_generation"
        let interval = keepAliveInterval
        return Response(
            status: .ok,
            headers: [.contentType: "text/event-stream", .cacheControl: "no-cache", .init("X-Accel-Buffering")!: "no"],
            body: .init { writer in
                let work = Task { () -> Result<[ImageTranslation.Outcome], GatewayError> in
                    do throws(GatewayError) {
                        return .success(try await pipeline.produceImages(job, settlement: settlement, logger: logger))
                    } catch {
                        return .failure(error)
                    }
                }
                var failure: GatewayError?
                do {
                    let result = try await Heartbeat.wait(for: work, every: interval) { try await writer.write(Heartbeat.sseComment) }
                    switch result {
                    case .failure(let error):
                        failure = error
                        try await Self.write(StreamError(error: .init(error)), event: "error", to: &writer)
                    case .success(let outcomes):
                        let created = Int(Date().timeIntervalSince1970)
                        let quality = ImageQuality.reported(for: job.spec.imageSize)
                        var partialIndex = 0
                        for outcome in outcomes {
                            for draft in outcome.thoughtImages where partialIndex < job.options.partialImages {
                                let image = try await pipeline.images.finish(draft, options: job.options)
                                let event = ImageStreamEvent(
                                    type: "\(prefix).partial_image", b64JSON: image.base64, createdAt: created, size: image.pixels?.description,
                                    quality: quality, outputFormat: image.format?.rawValue, partialImageIndex: partialIndex
                                )
                                try await Self.write(event, event: event.type, to: &writer)
                                partialIndex += 1
                            }
                            let image = try await pipeline.images.finish(outcome.images[0], options: job.options)
                            // This image's share of the charge: the events' costs add up to the usage row's.
                            var usage = outcome.usage
                            usage.cost = TokenPrices.usd(settlement.charge(after: outcome.usage) - settlement.chargeMicroUSD)
                            let event = ImageStreamEvent(
                                type: "\(prefix).completed", b64JSON: image.base64, createdAt: created, size: image.pixels?.description,
                                quality: quality, outputFormat: image.format?.rawValue, usage: usage
                            )
                            try await Self.write(event, event: event.type, to: &writer)
                            settlement.delivered(images: 1, usage: outcome.usage)
                        }
                    }
                    try await writer.finish(nil)
                } catch let error as GatewayError {
                    // A conversion failed after Google answered: tell the client, charge what it got.
                    failure = error
                    try? await Self.write(StreamError(error: .init(error)), event: "error", to: &writer)
                    try? await writer.finish(nil)
                } catch {
                    work.cancel()
                    failure = .clientDisconnected
                }
                await pipeline.settle(settlement, status: failure?.status ?? 200, errorCode: failure?.code, logger: logger)
            }
        )
    }

    /// `{"type":"error","error":{…}}`: the OpenAI SDKs raise on an event whose data has `error`.
    struct StreamError: Encodable {
        var type = "error"
        var error: ErrorResponse.Body

        init(error: ErrorResponse) {
            self.error = error.error
        }
    }

    static func write(_ value: some Encodable, event: String, to writer: inout any ResponseBodyWriter) async throws {
        let pieces: [ByteBuffer]
        do {
            pieces = try SplicedJSON.encode(value)
        } catch {
            throw GatewayError.internal("The event could not be encoded.")
        }
        try await writer.write(ByteBuffer(string: "event: \(event)\ndata: "))
        for piece in pieces { try await writer.write(piece) }
        try await writer.write(ByteBuffer(string: "\n\n"))
    }
}
