public import Foundation
public import NanoGateCore

/// A group of keys. The spec's two exist from the start: `default` answers with URLs unless asked
/// otherwise, `gemini` with base64; operators add more (`KeyGroupSettings`).
public struct KeyGroup: RawRepresentable, Hashable, Sendable, Codable, CustomStringConvertible {
    public var rawValue: String

    public init(rawValue: String) {
        self.rawValue = rawValue
    }

    public static let `default` = KeyGroup(rawValue: "default")
    public static let gemini = KeyGroup(rawValue: "gemini")

    /// Any case (`Gemini`, `gemini`); 1 to 64 letters, digits, `-` and `_`.
    public init?(lenient text: String) {
        let name = text.lowercased()
        guard (1...64).contains(name.count), name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }) else { return nil }
        self.init(rawValue: name)
    }

    public var description: String { rawValue }
}

/// What a group decides for its keys.
public struct KeyGroupSettings: Sendable, Equatable, Codable {
    public var name: KeyGroup
    /// `url` or `b64_json`: the answer when a request names no `response_format`.
    public var responseFormat: ResponseFormat
    /// Multiplies every charge, in millionths (1,000,000 = ×1.0), so money stays integer.
    public var multiplierPPM: Int
    /// The models its keys may use; nil for all.
    public var models: [String]?
    /// The service tiers its keys may use (`flex`, `standard`, `priority`); nil for the default
    /// (standard and flex: priority costs more, so an operator turns it on).
    public var serviceTiers: [String]?

    public init(name: KeyGroup, responseFormat: ResponseFormat, multiplierPPM: Int = 1_000_000, models: [String]? = nil, serviceTiers: [String]? = nil) {
        self.name = name
        self.responseFormat = responseFormat
        self.multiplierPPM = multiplierPPM
        self.models = models
        self.serviceTiers = serviceTiers
    }

    /// The tiers a group names when it names none.
    public static let defaultServiceTiers = ["standard", "flex"]

    /// The settings of a group the database does not know (a key whose group was never created).
    public static func fallback(for group: KeyGroup) -> KeyGroupSettings {
        KeyGroupSettings(name: group, responseFormat: group == .gemini ? .b64JSON : .url)
    }
}

/// A NanoGate API key as stored (the secret itself is never stored, only its SHA-256), with its
/// limits, its money (micro-USD) and its group's settings.
public struct APIKey: Sendable, Equatable, Codable {
    public var id: String
    public var name: String
    public var group: KeyGroup
    /// The first characters of the secret, to recognise a key in listings.
    public var prefix: String
    public var createdAt: Date
    public var revokedAt: Date?
    /// Credit in micro-USD; nil for unlimited.
    public var creditMicroUSD: Int?
    /// Charged so far.
    public var spentMicroUSD = 0
    /// Held for requests in flight (reserve, then settle).
    public var reservedMicroUSD = 0
    public var expiresAt: Date?
    /// The models this key may use; nil for all.
    public var models: [String]?
    /// Requests per minute; nil for no limit.
    public var rpm: Int?
    /// Requests in flight at once; nil for no limit.
    public var concurrency: Int?
    /// The service tiers this key may use; nil: its group's.
    public var serviceTiers: [String]?
    public var disabled = false
    /// Its group's settings (read with the key).
    public var groupSettings: KeyGroupSettings

    public init(
        id: String, name: String, group: KeyGroup, prefix: String, createdAt: Date, revokedAt: Date?,
        creditMicroUSD: Int? = nil, spentMicroUSD: Int = 0, reservedMicroUSD: Int = 0, expiresAt: Date? = nil, models: [String]? = nil,
        rpm: Int? = nil, concurrency: Int? = nil, disabled: Bool = false, groupSettings: KeyGroupSettings? = nil
    ) {
        self.id = id
        self.name = name
        self.group = group
        self.prefix = prefix
        self.createdAt = createdAt
        self.revokedAt = revokedAt
        self.creditMicroUSD = creditMicroUSD
        self.spentMicroUSD = spentMicroUSD
        self.reservedMicroUSD = reservedMicroUSD
        self.expiresAt = expiresAt
        self.models = models
        self.rpm = rpm
        self.concurrency = concurrency
        self.disabled = disabled
        self.groupSettings = groupSettings ?? .fallback(for: group)
    }

