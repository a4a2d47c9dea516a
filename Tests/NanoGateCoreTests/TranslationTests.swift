import Foundation
import NIOCore
import NIOFoundationCompat
@testable import NanoGateCore
@testable import Upstream
import Testing

/// Reading Gemini answers (the shared reference fixtures) and writing Gemini requests.
@Suite struct TranslationTests {
    func fixture(_ name: String) throws -> GeminiWire.Response {
        let url = try #require(Bundle.module.url(forResource: "Fixtures/\(name)", withExtension: "json"))
        return try JSONDecoder().decode(GeminiWire.Response.self, from: Data(contentsOf: url))
    }

    @Test func imageOnlyAnswer() throws {
        let outcome = try ImageTranslation.outcome(of: fixture("01-generate-image-only.gemini-2.5-flash-image"))
        #expect(outcome.images.count == 1)
        #expect(outcome.usage.outputTokensDetails.imageTokens == 1290)
        #expect(outcome.usage.totalTokens == outcome.usage.inputTokens + outcome.usage.outputTokens)
    }

    @Test func editAnswerCountsTheInputImage() throws {
        let outcome = try ImageTranslation.outcome(of: fixture("02-edit-image-and-text.gemini-2.5-flash-image"))
        #expect(outcome.images.count == 1)
        #expect(outcome.text != nil)
        #expect(outcome.usage.inputTokensDetails.imageTokens == 258)
        #expect(outcome.usage.inputTokensDetails.textTokens == outcome.usage.inputTokens - 258)
    }

    @Test func thoughtPartsAreDropped() throws {
        let response = try fixture("03-generate-with-thoughts-and-signatures.gemini-3-pro-image-preview")
        let outcome = try ImageTranslation.outcome(of: response)
        // The fixture has an interim thought image (1×1) and a final image (8×8): only the final one counts.
        #expect(outcome.images.count == 1)
        let bytes = try #require(Data(base64Encoded: outcome.images[0].data.string))
        #expect(bytes[16..<24].elementsEqual([0, 0, 0, 8, 0, 0, 0, 8]))
        #expect(outcome.text == "Here is the nano banana dish in a Gemini-themed restaurant.")
        // Thoughts are billed as output text.
        #expect(outcome.usage.outputTokens == 1133 + 248)
        #expect(outcome.usage.outputTokensDetails == .init(imageTokens: 1120, textTokens: 1133 + 248 - 1120))
        #expect(outcome.usage.totalTokens == 1398)
    }

    @Test(arguments: [
        ("04-finish-image-safety", 400, "content_policy_violation", "IMAGE_SAFETY"),
        ("05-finish-no-image", 400, "no_image_generated", "NO_IMAGE"),
        ("06-prompt-blocked", 400, "content_policy_violation", "PROHIBITED_CONTENT"),
    ])
    func answersWithoutAnImageAreErrors(file: String, status: Int, code: String, reason: String) throws {
        let response = try fixture(file)
        #expect {
            try ImageTranslation.outcome(of: response)
        } throws: { error in
            let error = error as! GatewayError
            return error.status == status && error.code == code && error.message.contains(reason)
        }
    }

    @Test func unknownFinishReasonIsAServerSideError() {
        let response = GeminiWire.Response(candidates: [.init(content: nil, finishReason: "SOMETHING_NEW")], usageMetadata: nil)
        #expect {
            try ImageTranslation.outcome(of: response)
        } throws: { ($0 as! GatewayError).status == 502 }
    }

    @Test func snakeCasePartsAreRead() throws {
        let json = #"{"candidates":[{"content":{"parts":[{"inline_data":{"mime_type":"image/png","data":"iVBORw0KGgo="},"thought_signature":"c2ln"}]},"finishReason":"STOP"}]}"#
        let response = try JSONDecoder().decode(GeminiWire.Response.self, from: Data(json.utf8))
        let part = try #require(response.candidates?.first?.content?.parts?.first)
        #expect(part.inlineData?.mimeType == "image/png")
        #expect(part.thoughtSignature == "c2ln")
    }

    @Test func requestSendsImageSizeOnlyToPro() throws {
        let pro = ImageTranslation.geminiRequest(prompt: "p", spec: .init(aspectRatio: .landscape16x9, imageSize: .fourK), family: .pro3)
        #expect(pro.generationConfig?.imageConfig == .init(aspectRatio: "16:9", imageSize: "4K"))
        let flash = ImageTranslation.geminiRequest(prompt: "p", spec: .init(aspectRatio: nil, imageSize: .fourK), family: .flash25)
        #expect(flash.generationConfig?.imageConfig == nil)
        // Read back with an independent decoder: Google's names at Google's places.
        let encoded = try #require(try JSONSerialization.jsonObject(with: Data(buffer: SplicedJSON.encodeJoined(pro))) as? [String: Any])
        let config = try #require(encoded["generationConfig"] as? [String: Any])
        #expect(config["responseModalities"] as? [String] == ["TEXT", "IMAGE"])
        #expect(config["imageConfig"] as? [String: String] == ["aspectRatio": "16:9", "imageSize": "4K"])
        #expect(Set(encoded.keys) == ["contents", "generationConfig"])
        #expect(pro.contents.first?.role == "user")
    }

    @Test func googleErrorBodiesAreReadPlainOrInAnArray() throws {
        let url = try #require(Bundle.module.url(forResource: "Fixtures/07-error-429-resource-exhausted", withExtension: "json"))
        let plain = try String(contentsOf: url, encoding: .utf8)
        for body in [plain, "[\(plain)]"] {
            let envelope = try #require(GoogleErrors.envelope(in: ByteBuffer(string: body)))
            #expect(envelope.error.status == "RESOURCE_EXHAUSTED")
            #expect(envelope.error.details?.compactMap(\.retryDelay) == ["27s"])
        }
        #expect(GoogleErrors.envelope(in: ByteBuffer(string: "<html>")) == nil)
    }

    @Test func pricesMatchGooglesInvoice() {
        // 2.5: 1290 output image tokens at $30/M = $0.0387.
        let flash = ImageUsage(inputTokens: 0, inputTokensDetails: .init(imageTokens: 0, textTokens: 0), outputTokens: 1290, outputTokensDetails: .init(imageTokens: 1290, textTokens: 0), totalTokens: 1290)
        #expect(Pricing.costMicroUSD(flash, prices: ModelCatalog.flash25Prices) == 38_700)
        // 3-pro 4K: 2000 tokens at $120/M = $0.24.
        let pro = ImageUsage(inputTokens: 0, inputTokensDetails: .init(imageTokens: 0, textTokens: 0), outputTokens: 2000, outputTokensDetails: .init(imageTokens: 2000, textTokens: 0), totalTokens: 2000)
        #expect(Pricing.costMicroUSD(pro, prices: ModelCatalog.pro3Prices) == 240_000)
    }

    @Test func sniffsImageTypesByTheirBytes() {
        #expect(ImageSniffer.mimeType(of: [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0]) == "image/png")
        #expect(ImageSniffer.mimeType(of: [0xFF, 0xD8, 0xFF, 0xE0]) == "image/jpeg")
        #expect(ImageSniffer.mimeType(of: Array("RIFF\0\0\0\0WEBPVP8 ".utf8)) == "image/webp")
        #expect(ImageSniffer.mimeType(of: Array("\0\0\0\u{18}ftypheic".utf8)) == "image/heic")
        #expect(ImageSniffer.mimeType(of: Array("hello world".utf8)) == nil)
    }
}

