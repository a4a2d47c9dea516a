public import AsyncHTTPClient
public import Logging
public import NanoGateCore
import Foundation
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import Synchronization

/// Where and how the gateway reaches Google.
///
/// | key (environment) | meaning | default |
/// |---|---|---|
/// | `NANOGATE_GEMINI_BASE_URL` | Gemini API base | `https://generativelanguage.googleapis.com` |
/// | `GEMINI_API_KEY` | one key, or several separated by commas | none |
/// | `NANOGATE_UPSTREAM_TIMEOUT` | seconds one upstream call may take | 300 |
/// | `NANOGATE_UPSTREAM_ATTEMPTS` | attempts per image (across keys) before giving up | 3 |
public struct UpstreamConfiguration: Sendable {
    public var baseURL: String
    public var apiKeys: [String]
    public var requestTimeout: Duration
    public var maxAttempts: Int
    /// First retry delay; doubles each attempt (with jitter).
    public var retryBaseDelay: Duration
    /// Largest response body accepted from Google (a 4K image is tens of MB of base64).
    public var maxResponseBytes: Int

    public init(
        baseURL: String = "https://generativelanguage.googleapis.com",
        apiKeys: [String],
        requestTimeout: Duration = .seconds(300),
        maxAttempts: Int = 3,
        retryBaseDelay: Duration = .milliseconds(250),
        maxResponseBytes: Int = 256 * 1024 * 1024
    ) {
        self.baseURL = baseURL.hasSuffix("/") ? String(baseURL.dropLast()) : baseURL
        self.apiKeys = apiKeys
        self.requestTimeout = requestTimeout
        self.maxAttempts = max(1, maxAttempts)
        self.retryBaseDelay = retryBaseDelay
        self.maxResponseBytes = maxResponseBytes
    }
}

/// The Google keys the gateway holds, and the calls it makes with them.
///
/// Keys are used round-robin. A rate-limited key cools down for Google's `retryDelay`; a key
/// Google calls invalid is set aside for ten minutes (an operator fault, logged at error level,
/// identified by its position, never by its value). Retries go to the next usable key, with
/// exponential backoff for 5xx, timeouts and unreadable answers. AsyncHTTPClient itself never
/// retries, so this is the one place that does.
public final class UpstreamPool: Sendable {
    private let httpClient: HTTPClient
    private let configuration: UpstreamConfiguration
    private let state: Mutex<KeyState>

    private struct KeyState {
        var next = 0
        /// Earliest time each key may be used again, and why it was set aside.
        var coolingUntil: [ContinuousClock.Instant?]
        var coolingReason: [GatewayError?]
    }

    public init(httpClient: HTTPClient, configuration: UpstreamConfiguration) {
        self.httpClient = httpClient
        self.configuration = configuration
        let count = configuration.apiKeys.count
        self.state = Mutex(KeyState(coolingUntil: Array(repeating: nil, count: count), coolingReason: Array(repeating: nil, count: count)))
    }

    /// Calls `generateContent` on `model`, retrying across keys, and maps every failure to a `GatewayError`.
    public func generateContent(model: String, request: GeminiWire.Request, logger: Logger) async throws(GatewayError) -> GeminiWire.Response {
        try await withRetries(model: model, action: "generateContent", request: request, logger: logger) { response in
            let body: ByteBuffer
            do {
                body = try await response.body.collect(upTo: configuration.maxResponseBytes)
            } catch is NIOTooManyBytesError {
                return .failure(.init(error: .badGateway("Google's answer was larger than \(configuration.maxResponseBytes) bytes."), disposition: .fatal))
            } catch {
                return .failure(Self.transportFailure(error, timeout: configuration.requestTimeout, redact: redacted))
            }
            do {
                return .success(try SplicedJSON.decode(GeminiWire.Response.self, from: body))
            } catch {
                return .failure(.init(error: .badGateway("Google returned an answer the gateway could not read."), disposition: .retryAfterBackoff))
            }
        }
    }

    /// Calls `streamGenerateContent?alt=sse`. Retries happen until Google answers 200; the events
    /// then arrive through the returned sequence (errors after that are the caller's to report).
    public func streamGenerateContent(model: String, request: GeminiWire.Request, logger: Logger) async throws(GatewayError) -> GeminiEventStream {
        try await withRetries(model: model, action: "streamGenerateContent?alt=sse", request: request, logger: logger) { response in
            .success(GeminiEventStream(body: response.body, maxEventBytes: configuration.maxResponseBytes))
        }
    }

