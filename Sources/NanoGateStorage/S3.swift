public import AsyncHTTPClient
import Crypto
public import Foundation
import NanoGateCore
public import Logging
import NIOCore
import NIOHTTP1

/// An access key pair for AWS Signature Version 4 and, for temporary credentials (STS, an
/// instance role), the session token that has to travel with every request.
public struct S3Credentials: Sendable, Equatable, CustomStringConvertible {
    public var accessKeyID: String
    public var secretAccessKey: String
    public var sessionToken: String?

    public init(accessKeyID: String, secretAccessKey: String, sessionToken: String? = nil) {
        self.accessKeyID = accessKeyID
        self.secretAccessKey = secretAccessKey
        self.sessionToken = sessionToken
    }

    /// Names the key only: credentials interpolated into a log line must not leak the secret.
    public var description: String { "S3Credentials(accessKeyID: \(accessKeyID), secret: <redacted>)" }
}

/// AWS Signature Version 4 (`AWS4-HMAC-SHA256`), pure and deterministic: the time is an argument,
/// so the signatures AWS publishes for its examples are reproduced exactly by the tests.
///
/// Paths are encoded once (S3's rule; other services encode twice, which this signer does not do),
/// keeping `/`; query names and values are encoded with `/` too and sorted by name, then value.
public struct SigV4Signer: Sendable {
    public let credentials: S3Credentials
    public let region: String
    public let service: String

    public init(credentials: S3Credentials, region: String, service: String = "s3") {
        self.credentials = credentials
        self.region = region
        self.service = service
    }

    /// The payload hash of a presigned URL: its body is whatever the holder sends.
    public static let unsignedPayload = "UNSIGNED-PAYLOAD"
    /// The longest validity S3 accepts for a presigned URL (seven days).
    public static let maximumExpiry = 604_800
    /// The algorithm name opening the string to sign and the `Authorization` value.
    static let algorithm = "AWS4-HMAC-SHA256"

    /// The URL with the signature in its query (`X-Amz-Algorithm`, `-Credential`, `-Date`,
    /// `-Expires`, `-SignedHeaders`, `-Security-Token` when there is one, `-Signature` last).
    /// `host` is always signed; `headers` adds others the holder must then send. `expires` is
    /// clamped to 1…604800 seconds rather than producing a URL S3 would refuse.
    public func presignedURL(method: String, url: URL, expires: Int, date: Date, headers: [(String, String)] = []) -> URL {
        let target = SigningTarget(url)
        let signedNames = Set(headers.map { $0.0.lowercased() }).union(["host"]).sorted().joined(separator: ";")
        var query = target.query
        query.append(("X-Amz-Algorithm", Self.algorithm))
        query.append(("X-Amz-Credential", "\(credentials.accessKeyID)/\(scope(date))"))
        query.append(("X-Amz-Date", Self.timestamp(date)))
        query.append(("X-Amz-Expires", String(min(max(expires, 1), Self.maximumExpiry))))
        query.append(("X-Amz-SignedHeaders", signedNames))
        if let token = credentials.sessionToken { query.append(("X-Amz-Security-Token", token)) }
        let canonicalQuery = Self.canonicalQuery(query)
        let request = Self.canonicalRequest(
            method: method, target: target, canonicalQuery: canonicalQuery, headers: headers, payloadHash: Self.unsignedPayload
        )
        let hexSignature = signature(stringToSign: stringToSign(canonicalRequest: request.text, date: date), date: date)
        let text = "\(target.scheme)://\(target.host)\(target.path)?\(canonicalQuery)&X-Amz-Signature=\(hexSignature)"
        // Every part comes from a parsed URL or is percent-encoded to unreserved characters.
        guard let signed = URL(string: text) else { preconditionFailure("a presigned form of a valid URL is a valid URL") }
        return signed
    }

