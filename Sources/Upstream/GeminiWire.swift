import Foundation
public import NanoGateCore

/// Google's Gemini `generateContent` wire format (v1beta), as sent and as received.
///
/// Requests are encoded camelCase (what Google's SDKs send). Responses are decoded leniently:
/// both camelCase and snake_case part names, unknown keys ignored, `content`, `parts`,
/// `candidates` and usage fields may all be missing (safety blocks arrive as HTTP 200).
public enum GeminiWire {
    /// The body of `POST /v1beta/models/{model}:generateContent`.
    public struct Request: Codable, Sendable, Equatable {
        public var contents: [Content]
        public var generationConfig: GenerationConfig?
        public var systemInstruction: Content?
        /// `flex`, `standard` or `priority` (F3); absent: standard.
        public var serviceTier: String?

        public init(contents: [Content], generationConfig: GenerationConfig?, systemInstruction: Content? = nil, serviceTier: String? = nil) {
            self.contents = contents
            self.generationConfig = generationConfig
            self.systemInstruction = systemInstruction
            self.serviceTier = serviceTier
        }
    }

    /// `generationConfig`.
    public struct GenerationConfig: Codable, Sendable, Equatable {
        public var responseModalities: [String]?
        public var imageConfig: ImageConfig?
        public var candidateCount: Int?
        public var temperature: Double?
        public var thinkingConfig: ThinkingConfig?

        public init(responseModalities: [String]?, imageConfig: ImageConfig?, candidateCount: Int? = nil, temperature: Double? = nil, thinkingConfig: ThinkingConfig? = nil) {
            self.responseModalities = responseModalities
            self.imageConfig = imageConfig
            self.candidateCount = candidateCount
            self.temperature = temperature
            self.thinkingConfig = thinkingConfig
        }
    }

    /// `generationConfig.thinkingConfig`: how much the model thinks (`MINIMAL`, `MEDIUM`, `HIGH` on 2.1).
    public struct ThinkingConfig: Codable, Sendable, Equatable {
        public var thinkingLevel: String?

        public init(thinkingLevel: String?) {
            self.thinkingLevel = thinkingLevel
        }
    }

    /// `generationConfig.imageConfig`: `imageSize` is upper-case and 3-pro only.
    public struct ImageConfig: Codable, Sendable, Equatable {
        public var aspectRatio: String?
        public var imageSize: String?

        public init(aspectRatio: String?, imageSize: String?) {
            self.aspectRatio = aspectRatio
            self.imageSize = imageSize
        }
    }

    /// One turn of the conversation.
    public struct Content: Codable, Sendable, Equatable {
        public var role: String?
        public var parts: [Part]?

        public init(role: String?, parts: [Part]) {
            self.role = role
            self.parts = parts
        }
    }

    /// Base64 bytes with their MIME type.
    public struct InlineData: Codable, Sendable, Equatable {
        public var mimeType: String
        /// Standard base64, kept as bytes (see `Base64Text`).
        public var data: Base64Text

        public init(mimeType: String, data: Base64Text) {
            self.mimeType = mimeType
            self.data = data
        }

