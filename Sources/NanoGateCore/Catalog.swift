/// The whole model catalog in one place: what each public model name means upstream,
/// which sizes and ratios it accepts, its pixel tables and its prices.
///
/// Read this file first. Everything that validates a request or prices a result asks the
/// catalog; nothing else hard-codes a model name.

/// One of the ten aspect ratios both Gemini image models document.
public enum AspectRatio: String, CaseIterable, Sendable, Codable {
    case square = "1:1"
    case portrait2x3 = "2:3"
    case landscape3x2 = "3:2"
    case portrait3x4 = "3:4"
    case landscape4x3 = "4:3"
    case portrait4x5 = "4:5"
    case landscape5x4 = "5:4"
    case portrait9x16 = "9:16"
    case landscape16x9 = "16:9"
    case ultrawide21x9 = "21:9"

    /// All ratios, spelled as the API accepts them, for error messages.
    public static var accepted: String { allCases.map(\.rawValue).joined(separator: ", ") }
}

/// Gemini 3's output resolution tier. Google rejects lower-case spellings, so the raw value is
/// exactly what goes on the wire.
public enum ImageSize: String, CaseIterable, Sendable, Codable, Comparable {
    case oneK = "1K"
    case twoK = "2K"
    case fourK = "4K"

    public static func < (lhs: ImageSize, rhs: ImageSize) -> Bool {
        allCases.firstIndex(of: lhs)! < allCases.firstIndex(of: rhs)!
    }

    /// Parses `1k`, `1K`, `2k`, … leniently.
    public init?(lenient text: String) {
        self.init(rawValue: text.uppercased())
    }
}

/// Width and height in pixels.
public struct PixelSize: Hashable, Sendable, CustomStringConvertible {
    public var width: Int
    public var height: Int
    public init(_ width: Int, _ height: Int) {
        self.width = width
        self.height = height
    }
    public var description: String { "\(width)x\(height)" }
}

/// The upstream model families; each has its own pixel table and token figures.
public enum ModelFamily: String, Sendable {
    /// `gemini-2.5-flash-image`: about one megapixel, no `imageSize`.
    case flash25
    /// `gemini-3-pro-image-preview`: `imageSize` 1K/2K/4K, thinking always on.
    case pro3

    /// Google's published output resolutions (ai.google.dev image-generation docs).
    public func pixels(_ ratio: AspectRatio, _ size: ImageSize?) -> PixelSize {
        switch self {
        case .flash25:
            return PixelTables.flash25[ratio]!
        case .pro3:
            return PixelTables.pro3[ratio]![size ?? .oneK]!
        }
    }

    /// Output tokens Google bills for one image (1290 on 2.5; 1120 at 1K/2K and 2000 at 4K on 3-pro).
    public func outputImageTokens(_ size: ImageSize?) -> Int {
        switch self {
        case .flash25: return 1290
        case .pro3: return (size ?? .oneK) == .fourK ? 2000 : 1120
        }
    }
}

/// How the `size` field of a request is read for a model.
public enum SizeMode: Sendable, Equatable {
    /// 2.5 family: a ratio (`2:3`) or the matching pixel size from the seed's table (`832x1248`).
    case ratioOrPixels
    /// `nano-banana-pro`, `gemini-3-pro-image-preview`: `1k`/`2k`/`4k`; ratio via `aspect_ratio`.
    case tier
    /// `nano-banana-pro-2k`/`-4k`: the tier is in the name, `size` carries the ratio.
    case ratioAtFixedTier(ImageSize)
}

/// USD prices per million tokens, as on Google's paid-tier invoice.
public struct TokenPrices: Sendable, Equatable {
    public var inputPerMillion: Double
    public var outputTextPerMillion: Double
    public var outputImagePerMillion: Double
    public init(inputPerMillion: Double, outputTextPerMillion: Double, outputImagePerMillion: Double) {
        self.inputPerMillion = inputPerMillion
        self.outputTextPerMillion = outputTextPerMillion
        self.outputImagePerMillion = outputImagePerMillion
    }
}

/// One public model name and everything the gateway needs to serve it.
public struct CatalogModel: Sendable, Equatable {
    /// The name clients send in `model`.
    public var name: String
    public var family: ModelFamily
    /// The id sent to Google. Configurable because Google renames preview models.
    public var upstreamModel: String
    public var sizeMode: SizeMode
    /// Whether the `aspect_ratio` field is accepted.
    public var acceptsAspectRatio: Bool
    /// Whether this name may answer with a URL (`response_format: "url"`).
    public var allowsURLOutput: Bool
    /// Most input images an edit or chat turn may carry for this model.
    public var maxInputImages: Int
    public var prices: TokenPrices
}