    /// Credit left for new requests; nil for unlimited.
    public var balanceMicroUSD: Int? {
        creditMicroUSD.map { $0 - spentMicroUSD - reservedMicroUSD }
    }

    /// The service tiers this key may use: its own list, else its group's, else standard and flex.
    public var allowedServiceTiers: [String] {
        serviceTiers ?? groupSettings.serviceTiers ?? KeyGroupSettings.defaultServiceTiers
    }

    /// Whether this key (and its group) may use the model named `name`.
    public func mayUse(model name: String) -> Bool {
        (models?.contains(name) ?? true) && (groupSettings.models?.contains(name) ?? true)
    }
}

/// What a key's settings change to (`keys update`); nil leaves a field as it is.
public struct KeyUpdate: Sendable, Equatable {
    public enum Change<Value: Sendable & Equatable>: Sendable, Equatable {
        case set(Value)
        case clear
    }

    public var group: KeyGroup?
    public var credit: Change<Int>?
    /// Added to the credit (a top-up); with an unlimited key it sets a credit of this amount.
    public var addCredit: Int?
    public var expiresAt: Change<Date>?
    public var models: Change<[String]>?
    public var rpm: Change<Int>?
    public var concurrency: Change<Int>?
    public var serviceTiers: Change<[String]>?
    public var disabled: Bool?

    public init(
        group: KeyGroup? = nil, credit: Change<Int>? = nil, addCredit: Int? = nil, expiresAt: Change<Date>? = nil,
        models: Change<[String]>? = nil, rpm: Change<Int>? = nil, concurrency: Change<Int>? = nil, disabled: Bool? = nil,
        serviceTiers: Change<[String]>? = nil
    ) {
        self.serviceTiers = serviceTiers
        self.group = group
        self.credit = credit
        self.addCredit = addCredit
        self.expiresAt = expiresAt
        self.models = models
        self.rpm = rpm
        self.concurrency = concurrency
        self.disabled = disabled
    }
}

/// Limits of a new key.
public struct KeyOptions: Sendable, Equatable {
    public var creditMicroUSD: Int?
    public var expiresAt: Date?
    public var models: [String]?
    public var rpm: Int?
    public var concurrency: Int?

    public init(creditMicroUSD: Int? = nil, expiresAt: Date? = nil, models: [String]? = nil, rpm: Int? = nil, concurrency: Int? = nil) {
        self.creditMicroUSD = creditMicroUSD
        self.expiresAt = expiresAt
        self.models = models
        self.rpm = rpm
        self.concurrency = concurrency
    }
}

/// Failures of the key store that an operator can act on.
public enum KeyStoreError: Error, Equatable, CustomStringConvertible {
    case duplicateName(String)
    case notFound(String)
    case unknownGroup(String)
    case duplicateGroup(String)

    public var description: String {
        switch self {
        case .duplicateName(let name): "A key named '\(name)' already exists."
        case .notFound(let name): "No active key named '\(name)'."
        case .unknownGroup(let name): "No group named '\(name)'."
        case .duplicateGroup(let name): "A group named '\(name)' already exists."
        }
    }
}

/// Issues, finds and revokes API keys.
public protocol KeyStore: Sendable {
    /// Creates a key and returns it with its secret, which is shown once and never again.
    func createKey(name: String, group: KeyGroup, options: KeyOptions) async throws -> (key: APIKey, secret: String)
    /// The active (not revoked) key whose secret this is.
    func activeKey(secret: String) async throws -> APIKey?
    /// Every key, revoked ones included, oldest first.
    func listKeys() async throws -> [APIKey]
    /// Revokes the active key with this name.
    func revokeKey(name: String) async throws
}

