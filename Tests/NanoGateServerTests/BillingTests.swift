import AsyncHTTPClient
import Foundation
import NanoGateTestSupport
import Logging
import NanoGateCore
@testable import NanoGateServer
import NanoGateStorage
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import GeminiEmulator
import Upstream
import Testing

/// Issue 10: credit per key, reserve-then-settle, limits, idempotency, the admin API.
@Suite(.timeLimit(.minutes(10))) struct BillingTests {
    /// Google's published per-image prices (wire-formats §A5, E4) from its token figures.
    @Test(arguments: [
        (ModelFamily.flash25, ImageSize?.none, 38_700),  // $0.039 per image
        (.pro3, .oneK, 134_400), (.pro3, .twoK, 134_400),  // $0.134
        (.pro3, .fourK, 240_000),  // $0.24
        (.flash31, .half, 44_820), (.flash31, .oneK, 67_200), (.flash31, .twoK, 100_800), (.flash31, .fourK, 151_200),  // $0.045 … $0.151
    ])
    func perImageCostsMatchGooglesPriceList(family: ModelFamily, size: ImageSize?, microUSD: Int) {
        let tokens = family.outputImageTokens(size)
        let usage = ImageUsage(
            inputTokens: 0, inputTokensDetails: .init(imageTokens: 0, textTokens: 0),
            outputTokens: tokens, outputTokensDetails: .init(imageTokens: tokens, textTokens: 0), totalTokens: tokens
        )
        #expect(Pricing.costMicroUSD(usage, prices: family.googlePrices) == microUSD)
    }

    @Test func costsArePricedPerModalityInIntegers() {
        let usage = ImageUsage(
            inputTokens: 1_000, inputTokensDetails: .init(imageTokens: 560, textTokens: 440),
            outputTokens: 1_332, outputTokensDetails: .init(imageTokens: 1_120, textTokens: 212), totalTokens: 2_332
        )
        let prices = TokenPrices(inputText: 2_000_000, inputImage: 1_000_000, outputText: 12_000_000, outputImage: 120_000_000)
        // 440×2 + 560×1 + 212×12 + 1120×120 = 880 + 560 + 2544 + 134400 micro-USD
        #expect(Pricing.costMicroUSD(usage, prices: prices) == 138_384)
        #expect(Pricing.costMicroUSD(usage, prices: prices, multiplierPPM: 1_500_000) == 207_576)
        #expect(Pricing.costMicroUSD(.zero, prices: prices) == 0)
    }

    static func key(_ gateway: Harness, name: String, group: KeyGroup = .default, _ options: KeyOptions) async throws -> String {
        try await gateway.dependencies.store.createKey(name: name, group: group, options: options).secret
    }

    /// What Google's invoice says a row's tokens cost, by modality (an independent sum).
    static func googleCost(_ row: UsageRecord, _ prices: TokenPrices) -> Int {
        let micro = row.inputTextTokens * prices.inputText + row.inputImageTokens * prices.inputImage
            + row.outputTextTokens * prices.outputText + row.outputImageTokens * prices.outputImage
        return Int((Double(micro) / 1_000_000).rounded())
    }

    static func balance(_ gateway: Harness, _ name: String) async throws -> APIKey {
        try #require(try await gateway.dependencies.store.key(named: name))
    }

    /// 50 parallel requests against a credit that fits 5 images: at most 5 succeed, the rest
    /// get `insufficient_quota` before reaching Google, and the charge never exceeds the credit.
    @Test func concurrentRequestsCannotOverspend() async throws {
        try await withGateway { gateway in
            let secret = try await Self.key(gateway, name: "five", KeyOptions(creditMicroUSD: 5 * 41_300))
            let statuses = try await withThrowingTaskGroup(of: (Int, String?).self) { group in
                for index in 0..<50 {
                    group.addTask {
                        let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"p\#(index)","response_format":"b64_json"}"#, key: secret)
                        return (reply.status, reply.error["code"] as? String)
                    }
                }
                var all: [(Int, String?)] = []
                for try await status in group { all.append(status) }
                return all
            }
            let succeeded = statuses.filter { $0.0 == 200 }.count
            #expect(succeeded >= 1 && succeeded <= 5, "\(statuses)")
            #expect(statuses.filter { $0.0 != 200 }.allSatisfy { $0 == (429, "insufficient_quota") }, "\(statuses)")
            #expect(gateway.recorder.all.count == succeeded, "refused requests never reach Google")
            let key = try await Self.balance(gateway, "five")
            #expect(key.reservedMicroUSD == 0, "every reservation settled")
            #expect(key.spentMicroUSD <= 5 * 41_300)
            let rows = try await gateway.dependencies.store.usage(UsageQuery(keyID: key.id)).filter { $0.status == 200 }
            #expect(rows.count == succeeded)
            #expect(rows.allSatisfy { $0.costMicroUSD == Self.googleCost($0, ModelFamily.flash25.googlePrices) && $0.outputImageTokens == 1290 })
            #expect(key.spentMicroUSD == rows.reduce(0) { $0 + $1.costMicroUSD })
        }
    }

    /// Every fault of the emulator's menu releases the reservation and charges nothing.
    @Test func everyFailureChargesNothing() async throws {
        try await withGateway(configure: { $0.upstream.maxAttempts = 1 }) { gateway in
            let secret = try await Self.key(gateway, name: "faults", KeyOptions(creditMicroUSD: 1_000_000))
            for fault in ["503", "500", "image_safety", "prohibited", "no_image", "prompt_block", "garbage", "429"] {
                let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"p [emulate:\#(fault)]"}"#, key: secret)
                #expect(reply.status >= 400, "\(fault)")
            }
            let key = try await Self.balance(gateway, "faults")
            #expect(key.spentMicroUSD == 0 && key.reservedMicroUSD == 0)
            let rows = try await gateway.dependencies.store.usage(UsageQuery(keyID: key.id))
            #expect(rows.count == 8)
            #expect(rows.allSatisfy { $0.costMicroUSD == 0 && $0.errorCode != nil && $0.images == 0 }, "\(rows.map(\.errorCode))")
        }
    }

    @Test func idempotentRetriesAreAnsweredOnceAndChargedOnce() async throws {
        try await withGateway { gateway in
            let secret = try await Self.key(gateway, name: "retry", KeyOptions(creditMicroUSD: 1_000_000))
            func post(_ body: String, idempotencyKey: String) async throws -> Harness.Reply {
                var request = HTTPClientRequest(url: gateway.baseURL + "/v1/images/generations")
                request.method = .POST
                request.headers.add(name: "Content-Type", value: "application/json")
                request.headers.add(name: "Authorization", value: "Bearer \(secret)")
                request.headers.add(name: "Idempotency-Key", value: idempotencyKey)
                request.body = .bytes(ByteBuffer(string: body))
                return try await gateway.send(request)
            }
            let body = #"{"model":"nano-banana","prompt":"once","response_format":"url"}"#
            let first = try await post(body, idempotencyKey: "abc-1")
            let second = try await post(body, idempotencyKey: "abc-1")
            #expect(first.status == 200 && second.status == 200)
            #expect(first.data.first?["url"] as? String == second.data.first?["url"] as? String, "the same image, the same URL")
            #expect(second.headers.first(name: "Idempotent-Replayed") == "true")
            #expect(gateway.recorder.all.count == 1, "Google was called once")
            let key = try await Self.balance(gateway, "retry")
            let rows = try await gateway.dependencies.store.usage(UsageQuery(keyID: key.id))
            #expect(rows.count == 1 && key.spentMicroUSD == rows[0].costMicroUSD && key.spentMicroUSD > 38_000, "charged once")
            let reused = try await post(#"{"model":"nano-banana","prompt":"other"}"#, idempotencyKey: "abc-1")
            #expect(reused.status == 409)
            #expect(reused.error["code"] as? String == "idempotency_key_reused")
        }
    }

    @Test func keyLimitsAndLifecycle() async throws {
        try await withGateway { gateway in
            let limited = try await Self.key(gateway, name: "rpm", KeyOptions(rpm: 2))
            // Three at once: the limit admits two and refuses the third whatever each takes (one
            // after another, a busy machine's slow generations could let the window refill).
            async let one = gateway.generate(#"{"model":"nano-banana","prompt":"p"}"#, key: limited)
            async let two = gateway.generate(#"{"model":"nano-banana","prompt":"p"}"#, key: limited)
            async let three = gateway.generate(#"{"model":"nano-banana","prompt":"p"}"#, key: limited)
            let replies = try await [one, two, three]
            #expect(replies.map(\.status).sorted() == [200, 200, 429])
            let third = try #require(replies.first { $0.status == 429 })
            #expect(third.error["code"] as? String == "rate_limit_exceeded")
            #expect(Int(third.headers.first(name: "Retry-After") ?? "") ?? 0 >= 1)

            let narrow = try await Self.key(gateway, name: "narrow", KeyOptions(models: ["nano-banana-2"]))
            let outside = try await gateway.generate(#"{"model":"nano-banana-pro","prompt":"p"}"#, key: narrow)
            #expect(outside.status == 404 && outside.error["code"] as? String == "model_not_found")
            #expect(try await gateway.generate(#"{"model":"nano-banana-2","prompt":"p","size":"2k"}"#, key: narrow).status == 200)

            let expired = try await Self.key(gateway, name: "old", KeyOptions(expiresAt: Date(timeIntervalSince1970: 1_700_000_000)))
            let late = try await gateway.generate(#"{"model":"nano-banana","prompt":"p"}"#, key: expired)
            #expect(late.status == 401 && late.error["code"] as? String == "api_key_expired")
            _ = try await gateway.dependencies.store.updateKey(name: "narrow", KeyUpdate(disabled: true))
            await gateway.dependencies.database.keys.refresh()  // as the admin API does after a change
            let disabled = try await gateway.generate(#"{"model":"nano-banana-2","prompt":"p"}"#, key: narrow)
            #expect(disabled.status == 401 && disabled.error["code"] as? String == "api_key_disabled")

            let broke = try await Self.key(gateway, name: "broke", KeyOptions(creditMicroUSD: 1_000))
            let refused = try await gateway.generate(#"{"model":"nano-banana","prompt":"p"}"#, key: broke)
            #expect(refused.status == 429 && refused.error["type"] as? String == "insufficient_quota" && refused.error["code"] as? String == "insufficient_quota")
        }
    }

    @Test func concurrencyLimitRefusesTheSecondRequest() async throws {
        try await withGateway { gateway in
            let secret = try await Self.key(gateway, name: "one", KeyOptions(concurrency: 1))
            async let slow = gateway.generate(#"{"model":"nano-banana","prompt":"p [emulate:slow=6000]"}"#, key: secret)
            // Wait (bounded) until the slow one has reached Google, then send the second.
            for _ in 0..<100 where gateway.recorder.all.isEmpty { try await Task.sleep(for: .milliseconds(50)) }
            let second = try await gateway.generate(#"{"model":"nano-banana","prompt":"p"}"#, key: secret)
            #expect(second.status == 429 && second.error["code"] as? String == "rate_limit_exceeded")
            #expect(try await slow.status == 200)
            #expect(try await gateway.generate(#"{"model":"nano-banana","prompt":"p"}"#, key: secret).status == 200, "the slot is free again")
        }
    }

    /// A group's multiplier applies on top of the prices, and its response_format is its keys' default.
    @Test func groupsSetMultiplierAndDefaultFormat() async throws {
        try await withGateway { gateway in
            try await gateway.dependencies.store.createGroup(KeyGroupSettings(name: KeyGroup(rawValue: "resell"), responseFormat: .b64JSON, multiplierPPM: 2_000_000))
            let secret = try await Self.key(gateway, name: "reseller", group: KeyGroup(rawValue: "resell"), KeyOptions())
            let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"p"}"#, key: secret)
            #expect(reply.data.first?["b64_json"] is String, "the group's default format")
            let key = try await Self.balance(gateway, "reseller")
            let row = try #require(try await gateway.dependencies.store.usage(UsageQuery(keyID: key.id)).first)
            #expect(row.upstreamCostMicroUSD == Self.googleCost(row, ModelFamily.flash25.googlePrices), "Google's cost is not multiplied")
            #expect(key.spentMicroUSD == 2 * row.upstreamCostMicroUSD && row.costMicroUSD == key.spentMicroUSD)
            #expect(row.group == "resell" && row.keyName == "reseller" && row.upstreamModel == "gemini-2.5-flash-image")
            #expect(row.outputImageTokens == 1290 && row.inputTextTokens > 0)
            #expect(!row.requestID.isEmpty && row.requestID == reply.headers.first(name: "x-request-id"))
        }
    }

    @Test func theAdminAPINeedsItsToken() async throws {
        let token = "admin-token-0123456789abcdef"
        try await withGateway(configure: { $0.adminToken = token }) { gateway in
            func admin(_ method: HTTPMethod, _ path: String, body: String? = nil, bearer: String?) async throws -> Harness.Reply {
                var request = HTTPClientRequest(url: gateway.baseURL + "/admin/v1/" + path)
                request.method = method
                if let bearer { request.headers.add(name: "Authorization", value: "Bearer \(bearer)") }
                if let body {
                    request.headers.add(name: "Content-Type", value: "application/json")
                    request.body = .bytes(ByteBuffer(string: body))
                }
                return try await gateway.send(request)
            }
            #expect(try await admin(.GET, "keys", bearer: nil).status == 401)
            #expect(try await admin(.GET, "keys", bearer: gateway.defaultKey).status == 401, "a user key is not an admin token")
            let created = try await admin(.POST, "keys", body: #"{"name":"shop","credit_usd":5}"#, bearer: token)
            #expect(created.status == 201)
            let secret = try #require(created.json["secret"] as? String)
            #expect(created.json["credit_usd"] as? Double == 5 && created.json["balance_usd"] as? Double == 5)
            #expect(try await gateway.generate(#"{"model":"nano-banana","prompt":"p"}"#, key: secret).status == 200)
            let shown = try await admin(.GET, "keys/shop", bearer: token)
            #expect((shown.json["spent_usd"] as? Double ?? 0) > 0 && shown.json["secret"] == nil)
            let topped = try await admin(.PATCH, "keys/shop", body: #"{"add_credit_usd":1.5}"#, bearer: token)
            #expect(topped.json["credit_usd"] as? Double == 6.5)
            let csv = try await admin(.GET, "usage?key=shop&format=csv", bearer: token)
            #expect(csv.headers.first(name: "Content-Type")?.hasPrefix("text/csv") == true)
            #expect(csv.text.split(separator: "\n").count == 2, "a header and one row: \(csv.text)")
            let prices = try await admin(.PUT, "prices/gemini-2.5-flash-image", body: #"{"output_image":60}"#, bearer: token)
            #expect(prices.json["output_image"] as? Double == 60 && prices.json["source"] as? String == "override")

            // The key holder's own view.
            var usage = HTTPClientRequest(url: gateway.baseURL + "/v1/usage")
            usage.headers.add(name: "Authorization", value: "Bearer \(secret)")
            let own = try await gateway.send(usage)
            #expect(((own.json["key"] as? [String: Any])?["credit_usd"] as? Double) == 6.5)
            #expect((own.json["data"] as? [Any])?.count == 1)
            var subscription = HTTPClientRequest(url: gateway.baseURL + "/v1/dashboard/billing/subscription")
            subscription.headers.add(name: "Authorization", value: "Bearer \(secret)")
            #expect(try await gateway.send(subscription).json["hard_limit_usd"] as? Double == 6.5)
        }
        try await withGateway { gateway in
            var request = HTTPClientRequest(url: gateway.baseURL + "/admin/v1/keys")
            request.headers.add(name: "Authorization", value: "Bearer anything")
            let reply = try await gateway.send(request)
            #expect(reply.status == 404, "no admin API without NANOGATE_ADMIN_TOKEN")
        }
    }

    /// A reservation whose gateway died (its lease ran out) is released; a live one is kept.
    /// (On a database of its own: a gateway's own upkeep would release the dead one first.)
    @Test func expiredReservationsAreReleased() async throws {
        try await TestDatabase.with { database in
            let key = try await database.store.createKey(name: "lease", group: .default, options: KeyOptions(creditMicroUSD: 100_000)).key
            let ledger = database.ledger
            func reserved() async throws -> Int { try #require(try await database.store.key(named: "lease")).reservedMicroUSD }
            #expect(try await ledger.reserve(Reservation(keyID: key.id, amountMicroUSD: 60_000, owner: "dead", leaseUntil: Date(timeIntervalSinceNow: -1))) == .held)
            #expect(try await ledger.reserve(Reservation(keyID: key.id, amountMicroUSD: 50_000, owner: "alive", leaseUntil: Date(timeIntervalSinceNow: 60))) == .insufficient, "60,000 held: 50,000 more does not fit")
            #expect(try await ledger.releaseExpired(now: Date()) == 1)
            #expect(try await reserved() == 0)
            #expect(try await ledger.reserve(Reservation(id: "r-alive", keyID: key.id, amountMicroUSD: 50_000, owner: "alive", leaseUntil: Date(timeIntervalSinceNow: 60))) == .held)
            let unlimited = try await database.store.createKey(name: "free", group: .default, options: KeyOptions()).key
            #expect(try await ledger.reserve(Reservation(keyID: unlimited.id, amountMicroUSD: 1, owner: "alive", leaseUntil: Date(timeIntervalSinceNow: 60))) == .unlimited)
            #expect(try await ledger.releaseExpired(now: Date()) == 0, "a live lease stays")
            #expect(try await reserved() == 50_000)
            // Only the leases of requests still running are renewed; a vanished one runs out.
            #expect(try await ledger.reserve(Reservation(id: "r-running", keyID: key.id, amountMicroUSD: 1_000, owner: "alive", leaseUntil: Date(timeIntervalSinceNow: -1))) == .held)
            #expect(try await ledger.reserve(Reservation(id: "r-vanished", keyID: key.id, amountMicroUSD: 2_000, owner: "alive", leaseUntil: Date(timeIntervalSinceNow: -1))) == .held)
            try await ledger.renewLeases(ids: ["r-running"], until: Date(timeIntervalSinceNow: 60))
            #expect(try await ledger.releaseExpired(now: Date()) == 1)
            #expect(try await reserved() == 51_000, "50,000 + the running 1,000 stay held")
            try await ledger.settle(reservationID: "r-running", record: UsageRecord(keyID: key.id, endpoint: "images.generations", model: "nano-banana", status: 500, images: 0, inputTokens: 0, outputTokens: 0, totalTokens: 0, costMicroUSD: 0, errorCode: "upstream_error"))
            #expect(try await reserved() == 50_000, "a failure releases its hold and charges nothing")
            var record = UsageRecord(keyID: key.id, endpoint: "images.generations", model: "nano-banana", status: 200, images: 1, inputTokens: 1, outputTokens: 1, totalTokens: 2, costMicroUSD: 38_713, errorCode: nil)
            record.requestID = "req-1"
            try await ledger.settle(reservationID: "r-alive", record: record)
            let settled = try #require(try await database.store.key(named: "lease"))
            #expect(settled.reservedMicroUSD == 0 && settled.spentMicroUSD == 38_713 && settled.balanceMicroUSD == 61_287)
            // Both rows may carry the same millisecond: look the settled one up by its request id.
            let rows = try await database.store.usage(UsageQuery(keyID: key.id))
            #expect(rows.contains { $0.requestID == "req-1" && $0.costMicroUSD == 38_713 }, "the row is written with the charge")
        }
    }

    /// Under load, a hold the balance cannot cover is always a refusal, never an error (on
    /// SQLite the trigger's message is read from the connection after the statement, and other
    /// statements running at the same moment replaced it: 1 in 50 parallel requests of
    /// `concurrentRequestsCannotOverspend` got a 500 on a busy machine).
    @Test func refusedHoldsStayRefusalsUnderConcurrentStatements() async throws {
        try await TestDatabase.with { database in
            let key = try await database.store.createKey(name: "busy", group: .default, options: KeyOptions(creditMicroUSD: 10_000)).key
            let ledger = database.ledger
            let store = database.store
            let outcomes = try await withThrowingTaskGroup(of: ReservationOutcome?.self) { group in
                for index in 0..<400 {
                    group.addTask {
                        if index % 2 == 1 {
                            // Other statements on the same connection at the same moment (reads, and
                            // one that fails with a message of its own).
                            _ = try? await store.key(named: "busy")
                            _ = try? await store.createKey(name: "busy", group: .default)
                            return nil
                        }
                        return try await ledger.reserve(Reservation(keyID: key.id, amountMicroUSD: 1_000, owner: "busy", leaseUntil: Date(timeIntervalSinceNow: 60)))
                    }
                }
                var all: [ReservationOutcome] = []
                for try await outcome in group { if let outcome { all.append(outcome) } }
                return all
            }
            #expect(outcomes.count == 200)
            #expect(outcomes.filter { $0 == .held }.count == 10, "exactly the credit is held")
            #expect(outcomes.filter { $0 == .insufficient }.count == 190)
        }
    }
}
