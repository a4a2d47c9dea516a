public import Foundation
public import NIOCore
import NIOFoundationCompat
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
    /// The bytes saved under `name` in pieces as they are read (nil when gone), so a large file
    /// goes out to a client without being held whole.
    func stream(name: String) async throws -> (any AsyncSequence<ByteBuffer, any Error> & Sendable)?
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

/// What the signature and expiry of a URL of the gateway's image route say.
public enum SignedURLCheck: Sendable, Equatable {
    case valid
    /// Unsigned, or signed for another name or time: refused (403).
    case badSignature
    /// Signed, but its time is over (410).
    case expired
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

    /// What a signed URL's query says of `name`: the one check the image route
    /// (`ImageFilesController`) and `ownImage` both make, signature first, then expiry.
    public func check(name: String, expires: Int?, signature: String?, now: Date) -> SignedURLCheck {
        guard let expires, let signature, signer.isValid(name: name, expires: expires, signature: signature) else { return .badSignature }
        return expires >= Int(now.timeIntervalSince1970) ? .valid : .expired
    }

    /// A URL under one of `baseURLs` on the image route, checked as the route checks it.
    public func ownImage(url: String, baseURLs: [String], now: Date) -> OwnImageURL {
        guard let components = URLComponents(string: url), components.path.hasPrefix(Self.routePrefix),
            baseURLs.contains(where: { url.hasPrefix($0 + Self.routePrefix) })
        else { return .notOurs }
        let name = String(components.path.dropFirst(Self.routePrefix.count))
        let items = components.queryItems ?? []
        let expires = items.first(where: { $0.name == "expires" })?.value.flatMap(Int.init)
        let signature = items.first(where: { $0.name == "signature" })?.value
        guard Self.isValidName(name), check(name: name, expires: expires, signature: signature, now: now) == .valid else { return .invalid }
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

    public func stream(name: String) async throws -> (any AsyncSequence<ByteBuffer, any Error> & Sendable)? {
        guard let path = path(of: name), FileManager.default.fileExists(atPath: path) else { return nil }
        return FileChunks(path: path, threadPool: threadPool)
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

    /// Uploads the file a part at a time (`S3Client.partBytes`: a multipart upload when it is
    /// larger), then removes it: memory holds one part, whatever the file's size.
    public func saveFile(at path: URL, fileExtension: String) async throws -> String {
        let name = "\(ImageStore.randomID()).\(fileExtension)"
        let reader = try FileHandle(forReadingFrom: path)
        defer { try? reader.close() }
        try await client.putObject(key: key(of: name), contentType: ImageStore.mimeType(ofExtension: fileExtension)) {
            try await NIOThreadPool.singleton.runIfActive { Array(try reader.read(upToCount: S3Client.partBytes) ?? Data()) }
        }
        try? await NIOThreadPool.singleton.runIfActive { try FileManager.default.removeItem(at: path) }
        return name
    }

    public func stream(name: String) async throws -> (any AsyncSequence<ByteBuffer, any Error> & Sendable)? {
        guard ImageStore.isValidName(name) else { return nil }
        return try await client.streamObject(key: key(of: name))
    }
}

/// A file's bytes in pieces of `chunkBytes`, each read on the thread pool when asked for: the
/// reader sets the pace, and memory holds one piece.
struct FileChunks: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    static let chunkBytes = 256 * 1024

    let path: String
    let threadPool: NIOThreadPool

    struct AsyncIterator: AsyncIteratorProtocol {
        let path: String
        let threadPool: NIOThreadPool
        var handle: FileHandleBox?

        mutating func next() async throws -> ByteBuffer? {
            if handle == nil { handle = FileHandleBox(try FileHandle(forReadingFrom: URL(fileURLWithPath: path))) }
            let box = handle!
            let data = try await threadPool.runIfActive { try box.handle.read(upToCount: FileChunks.chunkBytes) ?? Data() }
            guard !data.isEmpty else {
                try? box.handle.close()
                return nil
            }
            return ByteBuffer(data: data)
        }
    }

    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(path: path, threadPool: threadPool, handle: nil) }
}

/// A file handle read from one task at a time (the iterator that owns it); closed when the
/// iterator goes away.
final class FileHandleBox: @unchecked Sendable {
    let handle: FileHandle
    init(_ handle: FileHandle) { self.handle = handle }
    deinit { try? handle.close() }
}
