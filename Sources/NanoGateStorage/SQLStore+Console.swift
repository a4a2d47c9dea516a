public import Foundation
import SQLKit

/// Who a console session acts for: the operator (signed in with the admin token) or one key.
public enum ConsoleRole: String, Sendable, Codable {
    case `operator`
    case key
}

/// A signed-in browser console: the row behind the `ng_console` cookie. The cookie holds a
/// random id; the database holds only its SHA-256, so a leaked database opens no session.
public struct ConsoleSession: Sendable, Equatable {
    public var role: ConsoleRole
    /// The key a key holder signed in with (nil for the operator).
    public var keyID: String?
}

/// One bucket of `GET /admin/v1/usage/summary`: a day, a key or a model.
public struct UsageSummaryRow: Sendable, Equatable, Codable {
    /// The day (`2026-12-07`, UTC), the key's name or the model, as `by` asked.
    public var group: String
    public var requests: Int
    /// Requests answered with an error status (400 and above).
    public var errors: Int
    public var images: Int
    public var costMicroUSD: Int
    public var upstreamCostMicroUSD: Int
    public var inputTokens: Int
    public var outputTokens: Int
    /// Latency percentiles over the bucket's requests (nearest rank), nil when none recorded one.
    public var p50LatencyMs: Int?
    public var p95LatencyMs: Int?

    /// A bucket without requests (a quiet day).
    public init(quiet group: String) {
        self.group = group
        (requests, errors, images, costMicroUSD, upstreamCostMicroUSD, inputTokens, outputTokens) = (0, 0, 0, 0, 0, 0, 0)
    }

    init(
        group: String, requests: Int, errors: Int, images: Int, costMicroUSD: Int, upstreamCostMicroUSD: Int, inputTokens: Int, outputTokens: Int,
        p50LatencyMs: Int?, p95LatencyMs: Int?
    ) {
        (self.group, self.requests, self.errors, self.images) = (group, requests, errors, images)
        (self.costMicroUSD, self.upstreamCostMicroUSD, self.inputTokens, self.outputTokens) = (costMicroUSD, upstreamCostMicroUSD, inputTokens, outputTokens)
        (self.p50LatencyMs, self.p95LatencyMs) = (p50LatencyMs, p95LatencyMs)
    }
}

public enum UsageSummaryGrouping: String, Sendable, CaseIterable {
    case day, key, model
    /// One bucket, `all`: the totals of the range.
    case all
}

extension SQLStore {
    /// Version 16: console sessions, keyed by the hash of the cookie's id. A key holder's row
    /// carries the key's secret hash at sign-in, so rotating the key ends the session.
    static func createConsoleSessions(_ database: any SQLDatabase) async throws {
        try await database.raw("""
            CREATE TABLE IF NOT EXISTS console_sessions (
                id_hash TEXT PRIMARY KEY,
                role TEXT NOT NULL,
                key_id TEXT,
                key_secret_hash TEXT,
                created_at BIGINT NOT NULL,
                last_seen_at BIGINT NOT NULL
            )
            """).run()
        try await database.raw("CREATE INDEX IF NOT EXISTS console_sessions_key ON console_sessions (key_id)").run()
    }

    /// A new session for the operator, or for the active key with this secret; returns the
    /// cookie's id (32 random bytes, base64url), or nil when the secret names no usable key.
    public func createConsoleSession(role: ConsoleRole, keySecret: String? = nil, now: Date = Date()) async throws -> String? {
        var keyID: String?
        var secretHash: String?
        if role == .key {
            guard let keySecret else { return nil }
            struct Row: Decodable { var id: String }
            let hash = Self.hash(keySecret)
            guard let row = try await database.raw("""
                SELECT id FROM api_keys WHERE secret_hash = \(bind: hash) AND revoked_at IS NULL AND disabled = 0
                  AND (expires_at IS NULL OR expires_at > \(bind: Int64(now.timeIntervalSince1970)))
                """).first(decoding: Row.self) else { return nil }
            keyID = row.id
            secretHash = hash
        }
        let id = randomHex(bytes: 32)
        let seconds = Int64(now.timeIntervalSince1970)
        try await database.raw("""
            INSERT INTO console_sessions (id_hash, role, key_id, key_secret_hash, created_at, last_seen_at)
            VALUES (\(bind: Self.hash(id)), \(bind: role.rawValue), \(bind: keyID), \(bind: secretHash), \(bind: seconds), \(bind: seconds))
            """).run()
        return id
    }

