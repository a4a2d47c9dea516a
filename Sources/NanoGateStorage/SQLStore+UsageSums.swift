public import Foundation
import SQLKit

extension SQLStore {
    /// What `keyID` was charged in `[since, until)`, summed by the database (one row back,
    /// whatever the number of usage rows). The cast keeps PostgreSQL's `SUM` (NUMERIC) an integer.
    public func chargedMicroUSD(keyID: String, since: Date?, until: Date?) async throws -> Int {
        var sql: SQLQueryString = "SELECT CAST(COALESCE(SUM(cost_micro_usd), 0) AS BIGINT) AS total FROM usage_log WHERE key_id = \(bind: keyID)"
        if let since { sql = "\(sql) AND created_at >= \(bind: Int64(since.timeIntervalSince1970 * 1000))" }
        if let until { sql = "\(sql) AND created_at < \(bind: Int64(until.timeIntervalSince1970 * 1000))" }
        struct Row: Decodable { var total: Int64 }
        return Int(try await database.raw(sql).first(decoding: Row.self)?.total ?? 0)
    }
}
