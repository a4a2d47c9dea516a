import _CryptoExtras
import AsyncHTTPClient
import Crypto
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOFoundationCompat

/// A Google service account, as its JSON key file holds it.
public struct ServiceAccount: Sendable, Decodable, Equatable {
    public var clientEmail: String
    public var privateKey: String
    public var privateKeyID: String?
    public var projectID: String?
    public var tokenURI: String?

    enum CodingKeys: String, CodingKey {
        case clientEmail = "client_email"
        case privateKey = "private_key"
        case privateKeyID = "private_key_id"
        case projectID = "project_id"
        case tokenURI = "token_uri"
    }

    /// Reads and checks a key file (at start-up: a bad file stops the gateway with its name).
    public static func load(path: String) throws(UpstreamConfigurationError) -> ServiceAccount {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw UpstreamConfigurationError("cannot read the service account file \(path)")
        }
        guard let account = try? JSONDecoder().decode(ServiceAccount.self, from: data) else {
            throw UpstreamConfigurationError("\(path) is not a service account key (client_email and private_key are required)")
        }
        guard (try? _RSA.Signing.PrivateKey(pemRepresentation: account.privateKey)) != nil else {
            throw UpstreamConfigurationError("the private_key in \(path) is not an RSA key in PEM form")
        }
        return account
    }
}

/// A configuration problem found while building the upstream layer.
public struct UpstreamConfigurationError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// OAuth2 access tokens for a service account (Google's "two-legged" flow): a JWT signed RS256
/// with the account's key, exchanged at the token endpoint for a bearer token that lasts an
/// hour. The token is cached and fetched again five minutes before it expires; callers that
/// need one while a fetch is under way share that fetch.
actor AccessTokenProvider {
    let account: ServiceAccount
    let tokenURL: String
    let httpClient: HTTPClient
    static let scope = "https://www.googleapis.com/auth/cloud-platform"

    private var cached: (token: String, refreshAt: ContinuousClock.Instant)?
    private var inFlight: Task<String, any Error>?
    private let key: _RSA.Signing.PrivateKey

    nonisolated let projectID: String?

    init(account: ServiceAccount, tokenURL: String?, httpClient: HTTPClient) throws(UpstreamConfigurationError) {
        self.account = account
        self.tokenURL = tokenURL ?? account.tokenURI ?? "https://oauth2.googleapis.com/token"
        self.httpClient = httpClient
        self.projectID = account.projectID
        do {
            self.key = try _RSA.Signing.PrivateKey(pemRepresentation: account.privateKey)
        } catch {
            throw UpstreamConfigurationError("the service account's private_key is not an RSA key in PEM form")
        }
    }

    /// A valid access token (cached, or fetched now).
    func token(logger: Logger) async throws(UpstreamError) -> String {
        if let cached, cached.refreshAt > .now { return cached.token }
        let task: Task<String, any Error>
        if let inFlight {
            task = inFlight
        } else {
            task = Task { try await self.fetch(logger: logger) }
            inFlight = task
        }
        do {
            let token = try await task.value
            inFlight = nil
            return token
        } catch {
            inFlight = nil
            throw (error as? UpstreamError) ?? UpstreamError(.unreachable, detail: "the token endpoint could not be reached")
        }
    }

    /// Forgets the cached token (Google refused it).
    func invalidate() {
        cached = nil
    }

    /// The signed assertion: `{"alg":"RS256","typ":"JWT","kid":…}.{iss,scope,aud,iat,exp}.signature`.
    func assertion(now: Date = Date()) throws -> String {
        var header: [String: String] = ["alg": "RS256", "typ": "JWT"]
        if let kid = account.privateKeyID { header["kid"] = kid }
        let issued = Int(now.timeIntervalSince1970)
        let claims: [String: any Sendable] = [
            "iss": account.clientEmail, "scope": Self.scope, "aud": tokenURL, "iat": issued, "exp": issued + 3600,
        ]
        let encodedHeader = Self.base64URL(try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys]))
        let encodedClaims = Self.base64URL(try JSONSerialization.data(withJSONObject: claims, options: [.sortedKeys]))
        let signingInput = "\(encodedHeader).\(encodedClaims)"
        let signature = try key.signature(for: Data(signingInput.utf8), padding: .insecurePKCS1v1_5)
        return "\(signingInput).\(Self.base64URL(signature.rawRepresentation))"
    }

    private func fetch(logger: Logger) async throws -> String {
        var request = HTTPClientRequest(url: tokenURL)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/x-www-form-urlencoded")
        let form = "grant_type=" + "urn:ietf:params:oauth:grant-type:jwt-bearer".addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
            + "&assertion=" + (try assertion())
        request.body = .bytes(ByteBuffer(string: form))
        let response: HTTPClientResponse
        let body: ByteBuffer
        do {
            response = try await httpClient.execute(request, timeout: .seconds(30))
            body = try await response.body.collect(upTo: 1024 * 1024)
        } catch {
            throw UpstreamError(.unreachable, detail: "the token endpoint could not be reached")
        }
        struct Answer: Decodable {
            var access_token: String?
            var expires_in: Double?
            var error: String?
            var error_description: String?
        }
        let answer = try? JSONDecoder().decode(Answer.self, from: body)
        guard response.status == .ok, let token = answer?.access_token, !token.isEmpty else {
            let reason = [answer?.error, answer?.error_description].compactMap { $0 }.joined(separator: ": ")
            logger.error("the token endpoint refused the service account", metadata: ["http.status": "\(response.status.code)", "oauth.error": "\(reason)"])
            // 400/401 (invalid_grant, a deleted key) is the operator's to fix; 5xx may pass.
            let refused = (400..<500).contains(response.status.code)
            throw UpstreamError(refused ? .authFailed : .serverError, status: Int(response.status.code), detail: "token endpoint: \(reason.isEmpty ? "no token" : String(reason.prefix(200)))")
        }
        let lifetime = min(max(60, answer?.expires_in ?? 3600), 86_400)
        cached = (token, ContinuousClock.now.advanced(by: .seconds(max(30, lifetime - 300))))
        return token
    }

    static func base64URL(_ data: some DataProtocol) -> String {
        Data(data).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }
}
