public import Foundation
import SQLKit

/// A response of `POST /v1/responses` kept for its key (`store: true`): the server's JSON form
/// of it (images by their names in the image store, never base64), until it expires with the
/// image URLs of the same answer.
public struct StoredResponseRow: Sendable, Equatable {
    public var id: String
    public var keyID: String
    public var status: String
    public var body: String
    public var expiresAt: Date
}

extension SQLStore {
    /// Version 18: stored responses (the Responses API's `store`), per key.
    static func createStoredResponses(_ database: any SQLDatabase) async throws {
        try await database.raw("""
            CREATE TABLE IF NOT EXISTS stored_responses (
                id TEXT PRIMARY KEY,
                key_id TEXT NOT NULL,
                status TEXT NOT NULL,
                body TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                expires_at BIGINT NOT NULL
            )
            """).run()
        try await database.raw("CREATE INDEX IF NOT EXISTS stored_responses_expiry ON stored_responses (expires_at)").run()
    }

    /// Writes (or replaces, as a background response moves on) a stored response.
    public func saveResponse(id: String, keyID: String, status: String, body: String, expiresAt: Date, now: Date = Date()) async throws {
        let expires = Self.millis(expiresAt)
        let created = Self.millis(now)
        try await database.raw("""
            INSERT INTO stored_responses (id, key_id, status, body, created_at, expires_at)
            VALUES (\(bind: id), \(bind: keyID), \(bind: status), \(bind: body), \(bind: created), \(bind: expires))
            ON CONFLICT (id) DO UPDATE SET status = excluded.status, body = excluded.body, expires_at = excluded.expires_at
            """).run()
    }

    /// The key's unexpired stored response with this id; nil for another key's, an expired or an unknown one.
    public func response(id: String, keyID: String, now: Date = Date()) async throws -> StoredResponseRow? {
        struct Row: Decodable {
            var id: String
            var key_id: String
            var status: String
            var body: String
            var expires_at: Int64
        }
        guard let row = try await database.raw("""
            SELECT id, key_id, status, body, expires_at FROM stored_responses
            WHERE id = \(bind: id) AND key_id = \(bind: keyID) AND expires_at > \(bind: Self.millis(now))
            """).first(decoding: Row.self) else { return nil }
        return StoredResponseRow(id: row.id, keyID: row.key_id, status: row.status, body: row.body, expiresAt: Date(timeIntervalSince1970: Double(row.expires_at) / 1000))
    }

    /// Deletes the key's stored response; false when the key has none by that id.
    public func deleteResponse(id: String, keyID: String) async throws -> Bool {
        try await !database.raw("DELETE FROM stored_responses WHERE id = \(bind: id) AND key_id = \(bind: keyID) RETURNING id").all().isEmpty
    }

    /// Drops expired stored responses; returns how many.
    public func pruneResponses(now: Date = Date()) async throws -> Int {
        try await database.raw("DELETE FROM stored_responses WHERE expires_at < \(bind: Self.millis(now)) RETURNING id").all().count
    }
}
