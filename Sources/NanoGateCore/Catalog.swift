import Foundation

/// The whole model catalog in one place: what each public model name means upstream,
/// which sizes and ratios it accepts, its pixel tables and its prices.
///
/// Read this file first. Everything that validates a request or prices a result asks the
/// catalog; nothing else hard-codes a model name.

/// An aspect ratio Google documents for at least one image model (each family accepts its own
/// subset: `ModelFamily.aspectRatios`).
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
    /// Nano Banana 2 only (wire-formats.md E2).
    case tall1x4 = "1:4"
    case wide4x1 = "4:1"
    case tall1x8 = "1:8"
    case wide8x1 = "8:1"

    /// The ten ratios 2.5 Flash Image and 3 Pro Image document.
    public static let ten: [AspectRatio] = [
        .square, .portrait2x3, .landscape3x2, .portrait3x4, .landscape4x3, .portrait4x5, .landscape5x4,
        .portrait9x16, .landscape16x9, .ultrawide21x9,
    ]

    /// Width and height parts (`16:9` → (16, 9)).
    public var parts: (width: Int, height: Int) {
        let numbers = rawValue.split(separator: ":").map { Int($0)! }
        return (numbers[0], numbers[1])
    }
}

/// Gemini's output resolution tier. Google rejects lower-case spellings, so the raw value is
/// exactly what goes on the wire (`"512"`, never `"0.5K"` or `"512px"`, E2).
public enum ImageSize: String, CaseIterable, Sendable, Codable, Comparable {
    case half = "512"
    case oneK = "1K"
    case twoK = "2K"
    case fourK = "4K"

    /// Smaller tiers first.
    private var rank: Int {
        switch self {
        case .half: 0
        case .oneK: 1
        case .twoK: 2
        case .fourK: 3
        }
    }

    public static func < (lhs: ImageSize, rhs: ImageSize) -> Bool { lhs.rank < rhs.rank }

    /// Parses `1k`, `1K`, `2k`, … and `512`/`0.5k`/`512px` leniently.
    public init?(lenient text: String) {
        let upper = text.uppercased()
        if ["512", "0.5K", "512PX", ".5K"].contains(upper) {
            self = .half
            return
        }
        self.init(rawValue: upper)
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

    /// `1024x768` (also `×`, any case); nil for anything else or absurd numbers.
    public init?(parsing text: String) {
        let pieces = text.lowercased().replacingOccurrences(of: "×", with: "x").split(separator: "x")
        guard pieces.count == 2, let width = Int(pieces[0]), let height = Int(pieces[1]),
            (1...100_000).contains(width), (1...100_000).contains(height)
        else { return nil }
        self.init(width, height)
    }

    var longSide: Int { max(width, height) }
}

/// The upstream model families; each has its own ratios, sizes, pixel table, token figures and
/// Google's prices (https://ai.google.dev/gemini-api/docs/pricing; wire-formats notes Part E).
public enum ModelFamily: String, Sendable, CaseIterable, Codable {
    /// `gemini-2.5-flash-image` ("Nano Banana"): about one megapixel per ratio, no `imageSize`.
    case flash25
    /// `gemini-3-pro-image` ("Nano Banana Pro"): `imageSize` 1K/2K/4K, thinking always on.
    case pro3
    /// `gemini-3.1-flash-image` ("Nano Banana 2"): `imageSize` 512/1K/2K/4K and 14 ratios.
    /// Shut down by Google on 2026-10-29 (wire-formats notes F1); kept for operators whose
    /// configuration names it.
    case flash31
    /// `gemini-nano-banana-2.1` ("Nano Banana 2.1", GA 2026-10-06): `imageSize` 1K/2K/4K (no
    /// 512), the 14 ratios, up to 14 reference images (F2). Its pixel table and token counts are
    /// not published: Nano Banana 2's are assumed, and billing follows `usageMetadata` as always.
    case flash21

    /// The `aspectRatio` values Google accepts for this family.
    public var aspectRatios: [AspectRatio] {
        switch self {
        case .flash25, .pro3: AspectRatio.ten
        case .flash31, .flash21: AspectRatio.ten + [.tall1x4, .wide4x1, .tall1x8, .wide8x1]
        }
    }

    /// The `imageSize` values it accepts; empty for the one-size 2.5 model.
    public var imageSizes: [ImageSize] {
        switch self {
        case .flash25: []
        case .pro3, .flash21: [.oneK, .twoK, .fourK]
        case .flash31: [.half, .oneK, .twoK, .fourK]
        }
    }

