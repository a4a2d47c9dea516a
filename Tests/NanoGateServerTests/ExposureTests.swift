import AsyncHTTPClient
import Foundation
import GeminiEmulator
import Hummingbird
import Logging
import NanoGateCore
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import SQLKit
import Synchronization
import Testing
import Upstream
@testable import NanoGateServer
@testable import NanoGateStorage

/// What the gateway shows and to whom (issue 21, "exposure and hygiene"): business figures on
/// `/metrics` and `/v1/usage`, error text on `/ready`, the admin token, lingering connections,
/// the proxy's log, the gateway's own image URLs sent back as inputs, idempotency claims.
@Suite(.timeLimit(.minutes(10))) struct ExposureTests {
    static let adminToken = "9f2c61d0a7b84e3fb5d19c0e6a2f47d3"

    static func request(_ gateway: Harness, _ path: String, method: HTTPMethod = .GET, bearer: String?) async throws -> Harness.Reply {
        var request = HTTPClientRequest(url: gateway.baseURL + path)
        request.method = method
        if let bearer { request.headers.add(name: "Authorization", value: "Bearer \(bearer)") }
        return try await gateway.send(request)
    }

    // MARK: 9a. /metrics

    /// On an address others can reach, `/metrics` (what keys were charged, what Google cost) is
    /// not served without a token, and start-up says how to turn it on.
    @Test func metricsNeedATokenOffLoopback() async throws {
        let lines = RecordingLogHandler.Lines()
        var logger = Logger(label: "gateway") { _ in RecordingLogHandler(lines: lines) }
        logger.logLevel = .info
        try await withGateway(configure: { $0.host = "0.0.0.0" }, gatewayLogger: logger) { gateway in
            #expect(try await gateway.generate(#"{"model":"nano-banana","prompt":"p","response_format":"b64_json"}"#).status == 200)
            let open = try await Self.request(gateway, "/metrics", bearer: nil)
            #expect(open.status == 404, "\(open.text.prefix(200))")
            #expect(!open.text.contains("micro_usd"))
        }
        #expect(lines.all.contains { $0.contains("NANOGATE_METRICS_TOKEN") && $0.contains("NANOGATE_METRICS_PORT") }, "a start-up warning names both variables")

        let token = "metrics-" + UUID().uuidString
        try await withGateway(configure: { $0.host = "0.0.0.0"; $0.metricsToken = token }) { gateway in
            #expect(try await Self.request(gateway, "/metrics", bearer: nil).status == 401)
            let scraped = try await Self.request(gateway, "/metrics", bearer: token)
            #expect(scraped.status == 200 && scraped.text.contains("nanogate_requests_total"))
        }
        // On loopback (the default) it stays open for a local scraper.
        try await withGateway { gateway in
            let local = try await Self.request(gateway, "/metrics", bearer: nil)
            #expect(local.status == 200)
        }
    }

    @Test func loopbackHosts() {
        for host in ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.53", "LOCALHOST"] { #expect(GatewayConfiguration.isLoopback(host: host), "\(host)") }
        for host in ["0.0.0.0", "::", "10.0.0.1", "127.0.0.1.example.com", "127.1", "example.com"] { #expect(!GatewayConfiguration.isLoopback(host: host), "\(host)") }
    }

    // MARK: 9b. /v1/usage

    /// A key holder sees what it asked and was charged, never Google's cost, the channel or
    /// credential that served it, or the attempts; the admin view keeps them.
    @Test func keyHoldersSeeTheirChargesNotTheOperatorsCosts() async throws {
        try await withGateway(configure: { $0.adminToken = Self.adminToken }) { gateway in
            #expect(try await gateway.generate(#"{"model":"nano-banana","prompt":"p","response_format":"b64_json"}"#).status == 200)
            let own = try await Self.request(gateway, "/v1/usage", bearer: gateway.defaultKey)
            #expect(own.status == 200)
            let row = try #require(own.data.first)
            #expect((row["cost_usd"] as? Double ?? 0) > 0 && row["images"] as? Int == 1 && row["model"] as? String == "nano-banana")
            for field in ["upstream_cost_usd", "upstream_key", "upstream_attempts", "attempts"] {
                #expect(row[field] == nil, "\(field) is the operator's")
            }
            #expect(!own.text.contains("gemini#") && !own.text.contains("\"channel\""), "\(own.text.prefix(400))")

            let admin = try await Self.request(gateway, "/admin/v1/usage?key=test-default", bearer: Self.adminToken)
            let full = try #require((try? JSONSerialization.jsonObject(with: Data(buffer: admin.body))) as? [[String: Any]])
            #expect((full.first?["upstream_cost_usd"] as? Double ?? 0) > 0)
            #expect(full.first?["upstream_key"] as? String == "gemini#1")
            #expect((full.first?["upstream_attempts"] as? [Any])?.isEmpty == false)
        }
    }

    // MARK: 9c. /ready

    /// `/ready` names the part that fails; the error's words (paths, hosts) go to the log only.
    @Test func readinessNamesThePartNotTheError() async throws {
        let lines = RecordingLogHandler.Lines()
        var logger = Logger(label: "gateway") { _ in RecordingLogHandler(lines: lines) }
        logger.logLevel = .info
        try await withGateway(gatewayLogger: logger) { gateway in
            #expect(try await gateway.get(gateway.baseURL + "/ready").json["image_store"] as? String == "ok")
            let images = gateway.dependencies.imageStore.directory
            try FileManager.default.removeItem(at: images)
            let reply = try await gateway.get(gateway.baseURL + "/ready")
            #expect(reply.status == 503)
            // The database answers (on a busy shared test cluster its 2 s check may time out: not the point here).
            #expect(reply.json["status"] as? String == "not_ready" && ["ok", "timed_out"].contains(reply.json["database"] as? String ?? ""))
            #expect(reply.json["image_store"] as? String == "failed")
            #expect(!reply.text.contains(images.path) && !reply.text.contains("nanogate-test-"), "\(reply.text)")
        }
        #expect(lines.all.contains { $0.contains("readiness check failed") && $0.contains("image_store") && $0.contains("nanogate-test-") }, "the raw error is logged")
    }

    // MARK: 10. The admin token

    @Test func exampleAndGuessableAdminTokensAreRefused() throws {
        for token in ["change-me-to-24-or-more-characters", "CHANGE-ME-to-24-or-more-characters", "please-changeme-0123456789abcdef", String(repeating: "a", count: 40),
                      "abababababababababababababab", "abcdefghijabcdefghijabcd", "short-0123456789"] {
            do {
                _ = try GatewayConfiguration.fromEnvironment(["NANOGATE_ADMIN_TOKEN": token])
                Issue.record("\(token) was accepted")
            } catch {
                #expect(error.description.contains("NANOGATE_ADMIN_TOKEN"), "\(error)")
            }
        }
        // Random tokens (`openssl rand -hex 32`, `-base64 32`, even `-hex 12`) and the test suites' own.
        for token in [
            "4f1c9a7e0b3d56e28a9f0c4b7d1e6a3f5c8b2d9e0f7a1c4b6d3e8f2a5c9b0d7e", "q3Xr9vK2mZpL8sT1wY6uB4nC7hJ0gF5dA2eR8tU=", "a41f07c93be2d8f61c0b5e97",
            "admin-token-0123456789abcdef", "admin-token-for-channel-tests-0123456789", "test-admin-token-0123456789abcdef", Self.adminToken,
        ] {
            #expect(try GatewayConfiguration.fromEnvironment(["NANOGATE_ADMIN_TOKEN": token]).adminToken == token)
        }
    }

    /// Ten wrong tokens from one address in a minute, then that address gets 429 with
    /// `Retry-After`, even with the right token (no guessing at network speed).
    @Test func wrongAdminTokensAreThrottledPerAddress() async throws {
        try await withGateway(configure: { $0.adminToken = Self.adminToken }) { gateway in
            #expect(try await Self.request(gateway, "/admin/v1/keys", bearer: Self.adminToken).status == 200)
            for attempt in 1...10 {
                let wrong = try await Self.request(gateway, "/admin/v1/keys", bearer: "wrong-\(attempt)-0123456789abcdefghij")
                #expect(wrong.status == 401, "attempt \(attempt)")
            }
            let refused = try await Self.request(gateway, "/admin/v1/keys", bearer: "wrong-11-0123456789abcdefghij")
            #expect(refused.status == 429)
            #expect(refused.error["code"] as? String == "rate_limit_exceeded")
            let wait = try #require(refused.headers.first(name: "Retry-After").flatMap(Int.init))
            #expect((1...60).contains(wait))
            #expect(try await Self.request(gateway, "/admin/v1/keys", bearer: Self.adminToken).status == 429, "blocked whatever it sends")
            // Key holders are not affected.
            #expect(try await gateway.generate(#"{"model":"nano-banana","prompt":"p","response_format":"b64_json"}"#).status == 200)
        }
    }

    /// Behind a proxy that sets `X-Real-IP` (and `NANOGATE_TRUST_FORWARDED=1`), each client is
    /// counted apart: one guessing client does not lock the operator out through the proxy.
    @Test func behindAProxyAttemptsAreCountedPerClient() async throws {
        try await withGateway(configure: { $0.adminToken = Self.adminToken; $0.trustForwardedHeaders = true }) { gateway in
            func admin(_ bearer: String, from client: String) async throws -> Int {
                var request = HTTPClientRequest(url: gateway.baseURL + "/admin/v1/keys")
                request.headers.add(name: "Authorization", value: "Bearer \(bearer)")
                request.headers.add(name: "X-Real-IP", value: client)
                return try await gateway.send(request).status
            }
            for attempt in 1...10 {
                let status = try await admin("wrong-\(attempt)-0123456789abcdefghij", from: "203.0.113.7")
                #expect(status == 401)
            }
            #expect(try await admin(Self.adminToken, from: "203.0.113.7") == 429)
            #expect(try await admin(Self.adminToken, from: "198.51.100.2") == 200, "another client behind the same proxy")
        }
    }

    /// The window ends, and the table stays bounded (the oldest address goes first).
    @Test func adminThrottleForgetsAndStaysBounded() {
        let start = ContinuousClock.now
        let throttle = AdminThrottle(limit: 3, window: .seconds(60), capacity: 2)
        for _ in 0..<3 { throttle.failed("a", now: start) }
        #expect(throttle.blockedFor("a", now: start + .seconds(1)) == 59)
        #expect(throttle.blockedFor("a", now: start + .seconds(61)) == nil, "the window ended")
        for _ in 0..<3 { throttle.failed("a", now: start + .seconds(62)) }
        throttle.failed("b", now: start + .seconds(63))
        #expect(throttle.blockedFor("a", now: start + .seconds(64)) != nil)
        throttle.failed("c", now: start + .seconds(65))
        #expect(throttle.blockedFor("a", now: start + .seconds(66)) == nil, "at capacity the oldest entry was dropped")
    }

    // MARK: 11. Lingering after an error

    /// A 401 to an upload that trickles in (a byte at a time, never idle long enough for the idle
    /// timeout) no longer holds the connection: it closes `errorLinger` after the answer. The
    /// same holds on the admin and metrics ports when they listen apart (each its own server).
    @Test func aTrickledBodyAfterA401IsNotDrainedForever() async throws {
        try await withGateway(configure: {
            $0.errorLinger = .seconds(2)
            $0.adminToken = Self.adminToken
            $0.adminPort = 0
            $0.metricsPort = 0
            $0.metricsToken = "metrics-token-for-the-linger-test"
        }) { gateway in
            let mainPort = Int(gateway.baseURL.split(separator: ":").last!)!
            let (adminPort, metricsPort) = (try await gateway.port(of: .admin), try await gateway.port(of: .metrics))
            for (port, request) in [(mainPort, "POST /v1/images/generations"), (adminPort, "POST /admin/v1/keys"), (metricsPort, "GET /metrics")] {
                try await Self.expectTrickleCut(port: port, head: "\(request) HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 16777216\r\n\r\n{")
            }
        }
    }

    /// Sends `head`, then a byte every 300 ms: the server must end the connection (within 20 s,
    /// for a 2 s linger), having answered 401 or reset it.
    static func expectTrickleCut(port: Int, head: String) async throws {
        try await RawConnection.with(port: port) { connection in
            try await connection.send(head)
            let closed = try await withThrowingTaskGroup(of: String?.self) { group in
                group.addTask {
                    // One byte every 300 ms, until the server closes (a write then fails) or 60 s.
                    for _ in 0..<200 {
                        do {
                            try await Task.sleep(for: .milliseconds(300))
                            try await connection.send(" ")
                        } catch {
                            return nil
                        }
                    }
                    return nil
                }
                // Closed or reset: the server closes with the client's bytes still unread, so
                // the kernel may answer with a reset (and drop the 401 it wrote last).
                let answer = try await connection.readUntilEnded(limit: .seconds(20))
                group.cancelAll()
                return answer
            }
            let answer = try #require(closed, "port \(port): the server closed the connection")
            #expect(answer.isEmpty || answer.hasPrefix("HTTP/1.1 401"), "port \(port): \(answer.prefix(200))")
        }
    }

    /// Idempotency (review 7c): a request with an `Idempotency-Key` is read no further than its
    /// route reads (a generation's 1 MiB), not the 64 MiB an upload route takes: a declared
    /// 4 MiB generation is refused with 413 once past 1 MiB, without waiting for the rest.
    @Test func anIdempotentRequestIsReadNoFurtherThanItsRoute() async throws {
        try await withGateway { gateway in
            let port = Int(gateway.baseURL.split(separator: ":").last!)!
            try await RawConnection.with(port: port) { connection in
                try await connection.send(
                    "POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(gateway.defaultKey)\r\nIdempotency-Key: big-body\r\n"
                        + "Content-Type: application/json\r\nContent-Length: \(4 << 20)\r\n\r\n"
                )
                try await connection.send(String(repeating: " ", count: (1 << 20) + 64 * 1024))
                let answer = try await connection.read(until: "\r\n\r\n", limit: .seconds(20))
                #expect(answer.hasPrefix("HTTP/1.1 413"), "\(answer.prefix(200))")
            }
        }
    }


    /// An error answer to a request whose body did arrive keeps the connection for the next request.
    @Test func anErrorToAWholeRequestKeepsTheConnection() async throws {
        try await withGateway(configure: { $0.errorLinger = .seconds(1) }) { gateway in
            let port = Int(gateway.baseURL.split(separator: ":").last!)!
            try await RawConnection.with(port: port) { connection in
                let body = #"{"model":"nano-banana","prompt":"p","size":"7:3"}"#
                // Sent together: the second request is read only after the first is answered.
                try await connection.send(
                    "POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(gateway.defaultKey)\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
                        + "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )
                let answers = try #require(try await connection.readUntilClosed())
                #expect(answers.hasPrefix("HTTP/1.1 400"), "\(answers.prefix(200))")
                #expect(answers.contains("HTTP/1.1 200") && answers.hasSuffix("ok"), "\(answers.suffix(200))")
            }
        }
    }

    // MARK: 12a. The proxy's access log

    /// deploy/nginx.conf logs with a format of its own that holds no query string (`?key=` API
    /// keys, image URL signatures), and that format is the one in use.
    @Test func nginxLogsNoQueryStrings() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("deploy/nginx.conf")
        let lines = try String(contentsOf: path, encoding: .utf8).split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.hasPrefix("#") }
        let text = lines.joined(separator: "\n")
        let access = try #require(lines.first { $0.hasPrefix("access_log ") }, "an access_log line")
        let format = try #require(access.dropLast().split(separator: " ").last.map(String.init), "\(access)")
        let definition = try #require(text.range(of: "log_format \(format) ").map { String(text[$0.lowerBound...].prefix { $0 != ";" }) })
        let variables = try Regex(#"\$[a-z_0-9]+"#)
        let used = Set(definition.matches(of: variables).map { String(definition[$0.range]) })
        #expect(used.contains("$uri"), "\(definition)")
        for variable in used {
            #expect(!["$request", "$request_uri", "$args", "$query_string", "$http_referer"].contains(variable) && !variable.hasPrefix("$arg_"), "\(variable) in \(definition)")
        }
        #expect(lines.filter { $0.hasPrefix("access_log ") }.count == 1)
    }

    // MARK: 12b. The gateway's own image URLs as inputs

    /// An own image URL must carry a valid, unexpired signature before it is read from the
    /// store: expired or unsigned URLs are a 400 naming the parameter, and Google is not called.
    @Test func ownImageURLsAreVerifiedBeforeUse() async throws {
        try await withGateway { gateway in
            let made = try await gateway.generate(#"{"model":"nano-banana","prompt":"p","response_format":"url"}"#)
            let url = try #require(made.data.first?["url"] as? String)
            let components = try #require(URLComponents(string: url))
            let name = String(components.path.dropFirst("/v1/files/images/".count))
            let signer = gateway.dependencies.signer
            let past = Int(Date().timeIntervalSince1970) - 60
            let base = gateway.baseURL + "/v1/files/images/" + name
            let calls = gateway.recorder.all.count

            for bad in [base + "?expires=\(past)&signature=\(signer.signature(name: name, expires: past))", base, base + "?expires=\(past + 86_400)&signature=00"] {
                let reply = try await HardeningTests.edit(gateway, url: bad)
                #expect(reply.status == 400, "\(bad): \(reply.text.prefix(300))")
                #expect((reply.error["param"] as? String)?.isEmpty == false)
                #expect((reply.error["message"] as? String)?.contains("no longer available") == true)
            }
            #expect(gateway.recorder.all.count == calls, "nothing went to Google")
            #expect(try await HardeningTests.edit(gateway, url: url).status == 200, "the URL as handed out still works")
        }
    }

    /// With an S3 store, a URL into the bucket is read with the gateway's credentials only when
    /// it is one the gateway presigned and it has not expired; an object name alone reads nothing.
    @Test func bucketURLsAreVerifiedBeforeTheStoreIsRead() async throws {
        let reads = HardeningTests.Hits()
        let objects = Mutex([String: [UInt8]]())
        try await withLocalServer({ router in
            router.put("bucket/images/{name}") { request, context in
                let body = try await request.body.collect(upTo: 64 * 1024 * 1024)
                objects.withLock { $0[context.parameters.get("name") ?? ""] = Array(buffer: body) }
                return Response(status: .ok)
            }
            router.get("bucket/images/{name}") { _, context in
                reads.add()
                guard let bytes = objects.withLock({ $0[context.parameters.get("name") ?? ""] }) else { return Response(status: .notFound) }
                return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
            }
            router.get("bucket") { _, _ in
                Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: #"<?xml version="1.0"?><ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>"#)))
            }
        }) { port in
            try await withGateway(configure: {
                $0.imageStore = "s3://bucket/images"
                $0.awsEnvironment = ["AWS_ACCESS_KEY_ID": "AKIDEXPOSURETEST", "AWS_SECRET_ACCESS_KEY": "exposure/secret", "AWS_ENDPOINT_URL": "http://127.0.0.1:\(port)"]
            }) { gateway in
                let store = try #require(gateway.dependencies.objectStore)
                let made = try await gateway.generate(#"{"model":"nano-banana","prompt":"p","response_format":"url"}"#)
                let url = try #require(made.data.first?["url"] as? String)
                #expect(url.hasPrefix("http://127.0.0.1:\(port)/bucket/images/"), "\(url)")
                let name = try #require(URLComponents(string: url)?.path.split(separator: "/").last.map(String.init))
                let unsigned = "http://127.0.0.1:\(port)/bucket/images/\(name)"
                let expired = store.presignedURL(name: name, ttl: 60, now: Date(timeIntervalSinceNow: -3600))
                let forged = url.replacingOccurrences(of: "X-Amz-Signature=", with: "X-Amz-Signature=0")
                let readsBefore = reads.value
                for bad in [unsigned, expired, forged] {
                    let reply = try await HardeningTests.edit(gateway, url: bad)
                    #expect(reply.status == 400, "\(bad): \(reply.text.prefix(300))")
                    #expect((reply.error["message"] as? String)?.contains("no longer available") == true, "\(reply.text.prefix(300))")
                }
                #expect(reads.value == readsBefore, "the bucket was not read for a URL the gateway did not sign")
                #expect(try await HardeningTests.edit(gateway, url: url).status == 200)
                #expect(reads.value == readsBefore + 1)
            }
        }
    }

    @Test func amzTimestampsParseBack() {
        let date = Date(timeIntervalSince1970: 1_796_113_800)
        #expect(ObjectImageStore.date(amzTimestamp: SigV4Signer.timestamp(date)) == date)
        for text in ["20261301T083000Z", "20261201T253000Z", "2026120T083000Z", "20261201083000Z", ""] { #expect(ObjectImageStore.date(amzTimestamp: text) == nil, "\(text)") }
    }

    // MARK: 12c. Idempotency claims

    /// A claim counts as running for longer than the longest request it guards (every attempt at
    /// the longest timeout: 3 × 360 s at 4K by default), so a retry never starts a second run.
    @Test func idempotencyClaimsOutliveTheLongestRequest() throws {
        // 14 input images (Pro's most), fetched one after another within 20 s each, come first.
        let fetching: TimeInterval = 14 * 20
        let defaults = try GatewayConfiguration.fromEnvironment([:])
        #expect(defaults.idempotencyStaleAfter == 3 * 360 + fetching + 60)
        let slow = try GatewayConfiguration.fromEnvironment(["NANOGATE_UPSTREAM_SIZE_TIMEOUTS": "4K=600", "NANOGATE_UPSTREAM_ATTEMPTS": "4"])
        #expect(slow.idempotencyStaleAfter == 4 * 600 + fetching + 60)
        let deadline = try GatewayConfiguration.fromEnvironment(["NANOGATE_UPSTREAM_DEADLINE": "5000", "NANOGATE_FETCH_TIMEOUT": "5"])
        #expect(deadline.idempotencyStaleAfter == 5000 + 14 * 5 + 60)
    }

    /// Against a running gateway with the default size timeouts: a claim 1,000 s old (past the
    /// old 960 s) is still running, so a retry is refused rather than starting a second, charged
    /// run; a claim past the fetches, timeout × attempts and 60 s is taken over.
    @Test func aRetryDoesNotTakeOverAClaimStillWithinTheLongestRequest() async throws {
        try await withGateway(configure: { $0.upstream.sizeTimeouts = UpstreamConfiguration.defaultSizeTimeouts }) { gateway in
            let store = gateway.dependencies.store
            let key = try #require(try await store.key(named: "test-default"))
            func claim(_ idempotencyKey: String, age: Int) async throws {
                #expect(try await store.claimIdempotency(keyID: key.id, idempotencyKey: idempotencyKey, bodyHash: "earlier", staleAfter: 60) == .claimed)
                try await store.database.raw("""
                    UPDATE idempotent_results SET created_at = created_at - \(bind: age)
                    WHERE key_id = \(bind: key.id) AND idempotency_key = \(bind: idempotencyKey)
                    """).run()
            }
            func retry(_ idempotencyKey: String) async throws -> Harness.Reply {
                var request = HTTPClientRequest(url: gateway.baseURL + "/v1/images/generations")
                request.method = .POST
                request.headers.add(name: "Authorization", value: "Bearer \(gateway.defaultKey)")
                request.headers.add(name: "Content-Type", value: "application/json")
                request.headers.add(name: "Idempotency-Key", value: idempotencyKey)
                request.body = .bytes(ByteBuffer(string: #"{"model":"nano-banana","prompt":"p","response_format":"b64_json"}"#))
                return try await gateway.send(request)
            }
            try await claim("still-running", age: 1_000)
            let refused = try await retry("still-running")
            #expect(refused.status == 409, "\(refused.text.prefix(300))")
            #expect(gateway.recorder.all.isEmpty, "nothing went to Google")
            try await claim("gateway-died", age: Int(gateway.configuration.idempotencyStaleAfter) + 60)
            #expect(try await retry("gateway-died").status == 200, "a claim past the longest request is taken over")
        }
    }

    // MARK: Legacy billing usage

    /// `GET /v1/dashboard/billing/usage` with dates sums in the database: the same cents as the
    /// key's spend over all time, nothing in a range without requests.
    @Test func billingUsageIsSummedByTheDatabase() async throws {
        try await withGateway { gateway in
            for _ in 0..<2 { #expect(try await gateway.generate(#"{"model":"nano-banana","prompt":"p","response_format":"b64_json"}"#).status == 200) }
            let key = try #require(try await gateway.dependencies.store.key(named: "test-default"))
            #expect(key.spentMicroUSD > 0)
            let all = try await Self.request(gateway, "/v1/dashboard/billing/usage?start_date=2020-01-01&end_date=2999-01-01", bearer: gateway.defaultKey)
            #expect(all.status == 200)
            #expect(abs((all.json["total_usage"] as? Double ?? -1) - TokenPrices.usd(key.spentMicroUSD) * 100) < 1e-9, "\(all.text)")
            let none = try await Self.request(gateway, "/v1/dashboard/billing/usage?start_date=2999-01-01&end_date=2999-02-01", bearer: gateway.defaultKey)
            #expect(none.json["total_usage"] as? Double == 0)
            let other = try await Self.request(gateway, "/v1/dashboard/billing/usage?start_date=2020-01-01&end_date=2999-01-01", bearer: gateway.geminiKey)
            #expect(other.json["total_usage"] as? Double == 0, "another key's rows do not count")
        }
    }
}