    /// The headers to add for header-based authentication: `x-amz-date`, `x-amz-content-sha256`,
    /// `x-amz-security-token` (temporary credentials) and `Authorization`. Every header in
    /// `headers` is signed, and `host` (from the URL unless given).
    public func sign(method: String, url: URL, headers: [(String, String)], payloadSHA256: String, date: Date) -> [(String, String)] {
        var added = [("x-amz-date", Self.timestamp(date)), ("x-amz-content-sha256", payloadSHA256)]
        if let token = credentials.sessionToken { added.append(("x-amz-security-token", token)) }
        let request = Self.canonicalRequest(method: method, url: url, headers: headers + added, payloadHash: payloadSHA256)
        let hexSignature = signature(stringToSign: stringToSign(canonicalRequest: request.text, date: date), date: date)
        let credential = "\(credentials.accessKeyID)/\(scope(date))"
        added.append(("Authorization", "\(Self.algorithm) Credential=\(credential), SignedHeaders=\(request.signedHeaders), Signature=\(hexSignature)"))
        return added
    }

    /// Step 1 of the algorithm: the canonical request, and the `SignedHeaders` list it names.
    /// `host` is added from the URL when `headers` has none.
    public static func canonicalRequest(method: String, url: URL, headers: [(String, String)], payloadHash: String) -> (text: String, signedHeaders: String) {
        let target = SigningTarget(url)
        return canonicalRequest(method: method, target: target, canonicalQuery: canonicalQuery(target.query), headers: headers, payloadHash: payloadHash)
    }

    /// The canonical request of a parsed target whose query is already canonical.
    static func canonicalRequest(
        method: String, target: SigningTarget, canonicalQuery: String, headers: [(String, String)], payloadHash: String
    ) -> (text: String, signedHeaders: String) {
        var values: [String: [String]] = [:]
        for (name, value) in headers {
            // Trimmed, inner runs of spaces collapsed; repeated names joined with commas.
            values[name.lowercased(), default: []].append(value.split(whereSeparator: { $0 == " " || $0 == "\t" }).joined(separator: " "))
        }
        if values["host"] == nil { values["host"] = [target.host] }
        let names = values.keys.sorted()
        let canonicalHeaders = names.map { "\($0):\(values[$0, default: []].joined(separator: ","))\n" }.joined()
        let signedHeaders = names.joined(separator: ";")
        let text = [method, target.path, canonicalQuery, canonicalHeaders, signedHeaders, payloadHash].joined(separator: "\n")
        return (text, signedHeaders)
    }

    /// Step 2: what the signing key signs.
    public func stringToSign(canonicalRequest: String, date: Date) -> String {
        [Self.algorithm, Self.timestamp(date), scope(date), Self.sha256Hex(Array(canonicalRequest.utf8))].joined(separator: "\n")
    }

    /// Step 3: HMAC chained over the day, region, service and `aws4_request`.
    public func signingKey(date: Date) -> [UInt8] {
        var key = Array("AWS4\(credentials.secretAccessKey)".utf8)
        for part in [String(Self.timestamp(date).prefix(8)), region, service, "aws4_request"] {
            key = Array(HMAC<SHA256>.authenticationCode(for: Array(part.utf8), using: SymmetricKey(data: key)))
        }
        return key
    }

    /// Step 4: the signature, lower-case hex.
    public func signature(stringToSign: String, date: Date) -> String {
        let key = SymmetricKey(data: signingKey(date: date))
        return Self.hex(HMAC<SHA256>.authenticationCode(for: Array(stringToSign.utf8), using: key))
    }

    /// The credential scope: `20130524/us-east-1/s3/aws4_request`.
    func scope(_ date: Date) -> String { "\(Self.timestamp(date).prefix(8))/\(region)/\(service)/aws4_request" }

    /// `20130524T000000Z`: ISO 8601 basic format in UTC, computed without a locale or formatter.
    public static func timestamp(_ date: Date) -> String {
        let total = Int(date.timeIntervalSince1970.rounded(.down))
        var (dayCount, second) = total.quotientAndRemainder(dividingBy: 86_400)
        if second < 0 { (dayCount, second) = (dayCount - 1, second + 86_400) }
        let (year, month, day) = civilDate(days: dayCount)
        func two(_ value: Int) -> String { value < 10 ? "0\(value)" : "\(value)" }
        return "\(year)\(two(month))\(two(day))T\(two(second / 3600))\(two(second / 60 % 60))\(two(second % 60))Z"
    }

    /// The lower-case hex SHA-256 of the bytes (`x-amz-content-sha256` of a signed payload).
    public static func sha256Hex(_ bytes: [UInt8]) -> String { hex(SHA256.hash(data: bytes)) }

