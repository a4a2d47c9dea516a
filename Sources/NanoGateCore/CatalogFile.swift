/// The `models:` list of NanoGate's configuration file: how operators add a model, an alias,
/// an upstream id, a fallback or prices, or turn a model off, without rebuilding.
///
/// ```yaml
/// models:
///   - name: my-banana              # a new name: `like` copies every setting of an existing model
///     like: nano-banana
///     upstream: gemini-2.5-flash-image
///     fallback: gemini-3.1-flash-image
///     url_output: true
///     enabled: true
///     prices: {input: 0.30, output_text: 2.50, output_image: 30}   # USD per 1M tokens (input_image too)
///   - name: gemini-2.5-flash-image  # an existing name: changes that model
///     enabled: false
/// ```
///
/// Entries apply in order, each to the catalog as the entries before it left it (so `like`
/// may name a model added earlier in the file). A new name needs `like` or `family`.
/// `nanogate models export` prints the built-in catalog in this shape, every key spelled out.
public struct CatalogFileEntry: Codable, Sendable, Equatable {
    public var name: String
    /// An existing model whose settings this entry starts from.
    public var like: String?
    /// `flash25`, `pro3`, `flash31` or `flash21`: the ratios, sizes, pixel table and token figures.
    public var family: ModelFamily?
    /// Google's model id.
    public var upstream: String?
    /// The ids tried in order when Google refuses `upstream` (`fallback: [a, b]`, or one id;
    /// empty for none).
    public var fallback: FallbackIDs?
    /// The fallback's family, when the gateway cannot tell it from the id.
    public var fallbackFamily: ModelFamily?
    /// How `size` is read: `tier`, `ratio` (the 2.5 family), or a fixed tier (`2K`, `4K`, …).
    public var size: String?
    public var urlOutput: Bool?
    public var enabled: Bool?
    public var maxInputImages: Int?
    public var prices: Prices?
    /// Seconds between the spaces of a keep-alive answer, for every non-streamed request of this
    /// name (as if each sent `Prefer: keep-alive=N`; for 4K names behind proxies that cut silence).
    public var keepAlive: Int?

    /// USD per million tokens (Google's invoice figures; what the usage log's cost uses).
    public struct Prices: Codable, Sendable, Equatable {
        /// Input text, and input images unless `input_image` is given.
        public var input: Double?
        public var inputImage: Double?
        public var outputText: Double?
        public var outputImage: Double?

        public init(input: Double?, inputImage: Double? = nil, outputText: Double?, outputImage: Double?) {
            self.input = input
            self.inputImage = inputImage
            self.outputText = outputText
            self.outputImage = outputImage
        }

        enum CodingKeys: String, CodingKey {
            case input
            case inputImage = "input_image"
            case outputText = "output_text"
            case outputImage = "output_image"
        }

        /// Keys the file may use, for its unknown-key check.
        public static let keys: Set<String> = ["input", "input_image", "output_text", "output_image"]
    }

    public init(
        name: String, like: String? = nil, family: ModelFamily? = nil, upstream: String? = nil, fallback: FallbackIDs? = nil,
        fallbackFamily: ModelFamily? = nil, size: String? = nil, urlOutput: Bool? = nil, enabled: Bool? = nil,
        maxInputImages: Int? = nil, prices: Prices? = nil, keepAlive: Int? = nil
    ) {
        self.keepAlive = keepAlive
        self.name = name
        self.like = like
        self.family = family
        self.upstream = upstream
        self.fallback = fallback
        self.fallbackFamily = fallbackFamily
        self.size = size
        self.urlOutput = urlOutput
        self.enabled = enabled
        self.maxInputImages = maxInputImages
        self.prices = prices
    }

    enum CodingKeys: String, CodingKey {
        case name, like, family, upstream, fallback
        case fallbackFamily = "fallback_family"
        case size
        case urlOutput = "url_output"
        case enabled
        case maxInputImages = "max_input_images"
        case prices
        case keepAlive = "keep_alive"
    }

    /// Keys an entry may use, for the unknown-key check (a misspelt `upsteam:` must not be ignored).
    public static let keys: Set<String> = [
        "name", "like", "family", "upstream", "fallback", "fallback_family", "size", "url_output", "enabled",
        "max_input_images", "prices", "keep_alive",
    ]
}

