import Foundation

/// What the gateway asks Google for: a ratio (or none, to let the model choose) and a tier.
public struct ImageSpec: Sendable, Equatable, Codable {
    /// `nil` lets Gemini choose (1:1, or the input image's ratio for edits).
    public var aspectRatio: AspectRatio?
    /// Only ever set for the tiered families; Google gets exactly this upper-case value.
    public var imageSize: ImageSize?

    public init(aspectRatio: AspectRatio?, imageSize: ImageSize?) {
        self.aspectRatio = aspectRatio
        self.imageSize = imageSize
    }

    /// `4K 16:9`, `2:3`, `default`: what was asked for, for the usage log.
    public var label: String {
        [imageSize?.rawValue, aspectRatio?.rawValue].compactMap { $0 }.joined(separator: " ").isEmpty
            ? "default" : [imageSize?.rawValue, aspectRatio?.rawValue].compactMap { $0 }.joined(separator: " ")
    }

    /// The pixel size Google will return (the default ratio is 1:1 when none is asked for).
    public func expectedPixels(for family: ModelFamily) -> PixelSize {
        family.pixels(aspectRatio ?? .square, imageSize)
    }
}

/// OpenAI's `quality` (gpt-image: `auto|low|medium|high`; dall-e-3: `standard|hd`).
public enum ImageQuality: String, Sendable, CaseIterable, Codable {
    case auto, low, medium, high, hd, standard

    /// The tier it asks for on a tiered model when `size` does not name one: `low` → the
    /// smallest tier, `high`/`hd` → 2K, the rest → the model's default (1K).
    func tier(among tiers: [ImageSize], default fallback: ImageSize) -> ImageSize {
        switch self {
        case .low: tiers.first ?? fallback
        case .high, .hd: tiers.contains(.twoK) ? .twoK : fallback
        case .auto, .medium, .standard: fallback
        }
    }

    /// OpenAI's `quality` response field for what was delivered: 512 → low, 1K (and the
    /// one-size 2.5 family, about 1 MP) → medium, 2K and 4K → high.
    public static func reported(for size: ImageSize?) -> String {
        switch size {
        case .half: "low"
        case .twoK, .fourK: "high"
        case .oneK, nil: "medium"
        }
    }
}

/// Reads `size`, `aspect_ratio` and `quality` per model, leniently for the obvious spellings,
/// and refuses everything else with a 400 that names the parameter and lists what that model
/// accepts.
///
/// | model kind | `size` | `aspect_ratio` |
/// |---|---|---|
/// | 2.5 family | a ratio (`2:3`), its pixel size from the spec's table (`832x1248`), an OpenAI size, any `WxH` of an exact ratio | a ratio, when `size` is absent or names the same ratio |
/// | tiered (`nano-banana-pro`, `nano-banana-2`, …) | a tier (`1k`/`2k`/`4k`, `512` on NB2, any case), a ratio (at 1K), a size from the model's table, an OpenAI size, any `WxH` of an exact ratio | a ratio of the model |
/// | `nano-banana-pro-2k`/`-4k` | a ratio, the name's own tier, a size from that tier's table, an OpenAI size or exact-ratio `WxH` | a ratio |
///
/// OpenAI sizes: `256x256`, `512x512`, `1024x1024` → 1:1; `1536x1024` → 3:2; `1024x1536` → 2:3;
/// `1792x1024` → 16:9; `1024x1792` → 9:16. Any other `WxH` counts when it is exactly one of the
/// model's ratios (`1920x1080` is 16:9); otherwise it is a 400, never a silent other shape. On
/// tiered models a `WxH` picks the smallest tier whose long side reaches the requested one (so
/// `1792x1024` is 16:9 at 2K). `auto` or no size: the model's default, or the tier `quality` asks for.
public enum SizeRules {
    public static func resolve(
        model: CatalogModel, size rawSize: String?, aspectRatio rawRatio: String?, quality: ImageQuality? = nil
    ) throws(GatewayError) -> ImageSpec {
        let size = normalized(rawSize)
        let family = model.family

        var explicitRatio: AspectRatio?
        if let ratioField = normalized(rawRatio) {
            guard let ratio = AspectRatio(rawValue: ratioField), family.aspectRatios.contains(ratio) else {
                throw .invalidParameter("aspect_ratio", "Invalid aspect_ratio '\(rawRatio ?? "")' for model '\(model.name)'. Accepted values: \(ratioList(model)).")
            }
            explicitRatio = ratio
        }

        switch model.sizeMode {
        case .ratioOrPixels:
            guard let size else { return ImageSpec(aspectRatio: explicitRatio, imageSize: nil) }
            let ratio = ratio(named: size, model: model)
                ?? PixelTables.flash25.first(where: { $0.value.description == size })?.key
                ?? PixelTables.openAISizes[size]
                ?? PixelSize(parsing: size).flatMap { exactRatio(of: $0, among: family.aspectRatios) }
            guard let ratio else {
                if ImageSize(lenient: size) != nil {
                    throw .invalidParameter("size", "Model '\(model.name)' has one size per aspect ratio; '\(rawSize ?? "")' is a tier of other models. Pass an aspect ratio in size. Accepted values: \(flashAccepted).")
                }
                throw .invalidParameter("size", "Invalid size '\(rawSize ?? "")' for model '\(model.name)'. Accepted values: \(flashAccepted).")
            }
            return try merged(ImageSpec(aspectRatio: ratio, imageSize: nil), explicitRatio: explicitRatio, rawSize: rawSize)

        case .tier:
            let defaultTier = family.defaultSize ?? .oneK
            let asked = quality?.tier(among: family.imageSizes, default: defaultTier) ?? defaultTier
            guard let size else { return ImageSpec(aspectRatio: explicitRatio, imageSize: asked) }
            if let tier = ImageSize(lenient: size) {
                guard family.imageSizes.contains(tier) else {
                    throw .invalidParameter("size", "Model '\(model.name)' does not render at \(tier.rawValue). Accepted sizes: \(tierList(family.imageSizes)), an aspect ratio (\(ratioList(model))) or a pixel size of its table.")
                }
                return ImageSpec(aspectRatio: explicitRatio, imageSize: tier)
            }
            if let ratio = ratio(named: size, model: model) {
                return try merged(ImageSpec(aspectRatio: ratio, imageSize: asked), explicitRatio: explicitRatio, rawSize: rawSize)
            }
            if let spec = pixelSpec(size, family: family, tiers: family.imageSizes) {
                return try merged(spec, explicitRatio: explicitRatio, rawSize: rawSize)
            }
            throw .invalidParameter("size", "Invalid size '\(rawSize ?? "")' for model '\(model.name)'. Accepted values: \(tierList(family.imageSizes)) (any case), an aspect ratio (\(ratioList(model))), a pixel size of its table, or a WxH of one of those ratios.")

        case .ratioAtFixedTier(let tier):
            guard let size else { return ImageSpec(aspectRatio: explicitRatio, imageSize: tier) }
            if let named = ImageSize(lenient: size) {
                guard named == tier else {
                    throw .invalidParameter("size", "Model '\(model.name)' always renders at \(tier.rawValue); size '\(rawSize ?? "")' contradicts it. Pass an aspect ratio in size (\(ratioList(model))).")
                }
                return ImageSpec(aspectRatio: explicitRatio, imageSize: tier)
            }
            if let ratio = ratio(named: size, model: model) {
                return try merged(ImageSpec(aspectRatio: ratio, imageSize: tier), explicitRatio: explicitRatio, rawSize: rawSize)
            }
            if let spec = pixelSpec(size, family: family, tiers: [tier]) {
                return try merged(ImageSpec(aspectRatio: spec.aspectRatio, imageSize: tier), explicitRatio: explicitRatio, rawSize: rawSize)
            }
            throw .invalidParameter("size", "Invalid size '\(rawSize ?? "")' for model '\(model.name)'. Accepted values: an aspect ratio (\(ratioList(model))) or a pixel size of its \(tier.rawValue) table.")
        }
    }

