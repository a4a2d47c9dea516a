import Foundation
import NanoGateCore
import Upstream
import NanoGateStorage

/// What one image request asks for, after validation against the catalog: the one value every
/// path runs through the pipeline (an inline request, a background job, a batch line). It
/// holds no HTTP request; its persisted form is `StoredImageRequest` (input images kept in the
/// image store, by name).
struct ImageRequest: Sendable {
    var key: APIKey
    var endpoint: Endpoint
    var model: CatalogModel
    var spec: ImageSpec
    var prompt: String
    var inputImages: [GeminiWire.InlineData]
    var count: Int
    var format: ResponseFormat
    /// Where image URLs point (scheme and authority, no trailing slash).
    var baseURL: String
    /// `output_format`, `output_compression`, `quality`, `stream`, `partial_images`.
    var options = ImageOptions()
}

/// Validation, once, for every way an images request arrives (JSON, multipart, a batch line,
/// a stored job's fields): the catalog decides the model, sizes and limits; the key's group
/// decides the default answer form. No Hummingbird here: controllers decode, this validates.
struct ImageRequestValidator: Sendable {
    let catalog: ModelCatalog

    /// Validates against the catalog: model, prompt, n, size/aspect_ratio/quality, response_format
    /// and the other OpenAI parameters (`ImageOptions`).
    func validate(_ input: ImageGenerationRequest, key: APIKey, baseURL: String, endpoint: Endpoint, inputImageCount: Int = 0) throws(GatewayError) -> ImageRequest {
        guard let name = input.model, !name.isEmpty else {
            throw .invalidParameter("model", "Missing required parameter: 'model'. Available models: \(catalog.names.joined(separator: ", ")).", code: "missing_required_parameter")
        }
        guard let model = catalog.model(named: name), key.mayUse(model: name) else {
            throw .unknownModel(name, known: catalog.names.filter { key.mayUse(model: $0) })
        }
        let prompt = input.prompt.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !prompt.isEmpty else { throw .invalidParameter("prompt", "The prompt must not be empty.") }
        try PromptLimit.check(input.prompt, param: "prompt")
        let count = input.n ?? 1
        guard (1...4).contains(count) else {
            throw .invalidParameter("n", "Invalid value for 'n': \(count). It must be between 1 and 4.")
        }
        if endpoint == .imageEdits {
            let limit = model.maxInputImages
            guard limit >= 1, (1...limit).contains(inputImageCount) else {
                let takes = limit >= 1 ? "takes 1 to \(limit) input images" : "takes no input images (the operator turned edits off for it)"
                throw .invalidParameter("image", "'\(model.name)' \(takes); \(inputImageCount) were sent.", code: inputImageCount == 0 && limit >= 1 ? "missing_required_parameter" : "too_many_images")
            }
        }
        let options = try ImageOptions.parse(input.options)
        if options.outputFormat == .webp, !ImageConverter.webpAvailable {
            throw .invalidParameter("output_format", "WebP output needs libwebp, which this server does not have; ask for png or jpeg.", code: "unsupported_value")
        }
        if options.reasoningEffort != nil, model.family.thinkingLevels.isEmpty { throw ReasoningEffort.unsupported(model: model.name) }
        let spec = try SizeRules.resolve(model: model, size: input.size, aspectRatio: input.aspectRatio, quality: options.quality)
        let format = try Self.responseFormat(input.responseFormat, model: model, group: key.groupSettings)
        return ImageRequest(
            key: key, endpoint: endpoint, model: model, spec: spec, prompt: input.prompt,
            inputImages: [], count: count, format: format, baseURL: baseURL, options: options
        )
    }

    /// `response_format` if given; else the key's group decides (default → url, gemini → b64_json,
    /// an operator's group → its own setting).
    /// Names the catalog marks base64-only (`gemini-2.5-flash-image`, `gemini-3-pro-image-preview`)
    /// always answer base64, as the spec says.
    static func responseFormat(_ requested: String?, model: CatalogModel, group: KeyGroupSettings) throws(GatewayError) -> ResponseFormat {
        var format: ResponseFormat
        if let requested, !requested.isEmpty {
            guard let parsed = ResponseFormat(rawValue: requested) else {
                throw .invalidParameter("response_format", "Invalid value for 'response_format': '\(requested)'. Accepted values: b64_json, url.")
            }
            format = parsed
        } else {
            format = group.responseFormat
        }
        if !model.allowsURLOutput { format = .b64JSON }
        return format
    }

    /// A generation's JSON body validated (a batch line's `body`).
    func generation(json: Data, key: APIKey, baseURL: String) throws(GatewayError) -> ImageRequest {
        let input: ImageGenerationRequest
        do {
            input = try JSONDecoder().decode(ImageGenerationRequest.self, from: json)
        } catch {
            throw .from(decodingError: error)
        }
        return try validate(input, key: key, baseURL: baseURL, endpoint: .imageGenerations)
    }

    /// An edit's JSON body validated, its image URLs not yet read (a batch line's `body`: the
    /// batch holds its credit before any URL is fetched).
    func edit(json: Data, key: APIKey, baseURL: String) throws(GatewayError) -> (ImageRequest, [String]) {
        let input: ImageEditJSON
        do {
            input = try JSONDecoder().decode(ImageEditJSON.self, from: json)
        } catch {
            throw .from(decodingError: error)
        }
        return try edit(input, key: key, baseURL: baseURL)
    }

    /// A JSON edit validated, its image URLs (to be read by the caller) beside it.
    func edit(_ input: ImageEditJSON, key: APIKey, baseURL: String) throws(GatewayError) -> (ImageRequest, [String]) {
        if input.mask != nil { throw Self.maskUnsupported }
        let job = try validate(input.fields, key: key, baseURL: baseURL, endpoint: .imageEdits, inputImageCount: input.urls.count)
        return (job, input.urls)
    }

    static let maskUnsupported = GatewayError.invalidParameter(
        "mask", "Gemini image models take no mask. Describe the area to change in the prompt instead (e.g. \"replace only the sky\").", code: "unsupported_parameter"
    )
}
