import ArgumentParser
import Foundation
import NanoGateServer

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
