import Hummingbird
import NanoGateCore
import NIOCore
import Synchronization

/// Cancels a request's work when its client's connection closes, so a client that gives up
/// stops the upstream call and its retries (Google bills what it generates, and nobody would
/// receive it). Hummingbird itself lets a handler run on after its connection is gone.
///
/// A request with an `Idempotency-Key` is the exception: its client means to retry, so the
/// call runs to completion and its answer is stored and settled (`IdempotencyMiddleware`),
/// and the retry receives the image instead of paying for a second one. Streamed answers
/// notice a gone client on their own (a failed write) once their body is being written.
struct DisconnectMiddleware: RouterMiddleware {
    typealias Context = GatewayRequestContext
    let connections = WatchedConnections()

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard request.method == .post, request.headers[IdempotencyMiddleware.header] == nil else {
            return try await next(request, context)
        }
        let closed = connections.watch(context.channel)
        defer { closed.detach() }
        // `next` runs in a child task (the group is awaited before returning, so it does not
        // outlive this call), beside a watcher that returns when the connection closes.
        return try await withoutActuallyEscaping(next) { next in
            nonisolated(unsafe) let next = next
            return try await withThrowingTaskGroup(of: Response?.self) { group in
                group.addTask { try await next(request, context) }
                group.addTask {
                    await closed.wait()
                    return nil
                }
                while let result = try await group.next() {
                    if let response = result {
                        group.cancelAll()
                        return response
                    }
                    // The client is gone: cancel the handler, which settles and ends with its error.
                    group.cancelAll()
                }
                throw GatewayError.clientDisconnected
            }
        }
    }
}

/// The connections with a request being watched: one close callback per connection, not one
/// per request (a keep-alive connection from a proxy may carry millions of requests, and a
/// future's callbacks are only released when it completes). The connection's close is
/// forwarded to the request it is answering now.
final class WatchedConnections: Sendable {
    private let current = Mutex<[ObjectIdentifier: ConnectionClosed]>([:])

    func watch(_ channel: any Channel) -> ConnectionClosed {
        let id = ObjectIdentifier(channel)
        let closed = ConnectionClosed()
        let first = current.withLock { current -> Bool in
            defer { current[id] = closed }
            return current[id] == nil
        }
        if first {
            // The entry goes when the connection does, so no identifier outlives its channel.
            channel.closeFuture.whenComplete { [weak self] _ in
                self?.current.withLock { $0.removeValue(forKey: id) }?.fire()
            }
        }
        return closed
    }
}

/// One request's wait for its connection to close.
final class ConnectionClosed: Sendable {
    private let state = Mutex<(closed: Bool, waiter: CheckedContinuation<Void, Never>?, done: Bool)>((false, nil, false))

    /// The connection closed.
    func fire() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.closed = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    /// Returns when the connection closed or `detach` was called.
    func wait() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { state -> Bool in
                    if state.closed || state.done || Task.isCancelled { return true }
                    state.waiter = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            detach()
        }
    }

    /// Stops waiting (the request finished first).
    func detach() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.done = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }
}