    /// The session behind a cookie id while it is valid: younger than `absolute`, used within
    /// `idle`, and (for a key holder) its key still active, enabled, unexpired and not rotated.
    /// Marks it used (at most once a minute, so page loads do not each write). Invalid sessions
    /// are deleted on sight.
    public func consoleSession(id: String, idle: Duration, absolute: Duration, now: Date = Date()) async throws -> ConsoleSession? {
        struct Row: Decodable {
            var role: String
            var key_id: String?
            var created_at: Int64
            var last_seen_at: Int64
            var key_usable: Int64
        }
        let hash = Self.hash(id)
        let seconds = Int64(now.timeIntervalSince1970)
        guard let row = try await database.raw("""
            SELECT s.role, s.key_id, s.created_at, s.last_seen_at,
                   CASE WHEN s.key_id IS NULL THEN 1
                        WHEN k.id IS NOT NULL AND k.revoked_at IS NULL AND k.disabled = 0 AND k.secret_hash = s.key_secret_hash
                             AND (k.expires_at IS NULL OR k.expires_at > \(bind: seconds)) THEN 1
                        ELSE 0 END AS key_usable
            FROM console_sessions s LEFT JOIN api_keys k ON k.id = s.key_id
            WHERE s.id_hash = \(bind: hash)
            """).first(decoding: Row.self) else { return nil }
        let expired = seconds - row.created_at >= absolute.components.seconds || seconds - row.last_seen_at >= idle.components.seconds
        guard let role = ConsoleRole(rawValue: row.role), row.key_usable == 1, !expired else {
            try await database.raw("DELETE FROM console_sessions WHERE id_hash = \(bind: hash)").run()
            return nil
        }
        if seconds - row.last_seen_at >= 60 {
            try await database.raw("UPDATE console_sessions SET last_seen_at = \(bind: seconds) WHERE id_hash = \(bind: hash)").run()
        }
        return ConsoleSession(role: role, keyID: row.key_id)
    }

    /// Sign-out: the session is gone on every instance.
    public func deleteConsoleSession(id: String) async throws {
        try await database.raw("DELETE FROM console_sessions WHERE id_hash = \(bind: Self.hash(id))").run()
    }

    /// Drops sessions past the absolute lifetime (the rest end on sight when they go idle).
    public func sweepConsoleSessions(absolute: Duration, now: Date = Date()) async throws {
        let cutoff = Int64(now.timeIntervalSince1970) - absolute.components.seconds
        try await database.raw("DELETE FROM console_sessions WHERE created_at <= \(bind: cutoff)").run()
    }

    /// What each of these background jobs or batches was charged so far (the sum of its usage rows).
    public func chargedMicroUSD(jobIDs: [String]) async throws -> [String: Int] {
        guard !jobIDs.isEmpty else { return [:] }
        struct Row: Decodable {
            var job_id: String
            var cost: Int64
        }
        let rows = try await database.raw(
            "SELECT job_id, CAST(SUM(cost_micro_usd) AS BIGINT) AS cost FROM usage_log WHERE job_id IN (\(binds: jobIDs)) GROUP BY job_id"
        ).all(decoding: Row.self)
        return Dictionary(uniqueKeysWithValues: rows.map { ($0.job_id, Int($0.cost)) })
    }


