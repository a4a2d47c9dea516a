import ArgumentParser
import Foundation
import Logging
import NanoGateServer
import NanoGateStorage

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

/// Prints `value` as JSON (sorted keys, one document).
func printJSON(_ value: some Encodable) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
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
