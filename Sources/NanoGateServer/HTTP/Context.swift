public import Hummingbird
public import HummingbirdAuth
import HTTPTypes
public import NanoGateStorage
import NanoGateCore
import Foundation
import Logging
import NIOCore

/// The per-request context: Hummingbird's core storage plus the authenticated key (its
/// `identity`, hummingbird-auth's convention).
public struct GatewayRequestContext: AuthRequestContext {
    public var coreContext: CoreRequestContextStorage
    /// Set by `APIKeyAuthenticator` on every `/v1` route.
    public var identity: APIKey?
    /// The browser console's session, on `/console` routes (`ConsoleSessionMiddleware`).
    var console: ConsoleSession?
    /// The client's connection (to answer `Expect: 100-continue` once the key is known).
    let channel: any Channel
    /// `x-request-id`: the client's (when it is a sane token), else one the gateway made.
    var requestID: String
    /// When the request arrived, for the usage log's latency.
    let started = ContinuousClock.now
    /// The model and error code the handler met, for the request log line and the metrics.
    let observation = RequestObservation()

    public init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
        self.identity = nil
        self.channel = source.channel
        self.requestID = ""
    }

    /// Bodies are collected with explicit per-endpoint limits; this is the ceiling for any of them.
    public var maxUploadSize: Int { 64 * 1024 * 1024 }

    /// The key that made the request, on a route behind `APIKeyAuthenticator` (which answers
    /// 401 itself when there is none; this guards a route mounted without it).
    func requireKey() throws(GatewayError) -> APIKey {
        guard let identity else { throw GatewayError.unauthorized("Missing API key.") }
        return identity
    }
}

/// Key authentication (`Authorization: Bearer`, or Google's `x-goog-api-key` and, on the native
/// routes, `?key=`): missing, unknown or revoked keys get a 401 before any work is done.
struct APIKeyAuthenticator: AuthenticatorMiddleware {
    typealias Context = GatewayRequestContext
    let keys: KeyCache

    /// The key, or a 401 naming what is wrong (never nil: no route behind it is open).
    func authenticate(request: Request, context: Context) async throws -> APIKey? {
        let secret: String
        if let header = request.headers[.authorization] {
            let parts = header.split(separator: " ", maxSplits: 1)
            guard parts.count == 2, parts[0].lowercased() == "bearer" else {
                throw GatewayError.unauthorized("The Authorization header must be 'Bearer YOUR_KEY'.")
            }
            secret = parts[1].trimmingCharacters(in: .whitespaces)
        } else if let header = request.headers[GoogleKey.header], !header.isEmpty {
            // Google's SDKs send the key this way (the native routes; accepted everywhere).
            secret = header.trimmingCharacters(in: .whitespaces)
        } else if GoogleErrorShape.applies(to: request), let query = request.uri.queryParameters.get("key"), !query.isEmpty {
            // `?key=`, as Google's REST examples do: only on the native routes.
            secret = query
        } else {
            throw GatewayError.unauthorized("You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.")
        }
        guard let key = try await keys.activeKey(secret: secret) else {
            throw GatewayError.unauthorized("Incorrect API key provided: \(secret.prefix(6))****. It is unknown or has been revoked.")
        }
        try Self.checkUsable(key)
        return key
    }

    /// A 401 for a key that exists but may not be used now: disabled by the operator, or past
    /// its expiry (the browser console's requests pass the same check).
    static func checkUsable(_ key: APIKey) throws(GatewayError) {
        if key.disabled {
            throw GatewayError.unauthorized("This API key is disabled. Ask the operator to enable it.", code: "api_key_disabled")
        }
        if let expires = key.expiresAt, expires <= Date() {
            throw GatewayError.unauthorized("This API key expired on \(ISO8601DateFormatter().string(from: expires)).", code: "api_key_expired")
        }
    }

    /// hummingbird-auth's `handle`, plus what follows acceptance: the key in every log line, and
    /// `100 Continue` to a client waiting to send its body.
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var context = context
        guard let key = try await authenticate(request: request, context: context) else { return try await next(request, context) }
        context.identity = key
        context.logger[metadataKey: "nanogate.key_id"] = "\(key.id)"
        if request.headers[.expect]?.lowercased() == "100-continue" { ConnectionGuard.sendContinue(on: context.channel) }
        return try await next(request, context)
    }
}

/// `x-request-id` on every answer: the client's own id when it sent a sane one (up to 128
/// letters, digits and `-_.:`), else a new one. The usage log row carries the same id.
struct RequestIDMiddleware: RouterMiddleware {
    typealias Context = GatewayRequestContext
    static let header = HTTPField.Name("x-request-id")!

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var context = context
        if let given = request.headers[Self.header], (1...128).contains(given.utf8.count),
            given.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || [0x2D, 0x5F, 0x2E, 0x3A].contains($0) })
        {
            context.requestID = given
        } else {
            context.requestID = "req_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()
        }
        context.logger[metadataKey: "request_id"] = "\(context.requestID)"
        do {
            var response = try await next(request, context)
            response.headers[Self.header] = context.requestID
            return response
        } catch let error as GatewayError {
            var response = OpenAIErrorMiddleware<GatewayRequestContext>.response(for: error, request: request)
            response.headers[Self.header] = context.requestID
            return response
        }
    }
}
