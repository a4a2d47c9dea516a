import Foundation
import NanoGateCore
import NanoGateStorage
import Upstream

// Each component's settings, read in one place each (`Settings` collects what does not parse).

extension UpstreamConfiguration {
    /// `GEMINI_API_KEY`, `NANOGATE_GEMINI_BASE_URL`, `NANOGATE_UPSTREAM_*`, `NANOGATE_BREAKER_*`.
    init(settings: Settings) {
        self.init(
            baseURL: settings.string("nanogate.gemini.base.url", default: "https://generativelanguage.googleapis.com"),
            apiKeys: settings.list("gemini.api.key"),
            requestTimeout: settings.seconds("nanogate.upstream.timeout", default: 300),
            deadline: settings.isSet("nanogate.upstream.deadline") ? settings.seconds("nanogate.upstream.deadline", default: 900) : nil,
            maxAttempts: settings.number("nanogate.upstream.attempts", default: 3),
            queueLimit: settings.number("nanogate.upstream.queue", default: 4096, minimum: 0),
            breakerThreshold: settings.number("nanogate.breaker.threshold", default: 5),
            breakerCooldown: settings.seconds("nanogate.breaker.cooldown", default: 30)
        )
        if let file = settings.string("nanogate.upstream.ca.file") {
            if FileManager.default.isReadableFile(atPath: file) {
                trustedCAFile = file
            } else {
                settings.problem("NANOGATE_UPSTREAM_CA_FILE=\(file) is not a readable file")
            }
        }
        // One timeout for every size when NANOGATE_UPSTREAM_TIMEOUT is set; else one per size.
        guard settings.string("nanogate.upstream.timeout") == nil else { return }
        var table = Self.defaultSizeTimeouts
        for entry in settings.list("nanogate.upstream.size.timeouts") {
            let parts = entry.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2, ["512", "1K", "2K", "4K"].contains(parts[0].uppercased()), let seconds = Int(parts[1]), seconds >= 1 else {
                settings.problem("NANOGATE_UPSTREAM_SIZE_TIMEOUTS has '\(entry)', which is not SIZE=SECONDS with SIZE one of 512, 1K, 2K, 4K")
                continue
            }
            table[parts[0].uppercased()] = .seconds(seconds)
        }
        sizeTimeouts = table
    }
}

extension InputLimits {
    /// `NANOGATE_MAX_*`, `NANOGATE_FETCH_*`, `NANOGATE_ALLOW_*`.
    init(settings: Settings) {
        let networks = settings.list("nanogate.fetch.allow.networks").compactMap { text -> IPNetwork? in
            guard let network = IPNetwork(text) else {
                settings.problem("NANOGATE_FETCH_ALLOW_NETWORKS has '\(text)', which is not an address or CIDR range")
                return nil
            }
            return network
        }
        self.init(
            maxImageBytes: settings.number("nanogate.max.image.bytes", default: 20 * 1024 * 1024),
            maxRequestBytes: settings.number("nanogate.max.request.bytes", default: 64 * 1024 * 1024),
            fetchTimeout: settings.seconds("nanogate.fetch.timeout", default: 20),
            allowPrivateFetch: settings.flag("nanogate.allow.private.fetch"),
            allowedNetworks: networks,
            allowPlainHTTP: settings.flag("nanogate.allow.http.fetch"),
            maxConcurrentFetches: settings.number("nanogate.max.fetches", default: 32)
        )
    }
}

extension ModelCatalog {
    /// The built-in catalog with the upstream ids `NANOGATE_UPSTREAM_FLASH`, `_PRO`, `_FLASH31`
    /// and the 2.5 fallback chain `NANOGATE_UPSTREAM_FLASH_FALLBACK` (empty: none).
    static func standard(settings: Settings) -> ModelCatalog {
        func upstreamID(_ key: String, _ fallback: String) -> String {
            guard let raw = settings.string(key) else { return fallback }
            guard isValidUpstreamID(raw) else {
                settings.problem("\(Settings.variable(key))=\(raw) is not a Google model id (letters, digits, '.', '-', '_')")
                return fallback
            }
            return raw
        }
        var fallback = defaultFlashFallback
        if settings.isSet("nanogate.upstream.flash.fallback") {
            // A chain, tried in order: `gemini-a,gemini-b`.
            fallback = settings.list("nanogate.upstream.flash.fallback").filter { id in
                guard isValidUpstreamID(id) else {
                    settings.problem("NANOGATE_UPSTREAM_FLASH_FALLBACK=\(id) is not a Google model id (letters, digits, '.', '-', '_')")
                    return false
                }
                return true
            }.joined(separator: ",")
        }
        return .standard(
            flashUpstream: upstreamID("nanogate.upstream.flash", defaultFlashUpstream),
            proUpstream: upstreamID("nanogate.upstream.pro", defaultProUpstream),
            flash31Upstream: upstreamID("nanogate.upstream.flash31", defaultFlash31Upstream),
            flashFallback: fallback
        )
    }
}

extension BillingConfiguration {
    /// `NANOGATE_RESERVATION_LEASE`, `NANOGATE_PRIORITY_PRICE_PERCENT`, `NANOGATE_JOB_SERVICE_TIER`,
    /// `NANOGATE_INSTANCE_ID`.
    init(settings: Settings) {
        self.init()
        lease = settings.seconds("nanogate.reservation.lease", default: 45, minimum: 3)
        tiers.priorityPPM = settings.number("nanogate.priority.price.percent", default: 200, minimum: 100) * 10_000
        jobServiceTier = settings.choice("nanogate.job.service.tier", default: .standard, allowed: [.standard, .flex])
        if let instance = settings.string("nanogate.instance.id") { owner = instance }
    }
}
