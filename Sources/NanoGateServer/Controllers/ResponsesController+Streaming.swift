import AsyncAlgorithms
import Foundation
import Hummingbird
import Logging
import NanoGateCore
import NanoGateStorage
import NIOCore
import Upstream

/// One server-sent event of a streamed response (`event: <type>` and this JSON), in OpenAI's shape.
struct ResponseStreamEvent: Encodable {
    var type: String
    var sequenceNumber = 0
    var response: ResponseObject?
    var outputIndex: Int?
    var item: ResponseOutputItem?
    var itemID: String?
    var contentIndex: Int?
    var part: ResponseContentPart?
    var delta: String?
    var text: String?
    var logprobs: [String]?
    var partialImageIndex: Int?
    var partialImageB64: Base64Text?
    // `error` events
    var code: String?
    var message: String?
    var param: String?

    init(_ type: String) { self.type = type }

    enum CodingKeys: String, CodingKey {
        case type, response, item, part, delta, text, logprobs, code, message, param
        case sequenceNumber = "sequence_number"
        case outputIndex = "output_index"
        case itemID = "item_id"
        case contentIndex = "content_index"
        case partialImageIndex = "partial_image_index"
        case partialImageB64 = "partial_image_b64"
    }
}

extension ResponsesController {
    /// The streamed answer: `response.created`, `response.in_progress`, the image call's item
    /// (`output_item.added`, `image_generation_call.in_progress`, `.generating`, a
    /// `.partial_image` for each of Gemini 3 Pro's thought images up to `partial_images`,
    /// `output_item.done` with the result), any thought summary and text as their own items,
    /// then `response.completed` (or `response.incomplete` for a refusal, `response.failed` for
    /// a failure after the stream began).
    ///
    /// Settled on every path by what the client received: an image counts once its
    /// `output_item.done` was written. A client that leaves after that keeps the image, so
    /// Google's stream is read to its end for the usage; one that leaves before costs nothing.
    func streamed(_ job: ResponseJob, settlement: Settlement, logger: Logger) async throws -> Response {
        // Errors until Google's head (within one keep-alive interval) are plain HTTP errors.
        let pipeline = self.pipeline
        let call = try await UpstreamStream.start(job.gemini, size: job.spec.imageSize, pipeline: pipeline, settlement: settlement, within: keepAliveInterval, logger: logger)
        let controller = self
        let interval = keepAliveInterval
        return Response(
            status: .ok,
            headers: [.contentType: "text/event-stream", .cacheControl: "no-cache", .init("X-Accel-Buffering")!: "no"],
            body: .init { writer in
                var sequence = 0
                var clientGone = false
                func send(_ event: ResponseStreamEvent) async {
                    guard !clientGone else { return }
                    var event = event
                    event.sequenceNumber = sequence
                    sequence += 1
                    do {
                        var pieces = try SplicedJSON.encode(event)
                        pieces.insert(ByteBuffer(string: "event: \(event.type)\ndata: "), at: 0)
                        pieces.append(ByteBuffer(string: "\n\n"))
                        for piece in pieces { try await writer.write(piece) }
                    } catch {
                        clientGone = true
                    }
                }
                func itemEvent(_ type: String, _ index: Int, _ item: ResponseOutputItem) -> ResponseStreamEvent {
                    var event = ResponseStreamEvent(type)
                    event.outputIndex = index
                    event.item = item
                    return event
                }
                func itemIDEvent(_ type: String, _ index: Int, _ id: String) -> ResponseStreamEvent {
                    var event = ResponseStreamEvent(type)
                    event.outputIndex = index
                    event.itemID = id
                    return event
                }

                var response = job.shell
                var created = ResponseStreamEvent("response.created")
                created.response = response
                await send(created)
                var progress = ResponseStreamEvent("response.in_progress")
                progress.response = response
                await send(progress)

                // The output as it grows: the first image call is announced at once.
                var output: [ResponseOutputItem] = [.image(id: Self.newID("ig_"), status: "in_progress")]
                var openImage: Int? = 0
                var delivered: [String: FinishedImage] = [:]
                var partials = 0
                var messageIndex: Int?
                var reasoningIndex: Int?
                await send(itemEvent("response.output_item.added", 0, output[0]))
                await send(itemIDEvent("response.image_generation_call.in_progress", 0, output[0].id))
                await send(itemIDEvent("response.image_generation_call.generating", 0, output[0].id))

                var answer = ResponseAnswer()
                var failure: GatewayError?
                var finished = false
                if clientGone { call.cancel() }
                let channel = AsyncChannel<UpstreamStreamItem>()
                await withTaskGroup(of: Void.self) { group in
                    group.addTask { await call.forward(into: channel) }
                    group.addTask {
                        for await _ in Heartbeat.ticks(every: interval) { await channel.send(.tick) }
                    }
                    loop: for await item in channel {
                        switch item {
                        case .tick:
                            guard !clientGone else { continue }
                            do { try await writer.write(Heartbeat.sseComment) } catch { clientGone = true }
                        case .finished:
                            finished = true
                            break loop
                        case .failed(let error):
                            failure = error
                            break loop
                        case .imageBegin, .imageBytes, .imageEnd:
                            continue  // whole events only here
                        case .event(let event):
                            for piece in answer.absorb(event) {
                                switch piece {
                                case .thoughtImage(let image):
                                    guard let index = openImage, partials < job.options.partialImages, !clientGone else { continue }
                                    var partial = itemIDEvent("response.image_generation_call.partial_image", index, output[index].id)
                                    partial.partialImageIndex = partials
                                    partial.partialImageB64 = image.data
                                    partials += 1
                                    await send(partial)
                                case .image(let image):
                                    let index: Int
                                    if let open = openImage {
                                        index = open
                                    } else {
                                        index = output.count
                                        output.append(.image(id: Self.newID("ig_"), status: "in_progress"))
                                        await send(itemEvent("response.output_item.added", index, output[index]))
                                    }
                                    openImage = nil
                                    var item = output[index]
                                    item.status = "completed"
                                    let finished: FinishedImage
                                    do {
                                        finished = try await controller.finish(image, into: &item, job: job, revisedPrompt: answer.text)
                                    } catch {
                                        // Typed throws do not survive the SSE writer's closure.
                                        failure = (error as? GatewayError) ?? .internal("The image could not be finished.")
                                        break loop
                                    }
                                    output[index] = item
                                    await send(itemEvent("response.output_item.done", index, item))
                                    // Delivered once its item was written: from here on the client has it.
                                    if !clientGone { delivered[item.id] = finished }
                                    // The stored form keeps the result by name, not in memory twice.
                                    output[index].result = nil
                                case .reasoning:
                                    if reasoningIndex == nil {
                                        reasoningIndex = output.count
                                        output.append(.reasoning(id: Self.newID("rs_"), text: ""))
                                        await send(itemEvent("response.output_item.added", reasoningIndex!, output[reasoningIndex!]))
                                    }
                                    output[reasoningIndex!].summary = [.init(type: "summary_text", text: answer.reasoning)]
                                case .text(let text):
                                    if messageIndex == nil {
                                        messageIndex = output.count
                                        output.append(.message(id: Self.newID("msg_"), status: "in_progress", content: []))
                                        await send(itemEvent("response.output_item.added", messageIndex!, output[messageIndex!]))
                                        var part = itemIDEvent("response.content_part.added", messageIndex!, output[messageIndex!].id)
                                        part.contentIndex = 0
                                        part.part = .outputText("")
                                        await send(part)
                                    }
                                    var delta = itemIDEvent("response.output_text.delta", messageIndex!, output[messageIndex!].id)
                                    delta.contentIndex = 0
                                    delta.delta = text
                                    delta.logprobs = []
                                    await send(delta)
                                }
                            }
                        }
                        // A client gone stops the writing (and Google's stream, unless it has an image).
                        if clientGone { break loop }
                    }
                    if clientGone, !delivered.isEmpty, !finished, failure == nil {
                        // The client has an image: read on for the usage Google reports at the end.
                        let rest = await UpstreamStream.drain(channel)
                        if let usage = rest.usage { answer.usage = usage }
                        failure = rest.failure
                    }
                    group.cancelAll()
                    channel.finish()
                }

                // Close what is open, in order.
                if let index = reasoningIndex { await send(itemEvent("response.output_item.done", index, output[index])) }
                if let index = messageIndex {
                    output[index].status = "completed"
                    output[index].content = [.outputText(answer.text)]
                    var done = itemIDEvent("response.output_text.done", index, output[index].id)
                    done.contentIndex = 0
                    done.text = answer.text
                    done.logprobs = []
                    await send(done)
                    var part = itemIDEvent("response.content_part.done", index, output[index].id)
                    part.contentIndex = 0
                    part.part = .outputText(answer.text)
                    await send(part)
                    await send(itemEvent("response.output_item.done", index, output[index]))
                }
                if let refusal = answer.blocked {
                    let index = output.count
                    output.append(.message(id: Self.newID("msg_"), status: "completed", content: [.refusal(refusal)]))
                    await send(itemEvent("response.output_item.added", index, output[index]))
                    await send(itemEvent("response.output_item.done", index, output[index]))
                }
                if let index = openImage {
                    output[index].status = "failed"
                    await send(itemEvent("response.output_item.done", index, output[index]))
                }
                response.output = output
                if let failure {
                    response.status = "failed"
                    response.error = .init(code: failure.code ?? "server_error", message: failure.message)
                }
                do throws(GatewayError) {
                    try await controller.complete(
                        &response, answer: answer, delivered: delivered, textDelivered: !clientGone && failure == nil, job: job, settlement: settlement, logger: logger
                    )
                } catch {
                    failure = failure ?? error
                    response.status = "failed"
                    response.error = .init(code: error.code ?? "server_error", message: error.message)
                }
                // The last event carries every result again, as OpenAI's does.
                for index in response.output.indices {
                    if let image = delivered[response.output[index].id] { response.output[index].result = image.base64 }
                }
                var last = ResponseStreamEvent(failure != nil ? "response.failed" : response.status == "incomplete" ? "response.incomplete" : "response.completed")
                last.response = response
                await send(last)
                if !clientGone { try? await writer.finish(nil) }
                let outcome = clientGone ? GatewayError.clientDisconnected : failure
                await pipeline.settle(settlement, status: outcome?.status ?? 200, errorCode: outcome?.code, logger: logger)
            }
        )
    }
}
