import AsyncHTTPClient
import Foundation
import NanoGateCore
import NanoGateServer
import NanoGateStorage
import NIOCore
import NIOHTTP1
import Testing

/// The browser console over HTTP, on SQLite and again on PostgreSQL (the sessions live in the
/// database, so any instance honours them). Browser behaviour is tested with Chromium in
/// tests/compat/test_console.py.
@Suite(.timeLimit(.minutes(5))) struct ConsoleTests {
    static let adminToken = "console-admin-token-0123456789abcdef"

    /// POST to a console path as the console's own page would (its header, our origin).
    static func consolePost(_ gateway: Harness, _ path: String, body: String, cookie: String? = nil, contentType: String = "application/json", headers: [(String, String)] = []) async throws -> Harness.Reply {
        var request = HTTPClientRequest(url: gateway.baseURL + "/console/" + path)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: contentType)
        request.headers.add(name: "X-NanoGate-Console", value: "1")
        request.headers.add(name: "Origin", value: gateway.baseURL)
        if let cookie { request.headers.add(name: "Cookie", value: "ng_console=\(cookie)") }
        for (name, value) in headers { request.headers.replaceOrAdd(name: name, value: value) }
        request.body = .bytes(ByteBuffer(string: body))
        return try await gateway.send(request)
    }

    /// Signs in; the cookie's value, or nil with the reply when refused.
    static func signIn(_ gateway: Harness, token: String) async throws -> (cookie: String?, reply: Harness.Reply) {
        let reply = try await consolePost(gateway, "signin", body: "token=" + (token.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? token), contentType: "application/x-www-form-urlencoded")
        let cookie = reply.headers["Set-Cookie"].first.flatMap { header -> String? in
            guard let start = header.range(of: "ng_console=") else { return nil }
            return String(header[start.upperBound...].prefix { $0 != ";" })
        }
        return (cookie, reply)
    }

    /// A key holder signs in with the key; the playground's request through the console is that
    /// key's own: charged to it, in its usage log with the same request id. The cookie opens
    /// nothing outside the console, and a request without the console's header does nothing.
    @Test func aKeyHoldersConsoleRequestsAreTheKeysOwn() async throws {
        try await withGateway { gateway in
            _ = try await gateway.dependencies.store.updateKey(name: "test-default", KeyUpdate(credit: .set(1_000_000)))
            let (signedIn, reply) = try await Self.signIn(gateway, token: gateway.defaultKey)
            let cookie = try #require(signedIn, "\(reply.status) \(reply.text)")
            let header = try #require(reply.headers["Set-Cookie"].first)
            #expect(header.contains("HttpOnly") && header.contains("SameSite=Strict") && header.contains("Path=/console") && !header.contains("Secure"))
            #expect(!header.contains(gateway.defaultKey), "the cookie is an opaque id, not the key")
            #expect(reply.json["redirect"] as? String == "usage")

            let body = #"{"model":"nano-banana","prompt":"a banana","aspect_ratio":"16:9","response_format":"b64_json"}"#
            let refused = try await Self.consolePost(gateway, "api/v1/images/generations", body: body, cookie: cookie, headers: [("X-NanoGate-Console", "0")])
            #expect(refused.status == 403 && refused.error["code"] as? String == "csrf_rejected")
            var elsewhere = HTTPClientRequest(url: gateway.baseURL + "/v1/images/generations")
            elsewhere.method = .POST
            elsewhere.headers.add(name: "Cookie", value: "ng_console=\(cookie)")
            elsewhere.headers.add(name: "Content-Type", value: "application/json")
            elsewhere.body = .bytes(ByteBuffer(string: body))
            #expect(try await gateway.send(elsewhere).status == 401, "the cookie authenticates nothing outside /console")
            #expect(try await gateway.usageRows().isEmpty, "refused requests leave no usage row")

            let generated = try await Self.consolePost(gateway, "api/v1/images/generations", body: body, cookie: cookie)
            #expect(generated.status == 200, "\(generated.text.prefix(300))")
            #expect(Harness.pngSize(try await gateway.imageBytes(generated)) == (1344, 768))
            let requestID = try #require(generated.headers["x-request-id"].first)
            let cost = try #require(generated.headers["X-NanoGate-Cost"].first.flatMap(Double.init))
            let rows = try await gateway.usageRows()
            #expect(rows.map(\.requestID) == [requestID], "the console's request is in the key's own usage log")
            #expect(rows.first?.requestedSize == "16:9" && rows.first?.deliveredSize == "1344x768", "the row shows the size asked and the size delivered")
            let key = try #require(try await gateway.dependencies.store.key(named: "test-default"))
            #expect(key.spentMicroUSD == TokenPrices.micro(cost) && cost > 0, "charged to the key that signed in")
        }
    }

    /// The operator's playground names the key that pays; the console's admin API is the admin
    /// API (the same CSV bytes), and a key holder's session cannot reach it.
    @Test func theOperatorPicksThePayingKeyAndSeesTheAdminAPI() async throws {
        try await withGateway(configure: { $0.adminToken = Self.adminToken }) { gateway in
            let cookie = try #require(try await Self.signIn(gateway, token: Self.adminToken).cookie)
            let body = #"{"model":"nano-banana","prompt":"a banana","response_format":"b64_json"}"#
            let unnamed = try await Self.consolePost(gateway, "api/v1/images/generations", body: body, cookie: cookie)
            #expect(unnamed.status == 400 && unnamed.error["code"] as? String == "console_key_required")
            let paid = try await Self.consolePost(gateway, "api/v1/images/generations", body: body, cookie: cookie, headers: [("X-NanoGate-Console-Key", "test-gemini")])
            #expect(paid.status == 200)
            let gemini = try #require(try await gateway.dependencies.store.key(named: "test-gemini"))
            #expect(gemini.spentMicroUSD > 0)
            #expect(try await gateway.usageRows().isEmpty, "the default key paid nothing")

            var consoleCSV = HTTPClientRequest(url: gateway.baseURL + "/console/api/admin/v1/usage?format=csv&key=test-gemini")
            consoleCSV.headers.add(name: "Cookie", value: "ng_console=\(cookie)")
            var adminCSV = HTTPClientRequest(url: gateway.baseURL + "/admin/v1/usage?format=csv&key=test-gemini")
            adminCSV.headers.add(name: "Authorization", value: "Bearer \(Self.adminToken)")
            let (fromConsole, fromAdmin) = (try await gateway.send(consoleCSV), try await gateway.send(adminCSV))
            #expect(fromConsole.status == 200 && fromConsole.text == fromAdmin.text && fromConsole.text.contains(paid.headers["x-request-id"].first ?? "-"))

            var channels = HTTPClientRequest(url: gateway.baseURL + "/console/channels")
            channels.headers.add(name: "Cookie", value: "ng_console=\(cookie)")
            let page = try await gateway.send(channels)
            #expect(page.status == 200 && page.text.contains("1 key") && !page.text.contains("refused:"), "no empty 'refused:' for a channel whose keys all work")

            let holder = try #require(try await Self.signIn(gateway, token: gateway.defaultKey).cookie)
            var forbidden = HTTPClientRequest(url: gateway.baseURL + "/console/api/admin/v1/keys")
            forbidden.headers.add(name: "Cookie", value: "ng_console=\(holder)")
            #expect(try await gateway.send(forbidden).status == 403)
        }
    }

    /// `NANOGATE_CONSOLE=keys` refuses the admin token at sign-in; `off` removes the console.
    /// Wrong tokens are counted per address: past ten, even the right one waits.
    @Test func theSettingDecidesWhoSignsInAndWrongTokensAreThrottled() async throws {
        try await withGateway(configure: { $0.adminToken = Self.adminToken; $0.console = .keys }) { gateway in
            #expect(try await Self.signIn(gateway, token: Self.adminToken).reply.status == 401)
            #expect(try await Self.signIn(gateway, token: gateway.defaultKey).cookie != nil)
            for _ in 0..<9 { #expect(try await Self.signIn(gateway, token: "sk-ng-wrong").reply.status == 401) }
            let blocked = try await Self.signIn(gateway, token: gateway.defaultKey)
            #expect(blocked.reply.status == 429 && blocked.cookie == nil)
            #expect(blocked.reply.headers["Retry-After"].first != nil)
        }
        // The admin API on its own listener: the operator signs in there, never on the public port.
        try await withGateway(configure: { $0.adminToken = Self.adminToken; $0.adminPort = 0 }) { gateway in
            #expect(try await Self.signIn(gateway, token: Self.adminToken).reply.status == 401)
            let admin = try await gateway.port(of: .admin)
            let elsewhere = Harness(
                baseURL: "http://127.0.0.1:\(admin)", emulatorURL: gateway.emulatorURL, recorder: gateway.recorder, dependencies: gateway.dependencies,
                configuration: gateway.configuration, defaultKey: gateway.defaultKey, geminiKey: gateway.geminiKey, listenerPorts: gateway.listenerPorts
            )
            let (cookie, reply) = try await Self.signIn(elsewhere, token: Self.adminToken)
            #expect(cookie != nil && reply.json["redirect"] as? String == "overview")
        }
        try await withGateway(configure: { configuration in configuration.console = ConsoleAccess.off }) { gateway in
            let page = try await gateway.get(gateway.baseURL + "/console/")
            let signIn = try await Self.signIn(gateway, token: gateway.defaultKey)
            #expect(page.status == 404 && signIn.reply.status == 404)
        }
    }
}
