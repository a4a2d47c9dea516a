public import Hummingbird
import NanoGateStorage
import NanoGateCore
import Foundation
import Logging
public import NIOCore

/// The per-request context: Hummingbird's core storage plus the authenticated key.
public struct GatewayRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    /// Set by `APIKeyAuthenticator` on every `/v1` route.
    var apiKey: APIKey?
    /// The client's connection (to answer `Expect: 100-continue` once the key is known).
    let channel: any Channel

    public init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
        self.apiKey = nil
        self.channel = source.channel
    }

    /// Bodies are collected with explicit per-endpoint limits; this is the ceiling for any of them.
    public var maxUploadSize: Int { 64 * 1024 * 1024 }
}

/// Bearer-key authentication: missing, unknown or revoked keys get a 401 before any work is done.
struct APIKeyAuthenticator: RouterMiddleware {
    typealias Context = GatewayRequestContext
    let keys: any KeyStore

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard let header = request.headers[.authorization] else {
            throw GatewayError.unauthorized("You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.")
        }
        let parts = header.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else {
            throw GatewayError.unauthorized("The Authorization header must be 'Bearer YOUR_KEY'.")
        }
        let secret = parts[1].trimmingCharacters(in: .whitespaces)
        guard let key = try await keys.activeKey(secret: secret) else {
            throw GatewayError.unauthorized("Incorrect API key provided: \(secret.prefix(6))****. It is unknown or has been revoked.")
        }
        var context = context
        context.apiKey = key
        context.logger[metadataKey: "nanogate.key_id"] = "\(key.id)"
        if request.headers[.expect]?.lowercased() == "100-continue" { ConnectionGuard.sendContinue(on: context.channel) }
        return try await next(request, context)
    }
}
