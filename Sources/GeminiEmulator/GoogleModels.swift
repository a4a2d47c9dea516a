/// The emulator's own knowledge of Google's image models: which `aspectRatio` and `imageSize`
/// strings each accepts, the pixels it answers with and the tokens it bills.
///
/// Typed out from `wire-formats.md` §A3/§A4 and Part E (E2, E3), on purpose independent of
/// NanoGateCore's catalog: if the gateway's tables are wrong, the emulator disagrees and a test fails.

/// Width and height of an image the emulator renders.
public struct EmulatorPixels: Hashable, Sendable, CustomStringConvertible {
    /// Width in pixels.
    public var width: Int
    /// Height in pixels.
    public var height: Int

    /// A size of `width`×`height`.
    public init(_ width: Int, _ height: Int) {
        self.width = width
        self.height = height
    }

    /// `WxH`, as in Google's tables.
    public var description: String { "\(width)x\(height)" }
}

/// One Google image model as the emulator serves it.
public struct GoogleImageModel: Sendable {
    /// The model lines the emulator knows.
    public enum Line: String, Sendable {
        /// `gemini-2.5-flash-image`: one size per ratio, no `imageSize` documented, not a thinking model.
        case flash25
        /// `gemini-3-pro-image(-preview)`: `1K`/`2K`/`4K`, thinking always on, signatures enforced.
        case pro3
        /// `gemini-3.1-flash-image`: adds `512` and the ratios `1:4 4:1 1:8 8:1`.
        case flash31
        /// `gemini-nano-banana-2.1`: `1K`/`2K`/`4K` (no `512`) and the 14 ratios (F2).
        case flash21
    }

    /// Which line this is.
    public var line: Line
    /// `aspectRatio` values it accepts, spelled exactly as on the wire.
    public var aspectRatios: [String]
    /// `imageSize` values it accepts (exact, case-sensitive); empty when the field is not documented.
    public var imageSizes: [String]
    /// The size used when `imageSize` is omitted (nil for the one-size 2.5 model).
    public var defaultSize: String?
    /// Pixels by ratio, then by size (`""` for the one-size model).
    public var pixelTable: [String: [String: EmulatorPixels]]
    /// Output tokens billed for one image, by size (`""` for the one-size model).
    public var imageTokens: [String: Int]
    /// Prompt tokens billed per input image.
    public var inputImageTokens: Int
    /// Whether the answer carries thought parts and thought signatures, and replayed model turns must carry them.
    public var thinks: Bool
    /// `thinkingConfig.thinkingLevel` values it takes (empty: the field is refused).
    public var thinkingLevels: [String] = []

    /// The pixels Google answers with for this ratio and size (nil for a pair Google does not serve).
    public func pixels(ratio: String, size: String?) -> EmulatorPixels? {
        pixelTable[ratio]?[size ?? defaultSize ?? ""]
    }

    /// Output image tokens for one image of this size.
    public func outputImageTokens(size: String?) -> Int {
        imageTokens[size ?? defaultSize ?? ""] ?? 0
    }

    /// The ten ratios both 2.5 Flash Image and 3 Pro Image document (§A3, E2).
    static let tenRatios = ["1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"]

    /// `gemini-2.5-flash-image`, §A4 (every ratio 1290 tokens).
    public static let flash25 = GoogleImageModel(
        line: .flash25, aspectRatios: tenRatios, imageSizes: [], defaultSize: nil,
        pixelTable: [
            "1:1": ["": .init(1024, 1024)], "2:3": ["": .init(832, 1248)], "3:2": ["": .init(1248, 832)],
            "3:4": ["": .init(864, 1184)], "4:3": ["": .init(1184, 864)], "4:5": ["": .init(896, 1152)],
            "5:4": ["": .init(1152, 896)], "9:16": ["": .init(768, 1344)], "16:9": ["": .init(1344, 768)],
            "21:9": ["": .init(1536, 672)],
        ],
        imageTokens: ["": 1290], inputImageTokens: 258, thinks: false
    )

