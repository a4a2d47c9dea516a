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

    /// `bytes` re-encoded as `format`; `quality` 0–100 for JPEG and WebP (nil: the codec's default).
    func convert(_ bytes: [UInt8], to format: OutputFormat, quality: Int?) async throws(GatewayError) -> Converted {
        let result: Result<Converted, GatewayError>
        do {
            result = try await threadPool.runIfActive { Self.convertNow(bytes, to: format, quality: quality) }
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
