/// What the pool reports as it works, for metrics (the server implements it with Prometheus;
/// the upstream layer depends on no metrics library). Labels passed are bounded: channel
/// names and model ids from the configuration, error codes from `UpstreamError.Code`.
public protocol UpstreamObserver: Sendable {
    /// One attempt ended: `outcome` is `ok` or the error's code; `key` the credential's position.
    func attempt(channel: String, key: Int, model: String, outcome: String, duration: Duration)
    /// A (credential, model) pair began a cool-down (a 429).
    func coolDown(channel: String, model: String)
    /// A credential was refused and set aside.
    func credentialRejected(channel: String)
    /// A channel's breaker tripped.
    func tripped(channel: String)
}
