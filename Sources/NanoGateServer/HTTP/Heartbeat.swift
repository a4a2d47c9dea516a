import AsyncAlgorithms
import NIOCore

/// The one keep-alive of long answers, so proxies that cut a silent connection (Cloudflare's
/// 524 after ~100 s) do not cut a 4K image: an SSE comment on a stream, a space before a JSON
/// body. The beats come from one timer sequence (AsyncAlgorithms' `AsyncTimerSequence`),
/// merged with the work in the writing task: no task per interval, no task that writes.
enum Heartbeat {
    /// An SSE comment, which every EventSource client skips.
    static let sseComment = ByteBuffer(string: ": keep-alive\n\n")
    /// A space, which every JSON parser reads past before the value (RFC 8259).
    static let space = ByteBuffer(string: " ")

    /// A tick every `interval` (a stream's producer sends them among its events).
    static func ticks(every interval: Duration) -> AsyncTimerSequence<ContinuousClock> {
        AsyncTimerSequence(interval: interval, clock: .continuous)
    }

    /// The value of `work`, calling `beat` after every `interval` it is still running. A throw
    /// from `beat` (the client went away) or this task's cancellation ends the wait; `work` is
    /// the caller's to cancel.
    static func wait<Value: Sendable>(for work: Task<Value, Never>, every interval: Duration, beat: () async throws -> Void) async throws -> Value {
        let finished = [0].async.map { _ in Optional(await work.value) }
        let beats = ticks(every: interval).map { _ in Value?.none }
        for await item in merge(finished, beats) {
            guard let value = item else {
                try await beat()
                continue
            }
            return value
        }
        // The timer never ends: the merge ends early only when this task is cancelled.
        try Task.checkCancellation()
        return await work.value
    }
}