        enum CodingKeys: String, CodingKey { case mimeType, data }
        enum SnakeKeys: String, CodingKey { case mime_type }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            let snake = try decoder.container(keyedBy: SnakeKeys.self)
            self.mimeType = try container.decodeIfPresent(String.self, forKey: .mimeType)
                ?? snake.decodeIfPresent(String.self, forKey: .mime_type) ?? "application/octet-stream"
            self.data = try container.decode(Base64Text.self, forKey: .data)
        }
    }

    /// A text or image part, possibly a thought, possibly carrying a signature to echo back.
    public struct Part: Codable, Sendable, Equatable {
        public var text: String?
        public var inlineData: InlineData?
        public var thought: Bool?
        public var thoughtSignature: String?

        public init(text: String? = nil, inlineData: InlineData? = nil, thought: Bool? = nil, thoughtSignature: String? = nil) {
            self.text = text
            self.inlineData = inlineData
            self.thought = thought
            self.thoughtSignature = thoughtSignature
        }

        enum CodingKeys: String, CodingKey { case text, inlineData, thought, thoughtSignature }
        enum SnakeKeys: String, CodingKey { case inline_data, thought_signature }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            let snake = try decoder.container(keyedBy: SnakeKeys.self)
            self.text = try container.decodeIfPresent(String.self, forKey: .text)
            self.inlineData = try container.decodeIfPresent(InlineData.self, forKey: .inlineData)
                ?? snake.decodeIfPresent(InlineData.self, forKey: .inline_data)
            self.thought = try container.decodeIfPresent(Bool.self, forKey: .thought)
            self.thoughtSignature = try container.decodeIfPresent(String.self, forKey: .thoughtSignature)
                ?? snake.decodeIfPresent(String.self, forKey: .thought_signature)
        }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encodeIfPresent(text, forKey: .text)
            try container.encodeIfPresent(inlineData, forKey: .inlineData)
            try container.encodeIfPresent(thought, forKey: .thought)
            try container.encodeIfPresent(thoughtSignature, forKey: .thoughtSignature)
        }

        /// A final (non-thought) image part.
        public var isFinalImage: Bool { inlineData != nil && thought != true }
    }

    /// `GenerateContentResponse`.
    public struct Response: Codable, Sendable, Equatable {
        public var candidates: [Candidate]?
        public var promptFeedback: PromptFeedback?
        public var usageMetadata: UsageMetadata?
        public var modelVersion: String?
        public var responseId: String?
        /// Set when Google sent a `google.rpc.Status` where a response was expected (mid-stream
        /// failures, or a 200 whose body is an error): every other field is optional, so without
        /// this an error would read as an empty, successful answer.
        public var error: ErrorEnvelope.Status?

        public init(candidates: [Candidate]?, promptFeedback: PromptFeedback? = nil, usageMetadata: UsageMetadata?, modelVersion: String? = nil, responseId: String? = nil) {
            self.candidates = candidates
            self.promptFeedback = promptFeedback
            self.usageMetadata = usageMetadata
            self.modelVersion = modelVersion
            self.responseId = responseId
        }
    }

    /// One candidate; Gemini image models return exactly one.
    public struct Candidate: Codable, Sendable, Equatable {
        public var content: Content?
        public var finishReason: String?
        public var finishMessage: String?
        public var index: Int?

        public init(content: Content?, finishReason: String?, finishMessage: String? = nil, index: Int? = nil) {
            self.content = content
            self.finishReason = finishReason
            self.finishMessage = finishMessage
            self.index = index
        }
    }

    /// Set when Google refused the prompt before generating anything.
    public struct PromptFeedback: Codable, Sendable, Equatable {
        public var blockReason: String?
        public var blockReasonMessage: String?

        public init(blockReason: String?, blockReasonMessage: String? = nil) {
            self.blockReason = blockReason
            self.blockReasonMessage = blockReasonMessage
        }
    }

    /// `usageMetadata`; every field is omitted by Google when zero.
    ///
    /// Counts come from the upstream and are untrusted: decoding never fails on them, and each
    /// is clamped to `0...UpstreamNumbers.maxTokens` (a float is rounded, garbage reads as absent),
    /// so later arithmetic cannot overflow.
    public struct UsageMetadata: Codable, Sendable, Equatable {
        public var promptTokenCount: Int?
        public var candidatesTokenCount: Int?
        public var thoughtsTokenCount: Int?
        public var totalTokenCount: Int?
        public var promptTokensDetails: [ModalityTokenCount]?
        public var candidatesTokensDetails: [ModalityTokenCount]?
        /// The tier Google actually served (F3); absent: standard.
        public var serviceTier: String?

        public init(
            promptTokenCount: Int?, candidatesTokenCount: Int?, thoughtsTokenCount: Int?, totalTokenCount: Int?,
            promptTokensDetails: [ModalityTokenCount]?, candidatesTokensDetails: [ModalityTokenCount]?
        ) {
            self.promptTokenCount = promptTokenCount
            self.candidatesTokenCount = candidatesTokenCount
            self.thoughtsTokenCount = thoughtsTokenCount
            self.totalTokenCount = totalTokenCount
            self.promptTokensDetails = promptTokensDetails
            self.candidatesTokensDetails = candidatesTokensDetails
        }

        enum CodingKeys: String, CodingKey {
            case promptTokenCount, candidatesTokenCount, thoughtsTokenCount, totalTokenCount, promptTokensDetails, candidatesTokensDetails, serviceTier
        }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            promptTokenCount = UpstreamNumbers.count(in: container, forKey: .promptTokenCount)
            candidatesTokenCount = UpstreamNumbers.count(in: container, forKey: .candidatesTokenCount)
            thoughtsTokenCount = UpstreamNumbers.count(in: container, forKey: .thoughtsTokenCount)
            totalTokenCount = UpstreamNumbers.count(in: container, forKey: .totalTokenCount)
            promptTokensDetails = try? container.decodeIfPresent([ModalityTokenCount].self, forKey: .promptTokensDetails)
            candidatesTokensDetails = try? container.decodeIfPresent([ModalityTokenCount].self, forKey: .candidatesTokensDetails)
            // Untrusted: only a short tier name is kept (anything else reads as standard).
            serviceTier = (try? container.decodeIfPresent(String.self, forKey: .serviceTier)).flatMap { $0.count <= 32 ? $0 : nil }
        }
    }

    /// `{modality, tokenCount}`.
    public struct ModalityTokenCount: Codable, Sendable, Equatable {
        public var modality: String?
        public var tokenCount: Int?

        public init(modality: String, tokenCount: Int) {
            self.modality = modality
            self.tokenCount = tokenCount
        }

        enum CodingKeys: String, CodingKey { case modality, tokenCount }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            modality = try? container.decodeIfPresent(String.self, forKey: .modality)
            tokenCount = UpstreamNumbers.count(in: container, forKey: .tokenCount)
        }
    }

    /// `google.rpc.Status` as Google sends it on HTTP errors.
    public struct ErrorEnvelope: Codable, Sendable, Equatable {
        public var error: Status

        public init(error: Status) { self.error = error }

        public struct Status: Codable, Sendable, Equatable {
            public var code: Int?
            public var message: String?
            public var status: String?
            public var details: [Detail]?

            public init(code: Int?, message: String?, status: String?, details: [Detail]?) {
                self.code = code
                self.message = message
                self.status = status
                self.details = details
            }
        }

        /// The detail kinds the gateway reads: `ErrorInfo.reason`, `RetryInfo.retryDelay`.
        public struct Detail: Codable, Sendable, Equatable {
            public var type: String?
            public var reason: String?
            public var retryDelay: String?

            public init(type: String?, reason: String? = nil, retryDelay: String? = nil) {
                self.type = type
                self.reason = reason
                self.retryDelay = retryDelay
            }

            enum CodingKeys: String, CodingKey {
                case type = "@type"
                case reason, retryDelay
            }
        }
    }
}

