import Foundation
import HTTPTypes
import Logging
import Hummingbird
import NanoGateCore
import NanoGateStorage

/// What the console's guards need: who may sign in, how long a session lives, and how to tell
/// this gateway's own origin (directly, or behind a proxy that says where it is).
struct ConsoleSettings: Sendable {
    /// The operator's sign-in: `NANOGATE_ADMIN_TOKEN`, nil when it is unset, when
    /// `NANOGATE_CONSOLE` is `keys`, or on the public port when the admin API listens apart.
    var adminToken: String?
    var publicURL: PublicURL
    /// A session unused this long ends.
    var idle: Duration = .seconds(3600)
    /// A session ends this long after sign-in, however busy.
    var absolute: Duration = .seconds(12 * 3600)

    static let cookieName = "ng_console"
    /// The header only the console's own scripts send: a page of another site cannot add it to
    /// a request here without a CORS preflight, which `/console` never grants.
    static let csrfHeader = HTTPField.Name("X-NanoGate-Console")!
    /// Which key pays for an operator's playground request (its name).
    static let payingKeyHeader = HTTPField.Name("X-NanoGate-Console-Key")!
    static let secFetchSite = HTTPField.Name("Sec-Fetch-Site")!
    static let origin = HTTPField.Name("Origin")!

    /// The session cookie: opaque, HttpOnly, SameSite=Strict, limited to the console's path,
    /// Secure when the browser reached us over HTTPS. `maxAge` 0 deletes it.
    func cookie(_ value: String, request: Request, maxAge: Int) -> Cookie {
        Cookie(
            name: Self.cookieName, value: value, maxAge: maxAge, path: "/console",
            secure: publicURL.base(of: request).hasPrefix("https://"), httpOnly: true, sameSite: .strict
        )
    }

    /// The `host[:port]` values a same-origin request may name in `Origin`: the address the
    /// request reached, the one a trusted proxy forwarded, and `NANOGATE_PUBLIC_URL`'s.
    func ownAuthorities(of request: Request) -> Set<String> {
        var own = Set<String>()
        if let authority = request.head.authority { own.insert(authority.lowercased()) }
        if publicURL.trustForwardedHeaders, let forwarded = request.headers[HTTPField.Name("X-Forwarded-Host")!] {
            own.insert(forwarded.lowercased())
        }
        if let configured = publicURL.configured, let url = URL(string: configured), let host = url.host {
            own.insert((url.port.map { "\(host):\($0)" } ?? host).lowercased())
        }
        return own
    }
}

/// Every console answer: a strict Content-Security-Policy (no inline script or style, nothing
/// from elsewhere), no framing, no referrer (image URLs carry signatures) and no caching of pages.
struct ConsoleHeadersMiddleware: RouterMiddleware {
    typealias Context = GatewayRequestContext

    /// The policy: images also from (and fetched from) the bucket's origin when `url` answers point there.
    let policy: String

    init(imageOrigin: String? = nil) {
        policy = [
            "default-src 'none'", "script-src 'self'", "style-src 'self'", "img-src 'self' data: blob:" + (imageOrigin.map { " " + $0 } ?? ""),
            "connect-src 'self'" + (imageOrigin.map { " " + $0 } ?? ""), "form-action 'self'", "frame-ancestors 'none'", "base-uri 'none'",
        ].joined(separator: "; ")
    }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var response: Response
        do {
            response = try await next(request, context)
        } catch let error as GatewayError {
            response = OpenAIErrorMiddleware<GatewayRequestContext>.response(for: error, request: request)
        }
        response.headers[HTTPField.Name("Content-Security-Policy")!] = policy
        response.headers[HTTPField.Name("Referrer-Policy")!] = "no-referrer"
        response.headers[HTTPField.Name("X-Frame-Options")!] = "DENY"
        response.headers[HTTPField.Name("X-Content-Type-Options")!] = "nosniff"
        if response.headers[.cacheControl] == nil { response.headers[.cacheControl] = "no-store" }
        return response
    }
}

