import Foundation
import NanoGateTestSupport
import Logging
import NanoGateCore
@testable import NanoGateStorage
import SQLKit
import Testing

/// The storage rules that must hold on both databases (this suite runs on SQLite, and again on
/// PostgreSQL when `NANOGATE_TEST_DATABASE_URL` is set).
@Suite(.timeLimit(.minutes(10))) struct DatabaseTests {
    /// A key limited to 3 a minute gets its 3 at once, then one every 20 s, and the refusal
    /// says how long to wait — whichever instance counts (the count is the database's).
    @Test func requestsPerMinuteAreCountedInTheDatabase() async throws {
        try await TestDatabase.with { database in
            let store = database.store
            let start = Date(timeIntervalSince1970: 1_800_000_000)
            /// The decisions for `key` at these seconds after `start`.
            func decisions(_ key: String, at seconds: [TimeInterval]) async throws -> [RateDecision] {
                var result: [RateDecision] = []
                for second in seconds { result.append(try await store.admit(keyID: key, perMinute: 3, now: start.addingTimeInterval(second))) }
                return result
            }
            let first = try await decisions("k", at: [0, 0, 0, 0, 15, 20, 20])
            #expect(first == [.allowed, .allowed, .allowed, .limited(retryAfterSeconds: 20), .limited(retryAfterSeconds: 5), .allowed, .limited(retryAfterSeconds: 20)])
            let other = try await decisions("other", at: [0])
            #expect(other == [.allowed], "keys are counted apart")
            // After a quiet minute the whole allowance is back, and never more than it.
            let later = try await decisions("k", at: [200, 200, 200, 200])
            #expect(later == [.allowed, .allowed, .allowed, .limited(retryAfterSeconds: 20)])
        }
    }

    /// Requests sent at once take their clock readings before their statements run in turn: a
    /// statement with an earlier reading than one already admitted still counts in the order
    /// the database runs them, so the whole allowance is admitted, and not one request more.
    @Test func anAllowanceSentAtOnceIsAdmittedWhateverOrderItsStatementsRun() async throws {
        try await TestDatabase.with { database in
            let store = database.store
            let start = Date(timeIntervalSince1970: 1_800_000_000)
            var decisions: [RateDecision] = []
            for offset in [0.005, 0.0, 0.003, 0.001] {
                decisions.append(try await store.admit(keyID: "k", perMinute: 3, now: start.addingTimeInterval(offset)))
            }
            #expect(decisions.prefix(3).allSatisfy { $0 == .allowed }, "\(decisions)")
            #expect(decisions[3] != .allowed, "the fourth in the same minute is refused")
            #expect(try await store.admit(keyID: "k", perMinute: 3, now: start.addingTimeInterval(19)) != .allowed)
            #expect(try await store.admit(keyID: "k", perMinute: 3, now: start.addingTimeInterval(20.01)) == .allowed, "one more a third of a minute later")
        }
    }

    /// Many requests at once against one limit: exactly the allowance gets through.
    @Test func concurrentRequestsGetExactlyTheAllowance() async throws {
        try await TestDatabase.with { database in
            let store = database.store
            let now = Date()
            let allowed = try await withThrowingTaskGroup(of: Bool.self) { group in
                for _ in 0..<40 { group.addTask { try await store.admit(keyID: "burst", perMinute: 7, now: now) == .allowed } }
                return try await group.reduce(0) { $0 + ($1 ? 1 : 0) }
            }
            #expect(allowed == 7)
        }
    }

    /// Migrations run once however many instances start together, and an operator command
    /// refuses a schema older than its build instead of changing it.
    @Test func migrationsRunOnceAndAreRequiredByOperators() async throws {
        try await TestDatabase.with { database in
            let store = database.store
            let (current, needed) = try await store.schemaVersion()
            #expect(current == needed && needed == store.migrations.last?.version && needed >= 13)
            // Several instances at once on PostgreSQL; SQLite is one process's file (one connection).
            let instances = TestDatabase.isPostgres ? 4 : 1
            let again = try await withThrowingTaskGroup(of: [Int].self) { group in
                for _ in 0..<instances { group.addTask { try await store.migrate() } }
                return try await group.reduce([]) { $0 + $1 }
            }
            #expect(again.isEmpty, "an up-to-date schema gets no migration")
            try await store.database.raw("UPDATE nanogate_schema SET version = \(bind: needed - 1)").run()
            #expect(try await store.schemaVersion().current == needed - 1)
            let applied = try await withThrowingTaskGroup(of: [Int].self) { group in
                for _ in 0..<instances { group.addTask { try await store.migrate() } }
                return try await group.reduce([]) { $0 + $1 }
            }
            #expect(applied == [needed], "instances starting together apply the newest version once")
        }
    }

    @Test func anOperatorCommandRefusesAnOldSchema() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("nanogate-db-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let location: DatabaseLocation
        let fresh = try await TestDatabase.fresh()
        if let fresh { location = .postgres(fresh.server.database(fresh.name)) } else { location = .sqlite(path: directory.appendingPathComponent("db.sqlite").path) }
        await #expect(throws: DatabaseConfigurationError.self) {
            try await DatabaseHandle.open(location, migrations: .require, logger: logger)
        }
        let migrated = try await DatabaseHandle.open(location, migrations: .apply, logger: logger)
        try await migrated.close()
        let required = try await DatabaseHandle.open(location, migrations: .require, logger: logger)
        #expect(try await required.store.listGroups().map(\.name.rawValue).sorted() == ["default", "gemini"])
        try await required.close()
        await fresh?.drop()
    }

    /// Files (security review 7b): kept as bytes, an expired file is neither read, described
    /// nor counted in its key's upload quota, and the sweep deletes its row.
    @Test func expiredFilesAreNeitherReadNorCountedAndAreSwept() async throws {
        try await TestDatabase.with { database in
            let store = database.store
            let key = try await store.createKey(name: "files", group: .default).key
            let now = Date(timeIntervalSince1970: 1_800_000_000)
            let content = Array("{\"custom_id\":\"a\"}\n".utf8)
            try await store.storeFile(StoredFile(id: "file-live", keyID: key.id, purpose: "batch", filename: "a.jsonl", content: content, expiresAt: now.addingTimeInterval(60)))
            try await store.storeFile(StoredFile(id: "file-old", keyID: key.id, purpose: "batch", filename: "b.jsonl", content: Array(repeating: 0x61, count: 1000), expiresAt: now.addingTimeInterval(-1)))
            #expect(try await store.file(id: "file-live", keyID: key.id, now: now)?.content == content, "stored as the bytes sent")
            #expect(try await store.file(id: "file-old", keyID: key.id, now: now) == nil)
            #expect(try await store.fileInfo(id: "file-old", keyID: key.id, now: now) == nil)
            #expect(try await store.fileBytes(keyID: key.id, now: now) == content.count, "only the unexpired file counts")
            #expect(try await store.pruneFiles(now: now) == 1)
            #expect(try await store.fileInfo(id: "file-live", keyID: key.id, now: now)?.bytes == content.count, "the live file stays")
            #expect(try await store.pruneFiles(now: now.addingTimeInterval(120)) == 1)
        }
    }

    /// A key's job list (security review 7e) reads no request bodies, answers or secrets: those
    /// come only with one job.
    @Test func aJobListReadsNoBodiesOrAnswers() async throws {
        try await TestDatabase.with { database in
            let store = database.store
            let key = try await store.createKey(name: "jobs", group: .default).key
            let body = Array(repeating: UInt8(ascii: "x"), count: 100_000)
            try await store.createJob(
                ImageJobRecord(id: "imgjob_a", keyID: key.id, endpoint: "images.generations", model: "nano-banana", contentType: "application/json", body: body, baseURL: "http://x", webhookURL: "https://hook.example", webhookSecret: "whsec_secret")
            )
            let listed = try #require(try await store.jobs(keyID: key.id, limit: 10).first)
            #expect(listed.id == "imgjob_a" && listed.body.isEmpty && listed.webhookSecret == nil && listed.result == nil)
            let one = try #require(try await store.job(id: "imgjob_a", keyID: key.id))
            #expect(one.body == body && one.webhookSecret == "whsec_secret", "one job still has them")
        }
    }

    @Test func databaseURLsAreParsed() throws {
        let data = URL(fileURLWithPath: "/srv/nanogate")
        #expect(try DatabaseLocation.from(url: nil, dataDirectory: data) == .sqlite(path: "/srv/nanogate/nanogate.sqlite"))
        #expect(try DatabaseLocation.from(url: "sqlite:///var/db/ng.sqlite", dataDirectory: data) == .sqlite(path: "/var/db/ng.sqlite"))
        guard case .postgres(let location) = try DatabaseLocation.from(url: "postgres://ng:p%40ss@db.internal:6432/gateway?sslmode=require", dataDirectory: data) else {
            Issue.record("not PostgreSQL")
            return
        }
        #expect(location.host == "db.internal" && location.port == 6432 && location.username == "ng" && location.password == "p@ss")
        #expect(location.database == "gateway" && location.sslMode == "require")
        #expect(DatabaseLocation.postgres(location).redacted == "postgres://ng@db.internal:6432/gateway", "no password in logs")
        #expect(try PostgresLocation(url: location.url) == location, "the URL round-trips")
        #expect(throws: DatabaseConfigurationError.self) { try DatabaseLocation.from(url: "mysql://x@y/z", dataDirectory: data) }
        #expect(throws: DatabaseConfigurationError.self) { try DatabaseLocation.from(url: "postgres://db.internal/gateway", dataDirectory: data) }
        #expect(throws: DatabaseConfigurationError.self) { try DatabaseLocation.from(url: "postgres://u@h/d?sslmode=sometimes", dataDirectory: data) }
    }

    /// The key cache: money moving per request leaves cached keys alone (else it would empty
    /// on every request); a change to a key or a group, made by anyone, moves the key epoch,
    /// and a cache that reads it serves the key as it is now; with no read for `maxStaleness`,
    /// every look-up goes to the database, so a revocation bites even if the watcher stalls.
    @Test func cachedKeysFollowTheKeyEpoch() async throws {
        try await TestDatabase.with { database in
            let store = database.store
            let (key, secret) = try await store.createKey(name: "cached", group: .default, options: KeyOptions(creditMicroUSD: 1_000_000))
            let cache = KeyCache(store: store, maxStaleness: .seconds(600))
            await cache.refresh()
            #expect(try await cache.activeKey(secret: secret)?.id == key.id)
            #expect(cache.count == 1)

            let epoch = try await store.keyEpoch()
            #expect(try await store.reserve(Reservation(keyID: key.id, amountMicroUSD: 1_000, owner: "t", leaseUntil: Date().addingTimeInterval(60))) == .held)
            #expect(try await store.releaseExpired(now: Date().addingTimeInterval(120)) == 1)
            #expect(try await store.keyEpoch() == epoch, "holds and releases do not move the epoch")
            await cache.refresh()
            #expect(cache.count == 1)

            var topUp = KeyUpdate()
            topUp.addCredit = 500_000
            _ = try await store.updateKey(name: "cached", topUp)
            #expect(try await store.keyEpoch() > epoch)
            #expect(try await cache.activeKey(secret: secret)?.creditMicroUSD == 1_000_000, "until the epoch is read again, the cached key")
            await cache.refresh()
            #expect(cache.count == 0)
            #expect(try await cache.activeKey(secret: secret)?.creditMicroUSD == 1_500_000)

            let beforeGroup = try await store.keyEpoch()
            try await store.updateGroup(KeyGroupSettings(name: .default, responseFormat: .b64JSON))
            #expect(try await store.keyEpoch() > beforeGroup, "a group's change moves it too")
            await cache.refresh()
            #expect(try await cache.activeKey(secret: secret)?.group == .default)

            try await store.revokeKey(name: "cached")
            await cache.refresh()
            #expect(try await cache.activeKey(secret: secret) == nil)
            #expect(cache.count == 0, "unknown secrets are never kept")

            // A cache whose epoch read is older than its bound reads the database every time.
            let (_, other) = try await store.createKey(name: "stale", group: .default)
            let bounded = KeyCache(store: store, maxStaleness: .milliseconds(50))
            await bounded.refresh()
            #expect(try await bounded.activeKey(secret: other) != nil)
            try await store.revokeKey(name: "stale")
            try await Task.sleep(for: .milliseconds(60))
            #expect(try await bounded.activeKey(secret: other) == nil)
        }
    }
}
