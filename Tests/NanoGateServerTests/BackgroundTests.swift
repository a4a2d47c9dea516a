import AsyncHTTPClient
import Crypto
import Foundation
import GeminiEmulator
import HTTPTypes
import Hummingbird
import Logging
import NanoGateCore
@testable import NanoGateServer
@testable import NanoGateStorage
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization
import Testing
import Upstream

/// The background services driven directly: the batch poller delivering what Google produced
/// even when a line would no longer validate, and the webhook sender's signature, retries and
/// address policy.
@Suite(.timeLimit(.minutes(10))) struct BackgroundTests {
    static var quiet: Logger {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        return logger
    }

    /// Uploads `lines` as a batch input file and creates the batch; its id.
    static func submitBatch(_ gateway: Harness, key: String, lines: [String]) async throws -> String {
        let boundary = "nanogate-batch"
        var upload = HTTPClientRequest(url: gateway.baseURL + "/v1/files")
        upload.method = .POST
        upload.headers.add(name: "Authorization", value: "Bearer \(key)")
        upload.headers.add(name: "Content-Type", value: "multipart/form-data; boundary=\(boundary)")
        upload.body = .bytes(ByteBuffer(string: """
            --\(boundary)\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--\(boundary)\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\nContent-Type: application/jsonl\r\n\r\n\(lines.joined(separator: "\n"))\n\r\n--\(boundary)--\r\n
            """))
        let file = try await gateway.send(upload)
        #expect(file.status == 200, "\(file.text.prefix(300))")
        let fileID = try #require(file.json["id"] as? String)
        let created = try await gateway.post("/v1/batches", json: #"{"input_file_id":"\#(fileID)","endpoint":"/v1/images/generations","completion_window":"24h"}"#, key: key)
        #expect(created.status == 200, "\(created.text.prefix(300))")
        return try #require(created.json["id"] as? String)
    }

    /// Google produced (and billed) every line: a line whose model the operator has since taken
    /// off the key is delivered and charged all the same, at the batch's half price, and the
    /// output file has every line.
    @Test func aLineThatNoLongerValidatesIsStillDelivered() async throws {
        try await withGateway(
            configure: { $0.batchPollInterval = .seconds(3600) },
            emulator: { $0.batchDelay = .milliseconds(50) }
        ) { gateway in
            let secret = try await BillingTests.key(gateway, name: "batcher", KeyOptions(creditMicroUSD: 5_000_000))
            let lines = (0..<2).map { #"{"custom_id":"line-\#($0)","method":"POST","url":"/v1/images/generations","body":{"model":"nano-banana","prompt":"p\#($0)","response_format":"b64_json"}}"# }
            let batchID = try await Self.submitBatch(gateway, key: secret, lines: lines)
            let store = gateway.dependencies.store
            var takeOff = KeyUpdate()
            takeOff.models = .set(["nano-banana-pro"])
            _ = try await store.updateKey(name: "batcher", takeOff)

            let parts = makeGatewayParts(configuration: gateway.configuration, dependencies: gateway.dependencies, logger: Self.quiet)
            let poller = parts.batchPoller
            let keyID = try #require(try await store.key(named: "batcher")).id
            do {
                try await eventually("the batch is delivered") {
                    // A poll that finds Google not done yet puts the batch off by the poll interval
                    // (an hour here): each claim looks two hours ahead, so the next poll is not put off.
                    let ahead = Date().addingTimeInterval(7200)
                    if let batch = try await store.claimBatchForPoll(owner: poller.owner, leaseUntil: ahead.addingTimeInterval(60), now: ahead) { await poller.poll(batch) }
                    return try await store.batch(id: batchID, keyID: keyID)?.status == .completed
                }
            } catch {
                await parts.pool.shutdown()
                throw error
            }
            await parts.pool.shutdown()
            let batch = try #require(try await store.batch(id: batchID, keyID: keyID))
            #expect(batch.completed == 2 && batch.failed == 0)
            var request = HTTPClientRequest(url: gateway.baseURL + "/v1/files/\(try #require(batch.outputFileID))/content")
            request.headers.add(name: "Authorization", value: "Bearer \(secret)")
            let output = try await gateway.send(request)
            let answers = output.text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
            #expect(answers.count == 2 && answers.allSatisfy { (($0["response"] as? [String: Any])?["status_code"] as? Int) == 200 }, "\(output.text.prefix(400))")
            let rows = try await store.usage(UsageQuery(keyID: keyID))
            #expect(rows.count == 2 && rows.allSatisfy { $0.costMicroUSD > 0 })
            let money = try await BillingTests.balance(gateway, "batcher")
            #expect(money.reservedMicroUSD == 0 && money.spentMicroUSD == rows.reduce(0) { $0 + $1.costMicroUSD })
            // Each line's row names its batch: what the console shows as the batch's charge.
            let charged = try await store.chargedMicroUSD(jobIDs: [batchID])
            #expect(charged[batchID] == money.spentMicroUSD && money.spentMicroUSD > 0)
        }
    }

    static func job(webhook: String) -> ImageJobRecord {
        var job = ImageJobRecord(
            id: "imgjob_webhook_test", keyID: "k", endpoint: "images.generations", model: "nano-banana", contentType: "application/json",
            body: [], baseURL: "http://gateway", webhookURL: webhook, webhookSecret: "whsec_test"
        )
        job.status = .succeeded
        return job
    }

    static func sender(allowPrivate: Bool) -> WebhookSender {
        WebhookSender(
            policy: WebhookPolicy(limits: InputLimits(allowPrivateFetch: allowPrivate, allowPlainHTTP: true)),
            resolver: ThreadPoolResolver(threadPool: .singleton, lookup: systemHostLookup)
        )
    }

    /// What a receiver got: each delivery's headers and body.
    final class Deliveries: Sendable {
        let all = Mutex<[(signature: String?, body: [UInt8])]>([])
    }

    /// The receiver checks the signature independently (HMAC-SHA256 over "t.body" with the
    /// secret); a 500 is retried, the 2xx ends it.
    @Test func webhooksAreSignedAndRetriedUntilAccepted() async throws {
        let deliveries = Deliveries()
        try await withLocalServer({ router in
            router.post("hook") { request, _ in
                let body = try await request.body.collect(upTo: 1 << 20)
                let count = deliveries.all.withLock { all in
                    all.append((request.headers[HTTPField.Name("NanoGate-Signature")!], Array(body.readableBytesView)))
                    return all.count
                }
                return Response(status: count == 1 ? .internalServerError : .noContent)
            }
        }) { port in
            await Self.sender(allowPrivate: true).deliver(Self.job(webhook: "http://127.0.0.1:\(port)/hook"), logger: Self.quiet)
        }
        let got = deliveries.all.withLock { $0 }
        #expect(got.count == 2, "the 500 was retried once, the 204 ended it")
        for delivery in got {
            let fields = Dictionary(uniqueKeysWithValues: (delivery.signature ?? "").split(separator: ",").map { part -> (String, String) in
                let pair = part.split(separator: "=", maxSplits: 1)
                return (String(pair[0]), pair.count > 1 ? String(pair[1]) : "")
            })
            let timestamp = try #require(fields["t"])
            let expected = HMAC<SHA256>.authenticationCode(for: Array("\(timestamp).".utf8) + delivery.body, using: SymmetricKey(data: Array("whsec_test".utf8)))
            #expect(fields["v1"] == expected.map { String(format: "%02x", $0) }.joined(), "the signature verifies")
            let job = try JSONSerialization.jsonObject(with: Data(delivery.body)) as? [String: Any]
            #expect(job?["id"] as? String == "imgjob_webhook_test" && job?["status"] as? String == "succeeded")
        }
    }

    /// A receiver that never answers holds a delivery no longer than the total deadline, not for
    /// every attempt and pause (5 × 10 s + 15 s before): with 1 s per attempt and 2.5 s in all,
    /// at most two attempts reach it (a slow machine makes fewer, never more).
    @Test func aSilentReceiverHoldsADeliveryNoLongerThanItsTotalDeadline() async throws {
        let deliveries = Deliveries()
        let released = Mutex(false)
        try await withLocalServer({ router in
            router.post("hook") { _, _ in
                deliveries.all.withLock { $0.append((nil, [])) }
                // Silent until the test ends (bounded, so a stuck test still ends).
                for _ in 0..<1200 where !released.withLock({ $0 }) { try await Task.sleep(for: .milliseconds(50)) }
                return Response(status: .noContent)
            }
        }) { port in
            var sender = Self.sender(allowPrivate: true)
            sender.attemptDeadline = .seconds(1)
            sender.totalDeadline = .milliseconds(2500)
            await sender.deliver(Self.job(webhook: "http://127.0.0.1:\(port)/hook"), logger: Self.quiet)
            released.withLock { $0 = true }
        }
        let attempts = deliveries.all.withLock { $0.count }
        #expect((1...2).contains(attempts), "\(attempts) attempts reached the receiver")
    }

    /// Without the operator's leave, a webhook to a loopback address is never sent, and the
    /// refusal is final (no retry would be allowed either): `deliver` returns at once.
    @Test func aWebhookToAPrivateAddressIsNeverSent() async throws {
        let deliveries = Deliveries()
        try await withLocalServer({ router in
            router.post("hook") { request, _ in
                deliveries.all.withLock { $0.append((nil, [])) }
                return Response(status: .noContent)
            }
        }) { port in
            let started = ContinuousClock.now
            await Self.sender(allowPrivate: false).deliver(Self.job(webhook: "http://127.0.0.1:\(port)/hook"), logger: Self.quiet)
            #expect(started.duration(to: .now) < .seconds(10), "no retries (their back-off alone is 15 s) for a refused address")
        }
        #expect(deliveries.all.withLock { $0.count } == 0)
    }
}
