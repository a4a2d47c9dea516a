public import Foundation
public import NIOCore
import NIOFoundationCompat

/// Base64 text kept as bytes, so images move from Google's answer to the client's without being
/// decoded, re-encoded or copied into Swift strings.
///
/// Through `SplicedJSON` it encodes and decodes as a placeholder that is swapped for the bytes
/// outside the JSON coder (JSON coders are slow on multi-megabyte strings); through a plain
/// `JSONEncoder`/`JSONDecoder` it is an ordinary string.
public struct Base64Text: Codable, Sendable, Equatable, CustomStringConvertible {
    /// The base64 characters (ASCII), no quotes.
    public var bytes: ByteBuffer

    public init(bytes: ByteBuffer) { self.bytes = bytes }
    public init(_ string: String) { self.bytes = ByteBuffer(string: string) }

    /// The text as a String (a copy; avoid on the hot path).
    public var string: String { String(buffer: bytes) }
    public var count: Int { bytes.readableBytes }
    public var description: String { "Base64Text(\(bytes.readableBytes) bytes)" }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        if let registry = decoder.userInfo[SplicedJSON.registryKey] as? SplicedJSON.Registry, let slice = registry.slice(for: text) {
            self.bytes = slice
        } else {
            self.bytes = ByteBuffer(string: text)
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        if let registry = encoder.userInfo[SplicedJSON.registryKey] as? SplicedJSON.Registry {
            try container.encode(registry.token(for: bytes))
        } else {
            try container.encode(string)
        }
    }
}

/// JSON coding that keeps large base64 strings out of the JSON coder.
public enum SplicedJSON {
    static let registryKey = CodingUserInfoKey(rawValue: "nanogate.splice")!
    /// Strings shorter than this go through the coder as usual.
    static let minimumSpliced = 4096

    /// Placeholders and the bytes they stand for, for one encode or decode.
    final class Registry: @unchecked Sendable {
        /// A per-process nonce, so no client text can look like a placeholder.
        static let nonce = (0..<4).map { _ in String(UInt32.random(in: .min ... .max), radix: 16) }.joined()
        var slices: [ByteBuffer] = []

        func token(for bytes: ByteBuffer) -> String {
            slices.append(bytes)
            return "@@ngsplice-\(Self.nonce)-\(slices.count - 1)@@"
        }

        func slice(for token: String) -> ByteBuffer? {
            let prefix = "@@ngsplice-\(Self.nonce)-"
            guard token.hasPrefix(prefix), token.hasSuffix("@@"), let index = Int(token.dropFirst(prefix.count).dropLast(2)), slices.indices.contains(index) else { return nil }
            return slices[index]
        }
    }

    /// Encodes `value`, returning the JSON as pieces: JSON text and `Base64Text` bytes in order,
    /// ready to be written one after the other (or joined).
    public static func encode(_ value: some Encodable, encoder: JSONEncoder = JSONEncoder()) throws -> [ByteBuffer] {
        let registry = Registry()
        encoder.userInfo[registryKey] = registry
        encoder.outputFormatting.insert(.withoutEscapingSlashes)
        let json = try encoder.encode(value)
        guard !registry.slices.isEmpty else { return [ByteBuffer(data: json)] }
        // Placeholders may come out in any order (keys are not ordered), so find each one by
        // its prefix and read its number.
        let prefix = Data("@@ngsplice-\(Registry.nonce)-".utf8)
        let suffix = Data("@@".utf8)
        var pieces: [ByteBuffer] = []
        var rest = json[...]
        while let start = rest.firstRange(of: prefix),
            let end = rest[start.upperBound...].firstRange(of: suffix),
            let index = Int(String(decoding: rest[start.upperBound..<end.lowerBound], as: UTF8.self)),
            registry.slices.indices.contains(index)
        {
            pieces.append(ByteBuffer(data: rest[..<start.lowerBound]))
            pieces.append(registry.slices[index])
            rest = rest[end.upperBound...]
        }
        pieces.append(ByteBuffer(data: rest))
        return pieces
    }

    /// The pieces of `encode` joined into one buffer.
    public static func encodeJoined(_ value: some Encodable, encoder: JSONEncoder = JSONEncoder()) throws -> ByteBuffer {
        let pieces = try encode(value, encoder: encoder)
        var joined = ByteBuffer()
        joined.reserveCapacity(pieces.reduce(0) { $0 + $1.readableBytes })
        for piece in pieces { joined.writeImmutableBuffer(piece) }
        return joined
    }

