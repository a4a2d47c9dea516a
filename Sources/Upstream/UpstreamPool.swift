import NIOHTTP1
public import Logging
import NanoGateCore
public import NIOCore
import NIOSSL
public import AsyncHTTPClient
import Foundation
import NIOFoundationCompat
public import NIOPosix
import Synchronization
import Tracing

/// Where and how the gateway reaches its upstreams.
///
/// | key (environment) | meaning | default |
/// |---|---|---|
/// | `NANOGATE_GEMINI_BASE_URL` | Gemini API base of the `GEMINI_API_KEY` shorthand channel | `https://generativelanguage.googleapis.com` |
/// | `GEMINI_API_KEY` | one key, or several separated by commas: one `gemini` channel | none |
/// | `channels:` (configuration file) | the operator's channels (`ChannelConfiguration`) | none |
/// | `NANOGATE_UPSTREAM_TIMEOUT` | seconds one upstream call may take, every size (a channel's `timeout` overrides) | per size |
/// | `NANOGATE_UPSTREAM_SIZE_TIMEOUTS` | seconds per image size when no single timeout is set, e.g. `1K=120,2K=180,4K=360` | `512=120,1K=120,2K=180,4K=360` |
/// | `NANOGATE_UPSTREAM_ATTEMPTS` | attempts per image, across channels and keys | 3 |
/// | `NANOGATE_UPSTREAM_DEADLINE` | seconds all attempts of one image may take, queueing included | timeout × attempts |
/// | `NANOGATE_UPSTREAM_QUEUE` | calls that may wait per channel once it is at `max_concurrency` | 4096 |
/// | `NANOGATE_BREAKER_THRESHOLD` / `NANOGATE_BREAKER_COOLDOWN` | failures in a row that trip a channel, and seconds it is skipped | 5 / 30 |
public struct UpstreamConfiguration: Sendable {
    public var baseURL: String
    public var apiKeys: [String]
    /// The operator's channels; empty: one `gemini` channel from `baseURL` and `apiKeys`.
    public var channels: [ChannelConfiguration]
    public var requestTimeout: Duration
    /// All attempts of one call, queueing included (nil: `requestTimeout × maxAttempts`).
    public var deadline: Duration?
    public var maxAttempts: Int
    /// First retry delay; doubles each attempt (with jitter).
    public var retryBaseDelay: Duration
    /// Largest response body accepted (a 4K image is tens of MB of base64).
    public var maxResponseBytes: Int
    public var queueLimit: Int
    public var breakerThreshold: Int
    public var breakerCooldown: Duration
    /// How long a refused credential stays set aside (it is the operator's to fix).
    public var rejectedCredentialRest: Duration
    /// Timeouts by requested image size (`512`, `1K`, `2K`, `4K`; a request without a size is
    /// 1K): Pro at 4K takes 100–170 s and sometimes over 180 s, 1K a fraction of that. Empty:
    /// `requestTimeout` for every size. A channel's `timeout` or `model_timeouts` wins.
    public var sizeTimeouts: [String: Duration] = [:]
    /// A PEM file of certificate authorities trusted beside the system's for upstream calls
    /// (`NANOGATE_UPSTREAM_CA_FILE`: a private CA, a TLS-inspecting proxy, the benchmark's TLS
    /// emulator).
    public var trustedCAFile: String?

    /// NanoGate's defaults for `sizeTimeouts`.
    public static let defaultSizeTimeouts: [String: Duration] = ["512": .seconds(120), "1K": .seconds(120), "2K": .seconds(180), "4K": .seconds(360)]

    /// The longest one call may take: the HTTP client's read timeout must not cut it first.
    public var longestTimeout: Duration {
        max(requestTimeout, sizeTimeouts.values.max() ?? .zero, .seconds(channels.compactMap { channel in
            ([channel.timeoutSeconds] + (channel.modelTimeouts.map { Array($0.values) } ?? [])).compactMap { $0 }.max()
        }.max() ?? 0))
    }

    /// The timeout of a request for `imageSize` (before any channel's own).
    func timeout(imageSize: String?) -> Duration {
        sizeTimeouts[imageSize ?? "1K"] ?? requestTimeout
    }