    /// The tier Google uses when `imageSize` is omitted (nil: the family has none).
    public var defaultSize: ImageSize? { imageSizes.isEmpty ? nil : .oneK }

    /// Google's published output resolution for a ratio and tier. SizeRules only produces
    /// pairs the family serves; any other pair answers the 1:1 default rather than trap.
    public func pixels(_ ratio: AspectRatio, _ size: ImageSize?) -> PixelSize {
        switch self {
        case .flash25:
            return PixelTables.flash25[ratio] ?? PixelSize(1024, 1024)
        case .pro3, .flash31, .flash21:
            let tier = size ?? .oneK
            if tier == .half { return PixelTables.flash31At512[ratio] ?? PixelSize(512, 512) }
            guard let base = PixelTables.oneK[ratio], self != .pro3 || AspectRatio.ten.contains(ratio) else { return PixelSize(1024, 1024) }
            // Above 1K every cell is the 1K cell scaled exactly (E3).
            let scale = tier == .fourK ? 4 : tier == .twoK ? 2 : 1
            return PixelSize(base.width * scale, base.height * scale)
        }
    }

    /// Output tokens Google bills for one image (E3).
    public func outputImageTokens(_ size: ImageSize?) -> Int {
        switch self {
        case .flash25: return 1290
        case .pro3: return (size ?? .oneK) == .fourK ? 2000 : 1120
        case .flash31, .flash21:
            // 2.1's counts are not published: Nano Banana 2's are assumed (F2).
            switch size ?? .oneK {
            case .half: return 747
            case .oneK: return 1120
            case .twoK: return 1680
            case .fourK: return 2520
            }
        }
    }

    /// Google's paid-tier prices (E4).
    public var googlePrices: TokenPrices {
        switch self {
        case .flash25: TokenPrices(inputPerMillion: 0.30, outputTextPerMillion: 2.50, outputImagePerMillion: 30)
        case .pro3: TokenPrices(inputPerMillion: 2.00, outputTextPerMillion: 12.00, outputImagePerMillion: 120)
        case .flash31: TokenPrices(inputPerMillion: 0.50, outputTextPerMillion: 3.00, outputImagePerMillion: 60)
        // LiteLLM's day-0 announcement of 2.1 (F2): about $0.0336 per 1K image.
        case .flash21: TokenPrices(inputPerMillion: 1.50, outputTextPerMillion: 7.50, outputImagePerMillion: 30)
        }
    }

    /// Whether Google's answer carries thought signatures that later turns must send back (E6).
    public var thinks: Bool { self != .flash25 }

    /// `thinkingConfig.thinkingLevel` values the family takes (F2); empty: none is documented,
    /// and `reasoning_effort` is refused.
    public var thinkingLevels: [String] {
        self == .flash21 ? ["MINIMAL", "MEDIUM", "HIGH"] : []
    }

    /// OpenAI's `reasoning_effort` as this family's thinking level: `minimal` and `low` →
    /// `MINIMAL`, `medium` → `MEDIUM`, `high` → `HIGH`; nil where the family has no levels.
    public func thinkingLevel(for effort: ReasoningEffort) -> String? {
        guard !thinkingLevels.isEmpty else { return nil }
        switch effort {
        case .minimal, .low: return "MINIMAL"
        case .medium: return "MEDIUM"
        case .high: return "HIGH"
        }
    }

    /// The family of a Google model id, for ids the gateway knows (a configured fallback or a
    /// new upstream without `family:`); nil for anything else.
    public init?(upstreamID id: String) {
        if id.hasPrefix("gemini-2.5-flash-image") {
            self = .flash25
        } else if id.hasPrefix("gemini-3-pro-image") {
            self = .pro3
        } else if id.hasPrefix("gemini-3.1-flash-image") {
            self = .flash31
        } else if id.hasPrefix("gemini-nano-banana-2.1") {
            self = .flash21
        } else {
            return nil
        }
    }

