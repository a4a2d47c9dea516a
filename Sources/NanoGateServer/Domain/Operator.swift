public import Foundation
public import NanoGateCore
public import NanoGateStorage

/// What operators manage — keys, groups, prices, the usage log — in one place, for both the CLI
/// (`nanogate keys …`) and the admin API (`/admin/v1/…`), with the same JSON field names.
public struct OperatorService: Sendable {
    public let store: SQLStore
    public let catalog: ModelCatalog

    public init(store: SQLStore, catalog: ModelCatalog) {
        self.store = store
        self.catalog = catalog
    }

    /// A key as operators see it (never its secret): money in USD, `null` credit and balance when unlimited.
    public struct KeyView: Codable, Sendable, Equatable {
        public var name: String
        public var group: String
        public var prefix: String
        public var credit_usd: Double?
        public var spent_usd: Double
        public var reserved_usd: Double
        public var balance_usd: Double?
        public var expires_at: String?
        public var models: [String]?
        public var rpm: Int?
        public var concurrency: Int?
        /// The service tiers the key may use (its own list, else its group's).
        public var service_tiers: [String]?
        public var disabled: Bool
        public var created_at: String
        /// Only when the key was just created or rotated.
        public var secret: String?

        public init(_ key: APIKey, secret: String? = nil) {
            name = key.name
            group = key.group.rawValue
            prefix = key.prefix
            credit_usd = key.creditMicroUSD.map(TokenPrices.usd)
            spent_usd = TokenPrices.usd(key.spentMicroUSD)
            reserved_usd = TokenPrices.usd(key.reservedMicroUSD)
            balance_usd = key.balanceMicroUSD.map(TokenPrices.usd)
            expires_at = key.expiresAt.map(OperatorService.iso)
            models = key.models
            rpm = key.rpm
            concurrency = key.concurrency
            service_tiers = key.allowedServiceTiers
            disabled = key.disabled
            created_at = OperatorService.iso(key.createdAt)
            self.secret = secret
        }

        enum CodingKeys: String, CodingKey {
            case name, group, prefix, credit_usd, spent_usd, reserved_usd, balance_usd, expires_at, models, rpm, concurrency, service_tiers, disabled, created_at, secret
        }

