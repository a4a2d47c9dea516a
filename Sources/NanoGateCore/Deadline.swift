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
}