    /// AWS's URI encoding: A–Z a–z 0–9 `-` `_` `.` `~` kept, every other UTF-8 byte as `%XX`
    /// (upper case); `/` kept only when asked (object key paths).
    public static func uriEncode(_ text: String, keepingSlash: Bool = false) -> String {
        let digits = Array("0123456789ABCDEF".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(text.utf8.count)
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "~"):
                out.append(byte)
            case UInt8(ascii: "/") where keepingSlash:
                out.append(byte)
            default:
                out += [UInt8(ascii: "%"), digits[Int(byte >> 4)], digits[Int(byte & 0x0F)]]
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Decoded name–value pairs encoded and sorted by encoded name, then value.
    static func canonicalQuery(_ pairs: [(String, String)]) -> String {
        pairs.map { (uriEncode($0.0), uriEncode($0.1)) }.sorted { ($0.0, $0.1) < ($1.0, $1.1) }
            .map { "\($0.0)=\($0.1)" }.joined(separator: "&")
    }

    /// Lower-case hex of a digest or MAC.
    static func hex(_ bytes: some Sequence<UInt8>) -> String { bytes.lowercaseHex }

    /// Year, month, day of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
    static func civilDate(days: Int) -> (Int, Int, Int) {
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let shiftedMonth = (5 * dayOfYear + 2) / 153
        let month = shiftedMonth < 10 ? shiftedMonth + 3 : shiftedMonth - 9
        return (yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month, dayOfYear - (153 * shiftedMonth + 2) / 5 + 1)
    }

    /// Days since 1970-01-01 of a civil date (H. Hinnant's `days_from_civil`).
    static func days(year: Int, month: Int, day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1
        return era * 146_097 + yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear - 719_468
    }
}

/// The parts of a URL a signature covers: the `Host` value (port only when not the scheme's
/// default, as AsyncHTTPClient sends it), the canonical path, and the decoded query pairs.
struct SigningTarget {
    var scheme: String
    var host: String
    var path: String
    var query: [(String, String)]

    init(_ url: URL) {
        let components = URLComponents(url: url, resolvingAgainstBaseURL: true) ?? URLComponents()
        scheme = components.scheme?.lowercased() ?? "https"
        var host = components.percentEncodedHost ?? ""
        if host.contains(":") && !host.hasPrefix("[") { host = "[\(host)]" }
        if let port = components.port, port != (scheme == "http" ? 80 : 443) { host += ":\(port)" }
        self.host = host
        func decode(_ part: Substring) -> String { String(part).removingPercentEncoding ?? String(part) }
        let rawPath = components.percentEncodedPath
        path = rawPath.isEmpty
            ? "/" : rawPath.split(separator: "/", omittingEmptySubsequences: false).map { SigV4Signer.uriEncode(decode($0)) }.joined(separator: "/")
        query = (components.percentEncodedQuery ?? "").split(separator: "&").map { item in
            let parts = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            return (decode(parts[0]), parts.count > 1 ? decode(parts[1]) : "")
        }
    }
}

/// Why `NANOGATE_IMAGE_STORE=s3://…` and the `AWS_*` settings cannot be used.
public enum S3ConfigurationError: Error, Equatable, CustomStringConvertible {
    case notAnS3URL(String)
    case invalidBucket(String)
    case invalidRegion(String)
    case invalidEndpoint(variable: String)
    case missingCredentials(missing: [String])

    public var description: String {
        switch self {
        case .notAnS3URL(let value): "The image store \"\(value)\" is not of the form s3://BUCKET or s3://BUCKET/PREFIX."
        case .invalidBucket(let bucket): "\"\(bucket)\" is not a valid S3 bucket name (3 to 63 lower-case letters, digits, dots and hyphens)."
        case .invalidRegion(let region): "\"\(region)\" is not an AWS region name (such as eu-west-1)."
        case .invalidEndpoint(let variable): "\(variable) must be an http:// or https:// URL with a host and no query, such as http://localhost:9000."
        case .missingCredentials(let missing):
            "An s3:// image store needs \(missing.joined(separator: " and ")) (credential files and instance roles are not read)."
        }
    }
}

/// Where images live: a bucket, a key prefix, the region, and how URLs are formed. Against AWS,
/// virtual-hosted (`https://BUCKET.s3.REGION.amazonaws.com/KEY`), or path-style when the bucket
/// name has dots (a wildcard certificate covers no dotted name); against a custom endpoint
/// (MinIO, R2, Ceph…), always path-style `ENDPOINT/BUCKET/KEY`.
public struct S3Location: Sendable, Equatable {
    public let bucket: String
    /// Key prefix without leading or trailing slashes; "" for the bucket's root.
    public let prefix: String
    public let region: String
    /// A custom endpoint without a trailing slash, or nil for AWS.
    public let endpoint: String?