    private func withRetries<Output>(
        model: String, action: String, request: GeminiWire.Request, logger: Logger,
        onSuccess: (HTTPClientResponse) async -> Result<Output, AttemptFailure>
    ) async throws(GatewayError) -> Output {
        let body: ByteBuffer
        do {
            body = try SplicedJSON.encodeJoined(request)
        } catch {
            throw .internal("Could not encode the upstream request.")
        }
        guard !configuration.apiKeys.isEmpty else {
            throw .unavailable("No Google API key is configured (set GEMINI_API_KEY).", code: "no_upstream")
        }
        var lastError: GatewayError?
        for attempt in 1...configuration.maxAttempts {
            guard let keyIndex = pickKey() else {
                // Every key is set aside: say why, with the wait until the first comes back.
                throw lastError ?? whyAllKeysAreResting()
            }
            var attemptLogger = logger
            attemptLogger[metadataKey: "upstream.attempt"] = "\(attempt)"
            attemptLogger[metadataKey: "upstream.key"] = "#\(keyIndex + 1)"
            attemptLogger[metadataKey: "upstream.model"] = "\(model)"
            let result: Result<Output, AttemptFailure>
            switch await send(model: model, action: action, body: body, keyIndex: keyIndex, logger: attemptLogger) {
            case .success(let response): result = await onSuccess(response)
            case .failure(let failure): result = .failure(failure)
            }
            switch result {
            case .success(let output):
                return output
            case .failure(let failure):
                lastError = failure.error
                switch failure.disposition {
                case .fatal:
                    throw failure.error
                case .nextKey(let coolDown):
                    setAside(keyIndex, for: coolDown, because: failure.error)
                case .retryAfterBackoff:
                    if attempt < configuration.maxAttempts { try? await Task.sleep(for: backoff(attempt)) }
                }
                attemptLogger.warning("upstream attempt failed", metadata: ["error": "\(failure.error.message)"])
            }
        }
        throw lastError ?? .internal("No upstream attempt was made.")
    }

    /// The error of the key that comes back first, its `Retry-After` counted down.
    private func whyAllKeysAreResting() -> GatewayError {
        let now = ContinuousClock.now
        return state.withLock { state -> GatewayError in
            let soonest = state.coolingUntil.indices.min { (state.coolingUntil[$0] ?? now) < (state.coolingUntil[$1] ?? now) }!
            var error = state.coolingReason[soonest] ?? .unavailable("Every upstream key is resting.")
            if error.retryAfterSeconds != nil, let until = state.coolingUntil[soonest] {
                error.retryAfterSeconds = max(1, Int((until - now).components.seconds) + 1)
            }
            return error
        }
    }

    /// What to do after a failed attempt.
    private enum Disposition {
        /// Retrying cannot help (a bad request).
        case fatal
        /// This key is unusable for a while; another key may work at once.
        case nextKey(coolDown: Duration)
        /// A transient fault: wait and try again.
        case retryAfterBackoff
    }

    private struct AttemptFailure: Error {
        var error: GatewayError
        var disposition: Disposition
    }

