import Foundation
import NanoGateCore

/// One channel in service: the channel, its concurrency gate, and where it came from.
struct PoolMember: Sendable {
    let id: Int
    let channel: any UpstreamChannel
    let gate: ConcurrencyGate
    /// Set when the channel could not be built (a bad service account): every call fails so.
    let broken: UpstreamError?
    /// From the database (the admin API), not the configuration file.
    let managed: Bool

    var configuration: ChannelConfiguration { channel.configuration }
}

/// The rules the roster applies to failures (from `UpstreamConfiguration`).
struct PoolRules: Sendable {
    var breakerThreshold: Int
    var breakerCooldown: Duration
    var rejectedCredentialRest: Duration
}

/// The pool's routing state as a value: the members and their state in one array, and every
/// transition (pick, succeeded, failed, refused, what the database taught) as a function of
/// that value and `now`. No I/O, no clock, no lock: the pool holds it in a `Mutex`, performs
/// the calls, and reports back; tests drive it directly (AsyncHTTPClient's
/// `HTTPConnectionPool.StateMachine` is built the same way).
struct PoolRoster {
    /// What sets a credential aside: until when, why, and whether it was refused outright.
    struct Rest {
        var until: ContinuousClock.Instant
        var reason: UpstreamError
        var rejected: Bool
    }

    struct ChannelState {
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

        init(credentials: Int) {
            rests = Array(repeating: [:], count: max(1, credentials))
        }

        /// Whether Google refused credential `index` and it is still set aside.
        func isRefused(credential index: Int, now: ContinuousClock.Instant) -> Bool {
            rests[index][""].map { $0.rejected && $0.until > now } ?? false
        }

        /// Whether every credential is refused: the channel serves nothing until fixed.
        func everyCredentialRefused(now: ContinuousClock.Instant) -> Bool {
            rests.indices.allSatisfy { isRefused(credential: $0, now: now) }
        }
    }

    struct Entry {
        var member: PoolMember
        var state: ChannelState
    }

    /// A channel, credential and upstream id chosen for one attempt.
    struct Pick {
        var member: PoolMember
        var credential: Int
        var upstreamID: String
    }

    /// What a failure changed, for the pool to log and count (outside its lock).
    enum FailureEffect: Equatable {
        case cooledDown(channel: String)
        /// Credential `credential` (0-based) was refused; `everyCredential` when none is left.
        case credentialRefused(channel: String, credential: Int, everyCredential: Bool)
        case tripped(channel: String, failures: Int)
    }

    private(set) var entries: [Entry] = []
    private var nextID = 0

    init(members: [PoolMember] = []) {
        entries = members.map { Entry(member: $0, state: ChannelState(credentials: $0.channel.credentialCount)) }
        nextID = (members.map(\.id).max() ?? -1) + 1
    }

    var members: [PoolMember] { entries.map(\.member) }

    private func index(of id: Int) -> Int? { entries.firstIndex { $0.member.id == id } }
    private func index(named name: String) -> Int? { entries.firstIndex { $0.member.configuration.name == name } }

    func member(named name: String) -> PoolMember? { index(named: name).map { entries[$0].member } }
    func state(named name: String) -> ChannelState? { index(named: name).map { entries[$0].state } }

    // MARK: Membership

    /// Keeps the unmanaged members and puts `wanted` in service as managed ones: a member whose
    /// configuration is unchanged keeps its state; a new one is built by `make` with a fresh id.
    /// Answers the members taken out of service.
    mutating func replaceManaged(with wanted: [ChannelConfiguration], make: (ChannelConfiguration, Int) -> PoolMember) -> [PoolMember] {
        var kept = entries.filter { !$0.member.managed }
        for channel in wanted {
            if let same = entries.first(where: { $0.member.managed && $0.member.configuration == channel }) {
                kept.append(same)
            } else {
                let member = make(channel, nextID)
                nextID += 1
                kept.append(Entry(member: member, state: ChannelState(credentials: member.channel.credentialCount)))
            }
        }
        let keptIDs = Set(kept.map(\.member.id))
        let removed = entries.filter { !keptIDs.contains($0.member.id) }.map(\.member)
        entries = kept
        return removed
    }

    // MARK: Routing

    /// Whether `member` in `state` serves `model` (a catalog upstream id; `aliases` its other
    /// names) now, and why not.
    static func serves(_ member: PoolMember, _ state: ChannelState, model: String, aliases: [String], now: ContinuousClock.Instant) -> ChannelServes {
        guard member.configuration.weight > 0, let upstreamID = member.configuration.upstreamID(for: model, aliases: aliases) else { return .notRouted }
        if let until = state.refusedModels[upstreamID], until > now { return .refused }
        guard let listed = state.listed else { return .unchecked }
        return listed.contains(upstreamID) ? .listed : .notListed
    }

