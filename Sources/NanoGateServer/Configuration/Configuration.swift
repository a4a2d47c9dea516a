public import Foundation
public import NanoGateCore
public import Upstream
import Hummingbird
import NanoGateStorage

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
/// | | `NANOGATE_UPSTREAM_CA_FILE` | PEM file of certificate authorities trusted beside the system's for upstream and S3 calls | none |
/// | `--config` | `NANOGATE_CONFIG` | configuration file (YAML or JSON): settings and the `models:` list | none |
/// | | `NANOGATE_UPSTREAM_FLASH` / `NANOGATE_UPSTREAM_PRO` / `NANOGATE_UPSTREAM_FLASH31` | upstream model ids of the built-in catalog | `gemini-2.5-flash-image` / `gemini-3-pro-image` / `gemini-nano-banana-2.1` |
/// | | `NANOGATE_UPSTREAM_FLASH_FALLBACK` | tried in order when Google refuses the 2.5 id (comma-separated; empty: none) | `gemini-nano-banana-2.1` |
/// | | `NANOGATE_CHECK_MODELS` | read each channel's model list at start-up and every `NANOGATE_MODEL_CHECK_INTERVAL` | on |
/// | | `NANOGATE_MODEL_CHECK_INTERVAL` | seconds between two reads of a channel's model list (by any instance) | 3600 |
/// | | `NANOGATE_CHAT_IMAGES` | how chat replies carry images: `auto`, `markdown`, `images`, `both` | `auto` |
/// | | `NANOGATE_STREAM_IMAGES` | `url`: images answers with `response_format: url` stream Google's answer into the image store; `on`: also one-image `b64_json` generations on the Flash families stream into the client's answer (their cost becomes a trailer); `off`: every answer held whole | url |
/// | | `NANOGATE_ADMIN_TOKEN` | turns the admin API on, its bearer token | off |
/// | | `NANOGATE_CONSOLE` | the browser console at `/console/`: `on` (operators with the admin token, key holders with their key), `keys` (key holders only), `off` | on |
/// | | `NANOGATE_RESERVATION_LEASE` | seconds a credit reservation lives without renewal | 45 |
/// | | `NANOGATE_PRIORITY_PRICE_PERCENT` | the priority tier's price, in percent of standard (Google lists none yet) | 200 |
/// | | `NANOGATE_JOB_SERVICE_TIER` | the tier of background jobs that name none (`standard` or `flex`) | standard |
/// | | `NANOGATE_UPSTREAM_TIMEOUT` | seconds per upstream call | 300 |
/// | | `NANOGATE_METRICS_PORT` / `NANOGATE_METRICS_TOKEN` | `/metrics` on its own port / behind a bearer token | main port / open on loopback only |
/// | | `NANOGATE_METRICS_KEY_LABELS` | key ids as a metrics label | off |
/// | | `NANOGATE_LOG_FORMAT` | `text` or `json` (one object per line) | text |
/// | | `NANOGATE_UPSTREAM_DEADLINE` | seconds for all attempts of one image, queueing included | timeout × attempts |
/// | | `NANOGATE_UPSTREAM_QUEUE` | calls that may wait per channel beyond its `max_concurrency` (more get 503) | 4096 |
/// | | `NANOGATE_BREAKER_THRESHOLD` / `_COOLDOWN` | failures in a row that trip a channel / seconds it is skipped | 5 / 30 |
/// | | `NANOGATE_MAX_IMAGE_BYTES`, `NANOGATE_MAX_REQUEST_BYTES`, `NANOGATE_ALLOW_PRIVATE_FETCH`, `NANOGATE_FETCH_ALLOW_NETWORKS`, `NANOGATE_ALLOW_HTTP_FETCH`, `NANOGATE_FETCH_TIMEOUT`, `NANOGATE_MAX_FETCHES` | see `InputLimits` | |
/// | | `NANOGATE_IDLE_TIMEOUT` | seconds a connection may send nothing (idle keep-alive, a stalled head or body) | 30 |
/// | | `NANOGATE_TRUST_FORWARDED` | build image URLs from `X-Forwarded-Host`/`-Proto` (only behind a proxy that sets them) | off |
/// | | `NANOGATE_DATABASE_URL` | `postgres://user:pass@host:5432/db` (several instances share it) or `sqlite:///path` | `DATA_DIR/nanogate.sqlite` |
/// | | `NANOGATE_DATABASE_POOL_SIZE` | PostgreSQL connections per instance | 10 |
/// | | `NANOGATE_IMAGE_STORE` | `s3://BUCKET/PREFIX` (presigned URLs; `AWS_*` variables) or a folder (an NFS mount for several instances) | `DATA_DIR/images` |
/// | | `NANOGATE_INSTANCE_ID` | this instance's name on its reservations and in logs | random |
/// | | `NANOGATE_JOB_WORKERS` | background image jobs this instance runs at once | 4 |
/// | | `NANOGATE_BATCH_POLL` | seconds between polls of a batch at Google | 30 |
/// | | `NANOGATE_JOB_QUEUE_PER_KEY` | image jobs one key may have queued or running | 16 |
/// | | `NANOGATE_FILE_QUOTA_MB` | MiB one key's unexpired uploaded files may take | 256 |
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
    /// How long a connection is still read after an error answer to a body that has not ended
    /// (a 401 to an upload that trickles in): then it is closed (`ConnectionGuard`).
    public var errorLinger: Duration = .seconds(30)
    /// Whether `X-Forwarded-Host`/`-Proto` may decide where image URLs point. Off by default:
    /// any client could otherwise make the gateway hand out URLs to a host of its choosing.
    public var trustForwardedHeaders = false
    /// How chat replies carry images (`ChatImageStyle`).
    public var chatImages = ChatImageStyle.auto
    /// How much of Google's answer streams through instead of being held whole
    /// (`NANOGATE_STREAM_IMAGES`, `ImageStreaming`).
    public var streamImages = ImageStreaming.url
    /// Who may sign in to the browser console (`NANOGATE_CONSOLE`, `ConsoleAccess`).
    public var console = ConsoleAccess.on
    /// Whether a request's handler runs on its connection's event loop (`NANOGATE_LOOP_HANDLERS`,
    /// `EventLoopExecutor`) instead of Swift's shared pool: on by default (4K answers: −12% p50,
    /// −15% CPU, a fifth of the context switches in BENCHMARKS.md's A/B runs).
    public var handlersOnEventLoop = true
    /// Whether requests are traced (set by `nanogate serve` once swift-otel's exporter is
    /// bootstrapped from `OTEL_EXPORTER_OTLP_ENDPOINT`; off otherwise, with no cost per request).
    public var tracing = false
    /// How many `b64_json` answers may be held whole in memory at once before the next ones are
    /// spooled through files (`NANOGATE_HELD_ANSWERS`, `HeldAnswers`).
    public var heldAnswers = 32
    /// Whether `serve` reads each channel's model list (in the background: at start-up, every
    /// `modelCheckInterval`, and soon after a channel's project refused a model).
    public var checkModelsAtStart = true
    /// How old a channel's model list (read by any instance on the database) may grow.
    public var modelCheckInterval = Duration.seconds(3600)
    /// `GET /metrics` on its own port (`NANOGATE_METRICS_PORT`) instead of the main one.
    public var metricsPort: Int?
    /// The admin API on a listen address of its own (`NANOGATE_ADMIN_PORT`, on
    /// `NANOGATE_ADMIN_HOST` or the main host): it then leaves the public port.
    public var adminPort: Int?
    public var adminHost: String?
    /// The bearer token `/metrics` asks for (`NANOGATE_METRICS_TOKEN`); nil: open, but only on a
    /// loopback host (`metricsOnMainPort`).
    public var metricsToken: String?
    /// Key ids as a metrics label (`NANOGATE_METRICS_KEY_LABELS`): one series per key, so off by default.
    public var metricsKeyLabels = false
    /// `text` (swift-log's default lines) or `json` (one object per line), `NANOGATE_LOG_FORMAT`.
    public var logFormat = "text"
    /// Reservation leases and this instance's id.
    public var billing = BillingConfiguration()
    /// Turns the admin API (`/admin/v1/`) on; its bearer token (`NANOGATE_ADMIN_TOKEN`, at least
    /// 24 characters, random: `adminTokenProblem`).
    public var adminToken: String?
    /// Background image jobs one instance runs at once (`NANOGATE_JOB_WORKERS`).
    public var jobWorkers = 4
    /// Image jobs one key may have queued or running (`NANOGATE_JOB_QUEUE_PER_KEY`).
    public var jobQueuePerKey = 16
    /// Bytes one key's unexpired files may take (`NANOGATE_FILE_QUOTA_MB`).
    public var fileQuotaBytes = 256 * 1024 * 1024
    /// How often a submitted batch is polled at Google (`NANOGATE_BATCH_POLL`, seconds).
    public var batchPollInterval: Duration = .seconds(30)
    /// `NANOGATE_DATABASE_URL`: nil is the data directory's SQLite file.
    public var databaseURL: String?
    public var databasePoolSize = 10
    /// `NANOGATE_IMAGE_STORE`: nil is the data directory's `images` folder.
    public var imageStore: String?
    /// The `AWS_*` variables (credentials, region, endpoint) for an `s3://` image store.
    public var awsEnvironment: [String: String] = [:]

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

    /// Reads the environment part of the table above (over a configuration file's settings);
    /// flags override it in the CLI. A value that does not parse (`NANOGATE_PORT=80a`, a CIDR
    /// that is not one) is an error naming the variable, never a silent fall-back to the default.
    public static func fromEnvironment(
        _ environment: [String: String] = ProcessInfo.processInfo.environment, fileSettings: [String: String] = [:]
    ) throws(ConfigurationError) -> GatewayConfiguration {
        let settings = Settings(environment: environment, fileSettings: fileSettings)
        var configuration = GatewayConfiguration(
            host: settings.string("nanogate.host", default: "127.0.0.1"),
            port: settings.number("nanogate.port", default: 8080, minimum: 0),
            dataDirectory: URL(fileURLWithPath: settings.string("nanogate.data.dir", default: "./nanogate-data")),
            publicURL: settings.string("nanogate.public.url"),
            urlTTL: settings.seconds("nanogate.url.ttl", default: 4 * 3600),
            urlSecret: settings.string("nanogate.url.secret"),
            upstream: UpstreamConfiguration(settings: settings),
            catalog: .standard(settings: settings),
            inputs: InputLimits(settings: settings)
        )
        configuration.readServerSettings(settings)
        configuration.billing = BillingConfiguration(settings: settings)
        guard settings.problems.isEmpty else { throw ConfigurationError(problems: settings.problems) }
        return configuration
    }

    /// The server's own settings: connections, chat, metrics, the admin API, storage, jobs.
    private mutating func readServerSettings(_ settings: Settings) {
        keepAliveInterval = settings.seconds("nanogate.keepalive", default: 15)
        idleTimeout = settings.seconds("nanogate.idle.timeout", default: 30)
        trustForwardedHeaders = settings.flag("nanogate.trust.forwarded")
        chatImages = settings.choice("nanogate.chat.images", default: .auto)
        streamImages = settings.choice("nanogate.stream.images", default: .url)
        console = settings.choice("nanogate.console", default: .on)
        handlersOnEventLoop = settings.flag("nanogate.loop.handlers", default: handlersOnEventLoop)
        heldAnswers = settings.number("nanogate.held.answers", default: heldAnswers, minimum: 0)
        checkModelsAtStart = settings.flag("nanogate.check.models", default: true)
        modelCheckInterval = settings.seconds("nanogate.model.check.interval", default: 3600, minimum: 60)
        if settings.string("nanogate.metrics.port") != nil { metricsPort = settings.number("nanogate.metrics.port", default: 9090, minimum: 0) }
        if settings.string("nanogate.admin.port") != nil { adminPort = settings.number("nanogate.admin.port", default: 9091, minimum: 0) }
        adminHost = settings.string("nanogate.admin.host")
        metricsToken = settings.string("nanogate.metrics.token")
        metricsKeyLabels = settings.flag("nanogate.metrics.key.labels")
        logFormat = settings.choice("nanogate.log.format", default: LogFormat.text).rawValue
        if let token = settings.string("nanogate.admin.token") {
            if let problem = Self.adminTokenProblem(token) { settings.problem(problem) } else { adminToken = token }
        }
        databaseURL = settings.string("nanogate.database.url")
        if let url = databaseURL {
            do { _ = try DatabaseLocation.from(url: url, dataDirectory: dataDirectory) } catch { settings.problem(error.description) }
        }
        databasePoolSize = settings.number("nanogate.database.pool.size", default: 10)
        jobWorkers = settings.number("nanogate.job.workers", default: 4)
        jobQueuePerKey = settings.number("nanogate.job.queue.per.key", default: 16)
        fileQuotaBytes = settings.number("nanogate.file.quota.mb", default: 256) * 1024 * 1024
        batchPollInterval = settings.seconds("nanogate.batch.poll", default: 30)
        imageStore = settings.string("nanogate.image.store")
        awsEnvironment = settings.environment.filter { $0.key.hasPrefix("AWS_") }
        if let store = imageStore, store.hasPrefix("s3://") {
            do { _ = try S3Configuration.fromEnvironment(awsEnvironment, storeURL: store) } catch { settings.problem(error.description) }
        }
    }
}

