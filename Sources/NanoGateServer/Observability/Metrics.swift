import Foundation
import Hummingbird
import HTTPTypes
import NanoGateCore
import NanoGateStorage
import NIOCore
import Prometheus
import Synchronization
import Tracing
import Upstream

/// The gateway's Prometheus metrics, one registry per gateway (passed in, never global).
///
/// Every label is bounded: routes are the router's patterns (`/v1/images/generations`, never a
/// path with ids), models the catalog's names, statuses numbers, outcomes error codes (never a
/// message), channels the operator's names; key ids only with `NANOGATE_METRICS_KEY_LABELS`.
final class GatewayMetrics: Sendable, UpstreamObserver {
    let registry = PrometheusCollectorRegistry()
    let keyLabels: Bool
    private let inFlight: Gauge
    private let storeBytes: Gauge
    private let storeFiles: Gauge
    private let sweeps: Counter
    private let swept: Counter

    /// 50 ms to 10 min: image calls take 1 to 300 s (4K).
    static let durationBuckets: [Duration] = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 240, 300, 600].map { .milliseconds(Int64($0 * 1000)) }

    init(keyLabels: Bool = false) {
        self.keyLabels = keyLabels
        inFlight = registry.makeGauge(descriptor: Self.name("requests_in_flight", unit: "", help: "HTTP requests being answered now."))
        storeBytes = registry.makeGauge(descriptor: Self.name("image_store", unit: "bytes", help: "Bytes of images in the image store after the last sweep."))
        storeFiles = registry.makeGauge(descriptor: Self.name("image_store_files", unit: "", help: "Images in the image store after the last sweep."))
        sweeps = registry.makeCounter(descriptor: Self.name("image_sweeps", unit: "total", help: "Sweeps of expired images."))
        swept = registry.makeCounter(descriptor: Self.name("image_swept_files", unit: "total", help: "Expired images removed by sweeps."))
    }

    static func name(_ metric: String, unit: String, help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "nanogate", metricName: metric, unitName: unit, helpText: help)
    }

    // MARK: HTTP

    func requestStarted() { inFlight.increment() }

    func requestFinished(route: String, method: String, model: String?, status: Int, errorCode: String?, duration: Duration) {
        inFlight.decrement()
        registry.makeCounter(
            descriptor: Self.name("requests", unit: "total", help: "HTTP requests answered, by route, model and status."),
            labels: [("route", route), ("method", method), ("model", model ?? ""), ("status", "\(status)")]
        ).increment()
        registry.makeDurationHistogram(
            descriptor: Self.name("request_duration", unit: "seconds", help: "Time to answer an HTTP request (a stream: until its end)."),
            labels: [("route", route), ("model", model ?? "")], buckets: Self.durationBuckets
        ).record(duration)
        if let errorCode {
            registry.makeCounter(
                descriptor: Self.name("request_errors", unit: "total", help: "Failed requests by route and error code."),
                labels: [("route", route), ("code", errorCode)]
            ).increment()
        }
    }

    // MARK: Money and images

    /// A settled request: images delivered, tokens by modality, what was charged.
    func settled(_ record: UsageRecord) {
        let model = record.model
        var keyLabel: [(String, String)] = []
        if keyLabels { keyLabel = [("key", record.keyID)] }
        if record.images > 0 {
            registry.makeCounter(descriptor: Self.name("images_delivered", unit: "total", help: "Images delivered to clients, by model."), labels: [("model", model)] + keyLabel)
                .increment(by: Int64(record.images))
        }
        let tokens = Self.name("tokens", unit: "total", help: "Tokens Google billed, by model, direction and modality.")
        for (direction, modality, count) in [
            ("input", "text", record.inputTextTokens), ("input", "image", record.inputImageTokens),
            ("output", "text", record.outputTextTokens), ("output", "image", record.outputImageTokens),
        ] where count > 0 {
            registry.makeCounter(descriptor: tokens, labels: [("model", model), ("direction", direction), ("modality", modality)]).increment(by: Int64(count))
        }
        if record.costMicroUSD > 0 {
            registry.makeCounter(descriptor: Self.name("charged_micro_usd", unit: "total", help: "Micro-USD charged to keys, by model."), labels: [("model", model)] + keyLabel)
                .increment(by: Int64(record.costMicroUSD))
        }
        if record.upstreamCostMicroUSD > 0 {
            registry.makeCounter(
                descriptor: Self.name("upstream_cost_micro_usd", unit: "total", help: "Micro-USD of Google's list price for what Google billed, by upstream model."),
                labels: [("upstream_model", record.upstreamModel ?? "")]
            ).increment(by: Int64(record.upstreamCostMicroUSD))
        }
    }

    func swept(_ result: SweepResult) {
        sweeps.increment()
        swept.increment(by: Int64(result.removed))
        storeBytes.set(Double(result.bytes))
        storeFiles.set(Double(result.files))
    }

    // MARK: Upstream (UpstreamObserver)

    func attempt(channel: String, key: Int, model: String, outcome: String, duration: Duration) {
        var labels = [("channel", channel), ("model", model), ("outcome", outcome)]
        if keyLabels { labels.append(("upstream_key", "\(key)")) }
        registry.makeCounter(descriptor: Self.name("upstream_attempts", unit: "total", help: "Upstream calls by channel, model and outcome (ok or an error code)."), labels: labels).increment()
        registry.makeDurationHistogram(
            descriptor: Self.name("upstream_duration", unit: "seconds", help: "Time of one upstream call, by channel and model."),
            labels: [("channel", channel), ("model", model)], buckets: Self.durationBuckets
        ).record(duration)
    }

    func coolDown(channel: String, model: String) {
        registry.makeCounter(descriptor: Self.name("upstream_cooldowns", unit: "total", help: "Rate-limit cool-downs begun, by channel and model."), labels: [("channel", channel), ("model", model)])
            .increment()
    }

    func credentialRejected(channel: String) {
        registry.makeCounter(descriptor: Self.name("upstream_rejected_credentials", unit: "total", help: "Channel credentials the upstream refused."), labels: [("channel", channel)]).increment()
    }

    func tripped(channel: String) {
        registry.makeCounter(descriptor: Self.name("upstream_breaker_trips", unit: "total", help: "Times a channel's breaker tripped."), labels: [("channel", channel)]).increment()
    }

    // MARK: Scrape

    /// The text exposition, with the gauges read now: channel states and load, reservations held.
    func render(channels: [ChannelStatus], reservationsHeld: Int) -> ByteBuffer {
        let states = ["ok", "cooling", "tripped", "probing", "disabled"]
        for channel in channels {
            for state in states {
                registry.makeGauge(descriptor: Self.name("channel_state", unit: "", help: "1 for a channel's current state (ok, cooling, tripped, probing, disabled)."),
                                   labels: [("channel", channel.name), ("state", state)])
                    .set(channel.state == state ? 1.0 : 0.0)
            }
            registry.makeGauge(descriptor: Self.name("channel_in_flight", unit: "", help: "Upstream calls in flight per channel."), labels: [("channel", channel.name)])
                .set(Double(channel.inFlight))
            registry.makeGauge(descriptor: Self.name("channel_queued", unit: "", help: "Calls waiting for a channel's concurrency slot."), labels: [("channel", channel.name)])
                .set(Double(channel.queued))
            registry.makeGauge(descriptor: Self.name("channel_disabled_keys", unit: "", help: "Credentials of a channel set aside after being refused."), labels: [("channel", channel.name)])
                .set(Double(channel.disabledKeys.count))
            registry.makeGauge(descriptor: Self.name("channel_cooling_models", unit: "", help: "Models cooling down on a channel after a 429."), labels: [("channel", channel.name)])
                .set(Double(channel.coolingModels.count))
        }
        registry.makeGauge(descriptor: Self.name("reservations_held", unit: "", help: "Credit reservations this instance holds for requests in flight."))
            .set(Double(reservationsHeld))
        var bytes: [UInt8] = []
        registry.emit(into: &bytes)
        return ByteBuffer(bytes: bytes)
    }
}

