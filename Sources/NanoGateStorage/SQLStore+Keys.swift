public import Foundation
public import NanoGateCore
import SQLKit

/// Keys, groups, prices and the usage log, in plain SQL that SQLite and PostgreSQL both accept.
/// Every change is one statement; money (reservations and settlement, `Ledger`) moves in the
/// triggers of the statements that record it.
extension SQLStore {
    struct KeyRow: Decodable {
        var id: String
        var name: String
        var key_group: String
        var prefix: String
        var created_at: Int64
        var revoked_at: Int64?
        var credit_micro_usd: Int64?
        var spent_micro_usd: Int64
        var reserved_micro_usd: Int64
        var expires_at: Int64?
        var models: String?
        var rpm: Int?
        var concurrency: Int?
        var disabled: Int
        var group_response_format: String?
        var group_multiplier_ppm: Int64?
        var group_models: String?
        var service_tiers: String?
        var group_service_tiers: String?

        var key: APIKey {
            let group = KeyGroup(rawValue: key_group)
            let settings = group_response_format.map {
                KeyGroupSettings(
                    name: group, responseFormat: ResponseFormat(rawValue: $0) ?? .url, multiplierPPM: Int(group_multiplier_ppm ?? 1_000_000), models: SQLStore.list(group_models),
                    serviceTiers: SQLStore.list(group_service_tiers)
                )
            }
            var key = APIKey(
                id: id, name: name, group: group, prefix: prefix,
                createdAt: Date(timeIntervalSince1970: TimeInterval(created_at)),
                revokedAt: revoked_at.map { Date(timeIntervalSince1970: TimeInterval($0)) },
                creditMicroUSD: credit_micro_usd.map(Int.init), spentMicroUSD: Int(spent_micro_usd), reservedMicroUSD: Int(reserved_micro_usd),
                expiresAt: expires_at.map { Date(timeIntervalSince1970: TimeInterval($0)) }, models: SQLStore.list(models),
                rpm: rpm, concurrency: concurrency, disabled: disabled != 0, groupSettings: settings
            )
            key.serviceTiers = SQLStore.list(service_tiers)
            return key
        }
    }

    static let keyColumns: SQLQueryString = """
        SELECT k.id, k.name, k.key_group, k.prefix, k.created_at, k.revoked_at, k.credit_micro_usd, k.spent_micro_usd, k.reserved_micro_usd,
               k.expires_at, k.models, k.rpm, k.concurrency, k.disabled, k.service_tiers,
               g.response_format AS group_response_format, g.multiplier_ppm AS group_multiplier_ppm, g.models AS group_models,
               g.service_tiers AS group_service_tiers
        FROM api_keys k LEFT JOIN key_groups g ON g.name = k.key_group
        """

    /// A comma-separated list column (`nil` and empty: no list).
    static func list(_ text: String?) -> [String]? {
        guard let text, !text.isEmpty else { return nil }
        return text.split(separator: ",").map(String.init)
    }

    static func text(_ list: [String]?) -> String? {
        list.map { $0.joined(separator: ",") }
    }

    public func createKey(name: String, group: KeyGroup) async throws -> (key: APIKey, secret: String) {
        try await createKey(name: name, group: group, options: KeyOptions())
    }

    public func createKey(name: String, group: KeyGroup, options: KeyOptions) async throws -> (key: APIKey, secret: String) {
        guard try await self.group(named: group) != nil else { throw KeyStoreError.unknownGroup(group.rawValue) }
        let secret = KeySecrets.generate()
        let id = UUID().uuidString.lowercased()
        let created = Int64(Date().timeIntervalSince1970)
        // Insert only when no active key has the name: one atomic statement, no check-then-insert race.
        let inserted = try await database.raw("""
            INSERT INTO api_keys (id, name, key_group, secret_hash, prefix, created_at, credit_micro_usd, expires_at, models, rpm, concurrency)
            SELECT \(bind: id), \(bind: name), \(bind: group.rawValue), \(bind: Self.hash(secret)), \(bind: String(secret.prefix(10))), \(bind: created),
                   \(bind: options.creditMicroUSD.map(Int64.init)), \(bind: options.expiresAt.map { Int64($0.timeIntervalSince1970) }),
                   \(bind: Self.text(options.models)), \(bind: options.rpm), \(bind: options.concurrency)
            WHERE NOT EXISTS (SELECT 1 FROM api_keys WHERE name = \(bind: name) AND revoked_at IS NULL)
            RETURNING id
            """).all()
        guard !inserted.isEmpty else { throw KeyStoreError.duplicateName(name) }
        guard let key = try await key(id: id) else { throw KeyStoreError.notFound(name) }
        return (key, secret)
    }

