import Foundation

/// What the gateway asks Google for: a ratio (or none, to let the model choose) and a tier.
public struct ImageSpec: Sendable, Equatable {
    /// `nil` lets Gemini choose (1:1, or the input image's ratio for edits).
    public var aspectRatio: AspectRatio?
    /// Only ever set for the 3-pro family; Google gets exactly this upper-case value.
    public var imageSize: ImageSize?

    public init(aspectRatio: AspectRatio?, imageSize: ImageSize?) {
        self.aspectRatio = aspectRatio
        self.imageSize = imageSize
    }

    /// The pixel size Google will return (the default ratio is 1:1 when none is asked for).
    public func expectedPixels(for family: ModelFamily) -> PixelSize {
        family.pixels(aspectRatio ?? .square, imageSize)
    }
}

/// Reads `size` and `aspect_ratio` the way the user's spec documents them, leniently for the
/// obvious spellings, and refuses everything else with a 400 that lists what is accepted.
///
/// | model kind | `size` | `aspect_ratio` |
/// |---|---|---|
/// | 2.5 family | a ratio (`2:3`), its pixel size from the spec's table (`832x1248`), an OpenAI size (table below) | a ratio, when `size` is absent or names the same ratio |
/// | `nano-banana-pro`, `gemini-3-pro-image-preview` | `1k`/`2k`/`4k` (any case), a ratio (at 1K), a size from the 3-pro table, an OpenAI size | a ratio |
/// | `nano-banana-pro-2k`/`-4k` | a ratio, the name's own tier, a size from that tier's table, an OpenAI size | a ratio |
///
/// OpenAI sizes: `256x256`, `512x512`, `1024x1024` → 1:1; `1536x1024` → 3:2; `1024x1536` → 2:3;
/// `1792x1024` → 16:9; `1024x1792` → 9:16. On 3-pro they pick the smallest tier whose long side
/// reaches the requested one (so `1792x1024` is 16:9 at 2K). `auto` or no size: the model's default.
///
/// The same rule holds on every endpoint (images and chat): the 2.5 family also takes the ratio
/// as `aspect_ratio` (as Google's API and OpenRouter's `image_config` do), so a client need not
/// know which family it talks to; `size` and `aspect_ratio` naming different ratios is a 400.
public enum SizeRules {
    public static func resolve(model: CatalogModel, size rawSize: String?, aspectRatio rawRatio: String?) throws(GatewayError) -> ImageSpec {
        let size = normalized(rawSize)
        let ratioField = normalized(rawRatio)

        var explicitRatio: AspectRatio?
        if let ratioField {
            guard let ratio = AspectRatio(rawValue: ratioField) else {
                throw .invalidParameter("aspect_ratio", "Invalid aspect_ratio '\(rawRatio ?? "")'. Accepted values: \(AspectRatio.accepted).")
            }
            explicitRatio = ratio
        }

        switch model.sizeMode {
        case .ratioOrPixels:
            guard let size else { return ImageSpec(aspectRatio: explicitRatio, imageSize: nil) }
            let ratio = AspectRatio(rawValue: size)
                ?? PixelTables.flash25.first(where: { $0.value.description == size })?.key
                ?? PixelTables.openAISizes[size]
            guard let ratio else {
                throw .invalidParameter("size", "Invalid size '\(rawSize ?? "")' for model '\(model.name)'. Accepted values: \(flashAccepted).")
            }
            if let explicitRatio, explicitRatio != ratio {
                throw .invalidParameter("aspect_ratio", "aspect_ratio '\(explicitRatio.rawValue)' contradicts size '\(rawSize ?? "")' (\(ratio.rawValue)); send one of them.")
            }
            return ImageSpec(aspectRatio: ratio, imageSize: nil)

        case .tier:
            guard let size else { return ImageSpec(aspectRatio: explicitRatio, imageSize: .oneK) }
            if let tier = ImageSize(lenient: size) { return ImageSpec(aspectRatio: explicitRatio, imageSize: tier) }
            if let spec = proSpec(forPixelsOrRatio: size, tiers: ImageSize.allCases, defaultTier: .oneK) {
                return try merged(spec, explicitRatio: explicitRatio, model: model)
            }
            throw .invalidParameter("size", "Invalid size '\(rawSize ?? "")' for model '\(model.name)'. Accepted values: 1k, 2k, 4k (any case), an aspect ratio (\(AspectRatio.accepted)), or a pixel size from the 3-pro table.")

        case .ratioAtFixedTier(let tier):
            guard let size else { return ImageSpec(aspectRatio: explicitRatio, imageSize: tier) }
            if let named = ImageSize(lenient: size) {
                guard named == tier else {
                    throw .invalidParameter("size", "Model '\(model.name)' always renders at \(tier.rawValue); size '\(rawSize ?? "")' contradicts it. Pass an aspect ratio in size (\(AspectRatio.accepted)).")
                }
                return ImageSpec(aspectRatio: explicitRatio, imageSize: tier)
            }
            if let spec = proSpec(forPixelsOrRatio: size, tiers: [tier], defaultTier: tier) {
                return try merged(ImageSpec(aspectRatio: spec.aspectRatio, imageSize: tier), explicitRatio: explicitRatio, model: model)
            }
            throw .invalidParameter("size", "Invalid size '\(rawSize ?? "")' for model '\(model.name)'. Accepted values: an aspect ratio (\(AspectRatio.accepted)) or a pixel size from the \(tier.rawValue) table.")
        }
    }

