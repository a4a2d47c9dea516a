import AsyncHTTPClient
import ExtrasBase64
import Foundation
import Logging
import NanoGateCore
import Upstream
import NanoGateStorage
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import NIOPosix
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Limits on what clients may upload or make the gateway fetch, documented in the README.
///
/// | key (environment) | meaning | default |
/// |---|---|---|
/// | `NANOGATE_MAX_IMAGE_BYTES` | largest single input image | 20 MiB |
/// | `NANOGATE_MAX_REQUEST_BYTES` | largest edit or chat request body | 64 MiB |
/// | `NANOGATE_ALLOW_PRIVATE_FETCH` | let the gateway fetch image URLs on loopback/private addresses | off |
/// | `NANOGATE_FETCH_ALLOW_NETWORKS` | comma-separated CIDRs fetched although private (an internal CDN) | none |
/// | `NANOGATE_ALLOW_HTTP_FETCH` | fetch `http://` image URLs too (else `https://` only) | off |
/// | `NANOGATE_FETCH_TIMEOUT` | seconds one image fetch may take, body included | 20 |
/// | `NANOGATE_MAX_FETCHES` | image fetches in flight across the gateway | 32 |
public struct InputLimits: Sendable {
    public var maxImageBytes: Int
    public var maxRequestBytes: Int
    /// Time one remote image may take, from connecting to its last byte.
    public var fetchTimeout: Duration
    /// Off by default: a client must not make the gateway reach its own network (SSRF).
    public var allowPrivateFetch: Bool
    /// Private networks the operator lets the gateway fetch from all the same.
    public var allowedNetworks: [IPNetwork]
    /// Off by default: plain-HTTP images can be altered on the way, and `http://` is the usual SSRF vector.
    public var allowPlainHTTP: Bool
    /// Image fetches in flight across the gateway; more are refused with a 503 until one ends.
    public var maxConcurrentFetches: Int

    public init(
        maxImageBytes: Int = 20 * 1024 * 1024, maxRequestBytes: Int = 64 * 1024 * 1024, fetchTimeout: Duration = .seconds(20),
        allowPrivateFetch: Bool = false, allowedNetworks: [IPNetwork] = [], allowPlainHTTP: Bool = false, maxConcurrentFetches: Int = 32
    ) {
        self.maxImageBytes = maxImageBytes
        self.maxRequestBytes = maxRequestBytes
        self.fetchTimeout = fetchTimeout
        self.allowPrivateFetch = allowPrivateFetch
        self.allowedNetworks = allowedNetworks
        self.allowPlainHTTP = allowPlainHTTP
        self.maxConcurrentFetches = max(1, maxConcurrentFetches)
    }
}

/// Input MIME types Gemini accepts for images.
let acceptedInputTypes: Set<String> = ["image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"]

/// A blocking host look-up: every address `host` resolves to (raw 4- or 16-byte addresses).
public typealias HostLookup = @Sendable (String) -> [[UInt8]]

/// The system resolver (`getaddrinfo`).
public let systemHostLookup: HostLookup = { AddressPolicy.resolve($0) }

/// Runs a blocking look-up on a thread pool of its own: `getaddrinfo` blocks for as long as DNS
/// takes, and on Swift's cooperative threads (one per core) a few slow look-ups would freeze
/// every request of the gateway.
struct ThreadPoolResolver: Sendable {
    let threadPool: NIOThreadPool
    let lookup: HostLookup

    func addresses(of host: String) async throws -> [[UInt8]] {
        let lookup = self.lookup
        return try await threadPool.runIfActive { lookup(host) }
    }

    /// The one address to connect to for `host`, when every address it resolves to is allowed
    /// by `limits` (public, or in an allowed network, or private fetches are on). IPv4 first:
    /// the connection goes to exactly one checked address, and servers that listen on one
    /// family only mostly listen on IPv4. Image fetches and webhooks share this policy.
    func checkedAddress(of host: String, limits: InputLimits, param: String) async throws(GatewayError) -> [UInt8] {
        let addresses: [[UInt8]]
        if let literal = AddressPolicy.literal(host) {
            addresses = [literal]
        } else {
            addresses = (try? await self.addresses(of: host)) ?? []
        }
        guard let address = addresses.first(where: { $0.count == 4 }) ?? addresses.first else {
            throw .invalidParameter(param, "The host of '\(param)' could not be resolved.", code: "image_fetch_failed")
        }
        if !limits.allowPrivateFetch {
            guard addresses.allSatisfy({ ip in AddressPolicy.isPublic(ip) || limits.allowedNetworks.contains { $0.contains(ip) } }) else {
                throw .invalidParameter(param, "'\(param)' points to a loopback, private or reserved address, which this gateway does not fetch.", code: "forbidden_url")
            }
        }
        return address
    }
}