    /// Decodes `type` from `buffer`, first lifting every long `"data"` string out of the JSON as a
    /// zero-copy slice of `buffer` (found with memchr, honouring escapes and string boundaries).
    public static func decode<T: Decodable>(_ type: T.Type, from buffer: ByteBuffer) throws -> T {
        let registry = Registry()
        let ranges = largeDataStrings(in: buffer)
        let decoder = JSONDecoder()
        decoder.userInfo[registryKey] = registry
        guard !ranges.isEmpty else { return try decoder.decode(type, from: Data(buffer: buffer, byteTransferStrategy: .noCopy)) }
        var small = ByteBuffer()
        small.reserveCapacity(buffer.readableBytes - ranges.reduce(0) { $0 + $1.count } + ranges.count * 48)
        var cursor = 0
        for range in ranges {
            small.writeBytes(buffer.readableBytesView[(buffer.readerIndex + cursor)..<(buffer.readerIndex + range.lowerBound)])
            small.writeString(registry.token(for: buffer.getSlice(at: buffer.readerIndex + range.lowerBound, length: range.count)!))
            cursor = range.upperBound
        }
        small.writeBytes(buffer.readableBytesView[(buffer.readerIndex + cursor)...])
        return try decoder.decode(type, from: Data(buffer: small, byteTransferStrategy: .noCopy))
    }

    /// Offsets (relative to the reader index) of the contents of string values of `"data"` keys
    /// that are long and contain no escapes.
    static func largeDataStrings(in buffer: ByteBuffer) -> [Range<Int>] {
        buffer.withUnsafeReadableBytes { raw -> [Range<Int>] in
            guard let base = raw.baseAddress?.assumingMemoryBound(to: UInt8.self) else { return [] }
            let count = raw.count
            var found: [Range<Int>] = []
            var index = 0
            var previousStringWasDataKey = false
            let quote = UInt8(ascii: "\""), backslash = UInt8(ascii: "\\")
            while index < count {
                let byte = base[index]
                guard byte == quote else {
                    index += 1
                    continue
                }
                // A string starts: find its closing quote with memchr, skipping escaped quotes.
                let start = index + 1
                var end = start
                var hasEscape = false
                while true {
                    guard let hit = memchr(base + end, Int32(quote), count - end) else { return found }
                    let position = base.distance(to: hit.assumingMemoryBound(to: UInt8.self))
                    var backslashes = 0
                    while position - backslashes - 1 >= start && base[position - backslashes - 1] == backslash { backslashes += 1 }
                    if backslashes % 2 == 0 {
                        end = position
                        break
                    }
                    end = position + 1
                }
                hasEscape = end > start && memchr(base + start, Int32(backslash), end - start) != nil
                // Is it a key? The next non-space byte is a colon.
                var next = end + 1
                while next < count, base[next] == 0x20 || base[next] == 0x0A || base[next] == 0x0D || base[next] == 0x09 { next += 1 }
                let isKey = next < count && base[next] == UInt8(ascii: ":")
                if isKey {
                    previousStringWasDataKey = end - start == 4 && base[start] == UInt8(ascii: "d") && base[start + 1] == UInt8(ascii: "a") && base[start + 2] == UInt8(ascii: "t") && base[start + 3] == UInt8(ascii: "a")
                } else {
                    if previousStringWasDataKey && !hasEscape && end - start >= minimumSpliced {
                        found.append(start..<end)
                    }
                    previousStringWasDataKey = false
                }
                index = end + 1
            }
            return found
        }
    }
}

/// A JSON string made of text and raw byte pieces (base64 payloads), so a `data:` URL or a
/// Markdown image holding one never copies the payload into a Swift String.
public struct SplicedString: Encodable, Sendable, Equatable, ExpressibleByStringLiteral {
    public enum Piece: Sendable, Equatable {
        /// Ordinary text, escaped by the JSON coder.
        case text(String)
        /// Bytes that need no JSON escaping (base64, URL-safe ASCII), spliced in as they are.
        case raw(ByteBuffer)
    }

    public var pieces: [Piece]

    public init(_ pieces: [Piece]) { self.pieces = pieces }
    public init(_ text: String) { self.pieces = [.text(text)] }
    public init(stringLiteral value: String) { self.pieces = [.text(value)] }

    public var isEmpty: Bool {
        pieces.allSatisfy {
            switch $0 {
            case .text(let text): text.isEmpty
            case .raw(let bytes): bytes.readableBytes == 0
            }
        }
    }

    /// The whole string (a copy; for tests and small values).
    public var string: String {
        pieces.map {
            switch $0 {
            case .text(let text): text
            case .raw(let bytes): String(buffer: bytes)
            }
        }.joined()
    }

    public static func + (lhs: SplicedString, rhs: SplicedString) -> SplicedString {
        SplicedString(lhs.pieces + rhs.pieces)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        guard let registry = encoder.userInfo[SplicedJSON.registryKey] as? SplicedJSON.Registry else {
            try container.encode(string)
            return
        }
        try container.encode(pieces.map {
            switch $0 {
            case .text(let text): text
            case .raw(let bytes): registry.token(for: bytes)
            }
        }.joined())
    }
}