    public func activeKey(secret: String) async throws -> APIKey? {
        try await activeKey(secretHash: Self.hash(secret))
    }

    public func key(id: String) async throws -> APIKey? {
        try await database.raw("\(Self.keyColumns) WHERE k.id = \(bind: id)").first(decoding: KeyRow.self)?.key
    }

    /// The active key with this name.
    public func key(named name: String) async throws -> APIKey? {
        try await database.raw("\(Self.keyColumns) WHERE k.name = \(bind: name) AND k.revoked_at IS NULL").first(decoding: KeyRow.self)?.key
    }

    public func listKeys() async throws -> [APIKey] {
        try await database.raw("\(Self.keyColumns) ORDER BY k.created_at, k.name").all(decoding: KeyRow.self).map(\.key)
    }

    public func revokeKey(name: String) async throws {
        let revoked = try await database.raw("""
            UPDATE api_keys SET revoked_at = \(bind: Int64(Date().timeIntervalSince1970))
            WHERE name = \(bind: name) AND revoked_at IS NULL RETURNING id
            """).all()
        guard !revoked.isEmpty else { throw KeyStoreError.notFound(name) }
    }

    /// A new secret for the active key with this name; the old one stops working at once.
    public func rotateKey(name: String) async throws -> (key: APIKey, secret: String) {
        let secret = KeySecrets.generate()
        let rotated = try await database.raw("""
            UPDATE api_keys SET secret_hash = \(bind: Self.hash(secret)), prefix = \(bind: String(secret.prefix(10)))
            WHERE name = \(bind: name) AND revoked_at IS NULL RETURNING id
            """).all()
        guard !rotated.isEmpty, let key = try await key(named: name) else { throw KeyStoreError.notFound(name) }
        return (key, secret)
    }

    /// Changes the active key with this name, in one statement (a top-up adds to the credit
    /// atomically, whatever runs beside it).
    public func updateKey(name: String, _ update: KeyUpdate) async throws -> APIKey {
        if let group = update.group, try await self.group(named: group) == nil { throw KeyStoreError.unknownGroup(group.rawValue) }
        var sets: [SQLQueryString] = []
        if let group = update.group { sets.append("key_group = \(bind: group.rawValue)") }
        switch update.credit {
        case .set(let value): sets.append("credit_micro_usd = \(bind: Int64(value))")
        case .clear: sets.append("credit_micro_usd = NULL")
        case nil: break
        }
        if let add = update.addCredit { sets.append("credit_micro_usd = COALESCE(credit_micro_usd, 0) + \(bind: Int64(add))") }
        switch update.expiresAt {
        case .set(let date): sets.append("expires_at = \(bind: Int64(date.timeIntervalSince1970))")
        case .clear: sets.append("expires_at = NULL")
        case nil: break
        }
        switch update.models {
        case .set(let models): sets.append("models = \(bind: Self.text(models))")
        case .clear: sets.append("models = NULL")
        case nil: break
        }
        switch update.serviceTiers {
        case .set(let tiers): sets.append("service_tiers = \(bind: Self.text(tiers))")
        case .clear: sets.append("service_tiers = NULL")
        case nil: break
        }
        switch update.rpm {
        case .set(let value): sets.append("rpm = \(bind: value)")
        case .clear: sets.append("rpm = NULL")
        case nil: break
        }
        switch update.concurrency {
        case .set(let value): sets.append("concurrency = \(bind: value)")
        case .clear: sets.append("concurrency = NULL")
        case nil: break
        }
        if let disabled = update.disabled { sets.append("disabled = \(bind: disabled ? 1 : 0)") }
        if !sets.isEmpty {
            var assignments: SQLQueryString = ""
            for (index, set) in sets.enumerated() { assignments = index == 0 ? set : "\(assignments), \(set)" }
            let updated = try await database.raw("UPDATE api_keys SET \(assignments) WHERE name = \(bind: name) AND revoked_at IS NULL RETURNING id").all()
            guard !updated.isEmpty else { throw KeyStoreError.notFound(name) }
        }
        guard let key = try await key(named: name) else { throw KeyStoreError.notFound(name) }
        return key
    }

