public import Foundation
import SQLKit

/// An upstream channel the operator added through the admin API or the CLI: its settings as
/// the configuration file's JSON (credentials included: the gateway must send them upstream,
/// so they are stored as given; the database is the operator's, owner-only like the data
/// directory). The upstream layer reads the JSON; storage keeps it opaque.
public struct StoredChannel: Sendable, Equatable {
    public var name: String
    public var json: String
    public var updatedAt: Date
}

extension SQLStore {
    /// Every stored channel, by name.
    public func storedChannels() async throws -> [StoredChannel] {
        struct Row: Decodable {
            var name: String
            var config: String
            var updated_at: Int64
        }
        return try await database.raw("SELECT name, config, updated_at FROM upstream_channels ORDER BY name").all(decoding: Row.self).map {
            StoredChannel(name: $0.name, json: $0.config, updatedAt: Date(timeIntervalSince1970: TimeInterval($0.updated_at) / 1000))
        }
    }

    /// Creates or replaces the channel `name`.
    public func storeChannel(name: String, json: String) async throws {
        try await database.raw("""
            INSERT INTO upstream_channels (name, config, updated_at) VALUES (\(bind: name), \(bind: json), \(bind: Int64(Date().timeIntervalSince1970 * 1000)))
            ON CONFLICT (name) DO UPDATE SET config = excluded.config, updated_at = excluded.updated_at
            """).run()
    }

    /// Removes the channel `name`; false when there was none.
    public func deleteChannel(name: String) async throws -> Bool {
        struct Row: Decodable { var name: String }
        guard try await database.raw("SELECT name FROM upstream_channels WHERE name = \(bind: name)").first(decoding: Row.self) != nil else { return false }
        try await database.raw("DELETE FROM upstream_channels WHERE name = \(bind: name)").run()
        return true
    }
}