    /// Parses `s3://BUCKET[/PREFIX]`; `endpoint` is a custom endpoint's http(s) URL, taken as
    /// given (`S3Configuration.fromEnvironment` checks `AWS_ENDPOINT_URL` before passing it).
    public init(storeURL: String, region: String, endpoint: String? = nil) throws(S3ConfigurationError) {
        guard storeURL.lowercased().hasPrefix("s3://") else { throw .notAnS3URL(storeURL) }
        let rest = storeURL.dropFirst(5)
        let bucket = String(rest.prefix { $0 != "/" })
        let isName: (UInt8) -> Bool = { byte in
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
        }
        // AWS's rules; a custom endpoint's store may also allow upper case and underscores.
        let allowed: (UInt8) -> Bool = { byte in
            isName(byte) || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "-")
                || (endpoint != nil && (byte == UInt8(ascii: "_") || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)))
        }
        guard (3...63).contains(bucket.utf8.count), bucket.utf8.allSatisfy(allowed),
            let first = bucket.utf8.first, let last = bucket.utf8.last, isName(first) || endpoint != nil, isName(last) || endpoint != nil
        else { throw .invalidBucket(bucket) }
        guard !region.isEmpty, region.utf8.allSatisfy({ isName($0) || $0 == UInt8(ascii: "-") }) else { throw .invalidRegion(region) }
        self.bucket = bucket
        self.prefix = String(rest.dropFirst(bucket.count)).trimmingCharacters(in: CharacterSet(charactersIn: "/"))
        self.region = region
        var trimmed = endpoint
        while trimmed?.hasSuffix("/") == true { trimmed?.removeLast() }
        self.endpoint = trimmed
    }

    /// Whether the bucket goes in the path rather than the host name.
    public var usesPathStyle: Bool { endpoint != nil || bucket.contains(".") }

    /// The bucket's URL (ListObjectsV2, HeadBucket).
    public var bucketURL: URL { url(base + (usesPathStyle ? "/\(bucket)" : "/")) }

    /// The URL of an object (a full key, prefix included), the key encoded as S3 signs it.
    public func objectURL(key: String) -> URL {
        url(base + (usesPathStyle ? "/\(bucket)/" : "/") + SigV4Signer.uriEncode(key, keepingSlash: true))
    }

    /// The full key of a name below the prefix.
    public func key(_ name: String) -> String { prefix.isEmpty ? name : "\(prefix)/\(name)" }

    private var base: String {
        if let endpoint { return endpoint }
        return usesPathStyle ? "https://s3.\(region).amazonaws.com" : "https://\(bucket).s3.\(region).amazonaws.com"
    }

    private func url(_ text: String) -> URL {
        // The endpoint was parsed as a URL, bucket and region are checked, the key is encoded.
        guard let url = URL(string: text) else { preconditionFailure("an S3 URL from a checked location is valid") }
        return url
    }
}

/// A bucket, its credentials and its endpoint, read from the environment.
public struct S3Configuration: Sendable {
    public var location: S3Location
    public var credentials: S3Credentials

    public init(location: S3Location, credentials: S3Credentials) {
        self.location = location
        self.credentials = credentials
    }

