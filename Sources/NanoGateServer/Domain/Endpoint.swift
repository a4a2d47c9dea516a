/// What a request asked for, as its usage row names it (`endpoint`): one of a fixed set.
enum Endpoint: String, Codable, Sendable, CaseIterable {
    case imageGenerations = "images.generations"
    case imageEdits = "images.edits"
    case chatCompletions = "chat.completions"
    /// OpenAI's Responses API (`POST /v1/responses`).
    case responses
    /// Google's own routes (`:generateContent`, `:streamGenerateContent`).
    case geminiGenerateContent = "gemini.generateContent"
    case geminiStreamGenerateContent = "gemini.streamGenerateContent"

    /// The images endpoints' OpenAI path (`url` of a batch line, `endpoint` of a batch).
    var openAIPath: String? {
        switch self {
        case .imageGenerations: "/v1/images/generations"
        case .imageEdits: "/v1/images/edits"
        case .chatCompletions: "/v1/chat/completions"
        case .responses: "/v1/responses"
        case .geminiGenerateContent, .geminiStreamGenerateContent: nil
        }
    }

    /// The images endpoint at `path` (a batch's `endpoint`), if it is one a batch may use.
    init?(batchPath path: String) {
        guard let endpoint = [Endpoint.imageGenerations, .imageEdits].first(where: { $0.openAIPath == path }) else { return nil }
        self = endpoint
    }
}
