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
import Upstream
#if canImport(Glibc)
import CMalloc
#endif

@main
struct NanoGate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nanogate",
        abstract: "An OpenAI-compatible gateway for Google's nano-banana image models.",
        subcommands: [Serve.self, Migrate.self, Keys.self, Groups.self, Prices.self, Usage.self, Models.self, Channels.self]
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
    @Flag(help: "With --demo: the emulator answers as Google answers a new operator today (gemini-2.5-flash-image refused to the project; gemini-3.1-flash-image is shut down either way). Env: NANOGATE_DEMO_NEW_PROJECT=1.")
    var newProject = false
    @Option(help: "Log level (trace, debug, info, notice, warning, error). Env: LOG_LEVEL.") var logLevel: String?

    func run() async throws {
        Self.tuneAllocator()
        var configuration = try data.load()
        if let host { configuration.host = host }
        if let port { configuration.port = port }
        if let publicURL { configuration.publicURL = publicURL }
        if configuration.logFormat == "json" {
            // The composition root picks the log backend once, as swift-log intends.
            LoggingSystem.bootstrap { label in JSONLogHandler(label: label) }
        }
        var logger = Logger(label: "nanogate")
        logger.logLevel = (logLevel ?? ProcessInfo.processInfo.environment["LOG_LEVEL"]).flatMap(Logger.Level.init(rawValue:)) ?? .info

        guard demo else {
            if configuration.upstream.effectiveChannels.isEmpty {
                logger.warning("No upstream is configured (GEMINI_API_KEY, or channels in the configuration file): every generation will fail with 503. Use --demo to try NanoGate offline.")
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
        // Serve a shut-down id again (NANOGATE_DEMO_REVIVED=gemini-3.1-flash-image), for its 512 tier.
        for id in (ProcessInfo.processInfo.environment["NANOGATE_DEMO_REVIVED"] ?? "").split(separator: ",") {
            emulatorConfiguration.retiredModels.remove(id.trimmingCharacters(in: .whitespaces))
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
            let app = buildApplication(
                configuration: configuration, dependencies: dependencies, logger: logger,
                onServerRunning: { channel in
                    // The bound port (`--port 0` picks a free one).
                    let address = "http://\(host):\(channel.localAddress?.port ?? 0)"
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

/// Prints `value` as JSON (sorted keys, one document).
func printJSON(_ value: some Encodable) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Bring the database's schema up to date, then exit (serve does it too; run this as a deploy step)."
    )
    @OptionGroup var data: DataDirectoryOption

    func run() async throws {
        let configuration = try data.load()
        try createPrivateDirectory(configuration.dataDirectory)
        let location = try DatabaseLocation.from(url: configuration.databaseURL, dataDirectory: configuration.dataDirectory)
        let database = try await DatabaseHandle.open(location, poolSize: 1, migrations: .none, logger: Logger(label: "nanogate"))
        do {
            let applied = try await database.store.migrate()
            let version = try await database.store.schemaVersion().current
            print(applied.isEmpty ? "\(location.redacted): schema at version \(version), nothing to do." : "\(location.redacted): applied \(applied.map(String.init).joined(separator: ", ")); schema at version \(version).")
            try await database.close()
        } catch {
            try? await database.close()
            throw error
        }
    }
}

/// Opens the database (the data directory's, or `NANOGATE_DATABASE_URL`) for one operator
/// command. The embedded SQLite file is brought up to date as it opens; a shared PostgreSQL
/// database must already be (`nanogate migrate`), so an operator's command never changes the
/// schema under running gateways.
func withOperator<T>(_ data: DataDirectoryOption, _ body: (OperatorService) async throws -> T) async throws -> T {
    let configuration = try data.load()
    try createPrivateDirectory(configuration.dataDirectory)
    var logger = Logger(label: "nanogate")
    logger.logLevel = .warning
    let location = try DatabaseLocation.from(url: configuration.databaseURL, dataDirectory: configuration.dataDirectory)
    let policy: MigrationPolicy = if case .sqlite = location { .apply } else { .require }
    let database = try await DatabaseHandle.open(location, poolSize: 2, migrations: policy, logger: logger)
    do {
        let result = try await body(OperatorService(store: database.store, catalog: configuration.catalog))
        try await database.close()
        return result
    } catch {
        try? await database.close()
        throw error
    }
}

/// Options shared by `keys create` and `keys update`.
struct KeyLimitOptions: ParsableArguments {
    @Option(help: "Credit in USD (absent: unlimited).") var credit: Double?
    @Option(help: "Expiry, ISO 8601 (2027-01-01T00:00:00Z).") var expires: String?
    @Option(help: "Models the key may use, comma-separated (absent: all).") var models: String?
    @Option(help: "Requests per minute.") var rpm: Int?
    @Option(help: "Requests in flight at once.") var concurrency: Int?
    @Option(help: "Service tiers the key may use, comma-separated: flex, standard, priority (absent: its group's).") var tiers: String?

    func expiryDate() throws -> Date? {
        guard let expires else { return nil }
        guard let date = OperatorService.date(expires) else { throw ValidationError("--expires must be ISO 8601, e.g. 2027-01-01T00:00:00Z.") }
        return date
    }

    func modelList() -> [String]? {
        models.map { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty } }
    }

    /// The `--tiers` list, checked (nil when absent).
    func tierList() throws -> [String]? {
        guard let tiers else { return nil }
        do {
            return try ServiceTier.list(tiers.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty })
        } catch {
            throw ValidationError("--tiers: \(error.message)")
        }
    }

    func validate() throws {
        if let rpm, rpm < 1 { throw ValidationError("--rpm must be 1 or more.") }
        if let concurrency, concurrency < 1 { throw ValidationError("--concurrency must be 1 or more.") }
    }
}

struct Keys: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Manage NanoGate API keys.",
        subcommands: [Create.self, Show.self, List.self, Update.self, Rotate.self, Revoke.self]
    )

    static func group(_ text: String) throws -> KeyGroup {
        guard let group = KeyGroup(lenient: text) else { throw ValidationError("--group must be 1 to 64 letters, digits, '-' or '_'.") }
        return group
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a key; its secret is printed once, alone on the last line.")
        @Option(help: "A unique name for the key.") var name: String
        @Option(help: "Its group: default (answers with URLs unless asked), gemini (base64), or one you created.") var group = "default"
        @OptionGroup var limits: KeyLimitOptions
        @Flag(help: "Print the key as JSON (with its secret in `secret`).") var json = false
        @OptionGroup var data: DataDirectoryOption

        func run() async throws {
            let options = KeyOptions(
                creditMicroUSD: try limits.credit.map { try OperatorService.microUSD($0, field: "--credit") }, expiresAt: try limits.expiryDate(),
                models: limits.modelList(), rpm: limits.rpm, concurrency: limits.concurrency
            )
            let group = try Keys.group(group)
            let tiers = try limits.tierList()
            let (key, secret) = try await withOperator(data) { service in
                let created = try await service.store.createKey(name: name, group: group, options: options)
                guard let tiers else { return created }
                return (try await service.store.updateKey(name: name, KeyUpdate(serviceTiers: .set(tiers))), created.secret)
            }
            if json {
                try printJSON(OperatorService.KeyView(key, secret: secret))
                return
            }
            print("Created key '\(key.name)' (group \(key.group.rawValue)\(key.creditMicroUSD.map { ", credit $" + String(format: "%.2f", TokenPrices.usd($0)) } ?? "")). Store the secret now; it is not shown again:")
            print(secret)
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one key: group, credit, spent, reserved, balance, limits.")
        @Argument(help: "The key's name.") var name: String
        @Flag(help: "Print JSON.") var json = false
        @OptionGroup var data: DataDirectoryOption

        func run() async throws {
            guard let key = try await withOperator(data, { try await $0.store.key(named: name) }) else { throw ValidationError("No active key named '\(name)'.") }
            let view = OperatorService.KeyView(key)
            if json { return try printJSON(view) }
            func usd(_ value: Double?) -> String { value.map { String(format: "$%.6f", $0) } ?? "unlimited" }
            print("""
                name:        \(view.name)
                group:       \(view.group)
                credit:      \(usd(view.credit_usd))
                spent:       \(usd(view.spent_usd))
                reserved:    \(usd(view.reserved_usd))
                balance:     \(usd(view.balance_usd))
                expires:     \(view.expires_at ?? "never")
                models:      \(view.models?.joined(separator: ",") ?? "all")
                rpm:         \(view.rpm.map(String.init) ?? "no limit")
                concurrency: \(view.concurrency.map(String.init) ?? "no limit")
                disabled:    \(view.disabled)
                """)
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List keys (never their secrets).")
        @Flag(help: "Print JSON (active keys).") var json = false
        @OptionGroup var data: DataDirectoryOption

        func run() async throws {
            let keys = try await withOperator(data) { try await $0.store.listKeys() }
            if json { return try printJSON(keys.filter { $0.revokedAt == nil }.map { OperatorService.KeyView($0) }) }
            let formatter = ISO8601DateFormatter()
            print(["NAME", "GROUP", "PREFIX", "CREATED", "STATUS", "BALANCE"].joined(separator: "\t"))
            for key in keys {
                let status = key.revokedAt.map { "revoked \(formatter.string(from: $0))" } ?? (key.disabled ? "disabled" : "active")
                let balance = key.balanceMicroUSD.map { String(format: "$%.2f", TokenPrices.usd($0)) } ?? "unlimited"
                print([key.name, key.group.rawValue, key.prefix + "…", formatter.string(from: key.createdAt), status, balance].joined(separator: "\t"))
            }
        }
    }

    struct Update: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Change a key's group, credit, expiry, models or limits.")
        @Argument(help: "The key's name.") var name: String
        @Option(help: "Move it to this group.") var group: String?
        @OptionGroup var limits: KeyLimitOptions
        @Option(help: "Add this many USD to its credit (a top-up, atomic).") var addCredit: Double?
        @Flag(help: "Make it unlimited (no credit).") var unlimited = false
        @Flag(help: "Disable it (401 until enabled).") var disable = false
        @Flag(help: "Enable it.") var enable = false
        @Flag(help: "Print JSON.") var json = false
        @OptionGroup var data: DataDirectoryOption

        func run() async throws {
            var update = KeyUpdate()
            if let group { update.group = try Keys.group(group) }
            if let credit = limits.credit { update.credit = .set(try OperatorService.microUSD(credit, field: "--credit")) }
            if unlimited { update.credit = .clear }
            if let add = addCredit { update.addCredit = try OperatorService.microUSD(add, field: "--add-credit") }
            if let expires = try limits.expiryDate() { update.expiresAt = .set(expires) }
            if let models = limits.modelList() { update.models = models.isEmpty ? .clear : .set(models) }
            if let rpm = limits.rpm { update.rpm = .set(rpm) }
            if let concurrency = limits.concurrency { update.concurrency = .set(concurrency) }
            if let tiers = try limits.tierList() { update.serviceTiers = tiers.isEmpty ? .clear : .set(tiers) }
            if disable { update.disabled = true }
            if enable { update.disabled = false }
            let key = try await withOperator(data) { try await $0.store.updateKey(name: name, update) }
            if json { return try printJSON(OperatorService.KeyView(key)) }
            print("Updated key '\(key.name)'.")
        }
    }

    struct Rotate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Give a key a new secret (printed alone on the last line); the old one stops working at once.")
        @Argument(help: "The key's name.") var name: String
        @Flag(help: "Print the key as JSON (with its new secret in `secret`).") var json = false
        @OptionGroup var data: DataDirectoryOption

        func run() async throws {
            let (key, secret) = try await withOperator(data) { try await $0.store.rotateKey(name: name) }
            if json { return try printJSON(OperatorService.KeyView(key, secret: secret)) }
            print("Rotated key '\(key.name)'. Store the new secret now; it is not shown again:")
            print(secret)
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Revoke the active key with this name; it stops working at once.")
        @Argument(help: "The key's name.") var name: String
        @Flag(help: "Print JSON.") var json = false
        @OptionGroup var data: DataDirectoryOption

        func run() async throws {
            try await withOperator(data) { try await $0.store.revokeKey(name: name) }
            struct Revoked: Encodable {
                var name: String
                var revoked = true
            }
            if json { return try printJSON(Revoked(name: name)) }
            print("Revoked key '\(name)'.")
        }
    }
}

struct Groups: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Manage key groups.", subcommands: [Create.self, List.self, Update.self])

    struct Settings: ParsableArguments {
        @Option(help: "url or b64_json: the answer when a request names no response_format.") var responseFormat: String?
        @Option(help: "Price multiplier on every charge (1.0: Google's price).") var multiplier: Double?
        @Option(help: "Models its keys may use, comma-separated (absent: all).") var models: String?
        @Option(help: "Service tiers its keys may use, comma-separated: flex, standard, priority (default: standard,flex).") var tiers: String?

        func apply(to settings: inout KeyGroupSettings) throws {
            if let tiers {
                do {
                    let list = try ServiceTier.list(tiers.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty })
                    settings.serviceTiers = list.isEmpty ? nil : list
                } catch {
                    throw ValidationError("--tiers: \(error.message)")
                }
            }
            if let responseFormat {
                guard ["url", "b64_json"].contains(responseFormat) else { throw ValidationError("--response-format must be url or b64_json.") }
                settings.responseFormat = responseFormat
            }
            if let multiplier {
                guard multiplier.isFinite, multiplier >= 0, multiplier <= 1000 else { throw ValidationError("--multiplier must be from 0 to 1000.") }
                settings.multiplierPPM = Int((multiplier * 1_000_000).rounded())
            }
            if let models {
                let list = models.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
                settings.models = list.isEmpty ? nil : list
            }
        }
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a group.")
        @Argument(help: "Its name.") var name: String
        @OptionGroup var settings: Settings
        @Flag(help: "Print JSON.") var json = false
        @OptionGroup var data: DataDirectoryOption

        func run() async throws {
            var group = KeyGroupSettings(name: try Keys.group(name), responseFormat: "url")
            try settings.apply(to: &group)
            try await withOperator(data) { try await $0.store.createGroup(group) }
            if json { return try printJSON(OperatorService.GroupView(group)) }
            print("Created group '\(group.name.rawValue)'.")
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List groups.")
        @Flag(help: "Print JSON.") var json = false
        @OptionGroup var data: DataDirectoryOption

        func run() async throws {
            let groups = try await withOperator(data) { try await $0.store.listGroups() }.map(OperatorService.GroupView.init)
            if json { return try printJSON(groups) }
            print(["NAME", "RESPONSE_FORMAT", "MULTIPLIER", "MODELS"].joined(separator: "\t"))
            for group in groups {
                print([group.name, group.response_format, "\(group.multiplier)", group.models?.joined(separator: ",") ?? "all"].joined(separator: "\t"))
            }
        }
    }

    struct Update: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Change a group.")
        @Argument(help: "Its name.") var name: String
        @OptionGroup var settings: Settings
        @Flag(help: "Print JSON.") var json = false
        @OptionGroup var data: DataDirectoryOption

        func run() async throws {
            let group = try await withOperator(data) { service -> KeyGroupSettings in
                guard var group = try await service.store.group(named: try Keys.group(name)) else { throw ValidationError("No group named '\(name)'.") }
                try settings.apply(to: &group)
                try await service.store.updateGroup(group)
                return group
            }
            if json { return try printJSON(OperatorService.GroupView(group)) }
            print("Updated group '\(name)'.")
        }
    }
}

