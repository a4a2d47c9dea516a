import Foundation
import NanoGateCore
import NanoGateTestSupport
import NIOCore
import NIOFoundationCompat
import Testing
@testable import Upstream

/// The scanner against an independent decoder (Foundation's `JSONSerialization`): whatever the
/// pieces an answer arrives in, the images it passes through are exactly the answer's
/// `inlineData.data` strings, and the skeleton is the answer with those strings emptied.
@Suite struct GeminiAnswerScannerTests {
    static func base64(_ count: Int, seed: UInt64) -> String {
        var generator = SeededGenerator(seed: seed)
        return Data((0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }).base64EncodedString()
    }

    /// An answer as Google shapes it: a thought image, text with a signature, the final image,
    /// finish reason and usage; keys in Google's order, plus a `data` key that is no image.
    static func answer(images: [String], snakeCase: Bool = false) -> String {
        let inline = snakeCase ? "inline_data" : "inlineData"
        let imageParts = images.enumerated().map { index, data in
            #"{"\#(inline)":{"mimeType":"image/png","data":"\#(data)"}\#(index == 0 ? #","thought":true"# : ##","thoughtSignature":"c2ln\/AA==""##)}"#
        }
        return #"{"candidates":[{"content":{"parts":[{"text":"Here \"it\" is {[","thoughtSignature":"QUJD"},\#(imageParts.joined(separator: ","))],"role":"model"},"finishReason":"STOP","index":0}],"#
            + #""usageMetadata":{"promptTokenCount":12,"candidatesTokenCount":1290,"totalTokenCount":1302,"promptTokensDetails":[{"modality":"TEXT","tokenCount":12}]},"#
            + #""modelVersion":"gemini-2.5-flash-image","responseId":"r-1","extra":{"data":"not an image"}}"#
    }

    struct Scanned {
        var images: [String] = []
        var skeleton = ByteBuffer()
    }

    /// Feeds `text` in pieces of 1 to `maxPiece` bytes.
    static func scan(_ text: String, maxPiece: Int, seed: UInt64) throws -> Scanned {
        var generator = SeededGenerator(seed: seed)
        var scanner = GeminiAnswerScanner()
        var result = Scanned()
        var current: String?
        let bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let length = min(bytes.count - offset, Int.random(in: 1...maxPiece, using: &generator))
            // A piece with room before and after its readable bytes, as NIO hands them out.
            var piece = ByteBuffer(bytes: [UInt8](repeating: 0x20, count: 3) + bytes[offset..<(offset + length)])
            piece.moveReaderIndex(forwardBy: 3)
            offset += length
            for event in try scanner.feed(piece) {
                switch event {
                case .imageBegin(let index):
                    #expect(current == nil && index == result.images.count)
                    current = ""
                case .imageBytes(let chunk):
                    current! += String(buffer: chunk)
                case .imageEnd(let index):
                    #expect(index == result.images.count)
                    result.images.append(current!)
                    current = nil
                }
            }
        }
        #expect(scanner.isComplete)
        result.skeleton = scanner.skeleton
        return result
    }

    /// The `inlineData.data` strings of an answer, and the answer with them emptied, by Foundation.
    static func reference(_ text: String) throws -> (images: [String], emptied: NSDictionary) {
        var images: [String] = []
        func walk(_ value: Any, underImage: Bool) -> Any {
            if let object = value as? [String: Any] {
                var copy: [String: Any] = [:]
                for (key, inner) in object {
                    if underImage, key == "data", let text = inner as? String {
                        images.append(text)
                        copy[key] = ""
                    } else {
                        copy[key] = walk(inner, underImage: key == "inlineData" || key == "inline_data")
                    }
                }
                return copy
            }
            if let array = value as? [Any] { return array.map { walk($0, underImage: false) } }
            return value
        }
        let parsed = try JSONSerialization.jsonObject(with: Data(text.utf8))
        let emptied = walk(parsed, underImage: false) as! [String: Any]
        return (images, emptied as NSDictionary)
    }

    @Test(arguments: [1, 7, 64, 4096, 1 << 20])
    func imagesPassThroughWhateverThePieces(maxPiece: Int) throws {
        let text = Self.answer(images: [Self.base64(3000, seed: 1), Self.base64(20_000, seed: 2)])
        let expected = try Self.reference(text)
        #expect(expected.images.count == 2)
        for seed in 1...5 {
            let scanned = try Self.scan(text, maxPiece: maxPiece, seed: UInt64(seed))
            // Foundation reads `\/` as `/`: the scanner hands out the same base64.
            #expect(scanned.images == expected.images)
            let skeleton = try JSONSerialization.jsonObject(with: Data(buffer: scanned.skeleton)) as! NSDictionary
            #expect(skeleton == expected.emptied)
        }
    }

    /// The skeleton is what the gateway's own decoder reads for usage and finish reasons.
    @Test func theSkeletonDecodesAsAGeminiAnswer() throws {
        let scanned = try Self.scan(Self.answer(images: [Self.base64(999, seed: 3)], snakeCase: true), maxPiece: 100, seed: 9)
        #expect(scanned.images == [Self.base64(999, seed: 3)])
        let response = try SplicedJSON.decode(GeminiWire.Response.self, from: scanned.skeleton)
        #expect(response.usageMetadata?.candidatesTokenCount == 1290)
        #expect(response.candidates?.first?.finishReason == "STOP")
        #expect(scanned.skeleton.readableBytes < 1000, "no image bytes in the skeleton")
    }

    /// `\/` split across two pieces is still one `/`; any other escape in base64 is refused.
    @Test func escapesInsideImageData() throws {
        let escaped = #"{"candidates":[{"content":{"parts":[{"inlineData":{"data":"ab\/cd\/"}}]}}]}"#
        for split in 1..<escaped.utf8.count {
            var scanner = GeminiAnswerScanner()
            var data = ""
            let bytes = Array(escaped.utf8)
            for part in [bytes[..<split], bytes[split...]] {
                for case .imageBytes(let chunk) in try scanner.feed(ByteBuffer(bytes: part)) { data += String(buffer: chunk) }
            }
            #expect(data == "ab/cd/", "split at \(split)")
        }
        var scanner = GeminiAnswerScanner()
        #expect(throws: GeminiAnswerScanner.ScanError.escapeInImage) {
            _ = try scanner.feed(ByteBuffer(string: #"{"inlineData":{"data":"ab\u0041"}}"#))
        }
    }

    @Test func untrustedShapesAreBounded() {
        var deep = GeminiAnswerScanner(maxDepth: 8)
        #expect(throws: GeminiAnswerScanner.ScanError.tooDeep) { _ = try deep.feed(ByteBuffer(string: String(repeating: "[", count: 9))) }
        var large = GeminiAnswerScanner(maxSkeletonBytes: 100)
        #expect(throws: GeminiAnswerScanner.ScanError.skeletonTooLarge) {
            _ = try large.feed(ByteBuffer(string: #"{"text":""# + String(repeating: "x", count: 200)))
        }
        var closing = GeminiAnswerScanner()
        #expect(throws: GeminiAnswerScanner.ScanError.malformed) { _ = try closing.feed(ByteBuffer(string: "}")) }
        // An image's size does not count against the skeleton.
        var images = GeminiAnswerScanner(maxSkeletonBytes: 200)
        #expect(throws: Never.self) {
            _ = try images.feed(ByteBuffer(string: #"{"inlineData":{"data":"\#(Self.base64(10_000, seed: 4))"}}"#))
        }
    }
}
