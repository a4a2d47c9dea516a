import Testing
import AsyncHTTPClient
import Foundation
import NanoGateTestSupport
import GeminiEmulator
import Hummingbird
import Logging
import NanoGateServer
import NanoGateStorage
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import NIOPosix
import NanoGateCore
import ServiceLifecycle
import Synchronization
import Upstream

/// A gateway and an emulator, both listening on loopback ports, for one test.
struct Harness {
    let baseURL: String
    /// The emulator's own address, for checking what Google would say.
    let emulatorURL: String
    let recorder: EmulatorRecorder
    let dependencies: GatewayDependencies
    let configuration: GatewayConfiguration
    /// A key of the "default" group (URL answers unless asked otherwise).
    let defaultKey: String
    /// A key of the "gemini" group (base64 answers unless asked otherwise).
    let geminiKey: String
    /// The ports of the listeners apart from the API's (admin, metrics), once they listen.
    let listenerPorts: ListenerPorts

    /// The port `listener` listens on (asked for as port 0), waiting for it to start.
    func port(of listener: Listener) async throws -> Int {
        try await eventually("the \(listener) listener started") { listenerPorts.port(of: listener) != nil }
        return try #require(listenerPorts.port(of: listener))
    }
    /// A client that waits as long as the gateway may (HTTPClient.shared gives up on a silent
    /// read after 90 s, which a busy 2-core machine rendering 4K images can reach), with a
    /// connection per request a test sends at once: with AsyncHTTPClient's default of 8 per
    /// host, 50 parallel requests queued in the client, and on a busy machine the queue's wait
    /// passed the connect timeout (`getConnectionFromPoolTimeout`) although the gateway answered.
    static let patientClient = HTTPClient(
        eventLoopGroupProvider: .singleton,
        configuration: .init(
            redirectConfiguration: .follow(max: 20, allowCycles: false), timeout: .init(connect: .seconds(30), read: .seconds(600)),
            connectionPool: .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: 128)
        )
    )
    let client = Harness.patientClient

    struct Reply {
        var status: Int
        var headers: HTTPHeaders
        var body: ByteBuffer

        var json: [String: Any] {
            (try? JSONSerialization.jsonObject(with: Data(buffer: body))) as? [String: Any] ?? [:]
        }
        var error: [String: Any] { json["error"] as? [String: Any] ?? [:] }
        var data: [[String: Any]] { json["data"] as? [[String: Any]] ?? [] }
        var usage: [String: Any] { json["usage"] as? [String: Any] ?? [:] }
        var text: String { String(buffer: body) }
    }

    func post(_ path: String, json: String, key: String? = nil, headers: [String: String] = [:]) async throws -> Reply {
        var request = HTTPClientRequest(url: path.hasPrefix("http") ? path : baseURL + path)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        if let key = key ?? Optional(defaultKey), !key.isEmpty { request.headers.add(name: "Authorization", value: "Bearer \(key)") }
        request.body = .bytes(ByteBuffer(string: json))
        return try await send(request)
    }

    /// The default key's usage-log rows, newest first.
    func usageRows(limit: Int = 20) async throws -> [UsageRecord] {
        let key = try #require(try await dependencies.store.listKeys().first { $0.name == "test-default" })
        return try await dependencies.store.recentUsage(keyID: key.id, limit: limit)
    }

    /// Generations with the default key unless another is given.
    func generate(_ json: String, key: String? = nil) async throws -> Reply {
        try await post("/v1/images/generations", json: json, key: key)
    }

    func get(_ url: String) async throws -> Reply {
        try await send(HTTPClientRequest(url: url))
    }

    func send(_ request: HTTPClientRequest) async throws -> Reply {
        let response = try await client.execute(request, timeout: .seconds(120))
        let body = try await response.body.collect(upTo: 512 * 1024 * 1024)
        return Reply(status: Int(response.status.code), headers: response.headers, body: body)
    }

    /// Width and height of PNG bytes, read from the IHDR chunk; (0, 0) for anything else (so a
    /// failed request fails its test instead of trapping the whole test process).
    static func pngSize(_ bytes: [UInt8]) -> (Int, Int) {
        guard bytes.count > 24, bytes.starts(with: [0x89, 0x50, 0x4E, 0x47]) else { return (0, 0) }
        func int(_ at: Int) -> Int { bytes[at..<at + 4].reduce(0) { $0 << 8 | Int($1) } }
        return (int(16), int(20))
    }

    /// Decodes `data[index]` of a reply, from base64 or by fetching its URL.
    func imageBytes(_ reply: Reply, index: Int = 0) async throws -> [UInt8] {
        // A failed request has no data: answer no bytes (the test's own expectations report it)
        // rather than trapping, which would end every test in the process.
        guard reply.data.indices.contains(index) else { return [] }
        let item = reply.data[index]
        if let b64 = item["b64_json"] as? String { return Array(Data(base64Encoded: b64) ?? Data()) }
        guard let url = item["url"] as? String else { return [] }
        let fetched = try await get(url)
        return Array(buffer: fetched.body)
    }
}