    func serves(channel name: String, model: String, aliases: [String], now: ContinuousClock.Instant) -> ChannelServes {
        guard let index = index(named: name) else { return .notRouted }
        return Self.serves(entries[index].member, entries[index].state, model: model, aliases: aliases, now: now)
    }

    /// Whether some channel may be asked for `model` now.
    func mayServe(model: String, aliases: [String], now: ContinuousClock.Instant) -> Bool {
        entries.contains { entry in
            entry.member.broken == nil && !entry.state.everyCredentialRefused(now: now)
                && Self.serves(entry.member, entry.state, model: model, aliases: aliases, now: now).serves
        }
    }

    /// The rest that keeps a credential from `model` now, the longer one if both kinds apply.
    static func activeRest(_ rests: [String: Rest], model: String, now: ContinuousClock.Instant) -> Rest? {
        [rests[""], rests[model]].compactMap { $0 }.filter { $0.until > now }.max { $0.until < $1.until }
    }

    /// The next channel and credential for `model`: untried channels first, highest priority
    /// first, weighted random within a priority (`roll(total)` answers a number below `total`);
    /// nil when none is eligible. Moves the channel's credential turn, and marks a half-open
    /// channel as probing.
    mutating func pick(model: String, aliases: [String], avoiding tried: Set<Int>, now: ContinuousClock.Instant, roll: (Int) -> Int) -> Pick? {
        typealias Candidate = (index: Int, credential: Int, upstreamID: String, halfOpen: Bool)
        var candidates: [Candidate] = []
        var tripped: [Candidate] = []
        for index in entries.indices {
            let member = entries[index].member
            let state = entries[index].state
            guard member.configuration.weight > 0, let upstreamID = member.configuration.upstreamID(for: model, aliases: aliases) else { continue }
            var halfOpen = false
            var skipped = false
            if let open = state.openUntil {
                if open > now || state.probing { skipped = true } else { halfOpen = true }
            }
            // Not refused by its project, and in its model list where it has one.
            guard Self.serves(member, state, model: model, aliases: aliases, now: now).serves else { continue }
            let count = state.rests.count
            guard let credential = (0..<count).map({ (state.nextCredential + $0) % count })
                .first(where: { Self.activeRest(state.rests[$0], model: model, now: now) == nil })
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
        let untried = candidates.filter { !tried.contains(entries[$0.index].member.id) }
        let pool = untried.isEmpty ? candidates : untried
        guard let top = pool.map({ entries[$0.index].member.configuration.priority }).max() else { return nil }
        let level = pool.filter { entries[$0.index].member.configuration.priority == top }
        let total = level.reduce(0) { $0 + entries[$1.index].member.configuration.weight }
        var remaining = roll(total)
        var chosen = level[0]
        for candidate in level {
            let weight = entries[candidate.index].member.configuration.weight
            if remaining < weight {
                chosen = candidate
                break
            }
            remaining -= weight
        }
        entries[chosen.index].state.nextCredential = (chosen.credential + 1) % entries[chosen.index].state.rests.count
        if chosen.halfOpen { entries[chosen.index].state.probing = true }
        return Pick(member: entries[chosen.index].member, credential: chosen.credential, upstreamID: chosen.upstreamID)
    }

    /// A call on member `id` succeeded: its breaker closes.
    mutating func succeeded(_ id: Int) {
        guard let index = index(of: id) else { return }
        entries[index].state.consecutiveFailures = 0
        entries[index].state.openUntil = nil
        entries[index].state.probing = false
    }

    /// A call on member `id` with `credential` for `model` failed: the rest, refusal or breaker
    /// its disposition calls for. Nil when nothing the pool reports changed (or the member was
    /// replaced meanwhile: a changed channel starts afresh).
    mutating func failed(_ id: Int, credential: Int, model: String, failure: ChannelFailure, now: ContinuousClock.Instant, rules: PoolRules) -> FailureEffect? {
        guard let index = index(of: id) else { return nil }
        let name = entries[index].member.configuration.name
        entries[index].state.lastError = failure.error
        let wasProbing = entries[index].state.probing
        entries[index].state.probing = false
        switch failure.disposition {
        case .coolDown(let duration, let modelOnly):
            entries[index].state.rests[credential][modelOnly ? model : ""] = Rest(until: now.advanced(by: duration), reason: failure.error, rejected: false)
            return .cooledDown(channel: name)
        case .credentialRejected:
            entries[index].state.rests[credential][""] = Rest(until: now.advanced(by: rules.rejectedCredentialRest), reason: failure.error, rejected: true)
            return .credentialRefused(channel: name, credential: credential, everyCredential: entries[index].state.everyCredentialRefused(now: now))
        case .transient:
            entries[index].state.consecutiveFailures += 1
            guard wasProbing || entries[index].state.consecutiveFailures >= rules.breakerThreshold else { return nil }
            entries[index].state.openUntil = now.advanced(by: rules.breakerCooldown)
            return .tripped(channel: name, failures: entries[index].state.consecutiveFailures)
        case .fatal, .elsewhere:
            return nil
        }
    }

    /// Member `id`'s project refused `upstreamID` until `until` (its other models are
    /// unaffected). Answers the channel's name.
    mutating func refused(_ id: Int, upstreamID: String, until: ContinuousClock.Instant) -> String? {
        guard let index = index(of: id) else { return nil }
        entries[index].state.refusedModels[upstreamID] = until
        return entries[index].member.configuration.name
    }

    /// Why no channel can take `model` now: none serves it, or the one that comes back first
    /// (its wait counted down in `retryAfterSeconds`).
    func whyNothingIsEligible(model: String, aliases: [String], now: ContinuousClock.Instant) -> UpstreamError {
        let serving = entries.filter { $0.member.configuration.upstreamID(for: model, aliases: aliases) != nil && $0.member.configuration.weight > 0 }
        guard !serving.isEmpty else { return UpstreamError(.noChannel, detail: "no channel serves \(model)") }
        // Routed there, but refused by the project or missing from its model list.
        if serving.allSatisfy({ !Self.serves($0.member, $0.state, model: model, aliases: aliases, now: now).serves }) {
            // Every channel's project refused it: the caller goes down the model's fallback chain.
            return UpstreamError(.modelNotFound, status: 404, detail: "no channel's project lists or accepts \(model)")
        }
        var soonest: (until: ContinuousClock.Instant, reason: UpstreamError)?
        for state in serving.map(\.state) {
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

    /// Gemini API channels serving `model`, by priority, with a usable credential each: where
    /// a batch may go.
    func batchTargets(model: String, aliases: [String], now: ContinuousClock.Instant) -> [(channel: GoogleChannel, credential: Int, upstreamID: String)] {
        entries.compactMap { entry -> (GoogleChannel, Int, String, Int)? in
            let member = entry.member
            guard member.broken == nil, let channel = member.channel.batchChannel,
                let upstreamID = member.configuration.upstreamID(for: model, aliases: aliases),
                let credential = entry.state.rests.indices.first(where: { Self.activeRest(entry.state.rests[$0], model: model, now: now) == nil })
            else { return nil }
            return (channel, credential, upstreamID, member.configuration.priority)
        }
        .sorted { $0.3 > $1.3 }
        .map { ($0.0, $0.1, $0.2) }
    }

    // MARK: What listings and the database teach

    /// Channel `id`'s own model list (or why it could not be read; the last good list stands).
    mutating func remember(listing: Result<Set<String>?, UpstreamError>, of id: Int, at date: Date) {
        guard let index = index(of: id) else { return }
        switch listing {
        case .success(let listed):
            entries[index].state.listed = listed
            entries[index].state.listedAt = date
            entries[index].state.listError = nil
        case .failure(let error):
            entries[index].state.listError = error.description
        }
    }

    /// What the database knows about each channel (by name): its model list when newer,
    /// refused ids, and refused credentials whose fingerprint still matches. Refusals only
    /// ever lengthen what the roster holds. Wall-clock dates become instants relative to `now`.
    mutating func apply(_ knowledge: [String: ChannelKnowledge], now: ContinuousClock.Instant, wallNow: Date) {
        func instant(_ date: Date) -> ContinuousClock.Instant { now.advanced(by: .seconds(date.timeIntervalSince(wallNow))) }
        for index in entries.indices {
            let config = entries[index].member.configuration
            guard let known = knowledge[config.name] else { continue }
            if let checkedAt = known.checkedAt, entries[index].state.listedAt.map({ $0 < checkedAt }) ?? true {
                entries[index].state.listed = known.listed
                entries[index].state.listedAt = checkedAt
                entries[index].state.listError = known.listError
            }
            for (upstreamID, until) in known.refusedModels where until > wallNow {
                let held = entries[index].state.refusedModels[upstreamID]
                if held.map({ $0 < instant(until) }) ?? true { entries[index].state.refusedModels[upstreamID] = instant(until) }
            }
            for refusal in known.refusedKeys where refusal.until > wallNow {
                let position = refusal.position - 1
                guard entries[index].state.rests.indices.contains(position), config.credentialFingerprint(position) == refusal.fingerprint else { continue }
                let held = entries[index].state.rests[position][""]
                if held.map({ !$0.rejected || $0.until < instant(refusal.until) }) ?? true {
                    entries[index].state.rests[position][""] = Rest(until: instant(refusal.until), reason: UpstreamError(.authFailed, detail: refusal.reason), rejected: true)
                }
            }
        }
    }

    // MARK: Status

    /// Every channel's state now; with `models` (catalog upstream ids → their aliases), whether
    /// each channel serves each of them.
    func status(models: [String: [String]], now: ContinuousClock.Instant) -> [ChannelStatus] {
        entries.map { entry in
            let member = entry.member
            let channel = entry.state
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
}
