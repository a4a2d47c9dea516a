public import Foundation
import NanoGateCore
public import Logging
public import ServiceLifecycle
import Crypto
import NIOCore
public import NIOPosix
import NIOFoundationCompat
#if canImport(Glibc)
import Glibc
#endif

/// Signs and checks image URLs: `…/v1/files/images/{name}?expires={unix}&signature={hmac}`.
///
/// The signature is HMAC-SHA256 over `name` and `expires` with a secret only the gateway knows,
/// so a URL can be neither forged nor extended; several instances share the secret through
/// `NANOGATE_URL_SECRET`.
public struct URLSigner: Sendable {
    private let secret: Data

    public init(secret: Data) {
        self.secret = secret
    }

    public func signature(name: String, expires: Int) -> String {
        let mac = HMAC<SHA256>.authenticationCode(for: Data("\(name)\n\(expires)".utf8), using: SymmetricKey(data: secret))
        return Data(mac).base64EncodedString().replacingOccurrences(of: "+", with: "-")
            .replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
    }

    /// Constant-time check of a signature from a URL.
    public func isValid(name: String, expires: Int, signature: String) -> Bool {
        let expected = Array(self.signature(name: name, expires: expires).utf8)
        let given = Array(signature.utf8)
        guard expected.count == given.count else { return false }
        return zip(expected, given).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0
    }

    /// Shortest secret accepted: an HMAC key shorter than this could be guessed offline from
    /// one signed URL.
    public static let minimumSecretBytes = 32

    /// The secret from `NANOGATE_URL_SECRET`, else one kept in `dataDirectory/url-signing.key`
    /// (created on first start, mode 0600 from its first byte). A secret shorter than
    /// `minimumSecretBytes` is refused, never silently replaced (that would break every URL out).
    public static func loadOrCreateSecret(environmentValue: String?, dataDirectory: URL) throws -> Data {
        if let environmentValue, !environmentValue.isEmpty {
            guard environmentValue.utf8.count >= minimumSecretBytes else { throw URLSecretError.tooShort(source: "NANOGATE_URL_SECRET") }
            return Data(environmentValue.utf8)
        }
        let file = dataDirectory.appendingPathComponent("url-signing.key")
        if FileManager.default.fileExists(atPath: file.path) {
            let existing = try Data(contentsOf: file)
            guard existing.count >= minimumSecretBytes else { throw URLSecretError.tooShort(source: file.path) }
            return existing
        }
        var generator = SystemRandomNumberGenerator()
        let secret = Data((0..<minimumSecretBytes).map { _ in UInt8.random(in: .min ... .max, using: &generator) })
        let temporary = file.path + ".tmp-\(UInt32.random(in: .min ... .max))"
        guard FileManager.default.createFile(atPath: temporary, contents: nil, attributes: [.posixPermissions: 0o600]) else {
            throw CocoaError(.fileWriteUnknown)
        }
        try secret.write(to: URL(fileURLWithPath: temporary))
        guard rename(temporary, file.path) == 0 else { throw CocoaError(.fileWriteUnknown) }
        return secret
    }
}

/// A URL-signing secret that cannot be used.
public enum URLSecretError: Error, CustomStringConvertible {
    case tooShort(source: String)

    public var description: String {
        switch self {
        case .tooShort(let source): "The URL-signing secret from \(source) is shorter than \(URLSigner.minimumSecretBytes) bytes; use a longer random value."
        }
    }
}

/// Why an image could not be stored.
public enum ImageStoreError: Error {
    case emptyImage
    /// The bytes are not an image type the gateway serves.
    case notAnImage
    /// The image folder is missing or read-only.
    case unavailable(String)
}

/// `bytes` random bytes from the system's generator, in lower-case hex: the unguessable part of
/// image names, job, batch and file ids, and webhook secrets.
public func randomHex(bytes: Int) -> String {
    var generator = SystemRandomNumberGenerator()
    return (0..<bytes).map { _ in UInt8.random(in: .min ... .max, using: &generator) }.lowercaseHex
}

/// Creates `directory` (and its parents) readable by the owner only: images, the database and
/// the signing secret of every user live below it.
public func createPrivateDirectory(_ directory: URL) throws {
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
    try FileManager.default.setAttributes([.posixPermissions: 0o700], ofItemAtPath: directory.path)
}

/// Generated images kept on disk for URL answers, each file written whole or not at all.
public struct ImageStore: Sendable {
    public let directory: URL
    /// Signs the URLs of this folder's images (served by the gateway's own route).
    public let signer: URLSigner
    let threadPool: NIOThreadPool

    /// The gateway's route that serves this folder's images.
    public static let routePrefix = "/v1/files/images/"

    public init(directory: URL, signer: URLSigner, threadPool: NIOThreadPool = .singleton) throws {
        self.directory = directory
        self.signer = signer
        self.threadPool = threadPool
        try createPrivateDirectory(directory)
    }

