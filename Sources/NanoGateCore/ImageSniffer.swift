/// Recognises image bytes by their magic numbers (Gemini sometimes labels JPEG bytes `image/png`).
public enum ImageSniffer {
    /// The MIME type of the bytes, or nil for anything that is not PNG, JPEG, WebP, GIF or HEIC/HEIF.
    public static func mimeType<Bytes: Collection<UInt8>>(of bytes: Bytes) -> String? {
        let head = Array(bytes.prefix(16))
        if head.starts(with: [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]) { return "image/png" }
        if head.starts(with: [0xFF, 0xD8, 0xFF]) { return "image/jpeg" }
        if head.count >= 12, head[0..<4].elementsEqual(Array("RIFF".utf8)), head[8..<12].elementsEqual(Array("WEBP".utf8)) { return "image/webp" }
        if head.starts(with: Array("GIF8".utf8)) { return "image/gif" }
        if head.count >= 12, head[4..<8].elementsEqual(Array("ftyp".utf8)) {
            let brand = String(decoding: head[8..<12], as: UTF8.self)
            if ["heic", "heix", "hevc", "heim", "heis"].contains(brand) { return "image/heic" }
            if ["mif1", "msf1"].contains(brand) { return "image/heif" }
        }
        return nil
    }

    /// File extension for a sniffed MIME type.
    public static func fileExtension(for mimeType: String) -> String {
        switch mimeType {
        case "image/png": "png"
        case "image/jpeg": "jpg"
        case "image/webp": "webp"
        case "image/gif": "gif"
        case "image/heic": "heic"
        case "image/heif": "heif"
        default: "bin"
        }
    }
}