struct Prices: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Prices per upstream model (USD per 1M tokens by modality).", subcommands: [List.self, Set.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the prices every upstream model is charged at.")
        @Flag(help: "Print JSON.") var json = false
        @OptionGroup var data: DataDirectoryOption

        func run() async throws {
            let prices = try await withOperator(data) { try await $0.prices() }
            if json { return try printJSON(prices) }
            print(["MODEL", "INPUT_TEXT", "INPUT_IMAGE", "OUTPUT_TEXT", "OUTPUT_IMAGE", "SOURCE"].joined(separator: "\t"))
            for price in prices {
                print([price.model, "\(price.input_text)", "\(price.input_image)", "\(price.output_text)", "\(price.output_image)", price.source].joined(separator: "\t"))
            }
        }
    }

    struct Set: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Override an upstream model's prices (the others keep theirs).")
        @Argument(help: "The upstream model id, e.g. gemini-3-pro-image.") var model: String
        @Option(help: "USD per 1M input text tokens.") var inputText: Double?
        @Option(help: "USD per 1M input image tokens.") var inputImage: Double?
        @Option(help: "USD per 1M output text tokens (thinking included).") var outputText: Double?
        @Option(help: "USD per 1M output image tokens.") var outputImage: Double?
        @Flag(help: "Print JSON.") var json = false
        @OptionGroup var data: DataDirectoryOption

        func run() async throws {
            let view = try await withOperator(data) {
                try await $0.setPrice(model: model, inputText: inputText, inputImage: inputImage, outputText: outputText, outputImage: outputImage)
            }
            if json { return try printJSON(view) }
            print("Set \(view.model): input text \(view.input_text), input image \(view.input_image), output text \(view.output_text), output image \(view.output_image) USD per 1M tokens.")
        }
    }
}

