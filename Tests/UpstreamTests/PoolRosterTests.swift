import Foundation
import NanoGateCore
import Testing
@testable import Upstream

/// The roster's transitions as pure functions of its value and `now`: no pool, no calls, no
/// clock. Each test states the roster, applies events, and checks the exact choice or state.
@Suite struct PoolRosterTests {
    static let start = ContinuousClock.now
    static let rules = PoolRules(breakerThreshold: 2, breakerCooldown: .seconds(30), rejectedCredentialRest: .seconds(600))
    static let transient = ChannelFailure(error: UpstreamError(.serverError, status: 503), disposition: .transient)
    static let refusedKey = ChannelFailure(error: UpstreamError(.authFailed, status: 403), disposition: .credentialRejected)

    static func member(_ id: Int, _ name: String, keys: Int = 1, priority: Int = 0, weight: Int = 1) -> PoolMember {
        var configuration = ChannelConfiguration(name: name, kind: .gemini, apiKeys: (1...keys).map { "key-\(name)-\($0)" }, priority: priority)
        configuration.weight = weight
        let channel = PoolStateTests.FakeChannel(configuration: configuration, calls: PoolStateTests.Calls()) { _, _ in nil }
        return PoolMember(id: id, channel: channel, gate: ConcurrencyGate(limit: 4, queueLimit: 4), broken: nil, managed: false)
    }

    /// Picks `model` once at `now` with the roll always 0, answering "name#key".
    static func pick(_ roster: inout PoolRoster, _ model: String = "m", avoiding: Set<Int> = [], at now: ContinuousClock.Instant = start) -> String? {
        roster.pick(model: model, aliases: [], avoiding: avoiding, now: now, roll: { _ in 0 }).map { "\($0.member.configuration.name)#\($0.credential + 1)" }
    }

    @Test func credentialsTakeTurnsAndPriorityComesFirst() {
        var roster = PoolRoster(members: [Self.member(0, "low", priority: 1), Self.member(1, "high", keys: 2, priority: 2)])
        #expect(Self.pick(&roster) == "high#1")
        #expect(Self.pick(&roster) == "high#2")
        #expect(Self.pick(&roster) == "high#1")
        #expect(Self.pick(&roster, avoiding: [1]) == "low#1", "a retry goes to a channel not yet tried")
    }

    @Test func weightsSplitTheRollWithinAPriority() {
        var roster = PoolRoster(members: [Self.member(0, "a", weight: 1), Self.member(1, "b", weight: 3)])
        var totals: [Int] = []
        let rolls = [0, 1, 3]
        var chosen: [String] = []
        for roll in rolls {
            let pick = roster.pick(model: "m", aliases: [], avoiding: [], now: Self.start) { total in
                totals.append(total)
                return roll
            }
            chosen.append(pick?.member.configuration.name ?? "none")
        }
        #expect(totals == [4, 4, 4])
        #expect(chosen == ["a", "b", "b"])
    }

    @Test func theBreakerTripsAtTheThresholdAndHalfOpensOnce() {
        var roster = PoolRoster(members: [Self.member(0, "a", priority: 2), Self.member(1, "b", priority: 1)])
        #expect(roster.failed(0, credential: 0, model: "m", failure: Self.transient, now: Self.start, rules: Self.rules) == nil)
        #expect(roster.failed(0, credential: 0, model: "m", failure: Self.transient, now: Self.start, rules: Self.rules) == .tripped(channel: "a", failures: 2))
        #expect(Self.pick(&roster, at: Self.start.advanced(by: .seconds(29))) == "b#1", "open: skipped while another serves")
        let afterCooldown = Self.start.advanced(by: .seconds(30))
        #expect(Self.pick(&roster, at: afterCooldown) == "a#1", "half-open: one probe")
        #expect(roster.state(named: "a")?.probing == true)
        #expect(Self.pick(&roster, at: afterCooldown) == "b#1", "a second request does not probe too")
        #expect(roster.failed(0, credential: 0, model: "m", failure: Self.transient, now: afterCooldown, rules: Self.rules) == .tripped(channel: "a", failures: 3))
        roster.succeeded(0)
        #expect(roster.state(named: "a")?.openUntil == nil && roster.state(named: "a")?.consecutiveFailures == 0)
    }

    @Test func aTrippedChannelStillServesWhenNoneElseCan() {
        var roster = PoolRoster(members: [Self.member(0, "only")])
        _ = roster.failed(0, credential: 0, model: "m", failure: Self.transient, now: Self.start, rules: Self.rules)
        _ = roster.failed(0, credential: 0, model: "m", failure: Self.transient, now: Self.start, rules: Self.rules)
        #expect(Self.pick(&roster) == "only#1")
    }

