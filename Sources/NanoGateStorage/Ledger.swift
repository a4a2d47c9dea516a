public import Foundation
import SQLKit
import SQLiteNIO

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

/// What a reservation came to.
public enum ReservationOutcome: Sendable, Equatable {
    /// The amount is held.
    case held
    /// The key has no credit limit: nothing to hold.
    case unlimited
    /// The balance cannot cover it (the request must not reach Google).
    case insufficient
}

/// Reserve-then-settle against each key's credit. Every operation is one SQL statement (the
/// database's triggers move the money inside it), so concurrent requests — and several
/// gateways on one database — can never overspend a key, and a crash leaves either the whole
/// reservation (released when its lease runs out) or none.
public protocol Ledger: Sendable {
    /// Holds the amount when the key's balance (credit − spent − reserved) covers it.
    func reserve(_ reservation: Reservation) async throws -> ReservationOutcome
    /// Writes the usage-log row; the same statement releases the reservation (if still held)
    /// and charges `record.costMicroUSD` to the key.
    func settle(reservationID: String?, record: UsageRecord) async throws
    /// Extends the leases of these reservations (the ones whose requests are still running).
    func renewLeases(ids: [String], until: Date) async throws
    /// Releases reservations whose lease ended before `now`; returns how many.
    func releaseExpired(now: Date) async throws -> Int
    /// Releases one reservation (a batch whose lines were each settled on their own).
    func release(reservationID: String) async throws
    /// Gives money back to a key: an entry of its own (never a negative usage row), the key's
    /// spent lowered in the same statement.
    func refund(_ refund: Refund) async throws
}

extension SQLStore: Ledger {
    public func reserve(_ reservation: Reservation) async throws -> ReservationOutcome {
        do {
            try await database.raw("""
                INSERT INTO reservations (id, key_id, amount_micro_usd, owner, lease_until)
                VALUES (\(bind: reservation.id), \(bind: reservation.keyID), \(bind: Int64(reservation.amountMicroUSD)), \(bind: reservation.owner),
                        \(bind: Int64(reservation.leaseUntil.timeIntervalSince1970)))
                """).run()
            return .held
        } catch {
            // The trigger refused: no balance, or the key became unlimited since it was read.
            guard Self.isHoldRefusal(error) else { throw error }
            struct Row: Decodable { var credit_micro_usd: Int64? }
            let key = try await database.raw("SELECT credit_micro_usd FROM api_keys WHERE id = \(bind: reservation.keyID)").first(decoding: Row.self)
            return key != nil && key?.credit_micro_usd == nil ? .unlimited : .insufficient
        }
    }

    /// Whether `error` is the hold trigger's refusal. SQLite's is known by the statement's own
    /// result code (a trigger's constraint): its message is read from the connection afterwards,
    /// and a statement running at the same moment on another thread can replace it (SQLiteNIO
    /// says so), which under load turned refusals into 500s. PostgreSQL's carries the message
    /// (PostgresNIO hides it from `description`; `reflecting` shows it).
    static func isHoldRefusal(_ error: any Error) -> Bool {
        if let sqlite = error as? SQLiteError { return sqlite.reason == .constraintTriggerFailed }
        return String(reflecting: error).contains("insufficient_quota")
    }

    public func settle(reservationID: String?, record: UsageRecord) async throws {
        try await database.raw(SQLStore.insertUsage(record, reservationID: reservationID)).run()
    }

    public func renewLeases(ids: [String], until: Date) async throws {
        guard !ids.isEmpty else { return }
        try await database.raw("UPDATE reservations SET lease_until = \(bind: Int64(until.timeIntervalSince1970)) WHERE id IN (\(binds: ids))").run()
    }

    public func release(reservationID: String) async throws {
        try await database.raw("DELETE FROM reservations WHERE id = \(bind: reservationID)").run()
    }

    public func releaseExpired(now: Date) async throws -> Int {
        try await database.raw("DELETE FROM reservations WHERE lease_until < \(bind: Int64(now.timeIntervalSince1970)) RETURNING id").all().count
    }
}