    /// `1:4` on a model without it is a 400 naming what the model takes, not "invalid size".
    private static func ratio(named size: String, model: CatalogModel) -> AspectRatio? {
        AspectRatio(rawValue: size).flatMap { model.family.aspectRatios.contains($0) ? $0 : nil }
    }

    private static func ratioList(_ model: CatalogModel) -> String {
        model.family.aspectRatios.map(\.rawValue).joined(separator: ", ")
    }

    private static func tierList(_ tiers: [ImageSize]) -> String {
        tiers.map(\.rawValue).joined(separator: ", ")
    }

    private static let flashAccepted =
        AspectRatio.ten.map { "\($0.rawValue) or \(PixelTables.flash25[$0]!)" }.joined(separator: ", ")
        + ", an OpenAI size (\(PixelTables.openAISizes.keys.sorted().joined(separator: ", "))) or a WxH of one of those ratios"

    /// `auto`, empty and absent all mean "let the model choose".
    private static func normalized(_ value: String?) -> String? {
        guard let trimmed = value?.trimmingCharacters(in: .whitespaces), !trimmed.isEmpty, trimmed.lowercased() != "auto" else { return nil }
        return trimmed.lowercased().replacingOccurrences(of: "×", with: "x")
    }

    /// The ratio `pixels` is exactly (`1920x1080` → 16:9), among `ratios`.
    static func exactRatio(of pixels: PixelSize, among ratios: [AspectRatio]) -> AspectRatio? {
        ratios.first { ratio in
            let (w, h) = ratio.parts
            return pixels.width * h == pixels.height * w
        }
    }

    /// A pixel size of the family's table at one of `tiers`, an OpenAI size, or an exact-ratio `WxH`.
    private static func pixelSpec(_ size: String, family: ModelFamily, tiers: [ImageSize]) -> ImageSpec? {
        for ratio in family.aspectRatios {
            for tier in tiers where family.pixels(ratio, tier).description == size {
                return ImageSpec(aspectRatio: ratio, imageSize: tier)
            }
        }
        guard let pixels = PixelSize(parsing: size),
            let ratio = PixelTables.openAISizes[size].flatMap({ family.aspectRatios.contains($0) ? $0 : nil })
                ?? exactRatio(of: pixels, among: family.aspectRatios)
        else { return nil }
        let tier = tiers.first { family.pixels(ratio, $0).longSide >= pixels.longSide } ?? tiers.last!
        return ImageSpec(aspectRatio: ratio, imageSize: tier)
    }

    /// A ratio given both in `size` and in `aspect_ratio` must agree.
    private static func merged(_ spec: ImageSpec, explicitRatio: AspectRatio?, rawSize: String?) throws(GatewayError) -> ImageSpec {
        guard let explicitRatio else { return spec }
        guard spec.aspectRatio == nil || spec.aspectRatio == explicitRatio else {
            throw .invalidParameter("aspect_ratio", "aspect_ratio '\(explicitRatio.rawValue)' contradicts size '\(rawSize ?? "")' (\(spec.aspectRatio!.rawValue)); send one of them or make them agree.")
        }
        return ImageSpec(aspectRatio: explicitRatio, imageSize: spec.imageSize)
    }
}
