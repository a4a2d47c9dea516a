import Foundation
import Hummingbird
import Logging
import NanoGateCore
import NIOCore
import NIOFoundationCompat

/// The one place errors become OpenAI's `{"error":{"message","type","param","code"}}`.
///
/// Catches `GatewayError`, Hummingbird's own `HTTPError`s (unknown route, body too large) and
/// anything unexpected (logged, answered as a 500 with a body), so no client ever sees an empty
/// error response.
struct OpenAIErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as GatewayError {
            if error.status >= 500 { context.logger.warning("request failed", metadata: ["error": "\(error)"]) }
            (context as? GatewayRequestContext)?.observation.errorCode = error.code ?? "http_\(error.status)"
            return Self.response(for: error, request: request)
        } catch let error as HTTPError {
            let mapped = Self.gatewayError(from: error, request: request)
            (context as? GatewayRequestContext)?.observation.errorCode = mapped.code ?? "http_\(mapped.status)"
            return Self.response(for: mapped, request: request)
        } catch {
            context.logger.error("unexpected error", metadata: ["error": "\(String(reflecting: error))"])
            return Self.response(for: .internal("The gateway failed unexpectedly; the error has been logged."), request: request)
        }
    }

    /// OpenAI's shape, or Google's on the native routes (`GoogleErrorShape`).
    static func response(for error: GatewayError, request: Request) -> Response {
        guard GoogleErrorShape.applies(to: request) else { return response(for: error) }
        return response(for: error, body: ByteBuffer(bytes: GoogleErrorShape.body(for: error)))
    }

    static func gatewayError(from error: HTTPError, request: Request) -> GatewayError {
        switch error.status {
        case .notFound:
            return GatewayError(status: 404, type: "invalid_request_error", code: "not_found", param: nil, message: "Unknown request URL: \(request.method) \(request.uri.path).")
        case .contentTooLarge:
            return GatewayError(status: 413, type: "invalid_request_error", code: "request_too_large", param: nil, message: "The request body is too large.")
        case .methodNotAllowed:
            return GatewayError(status: 405, type: "invalid_request_error", code: "method_not_allowed", param: nil, message: "\(request.method) is not allowed on \(request.uri.path).")
        default:
            return GatewayError(status: Int(error.status.code), type: error.status.code >= 500 ? "server_error" : "invalid_request_error", code: nil, param: nil, message: error.body ?? error.status.reasonPhrase)
        }
    }

    static func response(for error: GatewayError) -> Response {
        response(for: error, body: ByteBuffer(data: (try? JSONEncoder().encode(ErrorResponse(error))) ?? Data()))
    }

    /// The status and headers every error answer shares, with its body in either shape.
    private static func response(for error: GatewayError, body: ByteBuffer) -> Response {
        var headers: HTTPFields = [.contentType: "application/json"]
        if let retry = error.retryAfterSeconds { headers[.retryAfter] = "\(retry)" }
        // The body of these requests may be unread (and endless): close instead of draining it.
        if [401, 408, 413].contains(error.status) { headers[.connection] = "close" }
        return Response(status: .init(code: error.status), headers: headers, body: .init(byteBuffer: body))
    }
}

extension GatewayError {
    /// A readable 400 for a JSON body that does not decode, naming the field at fault.
    static func from(decodingError error: any Error) -> GatewayError {
        guard let error = error as? DecodingError else { return .invalidBody("We could not parse the JSON body of your request.") }
        func name(_ path: [any CodingKey], _ key: (any CodingKey)? = nil) -> String {
            (path + (key.map { [$0] } ?? [])).map(\.stringValue).joined(separator: ".")
        }
        switch error {
        case .keyNotFound(let key, let context):
            let field = name(context.codingPath, key)
            return .invalidParameter(field, "Missing required parameter: '\(field)'.", code: "missing_required_parameter")
        case .typeMismatch(let type, let context) where !context.codingPath.isEmpty, .valueNotFound(let type, let context) where !context.codingPath.isEmpty:
            let field = name(context.codingPath)
            return .invalidParameter(field, "Invalid type for '\(field)': expected \(type == String.self ? "a string" : type == Int.self ? "an integer" : "\(type)").", code: "invalid_type")
        case .dataCorrupted(let context) where !context.codingPath.isEmpty:
            let field = name(context.codingPath)
            return .invalidParameter(field, "Invalid value for '\(field)': \(context.debugDescription)", code: "invalid_value")
        default:
            return .invalidBody("We could not parse the JSON body of your request. (The body must be a JSON object; see https://platform.openai.com/docs/api-reference/images.)")
        }
    }
}