/// Reads the session behind the `ng_console` cookie, and a key holder's key (once, as the
/// request's `identity`). Pages without one go to the sign-in page; the console's API answers
/// 401; operator-only parts answer 403 to a key holder.
struct ConsoleSessionMiddleware: RouterMiddleware {
    typealias Context = GatewayRequestContext
    enum Requirement: Sendable { case page, api, operatorOnly }
    let store: SQLStore
    let settings: ConsoleSettings
    let requirement: Requirement

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var context = context
        if let id = request.cookies[ConsoleSettings.cookieName]?.value, !id.isEmpty {
            context.console = try await store.consoleSession(id: id, idle: settings.idle, absolute: settings.absolute)
        }
        if let session = context.console, session.role == .operator, settings.adminToken == nil {
            context.console = nil  // the operator's sign-in was turned off since
        }
        if let keyID = context.console?.keyID {
            // The session's check already found the key active; nil only if it was deleted since.
            context.identity = try await store.key(id: keyID)
            if context.identity == nil { context.console = nil }
        }
        guard let session = context.console else {
            if requirement == .page { return Response(status: .seeOther, headers: [.location: "./"]) }
            throw GatewayError.unauthorized("Sign in to the console first.", code: "console_session_required")
        }
        if requirement == .operatorOnly && session.role != .operator {
            throw GatewayError(status: 403, type: "invalid_request_error", code: "operator_only", param: nil, message: "This part of the console is the operator's.")
        }
        return try await next(request, context)
    }
}

/// Refuses a state-changing console request that another site could have made: it must carry
/// the console's own header, an `Origin` (when the browser sends one other than `null`, which
/// `Referrer-Policy: no-referrer` makes it send for same-origin posts) naming this gateway, and
/// `Sec-Fetch-Site: same-origin` where the browser sends that header at all.
struct ConsoleCSRFGuard: RouterMiddleware {
    typealias Context = GatewayRequestContext
    let settings: ConsoleSettings

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard [.get, .head, .options].contains(request.method) || isSameOrigin(request) else {
            throw GatewayError(
                status: 403, type: "invalid_request_error", code: "csrf_rejected", param: nil,
                message: "This console request did not come from the console's own page."
            )
        }
        return try await next(request, context)
    }

    func isSameOrigin(_ request: Request) -> Bool {
        guard request.headers[ConsoleSettings.csrfHeader] == "1" else { return false }
        if let site = request.headers[ConsoleSettings.secFetchSite], site != "same-origin" { return false }
        if let origin = request.headers[ConsoleSettings.origin], origin != "null" {
            guard let url = URL(string: origin), let host = url.host else { return false }
            let authority = (url.port.map { "\(host):\($0)" } ?? host).lowercased()
            return settings.ownAuthorities(of: request).contains(authority)
        }
        return true
    }
}

/// The key a console API request acts as: the key holder's own (set by
/// `ConsoleSessionMiddleware`), or for the operator the key named in `X-NanoGate-Console-Key`
/// (the playground's "Paying key"). From then on the request is that key's like any other: its
/// models, limits, credit and usage rows.
struct ConsoleKeyIdentity: RouterMiddleware {
    typealias Context = GatewayRequestContext
    let store: SQLStore

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var context = context
        if context.console?.role == .operator {
            guard let name = request.headers[ConsoleSettings.payingKeyHeader], !name.isEmpty else {
                throw GatewayError.invalidParameter(nil, "Choose the key that pays for this request.", code: "console_key_required")
            }
            // Active keys only: a revoked key is not found.
            guard let named = try await store.key(named: name) else {
                throw GatewayError.invalidParameter(nil, "No key is named '\(name)'.", code: "not_found")
            }
            context.identity = named
        }
        guard let key = context.identity else { throw GatewayError.unauthorized("Sign in to the console first.", code: "console_session_required") }
        try APIKeyAuthenticator.checkUsable(key)
        context.logger[metadataKey: "nanogate.key_id"] = "\(key.id)"
        return try await next(request, context)
    }
}