/// `NANOGATE_LOG_FORMAT`.
enum LogFormat: String, CaseIterable {
    case text, json
}

extension GatewayConfiguration {
    /// Whether `/metrics` is served on the main port. A scrape shows what keys were charged and
    /// what Google cost, so on an address others can reach it needs `NANOGATE_METRICS_TOKEN`
    /// (or its own port, `NANOGATE_METRICS_PORT`, which takes it off the main port anyway).
    public var metricsOnMainPort: Bool {
        metricsPort == nil && (metricsToken != nil || Self.isLoopback(host: host))
    }

    /// `localhost`, `127.x.x.x` or `::1`: only this machine can connect.
    static func isLoopback(host: String) -> Bool {
        let host = host.lowercased()
        if host == "localhost" || host == "::1" || host == "[::1]" { return true }
        let parts = host.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts[0] == "127" && parts.allSatisfy { UInt8($0) != nil }
    }

    /// How long an `Idempotency-Key` claim still counts as running: longer than the longest
    /// request it guards (its input images fetched one after another, each within the fetch
    /// timeout, then every attempt at the longest timeout, or the deadline), so a retry never
    /// starts a second, charged run while the first is still at Google.
    var idempotencyStaleAfter: TimeInterval {
        let perAttempt = upstream.longestTimeout.components.seconds
        let attempts = Int64(upstream.maxAttempts)
        let longest = max(perAttempt * attempts, upstream.deadline?.components.seconds ?? 0)
        let fetching = Int64(catalog.models.map(\.maxInputImages).max() ?? 0) * inputs.fetchTimeout.components.seconds
        return TimeInterval(longest + fetching + 60)
    }