    /// Reads the AWS SDKs' variables: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (required),
    /// `AWS_SESSION_TOKEN` (temporary credentials), `AWS_REGION` else `AWS_DEFAULT_REGION` (default
    /// `us-east-1`), `AWS_ENDPOINT_URL_S3` else `AWS_ENDPOINT_URL` (a custom endpoint, path-style).
    public static func fromEnvironment(_ environment: [String: String], storeURL: String) throws(S3ConfigurationError) -> S3Configuration {
        func value(_ name: String) -> String? { environment[name].flatMap { $0.isEmpty ? nil : $0 } }
        let endpointVariable = value("AWS_ENDPOINT_URL_S3") != nil ? "AWS_ENDPOINT_URL_S3" : "AWS_ENDPOINT_URL"
        let endpoint = value(endpointVariable)
        if let endpoint {
            guard let parts = URLComponents(string: endpoint), ["http", "https"].contains(parts.scheme?.lowercased() ?? ""),
                !(parts.host ?? "").isEmpty, parts.query == nil, parts.fragment == nil
            else { throw .invalidEndpoint(variable: endpointVariable) }
        }
        let location = try S3Location(
            storeURL: storeURL, region: value("AWS_REGION") ?? value("AWS_DEFAULT_REGION") ?? "us-east-1", endpoint: endpoint
        )
        guard let keyID = value("AWS_ACCESS_KEY_ID"), let secret = value("AWS_SECRET_ACCESS_KEY") else {
            throw .missingCredentials(missing: ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"].filter { value($0) == nil })
        }
        return S3Configuration(location: location, credentials: S3Credentials(accessKeyID: keyID, secretAccessKey: secret, sessionToken: value("AWS_SESSION_TOKEN")))
    }
}

/// One entry of a bucket listing.
public struct S3Object: Sendable, Equatable {
    public var key: String
    public var lastModified: Date
    public var size: Int

    public init(key: String, lastModified: Date, size: Int) {
        self.key = key
        self.lastModified = lastModified
        self.size = size
    }
}

/// A failed S3 call. Messages come from S3's `<Code>` and `<Message>` only, never the rest of
/// its error document (a `SignatureDoesNotMatch` answer echoes the key id and string to sign).
public enum S3Error: Error, Equatable, CustomStringConvertible {
    /// A non-2xx answer: the status and S3's `Code: Message`, cut to 200 characters.
    case status(Int, String)
    /// A 2xx answer whose body is not what the API documents.
    case malformedResponse(String)
    /// An answer longer than the call reads.
    case bodyTooLarge(limit: Int)

    public var description: String {
        switch self {
        case .status(let code, let message): "S3 answered \(code): \(message)"
        case .malformedResponse(let what): "S3 sent an unexpected answer: \(what)"
        case .bodyTooLarge(let limit): "S3 sent more than the \(limit) bytes this call reads"
        }
    }
}

/// The few S3 calls the image store needs, signed with SigV4 and sent through the app's
/// `HTTPClient`; every call has a deadline and every body read a limit.
public struct S3Client: Sendable {
    public let location: S3Location
    let signer: SigV4Signer
    let httpClient: HTTPClient
    let timeout: Duration
    let logger: Logger?
    let now: @Sendable () -> Date

    /// The most of a listing or error body read (a page of 1,000 keys is about 300 KiB).
    static let maxResponseBytes = 4 * 1024 * 1024

    public init(
        httpClient: HTTPClient, location: S3Location, credentials: S3Credentials, timeout: Duration = .seconds(30),
        logger: Logger? = nil, now: @escaping @Sendable () -> Date = { Date() }
    ) {
        self.httpClient = httpClient
        self.location = location
        self.signer = SigV4Signer(credentials: credentials, region: location.region)
        self.timeout = timeout
        self.logger = logger
        self.now = now
    }

    /// The URL of an object (a full key).
    public func objectURL(key: String) -> URL { location.objectURL(key: key) }

    /// Stores the bytes under `key` (signed payload: S3 checks the hash before keeping them).
    public func putObject(key: String, bytes: [UInt8], contentType: String) async throws {
        _ = try await send(.PUT, url: objectURL(key: key), body: bytes, headers: [("content-type", contentType)])
    }

    /// The size of the parts of a multipart upload: S3's smallest part is 5 MiB (but the last);
    /// memory holds one part, whatever the object's size.
    public static let partBytes = 8 * 1024 * 1024

