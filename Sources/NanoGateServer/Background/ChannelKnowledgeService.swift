import Foundation
public import Logging
public import NanoGateCore
public import NanoGateStorage
public import ServiceLifecycle
import Synchronization
public import Upstream

/// Keeps what the channels taught the gateway in the database and the pool in step with it:
/// every few seconds it stores what answers taught this instance (a project that refused a
/// model, a refused credential), reads each channel's model list when the stored one is older
/// than the interval (or soon after a refusal, or never read), and hands the pool what every
/// instance learned. Listing runs in the background: it never delays start-up or a request.
public struct ChannelKnowledgeService: Service {
    let store: SQLStore
    public let pool: UpstreamPool
    let catalog: ModelCatalog
    /// Whether model lists are read at all (`NANOGATE_CHECK_MODELS`).
    let checkModels: Bool
    let interval: Duration
    let logger: Logger
    /// Channels whose project refused a model: their list is read again soon.
    private let relist = RelistRequests()
    static let tick = Duration.seconds(5)
    /// The soonest a channel's list is read again after a refusal.
    static let relistAfter: TimeInterval = 60

    public init(store: SQLStore, pool: UpstreamPool, catalog: ModelCatalog, checkModels: Bool = true, interval: Duration = .seconds(3600), logger: Logger) {
        self.store = store
        self.pool = pool
        self.catalog = catalog
        self.checkModels = checkModels
        self.interval = interval
        self.logger = logger
    }

