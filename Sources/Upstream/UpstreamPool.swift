import NIOHTTP1
public import Logging
public import NanoGateCore
public import NIOCore
public import AsyncHTTPClient
import Foundation
import NIOFoundationCompat
public import NIOPosix
import Synchronization

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
    /// The channels now and their state: the configuration's, plus the operator's from the
    /// database (`replaceManagedChannels`). Replaced whole; a member unchanged keeps its state.
    private let roster: Mutex<Roster>
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

    /// The channels in service, each with its state, in one array.
    private struct Roster {
        struct Entry {
            var member: Member
            var state: ChannelState
        }

        var entries: [Entry] = []
        var nextID = 0

        var members: [Member] { entries.map(\.member) }
        var states: [ChannelState] { entries.map(\.state) }
    }

    private struct Member: Sendable {
        let id: Int
        let channel: any UpstreamChannel
        let gate: ConcurrencyGate
        /// Set when the channel could not be built (a bad service account): every call fails so.
        let broken: UpstreamError?
        /// From the database (the admin API), not the configuration file.
        let managed: Bool

        var configuration: ChannelConfiguration { channel.configuration }
    }

    /// What sets a credential aside: until when, why, and whether it was refused outright.
    private struct Rest {
        var until: ContinuousClock.Instant
        var reason: UpstreamError
        var rejected: Bool
    }

    private struct ChannelState {
        var nextCredential = 0
        /// Per credential: rests for every model (`""`) and per model id.
        var rests: [[String: Rest]]
        var consecutiveFailures = 0
        var openUntil: ContinuousClock.Instant?
        var probing = false
        var lastError: UpstreamError?
        /// Upstream ids this channel's Google project refused as unknown or not available to it
        /// (an old project's key may still serve 2.5 while a new one's cannot): skipped for
        /// those ids until the time given, for this channel only.
        var refusedModels: [String: ContinuousClock.Instant] = [:]
        /// The ids its own model list offered (nil: it cannot list, or was never asked), when
        /// and why the last listing failed: a channel that lists serves only what it lists.
        var listed: Set<String>?
        var listedAt: Date?
        var listError: String?

        /// Whether Google refused credential `index` and it is still set aside.
        func isRefused(credential index: Int, now: ContinuousClock.Instant) -> Bool {
            rests[index][""].map { $0.rejected && $0.until > now } ?? false
        }

        /// Whether every credential is refused: the channel serves nothing until fixed.
        func everyCredentialRefused(now: ContinuousClock.Instant) -> Bool {
            rests.indices.allSatisfy { isRefused(credential: $0, now: now) }
        }
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
        self.roster = Mutex(Roster())
        roster.withLock { roster in
            let members: [Member]
            if let channels {
                members = channels.enumerated().map { offset, channel in
                    Member(
                        id: offset, channel: channel, gate: ConcurrencyGate(limit: channel.configuration.maxConcurrency, queueLimit: configuration.queueLimit),
                        broken: nil, managed: false
                    )
                }
            } else {
                members = configuration.effectiveChannels.enumerated().map { offset, channel in makeMember(channel, id: offset, managed: false) }
            }
            roster.entries = members.map { Roster.Entry(member: $0, state: ChannelState(rests: Array(repeating: [:], count: max(1, $0.channel.credentialCount)))) }
            roster.nextID = members.count
        }
    }

    private var members: [Member] { roster.withLock { $0.members } }

    /// Puts the operator's channels from the database in service beside the configuration's
    /// (a name the configuration file uses is skipped: the file wins). A channel whose settings
    /// did not change keeps its state (cool-downs, breaker, refused keys) and connections.
    public func replaceManagedChannels(_ channels: [ChannelConfiguration]) {
        let fixedNames = Set(configuration.effectiveChannels.map(\.name))
        let wanted = channels.filter { !fixedNames.contains($0.name) }
        let removed = roster.withLock { roster -> [any UpstreamChannel] in
            // The file's channels stay; a stored channel unchanged keeps its state.
            var entries = roster.entries.filter { !$0.member.managed }
            for channel in wanted {
                if let kept = roster.entries.first(where: { $0.member.managed && $0.member.configuration == channel }) {
                    entries.append(kept)
                } else {
                    let member = makeMember(channel, id: roster.nextID, managed: true)
                    roster.nextID += 1
                    entries.append(Roster.Entry(member: member, state: ChannelState(rests: Array(repeating: [:], count: max(1, member.channel.credentialCount)))))
                }
            }
            let kept = Set(entries.map(\.member.id))
            let removed = roster.entries.filter { !kept.contains($0.member.id) }.map(\.member.channel)
            roster.entries = entries
            return removed
        }
        if !removed.isEmpty { retired.withLock { $0.append(contentsOf: removed) } }
    }

    private func makeMember(_ channel: ChannelConfiguration, id: Int, managed: Bool) -> Member {
        var clientConfiguration = Self.clientConfiguration(requestTimeout: configuration.longestTimeout, maxConnections: channel.maxConcurrency)
        if let proxyText = channel.proxy, let proxy = ProxySetting(proxyText) {
            let authorization = proxy.user.map { HTTPClient.Authorization.basic(username: $0, password: proxy.password ?? "") }
            clientConfiguration.proxy = .server(host: proxy.host, port: proxy.port, authorization: authorization)
        }
        let client = HTTPClient(eventLoopGroup: eventLoopGroup, configuration: clientConfiguration)
        let gate = ConcurrencyGate(limit: channel.maxConcurrency, queueLimit: configuration.queueLimit)
        switch channel.kind {
        case .openai:
            return Member(id: id, channel: OpenAIChannel(configuration: channel, httpClient: client, maxResponseBytes: configuration.maxResponseBytes), gate: gate, broken: nil, managed: managed)
        case .gemini, .vertexExpress:
            return Member(id: id, channel: GoogleChannel(configuration: channel, httpClient: client, maxResponseBytes: configuration.maxResponseBytes, tokens: nil), gate: gate, broken: nil, managed: managed)
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
            return Member(id: id, channel: GoogleChannel(configuration: channel, httpClient: client, maxResponseBytes: configuration.maxResponseBytes, tokens: tokens), gate: gate, broken: broken, managed: managed)
        }
    }

    /// The client configuration each channel gets: no redirects (a redirect would carry the
    /// credential and the request body to wherever it points), a connect timeout, a read
    /// timeout so a silent connection cannot outlive the request timeout, and a connection
    /// pool as large as the channel's cap, so no request ever waits in the client's own pool
    /// (whose wait is bounded by the connect timeout): callers queue in the channel's gate.
    /// Over TLS, HTTP/2 is used where the server offers it (one connection, many streams).
    public static func clientConfiguration(requestTimeout: Duration, maxConnections: Int = 1024) -> HTTPClient.Configuration {
        var configuration = HTTPClient.Configuration()
        configuration.redirectConfiguration = .disallow
        configuration.timeout = .init(connect: .seconds(5), read: .init(requestTimeout))
        configuration.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: max(8, maxConnections))
        configuration.httpVersion = .automatic
        return configuration
    }

    /// Closes every channel's connections.
    public func shutdown() async {
        for member in members { await member.channel.shutdown() }
        for channel in retired.withLock({ $0 }) { await channel.shutdown() }
    }

    /// Calls `generateContent` on `model` (a catalog upstream id; `aliases` are its other names,
    /// which channels' `models` lists may use), retrying across channels and keys.
    public func generateContent(model: String, aliases: [String] = [], request: GeminiWire.Request, trace: UpstreamTrace? = nil, logger: Logger) async throws(UpstreamError) -> GeminiWire.Response {
        try await withRetries(model: model, aliases: aliases, request: request, trace: trace, logger: logger) { member, upstreamID, body, credential, timeout, deadline in
            await member.channel.generate(model: upstreamID, request: request, body: body, credential: credential, timeout: timeout, logger: logger)
        }
    }

    /// Calls `streamGenerateContent?alt=sse`. Retries happen until an upstream answers 200; the
    /// events then arrive through the returned sequence (errors after that are the caller's to
    /// report), which ends with a timeout error at the attempt's timeout.
    public func streamGenerateContent(model: String, aliases: [String] = [], request: GeminiWire.Request, trace: UpstreamTrace? = nil, logger: Logger) async throws(UpstreamError) -> GeminiEventStream {
        try await withRetries(model: model, aliases: aliases, request: request, trace: trace, logger: logger) { member, upstreamID, body, credential, timeout, deadline in
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

    private func remember(listing: Result<Set<String>?, UpstreamError>, of id: Int) {
        roster.withLock { roster in
            guard let index = roster.entries.firstIndex(where: { $0.member.id == id }) else { return }
            switch listing {
            case .success(let listed):
                roster.entries[index].state.listed = listed
                roster.entries[index].state.listedAt = Date()
                roster.entries[index].state.listError = nil
            case .failure(let error):
                // The last good list stands: a failed check says nothing about the models.
                roster.entries[index].state.listError = error.description
            }
        }
    }

    /// The ids channel `name`'s model list offered at the last check (nil: it cannot list, or
    /// was never asked).
    public func listed(channel name: String) -> Set<String>? {
        roster.withLock { roster in roster.entries.firstIndex { $0.member.configuration.name == name }.flatMap { roster.entries[$0].state.listed } }
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
        let wallNow = Date()
        func instant(_ date: Date) -> ContinuousClock.Instant { now.advanced(by: .seconds(date.timeIntervalSince(wallNow))) }
        roster.withLock { roster in
            for index in roster.entries.indices {
                let config = roster.entries[index].member.configuration
                guard let known = knowledge[config.name] else { continue }
                if let checkedAt = known.checkedAt, roster.entries[index].state.listedAt.map({ $0 < checkedAt }) ?? true {
                    roster.entries[index].state.listed = known.listed
                    roster.entries[index].state.listedAt = checkedAt
                    roster.entries[index].state.listError = known.listError
                }
                for (upstreamID, until) in known.refusedModels where until > wallNow {
                    let held = roster.entries[index].state.refusedModels[upstreamID]
                    if held.map({ $0 < instant(until) }) ?? true { roster.entries[index].state.refusedModels[upstreamID] = instant(until) }
                }
                for refusal in known.refusedKeys where refusal.until > wallNow {
                    let position = refusal.position - 1
                    guard roster.entries[index].state.rests.indices.contains(position), config.credentialFingerprint(position) == refusal.fingerprint else { continue }
                    let held = roster.entries[index].state.rests[position][""]
                    if held.map({ !$0.rejected || $0.until < instant(refusal.until) }) ?? true {
                        roster.entries[index].state.rests[position][""] = Rest(
                            until: instant(refusal.until), reason: UpstreamError(.authFailed, detail: refusal.reason), rejected: true
                        )
                    }
                }
            }
        }
    }

    /// Whether channel `name` serves `model` (a catalog upstream id; `aliases` its other names)
    /// now, and why not: one cell of the model matrix.
    public func serves(channel name: String, model: String, aliases: [String] = []) -> ChannelServes {
        let now = clock()
        return roster.withLock { roster in
            guard let index = roster.entries.firstIndex(where: { $0.member.configuration.name == name }) else { return .notRouted }
            return Self.serves(roster.entries[index].member, roster.entries[index].state, model: model, aliases: aliases, now: now)
        }
    }

    private static func serves(_ member: Member, _ state: ChannelState, model: String, aliases: [String], now: ContinuousClock.Instant) -> ChannelServes {
        guard member.configuration.weight > 0, let upstreamID = member.configuration.upstreamID(for: model, aliases: aliases) else { return .notRouted }
        if let until = state.refusedModels[upstreamID], until > now { return .refused }
        guard let listed = state.listed else { return .unchecked }
        return listed.contains(upstreamID) ? .listed : .notListed
    }

    /// Whether some channel may be asked for `model` now (it routes the id, has not refused
    /// it, and lists it where it can list): when none may, a request goes down the model's
    /// fallback chain without a call.
    public func mayServe(model: String, aliases: [String] = []) -> Bool {
        let now = clock()
        return roster.withLock { roster in
            roster.entries.indices.contains { index in
                let entry = roster.entries[index]
                return entry.member.broken == nil && !entry.state.everyCredentialRefused(now: now)
                    && Self.serves(entry.member, entry.state, model: model, aliases: aliases, now: now).serves
            }
        }
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
        let (members, states) = roster.withLock { ($0.members, $0.states) }
        return zip(members, states).map { member, channel in
            let config = member.configuration
            let disabled = channel.rests.indices.filter { channel.isRefused(credential: $0, now: now) }
            var cooling: [String: Int] = [:]
            for rests in channel.rests {
                for (model, rest) in rests where !rest.rejected && rest.until > now {
                    let left = max(1, Int((rest.until - now).components.seconds) + 1)
                    cooling[model.isEmpty ? "*" : model] = max(cooling[model.isEmpty ? "*" : model] ?? 0, left)
                }
            }
            var stateName = "ok"
            if member.broken != nil || disabled.count == channel.rests.count {
                stateName = "disabled"
            } else if channel.probing {
                stateName = "probing"
            } else if let open = channel.openUntil, open > now {
                stateName = "tripped"
            } else if !cooling.isEmpty || !disabled.isEmpty {
                stateName = "cooling"
            }
            let load = member.gate.load
            return ChannelStatus(
                name: config.name, kind: config.kind.rawValue, priority: config.priority, weight: config.weight, models: config.models?.map(\.name),
                state: stateName, keys: member.channel.credentialCount, disabledKeys: disabled.map { $0 + 1 }, coolingModels: cooling,
                consecutiveFailures: channel.consecutiveFailures, lastError: (member.broken ?? channel.lastError).map { $0.description },
                inFlight: load.running, queued: load.waiting, maxConcurrency: config.maxConcurrency, managed: member.managed,
                refusedModels: channel.refusedModels.filter { $0.value > now }.keys.sorted(), listedModels: channel.listed?.count,
                modelsCheckedAt: channel.listedAt.map { ISO8601DateFormatter().string(from: $0) }, modelsCheckError: channel.listError,
                serves: models.isEmpty ? nil : Dictionary(uniqueKeysWithValues: models.map { ($0.key, Self.serves(member, channel, model: $0.key, aliases: $0.value, now: now)) })
            )
        }
    }

    private typealias Attempt<Output> = @Sendable (Member, String, ByteBuffer, Int, Duration, ContinuousClock.Instant) async -> Result<Output, ChannelFailure>

    private func withRetries<Output: Sendable>(
        model: String, aliases: [String], request: GeminiWire.Request, trace: UpstreamTrace?, logger: Logger, _ attempt: @escaping Attempt<Output>
    ) async throws(UpstreamError) -> Output {
        let body: ByteBuffer
        do {
            body = try SplicedJSON.encodeJoined(request)
        } catch {
            throw UpstreamError(.invalidRequest, detail: "the request could not be encoded")
        }
        guard !members.isEmpty else { throw UpstreamError(.noChannel) }
        let sizeTimeout = configuration.timeout(imageSize: request.generationConfig?.imageConfig?.imageSize)
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
            let result = await run(member, pick: pick, body: body, timeout: sizeTimeout, deadline: deadline, logger: attemptLogger, attempt)
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
                failed(pick.member.id, credential: pick.credential, model: model, failure: failure, logger: attemptLogger)
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
        _ member: Member, pick: Pick, body: ByteBuffer, timeout sizeTimeout: Duration, deadline: ContinuousClock.Instant, logger: Logger,
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
        return roster.withLock { roster in
            roster.entries.indices.compactMap { index -> (GoogleChannel, Int, String, Int)? in
                let member = roster.entries[index].member
                guard member.broken == nil, let channel = member.channel.batchChannel,
                    let upstreamID = member.configuration.upstreamID(for: model, aliases: aliases)
                else { return nil }
                let state = roster.entries[index].state
                guard let credential = state.rests.indices.first(where: { Self.activeRest(state.rests[$0], model: model, now: now) == nil }) else { return nil }
                return (channel, credential, upstreamID, member.configuration.priority)
            }
            .sorted { $0.3 > $1.3 }
            .map { ($0.0, $0.1, $0.2) }
        }
    }

    /// The Gemini API channel named `name`, if it is still in service.
    func googleChannel(named name: String) -> GoogleChannel? {
        members.lazy.compactMap(\.channel.batchChannel).first { $0.configuration.name == name }
    }

    private struct Pick {
        var member: Member
        var credential: Int
        var upstreamID: String
    }

    /// The next channel and credential for `model`: untried channels first, highest priority
    /// first, weighted random within a priority; nil when none is eligible.
    private func pick(model: String, aliases: [String], avoiding tried: Set<Int>) -> Pick? {
        let now = clock()
        return roster.withLock { roster -> Pick? in
            var candidates: [(index: Int, credential: Int, upstreamID: String, halfOpen: Bool)] = []
            var tripped: [(index: Int, credential: Int, upstreamID: String, halfOpen: Bool)] = []
            for index in roster.entries.indices {
                let member = roster.entries[index].member
                let config = member.configuration
                guard config.weight > 0, let upstreamID = config.upstreamID(for: model, aliases: aliases) else { continue }
                var halfOpen = false
                var skipped = false
                if let open = roster.entries[index].state.openUntil {
                    if open > now || roster.entries[index].state.probing { skipped = true } else { halfOpen = true }
                }
                let channel = roster.entries[index].state
                // Not refused by its project, and in its model list where it has one.
                guard Self.serves(member, channel, model: model, aliases: aliases, now: now).serves else { continue }
                let count = channel.rests.count
                guard let credential = (0..<count).map({ (channel.nextCredential + $0) % count })
                    .first(where: { Self.activeRest(channel.rests[$0], model: model, now: now) == nil })
                else { continue }
                if skipped {
                    tripped.append((index, credential, upstreamID, false))
                } else {
                    candidates.append((index, credential, upstreamID, halfOpen))
                }
            }
            // A tripped breaker steers traffic to the other channels; when none is left, the
            // tripped ones still serve (refusing everything would be worse than trying).
            if candidates.isEmpty { candidates = tripped }
            let untried = candidates.filter { !tried.contains(roster.entries[$0.index].member.id) }
            let pool = untried.isEmpty ? candidates : untried
            guard let top = pool.map({ roster.entries[$0.index].member.configuration.priority }).max() else { return nil }
            let level = pool.filter { roster.entries[$0.index].member.configuration.priority == top }
            let total = level.reduce(0) { $0 + roster.entries[$1.index].member.configuration.weight }
            var roll = random(total)
            var chosen = level[0]
            for candidate in level {
                let weight = roster.entries[candidate.index].member.configuration.weight
                if roll < weight {
                    chosen = candidate
                    break
                }
                roll -= weight
            }
            roster.entries[chosen.index].state.nextCredential = (chosen.credential + 1) % roster.entries[chosen.index].state.rests.count
            if chosen.halfOpen { roster.entries[chosen.index].state.probing = true }
            return Pick(member: roster.entries[chosen.index].member, credential: chosen.credential, upstreamID: chosen.upstreamID)
        }
    }

    private func succeeded(_ id: Int) {
        roster.withLock { roster in
            guard let index = roster.entries.firstIndex(where: { $0.member.id == id }) else { return }
            roster.entries[index].state.consecutiveFailures = 0
            roster.entries[index].state.openUntil = nil
            roster.entries[index].state.probing = false
        }
    }

    /// Remembers that channel `id` refused `upstreamID` (its other models are unaffected).
    private func refused(_ id: Int, upstreamID: String, logger: Logger) {
        let until = clock().advanced(by: Self.refusalMemory)
        let name = roster.withLock { roster -> String? in
            guard let index = roster.entries.firstIndex(where: { $0.member.id == id }) else { return nil }
            roster.entries[index].state.refusedModels[upstreamID] = until
            return roster.entries[index].member.configuration.name
        }
        if let name {
            learned.withLock { $0.append(.modelRefused(channel: name, upstreamID: upstreamID, until: Date().addingTimeInterval(Self.refusalMemory.seconds))) }
        }
        logger.warning("channel's project refuses the model; other channels serve it", metadata: ["upstream.model": "\(upstreamID)"])
    }

    private func failed(_ id: Int, credential: Int, model: String, failure: ChannelFailure, logger: Logger) {
        let now = clock()
        roster.withLock { roster in
            // A channel replaced meanwhile (the operator changed it) starts afresh.
            guard let index = roster.entries.firstIndex(where: { $0.member.id == id }) else { return }
            let name = roster.entries[index].member.configuration.name
            roster.entries[index].state.lastError = failure.error
            let wasProbing = roster.entries[index].state.probing
            roster.entries[index].state.probing = false
            switch failure.disposition {
            case .coolDown(let duration, let modelOnly):
                observer?.coolDown(channel: name, model: model)
                roster.entries[index].state.rests[credential][modelOnly ? model : ""] = Rest(until: now.advanced(by: duration), reason: failure.error, rejected: false)
            case .credentialRejected:
                roster.entries[index].state.rests[credential][""] = Rest(until: now.advanced(by: configuration.rejectedCredentialRest), reason: failure.error, rejected: true)
                learnRefused(credential: credential, of: roster.entries[index].member.configuration, reason: failure.error)
                observer?.credentialRejected(channel: name)
                let all = roster.entries[index].state.everyCredentialRefused(now: now)
                logger.error(
                    all ? "channel disabled: every credential was refused (fix it and restart, or wait for the retry)" : "channel credential set aside: it was refused",
                    metadata: ["channel": "\(name)", "key": "#\(credential + 1)", "for": "\(configuration.rejectedCredentialRest)"]
                )
            case .transient:
                roster.entries[index].state.consecutiveFailures += 1
                if wasProbing || roster.entries[index].state.consecutiveFailures >= configuration.breakerThreshold {
                    roster.entries[index].state.openUntil = now.advanced(by: configuration.breakerCooldown)
                    observer?.tripped(channel: name)
                    logger.warning("channel tripped: skipped for a while, then probed", metadata: ["channel": "\(name)", "failures": "\(roster.entries[index].state.consecutiveFailures)", "for": "\(configuration.breakerCooldown)"])
                }
            case .fatal, .elsewhere:
                break
            }
        }
    }

    /// Why no channel can take `model` now: none serves it, or the one that comes back first
    /// (its wait counted down in `retryAfterSeconds`).
    private func whyNothingIsEligible(model: String, aliases: [String]) -> UpstreamError {
        let now = clock()
        return roster.withLock { roster -> UpstreamError in
            let members = roster.members
            let states = roster.states
            let serving = members.indices.filter { members[$0].configuration.upstreamID(for: model, aliases: aliases) != nil && members[$0].configuration.weight > 0 }
            guard !serving.isEmpty else { return UpstreamError(.noChannel, detail: "no channel serves \(model)") }
            // Routed there, but refused by the project or missing from its model list.
            let refusing = serving.filter { !Self.serves(members[$0], states[$0], model: model, aliases: aliases, now: now).serves }
            if refusing.count == serving.count {
                // Every channel's project refused it: the caller goes down the model's fallback chain.
                return UpstreamError(.modelNotFound, status: 404, detail: "no channel's project lists or accepts \(model)")
            }
            var soonest: (until: ContinuousClock.Instant, reason: UpstreamError)?
            for index in serving {
                let state = states[index]
                if let open = state.openUntil, open > now || state.probing {
                    let reason = UpstreamError(.allResting, detail: state.lastError?.detail, retryAfterSeconds: 1)
                    if soonest.map({ open < $0.until }) ?? true { soonest = (open, reason) }
                }
                for rests in state.rests {
                    if let rest = Self.activeRest(rests, model: model, now: now), soonest.map({ rest.until < $0.until }) ?? true {
                        soonest = (rest.until, rest.reason)
                    }
                }
            }
            guard let soonest else { return UpstreamError(.allResting) }
            var error = soonest.reason
            if error.code != .authFailed {
                error.retryAfterSeconds = max(1, Int((soonest.until - now).components.seconds) + 1)
            }
            return error
        }
    }

    /// The rest that keeps a credential from `model` now, the longer one if both kinds apply.
    private static func activeRest(_ rests: [String: Rest], model: String, now: ContinuousClock.Instant) -> Rest? {
        [rests[""], rests[model]].compactMap { $0 }.filter { $0.until > now }.max { $0.until < $1.until }
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
