import AsyncHTTPClient
import Foundation
import NanoGateCore
import Testing
import GeminiEmulator
@testable import NanoGateServer
import NanoGateStorage
import Logging
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import Upstream

/// `POST /v1/images/generations` over real HTTP, against the emulator.
@Suite(.timeLimit(.minutes(10))) struct GenerationsTests {
    /// Model, size, aspect_ratio → the pixel size Google's tables promise.
    static let sizeCases: [(model: String, size: String?, ratio: String?, width: Int, height: Int)] = [
        ("nano-banana", nil, nil, 1024, 1024),
        ("nano-banana", "2:3", nil, 832, 1248),
        ("nano-banana", "1344x768", nil, 1344, 768),
        ("gemini-2.5-flash-image", "21:9", nil, 1536, 672),
        ("nano-banana-pro", "4k", "2:3", 3392, 5056),
        ("nano-banana-pro", "2K", "16:9", 2752, 1536),
        ("nano-banana-pro", nil, nil, 1024, 1024),
        ("gemini-3-pro-image-preview", "1k", "9:16", 768, 1376),
        ("gemini-3-pro-image", "3:2", nil, 1264, 848),
        ("nano-banana-pro-2k", "2:3", nil, 1696, 2528),
        ("nano-banana-pro-4k", "16:9", nil, 5504, 3072),
        // Nano Banana 2 (E3) where a project still has 3.1: 512, the four tall and wide ratios,
        // 2K/4K as the 1K cell ×2/×4.
        ("nano-banana-2", nil, nil, 1024, 1024),
        ("nano-banana-2", "512", "1:4", 256, 1024),
        ("gemini-3.1-flash-image", "0.5k", "16:9", 688, 384),
        ("nano-banana-2", "2k", "4:1", 4096, 1024),
        ("nano-banana-2", "1k", "1:8", 384, 3072),
        // Nano Banana 2.1 (F2; its table assumed to be NB2's): no 512, the 14 ratios.
        ("nano-banana-2.1", nil, nil, 1024, 1024),
        ("gemini-nano-banana-2.1", "2k", "1:8", 768, 6144),
        ("nano-banana-2.1", "1k", "21:9", 1584, 672),
    ]

    @Test func everyModelReturnsAPNGOfTheRequestedSize() async throws {
        try await withGateway(
            configure: { $0.catalog = .standard(flash31Upstream: "gemini-3.1-flash-image") },
            emulator: { $0.retiredModels.remove("gemini-3.1-flash-image") }
        ) { gateway in
            for item in Self.sizeCases {
                var fields = [#""model":"\#(item.model)""#, #""prompt":"a banana""#, #""response_format":"b64_json""#]
                if let size = item.size { fields.append(#""size":"\#(size)""#) }
                if let ratio = item.ratio { fields.append(#""aspect_ratio":"\#(ratio)""#) }
                let reply = try await gateway.generate("{\(fields.joined(separator: ","))}")
                #expect(reply.status == 200, "\(item): \(reply.text.prefix(300))")
                let bytes = try await gateway.imageBytes(reply)
                let size = Harness.pngSize(bytes)
                #expect(size == (item.width, item.height), "\(item)")
                #expect(reply.json["created"] is Int)
            }
        }
    }

    @Test func whatReachesGoogleIsGooglesSpelling() async throws {
        try await withGateway { gateway in
            _ = try await gateway.generate(#"{"model":"nano-banana-pro","prompt":"p","size":"4k","aspect_ratio":"21:9"}"#)
            _ = try await gateway.generate(#"{"model":"nano-banana","prompt":"p","size":"832x1248"}"#)
            let calls = gateway.recorder.all
            #expect(calls.count == 2)
            #expect(calls[0].model == "gemini-3-pro-image", "the spec's pro names go to Google's GA id")
            #expect(calls[0].body.generationConfig?.imageConfig == .init(aspectRatio: "21:9", imageSize: "4K"))
            #expect(calls[0].body.generationConfig?.candidateCount == nil)
            #expect(calls[1].model == "gemini-2.5-flash-image")
            #expect(calls[1].body.generationConfig?.imageConfig == .init(aspectRatio: "2:3", imageSize: nil))
            #expect(calls.allSatisfy { $0.apiKey == "google-key-1" })
        }
    }

    @Test func upstreamModelIDsComeFromConfiguration() async throws {
        try await withGateway(configure: { $0.catalog = .standard(flashUpstream: "gemini-2.5-flash-image-renamed", flashFallback: "") }) { gateway in
            // The emulator does not know the renamed id, as Google would not: without a fallback the operator sees a clear 502.
            let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"p"}"#)
            #expect(reply.status == 502)
            #expect(reply.error["code"] as? String == "upstream_model_not_found")
            #expect(gateway.recorder.all.first?.model == "gemini-2.5-flash-image-renamed")
            #expect(try await gateway.usageRows().first?.costMicroUSD == 0, "a failed call costs nothing")
        }
    }

    /// Google retires image models every few months: the 2.5 names go on to Nano Banana 2.1
    /// (its 1K cell for the ratio), at 2.1's prices, and later requests skip the dead id.
    @Test func aRetiredModelIsServedByItsFallback() async throws {
        try await withGateway(emulator: { $0.retiredModels.insert("gemini-2.5-flash-image") }) { gateway in
            let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"p","size":"2:3","response_format":"b64_json"}"#)
            #expect(reply.status == 200, "\(reply.text.prefix(300))")
            #expect(reply.headers.first(name: "X-NanoGate-Upstream-Model") == "gemini-nano-banana-2.1")
            #expect(Harness.pngSize(try await gateway.imageBytes(reply)) == (848, 1264), "2.1's 1K cell for 2:3, not 2.5's 832x1248")
            #expect(reply.json["size"] as? String == "848x1264")
            #expect((reply.usage["output_tokens_details"] as? [String: Int])?["image_tokens"] == 1120)
            #expect(gateway.recorder.all.map(\.model) == ["gemini-2.5-flash-image", "gemini-nano-banana-2.1"])
            #expect(gateway.recorder.all.last?.body.generationConfig?.imageConfig == .init(aspectRatio: "2:3", imageSize: nil))

            let second = try await gateway.generate(#"{"model":"gemini-2.5-flash-image","prompt":"p"}"#)
            #expect(second.status == 200)
            #expect(gateway.recorder.all.map(\.model).suffix(1) == ["gemini-nano-banana-2.1"], "the retired id is remembered")
            // Costed at 2.1's prices: its image tokens at $30/1M, its text at $1.50 / $7.50.
            let rows = try await gateway.usageRows()
            let image = try #require(rows.first { $0.status == 200 })
            #expect(image.costMicroUSD == Pricing.costMicroUSD(
                ImageUsage(
                    inputTokens: image.inputTokens, inputTokensDetails: .init(imageTokens: image.inputImageTokens, textTokens: image.inputTextTokens),
                    outputTokens: image.outputTokens, outputTokensDetails: .init(imageTokens: image.outputImageTokens, textTokens: image.outputTextTokens),
                    totalTokens: image.totalTokens
                ),
                prices: ModelFamily.flash21.googlePrices, multiplierPPM: 1_000_000
            ), "\(rows)")
        }
    }

    /// Two channels: a new project's (refused 2.5) and an old one's (still served 2.5). Each
    /// serves `nano-banana` as it can: the refusal moves the request to the channel that serves
    /// 2.5, is remembered for that channel only, and never retires 2.5 for everyone.
    @Test func eachChannelServesTheModelAsItCan() async throws {
        try await withGateway(
            googleKeys: [], emulatorKeys: ["new-project", "old-project"],
            configure: {
                $0.upstream.channels = [
                    ChannelConfiguration(name: "new", kind: .gemini, baseURL: $0.upstream.baseURL, apiKeys: ["new-project"], priority: 2),
                    ChannelConfiguration(name: "old", kind: .gemini, baseURL: $0.upstream.baseURL, apiKeys: ["old-project"], priority: 1),
                ]
            },
            emulator: { $0.newProjectKeys = ["new-project"] }
        ) { gateway in
            let first = try await gateway.generate(#"{"model":"nano-banana","prompt":"p","response_format":"b64_json"}"#)
            #expect(first.status == 200 && first.headers.first(name: "X-NanoGate-Upstream-Model") == "gemini-2.5-flash-image", "\(first.text.prefix(300))")
            #expect(gateway.recorder.all.map(\.apiKey) == ["new-project", "old-project"], "refused by the new project, served by the old")
            let second = try await gateway.generate(#"{"model":"nano-banana","prompt":"p","response_format":"b64_json"}"#)
            #expect(second.status == 200 && gateway.recorder.all.last?.apiKey == "old-project")
            #expect(gateway.recorder.all.count == 3, "the new project's refusal is remembered for 2.5")
            // The new project's channel still serves everything else (it has the higher priority).
            let pro = try await gateway.generate(#"{"model":"nano-banana-pro","prompt":"p","response_format":"b64_json"}"#)
            #expect(pro.status == 200 && gateway.recorder.all.last?.apiKey == "new-project")
            let rows = try await gateway.usageRows()
            #expect(rows.filter { $0.status == 200 }.count == 3 && rows.allSatisfy { $0.upstreamModel != "gemini-nano-banana-2.1" })
        }
    }

    /// OpenAI's `reasoning_effort` is 2.1's thinking level (minimal/low → MINIMAL, medium →
    /// MEDIUM, high → HIGH) on images and chat, and a 400 naming it where a model has none.
    @Test func reasoningEffortIsTheThinkingLevel() async throws {
        try await withGateway { gateway in
            for (effort, level) in [("minimal", "MINIMAL"), ("low", "MINIMAL"), ("medium", "MEDIUM"), ("high", "HIGH")] {
                let reply = try await gateway.generate(#"{"model":"nano-banana-2.1","prompt":"p","reasoning_effort":"\#(effort)","response_format":"b64_json"}"#)
                #expect(reply.status == 200, "\(effort): \(reply.text.prefix(300))")
                #expect(gateway.recorder.all.last?.body.generationConfig?.thinkingConfig?.thinkingLevel == level, "\(effort)")
            }
            let chat = try await ChatTests.chat(gateway, ["model": "gemini-nano-banana-2.1", "reasoning_effort": "high", "messages": [["role": "user", "content": "draw"]]])
            #expect(chat.status == 200 && gateway.recorder.all.last?.body.generationConfig?.thinkingConfig?.thinkingLevel == "HIGH")
            let calls = gateway.recorder.all.count
            for body in [
                #"{"model":"nano-banana-pro","prompt":"p","reasoning_effort":"high"}"#, #"{"model":"nano-banana","prompt":"p","reasoning_effort":"low"}"#,
                #"{"model":"nano-banana-2.1","prompt":"p","reasoning_effort":"max"}"#,
            ] {
                let refused = try await gateway.generate(body)
                #expect(refused.status == 400 && refused.error["param"] as? String == "reasoning_effort", "\(body): \(refused.text.prefix(300))")
            }
            let chatRefused = try await ChatTests.chat(gateway, ["model": "nano-banana-pro", "reasoning_effort": "low", "messages": [["role": "user", "content": "draw"]]])
            #expect(chatRefused.status == 400 && chatRefused.error["param"] as? String == "reasoning_effort")
            #expect(gateway.recorder.all.count == calls, "refused before any upstream call")
        }
    }

    /// A new project's key is refused on 2.5 (403 naming the model, F1): the request goes down
    /// the chain to 2.1, the key stays in service, and a chain of several ids is tried in order.
    @Test func aModelRefusedToTheProjectGoesDownTheChain() async throws {
        try await withGateway(
            configure: { $0.catalog = .standard(flashFallback: "gemini-3.1-flash-image,gemini-nano-banana-2.1") },
            emulator: { $0.everyKeyIsNewProject = true }
        ) { gateway in
            let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"p","response_format":"b64_json"}"#)
            #expect(reply.status == 200, "\(reply.text.prefix(300))")
            #expect(reply.headers.first(name: "X-NanoGate-Upstream-Model") == "gemini-nano-banana-2.1")
            #expect(gateway.recorder.all.map(\.model) == ["gemini-2.5-flash-image", "gemini-3.1-flash-image", "gemini-nano-banana-2.1"])
            // The credential was not set aside: the pro names still answer on the same key.
            let pro = try await gateway.generate(#"{"model":"nano-banana-pro","prompt":"p","response_format":"b64_json"}"#)
            #expect(pro.status == 200 && gateway.recorder.all.last?.apiKey == "google-key-1")
            let rows = try await gateway.usageRows()
            #expect(rows.filter { $0.status == 200 }.count == 2 && rows.allSatisfy { $0.status == 200 }, "one row per request, each charged once")
        }
    }

    /// `nanogate models check` reads each channel's model list (every page): an id the list
    /// lacks is `not_listed`, the model answers with the next id of its chain, and the pool
    /// skips the missing id without a call.
    @Test func theModelCheckReadsEveryPageAndSkipsMissingIDs() async throws {
        try await withGateway(emulator: { $0.retiredModels.insert("gemini-2.5-flash-image"); $0.maxPageSize = 2 }) { gateway in
            var logger = Logger(label: "test")
            logger.logLevel = .critical
            let pool = UpstreamPool(configuration: gateway.configuration.upstream, logger: logger)
            let check = await ModelCheck.run(catalog: gateway.configuration.catalog, pool: pool, logger: logger)
            await pool.shutdown()
            let byName = Dictionary(uniqueKeysWithValues: check.lines.map { ($0.model, $0) })
            #expect(check.channels == ["gemini"])
            #expect(byName["nano-banana-pro"]?.links.first?.cells == [.listed], "found on a later page")
            #expect(byName["nano-banana-2"]?.links.first?.cells == [.listed], "2.1")
            #expect(byName["nano-banana"]?.links.map(\.cells) == [[.notListed], [.listed]])
            #expect(byName["nano-banana"]?.answeredBy == "gemini-nano-banana-2.1")
            let servable = check.lines.allSatisfy { $0.servable }
            #expect(servable)
            #expect(check.report.contains("not_listed") && check.listErrors.isEmpty, "\(check.report)")
            #expect(!pool.mayServe(model: "gemini-2.5-flash-image", aliases: ["nano-banana"]))
            #expect(pool.mayServe(model: "gemini-3-pro-image", aliases: ["nano-banana-pro"]))
        }
    }

    @Test func usageComesFromGeminiAndThoughtsAreDropped() async throws {
        try await withGateway { gateway in
            let reply = try await gateway.generate(#"{"model":"gemini-3-pro-image-preview","prompt":"a cat in a hat","size":"1k"}"#)
            #expect(reply.status == 200)
            #expect(reply.data.count == 1, "the interim thought image must not be returned")
            #expect(Harness.pngSize(try await gateway.imageBytes(reply)) == (1024, 1024))
            let usage = reply.usage
            let input = usage["input_tokens"] as! Int
            let output = usage["output_tokens"] as! Int
            #expect(usage["total_tokens"] as! Int == input + output)
            let outputDetails = usage["output_tokens_details"] as! [String: Int]
            #expect(outputDetails["image_tokens"] == 1120)
            #expect(outputDetails["text_tokens"]! > 0, "thought tokens are billed as text output")
            let inputDetails = usage["input_tokens_details"] as! [String: Int]
            #expect(inputDetails["text_tokens"] == input && inputDetails["image_tokens"] == 0)
        }
    }

    @Test func nFansOutAndSumsUsage() async throws {
        try await withGateway { gateway in
            let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"three bananas","n":3,"response_format":"b64_json"}"#)
            #expect(reply.status == 200)
            #expect(reply.data.count == 3)
            #expect(gateway.recorder.all.count == 3, "one upstream call per image")
            #expect((reply.usage["output_tokens_details"] as! [String: Int])["image_tokens"] == 3 * 1290)
            // n as a string, as form posts send it, works too.
            let two = try await gateway.generate(#"{"model":"nano-banana","prompt":"two","n":"2","response_format":"b64_json"}"#)
            #expect(two.data.count == 2)
        }
    }

    @Test func responseFormatFollowsTheRequestThenTheGroup() async throws {
        try await withGateway { gateway in
            let byDefaultGroup = try await gateway.generate(#"{"model":"nano-banana","prompt":"p"}"#, key: gateway.defaultKey)
            #expect(byDefaultGroup.data.first?["url"] is String)
            #expect(byDefaultGroup.data.first?["b64_json"] == nil)

            let byGeminiGroup = try await gateway.generate(#"{"model":"nano-banana","prompt":"p"}"#, key: gateway.geminiKey)
            #expect(byGeminiGroup.data.first?["b64_json"] is String)

            let askedURL = try await gateway.generate(#"{"model":"nano-banana-pro","prompt":"p","response_format":"url"}"#, key: gateway.geminiKey)
            #expect(askedURL.data.first?["url"] is String)

            let askedB64 = try await gateway.generate(#"{"model":"nano-banana","prompt":"p","response_format":"b64_json"}"#, key: gateway.defaultKey)
            #expect(askedB64.data.first?["b64_json"] is String)

            // The spec: gemini-2.5-flash-image (and the 3-pro id) only answer base64.
            for model in ["gemini-2.5-flash-image", "gemini-3-pro-image-preview"] {
                let alwaysB64 = try await gateway.generate(#"{"model":"\#(model)","prompt":"p","response_format":"url"}"#)
                #expect(alwaysB64.data.first?["b64_json"] is String, "\(model)")
                #expect(alwaysB64.data.first?["url"] == nil, "\(model)")
            }
        }
    }

    @Test func imageURLsServeTheImageAndRefuseTampering() async throws {
        try await withGateway { gateway in
            let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"p","size":"9:16","response_format":"url"}"#)
            let url = try #require(reply.data.first?["url"] as? String)
            #expect(url.hasPrefix(gateway.baseURL + "/v1/files/images/"))
            let image = try await gateway.get(url)
            #expect(image.status == 200)
            #expect(image.headers.first(name: "Content-Type") == "image/png")
            #expect(Harness.pngSize(Array(buffer: image.body)) == (768, 1344))

            // Another signature, another expiry, another file: never the image.
            let tamperedSignature = url.replacingOccurrences(of: "signature=", with: "signature=x")
            #expect(try await gateway.get(tamperedSignature).status == 403)
            let extended = url.replacingOccurrences(of: "expires=", with: "expires=9")
            #expect(try await gateway.get(extended).status == 403)
            let otherFile = url.replacingOccurrences(of: "/images/", with: "/images/0")
            #expect(try await gateway.get(otherFile).status == 403)
            let unsigned = String(url.prefix { $0 != "?" })
            let refused = try await gateway.get(unsigned)
            #expect(refused.status == 403)
            #expect(refused.error["code"] as? String == "invalid_signature")
        }
    }

    @Test func publicURLIsTheBaseOfImageURLs() async throws {
        try await withGateway(configure: { $0.publicURL = "https://img.example.com/" }) { gateway in
            let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"p"}"#)
            #expect((reply.data.first?["url"] as? String)?.hasPrefix("https://img.example.com/v1/files/images/") == true)
        }
    }

    @Test func expiredURLsAreGoneAndSwept() async throws {
        try await withGateway { gateway in
            let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"p"}"#)
            let url = try #require(reply.data.first?["url"] as? String)
            #expect(try await gateway.get(url).status == 200)

            // The same file, correctly signed, but with an expiry in the past (no sleeping on a busy machine).
            let name = try #require(URLComponents(string: url)?.path.split(separator: "/").last.map(String.init))
            let past = Int(Date().timeIntervalSince1970) - 10
            let signature = gateway.dependencies.signer.signature(name: name, expires: past)
            let expired = try await gateway.get("\(gateway.baseURL)/v1/files/images/\(name)?expires=\(past)&signature=\(signature)")
            #expect(expired.status == 410)
            #expect(expired.error["code"] as? String == "url_expired")

            // The sweeper removes files older than the TTL; their URLs then answer 404.
            let store = gateway.dependencies.imageStore
            let removed = try await store.sweep(olderThan: gateway.configuration.urlTTL, now: Date().addingTimeInterval(5 * 3600))
            #expect(removed == SweepResult(removed: 1, files: 0, bytes: 0))
            #expect(try FileManager.default.contentsOfDirectory(atPath: store.directory.path).isEmpty)
            #expect(try await gateway.get(url).status == 404)
        }
    }

    @Test func mislabelledJPEGIsServedAsJPEG() async throws {
        try await withGateway { gateway in
            let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"p [emulate:jpeg]","response_format":"url"}"#)
            let url = try #require(reply.data.first?["url"] as? String)
            #expect(url.contains(".jpg?"))
            let image = try await gateway.get(url)
            #expect(image.headers.first(name: "Content-Type") == "image/jpeg")
            #expect(Array(buffer: image.body).starts(with: [0xFF, 0xD8, 0xFF]))
        }
    }

    @Test func usageLogChargesSuccessesAndNothingForFailures() async throws {
        try await withGateway { gateway in
            _ = try await gateway.generate(#"{"model":"nano-banana","prompt":"ok","response_format":"b64_json"}"#)
            _ = try await gateway.generate(#"{"model":"nano-banana","prompt":"no [emulate:image_safety]"}"#)
            let key = try #require(try await gateway.dependencies.store.listKeys().first { $0.name == "test-default" })
            let log = try await gateway.dependencies.store.recentUsage(keyID: key.id, limit: 10)
            #expect(log.count == 2)
            let success = try #require(log.first { $0.status == 200 })
            #expect(success.images == 1)
            #expect(success.costMicroUSD >= 38_700, "1290 image tokens at $30/M plus input")
            let failure = try #require(log.first { $0.status != 200 })
            #expect(failure.costMicroUSD == 0)
            #expect(failure.errorCode == "content_policy_violation")
        }
    }
}
