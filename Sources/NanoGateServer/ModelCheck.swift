import Foundation
public import Logging
public import NanoGateCore
import ServiceLifecycle
public import Upstream

/// Whether Google serves each catalog model's upstream id and fallback: `nanogate models check`
/// prints it, and `serve` logs a warning per missing id at start-up.
public struct ModelCheck: Sendable {
    /// One catalog model's line.
    public struct Line: Sendable, Equatable {
        public var model: String
        public var upstream: String
        public var upstreamServed: Bool
        /// The fallback chain, comma-separated (nil: none).
        public var fallback: String?
        /// Whether Google serves at least one id of the chain.
        public var fallbackServed: Bool?

        /// The model can be served (its upstream id, or else one of its fallbacks, exists).
        public var servable: Bool { upstreamServed || fallbackServed == true }
    }

    public var lines: [Line]

    /// The check of every enabled model against the ids Google listed.
    public init(catalog: ModelCatalog, served: Set<String>) {
        lines = catalog.models.map { model in
            Line(
                model: model.name, upstream: model.upstreamModel, upstreamServed: served.contains(model.upstreamModel),
                fallback: model.fallbacks.isEmpty ? nil : model.fallbacks.map(\.id).joined(separator: ","),
                fallbackServed: model.fallbacks.isEmpty ? nil : model.fallbacks.contains { served.contains($0.id) }
            )
        }
    }

    /// Asks the channels that can list their models (Google's, each channel's first key) and checks the catalog.
    public static func run(catalog: ModelCatalog, pool: UpstreamPool, logger: Logger) async throws(GatewayError) -> ModelCheck {
        do {
            return ModelCheck(catalog: catalog, served: try await pool.listModels(logger: logger))
        } catch {
            throw GatewayError(upstream: error)
        }
    }

    /// A table for people: model, upstream id and status, fallback and status.
    public var report: String {
        var rows = [["MODEL", "UPSTREAM", "", "FALLBACK", ""]]
        for line in lines {
            rows.append([
                line.model, line.upstream, line.upstreamServed ? "ok" : "missing", line.fallback ?? "-",
                line.fallbackServed.map { $0 ? "ok" : "missing" } ?? "",
            ])
        }
        let widths = (0..<5).map { column in rows.map { $0[column].count }.max() ?? 0 }
        return rows.map { row in
            row.enumerated().map { $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  ")
                .trimmingCharacters(in: .whitespaces)
        }.joined(separator: "\n")
    }
}

/// `serve`'s start-up check, in the background: never delays or blocks start (Google may be
/// unreachable, the key may be missing). Missing upstream ids with a served fallback go
/// straight to the fallback from the first request.
struct ModelCheckService: Service {
    let catalog: ModelCatalog
    let pool: UpstreamPool
    let retired: RetiredModels
    let logger: Logger

    func run() async throws {
        await check()
        // A service that returns early would stop the server: wait for shutdown.
        try? await gracefulShutdown()
    }

    /// One check: warnings for missing ids, missing ids with a served fallback marked retired.
    func check() async {
        do {
            let check = try await ModelCheck.run(catalog: catalog, pool: pool, logger: logger)
            for line in check.lines where !line.upstreamServed {
                if line.fallbackServed == true, let fallback = line.fallback {
                    retired.markRetired(line.upstream)
                    logger.warning("Google does not list the upstream model; requests go to its fallback", metadata: ["model": "\(line.model)", "upstream": "\(line.upstream)", "fallback": "\(fallback)"])
                } else {
                    logger.warning("Google does not list the upstream model and it has no served fallback: requests for it will fail", metadata: ["model": "\(line.model)", "upstream": "\(line.upstream)"])
                }
            }
        } catch {
            logger.notice("could not check the catalog against Google's model list", metadata: ["error": "\(error.message)"])
        }
    }
}
