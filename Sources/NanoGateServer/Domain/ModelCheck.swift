import Foundation
public import Logging
public import NanoGateCore
public import Upstream

/// Which channel serves which catalog model: the model × channel matrix `nanogate models check`
/// prints, from each channel's own model list and what its project refused. Image models a
/// channel lists that the catalog does not know come with a suggested catalog entry.
public struct ModelCheck: Sendable {
    /// One id of a model's chain and, per channel (in `channels` order), whether it serves it.
    public struct Link: Sendable, Equatable {
        public var id: String
        public var cells: [ChannelServes]
    }

    /// One catalog model: its chain's ids in the order they are tried.
    public struct Line: Sendable, Equatable {
        public var model: String
        public var links: [Link]

        /// The first id of the chain some channel serves: what a request for the model gets
        /// (nil: nothing can serve it).
        public var answeredBy: String? { links.first { $0.cells.contains(where: \.serves) }?.id }
        public var servable: Bool { answeredBy != nil }
    }

    /// An image model a channel lists that no catalog entry names.
    public struct UnknownModel: Sendable, Equatable {
        public var id: String
        public var channels: [String]
        /// The family its id suggests (the sizes and prices to start from).
        public var family: ModelFamily
    }

    public var channels: [String]
    public var lines: [Line]
    /// Channel → why its model list could not be read.
    public var listErrors: [String: String]
    public var unknownImageModels: [UnknownModel]

    /// The matrix as the pool knows it now.
    public init(catalog: ModelCatalog, pool: UpstreamPool) {
        channels = pool.channelNames
        let channels = channels
        lines = catalog.models.map { model in
            Line(model: model.name, links: model.chain.map { link in
                Link(id: link.id, cells: channels.map { pool.serves(channel: $0, model: link.id, aliases: [model.name]) })
            })
        }
        listErrors = [:]
        for status in pool.status() {
            if let error = status.modelsCheckError { listErrors[status.name] = error }
        }
        let known = Set(catalog.all.flatMap { [$0.name] + $0.chain.map(\.id) })
        var listing: [String: [String]] = [:]
        for channel in channels {
            for id in pool.listed(channel: channel) ?? [] where Self.looksLikeAnImageModel(id) && !known.contains(id) {
                listing[id, default: []].append(channel)
            }
        }
        unknownImageModels = listing.keys.sorted().map { UnknownModel(id: $0, channels: listing[$0]!, family: Self.likelyFamily(of: $0)) }
    }

    /// Lists every channel's models now (each its own call; one that fails keeps its last
    /// list and is reported), then builds the matrix.
    public static func run(catalog: ModelCatalog, pool: UpstreamPool, logger: Logger) async -> ModelCheck {
        await withTaskGroup(of: Void.self) { group in
            for channel in pool.channelNames {
                group.addTask { _ = try? await pool.listModels(channel: channel, logger: logger) }
            }
        }
        return ModelCheck(catalog: catalog, pool: pool)
    }

    /// Generation models that make images by Google's naming (`…-image…`, `nano-banana…`);
    /// Imagen's `predict` models are not Gemini's format.
    static func looksLikeAnImageModel(_ id: String) -> Bool {
        let id = id.lowercased()
        return !id.hasPrefix("imagen") && (id.contains("-image") || id.contains("nano-banana"))
    }

    /// The built-in family an unknown id most likely shares sizes and tokens with.
    static func likelyFamily(of id: String) -> ModelFamily {
        let id = id.lowercased()
        if id.contains("pro") { return .pro3 }
        if id.contains("2.5") || id.contains("2.0") { return .flash25 }
        if id.contains("3.1") { return .flash31 }
        return .flash21
    }

    /// The matrix for people: one row per id of each model's chain, one column per channel.
    public var report: String {
        var rows = [["MODEL", "UPSTREAM"] + channels + ["ANSWERS WITH"]]
        for line in lines {
            for (index, link) in line.links.enumerated() {
                rows.append(
                    [index == 0 ? line.model : "", (index == 0 ? "" : "then ") + link.id] + link.cells.map(\.rawValue)
                        + [index == 0 ? (line.answeredBy ?? "nothing") : ""]
                )
            }
        }
        let widths = rows[0].indices.map { column in rows.map { $0[column].count }.max() ?? 0 }
        var text = rows.map { row in
            // Trailing spaces only: a chain's later rows start with the empty model column.
            var line = row.enumerated().map { $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  ")
            while line.last == " " { line.removeLast() }
            return line
        }.joined(separator: "\n")
        for channel in channels.sorted() {
            if let error = listErrors[channel] { text += "\nchannel \(channel): its model list could not be read (\(error))" }
        }
        return text
    }

    /// Catalog entries to start from for the image models the catalog does not know (empty when
    /// there are none), in the configuration file's format.
    public var suggestions: String {
        guard !unknownImageModels.isEmpty else { return "" }
        var text = "# Image models your channels list that the catalog does not know. To serve one, add its entry\n"
        text += "# to the configuration file's models: list (the family is a guess from the id: check its sizes\n"
        text += "# and prices against Google's model page).\nmodels:\n"
        for model in unknownImageModels {
            text += "  - name: \(model.id)    # listed by \(model.channels.joined(separator: ", "))\n"
            text += "    family: \(model.family.rawValue)\n"
            text += "    upstream: \(model.id)\n"
        }
        return text
    }
}

extension UpstreamPool {
    /// The first id of `model`'s chain some channel may be asked for now (nil: none may): what a
    /// request for it is estimated at and answered with.
    func firstServable(of model: CatalogModel) -> UpstreamFallback? {
        model.chain.first { mayServe(model: $0.id, aliases: [model.name]) }
    }
}

extension ModelCatalog {
    /// Every upstream id the enabled models' chains use → the catalog names that reach it (the
    /// names a channel's `models` setting may route by).
    public var upstreamAliases: [String: [String]] {
        var aliases: [String: [String]] = [:]
        for model in models {
            for link in model.chain where !(aliases[link.id]?.contains(model.name) ?? false) {
                aliases[link.id, default: []].append(model.name)
            }
        }
        return aliases
    }
}
