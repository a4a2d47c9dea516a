public import Foundation

// OpenAI's Responses API (`POST /v1/responses`) as far as image models answer it: the request as
// clients send it, and the response object, its output items, usage and stream events.

/// `POST /v1/responses`, decoded leniently: `input` as a string or as items; unknown fields ignored.
public struct ResponsesRequest: Decodable, Sendable {
    public var model: String?
    public var input: [ResponseInputItem]
    public var instructions: String?
    public var previousResponseID: String?
    /// Whether the response is kept (for `previous_response_id`, `GET` and `DELETE`); OpenAI's default is true.
    public var store: Bool
    public var stream: Bool
    public var background: Bool
    public var tools: [ResponseTool]
    public var serviceTier: String?
    /// `reasoning.effort`.
    public var reasoningEffort: String?
    public var metadata: [String: String]?

    enum CodingKeys: String, CodingKey {
        case model, input, instructions, store, stream, background, tools, metadata, reasoning
        case previousResponseID = "previous_response_id"
        case serviceTier = "service_tier"
    }

    struct Reasoning: Decodable { var effort: String? }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        model = try container.decodeIfPresent(String.self, forKey: .model)
        if let text = try? container.decodeIfPresent(String.self, forKey: .input) {
            input = [.message(role: "user", parts: [.text(text)])]
        } else {
            input = try container.decodeIfPresent([ResponseInputItem].self, forKey: .input) ?? []
        }
        instructions = try container.decodeIfPresent(String.self, forKey: .instructions)
        previousResponseID = try container.decodeIfPresent(String.self, forKey: .previousResponseID)
        store = try container.decodeIfPresent(Bool.self, forKey: .store) ?? true
        stream = try container.decodeIfPresent(Bool.self, forKey: .stream) ?? false
        background = try container.decodeIfPresent(Bool.self, forKey: .background) ?? false
        tools = try container.decodeIfPresent([ResponseTool].self, forKey: .tools) ?? []
        serviceTier = try container.decodeIfPresent(String.self, forKey: .serviceTier)
        reasoningEffort = try container.decodeIfPresent(Reasoning.self, forKey: .reasoning)?.effort
        metadata = try container.decodeIfPresent([String: String].self, forKey: .metadata)
    }
}

/// One entry of `input`: a message (any role, `type` optional as OpenAI allows), an earlier
/// output item sent back (an `image_generation_call` with its `result`, a message of output
/// text), or something image models cannot take.
public enum ResponseInputItem: Decodable, Sendable {
    case message(role: String, parts: [ResponseInputPart])
    /// An earlier image (base64 `result`), as the model's own turn.
    case generatedImage(result: String?)
    /// Reasoning items sent back: nothing to give Gemini.
    case ignored
    case unsupported(type: String)

    enum CodingKeys: String, CodingKey { case type, role, content, result }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let type = try container.decodeIfPresent(String.self, forKey: .type) ?? "message"
        switch type {
        case "message":
            let role = try container.decodeIfPresent(String.self, forKey: .role) ?? "user"
            if let text = try? container.decodeIfPresent(String.self, forKey: .content) {
                self = .message(role: role, parts: [.text(text)])
            } else {
                self = .message(role: role, parts: try container.decodeIfPresent([ResponseInputPart].self, forKey: .content) ?? [])
            }
        case "image_generation_call":
            self = .generatedImage(result: try container.decodeIfPresent(String.self, forKey: .result))
        case "reasoning":
            self = .ignored
        default:
            self = .unsupported(type: type)
        }
    }
}

/// A content part of an input message.
public enum ResponseInputPart: Decodable, Sendable {
    /// `input_text`, or `output_text` of an assistant message sent back.
    case text(String)
    /// `input_image` by `image_url` (a `data:` URL, one of the gateway's URLs, or `https://`).
    case image(url: String)
    /// A refusal sent back: no content for Gemini.
    case ignored
    case unsupported(type: String)

    enum CodingKeys: String, CodingKey {
        case type, text
        case imageURL = "image_url"
        case fileID = "file_id"
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let type = try container.decode(String.self, forKey: .type)
        switch type {
        case "input_text", "output_text", "text":
            self = .text(try container.decode(String.self, forKey: .text))
        case "input_image":
            if let url = try container.decodeIfPresent(String.self, forKey: .imageURL) {
                self = .image(url: url)
            } else {
                self = .unsupported(type: container.contains(.fileID) ? "input_image with file_id" : "input_image without image_url")
            }
        case "refusal":
            self = .ignored
        default:
            self = .unsupported(type: type)
        }
    }
}

