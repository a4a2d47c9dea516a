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
}

extension ImageStore: ImageRepository {
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
    /// Uploads the file in one PUT (read whole: the S3 client has no multipart upload yet) and
    /// removes it.
    public func saveFile(at path: URL, fileExtension: String) async throws -> String {
        let bytes = try await NIOThreadPool.singleton.runIfActive { Array(try Data(contentsOf: path)) }
        let name = try await save(bytes, fileExtension: fileExtension)
        try? await NIOThreadPool.singleton.runIfActive { try FileManager.default.removeItem(at: path) }
        return name
    }
}
