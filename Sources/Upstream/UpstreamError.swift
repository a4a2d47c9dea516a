/// Why an upstream call failed, as the upstream layer knows it: a bounded code, the HTTP status
/// and the provider's own words (redacted: never a key), and how long the provider asked us to
/// wait. The upstream layer writes no client-facing text; the server maps this to the client's
/// error in one place (`GatewayError(upstream:)`).
public struct UpstreamError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The bounded set of failures (also the client's error `code`, and the metrics label).
    public enum Code: String, Sendable, CaseIterable {
        /// 429: the provider's quota for this model (or key) is used up.
        case rateLimited = "upstream_rate_limited"
        /// 503: the provider is overloaded.
        case overloaded = "upstream_overloaded"
        /// 500 and other 5xx, or a 200 whose body is an error.
        case serverError = "upstream_error"
        /// The call, or the provider's own processing (504), took longer than allowed.
        case timeout = "upstream_timeout"
        /// No connection could be made (refused, reset, DNS, TLS, connect timeout).
        case unreachable = "upstream_unreachable"
        /// A 200 whose body could not be read (not JSON, cut short).
        case unreadable = "upstream_unreadable"
        /// An answer larger than the configured bound.
        case tooLarge = "upstream_too_large"
        /// A 3xx, never followed (it would carry the credential elsewhere).
        case redirect = "upstream_redirect_refused"
        /// 400: the provider rejected the request itself.
        case invalidRequest = "upstream_invalid_request"
        /// 404: the provider does not serve this model id.
        case modelNotFound = "upstream_model_not_found"
        /// 401/403 or `API_KEY_INVALID`: the channel's credential was refused.
        case authFailed = "upstream_auth_failed"
        /// No channel is configured for this model.
        case noChannel = "no_upstream"
        /// Every channel for this model is resting (cooling down, disabled or tripped).
        case allResting = "upstream_unavailable"
        /// The channels' queues are full: refused at once rather than waiting.
        case queueFull = "upstream_queue_full"
        /// The client went away (the call was cancelled).
        case cancelled = "client_disconnected"
    }

    public var code: Code
    /// The upstream's HTTP status, when it answered.
    public var status: Int?
    /// The provider's own message (`google.rpc.Status.message`, an OpenAI error's message),
    /// redacted and at most 500 characters.
    public var detail: String?
    /// Seconds the provider asked us to wait (`RetryInfo.retryDelay`, `Retry-After`), clamped.
    public var retryAfterSeconds: Int?
    /// Which kind of upstream answered (for the client's wording: "Google" or "the upstream gateway").
    public var provider: Provider = .google

    /// The family of upstream a channel speaks to.
    public enum Provider: String, Sendable {
        case google
        case openAICompatible
    }

    public init(_ code: Code, status: Int? = nil, detail: String? = nil, retryAfterSeconds: Int? = nil, provider: Provider = .google) {
        self.code = code
        self.status = status
        self.detail = detail.map { String($0.prefix(500)) }
        self.retryAfterSeconds = retryAfterSeconds
        self.provider = provider
    }

    public var description: String {
        "\(code.rawValue)" + (status.map { " (HTTP \($0))" } ?? "") + (detail.map { ": \($0)" } ?? "")
    }
}
