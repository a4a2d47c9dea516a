public import Foundation
import NanoGateCore
import Logging
public import SQLKit
import Crypto
import NIOCore
import NIOPosix

/// Keys and usage in any SQLKit database. The queries are plain SQL that SQLite and PostgreSQL
/// both accept, and every change is a single statement, so several gateway instances can share
/// one database without read-modify-write races.
public struct SQLStore: KeyStore, UsageLog, SignatureStore {
    public let database: any SQLDatabase

    public init(database: any SQLDatabase) {
        self.database = database
    }

    /// Which SQL the database speaks where the two differ (triggers, `GREATEST`).
    enum Backend { case sqlite, postgres }

    var backend: Backend { database.dialect.name == "sqlite" ? .sqlite : .postgres }

    typealias Migration = (version: Int, run: @Sendable (any SQLDatabase) async throws -> Void)

    /// SQLite's schema changes, in order; each runs once, recorded in `nanogate_schema`. The
    /// first is idempotent so databases made before versioning start at the right place.
    static let sqliteMigrations: [Migration] = [
        (1, { database in try await SQLStore.createInitialTables(database) }),
        (2, { database in
            try await database.raw("ALTER TABLE usage_log ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0").run()
            try await database.raw("ALTER TABLE usage_log ADD COLUMN upstream_cost_micro_usd BIGINT NOT NULL DEFAULT 0").run()
        }),
        (3, { database in try await SQLStore.addMoney(database) }),
        // Every upstream attempt of a request (channel, key position, status, latency), as JSON.
        (4, { database in try await database.raw("ALTER TABLE usage_log ADD COLUMN upstream_attempts TEXT").run() }),
        // Upstream channels the operator added through the admin API or CLI (the file's stay in the file).
        (5, { database in
            try await database.raw("CREATE TABLE IF NOT EXISTS upstream_channels (name TEXT PRIMARY KEY, config TEXT NOT NULL, updated_at BIGINT NOT NULL)").run()
        }),
        (6, { database in try await SQLStore.createRateTable(database) }),
        (7, { database in try await SQLStore.createJobsTable(database) }),
        (8, { database in try await SQLStore.createBatchTables(database) }),
        (9, { database in try await SQLStore.addServerKeyedColumns(database, binary: "BLOB") }),
        (10, { database in try await SQLStore.addServiceTiers(database) }),
        (11, { database in try await SQLStore.createChannelKnowledgeTables(database) }),
        (12, { database in try await SQLStore.createRefunds(database) }),
        (13, { database in try await SQLStore.addObjectNames(database) }),
        (14, { database in try await SQLStore.addColumnIfMissing(database, table: "key_rates", column: "last_us", type: "BIGINT") }),
        (15, { database in try await SQLStore.createKeyEpoch(database, backend: .sqlite) }),
        (16, { database in try await SQLStore.createConsoleSessions(database) }),
        (17, { database in try await SQLStore.addColumnIfMissing(database, table: "usage_log", column: "delivered_size", type: "TEXT") }),
        (18, { database in try await SQLStore.createStoredResponses(database) }),
    ]

    /// PostgreSQL's: PostgreSQL support began at SQLite's version 5, so its first migration
    /// makes that schema whole (with PL/pgSQL triggers); later versions match SQLite's.
    static let postgresMigrations: [Migration] = [
        (5, { database in try await PostgresSchema.createVersion5(database) }),
        (6, { database in try await SQLStore.createRateTable(database) }),
        (7, { database in try await SQLStore.createJobsTable(database) }),
        (8, { database in try await SQLStore.createBatchTables(database) }),
        (9, { database in try await SQLStore.addServerKeyedColumns(database, binary: "BYTEA") }),
        (10, { database in try await SQLStore.addServiceTiers(database) }),
        (11, { database in try await SQLStore.createChannelKnowledgeTables(database) }),
        (12, { database in try await SQLStore.createRefunds(database) }),
        (13, { database in try await SQLStore.addObjectNames(database) }),
        (14, { database in try await SQLStore.addColumnIfMissing(database, table: "key_rates", column: "last_us", type: "BIGINT") }),
        (15, { database in try await SQLStore.createKeyEpoch(database, backend: .postgres) }),
        (16, { database in try await SQLStore.createConsoleSessions(database) }),
        (17, { database in try await SQLStore.addColumnIfMissing(database, table: "usage_log", column: "delivered_size", type: "TEXT") }),
        (18, { database in try await SQLStore.createStoredResponses(database) }),
    ]

