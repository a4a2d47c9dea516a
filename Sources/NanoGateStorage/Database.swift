public import Foundation
public import Logging
import NanoGateCore
import NIOCore
import NIOPosix
import PostgresKit
import PostgresNIO
import SQLKit
import SQLiteKit
import SQLiteNIO

/// Where the gateway keeps keys, money, usage, signatures and idempotent results.
public enum DatabaseLocation: Sendable, Equatable {
    /// The embedded default: one SQLite file (one gateway process).
    case sqlite(path: String)
    /// A PostgreSQL server, shared by every instance.
    case postgres(PostgresLocation)

    /// `NANOGATE_DATABASE_URL` when set (`postgres://…`, or `sqlite:///path`), else
    /// `dataDirectory/nanogate.sqlite`.
    public static func from(url: String?, dataDirectory: URL) throws(DatabaseConfigurationError) -> DatabaseLocation {
        guard let url, !url.isEmpty else { return .sqlite(path: dataDirectory.appendingPathComponent("nanogate.sqlite").path) }
        if url.hasPrefix("sqlite://") {
            let path = String(url.dropFirst("sqlite://".count))
            guard !path.isEmpty else { throw .invalid("sqlite:// needs a path, e.g. sqlite:///var/lib/nanogate/nanogate.sqlite") }
            return .sqlite(path: path)
        }
        return .postgres(try PostgresLocation(url: url))
    }

    /// For logs: the location without its password.
    public var redacted: String {
        switch self {
        case .sqlite(let path): "sqlite:\(path)"
        case .postgres(let location): "postgres://\(location.username)@\(location.host):\(location.port)/\(location.database)"
        }
    }
}

/// A PostgreSQL server from a `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=…]` URL.
public struct PostgresLocation: Sendable, Equatable {
    public var host: String
    public var port: Int
    public var username: String
    public var password: String?
    public var database: String
    /// `disable`, `prefer` (the default: TLS when the server offers it) or `require`.
    public var sslMode: String

    public init(url: String) throws(DatabaseConfigurationError) {
        guard let components = URLComponents(string: url), ["postgres", "postgresql"].contains(components.scheme ?? "") else {
            throw .invalid("NANOGATE_DATABASE_URL must look like postgres://user:password@host:5432/database")
        }
        guard let host = components.host, !host.isEmpty else { throw .invalid("NANOGATE_DATABASE_URL has no host") }
        guard let user = components.user, !user.isEmpty else { throw .invalid("NANOGATE_DATABASE_URL has no user name") }
        let database = String(components.path.drop { $0 == "/" })
        self.host = host
        self.port = components.port ?? 5432
        self.username = user.removingPercentEncoding ?? user
        self.password = components.password.map { $0.removingPercentEncoding ?? $0 }
        self.database = database.isEmpty ? self.username : database
        let mode = components.queryItems?.first { $0.name == "sslmode" }?.value ?? "prefer"
        guard ["disable", "prefer", "require"].contains(mode) else { throw .invalid("sslmode=\(mode) is not disable, prefer or require") }
        self.sslMode = mode
    }

    /// The URL again (password included: for configuration, never for logs).
    public var url: String {
        var components = URLComponents()
        components.scheme = "postgres"
        components.user = username
        components.password = password
        components.host = host
        components.port = port
        components.path = "/" + database
        components.queryItems = [URLQueryItem(name: "sslmode", value: sslMode)]
        return components.string ?? ""
    }

    /// The same server, another database (tests make one per run).
    public func database(_ name: String) -> PostgresLocation {
        var copy = self
        copy.database = name
        return copy
    }

    var clientConfiguration: PostgresClient.Configuration {
        let tls: PostgresClient.Configuration.TLS = switch sslMode {
        case "disable": .disable
        case "require": .require(.makeClientConfiguration())
        default: .prefer(.makeClientConfiguration())
        }
        return PostgresClient.Configuration(host: host, port: port, username: username, password: password, database: database, tls: tls)
    }
}

/// A database setting that cannot be used.
public enum DatabaseConfigurationError: Error, CustomStringConvertible {
    case invalid(String)
    /// The schema is older than this build, and the command may not change it.
    case schemaBehind(current: Int, needed: Int)

    public var description: String {
        switch self {
        case .invalid(let message): message
        case .schemaBehind(let current, let needed):
            "The database schema is at version \(current); this NanoGate needs version \(needed). Run `nanogate migrate` (or start `nanogate serve`, which migrates) first."
        }
    }
}

/// What opening a database does about its schema.
public enum MigrationPolicy: Sendable {
    /// Bring it up to date (serve, migrate, and the embedded SQLite file).
    case apply
    /// Refuse to work on an older schema (operator commands against a shared database: a
    /// newer gateway's migrations are the deploy's step, not a side effect of `keys list`).
    case require
    /// Touch nothing (tests making databases).
    case none
}

/// An open database: the store over it, and how to close it.
public final class DatabaseHandle: Sendable {
    /// Keys, usage, signatures, idempotent results.
    public let store: SQLStore
    /// Reservations and settlement (single statements on the same store).
    public var ledger: SQLStore { store }
    public let location: DatabaseLocation
    /// API keys as requests look them up (cached; `KeyEpochWatcher` keeps it current).
    public let keys: KeyCache
    private let closeResources: @Sendable () async throws -> Void

