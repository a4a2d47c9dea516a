import CZlib

/// Writes real PNG files (8-bit RGB, zlib-compressed) so clients can decode what the emulator returns.
enum PNGEncoder {
    /// A picture of `width`×`height` pixels: a colour gradient with fine noise, so that the file
    /// is about as large as a real photo of that size (a 1K image is ~1.5 MB).
    static func photoLike(width: Int, height: Int, seed: UInt64 = 0x9E37_79B9_7F4A_7C15) -> [UInt8] {
        var raw = [UInt8](repeating: 0, count: (width * 3 + 1) * height)
        var state = seed
        raw.withUnsafeMutableBufferPointer { buffer in
            var offset = 0
            for y in 0..<height {
                buffer[offset] = 0  // filter: none
                offset += 1
                let green = UInt8(truncatingIfNeeded: (y * 255) / max(1, height - 1))
                for x in 0..<width {
                    // xorshift noise in the low bits keeps the file from compressing to nothing.
                    state ^= state << 13
                    state ^= state >> 7
                    state ^= state << 17
                    let noise = UInt8(truncatingIfNeeded: state) & 0x0F
                    buffer[offset] = UInt8(truncatingIfNeeded: (x * 255) / max(1, width - 1)) ^ noise
                    buffer[offset + 1] = green ^ (noise >> 1)
                    buffer[offset + 2] = 0x80 ^ UInt8(truncatingIfNeeded: state >> 8) & 0x0F
                    offset += 3
                }
            }
        }
        return encode(width: width, height: height, rawScanlines: raw)
    }

    static func encode(width: Int, height: Int, rawScanlines: [UInt8]) -> [UInt8] {
        var png: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
        var header: [UInt8] = []
        header.appendBigEndian(UInt32(width))
        header.appendBigEndian(UInt32(height))
        header += [8, 2, 0, 0, 0]  // bit depth 8, colour type RGB, deflate, no filter, no interlace
        appendChunk("IHDR", header, to: &png)
        appendChunk("IDAT", deflate(rawScanlines), to: &png)
        appendChunk("IEND", [], to: &png)
        return png
    }

    private static func deflate(_ input: [UInt8]) -> [UInt8] {
        var destinationLength = compressBound(uLong(input.count))
        var output = [UInt8](repeating: 0, count: Int(destinationLength))
        let status = output.withUnsafeMutableBufferPointer { out in
            input.withUnsafeBufferPointer { source in
                compress2(out.baseAddress, &destinationLength, source.baseAddress, uLong(input.count), 1)
            }
        }
        precondition(status == Z_OK, "zlib compress2 failed: \(status)")
        output.removeSubrange(Int(destinationLength)...)
        return output
    }

    private static func appendChunk(_ type: String, _ data: [UInt8], to png: inout [UInt8]) {
        png.appendBigEndian(UInt32(data.count))
        let typed = Array(type.utf8) + data
        png += typed
        let checksum = typed.withUnsafeBufferPointer { crc32(0, $0.baseAddress, uInt($0.count)) }
        png.appendBigEndian(UInt32(checksum))
    }

    /// Width and height from a PNG's IHDR, or nil if the bytes are not a PNG.
    static func dimensions<Bytes: Collection<UInt8>>(of bytes: Bytes) -> (width: Int, height: Int)? {
        let head = Array(bytes.prefix(24))
        guard head.count == 24, head.starts(with: [0x89, 0x50, 0x4E, 0x47]) else { return nil }
        func int(_ at: Int) -> Int { head[at..<at + 4].reduce(0) { $0 << 8 | Int($1) } }
        return (int(16), int(20))
    }
}

extension [UInt8] {
    mutating func appendBigEndian(_ value: UInt32) {
        append(contentsOf: [UInt8(value >> 24), UInt8(value >> 16 & 0xFF), UInt8(value >> 8 & 0xFF), UInt8(value & 0xFF)])
    }
}
