import Foundation
public import NanoGateCore
public import Upstream
import Yams

/// NanoGate's configuration file (`--config FILE` / `NANOGATE_CONFIG`), YAML or JSON (JSON is
/// YAML): every setting of the environment table under its name in lower case without the
/// `NANOGATE_` prefix (`port: 8080`, `public_url: …`, `gemini_api_key: [k1, k2]`), and the
/// `models:` list (`CatalogFileEntry`). Environment variables and flags override the file's
/// settings; the `models:` list applies on top of the built-in catalog.
public enum ConfigurationFile {
    /// What a file held: settings as environment values, and the models list.
    public struct Contents: Sendable {
        public var settings: [String: String]
        public var models: [CatalogFileEntry]
        public var channels: [ChannelConfiguration] = []
    }

    /// File keys and the environment variables they stand for.
    public static let settingKeys: [String: String] = {
        var keys: [String: String] = ["gemini_api_key": "GEMINI_API_KEY", "log_level": "LOG_LEVEL"]
        for name in [
            "HOST", "PORT", "DATA_DIR", "PUBLIC_URL", "URL_TTL", "URL_SECRET", "GEMINI_BASE_URL", "UPSTREAM_FLASH", "UPSTREAM_PRO",
            "UPSTREAM_FLASH31", "UPSTREAM_FLASH_FALLBACK", "UPSTREAM_TIMEOUT", "UPSTREAM_ATTEMPTS", "MAX_IMAGE_BYTES", "MAX_REQUEST_BYTES",
            "ALLOW_PRIVATE_FETCH", "FETCH_ALLOW_NETWORKS", "ALLOW_HTTP_FETCH", "FETCH_TIMEOUT", "MAX_FETCHES", "KEEPALIVE", "IDLE_TIMEOUT",
            "TRUST_FORWARDED", "CHECK_MODELS", "MODEL_CHECK_INTERVAL", "CHAT_IMAGES", "ADMIN_TOKEN", "RESERVATION_LEASE", "UPSTREAM_DEADLINE", "UPSTREAM_QUEUE",
            "BREAKER_THRESHOLD", "BREAKER_COOLDOWN", "METRICS_PORT", "METRICS_TOKEN", "METRICS_KEY_LABELS", "LOG_FORMAT",
        ] {
            keys[name.lowercased()] = "NANOGATE_" + name
        }
        return keys
    }()

