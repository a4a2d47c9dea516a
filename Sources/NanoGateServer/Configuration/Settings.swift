import Configuration
import Foundation

/// The gateway's scalar settings as swift-configuration reads them: the environment first,
/// then the configuration file's settings (`ConfigurationFile`, written as the same variable
/// names). Keys are swift-configuration's (`nanogate.upstream.timeout`), which the
/// environment provider spells `NANOGATE_UPSTREAM_TIMEOUT`.
///
/// A value that is set but does not parse is never replaced by the default in silence: it is
/// collected, naming its variable, and `serve` refuses to start (`ConfigurationError`). Each
/// component reads its own keys in one place (`UpstreamConfiguration(settings:)`,
/// `InputLimits(settings:)`, `BillingConfiguration(settings:)`, …).
final class Settings {
    private let reader: ConfigReader
    /// What could not be used, each naming its variable.
    private(set) var problems: [String] = []
    /// The raw variables (the `AWS_*` ones are handed to the S3 client as a group).
    let environment: [String: String]

    /// Values never written to access logs.
    static let secrets: Set<String> = ["GEMINI_API_KEY", "NANOGATE_ADMIN_TOKEN", "NANOGATE_URL_SECRET", "NANOGATE_METRICS_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"]

    init(environment: [String: String], fileSettings: [String: String] = [:]) {
        self.environment = fileSettings.merging(environment) { _, fromEnvironment in fromEnvironment }
        reader = ConfigReader(providers: [
            EnvironmentVariablesProvider(environmentVariables: environment, secretsSpecifier: .specific(Self.secrets)),
            EnvironmentVariablesProvider(environmentVariables: fileSettings, secretsSpecifier: .specific(Self.secrets)),
        ])
    }

    /// The variable a key is read from (`upstream.timeout` → `NANOGATE_UPSTREAM_TIMEOUT`), for messages.
    static func variable(_ key: String) -> String {
        key.split(separator: ".").joined(separator: "_").uppercased()
    }

    func problem(_ text: String) { problems.append(text) }

    /// The value, or nil when it is unset or empty.
    func string(_ key: String) -> String? {
        guard let value = reader.string(forKey: ConfigKey(key)), !value.isEmpty else { return nil }
        return value
    }

    func string(_ key: String, default fallback: String) -> String { string(key) ?? fallback }

    /// Whether the variable is set (even to an empty value).
    func isSet(_ key: String) -> Bool { reader.string(forKey: ConfigKey(key)) != nil }

    /// A whole number of at least `minimum`; a value that is not one is a problem.
    func number(_ key: String, default fallback: Int, minimum: Int = 1) -> Int {
        guard let raw = string(key) else { return fallback }
        guard let value = reader.int(forKey: ConfigKey(key)), value >= minimum else {
            problems.append("\(Self.variable(key))=\(raw) is not a whole number of at least \(minimum)")
            return fallback
        }
        return value
    }

    /// A number of seconds (at least `minimum`).
    func seconds(_ key: String, default fallback: Int, minimum: Int = 1) -> Duration {
        .seconds(number(key, default: fallback, minimum: minimum))
    }

    /// 1/0, true/false, yes/no or on/off; anything else is a problem.
    func flag(_ key: String, default fallback: Bool = false) -> Bool {
        guard let raw = string(key)?.lowercased() else { return fallback }
        if ["1", "true", "yes", "on"].contains(raw) { return true }
        if ["0", "false", "no", "off"].contains(raw) { return false }
        problems.append("\(Self.variable(key))=\(raw) is not 1/0, true/false, yes/no or on/off")
        return fallback
    }

    /// One of a fixed set of values (case-insensitive); anything else is a problem naming them.
    func choice<Value: RawRepresentable & CaseIterable>(_ key: String, default fallback: Value, allowed: [Value] = Array(Value.allCases)) -> Value
    where Value.RawValue == String {
        guard let raw = string(key) else { return fallback }
        guard let value = Value(rawValue: raw.lowercased()), allowed.contains(where: { $0.rawValue == value.rawValue }) else {
            problems.append("\(Self.variable(key))=\(raw) is not one of \(allowed.map(\.rawValue).joined(separator: ", "))")
            return fallback
        }
        return value
    }

    /// A comma-separated list, items trimmed, empty items dropped.
    func list(_ key: String) -> [String] {
        (string(key) ?? "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }
}
