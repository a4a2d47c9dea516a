import Foundation
import NanoGateTestSupport
import NanoGateCore
@testable import NanoGateStorage
import SQLKit
import Testing

/// The console's storage on both databases: the usage summary the overview draws, and the
/// sessions behind its cookie.
@Suite(.timeLimit(.minutes(5))) struct ConsoleStorageTests {
    /// Totals, errors and nearest-rank latency percentiles per day, key and model, computed by the
    /// database: ten requests on one day (latencies 100…1000 ms, one failed) and one the next.
    @Test func theUsageSummaryAggregatesInTheDatabase() async throws {
        try await TestDatabase.with { database in
            let store = database.store
            let day = Date(timeIntervalSince1970: 1_800_000_000)  // 2027-01-15 08:00 UTC
            func row(key: String, model: String, status: Int, cost: Int, latency: Int, at date: Date) -> UsageRecord {
                var record = UsageRecord(
                    keyID: key + "-id", endpoint: "images", model: model, status: status, images: status < 400 ? 1 : 0, inputTokens: 10, outputTokens: 1290,
                    totalTokens: 1300, costMicroUSD: cost, errorCode: status < 400 ? nil : "upstream_error", upstreamCostMicroUSD: cost / 2, createdAt: date
                )
                record.keyName = key
                record.latencyMilliseconds = latency
                record.requestID = "req_\(UUID().uuidString)"
                return record
            }
            for index in 1...10 {
                try await store.record(row(
                    key: index <= 7 ? "alice" : "bob", model: index % 2 == 0 ? "nano-banana-pro" : "nano-banana", status: index == 10 ? 503 : 200,
                    cost: index == 10 ? 0 : 40_000, latency: index * 100, at: day.addingTimeInterval(Double(index))
                ))
            }
            try await store.record(row(key: "bob", model: "nano-banana", status: 200, cost: 39_000, latency: 2000, at: day.addingTimeInterval(86_400)))

            let days = try await store.usageSummary(by: .day, since: nil, until: nil)
            #expect(days.map(\.group) == ["2027-01-16", "2027-01-15"], "days newest first, in UTC")
            let first = try #require(days.last)
            #expect(first.requests == 10 && first.errors == 1 && first.images == 9)
            #expect(first.costMicroUSD == 360_000 && first.upstreamCostMicroUSD == 180_000)
            #expect(first.inputTokens == 100 && first.outputTokens == 12_900)
            #expect(first.p50LatencyMs == 500, "nearest rank: the 5th of 10")
            #expect(first.p95LatencyMs == 1000, "nearest rank: the 10th of 10")

            let keys = try await store.usageSummary(by: .key, since: nil, until: nil)
            #expect(keys.map(\.group) == ["alice", "bob"], "by spend: alice 280,000, bob 119,000")
            #expect(keys.map(\.requests) == [7, 4])
            let models = try await store.usageSummary(by: .model, since: nil, until: day.addingTimeInterval(86_400))
            #expect(Dictionary(uniqueKeysWithValues: models.map { ($0.group, $0.requests) }) == ["nano-banana": 5, "nano-banana-pro": 5], "until is exclusive")
            let total = try await store.usageSummary(by: .all, since: day.addingTimeInterval(86_000), until: nil)
            #expect(total.map(\.requests) == [1] && total.first?.p50LatencyMs == 2000)
        }
    }

    /// A session is found by its cookie id (stored hashed), ends on sign-out, when idle or old,
    /// and a key holder's ends when the key is rotated, disabled or revoked.
    @Test func consoleSessionsFollowTheirKey() async throws {
        try await TestDatabase.with { database in
            let store = database.store
            let now = Date()
            let hour = Duration.seconds(3600), day = Duration.seconds(86_400)
            let operatorID = try #require(try await store.createConsoleSession(role: .operator))
            #expect(try await store.consoleSession(id: operatorID, idle: hour, absolute: day)?.role == .operator)
            #expect(try await store.consoleSession(id: operatorID + "x", idle: hour, absolute: day) == nil)
            struct Row: Decodable { var id_hash: String }
            let stored = try await database.store.database.raw("SELECT id_hash FROM console_sessions").all(decoding: Row.self).map(\.id_hash)
            #expect(!stored.contains(operatorID), "only the hash is stored")
            #expect(try await store.consoleSession(id: operatorID, idle: hour, absolute: day, now: now.addingTimeInterval(3601)) == nil, "idle too long")
            #expect(try await store.consoleSession(id: operatorID, idle: hour, absolute: day) == nil, "an ended session is deleted")

            #expect(try await store.createConsoleSession(role: .key, keySecret: "sk-ng-unknown") == nil)
            let (_, secret) = try await store.createKey(name: "holder", group: .default)
            let first = try #require(try await store.createConsoleSession(role: .key, keySecret: secret))
            #expect(try await store.consoleSession(id: first, idle: hour, absolute: day)?.role == .key)
            #expect(try await store.consoleSession(id: first, idle: hour, absolute: day, now: now.addingTimeInterval(86_401)) == nil, "past the absolute lifetime")

            let second = try #require(try await store.createConsoleSession(role: .key, keySecret: secret))
            _ = try await store.updateKey(name: "holder", KeyUpdate(disabled: true))
            #expect(try await store.consoleSession(id: second, idle: hour, absolute: day) == nil, "disabling the key ends its sessions")
            _ = try await store.updateKey(name: "holder", KeyUpdate(disabled: false))
            #expect(try await store.createConsoleSession(role: .key, keySecret: secret) != nil)

            let third = try #require(try await store.createConsoleSession(role: .key, keySecret: secret))
            let rotated = try await store.rotateKey(name: "holder")
            #expect(try await store.consoleSession(id: third, idle: hour, absolute: day) == nil, "rotating the key ends its sessions")
            #expect(try await store.createConsoleSession(role: .key, keySecret: secret) == nil, "the old secret signs in no more")

            let fourth = try #require(try await store.createConsoleSession(role: .key, keySecret: rotated.secret))
            try await store.deleteConsoleSession(id: fourth)
            #expect(try await store.consoleSession(id: fourth, idle: hour, absolute: day) == nil, "sign-out")
            let fifth = try #require(try await store.createConsoleSession(role: .key, keySecret: rotated.secret))
            try await store.revokeKey(name: "holder")
            #expect(try await store.consoleSession(id: fifth, idle: hour, absolute: day) == nil, "revoking the key ends its sessions")
        }
    }
}