/// A `fallback:` value: one id (`fallback: gemini-nano-banana-2.1`, as before) or a list tried
/// in order (`fallback: [gemini-2.5-flash-image, gemini-nano-banana-2.1]`); `""` or `[]` for none.
public struct FallbackIDs: Codable, Sendable, Equatable, ExpressibleByArrayLiteral, ExpressibleByStringLiteral {
    public var ids: [String]

    public init(_ ids: [String]) { self.ids = ids }
    public init(arrayLiteral elements: String...) { self.ids = elements }
    public init(stringLiteral value: String) { self.ids = value.isEmpty ? [] : [value] }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let one = try? container.decode(String.self) {
            ids = one.isEmpty ? [] : [one]
        } else {
            ids = try container.decode([String].self)
        }
    }

    /// One id as a string (as files written before chains say it), several as a list.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        if ids.count <= 1 { try container.encode(ids.first ?? "") } else { try container.encode(ids) }
    }
}

/// A `models:` entry the gateway cannot use, named.
public struct CatalogFileError: Error, Sendable, Equatable, CustomStringConvertible {
    public var problems: [String]

    public init(problems: [String]) {
        self.problems = problems
    }

    public var description: String { problems.joined(separator: "; ") }
}

extension ModelCatalog {
    /// The catalog with the file's entries applied in order; every problem is collected and
    /// named by the entry's position and name.
    public func applying(_ entries: [CatalogFileEntry]) throws(CatalogFileError) -> ModelCatalog {
        var catalog = self
        var problems: [String] = []
        for (index, entry) in entries.enumerated() {
            let label = "models[\(index)] (\(entry.name.isEmpty ? "no name" : entry.name))"
            do throws(CatalogFileError) {
                catalog.upsert(try catalog.model(from: entry))
            } catch {
                problems += error.problems.map { "\(label): \($0)" }
            }
        }
        guard problems.isEmpty else { throw CatalogFileError(problems: problems) }
        return catalog
    }