    // MARK: Groups

    struct GroupRow: Decodable {
        var name: String
        var response_format: String
        var multiplier_ppm: Int64
        var models: String?
        var service_tiers: String?

        var settings: KeyGroupSettings {
            KeyGroupSettings(
                name: KeyGroup(rawValue: name), responseFormat: ResponseFormat(rawValue: response_format) ?? .url, multiplierPPM: Int(multiplier_ppm), models: SQLStore.list(models),
                serviceTiers: SQLStore.list(service_tiers)
            )
        }
    }

    public func group(named name: KeyGroup) async throws -> KeyGroupSettings? {
        try await database.raw("SELECT name, response_format, multiplier_ppm, models, service_tiers FROM key_groups WHERE name = \(bind: name.rawValue)")
            .first(decoding: GroupRow.self)?.settings
    }

    public func listGroups() async throws -> [KeyGroupSettings] {
        try await database.raw("SELECT name, response_format, multiplier_ppm, models, service_tiers FROM key_groups ORDER BY created_at, name")
            .all(decoding: GroupRow.self).map(\.settings)
    }

    public func createGroup(_ group: KeyGroupSettings) async throws {
        let inserted = try await database.raw("""
            INSERT INTO key_groups (name, response_format, multiplier_ppm, models, service_tiers, created_at)
            VALUES (\(bind: group.name.rawValue), \(bind: group.responseFormat.rawValue), \(bind: Int64(group.multiplierPPM)), \(bind: Self.text(group.models)),
                    \(bind: Self.text(group.serviceTiers)), \(bind: Int64(Date().timeIntervalSince1970)))
            ON CONFLICT (name) DO NOTHING RETURNING name
            """).all()
        guard !inserted.isEmpty else { throw KeyStoreError.duplicateGroup(group.name.rawValue) }
    }

    public func updateGroup(_ group: KeyGroupSettings) async throws {
        let updated = try await database.raw("""
            UPDATE key_groups SET response_format = \(bind: group.responseFormat.rawValue), multiplier_ppm = \(bind: Int64(group.multiplierPPM)), models = \(bind: Self.text(group.models)),
                service_tiers = \(bind: Self.text(group.serviceTiers))
            WHERE name = \(bind: group.name.rawValue) RETURNING name
            """).all()
        guard !updated.isEmpty else { throw KeyStoreError.unknownGroup(group.name.rawValue) }
    }

    // MARK: Prices

    struct PriceRow: Decodable {
        var upstream_model: String
        var input_text: Int64
        var input_image: Int64
        var output_text: Int64
        var output_image: Int64
    }

    /// Operators' price overrides by upstream model (micro-USD per 1M tokens).
    public func priceOverrides() async throws -> [String: TokenPrices] {
        let rows = try await database.raw("SELECT upstream_model, input_text, input_image, output_text, output_image FROM prices").all(decoding: PriceRow.self)
        return Dictionary(rows.map {
            ($0.upstream_model, TokenPrices(inputText: Int($0.input_text), inputImage: Int($0.input_image), outputText: Int($0.output_text), outputImage: Int($0.output_image)))
        }, uniquingKeysWith: { first, _ in first })
    }

    public func setPrice(upstreamModel: String, _ price: TokenPrices) async throws {
        try await database.raw("""
            INSERT INTO prices (upstream_model, input_text, input_image, output_text, output_image)
            VALUES (\(bind: upstreamModel), \(bind: Int64(price.inputText)), \(bind: Int64(price.inputImage)), \(bind: Int64(price.outputText)), \(bind: Int64(price.outputImage)))
            ON CONFLICT (upstream_model) DO UPDATE SET input_text = excluded.input_text, input_image = excluded.input_image,
                output_text = excluded.output_text, output_image = excluded.output_image
            """).run()
    }

    // MARK: Usage log

    static let usageColumns: SQLQueryString = """
        SELECT key_id, endpoint, model, status, images, input_tokens, output_tokens, total_tokens, cost_micro_usd, error_code,
               upstream_cost_micro_usd, attempts, created_at, request_id, key_name, key_group, upstream_model, requested_size, latency_ms,
               input_text_tokens, input_image_tokens, output_text_tokens, output_image_tokens, upstream_key, upstream_attempts, service_tier,
               delivered_size
        FROM usage_log
        """

