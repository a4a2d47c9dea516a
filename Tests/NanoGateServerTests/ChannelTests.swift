import AsyncHTTPClient
import Foundation
import GeminiEmulator
import Hummingbird
import Logging
import NanoGateCore
import NanoGateServer
import NanoGateStorage
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization
import Testing
import Upstream

/// Another emulator on loopback, standing for a second channel (another key's project, another
/// region); `body` gets its base URL.
func withEmulator(
    _ configure: (inout EmulatorConfiguration) -> Void = { _ in }, recorder: EmulatorRecorder, _ body: (String) async throws -> Void
) async throws {
    var settings = emulatorConfiguration(acceptedKeys: nil)
    configure(&settings)
    try await withLocalServer(router: GeminiEmulator(configuration: settings, recorder: recorder).router()) { port in
        try await body("http://127.0.0.1:\(port)")
    }
}

/// Sends a generation on a raw connection and closes it once the emulator has the call: a
/// client that gives up waiting. `headers` are extra header lines.
func sendAndLeave(_ gateway: Harness, body: String, headers: String = "") async throws {
    let port = Int(gateway.baseURL.split(separator: ":").last!)!
    try await RawConnection.with(port: port) { connection in
        try await connection.send("POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(gateway.defaultKey)\r\n\(headers)Content-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)")
        try await eventually("the emulator to receive the call") { !gateway.recorder.all.isEmpty }
    }
}

/// The newest usage row, waiting up to 30 s for it to be written.
func firstUsageRow(_ gateway: Harness) async throws -> UsageRecord? {
    for _ in 0..<300 {
        if let row = try await gateway.usageRows().first { return row }
        try await Task.sleep(for: .milliseconds(100))
    }
    return nil
}

/// The live channel state, through the admin API.
func channelStates(_ gateway: Harness) async throws -> [String: [String: Any]] {
    var request = HTTPClientRequest(url: gateway.baseURL + "/admin/v1/channels")
    request.headers.add(name: "Authorization", value: "Bearer \(channelAdminToken)")
    let reply = try await gateway.send(request)
    #expect(reply.status == 200, "\(reply.text)")
    var states: [String: [String: Any]] = [:]
    for entry in reply.data { if let name = entry["name"] as? String { states[name] = entry } }
    return states
}

let channelAdminToken = "admin-token-for-channel-tests-0123456789"

