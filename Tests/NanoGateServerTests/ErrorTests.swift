import Foundation
import Testing
import GeminiEmulator
import NanoGateServer
import NanoGateStorage
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import Upstream

/// Bad input, bad keys and upstream faults: OpenAI-style errors with the right status.
@Suite(.timeLimit(.minutes(10))) struct ErrorTests {
    /// Every error body has exactly OpenAI's four fields.
    func expectOpenAIShape(_ reply: Harness.Reply, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(Set(reply.error.keys) == ["message", "type", "param", "code"], "\(reply.text)", sourceLocation: sourceLocation)
        #expect(reply.headers.first(name: "Content-Type") == "application/json", sourceLocation: sourceLocation)
    }

    @Test func badRequestsNameTheField() async throws {
        try await withGateway { gateway in
            let cases: [(body: String, status: Int, param: String?)] = [
                (#"{"model":"nano-banana","prompt":"p","size":"7:3"}"#, 400, "size"),
                (#"{"model":"nano-banana","prompt":"p","size":"3:2","aspect_ratio":"16:9"}"#, 400, "aspect_ratio"),
                (#"{"model":"nano-banana","prompt":"p","aspect_ratio":"7:3"}"#, 400, "aspect_ratio"),
                (#"{"model":"nano-banana-pro","prompt":"p","size":"8k"}"#, 400, "size"),
                (#"{"model":"nano-banana-pro","prompt":"p","aspect_ratio":"2:1"}"#, 400, "aspect_ratio"),
                (#"{"model":"nano-banana","prompt":"p","n":5}"#, 400, "n"),
                (#"{"model":"nano-banana","prompt":"p","n":0}"#, 400, "n"),
                (#"{"model":"nano-banana","prompt":"p","n":"two"}"#, 400, "n"),
                (#"{"model":"nano-banana","prompt":"p","response_format":"png"}"#, 400, "response_format"),
                (#"{"model":"nano-banana","prompt":"   "}"#, 400, "prompt"),
                (#"{"model":"nano-banana"}"#, 400, "prompt"),
                (#"{"prompt":"p"}"#, 400, "model"),
                (#"{"model":"dall-e-3","prompt":"p"}"#, 404, "model"),
                (#"{"model":"nano-banana","prompt":42}"#, 400, "prompt"),
                (#"{"model":"nano-banana","#, 400, nil),
                (#"[1,2]"#, 400, nil),
            ]
            for item in cases {
                let reply = try await gateway.generate(item.body)
                #expect(reply.status == item.status, "\(item.body): \(reply.text)")
                #expect(reply.error["param"] as? String == item.param, "\(item.body): \(reply.text)")
                expectOpenAIShape(reply)
            }
            #expect(gateway.recorder.all.isEmpty, "nothing invalid reaches Google")
            let sizeError = try await gateway.generate(#"{"model":"nano-banana","prompt":"p","size":"7:3"}"#)
            #expect((sizeError.error["message"] as? String)?.contains("2:3 or 832x1248") == true, "the message lists what is accepted")
        }
    }

    /// Keys are served from the key cache; a revocation made outside this gateway (the CLI,
    /// another instance: here the store itself) bites within the cache's bound of one second,
    /// whether or not the epoch watcher kept up; one made through the admin API at once.
    @Test func keysAreRequiredAndRevocationBitesWithinASecond() async throws {
        try await withGateway(configure: { $0.adminToken = ExposureTests.adminToken }) { gateway in
            let body = #"{"model":"nano-banana","prompt":"p"}"#
            let missing = try await gateway.generate(body, key: "")
            #expect(missing.status == 401)
            #expect(missing.error["code"] as? String == "invalid_api_key")
            expectOpenAIShape(missing)
            #expect(try await gateway.generate(body, key: "sk-ng-not-a-real-key").status == 401)

            let keys = gateway.dependencies.database.keys
            let (_, secret) = try await gateway.dependencies.store.createKey(name: "short-lived", group: .default)
            #expect(try await gateway.generate(body, key: secret).status == 200)
            try await eventually("the key is cached", timeout: .seconds(10)) {
                _ = try await gateway.generate(body, key: secret)
                return keys.count > 0
            }
            try await gateway.dependencies.store.revokeKey(name: "short-lived")
            let revoked = ContinuousClock.now
            try await Task.sleep(until: revoked.advanced(by: keys.maxStaleness))
            let refused = try await gateway.generate(body, key: secret)
            #expect(refused.status == 401 && refused.error["code"] as? String == "invalid_api_key")

            let (_, second) = try await gateway.dependencies.store.createKey(name: "short-lived", group: .default)
            #expect(try await gateway.generate(body, key: second).status == 200)
            let revoke = try await ExposureTests.request(gateway, "/admin/v1/keys/short-lived", method: .DELETE, bearer: ExposureTests.adminToken)
            #expect(revoke.status == 204)
            #expect(try await gateway.generate(body, key: second).status == 401)
        }
    }

    @Test func unknownRoutesAndBigBodiesAnswerInJSON() async throws {
        try await withGateway(configure: { $0.maxJSONBodyBytes = 1024 }) { gateway in
            let unknown = try await gateway.post("/v1/images/variations", json: "{}")
            #expect(unknown.status == 404)
            expectOpenAIShape(unknown)
            let big = try await gateway.generate(#"{"model":"nano-banana","prompt":"\#(String(repeating: "a", count: 4000))"}"#)
            #expect(big.status == 413)
            expectOpenAIShape(big)
        }
    }

    @Test func googleRefusalsAreClientErrorsWithGooglesReason() async throws {
        try await withGateway { gateway in
            let cases: [(directive: String, code: String, reason: String)] = [
                ("image_safety", "content_policy_violation", "IMAGE_SAFETY"),
                ("prohibited", "content_policy_violation", "IMAGE_PROHIBITED_CONTENT"),
                ("prompt_block", "content_policy_violation", "PROHIBITED_CONTENT"),
                ("no_image", "no_image_generated", "NO_IMAGE"),
            ]
            for item in cases {
                let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"p [emulate:\#(item.directive)]"}"#)
                #expect(reply.status == 400, "\(item.directive)")
                #expect(reply.error["code"] as? String == item.code, "\(item.directive)")
                #expect((reply.error["message"] as? String)?.contains(item.reason) == true, "\(reply.text)")
                #expect(reply.json["data"] == nil, "never 200 with empty data")
                expectOpenAIShape(reply)
            }
        }
    }

    @Test func rateLimitsPassRetryAfterThrough() async throws {
        try await withGateway { gateway in
            let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"p [emulate:429]"}"#)
            #expect(reply.status == 429)
            #expect(reply.headers.first(name: "Retry-After") == "27")
            #expect(reply.error["code"] as? String == "rate_limit_exceeded")
            expectOpenAIShape(reply)
            // The only key now rests for Google's retryDelay: the next request is answered at once.
            let calls = gateway.recorder.all.count
            let again = try await gateway.generate(#"{"model":"nano-banana","prompt":"p"}"#)
            #expect(again.status == 429)
            #expect((1...27).contains(Int(again.headers.first(name: "Retry-After") ?? "") ?? 0))
            #expect(gateway.recorder.all.count == calls, "a resting key is not called")
        }
    }

    @Test func rateLimitedKeysAreSkippedForTheNextKey() async throws {
        try await withGateway(googleKeys: ["google-key-1", "google-key-2"], emulatorKeys: ["google-key-1", "google-key-2"]) { gateway in
            let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"p [emulate:flaky=429]","response_format":"b64_json"}"#)
            #expect(reply.status == 200)
            let keysUsed = gateway.recorder.all.map(\.apiKey)
            #expect(keysUsed.count == 2)
            #expect(Set(keysUsed).count == 2, "the retry went to the other key")
        }
    }

    @Test func transientFaultsAreRetried() async throws {
        try await withGateway { gateway in
            let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"p [emulate:flaky=503]","response_format":"b64_json"}"#)
            #expect(reply.status == 200)
            #expect(gateway.recorder.all.count == 2)
        }
    }

    /// Faults that answer at once, with the default (long) timeout, so a busy machine cannot
    /// turn a 503 into a 504.
    @Test func persistentUpstreamFaultsMapToGatewayStatuses() async throws {
        try await withGateway { gateway in
            let cases: [(directive: String, status: Int)] = [("503", 503), ("500", 502), ("garbage", 502)]
            for item in cases {
                let before = gateway.recorder.all.count
                let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"p [emulate:\#(item.directive)]"}"#)
                #expect(reply.status == item.status, "\(item.directive): \(reply.text)")
                expectOpenAIShape(reply)
                #expect(gateway.recorder.all.count - before == 3, "\(item.directive) is retried up to 3 attempts")
            }
        }
    }

    /// A call that outlives the timeout is a 504 and is not repeated (Google may have billed it).
    /// The emulator takes 60 s, far beyond the 1 s timeout, so the outcome never depends on load.
    @Test func aTimedOutCallIsA504AndIsNotRepeated() async throws {
        try await withGateway(configure: { $0.upstream.requestTimeout = .seconds(1) }) { gateway in
            let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"p [emulate:slow=60000]"}"#)
            #expect(reply.status == 504, "\(reply.text)")
            #expect(reply.error["code"] as? String == "upstream_timeout")
            expectOpenAIShape(reply)
            #expect(gateway.recorder.all.count == 1)
        }
    }

    /// Timeouts follow the requested size: the same 3 s upstream answer is too slow for a 1K
    /// request allowed 1 s, and arrives for a 4K one allowed 600 s. (The 4K allowance is far
    /// beyond any render time: with 30 s, the emulator's 4K render queued behind a busy suite
    /// and the test failed on a quiet 2-core machine.)
    @Test func timeoutsFollowTheImageSize() async throws {
        try await withGateway(configure: { $0.upstream.sizeTimeouts = ["1K": .seconds(1), "4K": .seconds(600)] }) { gateway in
            let small = try await gateway.generate(#"{"model":"nano-banana-pro","prompt":"p [emulate:slow=3000]","size":"1k","aspect_ratio":"1:1"}"#)
            #expect(small.status == 504 && small.error["code"] as? String == "upstream_timeout", "\(small.text)")
            let large = try await gateway.generate(#"{"model":"nano-banana-pro","prompt":"p [emulate:slow=3000]","size":"4k","aspect_ratio":"1:1","response_format":"b64_json"}"#)
            #expect(large.status == 200, "\(large.text)")
        }
    }

    @Test func sizeTimeoutsAreConfigured() throws {
        let standard = try GatewayConfiguration.fromEnvironment([:]).upstream
        #expect(standard.sizeTimeouts["4K"] == .seconds(360) && standard.sizeTimeouts["1K"] == .seconds(120))
        #expect(standard.longestTimeout >= .seconds(360), "the HTTP client's read timeout never cuts a 4K call first")
        let tuned = try GatewayConfiguration.fromEnvironment(["NANOGATE_UPSTREAM_SIZE_TIMEOUTS": "1k=60, 4K=600"]).upstream
        #expect(tuned.sizeTimeouts["1K"] == .seconds(60) && tuned.sizeTimeouts["4K"] == .seconds(600) && tuned.sizeTimeouts["2K"] == .seconds(180))
        let single = try GatewayConfiguration.fromEnvironment(["NANOGATE_UPSTREAM_TIMEOUT": "500"]).upstream
        #expect(single.sizeTimeouts.isEmpty && single.requestTimeout == .seconds(500), "one timeout for every size, as before")
        #expect {
            try GatewayConfiguration.fromEnvironment(["NANOGATE_UPSTREAM_SIZE_TIMEOUTS": "8K=10"])
        } throws: { "\($0)".contains("NANOGATE_UPSTREAM_SIZE_TIMEOUTS") }
    }

    @Test func aBadGoogleKeyIsTheOperatorsProblemAndNeverLeaks() async throws {
        try await withGateway(googleKeys: ["AIzaSy-secret-but-wrong"], emulatorKeys: ["the-real-key"]) { gateway in
            let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"p"}"#)
            #expect(reply.status == 503)
            #expect(reply.error["code"] as? String == "upstream_auth_failed")
            #expect(!reply.text.contains("AIzaSy"))
            expectOpenAIShape(reply)
            let again = try await gateway.generate(#"{"model":"nano-banana","prompt":"p"}"#)
            #expect(again.status == 503)
            #expect(again.error["code"] as? String == "upstream_auth_failed")
        }
    }

    @Test func aBadKeyIsSkippedWhenAGoodOneExists() async throws {
        try await withGateway(googleKeys: ["wrong-key", "google-key-1"], emulatorKeys: ["google-key-1"]) { gateway in
            for _ in 0..<3 {
                let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"p","response_format":"b64_json"}"#)
                #expect(reply.status == 200)
            }
            // After the first rejection the bad key is set aside: at most one call used it.
            #expect(gateway.recorder.all.filter { $0.apiKey == "wrong-key" }.count == 1)
        }
    }

    @Test func noGoogleKeyConfiguredIsA503() async throws {
        try await withGateway(googleKeys: []) { gateway in
            let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"p"}"#)
            #expect(reply.status == 503)
            #expect((reply.error["message"] as? String)?.contains("GEMINI_API_KEY") == true)
        }
    }
}
