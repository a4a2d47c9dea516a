import Foundation
import NanoGateTestSupport
import Logging
import SQLiteKit
import NanoGateCore
import NanoGateServer
import NanoGateStorage
import Testing
import Upstream

/// The operator interface: environment names and how keys are kept.
@Suite(.timeLimit(.minutes(10))) struct ConfigurationTests {
    @Test func environmentNamesAreRead() throws {
        let configuration = try GatewayConfiguration.fromEnvironment([
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
        let configuration = try GatewayConfiguration.fromEnvironment([:])
        func seconds(_ duration: Duration) -> String { "\(duration.components.seconds)" }
        let actual: [String: String] = [
            "NANOGATE_HOST": configuration.host, "NANOGATE_PORT": "\(configuration.port)",
            "NANOGATE_DATA_DIR": "./" + configuration.dataDirectory.lastPathComponent,
            "NANOGATE_URL_TTL": seconds(configuration.urlTTL), "NANOGATE_GEMINI_BASE_URL": configuration.upstream.baseURL,
            "NANOGATE_UPSTREAM_TIMEOUT": configuration.upstream.sizeTimeouts.isEmpty ? seconds(configuration.upstream.requestTimeout) : "per size",
            "NANOGATE_UPSTREAM_SIZE_TIMEOUTS": ["512", "1K", "2K", "4K"].map { "\($0)=\(seconds(configuration.upstream.sizeTimeouts[$0] ?? .zero))" }.joined(separator: ","),
            "NANOGATE_UPSTREAM_ATTEMPTS": "\(configuration.upstream.maxAttempts)",
            "NANOGATE_DATABASE_POOL_SIZE": "\(configuration.databasePoolSize)", "NANOGATE_JOB_WORKERS": "\(configuration.jobWorkers)",
            "NANOGATE_BATCH_POLL": seconds(configuration.batchPollInterval),
            "NANOGATE_JOB_QUEUE_PER_KEY": "\(configuration.jobQueuePerKey)", "NANOGATE_FILE_QUOTA_MB": "\(configuration.fileQuotaBytes >> 20)",
            "NANOGATE_ADMIN_PORT": configuration.adminPort.map(String.init) ?? "main port",
            "NANOGATE_PRIORITY_PRICE_PERCENT": "\(configuration.billing.tiers.priorityPPM / 10_000)",
            "NANOGATE_JOB_SERVICE_TIER": configuration.billing.jobServiceTier.rawValue,
            "NANOGATE_KEEPALIVE": seconds(configuration.keepAliveInterval), "NANOGATE_IDLE_TIMEOUT": seconds(configuration.idleTimeout),
            "NANOGATE_FETCH_TIMEOUT": seconds(configuration.inputs.fetchTimeout), "NANOGATE_MAX_FETCHES": "\(configuration.inputs.maxConcurrentFetches)",
            "NANOGATE_ALLOW_PRIVATE_FETCH": configuration.inputs.allowPrivateFetch ? "on" : "off",
            "NANOGATE_ALLOW_HTTP_FETCH": configuration.inputs.allowPlainHTTP ? "on" : "off",
            "NANOGATE_TRUST_FORWARDED": configuration.trustForwardedHeaders ? "on" : "off",
            "NANOGATE_CHECK_MODELS": configuration.checkModelsAtStart ? "on" : "off",
            "NANOGATE_CHAT_IMAGES": configuration.chatImages.rawValue,
            "NANOGATE_STREAM_IMAGES": configuration.streamImages.rawValue,
            "NANOGATE_RESERVATION_LEASE": seconds(configuration.billing.lease),
            "NANOGATE_ADMIN_TOKEN": configuration.adminToken == nil ? "off" : "on",
            "NANOGATE_UPSTREAM_FLASH31": configuration.catalog.model(named: "nano-banana-2")?.upstreamModel ?? "",
            "NANOGATE_UPSTREAM_FLASH_FALLBACK": configuration.catalog.model(named: "nano-banana")?.fallbackModel ?? "",
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

    /// A value that does not parse stops the gateway with the variable's name, instead of the
    /// default being used silently (the old behaviour: `NANOGATE_PORT=80a` served on 8080).
    @Test func invalidValuesAreNamed() {
        #expect {
            try GatewayConfiguration.fromEnvironment(["NANOGATE_PORT": "80a", "NANOGATE_UPSTREAM_TIMEOUT": "-1", "NANOGATE_ALLOW_PRIVATE_FETCH": "maybe", "NANOGATE_FETCH_ALLOW_NETWORKS": "10.0.0.0/8,nonsense"])
        } throws: { error in
            let text = "\(error)"
            return ["NANOGATE_PORT=80a", "NANOGATE_UPSTREAM_TIMEOUT=-1", "NANOGATE_ALLOW_PRIVATE_FETCH=maybe", "'nonsense'"].allSatisfy(text.contains)
        }
    }

    /// `NANOGATE_UPSTREAM_CA_FILE` must name a readable file (a typo would otherwise surface as
    /// every upstream call failing its TLS handshake); a readable one is trusted for upstream calls.
    @Test func anUpstreamCAFileMustBeReadable() throws {
        #expect {
            try GatewayConfiguration.fromEnvironment(["NANOGATE_UPSTREAM_CA_FILE": "/nonexistent/ca.pem"])
        } throws: { error in
            "\(error)".contains("NANOGATE_UPSTREAM_CA_FILE=/nonexistent/ca.pem is not a readable file")
        }
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("ca-\(UUID().uuidString).pem")
        try Data("-----BEGIN CERTIFICATE-----\n".utf8).write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }
        #expect(try GatewayConfiguration.fromEnvironment(["NANOGATE_UPSTREAM_CA_FILE": file.path]).upstream.trustedCAFile == file.path)
    }

    /// The configuration file's settings are read under the environment (which wins), and a
    /// value outside a fixed set is named with the values it may take.
    @Test func fileSettingsSitUnderTheEnvironment() throws {
        let configuration = try GatewayConfiguration.fromEnvironment(
            ["NANOGATE_PORT": "9000"], fileSettings: ["NANOGATE_PORT": "7000", "NANOGATE_JOB_WORKERS": "9", "NANOGATE_CHAT_IMAGES": "markdown"]
        )
        #expect(configuration.port == 9000)
        #expect(configuration.jobWorkers == 9)
        #expect(configuration.chatImages == .markdown)
        #expect {
            try GatewayConfiguration.fromEnvironment(["NANOGATE_JOB_SERVICE_TIER": "priority"], fileSettings: ["NANOGATE_LOG_FORMAT": "xml"])
        } throws: { error in
            let text = "\(error)"
            return text.contains("NANOGATE_JOB_SERVICE_TIER=priority is not one of standard, flex") && text.contains("NANOGATE_LOG_FORMAT=xml is not one of text, json")
        }
    }

    @Test func secretsAreStoredOnlyAsHashes() async throws {
        try await withGateway { gateway in
            let (_, secret) = try await gateway.dependencies.store.createKey(name: "hashed", group: .default)
            if TestDatabase.isPostgres {
                let rows = try await TestDatabase.rowsAsText(of: "api_keys", in: gateway.dependencies.database)
                #expect(rows.count == 3 && !rows.contains { $0.contains(secret) }, "a stored key row holds the secret")
                #expect(try await gateway.dependencies.store.activeKey(secret: secret)?.name == "hashed")
                return
            }
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

/// The embedded database across versions of the gateway.
@Suite(.timeLimit(.minutes(10))) struct StorageTests {
    /// A database made by the previous release (no schema version, no `attempts` column) opens,
    /// keeps its keys and usage, and gains the new columns.
    @Test func aDatabaseFromBeforeVersioningIsMigrated() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("nanogate-migrate-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("nanogate.sqlite").path
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let old = try await SQLiteConnection.open(storage: .file(path: path), logger: logger)
        for statement in [
            "CREATE TABLE api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, key_group TEXT NOT NULL, secret_hash TEXT NOT NULL UNIQUE, prefix TEXT NOT NULL, created_at BIGINT NOT NULL, revoked_at BIGINT)",
            "CREATE TABLE usage_log (id TEXT PRIMARY KEY, key_id TEXT NOT NULL, endpoint TEXT NOT NULL, model TEXT NOT NULL, status INTEGER NOT NULL, images INTEGER NOT NULL, input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, total_tokens INTEGER NOT NULL, cost_micro_usd BIGINT NOT NULL, error_code TEXT, created_at BIGINT NOT NULL)",
            "CREATE TABLE thought_signatures (hash TEXT PRIMARY KEY, signature TEXT NOT NULL, created_at BIGINT NOT NULL)",
            "INSERT INTO api_keys VALUES ('k1', 'old', 'default', 'h', 'sk-ng-abc', 1, NULL)",
            "INSERT INTO usage_log VALUES ('u1', 'k1', 'images.generations', 'nano-banana', 200, 1, 9, 1290, 1299, 38700, NULL, 2)",
        ] {
            _ = try await old.query(statement)
        }
        try await old.close()

        let handle = try await DatabaseHandle.open(.sqlite(path: path), logger: logger)
        let keys = try await handle.store.listKeys()
        #expect(keys.map(\.name) == ["old"])
        let rows = try await handle.store.recentUsage(keyID: "k1", limit: 10)
        #expect(rows.count == 1 && rows[0].costMicroUSD == 38_700 && rows[0].attempts == 0)
        #expect(rows.first?.createdAt == Date(timeIntervalSince1970: 2), "seconds became milliseconds without moving the row in time")
        #expect(keys.first?.creditMicroUSD == nil && keys.first?.spentMicroUSD == 0, "old keys stay unlimited")
        #expect(keys.first?.groupSettings == KeyGroupSettings(name: .default, responseFormat: .url), "the spec's groups exist")
        try await handle.store.record(UsageRecord(
            keyID: "k1", endpoint: "chat.completions", model: "nano-banana", status: 200, images: 1, inputTokens: 1, outputTokens: 1,
            totalTokens: 2, costMicroUSD: 5, errorCode: nil, upstreamCostMicroUSD: 7, attempts: 2
        ))
        let newest = try #require(try await handle.store.recentUsage(keyID: "k1", limit: 10).first { $0.endpoint == "chat.completions" })
        #expect(newest.attempts == 2 && newest.upstreamCostMicroUSD == 7)
        try await handle.close()
        // Opening again runs no migration twice.
        let again = try await DatabaseHandle.open(.sqlite(path: path), logger: logger)
        #expect(try await again.store.recentUsage(keyID: "k1", limit: 10).count == 2)
        try await again.close()
    }

    @Test func oldThoughtSignaturesArePruned() async throws {
        try await TestDatabase.with { handle in
            try await handle.store.saveSignatures(["t:a": "sig-a", "i:b": "sig-b"])
            #expect(try await handle.store.pruneSignatures(before: Date().addingTimeInterval(-60)) == 0, "recent ones stay")
            #expect(try await handle.store.signatures(for: ["t:a", "i:b", "t:c"]) == ["t:a": "sig-a", "i:b": "sig-b"])
            #expect(try await handle.store.pruneSignatures(before: Date().addingTimeInterval(60)) == 2)
            #expect(try await handle.store.signatures(for: ["t:a", "i:b"]).isEmpty)
        }
    }
}
