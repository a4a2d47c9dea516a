import ArgumentParser
import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import NanoGateCore
import NanoGateServer
import NanoGateStorage
import Upstream

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
