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
}

extension ImageStore: ImageRepository {
    /// The bytes of one of our files, or nil when it is gone; read on the thread pool.
    public func load(name: String) async throws -> [UInt8]? {
        guard let path = path(of: name) else { return nil }
        return try await threadPool.runIfActive {
            guard FileManager.default.fileExists(atPath: path) else { return nil }
            return Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        }
    }
}

extension ObjectImageStore: ImageRepository {}
