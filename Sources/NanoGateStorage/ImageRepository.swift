public import Foundation
import NIOPosix

/// Where image bytes live: a local folder (`ImageStore`) or an S3-compatible bucket every
/// instance shares (`ObjectImageStore`). Generated images, a background job's input images and
/// the like are saved here; database rows keep only their names. Names are 128 random bits
/// and an extension, so a name is as good as a capability.
public protocol ImageRepository: Sendable {
    /// Saves the bytes under a new name with `fileExtension`; returns the name.
    func save(_ bytes: [UInt8], fileExtension: String) async throws -> String
    /// The bytes saved under `name`, or nil when they are gone (swept) or the name is not ours.
    func load(name: String) async throws -> [UInt8]?
    /// Whether the store answers (the readiness check).
    func ping() async throws
    /// Deletes what is older than `age`; what was removed and what is left.
    func sweep(olderThan age: Duration, now: Date) async throws -> SweepResult
    /// Saves a finished local file (written piece by piece elsewhere) under a new name and
    /// removes it; returns the name.
    func saveFile(at path: URL, fileExtension: String) async throws -> String
    /// A URL that serves `name` to anyone holding it for `ttl`: the gateway's own signed
    /// `/v1/files/images/` route under `baseURL` (a folder), or a presigned GET (a bucket).
    func url(name: String, baseURL: String, ttl: Duration, now: Date) -> String
    /// What a URL a client sent is to this store (an earlier answer sent back in a chat): one
    /// of ours, its signature right and unexpired, is read from the store rather than fetched.
    func ownImage(url: String, baseURLs: [String], now: Date) -> OwnImageURL
}

/// What an image URL a client sent is to the store that may have made it.
public enum OwnImageURL: Sendable, Equatable {
    /// Not a URL of this store: fetch it like any other.
    case notOurs
    /// One of our signed URLs, its signature right and still valid: read this name.
    case valid(String)
    /// Points into this store but is unsigned, expired or signed by someone else: never read.
    case invalid
}

extension ImageStore: ImageRepository {
    /// The gateway's route for this folder's images, signed with the store's URL secret.
    public func url(name: String, baseURL: String, ttl: Duration, now: Date) -> String {
        let expires = Int(now.timeIntervalSince1970) + Int(ttl.components.seconds)
        return "\(baseURL)\(Self.routePrefix)\(name)?expires=\(expires)&signature=\(signer.signature(name: name, expires: expires))"
    }

    /// A URL under one of `baseURLs` on the image route, with the same checks the route makes
    /// (`ImageFilesController`): signature, then expiry.
    public func ownImage(url: String, baseURLs: [String], now: Date) -> OwnImageURL {
        guard let components = URLComponents(string: url), components.path.hasPrefix(Self.routePrefix),
            baseURLs.contains(where: { url.hasPrefix($0 + Self.routePrefix) })
        else { return .notOurs }
        let name = String(components.path.dropFirst(Self.routePrefix.count))
        let items = components.queryItems ?? []
        guard let expires = items.first(where: { $0.name == "expires" })?.value.flatMap(Int.init),
            let signature = items.first(where: { $0.name == "signature" })?.value,
            signer.isValid(name: name, expires: expires, signature: signature),
            expires >= Int(now.timeIntervalSince1970), Self.isValidName(name)
        else { return .invalid }
        return .valid(name)
    }

    /// Moves the file in (a rename on one file system: never read into memory).
    public func saveFile(at path: URL, fileExtension: String) async throws -> String {
        let name = "\(Self.randomID()).\(fileExtension)"
        let target = directory.appendingPathComponent(name)
        try await threadPool.runIfActive {
            try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: path.path)
            do {
                try FileManager.default.moveItem(at: path, to: target)
            } catch {
                // Another file system: copy, then remove the original.
                try FileManager.default.copyItem(at: path, to: target)
                try? FileManager.default.removeItem(at: path)
            }
        }
        return name
    }

    /// The bytes of one of our files, or nil when it is gone; read on the thread pool.
    public func load(name: String) async throws -> [UInt8]? {
        guard let path = path(of: name) else { return nil }
        return try await threadPool.runIfActive {
            guard FileManager.default.fileExists(atPath: path) else { return nil }
            return Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        }
    }
}

extension ObjectImageStore: ImageRepository {
    /// A presigned GET of the bucket (every instance can make and check it).
    public func url(name: String, baseURL: String, ttl: Duration, now: Date) -> String {
        presignedURL(name: name, ttl: Int(ttl.components.seconds), now: now)
    }

    public func ownImage(url: String, baseURLs: [String], now: Date) -> OwnImageURL {
        ownImage(url: url, now: now)
    }

    /// Uploads the file in one PUT (read whole: the S3 client has no multipart upload yet) and
    /// removes it.
    public func saveFile(at path: URL, fileExtension: String) async throws -> String {
        let bytes = try await NIOThreadPool.singleton.runIfActive { Array(try Data(contentsOf: path)) }
        let name = try await save(bytes, fileExtension: fileExtension)
        try? await NIOThreadPool.singleton.runIfActive { try FileManager.default.removeItem(at: path) }
        return name
    }
}