/// An entry of `tools`: its `type`, and its other fields as text (the images API's option names).
public struct ResponseTool: Codable, Sendable, Equatable {
    public var type: String
    public var options: [String: String]

    public init(type: String, options: [String: String]) {
        self.type = type
        self.options = options
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: AnyCodingKey.self)
        type = try container.decode(String.self, forKey: AnyCodingKey("type"))
        var options: [String: String] = [:]
        for key in container.allKeys where key.stringValue != "type" {
            // Objects and lists (no image option takes one) are left out.
            options[key.stringValue] = try? container.scalarText(key.stringValue)
        }
        self.options = options
    }

    /// Echoed as sent: numbers that were numbers stay numbers.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: AnyCodingKey.self)
        try container.encode(type, forKey: AnyCodingKey("type"))
        for (name, value) in options.sorted(by: { $0.key < $1.key }) {
            if let number = Int(value) {
                try container.encode(number, forKey: AnyCodingKey(name))
            } else if value == "true" || value == "false" {
                try container.encode(value == "true", forKey: AnyCodingKey(name))
            } else {
                try container.encode(value, forKey: AnyCodingKey(name))
            }
        }
    }
}

/// The response object (`object: "response"`).
public struct ResponseObject: Codable, Sendable {
    public var id: String
    public var object = "response"
    public var createdAt: Int
    /// `queued`, `in_progress`, `completed`, `incomplete`, `failed` or `cancelled`.
    public var status: String
    public var background: Bool
    public var error: ResponseErrorBody?
    public var incompleteDetails: IncompleteDetails?
    public var instructions: String?
    public var metadata: [String: String]
    public var model: String
    public var output: [ResponseOutputItem]
    public var parallelToolCalls = true
    public var previousResponseID: String?
    public var serviceTier: String?
    public var store: Bool
    public var toolChoice = "auto"
    public var tools: [ResponseTool]
    public var usage: ResponseUsage?

    public init(
        id: String, createdAt: Int, status: String, background: Bool, instructions: String?, metadata: [String: String], model: String,
        previousResponseID: String?, store: Bool, tools: [ResponseTool]
    ) {
        (self.id, self.createdAt, self.status, self.background, self.instructions) = (id, createdAt, status, background, instructions)
        (self.metadata, self.model, self.previousResponseID, self.store, self.tools) = (metadata, model, previousResponseID, store, tools)
        output = []
    }

    public struct ResponseErrorBody: Codable, Sendable {
        public var code: String
        public var message: String
        public init(code: String, message: String) { (self.code, self.message) = (code, message) }
    }

    public struct IncompleteDetails: Codable, Sendable {
        public var reason: String
        public init(reason: String) { self.reason = reason }
    }

    enum CodingKeys: String, CodingKey {
        case id, object, status, background, error, instructions, metadata, model, output, store, tools, usage
        case createdAt = "created_at"
        case incompleteDetails = "incomplete_details"
        case parallelToolCalls = "parallel_tool_calls"
        case previousResponseID = "previous_response_id"
        case serviceTier = "service_tier"
        case toolChoice = "tool_choice"
    }

    /// `error`, `incomplete_details`, `instructions` and `previous_response_id` are sent as
    /// `null` when unset, as OpenAI sends them.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(id, forKey: .id)
        try container.encode(object, forKey: .object)
        try container.encode(createdAt, forKey: .createdAt)
        try container.encode(status, forKey: .status)
        try container.encode(background, forKey: .background)
        try container.encode(error, forKey: .error)
        try container.encode(incompleteDetails, forKey: .incompleteDetails)
        try container.encode(instructions, forKey: .instructions)
        try container.encode(metadata, forKey: .metadata)
        try container.encode(model, forKey: .model)
        try container.encode(output, forKey: .output)
        try container.encode(parallelToolCalls, forKey: .parallelToolCalls)
        try container.encode(previousResponseID, forKey: .previousResponseID)
        try container.encodeIfPresent(serviceTier, forKey: .serviceTier)
        try container.encode(store, forKey: .store)
        try container.encode(toolChoice, forKey: .toolChoice)
        try container.encode(tools, forKey: .tools)
        try container.encode(usage, forKey: .usage)
    }
}

/// One output item: a message (output text, or a refusal), an `image_generation_call`, or a
/// `reasoning` item with the model's thought summary.
public struct ResponseOutputItem: Codable, Sendable {
    public var type: String
    public var id: String
    public var status: String?
    // message
    public var role: String?
    public var content: [ResponseContentPart]?
    // image_generation_call
    public var result: Base64Text?
    public var revisedPrompt: String?
    public var size: String?
    public var quality: String?
    public var outputFormat: String?
    public var background: String?
    // reasoning
    public var summary: [ResponseContentPart]?

