import Foundation
public import NIOCore

/// Reads a `generateContent` answer as it arrives, in pieces of any size, and passes every
/// image's base64 through as it comes (`Event.imageBytes`, slices of the pieces it was given)
/// while keeping the rest of the answer — text, thought flags and signatures, finish reasons,
/// usage — as a small "skeleton": the same JSON with each image's `data` emptied, for
/// `GeminiWire.Response` to decode at the end. Memory holds the skeleton and one piece, never
/// an image (issue 24: images stream through).
///
/// It tracks only what it needs — strings (with their escapes), keys, and the key each object
/// was opened under — and leaves checking the JSON to the decoder that reads the skeleton. An
/// image is the string value of `data` in an object opened under `inlineData` (or
/// `inline_data`). Base64 needs no escapes; `\/` (a lawful spelling of `/`) is unescaped, any
/// other escape inside image data is refused, as are answers nested deeper than `maxDepth` or
/// whose skeleton outgrows `maxSkeletonBytes` (the answer is untrusted).
public struct GeminiAnswerScanner {
    public enum Event: Equatable {
        /// Image `index` (0-based, in document order) begins.
        case imageBegin(index: Int)
        /// The next base64 text of the current image.
        case imageBytes(ByteBuffer)
        /// The current image's base64 has ended.
        case imageEnd(index: Int)
    }

    public enum ScanError: Error, Equatable {
        /// An escape other than `\/` inside an image's base64.
        case escapeInImage
        case tooDeep
        case skeletonTooLarge
        /// A closing bracket with nothing open (an answer that ends early shows in `isComplete`,
        /// and in a skeleton that does not decode).
        case malformed
    }

    public let maxDepth: Int
    public let maxSkeletonBytes: Int

    /// The answer so far without its images' base64.
    public private(set) var skeleton = ByteBuffer()
    /// Images begun so far.
    public private(set) var imageCount = 0

    private struct Container {
        var isObject: Bool
        /// The key this container is the value of (nil in an array, or at the root).
        var openedUnder: [UInt8]?
        /// In an object: the next string is a key.
        var expectsKey: Bool
    }

    private enum StringKind {
        case key
        case value
        case image
    }

    private var stack: [Container] = []
    /// The last key read in the innermost object (what the next value belongs to).
    private var lastKey: [UInt8] = []
    private var inString: StringKind?
    private var escaped = false
    private var keyBytes: [UInt8] = []

    private static let imageParents: [[UInt8]] = [Array("inlineData".utf8), Array("inline_data".utf8)]
    private static let dataKey = Array("data".utf8)
    /// Keys longer than this are kept only in part (none of the ones that matter is).
    private static let maxKeyBytes = 64

    public init(maxDepth: Int = 64, maxSkeletonBytes: Int = 4 * 1024 * 1024) {
        self.maxDepth = maxDepth
        self.maxSkeletonBytes = maxSkeletonBytes
    }

