import AsyncHTTPClient
import Crypto
import Foundation
import Hummingbird
import NanoGateCore
import NanoGateTestSupport
import NIOCore
import NIOFoundationCompat
import Synchronization
import Testing
import Upstream
@testable import NanoGateServer

/// The chunks as an async sequence, as a socket delivers them.
func asyncChunks(_ chunks: [ByteBuffer]) -> AsyncStream<ByteBuffer> {
    AsyncStream { continuation in
        for chunk in chunks { continuation.yield(chunk) }
        continuation.finish()
    }
}

/// `bytes` cut at random points into pieces of 1 to `maxPiece` bytes.
func randomChunks(_ bytes: [UInt8], maxPiece: Int, using random: inout SeededGenerator) -> [ByteBuffer] {
    var chunks: [ByteBuffer] = []
    var rest = bytes[...]
    while !rest.isEmpty {
        let size = Int.random(in: 1...max(1, min(rest.count, maxPiece)), using: &random)
        chunks.append(ByteBuffer(bytes: rest.prefix(size)))
        rest = rest.dropFirst(size)
    }
    return chunks
}

/// Mutations of a valid input: flipped, inserted, deleted and duplicated bytes, cut short,
/// interesting bytes (quotes, backslashes, newlines, NUL, UTF-8 fragments).
func mutate(_ input: [UInt8], using random: inout SeededGenerator) -> [UInt8] {
    var bytes = input
    let interesting: [UInt8] = [0x22, 0x5C, 0x0A, 0x0D, 0x00, 0x7B, 0x7D, 0x5B, 0x5D, 0x3A, 0x2C, 0xC3, 0xA9, 0xFF, 0x2D, 0x3B, 0x3D]
    for _ in 0..<Int.random(in: 1...6, using: &random) {
        guard !bytes.isEmpty else {
            bytes.append(interesting.randomElement(using: &random)!)
            continue
        }
        let at = Int.random(in: 0..<bytes.count, using: &random)
        switch Int.random(in: 0..<6, using: &random) {
        case 0: bytes[at] ^= UInt8(1 << Int.random(in: 0..<8, using: &random))
        case 1: bytes.insert(interesting.randomElement(using: &random)!, at: at)
        case 2: bytes.remove(at: at)
        case 3: bytes = Array(bytes.prefix(at))
        case 4:
            let end = min(bytes.count, at + Int.random(in: 1...16, using: &random))
            bytes.insert(contentsOf: bytes[at..<end], at: at)
        default: bytes[at] = interesting.randomElement(using: &random)!
        }
    }
    return bytes
}