    private init(store: SQLStore, location: DatabaseLocation, close: @escaping @Sendable () async throws -> Void) {
        self.store = store
        self.location = location
        self.keys = KeyCache(store: store)
        self.closeResources = close
    }

    /// Opens the database at `location`; `poolSize` bounds PostgreSQL connections per instance.
    /// Migrations that run are logged at notice level, one line each.
    public static func open(
        _ location: DatabaseLocation, poolSize: Int = 10, migrations: MigrationPolicy = .apply, logger: Logger
    ) async throws -> DatabaseHandle {
        // Drivers log every statement with its bound values at debug level, and a stored
        // channel's row binds its credentials: the database logs from notice up only.
        var quiet = logger
        quiet.logLevel = max(logger.logLevel, .notice)
        let handle: DatabaseHandle
        switch location {
        case .sqlite(let path):
            handle = try await openSQLite(path: path, location: location, logger: quiet)
        case .postgres(let postgres):
            var configuration = postgres.clientConfiguration
            configuration.options.maximumConnections = max(1, poolSize)
            let client = PostgresClient(configuration: configuration, backgroundLogger: quiet)
            let running = Task { await client.run() }
            let database = PostgresClientDatabase(client: client, logger: quiet)
            handle = DatabaseHandle(store: SQLStore(database: database), location: location, close: { [logger = quiet] in
                running.cancel()
                await waitBounded(for: running, seconds: 10, logger: logger)
            })
        }
        do {
            switch migrations {
            case .apply:
                for version in try await handle.store.migrate() {
                    logger.notice("applied database migration", metadata: ["version": "\(version)", "database": "\(location.redacted)"])
                }
            case .require:
                let (current, needed) = try await handle.store.schemaVersion()
                guard current >= needed else { throw DatabaseConfigurationError.schemaBehind(current: current, needed: needed) }
            case .none:
                break
            }
        } catch {
            try? await handle.close()
            throw error
        }
        return handle
    }

    private static func openSQLite(path: String, location: DatabaseLocation, logger: Logger) async throws -> DatabaseHandle {
        let connection = try await SQLiteConnection.open(storage: .file(path: path), logger: logger)
        do {
            // WAL lets readers run while the usage log is written; busy_timeout covers the CLI writing concurrently.
            _ = try await connection.query("PRAGMA journal_mode=WAL")
            _ = try await connection.query("PRAGMA busy_timeout=5000")
            // In WAL mode NORMAL never corrupts the database; it only skips the fsync on every commit
            // (a power cut may lose the last usage lines, never the keys' consistency).
            _ = try await connection.query("PRAGMA synchronous=NORMAL")
            // Usage, keys and signatures of every user: owner only (the WAL files inherit the mode).
            for suffix in ["", "-wal", "-shm"] where FileManager.default.fileExists(atPath: path + suffix) {
                try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: path + suffix)
            }
        } catch {
            try? await connection.close()
            throw error
        }
        return DatabaseHandle(store: SQLStore(database: connection.sql()), location: location, close: { try await connection.close() })
    }

    /// One round trip (the readiness check).
    public func ping() async throws {
        try await store.database.raw("SELECT 1").run()
    }

    public func close() async throws {
        try await closeResources()
    }
}

/// Waits for a cancelled pool's `run()` to return, but at most `seconds`.
///
/// PostgresNIO's pool keeps retrying a connection it could not open (the server's
/// `max_connections` reached, say) even after cancellation (vapor/postgres-nio#599), and waiting
/// for it would hold every connection it already has, so a shutdown on a full server could wait
/// forever. Past the bound the pool is left to end on its own; its connections end with the
/// process (or when the server drops them).
private func waitBounded(for running: Task<Void, Never>, seconds: Int, logger: Logger) async {
    if await Deadline.firstOf({ await running.value }, orNilAfter: .seconds(seconds)) == nil {
        logger.warning("the PostgreSQL pool did not stop within \(seconds) s; leaving it to end on its own")
    }
}

/// SQLKit over PostgresNIO's connection pool: every statement leases a connection for its
/// run (a statement is atomic, and the money statements need nothing more); a session keeps
/// one connection for several statements (the migrations' advisory lock).
struct PostgresClientDatabase: SQLDatabase {
    let client: PostgresClient
    let logger: Logger
    var eventLoop: any EventLoop { MultiThreadedEventLoopGroup.singleton.any() }
    var dialect: any SQLDialect { PostgresDialect() }
    var queryLogLevel: Logger.Level? { nil }

    func execute(sql query: any SQLExpression, _ onRow: @escaping @Sendable (any SQLRow) -> Void) -> EventLoopFuture<Void> {
        let promise = eventLoop.makePromise(of: Void.self)
        promise.completeWithTask { try await self.execute(sql: query, onRow) }
        return promise.futureResult
    }

    func execute(sql query: any SQLExpression, _ onRow: @escaping @Sendable (any SQLRow) -> Void) async throws {
        try await client.withConnection { connection in
            try await connection.sql(queryLogLevel: nil, logger: logger).execute(sql: query, onRow)
        }
    }

    func withSession<R>(_ closure: @escaping @Sendable (any SQLDatabase) async throws -> R) async throws -> R {
        try await client.withConnection { connection in
            try await closure(connection.sql(queryLogLevel: nil, logger: logger))
        }
    }
}
