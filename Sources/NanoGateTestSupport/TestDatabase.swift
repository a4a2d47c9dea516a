import Foundation
import Logging
public import NanoGateStorage
import SQLKit

/// The database a test runs on (shared by the storage and server test targets): with `NANOGATE_TEST_DATABASE_URL` set (`scripts/test.sh` sets
/// it for the suite's second pass, on a throwaway PostgreSQL cluster), a fresh PostgreSQL
/// database per test on that server; without it, the test's own SQLite file.
public struct TestDatabase: Sendable {
    public static let serverURL = ProcessInfo.processInfo.environment["NANOGATE_TEST_DATABASE_URL"].flatMap { $0.isEmpty ? nil : $0 }
    public static var isPostgres: Bool { serverURL != nil }

    public let name: String
    public let server: PostgresLocation
    /// The fresh database's URL, for `GatewayConfiguration.databaseURL`.
    public var url: String { server.database(name).url }

    private static var quietLogger: Logger {
        var logger = Logger(label: "test-database")
        logger.logLevel = .critical
        return logger
    }

    /// A new, empty PostgreSQL database, or nil on SQLite.
    public static func fresh() async throws -> TestDatabase? {
        guard let serverURL else { return nil }
        let server = try PostgresLocation(url: serverURL)
        let name = "nanogate_test_" + UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "")
        let admin = try await DatabaseHandle.open(.postgres(server), poolSize: 1, migrations: .none, logger: quietLogger)
        do {
            try await admin.store.database.raw("CREATE DATABASE \(unsafeRaw: name)").run()
            try await admin.close()
        } catch {
            try? await admin.close()
            throw error
        }
        return TestDatabase(name: name, server: server)
    }

    /// Runs `body` on a migrated database of the test's own — PostgreSQL when the suite runs on
    /// it, else a SQLite file in a temporary folder — then closes and removes it.
    public static func with(_ body: (DatabaseHandle) async throws -> Void) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("nanogate-db-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let fresh = try await fresh()
        let location: DatabaseLocation = fresh.map { .postgres($0.server.database($0.name)) } ?? .sqlite(path: directory.appendingPathComponent("nanogate.sqlite").path)
        let database = try await DatabaseHandle.open(location, poolSize: 3, logger: quietLogger)
        do {
            try await body(database)
            try await database.close()
            await fresh?.drop()
        } catch {
            try? await database.close()
            await fresh?.drop()
            throw error
        }
    }

    /// Every row of `table` as JSON text (PostgreSQL), to look for what must not be stored.
    public static func rowsAsText(of table: String, in handle: DatabaseHandle) async throws -> [String] {
        struct Row: Decodable { var row: String }
        return try await handle.store.database.raw("SELECT row_to_json(t)::text AS row FROM \(ident: table) t").all(decoding: Row.self).map(\.row)
    }

    /// Drops the database (the gateway on it has closed its connections).
    public func drop() async {
        guard let admin = try? await DatabaseHandle.open(.postgres(server), poolSize: 1, migrations: .none, logger: Self.quietLogger) else { return }
        try? await admin.store.database.raw("DROP DATABASE IF EXISTS \(unsafeRaw: name) WITH (FORCE)").run()
        try? await admin.close()
    }
}