    /// Google's release date of the family's model (unix seconds), as OpenAI's `created`.
    public var released: Int {
        switch self {
        case .flash25: 1_759_363_200  // 2025-10-02
        case .pro3: 1_779_926_400  // 2026-05-28 (GA)
        case .flash31: 1_779_926_400  // 2026-05-28 (GA)
        case .flash21: 1_791_244_800  // 2026-10-06 (GA)
        }
    }
}

/// How the `size` field of a request is read for a model.
public enum SizeMode: Sendable, Equatable {
    /// 2.5 family: a ratio (`2:3`) or the matching pixel size from the seed's table (`832x1248`).
    case ratioOrPixels
    /// `nano-banana-pro`, `nano-banana-2`, …: a tier (`1k`/`2k`/`4k`, `512` on NB2); ratio via `aspect_ratio`.
    case tier
    /// `nano-banana-pro-2k`/`-4k`: the tier is in the name, `size` carries the ratio.
    case ratioAtFixedTier(ImageSize)
}

/// Prices per million tokens by modality, in integer micro-USD (so sums are exact), as on
/// Google's paid-tier invoice: `outputText` covers thinking, which Google bills as text output.
public struct TokenPrices: Sendable, Equatable, Codable {
    public var inputText: Int
    public var inputImage: Int
    public var outputText: Int
    public var outputImage: Int

    public init(inputText: Int, inputImage: Int, outputText: Int, outputImage: Int) {
        self.inputText = inputText
        self.inputImage = inputImage
        self.outputText = outputText
        self.outputImage = outputImage
    }

    /// From USD per million tokens (Google's price list), input text and image alike.
    public init(inputPerMillion: Double, outputTextPerMillion: Double, outputImagePerMillion: Double) {
        let input = Self.micro(inputPerMillion)
        self.init(inputText: input, inputImage: input, outputText: Self.micro(outputTextPerMillion), outputImage: Self.micro(outputImagePerMillion))
    }

    /// USD → micro-USD, rounded; negative, infinite or absurd amounts are refused by callers.
    public static func micro(_ usd: Double) -> Int {
        guard usd.isFinite, usd > 0 else { return 0 }
        return usd >= 1e9 ? 1_000_000_000_000_000 : Int((usd * 1_000_000).rounded())
    }

    /// USD, for people and files.
    public static func usd(_ micro: Int) -> Double { Double(micro) / 1_000_000 }

    /// Every price times `ppm` millionths, each rounded to the micro-USD (a batch's or a tier's share).
    public func scaled(byPPM ppm: Int) -> TokenPrices {
        func scale(_ value: Int) -> Int { Pricing.apply(multiplierPPM: ppm, to: value) }
        return TokenPrices(inputText: scale(inputText), inputImage: scale(inputImage), outputText: scale(outputText), outputImage: scale(outputImage))
    }
}

/// One public model name and everything the gateway needs to serve it.
public struct CatalogModel: Sendable, Equatable {
    /// The name clients send in `model`.
    public var name: String
    public var family: ModelFamily
    /// The id sent to Google. Configurable because Google renames image models every few months.
    public var upstreamModel: String
    /// The ids tried in order when Google refuses `upstreamModel` as unknown or not available to
    /// the project (a retired model, or one a new project may not use), each with its family.
    public var fallbacks: [UpstreamFallback]
    public var sizeMode: SizeMode
    /// Whether this name may answer with a URL (`response_format: "url"`).
    public var allowsURLOutput: Bool
    /// Most input images an edit or chat turn may carry for this model.
    public var maxInputImages: Int
    public var prices: TokenPrices
    /// A model turned off in the configuration file is unknown to clients.
    public var enabled: Bool
    /// Seconds between keep-alive spaces for every non-streamed request of this name
    /// (`keep_alive:` in the configuration file); nil: only when the client asks.
    public var keepAliveSeconds: Int?

    public init(
        name: String, family: ModelFamily, upstreamModel: String, fallbacks: [UpstreamFallback] = [],
        sizeMode: SizeMode, allowsURLOutput: Bool, maxInputImages: Int, prices: TokenPrices? = nil, enabled: Bool = true
    ) {
        self.name = name
        self.family = family
        self.upstreamModel = upstreamModel
        self.fallbacks = fallbacks
        self.sizeMode = sizeMode
        self.allowsURLOutput = allowsURLOutput
        self.maxInputImages = maxInputImages
        self.prices = prices ?? family.googlePrices
        self.enabled = enabled
    }

    /// The first fallback's id (nil: none).
    public var fallbackModel: String? { fallbacks.first?.id }

    /// Every Google id this name may be served by, in the order they are tried.
    public var chain: [UpstreamFallback] { [UpstreamFallback(id: upstreamModel, family: family)] + fallbacks }

    /// The ratios this name accepts.
    public var aspectRatios: [AspectRatio] { family.aspectRatios }

