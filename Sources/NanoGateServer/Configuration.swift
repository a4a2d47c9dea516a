public import Foundation
public import NanoGateCore
public import Upstream
import Hummingbird

/// Everything `nanogate serve` can be told, in one place.
///
/// | flag | environment | meaning | default |
/// |---|---|---|---|
/// | `--host` | `NANOGATE_HOST` | address to listen on | `127.0.0.1` |
/// | `--port` | `NANOGATE_PORT` | port | `8080` |
/// | `--data-dir` | `NANOGATE_DATA_DIR` | database, images, URL-signing secret | `./nanogate-data` |
/// | `--public-url` | `NANOGATE_PUBLIC_URL` | base of image URLs | the request's `Host` |
/// | | `NANOGATE_URL_TTL` | seconds an image URL stays valid | 14400 (4 h) |
/// | | `NANOGATE_URL_SECRET` | HMAC secret for image URLs (share it across instances) | generated into the data dir |
/// | | `GEMINI_API_KEY` | Google key(s), comma-separated | none |
/// | | `NANOGATE_GEMINI_BASE_URL` | Gemini API base | Google's |
/// | | `NANOGATE_UPSTREAM_FLASH` / `NANOGATE_UPSTREAM_PRO` | upstream model ids | `gemini-2.5-flash-image` / `gemini-3-pro-image-preview` |
/// | | `NANOGATE_UPSTREAM_TIMEOUT` | seconds per upstream call | 300 |
/// | | `NANOGATE_MAX_IMAGE_BYTES`, `NANOGATE_MAX_REQUEST_BYTES`, `NANOGATE_ALLOW_PRIVATE_FETCH`, `NANOGATE_FETCH_ALLOW_NETWORKS`, `NANOGATE_ALLOW_HTTP_FETCH`, `NANOGATE_FETCH_TIMEOUT`, `NANOGATE_MAX_FETCHES` | see `InputLimits` | |
/// | | `NANOGATE_IDLE_TIMEOUT` | seconds a connection may send nothing (idle keep-alive, a stalled head or body) | 30 |
/// | | `NANOGATE_TRUST_FORWARDED` | build image URLs from `X-Forwarded-Host`/`-Proto` (only behind a proxy that sets them) | off |
public struct GatewayConfiguration: Sendable {
    public var host: String
    public var port: Int
    public var dataDirectory: URL
    /// Base of the image URLs handed out (no trailing slash); nil derives it from each request's `Host`.
    public var publicURL: String?

    /// `publicURL` without a trailing slash, ready to prefix `/v1/files/images/…`.
    var publicBaseURL: String? {
        publicURL.map { $0.hasSuffix("/") ? String($0.dropLast()) : $0 }
    }
    public var urlTTL: Duration
    public var urlSecret: String?
    public var upstream: UpstreamConfiguration
    public var catalog: ModelCatalog
    /// Largest JSON body accepted on the generations endpoint.
    public var maxJSONBodyBytes: Int
    /// Limits on input images (edits, chat).
    public var inputs: InputLimits
    /// How often a silent chat stream gets an SSE keep-alive comment (`NANOGATE_KEEPALIVE`, seconds).
    public var keepAliveInterval: Duration = .seconds(15)
    /// How long a connection may send nothing while no request is being answered.
    public var idleTimeout: Duration = .seconds(30)
    /// Whether `X-Forwarded-Host`/`-Proto` may decide where image URLs point. Off by default:
    /// any client could otherwise make the gateway hand out URLs to a host of its choosing.
    public var trustForwardedHeaders = false

    public init(
        host: String = "127.0.0.1", port: Int = 8080, dataDirectory: URL, publicURL: String? = nil,
        urlTTL: Duration = .seconds(4 * 3600), urlSecret: String? = nil, upstream: UpstreamConfiguration,
        catalog: ModelCatalog = .standard(), maxJSONBodyBytes: Int = 1024 * 1024, inputs: InputLimits = InputLimits()
    ) {
        self.inputs = inputs
        self.host = host
        self.port = port
        self.dataDirectory = dataDirectory
        self.publicURL = publicURL
        self.urlTTL = urlTTL
        self.urlSecret = urlSecret
        self.upstream = upstream
        self.catalog = catalog
        self.maxJSONBodyBytes = maxJSONBodyBytes
    }

