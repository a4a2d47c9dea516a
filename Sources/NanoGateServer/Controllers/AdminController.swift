import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NanoGateCore
import NanoGateStorage
import Upstream
import NIOCore
import NIOFoundationCompat
import Synchronization

/// `/admin/v1/…`: on only when `NANOGATE_ADMIN_TOKEN` is set, and only for that token (a
/// user's key gets 401 like any wrong token). Compared in constant time. An address that sent
/// too many wrong tokens gets 429 until its window ends, whatever it sends (`AdminThrottle`).
struct AdminTokenAuthenticator: RouterMiddleware {
    typealias Context = GatewayRequestContext
    let token: String
    let throttle: AdminThrottle
    /// Count attempts by `X-Real-IP` (set by the proxy in front, `deploy/nginx.conf`) rather than
    /// by the connection, whose address is then the proxy's (`NANOGATE_TRUST_FORWARDED`).
    var trustForwardedHeaders = false

    static let realIP = HTTPField.Name("X-Real-IP")!

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let address = try throttle.admit(request, context: context, trustForwardedHeaders: trustForwardedHeaders, refusing: "wrong admin tokens")
        let given = request.headers[.authorization].flatMap { header -> String? in
            let parts = header.split(separator: " ", maxSplits: 1)
            return parts.count == 2 && parts[0].lowercased() == "bearer" ? String(parts[1]) : nil
        }
        guard let given, Self.equal(given, token) else {
            throttle.failed(address)
            context.logger.warning("wrong admin token", metadata: ["client": "\(address)"])
            throw GatewayError.unauthorized("The admin API needs 'Authorization: Bearer <NANOGATE_ADMIN_TOKEN>'.", code: "invalid_admin_token")
        }
        return try await next(request, context)
    }

    /// Equal strings, compared over their SHA-256 so neither length nor content leaks through timing.
    static func equal(_ a: String, _ b: String) -> Bool {
        let left = SHA256.hash(data: Data(a.utf8))
        let right = SHA256.hash(data: Data(b.utf8))
        return zip(left, right).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0
    }
}

/// Failed admin attempts per client address: after `limit` failures within `window`, the
/// address is refused until that window ends, so the token cannot be guessed at network speed.
/// Bounded: past `capacity` addresses, ended windows are dropped, then the oldest one.
final class AdminThrottle: Sendable {
    private struct Window {
        var start: ContinuousClock.Instant
        var failures: Int
    }
    private let windows = Mutex([String: Window]())
    let limit: Int
    let window: Duration
    let capacity: Int

    init(limit: Int = 10, window: Duration = .seconds(60), capacity: Int = 10_000) {
        self.limit = limit
        self.window = window
        self.capacity = capacity
    }

    /// The client's address (`X-Real-IP` from a trusted proxy, else the connection's), or a 429
    /// naming what it sent too many of while its window lasts.
    func admit(_ request: Request, context: GatewayRequestContext, trustForwardedHeaders: Bool, refusing what: String) throws(GatewayError) -> String {
        let forwarded = trustForwardedHeaders ? request.headers[AdminTokenAuthenticator.realIP].flatMap { $0.isEmpty ? nil : $0 } : nil
        let address = forwarded ?? context.channel.remoteAddress?.ipAddress ?? "unknown"
        if let wait = blockedFor(address) {
            throw GatewayError(
                status: 429, type: "rate_limit_error", code: "rate_limit_exceeded", param: nil,
                message: "Too many \(what) from this address; retry in \(wait) s.", retryAfterSeconds: wait
            )
        }
        return address
    }

    /// Whole seconds `address` must still wait, or nil when it may try.
    func blockedFor(_ address: String, now: ContinuousClock.Instant = .now) -> Int? {
        windows.withLock { windows in
            guard let entry = windows[address] else { return nil }
            let ends = entry.start + window
            guard now < ends else {
                windows[address] = nil
                return nil
            }
            guard entry.failures >= limit else { return nil }
            return max(1, Int((now.duration(to: ends) + .milliseconds(999)).components.seconds))
        }
    }

