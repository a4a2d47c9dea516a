import Foundation
import GeminiEmulator
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NanoGateCore
import Upstream
import NIOCore
import NIOFoundationCompat
import Testing

/// The emulator reads requests with its own parser of Google's documented format: it takes every
/// request fixture (`NanoGateCoreTests/Fixtures/requests`, written from wire-formats.md) and refuses
/// what Google refuses, in Google's words, so a misspelt or invented field cannot pass unnoticed.
@Suite(.timeLimit(.minutes(10))) struct EmulatorRequestTests {
    /// The request fixtures, shared with NanoGateCoreTests (read by path, not as a resource).
    static let fixtureDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("NanoGateCoreTests/Fixtures/requests")

    /// Every fixture's name without `.json`: `NAME.MODEL`.
    static let fixtureNames: [String] = ((try? FileManager.default.contentsOfDirectory(atPath: fixtureDirectory.path)) ?? [])
        .filter { $0.hasSuffix(".json") }.map { String($0.dropLast(".json".count)) }.sorted()

    /// One emulator for the suite, so rendered PNGs are made once per size.
    /// The fixtures' emulator: 3.1 served again (Google shut it down; its 512 fixture still checks the table).
    static let emulator: GeminiEmulator = {
        var configuration = EmulatorConfiguration(acceptedKeys: ["google-key"])
        configuration.retiredModels.remove("gemini-3.1-flash-image")
        return GeminiEmulator(configuration: configuration)
    }()

    static func fixtureText(_ name: String) throws -> String {
        try String(contentsOf: fixtureDirectory.appendingPathComponent(name + ".json"), encoding: .utf8)
    }

    /// The model id in a fixture's name (`edit-inline-data.gemini-2.5-flash-image` → `gemini-2.5-flash-image`).
    static func model(of name: String) -> String {
        String(name[name.index(after: name.firstIndex(of: ".")!)...])
    }

    /// What the emulator answered.
    struct Reply {
        var status: Int
        var body: ByteBuffer
        var json: [String: Any] { (try? JSONSerialization.jsonObject(with: Data(buffer: body))) as? [String: Any] ?? [:] }
        var error: [String: Any] { json["error"] as? [String: Any] ?? [:] }
        var message: String { error["message"] as? String ?? "" }
        var violations: [[String: Any]] {
            ((error["details"] as? [[String: Any]]) ?? []).flatMap { $0["fieldViolations"] as? [[String: Any]] ?? [] }
        }
        /// The final (non-thought) image parts' PNG sizes.
        var imageSizes: [(Int, Int)] {
            let candidates = json["candidates"] as? [[String: Any]] ?? []
            let parts = (candidates.first?["content"] as? [String: Any])?["parts"] as? [[String: Any]] ?? []
            return parts.filter { $0["thought"] as? Bool != true }.compactMap { part in
                guard let inline = part["inlineData"] as? [String: Any], let b64 = inline["data"] as? String, let bytes = Data(base64Encoded: b64) else { return nil }
                return Harness.pngSize(Array(bytes))
            }
        }
    }

    /// POSTs `body` to `:generateContent` of `model` on the emulator (in-process, no socket).
    static func post(_ body: String, model: String, emulator: GeminiEmulator = emulator) async throws -> Reply {
        let app = Application(router: emulator.router())
        return try await app.test(.router) { client in
            try await client.execute(
                uri: "/v1beta/models/\(model):generateContent", method: .post,
                headers: [HTTPField.Name("x-goog-api-key")!: "google-key", .contentType: "application/json"],
                body: ByteBuffer(string: body)
            ) { response in
                Reply(status: Int(response.status.code), body: response.body)
            }
        }
    }

    /// Pixels the fixtures must come back at, typed from wire-formats.md §A4 and E3 (not from either program's tables).
    static let expectedPixels: [String: (Int, Int)] = [
        "generate-text-to-image.gemini-2.5-flash-image": (832, 1248),  // 2:3 on 2.5
        "generate-4k.gemini-3-pro-image": (5504, 3072),  // 16:9 at 4K
        "edit-inline-data.gemini-2.5-flash-image": (1184, 864),  // no ratio: follows the 8×6 (4:3) input
        "multi-turn-signatures.gemini-3-pro-image": (2048, 2048),  // no ratio: the 8×8 image in history, at 2K
        "edit-snake-case.gemini-3-pro-image": (1200, 896),  // 4:3 at 1K
        "full-request-a2.gemini-3-pro-image": (2752, 1536),  // 16:9 at 2K
        "generate-512.gemini-3.1-flash-image": (256, 1024),  // 1:4 at 512
    ]

    @Test func theFixturesAreFound() {
        #expect(Self.fixtureNames.count >= 5)
        #expect(Set(Self.fixtureNames) == Set(Self.expectedPixels.keys), "every fixture has an expected size")
    }

    @Test(arguments: fixtureNames)
    func everyFixtureIsAccepted(name: String) async throws {
        let reply = try await Self.post(try Self.fixtureText(name), model: Self.model(of: name))
        #expect(reply.status == 200, "\(name): \(String(buffer: reply.body).prefix(400))")
        let expected = try #require(Self.expectedPixels[name])
        let sizes = reply.imageSizes
        #expect(sizes.count == 1 && sizes.first?.0 == expected.0 && sizes.first?.1 == expected.1, "\(name): \(sizes)")
    }

    @Test func theRecorderKeepsTheBodyAsSent() async throws {
        let recorder = EmulatorRecorder()
        let emulator = GeminiEmulator(configuration: .init(acceptedKeys: ["google-key"]), recorder: recorder)
        let name = "edit-snake-case.gemini-3-pro-image"
        let reply = try await Self.post(try Self.fixtureText(name), model: Self.model(of: name), emulator: emulator)
        #expect(reply.status == 200)
        let call = try #require(recorder.all.last)
        #expect(call.json["generation_config"] != nil && call.json["generationConfig"] == nil, "keys exactly as sent")
        let imageConfig = try #require(call.request?.generationConfig?.imageConfig)
        #expect(imageConfig.aspectRatio == "4:3" && imageConfig.imageSize == "1K", "the emulator's own reading")
        #expect(call.request?.inlineImages.count == 1)
        #expect(call.body.contents.count == 1, "the GeminiWire view is still there")
    }

    /// A fixture with one textual change, and what Google says about it.
    struct Mutation: Sendable, CustomTestStringConvertible {
        var fixture: String
        var find: String
        var replace: String
        /// Expected in the error message.
        var message: String
        /// Expected as `fieldViolations[0].field` (`""`: present without a field, i.e. at the top level; nil: no violations).
        var field: String?

        var testDescription: String { "\(find) → \(replace)" }
    }

    static let mutations: [Mutation] = [
        // Names: case-sensitive, unknown ones refused, in Google's wording and with proto paths.
        .init(fixture: "generate-4k.gemini-3-pro-image", find: #""imageConfig""#, replace: #""ImageConfig""#,
              message: #"Invalid JSON payload received. Unknown name "ImageConfig" at 'generation_config': Cannot find field."#, field: "generation_config"),
        .init(fixture: "generate-4k.gemini-3-pro-image", find: #""imageConfig""#, replace: #""imageConfiguration""#,
              message: #"Invalid JSON payload received. Unknown name "imageConfiguration" at 'generation_config': Cannot find field."#, field: "generation_config"),
        .init(fixture: "generate-4k.gemini-3-pro-image", find: #""imageSize""#, replace: #""size""#,
              message: #"Invalid JSON payload received. Unknown name "size" at 'generation_config.image_config': Cannot find field."#, field: "generation_config.image_config"),
        .init(fixture: "generate-4k.gemini-3-pro-image", find: #""imageSize": "4K""#, replace: #""imageSize": "4K", "personGeneration": "ALLOW_ALL""#,
              message: #"Unknown name "personGeneration" at 'generation_config.image_config': Cannot find field."#, field: "generation_config.image_config"),
        .init(fixture: "edit-inline-data.gemini-2.5-flash-image", find: #""mimeType""#, replace: #""mimetype""#,
              message: #"Unknown name "mimetype" at 'contents[0].parts[0].inline_data': Cannot find field."#, field: "contents[0].parts[0].inline_data"),
        .init(fixture: "edit-snake-case.gemini-3-pro-image", find: #""generation_config""#, replace: #""generationconfig""#,
              message: #"Invalid JSON payload received. Unknown name "generationconfig": Cannot find field."#, field: ""),
        .init(fixture: "full-request-a2.gemini-3-pro-image", find: #""safetySettings""#, replace: #""generation_config": {}, "safetySettings""#,
              message: "given twice", field: "generation_config"),
        // Types.
        .init(fixture: "generate-text-to-image.gemini-2.5-flash-image", find: #""generationConfig": {"#, replace: #""generationConfig": {"temperature": "hot","#,
              message: #"Invalid value at 'generation_config.temperature' (TYPE_FLOAT), "hot""#, field: "generation_config.temperature"),
        .init(fixture: "generate-text-to-image.gemini-2.5-flash-image", find: #""role": "user""#, replace: #""role": {"name": "user"}"#,
              message: #"Unknown name "role" at 'contents[0]': Starting an object on a scalar field."#, field: "contents[0]"),
        .init(fixture: "generate-4k.gemini-3-pro-image", find: #""aspectRatio": "16:9""#, replace: #""aspectRatio": ["16:9"]"#,
              message: #"Unknown name "aspectRatio" at 'generation_config.image_config': Proto field is not repeating, cannot start list."#, field: "generation_config.image_config"),
        .init(fixture: "generate-text-to-image.gemini-2.5-flash-image", find: #""IMAGE""#, replace: #""PICTURE""#,
              message: #"Invalid value at 'generation_config.response_modalities[1]' (type.googleapis.com/google.ai.generativelanguage.v1beta.GenerationConfig.Modality), "PICTURE""#,
              field: "generation_config.response_modalities[1]"),
        .init(fixture: "edit-inline-data.gemini-2.5-flash-image", find: #""data": "iVBOR"#, replace: #""data": "not base64! iVBOR"#,
              message: "Invalid value at 'contents[0].parts[0].inline_data.data' (TYPE_BYTES), Base64 decoding failed", field: "contents[0].parts[0].inline_data.data"),
        .init(fixture: "edit-inline-data.gemini-2.5-flash-image", find: #""text": "Put a tiny wizard hat on this cat""#, replace: #""text": "Put a hat on it", "inlineData": {"mimeType": "image/png", "data": "AAAA"}"#,
              message: "oneof field 'data' is already set", field: "contents[0].parts[1].data"),
        // Meaning: sizes, ratios, roles, MIME types, candidates (checked after parsing, no field violations).
        .init(fixture: "generate-4k.gemini-3-pro-image", find: #""4K""#, replace: #""4k""#,
              message: "image_config.image_size: invalid value 4k; use 1K, 2K or 4K", field: nil),
        .init(fixture: "full-request-a2.gemini-3-pro-image", find: #""2K""#, replace: #""512""#,
              message: "image_config.image_size: invalid value 512", field: nil),
        .init(fixture: "generate-text-to-image.gemini-2.5-flash-image", find: #""2:3""#, replace: #""2:1""#,
              message: "image_config.aspect_ratio: unsupported aspect ratio 2:1", field: nil),
        .init(fixture: "generate-4k.gemini-3-pro-image", find: #""16:9""#, replace: #""1:4""#,
              message: "image_config.aspect_ratio: unsupported aspect ratio 1:4", field: nil),
        .init(fixture: "generate-text-to-image.gemini-2.5-flash-image", find: #""aspectRatio": "2:3""#, replace: #""aspectRatio": "2:3", "imageSize": "1K""#,
              message: "image_config.image_size: not supported by this model", field: nil),
        .init(fixture: "multi-turn-signatures.gemini-3-pro-image", find: #""role": "model""#, replace: #""role": "assistant""#,
              message: "Please use a valid role: user, model.", field: nil),
        .init(fixture: "edit-inline-data.gemini-2.5-flash-image", find: #""image/png""#, replace: #""image/gif""#,
              message: "Unsupported MIME type: image/gif", field: nil),
        .init(fixture: "generate-text-to-image.gemini-2.5-flash-image", find: #""generationConfig": {"#, replace: #""generationConfig": {"candidateCount": 2,"#,
              message: "Multiple candidates is not enabled for models/gemini-2.5-flash-image", field: nil),
        .init(fixture: "edit-inline-data.gemini-2.5-flash-image", find: #""text": "Put a tiny wizard hat on this cat""#, replace: #""thought": false"#,
              message: "contents[0].parts[1].data: required oneof field 'data' must have one initialized field", field: nil),
    ]

    @Test(arguments: mutations)
    func mutatedFixturesAreRefusedAsGoogleWould(_ mutation: Mutation) async throws {
        let original = try Self.fixtureText(mutation.fixture)
        #expect(original.contains(mutation.find), "the mutation applies")
        let reply = try await Self.post(original.replacingOccurrences(of: mutation.find, with: mutation.replace), model: Self.model(of: mutation.fixture))
        #expect(reply.status == 400)
        #expect(reply.error["status"] as? String == "INVALID_ARGUMENT")
        #expect(reply.error["code"] as? Int == 400)
        #expect(reply.message.contains(mutation.message), "\(reply.message)")
        switch mutation.field {
        case nil:
            #expect(reply.violations.isEmpty)
        case "":
            #expect(reply.violations.count == 1 && reply.violations.first?["field"] == nil)
            #expect(reply.violations.first?["description"] as? String == reply.message)
        case let field?:
            #expect(reply.violations.first?["field"] as? String == field, "\(reply.violations)")
        }
    }

    @Test func aStringWhereAnObjectBelongsIsRefused() async throws {
        let reply = try await Self.post(#"{"contents":[{"role":"user","parts":[{"text":"a"}]}],"generationConfig":"IMAGE"}"#, model: "gemini-2.5-flash-image")
        #expect(reply.status == 400)
        #expect(reply.message == #"Invalid value at 'generation_config' (type.googleapis.com/google.ai.generativelanguage.v1beta.GenerationConfig), "IMAGE""#)
        let notJSON = try await Self.post(#"{"contents":"#, model: "gemini-2.5-flash-image")
        #expect(notJSON.status == 400 && notJSON.message.hasPrefix("Invalid JSON payload received."))
    }

    @Test func everyUnknownNameIsListed() async throws {
        let body = #"{"contents":[{"role":"user","parts":[{"text":"a","Text":"b"}]}],"generationConfig":{"response_modalities":["IMAGE"],"imageconfig":{}},"prompt":"x"}"#
        let reply = try await Self.post(body, model: "gemini-2.5-flash-image")
        #expect(reply.status == 400)
        #expect(reply.message.components(separatedBy: "\n").count == 3, "\(reply.message)")
        #expect(Set(reply.violations.map { $0["field"] as? String ?? "" }) == ["contents[0].parts[0]", "generation_config", ""])
    }

    /// What Google's parser takes although the gateway never sends it, so the emulator is not stricter than Google.
    @Test(arguments: [
        #"{"contents":[{"role":"user","parts":[{"text":"a banana"}]}],"generationConfig":{"responseModalities":["Text","image"]}}"#,  // enum case (Google's samples send "Image")
        #"{"contents":[{"parts":[{"text":"a banana"}]}]}"#,  // no role on a lone user turn (§A2)
        #"{"contents":[{"role":"user","parts":{"text":"a banana"}}]}"#,  // a single value for a repeated field
        #"{"contents":[{"role":"user","parts":[{"text":"a banana"}]}],"generationConfig":{"temperature":null,"candidateCount":"1","topP":0.9}}"#,  // null, int as string
        #"{"contents":[{"role":"user","parts":[{"text":"a banana"}]}],"systemInstruction":{"parts":[{"text":"be brief"}]},"safetySettings":[{"category":"HARM_CATEGORY_HARASSMENT","threshold":"OFF"}]}"#,
    ])
    func whatGoogleAlsoAcceptsIsAccepted(body: String) async throws {
        let reply = try await Self.post(body, model: "gemini-2.5-flash-image")
        #expect(reply.status == 200, "\(reply.message)")
    }

    @Test func modelTurnsNeedTheSignaturesGoogleIssued() async throws {
        let name = "multi-turn-signatures.gemini-3-pro-image"
        let tree = try #require(try JSONSerialization.jsonObject(with: Data(Self.fixtureText(name).utf8)) as? [String: Any])
        func withModelParts(_ change: (inout [[String: Any]]) -> Void) throws -> String {
            var contents = try #require(tree["contents"] as? [[String: Any]])
            var parts = try #require(contents[1]["parts"] as? [[String: Any]])
            change(&parts)
            contents[1]["parts"] = parts
            var copy = tree
            copy["contents"] = contents
            return String(decoding: try JSONSerialization.data(withJSONObject: copy), as: UTF8.self)
        }
        let unsigned = try withModelParts { $0[0]["thoughtSignature"] = nil }
        let refused = try await Self.post(unsigned, model: Self.model(of: name))
        #expect(refused.status == 400)
        #expect(refused.message == "Text part is missing a thought_signature in content position 2, part position 1.")

        let forged = try withModelParts { $0[1]["thoughtSignature"] = Data("not from Google".utf8).base64EncodedString() }
        let corrupted = try await Self.post(forged, model: Self.model(of: name))
        #expect(corrupted.status == 400)
        #expect(corrupted.message == "Corrupted thought signature in content position 2, part position 2.")

        let snake = try withModelParts { parts in
            parts[0]["thought_signature"] = parts[0].removeValue(forKey: "thoughtSignature")
        }
        #expect(try await Self.post(snake, model: Self.model(of: name)).status == 200, "thought_signature is the same field")
    }

    /// The gateway's catalog (NanoGateCore) and the emulator's table (typed from Google's docs) agree cell for cell.
    @Test func theGatewaysTablesMatchTheEmulators() {
        for (family, google) in [(ModelFamily.flash25, GoogleImageModel.flash25), (.pro3, .pro3), (.flash31, .flash31), (.flash21, .flash21)] {
            #expect(Set(family.aspectRatios.map(\.rawValue)) == Set(google.aspectRatios), "\(family) ratios")
            #expect(Set(family.imageSizes.map(\.rawValue)) == Set(google.imageSizes), "\(family) sizes")
            #expect(family.defaultSize?.rawValue == google.defaultSize, "\(family) default size")
            let sizes: [ImageSize?] = family.imageSizes.isEmpty ? [nil] : family.imageSizes
            for ratio in family.aspectRatios {
                for size in sizes {
                    let ours = family.pixels(ratio, size)
                    let theirs = google.pixels(ratio: ratio.rawValue, size: size?.rawValue)
                    #expect(theirs?.width == ours.width && theirs?.height == ours.height, "\(family) \(ratio.rawValue) \(size?.rawValue ?? "-"): \(ours) vs \(theirs.map(\.description) ?? "none")")
                    #expect(family.outputImageTokens(size) == google.outputImageTokens(size: size?.rawValue), "\(family) \(size?.rawValue ?? "-") tokens")
                }
            }
        }
    }

    /// Google shut the preview ids down on 2026-06-25 (E1) and 3.1 on 2026-10-29 (F1): the
    /// emulator answers them as Google does now, and leaves them out of its model list, which it
    /// pages like Google; 2.1 is served and listed.
    @Test func retiredIdsAnswerNotFoundAndAreNotListed() async throws {
        let body = try Self.fixtureText("generate-4k.gemini-3-pro-image")
        let retired = try await Self.post(body, model: "gemini-3-pro-image-preview")
        #expect(retired.status == 404)
        #expect(retired.error["status"] as? String == "NOT_FOUND")
        let shutDown = try await Self.post(#"{"contents":[{"parts":[{"text":"p"}]}]}"#, model: "gemini-3.1-flash-image", emulator: GeminiEmulator(configuration: .init(acceptedKeys: ["google-key"])))
        #expect(shutDown.status == 404)

        var configuration = EmulatorConfiguration()
        configuration.maxPageSize = 2
        let app = Application(router: GeminiEmulator(configuration: configuration).router())
        let ids = try await app.test(.router) { client -> [String] in
            var ids: [String] = []
            var token = ""
            for _ in 0..<10 {
                let page = try await client.execute(uri: "/v1beta/models?pageSize=1000" + (token.isEmpty ? "" : "&pageToken=\(token)"), method: .get)
                let json = try JSONSerialization.jsonObject(with: Data(buffer: page.body)) as? [String: Any] ?? [:]
                ids += (json["models"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String }
                guard let next = json["nextPageToken"] as? String else { break }
                token = next
            }
            return ids
        }
        #expect(ids.contains("models/gemini-3-pro-image") && ids.contains("models/gemini-nano-banana-2.1") && ids.contains("models/gemini-2.5-flash-image"))
        #expect(!ids.contains("models/gemini-3-pro-image-preview") && !ids.contains("models/gemini-3.1-flash-image"))
        #expect(Set(ids).count == ids.count, "pages do not repeat models")
    }
}
