public import AsyncHTTPClient
public import NanoGateCore
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

    let body: HTTPClientResponse.Body
    let maxEventBytes: Int

    public init(body: HTTPClientResponse.Body, maxEventBytes: Int) {
        self.body = body
        self.maxEventBytes = maxEventBytes
    }

    public func makeAsyncIterator() -> Iterator {
        Iterator(chunks: body.makeAsyncIterator(), maxEventBytes: maxEventBytes)
    }

    public struct Iterator: AsyncIteratorProtocol {
        var chunks: HTTPClientResponse.Body.AsyncIterator
        let maxEventBytes: Int
        var buffer = ByteBuffer()
        /// Bytes of `buffer` already searched for a newline (so a long line is scanned once).
        var scanned = 0
        var event = ByteBuffer()
        var ended = false

        init(chunks: HTTPClientResponse.Body.AsyncIterator, maxEventBytes: Int) {
            self.chunks = chunks
            self.maxEventBytes = maxEventBytes
        }

        public mutating func next() async throws -> GeminiWire.Response? {
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
                guard var chunk = try await chunks.next() else {
                    ended = true
                    // A last line without a newline still counts.
                    if buffer.readableBytes > 0 { buffer.writeInteger(UInt8(ascii: "\n")) }
                    continue
                }
                buffer.writeBuffer(&chunk)
                guard buffer.readableBytes + event.readableBytes <= maxEventBytes else {
                    throw GatewayError.badGateway("A streamed event from Google was larger than \(maxEventBytes) bytes.")
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
            do {
                return try SplicedJSON.decode(GeminiWire.Response.self, from: event)
            } catch {
                if let envelope = try? JSONDecoder().decode(GeminiWire.ErrorEnvelope.self, from: event) {
                    throw GatewayError.badGateway("Google failed mid-stream: \(envelope.error.message ?? "no message")")
                }
                throw GatewayError.badGateway("Google sent a streamed event the gateway could not read.")
            }
        }
    }
}