/// What a request's handler learned for the metrics and the request log: the model it served
/// and the error code it failed with. A reference the handler fills in (the context it gets is
/// a copy).
final class RequestObservation: Sendable {
    private let state = Mutex<(model: String?, errorCode: String?)>((nil, nil))
    private let traced = Mutex<(any Span)?>(nil)

    /// The request's server span, when traces are on (`RequestTracingMiddleware`).
    var span: (any Span)? {
        get { traced.withLock { $0 } }
        set { traced.withLock { $0 = newValue } }
    }

    var model: String? {
        get { state.withLock { $0.model } }
        set { state.withLock { $0.model = newValue } }
    }

    var errorCode: String? {
        get { state.withLock { $0.errorCode } }
        set { state.withLock { $0.errorCode = newValue } }
    }
}

/// `GET /metrics`: the Prometheus text format, optionally behind `NANOGATE_METRICS_TOKEN`.
struct MetricsController<Context: RequestContext> {
    let metrics: GatewayMetrics
    let pool: UpstreamPool
    let live: LiveReservations
    let token: String?

    func addRoutes(to router: Router<Context>) {
        router.get("metrics") { request, _ -> Response in
            if let token {
                let given = request.headers[.authorization].map { $0.hasPrefix("Bearer ") ? String($0.dropFirst(7)) : "" } ?? ""
                guard AdminTokenAuthenticator.equal(given, token) else {
                    return Response(status: .unauthorized, headers: [.contentType: "text/plain", .wwwAuthenticate: "Bearer"], body: .init(byteBuffer: ByteBuffer(string: "metrics need the bearer token\n")))
                }
            }
            let body = metrics.render(channels: pool.status(), reservationsHeld: live.all.count)
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"], body: .init(byteBuffer: body))
        }
    }
}