    /// Version 14 (`key_rates.last_us`): the latest admitted arrival per key, so requests sent
    /// at once are counted in the order the database runs them (`admit`).
    ///
    /// Version 13: payloads in the image store, rows naming them: a job's answer
    /// (`image_jobs.result_name`) and a file's content (`api_files.object_name`).
    private static func addObjectNames(_ database: any SQLDatabase) async throws {
        try await addColumnIfMissing(database, table: "image_jobs", column: "result_name", type: "TEXT")
        try await addColumnIfMissing(database, table: "api_files", column: "object_name", type: "TEXT")
    }

    /// Version 10: which service tiers keys and groups may use, and the tier each request was
    /// served (and charged) at.
    private static func addServiceTiers(_ database: any SQLDatabase) async throws {
        try await addColumnIfMissing(database, table: "api_keys", column: "service_tiers", type: "TEXT")
        try await addColumnIfMissing(database, table: "key_groups", column: "service_tiers", type: "TEXT")
        try await addColumnIfMissing(database, table: "usage_log", column: "service_tier", type: "TEXT")
    }

    /// Version 9: what money and delivery are keyed on, set by the server only: the job a usage
    /// row belongs to (a refund never trusts the client's `x-request-id`), each batch line's
    /// validated plan (delivery never re-validates or re-fetches), and uploaded files as bytes
    /// (not base64 text).
    private static func addServerKeyedColumns(_ database: any SQLDatabase, binary: String) async throws {
        try await addColumnIfMissing(database, table: "usage_log", column: "job_id", type: "TEXT")
        try await database.raw("CREATE INDEX IF NOT EXISTS usage_log_job ON usage_log (job_id) WHERE job_id IS NOT NULL").run()
        try await addColumnIfMissing(database, table: "batches", column: "line_plans", type: "TEXT")
        try await addColumnIfMissing(database, table: "api_files", column: "data", type: binary)
        try await database.raw("CREATE INDEX IF NOT EXISTS api_files_key ON api_files (key_id, expires_at)").run()
    }

    /// `ALTER TABLE … ADD COLUMN` that a second run leaves alone (SQLite has no `IF NOT EXISTS` there).
    static func addColumnIfMissing(_ database: any SQLDatabase, table: String, column: String, type: String) async throws {
        struct Row: Decodable { var count: Int64 }
        let existing: SQLQueryString = database.dialect.name == "sqlite"
            ? "SELECT COUNT(*) AS count FROM pragma_table_info(\(bind: table)) WHERE name = \(bind: column)"
            : "SELECT COUNT(*) AS count FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = \(bind: table) AND column_name = \(bind: column)"
        guard try await database.raw(existing).first(decoding: Row.self)?.count ?? 0 == 0 else { return }
        try await database.raw("ALTER TABLE \(unsafeRaw: table) ADD COLUMN \(unsafeRaw: column) \(unsafeRaw: type)").run()
    }

    /// Version 6: each rate-limited key's next allowed arrival (GCRA), so requests-per-minute
    /// limits hold across every instance on the database.
    private static func createRateTable(_ database: any SQLDatabase) async throws {
        try await database.raw("CREATE TABLE IF NOT EXISTS key_rates (key_id TEXT PRIMARY KEY, tat_us BIGINT NOT NULL)").run()
    }

    var migrations: [Migration] { backend == .sqlite ? Self.sqliteMigrations : Self.postgresMigrations }

