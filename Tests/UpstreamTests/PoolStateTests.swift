import Foundation
import Logging
import NanoGateCore
import NIOCore
import Synchronization
import Testing
@testable import Upstream

/// The pool's routing state — breakers, cool-downs, refusals — exactly, with fake channels and a
/// clock the test moves: no sleeps, no timing the machine can flip.
@Suite struct PoolStateTests {
    /// A clock the test moves by hand.
    final class TestClock: Sendable {
        private let instant = Mutex(ContinuousClock.now)
        var now: ContinuousClock.Instant { instant.withLock { $0 } }
        func advance(by duration: Duration) { instant.withLock { $0 = $0.advanced(by: duration) } }
    }

    /// What the fake channels were asked: (channel, key position, model).
    final class Calls: Sendable {
        let all = Mutex<[String]>([])
        func record(_ call: String) { all.withLock { $0.append(call) } }
        var list: [String] { all.withLock { $0 } }
    }

    /// A channel that answers by a rule of the test's: a failure's disposition, or success.
    struct FakeChannel: UpstreamChannel {
        let configuration: ChannelConfiguration
        let calls: Calls
        let answer: @Sendable (_ credential: Int, _ model: String) -> ChannelFailure?

        var credentialCount: Int { configuration.apiKeys.count }
        var redact: @Sendable (String) -> String { { $0 } }
        var provider: UpstreamError.Provider { .google }

