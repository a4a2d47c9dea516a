import Foundation

/// OpenAI's images API types, as the official SDKs send and read them.

/// How a generated image is returned.
public enum ResponseFormat: String, Sendable, Codable {
    case b64JSON = "b64_json"
    case url
}

/// `POST /v1/images/generations` body, and the scalar fields of an edit. Every parameter
/// OpenAI's images API takes today is read (as text, so `"20"` and `20` are the same) and
/// answered by `ImageOptions`; fields no OpenAI model has are ignored.
public struct ImageGenerationRequest: Decodable, Sendable {
    public var prompt: String
    public var model: String?
    public var n: Int?
    public var size: String?
    public var aspectRatio: String?
    public var responseFormat: String?
    /// `quality`, `background`, `output_format`, `output_compression`, `moderation`, `style`,
    /// `user`, `stream`, `partial_images`, `input_fidelity`, as sent (numbers and booleans as text).
    public var options: [String: String]

    public init(
        prompt: String, model: String?, n: Int? = nil, size: String? = nil, aspectRatio: String? = nil, responseFormat: String? = nil,
        options: [String: String] = [:]
    ) {
        self.prompt = prompt
        self.model = model
        self.n = n
        self.size = size
        self.aspectRatio = aspectRatio
        self.responseFormat = responseFormat
        self.options = options
    }

    /// The OpenAI parameters read into `options`.
    public static let optionNames = [
        "quality", "background", "output_format", "output_compression", "moderation", "style", "user", "stream",
        "partial_images", "input_fidelity", "reasoning_effort", "service_tier",
    ]

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: AnyCodingKey.self)
        func key(_ name: String) -> AnyCodingKey { AnyCodingKey(name) }
        self.prompt = try container.decode(String.self, forKey: key("prompt"))
        self.model = try container.decodeIfPresent(String.self, forKey: key("model"))
        // Form posts and some clients send numbers as strings ("2").
        if let number = try? container.decodeIfPresent(Int.self, forKey: key("n")) {
            self.n = number
        } else if let text = try? container.decodeIfPresent(String.self, forKey: key("n")) {
            guard let number = Int(text) else {
                throw DecodingError.dataCorruptedError(forKey: key("n"), in: container, debugDescription: "'n' must be an integer")
            }
            self.n = number
        } else {
            self.n = nil
            if container.contains(key("n")), try !container.decodeNil(forKey: key("n")) {
                throw DecodingError.dataCorruptedError(forKey: key("n"), in: container, debugDescription: "'n' must be an integer")
            }
        }
        self.size = try container.decodeIfPresent(String.self, forKey: key("size"))
        self.aspectRatio = try container.decodeIfPresent(String.self, forKey: key("aspect_ratio"))
        self.responseFormat = try container.decodeIfPresent(String.self, forKey: key("response_format"))
        var options: [String: String] = [:]
        for name in Self.optionNames {
            options[name] = try container.scalarText(name)
        }
        self.options = options
    }
}

/// The format of delivered image bytes, as OpenAI's `output_format` names it.
public enum OutputFormat: String, Sendable, CaseIterable, Codable {
    case png, jpeg, webp

    public var mimeType: String { "image/\(rawValue)" }

    /// The format of a sniffed MIME type (nil for GIF, HEIC and unknown bytes).
    public init?(mimeType: String) {
        switch mimeType {
        case "image/png": self = .png
        case "image/jpeg", "image/jpg": self = .jpeg
        case "image/webp": self = .webp
        default: return nil
        }
    }
}

