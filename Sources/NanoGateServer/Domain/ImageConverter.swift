import CImageCodecs
import ExtrasBase64
import NanoGateCore
import NIOCore
import NIOPosix

/// Converts delivered images between PNG, JPEG and WebP with Debian's libpng and libjpeg-turbo
/// (and libwebp, loaded at run time when installed): `output_format` and `output_compression`.
///
/// Decoding and encoding a 4K image takes CPU-seconds, so it runs on the blocking thread pool,
/// never on Swift's cooperative threads.
struct ImageConverter: Sendable {
    let threadPool: NIOThreadPool

    /// Whether WebP output is possible on this machine (libwebp present).
    static var webpAvailable: Bool { ng_webp_available() == 1 }

    struct Converted: Sendable {
        var bytes: [UInt8]
        var base64: Base64Text
    }

    /// Width and height from the image's header (libpng, libjpeg, libwebp; PNG, JPEG, WebP),
    /// or nil when `bytes` (a prefix is enough when it holds the header) carry none of them.
    static func dimensions<Bytes: Collection<UInt8>>(of bytes: Bytes) -> PixelSize? {
        var width: Int32 = 0
        var height: Int32 = 0
        let status = Array(bytes).withUnsafeBufferPointer { ng_dimensions($0.baseAddress, $0.count, &width, &height) }
        return status == 0 && width > 0 && height > 0 ? PixelSize(Int(width), Int(height)) : nil
    }

    /// Google's base64 decoded and re-encoded as `format`, all on the blocking pool; `quality`
    /// 0–100 for JPEG and WebP (nil: the codec's default).
    func convert(base64: Base64Text, to format: OutputFormat, quality: Int?) async throws(GatewayError) -> Converted {
        let result: Result<Converted, GatewayError>
        do {
            result = try await threadPool.runIfActive {
                guard let bytes = SafeBase64.decode(base64.bytes.readableBytesView) else {
                    return .failure(.badGateway("Google returned an image the gateway could not decode."))
                }
                return Self.convertNow(bytes, to: format, quality: quality)
            }
        } catch {
            throw .unavailable("The gateway is shutting down.")
        }
        return try result.get()
    }

    /// The conversion itself, on the calling thread.
    static func convertNow(_ bytes: [UInt8], to format: OutputFormat, quality: Int?) -> Result<Converted, GatewayError> {
        let target: ng_format
        switch format {
        case .png: target = NG_FORMAT_PNG
        case .jpeg: target = NG_FORMAT_JPEG
        case .webp: target = NG_FORMAT_WEBP
        }
        var output = ng_buffer(data: nil, size: 0)
        var reason = [CChar](repeating: 0, count: 256)
        let status = bytes.withUnsafeBufferPointer { input in
            ng_convert(input.baseAddress, input.count, target, Int32(quality ?? -1), &output, &reason, reason.count)
        }
        defer { ng_buffer_free(&output) }
        guard status == 0, let data = output.data, output.size > 0 else {
            let text = String(decoding: reason.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            return .failure(.badGateway("The image Google returned could not be converted to \(format.rawValue)\(text.isEmpty ? "" : ": \(text)")."))
        }
        let converted = Array(UnsafeBufferPointer(start: data, count: output.size))
        let base64 = Base64.encodeToBytes(bytes: converted)
        var buffer = ByteBufferAllocator().buffer(capacity: base64.count)
        buffer.writeBytes(base64)
        return .success(Converted(bytes: converted, base64: Base64Text(bytes: buffer)))
    }
}
