import AsyncHTTPClient
import Foundation
import NanoGateCore
import NanoGateServer
import NanoGateStorage
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import Testing
import Upstream

/// `NANOGATE_STREAM_IMAGES`: Google's answer streamed into the client's, checked with the
/// decoders a client uses (Foundation's JSON, the PNG header) and on the raw wire (the trailer,
/// the broken end).
@Suite(.timeLimit(.minutes(10))) struct StreamThroughTests {
    static let body = #"{"model":"nano-banana","prompt":"a streamed banana","response_format":"b64_json"}"#

    /// The streamed answer holds what the answer built whole holds, and charges the same.
    @Test func aStreamedAnswerIsTheWholeAnswer() async throws {
        try await withGateway(configure: { $0.streamImages = .on }) { gateway in
            let streamed = try await gateway.generate(Self.body, key: gateway.geminiKey)
            #expect(streamed.status == 200, "\(streamed.text.prefix(300))")
            // `output_format` asked: the answer is built whole (the path that existed before).
            let whole = try await gateway.generate(#"{"model":"nano-banana","prompt":"a whole banana","response_format":"b64_json","output_format":"png"}"#, key: gateway.geminiKey)
            #expect(whole.status == 200)
            #expect(Set(streamed.json.keys) == Set(whole.json.keys))
            #expect(streamed.headers["Transfer-Encoding"].first == "chunked" && whole.headers["X-NanoGate-Cost"].first != nil)
            let image = try #require(streamed.data.first?["b64_json"] as? String)
            let bytes = try #require(Data(base64Encoded: image))
            #expect(Harness.pngSize(Array(bytes)) == (1024, 1024))
            #expect(streamed.json["size"] as? String == "1024x1024" && streamed.json["output_format"] as? String == "png")
            #expect((streamed.usage["output_tokens_details"] as? [String: Any])?["image_tokens"] as? Int == 1290)
            let rows = try await gateway.dependencies.store.usage(UsageQuery()).filter { $0.status == 200 }
            #expect(rows.count == 2)
            let charged = try #require(rows.first { $0.costMicroUSD > 0 && $0.requestID == streamed.headers["x-request-id"].first })
            #expect(abs((streamed.usage["cost"] as? Double ?? -1) - Double(charged.costMicroUSD) / 1_000_000) < 1e-9)
        }
    }

    /// `n` > 1 streams each image through as it comes: every image a whole PNG, the usage the
    /// sum of the images', charged as the answer says.
    @Test func severalImagesStreamThroughOneAfterAnother() async throws {
        try await withGateway(configure: { $0.streamImages = .on; $0.upstream.maxAttempts = 1 }) { gateway in
            let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"three bananas","n":3,"response_format":"b64_json"}"#, key: gateway.geminiKey)
            #expect(reply.status == 200 && reply.headers["Transfer-Encoding"].first == "chunked", "\(reply.text.prefix(300))")
            #expect(reply.data.count == 3)
            for item in reply.data {
                let bytes = try #require(Data(base64Encoded: item["b64_json"] as? String ?? ""))
                #expect(Harness.pngSize(Array(bytes)) == (1024, 1024))
            }
            #expect((reply.usage["output_tokens_details"] as? [String: Any])?["image_tokens"] as? Int == 3 * 1290)
            let row = try #require(try await gateway.dependencies.store.usage(UsageQuery()).first)
            #expect(row.images == 3 && row.status == 200)
            #expect(abs((reply.usage["cost"] as? Double ?? -1) - Double(row.costMicroUSD) / 1_000_000) < 1e-9)

        }
    }

    /// A 4K `b64_json` answer is spooled through files, not held: it reads as an answer built
    /// whole (`Content-Length`, the cost header equal to the row's charge), Pro's thought image
    /// is left out, and no spool file is left behind; `n` = 2 at 2K alike.
    @Test func largeBase64AnswersAreSpooledThroughFiles() async throws {
        try await withGateway { gateway in
            let scratch = gateway.dependencies.fileStore.directory
            let pro = try await gateway.generate(#"{"model":"nano-banana-pro","prompt":"a spooled banana","size":"4k","response_format":"b64_json"}"#)
            #expect(pro.status == 200, "\(pro.text.prefix(300))")
            #expect(Int(pro.headers["Content-Length"].first ?? "") == pro.body.readableBytes)
            #expect(pro.data.count == 1)
            let bytes = try #require(Data(base64Encoded: pro.data.first?["b64_json"] as? String ?? ""))
            #expect(Harness.pngSize(Array(bytes)) == (4096, 4096), "the final image, not the thought image")
            let row = try #require(try await gateway.dependencies.store.usage(UsageQuery()).first { $0.requestID == pro.headers["x-request-id"].first })
            #expect(pro.headers["X-NanoGate-Cost"].first == Pricing.usdText(row.costMicroUSD) && row.costMicroUSD > 0)

            let two = try await gateway.generate(#"{"model":"nano-banana-2.1","prompt":"two spooled bananas","size":"2k","n":2,"response_format":"b64_json"}"#)
            #expect(two.status == 200 && two.data.count == 2, "\(two.text.prefix(300))")
            for item in two.data {
                let image = try #require(Data(base64Encoded: item["b64_json"] as? String ?? ""))
                #expect(Harness.pngSize(Array(image)) == (2048, 2048))
            }
            let left = (try? FileManager.default.contentsOfDirectory(atPath: scratch.path)) ?? []
            #expect(!left.contains { $0.hasPrefix("stream-") }, "\(left)")
        }
    }

    /// Past `NANOGATE_HELD_ANSWERS` answers in memory, 1K answers are spooled as well (here the
    /// bound is 0, so every one is): the same answer, its length and cost header up front.
    @Test func pastTheHeldAnswersBoundOneKAnswersAreSpooled() async throws {
        try await withGateway(configure: { $0.heldAnswers = 0 }) { gateway in
            let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"a spooled banana","response_format":"b64_json","n":2}"#)
            #expect(reply.status == 200 && reply.data.count == 2, "\(reply.text.prefix(300))")
            #expect(Int(reply.headers["Content-Length"].first ?? "") == reply.body.readableBytes)
            for item in reply.data {
                let bytes = try #require(Data(base64Encoded: item["b64_json"] as? String ?? ""))
                #expect(Harness.pngSize(Array(bytes)) == (1024, 1024))
            }
            #expect((reply.usage["output_tokens_details"] as? [String: Any])?["image_tokens"] as? Int == 2 * 1290)
            let row = try #require(try await gateway.dependencies.store.usage(UsageQuery()).first)
            #expect(reply.headers["X-NanoGate-Cost"].first == Pricing.usdText(row.costMicroUSD) && row.images == 2)
            let left = (try? FileManager.default.contentsOfDirectory(atPath: gateway.dependencies.fileStore.directory.path)) ?? []
            #expect(!left.contains { $0.hasPrefix("stream-") }, "\(left)")
        }
    }

    /// The charge, known only after the image, is the chunked body's trailer.
    @Test func theChargeIsATrailer() async throws {
        try await withGateway(configure: { $0.streamImages = .on }) { gateway in
            let port = Int(gateway.baseURL.split(separator: ":").last!)!
            try await RawConnection.with(port: port) { connection in
                try await connection.send(
                    "POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nAuthorization: Bearer \(gateway.geminiKey)\r\n"
                        + "Content-Length: \(Self.body.utf8.count)\r\n\r\n\(Self.body)"
                )
                let answer = try #require(try await connection.readUntilClosed(limit: .seconds(120)))
                #expect(answer.hasPrefix("HTTP/1.1 200"))
                #expect(answer.lowercased().contains("trailer: x-nanogate-cost"))
                let trailer = try #require(answer.range(of: "\r\n0\r\n"), "the chunked body ends")
                #expect(answer[trailer.upperBound...].lowercased().hasPrefix("x-nanogate-cost: 0.0"), "\(answer.suffix(80))")
            }
        }
    }

    /// Before the image begins, a refusal is still a proper error, and costs nothing.
    @Test func aSafetyBlockIsStillAnError() async throws {
        try await withGateway(configure: { $0.streamImages = .on }) { gateway in
            let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"p [emulate:image_safety]","response_format":"b64_json"}"#, key: gateway.geminiKey)
            #expect(reply.status == 400 && reply.error["code"] as? String == "content_policy_violation", "\(reply.text)")
            let rows = try await gateway.dependencies.store.usage(UsageQuery())
            #expect(rows.count == 1 && rows[0].costMicroUSD == 0)
        }
    }

    /// An answer that breaks off mid-image ends the client's answer broken (never a 200 that
    /// parses) and is not charged.
    @Test func anAnswerCutMidImageIsBrokenAndFree() async throws {
        try await withGateway(configure: { $0.streamImages = .on; $0.upstream.maxAttempts = 1 }) { gateway in
            var failed = false
            do {
                let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"p [emulate:cut]","response_format":"b64_json"}"#, key: gateway.geminiKey)
                // A whole answer must not parse as a success.
                #expect(reply.status != 200 || reply.data.isEmpty, "\(reply.text.prefix(200))")
                failed = reply.status != 200
            } catch {
                failed = true  // the body broke off: what a client sees
            }
            #expect(failed)
            // The row is written when the gateway learns of the break, which may be after the client did.
            try await eventually("the failed request's usage row") { try await !gateway.dependencies.store.usage(UsageQuery()).isEmpty }
            let rows = try await gateway.dependencies.store.usage(UsageQuery())
            #expect(rows.count == 1 && rows[0].costMicroUSD == 0 && rows[0].status >= 400, "\(rows)")
        }
    }

    /// The image stream (`stream: true`) of a flash model: its one `completed` event carries
    /// Google's base64 as it arrives, with the same fields as an event built whole (here one
    /// with `output_format`, which converts and so takes the whole path), and its `usage.cost`
    /// is the usage row's charge.
    @Test func anImageStreamEventPassesTheImageThrough() async throws {
        try await withGateway { gateway in
            let streamed = try await gateway.generate(#"{"model":"nano-banana","prompt":"a streamed banana","stream":true}"#)
            #expect(streamed.status == 200)
            let events = CatalogTests.sse(streamed.text)
            #expect(events.map(\.event) == ["image_generation.completed"], "\(streamed.text.prefix(300))")
            let completed = try #require(events.first?.json)
            let bytes = try #require(Data(base64Encoded: completed["b64_json"] as? String ?? ""))
            #expect(Harness.pngSize(Array(bytes)) == (1024, 1024))
            #expect(completed["size"] as? String == "1024x1024" && completed["output_format"] as? String == "png")
            let whole = try await gateway.generate(#"{"model":"nano-banana","prompt":"a whole banana","stream":true,"output_format":"png"}"#)
            let wholeEvent = try #require(CatalogTests.sse(whole.text).first?.json)
            #expect(Set(completed.keys) == Set(wholeEvent.keys))
            let rows = try await gateway.dependencies.store.usage(UsageQuery())
            let charged = try #require(rows.first { $0.requestID == streamed.headers["x-request-id"].first })
            #expect(charged.status == 200 && charged.images == 1 && charged.costMicroUSD > 0)
            let cost = (completed["usage"] as? [String: Any])?["cost"] as? Double ?? -1
            #expect(abs(cost - Double(charged.costMicroUSD) / 1_000_000) < 1e-9)
        }
    }

    /// An image stream whose answer breaks off inside the image ends broken: no `completed`
    /// event that parses, nothing charged.
    @Test func anImageStreamCutMidImageEndsBroken() async throws {
        try await withGateway(configure: { $0.upstream.maxAttempts = 1 }) { gateway in
            do {
                let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"p [emulate:cut]","stream":true}"#)
                let events = CatalogTests.sse(reply.text)
                #expect(!events.contains { $0.event.hasSuffix(".completed") && !$0.json.isEmpty }, "\(reply.text.prefix(200))")
            } catch {
                // The body broke off: what a client sees.
            }
            try await eventually("the failed request's usage row") { try await !gateway.dependencies.store.usage(UsageQuery()).isEmpty }
            let rows = try await gateway.dependencies.store.usage(UsageQuery())
            #expect(rows.count == 1 && rows[0].costMicroUSD == 0 && rows[0].status >= 400, "\(rows)")
        }
    }

    /// A `url` answer streams into the store (the default): the URL serves the PNG, the charge
    /// is the usual header, and no partial file is left behind.
    @Test func aURLAnswerStreamsIntoTheStore() async throws {
        try await withGateway { gateway in
            #expect(gateway.configuration.streamImages == .url)
            let reply = try await gateway.generate(#"{"model":"nano-banana","prompt":"a stored banana","response_format":"url"}"#)
            #expect(reply.status == 200, "\(reply.text.prefix(300))")
            #expect(reply.headers["X-NanoGate-Cost"].first != nil && reply.headers["Transfer-Encoding"].first != "chunked")
            let url = try #require(reply.data.first?["url"] as? String)
            let image = try await gateway.get(url)
            #expect(image.status == 200 && Harness.pngSize(Array(image.body.readableBytesView)) == (1024, 1024))
            #expect(reply.json["size"] as? String == "1024x1024" && reply.json["output_format"] as? String == "png")
            let scratch = gateway.configuration.dataDirectory.appendingPathComponent("files")
            let leftovers = try FileManager.default.contentsOfDirectory(atPath: scratch.path).filter { $0.hasSuffix(".part") }
            #expect(leftovers.isEmpty, "\(leftovers)")
            // A cut answer leaves nothing either, and is an error (nothing was sent before it).
            let cut = try await gateway.generate(#"{"model":"nano-banana","prompt":"p [emulate:cut]","response_format":"url"}"#)
            #expect(cut.status == 502, "\(cut.text.prefix(300))")
            #expect(try FileManager.default.contentsOfDirectory(atPath: scratch.path).filter { $0.hasSuffix(".part") }.isEmpty)
        }
    }

    /// Pro answers hold a thought image before the final one, and `n` > 1 is one call per image:
    /// the streamed answer stores the final images only, and reads and charges exactly like
    /// the answer built whole (`NANOGATE_STREAM_IMAGES=off`).
    @Test func aProAnswerOfTwoImagesStoresTheFinalOnes() async throws {
        let body = #"{"model":"nano-banana-pro","prompt":"two stored bananas","response_format":"url","n":2,"size":"2k"}"#
        var answers: [(json: [String: Any], charge: Int, pixels: [String])] = []
        for streaming in [ImageStreaming.url, .off] {
            try await withGateway(configure: { $0.streamImages = streaming }) { gateway in
                let reply = try await gateway.generate(body)
                #expect(reply.status == 200, "\(streaming): \(reply.text.prefix(300))")
                var pixels: [String] = []
                for item in reply.data {
                    let image = try await gateway.get(try #require(item["url"] as? String))
                    let size = Harness.pngSize(Array(image.body.readableBytesView))
                    pixels.append("\(size.0)x\(size.1)")
                }
                let rows = try await gateway.dependencies.store.usage(UsageQuery())
                #expect(rows.count == 1 && rows[0].status == 200 && rows[0].images == 2, "\(rows)")
                answers.append((reply.json, rows.first?.costMicroUSD ?? -1, pixels))
            }
        }
        let (streamed, whole) = (answers[0], answers[1])
        // The thought image (a small draft) is never what a URL serves.
        #expect(streamed.pixels == ["2048x2048", "2048x2048"] && streamed.pixels == whole.pixels)
        #expect(Set(streamed.json.keys) == Set(whole.json.keys))
        #expect(streamed.json["size"] as? String == whole.json["size"] as? String && streamed.json["size"] as? String == "2048x2048")
        #expect(streamed.charge > 0 && streamed.charge == whole.charge)
        let usage = { (json: [String: Any]) in (json["usage"] as? [String: Any])?["output_tokens"] as? Int }
        #expect(usage(streamed.json) != nil && usage(streamed.json) == usage(whole.json))
        let revised = { (json: [String: Any]) in ((json["data"] as? [[String: Any]]) ?? []).map { $0["revised_prompt"] as? String ?? "" } }
        #expect(revised(streamed.json) == revised(whole.json))
    }
}
