public import Foundation
import SQLKit

/// Money given back to a key: its own ledger entry, never a negative usage row. A key's spent
/// is always the sum of its usage rows' charges (each ≥ 0) minus the sum of its refunds.
public struct Refund: Sendable, Equatable {
    public var id: String
    public var keyID: String
    /// The job whose charge is given back (nil: another reason).
    public var jobID: String?
    /// More than zero.
    public var amountMicroUSD: Int
    /// Why, as a code (`job_interrupted`).
    public var reason: String
    public var createdAt: Date

    public init(id: String = UUID().uuidString.lowercased(), keyID: String, jobID: String?, amountMicroUSD: Int, reason: String, createdAt: Date = Date()) {
        self.id = id
        self.keyID = keyID
        self.jobID = jobID
        self.amountMicroUSD = amountMicroUSD
        self.reason = reason
        self.createdAt = createdAt
    }
}

/// A key's money as the ledger has it: what its usage rows charged, what was refunded, and
/// the spent that follows (`charged − refunded`, the column every request checks).
public struct KeyMoney: Sendable, Equatable {
    public var chargedMicroUSD: Int
    public var refundedMicroUSD: Int
    public var spentMicroUSD: Int

    public init(chargedMicroUSD: Int, refundedMicroUSD: Int, spentMicroUSD: Int) {
        self.chargedMicroUSD = chargedMicroUSD
        self.refundedMicroUSD = refundedMicroUSD
        self.spentMicroUSD = spentMicroUSD
    }
}

extension SQLStore {
    /// Version 12: refunds as ledger entries of their own. Earlier refunds (negative usage rows)
    /// move there unchanged in amount, so no key's spent moves; from now on a usage row's
    /// charge is never negative.
    static func createRefunds(_ database: any SQLDatabase) async throws {
        let postgres = database.dialect.name != "sqlite"
        try await database.raw("""
            CREATE TABLE IF NOT EXISTS refunds (
                id TEXT PRIMARY KEY,
                key_id TEXT NOT NULL,
                job_id TEXT,
                amount_micro_usd BIGINT NOT NULL CHECK (amount_micro_usd > 0),
                reason TEXT NOT NULL,
                created_at BIGINT NOT NULL
            )
            """).run()
        try await database.raw("CREATE INDEX IF NOT EXISTS refunds_key ON refunds (key_id, created_at)").run()
        try await database.raw("CREATE INDEX IF NOT EXISTS refunds_job ON refunds (job_id) WHERE job_id IS NOT NULL").run()
        // The old negative rows: already subtracted from spent, so moved before the trigger exists.
        try await database.raw("""
            INSERT INTO refunds (id, key_id, job_id, amount_micro_usd, reason, created_at)
            SELECT id, key_id, job_id, -cost_micro_usd, 'job_interrupted', created_at FROM usage_log WHERE cost_micro_usd < 0
            """).run()
        try await database.raw("DELETE FROM usage_log WHERE cost_micro_usd < 0").run()
        if postgres {
            try await database.raw("""
                CREATE OR REPLACE FUNCTION nanogate_refund() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    UPDATE api_keys SET spent_micro_usd = spent_micro_usd - NEW.amount_micro_usd WHERE id = NEW.key_id;
                    RETURN NEW;
                END
                $$
                """).run()
            try await database.raw("CREATE OR REPLACE TRIGGER refunds_apply AFTER INSERT ON refunds FOR EACH ROW EXECUTE FUNCTION nanogate_refund()").run()
            try await database.raw("ALTER TABLE usage_log DROP CONSTRAINT IF EXISTS usage_log_charge_not_negative").run()
            try await database.raw("ALTER TABLE usage_log ADD CONSTRAINT usage_log_charge_not_negative CHECK (cost_micro_usd >= 0)").run()
        } else {
            try await database.raw("""
                CREATE TRIGGER IF NOT EXISTS refunds_apply AFTER INSERT ON refunds
                BEGIN
                    UPDATE api_keys SET spent_micro_usd = spent_micro_usd - NEW.amount_micro_usd WHERE id = NEW.key_id;
                END
                """).run()
            // SQLite cannot add a CHECK to a table: a trigger refuses the row instead.
            try await database.raw("""
                CREATE TRIGGER IF NOT EXISTS usage_log_charge_not_negative BEFORE INSERT ON usage_log
                WHEN NEW.cost_micro_usd < 0
                BEGIN
                    SELECT RAISE(ABORT, 'a usage row never charges less than nothing: refunds are ledger entries');
                END
                """).run()
        }
    }

