import Foundation
import Logging
import NanoGateStorage
public import ServiceLifecycle
public import Upstream
import Synchronization

/// The upstream channels the operator adds through the admin API or `nanogate channels add`:
/// stored in the database as the configuration file's JSON, put in service beside the file's,
/// and read again every few seconds so every instance on the database follows a change (the
/// instance that made it applies it at once).
public struct ManagedChannels: Service {
    let store: SQLStore
    let pool: UpstreamPool
    let logger: Logger
    /// Channels already read, by their stored JSON: a refresh re-reads (and, for Vertex, loads
    /// the key file) only what changed.
    private let decoded = DecodedChannels()
    public static let refreshInterval = Duration.seconds(5)

    init(store: SQLStore, pool: UpstreamPool, logger: Logger) {
        self.store = store
        self.pool = pool
        self.logger = logger
    }

    public func run() async throws {
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            await refresh()
            // A graceful shutdown ends the wait at once (a plain sleep held every stop for up to 5 s).
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: Self.refreshInterval) }
        }
    }

    /// Reads the stored channels and hands the usable ones to the pool; a stored entry that no
    /// longer reads (a deleted service-account file) is logged and left out.
    func refresh() async {
        do {
            var channels: [ChannelConfiguration] = []
            let known = decoded.map.withLock { $0 }
            var current: [String: ChannelConfiguration] = [:]
            for stored in try await store.storedChannels() {
                if let channel = known[stored.json] {
                    channels.append(channel)
                    current[stored.json] = channel
                    continue
                }
                do {
                    let channel = try Self.channel(fromJSON: stored.json)
                    channels.append(channel)
                    current[stored.json] = channel
                } catch {
                    logger.error("a stored upstream channel cannot be used", metadata: ["channel": "\(stored.name)", "error": "\(error.problems.joined(separator: "; "))"])
                }
            }
            decoded.map.withLock { $0 = current }
            pool.replaceManagedChannels(channels)
        } catch {
            logger.warning("could not read the stored upstream channels", metadata: ["error": "\(error)"])
        }
    }

    /// A channel from its JSON (the configuration file's keys), checked as the file's are:
    /// unknown keys, the kind's required fields, a Vertex service-account file that reads.
    public static func channel(fromJSON json: String) throws(ConfigurationError) -> ChannelConfiguration {
        let data = Data(json.utf8)
        guard let fields = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw ConfigurationError(problems: ["a channel must be a JSON object (name, kind, api_keys, …)"])
        }
        let unknown = fields.keys.filter { !ChannelConfiguration.keys.contains($0) }.sorted()
        guard unknown.isEmpty else {
            throw ConfigurationError(problems: ["unknown key(s) \(unknown.joined(separator: ", ")) (known: \(ChannelConfiguration.keys.sorted().joined(separator: ", ")))"])
        }
        var channel: ChannelConfiguration
        do {
            channel = try JSONDecoder().decode(ChannelConfiguration.self, from: data)
        } catch {
            throw ConfigurationError(problems: ["the channel could not be read: \(error)"])
        }
        var problems = channel.problems
        if channel.kind == .vertex, let file = channel.serviceAccountFile {
            do {
                channel.serviceAccount = try ServiceAccount.load(path: file)
            } catch {
                problems.append(error.description)
            }
        }
        guard problems.isEmpty else { throw ConfigurationError(problems: problems) }
        return channel
    }

    /// The channel as the file's JSON, for storing (credentials included; the key file's
    /// contents are not: its path is stored).
    public static func json(_ channel: ChannelConfiguration) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: try encoder.encode(channel), as: UTF8.self)
    }
}

/// The channels a `ManagedChannels` has read, by their stored JSON (shared by its copies).
private final class DecodedChannels: Sendable {
    let map = Mutex<[String: ChannelConfiguration]>([:])
}