    public static func message(id: String, status: String, content: [ResponseContentPart]) -> ResponseOutputItem {
        ResponseOutputItem(type: "message", id: id, status: status, role: "assistant", content: content)
    }

    public static func image(id: String, status: String) -> ResponseOutputItem {
        ResponseOutputItem(type: "image_generation_call", id: id, status: status)
    }

    public static func reasoning(id: String, text: String) -> ResponseOutputItem {
        ResponseOutputItem(type: "reasoning", id: id, summary: [ResponseContentPart(type: "summary_text", text: text)])
    }

    init(type: String, id: String, status: String? = nil, role: String? = nil, content: [ResponseContentPart]? = nil, summary: [ResponseContentPart]? = nil) {
        (self.type, self.id, self.status, self.role, self.content, self.summary) = (type, id, status, role, content, summary)
    }

    enum CodingKeys: String, CodingKey {
        case type, id, status, role, content, result, size, quality, background, summary
        case revisedPrompt = "revised_prompt"
        case outputFormat = "output_format"
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(id, forKey: .id)
        try container.encode(type, forKey: .type)
        switch type {
        case "image_generation_call":
            try container.encodeIfPresent(status, forKey: .status)
            try container.encodeIfPresent(background, forKey: .background)
            try container.encodeIfPresent(outputFormat, forKey: .outputFormat)
            try container.encodeIfPresent(quality, forKey: .quality)
            try container.encode(result, forKey: .result)
            try container.encode(revisedPrompt, forKey: .revisedPrompt)
            try container.encodeIfPresent(size, forKey: .size)
        case "reasoning":
            try container.encode(summary ?? [], forKey: .summary)
        default:
            try container.encodeIfPresent(status, forKey: .status)
            try container.encodeIfPresent(role, forKey: .role)
            try container.encode(content ?? [], forKey: .content)
        }
    }
}

/// `output_text` (with its empty `annotations`), `refusal`, or a reasoning `summary_text`.
public struct ResponseContentPart: Codable, Sendable, Equatable {
    public var type: String
    public var text: String?
    public var refusal: String?
    public var annotations: [String]?

    public init(type: String, text: String? = nil, refusal: String? = nil) {
        self.type = type
        self.text = text
        self.refusal = refusal
        self.annotations = type == "output_text" ? [] : nil
    }

    public static func outputText(_ text: String) -> ResponseContentPart { ResponseContentPart(type: "output_text", text: text) }
    public static func refusal(_ text: String) -> ResponseContentPart { ResponseContentPart(type: "refusal", refusal: text) }
}

/// `usage` of a response: OpenAI's fields, with the image and text split of both sides (as the
/// images API reports it) and what the key was charged (`cost`, USD).
public struct ResponseUsage: Codable, Sendable, Equatable {
    public struct InputDetails: Codable, Sendable, Equatable {
        public var cachedTokens = 0
        public var imageTokens: Int
        public var textTokens: Int
        enum CodingKeys: String, CodingKey {
            case cachedTokens = "cached_tokens"
            case imageTokens = "image_tokens"
            case textTokens = "text_tokens"
        }
    }

    public struct OutputDetails: Codable, Sendable, Equatable {
        public var reasoningTokens: Int
        public var imageTokens: Int
        public var textTokens: Int
        enum CodingKeys: String, CodingKey {
            case reasoningTokens = "reasoning_tokens"
            case imageTokens = "image_tokens"
            case textTokens = "text_tokens"
        }
    }

    public var inputTokens: Int
    public var inputTokensDetails: InputDetails
    public var outputTokens: Int
    public var outputTokensDetails: OutputDetails
    public var totalTokens: Int
    public var cost: Double?

    public init(_ usage: ImageUsage, reasoningTokens: Int, cost: Double?) {
        inputTokens = usage.inputTokens
        inputTokensDetails = InputDetails(imageTokens: usage.inputTokensDetails.imageTokens, textTokens: usage.inputTokensDetails.textTokens)
        outputTokens = usage.outputTokens
        outputTokensDetails = OutputDetails(reasoningTokens: reasoningTokens, imageTokens: usage.outputTokensDetails.imageTokens, textTokens: usage.outputTokensDetails.textTokens)
        totalTokens = usage.totalTokens
        self.cost = cost
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