struct Usage: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "The usage log: one row per request, newest first.")
    @Option(help: "Only this key's rows.") var key: String?
    @Option(help: "From this time (ISO 8601).") var since: String?
    @Option(help: "Until this time (ISO 8601).") var until: String?
    @Flag(help: "Print CSV.") var csv = false
    @Flag(help: "Print JSON.") var json = false
    @OptionGroup var data: DataDirectoryOption

    func run() async throws {
        func date(_ text: String?, _ flag: String) throws -> Date? {
            guard let text else { return nil }
            guard let date = OperatorService.date(text) else { throw ValidationError("\(flag) must be ISO 8601.") }
            return date
        }
        let rows = try await withOperator(data) { try await $0.usage(keyName: key, since: try date(since, "--since"), until: try date(until, "--until")) }
        if json { return try printJSON(rows) }
        if csv { return print(OperatorService.csv(rows), terminator: "") }
        print(["TIME", "KEY", "MODEL", "ENDPOINT", "STATUS", "IMAGES", "COST_USD", "ERROR"].joined(separator: "\t"))
        for row in rows {
            print([row.created_at, row.key ?? "", row.model, row.endpoint, "\(row.status)", "\(row.images)", String(format: "%.6f", row.cost_usd), row.error_code ?? ""].joined(separator: "\t"))
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
            abstract: "Read every channel's model list now and print which channel serves which model (the model × channel matrix), with catalog entries for image models the catalog does not know.",
            discussion: """
                A cell is listed (the channel's model list offers the id), unchecked (its kind cannot list, e.g. Vertex: tried until Google refuses), \
                not_listed, refused (its project refused the id within the hour, as the gateway learned) or not_routed (its models setting leaves it out). \
                What is read is stored in the database, so running gateways route by it. Exits with 1 when a model can be served by no id of its chain.
                """
        )
        @OptionGroup var data: DataDirectoryOption

        func run() async throws {
            let configuration = try data.load()
            var logger = Logger(label: "nanogate")
            logger.logLevel = .critical
            let check = try await withChannelPool(data, configuration: configuration, logger: logger) { service in try await service.checkAll() }
            print(check.report)
            if !check.suggestions.isEmpty { print("\n" + check.suggestions, terminator: "") }
            let broken = check.lines.filter { !$0.servable }
            if !broken.isEmpty {
                FileHandle.standardError.write(Data("\(broken.count) model(s) cannot be served: \(broken.map(\.model).joined(separator: ", ")). Change their upstream or fallback in the configuration file.\n".utf8))
                throw ExitCode(1)
            }
        }
    }
}

