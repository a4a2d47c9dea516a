import AsyncHTTPClient
import Foundation
import GeminiEmulator
import NanoGateCore
import NanoGateStorage
import NanoGateServer
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import Testing
import Upstream

/// `POST /v1/images/edits` (multipart and JSON) and `/v1/models`.
@Suite(.timeLimit(.minutes(10))) struct EditsTests {
    /// A real PNG of the given size (made by a generation through the gateway itself).
    static func png(_ gateway: Harness, size: String = "16:9") async throws -> [UInt8] {
        let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"input","size":"\#(size)","response_format":"b64_json"}"#)
        return try await gateway.imageBytes(reply)
    }

    /// A multipart body the way openai-python sends it.
    static func multipart(fields: [(String, String)], files: [(name: String, bytes: [UInt8])]) -> (body: ByteBuffer, contentType: String) {
        let boundary = "nanogate-test-\(UUID().uuidString)"
        var body = ByteBuffer()
        for (name, value) in fields {
            body.writeString("--\(boundary)\r\nContent-Disposition: form-data; name=\"\(name)\"\r\n\r\n\(value)\r\n")
        }
        for (index, file) in files.enumerated() {
            body.writeString("--\(boundary)\r\nContent-Disposition: form-data; name=\"\(file.name)\"; filename=\"input\(index).png\"\r\nContent-Type: application/octet-stream\r\n\r\n")
            body.writeBytes(file.bytes)
            body.writeString("\r\n")
        }
        body.writeString("--\(boundary)--\r\n")
        return (body, "multipart/form-data; boundary=\(boundary)")
    }

    static func postMultipart(_ gateway: Harness, fields: [(String, String)], files: [(name: String, bytes: [UInt8])]) async throws -> Harness.Reply {
        let (body, contentType) = multipart(fields: fields, files: files)
        var request = HTTPClientRequest(url: gateway.baseURL + "/v1/images/edits")
        request.method = .POST
        request.headers.add(name: "Authorization", value: "Bearer \(gateway.defaultKey)")
        request.headers.add(name: "Content-Type", value: contentType)
        request.body = .bytes(body)
        return try await gateway.send(request)
    }

    func lastCallImages(_ gateway: Harness) -> [String] {
        (gateway.recorder.all.last?.body.contents.first?.parts ?? []).compactMap(\.inlineData?.mimeType)
    }

    @Test func oneImageFollowsTheInputRatioWithoutSize() async throws {
        try await withGateway { gateway in
            let input = try await Self.png(gateway, size: "16:9")
            let reply = try await Self.postMultipart(gateway, fields: [("model", "nano-banana"), ("prompt", "add a hat"), ("response_format", "b64_json")], files: [("image", input)])
            #expect(reply.status == 200, "\(reply.text.prefix(300))")
            #expect(Harness.pngSize(try await gateway.imageBytes(reply)) == (1344, 768))
            // Sent as PNG although the part said application/octet-stream: the type is sniffed.
            #expect(lastCallImages(gateway) == ["image/png"])
            #expect(gateway.recorder.all.last?.body.generationConfig?.imageConfig == nil)
        }
    }

    @Test func sixImagesAsImageArrayAreAcceptedAndSevenRefused() async throws {
        try await withGateway { gateway in
            let input = try await Self.png(gateway, size: "1:1")
            let fields = [("model", "nano-banana-pro"), ("prompt", "combine"), ("size", "2k"), ("aspect_ratio", "3:2"), ("n", "1"), ("response_format", "b64_json")]
            let six = try await Self.postMultipart(gateway, fields: fields, files: Array(repeating: ("image[]", input), count: 6))
            #expect(six.status == 200, "\(six.text.prefix(300))")
            #expect(lastCallImages(gateway).count == 6)
            #expect(Harness.pngSize(try await gateway.imageBytes(six)) == (2528, 1696))
            #expect((six.usage["input_tokens_details"] as! [String: Int])["image_tokens"] == 6 * 560)

            let callsBefore = gateway.recorder.all.count
            // The spec's 2.5 names take 1 to 6; the Gemini 3 models take Google's 14 (E5).
            var flashFields = fields
            flashFields[0] = ("model", "nano-banana")
            flashFields.removeAll { $0.0 == "size" || $0.0 == "aspect_ratio" }
            let seven = try await Self.postMultipart(gateway, fields: flashFields, files: Array(repeating: ("image[]", input), count: 7))
            #expect(seven.status == 400)
            #expect(seven.error["param"] as? String == "image")
            #expect(seven.error["code"] as? String == "too_many_images")
            let fifteen = try await Self.postMultipart(gateway, fields: fields, files: Array(repeating: ("image[]", input), count: 15))
            #expect(fifteen.status == 400)
            #expect((fifteen.error["message"] as? String)?.contains("1 to 14") == true, "\(fifteen.text)")
            #expect(gateway.recorder.all.count == callsBefore, "nothing sent upstream")
        }
    }

    @Test func repeatedImageFieldWorksToo() async throws {
        try await withGateway { gateway in
            let input = try await Self.png(gateway)
            let reply = try await Self.postMultipart(gateway, fields: [("model", "nano-banana"), ("prompt", "merge")], files: [("image", input), ("image", input)])
            #expect(reply.status == 200)
            #expect(lastCallImages(gateway).count == 2)
            #expect(reply.data.first?["url"] is String, "default group answers with a URL")
        }
    }

    @Test func badPartsAreRefusedByName() async throws {
        try await withGateway { gateway in
            let input = try await Self.png(gateway)
            let notImage = try await Self.postMultipart(gateway, fields: [("model", "nano-banana"), ("prompt", "p")], files: [("image[]", input), ("image[]", Array("just text".utf8))])
            #expect(notImage.status == 400)
            #expect(notImage.error["param"] as? String == "image[1]")
            #expect(notImage.error["code"] as? String == "invalid_image_format")

            let gif = try await Self.postMultipart(gateway, fields: [("model", "nano-banana"), ("prompt", "p")], files: [("image", Array("GIF89a\u{1}\u{0}".utf8))])
            #expect(gif.status == 400)

            let mask = try await Self.postMultipart(gateway, fields: [("model", "nano-banana"), ("prompt", "p")], files: [("image", input), ("mask", input)])
            #expect(mask.status == 400)
            #expect(mask.error["param"] as? String == "mask")

            let none = try await Self.postMultipart(gateway, fields: [("model", "nano-banana"), ("prompt", "p")], files: [])
            #expect(none.status == 400)
            #expect(none.error["param"] as? String == "image")

            let badSize = try await Self.postMultipart(gateway, fields: [("model", "nano-banana"), ("prompt", "p"), ("size", "4k")], files: [("image", input)])
            #expect(badSize.status == 400)
            #expect(badSize.error["param"] as? String == "size")
        }
    }

    @Test func oversizedUploadsAre413AndLeaveNothingBehind() async throws {
        // Small bodies (they fit in the socket buffers), so the client has sent everything when
        // the early 413 arrives: AsyncHTTPClient reports a pending body write that fails when it
        // closes after an early answer as an error instead of the answer.
        try await withGateway(configure: { $0.inputs.maxImageBytes = 100_000; $0.inputs.maxRequestBytes = 250_000 }) { gateway in
            func image(_ bytes: Int) -> [UInt8] { [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A] + [UInt8](repeating: 7, count: bytes) }
            let callsBefore = gateway.recorder.all.count
            let perImage = try await Self.postMultipart(gateway, fields: [("model", "nano-banana"), ("prompt", "p")], files: [("image", image(150_000))])
            #expect(perImage.status == 413)
            #expect(perImage.error["code"] as? String == "image_too_large")
            let whole = try await Self.postMultipart(gateway, fields: [("model", "nano-banana"), ("prompt", "p")], files: Array(repeating: ("image", image(90_000)), count: 3))
            #expect(whole.status == 413)
            #expect(whole.error["code"] as? String == "request_too_large")
            // Nothing reached Google, and the log holds the refusals at no cost.
            #expect(gateway.recorder.all.count == callsBefore)
            let key = try #require(try await gateway.dependencies.store.listKeys().first { $0.name == "test-default" })
            let log = try await gateway.dependencies.store.recentUsage(keyID: key.id, limit: 10)
            #expect(log.allSatisfy { $0.endpoint != "images.edits" }, "a refused upload leaves no usage row")
        }
    }

    @Test func jsonEditsTakeDataURLsAndTheGatewaysOwnURLs() async throws {
        try await withGateway { gateway in
            let input = try await Self.png(gateway, size: "9:16")
            let dataURL = "data:image/png;base64," + Data(input).base64EncodedString()
            let byData = try await gateway.post("/v1/images/edits", json: #"{"model":"nano-banana","prompt":"p","images":[{"image_url":"\#(dataURL)"}],"response_format":"b64_json"}"#)
            #expect(byData.status == 200, "\(byData.text.prefix(300))")
            #expect(Harness.pngSize(try await gateway.imageBytes(byData)) == (768, 1344))

            let generated = try await gateway.generate(#"{"model":"nano-banana","prompt":"p","size":"3:2","response_format":"url"}"#)
            let ownURL = generated.data[0]["url"] as! String
            let byOwnURL = try await gateway.post("/v1/images/edits", json: #"{"model":"nano-banana","prompt":"p","images":[{"image_url":"\#(ownURL)"}]}"#)
            #expect(byOwnURL.status == 200, "\(byOwnURL.text.prefix(300))")
            #expect(lastCallImages(gateway) == ["image/png"])

            let masked = try await gateway.post("/v1/images/edits", json: #"{"model":"nano-banana","prompt":"p","images":[{"image_url":"\#(dataURL)"}],"mask":{"image_url":"\#(dataURL)"}}"#)
            #expect(masked.status == 400)
            #expect(masked.error["param"] as? String == "mask")
        }
    }

    @Test func remoteURLsAreFetchedWhenTheOperatorAllowsIt() async throws {
        try await withGateway(configure: { $0.inputs.allowPrivateFetch = true; $0.inputs.allowPlainHTTP = true }) { gateway in
            let generated = try await gateway.generate(#"{"model":"nano-banana","prompt":"p","size":"4:3","response_format":"url"}"#)
            // Another spelling of the host: not recognised as our own URL, so it is fetched over HTTP.
            let remote = (generated.data[0]["url"] as! String).replacingOccurrences(of: "127.0.0.1", with: "localhost")
            let reply = try await gateway.post("/v1/images/edits", json: #"{"model":"nano-banana","prompt":"p","images":[{"image_url":"\#(remote)"}],"response_format":"b64_json"}"#)
            #expect(reply.status == 200, "\(reply.text.prefix(300))")
            #expect(Harness.pngSize(try await gateway.imageBytes(reply)) == (1184, 864))
        }
    }

    @Test func modelsListsTheCatalog() async throws {
        try await withGateway { gateway in
            let list = try await gateway.get(gateway.baseURL + "/v1/models")
            #expect(list.status == 401, "models need a key")
            var request = HTTPClientRequest(url: gateway.baseURL + "/v1/models")
            request.headers.add(name: "Authorization", value: "Bearer \(gateway.defaultKey)")
            let authorized = try await gateway.send(request)
            #expect(authorized.json["object"] as? String == "list")
            #expect(authorized.data.compactMap { $0["id"] as? String } == [
                "nano-banana", "gemini-2.5-flash-image", "nano-banana-pro", "gemini-3-pro-image-preview", "nano-banana-pro-2k", "nano-banana-pro-4k",
                "gemini-3-pro-image", "nano-banana-2", "gemini-3.1-flash-image", "nano-banana-2.1", "gemini-nano-banana-2.1",
            ])
            // What each model accepts, for clients that build their controls from it.
            let capabilities = Dictionary(uniqueKeysWithValues: authorized.data.map { ($0["id"] as! String, $0["capabilities"] as? [String: Any] ?? [:]) })
            #expect(capabilities["nano-banana-2"]?["sizes"] as? [String] == ["1K", "2K", "4K"], "2.1 has no 512")
            #expect((capabilities["nano-banana-2"]?["aspect_ratios"] as? [String])?.count == 14)
            #expect((capabilities["nano-banana-2"]?["aspect_ratios"] as? [String])?.contains("8:1") == true)
            #expect(capabilities["nano-banana-2"]?["max_input_images"] as? Int == 14)
            #expect(capabilities["nano-banana"]?["sizes"] as? [String] == [])
            #expect((capabilities["nano-banana"]?["aspect_ratios"] as? [String])?.count == 10)
            #expect(capabilities["nano-banana"]?["max_input_images"] as? Int == 6)
            #expect(capabilities["nano-banana-pro-4k"]?["sizes"] as? [String] == ["4K"])
            #expect(capabilities["gemini-2.5-flash-image"]?["url_output"] as? Bool == false)
            #expect(capabilities["nano-banana-pro"]?["url_output"] as? Bool == true)
            var one = HTTPClientRequest(url: gateway.baseURL + "/v1/models/nano-banana-pro-4k")
            one.headers.add(name: "Authorization", value: "Bearer \(gateway.defaultKey)")
            let single = try await gateway.send(one)
            #expect(single.json["id"] as? String == "nano-banana-pro-4k")
            #expect(single.json["object"] as? String == "model")
            var missing = HTTPClientRequest(url: gateway.baseURL + "/v1/models/dall-e-3")
            missing.headers.add(name: "Authorization", value: "Bearer \(gateway.defaultKey)")
            #expect(try await gateway.send(missing).status == 404)
        }
    }
}
