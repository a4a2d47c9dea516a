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

/// How many upstream attempts one request made, for its usage-log row (written by the pool,
/// read by whoever settles the request).
public final class UpstreamTrace: Sendable {
    private let state = Mutex((count: 0, key: String?.none))

    public init() {}

    /// HTTP attempts made so far.
    public var attempts: Int { state.withLock { $0.count } }

    /// The upstream key of the last attempt, by position (`#2`), never its value.
    public var lastKey: String? { state.withLock { $0.key } }

    func recordAttempt(key: Int) {
        state.withLock {
            $0.count += 1
            $0.key = "#\(key + 1)"
        }
    }
}

/// The Google keys the gateway holds, and the calls it makes with them.
///
/// Keys are used round-robin. A rate-limited key cools down for Google's `retryDelay` for that
/// model only (quotas are per model); a key Google calls invalid is set aside for every model
/// for ten minutes (an operator fault, logged at error level, identified by its position, never
/// by its value). Retries go to the next usable key, with exponential backoff for 5xx, refused
/// connections and unreadable answers; a call that timed out is not repeated (Google may have
/// produced and billed it). Everything the upstream sends is untrusted: redirects are refused
/// (the client is built with redirects off, and a 3xx is an error), bodies and streams are
/// bounded in size and time, numbers are clamped. AsyncHTTPClient itself never retries, so this
/// is the one place that does.
public final class UpstreamPool: Sendable {
    private let httpClient: HTTPClient
    private let configuration: UpstreamConfiguration
    private let state: Mutex<KeyState>

    /// What sets a key aside: the model it is resting for (nil: every model), until when, and why.
    private struct Rest {
        var until: ContinuousClock.Instant
        var reason: GatewayError
    }

    private struct KeyState {
        var next = 0
        /// Per key: rests for every model (`""`) and per model id.
        var rests: [[String: Rest]]
    }

    public init(httpClient: HTTPClient, configuration: UpstreamConfiguration) {
        self.httpClient = httpClient
        self.configuration = configuration
        self.state = Mutex(KeyState(rests: Array(repeating: [:], count: configuration.apiKeys.count)))
    }