    /// Requests, errors, images, money, tokens and latency percentiles per day, key or model,
    /// aggregated in the database (the same SQL on SQLite and PostgreSQL: window functions pick
    /// the percentiles by nearest rank). Newest day first; keys and models by spend.
    public func usageSummary(by grouping: UsageSummaryGrouping, since: Date?, until: Date?, limit: Int = 1000) async throws -> [UsageSummaryRow] {
        let bucket: SQLQueryString
        switch grouping {
        case .day:
            bucket = backend == .sqlite
                ? "strftime('%Y-%m-%d', created_at / 1000, 'unixepoch')"
                : "to_char(to_timestamp(created_at / 1000) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
        case .key: bucket = "COALESCE(key_name, key_id)"
        case .model: bucket = "model"
        case .all: bucket = "'all'"
        }
        var conditions: [SQLQueryString] = []
        if let since { conditions.append("created_at >= \(bind: Int64(since.timeIntervalSince1970 * 1000))") }
        if let until { conditions.append("created_at < \(bind: Int64(until.timeIntervalSince1970 * 1000))") }
        var filter: SQLQueryString = ""
        for (index, condition) in conditions.enumerated() { filter = "\(filter) \(unsafeRaw: index == 0 ? "WHERE" : "AND") \(condition)" }
        let order: SQLQueryString = grouping == .day ? "t.bucket DESC" : "t.cost DESC, t.bucket"
        struct Row: Decodable {
            var bucket: String
            var requests: Int64
            var errors: Int64
            var images: Int64
            var cost: Int64
            var upstream_cost: Int64
            var input_tokens: Int64
            var output_tokens: Int64
            var p50: Int64?
            var p95: Int64?
        }
        let rows = try await database.raw("""
            WITH scoped AS (
                SELECT \(bucket) AS bucket, status, images, cost_micro_usd, upstream_cost_micro_usd, input_tokens, output_tokens, latency_ms
                FROM usage_log\(filter)
            ),
            ranked AS (
                SELECT bucket, latency_ms,
                       ROW_NUMBER() OVER (PARTITION BY bucket ORDER BY latency_ms) AS position,
                       COUNT(*) OVER (PARTITION BY bucket) AS timed
                FROM scoped WHERE latency_ms IS NOT NULL
            ),
            percentiles AS (
                SELECT bucket,
                       CAST(MIN(CASE WHEN position * 100 >= timed * 50 THEN latency_ms END) AS BIGINT) AS p50,
                       CAST(MIN(CASE WHEN position * 100 >= timed * 95 THEN latency_ms END) AS BIGINT) AS p95
                FROM ranked GROUP BY bucket
            ),
            totals AS (
                SELECT bucket, COUNT(*) AS requests, CAST(SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END) AS BIGINT) AS errors,
                       CAST(SUM(images) AS BIGINT) AS images, CAST(SUM(cost_micro_usd) AS BIGINT) AS cost,
                       CAST(SUM(upstream_cost_micro_usd) AS BIGINT) AS upstream_cost,
                       CAST(SUM(input_tokens) AS BIGINT) AS input_tokens, CAST(SUM(output_tokens) AS BIGINT) AS output_tokens
                FROM scoped GROUP BY bucket
            )
            SELECT t.bucket, t.requests, t.errors, t.images, t.cost, t.upstream_cost, t.input_tokens, t.output_tokens, p.p50, p.p95
            FROM totals t LEFT JOIN percentiles p ON p.bucket = t.bucket
            ORDER BY \(order) LIMIT \(bind: max(1, min(limit, 10_000)))
            """).all(decoding: Row.self)
        return rows.map {
            UsageSummaryRow(
                group: $0.bucket, requests: Int($0.requests), errors: Int($0.errors), images: Int($0.images), costMicroUSD: Int($0.cost),
                upstreamCostMicroUSD: Int($0.upstream_cost), inputTokens: Int($0.input_tokens), outputTokens: Int($0.output_tokens),
                p50LatencyMs: $0.p50.map(Int.init), p95LatencyMs: $0.p95.map(Int.init)
            )
        }
    }
}
