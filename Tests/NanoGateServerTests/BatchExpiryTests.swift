import AsyncHTTPClient
import Foundation
import GeminiEmulator
import Logging
import NanoGateCore
@testable import NanoGateServer
import NanoGateStorage
import NIOCore
import NIOHTTP1
import Testing
import Upstream

/// A batch Google never finishes (security review finding 4d): past its 24 h window and a grace
/// hour it is stopped at Google, then ends `expired`, charged for what Google answered before it
/// stopped and its hold released. The poller is driven directly with a clock a day ahead (no
/// 25 h wait).
@Suite(.timeLimit(.minutes(10))) struct BatchExpiryTests {
    @Test func aStuckBatchExpiresAndReleasesItsHold() async throws {
        try await Self.withUnfinishedBatches { gateway in
            let secret = try await BillingTests.key(gateway, name: "stuck", KeyOptions(creditMicroUSD: 5_000_000))
            let line = #"{"custom_id":"a","method":"POST","url":"/v1/images/generations","body":{"model":"nano-banana","prompt":"p"}}"#
            let batchID = try await BackgroundTests.submitBatch(gateway, key: secret, lines: [line])
            #expect(try await BillingTests.balance(gateway, "stuck").reservedMicroUSD > 0, "the batch's worst case is held")

            let parts = Self.parts(of: gateway)
            let poller = parts.batchPoller
            let store = gateway.dependencies.store
            // Polled now: Google is still working on it, so it stays in progress.
            let batch = try #require(try await store.claimBatchForPoll(owner: poller.owner, leaseUntil: Date().addingTimeInterval(60)))
            await poller.poll(batch)
            #expect(try await store.batch(id: batchID, keyID: batch.keyID)?.status == .inProgress)
            // A day and an hour and a half later, Google still has not finished it: it is stopped at Google,
            // then (Google answered none of it) ends expired.
            try await Self.pollTwiceLate(poller, store: store)
            #expect(try await store.batch(id: batchID, keyID: batch.keyID)?.status == .expired)
            let shown = try await gateway.post("/v1/batches/\(batchID)/cancel", json: "{}", key: secret)
            #expect(shown.status == 409 && (shown.error["message"] as? String)?.contains("expired") == true, "\(shown.text.prefix(300))")
            let key = try await BillingTests.balance(gateway, "stuck")
            #expect(key.reservedMicroUSD == 0 && key.spentMicroUSD == 0, "the hold is released, nothing charged (Google returned nothing)")
            await parts.pool.shutdown()
        }
    }

    /// Google answered one of two lines before the expired batch was stopped: that line is
    /// delivered and charged (at the batch price), the other fails, and the batch ends `expired`
    /// with its output file, the rest of its hold released.
    @Test func anExpiredBatchIsChargedForWhatGoogleAnswered() async throws {
        try await Self.withUnfinishedBatches { gateway in
            let secret = try await BillingTests.key(gateway, name: "half", KeyOptions(creditMicroUSD: 5_000_000))
            let lines = [
                #"{"custom_id":"a","method":"POST","url":"/v1/images/generations","body":{"model":"nano-banana","prompt":"p [emulate:batch_early]","response_format":"b64_json"}}"#,
                #"{"custom_id":"b","method":"POST","url":"/v1/images/generations","body":{"model":"nano-banana","prompt":"q","response_format":"b64_json"}}"#,
            ]
            let batchID = try await BackgroundTests.submitBatch(gateway, key: secret, lines: lines)
            let parts = Self.parts(of: gateway)
            let store = gateway.dependencies.store
            try await Self.pollTwiceLate(parts.batchPoller, store: store)
            var read = HTTPClientRequest(url: gateway.baseURL + "/v1/batches/\(batchID)")
            read.headers.add(name: "Authorization", value: "Bearer \(secret)")
            let shown = try await gateway.send(read)
            #expect(shown.json["status"] as? String == "expired", "\(shown.text.prefix(300))")
            let counts = shown.json["request_counts"] as? [String: Any]
            #expect(counts?["completed"] as? Int == 1 && counts?["failed"] as? Int == 1, "\(shown.text.prefix(300))")
            #expect(shown.json["output_file_id"] as? String != nil)
            let rows = try await store.usage(UsageQuery()).filter { $0.costMicroUSD > 0 }
            let key = try await BillingTests.balance(gateway, "half")
            #expect(rows.count == 1 && rows[0].images == 1, "\(rows)")
            #expect(key.reservedMicroUSD == 0 && key.spentMicroUSD == rows.reduce(0) { $0 + $1.costMicroUSD } && key.spentMicroUSD > 0)
            await parts.pool.shutdown()
        }
    }

    /// A gateway whose poller waits an hour between polls, in front of a Google that keeps every
    /// batch pending for an hour: the test drives the poller itself.
    static func withUnfinishedBatches(_ body: (Harness) async throws -> Void) async throws {
        try await withGateway(configure: { $0.batchPollInterval = .seconds(3600) }, emulator: { $0.batchDelay = .seconds(3600) }, body)
    }

    /// The gateway's parts (its batch poller among them), logging nothing.
    static func parts(of gateway: Harness) -> GatewayParts {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        return makeGatewayParts(configuration: gateway.configuration, dependencies: gateway.dependencies, logger: logger)
    }

    /// Polls the batch as if 25.5 hours had passed (past the window and its grace hour, within the hour Google is given to stop), twice: the first poll stops it at Google, the
    /// second finds Google stopped and ends it.
    static func pollTwiceLate(_ poller: BatchPoller, store: SQLStore) async throws {
        let late = Date().addingTimeInterval(3600 * 25.5)
        for _ in 0..<2 {
            let batch = try #require(try await store.claimBatchForPoll(owner: poller.owner, leaseUntil: late.addingTimeInterval(60), now: late))
            await poller.poll(batch, now: late)
        }
    }
}