    /// The model one entry describes, against this catalog.
    func model(from entry: CatalogFileEntry) throws(CatalogFileError) -> CatalogModel {
        var problems: [String] = []
        guard Self.isValidName(entry.name) else {
            throw CatalogFileError(problems: ["'name' must be 1 to 128 characters without spaces or slashes"])
        }
        var model: CatalogModel
        if let like = entry.like {
            guard let base = anyModel(named: like) else {
                throw CatalogFileError(problems: ["'like: \(like)' names no model (known: \(all.map(\.name).joined(separator: ", ")))"])
            }
            model = base
        } else if let existing = anyModel(named: entry.name) {
            model = existing
        } else if let family = entry.family {
            guard let upstream = entry.upstream else {
                throw CatalogFileError(problems: ["a new model with 'family' needs 'upstream'"])
            }
            model = CatalogModel(
                name: entry.name, family: family, upstreamModel: upstream, sizeMode: family.imageSizes.isEmpty ? .ratioOrPixels : .tier,
                allowsURLOutput: true, maxInputImages: family == .flash25 ? 6 : 14
            )
        } else {
            throw CatalogFileError(problems: ["'\(entry.name)' is not a built-in model; say which one it is like ('like: nano-banana') or give its 'family' and 'upstream'"])
        }
        model.name = entry.name

        if let family = entry.family, family != model.family {
            model.family = family
            model.prices = family.googlePrices
            switch (model.sizeMode, family.imageSizes.isEmpty) {
            case (.ratioOrPixels, false): model.sizeMode = .tier
            case (.tier, true), (.ratioAtFixedTier, true): model.sizeMode = .ratioOrPixels
            default: break
            }
        }
        if let upstream = entry.upstream {
            if Self.isValidUpstreamID(upstream) { model.upstreamModel = upstream } else { problems.append("'upstream: \(upstream)' is not a Google model id (letters, digits, '.', '-', '_')") }
        }
        if let fallback = entry.fallback {
            var chain: [UpstreamFallback] = []
            for id in fallback.ids {
                guard Self.isValidUpstreamID(id) else {
                    problems.append("'fallback: \(id)' is not a Google model id")
                    continue
                }
                // `fallback_family` names the family of a single id the gateway cannot tell.
                guard let family = (fallback.ids.count == 1 ? entry.fallbackFamily : nil) ?? ModelFamily(upstreamID: id) else {
                    problems.append("the family of fallback '\(id)' is unknown; add 'fallback_family: flash25|pro3|flash31|flash21' (one fallback) or use an id the gateway knows")
                    continue
                }
                chain.append(UpstreamFallback(id: id, family: family))
            }
            model.fallbacks = chain
        } else if let fallbackFamily = entry.fallbackFamily, !model.fallbacks.isEmpty {
            model.fallbacks[0].family = fallbackFamily
        }
        if let size = entry.size {
            switch size.lowercased() {
            case "tier":
                if model.family.imageSizes.isEmpty { problems.append("'size: tier' needs a family with tiers (pro3, flash31, flash21)") } else { model.sizeMode = .tier }
            case "ratio":
                if model.family.imageSizes.isEmpty { model.sizeMode = .ratioOrPixels } else { problems.append("'size: ratio' is the 2.5 family's; tiered families take 'tier' or a fixed tier") }
            default:
                if let tier = ImageSize(lenient: size), model.family.imageSizes.contains(tier) {
                    model.sizeMode = .ratioAtFixedTier(tier)
                } else {
                    problems.append("'size: \(size)' must be tier, ratio or one of the family's tiers (\(model.family.imageSizes.map(\.rawValue).joined(separator: ", ")))")
                }
            }
        }
        if let urlOutput = entry.urlOutput { model.allowsURLOutput = urlOutput }
        if let enabled = entry.enabled { model.enabled = enabled }
        if let maxInputImages = entry.maxInputImages {
            if (0...14).contains(maxInputImages) { model.maxInputImages = maxInputImages } else { problems.append("'max_input_images' must be 0 to 14 (Google's limit)") }
        }
        if let keepAlive = entry.keepAlive {
            if (0...60).contains(keepAlive) { model.keepAliveSeconds = keepAlive == 0 ? nil : keepAlive } else { problems.append("'keep_alive' must be 0 (off) to 60 seconds") }
        }
        if let prices = entry.prices {
            func price(_ value: Double?, _ key: String, _ current: Int) -> Int {
                guard let value else { return current }
                guard value.isFinite, value >= 0, value <= 1_000_000 else {
                    problems.append("'prices.\(key)' must be a number of USD per 1M tokens, 0 to 1,000,000")
                    return current
                }
                return TokenPrices.micro(value)
            }
            let input = price(prices.input, "input", model.prices.inputText)
            model.prices = TokenPrices(
                inputText: input,
                inputImage: price(prices.inputImage, "input_image", prices.input == nil ? model.prices.inputImage : input),
                outputText: price(prices.outputText, "output_text", model.prices.outputText),
                outputImage: price(prices.outputImage, "output_image", model.prices.outputImage)
            )
        }
        guard problems.isEmpty else { throw CatalogFileError(problems: problems) }
        return model
    }

    /// Every model as a file entry with every key spelled out: `nanogate models export`.
    public var fileEntries: [CatalogFileEntry] {
        all.map { model in
            let size: String
            switch model.sizeMode {
            case .ratioOrPixels: size = "ratio"
            case .tier: size = "tier"
            case .ratioAtFixedTier(let tier): size = tier.rawValue
            }
            return CatalogFileEntry(
                name: model.name, family: model.family, upstream: model.upstreamModel, fallback: FallbackIDs(model.fallbacks.map(\.id)),
                fallbackFamily: model.fallbacks.count == 1 ? model.fallbacks[0].family : nil, size: size, urlOutput: model.allowsURLOutput,
                enabled: model.enabled, maxInputImages: model.maxInputImages,
                prices: .init(
                    input: TokenPrices.usd(model.prices.inputText), inputImage: TokenPrices.usd(model.prices.inputImage),
                    outputText: TokenPrices.usd(model.prices.outputText), outputImage: TokenPrices.usd(model.prices.outputImage)
                ),
                keepAlive: model.keepAliveSeconds
            )
        }
    }

    /// Client-facing names: no spaces or slashes (they appear in `/v1/models/{id}`).
    static func isValidName(_ name: String) -> Bool {
        (1...128).contains(name.count) && !name.contains(where: { $0.isWhitespace || $0 == "/" || $0 == "\\" })
    }

    /// Google ids go into the request path: only the characters Google's ids use.
    public static func isValidUpstreamID(_ id: String) -> Bool {
        (1...128).contains(id.utf8.count) && id.utf8.allSatisfy { byte in
            (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A) || byte == 0x2E || byte == 0x2D || byte == 0x5F
        }
    }
}
