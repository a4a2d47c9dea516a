import Logging
import NanoGateCore
import AsyncHTTPClient
import Foundation
public import NIOCore
import NIOHTTP1
import NIOFoundationCompat

/// One upstream the pool can send a Gemini request to: Google's Gemini API, Vertex AI (service
/// account or express), or another OpenAI-compatible gateway. Every kind takes and returns
/// Gemini's wire format, so the rest of the gateway never knows which kind served a request.
///
/// A channel makes single attempts; choosing a channel, retrying, cooling down and tripping a
/// breaker are the pool's work.
protocol UpstreamChannel: Sendable {
    var configuration: ChannelConfiguration { get }
    /// How many credentials (API keys) it rotates through; each cools down on its own.
    var credentialCount: Int { get }
    /// Removes the channel's secrets from text that may reach a client or a log.
    var redact: @Sendable (String) -> String { get }
    /// Whose API it speaks (named in the errors it causes).
    var provider: UpstreamError.Provider { get }
    /// The channel as Google's Batch API client, when it is a Gemini API channel (nil: it
    /// cannot take batches).
    var batchChannel: GoogleChannel? { get }

    /// One `generateContent` call on `model` (the id this channel knows it by), answered
    /// within `timeout` (request, head and body).
    func generate(model: String, request: GeminiWire.Request, body: ByteBuffer, credential: Int, timeout: Duration, logger: Logger) async -> Result<GeminiWire.Response, ChannelFailure>

    /// One `generateContent` call whose answer is read by the caller as it arrives (images
    /// pass through; `GeminiAnswerScanner`): returns once the upstream answered 200.
    func generateBody(model: String, request: GeminiWire.Request, body: ByteBuffer, credential: Int, deadline: ContinuousClock.Instant, logger: Logger) async -> Result<GeminiAnswerBody, ChannelFailure>

    /// One streamed call: returns once the upstream answered 200; the events follow, the whole
    /// stream bounded by `deadline`.
    func stream(model: String, request: GeminiWire.Request, body: ByteBuffer, credential: Int, deadline: ContinuousClock.Instant, logger: Logger) async -> Result<GeminiEventStream, ChannelFailure>

    /// The model ids the upstream lists, or nil when the kind has no such list.
    func listModels(logger: Logger) async throws(UpstreamError) -> Set<String>?

    /// One tiny real call that costs nothing (`countTokens`, `GET /v1/models`), for `channels test`.
    func probe(model: String, logger: Logger) async throws(UpstreamError) -> String

    func shutdown() async
}

extension UpstreamChannel {
    var batchChannel: GoogleChannel? { nil }

    /// A kind that cannot hand its answer over unread: the whole answer, read and re-encoded,
    /// as one piece.
    func generateBody(model: String, request: GeminiWire.Request, body: ByteBuffer, credential: Int, deadline: ContinuousClock.Instant, logger: Logger) async -> Result<GeminiAnswerBody, ChannelFailure> {
        let timeout = ContinuousClock.now.duration(to: deadline)
        switch await generate(model: model, request: request, body: body, credential: credential, timeout: timeout, logger: logger) {
        case .failure(let failure): return .failure(failure)
        case .success(let response):
            guard let encoded = try? SplicedJSON.encodeJoined(response) else { return .failure(.init(error: .init(.unreadable), disposition: .fatal)) }
            let pieces = AsyncThrowingStream<ByteBuffer, any Error> { continuation in
                continuation.yield(encoded)
                continuation.finish()
            }
            return .success(GeminiAnswerBody(pieces: pieces, deadline: deadline, maxBytes: encoded.readableBytes))
        }
    }
}

/// A 200 answer of `generateContent` not yet read: its pieces as they arrive, the deadline its
/// reading must meet, and the most bytes it may have (it is untrusted).
public struct GeminiAnswerBody: Sendable {
    public let pieces: any AsyncSequence<ByteBuffer, any Error> & Sendable
    public let deadline: ContinuousClock.Instant
    public let maxBytes: Int
    /// How a 200 whose body is Google's error counts (as the HTTP error it describes).
    let classifyError: @Sendable (GeminiWire.ErrorEnvelope.Status) -> ChannelFailure