    /// Counts one wrong token from `address`.
    func failed(_ address: String, now: ContinuousClock.Instant = .now) {
        windows.withLock { windows in
            if let entry = windows[address], now < entry.start + window {
                windows[address]?.failures += 1
                return
            }
            if windows.count >= capacity {
                windows = windows.filter { now < $0.value.start + window }
                if windows.count >= capacity, let oldest = windows.min(by: { $0.value.start < $1.value.start })?.key {
                    windows[oldest] = nil
                }
            }
            windows[address] = Window(start: now, failures: 1)
        }
    }
}

/// The admin API: keys, groups, prices and usage, JSON in and out with the CLI's `--json` names.
/// `GET /admin/v1/channels`.
struct ChannelList: Codable {
    var object = "list"
    var data: [ChannelStatus]
}

struct AdminController {
    let service: OperatorService
    let pool: UpstreamPool
    let channels: ManagedChannels
    let catalog: ModelCatalog
    /// Channels of the configuration file: not changeable through the API.
    let fileChannels: Set<String>

    init(store: SQLStore, catalog: ModelCatalog, pool: UpstreamPool, channels: ManagedChannels, fileChannels: Set<String>) {
        self.service = OperatorService(store: store, catalog: catalog)
        self.pool = pool
        self.channels = channels
        self.catalog = catalog
        self.fileChannels = fileChannels
    }