/// Bounds for numbers that come from an upstream, which may be buggy or hostile: a count near
/// 2^63 or a delay of `1e300s` must neither crash the process (a trap ends every request in
/// flight) nor reach a bill.
public enum UpstreamNumbers {
    /// The largest token count believed (far above any real image request; sums of a few stay far from overflow).
    public static let maxTokens = 100_000_000
    /// The longest wait an upstream may ask for, in seconds (a day).
    public static let maxRetryDelaySeconds = 86_400.0

    /// A token count clamped to `0...maxTokens`; a float is rounded; anything else is absent.
    static func count<Key: CodingKey>(in container: KeyedDecodingContainer<Key>, forKey key: Key) -> Int? {
        if let value = try? container.decodeIfPresent(Int.self, forKey: key) { return clamp(value) }
        if let value = try? container.decodeIfPresent(Double.self, forKey: key), value.isFinite {
            return clamp(value >= Double(maxTokens) ? maxTokens : Int(max(0, value).rounded()))
        }
        return nil
    }

    /// `value` within `0...maxTokens`.
    public static func clamp(_ value: Int) -> Int { min(max(0, value), maxTokens) }

    /// Protobuf Duration JSON (`"27s"`, `"1.5s"`) as seconds within `0...maxRetryDelaySeconds`;
    /// nil for anything that is not a finite, non-negative duration.
    public static func seconds(fromDuration text: String) -> Double? {
        guard text.hasSuffix("s"), let value = Double(text.dropLast()), value.isFinite, value >= 0 else { return nil }
        return min(value, maxRetryDelaySeconds)
    }
}
