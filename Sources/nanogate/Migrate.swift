import ArgumentParser
import Foundation
import Logging
import NanoGateServer
import NanoGateStorage

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
