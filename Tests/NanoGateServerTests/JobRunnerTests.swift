import AsyncHTTPClient
import Foundation
import NanoGateTestSupport
import GeminiEmulator
import NanoGateCore
@testable import NanoGateServer
@testable import NanoGateStorage
import NIOCore
import NIOHTTP1
import SQLKit
import Testing
import Upstream

/// The job runner against a real gateway and database: a job whose gateway died after it was
/// charged is taken over, refunded through the ledger (an entry of its own, never a negative
/// usage row), run again and charged once.
@Suite(.timeLimit(.minutes(10))) struct JobRunnerTests {
    /// Submits a job; its id.
    static func submit(_ gateway: Harness, _ body: String) async throws -> String {
        let path = body.contains("\"images\"") ? "/v1/images/edits" : "/v1/images/generations"
        var request = HTTPClientRequest(url: gateway.baseURL + path)
        request.method = .POST
        request.headers.add(name: "Authorization", value: "Bearer \(gateway.defaultKey)")
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "Prefer", value: "respond-async")
        request.body = .bytes(ByteBuffer(string: body))
        let reply = try await gateway.send(request)
        #expect(reply.status == 202, "\(reply.text.prefix(300))")
        return try #require(reply.json["id"] as? String)
    }

    static func status(_ gateway: Harness, _ id: String, key: APIKey) async throws -> ImageJobRecord.Status? {
        try await gateway.dependencies.store.job(id: id, keyID: key.id)?.status
    }

    @Test func aJobTakenOverAfterItsGatewayDiedIsChargedOnce() async throws {
        try await withGateway(configure: { $0.billing.lease = .seconds(60) }) { gateway in
            let store = gateway.dependencies.store
            let key = try #require(try await store.key(named: "test-default"))
            var credit = KeyUpdate()
            credit.credit = .set(10_000_000)
            _ = try await store.updateKey(name: "test-default", credit)
            // A first job runs normally: what one run of this request costs.
            let first = try await Self.submit(gateway, #"{"model":"nano-banana","prompt":"p","response_format":"b64_json"}"#)
            try await eventually("the first job finished") { try await Self.status(gateway, first, key: key) == .succeeded }
            let oneRun = try await store.money(keyID: key.id).chargedMicroUSD
            #expect(oneRun > 0)

            // A second job, as a gateway that died left it: running under another owner, its
            // lease run out, and charged for a run whose answer was never stored.
            let jobID = "imgjob_takeover_test"
            let model = try #require(gateway.configuration.catalog.model(named: "nano-banana"))
            let stored = StoredImageRequest(
                endpoint: .imageGenerations, model: "nano-banana", spec: try SizeRules.resolve(model: model, size: nil, aspectRatio: nil), prompt: "p",
                count: 1, format: .b64JSON, baseURL: gateway.baseURL, options: ImageOptions(), inputImages: []
            )
            // Inserted as it was left, in one statement: a job inserted `queued` and then marked could
            // be claimed by this gateway's runner in between, and run twice (it did, on a busy machine).
            let body = try JSONEncoder().encode(stored).base64EncodedString()
            try await store.database.raw("""
                INSERT INTO image_jobs (id, key_id, endpoint, model, content_type, body, base_url, status, owner, attempts, lease_until, created_at)
                VALUES (\(bind: jobID), \(bind: key.id), 'images.generations', 'nano-banana', \(bind: StoredImageRequest.contentType), \(bind: body),
                        \(bind: gateway.baseURL), 'running', 'a-gateway-that-died', 1, 0, \(bind: Int64(Date().timeIntervalSince1970 * 1000)))
                """).run()
            var lost = UsageRecord(
                keyID: key.id, endpoint: "images.generations", model: "nano-banana", status: 200, images: 1, inputTokens: 10, outputTokens: 1290,
                totalTokens: 1300, costMicroUSD: oneRun, errorCode: nil
            )
            lost.jobID = jobID
            try await store.settle(reservationID: nil, record: lost)

            try await eventually("the taken-over job finished") { try await Self.status(gateway, jobID, key: key) == .succeeded }
            let money = try await store.money(keyID: key.id)
            let refunds = try await store.refunds(keyID: key.id)
            #expect(refunds.map(\.amountMicroUSD) == [oneRun] && refunds.first?.jobID == jobID && refunds.first?.reason == "job_interrupted")
            #expect(money.spentMicroUSD == money.chargedMicroUSD - money.refundedMicroUSD)
            #expect(money.spentMicroUSD == 2 * oneRun, "two jobs, each charged once")
            let rows = try await store.usage(UsageQuery(keyID: key.id))
            #expect(rows.allSatisfy { $0.costMicroUSD >= 0 }, "no usage row is a refund")
            #expect(try await store.unrefundedMicroUSD(jobID: jobID, keyID: key.id) == oneRun, "the second run's charge stands, once")

            // The key holder sees the same: charged, refunded, spent and the refund itself.
            var request = HTTPClientRequest(url: gateway.baseURL + "/v1/usage")
            request.headers.add(name: "Authorization", value: "Bearer \(gateway.defaultKey)")
            let usage = try await gateway.send(request)
            let view = try #require(usage.json["money"] as? [String: Any])
            #expect(abs((view["spent_usd"] as? Double ?? -1) - TokenPrices.usd(2 * oneRun)) < 1e-9, "\(usage.text.prefix(500))")
            #expect((view["refunds"] as? [[String: Any]])?.first?["job_id"] as? String == jobID)
        }
    }

    /// A background edit keeps the validated request, not the HTTP body: its input image goes
    /// to the image store (the row names it), and the runner answers from it without parsing
    /// or fetching anything again.
    @Test func aJobKeepsItsValidatedRequestAndItsImagesInTheStore() async throws {
        let image = "data:image/png;base64," + Data(HardeningTests.pngBytes).base64EncodedString()
        // No worker: the queued row is read as the submission left it.
        try await withGateway(configure: { $0.jobWorkers = 0 }) { gateway in
            let store = gateway.dependencies.store
            let key = try #require(try await store.key(named: "test-default"))
            let id = try await Self.submit(gateway, Self.editBody(image))
            let queued = try #require(try await store.job(id: id, keyID: key.id))
            #expect(queued.status == .queued && queued.contentType == StoredImageRequest.contentType)
            let stored = try JSONDecoder().decode(StoredImageRequest.self, from: Data(queued.body))
            #expect(stored.inputImages.count == 1 && stored.prompt == "make it blue" && stored.endpoint == .imageEdits)
            let kept = try await gateway.dependencies.images.load(name: stored.inputImages[0].name)
            #expect(kept == HardeningTests.pngBytes, "the input image is in the image store, byte for byte")
            #expect(!String(decoding: queued.body, as: UTF8.self).contains(Data(HardeningTests.pngBytes).base64EncodedString()), "no image bytes in the row")
        }
        // With workers, the job runs from that stored request.
        try await withGateway { gateway in
            let key = try #require(try await gateway.dependencies.store.key(named: "test-default"))
            let id = try await Self.submit(gateway, Self.editBody(image))
            try await eventually("the edit job finished") { try await Self.status(gateway, id, key: key) == .succeeded }
            #expect(gateway.recorder.all.last?.body.contents.last?.parts?.contains { $0.inlineData != nil } == true, "Google got the input image")
        }
    }

    static func editBody(_ image: String) -> String {
        #"{"model":"nano-banana","prompt":"make it blue","images":[{"image_url":"\#(image)"}],"response_format":"b64_json"}"#
    }

    /// A usage row never charges less than nothing: the database refuses one (a refund is a
    /// ledger entry of its own).
    @Test func aNegativeChargeIsRefusedByTheDatabase() async throws {
        try await TestDatabase.with { database in
            let store = database.store
            let created = try await store.createKey(name: "k", group: .default, options: KeyOptions())
            let refund = UsageRecord(keyID: created.key.id, endpoint: "images.generations", model: "nano-banana", status: 200, images: 0, inputTokens: 0, outputTokens: 0, totalTokens: 0, costMicroUSD: -5, errorCode: nil)
            await #expect(throws: (any Error).self) { try await store.settle(reservationID: nil, record: refund) }
            try await store.refund(Refund(keyID: created.key.id, jobID: nil, amountMicroUSD: 7, reason: "test"))
            let money = try await store.money(keyID: created.key.id)
            #expect(money == KeyMoney(chargedMicroUSD: 0, refundedMicroUSD: 7, spentMicroUSD: -7))
        }
    }
}