    struct UsageRow: Decodable {
        var key_id: String
        var endpoint: String
        var model: String
        var status: Int
        var images: Int
        var input_tokens: Int
        var output_tokens: Int
        var total_tokens: Int
        var cost_micro_usd: Int64
        var error_code: String?
        var upstream_cost_micro_usd: Int64
        var attempts: Int
        var created_at: Int64
        var request_id: String?
        var key_name: String?
        var key_group: String?
        var upstream_model: String?
        var requested_size: String?
        var latency_ms: Int
        var input_text_tokens: Int
        var input_image_tokens: Int
        var output_text_tokens: Int
        var output_image_tokens: Int
        var upstream_key: String?
        var upstream_attempts: String?
        var service_tier: String?
        var delivered_size: String?

        var record: UsageRecord {
            var record = UsageRecord(
                keyID: key_id, endpoint: endpoint, model: model, status: status, images: images,
                inputTokens: input_tokens, outputTokens: output_tokens, totalTokens: total_tokens,
                costMicroUSD: Int(cost_micro_usd), errorCode: error_code,
                upstreamCostMicroUSD: Int(upstream_cost_micro_usd), attempts: attempts,
                createdAt: Date(timeIntervalSince1970: TimeInterval(created_at) / 1000)
            )
            record.requestID = request_id ?? ""
            record.keyName = key_name
            record.group = key_group
            record.upstreamModel = upstream_model
            record.requestedSize = requested_size
            record.latencyMilliseconds = latency_ms
            record.inputTextTokens = input_text_tokens
            record.inputImageTokens = input_image_tokens
            record.outputTextTokens = output_text_tokens
            record.outputImageTokens = output_image_tokens
            record.upstreamKey = upstream_key
            record.upstreamAttempts = upstream_attempts.flatMap { try? JSONDecoder().decode([UpstreamAttemptRecord].self, from: Data($0.utf8)) } ?? []
            record.serviceTier = service_tier
            record.deliveredSize = delivered_size
            return record
        }
    }

    /// The usage row's INSERT (also run by the ledger inside its settlement transaction).
    /// `created_at` is in milliseconds since 1970 so rows of one second keep their order.
    static func insertUsage(_ entry: UsageRecord, reservationID: String? = nil) -> SQLQueryString {
        """
        INSERT INTO usage_log (id, key_id, endpoint, model, status, images, input_tokens, output_tokens, total_tokens, cost_micro_usd, error_code,
                               upstream_cost_micro_usd, attempts, created_at, request_id, key_name, key_group, upstream_model, requested_size, latency_ms,
                               input_text_tokens, input_image_tokens, output_text_tokens, output_image_tokens, upstream_key, reservation_id, upstream_attempts, job_id, service_tier,
                               delivered_size)
        VALUES (\(bind: UUID().uuidString.lowercased()), \(bind: entry.keyID), \(bind: entry.endpoint), \(bind: entry.model), \(bind: entry.status),
                \(bind: entry.images), \(bind: entry.inputTokens), \(bind: entry.outputTokens), \(bind: entry.totalTokens),
                \(bind: Int64(entry.costMicroUSD)), \(bind: entry.errorCode), \(bind: Int64(entry.upstreamCostMicroUSD)), \(bind: entry.attempts),
                \(bind: Int64(entry.createdAt.timeIntervalSince1970 * 1000)), \(bind: entry.requestID), \(bind: entry.keyName), \(bind: entry.group),
                \(bind: entry.upstreamModel), \(bind: entry.requestedSize), \(bind: entry.latencyMilliseconds),
                \(bind: entry.inputTextTokens), \(bind: entry.inputImageTokens), \(bind: entry.outputTextTokens), \(bind: entry.outputImageTokens),
                \(bind: entry.upstreamKey), \(bind: reservationID),
                \(bind: entry.upstreamAttempts.isEmpty ? nil : (try? JSONEncoder().encode(entry.upstreamAttempts)).map { String(decoding: $0, as: UTF8.self) }),
                \(bind: entry.jobID), \(bind: entry.serviceTier), \(bind: entry.deliveredSize))
        """
    }

    public func record(_ entry: UsageRecord) async throws {
        try await database.raw(Self.insertUsage(entry)).run()
    }

    public func recentUsage(keyID: String, limit: Int) async throws -> [UsageRecord] {
        try await usage(UsageQuery(keyID: keyID, limit: limit))
    }