/// Google's pixel tables, transcribed from the image-generation docs (see wire-formats.md §A4).
public enum PixelTables {
    public static let flash25: [AspectRatio: PixelSize] = [
        .square: .init(1024, 1024), .portrait2x3: .init(832, 1248), .landscape3x2: .init(1248, 832),
        .portrait3x4: .init(864, 1184), .landscape4x3: .init(1184, 864), .portrait4x5: .init(896, 1152),
        .landscape5x4: .init(1152, 896), .portrait9x16: .init(768, 1344), .landscape16x9: .init(1344, 768),
        .ultrawide21x9: .init(1536, 672),
    ]

    public static let pro3: [AspectRatio: [ImageSize: PixelSize]] = [
        .square: [.oneK: .init(1024, 1024), .twoK: .init(2048, 2048), .fourK: .init(4096, 4096)],
        .portrait2x3: [.oneK: .init(848, 1264), .twoK: .init(1696, 2528), .fourK: .init(3392, 5056)],
        .landscape3x2: [.oneK: .init(1264, 848), .twoK: .init(2528, 1696), .fourK: .init(5056, 3392)],
        .portrait3x4: [.oneK: .init(896, 1200), .twoK: .init(1792, 2400), .fourK: .init(3584, 4800)],
        .landscape4x3: [.oneK: .init(1200, 896), .twoK: .init(2400, 1792), .fourK: .init(4800, 3584)],
        .portrait4x5: [.oneK: .init(928, 1152), .twoK: .init(1856, 2304), .fourK: .init(3712, 4608)],
        .landscape5x4: [.oneK: .init(1152, 928), .twoK: .init(2304, 1856), .fourK: .init(4608, 3712)],
        .portrait9x16: [.oneK: .init(768, 1376), .twoK: .init(1536, 2752), .fourK: .init(3072, 5504)],
        .landscape16x9: [.oneK: .init(1376, 768), .twoK: .init(2752, 1536), .fourK: .init(5504, 3072)],
        .ultrawide21x9: [.oneK: .init(1584, 672), .twoK: .init(3168, 1344), .fourK: .init(6336, 2688)],
    ]

    /// OpenAI's standard `size` values, mapped to the nearest Gemini ratio. On the 3-pro models
    /// the tier is the smallest whose long side reaches the requested long side.
    public static let openAISizes: [String: AspectRatio] = [
        "256x256": .square, "512x512": .square, "1024x1024": .square,
        "1536x1024": .landscape3x2, "1024x1536": .portrait2x3,
        "1792x1024": .landscape16x9, "1024x1792": .portrait9x16,
    ]
}

/// The model catalog: the six names from the user's spec, with defaults that can be overridden.
public struct ModelCatalog: Sendable {
    public private(set) var models: [CatalogModel]

    public init(models: [CatalogModel]) {
        self.models = models
    }

    /// Looks a public model name up (exact, case-sensitive, as OpenAI does).
    public func model(named name: String) -> CatalogModel? {
        models.first { $0.name == name }
    }

    /// Every public name, for error messages and `/v1/models`.
    public var names: [String] { models.map(\.name) }

    /// Google's paid-tier prices (USD per 1M tokens, ai.google.dev/gemini-api/docs/pricing).
    public static let flash25Prices = TokenPrices(inputPerMillion: 0.30, outputTextPerMillion: 2.50, outputImagePerMillion: 30)
    public static let pro3Prices = TokenPrices(inputPerMillion: 2.00, outputTextPerMillion: 12.00, outputImagePerMillion: 120)

    /// The catalog the user's spec describes.
    ///
    /// - Parameters:
    ///   - flashUpstream: Google's id for the 2.5 family (`NANOGATE_UPSTREAM_FLASH`).
    ///   - proUpstream: Google's id for the 3-pro family (`NANOGATE_UPSTREAM_PRO`).
    public static func standard(
        flashUpstream: String = "gemini-2.5-flash-image",
        proUpstream: String = "gemini-3-pro-image-preview"
    ) -> ModelCatalog {
        func flash(_ name: String, url: Bool) -> CatalogModel {
            CatalogModel(
                name: name, family: .flash25, upstreamModel: flashUpstream, sizeMode: .ratioOrPixels,
                acceptsAspectRatio: false, allowsURLOutput: url, maxInputImages: 6, prices: flash25Prices
            )
        }
        func pro(_ name: String, _ mode: SizeMode, url: Bool) -> CatalogModel {
            CatalogModel(
                name: name, family: .pro3, upstreamModel: proUpstream, sizeMode: mode,
                acceptsAspectRatio: true, allowsURLOutput: url, maxInputImages: 6, prices: pro3Prices
            )
        }
        return ModelCatalog(models: [
            flash("nano-banana", url: true),
            flash("gemini-2.5-flash-image", url: false),
            pro("nano-banana-pro", .tier, url: true),
            pro("gemini-3-pro-image-preview", .tier, url: false),
            pro("nano-banana-pro-2k", .ratioAtFixedTier(.twoK), url: true),
            pro("nano-banana-pro-4k", .ratioAtFixedTier(.fourK), url: true),
        ])
    }
}