    /// Writes the bytes under a new random name with the extension of their sniffed type.
    /// Returns the file name (no directory).
    public func save(_ bytes: [UInt8], fileExtension: String) async throws -> String {
        guard !bytes.isEmpty else { throw ImageStoreError.emptyImage }
        let name = "\(Self.randomID()).\(fileExtension)"
        let url = directory.appendingPathComponent(name)
        try await threadPool.runIfActive {
            // .atomic writes a temporary file and renames it: a reader never sees half an image.
            try bytes.withUnsafeBytes { raw in
                try Data(bytesNoCopy: UnsafeMutableRawPointer(mutating: raw.baseAddress!), count: raw.count, deallocator: .none)
                    .write(to: url, options: .atomic)
            }
            try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: url.path)
        }
        return name
    }

    /// 128 random bits in hex: an image's name (unguessable, so a URL is the only way to it).
    static func randomID() -> String { randomHex(bytes: 16) }

    /// The Content-Type of a stored image's extension.
    public static func mimeType(ofExtension fileExtension: String) -> String {
        ["png": "image/png", "jpg": "image/jpeg", "webp": "image/webp", "gif": "image/gif", "json": "application/json", "jsonl": "application/jsonl"][fileExtension]
            ?? "application/octet-stream"
    }

    /// Whether the folder is there and writable (the readiness check; a shared NFS mount that
    /// went away fails it).
    public func ping() async throws {
        let directory = self.directory
        let writable = try await threadPool.runIfActive { FileManager.default.isWritableFile(atPath: directory.path) }
        guard writable else { throw ImageStoreError.unavailable(directory.path) }
    }

    /// The path of a stored image, if `name` is one of ours (no directory tricks).
    public func path(of name: String) -> String? {
        guard Self.isValidName(name) else { return nil }
        return directory.appendingPathComponent(name).path
    }

    static func isValidName(_ name: String) -> Bool {
        let parts = name.split(separator: ".")
        guard parts.count == 2, parts[0].count == 32 else { return false }
        return parts[0].allSatisfy(\.isHexDigit) && parts[1].allSatisfy { $0.isLetter && $0.isASCII }
    }

    /// Deletes images older than `age`; says how many were removed and what the store holds after.
    @discardableResult
    public func sweep(olderThan age: Duration, now: Date = Date()) async throws -> SweepResult {
        let cutoff = now.addingTimeInterval(-TimeInterval(age.components.seconds))
        let directory = self.directory
        return try await threadPool.runIfActive {
            let keys: Set<URLResourceKey> = [.contentModificationDateKey, .fileSizeKey]
            let files = try FileManager.default.contentsOfDirectory(at: directory, includingPropertiesForKeys: Array(keys))
            var result = SweepResult()
            for file in files {
                let values = try? file.resourceValues(forKeys: keys)
                if let modified = values?.contentModificationDate, modified < cutoff {
                    try? FileManager.default.removeItem(at: file)
                    result.removed += 1
                } else {
                    result.files += 1
                    result.bytes += values?.fileSize ?? 0
                }
            }
            return result
        }
    }
}

/// What one sweep did: files removed, and what the store holds after it.
public struct SweepResult: Sendable, Equatable {
    public var removed = 0
    public var files = 0
    public var bytes = 0

    public init(removed: Int = 0, files: Int = 0, bytes: Int = 0) {
        self.removed = removed
        self.files = files
        self.bytes = bytes
    }
}

/// Deletes expired images (and thought signatures older than `signatureRetention`) periodically
/// for as long as the gateway runs.
public struct ImageSweeper: Service {
    /// The folder, and the shared bucket when there is one.
    let stores: [any ImageRepository]
    let ttl: Duration
    let interval: Duration
    let signatures: (any SignatureStore)?
    let signatureRetention: Duration
    let logger: Logger
    /// Told after every sweep (metrics: the store's size, files removed).
    let onSweep: @Sendable (SweepResult) -> Void

    public init(
        stores: [any ImageRepository], ttl: Duration, interval: Duration? = nil,
        signatures: (any SignatureStore)? = nil, signatureRetention: Duration = .seconds(7 * 24 * 3600), logger: Logger,
        onSweep: @escaping @Sendable (SweepResult) -> Void = { _ in }
    ) {
        self.onSweep = onSweep
        self.stores = stores
        self.ttl = ttl
        self.signatures = signatures
        self.signatureRetention = signatureRetention
        self.interval = interval ?? min(.seconds(300), max(.seconds(1), ttl / 4))
        self.logger = logger
    }

    public func run() async throws {
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            do {
                // Every instance sweeps a shared bucket too; a delete of an object another just
                // deleted is harmless (S3 answers 204 either way).
                var swept = SweepResult()
                for store in stores {
                    let result = try await store.sweep(olderThan: ttl, now: Date())
                    swept = SweepResult(removed: swept.removed + result.removed, files: swept.files + result.files, bytes: swept.bytes + result.bytes)
                }
                onSweep(swept)
                if swept.removed > 0 { logger.info("swept expired images", metadata: ["count": "\(swept.removed)"]) }
                if let signatures {
                    let cutoff = Date().addingTimeInterval(-TimeInterval(signatureRetention.components.seconds))
                    let pruned = try await signatures.pruneSignatures(before: cutoff)
                    if pruned > 0 { logger.info("pruned old thought signatures", metadata: ["count": "\(pruned)"]) }
                }
                if let store = signatures as? SQLStore {
                    // Idempotent results are kept 24 h.
                    _ = try await store.pruneIdempotency(before: Date().addingTimeInterval(-24 * 3600))
                    // Finished jobs go when their answers (and the image URLs in them) expire.
                    _ = try await store.pruneJobs()
                    // Stored responses (the Responses API) go with the images they name.
                    _ = try await store.pruneResponses()
                    // Uploaded files and batch outputs go when they expire.
                    let files = try await store.pruneFiles()
                    if files > 0 { logger.info("pruned expired files", metadata: ["count": "\(files)"]) }
                }
            } catch {
                logger.warning("image sweep failed", metadata: ["error": "\(error)"])
            }
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
        }
    }
}
