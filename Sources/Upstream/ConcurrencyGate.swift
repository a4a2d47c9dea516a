import Synchronization

/// A channel's cap on calls in flight, with a bounded queue in front of it.
///
/// A caller beyond the cap waits in line (first come, first served) for as long as its own
/// deadline allows, never on a hidden timeout of the HTTP client's; one beyond the queue's
/// bound is refused at once, so an overloaded gateway answers 503 instead of piling up.
final class ConcurrencyGate: Sendable {
    let limit: Int
    let queueLimit: Int
    private let state: Mutex<State>

    private struct State {
        var running = 0
        var nextTicket = 0
        var waiters: [(ticket: Int, continuation: CheckedContinuation<Bool, Never>)] = []
    }

    init(limit: Int, queueLimit: Int) {
        self.limit = max(1, limit)
        self.queueLimit = max(0, queueLimit)
        self.state = Mutex(State())
    }

    /// Calls in flight and callers waiting, for `channels list` and metrics.
    var load: (running: Int, waiting: Int) { state.withLock { ($0.running, $0.waiters.count) } }

    /// Takes a slot, waiting if all are taken. Throws `queueFull` when the queue is at its bound
    /// and `cancelled` when the caller's task is cancelled while waiting (its deadline passed,
    /// or the client went away).
    func acquire() async throws(UpstreamError) {
        enum Entry { case admitted, full, wait(Int) }
        let entry = state.withLock { state -> Entry in
            if state.running < limit, state.waiters.isEmpty {
                state.running += 1
                return .admitted
            }
            if state.waiters.count >= queueLimit { return .full }
            state.nextTicket += 1
            return .wait(state.nextTicket)
        }
        let ticket: Int
        switch entry {
        case .admitted: return
        case .full: throw UpstreamError(.queueFull)
        case .wait(let number): ticket = number
        }
        let admitted = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                let resumeNow = state.withLock { state -> Bool? in
                    if Task.isCancelled { return false }
                    if state.running < limit, state.waiters.isEmpty {
                        state.running += 1
                        return true
                    }
                    state.waiters.append((ticket, continuation))
                    return nil
                }
                if let resumeNow { continuation.resume(returning: resumeNow) }
            }
        } onCancel: {
            let waiter = state.withLock { state -> CheckedContinuation<Bool, Never>? in
                guard let index = state.waiters.firstIndex(where: { $0.ticket == ticket }) else { return nil }
                return state.waiters.remove(at: index).continuation
            }
            waiter?.resume(returning: false)
        }
        if !admitted { throw UpstreamError(.cancelled) }
    }

    /// Gives a slot back, to the longest waiter if there is one.
    func release() {
        let next = state.withLock { state -> CheckedContinuation<Bool, Never>? in
            if state.waiters.isEmpty {
                state.running = max(0, state.running - 1)
                return nil
            }
            return state.waiters.removeFirst().continuation
        }
        next?.resume(returning: true)
    }
}