/// Turns what clients send as images (uploaded bytes, `data:` URLs, `https://` URLs, the
/// gateway's own signed URLs) into Gemini `inlineData`, with the MIME type sniffed from the bytes.
///
/// Remote URLs are fetched under a strict policy: the host is resolved once, off the
/// concurrency pool, every address must be public (or in an allowed network), the connection
/// goes to the address that was checked (no second look-up to rebind), no redirect is followed,
/// the whole fetch is bounded in time and size, and a failure says nothing about what was there.
struct InputImageLoader: Sendable {
    /// Where this gateway's own images are (the folder or the bucket): an answer's URL sent
    /// back is read from there, not fetched.
    let images: any ImageRepository
    let limits: InputLimits
    let resolver: ThreadPoolResolver
    let fetchSlots: FetchSlots

    init(images: any ImageRepository, limits: InputLimits, resolver: ThreadPoolResolver) {
        self.images = images
        self.limits = limits
        self.resolver = resolver
        self.fetchSlots = FetchSlots(limit: limits.maxConcurrentFetches)
    }

    /// Uploaded bytes → `inlineData`; `param` names the part in errors (`image[2]`).
    func inline(bytes: ByteBuffer, param: String) throws(GatewayError) -> GeminiWire.InlineData {
        guard bytes.readableBytes > 0 else { throw .invalidParameter(param, "'\(param)' is empty.") }
        guard bytes.readableBytes <= limits.maxImageBytes else { throw .imageTooLarge(param, limitBytes: limits.maxImageBytes) }
        guard let mime = ImageSniffer.mimeType(of: bytes.readableBytesView), acceptedInputTypes.contains(mime) else {
            throw .invalidParameter(param, "'\(param)' is not a PNG, JPEG, WebP, HEIC or HEIF image.", code: "invalid_image_format")
        }
        return GeminiWire.InlineData(mimeType: mime, data: Base64Text(bytes: ByteBuffer(bytes: Base64.encodeToBytes(bytes: bytes.readableBytesView))))
    }

    /// A URL as OpenAI clients send it in `image_url`: a `data:` URL, one of our own signed URLs, or a remote `https://` URL.
    func load(url: String, param: String, baseURLs: [String]) async throws(GatewayError) -> GeminiWire.InlineData {
        if url.hasPrefix("data:") {
            guard let comma = url.firstIndex(of: ","), url[..<comma].hasSuffix(";base64") else {
                throw .invalidParameter(param, "'\(param)' must be a base64 data URL (data:image/png;base64,…).")
            }
            let payload = url[url.index(after: comma)...]
            guard let bytes = SafeBase64.decode(payload.utf8) else {
                throw .invalidParameter(param, "'\(param)' is not valid base64.")
            }
            return try inline(bytes: ByteBuffer(bytes: bytes), param: param)
        }
        // An answer's URL sent back (multi-turn chat): read from the store, whichever instance
        // wrote it, rather than fetched (a bucket may be on a private network). Only with its
        // signature checked and unexpired: the read uses the gateway's own access.
        switch images.ownImage(url: url, baseURLs: baseURLs, now: Date()) {
        case .notOurs:
            break
        case .invalid:
            throw Self.ownImageUnavailable(param)
        case .valid(let name):
            let bytes: [UInt8]?
            do { bytes = try await images.load(name: name) } catch { bytes = nil }
            guard let bytes else { throw Self.ownImageUnavailable(param) }
            return try inline(bytes: ByteBuffer(bytes: bytes), param: param)
        }
        return try await fetch(url: url, param: param)
    }