    /// Reads the environment part of the table above; flags override it in the CLI.
    public static func fromEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment) -> GatewayConfiguration {
        func flag(_ name: String) -> Bool { ["1", "true", "yes"].contains(environment[name]?.lowercased() ?? "") }
        let keys = (environment["GEMINI_API_KEY"] ?? "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        var configuration = GatewayConfiguration(
            host: environment["NANOGATE_HOST"] ?? "127.0.0.1",
            port: environment["NANOGATE_PORT"].flatMap(Int.init) ?? 8080,
            dataDirectory: URL(fileURLWithPath: environment["NANOGATE_DATA_DIR"] ?? "./nanogate-data"),
            publicURL: environment["NANOGATE_PUBLIC_URL"].flatMap { $0.isEmpty ? nil : $0 },
            urlTTL: .seconds(environment["NANOGATE_URL_TTL"].flatMap(Int.init) ?? 4 * 3600),
            urlSecret: environment["NANOGATE_URL_SECRET"],
            upstream: UpstreamConfiguration(
                baseURL: environment["NANOGATE_GEMINI_BASE_URL"] ?? "https://generativelanguage.googleapis.com",
                apiKeys: keys,
                requestTimeout: .seconds(environment["NANOGATE_UPSTREAM_TIMEOUT"].flatMap(Int.init) ?? 300),
                maxAttempts: environment["NANOGATE_UPSTREAM_ATTEMPTS"].flatMap(Int.init) ?? 3
            ),
            catalog: .standard(
                flashUpstream: environment["NANOGATE_UPSTREAM_FLASH"] ?? "gemini-2.5-flash-image",
                proUpstream: environment["NANOGATE_UPSTREAM_PRO"] ?? "gemini-3-pro-image-preview"
            ),
            inputs: InputLimits(
                maxImageBytes: environment["NANOGATE_MAX_IMAGE_BYTES"].flatMap(Int.init) ?? 20 * 1024 * 1024,
                maxRequestBytes: environment["NANOGATE_MAX_REQUEST_BYTES"].flatMap(Int.init) ?? 64 * 1024 * 1024,
                fetchTimeout: .seconds(environment["NANOGATE_FETCH_TIMEOUT"].flatMap(Int.init) ?? 20),
                allowPrivateFetch: flag("NANOGATE_ALLOW_PRIVATE_FETCH"),
                allowedNetworks: (environment["NANOGATE_FETCH_ALLOW_NETWORKS"] ?? "").split(separator: ",").compactMap { IPNetwork(String($0)) },
                allowPlainHTTP: flag("NANOGATE_ALLOW_HTTP_FETCH"),
                maxConcurrentFetches: environment["NANOGATE_MAX_FETCHES"].flatMap(Int.init) ?? 32
            )
        )
        if let seconds = environment["NANOGATE_KEEPALIVE"].flatMap(Int.init), seconds > 0 { configuration.keepAliveInterval = .seconds(seconds) }
        if let seconds = environment["NANOGATE_IDLE_TIMEOUT"].flatMap(Int.init), seconds > 0 { configuration.idleTimeout = .seconds(seconds) }
        configuration.trustForwardedHeaders = flag("NANOGATE_TRUST_FORWARDED")
        return configuration
    }
}

/// Where image URLs point: the configured public URL, else the address the client used.
struct PublicURL: Sendable {
    /// `NANOGATE_PUBLIC_URL` without a trailing slash.
    let configured: String?
    let trustForwardedHeaders: Bool

    /// `scheme://host[:port]` for this request. `X-Forwarded-*` count only when the operator
    /// said a proxy sets them.
    func base(of request: Request) -> String {
        if let configured { return configured }
        let forwardedProto = trustForwardedHeaders ? request.headers[.init("X-Forwarded-Proto")!] : nil
        let forwardedHost = trustForwardedHeaders ? request.headers[.init("X-Forwarded-Host")!] : nil
        return "\(forwardedProto ?? "http")://\(forwardedHost ?? request.head.authority ?? "127.0.0.1")"
    }
}
