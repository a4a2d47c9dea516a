public import Foundation
import NanoGateCore
import Crypto

/// What the gateway has learned about one channel: the upstream ids its own model list offers
/// and what its Google project refused. Kept in the database, so every instance routes by what
/// any of them learned, and `nanogate channels list` shows it without a running gateway.
public struct ChannelKnowledge: Sendable, Equatable {
    /// The ids the channel's `models.list` offered; nil when its kind cannot list (Vertex) or it
    /// was never asked. A channel that lists serves only what it lists.
    public var listed: Set<String>?
    /// When the list was last read (nil: never).
    public var checkedAt: Date?
    /// Why the last listing failed (nil: it answered, or it was never asked).
    public var listError: String?
    /// Upstream id → until when this channel's project refuses it.
    public var refusedModels: [String: Date]
    /// Credentials Google refused, by position.
    public var refusedKeys: [KeyRefusal]

    public init(listed: Set<String>? = nil, checkedAt: Date? = nil, listError: String? = nil, refusedModels: [String: Date] = [:], refusedKeys: [KeyRefusal] = []) {
        self.listed = listed
        self.checkedAt = checkedAt
        self.listError = listError
        self.refusedModels = refusedModels
        self.refusedKeys = refusedKeys
    }
}

/// A credential Google refused: its position in the channel (1-based), a fingerprint of its
/// value (so a key the operator replaced starts afresh; never the key itself), until when it
/// stays set aside, and Google's reason.
public struct KeyRefusal: Sendable, Equatable {
    public var position: Int
    public var fingerprint: String
    public var until: Date
    public var reason: String

    public init(position: Int, fingerprint: String, until: Date, reason: String) {
        self.position = position
        self.fingerprint = fingerprint
        self.until = until
        self.reason = reason
    }

    /// The first 16 hex digits of the credential's SHA-256: enough to tell keys apart, nothing
    /// to recover one from.
    public static func fingerprint(of credential: String) -> String {
        SHA256.hash(data: Data(credential.utf8)).prefix(8).lowercaseHex
    }
}

/// Something the pool learned from an answer, for the database (`UpstreamPool.drainLearned`).
public enum ChannelFact: Sendable, Equatable {
    /// The channel's project refused the upstream id (404, or 403/400 "not available").
    case modelRefused(channel: String, upstreamID: String, until: Date)
    /// Google refused the credential at `KeyRefusal.position`.
    case keyRefused(channel: String, KeyRefusal)

    public var channel: String {
        switch self {
        case .modelRefused(let channel, _, _), .keyRefused(let channel, _): channel
        }
    }
}

/// Whether a channel serves an upstream id, as the model matrix shows it.
public enum ChannelServes: String, Sendable, Codable {
    /// Its model list offers the id, and its project has not refused it.
    case listed
    /// It cannot list (Vertex) and has not refused the id: tried until Google refuses it.
    case unchecked
    /// Its model list does not offer the id.
    case notListed = "not_listed"
    /// Its project refused the id within the hour.
    case refused
    /// Its `models` setting does not route the id to it.
    case notRouted = "not_routed"

    /// The channel is asked for the id.
    public var serves: Bool { self == .listed || self == .unchecked }
}

extension ChannelConfiguration {
    /// The fingerprint of credential `index` (an API key; for Vertex, the service account's
    /// identity), or nil when there is none.
    public func credentialFingerprint(_ index: Int) -> String? {
        if kind == .vertex {
            return KeyRefusal.fingerprint(of: serviceAccount?.clientEmail ?? serviceAccountFile ?? name)
        }
        return apiKeys.indices.contains(index) ? KeyRefusal.fingerprint(of: apiKeys[index]) : nil
    }
}

extension Duration {
    /// The duration in seconds, for `Date` arithmetic.
    var seconds: TimeInterval {
        let (whole, attoseconds) = components
        return TimeInterval(whole) + TimeInterval(attoseconds) / 1e18
    }
}
