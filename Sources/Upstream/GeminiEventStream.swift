public import AsyncHTTPClient
import NanoGateCore
import Foundation
import NIOCore
import NIOFoundationCompat

/// The events of `streamGenerateContent?alt=sse`, each a whole `GenerateContentResponse`.
///
/// Lines have no length limit (a 4K image is tens of MB in one `data:` line); memory holds one
/// event at a time, bounded by `maxEventBytes`. CRLF and LF framing both work; comments and
/// other fields are skipped; Gemini sends no `[DONE]`, the stream just ends.
public struct GeminiEventStream: AsyncSequence, Sendable {
    public typealias Element = GeminiWire.Response

    /// Google's SSE body, or nil for a stream of one event already in hand (`single`).
    let body: HTTPClientResponse.Body?
    let single: GeminiWire.Response?
    let maxEventBytes: Int
    /// When the whole stream must have ended (the request timeout, counted from the call).
    public let deadline: ContinuousClock.Instant
    let redact: @Sendable (String) -> String

    public init(body: HTTPClientResponse.Body, maxEventBytes: Int, deadline: ContinuousClock.Instant = .now.advanced(by: .seconds(300)), redact: @escaping @Sendable (String) -> String = { $0 }) {
        self.body = body
        self.single = nil
        self.maxEventBytes = maxEventBytes
        self.deadline = deadline
        self.redact = redact
    }

    /// A stream of one event: an upstream that answers whole (an OpenAI-compatible channel).
    public init(single response: GeminiWire.Response, deadline: ContinuousClock.Instant) {
        self.body = nil
        self.single = response
        self.maxEventBytes = 0
        self.deadline = deadline
        self.redact = { $0 }
    }

    public func makeAsyncIterator() -> Iterator {
        Iterator(chunks: body?.makeAsyncIterator(), single: single, maxEventBytes: maxEventBytes, redact: redact)
    }

    /// Hands every event to `handle`, in order, and throws a timeout `UpstreamError` if the
    /// stream has not ended by `deadline` (a Google that sends its head and then stalls would
    /// otherwise hold the request forever: AsyncHTTPClient's own deadline ends at the head).
    public func consume(_ handle: @escaping @Sendable (GeminiWire.Response) async throws -> Void) async throws {
        let timeout = UpstreamError(.timeout, detail: "the stream did not finish in time")
        try await Deadline.run(until: deadline, orThrow: timeout) {
            for try await event in self { try await handle(event) }
        }
    }

    public struct Iterator: AsyncIteratorProtocol {
        var chunks: HTTPClientResponse.Body.AsyncIterator?
        var single: GeminiWire.Response?
        let maxEventBytes: Int
        let redact: @Sendable (String) -> String
        var buffer = ByteBuffer()
        /// Bytes of `buffer` already searched for a newline (so a long line is scanned once).
        var scanned = 0
        var event = ByteBuffer()
        var ended = false

        init(chunks: HTTPClientResponse.Body.AsyncIterator?, single: GeminiWire.Response?, maxEventBytes: Int, redact: @escaping @Sendable (String) -> String) {
            self.chunks = chunks
            self.single = single
            self.maxEventBytes = maxEventBytes
            self.redact = redact
        }

        public mutating func next() async throws -> GeminiWire.Response? {
            guard chunks != nil else {
                defer { single = nil }
                return single
            }
            while true {
                while let line = nextLine() {
                    if line.readableBytes == 0 {
                        if let response = try dispatch() { return response }
                    } else if line.readableBytesView.starts(with: Array("data:".utf8)) {
                        var payload = line
                        payload.moveReaderIndex(forwardBy: 5)
                        if payload.readableBytesView.first == UInt8(ascii: " ") { payload.moveReaderIndex(forwardBy: 1) }
                        if event.readableBytes > 0 {
                            event.writeInteger(UInt8(ascii: "\n"))
                            event.writeImmutableBuffer(payload)
                        } else {
                            event = payload  // the usual one-line event: a slice, no copy
                        }
                    }
                }
                if ended { return try dispatch() }
                guard var chunk = try await chunks?.next() else {
                    ended = true
                    // A last line without a newline still counts.
                    if buffer.readableBytes > 0 { buffer.writeInteger(UInt8(ascii: "\n")) }
                    continue
                }
                buffer.writeBuffer(&chunk)
                guard buffer.readableBytes + event.readableBytes <= maxEventBytes else {
                    throw UpstreamError(.tooLarge, detail: "a streamed event was larger than \(maxEventBytes) bytes")
                }
            }
        }

        /// The next complete line without its line ending, or nil when more bytes are needed.
        mutating func nextLine() -> ByteBuffer? {
            let view = buffer.readableBytesView
            guard let newline = view[(view.startIndex + scanned)...].firstIndex(of: UInt8(ascii: "\n")) else {
                scanned = view.count
                return nil
            }
            var line = buffer.readSlice(length: newline - view.startIndex)!
            buffer.moveReaderIndex(forwardBy: 1)
            scanned = 0
            if line.readableBytesView.last == UInt8(ascii: "\r") { line = line.getSlice(at: line.readerIndex, length: line.readableBytes - 1)! }
            if buffer.readerIndex > 1024 * 1024 { buffer.discardReadBytes() }
            return line
        }

        mutating func dispatch() throws -> GeminiWire.Response? {
            guard event.readableBytes > 0 else { return nil }
            defer { event = ByteBuffer() }
            let response: GeminiWire.Response
            do {
                response = try SplicedJSON.decode(GeminiWire.Response.self, from: event)
            } catch {
                throw UpstreamError(.unreadable, detail: "a streamed event could not be read")
            }
            // `{"error":{…}}` inside the stream: Google failed after it started answering.
            if let status = response.error { throw GoogleErrors.midStream(status, redact: redact) }
            return response
        }
    }
}