    /// Stores what `nextPart` hands out (up to `partBytes` at a time; empty at the end) under
    /// `key`: one PUT when it all fits in one part, else a multipart upload, one part in memory
    /// at a time. A multipart upload that fails is aborted (S3 keeps no half object).
    public func putObject(key: String, contentType: String, nextPart: () async throws -> [UInt8]) async throws {
        let first = try await nextPart()
        guard first.count >= Self.partBytes else {
            try await putObject(key: key, bytes: first, contentType: contentType)
            return
        }
        let created = try await send(.POST, url: objectURL(key: key, query: [("uploads", "")]), headers: [("content-type", contentType)])
        guard let uploadID = S3XML(Array(created.body.readableBytesView)).text("UploadId") else {
            throw S3Error.malformedResponse("CreateMultipartUpload answered no UploadId")
        }
        do {
            var etags: [String] = []
            var part = first
            while !part.isEmpty {
                let query = [("partNumber", "\(etags.count + 1)"), ("uploadId", uploadID)]
                let answer = try await send(.PUT, url: objectURL(key: key, query: query), body: part)
                guard let etag = answer.headers.first(name: "etag") else { throw S3Error.malformedResponse("UploadPart answered no ETag") }
                etags.append(etag)
                part = try await nextPart()
            }
            let parts = etags.enumerated().map { "<Part><PartNumber>\($0.offset + 1)</PartNumber><ETag>\(S3XML.escape($0.element))</ETag></Part>" }
            let done = try await send(
                .POST, url: objectURL(key: key, query: [("uploadId", uploadID)]), body: Array(("<CompleteMultipartUpload>" + parts.joined() + "</CompleteMultipartUpload>").utf8),
                headers: [("content-type", "application/xml")]
            )
            // A completion that fails late is a 200 whose body is an error document.
            if S3XML(Array(done.body.readableBytesView)).text("Code") != nil {
                throw S3Error.status(200, Self.errorMessage(done.body, reason: "CompleteMultipartUpload failed"))
            }
        } catch {
            _ = try? await send(.DELETE, url: objectURL(key: key, query: [("uploadId", uploadID)]), accepting: [404])
            throw error
        }
    }

    /// The object's body as it arrives (nil when there is no such key), for a caller that
    /// writes it on without holding it whole.
    public func streamObject(key: String) async throws -> HTTPClientResponse.Body? {
        let response = try await start(.GET, url: objectURL(key: key), body: nil, headers: [])
        switch response.status.code {
        case 200..<300: return response.body
        case 404: return nil
        default: throw failure(response, body: (try? await response.body.collect(upTo: 64 * 1024)) ?? ByteBuffer())
        }
    }

    /// An object's URL with a query (canonical order, as signed).
    private func objectURL(key: String, query: [(String, String)]) -> URL {
        URL(string: objectURL(key: key).absoluteString + "?" + SigV4Signer.canonicalQuery(query))!
    }

    /// The object's bytes, or nil when there is no such key.
    public func getObject(key: String, maxBytes: Int) async throws -> [UInt8]? {
        let answer = try await send(.GET, url: objectURL(key: key), maxBytes: maxBytes, accepting: [404])
        return answer.status == 404 ? nil : Array(answer.body.readableBytesView)
    }

    /// Deletes the object; deleting one already gone succeeds (S3 says 204 either way).
    public func deleteObject(key: String) async throws {
        _ = try await send(.DELETE, url: objectURL(key: key), accepting: [404])
    }

    /// One page (up to 1,000 keys) of ListObjectsV2 below `prefix` (a full key prefix); pass the
    /// returned token back for the next page, nil when this was the last.
    public func listObjects(prefix: String, continuationToken: String? = nil) async throws -> (objects: [S3Object], nextToken: String?) {
        var query = [("list-type", "2")]
        if !prefix.isEmpty { query.append(("prefix", prefix)) }
        if let continuationToken { query.append(("continuation-token", continuationToken)) }
        let text = location.bucketURL.absoluteString + "?" + SigV4Signer.canonicalQuery(query)
        guard let url = URL(string: text) else { throw S3Error.malformedResponse("cannot form a listing URL") }
        let answer = try await send(.GET, url: url)
        return try Self.parseListObjects(String(buffer: answer.body))
    }

    /// Succeeds when the bucket exists and the credentials may use it (the readiness check).
    public func headBucket() async throws {
        _ = try await send(.HEAD, url: location.bucketURL)
    }

    /// A GET URL of the object valid for `expires` seconds (at most seven days).
    public func presignedGetURL(key: String, expires: Int, now: Date = Date()) -> String {
        signer.presignedURL(method: "GET", url: objectURL(key: key), expires: expires, date: now).absoluteString
    }

