public import AsyncHTTPClient
public import NIOCore
import NIOPosix

/// A channel's HTTP clients: one per event loop of the group, each keeping its upstream
/// connections on its own loop, and one over the whole group. A call made from an event loop
/// (a request handler runs on its connection's loop, `NANOGATE_LOOP_HANDLERS`) gets the client
/// of that loop, so Google's answer arrives on the thread that writes it to the client: no
/// hop between threads per piece of a 3 MB answer. Calls made elsewhere (jobs, batches) get
/// the group's client, which spreads them over every loop.
public final class LoopPinnedClients: Sendable {
    private let pinned: [ObjectIdentifier: HTTPClient]
    /// For calls made off the group's loops.
    public let shared: HTTPClient

    /// Clients over `group` with `configuration` (one per loop, plus the shared one).
    public init(group: any EventLoopGroup, configuration: HTTPClient.Configuration) {
        var pinned: [ObjectIdentifier: HTTPClient] = [:]
        for loop in group.makeIterator() {
            pinned[ObjectIdentifier(loop)] = HTTPClient(eventLoopGroup: loop, configuration: configuration)
        }
        self.pinned = pinned
        self.shared = HTTPClient(eventLoopGroup: group, configuration: configuration)
    }

    /// One client for everything (tests, a client made elsewhere).
    public init(single client: HTTPClient) {
        self.pinned = [:]
        self.shared = client
    }

    /// The client for a call made here and now.
    public var current: HTTPClient {
        guard !pinned.isEmpty, let loop = MultiThreadedEventLoopGroup.currentEventLoop else { return shared }
        return pinned[ObjectIdentifier(loop)] ?? shared
    }

    public func shutdown() async {
        for client in pinned.values { try? await client.shutdown() }
        try? await shared.shutdown()
    }
}