    /// Reads and checks a file: unknown keys (a misspelt `upsteam:`) are errors, never ignored.
    public static func read(path: String) throws(ConfigurationError) -> Contents {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigurationError(problems: ["cannot read the configuration file \(path): \(error.localizedDescription)"])
        }
        return try parse(text, source: path)
    }

    /// Parses a file's text (`source` names it in messages).
    public static func parse(_ text: String, source: String) throws(ConfigurationError) -> Contents {
        let root: Any?
        do {
            root = try Yams.load(yaml: text)
        } catch {
            throw ConfigurationError(problems: ["\(source) is not valid YAML or JSON: \(error)"])
        }
        guard let root else { return Contents(settings: [:], models: []) }
        guard let top = root as? [String: Any] else {
            throw ConfigurationError(problems: ["\(source) must be a mapping of settings (and a 'models' list)"])
        }
        var problems: [String] = []
        var settings: [String: String] = [:]
        for (key, value) in top where key != "models" && key != "channels" {
            guard let variable = settingKeys[key] else {
                problems.append("\(source): unknown setting '\(key)' (known: models, \(settingKeys.keys.sorted().joined(separator: ", ")))")
                continue
            }
            guard let text = scalarText(value) else {
                problems.append("\(source): '\(key)' must be a string, a number, a boolean or a list of them")
                continue
            }
            settings[variable] = text
        }

        var models: [CatalogFileEntry] = []
        if let list = top["models"] {
            if let entries = list as? [Any] {
                for (index, entry) in entries.enumerated() {
                    guard let fields = entry as? [String: Any] else {
                        problems.append("\(source): models[\(index)] must be a mapping (name, like, upstream, …)")
                        continue
                    }
                    for key in fields.keys where !CatalogFileEntry.keys.contains(key) {
                        problems.append("\(source): models[\(index)] has an unknown key '\(key)' (known: \(CatalogFileEntry.keys.sorted().joined(separator: ", ")))")
                    }
                    if let prices = fields["prices"] as? [String: Any] {
                        for key in prices.keys where !CatalogFileEntry.Prices.keys.contains(key) {
                            problems.append("\(source): models[\(index)].prices has an unknown key '\(key)' (known: input, output_text, output_image)")
                        }
                    }
                }
                do {
                    models = try YAMLDecoder().decode(ModelsSection.self, from: text).models ?? []
                } catch {
                    problems.append("\(source): the models list could not be read: \(describe(error))")
                }
            } else if !(list is NSNull) {
                problems.append("\(source): 'models' must be a list")
            }
        }
        let channels = readChannels(top["channels"], text: text, source: source, problems: &problems)
        guard problems.isEmpty else { throw ConfigurationError(problems: problems) }
        return Contents(settings: settings, models: models, channels: channels)
    }

    /// The gateway's configuration: the file's settings under the environment (which wins),
    /// then its `models:` list applied to the built-in catalog.
    public static func configuration(path: String?, environment: [String: String]) throws(ConfigurationError) -> GatewayConfiguration {
        guard let path, !path.isEmpty else { return try GatewayConfiguration.fromEnvironment(environment) }
        let contents = try read(path: path)
        var configuration = try GatewayConfiguration.fromEnvironment(environment, fileSettings: contents.settings)
        configuration.upstream.channels = contents.channels
        do {
            configuration.catalog = try configuration.catalog.applying(contents.models)
        } catch {
            throw ConfigurationError(problems: error.problems.map { "\(path): \($0)" })
        }
        return configuration
    }

    /// The catalog in the file's format (`nanogate models export`); `--config` reads it back unchanged.
    public static func export(_ catalog: ModelCatalog) throws -> String {
        let body = try YAMLEncoder().encode(ModelsSection(models: catalog.fileEntries))
        return """
            # NanoGate model catalog (nanogate models export). Pass it with --config or NANOGATE_CONFIG
            # after editing: an entry whose name exists changes that model, a new name needs `like`
            # (or `family` and `upstream`). Prices are USD per 1M tokens (Google's invoice figures).

            """ + body
    }

    /// The `channels:` list: every entry checked (unknown keys, kind's required fields, unique
    /// names), and a Vertex entry's service-account file read now (relative to the file), so a
    /// bad one stops start-up with its name.
    private static func readChannels(_ list: Any?, text: String, source: String, problems: inout [String]) -> [ChannelConfiguration] {
        guard let list, !(list is NSNull) else { return [] }
        guard let entries = list as? [Any] else {
            problems.append("\(source): 'channels' must be a list")
            return []
        }
        for (index, entry) in entries.enumerated() {
            guard let fields = entry as? [String: Any] else {
                problems.append("\(source): channels[\(index)] must be a mapping (name, kind, api_keys, …)")
                continue
            }
            for key in fields.keys.sorted() where !ChannelConfiguration.keys.contains(key) {
                problems.append("\(source): channels[\(index)] has an unknown key '\(key)' (known: \(ChannelConfiguration.keys.sorted().joined(separator: ", ")))")
            }
        }
        guard problems.isEmpty else { return [] }
        var channels: [ChannelConfiguration]
        do {
            channels = try YAMLDecoder().decode(ChannelsSection.self, from: text).channels ?? []
        } catch {
            problems.append("\(source): the channels list could not be read: \(describe(error))")
            return []
        }
        let directory = URL(fileURLWithPath: source).deletingLastPathComponent()
        var names = Set<String>()
        for index in channels.indices {
            problems += channels[index].problems.map { "\(source): \($0)" }
            if !names.insert(channels[index].name).inserted { problems.append("\(source): two channels are named '\(channels[index].name)'") }
            guard channels[index].kind == .vertex, let file = channels[index].serviceAccountFile else { continue }
            let path = file.hasPrefix("/") ? file : directory.appendingPathComponent(file).path
            do {
                channels[index].serviceAccount = try ServiceAccount.load(path: path)
                channels[index].serviceAccountFile = path
            } catch {
                problems.append("\(source): channel \(channels[index].name): \(error.description)")
            }
        }
        return channels
    }

    private struct ChannelsSection: Decodable {
        var channels: [ChannelConfiguration]?
    }

    private struct ModelsSection: Codable {
        var models: [CatalogFileEntry]?
    }

    /// A setting's value as environment text (lists comma-joined).
    private static func scalarText(_ value: Any) -> String? {
        switch value {
        case let text as String: return text
        case let flag as Bool: return flag ? "true" : "false"
        case let number as Int: return String(number)
        case let number as Double: return number == number.rounded() && abs(number) < 1e15 ? String(Int(number)) : String(number)
        case let list as [Any]:
            let items = list.compactMap { item -> String? in item is [Any] ? nil : scalarText(item) }
            return items.count == list.count ? items.joined(separator: ",") : nil
        default: return nil
        }
    }

    private static func describe(_ error: any Error) -> String {
        if case DecodingError.dataCorrupted(let context) = error { return context.debugDescription + path(context.codingPath) }
        if case DecodingError.typeMismatch(_, let context) = error { return context.debugDescription + path(context.codingPath) }
        if case DecodingError.keyNotFound(let key, let context) = error { return "missing '\(key.stringValue)'" + path(context.codingPath) }
        if case DecodingError.valueNotFound(_, let context) = error { return context.debugDescription + path(context.codingPath) }
        return "\(error)"
    }

    private static func path(_ codingPath: [any CodingKey]) -> String {
        codingPath.isEmpty ? "" : " at " + codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
    }
}
