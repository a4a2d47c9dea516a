import Foundation
import NanoGateCore
import Upstream
import NIOCore
import NIOFoundationCompat
import Testing

/// What the gateway sends Google, held against request fixtures written from Google's documented
/// format (`Fixtures/requests/README.md`): the same key paths, spelled the same way.
@Suite struct RequestFixtureTests {
    /// A fixture as plain JSON objects.
    static func fixture(_ name: String) throws -> [String: Any] {
        let url = try #require(Bundle.module.url(forResource: "Fixtures/requests/\(name)", withExtension: "json"))
        return try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
    }

    /// The request exactly as the gateway puts it on the wire (spliced base64 included), read back as plain JSON.
    static func wire(_ request: GeminiWire.Request) throws -> [String: Any] {
        let joined = try SplicedJSON.encodeJoined(request)
        return try #require(try JSONSerialization.jsonObject(with: Data(buffer: joined)) as? [String: Any])
    }

    /// Every key path of a JSON tree (`generationConfig.imageConfig.aspectRatio`, `contents[].parts[].text`);
    /// array elements are merged, so the order of parts does not matter.
    static func keyPaths(_ value: Any, under prefix: String = "") -> Set<String> {
        if let object = value as? [String: Any] {
            return object.reduce(into: Set<String>()) { paths, member in
                let path = prefix.isEmpty ? member.key : prefix + "." + member.key
                paths.insert(path)
                paths.formUnion(keyPaths(member.value, under: path))
            }
        }
        if let array = value as? [Any] {
            return array.reduce(into: Set<String>()) { $0.formUnion(keyPaths($1, under: prefix + "[]")) }
        }
        return []
    }

    static func value(_ tree: [String: Any], _ path: String) -> Any? {
        path.split(separator: ".").reduce(tree as Any?) { ($0 as? [String: Any])?[String($1)] }
    }

    @Test(arguments: [
        ("generate-text-to-image.gemini-2.5-flash-image", ImageSpec(aspectRatio: .portrait2x3, imageSize: nil), ModelFamily.flash25),
        ("generate-4k.gemini-3-pro-image", ImageSpec(aspectRatio: .landscape16x9, imageSize: .fourK), ModelFamily.pro3),
    ])
    func generationHasTheFixturesKeys(name: String, spec: ImageSpec, family: ModelFamily) throws {
        let fixture = try Self.fixture(name)
        let sent = try Self.wire(ImageTranslation.geminiRequest(prompt: "a prompt", spec: spec, family: family))
        #expect(Self.keyPaths(sent).sorted() == Self.keyPaths(fixture).sorted())
        // The generation settings are equal value for value, not only in their names.
        let sentConfig = try #require(sent["generationConfig"] as? NSDictionary)
        let fixtureConfig = try #require(fixture["generationConfig"] as? NSDictionary)
        #expect(sentConfig.isEqual(fixtureConfig), "\(sentConfig) vs \(fixtureConfig)")
        #expect(Self.value(sent, "contents") != nil)
        #expect(((sent["contents"] as? [[String: Any]])?.first?["role"] as? String) == "user")
    }

    @Test func editHasTheFixturesKeys() throws {
        let name = "edit-inline-data.gemini-2.5-flash-image"
        let fixture = try Self.fixture(name)
        let fixturePart = try #require(((fixture["contents"] as? [[String: Any]])?.first?["parts"] as? [[String: Any]])?.first { $0["inlineData"] != nil })
        let fixtureImage = try #require(fixturePart["inlineData"] as? [String: Any])
        let data = try #require(fixtureImage["data"] as? String)
        let image = GeminiWire.InlineData(mimeType: "image/png", data: Base64Text(data))

        let sent = try Self.wire(ImageTranslation.geminiRequest(prompt: "a prompt", inputImages: [image], spec: .init(aspectRatio: nil, imageSize: nil), family: .flash25))
        #expect(Self.keyPaths(sent).sorted() == Self.keyPaths(fixture).sorted())
        let sentParts = try #require((sent["contents"] as? [[String: Any]])?.first?["parts"] as? [[String: Any]])
        let sentImage = try #require(sentParts.compactMap { $0["inlineData"] as? [String: Any] }.first)
        #expect(sentImage["data"] as? String == data, "the base64 goes out unchanged")
        #expect(sentImage["mimeType"] as? String == "image/png")
    }

    @Test func anEditWithALargeImageKeepsTheSameKeys() throws {
        // Above 4096 characters the base64 takes SplicedJSON's zero-copy path: the shape must not change.
        let big = String(repeating: "QUJD", count: 5000)
        let image = GeminiWire.InlineData(mimeType: "image/png", data: Base64Text(big))
        let sent = try Self.wire(ImageTranslation.geminiRequest(prompt: "p", inputImages: [image, image], spec: .init(aspectRatio: .square, imageSize: .twoK), family: .pro3))
        var expected = Self.keyPaths(try Self.fixture("edit-inline-data.gemini-2.5-flash-image"))
        expected.formUnion(["generationConfig.imageConfig", "generationConfig.imageConfig.aspectRatio", "generationConfig.imageConfig.imageSize"])
        #expect(Self.keyPaths(sent).sorted() == expected.sorted())
        let parts = try #require((sent["contents"] as? [[String: Any]])?.first?["parts"] as? [[String: Any]])
        #expect(parts.compactMap { ($0["inlineData"] as? [String: Any])?["data"] as? String } == [big, big])
    }

    @Test func everyFixtureIsAnObjectWithContents() throws {
        let directory = try #require(Bundle.module.url(forResource: "Fixtures/requests", withExtension: nil))
        let names = try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasSuffix(".json") }
        #expect(names.count >= 5)
        for name in names {
            let tree = try Self.fixture(String(name.dropLast(".json".count)))
            #expect(tree["contents"] is [Any], "\(name)")
        }
    }
}