    func addRoutes(to group: RouterGroup<GatewayRequestContext>) {
        // The upstream channels' live state: cool-downs, breakers, refused keys, load, and
        // which catalog upstream ids each serves (its model list, its project's refusals).
        group.get("channels") { _, _ in try json(ChannelList(data: pool.status(models: catalog.upstreamAliases))) }
        // Create or replace a channel (the configuration file's keys, as JSON); in service at
        // once here, within seconds on the other instances.
        group.post("channels") { request, _ in
            let body = try await request.collectBody(limit: 256 * 1024)
            let channel: ChannelConfiguration
            do throws(ConfigurationError) {
                channel = try ManagedChannels.channel(fromJSON: String(buffer: body))
            } catch {
                throw GatewayError.invalidParameter(nil, "Invalid channel: \(error.problems.joined(separator: "; ")).", code: "invalid_channel")
            }
            guard !fileChannels.contains(channel.name) else {
                throw GatewayError(status: 409, type: "invalid_request_error", code: "channel_in_file", param: "name",
                                   message: "The channel '\(channel.name)' is defined in the configuration file; change it there.")
            }
            try await service.store.storeChannel(name: channel.name, json: try ManagedChannels.json(channel))
            await channels.refresh()
            return try json(pool.status(models: catalog.upstreamAliases).first { $0.name == channel.name }, status: .created)
        }
        group.delete("channels/{name}") { _, context in
            let name = context.parameters.get("name") ?? ""
            guard try await service.store.deleteChannel(name: name) else {
                throw GatewayError(status: 404, type: "invalid_request_error", code: "not_found", param: nil,
                                   message: fileChannels.contains(name) ? "The channel '\(name)' is defined in the configuration file; remove it there." : "No stored channel is named '\(name)'.")
            }
            await channels.refresh()
            return try json(["deleted": name])
        }
        // One free call on a channel (countTokens / GET /v1/models): does its credential work?
        group.post("channels/{name}/test") { request, context in
            let name = context.parameters.get("name") ?? ""
            guard pool.channelNames.contains(name) else {
                throw GatewayError(status: 404, type: "invalid_request_error", code: "not_found", param: nil, message: "No channel is named '\(name)'.")
            }
            let model = request.uri.queryParameters.get("model").flatMap { $0.isEmpty ? nil : String($0) } ?? "gemini-2.5-flash-image"
            let outcome: Result<String, UpstreamError>
            do throws(UpstreamError) {
                outcome = .success(try await pool.probe(channel: name, model: model, logger: context.logger))
            } catch {
                outcome = .failure(error)
            }
            switch outcome {
            case .success(let detail): return try json(["channel": name, "ok": "true", "detail": detail])
            case .failure(let error): return try json(["channel": name, "ok": "false", "detail": error.description], status: .badGateway)
            }
        }
        group.get("keys") { _, _ in try json(try await service.store.listKeys().filter { $0.revokedAt == nil }.map { OperatorService.KeyView($0) }) }
        group.post("keys") { request, _ in
            let body = try await request.decodeJSON(KeyBody.self, limit: 64 * 1024)
            guard let name = body.name, !name.isEmpty else { throw GatewayError.invalidParameter("name", "Missing required parameter: 'name'.", code: "missing_required_parameter") }
            let group = try Self.group(body.group ?? "default")
            let options = KeyOptions(
                creditMicroUSD: try body.credit_usd.map { try Self.money($0, "credit_usd") }, expiresAt: try body.expires_at.map { try Self.date($0) },
                models: body.models, rpm: try Self.positive(body.rpm, "rpm"), concurrency: try Self.positive(body.concurrency, "concurrency")
            )
            let tiers = try body.service_tiers.map { try Self.tiers($0) }
            var created = try await Self.mapped { try await service.store.createKey(name: name, group: group, options: options) }
            if let tiers { created.key = try await Self.mapped { try await service.store.updateKey(name: name, KeyUpdate(serviceTiers: .set(tiers))) } }
            return try json(OperatorService.KeyView(created.key, secret: created.secret), status: .created)
        }
        group.get("keys/{name}") { _, context in
            let name = context.parameters.get("name") ?? ""
            guard let key = try await service.store.key(named: name) else { throw Self.notFound("key", name) }
            return try json(OperatorService.KeyView(key))
        }
        // What the key was charged, refunded and spent (spent = charged − refunded), with its refunds.
        group.get("keys/{name}/money") { _, context in
            let name = context.parameters.get("name") ?? ""
            guard let key = try await service.store.key(named: name) else { throw Self.notFound("key", name) }
            return try json(try await OperatorService.money(of: key.id, store: service.store))
        }
        group.patch("keys/{name}") { request, context in
            let name = context.parameters.get("name") ?? ""
            let body = try await request.decodeJSON(KeyPatch.self, limit: 64 * 1024)
            var update = KeyUpdate()
            if let group = body.group { update.group = try Self.group(group) }
            if let credit = body.credit_usd { update.credit = try credit.map { .set(try Self.money($0, "credit_usd")) } ?? .clear }
            if let add = body.add_credit_usd { update.addCredit = try Self.money(add, "add_credit_usd") }
            if let expires = body.expires_at { update.expiresAt = try expires.map { .set(try Self.date($0)) } ?? .clear }
            if let models = body.models { update.models = models.map { .set($0) } ?? .clear }
            if let rpm = body.rpm { update.rpm = try rpm.map { .set(try Self.positive($0, "rpm")!) } ?? .clear }
            if let concurrency = body.concurrency { update.concurrency = try concurrency.map { .set(try Self.positive($0, "concurrency")!) } ?? .clear }
            if let tiers = body.service_tiers { update.serviceTiers = try tiers.map { .set(try Self.tiers($0)) } ?? .clear }
            update.disabled = body.disabled
            let key = try await Self.mapped { try await service.store.updateKey(name: name, update) }
            return try json(OperatorService.KeyView(key))
        }
        group.delete("keys/{name}") { _, context in
            let name = context.parameters.get("name") ?? ""
            try await Self.mapped { try await service.store.revokeKey(name: name) }
            return Response(status: .noContent)
        }
        group.post("keys/{name}/rotate") { _, context in
            let name = context.parameters.get("name") ?? ""
            let rotated = try await Self.mapped { try await service.store.rotateKey(name: name) }
            return try json(OperatorService.KeyView(rotated.key, secret: rotated.secret))
        }

        group.get("groups") { _, _ in try json(try await service.store.listGroups().map(OperatorService.GroupView.init)) }
        group.post("groups") { request, _ in
            let body = try await request.decodeJSON(GroupBody.self, limit: 64 * 1024)
            let settings = try Self.groupSettings(body, name: body.name ?? "", base: nil)
            try await Self.mapped { try await service.store.createGroup(settings) }
            return try json(OperatorService.GroupView(settings), status: .created)
        }
        group.patch("groups/{name}") { request, context in
            let name = context.parameters.get("name") ?? ""
            guard let existing = try await service.store.group(named: KeyGroup(rawValue: name.lowercased())) else { throw Self.notFound("group", name) }
            let settings = try Self.groupSettings(try await request.decodeJSON(GroupBody.self, limit: 64 * 1024), name: name, base: existing)
            try await Self.mapped { try await service.store.updateGroup(settings) }
            return try json(OperatorService.GroupView(settings))
        }

        group.get("prices") { _, _ in try json(try await service.prices()) }
        group.put("prices/{model}") { request, context in
            let body = try await request.decodeJSON(PriceBody.self, limit: 64 * 1024)
            let view = try await Self.mapped {
                try await service.setPrice(
                    model: context.parameters.get("model") ?? "", inputText: body.input_text, inputImage: body.input_image,
                    outputText: body.output_text, outputImage: body.output_image
                )
            }
            return try json(view)
        }

        group.get("usage") { request, _ in
            let query = request.uri.queryParameters
            let rows = try await Self.mapped {
                try await service.usage(
                    keyName: Self.filled(query.get("key")), since: try Self.filled(query.get("since")).map { try Self.date($0) },
                    until: try Self.filled(query.get("until")).map { try Self.date($0) }, limit: query.get("limit", as: Int.self) ?? 10_000,
                    model: Self.filled(query.get("model")), status: try Self.filled(query.get("status")).map { try Self.status($0) }
                )
            }
            if query.get("format") == "csv" {
                return Response(status: .ok, headers: [.contentType: "text/csv; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(string: OperatorService.csv(rows))))
            }
            return try json(rows)
        }
        // Totals per day, key or model, aggregated by the database (the console's overview).
        group.get("usage/summary") { request, _ in
            let query = request.uri.queryParameters
            let by = Self.filled(query.get("by")) ?? "day"
            guard let grouping = UsageSummaryGrouping(rawValue: by) else {
                throw GatewayError.invalidParameter("by", "'by' must be one of: day, key, model.")
            }
            let rows = try await service.store.usageSummary(
                by: grouping, since: try Self.filled(query.get("since")).map { try Self.date($0) },
                until: try Self.filled(query.get("until")).map { try Self.date($0) }, limit: query.get("limit", as: Int.self) ?? 1000
            )
            return try json(UsageSummary(by: by, data: rows.map(UsageSummary.Bucket.init)))
        }
    }

    /// `GET /admin/v1/usage/summary`.
    struct UsageSummary: Encodable {
        var object = "usage_summary"
        var by: String
        var data: [Bucket]

        struct Bucket: Encodable {
            var group: String
            var requests: Int
            var errors: Int
            var images: Int
            var cost_usd: Double
            var upstream_cost_usd: Double
            var input_tokens: Int
            var output_tokens: Int
            var p50_latency_ms: Int?
            var p95_latency_ms: Int?

            init(_ row: UsageSummaryRow) {
                group = row.group
                requests = row.requests
                errors = row.errors
                images = row.images
                cost_usd = TokenPrices.usd(row.costMicroUSD)
                upstream_cost_usd = TokenPrices.usd(row.upstreamCostMicroUSD)
                input_tokens = row.inputTokens
                output_tokens = row.outputTokens
                p50_latency_ms = row.p50LatencyMs
                p95_latency_ms = row.p95LatencyMs
            }

            enum CodingKeys: String, CodingKey {
                case group, requests, errors, images, cost_usd, upstream_cost_usd, input_tokens, output_tokens, p50_latency_ms, p95_latency_ms
            }

            /// Percentiles are `null` (not absent) for a bucket without timed requests.
            func encode(to encoder: any Encoder) throws {
                var container = encoder.container(keyedBy: CodingKeys.self)
                try container.encode(group, forKey: .group)
                try container.encode(requests, forKey: .requests)
                try container.encode(errors, forKey: .errors)
                try container.encode(images, forKey: .images)
                try container.encode(cost_usd, forKey: .cost_usd)
                try container.encode(upstream_cost_usd, forKey: .upstream_cost_usd)
                try container.encode(input_tokens, forKey: .input_tokens)
                try container.encode(output_tokens, forKey: .output_tokens)
                try container.encode(p50_latency_ms, forKey: .p50_latency_ms)
                try container.encode(p95_latency_ms, forKey: .p95_latency_ms)
            }
        }
    }

    /// A query value, nil when absent or empty (an HTML form sends empty fields as `key=`).
    static func filled<Text: StringProtocol>(_ value: Text?) -> String? {
        guard let value, !value.isEmpty else { return nil }
        return String(value)
    }

    static func status(_ text: String) throws(GatewayError) -> UsageStatusFilter {
        guard let filter = UsageStatusFilter(text) else { throw .invalidParameter("status", "'status' must be ok, error or an HTTP status code.") }
        return filter
    }

    struct KeyBody: Decodable {
        var name: String?
        var group: String?
        var credit_usd: Double?
        var expires_at: String?
        var models: [String]?
        var rpm: Int?
        var concurrency: Int?
        var service_tiers: [String]?
    }

    /// A PATCH: absent fields stay, `null` clears (credit → unlimited).
    struct KeyPatch: Decodable {
        var group: String?
        var credit_usd: Double??
        var add_credit_usd: Double?
        var expires_at: String??
        var models: [String]??
        var rpm: Int??
        var concurrency: Int??
        var service_tiers: [String]??
        var disabled: Bool?

        enum CodingKeys: String, CodingKey { case group, credit_usd, add_credit_usd, expires_at, models, rpm, concurrency, service_tiers, disabled }

        init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            func tri<T: Decodable>(_ key: CodingKeys) throws -> T?? {
                guard container.contains(key) else { return nil }
                return .some(try container.decodeIfPresent(T.self, forKey: key))
            }
            group = try container.decodeIfPresent(String.self, forKey: .group)
            credit_usd = try tri(.credit_usd)
            add_credit_usd = try container.decodeIfPresent(Double.self, forKey: .add_credit_usd)
            expires_at = try tri(.expires_at)
            models = try tri(.models)
            rpm = try tri(.rpm)
            concurrency = try tri(.concurrency)
            service_tiers = try tri(.service_tiers)
            disabled = try container.decodeIfPresent(Bool.self, forKey: .disabled)
        }
    }

    struct GroupBody: Decodable {
        var name: String?
        var response_format: String?
        var multiplier: Double?
        var models: [String]?
        var service_tiers: [String]?
    }

    struct PriceBody: Decodable {
        var input_text: Double?
        var input_image: Double?
        var output_text: Double?
        var output_image: Double?
    }

    static func groupSettings(_ body: GroupBody, name: String, base: KeyGroupSettings?) throws(GatewayError) -> KeyGroupSettings {
        let group = try Self.group(name)
        var format = base?.responseFormat ?? .url
        if let named = body.response_format {
            guard let known = ResponseFormat(rawValue: named) else { throw .invalidParameter("response_format", "Accepted values: url, b64_json.") }
            format = known
        }
        var multiplier = base?.multiplierPPM ?? 1_000_000
        if let value = body.multiplier {
            guard value.isFinite, value >= 0, value <= 1000 else { throw .invalidParameter("multiplier", "'multiplier' must be from 0 to 1000.") }
            multiplier = Int((value * 1_000_000).rounded())
        }
        var tiers = base?.serviceTiers
        if let named = body.service_tiers { tiers = try Self.tiers(named) }
        return KeyGroupSettings(name: group, responseFormat: format, multiplierPPM: multiplier, models: body.models ?? base?.models, serviceTiers: tiers)
    }

    static func tiers(_ names: [String]) throws(GatewayError) -> [String] {
        try ServiceTier.list(names)
    }

    static func group(_ name: String) throws(GatewayError) -> KeyGroup {
        guard let group = KeyGroup(lenient: name) else { throw .invalidParameter("group", "A group name is 1 to 64 letters, digits, '-' or '_'.") }
        return group
    }

    static func money(_ usd: Double, _ field: String) throws(GatewayError) -> Int {
        do { return try OperatorService.microUSD(usd, field: field) } catch { throw .invalidParameter(field, error.description) }
    }

    static func date(_ text: String) throws(GatewayError) -> Date {
        guard let date = OperatorService.date(text) else { throw .invalidParameter(nil, "'\(text)' is not an ISO 8601 date (2027-01-01T00:00:00Z).") }
        return date
    }

    static func positive(_ value: Int?, _ field: String) throws(GatewayError) -> Int? {
        guard let value else { return nil }
        guard value >= 1 else { throw .invalidParameter(field, "'\(field)' must be 1 or more.") }
        return value
    }

    static func notFound(_ kind: String, _ name: String) -> GatewayError {
        GatewayError(status: 404, type: "invalid_request_error", code: "not_found", param: nil, message: "No \(kind) named '\(name)'.")
    }

    /// Store and operator errors as the admin API answers them.
    static func mapped<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as KeyStoreError {
            switch error {
            case .duplicateName, .duplicateGroup:
                throw GatewayError(status: 409, type: "invalid_request_error", code: "already_exists", param: "name", message: error.description)
            case .notFound, .unknownGroup:
                throw GatewayError(status: 404, type: "invalid_request_error", code: "not_found", param: nil, message: error.description)
            }
        } catch let error as OperatorError {
            switch error {
            case .invalid(let field, _): throw GatewayError.invalidParameter(field, error.description)
            case .notFound: throw GatewayError(status: 404, type: "invalid_request_error", code: "not_found", param: nil, message: error.description)
            }
        }
    }
}


