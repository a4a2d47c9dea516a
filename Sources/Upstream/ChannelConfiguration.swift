import Foundation

/// The kinds of upstream a channel can be.
public enum ChannelKind: String, Codable, Sendable, CaseIterable {
    /// Google's Gemini API (AI Studio keys, `x-goog-api-key`).
    case gemini
    /// Vertex AI with a service account: OAuth2 bearer tokens from a signed JWT.
    case vertex
    /// Vertex AI express mode: an API key, no project.
    case vertexExpress = "vertex-express"
    /// Another OpenAI-compatible gateway (a reseller, another NanoGate).
    case openai
}

/// One upstream channel, as the operator writes it in the configuration file:
///
/// ```yaml
/// channels:
///   - name: studio
///     kind: gemini
///     api_keys: [k1, k2]
///     priority: 2          # higher first
///     weight: 3            # share within its priority
///     models: [gemini-3-pro-image, {name: gemini-2.5-flash-image, upstream: other-id}]
///     max_concurrency: 512
///     timeout: 300         # seconds per call; model_timeouts overrides per model
///     proxy: http://user:pass@proxy:3128
/// ```
public struct ChannelConfiguration: Sendable, Equatable, Codable {
    public var name: String
    public var kind: ChannelKind
    /// Where the channel's API lives; each kind has a default (`openai` has none).
    public var baseURL: String?
    public var apiKeys: [String]
    /// Vertex: the service-account JSON file, the project (default: the file's `project_id`),
    /// the location (default `global`) and the token endpoint (default: the file's `token_uri`).
    public var serviceAccountFile: String?
    public var project: String?
    public var location: String?
    public var tokenURL: String?
    /// The key file's contents, read when the configuration is loaded (not part of the file format).
    public var serviceAccount: ServiceAccount?
    public var priority: Int
    public var weight: Int
    /// The model ids it serves (nil: every model), each optionally under another id upstream.
    public var models: [ModelRoute]?
    /// An outbound HTTP proxy, `http://[user:pass@]host:port`.
    public var proxy: String?
    /// Calls in flight at once; more wait in the channel's queue.
    public var maxConcurrency: Int
    /// Seconds one call may take, and per-model overrides (a 4K image takes up to 300 s).
    public var timeoutSeconds: Int?
    public var modelTimeouts: [String: Int]?

    /// A model the channel serves: `name` is the catalog's upstream id (or public name), `upstream`
    /// the id this channel knows it by (a reseller's `nano-banana-pro`, say).
    public struct ModelRoute: Sendable, Equatable, Codable {
        public var name: String
        public var upstream: String?

        public init(name: String, upstream: String? = nil) {
            self.name = name
            self.upstream = upstream
        }

        enum CodingKeys: String, CodingKey { case name, upstream }

        /// A plain string (`gemini-3-pro-image`) or a mapping (`{name: …, upstream: …}`).
        public init(from decoder: any Decoder) throws {
            if let single = try? decoder.singleValueContainer(), let name = try? single.decode(String.self) {
                self.init(name: name)
                return
            }
            let container = try decoder.container(keyedBy: CodingKeys.self)
            self.init(name: try container.decode(String.self, forKey: .name), upstream: try container.decodeIfPresent(String.self, forKey: .upstream))
        }

        public func encode(to encoder: any Encoder) throws {
            if upstream == nil {
                var single = encoder.singleValueContainer()
                try single.encode(name)
            } else {
                var container = encoder.container(keyedBy: CodingKeys.self)
                try container.encode(name, forKey: .name)
                try container.encodeIfPresent(upstream, forKey: .upstream)
            }
        }
    }

    public init(
        name: String, kind: ChannelKind, baseURL: String? = nil, apiKeys: [String] = [], serviceAccountFile: String? = nil,
        project: String? = nil, location: String? = nil, tokenURL: String? = nil, priority: Int = 0, weight: Int = 1,
        models: [ModelRoute]? = nil, proxy: String? = nil, maxConcurrency: Int = 1024, timeoutSeconds: Int? = nil, modelTimeouts: [String: Int]? = nil
    ) {
        self.name = name
        self.kind = kind
        self.baseURL = baseURL
        self.apiKeys = apiKeys
        self.serviceAccountFile = serviceAccountFile
        self.project = project
        self.location = location
        self.tokenURL = tokenURL
        self.priority = priority
        self.weight = weight
        self.models = models
        self.proxy = proxy
        self.maxConcurrency = maxConcurrency
        self.timeoutSeconds = timeoutSeconds
        self.modelTimeouts = modelTimeouts
    }

