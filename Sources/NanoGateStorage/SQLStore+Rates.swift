public import Foundation
import SQLKit

/// What a rate-limited request got.
public enum RateDecision: Sendable, Equatable {
    case allowed
    /// Over the limit: the seconds until the next request fits.
    case limited(retryAfterSeconds: Int)
}

/// Counts requests per key against a per-minute limit shared by every gateway instance.
public protocol RateCounter: Sendable {
    func admit(keyID: String, perMinute: Int, now: Date) async throws -> RateDecision
}

extension SQLStore: RateCounter {
    /// One statement per request, whichever instance it reaches: the generic cell rate
    /// algorithm keeps one "theoretical arrival time" per key. Each request pushes it a
    /// minute/limit later; a request that would push it more than a minute past now is
    /// refused. So a key may send its whole minute's allowance at once, and then one request
    /// every minute/limit — never more than `perMinute` in any minute. The conditional upsert
    /// is atomic on both databases (PostgreSQL re-checks the condition under the row's lock).
    ///
    /// Requests sent at once take their `now` before their statements run in turn, so a later
    /// statement may carry an earlier `now` than one already admitted: each request counts as
    /// arriving no earlier than the latest admitted one (`last_us`), so a key's whole allowance
    /// sent at once is admitted whatever order its statements run in.
    public func admit(keyID: String, perMinute: Int, now: Date) async throws -> RateDecision {
        let nowMicros = Int64(now.timeIntervalSince1970 * 1_000_000)
        let interval = Int64(60_000_000 / max(1, perMinute))
        let window: Int64 = 60_000_000
        let greatest: String = backend == .sqlite ? "MAX" : "GREATEST"
        // When this request counts as arriving: its own time, or the latest admitted one's.
        let arrives: SQLQueryString = "\(unsafeRaw: greatest)(\(bind: nowMicros), COALESCE(key_rates.last_us, 0))"
        let admitted = try await database.raw("""
            INSERT INTO key_rates (key_id, tat_us, last_us) VALUES (\(bind: keyID), \(bind: nowMicros + interval), \(bind: nowMicros))
            ON CONFLICT (key_id) DO UPDATE SET tat_us = \(unsafeRaw: greatest)(key_rates.tat_us, \(arrives)) + \(bind: interval), last_us = \(arrives)
            WHERE \(unsafeRaw: greatest)(key_rates.tat_us, \(arrives)) + \(bind: interval) - \(arrives) <= \(bind: window)
            RETURNING tat_us
            """).all()
        guard admitted.isEmpty else { return .allowed }
        struct Row: Decodable { var tat_us: Int64 }
        let arrival = try await database.raw("SELECT tat_us FROM key_rates WHERE key_id = \(bind: keyID)").first(decoding: Row.self)?.tat_us ?? nowMicros
        let waitMicros = max(0, arrival + interval - window - nowMicros)
        return .limited(retryAfterSeconds: max(1, Int((waitMicros + 999_999) / 1_000_000)))
    }
}