    public init(pieces: any AsyncSequence<ByteBuffer, any Error> & Sendable, deadline: ContinuousClock.Instant, maxBytes: Int) {
        self.init(pieces: pieces, deadline: deadline, maxBytes: maxBytes) { _ in .init(error: .init(.serverError), disposition: .transient) }
    }

    init(
        pieces: any AsyncSequence<ByteBuffer, any Error> & Sendable, deadline: ContinuousClock.Instant, maxBytes: Int,
        classifyError: @escaping @Sendable (GeminiWire.ErrorEnvelope.Status) -> ChannelFailure
    ) {
        self.pieces = pieces
        self.deadline = deadline
        self.maxBytes = maxBytes
        self.classifyError = classifyError
    }

    /// The answer's pieces could not be read (the connection broke, a timeout).
    public func failure(reading error: any Error) -> AnswerReadFailure {
        AnswerReadFailure(HTTPFailures.transport(error, provider: .google))
    }

    /// The answer is Google's error under a 200.
    public func failure(describedBy status: GeminiWire.ErrorEnvelope.Status) -> AnswerReadFailure {
        AnswerReadFailure(classifyError(status))
    }
}

/// Why an answer read through `UpstreamPool.generateContentRead` failed: the error, and whether
/// another attempt may help (a broken or unreadable answer: yes, and it counts toward the
/// channel's breaker; a timeout Google may have billed, an answer too large: no).
public struct AnswerReadFailure: Error, Sendable {
    public var error: UpstreamError
    public var retry: Bool

    public init(_ error: UpstreamError, retry: Bool) {
        self.error = error
        self.retry = retry
    }

    init(_ failure: ChannelFailure) {
        self.init(failure.error, retry: failure.disposition == .transient)
    }

    var channelFailure: ChannelFailure { .init(error: error, disposition: retry ? .transient : .fatal) }
}

/// What the pool does after a failed attempt.
enum Disposition: Sendable, Equatable {
    /// Retrying cannot help (a bad request, a timeout the upstream may have billed, a gone client).
    case fatal
    /// This credential's quota for this model (or for every model) is used up for a while.
    case coolDown(Duration, modelOnly: Bool)
    /// The credential was refused: set it aside (an operator fault, logged).
    case credentialRejected
    /// A transient fault (5xx, connection, garbage): counts toward the channel's breaker; retry elsewhere.
    case transient
    /// This channel cannot take the call now (its queue is full): try another at once, no penalty.
    case elsewhere
}

struct ChannelFailure: Error, Sendable {
    var error: UpstreamError
    var disposition: Disposition
}

/// Failures shared by every HTTP channel kind.
enum HTTPFailures {
    /// A failure below HTTP. Its detail names no host or address.
    static func transport(_ error: any Error, provider: UpstreamError.Provider) -> ChannelFailure {
        if error is CancellationError { return .init(error: .init(.cancelled, provider: provider), disposition: .fatal) }
        if let error = error as? HTTPClientError {
            if error == .cancelled { return .init(error: .init(.cancelled, provider: provider), disposition: .fatal) }
            if error == .connectTimeout {
                return .init(error: .init(.unreachable, detail: "connect timeout", provider: provider), disposition: .transient)
            }
            if error == .deadlineExceeded || error == .readTimeout {
                // The upstream may have done (and billed) the work: repeating it could multiply the bill.
                return .init(error: .init(.timeout, provider: provider), disposition: .fatal)
            }
            if error == .getConnectionFromPoolTimeout {
                return .init(error: .init(.unreachable, detail: "no connection became free in time", provider: provider), disposition: .transient)
            }
        }
        return .init(error: .init(.unreachable, provider: provider), disposition: .transient)
    }

    /// The body of a non-200 answer, bounded; a read failure yields an empty body.
    static func errorBody(_ response: HTTPClientResponse) async -> ByteBuffer {
        (try? await response.body.collect(upTo: 1024 * 1024)) ?? ByteBuffer()
    }

    /// Seconds in a `Retry-After` header (delta-seconds only), clamped to a day.
    static func retryAfter(_ response: HTTPClientResponse) -> Double? {
        response.headers.first(name: "retry-after").flatMap(Double.init).map { min(max(0, $0), 86_400) }
    }
}

