import AsyncAlgorithms
import Logging
import NanoGateCore
import NIOCore
import Upstream

/// What a streamed answer's writing loop waits for: the next upstream event, the end, a
/// failure, or a keep-alive tick (chat and the Responses API alike).
enum UpstreamStreamItem: Sendable {
    case event(GeminiWire.Response)
    /// An image's base64 as it arrives (chat's `chunkedImages`): its start, its pieces, its end.
    case imageBegin
    case imageBytes(ByteBuffer)
    case imageEnd
    case finished
    case failed(GatewayError)
    case tick
}

/// Google's stream for one answer, begun: the call, once its head came within the wait.
struct UpstreamStream: Sendable {
    let call: Task<Result<GeminiEventStream, GatewayError>, Never>

    /// Starts Google's stream and waits up to `interval` for its head. Google may hold the head
    /// until its first event is ready (a 4K image can take a minute): a failure within the
    /// wait is thrown (the request settled with it) and becomes a plain HTTP error; after it the
    /// caller's SSE answer starts, with keep-alives, and later errors arrive as its events.
    static func start(
        _ request: GeminiWire.Request, size: ImageSize?, pipeline: RequestPipeline, settlement: Settlement, within interval: Duration, logger: Logger
    ) async throws(GatewayError) -> UpstreamStream {
        let call = Task { () -> Result<GeminiEventStream, GatewayError> in
            do throws(GatewayError) {
                return .success(try await pipeline.stream(request, size: size, settlement: settlement, logger: logger))
            } catch {
                return .failure(error)
            }
        }
        let early = await withTaskCancellationHandler {
            await Deadline.firstOf({ await call.value }, orNilAfter: interval)
        } onCancel: {
            call.cancel()
        }
        if case .failure(let error) = early {
            await pipeline.settle(settlement, status: error.status, errorCode: error.code, logger: logger)
            throw error
        }
        return UpstreamStream(call: call)
    }

    /// Sends the stream into `channel`: whole events, or with `pieces` each event as it is
    /// scanned (images piece by piece); then `.finished`, or `.failed` with the error. The
    /// channel suspends this reader until the writer took the previous item, so at most one
    /// event (one image) is held. Cancelling the calling task cancels Google's stream.
    func forward(into channel: AsyncChannel<UpstreamStreamItem>, pieces: ImagePieceGatherer? = nil) async {
        do {
            let events: GeminiEventStream
            switch await withTaskCancellationHandler(operation: { await call.value }, onCancel: { call.cancel() }) {
            case .success(let stream): events = stream
            case .failure(let error): throw error
            }
            if let pieces {
                try await events.scan { piece in await pieces.forward(piece) }
                await pieces.flush()
            } else {
                try await events.consume { event in await channel.send(.event(event)) }
            }
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

    func cancel() { call.cancel() }

    /// Reads the rest of the stream without writing it (the client left after it received
    /// something): the last usage Google reports (so the charge is Google's), and a failure if
    /// the stream broke. Bounded by the stream's own deadline.
    static func drain(_ channel: AsyncChannel<UpstreamStreamItem>) async -> (usage: GeminiWire.UsageMetadata?, failure: GatewayError?) {
        var usage: GeminiWire.UsageMetadata?
        for await item in channel {
            switch item {
            case .event(let event): if let reported = event.usageMetadata { usage = reported }
            case .tick, .imageBegin, .imageBytes, .imageEnd: continue
            case .finished: return (usage, nil)
            case .failed(let error): return (usage, error)
            }
        }
        return (usage, nil)
    }
}
