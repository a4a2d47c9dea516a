import Foundation

/// OpenAI's chat completions types, with the image extensions gateways use (`message.images`,
/// OpenRouter's `image_config`).

/// `POST /v1/chat/completions` body. Unknown fields (`temperature`, `tools`, …) are ignored.
public struct ChatCompletionRequest: Decodable, Sendable {
    public var model: String?
    public var messages: [ChatMessage]
    public var stream: Bool?
    public var includeUsage: Bool
    public var n: Int?
    /// Image size as on the images API (`2k`, `16:9`, `1024x1024`).
    public var size: String?
    public var aspectRatio: String?
    /// OpenRouter's `image_config: {aspect_ratio, image_size}`.
    public var imageConfig: ImageConfig?
    /// How images come back: `url` or `b64_json` (a `data:` URL). A JSON-mode object (OpenAI's
    /// own meaning of `response_format` in chat) is ignored.
    public var imageFormat: String?
    /// OpenRouter's `modalities` (`["image","text"]`): a client that names `image` reads images
    /// from `message.images` / `delta.images`.
    public var modalities: [String]?
    /// OpenAI's `reasoning_effort` (`minimal`, `low`, `medium`, `high`), as sent.
    public var reasoningEffort: String?
    /// OpenAI's `service_tier` (`auto`, `default`, `flex`, `priority`), as sent.
    public var serviceTier: String?

    public struct ImageConfig: Decodable, Sendable {
        public var aspectRatio: String?
        public var imageSize: String?

        enum CodingKeys: String, CodingKey {
            case aspectRatio = "aspect_ratio"
            case imageSize = "image_size"
        }
    }

    struct StreamOptions: Decodable {
        var include_usage: Bool?
    }

    enum CodingKeys: String, CodingKey {
        case model, messages, stream, n, size
        case streamOptions = "stream_options"
        case aspectRatio = "aspect_ratio"
        case imageConfig = "image_config"
        case responseFormat = "response_format"
        case imageResponseFormat = "image_response_format"
        case modalities
        case reasoningEffort = "reasoning_effort"
        case serviceTier = "service_tier"
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        model = try container.decodeIfPresent(String.self, forKey: .model)
        messages = try container.decode([ChatMessage].self, forKey: .messages)
        stream = try container.decodeIfPresent(Bool.self, forKey: .stream)
        includeUsage = (try container.decodeIfPresent(StreamOptions.self, forKey: .streamOptions))?.include_usage ?? false
        n = try container.decodeIfPresent(Int.self, forKey: .n)
        size = try container.decodeIfPresent(String.self, forKey: .size)
        aspectRatio = try container.decodeIfPresent(String.self, forKey: .aspectRatio)
        imageConfig = try container.decodeIfPresent(ImageConfig.self, forKey: .imageConfig)
        imageFormat = try container.decodeIfPresent(String.self, forKey: .imageResponseFormat)
            ?? (try? container.decodeIfPresent(String.self, forKey: .responseFormat))
        modalities = try? container.decodeIfPresent([String].self, forKey: .modalities)
        reasoningEffort = try? container.decodeIfPresent(String.self, forKey: .reasoningEffort)
        serviceTier = try? container.decodeIfPresent(String.self, forKey: .serviceTier)
    }
}

/// One message; `content` is a string or a list of parts.
public struct ChatMessage: Decodable, Sendable {
    public var role: String
    public var content: [ChatContentPart]
    /// Images of an earlier assistant reply, when a client sends the message back as it got it.
    public var images: [String]

    enum CodingKeys: String, CodingKey { case role, content, images }

    struct ImageEntry: Decodable {
        var image_url: ChatContentPart.URLReference
    }

    public init(role: String, content: [ChatContentPart], images: [String] = []) {
        self.role = role
        self.content = content
        self.images = images
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        role = try container.decode(String.self, forKey: .role)
        if let text = try? container.decodeIfPresent(String.self, forKey: .content) {
            content = [.text(text)]
        } else {
            content = try container.decodeIfPresent([ChatContentPart].self, forKey: .content) ?? []
        }
        images = (try? container.decodeIfPresent([ImageEntry].self, forKey: .images))?.map(\.image_url.url) ?? []
    }
}

/// A content part: text or an image URL (`data:` or `https://`).
public enum ChatContentPart: Decodable, Sendable, Equatable {
    case text(String)
    case imageURL(String)
    case unsupported(String)

    /// `image_url` is `{"url": …}` in OpenAI's spec; some clients send a bare string.
    struct URLReference: Decodable {
        var url: String
        init(from decoder: any Decoder) throws {
            if let text = try? decoder.singleValueContainer().decode(String.self) {
                url = text
            } else {
                struct Keyed: Decodable { var url: String }
                url = try Keyed(from: decoder).url
            }
        }
    }

    enum CodingKeys: String, CodingKey { case type, text, image_url }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let type = try container.decode(String.self, forKey: .type)
        switch type {
        case "text", "input_text": self = .text(try container.decode(String.self, forKey: .text))
        case "image_url", "input_image": self = .imageURL(try container.decode(URLReference.self, forKey: .image_url).url)
        default: self = .unsupported(type)
        }
    }
}

/// `usage` of a chat completion, with image/text details.
public struct ChatUsage: Encodable, Sendable, Equatable {
    public var promptTokens: Int
    public var completionTokens: Int
    public var totalTokens: Int
    public var promptTokensDetails: [String: Int]
    public var completionTokensDetails: [String: Int]
    /// What the key was charged, in USD (as OpenRouter's `usage.cost`).
    public var cost: Double?

