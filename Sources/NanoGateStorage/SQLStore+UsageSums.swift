public import Foundation
import SQLKit

extension SQLStore {
    /// What `keyID` spent in `[since, until)`: its usage rows' charges less its refunds, summed
    /// by the database (one row back, whatever the number of rows). The casts keep PostgreSQL's
    /// `SUM` (NUMERIC) an integer.
    public func spentMicroUSD(keyID: String, since: Date?, until: Date?) async throws -> Int {
        var range: SQLQueryString = ""
        if let since { range = "\(range) AND created_at >= \(bind: Int64(since.timeIntervalSince1970 * 1000))" }
        if let until { range = "\(range) AND created_at < \(bind: Int64(until.timeIntervalSince1970 * 1000))" }
        let sql: SQLQueryString = """
            SELECT CAST(COALESCE((SELECT SUM(cost_micro_usd) FROM usage_log WHERE key_id = \(bind: keyID)\(range)), 0)
                      - COALESCE((SELECT SUM(amount_micro_usd) FROM refunds WHERE key_id = \(bind: keyID)\(range)), 0) AS BIGINT) AS total
            """
        struct Row: Decodable { var total: Int64 }
        return Int(try await database.raw(sql).first(decoding: Row.self)?.total ?? 0)
    }
}
