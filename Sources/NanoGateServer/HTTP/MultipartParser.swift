import NIOCore

/// A streaming `multipart/form-data` reader (RFC 7578, RFC 2046 §5.1): bytes arrive in chunks
/// of any size, each part's headers are reported once whole, its body as it comes.
///
/// NanoGate's own because MultipartKit 4's parser traps (indexes a 128-entry table) on a
/// header-name byte ≥ 0x80, which any client could send to crash the gateway (found by
/// `FuzzTests`). This one refuses such input with `MultipartSyntaxError`, keeps memory bounded
/// (a part's body is handed on, never buffered whole; headers are capped at 16 KiB), and ends
/// with an error for a body cut short before its closing delimiter.
final class MultipartStreamParser {
    var onHeader: (String, String) -> Void = { _, _ in }
    var onBody: (inout ByteBuffer) -> Void = { _ in }
    var onPartComplete: () -> Void = {}

    /// `--boundary`: the first delimiter; every later one is preceded by CRLF.
    private let dashBoundary: [UInt8]
    private let delimiter: [UInt8]
    private var pending = ByteBuffer()
    private var state = State.preamble
    static let maxHeaderBytes = 16 * 1024

    private enum State {
        case preamble
        case afterDelimiter
        case headers
        case body
        case epilogue
    }

    init(boundary: String) {
        dashBoundary = Array("--\(boundary)".utf8)
        delimiter = Array("\r\n--\(boundary)".utf8)
    }

    /// Whether the closing delimiter (`--boundary--`) has been read.
    var isComplete: Bool {
        if case .epilogue = state { return true }
        return false
    }

    func execute(_ chunk: ByteBuffer) throws(MultipartSyntaxError) {
        var chunk = chunk
        if case .epilogue = state { return }
        pending.writeBuffer(&chunk)
        while try step() {}
        if pending.readerIndex > 64 * 1024 { pending.discardReadBytes() }
    }

    /// Checks the input ended where a form may end.
    func finish() throws(MultipartSyntaxError) {
        guard isComplete else { throw MultipartSyntaxError(reason: "the body ended before its closing boundary") }
    }

    /// One move of the state machine; false when more bytes are needed.
    private func step() throws(MultipartSyntaxError) -> Bool {
        let view = pending.readableBytesView
        switch state {
        case .preamble:
            // The first delimiter may open the body or follow a preamble line.
            if let at = Self.find(dashBoundary, in: view) {
                pending.moveReaderIndex(forwardBy: at + dashBoundary.count)
                state = .afterDelimiter
                return true
            }
            // Keep what could be the start of a delimiter.
            let keep = dashBoundary.count - 1
            if view.count > keep { pending.moveReaderIndex(forwardBy: view.count - keep) }
            return false
        case .afterDelimiter:
            guard view.count >= 2 else { return false }
            let first = view[view.startIndex], second = view[view.startIndex + 1]
            if first == UInt8(ascii: "-"), second == UInt8(ascii: "-") {
                state = .epilogue
                pending.moveReaderIndex(forwardBy: view.count)
                return false
            }
            // Transport padding (spaces, tabs) may sit before the line's CRLF.
            var index = view.startIndex
            while index < view.endIndex, view[index] == UInt8(ascii: " ") || view[index] == UInt8(ascii: "\t") { index += 1 }
            guard index + 1 < view.endIndex else {
                if view.count > 256 { throw MultipartSyntaxError(reason: "a boundary line is not followed by CRLF") }
                return false
            }
            guard view[index] == UInt8(ascii: "\r"), view[index + 1] == UInt8(ascii: "\n") else {
                throw MultipartSyntaxError(reason: "a boundary line is not followed by CRLF")
            }
            pending.moveReaderIndex(forwardBy: index + 2 - view.startIndex)
            state = .headers
            return true
        case .headers:
            // Headers end at an empty line: CRLF right away (no headers) or CRLF CRLF.
            let end: Int
            let skip: Int
            if view.starts(with: [13, 10]) {
                end = 0
                skip = 2
            } else if let at = Self.find([13, 10, 13, 10], in: view) {
                end = at
                skip = 4
            } else {
                if view.count > Self.maxHeaderBytes { throw MultipartSyntaxError(reason: "a part's headers are longer than 16 KiB") }
                return false
            }
            if end > 0 {
                let block = view[view.startIndex..<(view.startIndex + end)]
                for line in block.split(separator: 10, omittingEmptySubsequences: true) {
                    let line = line.last == 13 ? line.dropLast() : line
                    guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon > line.startIndex else {
                        throw MultipartSyntaxError(reason: "a part header has no name")
                    }
                    let name = line[line.startIndex..<colon]
                    guard name.allSatisfy(Self.isTokenByte) else { throw MultipartSyntaxError(reason: "a part header's name is not a token") }
                    let value = line[(colon + 1)...].drop { $0 == 32 || $0 == 9 }
                    onHeader(String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self))
                }
            }
            pending.moveReaderIndex(forwardBy: end + skip)
            state = .body
            return true
        case .body:
            if let at = Self.find(delimiter, in: view) {
                if at > 0, var body = pending.readSlice(length: at) { onBody(&body) }
                pending.moveReaderIndex(forwardBy: delimiter.count)
                onPartComplete()
                state = .afterDelimiter
                return true
            }
            // Hand on everything that cannot be the start of a delimiter.
            let safe = view.count - (delimiter.count - 1)
            if safe > 0, var body = pending.readSlice(length: safe) { onBody(&body) }
            return false
        case .epilogue:
            pending.moveReaderIndex(forwardBy: view.count)
            return false
        }
    }

    /// The offset of `needle` in `haystack`, found by its first byte (memchr-like scan, then compare).
    static func find(_ needle: [UInt8], in haystack: ByteBufferView) -> Int? {
        guard let first = needle.first, haystack.count >= needle.count else { return nil }
        var index = haystack.startIndex
        let last = haystack.endIndex - needle.count
        while index <= last {
            guard let candidate = haystack[index...last].firstIndex(of: first) else { return nil }
            if haystack[candidate..<(candidate + needle.count)].elementsEqual(needle) { return candidate - haystack.startIndex }
            index = candidate + 1
        }
        return nil
    }

    /// RFC 9110 token characters.
    static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"): true
        default: "!#$%&'*+-.^_`|~".utf8.contains(byte)
        }
    }
}

/// A `multipart/form-data` body that does not parse.
struct MultipartSyntaxError: Error {
    var reason: String
}