/// Every OpenAI image parameter beyond model, prompt, n, size and response_format, answered:
/// mapped, accepted and ignored where ignoring is harmless, or refused with a 400 that names it.
///
/// | parameter | answer |
/// |---|---|
/// | `quality` | `low` → the smallest tier, `high`/`hd` → 2K on tiered models when `size` names no tier; `auto`/`medium`/`standard` → the default |
/// | `background` | `auto`/`opaque` accepted (Gemini's images are opaque); `transparent` → 400 |
/// | `output_format` | `png`/`jpeg` (`jpg`)/`webp`: the bytes are converted when Google returned another format |
/// | `output_compression` | 0–100, the quality of JPEG/WebP output (re-encodes); ignored for PNG |
/// | `moderation` | `auto`/`low` accepted and ignored: Google's own filters apply |
/// | `style` | `vivid`/`natural` accepted and ignored (a dall-e-3 knob Gemini lacks) |
/// | `user` | accepted and ignored |
/// | `input_fidelity` | `high`/`low` accepted and ignored (Gemini keeps input detail on its own) |
/// | `stream` + `partial_images` | Server-Sent Events; `partial_images` 0–3 |
/// OpenAI's `reasoning_effort` values.
public enum ReasoningEffort: String, Sendable, Codable, CaseIterable {
    case minimal, low, medium, high

    /// Parses a request's value; a 400 naming `reasoning_effort` for anything else.
    public static func parse(_ text: String?) throws(GatewayError) -> ReasoningEffort? {
        guard let text = text?.trimmingCharacters(in: .whitespaces).lowercased(), !text.isEmpty else { return nil }
        guard let effort = ReasoningEffort(rawValue: text) else {
            throw .invalidParameter("reasoning_effort", "Invalid value for 'reasoning_effort': '\(text)'. Accepted values: minimal, low, medium, high.", code: "unsupported_value")
        }
        return effort
    }

    /// The 400 for a model without thinking levels.
    public static func unsupported(model: String) -> GatewayError {
        .invalidParameter(
            "reasoning_effort", "'\(model)' has no thinking level to set; leave out 'reasoning_effort' (it is answered on nano-banana-2.1 and gemini-nano-banana-2.1).",
            code: "unsupported_parameter"
        )
    }
}

public struct ImageOptions: Sendable, Equatable, Codable {
    public var quality: ImageQuality?
    public var outputFormat: OutputFormat?
    public var outputCompression: Int?
    public var stream = false
    public var partialImages = 0
    /// OpenAI's `reasoning_effort`, answered by the model's thinking level where it has one.
    public var reasoningEffort: ReasoningEffort?
    /// OpenAI's `service_tier` (nil: `auto` or absent, the key's default).
    public var serviceTier: ServiceTier?

    public init(quality: ImageQuality? = nil, outputFormat: OutputFormat? = nil, outputCompression: Int? = nil, stream: Bool = false, partialImages: Int = 0) {
        self.quality = quality
        self.outputFormat = outputFormat
        self.outputCompression = outputCompression
        self.stream = stream
        self.partialImages = partialImages
    }

    /// Whether delivered bytes in `format` must be re-encoded.
    public func needsConversion(from format: OutputFormat?) -> Bool {
        if let outputFormat, outputFormat != format { return true }
        // A compression asked for JPEG/WebP output re-encodes even when the format already matches.
        let target = outputFormat ?? format
        return outputCompression != nil && (target == .jpeg || target == .webp)
    }

