import AsyncAlgorithms
import Foundation
import Hummingbird
import Logging
import NanoGateCore
import NIOCore
import NIOFoundationCompat
import Synchronization
import Upstream

extension ChatController {
    /// What the stream loop waits for: the next upstream event, the end, a failure, or a keep-alive tick.
    enum StreamItem: Sendable {
        case event(GeminiWire.Response)
        case finished
        case failed(GatewayError)
        case tick
    }

    /// The streamed reply: Server-Sent Events of `chat.completion.chunk`s, then `data: [DONE]`.
    ///
    /// Upstream errors before Google answers are ordinary HTTP errors; after that they arrive as
    /// an SSE `error` event (the OpenAI SDKs raise on it). Upstream events pass through a channel
    /// that suspends the reader until the writer took the previous event, so memory holds at most
    /// one event (one image) per stream, whatever the client's speed.
    func streamed(_ job: ChatJob, logger: Logger) async throws -> Response {
        // Google may hold its answer's head until the first event is ready (a 4K image can take a
        // minute). Wait one keep-alive interval for it: errors until then are plain HTTP errors;
        // after that the SSE response starts, with keep-alives, and later errors become SSE events.
        let upstream = self.upstream
        let call = Task { () -> Result<GeminiEventStream, GatewayError> in
            do throws(GatewayError) {
                return .success(try await upstream.streamGenerateContent(model: job.model.upstreamModel, request: job.gemini, logger: logger))
            } catch {
                return .failure(error)
            }
        }
        let interval = keepAliveInterval
        let early = await Self.firstOf({ await call.value }, orNilAfter: interval)
        if case .failure(let error) = early {
            await settle(Collector(), job: job, status: error.status, errorCode: error.code, logger: logger)
            throw error
        }
        let id = Self.completionID()
        let created = Int(Date().timeIntervalSince1970)
        let controller = self

        return Response(
            status: .ok,
            headers: [.contentType: "text/event-stream", .cacheControl: "no-cache", .init("X-Accel-Buffering")!: "no"],
            body: .init { writer in
                /// One SSE event; image payloads go out as their own writes, never copied.
                func send(_ choices: [ChatChoice], usage: ChatUsage? = nil) async throws {
                    let completion = ChatCompletion(id: id, object: "chat.completion.chunk", created: created, model: job.model.name, choices: choices, usage: usage)
                    var pieces = try SplicedJSON.encode(completion)
                    pieces.insert(ByteBuffer(string: "data: "), at: 0)
                    pieces.append(ByteBuffer(string: "\n\n"))
                    for piece in pieces { try await writer.write(piece) }
                }
                var collector = Collector()
                try await send([ChatChoice(delta: ChatMessageOut(role: "assistant", content: ""), finishReason: nil)])

                let channel = AsyncChannel<StreamItem>()
                var failure: GatewayError?
                await withTaskGroup(of: Void.self) { group in
                    group.addTask {
                        do {
                            let events: GeminiEventStream
                            switch await withTaskCancellationHandler(operation: { await call.value }, onCancel: { call.cancel() }) {
                            case .success(let stream): events = stream
                            case .failure(let error): throw error
                            }
                            for try await event in events { await channel.send(.event(event)) }
                            await channel.send(.finished)
                        } catch let error as GatewayError {
                            await channel.send(.failed(error))
                        } catch is CancellationError {
                        } catch {
                            await channel.send(.failed(.badGateway("The stream from Google broke: \(error).")))
                        }
                    }
                    group.addTask {
                        while !Task.isCancelled {
                            try? await Task.sleep(for: interval)
                            if Task.isCancelled { break }
                            await channel.send(.tick)
                        }
                    }
                    do {
                        loop: for await item in channel {
                            switch item {
                            case .event(let event):
                                for delta in try await controller.absorb(event, into: &collector, job: job) {
                                    try await send([ChatChoice(delta: delta, finishReason: nil)])
                                }
                            case .tick:
                                try await writer.write(ByteBuffer(string: ": keep-alive\n\n"))
                            case .finished:
                                break loop
                            case .failed(let error):
                                failure = error
                                break loop
                            }
                        }
                    } catch let error as GatewayError {
                        failure = error
                    } catch {
                        // The client went away: stop reading from Google.
                        failure = .badGateway("The client disconnected.", code: "client_disconnected")
                    }
                    group.cancelAll()
                    channel.finish()
                }

                if let failure {
                    await controller.settle(collector, job: job, status: failure.status, errorCode: failure.code, logger: logger)
                    if failure.code == "client_disconnected" { return }
                    var buffer = ByteBuffer(string: "data: ")
                    buffer.writeImmutableBuffer(try SplicedJSON.encodeJoined(ErrorResponse(failure)))
                    buffer.writeString("\n\ndata: [DONE]\n\n")
                    try await writer.write(buffer)
                    try await writer.finish(nil)
                    return
                }
                if let refusal = collector.blocked {
                    try await send([ChatChoice(delta: ChatMessageOut(refusal: refusal), finishReason: nil)])
                }
                let finish = ChatTranslation.finishReason(collector.finishReason, blocked: collector.blocked != nil)
                try await send([ChatChoice(delta: ChatMessageOut(), finishReason: finish)])
                if job.includeUsage {
                    try await send([], usage: controller.chatUsage(collector))
                }
                try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
                await controller.settle(collector, job: job, status: 200, errorCode: nil, logger: logger)
                try await writer.finish(nil)
            }
        )
    }

    /// The value of `operation`, or nil if `interval` passes first; `operation` is not cancelled.
    static func firstOf<Value: Sendable>(_ operation: @escaping @Sendable () async -> Value, orNilAfter interval: Duration) async -> Value? {
        let once = OnceFlag()
        return await withCheckedContinuation { (continuation: CheckedContinuation<Value?, Never>) in
            Task {
                let value = await operation()
                if once.claim() { continuation.resume(returning: value) }
            }
            Task {
                try? await Task.sleep(for: interval)
                if once.claim() { continuation.resume(returning: nil) }
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
