import Foundation
import Hummingbird
import Logging
import NIOCore
import NIOFoundationCompat
import NanoGateCore
import NanoGateStorage
import Upstream

/// `GET /ready` for load balancers: 200 when this instance can serve (its database and its
/// image store answer), 503 naming the part that does not. `GET /health` only says the process
/// is alive; a balancer should route by this one. The report also says which upstream id
/// each catalog model answers with now, by what the channels learned (their model lists, their
/// projects' refusals): `none` where nothing can serve it. That never makes an instance unready
/// (every instance shares the channels, so another would do no better).
struct ReadinessController {
    let database: DatabaseHandle
    let images: any ImageRepository
    let catalog: ModelCatalog
    let pool: UpstreamPool
    /// A check that takes longer than this counts as failed: a balancer's probe gets its 503
    /// before its own timeout (an unreachable store would otherwise hold it for the HTTP
    /// client's connect retries).
    let timeout: Duration = .seconds(2)

    struct Report: Encodable {
        var status: String
        var database: String
        var image_store: String
        var models: [String: String]
    }

    func addRoutes(to router: Router<GatewayRequestContext>) {
        router.get("ready", use: ready)
    }

    @Sendable func ready(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        let logger = context.logger
        async let database = check("database", logger: logger) { try await self.database.ping() }
        async let images = check("image_store", logger: logger) { try await self.images.ping() }
        // The pipeline's own rule (no model list is read here: a balancer polls this often).
        let models = Dictionary(catalog.models.map { ($0.name, pool.firstServable(of: $0)?.id ?? "none") }, uniquingKeysWith: { first, _ in first })
        let report = Report(status: "ready", database: await database, image_store: await images, models: models)
        var answer = report
        if report.database != "ok" || report.image_store != "ok" {
            answer.status = "not_ready"
            context.logger.warning("not ready", metadata: ["database": "\(report.database)", "image_store": "\(report.image_store)"])
        }
        let body = try JSONEncoder().encode(answer)
        return Response(
            status: answer.status == "ready" ? .ok : .serviceUnavailable,
            headers: [.contentType: "application/json", .cacheControl: "no-store"],
            body: .init(byteBuffer: ByteBuffer(data: body))
        )
    }

    /// "ok", "timed_out" or "failed". The answer names only the part (a probe is unauthenticated
    /// and error text can name hosts, users and buckets); the error itself goes to the log.
    private func check(_ part: String, logger: Logger, _ probe: @escaping @Sendable () async throws -> Void) async -> String {
        let timeout = self.timeout
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await probe() }
                group.addTask {
                    try await Task.sleep(for: timeout)
                    throw ReadinessTimeout()
                }
                try await group.next()
                group.cancelAll()
            }
            return "ok"
        } catch is ReadinessTimeout {
            logger.warning("readiness check timed out", metadata: ["part": "\(part)", "seconds": "\(timeout.components.seconds)"])
            return "timed_out"
        } catch {
            logger.warning("readiness check failed", metadata: ["part": "\(part)", "error": "\(String(String(reflecting: error).prefix(300)))"])
            return "failed"
        }
    }
}

private struct ReadinessTimeout: Error {}
