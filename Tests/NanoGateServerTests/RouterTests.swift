import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NanoGateCore
import NanoGateServer
import NanoGateStorage
import NanoGateTestSupport
import NIOCore
import NIOFoundationCompat
import Testing
import Upstream

/// Handler logic that needs no socket, through Hummingbird's router test client: the whole
/// gateway (middleware, auth, controllers) on a database of the test's own, with an upstream
/// no request here may reach (a refused request never gets that far).
@Suite(.timeLimit(.minutes(10))) struct RouterTests {
    struct Gateway: Sendable {
        let client: any TestClientProtocol
        let key: String
        let store: SQLStore

        func post(_ path: String, _ json: String, key: String? = nil) async throws -> (status: HTTPResponse.Status, error: [String: Any]) {
            var headers: HTTPFields = [.contentType: "application/json"]
            if let key = key ?? Optional(self.key), !key.isEmpty { headers[.authorization] = "Bearer \(key)" }
            let response = try await client.execute(uri: path, method: .post, headers: headers, body: ByteBuffer(string: json))
            let object = (try? JSONSerialization.jsonObject(with: Data(buffer: response.body))) as? [String: Any]
            return (response.status, object?["error"] as? [String: Any] ?? [:])
        }
    }

    static func withGateway(_ body: @escaping @Sendable (Gateway) async throws -> Void) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("nanogate-router-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: directory) }
        var logger = Logger(label: "router-test")
        logger.logLevel = .critical
        // Port 9 (discard) on loopback: nothing answers; no test here may reach it.
        var configuration = GatewayConfiguration(
            host: "127.0.0.1", port: 0, dataDirectory: directory, upstream: UpstreamConfiguration(baseURL: "http://127.0.0.1:9", apiKeys: ["unused"])
        )
        configuration.checkModelsAtStart = false
        let testDatabase = try await TestDatabase.fresh()
        configuration.databaseURL = testDatabase?.url
        configuration.databasePoolSize = 3
        let dependencies = try await GatewayDependencies.live(configuration: configuration, logger: logger)
        let key = try await dependencies.store.createKey(name: "router", group: .default).secret
        let app = buildApplication(configuration: configuration, dependencies: dependencies, logger: logger)
        do {
            try await app.test(.router) { client in try await body(Gateway(client: client, key: key, store: dependencies.store)) }
        } catch {
            await testDatabase?.drop()
            throw error
        }
        await testDatabase?.drop()
    }

    /// Every refusal is OpenAI's error object with its four fields and the right status.
    @Test func refusalsAreOpenAIErrorsWithTheRightStatus() async throws {
        try await Self.withGateway { gateway in
            let noKey = try await gateway.post("/v1/images/generations", #"{"model":"nano-banana","prompt":"p"}"#, key: "")
            #expect(noKey.status == .unauthorized && noKey.error["code"] as? String == "invalid_api_key")
            #expect(Set(noKey.error.keys) == ["message", "type", "param", "code"])
            let unknown = try await gateway.post("/v1/images/generations", #"{"model":"dall-e-3","prompt":"p"}"#)
            #expect(unknown.status == .notFound && unknown.error["param"] as? String == "model")
            let tooMany = try await gateway.post("/v1/images/generations", #"{"model":"nano-banana","prompt":"p","n":9}"#)
            #expect(tooMany.status == .badRequest && tooMany.error["param"] as? String == "n")
            let broken = try await gateway.post("/v1/images/generations", #"{"model":"nano-banana","#)
            #expect(broken.status == .badRequest && broken.error["type"] as? String == "invalid_request_error")
            let mask = try await gateway.post("/v1/images/edits", #"{"model":"nano-banana","prompt":"p","image":"https://example.com/a.png","mask":"x"}"#)
            #expect(mask.status == .badRequest && mask.error["param"] as? String == "mask")
            let chat = try await gateway.post("/v1/chat/completions", #"{"model":"nano-banana","messages":[]}"#)
            #expect(chat.status == .badRequest && chat.error["param"] as? String == "messages")
        }
    }

    /// Refused requests cost nothing and leave no usage row.
    @Test func refusedRequestsLeaveNoChargeAndNoRow() async throws {
        try await Self.withGateway { gateway in
            #expect(try await gateway.post("/v1/images/generations", #"{"model":"nano-banana","prompt":"p","size":"1000x999"}"#).status == .badRequest)
            #expect(try await gateway.post("/v1/images/generations", #"{"model":"nano-banana-pro","prompt":"p","n":0}"#).status == .badRequest)
            let key = try #require(try await gateway.store.listKeys().first { $0.name == "router" })
            #expect(key.spentMicroUSD == 0 && key.reservedMicroUSD == 0)
            #expect(try await gateway.store.usage(UsageQuery(keyID: key.id)).isEmpty)
        }
    }

    @Test func modelsAreListedForTheKey() async throws {
        try await Self.withGateway { gateway in
            let response = try await gateway.client.execute(uri: "/v1/models", method: .get, headers: [.authorization: "Bearer \(gateway.key)"])
            #expect(response.status == .ok)
            let object = try JSONSerialization.jsonObject(with: Data(buffer: response.body)) as? [String: Any]
            let ids = (object?["data"] as? [[String: Any]] ?? []).compactMap { $0["id"] as? String }
            #expect(Set(ids).isSuperset(of: ["nano-banana", "nano-banana-pro", "nano-banana-pro-2k", "nano-banana-pro-4k", "gemini-2.5-flash-image", "gemini-3-pro-image-preview"]))
            let one = try await gateway.client.execute(uri: "/v1/models/nano-banana", method: .get, headers: [.authorization: "Bearer \(gateway.key)"])
            #expect(one.status == .ok)
        }
    }
}