/// Bounded random-input tests of the hand-written parsers (fixed seeds and iteration counts:
/// the same inputs on every run, a few seconds in all). Each checks the parser against an
/// independent reading, not only that it does not crash.
@Suite(.timeLimit(.minutes(10))) struct FuzzTests {
    /// `SplicedJSON.decode` (which lifts long `"data"` strings out as slices) reads every input
    /// exactly as Foundation's `JSONDecoder` does: the same value, or an error when it errs.
    @Test func splicedJSONAgreesWithJSONDecoder() throws {
        let long = String(repeating: "iVBORw0KGgoAAAANSUhEUgAA", count: 20)
        let seeds: [String] = [
            #"{"candidates":[{"content":{"role":"model","parts":[{"text":"a \"q\" b"},{"inlineData":{"mimeType":"image/png","data":"\#(long)"}}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":7,"candidatesTokenCount":1290}}"#,
            #"{"candidates":[{"content":{"parts":[{"inline_data":{"mime_type":"image/jpeg","data":"\#(long)"},"thought":true,"thoughtSignature":"sig\/\u00e9"}]}}],"modelVersion":"x"}"#,
            #"{"data":"\#(long)","candidates":[{"content":{"parts":[{"text":"\"data\":\"\#(long)\""}]}}]}"#,
            #"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED","details":[{"retryDelay":"27s"}]}}"#,
        ]
        var random = SeededGenerator(seed: 0x5EED_0001)
        var agreed = 0
        for index in 0..<3000 {
            let seed = Array(seeds[index % seeds.count].utf8)
            let input = index < seeds.count ? seed : mutate(seed, using: &random)
            let reference = try? JSONDecoder().decode(GeminiWire.Response.self, from: Data(input))
            let spliced = try? SplicedJSON.decode(GeminiWire.Response.self, from: ByteBuffer(bytes: input))
            #expect(spliced == reference, "input \(index): \(String(decoding: input, as: UTF8.self).prefix(300))")
            if reference != nil { agreed += 1 }
            // What it encodes, Foundation reads back as the same value.
            if let spliced, let encoded = try? SplicedJSON.encodeJoined(spliced) {
                #expect(try JSONDecoder().decode(GeminiWire.Response.self, from: Data(buffer: encoded)) == spliced)
            }
        }
        #expect(agreed > 300, "the mutations keep enough inputs valid to compare values, not only errors")
    }

    /// Google's SSE stream, split at random points with random framing (LF or CRLF, comments,
    /// other fields), yields exactly the events that were sent, in order; garbage streams end
    /// with an error or with events, never a crash or a hang.
    @Test func theSSEReaderFindsEveryEventWhateverTheChunking() async throws {
        var random = SeededGenerator(seed: 0x5EED_0002)
        for round in 0..<400 {
            let events = (0..<Int.random(in: 1...5, using: &random)).map { index in
                GeminiWire.Response(
                    candidates: [.init(content: .init(role: "model", parts: [.init(text: "event \(round).\(index) \(String(repeating: "x", count: Int.random(in: 0...300, using: &random)))")]), finishReason: nil)],
                    usageMetadata: .init(promptTokenCount: index, candidatesTokenCount: nil, thoughtsTokenCount: nil, totalTokenCount: nil, promptTokensDetails: nil, candidatesTokensDetails: nil)
                )
            }
            var text = ""
            for event in events {
                let newline = Bool.random(using: &random) ? "\r\n" : "\n"
                if Bool.random(using: &random) { text += ": keep-alive" + newline }
                if Bool.random(using: &random) { text += "event: message" + newline }
                text += "data: " + String(decoding: try JSONEncoder().encode(event), as: UTF8.self) + newline + newline
            }
            var bytes = Array(text.utf8)
            let garbage = round % 4 == 3
            if garbage { bytes = mutate(bytes, using: &random) }
            let chunks = randomChunks(bytes, maxPiece: 97, using: &random)
            let stream = GeminiEventStream(body: .stream(asyncChunks(chunks)), maxEventBytes: 1 << 20)
            var received: [GeminiWire.Response] = []
            do {
                for try await event in stream { received.append(event) }
                if !garbage { #expect(received == events, "round \(round)") }
            } catch {
                #expect(garbage, "round \(round): a well-formed stream failed: \(error)")
            }
        }
    }

    /// The chunked SSE reader (`scan`, which hands images out piece by piece) gives back exactly
    /// the events that were sent, images and all, whatever the chunking and framing; garbage
    /// ends with an error or with events, never a crash or a hang.
    @Test func theChunkedSSEReaderHandsOutEveryImageWhateverTheChunking() async throws {
        var random = SeededGenerator(seed: 0x5EED_0004)
        for round in 0..<300 {
            let events = (0..<Int.random(in: 1...4, using: &random)).map { index -> GeminiWire.Response in
                var parts: [GeminiWire.Part] = [.init(text: "event \(round).\(index)")]
                for _ in 0..<Int.random(in: 0...2, using: &random) {
                    let bytes = (0..<Int.random(in: 1...3000, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
                    parts.append(.init(inlineData: .init(mimeType: "image/png", data: Base64Text(bytes: ByteBuffer(string: Data(bytes).base64EncodedString()))), thoughtSignature: Bool.random(using: &random) ? "sig\(index)" : nil))
                }
                return GeminiWire.Response(candidates: [.init(content: .init(role: "model", parts: parts), finishReason: index == 0 ? nil : "STOP")], usageMetadata: nil)
            }
            var text = ""
            for event in events {
                let newline = Bool.random(using: &random) ? "\r\n" : "\n"
                if Bool.random(using: &random) { text += ": keep-alive" + newline }
                text += "data: " + String(decoding: try JSONEncoder().encode(event), as: UTF8.self) + newline + newline
            }
            var bytes = Array(text.utf8)
            let garbage = round % 4 == 3
            if garbage { bytes = mutate(bytes, using: &random) }
            let chunks = randomChunks(bytes, maxPiece: 997, using: &random)
            let stream = GeminiEventStream(body: .stream(asyncChunks(chunks)), maxEventBytes: 1 << 20)
            let pieces = Mutex<[GeminiEventStream.Piece]>([])
            do {
                try await stream.scan { piece in pieces.withLock { $0.append(piece) } }
                guard !garbage else { continue }
                // Put each event's images back (in order) and compare with what was sent.
                var received: [GeminiWire.Response] = []
                var images: [[UInt8]] = []
                for piece in pieces.withLock({ $0 }) {
                    switch piece {
                    case .imageBegin: images.append([])
                    case .imageBytes(let bytes): images[images.count - 1] += Array(bytes.readableBytesView)
                    case .imageEnd: break
                    case .event(var event):
                        var next = 0
                        for (index, part) in (event.candidates?[0].content?.parts ?? []).enumerated() where part.inlineData != nil {
                            #expect(part.inlineData?.data.bytes.readableBytes == 0, "round \(round): an image left in the event")
                            event.candidates![0].content!.parts![index].inlineData!.data = Base64Text(bytes: ByteBuffer(bytes: images[next]))
                            next += 1
                        }
                        #expect(next == images.count, "round \(round)")
                        images = []
                        received.append(event)
                    }
                }
                #expect(received == events, "round \(round)")
            } catch {
                #expect(garbage, "round \(round): a well-formed stream failed: \(error)")
            }
        }
    }

    /// The fingerprint of an image that passes by in pieces (the streamed chat's thought
    /// signatures are keyed by it) is the one of the whole image, whatever the pieces: checked
    /// against the rule written out here (length, first and last 256 KiB) around its edges.
    @Test func anImageFingerprintIsTheSameInPieces() {
        var random = SeededGenerator(seed: 0x5EED_0005)
        let sample = 256 * 1024
        for size in [0, 1, 1000, 2 * sample - 1, 2 * sample, 2 * sample + 1, 3 * sample + 7, 9 * sample + 123] {
            let text = (0..<size).map { _ in UInt8.random(in: 0x41...0x5A, using: &random) }
            var reference = SHA256()
            reference.update(data: Array("key-1\n\(size):".utf8))
            if size <= 2 * sample {
                reference.update(data: text)
            } else {
                reference.update(data: Array(text.prefix(sample)))
                reference.update(data: Array(text.suffix(sample)))
            }
            let expected = "i:" + reference.finalize().map { String(format: "%02x", $0) }.joined()
            for _ in 0..<3 {
                var fingerprint = ChatController.ImageFingerprint()
                var rest = text[...]
                while !rest.isEmpty {
                    let piece = Int.random(in: 1...max(1, min(rest.count, Bool.random(using: &random) ? 700 : 400_000)), using: &random)
                    fingerprint.add(ByteBuffer(bytes: rest.prefix(piece)))
                    rest = rest.dropFirst(piece)
                }
                #expect(fingerprint.hash(keyID: "key-1") == expected, "\(size) bytes")
            }
        }
    }

    /// The multipart reader returns exactly the fields of a well-formed body (any boundary, any
    /// chunking), and a damaged body is either read or refused with a 4xx, never a crash.
    @Test func theMultipartReaderReadsWhatWasSent() async throws {
        var random = SeededGenerator(seed: 0x5EED_0003)
        let limits = InputLimits(maxImageBytes: 1 << 20, maxRequestBytes: 4 << 20)
        for round in 0..<400 {
            let boundary = "----b" + String(UInt64.random(in: 0...UInt64.max, using: &random), radix: 36)
            var fields: [(name: String, filename: String?, value: [UInt8])] = []
            for index in 0..<Int.random(in: 1...4, using: &random) {
                let isFile = Bool.random(using: &random)
                let value = (0..<Int.random(in: 0...200, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
                fields.append(("field\(index)", isFile ? "a;b \(index).png" : nil, isFile ? value : Array("value \(index)".utf8)))
            }
            var body: [UInt8] = []
            for field in fields {
                var header = "--\(boundary)\r\nContent-Disposition: form-data; name=\"\(field.name)\""
                if let filename = field.filename { header += "; filename=\"\(filename)\"\r\nContent-Type: image/png" }
                body += Array((header + "\r\n\r\n").utf8) + field.value + Array("\r\n".utf8)
            }
            body += Array("--\(boundary)--\r\n".utf8)
            let damaged = round % 3 == 2
            if damaged { body = mutate(body, using: &random) }
            var chunks: [ByteBuffer] = []
            var rest = body[...]
            while !rest.isEmpty {
                let size = Int.random(in: 1...max(1, min(rest.count, 131)), using: &random)
                chunks.append(ByteBuffer(bytes: rest.prefix(size)))
                rest = rest.dropFirst(size)
            }
            if ProcessInfo.processInfo.environment["FUZZ_TRACE"] != nil {
                FileHandle.standardError.write(Data("ROUND \(round) boundary=\(boundary) chunks=\(chunks.map(\.readableBytes)) body=\(Data(body).base64EncodedString())\n".utf8))
            }
            do {
                let form = try await MultipartForm.read(RequestBody(asyncSequence: asyncChunks(chunks)), boundary: boundary, limits: limits)
                if !damaged {
                    #expect(form.parts.map(\.name) == fields.map(\.name), "round \(round)")
                    #expect(form.parts.map(\.filename) == fields.map(\.filename), "round \(round)")
                    #expect(form.parts.map { Array($0.body.readableBytesView) } == fields.map(\.value), "round \(round)")
                }
            } catch {
                #expect(damaged, "round \(round): a well-formed body was refused: \(error)")
                #expect((400..<500).contains(error.status), "round \(round): \(error)")
            }
        }
    }

    /// `Content-Disposition` parameters: a quoted value may hold `;`, `=` and `\"`; a random
    /// header never crashes the reader, and a value it returns is made of the header's own
    /// characters, in order (escapes removed).
    @Test func contentDispositionParametersAreReadWhole() {
        #expect(MultipartForm.parameter("filename", in: #"form-data; name="image[]"; filename="a;b=c \"d\".png""#) == #"a;b=c "d".png"#)
        #expect(MultipartForm.parameter("name", in: #"form-data; filename="name=x"; name="prompt""#) == "prompt")
        var random = SeededGenerator(seed: 0x5EED_0004)
        let seed = Array(#"form-data; name="image[]"; filename="photo 1.png""#.utf8)
        for _ in 0..<5000 {
            let header = String(decoding: mutate(seed, using: &random), as: UTF8.self)
            for key in ["name", "filename"] {
                if let value = MultipartForm.parameter(key, in: header) {
                    var rest = Substring(header)
                    let inOrder = value.allSatisfy { character in
                        guard let found = rest.firstIndex(of: character) else { return false }
                        rest = rest[rest.index(after: found)...]
                        return true
                    }
                    #expect(inOrder, "\(header) → \(value)")
                }
            }
        }
    }

    /// The size rules, for every catalog model and random `size`/`aspect_ratio`/`quality` text:
    /// either a shape the model has, or a 400 naming the field at fault.
    @Test func sizeRulesAnswerEveryInputWithAShapeOrA400() {
        let catalog = ModelCatalog.standard()
        var random = SeededGenerator(seed: 0x5EED_0005)
        let sizes = ["1k", "2K", "4k", "512", "0.5k", "1024x1024", "1920x1080", "auto", "16:9", "2:3", "21:9", "", " 1K ", "1x1", "99999x1", "0x0"]
        let ratios = ["16:9", "1:1", "9:16", "4:5", "21:9", "8:1", "", "auto", "3:2", "1:8"]
        for index in 0..<4000 {
            let model = catalog.models[index % catalog.models.count]
            var size = sizes.randomElement(using: &random)
            var ratio = Bool.random(using: &random) ? ratios.randomElement(using: &random) : nil
            if Bool.random(using: &random) { size = size.map { String(decoding: mutate(Array($0.utf8), using: &random), as: UTF8.self) } }
            if Bool.random(using: &random) { ratio = ratio.map { String(decoding: mutate(Array($0.utf8), using: &random), as: UTF8.self) } }
            do {
                let spec = try SizeRules.resolve(model: model, size: size, aspectRatio: ratio)
                if let chosen = spec.aspectRatio { #expect(model.family.aspectRatios.contains(chosen), "\(model.name) \(size ?? "-") \(ratio ?? "-")") }
                if let tier = spec.imageSize { #expect(model.family.imageSizes.contains(tier), "\(model.name) \(size ?? "-")") }
            } catch {
                #expect(error.status == 400, "\(model.name) \(size ?? "-") \(ratio ?? "-"): \(error)")
                #expect(["size", "aspect_ratio", "quality"].contains(error.param ?? ""), "\(model.name) \(size ?? "-") \(ratio ?? "-"): \(error)")
            }
        }
    }
}