/// Google's errors (a `google.rpc.Status`), for every Google channel kind.
enum GoogleErrors {
    /// What a Google error means for the client and for the pool.
    static func classify(status: Int, envelope: GeminiWire.ErrorEnvelope?, redact: @Sendable (String) -> String, logger: Logger) -> ChannelFailure {
        let googleStatus = envelope?.error.status ?? "HTTP \(status)"
        let message = redact(String((envelope?.error.message ?? "no message").prefix(500)))
        let reasons = Set((envelope?.error.details ?? []).compactMap(\.reason))
        let retryDelay = (envelope?.error.details ?? []).compactMap(\.retryDelay).compactMap(UpstreamNumbers.seconds(fromDuration:)).first
        let retrySeconds = retryDelay.map { max(1, Int($0.rounded(.up))) }

        if status == 403 || status == 400, !reasons.contains("API_KEY_INVALID"), modelRefused(message) {
            // Not the credential: this project may not use this model (2.5 for a new project,
            // F1). The request goes down the model's fallback chain; the key stays in service.
            logger.warning("Google refuses the upstream model for this project", metadata: ["google.status": "\(googleStatus)", "google.message": "\(message)"])
            return .init(error: .init(.modelNotFound, status: status, detail: message), disposition: .fatal)
        }
        if reasons.contains("API_KEY_INVALID") || status == 401 || status == 403 {
            logger.error("Google rejected a credential; the channel sets it aside", metadata: ["google.status": "\(googleStatus)", "google.message": "\(message)"])
            return .init(error: .init(.authFailed, status: status, detail: message), disposition: .credentialRejected)
        }
        switch status {
        case 429:
            let wait = retryDelay ?? 30
            return .init(error: .init(.rateLimited, status: 429, detail: message, retryAfterSeconds: max(1, Int(wait.rounded(.up)))), disposition: .coolDown(.milliseconds(Int64(wait * 1000)), modelOnly: true))
        case 400:
            return .init(error: .init(.invalidRequest, status: 400, detail: message), disposition: .fatal)
        case 404:
            logger.error("Google does not know the upstream model; run `nanogate models check` and fix the catalog (configuration file or NANOGATE_UPSTREAM_*)", metadata: ["google.message": "\(message)"])
            return .init(error: .init(.modelNotFound, status: 404, detail: message), disposition: .fatal)
        case 503:
            return .init(error: .init(.overloaded, status: 503, detail: message, retryAfterSeconds: retrySeconds), disposition: .transient)
        case 504:
            return .init(error: .init(.timeout, status: 504, detail: message), disposition: .transient)
        default:
            return .init(error: .init(.serverError, status: status, detail: "\(googleStatus): \(message)"), disposition: .transient)
        }
    }

    /// Whether a 400/403 message says the model itself is refused (unknown, retired, or not
    /// available to this project), as opposed to a bad request or a bad credential.
    static func modelRefused(_ message: String) -> Bool {
        let text = message.lowercased()
        guard text.contains("model") else { return false }
        return ["not available", "no longer available", "not found", "only available", "not accessible", "does not have access", "not supported for this project"]
            .contains { text.contains($0) }
    }

    /// Google's `google.rpc.Status` body, also when wrapped in a one-element array (as the
    /// non-SSE streaming variant sends it).
    static func envelope(in body: ByteBuffer) -> GeminiWire.ErrorEnvelope? {
        (try? JSONDecoder().decode(GeminiWire.ErrorEnvelope.self, from: body))
            ?? (try? JSONDecoder().decode([GeminiWire.ErrorEnvelope].self, from: body))?.first
    }

    /// The error for a `google.rpc.Status` that arrived inside a stream (or a 200 body).
    static func midStream(_ status: GeminiWire.ErrorEnvelope.Status, redact: @Sendable (String) -> String) -> UpstreamError {
        classify(status: status.code ?? 500, envelope: .init(error: status), redact: redact, logger: Logger(label: "nanogate.upstream")).error
    }
}

/// Removes each secret from text (none shorter than 4 characters, which would mangle words).
func redactor(secrets: [String]) -> @Sendable (String) -> String {
    let secrets = secrets.filter { $0.count >= 4 }
    return { text in secrets.reduce(text) { $0.replacingOccurrences(of: $1, with: "[redacted]") } }
}
