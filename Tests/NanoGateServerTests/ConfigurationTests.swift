import Foundation
import NanoGateCore
import NanoGateServer
import NanoGateStorage
import Testing
import Upstream

/// The operator interface: environment names and how keys are kept.
@Suite struct ConfigurationTests {
    @Test func environmentNamesAreRead() {
        let configuration = GatewayConfiguration.fromEnvironment([
            "NANOGATE_HOST": "0.0.0.0", "NANOGATE_PORT": "9090", "NANOGATE_DATA_DIR": "/srv/nanogate",
            "NANOGATE_PUBLIC_URL": "https://img.example.com", "NANOGATE_URL_TTL": "600",
            "GEMINI_API_KEY": " key-a, key-b ,,", "NANOGATE_GEMINI_BASE_URL": "http://127.0.0.1:9999/",
            "NANOGATE_UPSTREAM_PRO": "gemini-3-pro-image", "NANOGATE_UPSTREAM_TIMEOUT": "42",
            "NANOGATE_ALLOW_PRIVATE_FETCH": "1", "NANOGATE_KEEPALIVE": "5",
        ])
        #expect(configuration.host == "0.0.0.0")
        #expect(configuration.port == 9090)
        #expect(configuration.dataDirectory.path == "/srv/nanogate")
        #expect(configuration.publicURL == "https://img.example.com")
        #expect(configuration.urlTTL == .seconds(600))
        #expect(configuration.upstream.apiKeys == ["key-a", "key-b"])
        #expect(configuration.upstream.baseURL == "http://127.0.0.1:9999")
        #expect(configuration.upstream.requestTimeout == .seconds(42))
        #expect(configuration.catalog.model(named: "nano-banana-pro")?.upstreamModel == "gemini-3-pro-image")
        #expect(configuration.catalog.model(named: "nano-banana")?.upstreamModel == "gemini-2.5-flash-image")
        #expect(configuration.inputs.allowPrivateFetch)
        #expect(configuration.keepAliveInterval == .seconds(5))
    }

    /// The defaults in the README's configuration table are the ones the code uses.
    @Test func defaultsMatchTheREADME() throws {
        let readme = try String(contentsOf: URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../README.md"), encoding: .utf8)
        // `| flag | `NAME` | meaning | `default` |` → NAME: default
        var documented: [String: String] = [:]
        for line in readme.split(separator: "\n") where line.hasPrefix("|") {
            let cells = line.split(separator: "|", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            guard cells.count >= 5, cells[2].hasPrefix("`NANOGATE_"), !cells[2].contains("/") else { continue }
            documented[cells[2].trimmingCharacters(in: CharacterSet(charactersIn: "`"))] = cells[4].trimmingCharacters(in: CharacterSet(charactersIn: "`"))
        }
        let configuration = GatewayConfiguration.fromEnvironment([:])
        func seconds(_ duration: Duration) -> String { "\(duration.components.seconds)" }
        let actual: [String: String] = [
            "NANOGATE_HOST": configuration.host, "NANOGATE_PORT": "\(configuration.port)",
            "NANOGATE_DATA_DIR": "./" + configuration.dataDirectory.lastPathComponent,
            "NANOGATE_URL_TTL": seconds(configuration.urlTTL), "NANOGATE_GEMINI_BASE_URL": configuration.upstream.baseURL,
            "NANOGATE_UPSTREAM_TIMEOUT": seconds(configuration.upstream.requestTimeout), "NANOGATE_UPSTREAM_ATTEMPTS": "\(configuration.upstream.maxAttempts)",
            "NANOGATE_KEEPALIVE": seconds(configuration.keepAliveInterval), "NANOGATE_IDLE_TIMEOUT": seconds(configuration.idleTimeout),
            "NANOGATE_FETCH_TIMEOUT": seconds(configuration.inputs.fetchTimeout), "NANOGATE_MAX_FETCHES": "\(configuration.inputs.maxConcurrentFetches)",
            "NANOGATE_ALLOW_PRIVATE_FETCH": configuration.inputs.allowPrivateFetch ? "on" : "off",
            "NANOGATE_ALLOW_HTTP_FETCH": configuration.inputs.allowPlainHTTP ? "on" : "off",
            "NANOGATE_TRUST_FORWARDED": configuration.trustForwardedHeaders ? "on" : "off",
        ]
        for (name, value) in actual {
            #expect(documented[name] == value, "\(name): README says \(documented[name] ?? "nothing"), the code uses \(value)")
        }
        #expect(configuration.host == "127.0.0.1")
        #expect(configuration.port == 8080)
        #expect(configuration.dataDirectory.lastPathComponent == "nanogate-data")
        #expect(configuration.publicURL == nil)
        #expect(configuration.urlTTL == .seconds(4 * 3600))
        #expect(configuration.upstream.baseURL == "https://generativelanguage.googleapis.com")
        #expect(configuration.upstream.apiKeys.isEmpty)
        #expect(!configuration.inputs.allowPrivateFetch)
    }

    @Test func secretsAreStoredOnlyAsHashes() async throws {
        try await withGateway { gateway in
            let (_, secret) = try await gateway.dependencies.store.createKey(name: "hashed", group: .default)
            let databaseFiles = try FileManager.default.contentsOfDirectory(at: gateway.configuration.dataDirectory, includingPropertiesForKeys: nil)
                .filter { $0.lastPathComponent.hasPrefix("nanogate.sqlite") }
            #expect(!databaseFiles.isEmpty)
            for file in databaseFiles {
                let bytes = try Data(contentsOf: file)
                #expect(bytes.range(of: Data(secret.utf8)) == nil, "\(file.lastPathComponent) holds the secret")
            }
            #expect(try await gateway.dependencies.store.activeKey(secret: secret)?.name == "hashed")
        }
    }
}