    private func send(
        _ method: HTTPMethod, url: URL, body: [UInt8]? = nil, headers: [(String, String)] = [],
        maxBytes: Int = S3Client.maxResponseBytes, accepting accepted: Set<Int> = []
    ) async throws -> (status: Int, headers: HTTPHeaders, body: ByteBuffer) {
        let response = try await start(method, url: url, body: body, headers: headers)
        let status = Int(response.status.code)
        let collected: ByteBuffer
        do {
            collected = try await response.body.collect(upTo: maxBytes)
        } catch is NIOTooManyBytesError {
            throw S3Error.bodyTooLarge(limit: maxBytes)
        }
        guard (200..<300).contains(status) || accepted.contains(status) else { throw failure(response, body: collected) }
        return (status, response.headers, collected)
    }

    /// The error of an answer that is not a success.
    private func failure(_ response: HTTPClientResponse, body: ByteBuffer) -> S3Error {
        // S3 names the bucket's region on a wrong-region answer; worth saying only when it differs.
        let region = response.headers.first(name: "x-amz-bucket-region").flatMap { $0 == location.region ? nil : $0 }
        return S3Error.status(Int(response.status.code), Self.errorMessage(body, reason: response.status.reasonPhrase, bucketRegion: region))
    }

    /// Sends a signed request and answers its head; the body is the caller's to read.
    private func start(_ method: HTTPMethod, url: URL, body: [UInt8]?, headers: [(String, String)]) async throws -> HTTPClientResponse {
        let host = SigningTarget(url).host
        let signed = signer.sign(
            method: method.rawValue, url: url, headers: headers + [("host", host)],
            payloadSHA256: SigV4Signer.sha256Hex(body ?? []), date: now()
        )
        var request = HTTPClientRequest(url: url.absoluteString)
        request.method = method
        // The Host sent is the one signed (AsyncHTTPClient keeps a Host header it is given).
        request.headers.add(name: "host", value: host)
        for (name, value) in headers + signed { request.headers.add(name: name, value: value) }
        if let body { request.body = .bytes(ByteBuffer(bytes: body)) }
        let (seconds, attoseconds) = timeout.components
        let deadline = NIODeadline.now() + .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
        return try await httpClient.execute(request, deadline: deadline, logger: logger)
    }

    /// `Code: Message` from an S3 error document, else the HTTP reason (HEAD answers have no body).
    static func errorMessage(_ body: ByteBuffer, reason: String, bucketRegion: String? = nil) -> String {
        let xml = S3XML(Array(body.readableBytesView))
        let parts = ["Code", "Message"].compactMap { xml.text($0) }
        var message = parts.isEmpty ? reason : parts.joined(separator: ": ")
        if let bucketRegion { message += " (the bucket is in \(bucketRegion): set AWS_REGION)" }
        return String(message.prefix(200))
    }

    /// Reads a ListObjectsV2 answer: keys (entities decoded), modification times, sizes, and the
    /// continuation token when `IsTruncated` says there is more.
    static func parseListObjects(_ text: String) throws -> (objects: [S3Object], nextToken: String?) {
        let xml = S3XML(Array(text.utf8))
        guard xml.find(Array("<ListBucketResult".utf8), from: 0, to: xml.bytes.count) != nil else {
            throw S3Error.malformedResponse("no ListBucketResult")
        }
        let objects = try xml.elements("Contents").map { contents in
            guard let key = xml.text("Key", in: contents), let modified = xml.text("LastModified", in: contents).flatMap(Self.parseTimestamp),
                let size = xml.text("Size", in: contents).flatMap({ Int($0) })
            else { throw S3Error.malformedResponse("a Contents entry without Key, LastModified or Size") }
            return S3Object(key: key, lastModified: modified, size: size)
        }
        guard xml.text("IsTruncated") == "true" else { return (objects, nil) }
        guard let token = xml.text("NextContinuationToken"), !token.isEmpty else {
            throw S3Error.malformedResponse("a truncated listing without NextContinuationToken")
        }
        return (objects, token)
    }

