import Foundation
import AsyncHTTPClient
public import Logging
import NanoGateCore
import NIOCore
import NIOHTTP1

/// Google's Batch API (`models/{m}:batchGenerateContent`, polled at `batches/{id}`): the same
/// `generateContent` requests, answered within 24 h at half the price. Requests go inline
/// (Google takes up to 20 MB that way), each with a `metadata.key` that names its answer.
public enum GeminiBatch {
    /// `{"batch":{"displayName":…,"inputConfig":{"requests":{"requests":[{"request":…,"metadata":{"key":…}}]}}}}`
    struct Body: Encodable {
        var batch: Batch

        struct Batch: Encodable {
            var displayName: String
            var inputConfig: InputConfig
        }

        struct InputConfig: Encodable {
            var requests: Requests
        }

        struct Requests: Encodable {
            var requests: [Item]
        }

        struct Item: Encodable {
            var request: GeminiWire.Request
            var metadata: [String: String]
        }
    }

    /// The long-running operation Google answers with, at submission and at every poll.
    struct Operation: Decodable {
        var name: String?
        var done: Bool?
        var metadata: Metadata?
        var response: Output?
        var error: GeminiWire.ErrorEnvelope.Status?

        struct Metadata: Decodable {
            var state: String?
            var output: Output?
        }

        struct Output: Decodable {
            var inlinedResponses: Inlined?
        }

        struct Inlined: Decodable {
            var inlinedResponses: [Item]?
        }

        struct Item: Decodable {
            var response: GeminiWire.Response?
            var error: GeminiWire.ErrorEnvelope.Status?
            var metadata: [String: String]?
        }
    }

    /// Where a submitted batch lives: the channel and credential that made it (only they can
    /// read it) and Google's name for it.
    public struct Handle: Sendable, Codable, Equatable {
        public var channel: String
        public var credential: Int
        public var name: String

        public init(channel: String, credential: Int, name: String) {
            self.channel = channel
            self.credential = credential
            self.name = name
        }
    }

    /// A batch as Google last described it.
    public struct Status: Sendable {
        /// `BATCH_STATE_PENDING`, `…_RUNNING`, `…_SUCCEEDED`, `…_FAILED`, `…_CANCELLED`, `…_EXPIRED`.
        public var state: String
        public var done: Bool
        /// Each request's answer by its key, once done.
        public var results: [String: Result<GeminiWire.Response, UpstreamError>]
        /// Why the whole batch failed, if it did.
        public var failure: UpstreamError?
    }

    static func status(of operation: Operation) -> Status {
        let items = operation.response?.inlinedResponses?.inlinedResponses ?? operation.metadata?.output?.inlinedResponses?.inlinedResponses ?? []
        var results: [String: Result<GeminiWire.Response, UpstreamError>] = [:]
        for item in items {
            guard let key = item.metadata?["key"] else { continue }
            if let response = item.response, item.error == nil {
                results[key] = .success(response)
            } else {
                let status = item.error
                results[key] = .failure(UpstreamError(.serverError, status: status?.code, detail: status?.message.map { String($0.prefix(200)) }))
            }
        }
        let state = operation.metadata?.state ?? (operation.done == true ? "BATCH_STATE_SUCCEEDED" : "BATCH_STATE_PENDING")
        let failure = operation.error.map { UpstreamError(.serverError, status: $0.code, detail: $0.message.map { String($0.prefix(200)) }) }
        return Status(state: state, done: operation.done == true, results: results, failure: failure)
    }
}

extension GoogleChannel {
    /// Submits `requests` (key → request) as one batch of `model`.
    func submitBatch(model: String, requests: [(key: String, request: GeminiWire.Request)], displayName: String, credential: Int, logger: Logger) async throws(UpstreamError) -> String {
        let body = GeminiBatch.Body(batch: .init(
            displayName: displayName,
            inputConfig: .init(requests: .init(requests: requests.map { .init(request: $0.request, metadata: ["key": $0.key]) }))
        ))
        guard let encoded = try? SplicedJSON.encodeJoined(body) else { throw UpstreamError(.invalidRequest, detail: "the batch could not be encoded") }
        let operation = try await call(method: .POST, url: url(model: model, action: "batchGenerateContent"), body: encoded, credential: credential, logger: logger)
        // The name goes into later URLs: only Google's own form (`batches/` and an id) is taken.
        guard let name = operation.name, (try? batchURL(name: name, action: "")) != nil else { throw UpstreamError(.unreadable, detail: "the batch has no usable name") }
        return name
    }