        func generate(model: String, request: GeminiWire.Request, body: ByteBuffer, credential: Int, timeout: Duration, logger: Logger) async -> Result<GeminiWire.Response, ChannelFailure> {
            calls.record("\(configuration.name)#\(credential + 1) \(model)")
            if let failure = answer(credential, model) { return .failure(failure) }
            return .success(try! JSONDecoder().decode(GeminiWire.Response.self, from: Data(#"{"candidates":[]}"#.utf8)))
        }

        func stream(model: String, request: GeminiWire.Request, body: ByteBuffer, credential: Int, deadline: ContinuousClock.Instant, logger: Logger) async -> Result<GeminiEventStream, ChannelFailure> {
            .failure(ChannelFailure(error: UpstreamError(.serverError), disposition: .fatal))
        }

        func listModels(logger: Logger) async throws(UpstreamError) -> Set<String>? { nil }
        func probe(model: String, logger: Logger) async throws(UpstreamError) -> String { "" }
        func shutdown() async {}
    }

    static let request = try! JSONDecoder().decode(GeminiWire.Request.self, from: Data(#"{"contents":[{"role":"user","parts":[{"text":"p"}]}]}"#.utf8))

    static var quiet: Logger {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        return logger
    }

    static func pool(_ channels: [FakeChannel], clock: TestClock, attempts: Int = 3, threshold: Int = 5, cooldown: Duration = .seconds(30)) -> UpstreamPool {
        var configuration = UpstreamConfiguration(
            apiKeys: [], channels: channels.map(\.configuration), maxAttempts: attempts, retryBaseDelay: .zero, breakerThreshold: threshold, breakerCooldown: cooldown
        )
        configuration.requestTimeout = .seconds(30)
        return UpstreamPool(configuration: configuration, channels: channels, logger: quiet, random: { _ in 0 }, now: { clock.now })
    }

    @discardableResult
    static func call(_ pool: UpstreamPool, _ model: String) async -> Bool {
        do {
            _ = try await pool.generateContent(model: model, imageSize: nil, request: request, logger: quiet)
            return true
        } catch {
            return false
        }
    }

    static let unavailable = ChannelFailure(error: UpstreamError(.serverError, status: 503), disposition: .transient)

    /// Two failures in a row trip the first channel: the next request goes to the second, and
    /// once the cool-down has passed, one request probes the first again; its success closes it.
    @Test func aBreakerTripsAfterTheThresholdAndProbesOnceAfterTheCooldown() async {
        let clock = TestClock()
        let calls = Calls()
        let failing = Mutex(true)
        let first = FakeChannel(configuration: ChannelConfiguration(name: "a", kind: .gemini, apiKeys: ["k"], priority: 2), calls: calls) { _, _ in
            failing.withLock { $0 } ? Self.unavailable : nil
        }
        let second = FakeChannel(configuration: ChannelConfiguration(name: "b", kind: .gemini, apiKeys: ["k"], priority: 1), calls: calls) { _, _ in nil }
        let pool = Self.pool([first, second], clock: clock, attempts: 1, threshold: 2, cooldown: .seconds(30))
        #expect(await Self.call(pool, "m") == false)
        #expect(await Self.call(pool, "m") == false)
        #expect(pool.status().first { $0.name == "a" }?.state == "tripped")
        #expect(await Self.call(pool, "m"))
        #expect(calls.list == ["a#1 m", "a#1 m", "b#1 m"], "skipped while open")
        clock.advance(by: .seconds(29))
        #expect(await Self.call(pool, "m"))
        #expect(calls.list.last == "b#1 m", "still open a second before the cool-down ends")
        clock.advance(by: .seconds(2))
        failing.withLock { $0 = false }
        #expect(await Self.call(pool, "m"))
        #expect(calls.list.last == "a#1 m", "probed once the cool-down passed")
        #expect(pool.status().first { $0.name == "a" }?.state == "ok", "the probe's success closed it")
    }

    /// A failed probe opens the breaker again at once (no second threshold to count).
    @Test func aFailedProbeOpensTheBreakerAgain() async {
        let clock = TestClock()
        let calls = Calls()
        let first = FakeChannel(configuration: ChannelConfiguration(name: "a", kind: .gemini, apiKeys: ["k"], priority: 2), calls: calls) { _, _ in Self.unavailable }
        let second = FakeChannel(configuration: ChannelConfiguration(name: "b", kind: .gemini, apiKeys: ["k"], priority: 1), calls: calls) { _, _ in nil }
        let pool = Self.pool([first, second], clock: clock, attempts: 1, threshold: 2, cooldown: .seconds(30))
        await Self.call(pool, "m")
        await Self.call(pool, "m")
        clock.advance(by: .seconds(31))
        await Self.call(pool, "m")  // the probe, failing
        await Self.call(pool, "m")
        #expect(calls.list == ["a#1 m", "a#1 m", "a#1 m", "b#1 m"])
        #expect(pool.status().first { $0.name == "a" }?.state == "tripped")
    }

    /// A 429 with its retry delay cools that key for that model only: the request moves to the
    /// next key; the model waits out the delay on that key while another model still uses it.
    @Test func aRateLimitCoolsThatKeyForThatModelOnly() async {
        let clock = TestClock()
        let calls = Calls()
        let limited = Mutex(true)
        let channel = FakeChannel(configuration: ChannelConfiguration(name: "a", kind: .gemini, apiKeys: ["k1", "k2"]), calls: calls) { credential, model in
            credential == 0 && model == "x" && limited.withLock({ $0 })
                ? ChannelFailure(error: UpstreamError(.rateLimited, status: 429), disposition: .coolDown(.seconds(60), modelOnly: true)) : nil
        }
        let pool = Self.pool([channel], clock: clock)
        #expect(await Self.call(pool, "x"))
        #expect(calls.list == ["a#1 x", "a#2 x"], "the 429 moved the request to the next key")
        for _ in 0..<3 { #expect(await Self.call(pool, "x")) }
        #expect(calls.list.suffix(3) == ["a#2 x", "a#2 x", "a#2 x"], "key 1 rests for x")
        #expect(await Self.call(pool, "y"))
        #expect(await Self.call(pool, "y"))
        #expect(calls.list.suffix(2).contains("a#1 y"), "key 1 still serves y")
        limited.withLock { $0 = false }
        clock.advance(by: .seconds(61))
        #expect(await Self.call(pool, "x"))
        #expect(await Self.call(pool, "x"))
        #expect(calls.list.suffix(2).contains("a#1 x"), "key 1 serves x again once its delay passed")
    }

    /// A project that refuses a model sends it to the next channel, for that model only, for an
    /// hour; then it is asked again.
    @Test func aRefusedModelIsRememberedPerChannelForAnHour() async {
        let clock = TestClock()
        let calls = Calls()
        let refusing = FakeChannel(configuration: ChannelConfiguration(name: "new", kind: .gemini, apiKeys: ["k"], priority: 2), calls: calls) { _, model in
            model == "old-model" ? ChannelFailure(error: UpstreamError(.modelNotFound, status: 403), disposition: .fatal) : nil
        }
        let serving = FakeChannel(configuration: ChannelConfiguration(name: "old", kind: .gemini, apiKeys: ["k"], priority: 1), calls: calls) { _, _ in nil }
        let pool = Self.pool([refusing, serving], clock: clock)
        #expect(await Self.call(pool, "old-model"))
        #expect(await Self.call(pool, "old-model"))
        #expect(await Self.call(pool, "new-model"))
        #expect(calls.list == ["new#1 old-model", "old#1 old-model", "old#1 old-model", "new#1 new-model"])
        #expect(pool.serves(channel: "new", model: "old-model") == .refused && pool.mayServe(model: "old-model"))
        #expect(pool.drainLearned().count == 1, "the refusal is handed to the database once")
        clock.advance(by: .seconds(3601))
        #expect(await Self.call(pool, "old-model"))
        #expect(calls.list.suffix(2) == ["new#1 old-model", "old#1 old-model"], "asked again after the hour")
    }
}
