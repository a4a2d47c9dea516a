import ArgumentParser
import Foundation
import Logging
import NanoGateServer

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