extension Request {
    /// Collects the body up to `limit` (413 beyond it) and decodes it as JSON (400 naming the
    /// field at fault).
    func decodeJSON<T: Decodable>(_ type: T.Type, limit: Int) async throws(GatewayError) -> T {
        let body = try await collectBody(limit: limit)
        do {
            return try JSONDecoder().decode(type, from: body)
        } catch {
            throw .from(decodingError: error)
        }
    }
}

extension Request {
    /// How long a client may take to send its body once the head arrived.
    static let bodyTimeout = Duration.seconds(120)

    /// The whole body, up to `limit` (413 beyond it), within `bodyTimeout` (408: a client that
    /// trickles its body must not hold a connection and its memory forever).
    func collectBody(limit: Int) async throws(GatewayError) -> ByteBuffer {
        let body = self.body
        do {
            return try await Deadline.run(until: .now.advanced(by: Self.bodyTimeout), orThrow: GatewayError.requestTimeout("The request body did not arrive within \(Self.bodyTimeout).")) {
                try await body.collect(upTo: limit)
            }
        } catch let error as GatewayError {
            throw error
        } catch is NIOTooManyBytesError {
            throw .payloadTooLarge(limitBytes: limit)
        } catch {
            // The connection broke while the body was arriving.
            throw .clientDisconnected
        }
    }
}

/// One log line per request (method, route, path, status, model, error code, latency, and the
/// request id from `RequestIDMiddleware`, in every line of the request), never its query
/// string: signed image URLs (`signature=`) and `?key=` credentials live there. Also the HTTP
/// metrics: requests by route, model and status, their duration (a streamed answer until its
/// last byte), and requests in flight.
struct RequestLogMiddleware: RouterMiddleware {
    typealias Context = GatewayRequestContext
    let metrics: GatewayMetrics

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let start = ContinuousClock.now
        metrics.requestStarted()
        let observation = context.observation
        let logger = context.logger
        let method = request.method.rawValue
        let path = request.uri.path
        let finish: @Sendable (Int) -> Void = { [metrics] status in
            let elapsed = ContinuousClock.now - start
            let route = context.endpointPath ?? "unmatched"
            metrics.requestFinished(route: route, method: method, model: observation.model, status: status, errorCode: observation.errorCode, duration: elapsed)
            var metadata: Logger.Metadata = [
                "http.method": "\(method)", "http.route": "\(route)", "http.path": "\(path)", "http.status": "\(status)",
                "duration_ms": "\(Int((elapsed / .milliseconds(1)).rounded()))",
            ]
            if let model = observation.model { metadata["model"] = "\(model)" }
            if let code = observation.errorCode { metadata["error.code"] = "\(code)" }
            logger.info("request", metadata: metadata)
        }
        let response: Response
        do {
            response = try await next(request, context)
        } catch {
            finish(500)
            throw error
        }
        let status = Int(response.status.code)
        guard response.headers[.contentType]?.hasPrefix("text/event-stream") == true else {
            finish(status)
            return response
        }
        // A stream is done when its body is: count its time to the end.
        var streamed = response
        let body = response.body
        streamed.body = ResponseBody(contentLength: body.contentLength) { writer in
            defer { finish(status) }
            try await body.write(writer)
        }
        return streamed
    }
}