    /// The file's keys, for the check that refuses unknown ones.
    public static let keys: Set<String> = Set(CodingKeys.allCases.map(\.rawValue))

    enum CodingKeys: String, CodingKey, CaseIterable {
        case name, kind, project, location, priority, weight, models, proxy
        case baseURL = "base_url"
        case apiKeys = "api_keys"
        case serviceAccountFile = "service_account_file"
        case tokenURL = "token_url"
        case maxConcurrency = "max_concurrency"
        case timeoutSeconds = "timeout"
        case modelTimeouts = "model_timeouts"
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        var keys: [String] = []
        if let list = try? container.decodeIfPresent([String].self, forKey: .apiKeys) {
            keys = list
        } else if let one = try container.decodeIfPresent(String.self, forKey: .apiKeys) {
            keys = one.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        }
        self.init(
            name: try container.decode(String.self, forKey: .name),
            kind: try container.decode(ChannelKind.self, forKey: .kind),
            baseURL: try container.decodeIfPresent(String.self, forKey: .baseURL),
            apiKeys: keys.filter { !$0.isEmpty },
            serviceAccountFile: try container.decodeIfPresent(String.self, forKey: .serviceAccountFile),
            project: try container.decodeIfPresent(String.self, forKey: .project),
            location: try container.decodeIfPresent(String.self, forKey: .location),
            tokenURL: try container.decodeIfPresent(String.self, forKey: .tokenURL),
            priority: try container.decodeIfPresent(Int.self, forKey: .priority) ?? 0,
            weight: try container.decodeIfPresent(Int.self, forKey: .weight) ?? 1,
            models: try container.decodeIfPresent([ModelRoute].self, forKey: .models),
            proxy: try container.decodeIfPresent(String.self, forKey: .proxy),
            maxConcurrency: try container.decodeIfPresent(Int.self, forKey: .maxConcurrency) ?? 1024,
            timeoutSeconds: try container.decodeIfPresent(Int.self, forKey: .timeoutSeconds),
            modelTimeouts: try container.decodeIfPresent([String: Int].self, forKey: .modelTimeouts)
        )
    }

    /// What is wrong with this entry, each problem named (empty: usable).
    public var problems: [String] {
        var problems: [String] = []
        if name.isEmpty || name.contains(where: { !($0.isLetter || $0.isNumber || "-_.".contains($0)) }) {
            problems.append("channel name '\(name)' must be letters, digits, '-', '_' or '.'")
        }
        switch kind {
        case .gemini, .vertexExpress:
            if apiKeys.isEmpty { problems.append("channel \(name) (\(kind.rawValue)) needs api_keys") }
        case .openai:
            if apiKeys.isEmpty { problems.append("channel \(name) (openai) needs api_keys") }
            if baseURL == nil { problems.append("channel \(name) (openai) needs base_url") }
        case .vertex:
            if serviceAccountFile == nil { problems.append("channel \(name) (vertex) needs service_account_file") }
        }
        if let baseURL, URL(string: baseURL)?.host == nil || !(baseURL.hasPrefix("http://") || baseURL.hasPrefix("https://")) {
            problems.append("channel \(name): base_url '\(baseURL)' is not an http(s) URL")
        }
        if let proxy, ProxySetting(proxy) == nil { problems.append("channel \(name): proxy '\(proxy)' is not http://[user:pass@]host:port") }
        if weight < 0 { problems.append("channel \(name): weight must be 0 or more") }
        if maxConcurrency < 1 { problems.append("channel \(name): max_concurrency must be 1 or more") }
        if let timeoutSeconds, timeoutSeconds < 1 { problems.append("channel \(name): timeout must be 1 s or more") }
        for (model, seconds) in modelTimeouts ?? [:] where seconds < 1 {
            problems.append("channel \(name): model_timeouts.\(model) must be 1 s or more")
        }
        return problems
    }

    /// The id this channel knows `model` by, or nil when it does not serve it. `aliases` are the
    /// catalog's other names for the model (its public name), which `models` may use too.
    public func upstreamID(for model: String, aliases: [String] = []) -> String? {
        guard let models else { return model }
        guard let route = models.first(where: { $0.name == model || aliases.contains($0.name) }) else { return nil }
        return route.upstream ?? model
    }
}

/// An outbound proxy parsed from `http://[user:pass@]host:port`.
struct ProxySetting: Equatable {
    var host: String
    var port: Int
    var user: String?
    var password: String?

    init?(_ text: String) {
        guard let components = URLComponents(string: text), components.scheme == "http", let host = components.host, !host.isEmpty else { return nil }
        self.host = host
        self.port = components.port ?? 3128
        self.user = components.user
        self.password = components.password
    }
}
