import ArgumentParser
import AsyncHTTPClient
import Foundation
import GeminiEmulator
import Hummingbird
import Logging
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import NanoGateCore
import NanoGateServer
import NanoGateStorage
import ServiceLifecycle
import Upstream
#if canImport(Glibc)
import CMalloc
#endif

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the gateway.")

    /// Every request allocates and frees buffers of a few MB (1K images). glibc's default returns
    /// them to the kernel each time, so every request page-faults them in again; keeping buffers
    /// under 8 MB (a 1K answer grows to a 4 MiB buffer) in the heap removes most of that kernel time, while 4K-sized buffers still go
    /// back to the kernel (a higher threshold doubled the peak RSS under 4K load).
    static func tuneAllocator() {
        #if canImport(Glibc)
        _ = mallopt(M_MMAP_THRESHOLD, 8 * 1024 * 1024)
        _ = mallopt(M_TRIM_THRESHOLD, 32 * 1024 * 1024)
        #endif
    }

    @Option(help: "Address to listen on. Env: NANOGATE_HOST. Default: 127.0.0.1") var host: String?
    @Option(help: "Port. Env: NANOGATE_PORT. Default: 8080") var port: Int?
    @OptionGroup var data: DataDirectoryOption
    @Option(help: "Base of image URLs, e.g. https://img.example.com. Env: NANOGATE_PUBLIC_URL. Default: the request's Host.")
    var publicURL: String?
    @Flag(help: "Start the offline Gemini emulator in-process, point the gateway at it and print a ready demo key.")
    var demo = false
    @Flag(help: "With --demo: the emulator answers as Google answers a new operator today (gemini-2.5-flash-image refused to the project; gemini-3.1-flash-image is shut down either way). Env: NANOGATE_DEMO_NEW_PROJECT=1.")
    var newProject = false
    @Option(help: "Log level (trace, debug, info, notice, warning, error). Env: LOG_LEVEL.") var logLevel: String?

    func run() async throws {
        Self.tuneAllocator()
        var configuration = try data.load()
        if let host { configuration.host = host }
        if let port { configuration.port = port }
        if let publicURL { configuration.publicURL = publicURL }
        let environment = ProcessInfo.processInfo.environment
        let traced = Telemetry.wanted(environment)
        // The composition root picks the log backend once, as swift-log intends; with traces
        // on, every line logged inside a request carries its trace_id and span_id.
        if configuration.logFormat == "json" {
            LoggingSystem.bootstrap({ label, provider in
                var handler = JSONLogHandler(label: label)
                handler.metadataProvider = provider
                return handler
            }, metadataProvider: traced ? Telemetry.loggingMetadata : nil)
        } else if traced {
            LoggingSystem.bootstrap({ label, provider in StreamLogHandler.standardError(label: label, metadataProvider: provider) }, metadataProvider: Telemetry.loggingMetadata)
        }
        var logger = Logger(label: "nanogate")
        logger.logLevel = (logLevel ?? environment["LOG_LEVEL"]).flatMap(Logger.Level.init(rawValue:)) ?? .info
        let tracing = try Telemetry.startTracing(environment: environment, logger: logger)
        configuration.tracing = tracing != nil
        let services = tracing.map { [$0] } ?? []

        guard demo else {
            if configuration.upstream.effectiveChannels.isEmpty {
                logger.warning("No upstream is configured (GEMINI_API_KEY, or channels in the configuration file): every generation will fail with 503. Use --demo to try NanoGate offline.")
            }
            let dependencies = try await GatewayDependencies.live(configuration: configuration, logger: logger)
            let app = buildApplication(configuration: configuration, dependencies: dependencies, logger: logger, services: services)
            try await app.runService()
            return
        }
        try await runDemo(configuration: configuration, logger: logger, services: services)
    }

    /// The emulator on a free loopback port, the gateway pointed at it, and a fresh demo key.
    private func runDemo(configuration: GatewayConfiguration, logger: Logger, services: [any Service]) async throws {
        var configuration = configuration
        let emulatorKey = "demo-google-key"
        let (portStream, portContinuation) = AsyncStream.makeStream(of: Int.self)
        var emulatorConfiguration = EmulatorConfiguration(acceptedKeys: [emulatorKey])
        // Try the fallback offline: NANOGATE_DEMO_RETIRED=gemini-2.5-flash-image makes the emulator answer 404 for it.
        for id in (ProcessInfo.processInfo.environment["NANOGATE_DEMO_RETIRED"] ?? "").split(separator: ",") {
            emulatorConfiguration.retiredModels.insert(id.trimmingCharacters(in: .whitespaces))
        }
        // Serve a shut-down id again (NANOGATE_DEMO_REVIVED=gemini-3.1-flash-image), for its 512 tier.
        for id in (ProcessInfo.processInfo.environment["NANOGATE_DEMO_REVIVED"] ?? "").split(separator: ",") {
            emulatorConfiguration.retiredModels.remove(id.trimmingCharacters(in: .whitespaces))
        }
        // How long the emulator keeps a batch pending (NANOGATE_DEMO_BATCH_DELAY_MS; 2000 by default).
        if let delay = ProcessInfo.processInfo.environment["NANOGATE_DEMO_BATCH_DELAY_MS"].flatMap(Int.init), delay >= 0 {
            emulatorConfiguration.batchDelay = .milliseconds(delay)
        }
        emulatorConfiguration.everyKeyIsNewProject = newProject || ["1", "true", "yes", "on"].contains(ProcessInfo.processInfo.environment["NANOGATE_DEMO_NEW_PROJECT"]?.lowercased() ?? "")
        let emulator = Application(
            router: GeminiEmulator(configuration: emulatorConfiguration).router(),
            configuration: .init(address: .hostname("127.0.0.1", port: 0), serverName: "gemini-emulator"),
            onServerRunning: { channel in
                portContinuation.yield(channel.localAddress?.port ?? 0)
                portContinuation.finish()
            },
            logger: Logger(label: "gemini-emulator")
        )
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await emulator.runService() }
            var iterator = portStream.makeAsyncIterator()
            guard let emulatorPort = await iterator.next() else { throw CleanExit.message("The emulator did not start.") }
            configuration.upstream.baseURL = "http://127.0.0.1:\(emulatorPort)"
            configuration.upstream.apiKeys = [emulatorKey]
            configuration.upstream.channels = []

            let dependencies = try await GatewayDependencies.live(configuration: configuration, logger: logger)
            let keys = dependencies.store
            if (try await keys.listKeys()).contains(where: { $0.name == "demo" && $0.revokedAt == nil }) {
                try await keys.revokeKey(name: "demo")
            }
            let (_, secret) = try await keys.createKey(name: "demo", group: .default)
            let host = configuration.host
            let console = configuration.console
            let consoleOperator = configuration.adminToken != nil && console == .on
            /// The console's address and how to sign in (nothing when it is off).
            @Sendable func consoleLines(_ address: String) -> String {
                guard console != .off else { return "" }
                let how = consoleOperator ? "the demo key, or NANOGATE_ADMIN_TOKEN for the operator's pages" : "the demo key (set NANOGATE_ADMIN_TOKEN for the operator's pages)"
                return "Console: \(address)/console/\n  sign in with \(how)"
            }
            let app = buildApplication(
                configuration: configuration, dependencies: dependencies, logger: logger, services: services,
                onServerRunning: { channel in
                    // The bound port (`--port 0` picks a free one).
                    let address = "http://\(host):\(channel.localAddress?.port ?? 0)"
                    FileHandle.standardOutput.write(Data("""

                        NanoGate demo is running at \(address), answering from the offline Gemini emulator.
                        Demo API key (group "default"): \(secret)
                        \(consoleLines(address))

                        Try it:
                          curl -s \(address)/v1/images/generations \\
                            -H "Authorization: Bearer \(secret)" -H "Content-Type: application/json" \\
                            -d '{"model":"nano-banana","prompt":"a banana on the moon","size":"16:9","response_format":"b64_json"}' \\
                            | python3 -c 'import sys,json,base64; open("banana.png","wb").write(base64.b64decode(json.load(sys.stdin)["data"][0]["b64_json"]))'

                        """.utf8))
                }
            )
            group.addTask { try await app.runService() }
            // When either stops (Ctrl-C stops both), stop the other.
            try await group.next()
            group.cancelAll()
        }
    }
}