    /// Example values (the README's) that must never guard a real admin API.
    static let exampleAdminTokens = ["change-me-to-24-or-more-characters"]

    /// Why `token` cannot be the admin token, or nil when it can: at least 24 characters, not an
    /// example, and not guessable (at least 10 different characters and about 80 bits by a
    /// rough estimate, length × log2(different characters): `aaaa…` or `abcabc…` are refused).
    static func adminTokenProblem(_ token: String) -> String? {
        let advice = "(it guards every key and all the money; make one with `openssl rand -hex 32`)"
        guard token.count >= 24 else { return "NANOGATE_ADMIN_TOKEN must be at least 24 characters \(advice)" }
        let lowered = token.lowercased()
        if exampleAdminTokens.contains(lowered) || lowered.contains("change-me") || lowered.contains("changeme") {
            return "NANOGATE_ADMIN_TOKEN is the documentation's example value; set a random one \(advice)"
        }
        let distinct = Set(token).count
        let bits = Double(token.count) * log2(Double(distinct))
        guard distinct >= 10, bits >= 80 else {
            return "NANOGATE_ADMIN_TOKEN is too easy to guess (\(distinct) different characters); set a random one \(advice)"
        }
        return nil
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

/// Environment values the gateway cannot use, every one of them named.
public struct ConfigurationError: Error, CustomStringConvertible {
    public var problems: [String]

    public var description: String { "Invalid configuration: " + problems.joined(separator: "; ") + "." }
}

/// Who may sign in to the browser console at `/console/` (`NANOGATE_CONSOLE`).
public enum ConsoleAccess: String, Sendable, CaseIterable {
    /// No console: `/console` answers 404.
    case off
    /// Key holders only, whatever the admin token.
    case keys
    /// Key holders, and the operator with `NANOGATE_ADMIN_TOKEN` (when it is set).
    case on
}

/// How much of Google's answer streams through the gateway instead of being held whole
/// (`NANOGATE_STREAM_IMAGES`, issue 24).
public enum ImageStreaming: String, Sendable, CaseIterable {
    /// Every answer held whole, as before issue 24.
    case off
    /// `url` answers stream into the image store: no client can tell the difference, so this
    /// is the default.
    case url
    /// Also one-image `b64_json` generations stream into the client's answer. Their charge is
    /// known only after the image, so `X-NanoGate-Cost` becomes a trailer (and `usage.cost`).
    case on
}