    /// `gemini-3-pro-image(-preview)`, §A4 and E3 (1120 tokens at 1K and 2K, 2000 at 4K; 560 per input image, §A5).
    public static let pro3 = GoogleImageModel(
        line: .pro3, aspectRatios: tenRatios, imageSizes: ["1K", "2K", "4K"], defaultSize: "1K",
        pixelTable: [
            "1:1": ["1K": .init(1024, 1024), "2K": .init(2048, 2048), "4K": .init(4096, 4096)],
            "2:3": ["1K": .init(848, 1264), "2K": .init(1696, 2528), "4K": .init(3392, 5056)],
            "3:2": ["1K": .init(1264, 848), "2K": .init(2528, 1696), "4K": .init(5056, 3392)],
            "3:4": ["1K": .init(896, 1200), "2K": .init(1792, 2400), "4K": .init(3584, 4800)],
            "4:3": ["1K": .init(1200, 896), "2K": .init(2400, 1792), "4K": .init(4800, 3584)],
            "4:5": ["1K": .init(928, 1152), "2K": .init(1856, 2304), "4K": .init(3712, 4608)],
            "5:4": ["1K": .init(1152, 928), "2K": .init(2304, 1856), "4K": .init(4608, 3712)],
            "9:16": ["1K": .init(768, 1376), "2K": .init(1536, 2752), "4K": .init(3072, 5504)],
            "16:9": ["1K": .init(1376, 768), "2K": .init(2752, 1536), "4K": .init(5504, 3072)],
            "21:9": ["1K": .init(1584, 672), "2K": .init(3168, 1344), "4K": .init(6336, 2688)],
        ],
        imageTokens: ["1K": 1120, "2K": 1120, "4K": 2000], inputImageTokens: 560, thinks: true
    )

    /// `gemini-3.1-flash-image`, E2/E3 (747, 1120, 1680, 2520 tokens). The 21:9 cell at `512` is
    /// 792×168 in Google's table (E3 flags it as a probable typo); the emulator answers with it as printed.
    /// Input-image tokens are not published (E4); the emulator reports 560, as for Pro.
    public static let flash31 = GoogleImageModel(
        line: .flash31, aspectRatios: tenRatios + ["1:4", "4:1", "1:8", "8:1"], imageSizes: ["512", "1K", "2K", "4K"], defaultSize: "1K",
        pixelTable: [
            "1:1": ["512": .init(512, 512), "1K": .init(1024, 1024), "2K": .init(2048, 2048), "4K": .init(4096, 4096)],
            "1:4": ["512": .init(256, 1024), "1K": .init(512, 2048), "2K": .init(1024, 4096), "4K": .init(2048, 8192)],
            "1:8": ["512": .init(192, 1536), "1K": .init(384, 3072), "2K": .init(768, 6144), "4K": .init(1536, 12288)],
            "2:3": ["512": .init(424, 632), "1K": .init(848, 1264), "2K": .init(1696, 2528), "4K": .init(3392, 5056)],
            "3:2": ["512": .init(632, 424), "1K": .init(1264, 848), "2K": .init(2528, 1696), "4K": .init(5056, 3392)],
            "3:4": ["512": .init(448, 600), "1K": .init(896, 1200), "2K": .init(1792, 2400), "4K": .init(3584, 4800)],
            "4:1": ["512": .init(1024, 256), "1K": .init(2048, 512), "2K": .init(4096, 1024), "4K": .init(8192, 2048)],
            "4:3": ["512": .init(600, 448), "1K": .init(1200, 896), "2K": .init(2400, 1792), "4K": .init(4800, 3584)],
            "4:5": ["512": .init(464, 576), "1K": .init(928, 1152), "2K": .init(1856, 2304), "4K": .init(3712, 4608)],
            "5:4": ["512": .init(576, 464), "1K": .init(1152, 928), "2K": .init(2304, 1856), "4K": .init(4608, 3712)],
            "8:1": ["512": .init(1536, 192), "1K": .init(3072, 384), "2K": .init(6144, 768), "4K": .init(12288, 1536)],
            "9:16": ["512": .init(384, 688), "1K": .init(768, 1376), "2K": .init(1536, 2752), "4K": .init(3072, 5504)],
            "16:9": ["512": .init(688, 384), "1K": .init(1376, 768), "2K": .init(2752, 1536), "4K": .init(5504, 3072)],
            "21:9": ["512": .init(792, 168), "1K": .init(1584, 672), "2K": .init(3168, 1344), "4K": .init(6336, 2688)],
        ],
        imageTokens: ["512": 747, "1K": 1120, "2K": 1680, "4K": 2520], inputImageTokens: 560, thinks: true
    )

    /// `gemini-nano-banana-2.1` (F2): sizes `1K`/`2K`/`4K` (`512` refused) and the 14 ratios.
    /// ASSUMED: Google has not published its pixel table or token counts where we could read
    /// them; the emulator answers with Nano Banana 2's (E3) until a live key says otherwise.
    public static let flash21: GoogleImageModel = {
        var model = flash31
        model.line = .flash21
        model.imageSizes = ["1K", "2K", "4K"]
        model.pixelTable = flash31.pixelTable.mapValues { $0.filter { $0.key != "512" } }
        model.imageTokens = flash31.imageTokens.filter { $0.key != "512" }
        model.thinkingLevels = ["MINIMAL", "MEDIUM", "HIGH"]
        return model
    }()
}
