import Foundation

/// Every failure a client can see, in OpenAI's error vocabulary.
///
/// The server turns this into `{"error":{"message","type","param","code"}}` in exactly one
/// place; everything below the HTTP layer throws it (or an error that is mapped into it at its
/// boundary), so a client never gets an empty 500.
public struct GatewayError: Error, Sendable, Equatable, CustomStringConvertible {
    /// HTTP status code.
    public var status: Int
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, `server_error`, …
    public var type: String
    /// OpenAI's `code`, a stable machine-readable string (or nil).
    public var code: String?
    /// The request field at fault (or nil).
    public var param: String?
    /// Human-readable explanation. Never contains a Google key.
    public var message: String
    /// Seconds the client should wait before retrying (sent as `Retry-After`).
    public var retryAfterSeconds: Int?

    public init(status: Int, type: String, code: String?, param: String?, message: String, retryAfterSeconds: Int? = nil) {
        self.status = status
        self.type = type
        self.code = code
        self.param = param
        self.message = message
        self.retryAfterSeconds = retryAfterSeconds
    }

    public var description: String { "\(status) \(type)/\(code ?? "-"): \(message)" }

    // MARK: Client errors

    /// 400 for a field the client got wrong.
    public static func invalidParameter(_ param: String?, _ message: String, code: String = "invalid_value") -> GatewayError {
        GatewayError(status: 400, type: "invalid_request_error", code: code, param: param, message: message)
    }

    /// 400 for a body that is not the JSON we expect.
    public static func invalidBody(_ message: String) -> GatewayError {
        GatewayError(status: 400, type: "invalid_request_error", code: "invalid_json", param: nil, message: message)
    }

    /// 404 for a model name the catalog does not know.
    public static func unknownModel(_ name: String, known: [String]) -> GatewayError {
        GatewayError(
            status: 404, type: "invalid_request_error", code: "model_not_found", param: "model",
            message: "The model '\(name)' does not exist." + (known.isEmpty ? " This key may use no model." : " Available models: \(known.joined(separator: ", ")).")
        )
    }

    /// 401 for a missing, unknown, revoked, disabled or expired API key.
    public static func unauthorized(_ message: String, code: String = "invalid_api_key") -> GatewayError {
        GatewayError(status: 401, type: "invalid_request_error", code: code, param: nil, message: message)
    }

    /// 429 `insufficient_quota` (OpenAI's own) when the key's credit cannot cover the request;
    /// answered before any upstream call.
    public static func insufficientQuota(balanceMicroUSD: Int, neededMicroUSD: Int) -> GatewayError {
        func usd(_ micro: Int) -> String { String(format: "%.6f", Double(micro) / 1_000_000) }
        return GatewayError(
            status: 429, type: "insufficient_quota", code: "insufficient_quota", param: nil,
            message: "You exceeded your current quota: this request may cost up to $\(usd(neededMicroUSD)) and the key's balance is $\(usd(max(0, balanceMicroUSD))). Ask the operator for more credit."
        )
    }

    /// 429 for a key over its own requests-per-minute or concurrency limit.
    public static func keyRateLimited(_ message: String, retryAfterSeconds: Int?) -> GatewayError {
        GatewayError(status: 429, type: "rate_limit_error", code: "rate_limit_exceeded", param: nil, message: message, retryAfterSeconds: retryAfterSeconds)
    }

    /// 413 for a body larger than the limit.
    public static func payloadTooLarge(limitBytes: Int) -> GatewayError {
        GatewayError(
            status: 413, type: "invalid_request_error", code: "request_too_large", param: nil,
            message: "The request body is larger than the limit of \(limitBytes) bytes."
        )
    }

    /// 400 for a generation Google refused on safety grounds (a 200 upstream with no image).
    public static func contentPolicy(_ reason: String) -> GatewayError {
        GatewayError(
            status: 400, type: "invalid_request_error", code: "content_policy_violation", param: "prompt",
            message: "The image was not generated: \(reason)"
        )
    }

    // MARK: Upstream and server errors

    /// 502 when Google answered 200 but gave no image for a non-safety reason.
    public static func noImage(_ reason: String) -> GatewayError {
        GatewayError(status: 502, type: "server_error", code: "no_image_generated", param: nil, message: "The model returned no image: \(reason)")
    }

    /// 429 when every upstream key is rate limited.
    public static func upstreamRateLimited(_ message: String, retryAfterSeconds: Int?) -> GatewayError {
        GatewayError(
            status: 429, type: "rate_limit_error", code: "rate_limit_exceeded", param: nil,
            message: message, retryAfterSeconds: retryAfterSeconds
        )
    }

    /// 502 for an upstream that failed or answered garbage.
    public static func badGateway(_ message: String, code: String = "upstream_error") -> GatewayError {
        GatewayError(status: 502, type: "server_error", code: code, param: nil, message: message)
    }

    /// 503 for an upstream that is overloaded or a gateway with no usable upstream.
    public static func unavailable(_ message: String, code: String = "upstream_unavailable", retryAfterSeconds: Int? = nil) -> GatewayError {
        GatewayError(status: 503, type: "server_error", code: code, param: nil, message: message, retryAfterSeconds: retryAfterSeconds)
    }

    /// 504 when Google did not answer in time.
    public static func timeout(_ message: String) -> GatewayError {
        GatewayError(status: 504, type: "server_error", code: "upstream_timeout", param: nil, message: message)
    }

    /// 499 (nginx's "client closed request") for a request whose client went away; only ever
    /// written to the usage log, never sent.
    public static let clientDisconnected = GatewayError(
        status: 499, type: "invalid_request_error", code: "client_disconnected", param: nil, message: "The client closed the connection."
    )

    /// Whether this is the error recorded for a client that went away.
    public var isClientDisconnect: Bool { code == Self.clientDisconnected.code }

    /// 413 for one input image over the per-image limit.
    public static func imageTooLarge(_ param: String, limitBytes: Int) -> GatewayError {
        GatewayError(status: 413, type: "invalid_request_error", code: "image_too_large", param: param, message: "'\(param)' is larger than the limit of \(limitBytes) bytes per image.")
    }

    /// 400 for a remote image that could not be fetched. Deliberately vague: the message must
    /// not tell a client what the gateway's network looks like (status codes, open ports).
    public static func imageFetchFailed(_ param: String, _ reason: String = "it did not return an image") -> GatewayError {
        .invalidParameter(param, "Fetching '\(param)' failed: \(reason).", code: "image_fetch_failed")
    }

    /// 408 for a client that did not send its request body in time.
    public static func requestTimeout(_ message: String) -> GatewayError {
        GatewayError(status: 408, type: "invalid_request_error", code: "request_timeout", param: nil, message: message)
    }

    /// 500 for a fault of our own.
    public static func `internal`(_ message: String) -> GatewayError {
        GatewayError(status: 500, type: "server_error", code: "internal_error", param: nil, message: message)
    }
}