    /// Version 3: credit, limits and money per key (micro-USD), groups, price overrides,
    /// reservations with leases, idempotent results, and the usage log's full row.
    private static func addMoney(_ database: any SQLDatabase) async throws {
        for column in [
            "credit_micro_usd BIGINT", "spent_micro_usd BIGINT NOT NULL DEFAULT 0", "reserved_micro_usd BIGINT NOT NULL DEFAULT 0",
            "expires_at BIGINT", "models TEXT", "rpm INTEGER", "concurrency INTEGER", "disabled INTEGER NOT NULL DEFAULT 0",
        ] {
            try await database.raw("ALTER TABLE api_keys ADD COLUMN \(unsafeRaw: column)").run()
        }
        try await database.raw("""
            CREATE TABLE IF NOT EXISTS key_groups (
                name TEXT PRIMARY KEY,
                response_format TEXT NOT NULL,
                multiplier_ppm BIGINT NOT NULL DEFAULT 1000000,
                models TEXT,
                created_at BIGINT NOT NULL
            )
            """).run()
        let now = Int64(Date().timeIntervalSince1970)
        try await database.raw("""
            INSERT INTO key_groups (name, response_format, created_at) VALUES ('default', 'url', \(bind: now)), ('gemini', 'b64_json', \(bind: now))
            ON CONFLICT (name) DO NOTHING
            """).run()
        try await database.raw("""
            CREATE TABLE IF NOT EXISTS prices (
                upstream_model TEXT PRIMARY KEY,
                input_text BIGINT NOT NULL,
                input_image BIGINT NOT NULL,
                output_text BIGINT NOT NULL,
                output_image BIGINT NOT NULL
            )
            """).run()
        try await database.raw("""
            CREATE TABLE IF NOT EXISTS reservations (
                id TEXT PRIMARY KEY,
                key_id TEXT NOT NULL,
                amount_micro_usd BIGINT NOT NULL,
                owner TEXT NOT NULL,
                lease_until BIGINT NOT NULL
            )
            """).run()
        // No index on lease_until: the table holds only requests in flight, and every index is
        // one more write per request on the billing hot path.
        // Money moves inside single statements (a statement is atomic, and SQLite runs one writer
        // at a time): inserting a reservation holds the amount or aborts; deleting one releases
        // it; inserting a usage row releases its reservation and charges its cost.
        try await database.raw("""
            CREATE TRIGGER IF NOT EXISTS reservations_hold BEFORE INSERT ON reservations
            BEGIN
                SELECT RAISE(ABORT, 'insufficient_quota') WHERE NOT EXISTS (
                    SELECT 1 FROM api_keys WHERE id = NEW.key_id AND credit_micro_usd IS NOT NULL
                      AND credit_micro_usd - spent_micro_usd - reserved_micro_usd >= NEW.amount_micro_usd);
                UPDATE api_keys SET reserved_micro_usd = reserved_micro_usd + NEW.amount_micro_usd WHERE id = NEW.key_id;
            END
            """).run()
        try await database.raw("""
            CREATE TRIGGER IF NOT EXISTS reservations_release AFTER DELETE ON reservations
            BEGIN
                UPDATE api_keys SET reserved_micro_usd = reserved_micro_usd - OLD.amount_micro_usd WHERE id = OLD.key_id;
            END
            """).run()
        try await database.raw("""
            CREATE TABLE IF NOT EXISTS idempotent_results (
                key_id TEXT NOT NULL,
                idempotency_key TEXT NOT NULL,
                body_hash TEXT NOT NULL,
                state TEXT NOT NULL,
                status INTEGER,
                content_type TEXT,
                body TEXT,
                created_at BIGINT NOT NULL,
                PRIMARY KEY (key_id, idempotency_key)
            )
            """).run()
        for column in [
            "request_id TEXT", "key_name TEXT", "key_group TEXT", "upstream_model TEXT", "requested_size TEXT", "latency_ms INTEGER NOT NULL DEFAULT 0",
            "input_text_tokens INTEGER NOT NULL DEFAULT 0", "input_image_tokens INTEGER NOT NULL DEFAULT 0",
            "output_text_tokens INTEGER NOT NULL DEFAULT 0", "output_image_tokens INTEGER NOT NULL DEFAULT 0", "upstream_key TEXT",
            "reservation_id TEXT",
        ] {
            try await database.raw("ALTER TABLE usage_log ADD COLUMN \(unsafeRaw: column)").run()
        }
        try await database.raw("""
            CREATE TRIGGER IF NOT EXISTS usage_charge AFTER INSERT ON usage_log
            BEGIN
                DELETE FROM reservations WHERE id = NEW.reservation_id;
                UPDATE api_keys SET spent_micro_usd = spent_micro_usd + NEW.cost_micro_usd WHERE id = NEW.key_id AND NEW.cost_micro_usd <> 0;
            END
            """).run()
        // Rows of one second keep their order: milliseconds from now on.
        try await database.raw("UPDATE usage_log SET created_at = created_at * 1000").run()
        try await database.raw("CREATE INDEX IF NOT EXISTS usage_log_time ON usage_log (created_at)").run()
    }

    /// Brings the schema up to the newest version, all of it in one transaction (a failed
    /// migration leaves the schema as it was); returns the versions applied. Gateways starting
    /// together migrate one at a time: PostgreSQL's advisory lock, SQLite's `BEGIN IMMEDIATE`
    /// (one writer per file), and the version is read inside the transaction.
    @discardableResult
    public func migrate() async throws -> [Int] {
        let migrations = self.migrations
        guard backend == .postgres else { return try await Self.migrate(database, migrations: migrations, begin: "BEGIN IMMEDIATE") }
        return try await database.withSession { session in
            try await session.raw("SELECT pg_advisory_lock(\(bind: Self.migrationLock))").run()
            do {
                let applied = try await Self.migrate(session, migrations: migrations, begin: "BEGIN")
                try await session.raw("SELECT pg_advisory_unlock(\(bind: Self.migrationLock))").run()
                return applied
            } catch {
                try? await session.raw("SELECT pg_advisory_unlock(\(bind: Self.migrationLock))").run()
                throw error
            }
        }
    }

    /// The advisory-lock number NanoGate's migrations hold ("NanoGate" in ASCII).
    static let migrationLock: Int64 = 0x4E_61_6E_6F_47_61_74_65

