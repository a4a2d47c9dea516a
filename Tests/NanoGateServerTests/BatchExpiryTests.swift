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
/// hour it expires, is stopped at Google and its hold released, nothing charged. The poller is
/// driven directly with a clock a day ahead (no 25 h wait).
@Suite(.timeLimit(.minutes(10))) struct BatchExpiryTests {
    @Test func aStuckBatchExpiresAndReleasesItsHold() async throws {
        try await withGateway(
            configure: { $0.batchPollInterval = .seconds(3600) },
            emulator: { $0.batchDelay = .seconds(3600) }
        ) { gateway in
            let secret = try await BillingTests.key(gateway, name: "stuck", KeyOptions(creditMicroUSD: 5_000_000))
            let line = #"{"custom_id":"a","method":"POST","url":"/v1/images/generations","body":{"model":"nano-banana","prompt":"p"}}"#
            let batchID = try await BackgroundTests.submitBatch(gateway, key: secret, lines: [line])
            #expect(try await BillingTests.balance(gateway, "stuck").reservedMicroUSD > 0, "the batch's worst case is held")

            var logger = Logger(label: "test")
            logger.logLevel = .critical
            let parts = makeGatewayParts(configuration: gateway.configuration, dependencies: gateway.dependencies, logger: logger)
            let poller = parts.batchPoller
            let store = gateway.dependencies.store
            // Polled now: Google is still working on it, so it stays in progress.
            let batch = try #require(try await store.claimBatchForPoll(owner: poller.owner, leaseUntil: Date().addingTimeInterval(60)))
            await poller.poll(batch)
            #expect(try await store.batch(id: batchID, keyID: batch.keyID)?.status == .inProgress)
            // A day and two hours later, Google still has not finished it: it expires.
            let late = try #require(try await store.claimBatchForPoll(owner: poller.owner, leaseUntil: Date().addingTimeInterval(60), now: Date().addingTimeInterval(3600 * 26)))
            await poller.poll(late, now: Date().addingTimeInterval(3600 * 26))
            let shown = try await gateway.post("/v1/batches/\(batchID)/cancel", json: "{}", key: secret)
            #expect(shown.status == 409 && (shown.error["message"] as? String)?.contains("expired") == true, "\(shown.text.prefix(300))")
            let key = try await BillingTests.balance(gateway, "stuck")
            #expect(key.reservedMicroUSD == 0 && key.spentMicroUSD == 0, "the hold is released, nothing charged (Google returned nothing)")
            await parts.pool.shutdown()
        }
    }
}
