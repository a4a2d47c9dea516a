import Foundation
import HTTPTypes
import Logging
import Hummingbird
import NanoGateCore
import NanoGateStorage
import NIOCore
import Upstream

/// The browser console at `/console/`: sign-in, the operator's pages, the key holder's pages
/// and the image playground. Pages are rendered here from the same services the admin API
/// uses; every change goes through the console's own copy of the admin and public APIs
/// (`console/api/…`), so a button does exactly what the documented request does.
struct ConsoleController {
    let settings: ConsoleSettings
    let store: SQLStore
    let operatorService: OperatorService
    let pool: UpstreamPool
    let catalog: ModelCatalog
    let models: ModelsController
    let views = ConsoleViews()
    /// Failed sign-ins per client address (the admin API's own throttle, a separate count).
    let throttle = AdminThrottle()
    var trustForwardedHeaders = false
    /// The bucket's origin when images are served from one (the playground shows `url` answers).
    var imageOrigin: String?

    /// Adds `/console`, its pages and assets, and the console's API: `publicAPI` mounts the
    /// `/v1` routes on a group (acting as the session's key), `adminAPI` the admin routes.
    func addRoutes(
        to router: Router<GatewayRequestContext>, publicAPI: (RouterGroup<GatewayRequestContext>) -> Void,
        adminAPI: ((RouterGroup<GatewayRequestContext>) -> Void)?
    ) {
        let console = router.group("console").add(middleware: ConsoleHeadersMiddleware(imageOrigin: imageOrigin)).add(middleware: ConsoleCSRFGuard(settings: settings))
        console.get { request, context in
            // `/console` and `/console/` route alike; the relative links need the slash.
            guard request.uri.path.hasSuffix("/") else { return Response(status: .seeOther, headers: [.location: "console/"]) }
            return try await signInPage(request)
        }
        console.get("assets/{file}") { request, context in
            guard let response = views.asset(context.parameters.get("file") ?? "", request: request) else { throw HTTPError(.notFound) }
            return response
        }
        console.post("signin") { request, context in try await signIn(request, context: context) }
        console.post("signout") { request, _ in
            if let id = request.cookies[ConsoleSettings.cookieName]?.value, !id.isEmpty { try await store.deleteConsoleSession(id: id) }
            var response = try json(["redirect": "./"])
            response.setCookie(settings.cookie("", request: request, maxAge: 0))
            return response
        }

        let pages = console.group().add(middleware: ConsoleSessionMiddleware(store: store, settings: settings, requirement: .page))
        pages.get("overview") { request, context in try await operatorPage(context) { try await overview(request, context: context) } }
        pages.get("keys") { _, context in try await operatorPage(context) { try await keys(context) } }
        pages.get("groups") { _, context in try await operatorPage(context) { try await groups(context) } }
        pages.get("prices") { _, context in try await operatorPage(context) { try await prices(context) } }
        pages.get("channels") { _, context in try await operatorPage(context) { try channels(context) } }
        pages.get("usage") { request, context in try await usage(request, context: context) }
        pages.get("jobs") { _, context in try await jobs(context) }
        pages.get("batches") { _, context in try await batches(context) }
        pages.get("playground") { _, context in try await playground(context) }
        pages.get("models") { _, context in try await modelsPage(context) }
        pages.get("quickstart") { request, context in try await quickstart(request, context: context) }

        publicAPI(
            console.group("api/v1")
                .add(middleware: ConsoleSessionMiddleware(store: store, settings: settings, requirement: .api))
                .add(middleware: ConsoleKeyIdentity(store: store))
        )
        if let adminAPI {
            adminAPI(console.group("api/admin/v1").add(middleware: ConsoleSessionMiddleware(store: store, settings: settings, requirement: .operatorOnly)))
        }
    }

    // MARK: Signing in

    func signInPage(_ request: Request) async throws -> Response {
        if let id = request.cookies[ConsoleSettings.cookieName]?.value, !id.isEmpty,
            let session = try await store.consoleSession(id: id, idle: settings.idle, absolute: settings.absolute),
            session.role == .key || settings.adminToken != nil
        {
            return Response(status: .seeOther, headers: [.location: session.role == .operator ? "overview" : "usage"])
        }
        return views.page("signin", title: "Sign in", values: ["operatorAllowed": settings.adminToken != nil])
    }