    /// The `size` tiers this name accepts (`[]` when `size` carries only a ratio).
    public var sizes: [ImageSize] {
        switch sizeMode {
        case .ratioOrPixels: []
        case .tier: family.imageSizes
        case .ratioAtFixedTier(let tier): [tier]
        }
    }
}

/// A Google id a catalog name falls back to, with its family.
public struct UpstreamFallback: Sendable, Equatable, Codable {
    public var id: String
    public var family: ModelFamily

    public init(id: String, family: ModelFamily) {
        self.id = id
        self.family = family
    }

    /// `id` with the family read from it; nil when the gateway cannot tell it.
    public init?(id: String) {
        guard let family = ModelFamily(upstreamID: id) else { return nil }
        self.init(id: id, family: family)
    }
}

/// Google's pixel tables, transcribed from https://ai.google.dev/gemini-api/docs/image-generation
/// ("Aspect ratios and image size"; the team's shared wire-formats notes §A4 and E3).
public enum PixelTables {
    public static let flash25: [AspectRatio: PixelSize] = [
        .square: .init(1024, 1024), .portrait2x3: .init(832, 1248), .landscape3x2: .init(1248, 832),
        .portrait3x4: .init(864, 1184), .landscape4x3: .init(1184, 864), .portrait4x5: .init(896, 1152),
        .landscape5x4: .init(1152, 896), .portrait9x16: .init(768, 1344), .landscape16x9: .init(1344, 768),
        .ultrawide21x9: .init(1536, 672),
    ]

    /// The 1K cells of 3 Pro Image and Nano Banana 2 (identical for the ten shared ratios, E3);
    /// 2K and 4K are these ×2 and ×4.
    public static let oneK: [AspectRatio: PixelSize] = [
        .square: .init(1024, 1024), .portrait2x3: .init(848, 1264), .landscape3x2: .init(1264, 848),
        .portrait3x4: .init(896, 1200), .landscape4x3: .init(1200, 896), .portrait4x5: .init(928, 1152),
        .landscape5x4: .init(1152, 928), .portrait9x16: .init(768, 1376), .landscape16x9: .init(1376, 768),
        .ultrawide21x9: .init(1584, 672),
        .tall1x4: .init(512, 2048), .wide4x1: .init(2048, 512), .tall1x8: .init(384, 3072), .wide8x1: .init(3072, 384),
    ]

    /// Nano Banana 2 at `512` (not a scaled 1K: Google rounds these cells on their own). The
    /// 21:9 cell is printed 792×168 by Google (probably a typo, E3); the real size is read from
    /// the returned image, never from here.
    public static let flash31At512: [AspectRatio: PixelSize] = [
        .square: .init(512, 512), .tall1x4: .init(256, 1024), .tall1x8: .init(192, 1536), .portrait2x3: .init(424, 632),
        .landscape3x2: .init(632, 424), .portrait3x4: .init(448, 600), .wide4x1: .init(1024, 256), .landscape4x3: .init(600, 448),
        .portrait4x5: .init(464, 576), .landscape5x4: .init(576, 464), .wide8x1: .init(1536, 192), .portrait9x16: .init(384, 688),
        .landscape16x9: .init(688, 384), .ultrawide21x9: .init(792, 168),
    ]

    /// 3 Pro Image's table by ratio and tier (the 1K cells scaled), for tests and docs.
    public static var pro3: [AspectRatio: [ImageSize: PixelSize]] {
        Dictionary(uniqueKeysWithValues: AspectRatio.ten.map { ratio in
            (ratio, Dictionary(uniqueKeysWithValues: ModelFamily.pro3.imageSizes.map { ($0, ModelFamily.pro3.pixels(ratio, $0)) }))
        })
    }

    /// OpenAI's standard `size` values, mapped to the nearest Gemini ratio (`1792x1024` is 7:4,
    /// so it maps to 16:9). On tiered models the tier is the smallest whose long side reaches
    /// the requested long side.
    public static let openAISizes: [String: AspectRatio] = [
        "256x256": .square, "512x512": .square, "1024x1024": .square,
        "1536x1024": .landscape3x2, "1024x1536": .portrait2x3,
        "1792x1024": .landscape16x9, "1024x1792": .portrait9x16,
    ]
}

/// The model catalog: the spec's six names on today's Google ids, Nano Banana 2, and whatever
/// the operator's configuration file adds or changes (`CatalogFile`).
public struct ModelCatalog: Sendable, Equatable {
    /// Every model, enabled or not, in the order `/v1/models` lists them.
    public private(set) var all: [CatalogModel]