        /// Unset fields are `null` (an unlimited key's `credit_usd` and `balance_usd`), not absent;
        /// `secret` appears only when there is one.
        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(name, forKey: .name)
            try container.encode(group, forKey: .group)
            try container.encode(prefix, forKey: .prefix)
            try container.encode(credit_usd, forKey: .credit_usd)
            try container.encode(spent_usd, forKey: .spent_usd)
            try container.encode(reserved_usd, forKey: .reserved_usd)
            try container.encode(balance_usd, forKey: .balance_usd)
            try container.encode(expires_at, forKey: .expires_at)
            try container.encode(models, forKey: .models)
            try container.encode(rpm, forKey: .rpm)
            try container.encode(concurrency, forKey: .concurrency)
            try container.encodeIfPresent(service_tiers, forKey: .service_tiers)
            try container.encode(disabled, forKey: .disabled)
            try container.encode(created_at, forKey: .created_at)
            try container.encodeIfPresent(secret, forKey: .secret)
        }
    }

    public struct GroupView: Codable, Sendable, Equatable {
        public var name: String
        public var response_format: String
        public var multiplier: Double
        public var models: [String]?
        /// The service tiers its keys may use.
        public var service_tiers: [String]?

        public init(_ group: KeyGroupSettings) {
            name = group.name.rawValue
            response_format = group.responseFormat.rawValue
            multiplier = Double(group.multiplierPPM) / 1_000_000
            models = group.models
            service_tiers = group.serviceTiers ?? KeyGroupSettings.defaultServiceTiers
        }

        enum CodingKeys: String, CodingKey { case name, response_format, multiplier, models, service_tiers }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(name, forKey: .name)
            try container.encode(response_format, forKey: .response_format)
            try container.encode(multiplier, forKey: .multiplier)
            try container.encode(models, forKey: .models)
            try container.encodeIfPresent(service_tiers, forKey: .service_tiers)
        }
    }

    /// Prices of one upstream model, USD per 1M tokens by modality.
    public struct PriceView: Codable, Sendable, Equatable {
        public var model: String
        public var input_text: Double
        public var input_image: Double
        public var output_text: Double
        public var output_image: Double
        /// `override` (set by the operator) or `catalog`.
        public var source: String
    }

    /// One usage-log row.
    public struct UsageView: Codable, Sendable, Equatable {
        public var request_id: String
        public var created_at: String
        public var key: String?
        public var group: String?
        public var model: String
        public var upstream_model: String?
        public var endpoint: String
        public var requested_size: String?
        /// The first image's pixel size as delivered, when the gateway read it (`2752x1536`).
        public var delivered_size: String?
        public var status: Int
        public var images: Int
        public var input_text_tokens: Int
        public var input_image_tokens: Int
        public var output_text_tokens: Int
        public var output_image_tokens: Int
        public var total_tokens: Int
        public var cost_usd: Double
        public var upstream_cost_usd: Double
        public var latency_ms: Int
        public var attempts: Int
        public var error_code: String?
        public var upstream_key: String?
        /// Every upstream attempt: channel, key position, status, error code, milliseconds.
        public var upstream_attempts: [UpstreamAttemptRecord]
        /// The service tier Google served and the charge followed (`flex`, `standard`, `priority`).
        public var service_tier: String?

        public init(_ row: UsageRecord) {
            request_id = row.requestID
            created_at = OperatorService.iso(row.createdAt)
            key = row.keyName
            group = row.group
            model = row.model
            upstream_model = row.upstreamModel
            endpoint = row.endpoint
            requested_size = row.requestedSize
            delivered_size = row.deliveredSize
            status = row.status
            images = row.images
            input_text_tokens = row.inputTextTokens
            input_image_tokens = row.inputImageTokens
            output_text_tokens = row.outputTextTokens
            output_image_tokens = row.outputImageTokens
            total_tokens = row.totalTokens
            cost_usd = TokenPrices.usd(row.costMicroUSD)
            upstream_cost_usd = TokenPrices.usd(row.upstreamCostMicroUSD)
            latency_ms = row.latencyMilliseconds
            attempts = row.attempts
            error_code = row.errorCode
            upstream_key = row.upstreamKey
            upstream_attempts = row.upstreamAttempts
            service_tier = row.serviceTier
        }

        enum CodingKeys: String, CodingKey {
            case request_id, created_at, key, group, model, upstream_model, endpoint, requested_size, delivered_size, status, images, input_text_tokens,
                input_image_tokens, output_text_tokens, output_image_tokens, total_tokens, cost_usd, upstream_cost_usd, latency_ms, attempts,
                error_code, upstream_key, upstream_attempts, service_tier
        }

        /// Every column present, `null` when empty (as in the CSV's empty cells).
        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(request_id, forKey: .request_id)
            try container.encode(created_at, forKey: .created_at)
            try container.encode(key, forKey: .key)
            try container.encode(group, forKey: .group)
            try container.encode(model, forKey: .model)
            try container.encode(upstream_model, forKey: .upstream_model)
            try container.encode(endpoint, forKey: .endpoint)
            try container.encode(requested_size, forKey: .requested_size)
            try container.encode(delivered_size, forKey: .delivered_size)
            try container.encode(status, forKey: .status)
            try container.encode(images, forKey: .images)
            try container.encode(input_text_tokens, forKey: .input_text_tokens)
            try container.encode(input_image_tokens, forKey: .input_image_tokens)
            try container.encode(output_text_tokens, forKey: .output_text_tokens)
            try container.encode(output_image_tokens, forKey: .output_image_tokens)
            try container.encode(total_tokens, forKey: .total_tokens)
            try container.encode(cost_usd, forKey: .cost_usd)
            try container.encode(upstream_cost_usd, forKey: .upstream_cost_usd)
            try container.encode(latency_ms, forKey: .latency_ms)
            try container.encode(attempts, forKey: .attempts)
            try container.encode(error_code, forKey: .error_code)
            try container.encode(upstream_key, forKey: .upstream_key)
            try container.encode(upstream_attempts, forKey: .upstream_attempts)
            try container.encode(service_tier, forKey: .service_tier)
        }

        static let csvColumns = [
            "request_id", "created_at", "key", "group", "model", "upstream_model", "endpoint", "requested_size", "status", "images",
            "input_text_tokens", "input_image_tokens", "output_text_tokens", "output_image_tokens", "total_tokens", "cost_usd",
            "upstream_cost_usd", "latency_ms", "attempts", "error_code", "upstream_key", "service_tier", "delivered_size",
        ]

        var csvFields: [String] {
            [
                request_id, created_at, key ?? "", group ?? "", model, upstream_model ?? "", endpoint, requested_size ?? "", "\(status)", "\(images)",
                "\(input_text_tokens)", "\(input_image_tokens)", "\(output_text_tokens)", "\(output_image_tokens)", "\(total_tokens)",
                String(format: "%.6f", cost_usd), String(format: "%.6f", upstream_cost_usd), "\(latency_ms)", "\(attempts)", error_code ?? "", upstream_key ?? "",
                service_tier ?? "", delivered_size ?? "",
            ]
        }
    }

    /// A usage-log row as its key holder sees it (`GET /v1/usage`): what was asked and charged,
    /// never what Google cost the operator, which channel or credential served it, or the attempts.
    /// The operator's row, with those fields left out.
    public struct OwnUsageView: Encodable, Sendable, Equatable {
        let row: UsageView

        public init(_ row: UsageRecord) {
            self.row = UsageView(row)
        }

        /// Every field present, `null` when empty (as in the admin view).
        public func encode(to encoder: any Encoder) throws {
            typealias Key = UsageView.CodingKeys
            var container = encoder.container(keyedBy: Key.self)
            try container.encode(row.request_id, forKey: .request_id)
            try container.encode(row.created_at, forKey: .created_at)
            try container.encode(row.key, forKey: .key)
            try container.encode(row.group, forKey: .group)
            try container.encode(row.model, forKey: .model)
            try container.encode(row.upstream_model, forKey: .upstream_model)
            try container.encode(row.endpoint, forKey: .endpoint)
            try container.encode(row.requested_size, forKey: .requested_size)
            try container.encode(row.delivered_size, forKey: .delivered_size)
            try container.encode(row.status, forKey: .status)
            try container.encode(row.images, forKey: .images)
            try container.encode(row.input_text_tokens, forKey: .input_text_tokens)
            try container.encode(row.input_image_tokens, forKey: .input_image_tokens)
            try container.encode(row.output_text_tokens, forKey: .output_text_tokens)
            try container.encode(row.output_image_tokens, forKey: .output_image_tokens)
            try container.encode(row.total_tokens, forKey: .total_tokens)
            try container.encode(row.cost_usd, forKey: .cost_usd)
            try container.encode(row.latency_ms, forKey: .latency_ms)
            try container.encode(row.error_code, forKey: .error_code)
            try container.encode(row.service_tier, forKey: .service_tier)
        }
    }

    static func iso(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        return formatter.string(from: date)
    }

    /// `2027-01-01T00:00:00Z` (or a date `2027-01-01`).
    public static func date(_ text: String) -> Date? {
        if let date = ISO8601DateFormatter().date(from: text) { return date }
        let day = ISO8601DateFormatter()
        day.formatOptions = [.withFullDate]
        return day.date(from: text)
    }

    /// USD → micro-USD for credits (0 to 10 million dollars).
    public static func microUSD(_ usd: Double, field: String) throws(OperatorError) -> Int {
        guard usd.isFinite, usd >= 0, usd <= 10_000_000 else { throw .invalid(field, "must be an amount of USD from 0 to 10,000,000") }
        return TokenPrices.micro(usd)
    }

    // MARK: Prices

    /// Every upstream model of the catalog (and fallbacks) with the prices it is charged at.
    public func prices() async throws -> [PriceView] {
        let overrides = try await store.priceOverrides()
        var seen = Set<String>()
        var views: [PriceView] = []
        var entries: [(String, TokenPrices)] = []
        for model in catalog.models {
            entries.append((model.upstreamModel, model.prices))
            entries += model.fallbacks.map { ($0.id, $0.family.googlePrices) }
        }
        entries += overrides.map { ($0.key, $0.value) }
        for (id, catalogPrices) in entries where seen.insert(id).inserted {
            let prices = overrides[id] ?? catalogPrices
            views.append(PriceView(
                model: id, input_text: TokenPrices.usd(prices.inputText), input_image: TokenPrices.usd(prices.inputImage),
                output_text: TokenPrices.usd(prices.outputText), output_image: TokenPrices.usd(prices.outputImage),
                source: overrides[id] == nil ? "catalog" : "override"
            ))
        }
        return views
    }

    /// Sets the prices of an upstream model (the ones not given keep their current value).
    public func setPrice(model: String, inputText: Double?, inputImage: Double?, outputText: Double?, outputImage: Double?) async throws -> PriceView {
        guard ModelCatalog.isValidUpstreamID(model) else { throw OperatorError.invalid("model", "is not a Google model id") }
        let current = try await prices().first { $0.model == model }
        func price(_ value: Double?, _ existing: Double?, _ field: String) throws(OperatorError) -> Int {
            guard let value else { return TokenPrices.micro(existing ?? 0) }
            guard value.isFinite, value >= 0, value <= 1_000_000 else { throw .invalid(field, "must be USD per 1M tokens, 0 to 1,000,000") }
            return TokenPrices.micro(value)
        }
        let prices = TokenPrices(
            inputText: try price(inputText, current?.input_text, "input_text"), inputImage: try price(inputImage, current?.input_image, "input_image"),
            outputText: try price(outputText, current?.output_text, "output_text"), outputImage: try price(outputImage, current?.output_image, "output_image")
        )
        try await store.setPrice(upstreamModel: model, prices)
        return try await self.prices().first { $0.model == model }!
    }

    // MARK: Usage

    public func usage(
        keyName: String?, since: Date?, until: Date?, limit: Int = 10_000, model: String? = nil, status: UsageStatusFilter? = nil
    ) async throws -> [UsageView] {
        var keyID: String?
        if let keyName {
            let keys = try await store.listKeys().filter { $0.name == keyName }
            guard let key = keys.last else { throw OperatorError.notFound("key", keyName) }
            keyID = key.id
        }
        return try await store.usage(UsageQuery(keyID: keyID, since: since, until: until, limit: limit, model: model, status: status)).map(UsageView.init)
    }

    /// A key's money as the ledger has it: charged by its usage rows, refunded by entries of
    /// their own, and the spent that follows (always charged − refunded), with its refunds.
    public struct MoneyView: Encodable, Sendable, Equatable {
        public struct RefundView: Encodable, Sendable, Equatable {
            public var id: String
            public var job_id: String?
            public var amount_usd: Double
            public var reason: String
            public var created_at: Int
        }

        public var object = "key_money"
        public var charged_usd: Double
        public var refunded_usd: Double
        public var spent_usd: Double
        public var refunds: [RefundView]
    }

    public static func money(of keyID: String, store: SQLStore) async throws -> MoneyView {
        let money = try await store.money(keyID: keyID)
        let refunds = try await store.refunds(keyID: keyID)
        return MoneyView(
            charged_usd: TokenPrices.usd(money.chargedMicroUSD), refunded_usd: TokenPrices.usd(money.refundedMicroUSD), spent_usd: TokenPrices.usd(money.spentMicroUSD),
            refunds: refunds.map {
                MoneyView.RefundView(id: $0.id, job_id: $0.jobID, amount_usd: TokenPrices.usd($0.amountMicroUSD), reason: $0.reason, created_at: Int($0.createdAt.timeIntervalSince1970))
            }
        )
    }

    public static func csv(_ rows: [UsageView]) -> String {
        table(UsageView.csvColumns, rows.map(\.csvFields))
    }

    /// A key holder's CSV (`GET /v1/usage?format=csv`): the operator's columns without what
    /// Google cost, the attempts and which credential served each request.
    public static func ownCSV(_ rows: [UsageView]) -> String {
        let hidden: Set<String> = ["upstream_cost_usd", "attempts", "upstream_key"]
        let kept = UsageView.csvColumns.enumerated().filter { !hidden.contains($0.element) }.map(\.offset)
        return table(kept.map { UsageView.csvColumns[$0] }, rows.map { row in let fields = row.csvFields; return kept.map { fields[$0] } })
    }

    private static func table(_ columns: [String], _ rows: [[String]]) -> String {
        func quoted(_ field: String) -> String {
            field.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" }) ? "\"" + field.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : field
        }
        return ([columns.joined(separator: ",")] + rows.map { $0.map(quoted).joined(separator: ",") }).joined(separator: "\n") + "\n"
    }
}

/// An operator's request the gateway cannot carry out, named.
public enum OperatorError: Error, CustomStringConvertible, Equatable {
    case invalid(String, String)
    case notFound(String, String)

    public var description: String {
        switch self {
        case .invalid(let field, let problem): "'\(field)' \(problem)."
        case .notFound(let kind, let name): "No \(kind) named '\(name)'."
        }
    }
}
