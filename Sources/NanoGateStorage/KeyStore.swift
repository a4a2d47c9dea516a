public import Foundation

/// Which default a key's answers follow. The spec's "default" group answers with URLs unless asked
/// otherwise; its "Gemini" group with base64.
public enum KeyGroup: String, Sendable, Codable, CaseIterable {
    case `default`
    case gemini

    /// Accepts any case (`Gemini`, `gemini`).
    public init?(lenient text: String) {
        self.init(rawValue: text.lowercased())
    }
}

/// A NanoGate API key as stored (the secret itself is never stored, only its SHA-256).
public struct APIKey: Sendable, Equatable, Codable {
    public var id: String
    public var name: String
    public var group: KeyGroup
    /// The first characters of the secret, to recognise a key in listings.
    public var prefix: String
    public var createdAt: Date
    public var revokedAt: Date?

    public init(id: String, name: String, group: KeyGroup, prefix: String, createdAt: Date, revokedAt: Date?) {
        self.id = id
        self.name = name
        self.group = group
        self.prefix = prefix
        self.createdAt = createdAt
        self.revokedAt = revokedAt
    }
}

/// Failures of the key store that an operator can act on.
public enum KeyStoreError: Error, Equatable, CustomStringConvertible {
    case duplicateName(String)
    case notFound(String)

    public var description: String {
        switch self {
        case .duplicateName(let name): "A key named '\(name)' already exists."
        case .notFound(let name): "No active key named '\(name)'."
        }
    }
}

/// Issues, finds and revokes API keys.
public protocol KeyStore: Sendable {
    /// Creates a key and returns it with its secret, which is shown once and never again.
    func createKey(name: String, group: KeyGroup) async throws -> (key: APIKey, secret: String)
    /// The active (not revoked) key whose secret this is.
    func activeKey(secret: String) async throws -> APIKey?
    /// Every key, revoked ones included, oldest first.
    func listKeys() async throws -> [APIKey]
    /// Revokes the active key with this name.
    func revokeKey(name: String) async throws
}

/// One line of the usage log, the one record of money: per request, what Google billed (its
/// token counts, priced), what the client was charged (only what it received), how many upstream
/// attempts it took, and why it failed, if it did.
public struct UsageRecord: Sendable, Equatable, Codable {
    public var keyID: String
    public var endpoint: String
    public var model: String
    public var status: Int
    public var images: Int
    public var inputTokens: Int
    public var outputTokens: Int
    public var totalTokens: Int
    public var costMicroUSD: Int
    public var errorCode: String?
    /// Google's price for every answer it returned for this request, delivered or not.
    public var upstreamCostMicroUSD: Int
    /// Upstream HTTP attempts made.
    public var attempts: Int
    public var createdAt: Date

    public init(
        keyID: String, endpoint: String, model: String, status: Int, images: Int, inputTokens: Int, outputTokens: Int,
        totalTokens: Int, costMicroUSD: Int, errorCode: String?, upstreamCostMicroUSD: Int = 0, attempts: Int = 0, createdAt: Date = Date()
    ) {
        self.upstreamCostMicroUSD = upstreamCostMicroUSD
        self.attempts = attempts
        self.keyID = keyID
        self.endpoint = endpoint
        self.model = model
        self.status = status
        self.images = images
        self.inputTokens = inputTokens
        self.outputTokens = outputTokens
        self.totalTokens = totalTokens
        self.costMicroUSD = costMicroUSD
        self.errorCode = errorCode
        self.createdAt = createdAt
    }
}

/// Where settled requests are written.
public protocol UsageLog: Sendable {
    func record(_ entry: UsageRecord) async throws
    /// The newest entries for a key, newest first.
    func recentUsage(keyID: String, limit: Int) async throws -> [UsageRecord]
}

/// Secrets and their hashes.
public enum KeySecrets {
    /// A new secret: `sk-ng-` and 43 base62 characters (256 bits).
    public static func generate() -> String {
        let alphabet = Array("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
        var generator = SystemRandomNumberGenerator()
        return "sk-ng-" + String((0..<43).map { _ in alphabet[Int(generator.next(upperBound: UInt64(alphabet.count)))] })
    }
}

/// Gemini 3's `thoughtSignature`s, kept server-side because OpenAI's chat format has no place
/// for them. Keyed by a hash of what the client sends back: the image bytes, or the assistant text.
public protocol SignatureStore: Sendable {
    func saveSignatures(_ signatures: [String: String]) async throws
    func signatures(for hashes: [String]) async throws -> [String: String]
    /// Forgets signatures stored before `date`. Returns how many.
    func pruneSignatures(before date: Date) async throws -> Int
}