/// One upstream attempt of a request, as the usage log keeps it.
public struct UpstreamAttemptRecord: Sendable, Equatable, Codable {
    public var channel: String
    /// The channel's credential by position (1-based), never its value.
    public var key: Int
    /// The HTTP status the upstream answered (nil: no answer).
    public var status: Int?
    /// The failure's code (nil: success).
    public var error: String?
    public var milliseconds: Int

    public init(channel: String, key: Int, status: Int?, error: String?, milliseconds: Int) {
        self.channel = channel
        self.key = key
        self.status = status
        self.error = error
        self.milliseconds = milliseconds
    }

    enum CodingKeys: String, CodingKey { case channel, key, status, error, milliseconds }

    /// Every field present, `null` when empty (as the usage rows' own fields are).
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(channel, forKey: .channel)
        try container.encode(key, forKey: .key)
        try container.encode(status, forKey: .status)
        try container.encode(error, forKey: .error)
        try container.encode(milliseconds, forKey: .milliseconds)
    }
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
    /// `x-request-id` (the client's, or one the gateway made).
    public var requestID: String = ""
    public var keyName: String?
    public var group: String?
    /// The Google model that answered (the fallback's id when the primary is retired).
    public var upstreamModel: String?
    /// The size asked for (`2:3`, `4K 16:9`).
    public var requestedSize: String?
    /// The first image's pixel size as delivered (`2752x1536`), when the gateway read it.
    public var deliveredSize: String?
    public var latencyMilliseconds: Int = 0
    /// Tokens by modality, as Google's `usageMetadata` reported them.
    public var inputTextTokens: Int = 0
    public var inputImageTokens: Int = 0
    public var outputTextTokens: Int = 0
    public var outputImageTokens: Int = 0
    /// Which upstream channel and key served it (`studio#2`), never the secret.
    public var upstreamKey: String?
    /// Every upstream attempt, in order.
    public var upstreamAttempts: [UpstreamAttemptRecord] = []
    /// The background job or batch the row belongs to (set by the gateway, never by a client).
    public var jobID: String?
    /// The service tier Google served and the charge is priced at (`flex`, `standard`, `priority`).
    public var serviceTier: String?

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

/// Which usage rows to read.
public struct UsageQuery: Sendable, Equatable {
    public var keyID: String?
    public var since: Date?
    public var until: Date?
    public var limit: Int
    /// Only rows of this public model name.
    public var model: String?
    public var status: UsageStatusFilter?

    public init(keyID: String? = nil, since: Date? = nil, until: Date? = nil, limit: Int = 10_000, model: String? = nil, status: UsageStatusFilter? = nil) {
        self.keyID = keyID
        self.since = since
        self.until = until
        self.limit = limit
        self.model = model
        self.status = status
    }
}

/// The usage log's `status` filter: answered (below 400), failed (400 and above), or one code.
public enum UsageStatusFilter: Sendable, Equatable {
    case ok
    case error
    case code(Int)

    /// `ok`, `error` or a status code such as `429`; nil for anything else.
    public init?(_ text: String) {
        switch text.lowercased() {
        case "ok": self = .ok
        case "error": self = .error
        default:
            guard let code = Int(text), (100...599).contains(code) else { return nil }
            self = .code(code)
        }
    }
}

/// Where settled requests are written.
public protocol UsageLog: Sendable {
    func record(_ entry: UsageRecord) async throws
    /// The newest entries for a key, newest first.
    func recentUsage(keyID: String, limit: Int) async throws -> [UsageRecord]
    /// Rows by key and time range, newest first.
    func usage(_ query: UsageQuery) async throws -> [UsageRecord]
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