    private static func migrate(_ database: any SQLDatabase, migrations: [Migration], begin: String) async throws -> [Int] {
        try await database.raw("\(unsafeRaw: begin)").run()
        do {
            try await database.raw("CREATE TABLE IF NOT EXISTS nanogate_schema (version INTEGER NOT NULL)").run()
            struct Row: Decodable { var version: Int }
            let current = try await database.raw("SELECT version FROM nanogate_schema").first(decoding: Row.self)?.version ?? 0
            if current == 0 { try await database.raw("INSERT INTO nanogate_schema (version) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM nanogate_schema)").run() }
            var applied: [Int] = []
            for migration in migrations where migration.version > current {
                try await migration.run(database)
                try await database.raw("UPDATE nanogate_schema SET version = \(bind: migration.version)").run()
                applied.append(migration.version)
            }
            try await database.raw("COMMIT").run()
            return applied
        } catch {
            try? await database.raw("ROLLBACK").run()
            throw error
        }
    }

    /// The schema's version and the one this build needs.
    public func schemaVersion() async throws -> (current: Int, needed: Int) {
        struct Row: Decodable { var version: Int }
        let needed = migrations.last?.version ?? 0
        let exists: Bool
        switch backend {
        case .sqlite:
            exists = try await database.raw("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'nanogate_schema'").first() != nil
        case .postgres:
            exists = try await database.raw("SELECT 1 AS found FROM information_schema.tables WHERE table_name = 'nanogate_schema' AND table_schema = current_schema()").first() != nil
        }
        guard exists else { return (0, needed) }
        return (try await database.raw("SELECT version FROM nanogate_schema").first(decoding: Row.self)?.version ?? 0, needed)
    }

    private static func createInitialTables(_ database: any SQLDatabase) async throws {
        try await database.raw("""
            CREATE TABLE IF NOT EXISTS api_keys (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                key_group TEXT NOT NULL,
                secret_hash TEXT NOT NULL UNIQUE,
                prefix TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                revoked_at BIGINT
            )
            """).run()
        // One active key per name; revoked keys keep their row (and name) for the usage log.
        try await database.raw("CREATE UNIQUE INDEX IF NOT EXISTS api_keys_active_name ON api_keys (name) WHERE revoked_at IS NULL").run()
        try await database.raw("""
            CREATE TABLE IF NOT EXISTS usage_log (
                id TEXT PRIMARY KEY,
                key_id TEXT NOT NULL,
                endpoint TEXT NOT NULL,
                model TEXT NOT NULL,
                status INTEGER NOT NULL,
                images INTEGER NOT NULL,
                input_tokens INTEGER NOT NULL,
                output_tokens INTEGER NOT NULL,
                total_tokens INTEGER NOT NULL,
                cost_micro_usd BIGINT NOT NULL,
                error_code TEXT,
                created_at BIGINT NOT NULL
            )
            """).run()
        try await database.raw("CREATE INDEX IF NOT EXISTS usage_log_key_time ON usage_log (key_id, created_at)").run()
        try await database.raw("""
            CREATE TABLE IF NOT EXISTS thought_signatures (
                hash TEXT PRIMARY KEY,
                signature TEXT NOT NULL,
                created_at BIGINT NOT NULL
            )
            """).run()
    }

    public func saveSignatures(_ signatures: [String: String]) async throws {
        let now = Int64(Date().timeIntervalSince1970)
        for (hash, signature) in signatures {
            // Upsert in one statement: the newest signature for identical content wins.
            try await database.raw("""
                INSERT INTO thought_signatures (hash, signature, created_at) VALUES (\(bind: hash), \(bind: signature), \(bind: now))
                ON CONFLICT (hash) DO UPDATE SET signature = excluded.signature, created_at = excluded.created_at
                """).run()
        }
    }

    private struct SignatureRow: Decodable {
        var hash: String
        var signature: String
    }

    public func pruneSignatures(before date: Date) async throws -> Int {
        try await database.raw("DELETE FROM thought_signatures WHERE created_at < \(bind: Int64(date.timeIntervalSince1970)) RETURNING hash").all().count
    }

    public func signatures(for hashes: [String]) async throws -> [String: String] {
        guard !hashes.isEmpty else { return [:] }
        let rows = try await database.raw("SELECT hash, signature FROM thought_signatures WHERE hash IN (\(binds: hashes))")
            .all(decoding: SignatureRow.self)
        return Dictionary(rows.map { ($0.hash, $0.signature) }, uniquingKeysWith: { first, _ in first })
    }

    static func hash(_ secret: String) -> String {
        SHA256.hash(data: Data(secret.utf8)).lowercaseHex
    }
}
