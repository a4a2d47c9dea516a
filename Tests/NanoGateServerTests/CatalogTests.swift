import Foundation
import GeminiEmulator
import NanoGateCore
import Upstream
@testable import NanoGateServer
import NIOCore
import NIOHTTP1
import NanoGateStorage
import NIOFoundationCompat
import Testing

/// Issue 9: the catalog as configuration, the true output format, image streaming, and chat
/// images sent and received once.
@Suite(.timeLimit(.minutes(10))) struct CatalogTests {
    // MARK: Configuration file

    @Test func aCatalogFileAddsChangesAndDisablesModels() throws {
        let text = """
            port: 9090
            gemini_api_key: [k1, k2]
            models:
              - name: my-banana
                like: nano-banana
                upstream: gemini-2.5-flash-image
                fallback: gemini-3.1-flash-image
                url_output: false
                prices: {input: 0.5, output_image: 40}
              - name: gemini-2.5-flash-image
                enabled: false
              - name: tall-banana
                family: flash31
                upstream: gemini-3.1-flash-image
                size: 2K
            """
        let contents = try ConfigurationFile.parse(text, source: "test.yaml")
        #expect(contents.settings == ["NANOGATE_PORT": "9090", "GEMINI_API_KEY": "k1,k2"])
        let catalog = try ModelCatalog.standard().applying(contents.models)
        let mine = try #require(catalog.model(named: "my-banana"))
        #expect(mine.family == .flash25 && mine.sizeMode == .ratioOrPixels && mine.maxInputImages == 6)
        #expect(!mine.allowsURLOutput)
        #expect(mine.prices == TokenPrices(inputPerMillion: 0.5, outputTextPerMillion: 2.5, outputImagePerMillion: 40))
        #expect(catalog.model(named: "gemini-2.5-flash-image") == nil, "turned off")
        #expect(!catalog.names.contains("gemini-2.5-flash-image"))
        #expect(catalog.model(named: "tall-banana")?.sizeMode == .ratioAtFixedTier(.twoK))
        #expect(catalog.names.first == "nano-banana", "built-in models keep their place; new ones come last")
    }

    @Test func exportReadsBackUnchanged() throws {
        let standard = ModelCatalog.standard()
        let exported = try ConfigurationFile.export(standard)
        #expect(exported.contains("name: nano-banana-2"))
        let reread = try ModelCatalog.standard(flashUpstream: "other", proUpstream: "other", flash31Upstream: "other", flashFallback: "")
            .applying(try ConfigurationFile.parse(exported, source: "export").models)
        #expect(reread == standard)
        // JSON is YAML too.
        let json = #"{"models": [{"name": "j", "like": "nano-banana-pro", "enabled": true}]}"#
        #expect(try ModelCatalog.standard().applying(try ConfigurationFile.parse(json, source: "json").models).model(named: "j")?.family == .pro3)
    }

    @Test(arguments: [
        ("models: [{name: x, like: nope}]", "like: nope"),
        ("models: [{name: x}]", "not a built-in model"),
        ("models: [{name: nano-banana, upsteam: y}]", "unknown key 'upsteam'"),
        ("portt: 1", "unknown setting 'portt'"),
        ("models: [{name: x, like: nano-banana, upstream: 'a/b'}]", "not a Google model id"),
        ("models: [{name: x, like: nano-banana-pro, size: ratio}]", "size: ratio"),
        ("models: [{name: x, family: flash99, upstream: y}]", "could not be read"),
        ("models: [{name: x, like: nano-banana, fallback: mystery-model}]", "fallback_family"),
    ])
    func brokenFilesAreErrorsNamingTheEntry(text: String, expected: String) {
        #expect {
            let contents = try ConfigurationFile.parse(text, source: "bad.yaml")
            _ = try ModelCatalog.standard().applying(contents.models)
        } throws: { error in
            "\(error)".contains(expected)
        }
    }

    @Test func theEnvironmentOverridesTheFile() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("nanogate-\(UUID().uuidString).yaml").path
        try "port: 9090\nhost: 0.0.0.0\nmodels: [{name: extra, like: nano-banana-2}]\n".write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let configuration = try ConfigurationFile.configuration(path: path, environment: ["NANOGATE_PORT": "7070"])
        #expect(configuration.port == 7070)
        #expect(configuration.host == "0.0.0.0")
        #expect(configuration.catalog.model(named: "extra")?.family == .flash21)
    }

    @Test func aModelFromTheFileIsServed() async throws {
        let contents = try ConfigurationFile.parse("models: [{name: wide-banana, like: nano-banana-2, size: 2K}]", source: "t")
        try await withGateway(configure: { $0.catalog = try! $0.catalog.applying(contents.models) }) { gateway in
            let reply = try await gateway.generate(#"{"model":"wide-banana","prompt":"p","size":"8:1","response_format":"b64_json"}"#)
            #expect(reply.status == 200, "\(reply.text.prefix(300))")
            #expect(Harness.pngSize(try await gateway.imageBytes(reply)) == (6144, 768))
            #expect(gateway.recorder.all.last?.body.generationConfig?.imageConfig == .init(aspectRatio: "8:1", imageSize: "2K"))
        }
    }

    /// `max_input_images: 0` turns edits off for a model: any input image is refused before use.
    @Test func aModelWithoutInputImagesRefusesEdits() async throws {
        let contents = try ConfigurationFile.parse("models: [{name: text-only, like: nano-banana, max_input_images: 0}]", source: "t")
        try await withGateway(configure: { $0.catalog = try! $0.catalog.applying(contents.models) }) { gateway in
            let reply = try await gateway.post("/v1/images/edits", json: #"{"model":"text-only","prompt":"p","images":[{"image_url":"data:image/png;base64,AAAA"}]}"#)
            #expect(reply.status == 400 && reply.error["param"] as? String == "image" && reply.error["code"] as? String == "too_many_images", "\(reply.text)")
            #expect(gateway.recorder.all.isEmpty)
        }
    }

    // MARK: OpenAI image parameters

    /// Gemini labels JPEG bytes `image/png` at times: the response says what the bytes are,
    /// URLs are served with the real type, and `output_format` converts with a real codec.
    @Test func theTrueOutputFormatIsReportedAndConverted() async throws {
        try await withGateway { gateway in
            let jpeg = try await gateway.generate(#"{"model":"nano-banana","prompt":"p [emulate:jpeg]","size":"3:2","response_format":"b64_json"}"#)
            #expect(jpeg.status == 200)
            #expect(jpeg.json["output_format"] as? String == "jpeg")
            #expect(jpeg.json["size"] as? String == "1248x832")
            #expect(jpeg.json["quality"] as? String == "medium")
            #expect(jpeg.json["background"] as? String == "opaque")
            let jpegBytes = try await gateway.imageBytes(jpeg)
            #expect(jpegBytes.starts(with: [0xFF, 0xD8, 0xFF]))

            let png = try await gateway.generate(#"{"model":"nano-banana","prompt":"p [emulate:jpeg]","size":"3:2","output_format":"png","response_format":"url"}"#)
            #expect(png.status == 200, "\(png.text.prefix(300))")
            #expect(png.json["output_format"] as? String == "png")
            let url = try #require(png.data.first?["url"] as? String)
            #expect(url.contains(".png?"))
            let served = try await gateway.get(url)
            #expect(served.headers.first(name: "Content-Type") == "image/png")
            #expect(Harness.pngSize(Array(buffer: served.body)) == (1248, 832), "converted, same pixels")

            let small = try await gateway.generate(#"{"model":"nano-banana","prompt":"p","output_format":"jpeg","output_compression":10,"response_format":"b64_json"}"#)
            let large = try await gateway.generate(#"{"model":"nano-banana","prompt":"p","output_format":"jpg","output_compression":95,"response_format":"b64_json"}"#)
            let smallBytes = try await gateway.imageBytes(small)
            let largeBytes = try await gateway.imageBytes(large)
            #expect(smallBytes.starts(with: [0xFF, 0xD8]) && largeBytes.starts(with: [0xFF, 0xD8]))
            #expect(smallBytes.count < largeBytes.count, "output_compression is the JPEG quality")
            #expect(ImageConverter.dimensions(of: smallBytes) == PixelSize(1024, 1024), "libjpeg reads the converted size")
        }
    }

    @Test func everyOpenAIParameterIsAnswered() async throws {
        // Nano Banana 2 where a project still has 3.1 (its 512 tier is what `quality: low` picks).
        try await withGateway(
            configure: { $0.catalog = .standard(flash31Upstream: "gemini-3.1-flash-image") },
            emulator: { $0.retiredModels.remove("gemini-3.1-flash-image") }
        ) { gateway in
            let accepted = try await gateway.generate(
                #"{"model":"nano-banana-2","prompt":"p","quality":"low","background":"opaque","moderation":"low","style":"vivid","user":"u-1","input_fidelity":"high","size":"auto","response_format":"b64_json"}"#
            )
            #expect(accepted.status == 200, "\(accepted.text.prefix(300))")
            #expect(accepted.json["size"] as? String == "512x512", "quality low → Nano Banana 2's 512 tier")
            #expect(accepted.json["quality"] as? String == "low")
            for (body, param) in [
                (#""background":"transparent""#, "background"), (#""quality":"ultra""#, "quality"), (#""output_format":"gif""#, "output_format"),
                (#""output_compression":101"#, "output_compression"), (#""moderation":"none""#, "moderation"), (#""style":"anime""#, "style"),
                (#""partial_images":4"#, "partial_images"), (#""size":"1000x300""#, "size"), (#""input_fidelity":"max""#, "input_fidelity"),
            ] {
                let reply = try await gateway.generate(#"{"model":"nano-banana-pro","prompt":"p",\#(body)}"#)
                #expect(reply.status == 400, "\(body)")
                #expect(reply.error["param"] as? String == param, "\(body): \(reply.text)")
            }
            #expect(gateway.recorder.all.count == 1, "refused requests never reach Google")
        }
    }

    /// `stream: true`: OpenAI's image events, Gemini 3 Pro's interim thought image as the partial.
    @Test func imagesStreamAsOpenAIEvents() async throws {
        try await withGateway { gateway in
            let reply = try await gateway.generate(#"{"model":"nano-banana-pro","prompt":"p","stream":true,"partial_images":2,"size":"16:9"}"#)
            #expect(reply.status == 200)
            #expect(reply.headers.first(name: "Content-Type") == "text/event-stream")
            let events = Self.sse(reply.text)
            #expect(events.map(\.event) == ["image_generation.partial_image", "image_generation.completed"])
            let partial = events[0].json
            #expect(partial["type"] as? String == "image_generation.partial_image")
            #expect(partial["partial_image_index"] as? Int == 0)
            let completed = events[1].json
            let bytes = try #require(Data(base64Encoded: completed["b64_json"] as? String ?? ""))
            #expect(Harness.pngSize(Array(bytes)) == (1376, 768))
            #expect(completed["size"] as? String == "1376x768")
            #expect(((completed["usage"] as? [String: Any])?["output_tokens_details"] as? [String: Int])?["image_tokens"] == 1120)
            let rows = try await gateway.usageRows()
            #expect(rows.first?.images == 1 && rows.first?.status == 200)

            let failed = try await gateway.generate(#"{"model":"nano-banana","prompt":"p [emulate:image_safety]","stream":true}"#)
            let failure = Self.sse(failed.text)
            #expect(failure.map(\.event) == ["error"])
            #expect((failure.first?.json["error"] as? [String: Any])?["code"] as? String == "content_policy_violation")
            #expect(try await gateway.usageRows().first?.costMicroUSD == 0)
        }
    }

    static func sse(_ text: String) -> [(event: String, json: [String: Any])] {
        text.components(separatedBy: "\n\n").compactMap { block -> (String, [String: Any])? in
            let lines = block.split(separator: "\n")
            guard let event = lines.first(where: { $0.hasPrefix("event: ") }), let data = lines.first(where: { $0.hasPrefix("data: ") }) else { return nil }
            let json = (try? JSONSerialization.jsonObject(with: Data(data.dropFirst(6).utf8))) as? [String: Any] ?? [:]
            return (String(event.dropFirst(7)), json)
        }
    }

    // MARK: Chat history

    /// The SDK's message object sent back carries each image twice (`images` and Markdown): it
    /// goes upstream once. Open WebUI's own file URLs in assistant turns are dropped, not a 400.
    @Test func chatHistorySendsEachImageOnceAndSkipsUnreadableOnes() async throws {
        try await withGateway { gateway in
            let first = try await ChatTests.chat(gateway, ["model": "nano-banana", "modalities": ["image", "text"], "messages": [["role": "user", "content": "draw"]]])
            let url = try #require(((ChatTests.message(first)["images"] as? [[String: Any]])?.first?["image_url"] as? [String: Any])?["url"] as? String)
            let replayed: [String: Any] = [
                "role": "assistant", "content": "Here it is.\n\n![image](\(url))",
                "images": [["type": "image_url", "image_url": ["url": url]]],
            ]
            let second = try await ChatTests.chat(gateway, ["model": "nano-banana", "messages": [
                ["role": "user", "content": "draw"], replayed, ["role": "user", "content": "again"],
            ]])
            #expect(second.status == 200, "\(second.text.prefix(300))")
            let parts = gateway.recorder.all.last?.body.contents.flatMap { $0.parts ?? [] } ?? []
            #expect(parts.filter { $0.inlineData != nil }.count == 1, "one image upstream, not two")

            let webui = try await ChatTests.chat(gateway, ["model": "nano-banana", "messages": [
                ["role": "user", "content": "draw"], ["role": "assistant", "content": "![image](/api/v1/files/abc/content)"], ["role": "user", "content": "again"],
            ]])
            #expect(webui.status == 200, "\(webui.text.prefix(300))")
            #expect(webui.headers.first(name: "X-NanoGate-Dropped-Images") == "1")
            let user = try await ChatTests.chat(gateway, ["model": "nano-banana", "messages": [
                ["role": "user", "content": [["type": "text", "text": "edit"], ["type": "image_url", "image_url": ["url": "/api/v1/files/abc/content"]]]],
            ]])
            #expect(user.status == 400, "a user's own image must arrive")
        }
    }

    /// A multi-turn chat on a retired 2.5 id goes to Nano Banana 2.1, which (like Google) refuses
    /// model turns without thought signatures: the history gets Google's bypass value.
    @Test func multiTurnChatSurvivesTheFallback() async throws {
        try await withGateway(emulator: { $0.retiredModels.insert("gemini-2.5-flash-image") }) { gateway in
            // History the gateway never produced (no stored signature to restore).
            let content = "An answer another gateway wrote."
            let second = try await ChatTests.chat(gateway, ["model": "nano-banana", "messages": [
                ["role": "user", "content": "draw"], ["role": "assistant", "content": content], ["role": "user", "content": "now in blue"],
            ]])
            #expect(second.status == 200, "\(second.text.prefix(300))")
            #expect(second.headers.first(name: "X-NanoGate-Upstream-Model") == "gemini-nano-banana-2.1")
            let model = gateway.recorder.all.last?.body.contents.first { $0.role == "model" }
            #expect(model?.parts?.first?.thoughtSignature == ImageTranslation.bypassSignature)
        }
    }
}