    public init(
        baseURL: String = "https://generativelanguage.googleapis.com",
        apiKeys: [String],
        channels: [ChannelConfiguration] = [],
        requestTimeout: Duration = .seconds(300),
        deadline: Duration? = nil,
        maxAttempts: Int = 3,
        retryBaseDelay: Duration = .milliseconds(250),
        maxResponseBytes: Int = 256 * 1024 * 1024,
        queueLimit: Int = 4096,
        breakerThreshold: Int = 5,
        breakerCooldown: Duration = .seconds(30),
        rejectedCredentialRest: Duration = .seconds(3600)
    ) {
        self.baseURL = baseURL.hasSuffix("/") ? String(baseURL.dropLast()) : baseURL
        self.apiKeys = apiKeys
        self.channels = channels
        self.requestTimeout = requestTimeout
        self.deadline = deadline
        self.maxAttempts = max(1, maxAttempts)
        self.retryBaseDelay = retryBaseDelay
        self.maxResponseBytes = maxResponseBytes
        self.queueLimit = queueLimit
        self.breakerThreshold = max(1, breakerThreshold)
        self.breakerCooldown = breakerCooldown
        self.rejectedCredentialRest = rejectedCredentialRest
    }

    /// The channels the pool runs: the configured ones, else the `GEMINI_API_KEY` shorthand.
    public var effectiveChannels: [ChannelConfiguration] {
        if !channels.isEmpty { return channels }
        guard !apiKeys.isEmpty else { return [] }
        return [ChannelConfiguration(name: "gemini", kind: .gemini, baseURL: baseURL, apiKeys: apiKeys)]
    }
}

/// One upstream attempt, for the request's usage-log row.
public struct UpstreamAttempt: Sendable, Equatable, Codable {
    public var channel: String
    /// The credential, by position (`1`), never its value.
    public var key: Int
    /// The HTTP status the upstream answered (nil: no answer, e.g. a refused connection).
    public var status: Int?
    /// The failure's code (nil: success).
    public var error: String?
    public var milliseconds: Int
}

/// The upstream attempts one request made (written by the pool, read by whoever settles it).
public final class UpstreamTrace: Sendable {
    private let state = Mutex([UpstreamAttempt]())

    public init() {}

    /// HTTP attempts made so far.
    public var attempts: Int { state.withLock { $0.count } }

    /// Every attempt, oldest first.
    public var all: [UpstreamAttempt] { state.withLock { $0 } }

    /// The channel and key of the last attempt (`studio#2`), never the key's value.
    public var lastKey: String? { state.withLock { $0.last.map { "\($0.channel)#\($0.key)" } } }

    func record(_ attempt: UpstreamAttempt) {
        state.withLock { $0.append(attempt) }
    }
}

/// A channel's state as `nanogate channels list` and the admin API show it.
public struct ChannelStatus: Sendable, Codable, Equatable {
    public var name: String
    public var kind: String
    public var priority: Int
    public var weight: Int
    public var models: [String]?
    /// `ok`, `cooling` (some credential or model resting), `tripped` (breaker open),
    /// `probing`, or `disabled` (every credential refused).
    public var state: String
    public var keys: Int
    public var disabledKeys: [Int]
    /// `model` → seconds left, for rate-limited (key, model) pairs.
    public var coolingModels: [String: Int]
    public var consecutiveFailures: Int
    public var lastError: String?
    public var inFlight: Int
    public var queued: Int
    public var maxConcurrency: Int
    /// Added through the admin API (stored in the database), not the configuration file.
    public var managed: Bool
    /// Upstream ids this channel's project refused within the hour (other channels serve them).
    public var refusedModels: [String]?
    /// How many ids its own model list offered at the last check (nil: it cannot list, or was
    /// never asked), when that was (ISO 8601), and why the last check failed.
    public var listedModels: Int?
    public var modelsCheckedAt: String?
    public var modelsCheckError: String?
    /// Each catalog upstream id → whether this channel serves it (`ChannelServes`): the
    /// channel's column of `nanogate models check`.
    public var serves: [String: ChannelServes]?

    public init(
        name: String, kind: String, priority: Int, weight: Int, models: [String]?, state: String, keys: Int, disabledKeys: [Int],
        coolingModels: [String: Int], consecutiveFailures: Int, lastError: String?, inFlight: Int, queued: Int, maxConcurrency: Int,
        managed: Bool = false, refusedModels: [String]? = nil, listedModels: Int? = nil, modelsCheckedAt: String? = nil,
        modelsCheckError: String? = nil, serves: [String: ChannelServes]? = nil
    ) {
        self.refusedModels = refusedModels
        self.listedModels = listedModels
        self.modelsCheckedAt = modelsCheckedAt
        self.modelsCheckError = modelsCheckError
        self.serves = serves
        self.name = name
        self.kind = kind
        self.priority = priority
        self.weight = weight
        self.models = models
        self.state = state
        self.keys = keys
        self.disabledKeys = disabledKeys
        self.coolingModels = coolingModels
        self.consecutiveFailures = consecutiveFailures
        self.lastError = lastError
        self.inFlight = inFlight
        self.queued = queued
        self.maxConcurrency = maxConcurrency
        self.managed = managed
    }
}

