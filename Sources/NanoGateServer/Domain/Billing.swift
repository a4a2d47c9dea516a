import Foundation
import Logging
import NanoGateCore
import NanoGateStorage
import Synchronization

/// Prices per upstream model: the operator's overrides (`nanogate prices set`, stored in the
/// database), else the catalog's (the configuration file's `prices:`, else Google's list).
/// Overrides are re-read at most every few seconds, so a change reaches every instance quickly
/// without a query per request.
final class PriceBook: Sendable {
    private let store: SQLStore
    private let refreshInterval: Duration
    private struct State {
        var overrides: [String: TokenPrices] = [:]
        var loaded: ContinuousClock.Instant?
    }
    private let state = Mutex(State())

    init(store: SQLStore, refreshInterval: Duration = .seconds(5)) {
        self.store = store
        self.refreshInterval = refreshInterval
    }

    /// Reloads the overrides when they are older than the refresh interval.
    func refreshIfStale(logger: Logger) async {
        let stale = state.withLock { state in state.loaded.map { $0.duration(to: .now) > refreshInterval } ?? true }
        guard stale else { return }
        do {
            let overrides = try await store.priceOverrides()
            state.withLock { $0 = State(overrides: overrides, loaded: .now) }
        } catch {
            logger.error("could not read price overrides; using the catalog's", metadata: ["error": "\(error)"])
        }
    }

    /// The prices of `upstream`, with `fallback` when the operator set none.
    func prices(upstream: String, fallback: TokenPrices) -> TokenPrices {
        state.withLock { $0.overrides[upstream] } ?? fallback
    }
}

/// Requests-per-minute and concurrency limits per key. The per-minute count lives in the
/// database (`RateCounter`), so it holds across every instance; the concurrency count is this
/// instance's (a request in flight is a connection here).
final class KeyLimiter: Sendable {
    private let rates: any RateCounter
    private let inFlight = Mutex([String: Int]())

    init(rates: any RateCounter) {
        self.rates = rates
    }

    /// Counts a new request of `key`, or throws the 429 it gets. Call `finish` when it ends.
    func begin(_ key: APIKey, logger: Logger) async throws(GatewayError) {
        let refusal = inFlight.withLock { inFlight -> GatewayError? in
            if let concurrency = key.concurrency, inFlight[key.id] ?? 0 >= concurrency {
                return .keyRateLimited("This key may run \(concurrency) request(s) at once; wait for one to finish.", retryAfterSeconds: 1)
            }
            inFlight[key.id, default: 0] += 1
            return nil
        }
        if let refusal { throw refusal }
        guard let rpm = key.rpm else { return }
        let decision: RateDecision
        do {
            decision = try await rates.admit(keyID: key.id, perMinute: rpm, now: Date())
        } catch {
            finish(key)
            logger.error("could not count the key's request rate", metadata: ["error": "\(String(reflecting: error))"])
            throw .internal("The key's rate limit could not be checked; retry.")
        }
        if case .limited(let wait) = decision {
            finish(key)
            throw .keyRateLimited("This key is limited to \(rpm) requests per minute. Retry in \(wait) s.", retryAfterSeconds: wait)
        }
    }

    /// Counts one request of `key` toward its per-minute limit only (a background job's
    /// submission: the job's run is not a connection here), or throws the 429 it gets.
    func admitRate(_ key: APIKey, logger: Logger) async throws(GatewayError) {
        guard let rpm = key.rpm else { return }
        let decision: RateDecision
        do {
            decision = try await rates.admit(keyID: key.id, perMinute: rpm, now: Date())
        } catch {
            logger.error("could not count the key's request rate", metadata: ["error": "\(String(reflecting: error))"])
            throw .internal("The key's rate limit could not be checked; retry.")
        }
        if case .limited(let wait) = decision {
            throw .keyRateLimited("This key is limited to \(rpm) requests per minute. Retry in \(wait) s.", retryAfterSeconds: wait)
        }
    }

    func finish(_ key: APIKey) {
        inFlight.withLock { inFlight in
            let left = (inFlight[key.id] ?? 1) - 1
            inFlight[key.id] = left > 0 ? left : nil
        }
    }
}

/// What a request may cost at most, reserved before Google is called.
enum ReservationEstimate {
    /// Generous text-output allowance per image (thinking is billed as text on Gemini 3).
    static func textAllowance(_ family: ModelFamily) -> Int { family.thinks ? 4_000 : 1_000 }
    /// Generous input tokens per input image (Pro bills 560, 2.5 258 per tile).
    static let tokensPerInputImage = 1_290

    /// The worst case of `count` images of `spec` with this input, on whichever of `targets`
    /// costs most, with the group multiplier.
    static func microUSD(
        targets: [UpstreamFallback], spec: ImageSpec, count: Int, promptTokens: Int, inputImages: Int,
        prices: (String, ModelFamily) -> TokenPrices, multiplierPPM: Int
    ) -> Int {
        let costs = targets.map { target -> Int in
            let (id, family) = (target.id, target.family)
            let output = family.outputImageTokens(spec.imageSize)
            let text = textAllowance(family)
            let inputImageTokens = inputImages * tokensPerInputImage
            let usage = ImageUsage(
                inputTokens: promptTokens + inputImageTokens, inputTokensDetails: .init(imageTokens: inputImageTokens, textTokens: promptTokens),
                outputTokens: output + text, outputTokensDetails: .init(imageTokens: output, textTokens: text), totalTokens: 0
            )
            return Pricing.costMicroUSD(usage, prices: prices(id, family), multiplierPPM: multiplierPPM)
        }
        let one = costs.max() ?? 0
        let (total, overflow) = one.multipliedReportingOverflow(by: max(1, count))
        return overflow ? .max : total
    }
}

/// The reservations of requests still running in this instance: only these get their leases
/// renewed, so a hold whose request vanished without settling (a response never written) runs
/// out and is released like a dead instance's.
final class LiveReservations: Sendable {
    private let ids = Mutex(Set<String>())

    func add(_ id: String) { ids.withLock { _ = $0.insert(id) } }
    func remove(_ id: String) { ids.withLock { _ = $0.remove(id) } }
    var all: [String] { ids.withLock { Array($0) } }
}
