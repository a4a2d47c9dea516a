import Synchronization

/// Bounds on how long an operation may run, for the places where a library's own timeout stops
/// too early (AsyncHTTPClient's deadline covers only the response head, never the body).
public enum Deadline {
    private enum Race<Value: Sendable>: Sendable {
        case value(Value)
        case expired
    }

    /// Runs `operation` and returns its value, or cancels it and throws `timeoutError` when
    /// `deadline` passes first. Cancelling the caller cancels both.
    public static func run<Value: Sendable>(
        until deadline: ContinuousClock.Instant,
        orThrow timeoutError: @autoclosure @Sendable () -> any Error,
        _ operation: @escaping @Sendable () async throws -> Value
    ) async throws -> Value {
        try await withThrowingTaskGroup(of: Race<Value>.self) { group in
            group.addTask { .value(try await operation()) }
            group.addTask {
                try await Task.sleep(until: deadline, clock: .continuous)
                return .expired
            }
            defer { group.cancelAll() }
            switch try await group.next() {
            case .value(let value): return value
            case .expired, nil: throw timeoutError()
            }
        }
    }

    /// The value of `operation`, or nil if `interval` passes first. Unlike `run`, `operation`
    /// is never cancelled nor awaited past the interval (waiting on a task that ignores
    /// cancellation, a task group would wait as long as it does); the timer is cancelled once
    /// the value arrives.
    public static func firstOf<Value: Sendable>(_ operation: @escaping @Sendable () async -> Value, orNilAfter interval: Duration) async -> Value? {
        let once = OnceFlag()
        return await withCheckedContinuation { (continuation: CheckedContinuation<Value?, Never>) in
            let timer = Task {
                try? await Task.sleep(for: interval)
                if once.claim() { continuation.resume(returning: nil) }
            }
            Task {
                let value = await operation()
                timer.cancel()
                if once.claim() { continuation.resume(returning: value) }
            }
        }
    }
}

/// A flag that can be claimed once, from any task.
final class OnceFlag: Sendable {
    private let done = Mutex(false)

    /// True for the first caller only.
    func claim() -> Bool {
        done.withLock { done in
            defer { done = true }
            return !done
        }
    }
}