/// Where the gateway's own admin and metrics listeners came up.
final class ListenerPorts: Sendable {
    private let ports = Mutex<[Listener: Int]>([:])

    func record(_ listener: Listener, port: Int?) { ports.withLock { $0[listener] = port } }
    func port(of listener: Listener) -> Int? { ports.withLock { $0[listener] } }
}

/// Starts the emulator and the gateway on free loopback ports, runs `body`, then shuts both down.
func withGateway(
    googleKeys: [String] = ["google-key-1"],
    emulatorKeys: Set<String>? = ["google-key-1"],
    configure: (inout GatewayConfiguration) -> Void = { _ in },
    emulator configureEmulator: (inout EmulatorConfiguration) -> Void = { _ in },
    hostLookup: @escaping HostLookup = systemHostLookup,
    gatewayLogger: Logger? = nil,
    _ body: (Harness) async throws -> Void
) async throws {
    var logger = Logger(label: "test")
    logger.logLevel = .critical
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("nanogate-test-\(UUID().uuidString)")
    defer { try? FileManager.default.removeItem(at: directory) }

    let recorder = EmulatorRecorder()
    let (emulatorPorts, emulatorPort) = AsyncStream.makeStream(of: Int.self)
    var emulatorSettings = emulatorConfiguration(acceptedKeys: emulatorKeys)
    configureEmulator(&emulatorSettings)
    let emulator = Application(
        router: GeminiEmulator(configuration: emulatorSettings, recorder: recorder).router(),
        configuration: .init(address: .hostname("127.0.0.1", port: 0)),
        onServerRunning: { emulatorPort.yield($0.localAddress!.port!) },
        logger: logger
    )
    let emulatorGroup = ServiceGroup(configuration: .init(services: [emulator], logger: logger))

    try await withThrowingTaskGroup(of: Void.self) { tasks in
        // A server that stops before it listens ends its port stream, so the test fails
        // instead of waiting forever for a port.
        tasks.addTask {
            defer { emulatorPort.finish() }
            try await emulatorGroup.run()
        }
        var ports = emulatorPorts.makeAsyncIterator()
        guard let upstreamPort = await ports.next() else { throw ServerDidNotStart(what: "the emulator") }

        var configuration = GatewayConfiguration(
            host: "127.0.0.1", port: 0, dataDirectory: directory,
            upstream: UpstreamConfiguration(baseURL: "http://127.0.0.1:\(upstreamPort)", apiKeys: googleKeys, retryBaseDelay: .milliseconds(5))
        )
        // The start-up model check runs in the background; off unless a test asks, so no test's
        // first request races it.
        configuration.checkModelsAtStart = false
        let testDatabase = try await TestDatabase.fresh()
        configuration.databaseURL = testDatabase?.url
        // Dozens of gateways run at once on one test cluster: a few connections each.
        configuration.databasePoolSize = 3
        configure(&configuration)
        let dependencies = try await GatewayDependencies.live(configuration: configuration, logger: logger)
        let defaultKey = try await dependencies.store.createKey(name: "test-default", group: .default).secret
        let geminiKey = try await dependencies.store.createKey(name: "test-gemini", group: .gemini).secret

        let (gatewayPorts, gatewayPort) = AsyncStream.makeStream(of: Int.self)
        let listenerPorts = ListenerPorts()
        let gateway = buildApplication(
            configuration: configuration, dependencies: dependencies, logger: gatewayLogger ?? logger, hostLookup: hostLookup,
            onServerRunning: { gatewayPort.yield($0.localAddress!.port!) },
            onListenerRunning: { listener, channel in listenerPorts.record(listener, port: channel.localAddress?.port) }
        )
        let gatewayGroup = ServiceGroup(configuration: .init(services: [gateway], logger: logger))
        tasks.addTask {
            defer { gatewayPort.finish() }
            try await gatewayGroup.run()
        }
        var gatewayIterator = gatewayPorts.makeAsyncIterator()
        guard let port = await gatewayIterator.next() else { throw ServerDidNotStart(what: "the gateway") }

        let harness = Harness(
            baseURL: "http://127.0.0.1:\(port)", emulatorURL: "http://127.0.0.1:\(upstreamPort)", recorder: recorder, dependencies: dependencies,
            configuration: configuration, defaultKey: defaultKey, geminiKey: geminiKey, listenerPorts: listenerPorts
        )
        do {
            try await body(harness)
        } catch {
            await gatewayGroup.triggerGracefulShutdown()
            await emulatorGroup.triggerGracefulShutdown()
            try? await tasks.waitForAll()
            await testDatabase?.drop()
            throw error
        }
        await gatewayGroup.triggerGracefulShutdown()
        await emulatorGroup.triggerGracefulShutdown()
        try await tasks.waitForAll()
        await testDatabase?.drop()
    }
}

