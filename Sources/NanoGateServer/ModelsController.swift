import Hummingbird
import NanoGateCore
import NanoGateStorage

/// `GET /v1/models` and `GET /v1/models/{id}` in OpenAI's list format.
struct ModelsController {
    let catalog: ModelCatalog

    /// OpenAI's `Model` object.
    struct ModelObject: Codable, Sendable {
        var id: String
        var object = "model"
        var created: Int
        var owned_by = "google"
    }

    struct ModelList: Codable, Sendable {
        var object = "list"
        var data: [ModelObject]
    }

    func addRoutes(to group: RouterGroup<GatewayRequestContext>) {
        group.get("models") { _, context in
            try ImagesController.json(ModelList(data: models(for: context.apiKey).map(object)))
        }
        group.get("models/{id}") { _, context in
            let id = context.parameters.get("id") ?? ""
            guard let model = models(for: context.apiKey).first(where: { $0.name == id }) else {
                throw GatewayError.unknownModel(id, known: catalog.names)
            }
            return try ImagesController.json(object(model))
        }
    }

    /// The models a key may use. Every key may use every catalog model today; per-key model
    /// lists slot in here.
    func models(for key: APIKey?) -> [CatalogModel] {
        key == nil ? [] : catalog.models
    }

    /// Release dates of the upstream models (unix seconds), as OpenAI's `created`.
    func object(_ model: CatalogModel) -> ModelObject {
        ModelObject(id: model.name, created: model.family == .flash25 ? 1_759_363_200 : 1_763_596_800)
    }
}
