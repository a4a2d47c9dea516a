public import Foundation
import SQLKit

/// A channel's model list as last read: the ids it offered (nil: its kind cannot list), when,
/// and why the last read failed.
public struct StoredChannelModels: Sendable, Equatable {
    public var channel: String
    public var listed: [String]?
    public var checkedAt: Date
    public var error: String?

    public init(channel: String, listed: [String]?, checkedAt: Date, error: String?) {
        self.channel = channel
        self.listed = listed
        self.checkedAt = checkedAt
        self.error = error
    }
}

/// Something a channel's project refused until a time: a model id (`kind` "model", `item` the
/// upstream id) or a credential (`kind` "key", `item` its 1-based position, `fingerprint` a
/// hash prefix of its value: never the value).
public struct StoredChannelRefusal: Sendable, Equatable {
    public var channel: String
    public var kind: String
    public var item: String
    public var fingerprint: String?
    public var until: Date
    public var reason: String?

    public init(channel: String, kind: String, item: String, fingerprint: String?, until: Date, reason: String?) {
        self.channel = channel
        self.kind = kind
        self.item = item
        self.fingerprint = fingerprint
        self.until = until
        self.reason = reason
    }
}

extension SQLStore {
    /// Version 11: what each channel learned (its model list, refused models and credentials),
    /// shared by every instance on the database.
    static func createChannelKnowledgeTables(_ database: any SQLDatabase) async throws {
        try await database.raw("""
            CREATE TABLE IF NOT EXISTS channel_models (
                channel TEXT PRIMARY KEY,
                listed TEXT,
                checked_at BIGINT NOT NULL,
                error TEXT
            )
            """).run()
        try await database.raw("""
            CREATE TABLE IF NOT EXISTS channel_refusals (
                channel TEXT NOT NULL,
                kind TEXT NOT NULL,
                item TEXT NOT NULL,
                fingerprint TEXT,
                until_at BIGINT NOT NULL,
                reason TEXT,
                PRIMARY KEY (channel, kind, item)
            )
            """).run()
    }

    /// Records channel `channel`'s model list (a failed read keeps the last good list: pass
    /// `listed` nil with an `error` and `keepList`).
    public func saveChannelModels(_ models: StoredChannelModels, keepList: Bool = false) async throws {
        let listed = try models.listed.map { String(decoding: try JSONEncoder().encode($0.sorted()), as: UTF8.self) }
        let checkedAt = Int64(models.checkedAt.timeIntervalSince1970)
        if keepList {
            try await database.raw("""
                INSERT INTO channel_models (channel, listed, checked_at, error) VALUES (\(bind: models.channel), NULL, \(bind: checkedAt), \(bind: models.error))
                ON CONFLICT (channel) DO UPDATE SET checked_at = excluded.checked_at, error = excluded.error
                """).run()
        } else {
            try await database.raw("""
                INSERT INTO channel_models (channel, listed, checked_at, error) VALUES (\(bind: models.channel), \(bind: listed), \(bind: checkedAt), \(bind: models.error))
                ON CONFLICT (channel) DO UPDATE SET listed = excluded.listed, checked_at = excluded.checked_at, error = excluded.error
                """).run()
        }
    }

    /// Every channel's last model list.
    public func channelModels() async throws -> [StoredChannelModels] {
        struct Row: Decodable {
            var channel: String
            var listed: String?
            var checked_at: Int64
            var error: String?
        }
        return try await database.raw("SELECT channel, listed, checked_at, error FROM channel_models ORDER BY channel").all(decoding: Row.self).map { row in
            StoredChannelModels(
                channel: row.channel, listed: row.listed.flatMap { try? JSONDecoder().decode([String].self, from: Data($0.utf8)) },
                checkedAt: Date(timeIntervalSince1970: TimeInterval(row.checked_at)), error: row.error
            )
        }
    }

    /// Records a refusal; one already held longer is kept.
    /// Refusals that ran out are deleted here, on the rare write, so reading them stays a read.
    public func saveChannelRefusal(_ refusal: StoredChannelRefusal) async throws {
        try await database.raw("DELETE FROM channel_refusals WHERE until_at <= \(bind: Int64(Date().timeIntervalSince1970))").run()
        try await database.raw("""
            INSERT INTO channel_refusals (channel, kind, item, fingerprint, until_at, reason)
            VALUES (\(bind: refusal.channel), \(bind: refusal.kind), \(bind: refusal.item), \(bind: refusal.fingerprint), \(bind: Int64(refusal.until.timeIntervalSince1970)), \(bind: refusal.reason))
            ON CONFLICT (channel, kind, item) DO UPDATE SET fingerprint = excluded.fingerprint, until_at = excluded.until_at, reason = excluded.reason
            WHERE channel_refusals.until_at < excluded.until_at OR COALESCE(channel_refusals.fingerprint, '') <> COALESCE(excluded.fingerprint, '')
            """).run()
    }

    /// The refusals still in force at `now`.
    public func channelRefusals(now: Date = Date()) async throws -> [StoredChannelRefusal] {
        struct Row: Decodable {
            var channel: String
            var kind: String
            var item: String
            var fingerprint: String?
            var until_at: Int64
            var reason: String?
        }
        let cutoff = Int64(now.timeIntervalSince1970)
        return try await database.raw("""
            SELECT channel, kind, item, fingerprint, until_at, reason FROM channel_refusals WHERE until_at > \(bind: cutoff) ORDER BY channel, kind, item
            """).all(decoding: Row.self).map {
            StoredChannelRefusal(
                channel: $0.channel, kind: $0.kind, item: $0.item, fingerprint: $0.fingerprint, until: Date(timeIntervalSince1970: TimeInterval($0.until_at)),
                reason: $0.reason
            )
        }
    }
}
