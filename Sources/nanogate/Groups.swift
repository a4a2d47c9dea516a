import ArgumentParser
import Foundation
import NanoGateCore
import NanoGateServer
import NanoGateStorage

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
                guard let format = ResponseFormat(rawValue: responseFormat) else { throw ValidationError("--response-format must be url or b64_json.") }
                settings.responseFormat = format
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
            var group = KeyGroupSettings(name: try Keys.group(name), responseFormat: .url)
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