/// The zero-copy JSON path for image payloads.
@Suite struct SplicedJSONTests {
    static let big = String(repeating: "QUJD", count: 5000)  // 20,000 base64 characters

    @Test func largeDataStringsAreLiftedAndRestored() throws {
        let json = #"{"candidates":[{"content":{"parts":[{"text":"a \"data\": \"x\" in text"},{"inlineData":{"mimeType":"image/png","data":"\#(Self.big)"}}]}}]}"#
        let buffer = ByteBuffer(string: json)
        let ranges = SplicedJSON.largeDataStrings(in: buffer)
        #expect(ranges.count == 1, "only the data value, not the quoted text")
        let response = try SplicedJSON.decode(GeminiWire.Response.self, from: buffer)
        let parts = try #require(response.candidates?.first?.content?.parts)
        #expect(parts[0].text == #"a "data": "x" in text"#)
        #expect(parts[1].inlineData?.data.string == Self.big)
    }

    @Test func encodingSplicesTheBytesBack() throws {
        let image = ImageObject(b64JSON: Base64Text(Self.big), revisedPrompt: "look: @@ngsplice-0@@")
        let joined = try SplicedJSON.encodeJoined(ImagesResponse(created: 1, data: [image], usage: .zero))
        let decoded = try JSONSerialization.jsonObject(with: Data(buffer: joined)) as! [String: Any]
        let first = (decoded["data"] as! [[String: Any]])[0]
        #expect(first["b64_json"] as? String == Self.big)
        #expect(first["revised_prompt"] as? String == "look: @@ngsplice-0@@", "client text that looks like a placeholder is left alone")
    }

    @Test func theSamePayloadTwiceInAnyKeyOrderIsSplicedEverywhere() throws {
        let url = SplicedString([.text("data:image/png;base64,"), .raw(ByteBuffer(string: Self.big))])
        let message = ChatMessageOut(content: "![image](" + url + ")", images: [ChatImage(url: url, index: 0)])
        for _ in 0..<5 {
            let joined = String(buffer: try SplicedJSON.encodeJoined(message))
            #expect(!joined.contains("@@ngsplice"))
            #expect(joined.components(separatedBy: Self.big).count == 3, "both places hold the payload")
        }
    }

    @Test func escapedOrShortStringsTakeTheOrdinaryPath() throws {
        let escaped = #"{"data":"\#(String(repeating: "A", count: 5000))\/B"}"#
        #expect(SplicedJSON.largeDataStrings(in: ByteBuffer(string: escaped)).isEmpty)
        let short = #"{"data":"QUJD"}"#
        #expect(SplicedJSON.largeDataStrings(in: ByteBuffer(string: short)).isEmpty)
        let nested = #"{"data":{"data":"\#(Self.big)"}}"#
        #expect(SplicedJSON.largeDataStrings(in: ByteBuffer(string: nested)).count == 1)
    }
}
