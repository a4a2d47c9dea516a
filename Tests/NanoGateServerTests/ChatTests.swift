import AsyncHTTPClient
import Foundation
import GeminiEmulator
import NanoGateCore
import NanoGateServer
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import Testing
import Upstream

/// `POST /v1/chat/completions`, streamed and not, and multi-turn editing with signatures.
@Suite(.timeLimit(.minutes(10))) struct ChatTests {
    static func chat(_ gateway: Harness, _ body: [String: Any], key: String? = nil, headers: [String: String] = [:]) async throws -> Harness.Reply {
        let data = try JSONSerialization.data(withJSONObject: body)
        return try await gateway.post("/v1/chat/completions", json: String(decoding: data, as: UTF8.self), key: key, headers: headers)
    }

    static func message(_ reply: Harness.Reply) -> [String: Any] {
        ((reply.json["choices"] as? [[String: Any]])?.first?["message"] as? [String: Any]) ?? [:]
    }

    static func finishReason(_ reply: Harness.Reply) -> String? {
        (reply.json["choices"] as? [[String: Any]])?.first?["finish_reason"] as? String
    }

    /// Parses an SSE body per the WHATWG rules the SDKs follow: `data:` lines joined per event,
    /// comments (`:`) skipped, events split on blank lines.
    static func events(_ body: String) -> (data: [String], comments: Int) {
        var events: [String] = []
        var current: [String] = []
        var comments = 0
        for line in body.split(separator: "\n", omittingEmptySubsequences: false).map({ $0.hasSuffix("\r") ? String($0.dropLast()) : String($0) }) {
            if line.isEmpty {
                if !current.isEmpty { events.append(current.joined(separator: "\n")) }
                current = []
            } else if line.hasPrefix(":") {
                comments += 1
            } else if line.hasPrefix("data:") {
                var value = line.dropFirst(5)
                if value.first == " " { value = value.dropFirst() }
                current.append(String(value))
            }
        }
        if !current.isEmpty { events.append(current.joined(separator: "\n")) }
        return (events, comments)
    }

    static func chunks(_ reply: Harness.Reply) -> [[String: Any]] {
        events(reply.text).data.filter { $0 != "[DONE]" }.compactMap { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any] }
    }

    /// Each image once: a client that asks for images with `modalities` reads them from
    /// `message.images` (content is text only); any other client gets Markdown in `content`.
    @Test func replyCarriesEachImageOnceAndChatUsage() async throws {
        try await withGateway { gateway in
            let reply = try await Self.chat(gateway, ["model": "nano-banana", "modalities": ["image", "text"], "messages": [["role": "user", "content": "draw a banana"]]])
            #expect(reply.status == 200, "\(reply.text.prefix(300))")
            #expect(reply.json["object"] as? String == "chat.completion")
            let message = Self.message(reply)
            #expect(message["role"] as? String == "assistant")
            let images = try #require(message["images"] as? [[String: Any]])
            #expect(images.count == 1)
            #expect(images[0]["type"] as? String == "image_url")
            let url = try #require((images[0]["image_url"] as? [String: Any])?["url"] as? String)
            #expect(url.hasPrefix(gateway.baseURL + "/v1/files/images/"), "default group: a signed URL")
            #expect((message["content"] as? String)?.contains("![") == false, "no second copy in content")

            // Without modalities, a non-streamed answer carries the image as Markdown (chat views)
            // and in `images` (LobeChat's image generation by chat model); Cherry Studio, which
            // shows both, gets Markdown only.
            let plain = try await Self.chat(gateway, ["model": "nano-banana", "messages": [["role": "user", "content": "draw a banana"]]])
            let markdown = ChatTranslation.splitMarkdownImages(Self.message(plain)["content"] as? String ?? "").urls
            #expect(markdown.count == 1 && markdown[0].hasPrefix(gateway.baseURL + "/v1/files/images/"), "Markdown for plain chat clients")
            let plainImages = (Self.message(plain)["images"] as? [[String: Any]] ?? []).compactMap { ($0["image_url"] as? [String: Any])?["url"] as? String }
            #expect(plainImages == markdown, "the same image in images, for LobeChat's generateByChatModel")
            let cherry = try await Self.chat(
                gateway, ["model": "nano-banana", "messages": [["role": "user", "content": "draw a banana"]]],
                headers: ["X-Title": "Cherry Studio", "HTTP-Referer": "https://cherry-ai.com"]
            )
            #expect(Self.message(cherry)["images"] == nil, "Cherry Studio renders both: Markdown only")
            #expect(ChatTranslation.splitMarkdownImages(Self.message(cherry)["content"] as? String ?? "").urls.count == 1)
            #expect(Harness.pngSize(Array(buffer: try await gateway.get(url).body)) == (1024, 1024))
            #expect(Self.finishReason(reply) == "stop")
            let usage = reply.usage
            #expect(usage["prompt_tokens"] as? Int ?? 0 > 0)
            #expect((usage["completion_tokens_details"] as? [String: Int])?["image_tokens"] == 1290)
            #expect(usage["total_tokens"] as? Int == (usage["prompt_tokens"] as! Int) + (usage["completion_tokens"] as! Int))

            // The gemini group gets data URLs.
            let inline = try await Self.chat(gateway, ["model": "nano-banana", "modalities": ["image"], "messages": [["role": "user", "content": "draw"]]], key: gateway.geminiKey)
            let dataURL = try #require(((Self.message(inline)["images"] as? [[String: Any]])?.first?["image_url"] as? [String: Any])?["url"] as? String)
            #expect(dataURL.hasPrefix("data:image/png;base64,"))
        }
    }

    @Test func sizeAndRatioReachGoogle() async throws {
        try await withGateway { gateway in
            let pro = try await Self.chat(gateway, ["model": "nano-banana-pro", "image_config": ["aspect_ratio": "16:9", "image_size": "2K"], "messages": [["role": "user", "content": "wide"]]])
            #expect(pro.status == 200)
            #expect(gateway.recorder.all.last?.body.generationConfig?.imageConfig == .init(aspectRatio: "16:9", imageSize: "2K"))
            let flash = try await Self.chat(gateway, ["model": "nano-banana", "aspect_ratio": "9:16", "messages": [["role": "user", "content": "tall"]]])
            #expect(flash.status == 200)
            #expect(gateway.recorder.all.last?.body.generationConfig?.imageConfig == .init(aspectRatio: "9:16", imageSize: nil))
            let fourK = try await Self.chat(gateway, ["model": "nano-banana-pro-4k", "messages": [["role": "user", "content": "big"]]])
            #expect(fourK.status == 200)
            #expect(gateway.recorder.all.last?.body.generationConfig?.imageConfig?.imageSize == "4K")
            let bad = try await Self.chat(gateway, ["model": "nano-banana-pro", "size": "3k", "messages": [["role": "user", "content": "x"]]])
            #expect(bad.status == 400)
            #expect(bad.error["param"] as? String == "size")
        }
    }

    @Test func badConversationsAreRefused() async throws {
        try await withGateway { gateway in
            let cases: [([String: Any], String)] = [
                (["model": "nano-banana", "messages": [] as [Any]], "messages"),
                (["model": "nano-banana", "messages": [["role": "tool", "content": "x"]]], "messages[0].role"),
                (["model": "nano-banana", "messages": [["role": "system", "content": "only system"]]], "messages"),
                (["model": "nano-banana", "n": 2, "messages": [["role": "user", "content": "x"]]], "n"),
                (["model": "nano-banana", "messages": [["role": "user", "content": [["type": "input_audio", "input_audio": [:] as [String: Any]]]]]], "messages[0].content"),
                (["model": "nano-banana", "messages": [["role": "user", "content": [["type": "image_url", "image_url": ["url": "data:text/plain;base64,aGVsbG8="]]]]]], "messages[0].content[0]"),
            ]
            for (body, param) in cases {
                let reply = try await Self.chat(gateway, body)
                #expect(reply.status == 400, "\(body)")
                #expect(reply.error["param"] as? String == param, "\(reply.text)")
            }
            #expect(gateway.recorder.all.isEmpty)
        }
    }

    @Test func safetyOutcomesAreContentFilterRefusals() async throws {
        try await withGateway { gateway in
            let reply = try await Self.chat(gateway, ["model": "nano-banana", "messages": [["role": "user", "content": "x [emulate:image_safety]"]]])
            #expect(reply.status == 200)
            #expect(Self.finishReason(reply) == "content_filter")
            #expect((Self.message(reply)["refusal"] as? String)?.contains("IMAGE_SAFETY") == true)
            let blocked = try await Self.chat(gateway, ["model": "nano-banana", "stream": true, "messages": [["role": "user", "content": "x [emulate:prompt_block]"]]])
            let finish = Self.chunks(blocked).compactMap { ($0["choices"] as? [[String: Any]])?.first?["finish_reason"] as? String }
            #expect(finish == ["content_filter"])
        }
    }

    @Test func streamFollowsOpenAIsChunkProtocol() async throws {
        try await withGateway { gateway in
            let reply = try await Self.chat(gateway, ["model": "nano-banana-pro", "stream": true, "modalities": ["image", "text"], "stream_options": ["include_usage": true], "messages": [["role": "user", "content": "draw"]]])
            #expect(reply.status == 200)
            #expect(reply.headers.first(name: "Content-Type") == "text/event-stream")
            let parsed = Self.events(reply.text)
            #expect(parsed.data.last == "[DONE]")
            let chunks = Self.chunks(reply)
            #expect(chunks.allSatisfy { $0["object"] as? String == "chat.completion.chunk" })
            #expect(Set(chunks.compactMap { $0["id"] as? String }).count == 1)
            let deltas = chunks.compactMap { ($0["choices"] as? [[String: Any]])?.first?["delta"] as? [String: Any] }
            #expect(deltas.first?["role"] as? String == "assistant")
            let text = deltas.compactMap { $0["content"] as? String }.joined()
            #expect(text.hasPrefix("Here is your image."))
            let imageChunks = deltas.filter { $0["images"] != nil }
            #expect(imageChunks.count == 1, "each image in its own chunk")
            #expect(!text.contains("!["), "images once: not also as Markdown")
            #expect(deltas.contains { $0["reasoning_content"] != nil }, "thoughts stream as reasoning_content")
            let finishes = chunks.compactMap { ($0["choices"] as? [[String: Any]])?.first?["finish_reason"] as? String }
            #expect(finishes == ["stop"])
            let usageChunk = try #require(chunks.last)
            #expect((usageChunk["choices"] as? [Any])?.isEmpty == true)
            #expect(((usageChunk["usage"] as? [String: Any])?["completion_tokens_details"] as? [String: Int])?["image_tokens"] == 1120)
            #expect(chunks.dropLast().allSatisfy { $0["usage"] is NSNull })
        }
    }

    @Test func streamedFourKImageArrivesWhole() async throws {
        try await withGateway { gateway in
            let reply = try await Self.chat(gateway, ["model": "nano-banana-pro-4k", "stream": true, "modalities": ["image", "text"], "image_config": ["aspect_ratio": "16:9"], "messages": [["role": "user", "content": "huge"]]], key: gateway.geminiKey)
            let images = Self.chunks(reply).compactMap { (($0["choices"] as? [[String: Any]])?.first?["delta"] as? [String: Any])?["images"] as? [[String: Any]] }.flatMap { $0 }
            let url = try #require((images.first?["image_url"] as? [String: Any])?["url"] as? String)
            let prefix = "data:image/png;base64,"
            #expect(url.hasPrefix(prefix))
            let bytes = try #require(Data(base64Encoded: String(url.dropFirst(prefix.count))))
            #expect(Harness.pngSize(Array(bytes)) == (5504, 3072))
        }
    }

    /// Nano Banana 2.1 makes no thought images, so its streamed `data:` images go out as Google's
    /// stream arrives (`chunkedImages`): the same image as the reply built whole, in one chunk
    /// of each shape, and its signature restored on the next turn (the emulator, as Google,
    /// refuses a model turn without it).
    @Test(arguments: [true, false])
    func streamedImagesPassThroughAsTheyArrive(imagesField: Bool) async throws {
        try await withGateway { gateway in
            var body: [String: Any] = [
                "model": "nano-banana-2.1", "response_format": "b64_json", "image_config": ["aspect_ratio": "16:9", "image_size": "2K"],
                "messages": [["role": "user", "content": "a lighthouse"]],
            ]
            if imagesField { body["modalities"] = ["image", "text"] }
            let whole = try await Self.chat(gateway, body)
            #expect(whole.status == 200, "\(whole.text.prefix(300))")
            body["stream"] = true
            let reply = try await Self.chat(gateway, body)
            #expect(reply.status == 200)
            let deltas = Self.chunks(reply).compactMap { ($0["choices"] as? [[String: Any]])?.first?["delta"] as? [String: Any] }
            let urls: [String]
            if imagesField {
                urls = deltas.compactMap { $0["images"] as? [[String: Any]] }.flatMap { $0 }.compactMap { ($0["image_url"] as? [String: Any])?["url"] as? String }
                #expect(deltas.allSatisfy { ($0["content"] as? String)?.contains("data:") != true })
            } else {
                let content = deltas.compactMap { $0["content"] as? String }.joined()
                urls = content.components(separatedBy: "](").dropFirst().map { String($0.prefix { $0 != ")" }) }
                #expect(deltas.allSatisfy { $0["images"] == nil })
            }
            #expect(urls.count == 1)
            let prefix = "data:image/png;base64,"
            let streamed = try #require(urls.first.flatMap { $0.hasPrefix(prefix) ? Data(base64Encoded: String($0.dropFirst(prefix.count))) : nil })
            let message = Self.message(whole)
            let wholeURL = imagesField
                ? ((message["images"] as? [[String: Any]])?.first?["image_url"] as? [String: Any])?["url"] as? String
                : (message["content"] as? String)?.components(separatedBy: "](").dropFirst().first.map { String($0.prefix { $0 != ")" }) }
            let built = try #require(wholeURL.flatMap { Data(base64Encoded: String($0.dropFirst(prefix.count))) })
            #expect(Harness.pngSize(Array(streamed)).0 > 1000)
            #expect(Harness.pngSize(Array(streamed)) == Harness.pngSize(Array(built)))

            // The next turn sends the streamed image back with its signature.
            let content = imagesField
                ? [["type": "text", "text": "Here is your image."], ["type": "image_url", "image_url": ["url": urls[0]]]]
                : deltas.compactMap { $0["content"] as? String }.joined() as Any
            body["messages"] = [["role": "user", "content": "a lighthouse"], ["role": "assistant", "content": content], ["role": "user", "content": "at night"]]
            let next = try await Self.chat(gateway, body)
            #expect(next.status == 200, "\(next.text.prefix(400))")
            let modelTurn = try #require(gateway.recorder.all.last?.body.contents.first { $0.role == "model" })
            let imagePart = try #require(modelTurn.parts?.first { $0.inlineData != nil })
            #expect(String(decoding: Data(base64Encoded: imagePart.thoughtSignature ?? "") ?? Data(), as: UTF8.self).hasPrefix("emulator-signature:"))
        }
    }

    @Test func silentStreamsGetKeepAlives() async throws {
        try await withGateway(configure: { $0.keepAliveInterval = .milliseconds(200) }) { gateway in
            let reply = try await Self.chat(gateway, ["model": "nano-banana", "stream": true, "messages": [["role": "user", "content": "slow [emulate:slow=4000]"]]])
            let parsed = Self.events(reply.text)
            #expect(parsed.comments >= 1)
            // The comments come while Google is silent: before the first text of the answer.
            let firstComment = try #require(reply.text.range(of: ": keep-alive"))
            let firstText = try #require(reply.text.range(of: "Here is your image."))
            #expect(firstComment.lowerBound < firstText.lowerBound)
            #expect(parsed.data.last == "[DONE]")
        }
    }

    @Test func streamErrorsBeforeTheFirstByteAreHTTPErrors() async throws {
        try await withGateway { gateway in
            let reply = try await Self.chat(gateway, ["model": "nano-banana", "stream": true, "messages": [["role": "user", "content": "x [emulate:429]"]]])
            #expect(reply.status == 429)
            #expect(reply.headers.first(name: "Retry-After") == "27")
            #expect(reply.error["code"] as? String == "rate_limit_exceeded")
        }
    }

    /// Three turns of editing with the 3-pro model, the client sending back only what OpenAI's
    /// format holds. The emulator, like Google, rejects model turns whose signatures are missing.
    @Test(arguments: ["url", "b64_json"])
    func threeTurnProEditRestoresEverySignature(format: String) async throws {
        try await withGateway { gateway in
            var messages: [[String: Any]] = [["role": "user", "content": "an infographic about photosynthesis"]]
            for turn in 1...3 {
                let reply = try await Self.chat(gateway, ["model": "gemini-3-pro-image-preview", "response_format": format == "url" ? "url" : "b64_json", "messages": messages])
                #expect(reply.status == 200, "turn \(turn): \(reply.text.prefix(400))")
                let message = Self.message(reply)
                // The client keeps only role and content, as plain chat clients do.
                messages.append(["role": "assistant", "content": message["content"] as? String ?? ""])
                messages.append(["role": "user", "content": "turn \(turn + 1): translate the labels"])

                let sent = try #require(gateway.recorder.all.last).body.contents
                let modelTurns = sent.filter { $0.role == "model" }
                #expect(modelTurns.count == turn - 1)
                for content in modelTurns {
                    let parts = content.parts ?? []
                    #expect(parts.count == 2, "text and image")
                    for part in parts {
                        let signature = try #require(part.thoughtSignature)
                        #expect(signature != "context_engineering_is_the_way_to_go", "the real signature was restored")
                        #expect(String(decoding: Data(base64Encoded: signature) ?? Data(), as: UTF8.self).hasPrefix("emulator-signature:"))
                    }
                }
            }
        }
    }

    @Test func foreignHistoryUsesTheBypass() async throws {
        try await withGateway { gateway in
            let image = try await EditsTests.png(gateway)
            let dataURL = "data:image/png;base64," + Data(image).base64EncodedString()
            let reply = try await Self.chat(gateway, ["model": "nano-banana-pro", "messages": [
                ["role": "user", "content": "draw"],
                ["role": "assistant", "content": [["type": "text", "text": "made elsewhere"], ["type": "image_url", "image_url": ["url": dataURL]]]],
                ["role": "user", "content": "now make it blue"],
            ]])
            #expect(reply.status == 200, "\(reply.text.prefix(300))")
            let modelTurn = try #require(gateway.recorder.all.last?.body.contents.first { $0.role == "model" })
            #expect(modelTurn.parts?.allSatisfy { $0.thoughtSignature == "context_engineering_is_the_way_to_go" } == true)
            // (That the emulator, like Google, refuses model turns without signatures is tested in EmulatorRequestTests.)
        }
    }
}