    /// The client configuration the pool expects: no redirects (a redirect would carry the Google
    /// key and the request body to wherever it points), a connect timeout, and a read timeout so
    /// a silent connection cannot outlive the request timeout.
    public static func clientConfiguration(requestTimeout: Duration) -> HTTPClient.Configuration {
        var configuration = HTTPClient.Configuration()
        configuration.redirectConfiguration = .disallow
        configuration.timeout = .init(connect: .seconds(10), read: .init(requestTimeout))
        // AsyncHTTPClient keeps 8 connections per host by default; image calls are long, so allow
        // as many as the gateway has requests in flight.
        configuration.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: 256)
        return configuration
    }

    /// Calls `generateContent` on `model`, retrying across keys, and maps every failure to a `GatewayError`.
    /// Each attempt (request, response and body) must finish within the request timeout.
    public func generateContent(model: String, request: GeminiWire.Request, trace: UpstreamTrace? = nil, logger: Logger) async throws(GatewayError) -> GeminiWire.Response {
        let limit = configuration.maxResponseBytes
        let timeout = configuration.requestTimeout
        let redact = redactor
        return try await withRetries(model: model, action: "generateContent", request: request, trace: trace, logger: logger) { response in
            let body: ByteBuffer
            do {
                body = try await response.body.collect(upTo: limit)
            } catch is NIOTooManyBytesError {
                return .failure(.init(error: .badGateway("Google's answer was larger than \(limit) bytes."), disposition: .fatal))
            } catch {
                return .failure(Self.transportFailure(error, timeout: timeout))
            }
            let decoded: GeminiWire.Response
            do {
                decoded = try SplicedJSON.decode(GeminiWire.Response.self, from: body)
            } catch {
                return .failure(.init(error: .badGateway("Google returned an answer the gateway could not read."), disposition: .retryAfterBackoff))
            }
            if let status = decoded.error {
                // A 200 whose body is an error: classify it like the HTTP error it describes.
                return .failure(Self.classify(status: status.code ?? 500, envelope: .init(error: status), redact: redact, logger: logger))
            }
            return .success(decoded)
        }
    }

    /// Calls `streamGenerateContent?alt=sse`. Retries happen until Google answers 200; the events
    /// then arrive through the returned sequence (errors after that are the caller's to report),
    /// which ends with a timeout error at the request timeout counted from this call.
    public func streamGenerateContent(model: String, request: GeminiWire.Request, trace: UpstreamTrace? = nil, logger: Logger) async throws(GatewayError) -> GeminiEventStream {
        let deadline = ContinuousClock.now.advanced(by: configuration.requestTimeout)
        let limit = configuration.maxResponseBytes
        let redact = redactor
        return try await withRetries(model: model, action: "streamGenerateContent?alt=sse", request: request, trace: trace, logger: logger) { response in
            .success(GeminiEventStream(body: response.body, maxEventBytes: limit, deadline: deadline, redact: redact))
        }
    }

    /// Google's `GET /v1beta/models`, every page: the model ids it serves (without `models/`).
    /// One key is used (the first usable one); at most 50 pages are read, each bounded in size
    /// and time like any upstream answer.
    public func listModels(logger: Logger) async throws(GatewayError) -> Set<String> {
        guard !configuration.apiKeys.isEmpty else {
            throw .unavailable("No Google API key is configured (set GEMINI_API_KEY).", code: "no_upstream")
        }
        let key = configuration.apiKeys[pickKey(model: "") ?? 0]
        struct Page: Decodable {
            struct Model: Decodable { var name: String? }
            var models: [Model]?
            var nextPageToken: String?
        }
        var ids = Set<String>()
        var token: String?
        for _ in 0..<50 {
            var url = "\(configuration.baseURL)/v1beta/models?pageSize=1000"
            if let token {
                url += "&pageToken=" + (token.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? "")
            }
            var request = HTTPClientRequest(url: url)
            request.headers.add(name: "x-goog-api-key", value: key)
            let body: ByteBuffer
            let status: Int
            do {
                let response = try await httpClient.execute(request, timeout: .seconds(30))
                status = Int(response.status.code)
                body = try await response.body.collect(upTo: 16 * 1024 * 1024)
            } catch {
                throw Self.transportFailure(error, timeout: .seconds(30)).error
            }
            guard status == 200 else {
                throw Self.classify(status: status, envelope: Self.errorEnvelope(in: body), redact: redactor, logger: logger).error
            }
            guard let page = try? JSONDecoder().decode(Page.self, from: body) else {
                throw .badGateway("Google's model list could not be read.")
            }
            for model in page.models ?? [] {
                if let name = model.name { ids.insert(name.hasPrefix("models/") ? String(name.dropFirst(7)) : name) }
            }
            guard let next = page.nextPageToken, !next.isEmpty, next != token else { break }
            token = next
        }
        return ids
    }

    private func withRetries<Output: Sendable>(
        model: String, action: String, request: GeminiWire.Request, trace: UpstreamTrace?, logger: Logger,
        onSuccess: @escaping @Sendable (HTTPClientResponse) async -> Result<Output, AttemptFailure>
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
            // A client that has gone away needs no more attempts.
            if Task.isCancelled { throw .clientDisconnected }
            guard let keyIndex = pickKey(model: model) else {
                // Every key is set aside: say why, with the wait until the first comes back.
                throw lastError ?? whyAllKeysAreResting(model: model)
            }
            var attemptLogger = logger
            attemptLogger[metadataKey: "upstream.attempt"] = "\(attempt)"
            attemptLogger[metadataKey: "upstream.key"] = "#\(keyIndex + 1)"
            attemptLogger[metadataKey: "upstream.model"] = "\(model)"
            trace?.recordAttempt(key: keyIndex)
            let result = await attemptWithinTimeout(model: model, action: action, body: body, keyIndex: keyIndex, logger: attemptLogger, onSuccess: onSuccess)
            switch result {
            case .success(let output):
                return output
            case .failure(let failure):
                lastError = failure.error
                attemptLogger.warning("upstream attempt failed", metadata: ["error.code": "\(failure.error.code ?? "-")", "error": "\(failure.error.message)"])
                switch failure.disposition {
                case .fatal:
                    throw failure.error
                case .restKey(let duration, let forModelOnly):
                    setAside(keyIndex, model: forModelOnly ? model : nil, for: duration, because: failure.error)
                case .retryAfterBackoff:
                    if attempt < configuration.maxAttempts {
                        do {
                            try await Task.sleep(for: backoff(attempt))
                        } catch {
                            throw .clientDisconnected
                        }
                    }
                }
            }
        }
        throw lastError ?? .internal("No upstream attempt was made.")
    }

    /// One attempt, from sending the request to the end of `onSuccess` (which reads the body),
    /// bounded by the request timeout.
    private func attemptWithinTimeout<Output: Sendable>(
        model: String, action: String, body: ByteBuffer, keyIndex: Int, logger: Logger,
        onSuccess: @escaping @Sendable (HTTPClientResponse) async -> Result<Output, AttemptFailure>
    ) async -> Result<Output, AttemptFailure> {
        let timeout = configuration.requestTimeout
        let timedOut = AttemptFailure(error: .timeout("Google did not answer within \(timeout)."), disposition: .fatal)
        do {
            return try await Deadline.run(until: .now.advanced(by: timeout), orThrow: timedOut) {
                switch await self.send(model: model, action: action, body: body, keyIndex: keyIndex, logger: logger) {
                case .success(let response): return await onSuccess(response)
                case .failure(let failure): return .failure(failure)
                }
            }
        } catch let failure as AttemptFailure {
            return .failure(failure)
        } catch {
            return .failure(.init(error: .clientDisconnected, disposition: .fatal))
        }
    }

    /// The error of the key that comes back first for `model`, its `Retry-After` counted down.
    private func whyAllKeysAreResting(model: String) -> GatewayError {
        let now = ContinuousClock.now
        return state.withLock { state -> GatewayError in
            let rests = state.rests.compactMap { Self.activeRest($0, model: model, now: now) }
            guard let soonest = rests.min(by: { $0.until < $1.until }) else { return .unavailable("Every upstream key is resting.") }
            var error = soonest.reason
            if error.retryAfterSeconds != nil {
                error.retryAfterSeconds = max(1, Int((soonest.until - now).components.seconds) + 1)
            }
            return error
        }
    }

    /// The rest that keeps a key from `model` now, the longer one if both kinds apply.
    private static func activeRest(_ rests: [String: Rest], model: String, now: ContinuousClock.Instant) -> Rest? {
        [rests[""], rests[model]].compactMap { $0 }.filter { $0.until > now }.max { $0.until < $1.until }
    }

    /// What to do after a failed attempt.
    private enum Disposition: Sendable {
        /// Retrying cannot help (a bad request, a timeout Google may have billed, a gone client).
        case fatal
        /// This key is unusable for a while (for this model, or for every model); another key may work at once.
        case restKey(Duration, forModelOnly: Bool)
        /// A transient fault: wait and try again.
        case retryAfterBackoff
    }

    private struct AttemptFailure: Error, Sendable {
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
            if (300..<400).contains(response.status.code) {
                // Never followed: the key and the prompt would go wherever it points.
                logger.error("the upstream answered with a redirect, which the gateway refuses; check NANOGATE_GEMINI_BASE_URL", metadata: ["http.status": "\(response.status.code)"])
                return .failure(.init(error: .badGateway("The upstream answered with a redirect, which the gateway does not follow.", code: "upstream_redirect_refused"), disposition: .fatal))
            }
            let errorBody = (try? await response.body.collect(upTo: 1024 * 1024)) ?? ByteBuffer()
            return .failure(Self.classify(status: Int(response.status.code), envelope: Self.errorEnvelope(in: errorBody), redact: redactor, logger: logger))
        } catch {
            return .failure(Self.transportFailure(error, timeout: configuration.requestTimeout))
        }
    }

    /// A failure below HTTP. The message names no host or address: it reaches clients.
    private static func transportFailure(_ error: any Error, timeout: Duration) -> AttemptFailure {
        if error is CancellationError { return .init(error: .clientDisconnected, disposition: .fatal) }
        if let error = error as? HTTPClientError {
            if error == .cancelled { return .init(error: .clientDisconnected, disposition: .fatal) }
            if error == .connectTimeout {
                return .init(error: .timeout("Could not connect to Google within 10 s."), disposition: .retryAfterBackoff)
            }
            if error == .deadlineExceeded || error == .readTimeout {
                // Google may have done (and billed) the work: repeating it could multiply the bill.
                return .init(error: .timeout("Google did not answer within \(timeout)."), disposition: .fatal)
            }
        }
        return .init(error: .badGateway("Could not reach Google (the connection failed)."), disposition: .retryAfterBackoff)
    }

    /// Maps Google's errors (a `google.rpc.Status`) to what the client sees and what the pool does next.
    private static func classify(status: Int, envelope: GeminiWire.ErrorEnvelope?, redact: @Sendable (String) -> String, logger: Logger) -> AttemptFailure {
        let googleStatus = envelope?.error.status ?? "HTTP \(status)"
        let message = redact(String((envelope?.error.message ?? "no message").prefix(500)))
        let reasons = Set((envelope?.error.details ?? []).compactMap(\.reason))
        let retryDelay = (envelope?.error.details ?? []).compactMap(\.retryDelay).compactMap(UpstreamNumbers.seconds(fromDuration:)).first

        if reasons.contains("API_KEY_INVALID") || status == 401 || status == 403 {
            logger.error("Google rejected an API key; check GEMINI_API_KEY", metadata: ["google.status": "\(googleStatus)", "google.message": "\(message)"])
            // An invalid key is invalid for every model; a 403 may be one model's permission.
            let everyModel = reasons.contains("API_KEY_INVALID") || status == 401
            return AttemptFailure(
                error: .unavailable("The gateway's upstream credentials were rejected by Google; the operator has been told.", code: "upstream_auth_failed"),
                disposition: .restKey(.seconds(600), forModelOnly: !everyModel)
            )
        }
        switch status {
        case 429:
            let wait = retryDelay ?? 30
            return AttemptFailure(
                error: .upstreamRateLimited("Google's rate limit for this model was reached: \(message)", retryAfterSeconds: max(1, Int(wait.rounded(.up)))),
                disposition: .restKey(.milliseconds(Int64(wait * 1000)), forModelOnly: true)
            )
        case 400:
            return AttemptFailure(error: .invalidParameter(nil, "Google rejected the request: \(message)", code: "upstream_invalid_request"), disposition: .fatal)
        case 404:
            logger.error("Google does not know the upstream model; run `nanogate models check` and fix the catalog (configuration file or NANOGATE_UPSTREAM_*)", metadata: ["google.message": "\(message)"])
            return AttemptFailure(error: .badGateway("The upstream model is not available: \(message)", code: "upstream_model_not_found"), disposition: .fatal)
        case 503:
            return AttemptFailure(error: .unavailable("Google is overloaded: \(message)", retryAfterSeconds: retryDelay.map { max(1, Int($0.rounded(.up))) }), disposition: .retryAfterBackoff)
        case 504:
            return AttemptFailure(error: .timeout("Google could not finish in time: \(message)"), disposition: .retryAfterBackoff)
        default:
            return AttemptFailure(error: .badGateway("Google failed (\(googleStatus)): \(message)"), disposition: .retryAfterBackoff)
        }
    }

    /// The client-facing error for a `google.rpc.Status` that arrived inside a stream.
    static func midStreamError(_ status: GeminiWire.ErrorEnvelope.Status, redact: @Sendable (String) -> String) -> GatewayError {
        var error = classify(status: status.code ?? 500, envelope: .init(error: status), redact: redact, logger: Logger(label: "nanogate.upstream")).error
        error.message = "Google failed mid-stream: " + error.message
        return error
    }

    /// Google's `google.rpc.Status` body, also when wrapped in a one-element array (as the
    /// non-SSE streaming variant sends it).
    static func errorEnvelope(in body: ByteBuffer) -> GeminiWire.ErrorEnvelope? {
        (try? JSONDecoder().decode(GeminiWire.ErrorEnvelope.self, from: body))
            ?? (try? JSONDecoder().decode([GeminiWire.ErrorEnvelope].self, from: body))?.first
    }

    private func pickKey(model: String) -> Int? {
        let now = ContinuousClock.now
        return state.withLock { state -> Int? in
            let count = state.rests.count
            for offset in 0..<count {
                let index = (state.next + offset) % count
                if Self.activeRest(state.rests[index], model: model, now: now) != nil { continue }
                state.next = (index + 1) % count
                return index
            }
            return nil
        }
    }

    private func setAside(_ index: Int, model: String?, for duration: Duration, because error: GatewayError) {
        let until = ContinuousClock.now.advanced(by: duration)
        state.withLock { $0.rests[index][model ?? ""] = Rest(until: until, reason: error) }
    }

    private func backoff(_ attempt: Int) -> Duration {
        let base = configuration.retryBaseDelay * (1 << min(attempt - 1, 10))
        return base + base * Double.random(in: 0..<0.5)
    }

    /// Removes every configured key from text that may reach a client or a log.
    private var redactor: @Sendable (String) -> String {
        let keys = configuration.apiKeys
        return { text in keys.reduce(text) { $0.replacingOccurrences(of: $1, with: "[redacted]") } }
    }
}
