import Foundation
import Logging
import NanoGateStorage
import ServiceLifecycle

/// Keeps this instance's running reservations alive and releases everything else that ran out:
/// leases are renewed every third of their length; expired ones (a gateway killed mid-request)
/// are released at start and then every few seconds, so a restarted gateway frees its old
/// reservations within one lease.
struct LeaseKeeper: Service {
    let ledger: any Ledger
    let live: LiveReservations
    let lease: Duration
    let logger: Logger

    func run() async throws {
        let tick = Duration.seconds(max(1, Int(lease.components.seconds) / 3))
        var renewedAt = ContinuousClock.now
        while !Task.isCancelled {
            do {
                if ContinuousClock.now - renewedAt >= tick {
                    try await ledger.renewLeases(ids: live.all, until: Date().addingTimeInterval(TimeInterval(lease.components.seconds)))
                    renewedAt = .now
                }
                let released = try await ledger.releaseExpired(now: Date())
                if released > 0 { logger.warning("released reservations of a gateway that stopped mid-request", metadata: ["count": "\(released)"]) }
            } catch {
                logger.error("reservation upkeep failed", metadata: ["error": "\(error)"])
            }
            do {
                try await cancelWhenGracefulShutdown { try await Task.sleep(for: min(tick, .seconds(5))) }
            } catch {
                return
            }
        }
    }
}