    private static let flashAccepted =
        AspectRatio.allCases.map { "\($0.rawValue) or \(PixelTables.flash25[$0]!)" }.joined(separator: ", ")
        + ", or an OpenAI size (\(PixelTables.openAISizes.keys.sorted().joined(separator: ", ")))"

    /// `auto`, empty and absent all mean "let the model choose".
    private static func normalized(_ value: String?) -> String? {
        guard let trimmed = value?.trimmingCharacters(in: .whitespaces), !trimmed.isEmpty, trimmed.lowercased() != "auto" else { return nil }
        return trimmed.lowercased().replacingOccurrences(of: "×", with: "x")
    }

    /// A ratio, a pixel size from the 3-pro table at one of `tiers`, or an OpenAI size.
    private static func proSpec(forPixelsOrRatio size: String, tiers: [ImageSize], defaultTier: ImageSize) -> ImageSpec? {
        if let ratio = AspectRatio(rawValue: size) { return ImageSpec(aspectRatio: ratio, imageSize: defaultTier) }
        for (ratio, bySize) in PixelTables.pro3 {
            for tier in tiers where bySize[tier]!.description == size {
                return ImageSpec(aspectRatio: ratio, imageSize: tier)
            }
        }
        if let ratio = PixelTables.openAISizes[size] {
            let longSide = size.split(separator: "x").compactMap { Int($0) }.max() ?? 0
            let tier = tiers.first { tier in
                let pixels = PixelTables.pro3[ratio]![tier]!
                return max(pixels.width, pixels.height) >= longSide
            } ?? tiers.last!
            return ImageSpec(aspectRatio: ratio, imageSize: tier)
        }
        return nil
    }

    /// A ratio given both in `size` and in `aspect_ratio` must agree.
    private static func merged(_ spec: ImageSpec, explicitRatio: AspectRatio?, model: CatalogModel) throws(GatewayError) -> ImageSpec {
        guard let explicitRatio else { return spec }
        guard spec.aspectRatio == nil || spec.aspectRatio == explicitRatio else {
            throw .invalidParameter("aspect_ratio", "aspect_ratio '\(explicitRatio.rawValue)' contradicts size, which means \(spec.aspectRatio!.rawValue). Send one or make them agree.")
        }
        return ImageSpec(aspectRatio: explicitRatio, imageSize: spec.imageSize)
    }
}