/// Runs `body` with the channels of the configuration file and the database in one pool (no
/// call made yet) and the database's knowledge of them, then closes both.
func withChannelPool<T>(
    _ data: DataDirectoryOption, configuration: GatewayConfiguration, logger: Logger, _ body: (ChannelKnowledgeService) async throws -> T
) async throws -> T {
    try await withOperator(data) { service in
        let pool = UpstreamPool(configuration: configuration.upstream, logger: logger)
        pool.replaceManagedChannels(try await service.store.storedChannels().compactMap { try? ManagedChannels.channel(fromJSON: $0.json) })
        let knowledge = ChannelKnowledgeService(store: service.store, pool: pool, catalog: configuration.catalog, logger: logger)
        do {
            let result = try await body(knowledge)
            await pool.shutdown()
            return result
        } catch {
            await pool.shutdown()
            throw error
        }
    }
}

struct Channels: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show, add and test the upstream channels (GEMINI_API_KEY, channels: in the configuration file, and those added here or through the admin API).",
        subcommands: [List.self, Add.self, Remove.self, Test.self]
    )

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the channels; with a running gateway (its admin API), their live state: cool-downs, tripped breakers, refused keys, load.",
            discussion: "The live state is read from GET /admin/v1/channels of --url (default: the configured host and port) with NANOGATE_ADMIN_TOKEN; without it, the configuration alone is shown."
        )
        @OptionGroup var data: DataDirectoryOption
        @Option(help: "The running gateway's base URL. Default: http://HOST:PORT from the configuration.") var url: String?
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let configuration = try data.load()
            var live: [ChannelStatus]?
            var note: String?
            if let token = configuration.adminToken {
                let base = url ?? "http://\(configuration.host == "0.0.0.0" ? "127.0.0.1" : configuration.host):\(configuration.port)"
                do {
                    var request = HTTPClientRequest(url: base + "/admin/v1/channels")
                    request.headers.add(name: "Authorization", value: "Bearer \(token)")
                    let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
                    let body = try await response.body.collect(upTo: 4 * 1024 * 1024)
                    struct List: Decodable { var data: [ChannelStatus] }
                    if response.status == .ok {
                        live = try JSONDecoder().decode(List.self, from: body).data
                    } else {
                        note = "the gateway at \(base) answered \(response.status.code) to GET /admin/v1/channels"
                    }
                } catch {
                    note = "no gateway answered at \(base) (\(error)); showing the configuration and what the database knows"
                }
            } else {
                note = "NANOGATE_ADMIN_TOKEN is not set, so the live load of a running gateway cannot be read; showing the configuration and what the database knows"
            }
            var rows: [ChannelStatus]
            if let live {
                rows = live
            } else {
                // What every instance stored: refused credentials, each channel's model list,
                // its project's refusals (not the load, which only a running gateway knows).
                var logger = Logger(label: "nanogate")
                logger.logLevel = .critical
                rows = try await withChannelPool(data, configuration: configuration, logger: logger) { knowledge in
                    try await knowledge.applyStored()
                    return knowledge.pool.status(models: configuration.catalog.upstreamAliases).map { row in
                        // Nothing learned yet (never listed, nothing refused): no state to claim.
                        var row = row
                        if row.state == "ok" && row.modelsCheckedAt == nil && row.disabledKeys.isEmpty && (row.refusedModels ?? []).isEmpty { row.state = "unknown" }
                        return row
                    }
                }
            }
            if json {
                try printJSON(rows)
                return
            }
            if let note { FileHandle.standardError.write(Data("note: \(note)\n".utf8)) }
            var table = [["NAME", "KIND", "PRIORITY", "WEIGHT", "STATE", "KEYS", "IN FLIGHT", "MODELS", "DETAIL"]]
            for row in rows {
                var detail: [String] = []
                if !row.disabledKeys.isEmpty { detail.append("refused keys: " + row.disabledKeys.map { "#\($0)" }.joined(separator: ",")) }
                if !row.coolingModels.isEmpty { detail.append("cooling: " + row.coolingModels.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)s" }.joined(separator: ", ")) }
                if row.consecutiveFailures > 0 { detail.append("\(row.consecutiveFailures) failures in a row") }
                if let refused = row.refusedModels, !refused.isEmpty { detail.append("its project refuses: " + refused.joined(separator: ",")) }
                if let listed = row.listedModels { detail.append("lists \(listed) models") }
                if let error = row.modelsCheckError { detail.append("model list unreadable: \(error)") }
                if let error = row.lastError, row.state != "ok" { detail.append("last error: \(error)") }
                table.append([
                    row.name, row.kind, "\(row.priority)", "\(row.weight)", row.state, "\(row.keys)", "\(row.inFlight)/\(row.maxConcurrency)",
                    row.models?.joined(separator: ",") ?? "all", detail.joined(separator: "; "),
                ])
            }
            let widths = (0..<9).map { column in table.map { $0[column].count }.max() ?? 0 }
            for line in table {
                print(line.enumerated().map { $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  ").trimmingCharacters(in: .whitespaces))
            }
        }
    }

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add or replace a channel in the database (a running gateway puts it in service within seconds).",
            discussion: "The channel's settings are the configuration file's keys, given as flags or as one JSON object with --json. A channel the configuration file defines cannot be added here."
        )
        @OptionGroup var data: DataDirectoryOption
        @Argument(help: "The channel's name.") var name: String
        @Option(help: "gemini, vertex, vertex-express or openai.") var kind: String?
        @Option(help: "The API's base URL.") var baseURL: String?
        @Option(name: .customLong("api-key"), help: "A credential (repeatable).") var apiKeys: [String] = []
        @Option(help: "Vertex: the service-account JSON file (a path on the gateway's machine).") var serviceAccountFile: String?
        @Option(help: "Vertex: the project.") var project: String?
        @Option(help: "Vertex: the location (default global).") var location: String?
        @Option(help: "Vertex: the token endpoint.") var tokenURL: String?
        @Option(help: "Higher first (default 0).") var priority: Int?
        @Option(help: "Share within its priority (default 1).") var weight: Int?
        @Option(help: "Models it serves, comma-separated; id=upstream-id maps one (absent: all).") var models: String?
        @Option(help: "Outbound HTTP proxy, http://[user:pass@]host:port.") var proxy: String?
        @Option(help: "Calls in flight at once (default 1024).") var maxConcurrency: Int?
        @Option(help: "Seconds per call.") var timeout: Int?
        @Option(help: "The whole channel as one JSON object (instead of the flags).") var json: String?

        func run() async throws {
            let configuration = try data.load()
            guard !configuration.upstream.effectiveChannels.contains(where: { $0.name == name }) else {
                throw ValidationError("The channel '\(name)' is defined in the configuration file; change it there.")
            }
            var object: [String: Any] = [:]
            if let json {
                guard let parsed = (try? JSONSerialization.jsonObject(with: Data(json.utf8))) as? [String: Any] else { throw ValidationError("--json must be a JSON object.") }
                object = parsed
            }
            object["name"] = name
            if let kind { object["kind"] = kind }
            if let baseURL { object["base_url"] = baseURL }
            if !apiKeys.isEmpty { object["api_keys"] = apiKeys }
            if let serviceAccountFile { object["service_account_file"] = URL(fileURLWithPath: serviceAccountFile).standardizedFileURL.path }
            if let project { object["project"] = project }
            if let location { object["location"] = location }
            if let tokenURL { object["token_url"] = tokenURL }
            if let priority { object["priority"] = priority }
            if let weight { object["weight"] = weight }
            if let proxy { object["proxy"] = proxy }
            if let maxConcurrency { object["max_concurrency"] = maxConcurrency }
            if let timeout { object["timeout"] = timeout }
            if let models {
                object["models"] = models.split(separator: ",").map { item -> Any in
                    let pair = item.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
                    return pair.count == 2 ? ["name": pair[0], "upstream": pair[1]] : pair[0]
                }
            }
            let text = String(decoding: try JSONSerialization.data(withJSONObject: object), as: UTF8.self)
            let channel: ChannelConfiguration
            do {
                channel = try ManagedChannels.channel(fromJSON: text)
            } catch {
                throw ValidationError("Invalid channel: \(error.problems.joined(separator: "; ")).")
            }
            try await withOperator(data) { service in try await service.store.storeChannel(name: name, json: try ManagedChannels.json(channel)) }
            print("channel \(name) (\(channel.kind.rawValue)) stored; a running gateway puts it in service within \(ManagedChannels.refreshInterval)")
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a channel added with `channels add` or the admin API.")
        @OptionGroup var data: DataDirectoryOption
        @Argument(help: "The channel's name.") var name: String

        func run() async throws {
            guard try await withOperator(data, { service in try await service.store.deleteChannel(name: name) }) else {
                throw ValidationError("No stored channel is named '\(name)' (channels of the configuration file are removed there).")
            }
            print("channel \(name) removed")
        }
    }

    struct Test: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make one tiny real call on a channel (countTokens on Google, GET /v1/models on an OpenAI-compatible one) and print the outcome.",
            discussion: "Exits with 1 when the channel failed."
        )
        @OptionGroup var data: DataDirectoryOption
        @Argument(help: "The channel's name (nanogate channels list).") var name: String
        @Option(help: "The model id to try. Default: the channel's first model, else the catalog's first upstream id.") var model: String?

        func run() async throws {
            var configuration = try data.load()
            var logger = Logger(label: "nanogate")
            logger.logLevel = .critical
            let stored = try await withOperator(data) { service in try await service.store.storedChannels() }
            let storedChannels = stored.compactMap { try? ManagedChannels.channel(fromJSON: $0.json) }
            let all = configuration.upstream.effectiveChannels + storedChannels
            if !configuration.upstream.effectiveChannels.contains(where: { $0.name == name }), let managed = storedChannels.first(where: { $0.name == name }) {
                configuration.upstream.channels = [managed]
            }
            guard let channel = all.first(where: { $0.name == name }) else {
                let names = all.map(\.name)
                throw ValidationError("No channel is named '\(name)' (channels: \(names.isEmpty ? "none" : names.joined(separator: ", "))).")
            }
            let target = model ?? channel.models?.first?.name ?? configuration.catalog.models.first?.upstreamModel ?? "gemini-2.5-flash-image"
            let pool = UpstreamPool(configuration: configuration.upstream, logger: logger)
            let started = ContinuousClock.now
            let outcome: Result<String, UpstreamError>
            do {
                outcome = .success(try await pool.probe(channel: name, model: target, logger: logger))
            } catch {
                outcome = .failure(error)
            }
            await pool.shutdown()
            let elapsed = Int((started.duration(to: .now) / .milliseconds(1)).rounded())
            switch outcome {
            case .success(let text):
                print("ok  \(name) (\(channel.kind.rawValue)) \(target): \(text) in \(elapsed) ms")
            case .failure(let error):
                print("FAILED  \(name) (\(channel.kind.rawValue)) \(target): \(error) in \(elapsed) ms")
                throw ExitCode(1)
            }
        }
    }
}
