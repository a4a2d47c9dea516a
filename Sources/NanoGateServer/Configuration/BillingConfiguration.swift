import Foundation
public import NanoGateCore
import NanoGateStorage

/// Billing settings.
public struct BillingConfiguration: Sendable {
    /// How long a reservation lives without renewal (`NANOGATE_RESERVATION_LEASE`, seconds).
    public var lease: Duration = .seconds(45)
    /// This instance's id, written on its reservations (for operators reading the table).
    public var owner = "gw-" + UUID().uuidString.prefix(8).lowercased()
    /// What flex and priority cost beside standard (`NANOGATE_PRIORITY_PRICE_PERCENT`).
    public var tiers = TierPricing()
    /// The tier a background job runs at when it names none (`NANOGATE_JOB_SERVICE_TIER`).
    public var jobServiceTier: ServiceTier = .standard

    public init() {}
}