    func signIn(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        let address = try throttle.admit(request, context: context, trustForwardedHeaders: trustForwardedHeaders, refusing: "failed sign-ins")
        let body = try await request.collectBody(limit: 16 * 1024)
        let token = Self.formValue("token", in: String(buffer: body))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        var session: String?
        var role = ConsoleRole.key
        if let admin = settings.adminToken, AdminTokenAuthenticator.equal(token, admin) {
            role = .operator
            session = try await store.createConsoleSession(role: .operator)
        } else if token.hasPrefix("sk-") {
            session = try await store.createConsoleSession(role: .key, keySecret: token)
        }
        guard let session else {
            throttle.failed(address)
            context.logger.warning("failed console sign-in", metadata: ["client": "\(address)"])
            throw GatewayError.unauthorized(
                settings.adminToken == nil
                    ? "Incorrect token: it is not an active NanoGate key."
                    : "Incorrect token: it is neither the admin token nor an active NanoGate key.",
                code: "invalid_console_token"
            )
        }
        // Sessions are only made here, so sweeping here bounds the table.
        try await store.sweepConsoleSessions(absolute: settings.absolute)
        var response = try json(["redirect": role == .operator ? "overview" : "usage"])
        response.setCookie(settings.cookie(session, request: request, maxAge: Int(settings.absolute.components.seconds)))
        return response
    }