    /// One HTTP call; a 200 response is returned with its body unread, anything else is classified.
    private func send(model: String, action: String, body: ByteBuffer, keyIndex: Int, logger: Logger) async -> Result<HTTPClientResponse, AttemptFailure> {
        var request = HTTPClientRequest(url: "\(configuration.baseURL)/v1beta/models/\(model):\(action)")
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "x-goog-api-key", value: configuration.apiKeys[keyIndex])
        request.body = .bytes(body)
        do {
            let response = try await httpClient.execute(request, timeout: .init(configuration.requestTimeout))
            if response.status == .ok { return .success(response) }
            let errorBody = (try? await response.body.collect(upTo: 1024 * 1024)) ?? ByteBuffer()
            return .failure(classify(status: Int(response.status.code), body: errorBody, logger: logger))
        } catch {
            return .failure(Self.transportFailure(error, timeout: configuration.requestTimeout, redact: redacted))
        }
    }

    private static func transportFailure(_ error: any Error, timeout: Duration, redact: (String) -> String) -> AttemptFailure {
        if let error = error as? HTTPClientError, error == .deadlineExceeded || error == .readTimeout || error == .connectTimeout {
            return .init(error: .timeout("Google did not answer within \(timeout)."), disposition: .retryAfterBackoff)
        }
        return .init(error: .badGateway("Could not reach Google: \(redact(String(describing: error)))."), disposition: .retryAfterBackoff)
    }

    /// Maps Google's HTTP errors (a `google.rpc.Status` body) to what the client sees and what the pool does next.
    private func classify(status: Int, body: ByteBuffer, logger: Logger) -> AttemptFailure {
        let envelope = Self.errorEnvelope(in: body)
        let googleStatus = envelope?.error.status ?? "HTTP \(status)"
        let message = redacted(envelope?.error.message ?? "no message")
        let reasons = Set((envelope?.error.details ?? []).compactMap(\.reason))
        let retryDelay = (envelope?.error.details ?? []).compactMap(\.retryDelay).compactMap(Self.seconds(fromDuration:)).first

        if reasons.contains("API_KEY_INVALID") || status == 401 || status == 403 {
            logger.error("Google rejected an API key; check GEMINI_API_KEY", metadata: ["google.status": "\(googleStatus)", "google.message": "\(message)"])
            return AttemptFailure(
                error: .unavailable("The gateway's upstream credentials were rejected by Google; the operator has been told.", code: "upstream_auth_failed"),
                disposition: .nextKey(coolDown: .seconds(600))
            )
        }
        switch status {
        case 429:
            let wait = retryDelay ?? 30
            return AttemptFailure(
                error: .upstreamRateLimited("Google's rate limit for this model was reached: \(message)", retryAfterSeconds: Int(wait.rounded(.up))),
                disposition: .nextKey(coolDown: .milliseconds(Int64(wait * 1000)))
            )
        case 400:
            return AttemptFailure(error: .invalidParameter(nil, "Google rejected the request: \(message)", code: "upstream_invalid_request"), disposition: .fatal)
        case 404:
            logger.error("Google does not know the upstream model; check NANOGATE_UPSTREAM_FLASH/NANOGATE_UPSTREAM_PRO", metadata: ["google.message": "\(message)"])
            return AttemptFailure(error: .badGateway("The upstream model is not available: \(message)", code: "upstream_model_not_found"), disposition: .fatal)
        case 503:
            return AttemptFailure(error: .unavailable("Google is overloaded: \(message)", retryAfterSeconds: retryDelay.map { Int($0.rounded(.up)) }), disposition: .retryAfterBackoff)
        case 504:
            return AttemptFailure(error: .timeout("Google could not finish in time: \(message)"), disposition: .retryAfterBackoff)
        default:
            return AttemptFailure(error: .badGateway("Google failed (\(googleStatus)): \(message)"), disposition: .retryAfterBackoff)
        }
    }

    /// Google's `google.rpc.Status` body, also when wrapped in a one-element array (as the
    /// non-SSE streaming variant sends it).
    static func errorEnvelope(in body: ByteBuffer) -> GeminiWire.ErrorEnvelope? {
        (try? JSONDecoder().decode(GeminiWire.ErrorEnvelope.self, from: body))
            ?? (try? JSONDecoder().decode([GeminiWire.ErrorEnvelope].self, from: body))?.first
    }

    private func pickKey() -> Int? {
        let now = ContinuousClock.now
        return state.withLock { state -> Int? in
            let count = state.coolingUntil.count
            for offset in 0..<count {
                let index = (state.next + offset) % count
                if let until = state.coolingUntil[index], until > now { continue }
                state.next = (index + 1) % count
                return index
            }
            return nil
        }
    }

    private func setAside(_ index: Int, for duration: Duration, because error: GatewayError) {
        let until = ContinuousClock.now.advanced(by: duration)
        state.withLock {
            $0.coolingUntil[index] = until
            $0.coolingReason[index] = error
        }
    }

    private func backoff(_ attempt: Int) -> Duration {
        let base = configuration.retryBaseDelay * (1 << (attempt - 1))
        return base + base * Double.random(in: 0..<0.5)
    }

    /// Removes every configured key from text that may reach a client or a log.
    private func redacted(_ text: String) -> String {
        configuration.apiKeys.reduce(text) { $0.replacingOccurrences(of: $1, with: "[redacted]") }
    }

    /// Parses protobuf Duration JSON (`"27s"`, `"1.5s"`).
    static func seconds(fromDuration text: String) -> Double? {
        guard text.hasSuffix("s") else { return nil }
        return Double(text.dropLast())
    }
}