@Suite(.timeLimit(.minutes(10))) struct ChannelTests {
    /// A 429 (with Google's RetryInfo) moves the request to the next channel at once, and
    /// cools the first down for that model only: another model still goes to it first.
    @Test func aRateLimitMovesToTheNextChannelAndCoolsThatModelOnly() async throws {
        let limitedRecorder = EmulatorRecorder()
        let control = EmulatorControl(fault: "429")
        // A long retryDelay: a loaded CI machine may take many seconds between two requests.
        try await withEmulator({ $0.control = control; $0.retryDelaySeconds = 3600 }, recorder: limitedRecorder) { limitedURL in
            try await withGateway(configure: {
                $0.adminToken = channelAdminToken
                $0.upstream.channels = [
                    ChannelConfiguration(name: "limited", kind: .gemini, baseURL: limitedURL, apiKeys: ["k1"], priority: 2),
                    ChannelConfiguration(name: "spare", kind: .gemini, baseURL: $0.upstream.baseURL, apiKeys: ["google-key-1"], priority: 1),
                ]
            }) { gateway in
                let first = try await gateway.generate(#"{"model":"nano-banana","prompt":"a lighthouse","response_format":"b64_json"}"#)
                #expect(first.status == 200, "\(first.text)")
                #expect(limitedRecorder.all.count == 1)
                #expect(gateway.recorder.all.count == 1)
                let row = try #require(try await gateway.usageRows().first)
                #expect(row.upstreamAttempts.map(\.channel) == ["limited", "spare"])
                #expect(row.upstreamAttempts.map(\.status) == [429, 200])
                #expect(row.upstreamAttempts.first?.error == "upstream_rate_limited")
                #expect(row.upstreamKey == "spare#1")
                #expect(row.attempts == 2)
                #expect(row.status == 200)

                let states = try await channelStates(gateway)
                let cooling = try #require(states["limited"]?["coolingModels"] as? [String: Int])
                #expect(cooling.keys.sorted() == ["gemini-2.5-flash-image"])
                #expect((cooling["gemini-2.5-flash-image"] ?? 0) > 3000, "Google's retryDelay of an hour, counted down")
                #expect(states["limited"]?["state"] as? String == "cooling")

                // The limited channel recovers; the cooled model still skips it, another model does not.
                control.fault = nil
                let again = try await gateway.generate(#"{"model":"nano-banana","prompt":"a lighthouse again","response_format":"b64_json"}"#)
                #expect(again.status == 200)
                #expect(limitedRecorder.all.count == 1, "gemini-2.5-flash-image is cooling on 'limited'")
                let pro = try await gateway.generate(#"{"model":"nano-banana-pro","prompt":"a harbour","response_format":"b64_json"}"#)
                #expect(pro.status == 200, "\(pro.text)")
                #expect(limitedRecorder.all.map(\.model) == ["gemini-2.5-flash-image", "gemini-3-pro-image"], "another model goes to the higher priority first")
            }
        }
    }

    /// A channel that answers 503 again and again trips its breaker: over HTTP, it is reported
    /// tripped and skipped while it rests. (The rest is long, so no machine is slow enough to
    /// see it end; when the breaker closes and how one request probes it is tested exactly, with
    /// a clock of the test's own, in `UpstreamTests.PoolStateTests`.)
    @Test func aFailingChannelIsSkippedWhileItsBreakerIsOpen() async throws {
        let flakyRecorder = EmulatorRecorder()
        let control = EmulatorControl(fault: "503")
        try await withEmulator({ $0.control = control }, recorder: flakyRecorder) { flakyURL in
            try await withGateway(configure: {
                $0.adminToken = channelAdminToken
                $0.upstream.breakerThreshold = 2
                $0.upstream.breakerCooldown = .seconds(3600)
                $0.upstream.channels = [
                    ChannelConfiguration(name: "flaky", kind: .gemini, baseURL: flakyURL, apiKeys: ["k"], priority: 5),
                    ChannelConfiguration(name: "steady", kind: .gemini, baseURL: $0.upstream.baseURL, apiKeys: ["google-key-1"]),
                ]
            }) { gateway in
                for index in 0..<2 {
                    let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"request \#(index)","response_format":"b64_json"}"#)
                    #expect(reply.status == 200, "the steady channel answers: \(reply.text)")
                }
                #expect(flakyRecorder.all.count == 2)
                #expect(try await channelStates(gateway)["flaky"]?["state"] as? String == "tripped")
                let skipped = try await gateway.generate(#"{"model":"nano-banana","prompt":"while it rests","response_format":"b64_json"}"#)
                #expect(skipped.status == 200)
                #expect(flakyRecorder.all.count == 2, "a tripped channel gets no traffic while it rests")
                #expect(try await gateway.usageRows().first?.upstreamAttempts.map(\.channel) == ["steady"])
            }
        }
    }

    /// A key Google calls invalid sets that channel aside for every model; the request is
    /// served by the next channel, and the admin API reports the channel disabled.
    @Test func anInvalidKeyDisablesItsChannelAndIsReported() async throws {
        try await withGateway(configure: {
            $0.adminToken = channelAdminToken
            $0.upstream.channels = [
                ChannelConfiguration(name: "revoked", kind: .gemini, baseURL: $0.upstream.baseURL, apiKeys: ["not-a-key"], priority: 3),
                ChannelConfiguration(name: "valid", kind: .gemini, baseURL: $0.upstream.baseURL, apiKeys: ["google-key-1"]),
            ]
        }) { gateway in
            let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"a fox","response_format":"b64_json"}"#)
            #expect(reply.status == 200, "\(reply.text)")
            #expect(gateway.recorder.all.map(\.apiKey) == ["not-a-key", "google-key-1"])
            let states = try await channelStates(gateway)
            #expect(states["revoked"]?["state"] as? String == "disabled")
            #expect(states["revoked"]?["disabledKeys"] as? [Int] == [1])
            #expect((states["revoked"]?["lastError"] as? String)?.contains("upstream_auth_failed") == true)
            #expect(states["valid"]?["state"] as? String == "ok")

            let pro = try await gateway.generate(#"{"model":"nano-banana-pro","prompt":"a fox","response_format":"b64_json"}"#)
            #expect(pro.status == 200)
            #expect(gateway.recorder.all.count == 3, "the refused key is skipped for every model")
            #expect(!reply.text.contains("not-a-key"))
        }
    }

    /// With one channel and its only key refused, the client gets a 503 that names no key.
    @Test func everyChannelRefusedIsA503() async throws {
        try await withGateway(configure: {
            $0.upstream.channels = [ChannelConfiguration(name: "only", kind: .gemini, baseURL: $0.upstream.baseURL, apiKeys: ["not-a-key"])]
        }) { gateway in
            for _ in 0..<2 {
                let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"a fox","response_format":"b64_json"}"#)
                #expect(reply.status == 503)
                #expect(reply.error["code"] as? String == "upstream_auth_failed")
                #expect(!reply.text.contains("not-a-key"))
            }
            #expect(gateway.recorder.all.count == 1, "the refused key is not tried again")
        }
    }

    /// A channel's `models` list and per-model upstream ids: a channel that does not list a
    /// model never gets it, and a mapped id is what reaches the upstream.
    @Test func channelsServeTheirModelsUnderTheirIDs() async throws {
        let proRecorder = EmulatorRecorder()
        try await withEmulator({ $0.proModel = "vendor-pro-image" }, recorder: proRecorder) { proURL in
            try await withGateway(configure: {
                $0.upstream.channels = [
                    ChannelConfiguration(name: "pro-only", kind: .gemini, baseURL: proURL, apiKeys: ["k"], priority: 9,
                                         models: [.init(name: "gemini-3-pro-image", upstream: "vendor-pro-image")]),
                    ChannelConfiguration(name: "flash-only", kind: .gemini, baseURL: $0.upstream.baseURL, apiKeys: ["google-key-1"],
                                         models: [.init(name: "nano-banana")]),
                ]
            }) { gateway in
                #expect(try await gateway.generate(#"{"model":"nano-banana-pro","prompt":"p","response_format":"b64_json"}"#).status == 200)
                #expect(try await gateway.generate(#"{"model":"nano-banana","prompt":"p","response_format":"b64_json"}"#).status == 200)
                #expect(proRecorder.all.map(\.model) == ["vendor-pro-image"])
                #expect(gateway.recorder.all.map(\.model) == ["gemini-2.5-flash-image"], "listed by its public name")
                let nobody = try await gateway.generate(#"{"model":"nano-banana-2","prompt":"p","response_format":"b64_json"}"#)
                #expect(nobody.status == 503)
                #expect(nobody.error["code"] as? String == "no_upstream")
            }
        }
    }

    /// A channel at its `max_concurrency` with its queue full refuses at once with a 503 and
    /// `Retry-After`, instead of waiting on a hidden timeout; no credit is charged.
    @Test func aFullQueueIsAnImmediate503() async throws {
        try await withGateway(configure: {
            $0.upstream.queueLimit = 0
            $0.upstream.channels = [ChannelConfiguration(name: "narrow", kind: .gemini, baseURL: $0.upstream.baseURL, apiKeys: ["google-key-1"], maxConcurrency: 1)]
        }) { gateway in
            // Google takes 30 s: the second request surely arrives while the first holds the slot.
            let slow = Task { try await gateway.generate(#"{"model":"nano-banana","prompt":"slow [emulate:slow=30000]","response_format":"b64_json"}"#) }
            try await eventually("the emulator to receive the call") { !gateway.recorder.all.isEmpty }
            let refused = try await gateway.generate(#"{"model":"nano-banana","prompt":"no room","response_format":"b64_json"}"#)
            #expect(refused.status == 503)
            #expect(refused.error["code"] as? String == "upstream_queue_full")
            #expect(refused.headers.first(name: "retry-after") != nil)
            #expect(try await slow.value.status == 200)
            #expect(gateway.recorder.all.count == 1)
            let rows = try await gateway.usageRows()
            #expect(rows.first { $0.status == 503 }?.costMicroUSD == 0)
        }
    }

    /// A client that disconnects cancels the upstream call at once (and its retries): the
    /// request is logged as 499, uncharged, long before Google would have answered.
    @Test func aClientThatLeavesCancelsTheUpstreamCall() async throws {
        try await withGateway { gateway in
            try await sendAndLeave(gateway, body: #"{"model":"nano-banana","prompt":"never mind [emulate:slow=20000]","response_format":"b64_json"}"#)
            // The connection is closed now: the row appears without waiting for the 20 s answer.
            let settled = try #require(try await firstUsageRow(gateway), "the request was settled after the client left")
            #expect(settled.status == 499)
            #expect(settled.errorCode == "client_disconnected")
            #expect(settled.costMicroUSD == 0)
            #expect(settled.latencyMilliseconds < 15_000, "cancelled, not waited out")
            #expect(gateway.recorder.all.count == 1, "no retry after the client left")
        }
    }

    /// With an `Idempotency-Key`, a client that leaves does not cancel: the image is generated,
    /// stored and charged once, and the client's retry gets it without a second upstream call.
    @Test func anIdempotentRequestRunsOnAfterTheClientLeaves() async throws {
        try await withGateway { gateway in
            let body = #"{"model":"nano-banana","prompt":"keep going [emulate:slow=2000]","response_format":"b64_json"}"#
            try await sendAndLeave(gateway, body: body, headers: "Idempotency-Key: retry-me-1\r\n")
            let settled = try #require(try await firstUsageRow(gateway))
            #expect(settled.status == 200, "it ran to completion")
            #expect(settled.images == 1 && settled.costMicroUSD > 0)

            var request = HTTPClientRequest(url: gateway.baseURL + "/v1/images/generations")
            request.method = .POST
            request.headers.add(name: "Authorization", value: "Bearer \(gateway.defaultKey)")
            request.headers.add(name: "Idempotency-Key", value: "retry-me-1")
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: body))
            let retry = try await gateway.send(request)
            #expect(retry.status == 200)
            #expect(retry.headers.first(name: "Idempotent-Replayed") == "true")
            #expect(!(try await gateway.imageBytes(retry)).isEmpty)
            #expect(gateway.recorder.all.count == 1, "one upstream call for both")
            #expect(try await gateway.usageRows().count == 1, "charged once")
        }
    }

    /// Vertex AI express mode: the publisher-model path with the API key.
    @Test func vertexExpressUsesThePublisherPath() async throws {
        try await withGateway(configure: {
            $0.upstream.channels = [ChannelConfiguration(name: "express", kind: .vertexExpress, baseURL: $0.upstream.baseURL, apiKeys: ["google-key-1"])]
        }) { gateway in
            let reply = try await gateway.generate(#"{"model":"nano-banana-pro","prompt":"a quay","response_format":"b64_json"}"#)
            #expect(reply.status == 200, "\(reply.text)")
            let call = try #require(gateway.recorder.all.first)
            #expect(call.path == "/v1/publishers/google/models/gemini-3-pro-image:generateContent")
            #expect(call.apiKey == "google-key-1")
            #expect(call.body.contents.allSatisfy { $0.role != nil })
        }
    }

    /// A channel added through the admin API serves at once, with no restart; removing it takes
    /// it out of service; a configuration-file channel cannot be replaced there.
    @Test func channelsAddedThroughTheAdminAPIServeAtOnce() async throws {
        let addedRecorder = EmulatorRecorder()
        try await withEmulator(recorder: addedRecorder) { addedURL in
            try await withGateway(configure: {
                $0.adminToken = channelAdminToken
                $0.upstream.channels = [ChannelConfiguration(name: "file", kind: .gemini, baseURL: $0.upstream.baseURL, apiKeys: ["google-key-1"])]
            }) { gateway in
                func admin(_ method: HTTPMethod, _ path: String, _ body: String? = nil) async throws -> Harness.Reply {
                    var request = HTTPClientRequest(url: gateway.baseURL + "/admin/v1/" + path)
                    request.method = method
                    request.headers.add(name: "Authorization", value: "Bearer \(channelAdminToken)")
                    if let body { request.body = .bytes(ByteBuffer(string: body)) }
                    return try await gateway.send(request)
                }
                let added = try await admin(.POST, "channels", #"{"name":"added","kind":"gemini","base_url":"\#(addedURL)","api_keys":["k9"],"priority":7}"#)
                #expect(added.status == 201, "\(added.text)")
                #expect(added.json["managed"] as? Bool == true)
                #expect(!added.text.contains("k9"), "the credential is not echoed")
                #expect(try await gateway.generate(#"{"model":"nano-banana","prompt":"p","response_format":"b64_json"}"#).status == 200)
                #expect(addedRecorder.all.map(\.apiKey) == ["k9"], "the new channel, with its higher priority, served it")
                #expect(try await gateway.dependencies.store.storedChannels().map(\.name) == ["added"])

                let bad = try await admin(.POST, "channels", #"{"name":"broken","kind":"openai","api_keys":["x"],"colour":"red"}"#)
                #expect(bad.status == 400)
                #expect((bad.error["message"] as? String)?.contains("colour") == true)
                let clash = try await admin(.POST, "channels", #"{"name":"file","kind":"gemini","api_keys":["x"]}"#)
                #expect(clash.status == 409)

                #expect(try await admin(.DELETE, "channels/added").status == 200)
                #expect(try await gateway.generate(#"{"model":"nano-banana","prompt":"p2","response_format":"b64_json"}"#).status == 200)
                #expect(addedRecorder.all.count == 1, "removed from service")
                #expect(gateway.recorder.all.count == 1)
                #expect(try await admin(.DELETE, "channels/added").status == 404)
            }
        }
    }

    /// A channel that refuses connections is a transient fault: the next channel serves, and
    /// the request is charged once.
    @Test func aRefusedConnectionFailsOverAndIsChargedOnce() async throws {
        try await withGateway(configure: {
            $0.upstream.channels = [
                // Port 9 (discard) on loopback: nothing listens.
                ChannelConfiguration(name: "dead", kind: .gemini, baseURL: "http://127.0.0.1:9", apiKeys: ["k"], priority: 1),
                ChannelConfiguration(name: "alive", kind: .gemini, baseURL: $0.upstream.baseURL, apiKeys: ["google-key-1"]),
            ]
        }) { gateway in
            let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"p","response_format":"b64_json"}"#)
            #expect(reply.status == 200, "\(reply.text)")
            let rows = try await gateway.usageRows()
            #expect(rows.count == 1)
            let row = try #require(rows.first)
            #expect(row.upstreamAttempts.map(\.channel) == ["dead", "alive"])
            #expect(row.upstreamAttempts.first?.error == "upstream_unreachable" && row.upstreamAttempts.first?.status == nil)
            #expect(row.images == 1 && row.costMicroUSD > 0)
            let key = try #require(try await gateway.dependencies.store.key(named: "test-default"))
            #expect(key.spentMicroUSD == row.costMicroUSD, "charged once")
        }
    }

    /// A channel's per-model timeout bounds that model's calls (and a timed-out call is not
    /// repeated: Google may have billed it); the other models keep the default.
    @Test func perModelTimeoutsBoundTheirCalls() async throws {
        try await withGateway(configure: {
            $0.upstream.channels = [ChannelConfiguration(
                name: "timed", kind: .gemini, baseURL: $0.upstream.baseURL, apiKeys: ["google-key-1"], modelTimeouts: ["gemini-2.5-flash-image": 1]
            )]
        }) { gateway in
            let started = ContinuousClock.now
            // Google would take 60 s: only the model's 1 s timeout ends the call before that (the
            // 50 s bound leaves a busy machine room; the emulator's shutdown waits for the 60 s).
            let slow = try await gateway.generate(#"{"model":"nano-banana","prompt":"slow [emulate:slow=60000]","response_format":"b64_json"}"#)
            #expect(slow.status == 504, "\(slow.text)")
            #expect(slow.error["code"] as? String == "upstream_timeout")
            #expect(ContinuousClock.now - started < .seconds(50), "cut at the model's timeout, not the default 300 s")
            #expect(gateway.recorder.all.count == 1, "not repeated")
            let pro = try await gateway.generate(#"{"model":"nano-banana-pro","prompt":"a bit slow [emulate:slow=1500]","response_format":"b64_json"}"#)
            #expect(pro.status == 200, "another model keeps the default timeout: \(pro.text)")
        }
    }

    /// Within a priority, traffic splits by weight (the pool's random draw is injected here).
    @Test func weightsSplitTrafficWithinAPriority() async throws {
        let heavyRecorder = EmulatorRecorder()
        let lightRecorder = EmulatorRecorder()
        try await withEmulator(recorder: heavyRecorder) { heavyURL in
            try await withEmulator(recorder: lightRecorder) { lightURL in
                let configuration = UpstreamConfiguration(apiKeys: [], channels: [
                    ChannelConfiguration(name: "heavy", kind: .gemini, baseURL: heavyURL, apiKeys: ["k"], weight: 3),
                    ChannelConfiguration(name: "light", kind: .gemini, baseURL: lightURL, apiKeys: ["k"], weight: 1),
                    ChannelConfiguration(name: "standby", kind: .gemini, baseURL: lightURL, apiKeys: ["k"], weight: 0),
                ])
                // Draws 0, 1, 2, 3, 0, 1, 2, 3 over a total weight of 4: heavy takes 0-2, light takes 3.
                let draws = Counter()
                let pool = UpstreamPool(configuration: configuration, logger: Logger(label: "test"), random: { total in draws.next() % total })
                let request = ImageTranslation.geminiRequest(prompt: "weights", spec: ImageSpec(aspectRatio: nil, imageSize: nil), family: .flash25)
                for _ in 0..<8 {
                    _ = try await pool.generateContent(model: "gemini-2.5-flash-image", imageSize: nil, request: request, logger: Logger(label: "test"))
                }
                await pool.shutdown()
                #expect(heavyRecorder.all.count == 6)
                #expect(lightRecorder.all.count == 2, "weight 0 never serves while others can")
            }
        }
    }
}

/// A thread-safe counter for injected random draws.
final class Counter: Sendable {
    private let value = Mutex(0)
    func next() -> Int {
        value.withLock { count in
            count += 1
            return count - 1
        }
    }
}