    /// Gives `refund.amountMicroUSD` back to its key: the entry and the key's spent change in
    /// one statement (the trigger).
    public func refund(_ refund: Refund) async throws {
        try await database.raw("""
            INSERT INTO refunds (id, key_id, job_id, amount_micro_usd, reason, created_at)
            VALUES (\(bind: refund.id), \(bind: refund.keyID), \(bind: refund.jobID), \(bind: Int64(refund.amountMicroUSD)), \(bind: refund.reason),
                    \(bind: Self.millis(refund.createdAt)))
            """).run()
    }

    /// A key's refunds, newest first.
    public func refunds(keyID: String, limit: Int = 100) async throws -> [Refund] {
        struct Row: Decodable {
            var id: String
            var key_id: String
            var job_id: String?
            var amount_micro_usd: Int64
            var reason: String
            var created_at: Int64
        }
        return try await database.raw("""
            SELECT id, key_id, job_id, amount_micro_usd, reason, created_at FROM refunds WHERE key_id = \(bind: keyID)
            ORDER BY created_at DESC LIMIT \(bind: limit)
            """).all(decoding: Row.self).map {
            Refund(
                id: $0.id, keyID: $0.key_id, jobID: $0.job_id, amountMicroUSD: Int($0.amount_micro_usd), reason: $0.reason,
                createdAt: Date(timeIntervalSince1970: TimeInterval($0.created_at) / 1000)
            )
        }
    }

    /// What a key was charged, refunded, and the spent that follows, summed by the database.
    public func money(keyID: String) async throws -> KeyMoney {
        struct Row: Decodable {
            var charged: Int64?
            var refunded: Int64?
            var spent: Int64?
        }
        let row = try await database.raw("""
            SELECT (SELECT CAST(SUM(cost_micro_usd) AS BIGINT) FROM usage_log WHERE key_id = \(bind: keyID)) AS charged,
                   (SELECT CAST(SUM(amount_micro_usd) AS BIGINT) FROM refunds WHERE key_id = \(bind: keyID)) AS refunded,
                   (SELECT spent_micro_usd FROM api_keys WHERE id = \(bind: keyID)) AS spent
            """).first(decoding: Row.self)
        return KeyMoney(chargedMicroUSD: Int(row?.charged ?? 0), refundedMicroUSD: Int(row?.refunded ?? 0), spentMicroUSD: Int(row?.spent ?? 0))
    }

    /// What a job's runs charged its key, less what was already refunded for it.
    public func unrefundedMicroUSD(jobID: String, keyID: String) async throws -> Int {
        struct Row: Decodable {
            var charged: Int64?
            var refunded: Int64?
        }
        let row = try await database.raw("""
            SELECT (SELECT CAST(SUM(cost_micro_usd) AS BIGINT) FROM usage_log WHERE job_id = \(bind: jobID) AND key_id = \(bind: keyID)) AS charged,
                   (SELECT CAST(SUM(amount_micro_usd) AS BIGINT) FROM refunds WHERE job_id = \(bind: jobID) AND key_id = \(bind: keyID)) AS refunded
            """).first(decoding: Row.self)
        return Int(row?.charged ?? 0) - Int(row?.refunded ?? 0)
    }
}