    /// `2009-10-12T17:50:30.000Z` (fractional seconds optional, UTC only, as S3 writes them).
    static func parseTimestamp(_ text: String) -> Date? {
        let b = Array(text.utf8)
        func number(_ range: Range<Int>) -> Int? {
            guard range.upperBound <= b.count else { return nil }
            var value = 0
            for i in range {
                guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(b[i]) else { return nil }
                value = value * 10 + Int(b[i] - UInt8(ascii: "0"))
            }
            return value
        }
        func at(_ i: Int, _ c: Unicode.Scalar) -> Bool { i < b.count && b[i] == UInt8(ascii: c) }
        guard let year = number(0..<4), at(4, "-"), let month = number(5..<7), at(7, "-"), let day = number(8..<10), at(10, "T"),
            let hour = number(11..<13), at(13, ":"), let minute = number(14..<16), at(16, ":"), let second = number(17..<19),
            (1...12).contains(month), (1...31).contains(day), hour < 24, minute < 60, second <= 60
        else { return nil }
        var i = 19
        var fraction = 0.0
        if at(i, ".") {
            i += 1
            var scale = 0.1
            while i < b.count, let digit = number(i..<(i + 1)) {
                fraction += Double(digit) * scale
                scale /= 10
                i += 1
            }
        }
        guard at(i, "Z"), i == b.count - 1 else { return nil }
        let seconds = SigV4Signer.days(year: year, month: month, day: day) * 86_400 + hour * 3600 + minute * 60 + second
        return Date(timeIntervalSince1970: Double(seconds) + fraction)
    }
}

/// Just enough XML for S3's answers: the text of `<Name>…</Name>` elements, searched as UTF-8
/// bytes (no attributes on these elements, no CDATA), with entities decoded.
struct S3XML {
    let bytes: [UInt8]

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    /// The byte ranges of the contents of every `<name>…</name>` within `range`.
    func elements(_ name: String, in range: Range<Int>? = nil, limit: Int = .max) -> [Range<Int>] {
        let open = Array("<\(name)>".utf8)
        let close = Array("</\(name)>".utf8)
        var cursor = range?.lowerBound ?? 0
        let end = range?.upperBound ?? bytes.count
        var found: [Range<Int>] = []
        while found.count < limit, let start = find(open, from: cursor, to: end), let stop = find(close, from: start + open.count, to: end) {
            found.append((start + open.count)..<stop)
            cursor = stop + close.count
        }
        return found
    }

    /// The decoded text of the first `<name>` within `range`.
    func text(_ name: String, in range: Range<Int>? = nil) -> String? {
        elements(name, in: range, limit: 1).first.map { Self.unescape(bytes[$0]) }
    }

    /// The first offset of `pattern` in `start..<end`.
    func find(_ pattern: [UInt8], from start: Int, to end: Int) -> Int? {
        guard let first = pattern.first, end - start >= pattern.count else { return nil }
        var i = start
        while i <= end - pattern.count {
            if bytes[i] == first && bytes[i..<(i + pattern.count)].elementsEqual(pattern) { return i }
            i += 1
        }
        return nil
    }

    /// The five predefined entities and numeric references (`&#13;`, `&#x0D;`) decoded.
    /// Text for an XML element (`&`, `<`, `>` escaped).
    static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }

    static func unescape(_ text: ArraySlice<UInt8>) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(text.count)
        var i = text.startIndex
        while i < text.endIndex {
            if text[i] == UInt8(ascii: "&"), let semicolon = text[i...].prefix(12).firstIndex(of: UInt8(ascii: ";")),
                let scalar = entity(String(decoding: text[(i + 1)..<semicolon], as: UTF8.self))
            {
                out += Array(String(Character(scalar)).utf8)
                i = semicolon + 1
            } else {
                out.append(text[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The character an entity name (between `&` and `;`) stands for.
    static func entity(_ name: String) -> Unicode.Scalar? {
        switch name {
        case "amp": return "&"
        case "lt": return "<"
        case "gt": return ">"
        case "quot": return "\""
        case "apos": return "'"
        default:
            let hex = name.hasPrefix("#x") || name.hasPrefix("#X")
            guard name.hasPrefix("#"), let value = UInt32(name.dropFirst(hex ? 2 : 1), radix: hex ? 16 : 10) else { return nil }
            return Unicode.Scalar(value)
        }
    }
}
