import NanoGateCore
import Testing

/// The size rules, driven by the user's spec table and Google's pixel tables.
@Suite struct SizeRulesTests {
    let catalog = ModelCatalog.standard()

    func model(_ name: String) -> CatalogModel { catalog.model(named: name)! }
    /// Nano Banana 2 on `gemini-3.1-flash-image`, as an operator whose project still has it configures it.
    let nanoBanana2 = ModelCatalog.standard(flash31Upstream: "gemini-3.1-flash-image").model(named: "nano-banana-2")!

    /// The spec's table for the 2.5 family: each ratio and its WxH mean the same request.
    static let seedTable: [(ratio: String, pixels: String)] = [
        ("1:1", "1024x1024"), ("2:3", "832x1248"), ("3:2", "1248x832"), ("3:4", "864x1184"), ("4:3", "1184x864"),
        ("4:5", "896x1152"), ("5:4", "1152x896"), ("9:16", "768x1344"), ("16:9", "1344x768"), ("21:9", "1536x672"),
    ]

    @Test(arguments: ["nano-banana", "gemini-2.5-flash-image"])
    func flashAcceptsEveryRatioAndItsPixelSize(name: String) throws {
        for row in Self.seedTable {
            let byRatio = try SizeRules.resolve(model: model(name), size: row.ratio, aspectRatio: nil)
            let byPixels = try SizeRules.resolve(model: model(name), size: row.pixels, aspectRatio: nil)
            #expect(byRatio == byPixels)
            #expect(byRatio.aspectRatio?.rawValue == row.ratio)
            #expect(byRatio.imageSize == nil, "imageSize must never be sent for the 2.5 family")
            #expect(byRatio.expectedPixels(for: .flash25).description == row.pixels)
        }
    }

    @Test func flashDefaultsToModelChoiceAndMapsOpenAISizes() throws {
        #expect(try SizeRules.resolve(model: model("nano-banana"), size: nil, aspectRatio: nil) == ImageSpec(aspectRatio: nil, imageSize: nil))
        #expect(try SizeRules.resolve(model: model("nano-banana"), size: "auto", aspectRatio: nil).aspectRatio == nil)
        #expect(try SizeRules.resolve(model: model("nano-banana"), size: "1536x1024", aspectRatio: nil).aspectRatio == .landscape3x2)
        #expect(try SizeRules.resolve(model: model("nano-banana"), size: "1024x1792", aspectRatio: nil).aspectRatio == .portrait9x16)
        #expect(try SizeRules.resolve(model: model("nano-banana"), size: "512x512", aspectRatio: nil).aspectRatio == .square)
    }