    public init(models: [CatalogModel]) {
        self.all = models
    }

    /// The models clients may use.
    public var models: [CatalogModel] { all.filter(\.enabled) }

    /// Looks a public model name up (exact, case-sensitive, as OpenAI does); disabled models are unknown.
    public func model(named name: String) -> CatalogModel? {
        models.first { $0.name == name }
    }

    /// Every public name, for error messages and `/v1/models`.
    public var names: [String] { models.map(\.name) }

    public static let flash25Prices = ModelFamily.flash25.googlePrices
    public static let pro3Prices = ModelFamily.pro3.googlePrices
    public static let flash31Prices = ModelFamily.flash31.googlePrices
    public static let flash21Prices = ModelFamily.flash21.googlePrices

    /// Today's Google ids (https://ai.google.dev/gemini-api/docs/deprecations and changelog;
    /// wire-formats notes E1 and F1): `gemini-3-pro-image-preview` was shut down on 2026-06-25,
    /// so every pro name goes to its GA successor; `gemini-3.1-flash-image` was shut down on
    /// 2026-10-29 for `gemini-nano-banana-2.1`; 2.5 Flash Image is served only to projects that
    /// used it before (2026-09-18), so its names go on to 2.1 when Google refuses it.
    public static let defaultFlashUpstream = "gemini-2.5-flash-image"
    public static let defaultFlash21Upstream = "gemini-nano-banana-2.1"
    public static let defaultFlashFallback = defaultFlash21Upstream
    public static let defaultProUpstream = "gemini-3-pro-image"
    /// The Nano Banana 2 names (`nano-banana-2`, `gemini-3.1-flash-image`) go to 2.1.
    public static let defaultFlash31Upstream = defaultFlash21Upstream

    /// The built-in catalog.
    ///
    /// - Parameters:
    ///   - flashUpstream: Google's id for the 2.5 names (`NANOGATE_UPSTREAM_FLASH`).
    ///   - proUpstream: Google's id for the pro names (`NANOGATE_UPSTREAM_PRO`).
    ///   - flash31Upstream: Google's id for the Nano Banana 2 names (`NANOGATE_UPSTREAM_FLASH31`);
    ///     its family is read from the id (2.1 unless it names 3.1).
    ///   - flashFallback: tried in order when Google refuses `flashUpstream`
    ///     (`NANOGATE_UPSTREAM_FLASH_FALLBACK`, comma-separated; empty for none).
    public static func standard(
        flashUpstream: String = defaultFlashUpstream,
        proUpstream: String = defaultProUpstream,
        flash31Upstream: String = defaultFlash31Upstream,
        flashFallback: String? = defaultFlashFallback
    ) -> ModelCatalog {
        let fallbacks = (flashFallback ?? "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            .map { UpstreamFallback(id: $0) ?? UpstreamFallback(id: $0, family: .flash21) }
        func flash(_ name: String, url: Bool) -> CatalogModel {
            // The spec: image-to-image with 1 to 6 input images ("works best with up to 3", E5).
            CatalogModel(
                name: name, family: .flash25, upstreamModel: flashUpstream, fallbacks: fallbacks,
                sizeMode: .ratioOrPixels, allowsURLOutput: url, maxInputImages: 6
            )
        }
        func pro(_ name: String, _ mode: SizeMode, url: Bool) -> CatalogModel {
            CatalogModel(name: name, family: .pro3, upstreamModel: proUpstream, sizeMode: mode, allowsURLOutput: url, maxInputImages: 14)
        }
        func nanoBanana2(_ name: String, upstream: String) -> CatalogModel {
            CatalogModel(
                name: name, family: ModelFamily(upstreamID: upstream) ?? .flash21, upstreamModel: upstream, sizeMode: .tier, allowsURLOutput: true,
                maxInputImages: 14
            )
        }
        return ModelCatalog(models: [
            flash("nano-banana", url: true),
            flash("gemini-2.5-flash-image", url: false),
            pro("nano-banana-pro", .tier, url: true),
            pro("gemini-3-pro-image-preview", .tier, url: false),
            pro("nano-banana-pro-2k", .ratioAtFixedTier(.twoK), url: true),
            pro("nano-banana-pro-4k", .ratioAtFixedTier(.fourK), url: true),
            pro("gemini-3-pro-image", .tier, url: true),
            nanoBanana2("nano-banana-2", upstream: flash31Upstream),
            nanoBanana2("gemini-3.1-flash-image", upstream: flash31Upstream),
            nanoBanana2("nano-banana-2.1", upstream: defaultFlash21Upstream),
            nanoBanana2("gemini-nano-banana-2.1", upstream: defaultFlash21Upstream),
        ])
    }

    /// Replaces or appends a model (by name).
    public mutating func upsert(_ model: CatalogModel) {
        if let index = all.firstIndex(where: { $0.name == model.name }) {
            all[index] = model
        } else {
            all.append(model)
        }
    }

    /// Any model, enabled or not (for the configuration file's `like`).
    public func anyModel(named name: String) -> CatalogModel? {
        all.first { $0.name == name }
    }
}

/// Google's service tiers on `generateContent` (wire-formats notes F3), as OpenAI's
/// `service_tier` names them: `flex` (half price, may be shed under load), `standard` (OpenAI's
/// `default`), `priority` (costs more, never shed).
public enum ServiceTier: String, Sendable, Codable, CaseIterable, Comparable {
    case flex, standard, priority

