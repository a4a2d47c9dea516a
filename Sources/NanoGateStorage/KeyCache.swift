import Foundation
import SQLKit
import Synchronization

/// API-key look-ups without a database round trip on every request.
///
/// The database keeps a *key epoch*: triggers add one to it whenever a key or a group changes in
/// a way a request would notice (revoked, rotated, disabled, its credit, limits, models, tiers,
/// expiry or group), whoever makes the change: this gateway, another instance, or the CLI. A
/// cached key is served only while the epoch it was read under is still the one last read, and
/// only while that read is younger than `maxStaleness`; past that every look-up goes to the
/// database again. `KeyEpochWatcher` re-reads the epoch several times a second, so a change bites
/// on every instance within one of its ticks, and never later than `maxStaleness` even when the
/// watcher falls behind on a busy machine.
///
/// Only found keys are cached (unknown secrets are not: guessing must not fill memory). The
/// cached key's money (`spentMicroUSD`, `reservedMicroUSD`) is as it was when read: whoever shows
/// money reads the key again; the reservation itself is checked in the database, never here.
public final class KeyCache: Sendable {
    struct Entry {
        var key: APIKey
        var epoch: Int64
    }

    struct State {
        /// The epoch last read; nil before the first read and after a failed one.
        var epoch: Int64?
        /// When that read began (a read that began earlier never overwrites it).
        var readAt: ContinuousClock.Instant
        var entries: [String: Entry] = [:]
    }

    let store: SQLStore
    /// How old the last epoch read may be for a cached key to be served.
    public let maxStaleness: Duration
    /// Keys kept at most; past it the cache starts again empty.
    let capacity: Int
    private let state: Mutex<State>

    public init(store: SQLStore, maxStaleness: Duration = .seconds(1), capacity: Int = 10_000) {
        self.store = store
        self.maxStaleness = maxStaleness
        self.capacity = capacity
        self.state = Mutex(State(epoch: nil, readAt: .now))
    }

    /// The active key whose secret this is: from memory while that is known to be current,
    /// else from the database.
    public func activeKey(secret: String) async throws -> APIKey? {
        let hash = SQLStore.hash(secret)
        let now = ContinuousClock.now
        let (cached, epoch): (APIKey?, Int64?) = state.withLock { state in
            guard let epoch = state.epoch, now - state.readAt < maxStaleness else { return (nil, nil) }
            guard let entry = state.entries[hash], entry.epoch == epoch else { return (nil, epoch) }
            return (entry.key, epoch)
        }
        if let cached { return cached }
        guard let key = try await store.activeKey(secretHash: hash) else { return nil }
        if let epoch {
            // Kept only if no change was seen while it was being read (else it may be stale).
            state.withLock { state in
                guard state.epoch == epoch else { return }
                if state.entries.count >= capacity { state.entries.removeAll(keepingCapacity: true) }
                state.entries[hash] = Entry(key: key, epoch: epoch)
            }
        }
        return key
    }

    /// Reads the epoch; a new one drops every cached key. A failed read leaves nothing to serve
    /// from memory until a read succeeds.
    public func refresh() async {
        let began = ContinuousClock.now
        do {
            let epoch = try await store.keyEpoch()
            state.withLock { state in
                guard began >= state.readAt || state.epoch == nil else { return }
                if state.epoch != epoch {
                    state.entries.removeAll()
                    state.epoch = epoch
                }
                state.readAt = began
            }
        } catch {
            state.withLock { state in
                state.epoch = nil
                state.entries.removeAll()
            }
        }
    }

    /// How many keys are held (tests).
    public var count: Int { state.withLock { $0.entries.count } }
}

extension SQLStore {
    /// The active key whose secret hashes to `secretHash`.
    func activeKey(secretHash: String) async throws -> APIKey? {
        try await database.raw("\(Self.keyColumns) WHERE k.secret_hash = \(bind: secretHash) AND k.revoked_at IS NULL")
            .first(decoding: KeyRow.self)?.key
    }

    /// The key epoch (see `KeyCache`).
    public func keyEpoch() async throws -> Int64 {
        struct Row: Decodable { var version: Int64 }
        return try await database.raw("SELECT version FROM key_epoch WHERE id = 1").first(decoding: Row.self)?.version ?? 0
    }

    /// The columns of a key whose change a request notices (money that moves per request,
    /// `spent` and `reserved`, is not among them: it must not empty the cache on every request).
    static let keyEpochColumns = "key_group, secret_hash, revoked_at, credit_micro_usd, expires_at, models, service_tiers, rpm, concurrency, disabled, name"

    /// Version 15: the key epoch and the triggers that move it.
    static func createKeyEpoch(_ database: any SQLDatabase, backend: Backend) async throws {
        try await database.raw("CREATE TABLE IF NOT EXISTS key_epoch (id INTEGER PRIMARY KEY, version BIGINT NOT NULL)").run()
        try await database.raw("INSERT INTO key_epoch (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING").run()
        switch backend {
        case .sqlite:
            // SQLite's triggers run per row, inside the statement that fired them.
            let bump = "BEGIN UPDATE key_epoch SET version = version + 1 WHERE id = 1; END"
            for (name, event) in [
                ("api_keys_epoch_update", "UPDATE OF \(keyEpochColumns) ON api_keys"), ("api_keys_epoch_delete", "DELETE ON api_keys"),
                ("key_groups_epoch_insert", "INSERT ON key_groups"), ("key_groups_epoch_update", "UPDATE ON key_groups"),
                ("key_groups_epoch_delete", "DELETE ON key_groups"),
            ] {
                try await database.raw("CREATE TRIGGER IF NOT EXISTS \(unsafeRaw: name) AFTER \(unsafeRaw: event) \(unsafeRaw: bump)").run()
            }
        case .postgres:
            try await database.raw("""
                CREATE OR REPLACE FUNCTION nanogate_key_epoch() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    UPDATE key_epoch SET version = version + 1 WHERE id = 1;
                    RETURN NULL;
                END $$
                """).run()
            for (name, event) in [
                ("api_keys_epoch", "UPDATE OF \(keyEpochColumns) OR DELETE ON api_keys"), ("key_groups_epoch", "INSERT OR UPDATE OR DELETE ON key_groups"),
            ] {
                try await database.raw("CREATE OR REPLACE TRIGGER \(unsafeRaw: name) AFTER \(unsafeRaw: event) FOR EACH STATEMENT EXECUTE FUNCTION nanogate_key_epoch()").run()
            }
        }
    }
}
