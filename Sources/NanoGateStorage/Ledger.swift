public import Foundation
public import Logging
import NIOCore
import NIOPosix
import SQLKit
import SQLiteKit
import SQLiteNIO
import Synchronization

/// Money held for one request in flight: reserved before Google is called, released or turned
/// into a charge when the request settles. The lease is renewed while the owning gateway lives;
/// a reservation whose lease ran out belongs to a gateway that died, and is released.
public struct Reservation: Sendable, Equatable {
    public var id: String
    public var keyID: String
    public var amountMicroUSD: Int
    /// The gateway instance holding it.
    public var owner: String
    public var leaseUntil: Date

    public init(id: String = UUID().uuidString.lowercased(), keyID: String, amountMicroUSD: Int, owner: String, leaseUntil: Date) {
        self.id = id
        self.keyID = keyID
        self.amountMicroUSD = amountMicroUSD
        self.owner = owner
        self.leaseUntil = leaseUntil
    }
}

/// Reserve-then-settle against each key's credit. Every operation is one database transaction,
/// so concurrent requests (and several gateways on one database) can never overspend a key, and
/// a crash leaves either the whole reservation (released when its lease runs out) or none.
public protocol Ledger: Sendable {
    /// Holds the amount when the key's balance (credit − spent − reserved) covers it; false
    /// when it does not (the request must not reach Google). Keys without a credit always pass.
    func reserve(_ reservation: Reservation) async throws -> Bool
    /// Releases the reservation (if it is still held) and charges `record.costMicroUSD` to the
    /// key, writing the usage-log row, all at once.
    func settle(reservationID: String?, record: UsageRecord) async throws
    /// Extends the leases of every reservation `owner` holds.
    func renewLeases(owner: String, until: Date) async throws
    /// Releases reservations whose lease ended before `now`; returns how many.
    func releaseExpired(now: Date) async throws -> Int
}

/// A lock for async code that, unlike an actor, holds across suspension points: a transaction's
/// statements must not interleave with another's on the same connection.
final class AsyncSerialLock: Sendable {
    private struct State {
        var locked = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state = Mutex(State())

    func run<T: Sendable>(_ body: () async throws -> T) async throws -> T {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let proceed = state.withLock { state -> Bool in
                guard state.locked else {
                    state.locked = true
                    return true
                }
                state.waiters.append(continuation)
                return false
            }
            if proceed { continuation.resume() }
        }
        defer {
            let next = state.withLock { state -> CheckedContinuation<Void, Never>? in
                guard !state.waiters.isEmpty else {
                    state.locked = false
                    return nil
                }
                return state.waiters.removeFirst()
            }
            next?.resume()
        }
        return try await body()
    }
}

/// The ledger on the embedded SQLite file: a connection of its own (so its transactions never
/// mix with other requests' statements), its transactions one at a time, `BEGIN IMMEDIATE` so
/// another process (the CLI, a second gateway) waits instead of failing half-way.
public final class SQLiteLedger: Ledger {
    private let connection: SQLiteConnection
    /// A thread of its own: while a transaction holds the write lock, its next statement must
    /// never queue behind other connections' statements that are waiting for that lock on a
    /// shared pool (they would wait out the busy timeout: "database is locked").
    private let threadPool: NIOThreadPool
    private let lock = AsyncSerialLock()

    private init(connection: SQLiteConnection, threadPool: NIOThreadPool) {
        self.connection = connection
        self.threadPool = threadPool
    }

    /// Opens a second connection to the database at `path` (already migrated by `SQLiteDatabaseHandle`).
    public static func open(path: String, logger: Logger) async throws -> SQLiteLedger {
        let threadPool = NIOThreadPool(numberOfThreads: 1)
        threadPool.start()
        do {
            let connection = try await SQLiteConnection.open(
                storage: .file(path: path), threadPool: threadPool, logger: logger, on: MultiThreadedEventLoopGroup.singleton.any()
            )
            _ = try await connection.query("PRAGMA busy_timeout=5000")
            _ = try await connection.query("PRAGMA synchronous=NORMAL")
            return SQLiteLedger(connection: connection, threadPool: threadPool)
        } catch {
            try? await threadPool.shutdownGracefully()
            throw error
        }
    }