    public func run() async throws {
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            await refresh()
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: Self.tick) }
        }
        // What the last answers taught, before the process ends (the database may already be closing).
        do {
            try await storeLearned()
        } catch {
            logger.debug("what the channels learned last was not stored", metadata: ["error": "\(error)"])
        }
    }

    /// One round: store what was learned, read the lists that are due, apply the database's view
    /// (read once, and again only when lists were read).
    func refresh() async {
        do {
            try await storeLearned()
            var known = try await Self.load(from: store)
            if checkModels, try await readDueLists(known: known) { known = try await Self.load(from: store) }
            pool.apply(known)
        } catch {
            logger.warning("could not share what the channels learned through the database", metadata: ["error": "\(error)"])
        }
    }

    private func storeLearned() async throws {
        let facts = pool.drainLearned()
        for fact in facts {
            switch fact {
            case .modelRefused(let channel, let upstreamID, let until):
                relist.names.withLock { _ = $0.insert(channel) }
                try await store.saveChannelRefusal(.init(channel: channel, kind: "model", item: upstreamID, fingerprint: nil, until: until, reason: nil))
            case .keyRefused(let channel, let refusal):
                try await store.saveChannelRefusal(
                    .init(channel: channel, kind: "key", item: "\(refusal.position)", fingerprint: refusal.fingerprint, until: refusal.until, reason: refusal.reason)
                )
            }
        }
    }

    /// Reads every channel's model list now (`nanogate models check`), stores it with what was
    /// learned, and answers the matrix by what the database now knows.
    public func checkAll() async throws -> ModelCheck {
        try await storeLearned()
        pool.apply(try await Self.load(from: store))
        try await readLists(pool.channelNames)
        pool.apply(try await Self.load(from: store))
        return ModelCheck(catalog: catalog, pool: pool)
    }

    /// Hands the pool what the database knows (`nanogate channels list` without a gateway).
    public func applyStored() async throws {
        pool.apply(try await Self.load(from: store))
    }

    /// Reads the lists that are due by when the database says each was read; whether any was.
    private func readDueLists(known: [String: ChannelKnowledge]) async throws -> Bool {
        let now = Date()
        let again = relist.names.withLock { $0 }
        let due = pool.channelNames.filter { name in
            guard let checked = known[name]?.checkedAt else { return true }
            let age = now.timeIntervalSince(checked)
            return age >= Double(interval.components.seconds) || (again.contains(name) && age >= Self.relistAfter)
        }
        guard !due.isEmpty else { return false }
        relist.names.withLock { $0.subtract(due) }
        try await readLists(due)
        report(ModelCheck(catalog: catalog, pool: pool))
        return true
    }

    /// Lists the named channels' models at once and stores each answer (a failure keeps the
    /// channel's last list and records why).
    private func readLists(_ due: [String]) async throws {
        // A struct per child, not a tuple of a typed-throws `Result`: the release build of the
        // latter crashed at start-up in the runtime, copying the child's value into the group.
        let results = await withTaskGroup(of: ListingOutcome.self) { group in
            for name in due {
                group.addTask { await ListingOutcome.read(name, from: pool, logger: logger) }
            }
            var outcomes: [ListingOutcome] = []
            for await outcome in group { outcomes.append(outcome) }
            return outcomes
        }
        for outcome in results {
            if let error = outcome.error {
                logger.notice("could not read a channel's model list", metadata: ["channel": "\(outcome.name)", "error": "\(error)"])
                try await store.saveChannelModels(.init(channel: outcome.name, listed: nil, checkedAt: Date(), error: error.description), keepList: true)
            } else {
                try await store.saveChannelModels(.init(channel: outcome.name, listed: outcome.listed.map { Array($0) }, checkedAt: Date(), error: nil))
            }
        }
        // A refused credential found by listing goes to the database with this round.
        try await storeLearned()
    }

    /// Warnings for what an operator should act on: models nothing serves, image models the
    /// catalog does not know.
    private func report(_ check: ModelCheck) {
        for line in check.lines {
            guard let first = line.links.first else { continue }
            if !line.servable {
                logger.warning("no channel serves any id of the model's chain: requests for it will fail", metadata: ["model": "\(line.model)", "upstream": "\(line.links.map(\.id).joined(separator: ","))"])
            } else if line.answeredBy != first.id {
                logger.notice("no channel serves the model's upstream id; requests go down its chain", metadata: ["model": "\(line.model)", "upstream": "\(first.id)", "served_by": "\(line.answeredBy ?? "")"])
            }
        }
        for model in check.unknownImageModels {
            logger.notice("a channel lists an image model the catalog does not know (nanogate models check suggests an entry)", metadata: ["model": "\(model.id)", "channels": "\(model.channels.joined(separator: ","))"])
        }
    }

    /// What the database knows about each channel, by name.
    static func load(from store: SQLStore) async throws -> [String: ChannelKnowledge] {
        var knowledge: [String: ChannelKnowledge] = [:]
        for models in try await store.channelModels() {
            knowledge[models.channel, default: ChannelKnowledge()].listed = models.listed.map(Set.init)
            knowledge[models.channel]?.checkedAt = models.checkedAt
            knowledge[models.channel]?.listError = models.error
        }
        for refusal in try await store.channelRefusals() {
            switch refusal.kind {
            case "model":
                knowledge[refusal.channel, default: ChannelKnowledge()].refusedModels[refusal.item] = refusal.until
            case "key":
                guard let position = Int(refusal.item), let fingerprint = refusal.fingerprint else { continue }
                knowledge[refusal.channel, default: ChannelKnowledge()].refusedKeys.append(
                    KeyRefusal(position: position, fingerprint: fingerprint, until: refusal.until, reason: refusal.reason ?? "")
                )
            default:
                continue
            }
        }
        return knowledge
    }
}

/// The channels to list again soon (shared by a `ChannelKnowledgeService`'s copies).
private final class RelistRequests: Sendable {
    let names = Mutex<Set<String>>([])
}

/// One channel's model list as read (or why it could not be).
private struct ListingOutcome: Sendable {
    var name: String
    var listed: Set<String>?
    var error: UpstreamError?

    static func read(_ name: String, from pool: UpstreamPool, logger: Logger) async -> ListingOutcome {
        do throws(UpstreamError) {
            return ListingOutcome(name: name, listed: try await pool.listModels(channel: name, logger: logger), error: nil)
        } catch {
            return ListingOutcome(name: name, listed: nil, error: error)
        }
    }
}