    /// A field of a URL-encoded form (or of a JSON object, which `fetch` may send instead).
    static func formValue(_ name: String, in body: String) -> String? {
        if body.hasPrefix("{"), let object = try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any] {
            return object[name] as? String
        }
        for pair in body.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2, parts[0] == name else { continue }
            return String(parts[1]).replacingOccurrences(of: "+", with: " ").removingPercentEncoding
        }
        return nil
    }

    // MARK: Pages

    private func signedIn(_ context: GatewayRequestContext) -> (isOperator: Bool, who: String) {
        context.console?.role == .operator ? (true, "Operator") : (false, "Key \(context.identity?.name ?? "")")
    }

    private func operatorPage(_ context: GatewayRequestContext, _ render: () async throws -> Response) async throws -> Response {
        guard context.console?.role == .operator else { return Response(status: .seeOther, headers: [.location: "usage"]) }
        return try await render()
    }

    /// Whose jobs or batches a page lists: everyone's for the operator, else the key holder's
    /// own (`ConsoleSessionMiddleware` set the key).
    private func owner(_ context: GatewayRequestContext) -> (all: Bool, keyID: String?) {
        context.console?.role == .operator ? (true, nil) : (false, context.identity?.id)
    }

    func overview(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        let asked = request.uri.queryParameters.get("days", as: Int.self) ?? 7
        let days = [1, 7, 30].contains(asked) ? asked : 7
        let now = Date()
        let startOfToday = Calendar(identifier: .gregorian).startOfDay(for: now, in: TimeZone(identifier: "UTC")!)
        let since = startOfToday.addingTimeInterval(-Double(days - 1) * 86400)
        let byDay = try await store.usageSummary(by: .day, since: since, until: nil)
        let byKey = try await store.usageSummary(by: .key, since: since, until: nil, limit: 5)
        let byModel = try await store.usageSummary(by: .model, since: since, until: nil, limit: 5)
        let total = try await store.usageSummary(by: .all, since: since, until: nil).first
        // Every day of the range, the quiet ones too (newest first, as the table reads).
        let indexed = Dictionary(uniqueKeysWithValues: byDay.map { ($0.group, $0) })
        let allDays = (0..<days).map { offset -> UsageSummaryRow in
            let day = ConsoleFormat.day(startOfToday.addingTimeInterval(-Double(offset) * 86400))
            return indexed[day] ?? UsageSummaryRow(quiet: day)
        }
        func row(_ bucket: UsageSummaryRow) -> [String: Any] {
            [
                "group": bucket.group, "requests": bucket.requests, "errors": bucket.errors, "images": bucket.images,
                "spend": ConsoleFormat.usd(TokenPrices.usd(bucket.costMicroUSD)), "upstream": ConsoleFormat.usd(TokenPrices.usd(bucket.upstreamCostMicroUSD)),
                "p50": ConsoleFormat.milliseconds(bucket.p50LatencyMs), "p95": ConsoleFormat.milliseconds(bucket.p95LatencyMs),
            ]
        }
        let chart = Self.chart(allDays.reversed())
        let values: [String: Any] = [
            "ranges": [(1, "Today"), (7, "7 days"), (30, "30 days")].map { ["days": $0.0, "label": $0.1, "current": $0.0 == days] as [String: Any] },
            "rangeLabel": days == 1 ? "today" : "the last \(days) days",
            "total": [
                "spend": ConsoleFormat.usd(TokenPrices.usd(total?.costMicroUSD ?? 0)), "upstream": ConsoleFormat.usd(TokenPrices.usd(total?.upstreamCostMicroUSD ?? 0)),
                "requests": total?.requests ?? 0, "errorRate": ConsoleFormat.percent(total?.errors ?? 0, of: total?.requests ?? 0), "images": total?.images ?? 0,
                "p50": ConsoleFormat.milliseconds(total?.p50LatencyMs), "p95": ConsoleFormat.milliseconds(total?.p95LatencyMs),
            ] as [String: Any],
            "chart": chart,
            "days": allDays.map(row),
            "topKeys": byKey.map(row),
            "topModels": byModel.map(row),
            "channels": pool.status(models: catalog.upstreamAliases).map {
                ["name": $0.name, "state": $0.state, "inFlight": $0.inFlight, "maxConcurrency": $0.maxConcurrency, "lastError": $0.lastError ?? ""] as [String: Any]
            },
        ]
        return views.page("overview", title: "Overview", values: values, signedIn: signedIn(context))
    }

    /// A bar per day, drawn on the server as SVG: heights in proportion to the day's spend.
    static func chart(_ days: [UsageSummaryRow]) -> [String: Any] {
        let width = 720, height = 180, base = 170
        let slot = max(1, width / max(1, days.count))
        let most = max(1, days.map(\.costMicroUSD).max() ?? 1)
        let bars = days.enumerated().map { index, day -> [String: Any] in
            let barHeight = day.costMicroUSD == 0 ? 0 : max(2, (base - 10) * day.costMicroUSD / most)
            return [
                "x": index * slot + slot / 8, "y": base - barHeight, "width": max(1, slot * 3 / 4), "height": barHeight, "day": day.group,
                "spend": ConsoleFormat.usd(TokenPrices.usd(day.costMicroUSD)), "requests": day.requests, "errors": day.errors > 0,
            ]
        }
        return ["width": width, "height": height, "base": base, "bars": bars]
    }

    /// A text for a `{{#name}}…{{/name}}` section: Mustache shows the section for any string,
    /// the empty one too, so an empty or missing text is `false`.
    static func section(_ text: String?) -> Any {
        guard let text, !text.isEmpty else { return false }
        return text
    }

    static func path(_ name: String) -> String {
        var allowed = CharacterSet.urlPathAllowed
        allowed.remove(charactersIn: "/?#")
        return name.addingPercentEncoding(withAllowedCharacters: allowed) ?? name
    }

    static func limits(_ key: APIKey) -> String {
        var parts: [String] = []
        if let rpm = key.rpm { parts.append("\(rpm)/min") }
        if let concurrency = key.concurrency { parts.append("\(concurrency) at once") }
        return parts.isEmpty ? "none" : parts.joined(separator: ", ")
    }

    static func meter(_ key: APIKey) -> Int? {
        guard let credit = key.creditMicroUSD, credit > 0, let balance = key.balanceMicroUSD else { return nil }
        return max(0, min(100, balance * 100 / credit))
    }

    func keys(_ context: GatewayRequestContext) async throws -> Response {
        let keys = try await store.listKeys().filter { $0.revokedAt == nil }
        let values: [String: Any] = [
            "groups": try await store.listGroups().map { ["name": $0.name.rawValue] },
            "keys": keys.enumerated().map { index, key -> [String: Any] in
                [
                    "index": index, "name": key.name, "path": Self.path(key.name), "prefix": key.prefix, "group": key.group.rawValue,
                    "credit": ConsoleFormat.usd(key.creditMicroUSD.map(TokenPrices.usd)), "spent": ConsoleFormat.usd(TokenPrices.usd(key.spentMicroUSD)),
                    "reserved": ConsoleFormat.usd(TokenPrices.usd(key.reservedMicroUSD)), "balance": ConsoleFormat.usd(key.balanceMicroUSD.map(TokenPrices.usd)),
                    "meter": Self.meter(key).map { $0 as Any } ?? false, "limits": Self.limits(key), "rpm": key.rpm.map(String.init) ?? "",
                    "concurrency": key.concurrency.map(String.init) ?? "", "expiresDay": key.expiresAt.map(ConsoleFormat.day) ?? "",
                    "expires": key.expiresAt.map { ConsoleFormat.time($0) } ?? "never", "disabled": key.disabled,
                ]
            },
        ]
        return views.page("keys", title: "Keys", values: values, signedIn: signedIn(context))
    }

    func groups(_ context: GatewayRequestContext) async throws -> Response {
        let groups = try await store.listGroups().map(OperatorService.GroupView.init).map { group -> [String: Any] in
            [
                "name": group.name, "response_format": group.response_format, "multiplier": String(format: "%g×", group.multiplier),
                "models": group.models?.joined(separator: ", ") ?? "all", "tiers": group.service_tiers?.joined(separator: ", ") ?? "",
            ]
        }
        return views.page("groups", title: "Groups", values: ["groups": groups], signedIn: signedIn(context))
    }

    func prices(_ context: GatewayRequestContext) async throws -> Response {
        let tierNames = ["default", "512", "1k", "2k", "4k"]
        let perImage = catalog.models.map { model -> [String: Any] in
            let prices = models.object(model).capabilities.image_prices ?? [:]
            return ["model": model.name, "upstream": model.upstreamModel, "cells": tierNames.map { prices[$0].map { ConsoleFormat.usd($0) } ?? "–" }]
        }
        let tokenPrices = try await operatorService.prices().map { price -> [String: Any] in
            [
                "model": price.model, "input_text": String(format: "$%.2f", price.input_text), "input_image": String(format: "$%.2f", price.input_image),
                "output_text": String(format: "$%.2f", price.output_text), "output_image": String(format: "$%.2f", price.output_image), "source": price.source,
            ]
        }
        return views.page(
            "prices", title: "Prices", values: ["tierNames": tierNames, "perImage": perImage, "prices": tokenPrices], signedIn: signedIn(context)
        )
    }

    func channels(_ context: GatewayRequestContext) throws -> Response {
        let upstreams = Array(Set(catalog.models.map(\.upstreamModel))).sorted()
        let channels = pool.status(models: catalog.upstreamAliases).enumerated().map { index, channel -> [String: Any] in
            [
                "index": index, "name": channel.name, "path": Self.path(channel.name), "kind": channel.kind, "state": channel.state, "managed": channel.managed,
                "inFlight": channel.inFlight, "queued": channel.queued, "maxConcurrency": channel.maxConcurrency,
                "keys": "\(channel.keys) key\(channel.keys == 1 ? "" : "s")",
                "refused": Self.section(channel.disabledKeys.map { "#\($0)" }.joined(separator: ", ")),
                "cooling": channel.coolingModels.isEmpty ? "–" : channel.coolingModels.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value) s" }.joined(separator: ", "),
                "lastError": channel.lastError ?? "", "upstreams": (channel.models ?? upstreams),
            ]
        }
        return views.page("channels", title: "Channels", values: ["channels": channels], signedIn: signedIn(context))
    }

    func usage(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        let query = request.uri.queryParameters
        let isOperator = context.console?.role == .operator
        let own = context.identity
        let keyFilter = isOperator ? AdminController.filled(query.get("key")) : nil
        let model = AdminController.filled(query.get("model"))
        let status = AdminController.filled(query.get("status"))
        let since = AdminController.filled(query.get("since"))
        let until = AdminController.filled(query.get("until"))
        let statusFilter = status.flatMap(UsageStatusFilter.init)
        let rows: [OperatorService.UsageView]
        if isOperator {
            do {
                rows = try await operatorService.usage(
                    keyName: keyFilter, since: since.flatMap(OperatorService.date), until: until.flatMap(OperatorService.date), limit: 500, model: model, status: statusFilter
                )
            } catch is OperatorError {
                rows = []  // a key name no key has (any more): no rows
            }
        } else if let own {
            rows = try await store.usage(UsageQuery(
                keyID: own.id, since: since.flatMap(OperatorService.date), until: until.flatMap(OperatorService.date), limit: 500, model: model, status: statusFilter
            )).map(OperatorService.UsageView.init)
        } else {
            rows = []
        }
        // The same filter, as the CSV's query string: the admin API's (or /v1/usage's) own CSV.
        var filters: [(String, String)] = [("format", "csv")]
        if let keyFilter { filters.append(("key", keyFilter)) }
        if let model { filters.append(("model", model)) }
        if let status { filters.append(("status", status)) }
        if let since { filters.append(("since", since)) }
        if let until { filters.append(("until", until)) }
        if !isOperator { filters.append(("limit", "1000")) }
        var components = URLComponents()
        components.queryItems = filters.map { URLQueryItem(name: $0.0, value: $0.1) }
        let csv = (isOperator ? "api/admin/v1/usage" : "api/v1/usage") + (components.percentEncodedQuery.map { "?" + $0 } ?? "")
        let keyNames = isOperator ? try await store.listKeys().filter { $0.revokedAt == nil }.map(\.name) : []
        var values: [String: Any] = [
            "operator": isOperator, "csv": csv, "count": rows.count, "rowWord": rows.count == 1 ? "row" : "rows", "since": since ?? "", "until": until ?? "",
            "keyOptions": keyNames.map { ["name": $0, "selected": $0 == keyFilter] as [String: Any] },
            "modelOptions": catalog.models.map(\.name).map { ["name": $0, "selected": $0 == model] as [String: Any] },
            "statusOptions": [("", "any"), ("ok", "answered"), ("error", "failed")].map { ["value": $0.0, "label": $0.1, "selected": $0.0 == (status ?? "")] as [String: Any] },
            "rows": rows.map { row -> [String: Any] in
                [
                    "request_id": row.request_id, "created_at": row.created_at, "key": row.key ?? "", "model": row.model, "upstream_model": row.upstream_model ?? "",
                    "endpoint": row.endpoint, "requested_size": row.requested_size ?? "", "delivered_size": row.delivered_size ?? "–", "service_tier": Self.section(row.service_tier), "status": row.status,
                    "error_code": Self.section(row.error_code), "images": row.images, "input_text_tokens": row.input_text_tokens, "input_image_tokens": row.input_image_tokens,
                    "output_text_tokens": row.output_text_tokens, "output_image_tokens": row.output_image_tokens, "cost": ConsoleFormat.usd(row.cost_usd),
                    "upstream_cost": ConsoleFormat.usd(row.upstream_cost_usd), "latency_ms": row.latency_ms,
                    "hasAttempts": isOperator && !row.upstream_attempts.isEmpty,
                    "attempts": isOperator ? row.upstream_attempts.map(Self.attempt) : [],
                ]
            },
        ]
        if let own {
            values["account"] = [
                "balance": ConsoleFormat.usd(own.balanceMicroUSD.map(TokenPrices.usd)), "credit": ConsoleFormat.usd(own.creditMicroUSD.map(TokenPrices.usd)),
                "spent": ConsoleFormat.usd(TokenPrices.usd(own.spentMicroUSD)), "reserved": ConsoleFormat.usd(TokenPrices.usd(own.reservedMicroUSD)),
                "meter": Self.meter(own).map { $0 as Any } ?? false, "limits": Self.limits(own), "expires": own.expiresAt.map { ConsoleFormat.time($0) } ?? "never",
                "models": own.models?.joined(separator: ", ") ?? "all",
            ] as [String: Any]
        }
        return views.page("usage", title: isOperator ? "Usage" : "My usage", values: values, signedIn: signedIn(context))
    }

    static func attempt(_ attempt: UpstreamAttemptRecord) -> String {
        let data = (try? JSONEncoder().encode(attempt)).flatMap { String(data: $0, encoding: .utf8) } ?? ""
        return data.replacingOccurrences(of: "\"", with: "").replacingOccurrences(of: ",", with: ", ").trimmingCharacters(in: CharacterSet(charactersIn: "{}"))
    }

    func jobs(_ context: GatewayRequestContext) async throws -> Response {
        let (all, keyID) = owner(context)
        let records = all || keyID != nil ? try await store.jobs(keyID: keyID, limit: 200) : []
        let names = try await keyNames()
        let charged = try await store.chargedMicroUSD(jobIDs: records.map(\.id))
        let jobs = records.map { job -> [String: Any] in
            [
                "cost": ConsoleFormat.usd(TokenPrices.usd(charged[job.id] ?? 0)),
                "id": job.id, "key": names[job.keyID] ?? "", "model": job.model, "endpoint": job.endpoint, "status": job.status.rawValue, "attempts": job.attempts,
                "created": ConsoleFormat.time(job.createdAt), "completed": ConsoleFormat.time(job.completedAt), "error": job.error ?? "",
                "cancellable": job.status == .queued || job.status == .running,
            ]
        }
        return views.page("jobs", title: "Jobs", values: ["operator": all, "jobs": jobs], signedIn: signedIn(context))
    }

    func batches(_ context: GatewayRequestContext) async throws -> Response {
        let (all, keyID) = owner(context)
        let records = all || keyID != nil ? try await store.batches(keyID: keyID, limit: 100) : []
        let names = try await keyNames()
        let charged = try await store.chargedMicroUSD(jobIDs: records.map(\.id))
        let batches = records.map { batch -> [String: Any] in
            [
                "cost": ConsoleFormat.usd(TokenPrices.usd(charged[batch.id] ?? 0)),
                "id": batch.id, "key": names[batch.keyID] ?? "", "model": batch.model, "status": batch.status.rawValue, "total": batch.total,
                "completed": batch.completed, "failed": batch.failed, "done": batch.completed + batch.failed, "created": ConsoleFormat.time(batch.createdAt),
                "cancellable": batch.status == .inProgress || batch.status == .validating,
            ]
        }
        return views.page("batches", title: "Batches", values: ["operator": all, "batches": batches], signedIn: signedIn(context))
    }

    private func keyNames() async throws -> [String: String] {
        Dictionary(try await store.listKeys().map { ($0.id, $0.name) }, uniquingKeysWith: { first, _ in first })
    }

    func playground(_ context: GatewayRequestContext) async throws -> Response {
        let isOperator = context.console?.role == .operator
        let keys = isOperator ? try await store.listKeys().filter { $0.revokedAt == nil && !$0.disabled }.map { ["name": $0.name] } : []
        return views.page(
            "playground", title: "Playground", values: ["operator": isOperator, "keys": keys], signedIn: signedIn(context), script: "playground.js"
        )
    }

    func modelsPage(_ context: GatewayRequestContext) async throws -> Response {
        let key = context.identity
        let usable = context.console?.role == .operator ? catalog.models : models.models(for: key)
        let rows = usable.map { model -> [String: Any] in
            let object = models.object(model, key: key)
            let prices = (object.capabilities.image_prices ?? [:]).sorted { Self.tierOrder($0.key) < Self.tierOrder($1.key) }
            return [
                "id": model.name, "family": object.capabilities.family, "ratios": object.capabilities.aspect_ratios.joined(separator: ", "),
                "sizes": object.capabilities.sizes.isEmpty ? "one size per ratio" : object.capabilities.sizes.joined(separator: ", "),
                "maxInputs": object.capabilities.max_input_images, "url": object.capabilities.url_output,
                "prices": prices.map { "\($0.key == "default" ? "" : $0.key + " ")\(ConsoleFormat.usd($0.value))" }.joined(separator: ", "),
            ]
        }
        return views.page("models", title: "Models", values: ["models": rows], signedIn: signedIn(context))
    }

    static func tierOrder(_ tier: String) -> Int {
        ["default": 0, "512": 1, "1k": 2, "2k": 3, "4k": 4][tier.lowercased()] ?? 5
    }

    func quickstart(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        let key = context.identity
        let usable = context.console?.role == .operator ? catalog.models : models.models(for: key)
        let first = usable.first { $0.name == "nano-banana" } ?? usable.first
        let values: [String: Any] = [
            "base": settings.publicURL.base(of: request) + "/v1", "model": first?.name ?? "nano-banana",
            "size": first.map { $0.sizes.isEmpty ? "1:1" : "1k" } ?? "1:1", "models": usable.map(\.name),
        ]
        return views.page("quickstart", title: "Quick start", values: values, signedIn: signedIn(context))
    }
}

extension Calendar {
    fileprivate func startOfDay(for date: Date, in zone: TimeZone) -> Date {
        var calendar = self
        calendar.timeZone = zone
        return calendar.startOfDay(for: date)
    }
}
