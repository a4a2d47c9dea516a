/// OpenAI's images API types, as the official SDKs send and read them.

/// How a generated image is returned.
public enum ResponseFormat: String, Sendable, Codable {
    case b64JSON = "b64_json"
    case url
}

/// `POST /v1/images/generations` body. Unknown fields (`quality`, `style`, `user`, …) are ignored.
public struct ImageGenerationRequest: Decodable, Sendable {
    public var prompt: String
    public var model: String?
    public var n: Int?
    public var size: String?
    public var aspectRatio: String?
    public var responseFormat: String?

    public init(prompt: String, model: String?, n: Int? = nil, size: String? = nil, aspectRatio: String? = nil, responseFormat: String? = nil) {
        self.prompt = prompt
        self.model = model
        self.n = n
        self.size = size
        self.aspectRatio = aspectRatio
        self.responseFormat = responseFormat
    }

    enum CodingKeys: String, CodingKey {
        case prompt, model, n, size
        case aspectRatio = "aspect_ratio"
        case responseFormat = "response_format"
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        self.prompt = try container.decode(String.self, forKey: .prompt)
        self.model = try container.decodeIfPresent(String.self, forKey: .model)
        // Form posts and some clients send numbers as strings ("2").
        if let number = try? container.decodeIfPresent(Int.self, forKey: .n) {
            self.n = number
        } else if let text = try? container.decodeIfPresent(String.self, forKey: .n) {
            guard let number = Int(text) else {
                throw DecodingError.dataCorruptedError(forKey: .n, in: container, debugDescription: "'n' must be an integer")
            }
            self.n = number
        } else {
            self.n = nil
            if container.contains(.n), try !container.decodeNil(forKey: .n) {
                throw DecodingError.dataCorruptedError(forKey: .n, in: container, debugDescription: "'n' must be an integer")
            }
        }
        self.size = try container.decodeIfPresent(String.self, forKey: .size)
        self.aspectRatio = try container.decodeIfPresent(String.self, forKey: .aspectRatio)
        self.responseFormat = try container.decodeIfPresent(String.self, forKey: .responseFormat)
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
    }
}

/// `{created, data[], usage}`.
public struct ImagesResponse: Encodable, Sendable {
    public var created: Int
    public var data: [ImageObject]
    public var usage: ImageUsage

    public init(created: Int, data: [ImageObject], usage: ImageUsage) {
        self.created = created
        self.data = data
        self.usage = usage
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
