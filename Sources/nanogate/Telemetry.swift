import Foundation
import Logging
import OTel
import ServiceLifecycle
import Tracing

/// OpenTelemetry traces, from OpenTelemetry's standard variables: on when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) names a collector,
/// off otherwise or with `OTEL_SDK_DISABLED=true` / `OTEL_TRACES_EXPORTER=none`. Exported by
/// swift-otel over OTLP/HTTP (protobuf); `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
/// `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*` and the exporter's headers and timeout apply as the
/// specification says.
enum Telemetry {
    /// Whether the environment asks for traces.
    static func wanted(_ environment: [String: String]) -> Bool {
        let endpoint = environment["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] ?? environment["OTEL_EXPORTER_OTLP_ENDPOINT"]
        guard let endpoint, !endpoint.isEmpty else { return false }
        if environment["OTEL_SDK_DISABLED"]?.lowercased() == "true" { return false }
        return environment["OTEL_TRACES_EXPORTER"]?.lowercased() != "none"
    }

    /// Bootstraps the process's tracer (once) and returns the exporter's service (to run
    /// beside the gateway, flushing on shutdown); nil when traces are off.
    static func startTracing(environment: [String: String], logger: Logger) throws -> (any Service)? {
        guard wanted(environment) else { return nil }
        if let requested = environment["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] ?? environment["OTEL_EXPORTER_OTLP_PROTOCOL"], requested != "http/protobuf" {
            throw TelemetryError.unsupportedProtocol(requested)
        }
        var configuration = OTel.Configuration.default
        configuration.serviceName = "nanogate"
        configuration.traces.enabled = true
        configuration.metrics.enabled = false
        configuration.logs.enabled = false
        configuration.traces.otlpExporter.protocol = .httpProtobuf
        configuration.diagnosticLogger = .custom(logger)
        let backend = try OTel.makeTracingBackend(configuration: configuration)
        InstrumentationSystem.bootstrap(backend.factory)
        logger.info("OpenTelemetry traces on", metadata: ["endpoint": "\(environment["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] ?? environment["OTEL_EXPORTER_OTLP_ENDPOINT"] ?? "")"])
        return backend.service
    }

    /// Log lines inside a traced request carry its `trace_id` and `span_id`.
    static var loggingMetadata: Logger.MetadataProvider { OTel.makeLoggingMetadataProvider() }
}

enum TelemetryError: Error, CustomStringConvertible {
    case unsupportedProtocol(String)

    var description: String {
        switch self {
        case .unsupportedProtocol(let name):
            "OTEL_EXPORTER_OTLP_PROTOCOL=\(name) is not supported: NanoGate exports traces over OTLP/HTTP (http/protobuf); point OTEL_EXPORTER_OTLP_ENDPOINT at the collector's HTTP port (4318)."
        }
    }
}
