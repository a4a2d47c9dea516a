import AsyncHTTPClient
import Foundation
import GeminiEmulator
import NanoGateCore
@testable import NanoGateServer
import NanoGateStorage
import NIOCore
import NIOHTTP1
import Testing
import Upstream

/// Google's service tiers (wire-formats notes F3) through OpenAI's `service_tier`: flex at half
/// price, priority only for keys allowed it, a shed flex request run on standard, the tier Google
/// echoes deciding the charge and named in the answer.
@Suite(.timeLimit(.minutes(10))) struct ServiceTierTests {
    static func row(_ gateway: Harness, _ key: String) async throws -> UsageRecord {
        try await eventuallyRow(gateway, keyName: key)
    }

    static func eventuallyRow(_ gateway: Harness, keyName: String) async throws -> UsageRecord {
        var found: UsageRecord?
        try await eventually("the usage row of \(keyName)") {
            let key = try #require(try await gateway.dependencies.store.key(named: keyName))
            found = try await gateway.dependencies.store.usage(UsageQuery(keyID: key.id)).first
            return found != nil
        }
        return found!
    }

    @Test func flexIsChargedHalfAndSaysSo() async throws {
        try await withGateway { gateway in
            let standardKey = try await BillingTests.key(gateway, name: "standard", KeyOptions(creditMicroUSD: 5_000_000))
            let flexKey = try await BillingTests.key(gateway, name: "flex", KeyOptions(creditMicroUSD: 5_000_000))
            let standard = try await gateway.generate(#"{"model":"nano-banana-pro","prompt":"p","response_format":"b64_json"}"#, key: standardKey)
            #expect(standard.status == 200 && standard.json["service_tier"] as? String == "default", "\(standard.text.prefix(300))")
            #expect(gateway.recorder.all.last?.body.serviceTier == nil, "standard is Google's default: not sent")
            let flex = try await gateway.generate(#"{"model":"nano-banana-pro","prompt":"p","response_format":"b64_json","service_tier":"flex"}"#, key: flexKey)
            #expect(flex.status == 200 && flex.json["service_tier"] as? String == "flex", "\(flex.text.prefix(300))")
            #expect(gateway.recorder.all.last?.body.serviceTier == "flex")
            let standardRow = try await Self.row(gateway, "standard")
            let flexRow = try await Self.row(gateway, "flex")
            #expect(flexRow.serviceTier == "flex" && standardRow.serviceTier == "standard")
            #expect(standardRow.costMicroUSD > 0 && abs(flexRow.costMicroUSD * 2 - standardRow.costMicroUSD) <= 2, "\(flexRow.costMicroUSD) vs \(standardRow.costMicroUSD)")
            #expect(abs((flex.usage["cost"] as? Double ?? 0) - TokenPrices.usd(flexRow.costMicroUSD)) < 1e-9)
            let chat = try await ChatTests.chat(gateway, ["model": "nano-banana", "service_tier": "flex", "messages": [["role": "user", "content": "draw"]]])
            #expect(chat.status == 200 && chat.json["service_tier"] as? String == "flex")
        }
    }

    @Test func priorityNeedsPermission() async throws {
        try await withGateway { gateway in
            let calls = gateway.recorder.all.count
            let refused = try await gateway.generate(#"{"model":"nano-banana-pro","prompt":"p","service_tier":"priority"}"#)
            #expect(refused.status == 403 && refused.error["code"] as? String == "tier_not_allowed" && refused.error["param"] as? String == "service_tier")
            let chatRefused = try await ChatTests.chat(gateway, ["model": "nano-banana", "service_tier": "priority", "messages": [["role": "user", "content": "draw"]]])
            #expect(chatRefused.status == 403)
            #expect(gateway.recorder.all.count == calls, "refused before any upstream call")
            let bad = try await gateway.generate(#"{"model":"nano-banana-pro","prompt":"p","service_tier":"turbo"}"#)
            #expect(bad.status == 400 && bad.error["param"] as? String == "service_tier")

            // A group that allows priority: charged at the operator's priority price (200% by default).
            try await gateway.dependencies.store.createGroup(KeyGroupSettings(name: KeyGroup(rawValue: "vip"), responseFormat: .b64JSON, serviceTiers: ["standard", "priority"]))
            let vip = try await BillingTests.key(gateway, name: "vip", group: KeyGroup(rawValue: "vip"), KeyOptions(creditMicroUSD: 5_000_000))
            let standardKey = try await BillingTests.key(gateway, name: "plain", KeyOptions(creditMicroUSD: 5_000_000))
            let priority = try await gateway.generate(#"{"model":"nano-banana-pro","prompt":"p","service_tier":"priority"}"#, key: vip)
            #expect(priority.status == 200 && priority.json["service_tier"] as? String == "priority", "\(priority.text.prefix(300))")
            _ = try await gateway.generate(#"{"model":"nano-banana-pro","prompt":"p","response_format":"b64_json"}"#, key: standardKey)
            let priorityRow = try await Self.row(gateway, "vip")
            let standardRow = try await Self.row(gateway, "plain")
            #expect(abs(priorityRow.costMicroUSD - standardRow.costMicroUSD * 2) <= 2, "\(priorityRow.costMicroUSD) vs \(standardRow.costMicroUSD)")
            // Flex is not in vip's list.
            let noFlex = try await gateway.generate(#"{"model":"nano-banana-pro","prompt":"p","service_tier":"flex"}"#, key: vip)
            #expect(noFlex.status == 403)
        }
    }

    /// Google sheds flex under load (429/503): the request runs again on standard when the key may
    /// use standard (and is charged standard), and fails, uncharged, when it may not.
    @Test func aShedFlexRequestRunsOnStandardWhenAllowed() async throws {
        try await withGateway(configure: { $0.upstream.maxAttempts = 1 }) { gateway in
            let key = try await BillingTests.key(gateway, name: "shed", KeyOptions(creditMicroUSD: 5_000_000))
            let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"p [emulate:shed_flex]","response_format":"b64_json","service_tier":"flex"}"#, key: key)
            #expect(reply.status == 200 && reply.json["service_tier"] as? String == "default", "\(reply.text.prefix(300))")
            #expect(gateway.recorder.all.suffix(2).map(\.body.serviceTier) == ["flex", nil])
            let row = try await Self.row(gateway, "shed")
            #expect(row.serviceTier == "standard" && row.costMicroUSD > 0)

            try await gateway.dependencies.store.createGroup(KeyGroupSettings(name: KeyGroup(rawValue: "thrifty"), responseFormat: .b64JSON, serviceTiers: ["flex"]))
            let thrifty = try await BillingTests.key(gateway, name: "thrifty", group: KeyGroup(rawValue: "thrifty"), KeyOptions(creditMicroUSD: 5_000_000))
            let shed = try await gateway.generate(#"{"model":"nano-banana","prompt":"p [emulate:shed_flex]","service_tier":"flex"}"#, key: thrifty)
            #expect(shed.status == 503, "\(shed.text.prefix(300))")
            let auto = try await gateway.generate(#"{"model":"nano-banana","prompt":"p"}"#, key: thrifty)
            #expect(auto.status == 200 && auto.json["service_tier"] as? String == "flex", "auto is the cheapest tier the key may use")
            let thriftyKey = try #require(try await gateway.dependencies.store.key(named: "thrifty"))
            let rows = try await gateway.dependencies.store.usage(UsageQuery(keyID: thriftyKey.id))
            #expect(rows.first { $0.status == 503 }?.costMicroUSD == 0)
        }
    }

    /// Google's own `serviceTier` passes through on the native route, within the key's tiers.
    @Test func theNativeRoutePassesTheTierThrough() async throws {
        try await withGateway { gateway in
            var request = HTTPClientRequest(url: gateway.baseURL + "/v1beta/models/nano-banana:generateContent")
            request.method = .POST
            request.headers.add(name: "x-goog-api-key", value: gateway.defaultKey)
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: #"{"contents":[{"role":"user","parts":[{"text":"p"}]}],"serviceTier":"flex"}"#))
            let reply = try await gateway.send(request)
            #expect(reply.status == 200)
            #expect(gateway.recorder.all.last?.body.serviceTier == "flex")
            #expect((reply.json["usageMetadata"] as? [String: Any])?["serviceTier"] as? String == "flex")
            #expect(try await gateway.usageRows().first?.serviceTier == "flex")
        }
    }
}