    public static func parse(_ options: [String: String]) throws(GatewayError) -> ImageOptions {
        func value(_ name: String) -> String? {
            options[name].map { $0.trimmingCharacters(in: .whitespaces).lowercased() }.flatMap { $0.isEmpty ? nil : $0 }
        }
        func oneOf(_ name: String, _ accepted: [String]) throws(GatewayError) -> String? {
            guard let text = value(name) else { return nil }
            guard accepted.contains(text) else {
                throw .invalidParameter(name, "Invalid value for '\(name)': '\(options[name] ?? "")'. Accepted values: \(accepted.joined(separator: ", ")).")
            }
            return text
        }
        func integer(_ name: String, _ range: ClosedRange<Int>) throws(GatewayError) -> Int? {
            guard let text = value(name) else { return nil }
            guard let number = Int(text), range.contains(number) else {
                throw .invalidParameter(name, "Invalid value for '\(name)': '\(options[name] ?? "")'. It must be an integer from \(range.lowerBound) to \(range.upperBound).")
            }
            return number
        }
        var result = ImageOptions()
        result.quality = try oneOf("quality", ImageQuality.allCases.map(\.rawValue)).flatMap(ImageQuality.init(rawValue:))
        if try oneOf("background", ["auto", "opaque", "transparent"]) == "transparent" {
            throw .invalidParameter(
                "background", "Gemini image models cannot make transparent images. Send background 'opaque' or 'auto' (and remove the background yourself if you need alpha).",
                code: "unsupported_value"
            )
        }
        let format = try oneOf("output_format", ["png", "jpeg", "jpg", "webp"])
        result.outputFormat = format.map { $0 == "jpg" ? .jpeg : OutputFormat(rawValue: $0)! }
        result.outputCompression = try integer("output_compression", 0...100)
        _ = try oneOf("moderation", ["auto", "low"])
        _ = try oneOf("style", ["vivid", "natural"])
        _ = try oneOf("input_fidelity", ["high", "low"])
        result.stream = try oneOf("stream", ["true", "false", "1", "0"]).map { $0 == "true" || $0 == "1" } ?? false
        result.partialImages = try integer("partial_images", 0...3) ?? 0
        result.reasoningEffort = try ReasoningEffort.parse(options["reasoning_effort"])
        result.serviceTier = try ServiceTier.requested(options["service_tier"])
        return result
    }
}

/// One entry of `data[]`.
public struct ImageObject: Encodable, Sendable, Equatable {
    public var b64JSON: Base64Text?
    public var url: String?
    /// Text the model wrote beside the image, when it wrote any.
    public var revisedPrompt: String?

    public init(b64JSON: Base64Text? = nil, url: String? = nil, revisedPrompt: String? = nil) {
        self.b64JSON = b64JSON
        self.url = url
        self.revisedPrompt = revisedPrompt
    }

    enum CodingKeys: String, CodingKey {
        case b64JSON = "b64_json"
        case url
        case revisedPrompt = "revised_prompt"
    }
}

/// `usage` of an images response (OpenAI's `ImageGenUsage`, with output details).
public struct ImageUsage: Codable, Sendable, Equatable {
    public struct Details: Codable, Sendable, Equatable {
        public var imageTokens: Int
        public var textTokens: Int

        public init(imageTokens: Int, textTokens: Int) {
            self.imageTokens = imageTokens
            self.textTokens = textTokens
        }

        enum CodingKeys: String, CodingKey {
            case imageTokens = "image_tokens"
            case textTokens = "text_tokens"
        }
    }

    public var inputTokens: Int
    public var inputTokensDetails: Details
    public var outputTokens: Int
    public var outputTokensDetails: Details
    public var totalTokens: Int
    /// What the key was charged for this answer, in USD (as OpenRouter's `usage.cost`); absent
    /// where nothing is charged (Google's usage read back, an answer still under way).
    public var cost: Double?

    public init(inputTokens: Int, inputTokensDetails: Details, outputTokens: Int, outputTokensDetails: Details, totalTokens: Int) {
        self.inputTokens = inputTokens
        self.inputTokensDetails = inputTokensDetails
        self.outputTokens = outputTokens
        self.outputTokensDetails = outputTokensDetails
        self.totalTokens = totalTokens
    }

    public static let zero = ImageUsage(
        inputTokens: 0, inputTokensDetails: .init(imageTokens: 0, textTokens: 0),
        outputTokens: 0, outputTokensDetails: .init(imageTokens: 0, textTokens: 0), totalTokens: 0
    )

    /// Field-wise sum, for `n` > 1 (each image is its own upstream call). Saturating: the
    /// numbers come from the upstream and must never trap the process.
    public static func + (lhs: ImageUsage, rhs: ImageUsage) -> ImageUsage {
        func add(_ a: Int, _ b: Int) -> Int {
            let (sum, overflow) = a.addingReportingOverflow(b)
            return overflow ? .max : sum
        }
        return ImageUsage(
            inputTokens: add(lhs.inputTokens, rhs.inputTokens),
            inputTokensDetails: .init(
                imageTokens: add(lhs.inputTokensDetails.imageTokens, rhs.inputTokensDetails.imageTokens),
                textTokens: add(lhs.inputTokensDetails.textTokens, rhs.inputTokensDetails.textTokens)
            ),
            outputTokens: add(lhs.outputTokens, rhs.outputTokens),
            outputTokensDetails: .init(
                imageTokens: add(lhs.outputTokensDetails.imageTokens, rhs.outputTokensDetails.imageTokens),
                textTokens: add(lhs.outputTokensDetails.textTokens, rhs.outputTokensDetails.textTokens)
            ),
            totalTokens: add(lhs.totalTokens, rhs.totalTokens)
        )
    }

