import AsyncHTTPClient
import Foundation
import GeminiEmulator
import NanoGateCore
@testable import NanoGateServer
import NanoGateStorage
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import Testing
import Upstream

/// `POST /v1/responses`: conversations continued by `previous_response_id` on the stored
/// conversation (its images from the image store, Google's signatures restored), on SQLite and
/// PostgreSQL alike.
@Suite(.timeLimit(.minutes(10))) struct ResponsesTests {
    static func create(_ gateway: Harness, _ body: [String: Any], key: String? = nil) async throws -> Harness.Reply {
        let data = try JSONSerialization.data(withJSONObject: body)
        return try await gateway.post("/v1/responses", json: String(decoding: data, as: UTF8.self), key: key)
    }

    static func images(_ reply: Harness.Reply) -> [[String: Any]] {
        ((reply.json["output"] as? [[String: Any]]) ?? []).filter { $0["type"] as? String == "image_generation_call" }
    }

    @Test func previousResponseContinuesWithGooglesSignatures() async throws {
        try await withGateway { gateway in
            let first = try await Self.create(gateway, ["model": "nano-banana-pro", "input": "a lighthouse"])
            #expect(first.status == 200, "\(first.text.prefix(300))")
            let id = try #require(first.json["id"] as? String)
            let result = try #require(Self.images(first).first?["result"] as? String)
            #expect(Harness.pngSize(Array(try #require(Data(base64Encoded: result)))) == (1024, 1024))

            let second = try await Self.create(gateway, ["model": "nano-banana-pro", "input": "at night", "previous_response_id": id])
            #expect(second.status == 200, "\(second.text.prefix(300))")
            let sent = try #require(gateway.recorder.all.last).body.contents
            #expect(sent.map(\.role) == ["user", "model", "user"])
            let modelTurn = sent[1]
            let imagePart = try #require(modelTurn.parts?.first { $0.inlineData != nil })
            // Google's own signature for the earlier image, not the bypass value.
            #expect(String(decoding: Data(base64Encoded: imagePart.thoughtSignature ?? "") ?? Data(), as: UTF8.self).hasPrefix("emulator-signature:image:"))
            #expect(imagePart.inlineData?.data.string == result, "the earlier image, byte for byte")
            let textPart = try #require(modelTurn.parts?.first { $0.text != nil })
            #expect(String(decoding: Data(base64Encoded: textPart.thoughtSignature ?? "") ?? Data(), as: UTF8.self).hasPrefix("emulator-signature:text:"))

            // Another key sees nothing of it.
            let other = try await gateway.post("/v1/responses", json: #"{"model":"nano-banana-pro","input":"x","previous_response_id":"\#(id)"}"#, key: gateway.geminiKey)
            #expect(other.status == 404)
            #expect(other.error["code"] as? String == "previous_response_not_found")
            let rows = try await gateway.usageRows(limit: 5)
            #expect(rows.filter { $0.endpoint == "responses" }.count == 2)
        }
    }

    /// A background response left `in_progress` by an instance that stopped (nothing runs it
    /// here, and it is older than any request can run) reads as failed, and stays so.
    @Test func aBackgroundResponseLostWithItsInstanceReadsAsFailed() async throws {
        try await withGateway { gateway in
            let key = try #require(try await gateway.dependencies.store.listKeys().first { $0.name == "test-default" })
            let stale = Int(Date().timeIntervalSince1970 - gateway.configuration.idempotencyStaleAfter - 5)
            func stored(_ id: String, created: Int) throws -> String {
                var response = ResponseObject(
                    id: id, createdAt: created, status: "in_progress", background: true, instructions: nil, metadata: [:], model: "nano-banana",
                    previousResponseID: nil, store: true, tools: []
                )
                response.output = []
                return String(decoding: try JSONEncoder().encode(StoredResponse(response: response, resultNames: [:], conversation: [])), as: UTF8.self)
            }
            let expires = Date().addingTimeInterval(3600)
            try await gateway.dependencies.store.saveResponse(id: "resp_lost", keyID: key.id, status: "in_progress", body: try stored("resp_lost", created: stale), expiresAt: expires)
            try await gateway.dependencies.store.saveResponse(
                id: "resp_young", keyID: key.id, status: "in_progress", body: try stored("resp_young", created: Int(Date().timeIntervalSince1970)), expiresAt: expires
            )

            func get(_ id: String) async throws -> Harness.Reply {
                var request = HTTPClientRequest(url: gateway.baseURL + "/v1/responses/\(id)")
                request.headers.add(name: "Authorization", value: "Bearer \(gateway.defaultKey)")
                return try await gateway.send(request)
            }
            let lost = try await get("resp_lost")
            #expect(lost.status == 200 && lost.json["status"] as? String == "failed", "\(lost.text.prefix(300))")
            #expect((lost.json["error"] as? [String: Any])?["code"] as? String == "response_lost")
            #expect(try await gateway.dependencies.store.response(id: "resp_lost", keyID: key.id)?.status == "failed")
            let young = try await get("resp_young")
            #expect(young.json["status"] as? String == "in_progress", "a response within the time a request may run is left alone")
        }
    }
}