/// The gateway's upstream channels, and the calls it makes through them.
///
/// Selection: among the channels that serve the model, the highest `priority` first, weighted
/// random within a priority, each channel's credentials in turn. A 429 cools that (credential,
/// model) pair down for the upstream's `retryDelay` (quotas are per model); a refused credential
/// is set aside for every model (logged at error level, by position, never by value) and a
/// channel with every credential refused is disabled; `breakerThreshold` transient failures in
/// a row trip a channel's breaker: it is skipped for `breakerCooldown` while another channel can
/// serve the model, then one request probes it. Retries go to another eligible channel where there is one (else the same one after an
/// exponential backoff), for 429, 5xx, connection errors and unreadable answers, within one
/// deadline; never for a 400 or a timeout (the upstream may have produced and billed it).
/// Everything an upstream sends is untrusted: redirects are refused, bodies and streams are
/// bounded in size and time, numbers are clamped. AsyncHTTPClient itself never retries, so
/// this is the one place that does.
public final class UpstreamPool: Sendable {
    private let configuration: UpstreamConfiguration
    /// The most bytes one upstream answer may take (a batch's inline results included).
    public var maxResponseBytes: Int { configuration.maxResponseBytes }
    /// The channels now and their state (`PoolRoster`, a value with no I/O): the
    /// configuration's, plus the operator's from the database (`replaceManagedChannels`).
    private let roster: Mutex<PoolRoster>
    /// Channels taken out of service: their clients close with the pool (a request may still use one).
    private let retired = Mutex<[any UpstreamChannel]>([])
    private let random: @Sendable (Int) -> Int
    private let eventLoopGroup: any EventLoopGroup
    private let logger: Logger
    private let observer: (any UpstreamObserver)?
    /// The pool's clock for its state (cool-downs, breakers, refusals); tests pass their own.
    /// Calls are timed by the real clock.
    private let clock: @Sendable () -> ContinuousClock.Instant
    /// What answers taught the pool since the database last took it (`drainLearned`).
    private let learned = Mutex<[ChannelFact]>([])

    private var rules: PoolRules {
        PoolRules(breakerThreshold: configuration.breakerThreshold, breakerCooldown: configuration.breakerCooldown, rejectedCredentialRest: configuration.rejectedCredentialRest)
    }

    /// How long a channel's refusal of a model is remembered before it is asked again.
    static let refusalMemory = Duration.seconds(3600)

    /// The pool with one HTTP client per channel (its own connection pool, sized to its
    /// `max_concurrency`, and its own proxy), following no redirect.
    public convenience init(
        configuration: UpstreamConfiguration, eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger,
        observer: (any UpstreamObserver)? = nil, random: @escaping @Sendable (Int) -> Int = { Int.random(in: 0..<max(1, $0)) },
        now: @escaping @Sendable () -> ContinuousClock.Instant = { .now }
    ) {
        self.init(configuration: configuration, channels: nil, eventLoopGroup: eventLoopGroup, logger: logger, observer: observer, random: random, now: now)
    }

    /// The pool over `channels` as given (tests: fakes in place of HTTP), or nil: the
    /// configuration's, each with its own HTTP client.
    init(
        configuration: UpstreamConfiguration, channels: [any UpstreamChannel]?, eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger, observer: (any UpstreamObserver)? = nil, random: @escaping @Sendable (Int) -> Int = { Int.random(in: 0..<max(1, $0)) },
        now: @escaping @Sendable () -> ContinuousClock.Instant = { .now }
    ) {
        self.configuration = configuration
        self.observer = observer
        self.random = random
        self.eventLoopGroup = eventLoopGroup
        self.logger = logger
        self.clock = now
        self.roster = Mutex(PoolRoster())
        let members: [PoolMember]
        if let channels {
            members = channels.enumerated().map { offset, channel in
                PoolMember(
                    id: offset, channel: channel, gate: ConcurrencyGate(limit: channel.configuration.maxConcurrency, queueLimit: configuration.queueLimit),
                    broken: nil, managed: false
                )
            }
        } else {
            members = configuration.effectiveChannels.enumerated().map { offset, channel in makeMember(channel, id: offset, managed: false) }
        }
        roster.withLock { $0 = PoolRoster(members: members) }
    }