    public func close() async throws {
        try await connection.close()
        try await threadPool.shutdownGracefully()
    }

    private func transaction<T: Sendable>(_ body: @Sendable (any SQLDatabase) async throws -> T) async throws -> T {
        try await lock.run {
            let database = connection.sql()
            try await database.raw("BEGIN IMMEDIATE").run()
            do {
                let value = try await body(database)
                try await database.raw("COMMIT").run()
                return value
            } catch {
                try? await database.raw("ROLLBACK").run()
                throw error
            }
        }
    }

    public func reserve(_ reservation: Reservation) async throws -> Bool {
        try await transaction { database in
            let held = try await database.raw("""
                UPDATE api_keys SET reserved_micro_usd = reserved_micro_usd + \(bind: Int64(reservation.amountMicroUSD))
                WHERE id = \(bind: reservation.keyID) AND credit_micro_usd IS NOT NULL
                  AND credit_micro_usd - spent_micro_usd - reserved_micro_usd >= \(bind: Int64(reservation.amountMicroUSD))
                RETURNING id
                """).all()
            if held.isEmpty {
                // Unlimited keys need no reservation; a limited one without the balance is refused.
                struct Row: Decodable { var credit_micro_usd: Int64? }
                let key = try await database.raw("SELECT credit_micro_usd FROM api_keys WHERE id = \(bind: reservation.keyID)").first(decoding: Row.self)
                return key != nil && key?.credit_micro_usd == nil
            }
            try await database.raw("""
                INSERT INTO reservations (id, key_id, amount_micro_usd, owner, lease_until)
                VALUES (\(bind: reservation.id), \(bind: reservation.keyID), \(bind: Int64(reservation.amountMicroUSD)), \(bind: reservation.owner),
                        \(bind: Int64(reservation.leaseUntil.timeIntervalSince1970)))
                """).run()
            return true
        }
    }

    public func settle(reservationID: String?, record: UsageRecord) async throws {
        try await transaction { database in
            struct Held: Decodable { var amount_micro_usd: Int64 }
            var held: Int64 = 0
            if let reservationID {
                held = try await database.raw("DELETE FROM reservations WHERE id = \(bind: reservationID) RETURNING amount_micro_usd")
                    .first(decoding: Held.self)?.amount_micro_usd ?? 0
            }
            if held != 0 || record.costMicroUSD != 0 {
                try await database.raw("""
                    UPDATE api_keys SET reserved_micro_usd = reserved_micro_usd - \(bind: held), spent_micro_usd = spent_micro_usd + \(bind: Int64(record.costMicroUSD))
                    WHERE id = \(bind: record.keyID)
                    """).run()
            }
            try await database.raw(SQLStore.insertUsage(record)).run()
        }
    }

    public func renewLeases(owner: String, until: Date) async throws {
        try await transaction { database in
            try await database.raw("UPDATE reservations SET lease_until = \(bind: Int64(until.timeIntervalSince1970)) WHERE owner = \(bind: owner)").run()
        }
    }

    public func releaseExpired(now: Date) async throws -> Int {
        try await transaction { database in
            struct Expired: Decodable {
                var key_id: String
                var amount_micro_usd: Int64
            }
            let expired = try await database.raw("""
                DELETE FROM reservations WHERE lease_until < \(bind: Int64(now.timeIntervalSince1970)) RETURNING key_id, amount_micro_usd
                """).all(decoding: Expired.self)
            for row in expired {
                try await database.raw("UPDATE api_keys SET reserved_micro_usd = reserved_micro_usd - \(bind: row.amount_micro_usd) WHERE id = \(bind: row.key_id)").run()
            }
            return expired.count
        }
    }
}
