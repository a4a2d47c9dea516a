import Hummingbird
import NIOCore

/// Runs a task's jobs on one NIO event loop: the connection's. A request then reads its body,
/// awaits Google's answer pieces and writes its own answer without hopping between Swift's
/// shared threads and the loop at every step (a hop is a context switch, and a 1K answer made
/// dozens of them). Handlers must not block: nothing in them does (SQLite and file work go to
/// the blocking pool), and CPU-heavy steps (conversions) run on their own threads.
final class EventLoopExecutor: TaskExecutor, @unchecked Sendable {
    let eventLoop: any EventLoop

    init(_ eventLoop: any EventLoop) { self.eventLoop = eventLoop }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = asUnownedTaskExecutor()
        eventLoop.execute { job.runSynchronously(on: executor) }
    }
}

/// Runs the rest of the chain, and the answer's body writer, with the connection's event loop
/// as the task executor (`NANOGATE_LOOP_HANDLERS`).
struct EventLoopAffinityMiddleware: RouterMiddleware {
    typealias Context = GatewayRequestContext

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let executor = EventLoopExecutor(context.channel.eventLoop)
        var response = try await withTaskExecutorPreference(executor) { try await next(request, context) }
        let body = response.body
        response.body = ResponseBody(contentLength: body.contentLength) { writer in
            try await withTaskExecutorPreference(executor) { try await body.write(writer) }
        }
        return response
    }
}