    private var members: [PoolMember] { roster.withLock { $0.members } }

    /// Puts the operator's channels from the database in service beside the configuration's
    /// (a name the configuration file uses is skipped: the file wins). A channel whose settings
    /// did not change keeps its state (cool-downs, breaker, refused keys) and connections.
    public func replaceManagedChannels(_ channels: [ChannelConfiguration]) {
        let fixedNames = Set(configuration.effectiveChannels.map(\.name))
        let wanted = channels.filter { !fixedNames.contains($0.name) }
        let removed = roster.withLock { roster in
            roster.replaceManaged(with: wanted) { channel, id in makeMember(channel, id: id, managed: true) }
        }
        if !removed.isEmpty { retired.withLock { $0.append(contentsOf: removed.map(\.channel)) } }
    }

    private func makeMember(_ channel: ChannelConfiguration, id: Int, managed: Bool) -> PoolMember {
        var clientConfiguration = Self.clientConfiguration(
            requestTimeout: configuration.longestTimeout, maxConnections: channel.maxConcurrency, trustedCAFile: configuration.trustedCAFile
        )
        if let proxyText = channel.proxy, let proxy = ProxySetting(proxyText) {
            let authorization = proxy.user.map { HTTPClient.Authorization.basic(username: $0, password: proxy.password ?? "") }
            clientConfiguration.proxy = .server(host: proxy.host, port: proxy.port, authorization: authorization)
        }
        let clients = LoopPinnedClients(group: eventLoopGroup, configuration: clientConfiguration)
        let client = clients.shared
        let gate = ConcurrencyGate(limit: channel.maxConcurrency, queueLimit: configuration.queueLimit)
        switch channel.kind {
        case .openai:
            return PoolMember(id: id, channel: OpenAIChannel(configuration: channel, clients: clients, maxResponseBytes: configuration.maxResponseBytes), gate: gate, broken: nil, managed: managed)
        case .gemini, .vertexExpress:
            return PoolMember(id: id, channel: GoogleChannel(configuration: channel, clients: clients, maxResponseBytes: configuration.maxResponseBytes, tokens: nil), gate: gate, broken: nil, managed: managed)
        case .vertex:
            var tokens: AccessTokenProvider?
            var broken: UpstreamError?
            do throws(UpstreamConfigurationError) {
                var account = channel.serviceAccount
                if account == nil { account = try ServiceAccount.load(path: channel.serviceAccountFile ?? "") }
                guard let account else { throw UpstreamConfigurationError("no service account") }
                tokens = try AccessTokenProvider(account: account, tokenURL: channel.tokenURL, httpClient: client)
            } catch {
                logger.error("the Vertex channel cannot be used", metadata: ["channel": "\(channel.name)", "error": "\(error)"])
                broken = UpstreamError(.authFailed, detail: "the service account could not be loaded")
            }
            return PoolMember(id: id, channel: GoogleChannel(configuration: channel, clients: clients, maxResponseBytes: configuration.maxResponseBytes, tokens: tokens), gate: gate, broken: broken, managed: managed)
        }
    }

