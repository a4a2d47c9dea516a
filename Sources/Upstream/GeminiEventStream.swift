public import AsyncHTTPClient
import NanoGateCore
import Foundation
public import NIOCore
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

extension GeminiEventStream {
    /// A piece of the stream as `scan` hands it out.
    public enum Piece: Sendable {
        /// Image `index` (0-based within its event) begins.
        case imageBegin(index: Int)
        /// The next base64 text of the current image (a slice of what Google sent).
        case imageBytes(ByteBuffer)
        case imageEnd(index: Int)
        /// An event has ended: the whole event, with the `data` of every image handed out
        /// above emptied (a stream of one event in hand comes whole, its images in it).
        case event(GeminiWire.Response)
    }

    /// Hands out the stream as it arrives: each image's base64 in the pieces Google sent it in,
    /// never a whole image, and each event once it ended. Memory holds one piece and the event's
    /// skeleton (`GeminiAnswerScanner`). The same limits as `consume`: `deadline` for the whole
    /// stream, `maxEventBytes` for any one event, Google's mid-stream error thrown.
    public func scan(_ handle: @escaping @Sendable (Piece) async throws -> Void) async throws {
        let timeout = UpstreamError(.timeout, detail: "the stream did not finish in time")
        try await Deadline.run(until: deadline, orThrow: timeout) {
            guard let body else {
                if let single { try await handle(.event(single)) }
                return
            }
            var framer = EventFramer(maxEventBytes: maxEventBytes, redact: redact)
            for try await chunk in body {
                for piece in try framer.feed(chunk) { try await handle(piece) }
            }
            for piece in try framer.finish() { try await handle(piece) }
        }
    }

    /// SSE framing over `GeminiAnswerScanner`: the payload of `data:` lines goes to the event's
    /// scanner as it arrives, so a line of tens of MB is never held.
    struct EventFramer {
        enum Line {
            /// At the start of a line: its first bytes say which it is.
            case start
            case data
            case skipped
        }

        let maxEventBytes: Int
        let redact: @Sendable (String) -> String
        var line = Line.start
        var pending = ByteBuffer()
        var scanner = GeminiAnswerScanner()
        var eventBytes = 0
        /// Data lines of the current event so far (a second is joined to the first by a newline).
        var dataLines = 0
        /// The image of the current event being handed out, if any.
        var openImage: Int?

        init(maxEventBytes: Int, redact: @escaping @Sendable (String) -> String) {
            self.maxEventBytes = maxEventBytes
            self.redact = redact
        }

        mutating func feed(_ chunk: ByteBuffer) throws -> [Piece] {
            // The usual case, all of the last chunk handed on: the new one is used as it is (its
            // image pieces are slices of what AsyncHTTPClient read, never copied).
            if pending.readableBytes == 0 {
                pending = chunk
            } else {
                pending.writeImmutableBuffer(chunk)
            }
            var out: [Piece] = []
            while pending.readableBytes > 0 {
                let view = pending.readableBytesView
                switch line {
                case .start:
                    if view.first == UInt8(ascii: "\n") || (view.first == UInt8(ascii: "\r") && view.count >= 2 && view[view.startIndex + 1] == UInt8(ascii: "\n")) {
                        pending.moveReaderIndex(forwardBy: view.first == UInt8(ascii: "\n") ? 1 : 2)
                        try dispatch(into: &out)
                        continue
                    }
                    if view.first == UInt8(ascii: "\r"), view.count < 2 { return out }  // is it CRLF? wait for the next byte
                    let prefix = Array("data:".utf8)
                    let known = Swift.min(view.count, prefix.count)
                    if Array(view.prefix(known)) == Array(prefix.prefix(known)) {
                        guard view.count > prefix.count else { return out }  // the optional space decides the payload's start
                        pending.moveReaderIndex(forwardBy: prefix.count + (view[view.startIndex + prefix.count] == UInt8(ascii: " ") ? 1 : 0))
                        if dataLines > 0 { try scan(ByteBuffer(string: "\n"), into: &out) }
                        dataLines += 1
                        line = .data
                    } else {
                        line = .skipped
                    }
                case .data, .skipped:
                    let newline = pending.withUnsafeReadableBytes { bytes in
                        memchr(bytes.baseAddress!, Int32(UInt8(ascii: "\n")), bytes.count).map { UnsafeRawPointer(bytes.baseAddress!).distance(to: UnsafeRawPointer($0)) }
                    }
                    if let newline {
                        var content = pending.readSlice(length: newline)!
                        pending.moveReaderIndex(forwardBy: 1)
                        if content.readableBytesView.last == UInt8(ascii: "\r") { content.moveWriterIndex(to: content.writerIndex - 1) }
                        if line == .data { try scan(content, into: &out) }
                        line = .start
                    } else {
                        // The line goes on: hand over all of it but a last `\r` (perhaps a CRLF's half).
                        let keep = view.last == UInt8(ascii: "\r") ? 1 : 0
                        let content = pending.readSlice(length: view.count - keep)!
                        if line == .data { try scan(content, into: &out) }
                        return out
                    }
                }
            }
            return out
        }

        /// The stream ended: a last event without its blank line still counts.
        mutating func finish() throws -> [Piece] {
            var out: [Piece] = []
            if line == .data, pending.readableBytes > 0 {
                var rest = pending.readSlice(length: pending.readableBytes)!
                if rest.readableBytesView.last == UInt8(ascii: "\r") { rest.moveWriterIndex(to: rest.writerIndex - 1) }
                try scan(rest, into: &out)
            }
            try dispatch(into: &out)
            return out
        }

        private mutating func scan(_ content: ByteBuffer, into out: inout [Piece]) throws {
            eventBytes += content.readableBytes
            guard eventBytes <= maxEventBytes else { throw UpstreamError(.tooLarge, detail: "a streamed event was larger than \(maxEventBytes) bytes") }
            let events: [GeminiAnswerScanner.Event]
            do {
                events = try scanner.feed(content)
            } catch {
                throw UpstreamError(.unreadable, detail: "a streamed event could not be read")
            }
            for event in events {
                switch event {
                case .imageBegin(let index):
                    openImage = index
                    out.append(.imageBegin(index: index))
                case .imageBytes(let bytes): out.append(.imageBytes(bytes))
                case .imageEnd(let index):
                    openImage = nil
                    out.append(.imageEnd(index: index))
                }
            }
        }

        private mutating func dispatch(into out: inout [Piece]) throws {
            defer {
                scanner = GeminiAnswerScanner()
                eventBytes = 0
                dataLines = 0
                line = .start
            }
            guard dataLines > 0 else { return }
            guard openImage == nil, scanner.isComplete else { throw UpstreamError(.unreadable, detail: "a streamed event ended inside its JSON") }
            let response: GeminiWire.Response
            do {
                response = try SplicedJSON.decode(GeminiWire.Response.self, from: scanner.skeleton)
            } catch {
                throw UpstreamError(.unreadable, detail: "a streamed event could not be read")
            }
            if let status = response.error { throw GoogleErrors.midStream(status, redact: redact) }
            out.append(.event(response))
        }
    }
}