    /// Reads the next piece of the answer; answers what it held, in order.
    public mutating func feed(_ piece: ByteBuffer) throws(ScanError) -> [Event] {
        var events: [Event] = []
        let bytes = piece.readableBytesView
        let base = bytes.startIndex
        /// Where the current run of bytes bound for the skeleton (or for the image) began.
        var runStart = base
        var index = base
        while index < bytes.endIndex {
            if inString == .image, !escaped {
                // Base64 holds neither quotes nor backslashes: jump to the next one (memchr)
                // instead of looking at every byte of the image.
                guard let next = Self.nextQuoteOrBackslash(in: piece, from: index - base) else { break }
                index = base + next
            }
            let byte = bytes[index]
            if let kind = inString {
                if kind == .image {
                    if escaped {
                        guard byte == UInt8(ascii: "/") else { throw .escapeInImage }
                        escaped = false
                        events.append(.imageBytes(ByteBuffer(string: "/")))
                        runStart = index + 1
                    } else if byte == UInt8(ascii: "\\") {
                        if index > runStart { events.append(.imageBytes(slice(of: piece, from: runStart, to: index, base: base))) }
                        escaped = true
                        runStart = index + 1
                    } else if byte == UInt8(ascii: "\"") {
                        if index > runStart { events.append(.imageBytes(slice(of: piece, from: runStart, to: index, base: base))) }
                        events.append(.imageEnd(index: imageCount - 1))
                        inString = nil
                        // The closing quote goes to the skeleton: `"data":""`.
                        runStart = index
                    }
                    index += 1
                    continue
                }
                if escaped {
                    escaped = false
                    if kind == .key { appendKeyByte(byte) }
                } else if byte == UInt8(ascii: "\\") {
                    escaped = true
                } else if byte == UInt8(ascii: "\"") {
                    inString = nil
                    if kind == .key {
                        lastKey = keyBytes
                        if !stack.isEmpty { stack[stack.count - 1].expectsKey = false }
                    }
                } else if kind == .key {
                    appendKeyByte(byte)
                }
                index += 1
                continue
            }
            switch byte {
            case UInt8(ascii: "\""):
                if let top = stack.last, top.isObject, top.expectsKey {
                    inString = .key
                    keyBytes.removeAll(keepingCapacity: true)
                } else if lastKey == Self.dataKey, let top = stack.last, top.isObject, let parent = top.openedUnder, Self.imageParents.contains(parent) {
                    // The opening quote goes to the skeleton; the base64 after it does not.
                    try keep(piece, from: runStart, through: index, base: base)
                    runStart = index + 1
                    inString = .image
                    events.append(.imageBegin(index: imageCount))
                    imageCount += 1
                } else {
                    inString = .value
                }
            case UInt8(ascii: "{"), UInt8(ascii: "["):
                guard stack.count < maxDepth else { throw .tooDeep }
                let inObject = stack.last?.isObject ?? false
                stack.append(Container(isObject: byte == UInt8(ascii: "{"), openedUnder: inObject ? lastKey : nil, expectsKey: byte == UInt8(ascii: "{")))
                lastKey = []
            case UInt8(ascii: "}"), UInt8(ascii: "]"):
                guard stack.popLast() != nil else { throw .malformed }
                lastKey = []
            case UInt8(ascii: ","):
                if let top = stack.last, top.isObject { stack[stack.count - 1].expectsKey = true }
            default:
                break
            }
            index += 1
        }
        if inString == .image {
            if bytes.endIndex > runStart { events.append(.imageBytes(slice(of: piece, from: runStart, to: bytes.endIndex, base: base))) }
        } else {
            try keep(piece, from: runStart, through: bytes.endIndex - 1, base: base)
        }
        return events
    }

    /// Whether the answer has ended where a whole JSON value ends.
    public var isComplete: Bool { stack.isEmpty && inString == nil && !skeleton.readableBytesView.isEmpty }

    /// The offset (from the readable start) of the first `"` or `\\` at or after `offset`.
    private static func nextQuoteOrBackslash(in piece: ByteBuffer, from offset: Int) -> Int? {
        piece.withUnsafeReadableBytes { raw -> Int? in
            guard offset < raw.count, let base = raw.baseAddress else { return nil }
            let start = base + offset
            let length = raw.count - offset
            let quote = memchr(start, Int32(UInt8(ascii: "\"")), length).map { start.distance(to: UnsafeRawPointer($0)) }
            let backslash = memchr(start, Int32(UInt8(ascii: "\\")), quote ?? length).map { start.distance(to: UnsafeRawPointer($0)) }
            return (backslash ?? quote).map { offset + $0 }
        }
    }

    /// `piece`'s bytes `start..<end` (view indices), without copying.
    private func slice(of piece: ByteBuffer, from start: Int, to end: Int, base: Int) -> ByteBuffer {
        piece.getSlice(at: piece.readerIndex + (start - base), length: end - start)!
    }

    private mutating func appendKeyByte(_ byte: UInt8) {
        if keyBytes.count < Self.maxKeyBytes { keyBytes.append(byte) }
    }

    /// Copies `piece`'s bytes `start...end` (view indices) into the skeleton.
    private mutating func keep(_ piece: ByteBuffer, from start: Int, through end: Int, base: Int) throws(ScanError) {
        guard end >= start else { return }
        let length = end - start + 1
        guard skeleton.readableBytes + length <= maxSkeletonBytes else { throw .skeletonTooLarge }
        var slice = piece.getSlice(at: piece.readerIndex + (start - base), length: length)!
        skeleton.writeBuffer(&slice)
    }
}