    public func usage(_ query: UsageQuery) async throws -> [UsageRecord] {
        var conditions: [SQLQueryString] = []
        if let keyID = query.keyID { conditions.append("key_id = \(bind: keyID)") }
        if let since = query.since { conditions.append("created_at >= \(bind: Int64(since.timeIntervalSince1970 * 1000))") }
        if let until = query.until { conditions.append("created_at < \(bind: Int64(until.timeIntervalSince1970 * 1000))") }
        if let model = query.model { conditions.append("model = \(bind: model)") }
        switch query.status {
        case .ok: conditions.append("status < 400")
        case .error: conditions.append("status >= 400")
        case .code(let code): conditions.append("status = \(bind: code)")
        case nil: break
        }
        var sql: SQLQueryString = Self.usageColumns
        for (index, condition) in conditions.enumerated() { sql = "\(sql) \(unsafeRaw: index == 0 ? "WHERE" : "AND") \(condition)" }
        return try await database.raw("\(sql) ORDER BY created_at DESC, id LIMIT \(bind: max(1, min(query.limit, 100_000)))")
            .all(decoding: UsageRow.self).map(\.record)
    }
}


/// What an `Idempotency-Key` found.
public enum IdempotencyClaim: Sendable, Equatable {
    /// First use: run the request, then `completeIdempotency` (or `releaseIdempotency`).
    case claimed
    /// The same request ran before: its stored answer.
    case done(status: Int, contentType: String, body: [UInt8])
    /// The same key and body is running now.
    case inProgress
    /// The key was used with another body.
    case mismatch
}

extension SQLStore {
    /// Claims `idempotencyKey` for a request whose body hashes to `bodyHash`, in one statement
    /// (two concurrent retries cannot both run). A claim left `in_progress` longer than
    /// `staleAfter` (its gateway died) may be taken over.
    public func claimIdempotency(keyID: String, idempotencyKey: String, bodyHash: String, staleAfter: TimeInterval) async throws -> IdempotencyClaim {
        let now = Int64(Date().timeIntervalSince1970)
        let claimed = try await database.raw("""
            INSERT INTO idempotent_results (key_id, idempotency_key, body_hash, state, created_at)
            VALUES (\(bind: keyID), \(bind: idempotencyKey), \(bind: bodyHash), 'in_progress', \(bind: now))
            ON CONFLICT (key_id, idempotency_key) DO UPDATE SET body_hash = excluded.body_hash, created_at = excluded.created_at
            WHERE idempotent_results.state = 'in_progress' AND idempotent_results.created_at < \(bind: now - Int64(staleAfter))
            RETURNING key_id
            """).all()
        if !claimed.isEmpty { return .claimed }
        struct Row: Decodable {
            var body_hash: String
            var state: String
            var status: Int?
            var content_type: String?
            var body: String?
        }
        guard let row = try await database.raw("""
            SELECT body_hash, state, status, content_type, body FROM idempotent_results
            WHERE key_id = \(bind: keyID) AND idempotency_key = \(bind: idempotencyKey)
            """).first(decoding: Row.self)
        else { return .inProgress }
        guard row.body_hash == bodyHash else { return .mismatch }
        guard row.state == "done", let status = row.status else { return .inProgress }
        return .done(status: status, contentType: row.content_type ?? "application/json", body: Array(Data(base64Encoded: row.body ?? "") ?? Data()))
    }

    public func completeIdempotency(keyID: String, idempotencyKey: String, status: Int, contentType: String, body: [UInt8]) async throws {
        try await database.raw("""
            UPDATE idempotent_results SET state = 'done', status = \(bind: status), content_type = \(bind: contentType), body = \(bind: Data(body).base64EncodedString())
            WHERE key_id = \(bind: keyID) AND idempotency_key = \(bind: idempotencyKey)
            """).run()
    }

    /// Forgets a claim whose request should be retryable (a 5xx, a 429, a stream).
    public func releaseIdempotency(keyID: String, idempotencyKey: String) async throws {
        try await database.raw("DELETE FROM idempotent_results WHERE key_id = \(bind: keyID) AND idempotency_key = \(bind: idempotencyKey)").run()
    }

    /// Forgets results older than `date` (they are kept 24 h).
    public func pruneIdempotency(before date: Date) async throws -> Int {
        try await database.raw("DELETE FROM idempotent_results WHERE created_at < \(bind: Int64(date.timeIntervalSince1970)) RETURNING key_id").all().count
    }
}