    /// What a request's `service_tier` asks for: `auto` and absent mean the key's default (nil),
    /// `default` is standard; anything else is a 400 naming the field.
    public static func requested(_ text: String?) throws(GatewayError) -> ServiceTier? {
        guard let text = text?.trimmingCharacters(in: .whitespaces).lowercased(), !text.isEmpty, text != "auto" else { return nil }
        if text == "default" { return .standard }
        guard let tier = ServiceTier(rawValue: text) else {
            throw .invalidParameter("service_tier", "Invalid value for 'service_tier': '\(text)'. Accepted values: auto, default, flex, priority.", code: "unsupported_value")
        }
        return tier
    }

    /// The tier Google echoed in `usageMetadata.serviceTier` (standard when absent or unknown).
    public init(echoed text: String?) {
        self = text.flatMap { ServiceTier(rawValue: $0.lowercased()) } ?? .standard
    }

    /// The value of the request's top-level `serviceTier` (standard is Google's default: left out).
    public var wire: String? { self == .standard ? nil : rawValue }

    /// The 403 for a tier the key may not use.
    public static func notAllowed(_ tier: ServiceTier, allowed: [ServiceTier]) -> GatewayError {
        GatewayError(
            status: 403, type: "permission_error", code: "tier_not_allowed", param: "service_tier",
            message: "This key may not use the '\(tier.rawValue)' service tier; it may use \(allowed.map(\.rawValue).joined(separator: ", ")). Ask the operator."
        )
    }

    public static func < (lhs: ServiceTier, rhs: ServiceTier) -> Bool {
        allCases.firstIndex(of: lhs)! < allCases.firstIndex(of: rhs)!
    }
}

/// What each tier costs, as a share of the standard price in millionths: flex is 50% where
/// Google lists no other price (F3); priority is the operator's setting until Google lists it.
public struct TierPricing: Sendable, Equatable {
    public var flexPPM: Int
    public var priorityPPM: Int

    public init(flexPPM: Int = 500_000, priorityPPM: Int = 2_000_000) {
        self.flexPPM = flexPPM
        self.priorityPPM = priorityPPM
    }

    /// `standard` scaled for `tier` (each per-million price rounded to the micro-USD).
    public func prices(_ standard: TokenPrices, tier: ServiceTier) -> TokenPrices {
        switch tier {
        case .standard: standard
        case .flex: standard.scaled(byPPM: flexPPM)
        case .priority: standard.scaled(byPPM: priorityPPM)
        }
    }
}

extension ServiceTier {
    /// OpenAI's name for the tier in answers (`default` for standard).
    public var openAIName: String { self == .standard ? "default" : rawValue }
}

extension ServiceTier {
    /// A list of tier names (`flex`, `standard`, `priority`; `default` is standard), checked and
    /// without repeats, as stored for keys and groups.
    public static func list(_ names: [String]) throws(GatewayError) -> [String] {
        var tiers: [String] = []
        for name in names {
            let lower = name.lowercased()
            guard let tier = lower == "default" ? .standard : ServiceTier(rawValue: lower) else {
                throw .invalidParameter("service_tiers", "Service tiers are flex, standard and priority; '\(name)' is none of them.", code: "unsupported_value")
            }
            if !tiers.contains(tier.rawValue) { tiers.append(tier.rawValue) }
        }
        return tiers
    }
}