    @Test func aCoolDownForOneModelLeavesTheOthersAndCountsDownItsWait() {
        var roster = PoolRoster(members: [Self.member(0, "a")])
        let limited = ChannelFailure(error: UpstreamError(.rateLimited, status: 429), disposition: .coolDown(.seconds(20), modelOnly: true))
        #expect(roster.failed(0, credential: 0, model: "x", failure: limited, now: Self.start, rules: Self.rules) == .cooledDown(channel: "a"))
        #expect(Self.pick(&roster, "x") == nil)
        #expect(Self.pick(&roster, "y") == "a#1")
        let why = roster.whyNothingIsEligible(model: "x", aliases: [], now: Self.start.advanced(by: .seconds(5)))
        #expect(why.code == .rateLimited && why.retryAfterSeconds == 16)
        #expect(Self.pick(&roster, "x", at: Self.start.advanced(by: .seconds(21))) == "a#1")
    }

    @Test func everyCredentialRefusedDisablesTheChannel() {
        var roster = PoolRoster(members: [Self.member(0, "a", keys: 2)])
        #expect(roster.failed(0, credential: 0, model: "m", failure: Self.refusedKey, now: Self.start, rules: Self.rules) == .credentialRefused(channel: "a", credential: 0, everyCredential: false))
        #expect(Self.pick(&roster) == "a#2")
        #expect(roster.failed(0, credential: 1, model: "m", failure: Self.refusedKey, now: Self.start, rules: Self.rules) == .credentialRefused(channel: "a", credential: 1, everyCredential: true))
        #expect(!roster.mayServe(model: "m", aliases: [], now: Self.start))
        #expect(roster.whyNothingIsEligible(model: "m", aliases: [], now: Self.start).code == .authFailed)
        #expect(roster.status(models: [:], now: Self.start).first?.state == "disabled")
    }

    @Test func aListedChannelServesOnlyWhatItListsAndARefusalExpires() {
        var roster = PoolRoster(members: [Self.member(0, "listing"), Self.member(1, "vertex-like")])
        roster.remember(listing: .success(["m"]), of: 0, at: Date())
        #expect(roster.serves(channel: "listing", model: "other", aliases: [], now: Self.start) == .notListed)
        #expect(roster.serves(channel: "vertex-like", model: "other", aliases: [], now: Self.start) == .unchecked)
        #expect(roster.refused(1, upstreamID: "other", until: Self.start.advanced(by: .seconds(60))) == "vertex-like")
        #expect(!roster.mayServe(model: "other", aliases: [], now: Self.start))
        #expect(roster.whyNothingIsEligible(model: "other", aliases: [], now: Self.start).code == .modelNotFound)
        #expect(roster.mayServe(model: "other", aliases: [], now: Self.start.advanced(by: .seconds(61))))
    }

    @Test func storedKnowledgeOnlyLengthensRefusals() {
        var roster = PoolRoster(members: [Self.member(0, "a")])
        let wallNow = Date()
        _ = roster.refused(0, upstreamID: "x", until: Self.start.advanced(by: .seconds(100)))
        var known = ChannelKnowledge()
        known.refusedModels = ["x": wallNow.addingTimeInterval(50), "y": wallNow.addingTimeInterval(50)]
        roster.apply(["a": known], now: Self.start, wallNow: wallNow)
        #expect(roster.state(named: "a")?.refusedModels["x"] == Self.start.advanced(by: .seconds(100)), "a shorter stored refusal does not shorten ours")
        let y = roster.state(named: "a")?.refusedModels["y"]
        #expect(y.map { abs(($0 - Self.start.advanced(by: .seconds(50))) / .milliseconds(1)) < 1 } == true, "a new one is taken, as an instant of the pool's clock")
    }

    @Test func replacingManagedChannelsKeepsTheStateOfAnUnchangedOne() {
        var roster = PoolRoster(members: [Self.member(0, "file")])
        let stored = ChannelConfiguration(name: "stored", kind: .gemini, apiKeys: ["k"])
        func make(_ configuration: ChannelConfiguration, _ id: Int) -> PoolMember {
            let channel = PoolStateTests.FakeChannel(configuration: configuration, calls: PoolStateTests.Calls()) { _, _ in nil }
            return PoolMember(id: id, channel: channel, gate: ConcurrencyGate(limit: 1, queueLimit: 1), broken: nil, managed: true)
        }
        #expect(roster.replaceManaged(with: [stored], make: make).isEmpty)
        let id = roster.member(named: "stored")!.id
        _ = roster.failed(id, credential: 0, model: "m", failure: Self.transient, now: Self.start, rules: Self.rules)
        #expect(roster.replaceManaged(with: [stored], make: make).isEmpty)
        #expect(roster.state(named: "stored")?.consecutiveFailures == 1, "unchanged: its state stays")
        var changed = stored
        changed.priority = 5
        #expect(roster.replaceManaged(with: [changed], make: make).map(\.id) == [id])
        #expect(roster.state(named: "stored")?.consecutiveFailures == 0, "changed: it starts afresh")
        #expect(roster.member(named: "file") != nil, "the file's channels stay")
    }
}
