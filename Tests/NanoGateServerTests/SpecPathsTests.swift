import AsyncHTTPClient
import Foundation
import GeminiEmulator
import NanoGateCore
import NanoGateServer
import NanoGateStorage
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import Testing
import Upstream

/// The spec's endpoint table spells the image paths in the singular (`/v1/image/generations`,
/// `/v1/image/edits`); they answer exactly like OpenAI's plural ones.
@Suite(.timeLimit(.minutes(10))) struct SpecPathsTests {
    @Test(arguments: ["images", "image"])
    func generationsAnswerOnBothSpellings(prefix: String) async throws {
        try await withGateway { gateway in
            let reply = try await gateway.post("/v1/\(prefix)/generations", json: #"{"model":"nano-banana","prompt":"p","size":"16:9","response_format":"b64_json"}"#)
            #expect(reply.status == 200, "\(reply.text.prefix(300))")
            #expect(Harness.pngSize(try await gateway.imageBytes(reply)) == (1344, 768))
            // Same validation, auth and usage log.
            let bad = try await gateway.post("/v1/\(prefix)/generations", json: #"{"model":"nano-banana","prompt":"p","size":"7:3"}"#)
            #expect(bad.status == 400 && bad.error["param"] as? String == "size")
            #expect(try await gateway.post("/v1/\(prefix)/generations", json: #"{"model":"nano-banana","prompt":"p"}"#, key: "sk-ng-wrong").status == 401)
            let key = try #require(try await gateway.dependencies.store.listKeys().first { $0.name == "test-default" })
            let log = try await gateway.dependencies.store.recentUsage(keyID: key.id, limit: 10)
            #expect(log.filter { $0.endpoint == "images.generations" && $0.status == 200 }.count == 1)
        }
    }

    @Test(arguments: ["images", "image"])
    func editsAnswerOnBothSpellings(prefix: String) async throws {
        try await withGateway { gateway in
            let input = try await EditsTests.png(gateway, size: "9:16")
            let dataURL = "data:image/png;base64," + Data(input).base64EncodedString()
            let json = try await gateway.post("/v1/\(prefix)/edits", json: #"{"model":"nano-banana","prompt":"p","images":[{"image_url":"\#(dataURL)"}],"response_format":"b64_json"}"#)
            #expect(json.status == 200, "\(json.text.prefix(300))")
            #expect(Harness.pngSize(try await gateway.imageBytes(json)) == (768, 1344))
            let none = try await gateway.post("/v1/\(prefix)/edits", json: #"{"model":"nano-banana","prompt":"p","images":[]}"#)
            #expect(none.status == 400 && none.error["param"] as? String == "image")
        }
    }

    /// Chat and the images API read `size` and `aspect_ratio` by the same rule: the 2.5 family
    /// takes the ratio in either field, and a contradiction is a 400 on both endpoints.
    @Test func chatAndImagesValidateTheSameWay() async throws {
        try await withGateway { gateway in
            for body in [
                #"{"model":"nano-banana","aspect_ratio":"9:16"}"#: 200,
                #"{"model":"nano-banana","size":"3:2","aspect_ratio":"16:9"}"#: 400,
                #"{"model":"nano-banana","aspect_ratio":"7:3"}"#: 400,
                #"{"model":"nano-banana-pro","size":"8k"}"#: 400,
            ] as [String: Int] {
                let fields = try #require(try JSONSerialization.jsonObject(with: Data(body.key.utf8)) as? [String: Any])
                var images = fields
                images["prompt"] = "tall"
                images["response_format"] = "b64_json"
                var chat = fields
                chat["messages"] = [["role": "user", "content": "tall"]]
                let imagesReply = try await gateway.post("/v1/images/generations", json: String(decoding: try JSONSerialization.data(withJSONObject: images), as: UTF8.self))
                let chatReply = try await ChatTests.chat(gateway, chat)
                #expect(imagesReply.status == body.value, "images \(body.key): \(imagesReply.text.prefix(200))")
                #expect(chatReply.status == body.value, "chat \(body.key): \(chatReply.text.prefix(200))")
                #expect(imagesReply.error["param"] as? String == chatReply.error["param"] as? String)
                if body.value == 200 {
                    #expect(gateway.recorder.all.suffix(2).allSatisfy { $0.body.generationConfig?.imageConfig?.aspectRatio == "9:16" })
                }
            }
        }
    }
}
