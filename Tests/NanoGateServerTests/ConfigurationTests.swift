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

    @Test func defaultsMatchTheREADME() {
        let configuration = GatewayConfiguration.fromEnvironment([:])
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
