import AsyncHTTPClient
import ExtrasBase64
import Foundation
import Logging
import NanoGateCore
import NanoGateStorage
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
#if canImport(Glibc)
import Glibc
#endif

/// Limits on what clients may upload, documented in the README.
///
/// | key (environment) | meaning | default |
/// |---|---|---|
/// | `NANOGATE_MAX_IMAGE_BYTES` | largest single input image | 20 MiB |
/// | `NANOGATE_MAX_REQUEST_BYTES` | largest edit or chat request body | 64 MiB |
/// | `NANOGATE_ALLOW_PRIVATE_FETCH` | let the gateway fetch image URLs on loopback/private addresses | off |
public struct InputLimits: Sendable {
    public var maxImageBytes: Int
    public var maxRequestBytes: Int
    /// Timeout for fetching a remote `https://` image.
    public var fetchTimeout: Duration
    /// Off by default: a client must not make the gateway reach its own network (SSRF).
    public var allowPrivateFetch: Bool

    public init(maxImageBytes: Int = 20 * 1024 * 1024, maxRequestBytes: Int = 64 * 1024 * 1024, fetchTimeout: Duration = .seconds(20), allowPrivateFetch: Bool = false) {
        self.maxImageBytes = maxImageBytes
        self.maxRequestBytes = maxRequestBytes
        self.fetchTimeout = fetchTimeout
        self.allowPrivateFetch = allowPrivateFetch
    }
}

/// Input MIME types Gemini accepts for images.
let acceptedInputTypes: Set<String> = ["image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"]

/// Turns what clients send as images (uploaded bytes, `data:` URLs, `https://` URLs, the
/// gateway's own signed URLs) into Gemini `inlineData`, with the MIME type sniffed from the bytes.
struct InputImageLoader: Sendable {
    let httpClient: HTTPClient
    let imageStore: ImageStore
    let signer: URLSigner
    let limits: InputLimits

    /// Uploaded bytes → `inlineData`; `param` names the part in errors (`image[2]`).
    func inline(bytes: ByteBuffer, param: String) throws(GatewayError) -> GeminiWire.InlineData {
        guard bytes.readableBytes > 0 else { throw .invalidParameter(param, "'\(param)' is empty.") }
        guard bytes.readableBytes <= limits.maxImageBytes else {
            throw GatewayError(status: 413, type: "invalid_request_error", code: "image_too_large", param: param, message: "'\(param)' is larger than the limit of \(limits.maxImageBytes) bytes per image.")
        }
        guard let mime = ImageSniffer.mimeType(of: bytes.readableBytesView), acceptedInputTypes.contains(mime) else {
            throw .invalidParameter(param, "'\(param)' is not a PNG, JPEG, WebP, HEIC or HEIF image.", code: "invalid_image_format")
        }
        return GeminiWire.InlineData(mimeType: mime, data: Base64Text(bytes: ByteBuffer(bytes: Base64.encodeToBytes(bytes: bytes.readableBytesView))))
    }

    /// A URL as OpenAI clients send it in `image_url`: a `data:` URL, one of our own signed URLs, or a remote `http(s)://` URL.
    func load(url: String, param: String, baseURLs: [String]) async throws(GatewayError) -> GeminiWire.InlineData {
        if url.hasPrefix("data:") {
            guard let comma = url.firstIndex(of: ","), url[..<comma].hasSuffix(";base64") else {
                throw .invalidParameter(param, "'\(param)' must be a base64 data URL (data:image/png;base64,…).")
            }
            let payload = url[url.index(after: comma)...]
            guard let bytes = try? Base64.decode(bytes: payload.utf8) else {
                throw .invalidParameter(param, "'\(param)' is not valid base64.")
            }
            return try inline(bytes: ByteBuffer(bytes: bytes), param: param)
        }
        if let local = try await ownImage(url: url, baseURLs: baseURLs, param: param) { return local }
        return try await fetch(url: url, param: param)
    }

    /// A URL this gateway signed: read from disk, no HTTP round trip (multi-turn chat sends them back).
    private func ownImage(url: String, baseURLs: [String], param: String) async throws(GatewayError) -> GeminiWire.InlineData? {
        guard let components = URLComponents(string: url), components.path.hasPrefix("/v1/files/images/"),
            baseURLs.contains(where: { url.hasPrefix($0 + "/v1/files/images/") })
        else { return nil }
        let name = String(components.path.dropFirst("/v1/files/images/".count))
        let items = components.queryItems ?? []
        guard let expires = items.first(where: { $0.name == "expires" })?.value.flatMap(Int.init),
            let signature = items.first(where: { $0.name == "signature" })?.value,
            signer.isValid(name: name, expires: expires, signature: signature),
            let path = imageStore.path(of: name), let data = FileManager.default.contents(atPath: path)
        else {
            throw .invalidParameter(param, "'\(param)' points to an image of this gateway that is no longer available (expired or invalid URL).")
        }
        return try inline(bytes: ByteBuffer(data: data), param: param)
    }

