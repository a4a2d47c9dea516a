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
    /// an SSE `error` event (the OpenAI SDKs raise on it), mid-stream Google errors included.
    /// Upstream events pass through a channel that suspends the reader until the writer took
    /// the previous event, so memory holds at most one event (one image) per stream.
    ///
    /// Settled on every path, by what the client received: a client that disconnects after an
    /// image chunk keeps the image (its URL works), so the gateway reads Google's answer to its
    /// end (without writing) to learn the usage, and charges it; one that leaves before any
    /// image costs nothing and Google's stream is cancelled.
    func streamed(_ job: ChatJob, settlement: Settlement, logger: Logger) async throws -> Response {
        // Google may hold its answer's head until the first event is ready (a 4K image can take a
        // minute). Wait one keep-alive interval for it: errors until then are plain HTTP errors;
        // after that the SSE response starts, with keep-alives, and later errors become SSE events.
        let pipeline = self.pipeline
        let call = Task { () -> Result<GeminiEventStream, GatewayError> in
            do throws(GatewayError) {
                return .success(try await pipeline.stream(job.gemini, size: job.spec.imageSize, settlement: settlement, logger: logger))
            } catch {
                return .failure(error)
            }
        }
        let early = await withTaskCancellationHandler {
            await Deadline.firstOf({ await call.value }, orNilAfter: keepAliveInterval)
        } onCancel: {
            call.cancel()
        }
        if case .failure(let error) = early {
            await pipeline.settle(settlement, status: error.status, errorCode: error.code, logger: logger)
            throw error
        }
        let id = Self.completionID()
        let created = Int(Date().timeIntervalSince1970)
        let controller = self
        let interval = keepAliveInterval

        return Response(
            status: .ok,
            headers: [.contentType: "text/event-stream", .cacheControl: "no-cache", .init("X-Accel-Buffering")!: "no"],
            body: .init { writer in
                /// One SSE event; image payloads go out as their own writes, never copied. The chunk
                /// with the usage says the tier Google served.
                func send(_ choices: [ChatChoice], usage: ChatUsage? = nil, tier: ServiceTier? = nil) async throws {
                    var completion = ChatCompletion(id: id, object: "chat.completion.chunk", created: created, model: job.model.name, choices: choices, usage: usage)
                    completion.serviceTier = tier?.openAIName
                    var pieces = try SplicedJSON.encode(completion)
                    pieces.insert(ByteBuffer(string: "data: "), at: 0)
                    pieces.append(ByteBuffer(string: "\n\n"))
                    for piece in pieces { try await writer.write(piece) }
                }
                var collector = Collector()
                var failure: GatewayError?
                var clientGone = false
                do {
                    try await send([ChatChoice(delta: ChatMessageOut(role: "assistant", content: ""), finishReason: nil)])
                } catch {
                    clientGone = true
                    call.cancel()
                }

                if !clientGone {
                    let channel = AsyncChannel<StreamItem>()
                    await withTaskGroup(of: Void.self) { group in
                        group.addTask {
                            do {
                                let events: GeminiEventStream
                                switch await withTaskCancellationHandler(operation: { await call.value }, onCancel: { call.cancel() }) {
                                case .success(let stream): events = stream
                                case .failure(let error): throw error
                                }
                                try await events.consume { event in await channel.send(.event(event)) }
                                await channel.send(.finished)
                            } catch let error as GatewayError {
                                await channel.send(.failed(error))
                            } catch let error as UpstreamError {
                                await channel.send(.failed(GatewayError(upstream: error)))
                            } catch is CancellationError {
                            } catch {
                                await channel.send(.failed(.badGateway("The stream from Google broke.")))
                            }
                        }
                        group.addTask {
                            for await _ in Heartbeat.ticks(every: interval) { await channel.send(.tick) }
                        }
                        loop: for await item in channel {
                            switch item {
                            case .event(let event):
                                let deltas: [ChatMessageOut]
                                switch await controller.absorbed(event, into: &collector, job: job) {
                                case .success(let value): deltas = value
                                case .failure(let error):
                                    failure = error
                                    break loop
                                }
                                do {
                                    for delta in deltas {
                                        try await send([ChatChoice(delta: delta, finishReason: nil)])
                                        // Delivered once written: from here on the client has it.
                                        collector.deliveredImages += delta.images?.count ?? 0
                                        if delta.images == nil, delta.content?.isEmpty == false { collector.deliveredText = true }
                                    }
                                } catch {
                                    clientGone = true
                                    break loop
                                }
                            case .tick:
                                do {
                                    try await writer.write(Heartbeat.sseComment)
                                } catch {
                                    clientGone = true
                                    break loop
                                }
                            case .finished:
                                break loop
                            case .failed(let error):
                                failure = error
                                break loop
                            }
                        }
                        if clientGone, collector.deliveredImages > 0 || collector.deliveredText {
                            // The client has an image or text: read on (bounded by the stream's
                            // deadline) for the usage Google reports at the end, so the charge is Google's.
                            drain: for await item in channel {
                                switch item {
                                case .event(let event): if let usage = event.usageMetadata { collector.usage = usage }
                                case .tick: continue
                                case .finished: break drain
                                case .failed(let error):
                                    failure = error
                                    break drain
                                }
                            }
                        }
                        group.cancelAll()
                        channel.finish()
                    }
                }
                // Google's last usage names the tier it served: the charge follows it on every path.
                if let usage = collector.usage { settlement.served(tier: ServiceTier(echoed: usage.serviceTier)) }

                if !clientGone {
                    do {
                        if let failure {
                            var buffer = ByteBuffer(string: "data: ")
                            buffer.writeImmutableBuffer(try SplicedJSON.encodeJoined(ErrorResponse(failure)))
                            buffer.writeString("\n\ndata: [DONE]\n\n")
                            try await writer.write(buffer)
                        } else {
                            if let refusal = collector.blocked {
                                try await send([ChatChoice(delta: ChatMessageOut(refusal: refusal), finishReason: nil)])
                            }
                            let finish = ImageTranslation.chatFinishReason(collector.finishReason, blocked: collector.blocked != nil)
                            // What `account` will charge below: the last chunk says it (`usage.cost`).
                            let charged = collector.blocked == nil && (collector.deliveredImages > 0 || collector.deliveredText)
                            let cost = charged ? settlement.charge(after: ImageTranslation.usage(of: collector.usage)) : settlement.chargeMicroUSD
                            let tier = settlement.servedTier
                            if job.includeUsage {
                                try await send([ChatChoice(delta: ChatMessageOut(), finishReason: finish)])
                                try await send([], usage: controller.chatUsage(collector, costMicroUSD: cost), tier: tier)
                            } else {
                                try await send([ChatChoice(delta: ChatMessageOut(), finishReason: finish)], usage: controller.chatUsage(collector, costMicroUSD: cost), tier: tier)
                            }
                            try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
                        }
                        try await writer.finish(nil)
                    } catch {
                        clientGone = true
                    }
                }

                // A stream Google broke before any image is a failed answer: its text is not charged.
                if failure != nil, collector.deliveredImages == 0 { collector.deliveredText = false }
                // A stream has no single answer to bill when it arrives: bill what it carried.
                settlement.billed(await controller.account(collector, job: job, settlement: settlement, logger: logger))
                let outcome = clientGone ? GatewayError.clientDisconnected : failure
                await pipeline.settle(settlement, status: outcome?.status ?? 200, errorCode: outcome?.code, logger: logger)
            }
        )
    }

    /// `absorb` as a result (typed throws do not survive the SSE writer's closure).
    func absorbed(_ event: GeminiWire.Response, into collector: inout Collector, job: ChatJob) async -> Result<[ChatMessageOut], GatewayError> {
        do throws(GatewayError) {
            return .success(try await absorb(event, into: &collector, job: job))
        } catch {
            return .failure(error)
        }
    }
}
