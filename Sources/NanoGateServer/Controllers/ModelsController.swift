import Foundation
import Hummingbird
import NanoGateCore
import NanoGateStorage

/// `GET /v1/models` and `GET /v1/models/{id}` in OpenAI's list format.
struct ModelsController {
    let catalog: ModelCatalog
    /// The prices an upstream id is charged at (the operator's override, else the catalog's).
    var prices: @Sendable (_ upstream: String, _ catalog: TokenPrices) -> TokenPrices = { $1 }

    /// OpenAI's `Model` object, with what the model accepts (so clients and consoles can build
    /// their controls from it).
    struct ModelObject: Codable, Sendable {
        var id: String
        var object = "model"
        var created: Int
        var owned_by = "google"
        var capabilities: Capabilities
    }

    struct Capabilities: Codable, Sendable {
        var family: String
        /// Values of `aspect_ratio` (and of `size` as a ratio).
        var aspect_ratios: [String]
        /// Tiers `size` takes (`[]`: the model has one size per ratio; `size` carries the ratio).
        var sizes: [String]
        var max_input_images: Int
        var url_output: Bool
        var output_formats: [String]
        var streaming: Bool = true
        /// What one image costs this key, in USD, by `size` tier (`default` for a one-size
        /// model): Google's image tokens for the tier at the charged price, times the key's
        /// group multiplier; text and input tokens come on top.
        var image_prices: [String: Double]?
        /// The pixel size Google answers with, by `size` tier (`default` for a one-size model)
        /// and aspect ratio (`"2k": {"16:9": "2752x1536"}`), so a client can show it before asking.
        var pixel_sizes: [String: [String: String]]?
    }

    struct ModelList: Codable, Sendable {
        var object = "list"
        var data: [ModelObject]
    }

    func addRoutes(to group: RouterGroup<GatewayRequestContext>) {
        group.get("models") { request, context in
            if GoogleErrorShape.applies(to: request) {
                // Google's SDK listing models under /v1 (x-goog-api-key, no bearer): Google's shape.
                return try json(NativeController.ModelList(models: models(for: context.identity).map(NativeController.GoogleModel.init)), sortedKeys: false)
            }
            return try json(ModelList(data: models(for: context.identity).map { object($0, key: context.identity) }), sortedKeys: false)
        }
        group.get("models/{id}") { request, context in
            let id = (context.parameters.get("id") ?? "").removingPercentEncoding ?? ""
            if GoogleErrorShape.applies(to: request) {
                // Google's SDK (`models.get`) under /v1: Google's `Model`, by name or upstream id.
                let bare = id.hasPrefix("models/") ? String(id.dropFirst(7)) : id
                let native = NativeController.resolve(bare, in: catalog, key: context.identity)
                guard let model = native else { throw GatewayError.unknownModel(bare, known: models(for: context.identity).map(\.name)) }
                return try json(NativeController.GoogleModel(model), sortedKeys: false)
            }
            guard let model = models(for: context.identity).first(where: { $0.name == id }) else {
                throw GatewayError.unknownModel(id, known: models(for: context.identity).map(\.name))
            }
            return try json(object(model, key: context.identity), sortedKeys: false)
        }
    }

    /// The models a key may use (its own and its group's allow-lists).
    func models(for key: APIKey?) -> [CatalogModel] {
        guard let key else { return [] }
        return catalog.models.filter { key.mayUse(model: $0.name) }
    }

    /// Release dates of the upstream models (unix seconds) as OpenAI's `created`, and capabilities.
    func object(_ model: CatalogModel, key: APIKey? = nil) -> ModelObject {
        let prices = prices(model.upstreamModel, model.prices)
        let tiers: [ImageSize?] = model.sizes.isEmpty ? [nil] : model.sizes
        let imagePrices = Dictionary(uniqueKeysWithValues: tiers.map { tier -> (String, Double) in
            let tokens = model.family.outputImageTokens(tier)
            let usage = ImageUsage(
                inputTokens: 0, inputTokensDetails: .init(imageTokens: 0, textTokens: 0),
                outputTokens: tokens, outputTokensDetails: .init(imageTokens: tokens, textTokens: 0), totalTokens: tokens
            )
            let micro = Pricing.costMicroUSD(usage, prices: prices, multiplierPPM: key?.groupSettings.multiplierPPM ?? 1_000_000)
            return (tier?.rawValue ?? "default", TokenPrices.usd(micro))
        })
        return ModelObject(
            id: model.name, created: model.family.released,
            capabilities: Capabilities(
                family: model.family.rawValue, aspect_ratios: model.aspectRatios.map(\.rawValue), sizes: model.sizes.map(\.rawValue),
                max_input_images: model.maxInputImages, url_output: model.allowsURLOutput,
                output_formats: ImageConverter.webpAvailable ? ["png", "jpeg", "webp"] : ["png", "jpeg"],
                image_prices: imagePrices,
                pixel_sizes: Dictionary(uniqueKeysWithValues: tiers.map { tier in
                    (tier?.rawValue ?? "default", Dictionary(uniqueKeysWithValues: model.aspectRatios.map { ($0.rawValue, model.family.pixels($0, tier).description) }))
                })
            )
        )
    }
}