    private func fetch(url: String, param: String) async throws(GatewayError) -> GeminiWire.InlineData {
        guard let components = URLComponents(string: url), let scheme = components.scheme?.lowercased(), ["https", "http"].contains(scheme), let host = components.host, !host.isEmpty else {
            throw .invalidParameter(param, "'\(param)' must be a data: URL or an http(s) URL.")
        }
        if !limits.allowPrivateFetch {
            let addresses = AddressPolicy.resolve(host)
            guard !addresses.isEmpty else { throw .invalidParameter(param, "The host of '\(param)' could not be resolved.") }
            guard addresses.allSatisfy(AddressPolicy.isPublic) else {
                throw .invalidParameter(param, "'\(param)' points to a loopback, private or link-local address, which this gateway does not fetch.", code: "forbidden_url")
            }
        }
        do {
            var request = HTTPClientRequest(url: url)
            request.headers.add(name: "User-Agent", value: "NanoGate")
            let response = try await httpClient.execute(request, timeout: .init(limits.fetchTimeout))
            guard response.status == .ok else {
                throw GatewayError.invalidParameter(param, "Fetching '\(param)' failed with HTTP \(response.status.code).", code: "image_fetch_failed")
            }
            let body = try await response.body.collect(upTo: limits.maxImageBytes)
            return try inline(bytes: body, param: param)
        } catch let error as GatewayError {
            throw error
        } catch is NIOTooManyBytesError {
            throw GatewayError(status: 413, type: "invalid_request_error", code: "image_too_large", param: param, message: "'\(param)' is larger than the limit of \(limits.maxImageBytes) bytes per image.")
        } catch {
            throw .invalidParameter(param, "Fetching '\(param)' failed: \(error).", code: "image_fetch_failed")
        }
    }
}

/// Which addresses the gateway may fetch from on a client's behalf.
enum AddressPolicy {
    /// Every address the host resolves to (literal addresses resolve to themselves).
    static func resolve(_ host: String) -> [[UInt8]] {
        let bare = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(bare, nil, &hints, &result) == 0, let first = result else { return [] }
        defer { freeaddrinfo(first) }
        var addresses: [[UInt8]] = []
        var cursor: UnsafeMutablePointer<addrinfo>? = first
        while let info = cursor {
            if info.pointee.ai_family == AF_INET, let address = info.pointee.ai_addr {
                address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { pointer in
                    var ip = pointer.pointee.sin_addr
                    addresses.append(withUnsafeBytes(of: &ip) { Array($0) })
                }
            } else if info.pointee.ai_family == AF_INET6, let address = info.pointee.ai_addr {
                address.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { pointer in
                    var ip = pointer.pointee.sin6_addr
                    addresses.append(withUnsafeBytes(of: &ip) { Array($0) })
                }
            }
            cursor = info.pointee.ai_next
        }
        return addresses
    }

    /// False for loopback, private, link-local, carrier-grade NAT, unspecified and IPv6 ULA addresses.
    static func isPublic(_ ip: [UInt8]) -> Bool {
        if ip.count == 16 {
            if ip[0..<10].allSatisfy({ $0 == 0 }) && ip[10] == 0xFF && ip[11] == 0xFF { return isPublic(Array(ip[12...])) }  // v4-mapped
            if ip.allSatisfy({ $0 == 0 }) || (ip[0..<15].allSatisfy { $0 == 0 } && ip[15] == 1) { return false }  // :: and ::1
            if ip[0] & 0xFE == 0xFC { return false }  // fc00::/7
            if ip[0] == 0xFE && ip[1] & 0xC0 == 0x80 { return false }  // fe80::/10
            return true
        }
        guard ip.count == 4 else { return false }
        switch (ip[0], ip[1]) {
        case (0, _), (10, _), (127, _): return false
        case (169, 254): return false
        case (172, 16...31): return false
        case (192, 168): return false
        case (100, 64...127): return false
        default: return ip[0] < 224  // multicast and reserved
        }
    }
}
