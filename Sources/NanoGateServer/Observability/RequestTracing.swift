import Foundation
import HTTPTypes
import Hummingbird
import NanoGateCore
import NanoGateStorage
import NIOCore
import Tracing

/// OpenTelemetry traces of requests (`OTEL_EXPORTER_OTLP_ENDPOINT`; the exporter is swift-otel's,
/// bootstrapped by `nanogate serve`): a server span per request that continues the caller's W3C
/// `traceparent` and names itself in the answer's, lasting until the answer's last byte (a stream
/// included), with children for the reservation, each upstream attempt and the settlement.
/// Attributes follow OpenTelemetry's GenAI conventions (`gen_ai.*`, with the image token buckets
/// and image count) plus NanoGate's charge; never a prompt, a key or an image.
struct RequestTracingMiddleware: RouterMiddleware {
    typealias Context = GatewayRequestContext

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var parent = ServiceContext.current ?? .topLevel
        InstrumentationSystem.instrument.extract(request.headers, into: &parent, using: HTTPFieldsExtractor())
        let span = InstrumentationSystem.tracer.startSpan("\(request.method.rawValue) \(request.uri.path)", context: parent, ofKind: .server)
        span.attributes["http.request.method"] = request.method.rawValue
        span.attributes["url.path"] = request.uri.path
        span.attributes["nanogate.request_id"] = context.requestID
        context.observation.span = span
        var response: Response
        do {
            response = try await ServiceContext.withValue(span.context) {
                try await next(request, context)
            }
        } catch {
            span.recordError(error)
            span.setStatus(.init(code: .error))
            span.end()
            throw error
        }
        if let route = context.endpointPath {
            span.operationName = "\(request.method.rawValue) \(route)"
            span.attributes["http.route"] = route
        }
        span.attributes["http.response.status_code"] = Int(response.status.code)
        if response.status.code >= 500 { span.setStatus(.init(code: .error)) }
        // The caller learns the trace (and this span) it was answered in.
        InstrumentationSystem.instrument.inject(span.context, into: &response.headers, using: HTTPFieldsInjector())
        // A stream is written after the handler returns: the span ends with its last byte.
        let body = response.body
        response.body = ResponseBody(contentLength: body.contentLength) { writer in
            defer { span.end() }
            try await body.write(writer)
        }
        return response
    }
}

struct HTTPFieldsExtractor: Extractor {
    func extract(key: String, from carrier: HTTPFields) -> String? {
        HTTPField.Name(key).flatMap { carrier[$0] }
    }
}

struct HTTPFieldsInjector: Injector {
    func inject(_ value: String, forKey key: String, into carrier: inout HTTPFields) {
        if let name = HTTPField.Name(key) { carrier[name] = value }
    }
}

/// What the gateway adds to a request's spans.
enum GatewaySpans {
    /// The GenAI conventions' attributes of a settled request, and its charge.
    static func describe(_ span: any Span, record: UsageRecord) {
        span.attributes["gen_ai.system"] = "gcp.gemini"
        span.attributes["gen_ai.operation.name"] = "generate_content"
        span.attributes["gen_ai.request.model"] = record.model
        if let upstream = record.upstreamModel { span.attributes["gen_ai.response.model"] = upstream }
        span.attributes["gen_ai.usage.input_tokens"] = record.inputTokens
        span.attributes["gen_ai.usage.output_tokens"] = record.outputTokens
        span.attributes["gen_ai.usage.input_image_tokens"] = record.inputImageTokens
        span.attributes["gen_ai.usage.output_image_tokens"] = record.outputImageTokens
        span.attributes["gen_ai.usage.image_count"] = record.images
        span.attributes["nanogate.endpoint"] = record.endpoint
        span.attributes["nanogate.cost_usd"] = TokenPrices.usd(record.costMicroUSD)
        span.attributes["nanogate.upstream_cost_usd"] = TokenPrices.usd(record.upstreamCostMicroUSD)
        span.attributes["nanogate.upstream_attempts"] = record.attempts
        if let tier = record.serviceTier { span.attributes["nanogate.service_tier"] = tier }
        if let size = record.requestedSize { span.attributes["nanogate.requested_size"] = size }
        if let size = record.deliveredSize { span.attributes["nanogate.delivered_size"] = size }
        if let code = record.errorCode { span.attributes["error.type"] = code }
    }
}
