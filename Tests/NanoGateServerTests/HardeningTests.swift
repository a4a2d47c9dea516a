import AsyncHTTPClient
import GeminiEmulator
import NIOHTTP1
import Foundation
import NanoGateTestSupport
import Hummingbird
import Logging
import NanoGateCore
import NIOCore
import NIOFoundationCompat
import NIOPosix
import Synchronization
import Testing
import Upstream
@testable import NanoGateServer
@testable import NanoGateStorage

/// What a hostile client (or a careless operator) must not be able to do to the gateway:
/// reach its network through image URLs, freeze it, hold its connections, read other tenants'
/// data, or find secrets in its logs.
@Suite(.timeLimit(.minutes(10))) struct HardeningTests {
    static let pngBytes: [UInt8] = Array(Data(base64Encoded: "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==")!)

    static func edit(_ gateway: Harness, url: String) async throws -> Harness.Reply {
        try await gateway.post("/v1/images/edits", json: #"{"model":"nano-banana","prompt":"p","images":[{"image_url":"\#(url)"}],"response_format":"b64_json"}"#)
    }

    /// Counts requests a test server received.
    final class Hits: Sendable {
        private let count = Mutex(0)
        var value: Int { count.withLock { $0 } }
        func add() { count.withLock { $0 += 1 } }
    }

    // MARK: Image fetches

    @Test func everyNonPublicRangeIsRefused() {
        let refused = [
            "0.1.2.3", "10.0.0.1", "127.0.0.1", "169.254.169.254", "172.16.0.1", "172.31.255.255", "192.168.1.1", "100.64.0.1",
            "192.0.0.8", "192.0.2.1", "198.18.0.1", "198.19.255.254", "198.51.100.7", "203.0.113.9", "224.0.0.1", "240.0.0.1", "255.255.255.255",
            "::", "::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::127.0.0.1", "::8.8.8.8", "64:ff9b::7f00:1", "64:ff9b::a00:1", "64:ff9b:1::1",
            "2002:7f00:1::", "2002:c0a8:101::1", "2001::1", "2001:db8::1", "fc00::1", "fd12:3456::1", "fe80::1", "fec0::1", "ff02::1", "ff0e::1", "100::1",
        ]
        for text in refused {
            let ip = try! #require(AddressPolicy.literal(text), "\(text)")
            #expect(!AddressPolicy.isPublic(ip), "\(text) must not be fetched")
        }
        for text in ["8.8.8.8", "1.1.1.1", "172.32.0.1", "198.20.0.1", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1", "2607:f8b0:4005:80a::200e", "2a00:1450:4001::"] {
            let ip = try! #require(AddressPolicy.literal(text), "\(text)")
            #expect(AddressPolicy.isPublic(ip), "\(text) is public")
        }
        let network = try! #require(IPNetwork("127.0.0.2/32"))
        #expect(network.contains(AddressPolicy.literal("127.0.0.2")!))
        #expect(!network.contains(AddressPolicy.literal("127.0.0.1")!))
        #expect(IPNetwork("10.0.0.0/8")!.contains(AddressPolicy.literal("10.200.1.1")!))
        #expect(IPNetwork("nonsense") == nil && IPNetwork("10.0.0.0/33") == nil)
    }

    @Test func privateAndReservedAddressesAreNotFetched() async throws {
        try await withGateway { gateway in
            for url in [
                "https://10.1.2.3/a.png", "https://192.168.0.1/a.png", "https://[::1]:1/a.png", "https://169.254.169.254/latest/meta-data",
                "https://[::ffff:127.0.0.1]/a.png", "https://[64:ff9b::7f00:1]/a.png", "https://[2002:7f00:1::]/a.png", "https://198.18.0.1/a.png",
                "https://192.0.0.8/a.png", "https://[fec0::1]/a.png", "https://[ff02::1]/a.png", "https://[::127.0.0.1]/a.png",
            ] {
                let reply = try await Self.edit(gateway, url: url)
                #expect(reply.status == 400, "\(url)")
                #expect(reply.error["code"] as? String == "forbidden_url", "\(url): \(reply.text)")
            }
            #expect(gateway.recorder.all.isEmpty)
        }
    }

    @Test func plainHTTPIsRefusedUnlessTheOperatorAllowsIt() async throws {
        let hits = Hits()
        try await withLocalServer({ router in
            router.get("a.png") { _, _ in hits.add(); return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(bytes: Self.pngBytes))) }
        }) { port in
            try await withGateway(configure: { $0.inputs.allowPrivateFetch = true }) { gateway in
                let reply = try await Self.edit(gateway, url: "http://127.0.0.1:\(port)/a.png")
                #expect(reply.status == 400)
                #expect((reply.error["message"] as? String)?.contains("https") == true, "\(reply.text)")
            }
            try await withGateway(configure: { $0.inputs.allowPrivateFetch = true; $0.inputs.allowPlainHTTP = true }) { gateway in
                let reply = try await Self.edit(gateway, url: "http://127.0.0.1:\(port)/a.png")
                #expect(reply.status == 200)
            }
        }
        #expect(hits.value == 1)
    }

    /// A host the policy allows answers with a redirect to one it does not: the redirect is
    /// never followed (today's AsyncHTTPClient default follows five, unchecked).
    @Test func redirectsAreNeverFollowed() async throws {
        let internalHits = Hits()
        try await withLocalServer(host: "127.0.0.1", { router in
            router.get("secret.png") { _, _ in internalHits.add(); return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(bytes: Self.pngBytes))) }
        }) { internalPort in
            try await withLocalServer(host: "127.0.0.2", { router in
                router.get("a.png") { _, _ in Response(status: .found, headers: [.location: "http://127.0.0.1:\(internalPort)/secret.png"]) }
            }) { publicPort in
                try await withGateway(configure: {
                    $0.inputs.allowedNetworks = [IPNetwork("127.0.0.2/32")!]
                    $0.inputs.allowPlainHTTP = true
                }) { gateway in
                    let reply = try await Self.edit(gateway, url: "http://127.0.0.2:\(publicPort)/a.png")
                    #expect(reply.status == 400, "\(reply.text)")
                    #expect(reply.error["code"] as? String == "image_fetch_failed")
                    #expect(gateway.recorder.all.isEmpty)
                }
            }
        }
        #expect(internalHits.value == 0, "the redirect target was never contacted")
    }

    /// The gateway connects to the address it checked: the resolver is asked once, and the host
    /// name (which no system resolver knows) is never looked up again, so DNS cannot rebind.
    @Test func fetchesConnectToTheCheckedAddress() async throws {
        let lookups = Hits()
        try await withLocalServer(host: "127.0.0.2", { router in
            router.get("a.png") { _, _ in Response(status: .ok, body: .init(byteBuffer: ByteBuffer(bytes: Self.pngBytes))) }
        }) { port in
            try await withGateway(configure: {
                $0.inputs.allowedNetworks = [IPNetwork("127.0.0.2/32")!]
                $0.inputs.allowPlainHTTP = true
            }, hostLookup: { host in
                lookups.add()
                return host == "images.nanogate.test" ? [AddressPolicy.literal("127.0.0.2")!] : []
            }) { gateway in
                let reply = try await Self.edit(gateway, url: "http://images.nanogate.test:\(port)/a.png")
                #expect(reply.status == 200, "\(reply.text.prefix(300))")
            }
        }
        #expect(lookups.value == 1)
    }

    /// A failed fetch says the same whatever happened, so image URLs cannot map the network.
    @Test func fetchFailuresRevealNothing() async throws {
        try await withLocalServer({ router in
            router.get("missing.png") { _, _ in Response(status: .notFound) }
            router.get("text") { _, _ in "not an image" }
        }) { port in
            let closedPort = try await Self.unusedPort()
            try await withGateway(configure: { $0.inputs.allowPrivateFetch = true; $0.inputs.allowPlainHTTP = true }) { gateway in
                var messages: Set<String> = []
                for url in ["http://127.0.0.1:\(port)/missing.png", "http://127.0.0.1:\(closedPort)/a.png"] {
                    let reply = try await Self.edit(gateway, url: url)
                    #expect(reply.status == 400, "\(url)")
                    messages.insert(reply.error["message"] as? String ?? "")
                }
                #expect(messages.count == 1, "one message for a 404 and a closed port: \(messages)")
                let message = try #require(messages.first)
                #expect(!message.contains("404") && !message.lowercased().contains("refused") && !message.contains("\(closedPort)"))
            }
        }
    }

    /// Blocking DNS look-ups run on the gateway's own threads: with more look-ups stuck than
    /// there are cores, the gateway still answers (on the old code `getaddrinfo` ran on Swift's
    /// cooperative threads, one per core, and froze every request, `/health` included).
    @Test func stuckLookUpsDoNotFreezeTheGateway() async throws {
        let entered = Hits()
        let gate = DispatchSemaphore(value: 0)
        let stuck = ProcessInfo.processInfo.activeProcessorCount + 2
        try await withGateway(hostLookup: { _ in
            entered.add()
            gate.wait()  // as blocking as a getaddrinfo waiting on a dead resolver
            return []
        }) { gateway in
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<stuck {
                    group.addTask { _ = try await Self.edit(gateway, url: "https://stuck\(index).nanogate.test/a.png") }
                }
                try await eventually("every look-up to be stuck") { entered.value >= stuck }
                let health = try await gateway.get(gateway.baseURL + "/health")
                #expect(health.status == 200)
                for _ in 0..<stuck { gate.signal() }
                try await group.waitForAll()
            }
        }
    }

    @Test func anEmptyDataURLIsABadRequestNotACrash() async throws {
        try await withGateway { gateway in
            let reply = try await Self.edit(gateway, url: "data:image/png;base64,")
            #expect(reply.status == 400)
            #expect(try await gateway.get(gateway.baseURL + "/health").status == 200)
        }
    }

    /// The MultipartKit trap that made us write our own parser: multipart-kit 4.7.1 traps (and
    /// so ends every request in flight) on a part header whose name has a byte ≥ 0x80. Ours
    /// answers 400 and the gateway stays up.
    @Test func aPartHeaderNameWithANonASCIIByteIsABadRequestNotACrash() async throws {
        try await withGateway { gateway in
            let boundary = "nanogate-trap"
            var body = ByteBuffer(string: "--\(boundary)\r\nContent-Disposition: form-data; name=\"prompt\"\r\nX-")
            body.writeBytes([0xC3, 0xA9])  // "é" in a header *name*
            body.writeString(": 1\r\n\r\np\r\n--\(boundary)\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nnano-banana\r\n--\(boundary)--\r\n")
            var request = HTTPClientRequest(url: gateway.baseURL + "/v1/images/edits")
            request.method = .POST
            request.headers.add(name: "Authorization", value: "Bearer \(gateway.defaultKey)")
            request.headers.add(name: "Content-Type", value: "multipart/form-data; boundary=\(boundary)")
            request.body = .bytes(body)
            let reply = try await gateway.send(request)
            #expect(reply.status == 400, "\(reply.text.prefix(300))")
            #expect(reply.error["type"] as? String == "invalid_request_error")
            #expect(try await gateway.get(gateway.baseURL + "/health").status == 200, "still serving")
        }
    }

    /// A `;` inside a quoted filename does not cut the part's name (the old parser split on it).
    @Test func multipartParametersRespectQuotes() {
        let header = #"form-data; name="image"; filename="a;b.png""#
        #expect(MultipartForm.parameter("name", in: header) == "image")
        #expect(MultipartForm.parameter("filename", in: header) == "a;b.png")
        #expect(MultipartForm.parameter("name", in: #"form-data; filename="x\"; name=evil.png"; name="image[]""#) == "image[]")
        #expect(MultipartForm.parameter("name", in: "form-data; name=prompt") == "prompt")
        #expect(MultipartForm.parameter("filename", in: "form-data; name=prompt") == nil)
    }

    // MARK: Limits

    @Test func chatLimitsHoldBeforeAnyFetch() async throws {
        let hits = Hits()
        try await withLocalServer({ router in
            router.get("a.png") { _, _ in hits.add(); return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(bytes: Self.pngBytes))) }
        }) { port in
            try await withGateway(configure: { $0.inputs.allowPrivateFetch = true; $0.inputs.allowPlainHTTP = true }) { gateway in
                let url = "http://127.0.0.1:\(port)/a.png"
                let parts: [[String: Any]] = Array(repeating: ["type": "image_url", "image_url": ["url": url]], count: 500) + [["type": "text", "text": "p"]]
                let many = try await ChatTests.chat(gateway, ["model": "nano-banana", "messages": [["role": "user", "content": parts]]])
                #expect(many.status == 400)
                #expect(many.error["code"] as? String == "too_many_images", "\(many.text)")
                let history = try await ChatTests.chat(gateway, ["model": "nano-banana", "messages": [
                    ["role": "user", "content": "draw"],
                    ["role": "assistant", "content": (0..<20).map { "![x](\(url)?n=\($0)) " }.joined()],
                    ["role": "user", "content": "again"],
                ]])
                #expect(history.status == 400, "Markdown images of assistant turns count too")
                let messages = (0..<300).map { ["role": "user", "content": "m\($0)"] }
                let long = try await ChatTests.chat(gateway, ["model": "nano-banana", "messages": messages])
                #expect(long.status == 400)
                #expect(long.error["code"] as? String == "too_many_messages")
                let text = try await ChatTests.chat(gateway, ["model": "nano-banana", "messages": [["role": "user", "content": String(repeating: "word ", count: 30_000)]]])
                #expect(text.status == 400)
                #expect(text.error["code"] as? String == "prompt_too_long")
                #expect(gateway.recorder.all.isEmpty)
            }
        }
        #expect(hits.value == 0)
    }

    /// 32,768 tokens as the spec says, estimated as UTF-8 bytes / 4 rounded up.
    @Test func promptLimitIsInTokens() async throws {
        #expect(PromptLimit.estimatedTokens("abcd") == 1 && PromptLimit.estimatedTokens("abcde") == 2)
        #expect(PromptLimit.estimatedTokens("猫") == 1, "three bytes")
        try await withGateway(configure: { $0.maxJSONBodyBytes = 4 * 1024 * 1024 }) { gateway in
            let atLimit = String(repeating: "a", count: 4 * 32_768)
            #expect(try await gateway.generate(#"{"model":"nano-banana","prompt":"\#(atLimit)","response_format":"b64_json"}"#).status == 200)
            let over = try await gateway.generate(#"{"model":"nano-banana","prompt":"\#(atLimit)a"}"#)
            #expect(over.status == 400)
            #expect(over.error["code"] as? String == "prompt_too_long")
            // Characters are not tokens: 40,000 emoji are 160,000 bytes, far over the limit.
            let emoji = try await gateway.generate(#"{"model":"nano-banana","prompt":"\#(String(repeating: "🍌", count: 40_000))"}"#)
            #expect(emoji.status == 400)
        }
    }

    // MARK: Slow and unauthenticated clients

    @Test func connectionsThatSendNothingAreClosed() async throws {
        try await withGateway(configure: { $0.idleTimeout = .seconds(1) }) { gateway in
            let port = Int(gateway.baseURL.split(separator: ":").last!)!
            try await RawConnection.with(port: port) { connection in
                try await connection.send("POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
                #expect(try await connection.readUntilClosed() != nil, "a half-sent head is cut")
            }
        }
    }

    @Test func aSlowGoogleIsNotCutByTheIdleTimeout() async throws {
        try await withGateway(configure: { $0.idleTimeout = .seconds(1) }) { gateway in
            let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"p [emulate:slow=2500]","response_format":"b64_json"}"#)
            #expect(reply.status == 200)
        }
    }

    @Test func continueIsSentOnlyAfterTheKeyIsAccepted() async throws {
        try await withGateway { gateway in
            let port = Int(gateway.baseURL.split(separator: ":").last!)!
            let head = "POST /v1/images/edits HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\nExpect: 100-continue\r\n"
            try await RawConnection.with(port: port) { connection in
                try await connection.send(head + "Authorization: Bearer sk-ng-wrong\r\n\r\n")
                let answer = try await connection.read(until: "\r\n\r\n")
                #expect(answer.hasPrefix("HTTP/1.1 401"), "\(answer)")
            }
            try await RawConnection.with(port: port) { connection in
                try await connection.send(head + "Authorization: Bearer \(gateway.defaultKey)\r\n\r\n")
                let answer = try await connection.read(until: "\r\n\r\n", limit: .seconds(90))
                #expect(answer.hasPrefix("HTTP/1.1 100"), "\(answer)")
            }
        }
    }

    /// A refused upload is not drained: the connection closes after the 401.
    @Test func refusedUploadsAreClosedNotDrained() async throws {
        try await withGateway { gateway in
            let port = Int(gateway.baseURL.split(separator: ":").last!)!
            try await RawConnection.with(port: port) { connection in
                try await connection.send("POST /v1/images/edits HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n{\"model\":")
                let answer = try #require(try await connection.readUntilClosed(limit: .seconds(60)), "the server closed the connection")
                #expect(answer.hasPrefix("HTTP/1.1 401"), "\(answer)")
            }
        }
    }

    // MARK: Tenants, files, logs

    /// A signature is handed back only to the key whose request produced it.
    @Test func thoughtSignaturesBelongToTheirKey() async throws {
        try await withGateway { gateway in
            let first = try await ChatTests.chat(gateway, ["model": "nano-banana-pro", "response_format": "b64_json", "messages": [["role": "user", "content": "draw a cat"]]])
            #expect(first.status == 200)
            let content = try #require(ChatTests.message(first)["content"] as? String)
            let history: [[String: Any]] = [["role": "user", "content": "draw a cat"], ["role": "assistant", "content": content], ["role": "user", "content": "make it blue"]]

            let other = try await ChatTests.chat(gateway, ["model": "nano-banana-pro", "messages": history], key: gateway.geminiKey)
            #expect(other.status == 200)
            let foreign = try #require(gateway.recorder.all.last?.body.contents.first { $0.role == "model" })
            #expect(foreign.parts?.allSatisfy { $0.thoughtSignature == ChatController.bypassSignature } == true, "another key gets the bypass, not the author's signature")

            let own = try await ChatTests.chat(gateway, ["model": "nano-banana-pro", "messages": history])
            #expect(own.status == 200)
            let restored = try #require(gateway.recorder.all.last?.body.contents.first { $0.role == "model" })
            #expect(restored.parts?.allSatisfy { $0.thoughtSignature != nil && $0.thoughtSignature != ChatController.bypassSignature } == true)
        }
    }

    @Test func dataFilesAreOwnerOnly() async throws {
        try await withGateway { gateway in
            let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"p","response_format":"url"}"#)
            #expect(reply.status == 200)
            func mode(_ path: String) throws -> Int {
                (try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? NSNumber)?.intValue ?? -1
            }
            let directory = gateway.configuration.dataDirectory.path
            #expect(try mode(directory) == 0o700)
            #expect(try mode(gateway.dependencies.imageStore.directory.path) == 0o700)
            if !TestDatabase.isPostgres { #expect(try mode(directory + "/nanogate.sqlite") == 0o600) }
            #expect(try mode(directory + "/url-signing.key") == 0o600)
            let image = try #require(try FileManager.default.contentsOfDirectory(atPath: gateway.dependencies.imageStore.directory.path).first)
            #expect(try mode(gateway.dependencies.imageStore.directory.path + "/" + image) == 0o600)
        }
    }

    @Test func shortURLSecretsAreRefused() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("nanogate-secret-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        #expect(throws: URLSecretError.self) { try URLSigner.loadOrCreateSecret(environmentValue: "short", dataDirectory: directory) }
        #expect(try URLSigner.loadOrCreateSecret(environmentValue: String(repeating: "k", count: 32), dataDirectory: directory).count == 32)
        try Data("tiny".utf8).write(to: directory.appendingPathComponent("url-signing.key"))
        #expect(throws: URLSecretError.self) { try URLSigner.loadOrCreateSecret(environmentValue: nil, dataDirectory: directory) }
    }

    /// Signed image URLs are bearer credentials: no log line may hold one.
    @Test func logsNeverHoldSignedURLs() async throws {
        let lines = RecordingLogHandler.Lines()
        var logger = Logger(label: "gateway") { _ in RecordingLogHandler(lines: lines) }
        logger.logLevel = .trace
        try await withGateway(gatewayLogger: logger) { gateway in
            let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"p","response_format":"url"}"#)
            let url = try #require(reply.data.first?["url"] as? String)
            #expect(try await gateway.get(url).status == 200)
            #expect(try await gateway.get(url + "x").status == 403)
        }
        let all = lines.all
        #expect(all.contains { $0.contains("/v1/files/images/") }, "requests are logged")
        #expect(!all.contains { $0.contains("signature=") || $0.contains("expires=") }, "\(all.filter { $0.contains("signature") })")
    }

    @Test func forwardedHeadersCountOnlyWhenTrusted() async throws {
        func firstURL(_ gateway: Harness) async throws -> String {
            var request = HTTPClientRequest(url: gateway.baseURL + "/v1/images/generations")
            request.method = .POST
            request.headers.add(name: "Authorization", value: "Bearer \(gateway.defaultKey)")
            request.headers.add(name: "Content-Type", value: "application/json")
            request.headers.add(name: "X-Forwarded-Host", value: "evil.example")
            request.headers.add(name: "X-Forwarded-Proto", value: "https")
            request.body = .bytes(ByteBuffer(string: #"{"model":"nano-banana","prompt":"p","response_format":"url"}"#))
            return try #require(try await gateway.send(request).data.first?["url"] as? String)
        }
        try await withGateway { gateway in
            let url = try await firstURL(gateway)
            #expect(url.hasPrefix(gateway.baseURL + "/"))
        }
        try await withGateway(configure: { $0.trustForwardedHeaders = true }) { gateway in
            let url = try await firstURL(gateway)
            #expect(url.hasPrefix("https://evil.example/"))
        }
    }

    @Test func imagesAreServedWithNosniff() async throws {
        try await withGateway { gateway in
            let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"p","response_format":"url"}"#)
            let image = try await gateway.get(try #require(reply.data.first?["url"] as? String))
            #expect(image.headers.first(name: "X-Content-Type-Options") == "nosniff")
        }
    }

    // MARK: Upstream pool and settlement

    /// Cancelling a request during its backoff ends it at once: no further upstream attempt.
    @Test func retriesStopWhenTheClientIsGone() async throws {
        try await withGateway(configure: { $0.upstream.retryBaseDelay = .seconds(30); $0.upstream.maxAttempts = 3 }) { gateway in
            let pool = UpstreamPool(configuration: gateway.configuration.upstream, logger: Logger(label: "test"))
            let request = ImageTranslation.geminiRequest(prompt: "p [emulate:503]", spec: ImageSpec(aspectRatio: nil, imageSize: nil), family: .flash25)
            let call = Task { () -> UpstreamError? in
                do throws(UpstreamError) {
                    _ = try await pool.generateContent(model: "gemini-2.5-flash-image", imageSize: nil, request: request, logger: Logger(label: "test"))
                    return nil
                } catch {
                    return error
                }
            }
            try await eventually("the emulator to receive the call") { !gateway.recorder.all.isEmpty }
            call.cancel()
            let error = await call.value
            await pool.shutdown()
            #expect(error?.code == .cancelled, "\(String(describing: error))")
            #expect(gateway.recorder.all.count == 1)
        }
    }

    /// Quotas are per model: a 429 on one model leaves the key usable for the others.
    @Test func aRateLimitRestsTheKeyForThatModelOnly() async throws {
        try await withGateway(configure: { $0.upstream.maxAttempts = 1 }) { gateway in
            let limited = try await gateway.generate(#"{"model":"nano-banana","prompt":"p [emulate:429]"}"#)
            #expect(limited.status == 429)
            let resting = try await gateway.generate(#"{"model":"nano-banana","prompt":"p"}"#)
            #expect(resting.status == 429, "the flash model rests")
            let other = try await gateway.generate(#"{"model":"nano-banana-pro","prompt":"p","response_format":"b64_json"}"#)
            #expect(other.status == 200)
        }
    }

    /// `n` = 2 with one call failing: the image that came back is returned and charged, and the
    /// log row says how many attempts were made.
    @Test func partialFailuresAreDeliveredAndCharged() async throws {
        try await withGateway(configure: { $0.upstream.maxAttempts = 1 }) { gateway in
            let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"p [emulate:flaky=503]","n":2,"response_format":"b64_json"}"#)
            #expect(reply.status == 200, "\(reply.text.prefix(300))")
            #expect(reply.data.count == 1)
            let key = try #require(try await gateway.dependencies.store.listKeys().first { $0.name == "test-default" })
            let row = try #require(try await gateway.dependencies.store.recentUsage(keyID: key.id, limit: 1).first)
            #expect(row.images == 1)
            #expect(row.attempts == 2)
            #expect(row.costMicroUSD > 0)
            #expect(row.costMicroUSD == row.upstreamCostMicroUSD, "the failed call returned no usage; Google billed what was delivered")
        }
    }

    static func unusedPort() async throws -> Int {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton).bind(host: "127.0.0.1", port: 0).get()
        let port = channel.localAddress!.port!
        try await channel.close()
        return port
    }
}

/// Keeps every log line (message and metadata) for tests that check what is logged.
struct RecordingLogHandler: LogHandler {
    final class Lines: Sendable {
        private let lines = Mutex<[String]>([])
        var all: [String] { lines.withLock { $0 } }
        func append(_ line: String) { lines.withLock { $0.append(line) } }
    }

    let lines: Lines
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let all = metadata.merging(event.metadata ?? [:]) { $1 }
        lines.append("\(event.message) \(all)")
    }
}