/// A small HTTP server of the test's own on `host` (any 127.x address works on Linux), for
/// image hosts, redirectors and the like; `body` gets its port.
func withLocalServer(
    host: String = "127.0.0.1", _ routes: (Router<BasicRequestContext>) -> Void, _ body: (Int) async throws -> Void
) async throws {
    let router = Router()
    routes(router)
    try await withLocalServer(host: host, router: router, body)
}

/// A server of the test's own for `router` (an emulator's, say) on `host`; `body` gets its port.
func withLocalServer(host: String = "127.0.0.1", router: Router<BasicRequestContext>, _ body: (Int) async throws -> Void) async throws {
    var logger = Logger(label: "test-server")
    logger.logLevel = .critical
    let (ports, port) = AsyncStream.makeStream(of: Int.self)
    let app = Application(router: router, configuration: .init(address: .hostname(host, port: 0)), onServerRunning: { port.yield($0.localAddress!.port!) }, logger: logger)
    let group = ServiceGroup(configuration: .init(services: [app], logger: logger))
    try await withThrowingTaskGroup(of: Void.self) { tasks in
        tasks.addTask {
            defer { port.finish() }
            try await group.run()
        }
        var iterator = ports.makeAsyncIterator()
        guard let bound = await iterator.next() else { throw ServerDidNotStart(what: "the test's server") }
        do {
            try await body(bound)
        } catch {
            await group.triggerGracefulShutdown()
            try? await tasks.waitForAll()
            throw error
        }
        await group.triggerGracefulShutdown()
        try await tasks.waitForAll()
    }
}

/// A raw TCP connection, for what an HTTP client library hides: interim responses, half-sent
/// requests, whether the server closes.
struct RawConnection {
    let inbound: NIOAsyncChannelInboundStream<ByteBuffer>
    let outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>

