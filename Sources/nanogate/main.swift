import ArgumentParser
import AsyncHTTPClient
import Foundation
import GeminiEmulator
import Hummingbird
import Logging
import NanoGateCore
import NanoGateServer
import NanoGateStorage
import Upstream
#if canImport(Glibc)
import CMalloc
#endif

@main
struct NanoGate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nanogate",
        abstract: "An OpenAI-compatible gateway for Google's nano-banana image models.",
        subcommands: [Serve.self, Keys.self, Models.self]
    )
}

/// Options shared by every command: the configuration file and the data directory.
struct DataDirectoryOption: ParsableArguments {
    @Option(help: "Configuration file (YAML or JSON): settings and the models list. Env: NANOGATE_CONFIG.")
    var config: String?
    @Option(help: "Data directory (database, images). Env: NANOGATE_DATA_DIR. Default: ./nanogate-data")
    var dataDir: String?

    /// The file (if any) under the environment, then these flags.
    func load() throws -> GatewayConfiguration {
        let environment = ProcessInfo.processInfo.environment
        var configuration = try ConfigurationFile.configuration(path: config ?? environment["NANOGATE_CONFIG"], environment: environment)
        apply(to: &configuration)
        return configuration
    }

    func apply(to configuration: inout GatewayConfiguration) {
        if let dataDir { configuration.dataDirectory = URL(fileURLWithPath: dataDir) }
    }
}

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
    @Option(help: "Log level (trace, debug, info, notice, warning, error). Env: LOG_LEVEL.") var logLevel: String?

    func run() async throws {
        Self.tuneAllocator()
        var configuration = try data.load()
        if let host { configuration.host = host }
        if let port { configuration.port = port }
        if let publicURL { configuration.publicURL = publicURL }
        var logger = Logger(label: "nanogate")
        logger.logLevel = (logLevel ?? ProcessInfo.processInfo.environment["LOG_LEVEL"]).flatMap(Logger.Level.init(rawValue:)) ?? .info

        guard demo else {
            if configuration.upstream.apiKeys.isEmpty {
                logger.warning("GEMINI_API_KEY is not set: every generation will fail with 503. Use --demo to try NanoGate offline.")
            }
            let dependencies = try await GatewayDependencies.live(configuration: configuration, logger: logger)
            let app = buildApplication(configuration: configuration, dependencies: dependencies, logger: logger)
            try await app.runService()
            return
        }
        try await runDemo(configuration: configuration, logger: logger)
    }

    /// The emulator on a free loopback port, the gateway pointed at it, and a fresh demo key.
    private func runDemo(configuration: GatewayConfiguration, logger: Logger) async throws {
        var configuration = configuration
        let emulatorKey = "demo-google-key"
        let (portStream, portContinuation) = AsyncStream.makeStream(of: Int.self)
        var emulatorConfiguration = EmulatorConfiguration(acceptedKeys: [emulatorKey])
        // Try the fallback offline: NANOGATE_DEMO_RETIRED=gemini-2.5-flash-image makes the emulator answer 404 for it.
        for id in (ProcessInfo.processInfo.environment["NANOGATE_DEMO_RETIRED"] ?? "").split(separator: ",") {
            emulatorConfiguration.retiredModels.insert(id.trimmingCharacters(in: .whitespaces))
        }
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

            let dependencies = try await GatewayDependencies.live(configuration: configuration, logger: logger)
            let keys = dependencies.store
            if (try await keys.listKeys()).contains(where: { $0.name == "demo" && $0.revokedAt == nil }) {
                try await keys.revokeKey(name: "demo")
            }
            let (_, secret) = try await keys.createKey(name: "demo", group: .default)
            let address = "http://\(configuration.host):\(configuration.port)"
            let app = buildApplication(
                configuration: configuration, dependencies: dependencies, logger: logger,
                onServerRunning: { _ in
                    FileHandle.standardOutput.write(Data("""

                        NanoGate demo is running at \(address), answering from the offline Gemini emulator.
                        Demo API key (group "default"): \(secret)

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

struct Keys: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Manage NanoGate API keys.",
        subcommands: [Create.self, List.self, Revoke.self]
    )

    /// Opens the data directory's database for one command.
    static func withStore<T>(_ data: DataDirectoryOption, _ body: (SQLStore) async throws -> T) async throws -> T {
        let configuration = try data.load()
        try createPrivateDirectory(configuration.dataDirectory)
        var logger = Logger(label: "nanogate")
        logger.logLevel = .warning
        let database = try await SQLiteDatabaseHandle.open(path: configuration.dataDirectory.appendingPathComponent("nanogate.sqlite").path, logger: logger)
        do {
            let result = try await body(database.store)
            try await database.close()
            return result
        } catch {
            try? await database.close()
            throw error
        }
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a key; its secret is printed once, alone on the last line.")
        @Option(help: "A unique name for the key.") var name: String
        @Option(help: "default (answers with URLs unless asked) or gemini (answers with base64).") var group = "default"
        @OptionGroup var data: DataDirectoryOption

        func run() async throws {
            guard let keyGroup = KeyGroup(lenient: group) else {
                throw ValidationError("--group must be one of: \(KeyGroup.allCases.map(\.rawValue).joined(separator: ", ")).")
            }
            let (key, secret) = try await Keys.withStore(data) { try await $0.createKey(name: name, group: keyGroup) }
            print("Created key '\(key.name)' (group \(key.group.rawValue)). Store the secret now; it is not shown again:")
            print(secret)
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List keys (never their secrets).")
        @OptionGroup var data: DataDirectoryOption

        func run() async throws {
            let keys = try await Keys.withStore(data) { try await $0.listKeys() }
            let formatter = ISO8601DateFormatter()
            print(["NAME", "GROUP", "PREFIX", "CREATED", "STATUS"].joined(separator: "\t"))
            for key in keys {
                let status = key.revokedAt.map { "revoked \(formatter.string(from: $0))" } ?? "active"
                print([key.name, key.group.rawValue, key.prefix + "…", formatter.string(from: key.createdAt), status].joined(separator: "\t"))
            }
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Revoke the active key with this name; it stops working at once.")
        @Argument(help: "The key's name.") var name: String
        @OptionGroup var data: DataDirectoryOption

        func run() async throws {
            try await Keys.withStore(data) { try await $0.revokeKey(name: name) }
            print("Revoked key '\(name)'.")
        }
    }
}

struct Models: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show and check the model catalog.",
        subcommands: [Export.self, Check.self]
    )

    struct Export: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the catalog (built-in, with the configuration file applied) in the configuration file's format."
        )
        @OptionGroup var data: DataDirectoryOption

        func run() async throws {
            print(try ConfigurationFile.export(try data.load().catalog), terminator: "")
        }
    }

    struct Check: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Ask Google which models it serves (GET /v1beta/models with GEMINI_API_KEY) and check each catalog model's upstream id and fallback.",
            discussion: "Exits with 1 when a model can be served neither by its upstream id nor by its fallback."
        )
        @OptionGroup var data: DataDirectoryOption

        func run() async throws {
            let configuration = try data.load()
            var logger = Logger(label: "nanogate")
            logger.logLevel = .critical
            let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: UpstreamPool.clientConfiguration(requestTimeout: .seconds(30)))
            let pool = UpstreamPool(httpClient: client, configuration: configuration.upstream)
            let result: Result<ModelCheck, GatewayError>
            do {
                result = .success(try await ModelCheck.run(catalog: configuration.catalog, pool: pool, logger: logger))
            } catch {
                result = .failure(error)
            }
            try await client.shutdown()
            switch result {
            case .failure(let error):
                FileHandle.standardError.write(Data("Could not read Google's model list: \(error.message)\n".utf8))
                throw ExitCode(2)
            case .success(let check):
                print(check.report)
                let broken = check.lines.filter { !$0.servable }
                if !broken.isEmpty {
                    FileHandle.standardError.write(Data("\(broken.count) model(s) cannot be served: \(broken.map(\.model).joined(separator: ", ")). Change their upstream or fallback in the configuration file.\n".utf8))
                    throw ExitCode(1)
                }
            }
        }
    }
}