    /// The client configuration each channel gets: no redirects (a redirect would carry the
    /// credential and the request body to wherever it points), a connect timeout, a read
    /// timeout so a silent connection cannot outlive the request timeout, and a connection
    /// pool as large as the channel's cap, so no request ever waits in the client's own pool
    /// (whose wait is bounded by the connect timeout): callers queue in the channel's gate.
    /// Over TLS, HTTP/2 is used where the server offers it (one connection, many streams).
    public static func clientConfiguration(requestTimeout: Duration, maxConnections: Int = 1024, trustedCAFile: String? = nil) -> HTTPClient.Configuration {
        var configuration = HTTPClient.Configuration()
        configuration.redirectConfiguration = .disallow
        configuration.timeout = .init(connect: .seconds(5), read: .init(requestTimeout))
        configuration.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: max(8, maxConnections))
        configuration.httpVersion = .automatic
        if let trustedCAFile {
            var tls = TLSConfiguration.makeClientConfiguration()
            tls.additionalTrustRoots = [.file(trustedCAFile)]
            configuration.tlsConfiguration = tls
        }
        return configuration
    }

    /// Closes every channel's connections.
    public func shutdown() async {
        for member in members { await member.channel.shutdown() }
        for channel in retired.withLock({ $0 }) { await channel.shutdown() }
    }

    /// Calls `generateContent` on `model` (a catalog upstream id; `aliases` are its other names,
    /// which channels' `models` lists may use), retrying across channels and keys. `imageSize`
    /// (`1K`, `2K`, `4K`; nil: 1K) picks the attempt's timeout.
    public func generateContent(model: String, aliases: [String] = [], imageSize: String?, request: GeminiWire.Request, trace: UpstreamTrace? = nil, logger: Logger) async throws(UpstreamError) -> GeminiWire.Response {
        try await withRetries(model: model, aliases: aliases, imageSize: imageSize, request: request, trace: trace, logger: logger) { member, upstreamID, body, credential, timeout, deadline in
            await member.channel.generate(model: upstreamID, request: request, body: body, credential: credential, timeout: timeout, logger: logger)
        }
    }

    /// Calls `generateContent` and hands the answer over unread once an upstream answered 200
    /// (retries as `generateContent` until then); the caller reads it within its deadline.
    public func generateContentBody(model: String, aliases: [String] = [], imageSize: String?, request: GeminiWire.Request, trace: UpstreamTrace? = nil, logger: Logger) async throws(UpstreamError) -> GeminiAnswerBody {
        try await withRetries(model: model, aliases: aliases, imageSize: imageSize, request: request, trace: trace, logger: logger) { member, upstreamID, body, credential, timeout, deadline in
            await member.channel.generateBody(model: upstreamID, request: request, body: body, credential: credential, deadline: .now.advanced(by: timeout), logger: logger)
        }
    }

    /// Calls `generateContent` and hands each 200 answer, unread, to `read` within the attempt:
    /// a fault `read` reports (the answer broke off, could not be read, was Google's error)
    /// counts as the attempt's and is retried as `generateContent` retries it, so an answer
    /// read piece by piece is tried exactly as often as one read whole. `read` starts afresh
    /// on every attempt.
    public func generateContentRead<Output: Sendable>(
        model: String, aliases: [String] = [], imageSize: String?, request: GeminiWire.Request, trace: UpstreamTrace? = nil, logger: Logger,
        read: @escaping @Sendable (GeminiAnswerBody) async -> Result<Output, AnswerReadFailure>
    ) async throws(UpstreamError) -> Output {
        try await withRetries(model: model, aliases: aliases, imageSize: imageSize, request: request, trace: trace, logger: logger) { member, upstreamID, body, credential, timeout, deadline in
            switch await member.channel.generateBody(model: upstreamID, request: request, body: body, credential: credential, deadline: .now.advanced(by: timeout), logger: logger) {
            case .failure(let failure): return .failure(failure)
            case .success(let answer): return await read(answer).mapError(\.channelFailure)
            }
        }
    }

    /// Calls `streamGenerateContent?alt=sse`. Retries happen until an upstream answers 200; the
    /// events then arrive through the returned sequence (errors after that are the caller's to
    /// report), which ends with a timeout error at the attempt's timeout.
    public func streamGenerateContent(model: String, aliases: [String] = [], imageSize: String?, request: GeminiWire.Request, trace: UpstreamTrace? = nil, logger: Logger) async throws(UpstreamError) -> GeminiEventStream {
        try await withRetries(model: model, aliases: aliases, imageSize: imageSize, request: request, trace: trace, logger: logger) { member, upstreamID, body, credential, timeout, deadline in
            await member.channel.stream(model: upstreamID, request: request, body: body, credential: credential, deadline: .now.advanced(by: timeout), logger: logger)
        }
    }

    /// Channel `name`'s own model list (Google's `GET /v1beta/models`, every page, with its
    /// first credential; an OpenAI channel's `GET /v1/models`): nil when its kind cannot list.
    /// The pool routes by it at once; a refused credential is set aside and learned.
    public func listModels(channel name: String, logger: Logger) async throws(UpstreamError) -> Set<String>? {
        guard let member = members.first(where: { $0.configuration.name == name }) else { throw UpstreamError(.noChannel, detail: "no channel named \(name)") }
        if let broken = member.broken { throw broken }
        do throws(UpstreamError) {
            let listed = try await member.channel.listModels(logger: logger)
            remember(listing: .success(listed), of: member.id)
            return listed
        } catch {
            remember(listing: .failure(error), of: member.id)
            // The list is read with the first credential.
            if error.code == .authFailed { learnRefused(credential: 0, of: member.configuration, reason: error) }
            throw error
        }
    }

    /// The ids channel `name`'s model list offered at the last check (nil: it cannot list, or
    /// was never asked).
    public func listed(channel name: String) -> Set<String>? {
        roster.withLock { $0.state(named: name)?.listed }
    }

    /// Keeps a refused credential for the database (by position and fingerprint, never its value).
    private func learnRefused(credential: Int, of channel: ChannelConfiguration, reason: UpstreamError) {
        guard let fingerprint = channel.credentialFingerprint(credential) else { return }
        let until = Date().addingTimeInterval(configuration.rejectedCredentialRest.seconds)
        let refusal = KeyRefusal(position: credential + 1, fingerprint: fingerprint, until: until, reason: reason.description)
        learned.withLock { $0.append(.keyRefused(channel: channel.name, refusal)) }
    }

    /// What answers taught the pool since the last call (refused models and credentials), for
    /// the database; each fact is handed out once.
    public func drainLearned() -> [ChannelFact] {
        learned.withLock { facts in
            defer { facts = [] }
            return facts
        }
    }


    /// Takes what the database knows about each channel (by name; learned by any instance):
    /// its model list, refused ids, and refused credentials whose fingerprint still matches.
    /// Refusals only ever lengthen what the pool already holds.
    public func apply(_ knowledge: [String: ChannelKnowledge]) {
        let now = clock()
        roster.withLock { $0.apply(knowledge, now: now, wallNow: Date()) }
    }

    /// Whether channel `name` serves `model` (a catalog upstream id; `aliases` its other names)
    /// now, and why not: one cell of the model matrix.
    public func serves(channel name: String, model: String, aliases: [String] = []) -> ChannelServes {
        let now = clock()
        return roster.withLock { $0.serves(channel: name, model: model, aliases: aliases, now: now) }
    }

    /// Whether some channel may be asked for `model` now (it routes the id, has not refused
    /// it, and lists it where it can list): when none may, a request goes down the model's
    /// fallback chain without a call.
    public func mayServe(model: String, aliases: [String] = []) -> Bool {
        let now = clock()
        return roster.withLock { $0.mayServe(model: model, aliases: aliases, now: now) }
    }

    /// One free call on the named channel (`nanogate channels test NAME`).
    public func probe(channel name: String, model: String, logger: Logger) async throws(UpstreamError) -> String {
        guard let member = members.first(where: { $0.configuration.name == name }) else { throw UpstreamError(.noChannel, detail: "no channel named \(name)") }
        if let broken = member.broken { throw broken }
        let upstreamID = member.configuration.upstreamID(for: model) ?? model
        return try await member.channel.probe(model: upstreamID, logger: logger)
    }

    /// The channels' names, for `channels test` without a name.
    public var channelNames: [String] { members.map(\.configuration.name) }

    /// Every channel's state now; with `models` (catalog upstream ids → their aliases), whether
    /// each channel serves each of them.
    public func status(models: [String: [String]] = [:]) -> [ChannelStatus] {
        let now = clock()
        return roster.withLock { $0.status(models: models, now: now) }
    }

    private typealias Attempt<Output> = @Sendable (PoolMember, String, ByteBuffer, Int, Duration, ContinuousClock.Instant) async -> Result<Output, ChannelFailure>

    private func withRetries<Output: Sendable>(
        model: String, aliases: [String], imageSize: String?, request: GeminiWire.Request, trace: UpstreamTrace?, logger: Logger, _ attempt: @escaping Attempt<Output>
    ) async throws(UpstreamError) -> Output {
        let body: ByteBuffer
        do {
            body = try SplicedJSON.encodeJoined(request)
        } catch {
            throw UpstreamError(.invalidRequest, detail: "the request could not be encoded")
        }
        guard !members.isEmpty else { throw UpstreamError(.noChannel) }
        let sizeTimeout = configuration.timeout(imageSize: imageSize)
        let deadline = ContinuousClock.now.advanced(by: configuration.deadline ?? sizeTimeout * configuration.maxAttempts)
        var tried = Set<Int>()
        var lastError: UpstreamError?
        for number in 1...configuration.maxAttempts {
            // A client that has gone away needs no more attempts.
            if Task.isCancelled { throw UpstreamError(.cancelled) }
            guard let pick = pick(model: model, aliases: aliases, avoiding: tried) else {
                throw lastError ?? whyNothingIsEligible(model: model, aliases: aliases)
            }
            tried.insert(pick.member.id)
            let member = pick.member
            let name = member.configuration.name
            var attemptLogger = logger
            attemptLogger[metadataKey: "upstream.attempt"] = "\(number)"
            attemptLogger[metadataKey: "upstream.channel"] = "\(name)"
            attemptLogger[metadataKey: "upstream.key"] = "#\(pick.credential + 1)"
            attemptLogger[metadataKey: "upstream.model"] = "\(pick.upstreamID)"
            let started = ContinuousClock.now
            // One client span per attempt, a child of the request's (a no-op unless traces are on).
            let span = InstrumentationSystem.tracer.startSpan("generate_content \(pick.upstreamID)", ofKind: .client)
            span.attributes["gen_ai.operation.name"] = "generate_content"
            span.attributes["gen_ai.request.model"] = pick.upstreamID
            span.attributes["nanogate.channel"] = name
            span.attributes["nanogate.upstream_key"] = pick.credential + 1
            span.attributes["nanogate.attempt"] = number
            let result = await run(member, pick: pick, body: body, timeout: sizeTimeout, deadline: deadline, logger: attemptLogger, attempt)
            switch result {
            case .success:
                span.attributes["http.response.status_code"] = 200
            case .failure(let failure):
                if let status = failure.error.status { span.attributes["http.response.status_code"] = status }
                span.attributes["error.type"] = failure.error.code.rawValue
                span.setStatus(.init(code: .error))
            }
            span.end()
            let elapsed = started.duration(to: .now)
            let milliseconds = Int((elapsed / .milliseconds(1)).rounded())
            observer?.attempt(channel: name, key: pick.credential + 1, model: model, outcome: result.outcome, duration: elapsed)
            switch result {
            case .success(let output):
                trace?.record(.init(channel: name, key: pick.credential + 1, status: 200, error: nil, milliseconds: milliseconds))
                succeeded(pick.member.id)
                return output
            case .failure(let failure):
                trace?.record(.init(channel: name, key: pick.credential + 1, status: failure.error.status, error: failure.error.code.rawValue, milliseconds: milliseconds))
                lastError = failure.error
                attemptLogger.warning("upstream attempt failed", metadata: ["error.code": "\(failure.error.code.rawValue)", "error": "\(failure.error)"])
                failed(pick, model: model, failure: failure, logger: attemptLogger)
                switch failure.disposition {
                case .fatal where failure.error.code == .modelNotFound:
                    // This channel's project may not use the model: another channel's may.
                    refused(pick.member.id, upstreamID: pick.upstreamID, logger: attemptLogger)
                    continue
                case .fatal:
                    throw failure.error
                case .coolDown, .credentialRejected, .elsewhere:
                    continue
                case .transient:
                    if number < configuration.maxAttempts {
                        do {
                            try await Task.sleep(for: backoff(number))
                        } catch {
                            throw UpstreamError(.cancelled)
                        }
                    }
                }
            }
        }
        throw lastError ?? UpstreamError(.noChannel)
    }



    /// One attempt: a slot in the channel's gate (waiting within the deadline), then the call,
    /// bounded by the channel's timeout for the model (and the deadline).
    private func run<Output: Sendable>(
        _ member: PoolMember, pick: PoolRoster.Pick, body: ByteBuffer, timeout sizeTimeout: Duration, deadline: ContinuousClock.Instant, logger: Logger,
        _ attempt: @escaping Attempt<Output>
    ) async -> Result<Output, ChannelFailure> {
        if let broken = member.broken { return .failure(.init(error: broken, disposition: .credentialRejected)) }
        let config = member.configuration
        let timeout = (config.modelTimeouts?[pick.upstreamID] ?? config.timeoutSeconds).map { Duration.seconds($0) } ?? sizeTimeout
        let queued = UpstreamError(.timeout, detail: "no upstream connection became free in time")
        do {
            try await Deadline.run(until: deadline, orThrow: queued) { try await member.gate.acquire() }
        } catch let error as UpstreamError {
            return .failure(.init(error: error, disposition: error.code == .queueFull ? .elsewhere : .fatal))
        } catch {
            return .failure(.init(error: .init(.cancelled), disposition: .fatal))
        }
        defer { member.gate.release() }
        let limit = min(timeout, ContinuousClock.now.duration(to: deadline))
        guard limit > .zero else { return .failure(.init(error: .init(.timeout), disposition: .fatal)) }
        let timedOut = ChannelFailure(error: .init(.timeout, detail: "no answer within \(limit)", provider: member.channel.provider), disposition: .fatal)
        do {
            return try await Deadline.run(until: .now.advanced(by: limit), orThrow: timedOut) {
                await attempt(member, pick.upstreamID, body, pick.credential, limit, deadline)
            }
        } catch let failure as ChannelFailure {
            return .failure(failure)
        } catch {
            return .failure(.init(error: .init(.cancelled), disposition: .fatal))
        }
    }


    /// Gemini API channels serving `model`, by priority, with a usable credential each: where
    /// a batch may go.
    func batchTargets(model: String, aliases: [String]) -> [(channel: GoogleChannel, credential: Int, upstreamID: String)] {
        let now = clock()
        return roster.withLock { $0.batchTargets(model: model, aliases: aliases, now: now) }
    }

    /// The Gemini API channel named `name`, if it is still in service.
    func googleChannel(named name: String) -> GoogleChannel? {
        members.lazy.compactMap(\.channel.batchChannel).first { $0.configuration.name == name }
    }

    // MARK: The roster's transitions, with their side effects (metrics, logs, facts for the database)

    private func pick(model: String, aliases: [String], avoiding tried: Set<Int>) -> PoolRoster.Pick? {
        let now = clock()
        return roster.withLock { $0.pick(model: model, aliases: aliases, avoiding: tried, now: now, roll: random) }
    }

    private func succeeded(_ id: Int) {
        roster.withLock { $0.succeeded(id) }
    }

    private func remember(listing: Result<Set<String>?, UpstreamError>, of id: Int) {
        roster.withLock { $0.remember(listing: listing, of: id, at: Date()) }
    }

    /// Remembers that channel `id` refused `upstreamID` (its other models are unaffected).
    private func refused(_ id: Int, upstreamID: String, logger: Logger) {
        let until = clock().advanced(by: Self.refusalMemory)
        if let name = roster.withLock({ $0.refused(id, upstreamID: upstreamID, until: until) }) {
            learned.withLock { $0.append(.modelRefused(channel: name, upstreamID: upstreamID, until: Date().addingTimeInterval(Self.refusalMemory.seconds))) }
        }
        logger.warning("channel's project refuses the model; other channels serve it", metadata: ["upstream.model": "\(upstreamID)"])
    }

    private func failed(_ pick: PoolRoster.Pick, model: String, failure: ChannelFailure, logger: Logger) {
        let now = clock()
        let rules = rules
        let effect = roster.withLock { $0.failed(pick.member.id, credential: pick.credential, model: model, failure: failure, now: now, rules: rules) }
        switch effect {
        case .cooledDown(let name):
            observer?.coolDown(channel: name, model: model)
        case .credentialRefused(let name, let credential, let everyCredential):
            learnRefused(credential: credential, of: pick.member.configuration, reason: failure.error)
            observer?.credentialRejected(channel: name)
            logger.error(
                everyCredential ? "channel disabled: every credential was refused (fix it and restart, or wait for the retry)" : "channel credential set aside: it was refused",
                metadata: ["channel": "\(name)", "key": "#\(credential + 1)", "for": "\(configuration.rejectedCredentialRest)"]
            )
        case .tripped(let name, let failures):
            observer?.tripped(channel: name)
            logger.warning("channel tripped: skipped for a while, then probed", metadata: ["channel": "\(name)", "failures": "\(failures)", "for": "\(configuration.breakerCooldown)"])
        case nil:
            break
        }
    }

    private func whyNothingIsEligible(model: String, aliases: [String]) -> UpstreamError {
        let now = clock()
        return roster.withLock { $0.whyNothingIsEligible(model: model, aliases: aliases, now: now) }
    }


    private func backoff(_ attempt: Int) -> Duration {
        let base = configuration.retryBaseDelay * (1 << min(attempt - 1, 10))
        return base + base * Double.random(in: 0..<0.5)
    }
}

extension Result where Failure == ChannelFailure {
    /// `ok`, or the failure's bounded code (a metrics label).
    var outcome: String {
        switch self {
        case .success: "ok"
        case .failure(let failure): failure.error.code.rawValue
        }
    }
}