    /// Connects to `port` on loopback and runs `body` with the connection.
    static func with(port: Int, _ body: (RawConnection) async throws -> Void) async throws {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: "127.0.0.1", port: port) { channel in
                channel.eventLoop.makeCompletedFuture { try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel) }
            }
        try await channel.executeThenClose { inbound, outbound in
            try await body(RawConnection(inbound: inbound, outbound: outbound))
        }
    }

    func send(_ text: String) async throws {
        try await outbound.write(ByteBuffer(string: text))
    }

    /// Everything the server sends until it closes the connection, or nil if it is still open
    /// after `limit` (generous: the outcome must not depend on a busy machine's speed).
    func readUntilClosed(limit: Duration = .seconds(20)) async throws -> String? {
        let inbound = self.inbound
        return try? await Deadline.run(until: .now.advanced(by: limit), orThrow: CancellationError()) {
            var text = ""
            for try await chunk in inbound { text += String(buffer: chunk) }
            return text
        }
    }

    /// Reads until the server closes the connection or resets it (a server that closes with
    /// unread bytes in its buffer sends a reset, which may drop what it wrote last); nil when
    /// `limit` passes first. Returns what arrived.
    func readUntilEnded(limit: Duration = .seconds(20)) async throws -> String? {
        let inbound = self.inbound
        return try? await Deadline.run(until: .now.advanced(by: limit), orThrow: CancellationError()) {
            var text = ""
            do {
                for try await chunk in inbound { text += String(buffer: chunk) }
            } catch {
                // A reset ends the connection as a close does.
            }
            return text
        }
    }

    /// Reads until the received text contains `marker` (or the connection ends, or `limit` passes).
    func read(until marker: String, limit: Duration = .seconds(20)) async throws -> String {
        let inbound = self.inbound
        return (try? await Deadline.run(until: .now.advanced(by: limit), orThrow: CancellationError()) {
            var text = ""
            for try await chunk in inbound {
                text += String(buffer: chunk)
                if text.contains(marker) { break }
            }
            return text
        }) ?? ""
    }
}

/// Two threads shared by every test's emulator for making PNGs, apart from the pool the
/// gateway's SQLite uses (see `EmulatorConfiguration.renderThreadPool`).
let emulatorRenderPool: NIOThreadPool = {
    let pool = NIOThreadPool(numberOfThreads: 2)
    pool.start()
    return pool
}()

func emulatorConfiguration(acceptedKeys: Set<String>?) -> EmulatorConfiguration {
    var configuration = EmulatorConfiguration(acceptedKeys: acceptedKeys)
    configuration.renderThreadPool = emulatorRenderPool
    return configuration
}

/// What a bounded wait reports when its condition never held.
struct WaitTimedOut: Error, CustomStringConvertible {
    var what: String
    var timeout: Duration
    var description: String { "waited \(timeout) for \(what)" }
}

/// A server of the test stopped before it listened (its service group's error follows).
struct ServerDidNotStart: Error, CustomStringConvertible {
    var what: String
    var description: String { "\(what) stopped before it listened" }
}

/// Waits until `condition` holds, checking every 20 ms, and fails the test after `timeout`
/// instead of hanging it (a wait with no limit turns a bug into a stuck CI run). The default
/// is generous: under the whole suite on 2 cores, an emulator's first 1K render (a cold cache)
/// has taken over 30 s, and a bound must only ever be reached by a bug.
func eventually(
    _ what: String, timeout: Duration = .seconds(120), _ condition: () async throws -> Bool
) async throws {
    let deadline = ContinuousClock.now.advanced(by: timeout)
    while try await !condition() {
        guard ContinuousClock.now < deadline else { throw WaitTimedOut(what: what, timeout: timeout) }
        try await Task.sleep(for: .milliseconds(20))
    }
}
