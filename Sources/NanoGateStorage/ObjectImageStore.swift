public import Foundation

/// Generated images in an S3-compatible bucket shared by every instance (`NANOGATE_IMAGE_STORE=
/// s3://BUCKET/PREFIX`). `url` answers are presigned GET URLs of the store, so the store (or its
/// CDN) serves the bytes, not the gateway, and any instance's URL works for every client.
public struct ObjectImageStore: Sendable {
    let client: S3Client
    /// Key prefix without a trailing slash ("" for the bucket's root).
    let prefix: String

    public init(client: S3Client, prefix: String) {
        self.client = client
        self.prefix = prefix
    }

    func key(of name: String) -> String { prefix.isEmpty ? name : "\(prefix)/\(name)" }

    /// `scheme://host[:port]` of the presigned URLs (a page that shows them must allow it).
    public var origin: String? {
        let url = client.location.bucketURL
        guard let scheme = url.scheme, let host = url.host else { return nil }
        return url.port.map { "\(scheme)://\(host):\($0)" } ?? "\(scheme)://\(host)"
    }

    /// Uploads the bytes under a new random name with their type's extension; returns the name.
    public func save(_ bytes: [UInt8], fileExtension: String) async throws -> String {
        guard !bytes.isEmpty else { throw ImageStoreError.emptyImage }
        let name = "\(ImageStore.randomID()).\(fileExtension)"
        try await client.putObject(key: key(of: name), bytes: bytes, contentType: ImageStore.mimeType(ofExtension: fileExtension))
        return name
    }

    /// A GET URL of the image valid for `ttl` seconds (AWS Signature V4, query-string form).
    public func presignedURL(name: String, ttl: Int, now: Date = Date()) -> String {
        client.presignedGetURL(key: key(of: name), expires: ttl, now: now)
    }

    /// The name of one of our images when `url` points into our bucket and prefix (a client
    /// sends an earlier answer's URL back in a chat): read through the S3 API, not fetched.
    public func ownImageName(url: String) -> String? {
        let base = client.objectURL(key: key(of: "")).absoluteString
        guard url.hasPrefix(base), let components = URLComponents(string: url) else { return nil }
        let name = String(components.path.split(separator: "/").last ?? "")
        guard ImageStore.isValidName(name), url.hasPrefix(client.objectURL(key: key(of: name)).absoluteString) else { return nil }
        return name
    }

    /// Checks a URL into our bucket as S3 would before it is read with the gateway's own
    /// credentials: only a URL this store presigned, before it expired, names an image (an
    /// object name alone, leaked or guessed, reads nothing).
    public func ownImage(url: String, now: Date = Date()) -> OwnImageURL {
        guard let name = ownImageName(url: url) else { return .notOurs }
        let items = URLComponents(string: url)?.queryItems ?? []
        func value(_ field: String) -> String? { items.first { $0.name == field }?.value }
        guard let signed = value("X-Amz-Date").flatMap(Self.date(amzTimestamp:)), let expires = value("X-Amz-Expires").flatMap(Int.init),
            let signature = value("X-Amz-Signature"), expires >= 1, now < signed.addingTimeInterval(TimeInterval(expires))
        else { return .invalid }
        let expected = URLComponents(string: presignedURL(name: name, ttl: expires, now: signed))?.queryItems?.first { $0.name == "X-Amz-Signature" }?.value ?? ""
        let (a, b) = (Array(signature.utf8), Array(expected.utf8))
        guard a.count == b.count, zip(a, b).reduce(UInt8(0), { $0 | ($1.0 ^ $1.1) }) == 0 else { return .invalid }
        return .valid(name)
    }

    /// `20130524T000000Z` (`SigV4Signer.timestamp`) back to a date.
    static func date(amzTimestamp text: String) -> Date? {
        let digits = Array(text.utf8)
        guard digits.count == 16, digits[8] == UInt8(ascii: "T"), digits[15] == UInt8(ascii: "Z") else { return nil }
        func number(_ range: Range<Int>) -> Int? { Int(String(decoding: digits[range], as: UTF8.self)) }
        guard let year = number(0..<4), let month = number(4..<6), let day = number(6..<8),
            let hour = number(9..<11), let minute = number(11..<13), let second = number(13..<15)
        else { return nil }
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        let date = calendar.date(from: DateComponents(year: year, month: month, day: day, hour: hour, minute: minute, second: second))
        // Only a canonical timestamp (no 25th hour, no 32nd day rolled over).
        return date.flatMap { SigV4Signer.timestamp($0) == text ? $0 : nil }
    }

    /// The bytes of one of our objects, or nil when it is gone (a job's answer or a batch's
    /// output can be hundreds of MB: bounded by the largest answer the pool reads).
    public func load(name: String) async throws -> [UInt8]? {
        guard ImageStore.isValidName(name) else { return nil }
        return try await client.getObject(key: key(of: name), maxBytes: 512 * 1024 * 1024)
    }

    /// Deletes our images older than `age` (a bucket lifecycle rule can do it instead).
    public func sweep(olderThan age: Duration, now: Date = Date()) async throws -> SweepResult {
        let cutoff = now.addingTimeInterval(-TimeInterval(age.components.seconds))
        var result = SweepResult()
        var token: String?
        let listPrefix = prefix.isEmpty ? "" : prefix + "/"
        repeat {
            let page = try await client.listObjects(prefix: listPrefix, continuationToken: token)
            for object in page.objects {
                // Only names this gateway writes: never another tenant's objects under the prefix.
                guard ImageStore.isValidName(String(object.key.dropFirst(listPrefix.count))) else { continue }
                if object.lastModified < cutoff {
                    try await client.deleteObject(key: object.key)
                    result.removed += 1
                } else {
                    result.files += 1
                    result.bytes += object.size
                }
            }
            token = page.nextToken
        } while token != nil
        return result
    }

    /// Whether the bucket answers with these credentials (the readiness check).
    public func ping() async throws {
        try await client.headBucket()
    }
}