    /// A URL of this gateway's images that is unsigned, expired, or whose image is gone.
    static func ownImageUnavailable(_ param: String) -> GatewayError {
        .invalidParameter(param, "'\(param)' points to an image of this gateway that is no longer available (expired or invalid URL).")
    }

    private func fetch(url: String, param: String) async throws(GatewayError) -> GeminiWire.InlineData {
        let allowed = limits.allowPlainHTTP ? ["https", "http"] : ["https"]
        guard let components = URLComponents(string: url), let scheme = components.scheme?.lowercased(), allowed.contains(scheme),
            let rawHost = components.host, !rawHost.isEmpty
        else {
            throw .invalidParameter(param, "'\(param)' must be a data: URL or an \(limits.allowPlainHTTP ? "http(s)" : "https") URL.")
        }
        guard fetchSlots.acquire() else {
            throw .unavailable("The gateway is fetching too many images at once; retry shortly or send the image as a data: URL.", code: "fetch_capacity", retryAfterSeconds: 1)
        }
        defer { fetchSlots.release() }

        let host = rawHost.hasPrefix("[") && rawHost.hasSuffix("]") ? String(rawHost.dropFirst().dropLast()) : rawHost
        let address = try await resolver.checkedAddress(of: host, limits: limits, param: param)

        // A client of its own per fetch: it connects to the address checked above (the host name
        // is kept for TLS and the Host header) and never follows a redirect.
        var configuration = HTTPClient.Configuration()
        configuration.redirectConfiguration = .disallow
        configuration.timeout = .init(connect: .init(limits.fetchTimeout), read: .init(limits.fetchTimeout))
        configuration.dnsOverride = [host: AddressPolicy.text(address)]
        // One address, one attempt: a refused connection fails now, not at the deadline.
        configuration.connectionPool.retryConnectionEstablishment = false
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        let maxBytes = limits.maxImageBytes
        let outcome: Result<ByteBuffer, GatewayError>
        do {
            let body = try await Deadline.run(until: .now.advanced(by: limits.fetchTimeout), orThrow: GatewayError.imageFetchFailed(param, "it did not arrive within \(limits.fetchTimeout)")) {
                var request = HTTPClientRequest(url: url)
                request.headers.add(name: "User-Agent", value: "NanoGate")
                let response = try await client.execute(request, timeout: .init(self.limits.fetchTimeout))
                guard response.status == .ok else { throw GatewayError.imageFetchFailed(param) }
                return try await response.body.collect(upTo: maxBytes)
            }
            outcome = .success(body)
        } catch let error as GatewayError {
            outcome = .failure(error)
        } catch is NIOTooManyBytesError {
            outcome = .failure(.imageTooLarge(param, limitBytes: maxBytes))
        } catch {
            outcome = .failure(.imageFetchFailed(param))
        }
        try? await client.shutdown()
        return try inline(bytes: outcome.get(), param: param)
    }
}

/// A count of image fetches in flight, refused past `limit`.
final class FetchSlots: Sendable {
    private let inFlight = Mutex(0)
    let limit: Int

    init(limit: Int) { self.limit = limit }

    /// Takes a slot if one is free.
    func acquire() -> Bool {
        inFlight.withLock { count in
            guard count < limit else { return false }
            count += 1
            return true
        }
    }

    func release() { inFlight.withLock { $0 -= 1 } }
}

/// An address range in CIDR notation (`10.1.0.0/16`, `fd00::/8`).
public struct IPNetwork: Sendable, Equatable {
    let address: [UInt8]
    let prefixLength: Int

    /// Parses `a.b.c.d/n` or `x:y::/n` (a bare address is a /32 or /128).
    public init?(_ text: String) {
        let pieces = text.trimmingCharacters(in: .whitespaces).split(separator: "/", maxSplits: 1).map(String.init)
        guard let first = pieces.first, let address = AddressPolicy.literal(first) else { return nil }
        let length = pieces.count == 2 ? Int(pieces[1]) : address.count * 8
        guard let length, (0...(address.count * 8)).contains(length) else { return nil }
        self.address = address
        self.prefixLength = length
    }

