import Hummingbird
import NanoGateStorage
import ServiceLifecycle

/// Keeps the key cache current: re-reads the database's key epoch every `interval` (a tiny
/// one-row read), so a key revoked or changed anywhere stops being served from memory within
/// one tick (`KeyCache` stops serving from memory by itself if these reads stall).
struct KeyEpochWatcher: Service {
    let keys: KeyCache
    var interval: Duration = .milliseconds(200)

    func run() async throws {
        while !Task.isCancelled {
            await keys.refresh()
            do {
                try await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
            } catch {
                return
            }
        }
    }
}

/// After a state-changing admin request, reads the key epoch again before answering, so this
/// instance serves the changed key from its very next request (other instances: within one tick
/// of their watcher).
struct KeyCacheRefresh<Context: RequestContext>: RouterMiddleware {
    let keys: KeyCache

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard request.method != .get, request.method != .head else { return try await next(request, context) }
        do {
            let response = try await next(request, context)
            await keys.refresh()
            return response
        } catch {
            await keys.refresh()
            throw error
        }
    }
}