    /// Google's view of the batch `name` (`batches/…`).
    func batchStatus(name: String, credential: Int, logger: Logger) async throws(UpstreamError) -> GeminiBatch.Status {
        GeminiBatch.status(of: try await call(method: .GET, url: try batchURL(name: name, action: ""), body: nil, credential: credential, logger: logger))
    }

    /// Asks Google to stop the batch (best effort: what it already answered is simply not used).
    func cancelBatch(name: String, credential: Int, logger: Logger) async throws(UpstreamError) {
        _ = try await call(method: .POST, url: try batchURL(name: name, action: ":cancel"), body: ByteBuffer(string: "{}"), credential: credential, logger: logger)
    }

    /// `{base}/v1beta/batches/{id}{action}`, for a name of Google's form only.
    private func batchURL(name: String, action: String) throws(UpstreamError) -> String {
        let id = name.dropFirst("batches/".count)
        guard name.hasPrefix("batches/"), !id.isEmpty, id.count <= 128, id.allSatisfy({ ($0.isASCII && ($0.isLetter || $0.isNumber)) || $0 == "-" || $0 == "_" }) else {
            throw UpstreamError(.invalidRequest, detail: "not a batch name")
        }
        let base = configuration.baseURL ?? "https://generativelanguage.googleapis.com"
        return "\(base.hasSuffix("/") ? String(base.dropLast()) : base)/v1beta/\(name)\(action)"
    }

    private func call(method: HTTPMethod, url: String, body: ByteBuffer?, credential: Int, logger: Logger) async throws(UpstreamError) -> GeminiBatch.Operation {
        var request = HTTPClientRequest(url: url)
        request.method = method
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "x-goog-api-key", value: configuration.apiKeys[credential])
        if let body { request.body = .bytes(body) }
        do {
            let response = try await httpClient.execute(request, timeout: .seconds(120))
            guard response.status == .ok else {
                let errorBody = await HTTPFailures.errorBody(response)
                throw GoogleErrors.classify(status: Int(response.status.code), envelope: GoogleErrors.envelope(in: errorBody), redact: redact, logger: logger).error
            }
            let bytes = try await response.body.collect(upTo: maxResponseBytes)
            guard let operation = try? SplicedJSON.decode(GeminiBatch.Operation.self, from: bytes) else { throw UpstreamError(.unreadable) }
            return operation
        } catch let error as UpstreamError {
            throw error
        } catch {
            throw HTTPFailures.transport(error, provider: .google).error
        }
    }
}

extension UpstreamPool {
    /// Submits a batch of `model` on a Gemini API channel that serves it (the Batch API is the
    /// Gemini API's; Vertex AI's batch prediction works from Cloud Storage and is not used).
    public func submitBatch(
        model: String, aliases: [String], requests: [(key: String, request: GeminiWire.Request)], displayName: String, logger: Logger
    ) async throws(UpstreamError) -> GeminiBatch.Handle {
        var lastError: UpstreamError?
        for target in batchTargets(model: model, aliases: aliases) {
            do {
                let name = try await target.channel.submitBatch(model: target.upstreamID, requests: requests, displayName: displayName, credential: target.credential, logger: logger)
                return GeminiBatch.Handle(channel: target.channel.configuration.name, credential: target.credential, name: name)
            } catch {
                logger.warning("batch submission failed", metadata: ["upstream.channel": "\(target.channel.configuration.name)", "error": "\(error)"])
                lastError = error
            }
        }
        throw lastError ?? UpstreamError(.noChannel, detail: "no Gemini API channel serves \(model) (batches need one)")
    }

    /// Cancels a submitted batch at Google, through the channel and credential that made it.
    public func cancelBatch(_ handle: GeminiBatch.Handle, logger: Logger) async throws(UpstreamError) {
        guard let channel = googleChannel(named: handle.channel), handle.credential < channel.configuration.apiKeys.count else {
            throw UpstreamError(.noChannel, detail: "the channel '\(handle.channel)' that made the batch is gone")
        }
        try await channel.cancelBatch(name: handle.name, credential: handle.credential, logger: logger)
    }

    /// Polls a submitted batch through the channel and credential that made it.
    public func batchStatus(_ handle: GeminiBatch.Handle, logger: Logger) async throws(UpstreamError) -> GeminiBatch.Status {
        guard let channel = googleChannel(named: handle.channel), handle.credential < channel.configuration.apiKeys.count else {
            throw UpstreamError(.noChannel, detail: "the channel '\(handle.channel)' that made the batch is gone")
        }
        return try await channel.batchStatus(name: handle.name, credential: handle.credential, logger: logger)
    }
}