    /// From the images-API usage: thoughts are reasoning tokens, billed as text output.
    public init(_ usage: ImageUsage, reasoningTokens: Int) {
        promptTokens = usage.inputTokens
        completionTokens = usage.outputTokens
        totalTokens = usage.totalTokens
        promptTokensDetails = ["cached_tokens": 0, "text_tokens": usage.inputTokensDetails.textTokens, "image_tokens": usage.inputTokensDetails.imageTokens]
        completionTokensDetails = [
            "reasoning_tokens": reasoningTokens, "text_tokens": max(0, usage.outputTokensDetails.textTokens - reasoningTokens),
            "image_tokens": usage.outputTokensDetails.imageTokens,
        ]
    }

    enum CodingKeys: String, CodingKey {
        case promptTokens = "prompt_tokens"
        case completionTokens = "completion_tokens"
        case totalTokens = "total_tokens"
        case promptTokensDetails = "prompt_tokens_details"
        case completionTokensDetails = "completion_tokens_details"
        case cost
    }
}

/// `{"type":"image_url","image_url":{"url":…}}`, the entry of `message.images` (OpenRouter, LiteLLM, Vercel).
public struct ChatImage: Encodable, Sendable, Equatable {
    public struct URL: Encodable, Sendable, Equatable { public var url: SplicedString }
    public var type = "image_url"
    public var imageURL: URL
    public var index: Int

    public init(url: SplicedString, index: Int) {
        self.imageURL = URL(url: url)
        self.index = index
    }

    enum CodingKeys: String, CodingKey {
        case type, index
        case imageURL = "image_url"
    }
}

/// The assistant message of a reply, and the `delta` of a streamed chunk.
public struct ChatMessageOut: Encodable, Sendable {
    public var role: String?
    public var content: SplicedString?
    public var refusal: String?
    public var images: [ChatImage]?
    /// Thought summaries of 3-pro (as `reasoning_content`, the DeepSeek/new-api convention).
    public var reasoningContent: String?
    /// How many images this delta delivers, whether as Markdown in `content` or in `images`
    /// (for the usage row; not encoded).
    public var carriedImages = 0

    public init(
        role: String? = nil, content: SplicedString? = nil, refusal: String? = nil, images: [ChatImage]? = nil, reasoningContent: String? = nil,
        carriedImages: Int = 0
    ) {
        self.role = role
        self.content = content
        self.refusal = refusal
        self.images = images
        self.reasoningContent = reasoningContent
        self.carriedImages = carriedImages
    }

    enum CodingKeys: String, CodingKey {
        case role, content, refusal, images
        case reasoningContent = "reasoning_content"
    }
}

/// One choice of a reply or chunk.
public struct ChatChoice: Encodable, Sendable {
    public var index = 0
    public var message: ChatMessageOut?
    public var delta: ChatMessageOut?
    public var finishReason: String?

    public init(message: ChatMessageOut? = nil, delta: ChatMessageOut? = nil, finishReason: String?) {
        self.message = message
        self.delta = delta
        self.finishReason = finishReason
    }

    enum CodingKeys: String, CodingKey {
        case index, message, delta
        case finishReason = "finish_reason"
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(index, forKey: .index)
        try container.encodeIfPresent(message, forKey: .message)
        try container.encodeIfPresent(delta, forKey: .delta)
        try container.encode(finishReason, forKey: .finishReason)  // null while streaming
    }
}

/// `chat.completion` and `chat.completion.chunk`.
public struct ChatCompletion: Encodable, Sendable {
    public var id: String
    public var object: String
    public var created: Int
    public var model: String
    public var choices: [ChatChoice]
    public var usage: ChatUsage?
    /// The tier Google served (`flex`, `default`, `priority`), as OpenAI's `service_tier`.
    public var serviceTier: String?

    public init(id: String, object: String, created: Int, model: String, choices: [ChatChoice], usage: ChatUsage?) {
        self.id = id
        self.object = object
        self.created = created
        self.model = model
        self.choices = choices
        self.usage = usage
    }

    enum CodingKeys: String, CodingKey {
        case id, object, created, model, choices, usage
        case serviceTier = "service_tier"
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(id, forKey: .id)
        try container.encode(object, forKey: .object)
        try container.encode(created, forKey: .created)
        try container.encode(model, forKey: .model)
        try container.encode(choices, forKey: .choices)
        try container.encodeIfPresent(serviceTier, forKey: .serviceTier)
        try container.encode(usage, forKey: .usage)  // chunks carry "usage": null until the last
    }
}

/// Pure helpers of the chat translation.
public enum ChatTranslation {
    /// Markdown image links `![alt](url)` in assistant text (how plain chat clients keep images),
    /// and the text without them.
    public static func splitMarkdownImages(_ text: String) -> (text: String, urls: [String]) {
        var urls: [String] = []
        var remaining = ""
        var rest = Substring(text)
        while let start = rest.range(of: "![") {
            guard let close = rest[start.upperBound...].range(of: "]("),
                let end = rest[close.upperBound...].firstIndex(of: ")")
            else { break }
            remaining += rest[..<start.lowerBound]
            urls.append(String(rest[close.upperBound..<end]))
            rest = rest[rest.index(after: end)...]
        }
        remaining += rest
        return (remaining.trimmingCharacters(in: .whitespacesAndNewlines), urls)
    }

    /// The Markdown that shows an image in chat clients that render Markdown.
    public static func markdown(imageURL: SplicedString) -> SplicedString { "![image](" + imageURL + ")" }
}
