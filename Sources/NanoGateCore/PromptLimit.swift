/// The spec's prompt limit: 32,768 tokens, on every endpoint (chat counts all of its text).
///
/// Tokens are estimated, not counted (the tokenizer is Google's): one token per four UTF-8
/// bytes, rounded up. English averages about four characters per token, so an English prompt
/// near the limit is judged about right; scripts of two- or three-byte characters are judged
/// generously (CJK is close to one token per character, i.e. three bytes), so the gateway may
/// let a few such prompts through that Google then refuses, but never refuses one Google takes.
public enum PromptLimit {
    /// The spec's limit.
    public static let maxTokens = 32_768

    /// The estimate: `ceil(utf8 bytes / 4)`.
    public static func estimatedTokens(_ text: String) -> Int {
        (text.utf8.count + 3) / 4
    }

    /// A 400 naming `param` when `text` is over the limit.
    public static func check(_ text: String, param: String) throws(GatewayError) {
        let tokens = estimatedTokens(text)
        guard tokens <= maxTokens else {
            throw .invalidParameter(param, "The prompt is too long: about \(tokens) tokens (estimated as UTF-8 bytes / 4), more than the limit of \(maxTokens).", code: "prompt_too_long")
        }
    }
}