    @Test(arguments: ["7:3", "1k", "4K", "1000x300", "big", "1:1:1", "1:4", "0x0"])
    func flashRefusesWhatTheSpecDoesNotList(size: String) {
        #expect {
            try SizeRules.resolve(model: model("nano-banana"), size: size, aspectRatio: nil)
        } throws: { error in
            let error = error as! GatewayError
            return error.status == 400 && error.param == "size" && error.message.contains("16:9 or 1344x768")
        }
    }

    /// One rule on every endpoint: the 2.5 family takes the ratio as `aspect_ratio` too, and
    /// a contradiction between the two fields is a 400 naming `aspect_ratio`.
    @Test func flashTakesAspectRatioUnlessItContradictsSize() throws {
        let flash = model("gemini-2.5-flash-image")
        #expect(try SizeRules.resolve(model: flash, size: nil, aspectRatio: "16:9") == ImageSpec(aspectRatio: .landscape16x9, imageSize: nil))
        #expect(try SizeRules.resolve(model: flash, size: "1344x768", aspectRatio: "16:9") == ImageSpec(aspectRatio: .landscape16x9, imageSize: nil))
        #expect {
            try SizeRules.resolve(model: flash, size: "3:2", aspectRatio: "16:9")
        } throws: { error in
            let error = error as! GatewayError
            return error.status == 400 && error.param == "aspect_ratio" && error.message.contains("contradicts")
        }
    }

    @Test(arguments: [("1k", ImageSize.oneK), ("1K", .oneK), ("2k", .twoK), ("2K", .twoK), ("4k", .fourK), ("4K", .fourK)])
    func proTiersInAnyCase(size: String, tier: ImageSize) throws {
        for name in ["nano-banana-pro", "gemini-3-pro-image-preview"] {
            let spec = try SizeRules.resolve(model: model(name), size: size, aspectRatio: "2:3")
            #expect(spec == ImageSpec(aspectRatio: .portrait2x3, imageSize: tier))
        }
    }

    @Test func proDefaultsTo1KAndReadsPixelSizesFromGooglesTable() throws {
        #expect(try SizeRules.resolve(model: model("nano-banana-pro"), size: nil, aspectRatio: nil) == ImageSpec(aspectRatio: nil, imageSize: .oneK))
        for (ratio, tiers) in PixelTables.pro3 {
            for (tier, pixels) in tiers {
                let spec = try SizeRules.resolve(model: model("nano-banana-pro"), size: pixels.description, aspectRatio: nil)
                #expect(spec == ImageSpec(aspectRatio: ratio, imageSize: tier))
                #expect(spec.expectedPixels(for: .pro3) == pixels)
            }
        }
        // A ratio in `size` is accepted leniently, at 1K.
        #expect(try SizeRules.resolve(model: model("nano-banana-pro"), size: "16:9", aspectRatio: nil) == ImageSpec(aspectRatio: .landscape16x9, imageSize: .oneK))
        // OpenAI sizes pick the smallest tier that is large enough.
        #expect(try SizeRules.resolve(model: model("nano-banana-pro"), size: "1792x1024", aspectRatio: nil) == ImageSpec(aspectRatio: .landscape16x9, imageSize: .twoK))
        #expect(try SizeRules.resolve(model: model("nano-banana-pro"), size: "1024x1024", aspectRatio: nil) == ImageSpec(aspectRatio: .square, imageSize: .oneK))
    }

    @Test func proRefusesBadValuesNamingTheField() {
        func param(_ size: String?, _ ratio: String?) -> String? {
            do {
                _ = try SizeRules.resolve(model: model("nano-banana-pro"), size: size, aspectRatio: ratio)
                return nil
            } catch { return error.param }
        }
        #expect(param("8k", nil) == "size")
        #expect(param("1344x768", nil) == "size")  // a 2.5 size, not in the 3-pro table
        #expect(param("1k", "7:3") == "aspect_ratio")
        #expect(param("16:9", "2:3") == "aspect_ratio")  // contradicting ratios
    }

    @Test func fixedTierNamesTakeTheRatioInSize() throws {
        // The spec's own example: {"model":"nano-banana-pro-2k","size":"2:3"}.
        let twoK = try SizeRules.resolve(model: model("nano-banana-pro-2k"), size: "2:3", aspectRatio: nil)
        #expect(twoK == ImageSpec(aspectRatio: .portrait2x3, imageSize: .twoK))
        #expect(twoK.expectedPixels(for: .pro3) == PixelSize(1696, 2528))
        let fourK = try SizeRules.resolve(model: model("nano-banana-pro-4k"), size: nil, aspectRatio: "21:9")
        #expect(fourK.expectedPixels(for: .pro3) == PixelSize(6336, 2688))
        #expect(try SizeRules.resolve(model: model("nano-banana-pro-4k"), size: "4k", aspectRatio: nil).imageSize == .fourK)
        #expect(throws: GatewayError.self) { try SizeRules.resolve(model: model("nano-banana-pro-2k"), size: "4k", aspectRatio: nil) }
        // OpenAI clients send 1024x1024 by default: on a fixed tier it means the ratio only.
        #expect(try SizeRules.resolve(model: model("nano-banana-pro-4k"), size: "1024x1024", aspectRatio: nil) == ImageSpec(aspectRatio: .square, imageSize: .fourK))
        // Any WxH of an exact ratio means that ratio; on a fixed tier the name decides the pixels.
        #expect(try SizeRules.resolve(model: model("nano-banana-pro-4k"), size: "2048x2048", aspectRatio: nil) == ImageSpec(aspectRatio: .square, imageSize: .fourK))
        #expect(throws: GatewayError.self) { try SizeRules.resolve(model: model("nano-banana-pro-4k"), size: "2000x1000", aspectRatio: nil) }
    }

    @Test func catalogMatchesTheSpec() {
        #expect(catalog.names == [
            "nano-banana", "gemini-2.5-flash-image", "nano-banana-pro", "gemini-3-pro-image-preview", "nano-banana-pro-2k", "nano-banana-pro-4k",
            "gemini-3-pro-image", "nano-banana-2", "gemini-3.1-flash-image", "nano-banana-2.1", "gemini-nano-banana-2.1",
        ])
        #expect(catalog.models.filter { !$0.allowsURLOutput }.map(\.name) == ["gemini-2.5-flash-image", "gemini-3-pro-image-preview"], "the spec's gemini-* names answer base64")
        // Today's Google ids (wire-formats.md E1): the preview id was shut down on 2026-06-25.
        for name in ["nano-banana-pro", "gemini-3-pro-image-preview", "nano-banana-pro-2k", "nano-banana-pro-4k"] {
            #expect(catalog.model(named: name)?.upstreamModel == "gemini-3-pro-image", "\(name)")
        }
        // 2.5 is limited to old projects (F1): its names go on to Nano Banana 2.1.
        for name in ["nano-banana", "gemini-2.5-flash-image"] {
            #expect(catalog.model(named: name)?.chain.map(\.id) == ["gemini-2.5-flash-image", "gemini-nano-banana-2.1"])
            #expect(catalog.model(named: name)?.fallbacks.map(\.family) == [.flash21])
        }
        // 3.1 was shut down on 2026-10-29: the Nano Banana 2 names and the new ones are 2.1's.
        for name in ["nano-banana-2", "gemini-3.1-flash-image", "nano-banana-2.1", "gemini-nano-banana-2.1"] {
            #expect(catalog.model(named: name)?.upstreamModel == "gemini-nano-banana-2.1", "\(name)")
            #expect(catalog.model(named: name)?.family == .flash21, "\(name)")
            #expect(catalog.model(named: name)?.sizes == [.oneK, .twoK, .fourK], "no 512 on 2.1")
            #expect(catalog.model(named: name)?.aspectRatios.count == 14 && catalog.model(named: name)?.maxInputImages == 14)
        }
        #expect(ModelCatalog.standard(flashFallback: "gemini-nano-banana-2.1, gemini-3-pro-image").model(named: "nano-banana")?.fallbacks
            == [UpstreamFallback(id: "gemini-nano-banana-2.1", family: .flash21), UpstreamFallback(id: "gemini-3-pro-image", family: .pro3)])
        #expect(ModelFamily.flash21.googlePrices == TokenPrices(inputPerMillion: 1.50, outputTextPerMillion: 7.50, outputImagePerMillion: 30))
        #expect(ModelFamily.flash21.outputImageTokens(.oneK) == 1120 && ModelFamily.flash21.pixels(.tall1x8, .twoK) == PixelSize(768, 6144))
        let renamed = ModelCatalog.standard(proUpstream: "gemini-3-pro-image-v2")
        #expect(renamed.model(named: "nano-banana-pro-4k")?.upstreamModel == "gemini-3-pro-image-v2")
        #expect(ModelFamily.flash25.outputImageTokens(nil) == 1290)
        #expect(ModelFamily.pro3.outputImageTokens(.twoK) == 1120)
        #expect(ModelFamily.pro3.outputImageTokens(.fourK) == 2000)
        #expect(ModelFamily.flash31.outputImageTokens(.half) == 747)
        #expect(ModelFamily.flash31.outputImageTokens(.fourK) == 2520)
        #expect(ModelFamily.flash31.googlePrices == TokenPrices(inputPerMillion: 0.50, outputTextPerMillion: 3.00, outputImagePerMillion: 60))
    }

    /// Nano Banana 2: `512` and the four extreme ratios are its own; asking another model for them
    /// is a 400 naming the parameter and listing what that model takes.
    @Test func nanoBanana2TakesItsOwnSizesAndRatios() throws {
        let nb2 = nanoBanana2
        #expect(try SizeRules.resolve(model: model("nano-banana-2.1"), size: "2k", aspectRatio: "8:1") == ImageSpec(aspectRatio: .wide8x1, imageSize: .twoK))
        #expect(throws: GatewayError.self) { try SizeRules.resolve(model: model("nano-banana-2.1"), size: "512", aspectRatio: nil) }
        #expect(try SizeRules.resolve(model: nb2, size: "512", aspectRatio: "8:1") == ImageSpec(aspectRatio: .wide8x1, imageSize: .half))
        #expect(try SizeRules.resolve(model: nb2, size: "1:4", aspectRatio: nil) == ImageSpec(aspectRatio: .tall1x4, imageSize: .oneK))
        #expect(try SizeRules.resolve(model: nb2, size: "192x1536", aspectRatio: nil) == ImageSpec(aspectRatio: .tall1x8, imageSize: .half))
        #expect(try SizeRules.resolve(model: nb2, size: "512x512", aspectRatio: nil) == ImageSpec(aspectRatio: .square, imageSize: .half))
        #expect(nb2.family.pixels(.wide8x1, .fourK) == PixelSize(12288, 1536))
        #expect(nb2.family.pixels(.portrait9x16, .half) == PixelSize(384, 688))
        for (name, size, ratio, param) in [
            ("nano-banana-pro", nil, "1:4", "aspect_ratio"), ("nano-banana-pro", "512", nil, "size"), ("nano-banana", "4:1", nil, "size"),
            ("nano-banana-pro-2k", nil, "8:1", "aspect_ratio"),
        ] as [(String, String?, String?, String)] {
            #expect {
                try SizeRules.resolve(model: model(name), size: size, aspectRatio: ratio)
            } throws: { error in
                let error = error as! GatewayError
                return error.status == 400 && error.param == param && error.message.contains("21:9")
            }
        }
    }

    /// OpenAI's `quality` picks a tier on tiered models when `size` names none; an arbitrary
    /// `WxH` counts when it is exactly one of the model's ratios.
    @Test func qualityAndArbitraryPixelSizes() throws {
        #expect(try SizeRules.resolve(model: nanoBanana2, size: nil, aspectRatio: nil, quality: .low).imageSize == .half)
        #expect(try SizeRules.resolve(model: model("nano-banana-pro"), size: nil, aspectRatio: nil, quality: .low).imageSize == .oneK)
        #expect(try SizeRules.resolve(model: model("nano-banana-pro"), size: "16:9", aspectRatio: nil, quality: .hd).imageSize == .twoK)
        #expect(try SizeRules.resolve(model: model("nano-banana-pro"), size: nil, aspectRatio: nil, quality: .high).imageSize == .twoK)
        #expect(try SizeRules.resolve(model: model("nano-banana-pro"), size: "4k", aspectRatio: nil, quality: .low).imageSize == .fourK, "an explicit size wins")
        #expect(try SizeRules.resolve(model: model("nano-banana-pro"), size: nil, aspectRatio: nil, quality: .medium).imageSize == .oneK)
        #expect(try SizeRules.resolve(model: model("nano-banana"), size: nil, aspectRatio: nil, quality: .high).imageSize == nil)
        #expect(try SizeRules.resolve(model: model("nano-banana-pro"), size: "1920x1080", aspectRatio: nil) == ImageSpec(aspectRatio: .landscape16x9, imageSize: .twoK))
        #expect(try SizeRules.resolve(model: model("nano-banana"), size: "1920x1080", aspectRatio: nil).aspectRatio == .landscape16x9)
        #expect(try SizeRules.resolve(model: model("nano-banana-pro"), size: "6000x4000", aspectRatio: nil) == ImageSpec(aspectRatio: .landscape3x2, imageSize: .fourK))
        #expect(throws: GatewayError.self) { try SizeRules.resolve(model: model("nano-banana-pro"), size: "1000x300", aspectRatio: nil) }
        #expect(ImageQuality.reported(for: .half) == "low" && ImageQuality.reported(for: nil) == "medium" && ImageQuality.reported(for: .fourK) == "high")
    }
}