/// What a key holder sees of its own account: `GET /v1/usage`, and the legacy billing endpoints
/// chat clients (NextChat, Cherry Studio, LobeChat) call to show a balance.
struct AccountController {
    let store: SQLStore

    func addRoutes(to group: RouterGroup<GatewayRequestContext>) {
        group.get("usage") { request, context in
            let key = try await current(context.requireKey())
            let query = request.uri.queryParameters
            let rows = try await store.usage(UsageQuery(
                keyID: key.id, since: query.get("since").flatMap { OperatorService.date(String($0)) },
                until: query.get("until").flatMap { OperatorService.date(String($0)) }, limit: min(query.get("limit", as: Int.self) ?? 100, 1000),
                model: AdminController.filled(query.get("model")), status: AdminController.filled(query.get("status")).flatMap(UsageStatusFilter.init)
            ))
            if query.get("format") == "csv" {
                let body = OperatorService.ownCSV(rows.map(OperatorService.UsageView.init))
                return Response(status: .ok, headers: [.contentType: "text/csv; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(string: body)))
            }
            var view = OperatorService.KeyView(key)
            view.prefix = key.prefix
            let money = try await OperatorService.money(of: key.id, store: store)
            return try json(Usage(object: "usage", key: view, money: money, data: rows.map(OperatorService.OwnUsageView.init)))
        }
        // OpenAI's retired billing endpoints, as new-api answers them: the hard limit is the credit.
        group.get("dashboard/billing/subscription") { _, context in
            let key = try context.requireKey()
            let limit = key.creditMicroUSD.map(TokenPrices.usd) ?? 100_000_000
            return try json(Subscription(
                hard_limit_usd: limit, soft_limit_usd: limit, system_hard_limit_usd: limit,
                access_until: Int(key.expiresAt?.timeIntervalSince1970 ?? 0)
            ))
        }
        group.get("dashboard/billing/usage") { request, context in
            let key = try context.requireKey()
            let query = request.uri.queryParameters
            let since = query.get("start_date").flatMap { OperatorService.date(String($0)) }
            let until = query.get("end_date").flatMap { OperatorService.date(String($0)) }
            let cents: Double
            if since == nil && until == nil {
                let key = try await current(key)
                cents = TokenPrices.usd(key.spentMicroUSD) * 100
            } else {
                cents = TokenPrices.usd(try await store.spentMicroUSD(keyID: key.id, since: since, until: until)) * 100
            }
            return try json(BillingUsage(total_usage: cents))
        }
    }

    /// The key as the database has it now: the request's key may come from the key cache,
    /// whose money is as it was when cached.
    func current(_ key: APIKey) async throws -> APIKey {
        try await store.key(id: key.id) ?? key
    }

    struct Usage: Encodable {
        var object: String
        var key: OperatorService.KeyView
        /// Charged, refunded and spent, and the key's refunds (never negative usage rows).
        var money: OperatorService.MoneyView
        var data: [OperatorService.OwnUsageView]
    }

    struct Subscription: Encodable {
        var object = "billing_subscription"
        var has_payment_method = true
        var hard_limit_usd: Double
        var soft_limit_usd: Double
        var system_hard_limit_usd: Double
        var access_until: Int
    }

    struct BillingUsage: Encodable {
        var object = "list"
        /// Cents, as OpenAI's endpoint answered.
        var total_usage: Double
    }
}