    enum CodingKeys: String, CodingKey {
        case inputTokens = "input_tokens"
        case inputTokensDetails = "input_tokens_details"
        case outputTokens = "output_tokens"
        case outputTokensDetails = "output_tokens_details"
        case totalTokens = "total_tokens"
        case cost
    }
}

/// `{created, data[], usage}` and OpenAI's description of what was delivered: `background`,
/// `output_format` (read from the bytes), `size` (read from the bytes: Google sometimes
/// ignores the requested size) and `quality`.
public struct ImagesResponse: Encodable, Sendable {
    public var created: Int
    public var data: [ImageObject]
    public var usage: ImageUsage
    public var background: String?
    public var outputFormat: String?
    public var size: String?
    public var quality: String?
    /// The tier Google served (`flex`, `default`, `priority`, OpenAI's names).
    public var serviceTier: String?

    public init(created: Int, data: [ImageObject], usage: ImageUsage, background: String? = nil, outputFormat: String? = nil, size: String? = nil, quality: String? = nil) {
        self.created = created
        self.data = data
        self.usage = usage
        self.background = background
        self.outputFormat = outputFormat
        self.size = size
        self.quality = quality
    }

    enum CodingKeys: String, CodingKey {
        case created, data, usage, background, size, quality
        case serviceTier = "service_tier"
        case outputFormat = "output_format"
    }
}

/// OpenAI's error body.
public struct ErrorResponse: Codable, Sendable {
    public struct Body: Codable, Sendable {
        public var message: String
        public var type: String
        public var param: String?
        public var code: String?

        public init(message: String, type: String, param: String?, code: String?) {
            self.message = message
            self.type = type
            self.param = param
            self.code = code
        }

        /// `param` and `code` are always present, `null` when unset, as OpenAI sends them.
        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(message, forKey: .message)
            try container.encode(type, forKey: .type)
            try container.encode(param, forKey: .param)
            try container.encode(code, forKey: .code)
        }

        enum CodingKeys: String, CodingKey { case message, type, param, code }
    }

    public var error: Body

    public init(_ error: GatewayError) {
        self.error = Body(message: error.message, type: error.type, param: error.param, code: error.code)
    }
}

/// The JSON form of an edit: OpenAI's `images: [{image_url}]`, or leniently `image` as one URL or a list.
public struct ImageEditJSON: Decodable, Sendable {
    public var fields: ImageGenerationRequest
    /// The input images' URLs (`data:` or http(s)), in order.
    public var urls: [String]
    /// Set when the body names a `mask` (which Gemini cannot take).
    public var mask: String?

    private struct ImageReference: Decodable {
        var url: String
        init(from decoder: any Decoder) throws {
            if let text = try? decoder.singleValueContainer().decode(String.self) {
                url = text
                return
            }
            struct Keyed: Decodable { var image_url: String }
            url = try Keyed(from: decoder).image_url
        }
    }

    private enum CodingKeys: String, CodingKey { case images, image, mask }

    public init(from decoder: any Decoder) throws {
        fields = try ImageGenerationRequest(from: decoder)
        let container = try decoder.container(keyedBy: CodingKeys.self)
        if let list = try container.decodeIfPresent([ImageReference].self, forKey: .images) {
            urls = list.map(\.url)
        } else if let list = try? container.decodeIfPresent([ImageReference].self, forKey: .image) {
            urls = list.map(\.url)
        } else {
            urls = try container.decodeIfPresent(ImageReference.self, forKey: .image).map { [$0.url] } ?? []
        }
        mask = container.contains(.mask) ? "present" : nil
    }
}
