import NanoGateCore
import Upstream

extension GatewayError {
    /// The one place an upstream failure becomes the client's error: status, type, code and
    /// wording. The provider's own message is quoted (it is redacted by the channel: no key).
    init(upstream error: UpstreamError) {
        let who = error.provider == .google ? "Google" : "The upstream gateway"
        let said = error.detail.map { ": \($0)" } ?? "."
        switch error.code {
        case .rateLimited:
            self = .upstreamRateLimited("\(who)'s rate limit for this model was reached\(said)", retryAfterSeconds: error.retryAfterSeconds)
        case .overloaded:
            self = .unavailable("\(who) is overloaded\(said)", retryAfterSeconds: error.retryAfterSeconds)
        case .serverError:
            self = .badGateway("\(who) failed\(said)")
        case .timeout:
            self = .timeout(error.status == 504 ? "\(who) could not finish in time\(said)" : "\(who) did not answer in time (\(error.detail ?? "the upstream timeout passed")).")
        case .unreachable:
            self = .badGateway("Could not reach \(error.provider == .google ? "Google" : "the upstream gateway") (the connection failed).", code: "upstream_unreachable")
        case .unreadable:
            self = .badGateway("\(who) returned an answer the gateway could not read.")
        case .tooLarge:
            self = .badGateway("\(who)'s answer was larger than the gateway accepts.")
        case .redirect:
            self = .badGateway("The upstream answered with a redirect, which the gateway does not follow.", code: "upstream_redirect_refused")
        case .invalidRequest:
            self = .invalidParameter(nil, "\(who) rejected the request\(said)", code: "upstream_invalid_request")
        case .modelNotFound:
            self = .badGateway("The upstream model is not available\(said)", code: "upstream_model_not_found")
        case .authFailed:
            self = .unavailable("The gateway's upstream credentials were rejected; the operator has been told.", code: "upstream_auth_failed")
        case .noChannel:
            self = .unavailable("No upstream is configured for this model (set GEMINI_API_KEY or add a channel).", code: "no_upstream")
        case .allResting:
            self = .unavailable("Every upstream channel for this model is resting after failures; retry shortly.", retryAfterSeconds: error.retryAfterSeconds ?? 5)
        case .queueFull:
            self = .unavailable("The gateway is at its upstream capacity (every channel's queue is full); retry shortly.", code: "upstream_queue_full", retryAfterSeconds: 5)
        case .cancelled:
            self = .clientDisconnected
        }
    }
}

extension GatewayError {
    /// A `url` answer whose image Google made but the store could not take.
    static let notStored = GatewayError.internal("The image was generated but could not be stored for a URL answer; retry with response_format b64_json.")
}
