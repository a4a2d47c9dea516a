public import Foundation
public import Logging
public import SQLKit
import Crypto
import NIOCore
import NIOPosix
import SQLiteKit
import SQLiteNIO

/// Keys and usage in any SQLKit database. The queries are plain SQL that SQLite and PostgreSQL
/// both accept, and every change is a single statement, so several gateway instances can share
/// one database without read-modify-write races.
public struct SQLStore: KeyStore, UsageLog, SignatureStore {
    private let database: any SQLDatabase

    public init(database: any SQLDatabase) {
        self.database = database
    }

    /// The schema changes, in order; each runs once, recorded in `nanogate_schema`. The first
    /// is idempotent so databases made before versioning start at the right place.
    static let migrations: [@Sendable (any SQLDatabase) async throws -> Void] = [
        { database in try await SQLStore.createInitialTables(database) },
        { database in
            try await database.raw("ALTER TABLE usage_log ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0").run()
            try await database.raw("ALTER TABLE usage_log ADD COLUMN upstream_cost_micro_usd BIGINT NOT NULL DEFAULT 0").run()
        },
    ]

    /// Brings the schema up to the newest version.
    public func migrate() async throws {
        try await database.raw("CREATE TABLE IF NOT EXISTS nanogate_schema (version INTEGER NOT NULL)").run()
        struct Row: Decodable { var version: Int }
        let current = try await database.raw("SELECT version FROM nanogate_schema").first(decoding: Row.self)?.version ?? 0
        if current == 0 { try await database.raw("INSERT INTO nanogate_schema (version) VALUES (0)").run() }
        for (index, migration) in Self.migrations.enumerated() where index + 1 > current {
            try await migration(database)
            try await database.raw("UPDATE nanogate_schema SET version = \(bind: index + 1)").run()
        }
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

    private struct KeyRow: Decodable {
        var id: String
        var name: String
        var key_group: String
        var prefix: String
        var created_at: Int64
        var revoked_at: Int64?

        var key: APIKey {
            APIKey(
                id: id, name: name, group: KeyGroup(rawValue: key_group) ?? .default, prefix: prefix,
                createdAt: Date(timeIntervalSince1970: TimeInterval(created_at)),
                revokedAt: revoked_at.map { Date(timeIntervalSince1970: TimeInterval($0)) }
            )
        }
    }

    static func hash(_ secret: String) -> String {
        SHA256.hash(data: Data(secret.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    public func createKey(name: String, group: KeyGroup) async throws -> (key: APIKey, secret: String) {
        let secret = KeySecrets.generate()
        let key = APIKey(
            id: UUID().uuidString.lowercased(), name: name, group: group, prefix: String(secret.prefix(10)),
            createdAt: Date(timeIntervalSince1970: Date().timeIntervalSince1970.rounded(.down)), revokedAt: nil
        )
        // Insert only when no active key has the name: one atomic statement, no check-then-insert race.
        let inserted = try await database.raw("""
            INSERT INTO api_keys (id, name, key_group, secret_hash, prefix, created_at)
            SELECT \(bind: key.id), \(bind: name), \(bind: group.rawValue), \(bind: Self.hash(secret)), \(bind: key.prefix), \(bind: Int64(key.createdAt.timeIntervalSince1970))
            WHERE NOT EXISTS (SELECT 1 FROM api_keys WHERE name = \(bind: name) AND revoked_at IS NULL)
            RETURNING id
            """).all()
        guard !inserted.isEmpty else { throw KeyStoreError.duplicateName(name) }
        return (key, secret)
    }

    public func activeKey(secret: String) async throws -> APIKey? {
        try await database.raw("""
            SELECT id, name, key_group, prefix, created_at, revoked_at FROM api_keys
            WHERE secret_hash = \(bind: Self.hash(secret)) AND revoked_at IS NULL
            """).first(decoding: KeyRow.self)?.key
    }

    public func listKeys() async throws -> [APIKey] {
        try await database.raw("SELECT id, name, key_group, prefix, created_at, revoked_at FROM api_keys ORDER BY created_at, name")
            .all(decoding: KeyRow.self).map(\.key)
    }

    public func revokeKey(name: String) async throws {
        let revoked = try await database.raw("""
            UPDATE api_keys SET revoked_at = \(bind: Int64(Date().timeIntervalSince1970))
            WHERE name = \(bind: name) AND revoked_at IS NULL RETURNING id
            """).all()
        guard !revoked.isEmpty else { throw KeyStoreError.notFound(name) }
    }

    public func record(_ entry: UsageRecord) async throws {
        try await database.raw("""
            INSERT INTO usage_log (id, key_id, endpoint, model, status, images, input_tokens, output_tokens, total_tokens, cost_micro_usd, error_code,
                                   upstream_cost_micro_usd, attempts, created_at)
            VALUES (\(bind: UUID().uuidString.lowercased()), \(bind: entry.keyID), \(bind: entry.endpoint), \(bind: entry.model), \(bind: entry.status),
                    \(bind: entry.images), \(bind: entry.inputTokens), \(bind: entry.outputTokens), \(bind: entry.totalTokens),
                    \(bind: Int64(entry.costMicroUSD)), \(bind: entry.errorCode), \(bind: Int64(entry.upstreamCostMicroUSD)), \(bind: entry.attempts),
                    \(bind: Int64(entry.createdAt.timeIntervalSince1970)))
            """).run()
    }

    private struct UsageRow: Decodable {
        var key_id: String
        var endpoint: String
        var model: String
        var status: Int
        var images: Int
        var input_tokens: Int
        var output_tokens: Int
        var total_tokens: Int
        var cost_micro_usd: Int64
        var error_code: String?
        var upstream_cost_micro_usd: Int64
        var attempts: Int
        var created_at: Int64
    }

    public func recentUsage(keyID: String, limit: Int) async throws -> [UsageRecord] {
        try await database.raw("""
            SELECT key_id, endpoint, model, status, images, input_tokens, output_tokens, total_tokens, cost_micro_usd, error_code,
                   upstream_cost_micro_usd, attempts, created_at
            FROM usage_log WHERE key_id = \(bind: keyID) ORDER BY created_at DESC, id LIMIT \(bind: limit)
            """).all(decoding: UsageRow.self).map {
                UsageRecord(
                    keyID: $0.key_id, endpoint: $0.endpoint, model: $0.model, status: $0.status, images: $0.images,
                    inputTokens: $0.input_tokens, outputTokens: $0.output_tokens, totalTokens: $0.total_tokens,
                    costMicroUSD: Int($0.cost_micro_usd), errorCode: $0.error_code,
                    upstreamCostMicroUSD: Int($0.upstream_cost_micro_usd), attempts: $0.attempts,
                    createdAt: Date(timeIntervalSince1970: TimeInterval($0.created_at))
                )
            }
    }
}

/// The embedded default database: one SQLite file under the data directory.
public final class SQLiteDatabaseHandle: Sendable {
    private let connection: SQLiteConnection
    /// The store over this database.
    public let store: SQLStore

    private init(connection: SQLiteConnection) {
        self.connection = connection
        self.store = SQLStore(database: connection.sql())
    }

    /// Opens (creating if needed) `path` and brings its tables up to date.
    public static func open(path: String, logger: Logger) async throws -> SQLiteDatabaseHandle {
        let connection = try await SQLiteConnection.open(storage: .file(path: path), logger: logger)
        let handle = SQLiteDatabaseHandle(connection: connection)
        // WAL lets readers run while the usage log is written; busy_timeout covers the CLI writing concurrently.
        _ = try await connection.query("PRAGMA journal_mode=WAL")
        _ = try await connection.query("PRAGMA busy_timeout=5000")
        // In WAL mode NORMAL never corrupts the database; it only skips the fsync on every commit
        // (a power cut may lose the last usage lines, never the keys' consistency).
        _ = try await connection.query("PRAGMA synchronous=NORMAL")
        try await handle.store.migrate()
        // Usage, keys and signatures of every user: owner only (the WAL files inherit the mode).
        for suffix in ["", "-wal", "-shm"] where FileManager.default.fileExists(atPath: path + suffix) {
            try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: path + suffix)
        }
        return handle
    }

    public func close() async throws {
        try await connection.close()
    }
}
