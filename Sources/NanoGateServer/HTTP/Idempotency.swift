import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NanoGateCore
import NanoGateStorage
import NIOCore

/// `Idempotency-Key` on the POST endpoints (as Stripe and OpenAI's SDK retries use it): a retry
/// with the same key and the same body within 24 h gets the stored answer (same images, same
/// URLs, same usage) and is neither sent upstream nor charged again. The same key with another
/// body is a 409 `idempotency_key_reused`; a retry while the first is still running is a 409
/// `idempotency_key_in_progress` (retry it after a moment). 5xx and 429 answers are not stored
/// (the request may be retried for real), and neither are streams.
struct IdempotencyMiddleware: RouterMiddleware {
    typealias Context = GatewayRequestContext
    let store: SQLStore
    /// The largest body any route takes (edits, uploads, chat with images).
    let maxBodyBytes: Int
    /// The largest JSON body of a generation: a retry is buffered no further than its route reads.
    var maxJSONBodyBytes = 1024 * 1024
    /// An `in_progress` claim older than this belongs to a gateway that died; a retry may take it over.
    let staleAfter: TimeInterval

    static let header = HTTPField.Name("Idempotency-Key")!

    /// What the route behind `path` reads at most (the middleware must not hold more for it).
    func bodyLimit(path: String) -> Int {
        if path.hasSuffix("/images/generations") { return maxJSONBodyBytes }
        if path.hasSuffix("/batches") || path.hasSuffix("/cancel") { return 64 * 1024 }
        return maxBodyBytes
    }
    static let replayedHeader = HTTPField.Name("Idempotent-Replayed")!

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard request.method == .post, let idempotencyKey = request.headers[Self.header], let key = context.identity else {
            return try await next(request, context)
        }
        guard (1...255).contains(idempotencyKey.utf8.count) else {
            throw GatewayError.invalidParameter(nil, "Idempotency-Key must be 1 to 255 characters.", code: "invalid_idempotency_key")
        }
        var request = request
        let body = try await request.collectBody(limit: bodyLimit(path: request.uri.path))
        request.body = RequestBody(buffer: body)
        var hasher = SHA256()
        hasher.update(data: Array("\(request.uri.path)\n\(request.headers[.contentType] ?? "")\n".utf8))
        hasher.update(data: Array(body.readableBytesView))
        let hash = hasher.finalize().lowercaseHex

        switch try await store.claimIdempotency(keyID: key.id, idempotencyKey: idempotencyKey, bodyHash: hash, staleAfter: staleAfter) {
        case .mismatch:
            throw GatewayError(status: 409, type: "invalid_request_error", code: "idempotency_key_reused", param: nil,
                               message: "This Idempotency-Key was used with a different request body; use a new key for a new request.")
        case .inProgress:
            throw GatewayError(status: 409, type: "invalid_request_error", code: "idempotency_key_in_progress", param: nil,
                               message: "A request with this Idempotency-Key is still running; retry after it finishes.", retryAfterSeconds: 1)
        case .done(let status, let contentType, let stored):
            return Response(
                status: .init(code: status), headers: [.contentType: contentType, Self.replayedHeader: "true"],
                body: .init(byteBuffer: ByteBuffer(bytes: stored))
            )
        case .claimed:
            break
        }

        let response: Response
        do {
            response = try await next(request, context)
        } catch let error as GatewayError {
            await finish(key: key, idempotencyKey: idempotencyKey, response: OpenAIErrorMiddleware<GatewayRequestContext>.response(for: error), logger: context.logger)
            throw error
        } catch {
            try? await store.releaseIdempotency(keyID: key.id, idempotencyKey: idempotencyKey)
            throw error
        }
        if response.headers[.contentType]?.hasPrefix("text/event-stream") == true {
            try? await store.releaseIdempotency(keyID: key.id, idempotencyKey: idempotencyKey)
            return response
        }
        if response.headers[KeepAliveAnswer.preferenceApplied] != nil {
            return keepAliveAnswer(response, key: key, idempotencyKey: idempotencyKey, logger: context.logger)
        }
        let collector = CollectingWriter()
        try await response.body.write(collector.writer)
        let bytes = collector.bytes
        var stored = Response(status: response.status, headers: response.headers, body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
        stored.headers[.contentLength] = nil
        await finish(key: key, idempotencyKey: idempotencyKey, response: stored, bytes: bytes, logger: context.logger)
        return stored
    }