    /// Whether `ip` lies in this network.
    public func contains(_ ip: [UInt8]) -> Bool {
        guard ip.count == address.count else { return false }
        var remaining = prefixLength
        for index in 0..<ip.count where remaining > 0 {
            let bits = min(8, remaining)
            let mask = UInt8(truncatingIfNeeded: 0xFF << (8 - bits))
            if ip[index] & mask != address[index] & mask { return false }
            remaining -= bits
        }
        return true
    }
}

/// Which addresses the gateway may fetch from on a client's behalf.
enum AddressPolicy {
    /// The bytes of an IPv4 or IPv6 literal, or nil for a host name.
    static func literal(_ text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 { return withUnsafeBytes(of: &v4) { Array($0) } }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 { return withUnsafeBytes(of: &v6) { Array($0) } }
        return nil
    }

    /// The textual form of an address (for connecting to exactly it).
    static func text(_ ip: [UInt8]) -> String {
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        let family = ip.count == 4 ? AF_INET : AF_INET6
        _ = ip.withUnsafeBytes { inet_ntop(family, $0.baseAddress, &buffer, socklen_t(buffer.count)) }
        return String(cString: buffer)
    }

    /// Every address the host resolves to (blocking: call it off the concurrency pool).
    static func resolve(_ host: String) -> [[UInt8]] {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, nil, &hints, &result) == 0, let first = result else { return [] }
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

    /// True only for globally routable unicast addresses. False for loopback, private,
    /// link-local, carrier-grade NAT, benchmarking (198.18.0.0/15), IETF protocol assignments
    /// (192.0.0.0/24), documentation, multicast and reserved IPv4; for IPv6 the same plus ULA,
    /// site-local, multicast, Teredo, documentation, and any IPv6 form that embeds an IPv4
    /// address (mapped, compatible, NAT64, 6to4), which is judged by the IPv4 address inside.
    static func isPublic(_ ip: [UInt8]) -> Bool {
        if ip.count == 16 { return isPublicV6(ip) }
        guard ip.count == 4 else { return false }
        switch (ip[0], ip[1], ip[2]) {
        case (0, _, _), (10, _, _), (127, _, _): return false
        case (169, 254, _): return false
        case (172, 16...31, _): return false
        case (192, 168, _): return false
        case (100, 64...127, _): return false
        case (192, 0, 0), (192, 0, 2): return false
        case (198, 18...19, _): return false
        case (198, 51, 100), (203, 0, 113): return false
        default: return ip[0] < 224  // multicast (224/4) and reserved (240/4)
        }
    }

    private static func isPublicV6(_ ip: [UInt8]) -> Bool {
        let embedded = Array(ip[12...])
        if ip[0..<10].allSatisfy({ $0 == 0 }) && ip[10] == 0xFF && ip[11] == 0xFF { return isPublic(embedded) }  // ::ffff:a.b.c.d
        if ip[0..<12].allSatisfy({ $0 == 0 }) { return false }  // ::, ::1 and IPv4-compatible ::a.b.c.d (deprecated)
        if ip[0..<12].elementsEqual([0x00, 0x64, 0xFF, 0x9B, 0, 0, 0, 0, 0, 0, 0, 0]) { return isPublic(embedded) }  // NAT64 64:ff9b::/96
        if ip[0] == 0x00 && ip[1] == 0x64 && ip[2] == 0xFF && ip[3] == 0x9B { return false }  // local-use NAT64 64:ff9b:1::/48
        if ip[0] == 0x20 && ip[1] == 0x02 { return isPublic(Array(ip[2..<6])) }  // 6to4 2002::/16
        if ip[0] == 0x20 && ip[1] == 0x01 && ip[2] == 0x00 && ip[3] == 0x00 { return false }  // Teredo 2001::/32
        if ip[0] == 0x20 && ip[1] == 0x01 && ip[2] == 0x0D && ip[3] == 0xB8 { return false }  // documentation 2001:db8::/32
        if ip[0] & 0xFE == 0xFC { return false }  // ULA fc00::/7
        if ip[0] == 0xFE && ip[1] & 0xC0 == 0x80 { return false }  // link-local fe80::/10
        if ip[0] == 0xFE && ip[1] & 0xC0 == 0xC0 { return false }  // site-local fec0::/10
        if ip[0] == 0xFF { return false }  // multicast ff00::/8
        return ip[0] & 0xE0 == 0x20  // global unicast is 2000::/3; everything else is reserved
    }
}