    /// A `Prefer: keep-alive` answer passes through as it is written (its spaces must reach the
    /// client while Google works) and is stored once whole — also when its client left before:
    /// the retry then gets the image instead of paying for another. Its status was 200 before
    /// the outcome was known, so an answer that turned out an error is not stored (the claim is
    /// released; the failure charged nothing, and the retry runs again).
    private func keepAliveAnswer(_ response: Response, key: APIKey, idempotencyKey: String, logger: Logger) -> Response {
        var passed = response
        let body = response.body
        passed.body = ResponseBody { [self] writer in
            let box = TeeWriter.Box()
            try await body.write(TeeWriter(client: writer, box: box))
            let whole = Array(box.bytes.drop { $0 == UInt8(ascii: " ") })
            if whole.starts(with: Array(#"{"error""#.utf8)) {
                try? await store.releaseIdempotency(keyID: key.id, idempotencyKey: idempotencyKey)
            } else {
                let stored = Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: whole)))
                await finish(key: key, idempotencyKey: idempotencyKey, response: stored, bytes: whole, logger: logger)
            }
            if let failure = box.clientFailure { throw failure }
        }
        return passed
    }

    /// Stores a final answer, or releases the claim of a retryable one.
    private func finish(key: APIKey, idempotencyKey: String, response: Response, bytes: [UInt8]? = nil, logger: Logger) async {
        let status = Int(response.status.code)
        do {
            guard status < 500, status != 429 else {
                try await store.releaseIdempotency(keyID: key.id, idempotencyKey: idempotencyKey)
                return
            }
            var body = bytes
            if body == nil {
                let collector = CollectingWriter()
                try await response.body.write(collector.writer)
                body = collector.bytes
            }
            try await store.completeIdempotency(
                keyID: key.id, idempotencyKey: idempotencyKey, status: status, contentType: response.headers[.contentType] ?? "application/json", body: body ?? []
            )
        } catch {
            logger.error("could not store an idempotent result", metadata: ["error": "\(error)"])
        }
    }
}

/// Writes through to the client and keeps a copy; a client that went away stops the writing to
/// it, not the collecting (the answer is still stored for its retry).
struct TeeWriter: ResponseBodyWriter {
    final class Box: @unchecked Sendable {
        var bytes: [UInt8] = []
        var clientFailure: (any Error)?
    }

    var client: any ResponseBodyWriter
    let box: Box

    mutating func write(_ buffer: ByteBuffer) async throws {
        box.bytes.append(contentsOf: buffer.readableBytesView)
        guard box.clientFailure == nil else { return }
        do { try await client.write(buffer) } catch { box.clientFailure = error }
    }

    consuming func finish(_ trailingHeaders: HTTPFields?) async throws {
        guard box.clientFailure == nil else { return }
        do { try await client.finish(trailingHeaders) } catch { box.clientFailure = error }
    }
}

/// Collects a response body in memory (answers under the idempotency middleware only).
struct CollectingWriter {
    final class Box: @unchecked Sendable {
        var bytes: [UInt8] = []
    }

    struct Writer: ResponseBodyWriter {
        let box: Box

        mutating func write(_ buffer: ByteBuffer) async throws {
            box.bytes.append(contentsOf: buffer.readableBytesView)
        }

        consuming func finish(_ trailingHeaders: HTTPFields?) async throws {}
    }

    let box = Box()
    var writer: Writer { Writer(box: box) }
    var bytes: [UInt8] { box.bytes }
}
