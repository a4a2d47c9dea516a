import Foundation
import Logging
import NanoGateCore
import NanoGateStorage
import NIOCore
import Synchronization
import Tracing
import Upstream

/// The Google model that answered (the catalog's upstream id, or its fallback), with the
/// family and prices its usage is costed at.
struct UpstreamTarget: Sendable, Equatable {
    var id: String
    var family: ModelFamily
    var prices: TokenPrices

    init(id: String, family: ModelFamily, prices: TokenPrices) {
        self.id = id
        self.family = family
        self.prices = prices
    }
}

/// Who asked, for the usage-log row: the request id, when it started, the size it asked for.
struct RequestInfo: Sendable {
    var requestID: String
    var started: ContinuousClock.Instant
    /// Filled in for the request log and metrics (model, error code).
    var observation: RequestObservation?
    var requestedSize: String?
    /// The background job or batch this request runs for (the gateway's own id, which job
    /// refunds key on and the console sums charges by).
    var jobID: String?
}

/// One request's account, from its reservation to its usage-log row: what Google billed (every
/// answer it returned, delivered or not) and what the client received (the only thing charged).
/// Settled exactly once, whatever path the request ends on: the reservation is released or
/// turned into the charge, and the row is written, in one ledger statement.
final class Settlement: Sendable {
    let key: APIKey
    let endpoint: Endpoint
    let model: CatalogModel
    let info: RequestInfo
    /// Counts the upstream attempts for the row.
    let trace = UpstreamTrace()
    /// The credit held for this request (nil: the key is unlimited).
    let reservationID: String?
    /// Whether the request counts toward the key's concurrency limit (a batch line does not).
    let limited: Bool
    /// The tier Google is asked for, and what each tier costs.
    let tier: TierRequest
    /// Run when the settlement goes away unsettled.
    private let onAbandon: @Sendable () -> Void
    private let state: Mutex<State>
    /// The ledger write of a successful settlement that runs beside the answer's writing
    /// (`commitAlongsideAnswer`), for the writer to wait on before its last byte.
    private let pendingCommit = Mutex<Task<Void, Never>?>(nil)

    private struct State {
        var billed = ImageUsage.zero
        var delivered = ImageUsage.zero
        var deliveredImages = 0
        /// The first delivered image's pixel size, when the path that delivered it read it.
        var deliveredSize: PixelSize?
        var note: String?
        var settled = false
        var commitsAlongsideAnswer = false
        var servedBy: UpstreamTarget
        /// The tier Google echoed (nil until an answer says; then standard when it names none):
        /// the charge's prices. Answers of one request on several tiers count at the dearest.
        var echoedTier: ServiceTier?

        var servedTier: ServiceTier { echoedTier ?? .standard }
    }

    init(
        key: APIKey, endpoint: Endpoint, model: CatalogModel, info: RequestInfo, primary: UpstreamTarget, reservationID: String?,
        limited: Bool = true, tier: TierRequest = TierRequest(), onAbandon: @escaping @Sendable () -> Void = {}
    ) {
        self.limited = limited
        self.tier = tier
        self.key = key
        self.endpoint = endpoint
        self.model = model
        self.info = info
        self.reservationID = reservationID
        self.onAbandon = onAbandon
        self.state = Mutex(State(servedBy: primary))
    }

    deinit {
        if !state.withLock({ $0.settled }) { onAbandon() }
    }

    /// The Google model that answers this request (its fallback once the primary is retired).
    var servedBy: UpstreamTarget { state.withLock { $0.servedBy } }

    func serve(by target: UpstreamTarget) {
        state.withLock { $0.servedBy = target }
    }

    /// Google answered with this usage (it bills it whether or not the client gets anything).
    func billed(_ usage: ImageUsage) {
        state.withLock { $0.billed = $0.billed + usage }
    }

    /// Google served (part of) the request at `tier` (`usageMetadata.serviceTier`): the charge follows it.
    func served(tier: ServiceTier) {
        state.withLock { $0.echoedTier = max($0.echoedTier ?? tier, tier) }
    }

    /// The tier the charge is priced at.
    var servedTier: ServiceTier { state.withLock { $0.servedTier } }

    /// The client received `images` images (or text) produced with `usage`: this is charged.
    /// `pixels` is the first image's size as delivered (the usage log shows it beside the size asked).
    func delivered(images: Int, usage: ImageUsage, pixels: PixelSize? = nil) {
        state.withLock {
            $0.deliveredImages += images
            $0.delivered = $0.delivered + usage
            if images > 0, $0.deliveredSize == nil { $0.deliveredSize = pixels }
        }
    }

    /// What the key is charged so far (the usage row's charge once settled): what was delivered,
    /// at the answering model's prices, times the group's multiplier.
    var chargeMicroUSD: Int {
        state.withLock { Pricing.costMicroUSD($0.delivered, prices: prices(of: $0), multiplierPPM: key.groupSettings.multiplierPPM) }
    }

    /// What the charge would be once `usage` more is delivered.
    func charge(after usage: ImageUsage) -> Int {
        state.withLock { Pricing.costMicroUSD($0.delivered + usage, prices: prices(of: $0), multiplierPPM: key.groupSettings.multiplierPPM) }
    }

    /// The answering model's prices at the tier Google served.
    private func prices(of state: State) -> TokenPrices {
        tier.prices(state.servedBy.prices, tier: state.servedTier)
    }

    /// The caller writes the answer itself and calls `committed()` before its last byte: a
    /// successful settlement's ledger write then runs while the answer is being written instead
    /// of before it. The client still holds the whole answer only once its charge and usage row
    /// are in the database (a `GET /v1/usage` right after sees them); a crash in between leaves
    /// the reservation, which its lease releases, as a crash before settling always did.
    func commitAlongsideAnswer() {
        state.withLock { $0.commitsAlongsideAnswer = true }
    }

    fileprivate var commitsAlongsideAnswer: Bool { state.withLock { $0.commitsAlongsideAnswer } }

    fileprivate func started(commit: Task<Void, Never>) {
        pendingCommit.withLock { $0 = commit }
    }

    /// Returns once the settlement's ledger write (if one was started beside the answer) is done.
    func committed() async {
        await pendingCommit.withLock { $0 }?.value
    }

    /// A code for the log row of a request that succeeded with a remark (`content_filter`).
    func note(_ code: String) {
        state.withLock { $0.note = code }
    }

    /// The usage-log row, or nil when it was already written. The charge is Google's usage of
    /// what was delivered, priced per modality at the answering model's prices, times the
    /// group's multiplier; the upstream cost is everything Google billed, unmultiplied.
    fileprivate func close(status: Int, errorCode: String?) -> UsageRecord? {
        state.withLock { state -> UsageRecord? in
            guard !state.settled else { return nil }
            state.settled = true
            let billed = state.billed
            let prices = prices(of: state)
            var record = UsageRecord(
                keyID: key.id, endpoint: endpoint.rawValue, model: model.name, status: status, images: state.deliveredImages,
                inputTokens: billed.inputTokens, outputTokens: billed.outputTokens, totalTokens: billed.totalTokens,
                costMicroUSD: Pricing.costMicroUSD(state.delivered, prices: prices, multiplierPPM: key.groupSettings.multiplierPPM),
                errorCode: errorCode ?? state.note,
                upstreamCostMicroUSD: Pricing.costMicroUSD(billed, prices: prices), attempts: trace.attempts
            )
            record.requestID = info.requestID
            record.jobID = info.jobID
            record.serviceTier = state.servedTier.rawValue
            record.keyName = key.name
            record.group = key.group.rawValue
            record.upstreamModel = state.servedBy.id
            record.requestedSize = info.requestedSize
            record.deliveredSize = state.deliveredSize?.description
            record.latencyMilliseconds = Int((info.started.duration(to: .now) / .milliseconds(1)).rounded())
            record.inputTextTokens = billed.inputTokensDetails.textTokens
            record.inputImageTokens = billed.inputTokensDetails.imageTokens
            record.outputTextTokens = billed.outputTokensDetails.textTokens
            record.outputImageTokens = billed.outputTokensDetails.imageTokens
            record.upstreamKey = trace.lastKey
            record.upstreamAttempts = trace.all.map {
                UpstreamAttemptRecord(channel: $0.channel, key: $0.key, status: $0.status, error: $0.error, milliseconds: $0.milliseconds)
            }
            return record
        }
    }
}

/// The service tier a request asks Google for, and what it may fall back to.
struct TierRequest: Sendable {
    var asked: ServiceTier = .standard
    /// A flex request Google sheds is retried on standard only when the key may use standard.
    var standardAllowed = true
    var pricing = TierPricing()
    /// The share of the tier's price the work costs: all of it, or Google's Batch API half for
    /// a batch line. Applied to the prices (the estimate's and the charge's alike), so both
    /// round by the one rule of `TokenPrices.scaled`.
    var sharePPM = 1_000_000

    /// The prices of `base` at `tier`, times this work's share.
    func prices(_ base: TokenPrices, tier: ServiceTier) -> TokenPrices {
        let tiered = pricing.prices(base, tier: tier)
        return sharePPM == 1_000_000 ? tiered : tiered.scaled(byPPM: sharePPM)
    }

    /// A batch line: standard tier at the Batch API's share.
    static func batch(pricing: TierPricing) -> TierRequest {
        TierRequest(asked: .standard, standardAllowed: true, pricing: pricing, sharePPM: BatchPricing.sharePPM)
    }
}

/// The request pipeline every endpoint shares (generations, edits, chat streamed and not):
/// authenticate (middleware) → validate against the catalog (controller) → call Google through
/// the pool → deliver → settle.
///
/// Settlement is by what was delivered, never by how the request ended: a client that received
/// an image is charged for it even if it disconnected right after, and a failure costs nothing.
/// The usage log records Google's own token counts (what Google billed) beside the charge and
/// the number of upstream attempts. Credit reservation (the operators issue) belongs beside
/// `open`, before the first upstream call, and its release or commit in `settle`.
struct RequestPipeline: Sendable {
    let upstream: UpstreamPool
    let ledger: any Ledger
    let images: ImageURLService
    let priceBook: PriceBook
    let limiter: KeyLimiter
    let billing: BillingConfiguration
    let live: LiveReservations
    let metrics: GatewayMetrics
    /// `b64_json` answers held whole right now (`holdsWhole`).
    var held = HeldAnswers(limit: 32)

    /// The prices `id` is charged at (the operator's override, else `fallback`).
    func prices(of id: String, fallback: TokenPrices) -> TokenPrices {
        priceBook.prices(upstream: id, fallback: fallback)
    }

    /// The most `count` images of `spec` may cost this key (reserved before Google is called),
    /// on the first id of the model's chain not known to be retired: a request that meets a
    /// refusal first is charged the next id's real cost even if it exceeds the hold.
    /// On `tier`: the worst case of the tiers the request may run at (a flex request may be
    /// shed and run on standard).
    func estimate(key: APIKey, model: CatalogModel, spec: ImageSpec, count: Int, prompt: String, inputImages: Int, tier: TierRequest = TierRequest()) -> Int {
        let chain = model.chain
        let target = upstream.firstServable(of: model) ?? chain[chain.count - 1]
        var tiers = [tier.asked]
        if tier.asked == .flex, tier.standardAllowed { tiers.append(.standard) }
        return tiers.map { served in
            ReservationEstimate.microUSD(
                targets: [target], spec: spec, count: count, promptTokens: PromptLimit.estimatedTokens(prompt), inputImages: inputImages,
                prices: { id, family in tier.prices(prices(of: id, fallback: id == model.upstreamModel ? model.prices : family.googlePrices), tier: served) },
                multiplierPPM: key.groupSettings.multiplierPPM
            )
        }.max() ?? 0
    }

    /// The tier a request runs at, or the 403 `tier_not_allowed` for one the key may not use
    /// (before any upstream call). `auto` (nil) is standard, or the cheapest tier the key may
    /// use; a background job's is the operator's job tier when the key may use it.
    func tier(_ requested: ServiceTier?, key: APIKey, background: Bool = false) throws(GatewayError) -> TierRequest {
        let allowed = key.allowedServiceTiers.compactMap(ServiceTier.init(rawValue:)).sorted()
        var asked: ServiceTier
        if let requested {
            asked = requested
        } else if background, allowed.contains(billing.jobServiceTier) {
            asked = billing.jobServiceTier
        } else {
            asked = allowed.contains(.standard) ? .standard : (allowed.first ?? .standard)
        }
        guard allowed.contains(asked) else { throw ServiceTier.notAllowed(asked, allowed: allowed) }
        return TierRequest(asked: asked, standardAllowed: allowed.contains(.standard), pricing: billing.tiers)
    }

    /// A new account for a validated request: the key's rate and concurrency limits are
    /// checked and the worst case is reserved against its credit, before any upstream call.
    /// A key whose balance cannot cover `estimateMicroUSD` gets 429 `insufficient_quota`.
    /// `batchLine: true` for the lines of a batch: the batch holds their credit as a whole, and
    /// Google has already produced them, so neither a reservation nor the key's per-minute and
    /// concurrency limits apply (a limit must never drop work Google billed).
    func open(
        key: APIKey, endpoint: Endpoint, model: CatalogModel, info: RequestInfo, estimateMicroUSD: Int, batchLine: Bool = false,
        tier: TierRequest = TierRequest(), logger: Logger
    ) async throws(GatewayError) -> Settlement {
        info.observation?.model = model.name
        // The admission (limits, then the credit held) as a child of the request's span.
        let span = InstrumentationSystem.tracer.startSpan("nanogate.reserve", context: info.observation?.span?.context ?? ServiceContext.current ?? .topLevel)
        span.attributes["nanogate.estimate_usd"] = TokenPrices.usd(estimateMicroUSD)
        defer { span.end() }
        if !batchLine { try await limiter.begin(key, logger: logger) }
        // Frees the concurrency slot the request took (a batch line took none).
        let limiter = self.limiter
        let release: @Sendable () -> Void = { if !batchLine { limiter.finish(key) } }
        await priceBook.refreshIfStale(logger: logger)
        var reservationID: String?
        if !batchLine, key.creditMicroUSD != nil {
            let reservation = Reservation(
                keyID: key.id, amountMicroUSD: estimateMicroUSD, owner: billing.owner,
                leaseUntil: Date().addingTimeInterval(TimeInterval(billing.lease.components.seconds))
            )
            let outcome: ReservationOutcome
            do {
                outcome = try await ledger.reserve(reservation)
            } catch {
                release()
                logger.error("could not reserve credit", metadata: ["error": "\(error)"])
                throw .internal("The key's credit could not be checked; retry.")
            }
            switch outcome {
            case .held:
                reservationID = reservation.id
                live.add(reservation.id)
            case .unlimited: break
            case .insufficient:
                release()
                span.attributes["error.type"] = "insufficient_quota"
                throw .insufficientQuota(balanceMicroUSD: key.balanceMicroUSD ?? 0, neededMicroUSD: estimateMicroUSD)
            }
        }
        let primary = UpstreamTarget(id: model.upstreamModel, family: model.family, prices: prices(of: model.upstreamModel, fallback: model.prices))
        let live = self.live
        return Settlement(
            key: key, endpoint: endpoint, model: model, info: info, primary: primary, reservationID: reservationID, limited: !batchLine, tier: tier,
            onAbandon: { [reservationID] in
                // Never settled (its response was never written): free the slot; the hold runs out.
                release()
                if let reservationID { live.remove(reservationID) }
            }
        )
    }

    /// Settles the request (once; later calls do nothing): releases its reservation, charges
    /// what was delivered and writes its usage-log row, in one ledger statement.
    func settle(_ settlement: Settlement, status: Int, errorCode: String?, logger: Logger) async {
        guard let record = settlement.close(status: status, errorCode: errorCode) else { return }
        metrics.settled(record)
        // The request's span says what was charged; the ledger write is a child span of its own.
        let requestSpan = settlement.info.observation?.span
        if let requestSpan { GatewaySpans.describe(requestSpan, record: record) }
        let span = InstrumentationSystem.tracer.startSpan("nanogate.settle", context: requestSpan?.context ?? ServiceContext.current ?? .topLevel)
        span.attributes["nanogate.cost_usd"] = TokenPrices.usd(record.costMicroUSD)
        span.attributes["nanogate.status"] = status
        defer { span.end() }
        if status >= 400, let errorCode { settlement.info.observation?.errorCode = errorCode }
        if settlement.limited { limiter.finish(settlement.key) }
        if let id = settlement.reservationID { live.remove(id) }
        let ledger = self.ledger
        let write: @Sendable () async -> Void = {
            do {
                try await ledger.settle(reservationID: settlement.reservationID, record: record)
            } catch {
                // The reservation stays held until its lease runs out; then it is released uncharged.
                logger.error("could not settle the request", metadata: ["error": "\(error)", "cost_micro_usd": "\(record.costMicroUSD)"])
            }
        }
        if status < 400, settlement.commitsAlongsideAnswer {
            settlement.started(commit: Task(operation: write))
        } else if Task.isCancelled {
            // A request cancelled because its client left is settled all the same, outside the
            // cancelled task (SQLKit's async calls refuse to run in one).
            await Task(operation: write).value
        } else {
            await write()
        }
    }

    /// Runs `body` and settles the request on whatever way it ends (a thrown error settles with
    /// that error's status; what was delivered before it is still charged).
    func settling<Value>(_ settlement: Settlement, logger: Logger, _ body: () async throws(GatewayError) -> Value) async throws(GatewayError) -> Value {
        do {
            let value = try await body()
            await settle(settlement, status: 200, errorCode: nil, logger: logger)
            return value
        } catch {
            await settle(settlement, status: error.status, errorCode: error.code, logger: logger)
            throw error
        }
    }

    /// One `generateContent` call on behalf of `settlement` (through the fallback when Google
    /// retired the model); Google's usage is recorded as billed. `size` is the size class the
    /// request was validated to (it sets the attempt's timeout).
    func generate(_ request: GeminiWire.Request, size: ImageSize?, settlement: Settlement, logger: Logger) async throws(GatewayError) -> GeminiWire.Response {
        let aliases = [settlement.model.name]
        let response = try await onTier(request, settlement: settlement, logger: logger) { request throws(GatewayError) in
            try await withFallback(request, settlement: settlement, logger: logger) { (model, request) throws(UpstreamError) in
                try await upstream.generateContent(model: model, aliases: aliases, imageSize: size?.rawValue, request: request, trace: settlement.trace, logger: logger)
            }
        }
        settlement.billed(ImageTranslation.usage(of: response.usageMetadata))
        settlement.served(tier: ServiceTier(echoed: response.usageMetadata?.serviceTier))
        return response
    }

    /// One `streamGenerateContent` call on behalf of `settlement` (usage and the tier served are
    /// recorded by the reader).
    func stream(_ request: GeminiWire.Request, size: ImageSize?, settlement: Settlement, logger: Logger) async throws(GatewayError) -> GeminiEventStream {
        let aliases = [settlement.model.name]
        return try await onTier(request, settlement: settlement, logger: logger) { request throws(GatewayError) in
            try await withFallback(request, settlement: settlement, logger: logger) { (model, request) throws(UpstreamError) in
                try await upstream.streamGenerateContent(model: model, aliases: aliases, imageSize: size?.rawValue, request: request, trace: settlement.trace, logger: logger)
            }
        }
    }

    /// One `generateContent` call whose answer is handed over unread (the caller records the
    /// usage and tier from it).
    func answerBody(_ request: GeminiWire.Request, size: ImageSize?, settlement: Settlement, logger: Logger) async throws(GatewayError) -> GeminiAnswerBody {
        let aliases = [settlement.model.name]
        return try await onTier(request, settlement: settlement, logger: logger) { request throws(GatewayError) in
            try await withFallback(request, settlement: settlement, logger: logger) { (model, request) throws(UpstreamError) in
                try await upstream.generateContentBody(model: model, aliases: aliases, imageSize: size?.rawValue, request: request, trace: settlement.trace, logger: logger)
            }
        }
    }

    /// One `generateContent` call whose answer `read` reads within the attempt (a fault it
    /// reports is retried like a whole answer's); the caller records the usage and tier.
    func answerRead<Output: Sendable>(
        _ request: GeminiWire.Request, size: ImageSize?, settlement: Settlement, logger: Logger,
        read: @escaping @Sendable (GeminiAnswerBody) async -> Result<Output, AnswerReadFailure>
    ) async throws(GatewayError) -> Output {
        let aliases = [settlement.model.name]
        return try await onTier(request, settlement: settlement, logger: logger) { request throws(GatewayError) in
            try await withFallback(request, settlement: settlement, logger: logger) { (model, request) throws(UpstreamError) in
                try await upstream.generateContentRead(
                    model: model, aliases: aliases, imageSize: size?.rawValue, request: request, trace: settlement.trace, logger: logger, read: read
                )
            }
        }
    }

    /// Runs `call` with the request on the settlement's tier; a flex request Google sheds (429
    /// or 503: flex is "sheddable") runs again on standard, when the key may use standard.
    private func onTier<Value>(
        _ request: GeminiWire.Request, settlement: Settlement, logger: Logger, _ call: (GeminiWire.Request) async throws(GatewayError) -> Value
    ) async throws(GatewayError) -> Value {
        var request = request
        let asked = settlement.tier.asked
        // The native route passes Google's own `serviceTier` through; the others ask for theirs.
        if request.serviceTier == nil || asked != .standard { request.serviceTier = asked.wire }
        do {
            return try await call(request)
        } catch {
            guard ServiceTier(echoed: request.serviceTier) == .flex, settlement.tier.standardAllowed, [429, 503].contains(error.status), !Task.isCancelled else {
                throw error
            }
            logger.notice("Google shed a flex request; running it on standard", metadata: ["error": "\(error.code ?? "")"])
            request.serviceTier = nil
            return try await call(request)
        }
    }

    /// Calls the model's upstream id, then each fallback in turn while Google refuses the id as
    /// unknown or not available to the project (Google renames and restricts image models every
    /// few months), skipping ids refused within the hour. The request is adapted to each
    /// fallback's family; one the fallback cannot honour (a ratio or tier it lacks) skips it, and
    /// when no id is left the first refusal is the answer.
    private func withFallback<Value>(
        _ request: GeminiWire.Request, settlement: Settlement, logger: Logger,
        _ call: (String, GeminiWire.Request) async throws(UpstreamError) -> Value
    ) async throws(GatewayError) -> Value {
        do {
            return try await withFallbackUpstream(request, settlement: settlement, logger: logger, call)
        } catch {
            throw GatewayError(upstream: error)
        }
    }

    private func withFallbackUpstream<Value>(
        _ request: GeminiWire.Request, settlement: Settlement, logger: Logger,
        _ call: (String, GeminiWire.Request) async throws(UpstreamError) -> Value
    ) async throws(UpstreamError) -> Value {
        let model = settlement.model
        var candidates: [(target: UpstreamTarget, request: GeminiWire.Request)] = []
        for (index, link) in model.chain.enumerated() {
            guard let adapted = index == 0 ? request : ImageTranslation.adapted(request, to: link.family) else { continue }
            let prices = prices(of: link.id, fallback: index == 0 ? model.prices : link.family.googlePrices)
            candidates.append((UpstreamTarget(id: link.id, family: link.family, prices: prices), adapted))
        }
        // Ids no channel may be asked for (none lists it, or every project refused it) are
        // skipped without a call; the pool remembers each channel's refusals.
        let live = candidates.filter { upstream.mayServe(model: $0.target.id, aliases: [model.name]) }
        let tried = live.isEmpty ? [candidates[candidates.count - 1]] : live
        var firstRefusal: UpstreamError?
        for (index, candidate) in tried.enumerated() {
            settlement.serve(by: candidate.target)
            do {
                return try await call(candidate.target.id, candidate.request)
            } catch {
                guard error.code == .modelNotFound, !Task.isCancelled else { throw error }
                firstRefusal = firstRefusal ?? error
                guard index + 1 < tried.count else { break }
                logger.warning(
                    "Google refuses the upstream model; trying the next of its chain",
                    metadata: ["model": "\(model.name)", "upstream": "\(candidate.target.id)", "next": "\(tried[index + 1].target.id)"]
                )
            }
        }
        throw firstRefusal ?? UpstreamError(.modelNotFound, detail: "no upstream id of '\(model.name)' can serve this request")
    }

    /// The images endpoints' upstream work: `n` parallel calls (`perImage`). Every answer
    /// Google returned is in the settlement's billed usage, whether or not it made an image.
    func produceImages(_ job: ImageRequest, settlement: Settlement, given: [Result<GeminiWire.Response, GatewayError>]? = nil, logger: Logger) async throws(GatewayError) -> [ImageTranslation.Outcome] {
        if let given {
            // Google's answers arrived another way (a batch): billed and read like a call's.
            var outcomes: [ImageTranslation.Outcome] = []
            var firstError: GatewayError?
            for answer in given {
                do throws(GatewayError) {
                    let response = try answer.get()
                    settlement.billed(ImageTranslation.usage(of: response.usageMetadata))
                    outcomes.append(try ImageTranslation.outcome(of: response))
                } catch {
                    firstError = firstError ?? error
                }
            }
            guard !outcomes.isEmpty else { throw firstError ?? .internal("Google answered nothing for this request.") }
            return outcomes
        }
        let request = ImageTranslation.geminiRequest(
            prompt: job.prompt, inputImages: job.inputImages, spec: job.spec, family: job.model.family, reasoningEffort: job.options.reasoningEffort
        )
        return try await perImage(job, logger: logger) { () throws(GatewayError) in
            try ImageTranslation.outcome(of: try await generate(request, size: job.spec.imageSize, settlement: settlement, logger: logger))
        }
    }

    /// `job.count` upstream calls at once (one image each: Gemini rejects `candidateCount` > 1),
    /// in request order. When some fail, the values of those that succeeded are returned (OpenAI
    /// clients accept fewer than `n`); it throws only when none did, with the first call's error.
    func perImage<Value: Sendable>(
        _ job: ImageRequest, logger: Logger, _ call: @escaping @Sendable () async throws(GatewayError) -> Value
    ) async throws(GatewayError) -> [Value] {
        let results = await withTaskGroup(of: (Int, Result<Value, GatewayError>).self) { group in
            for index in 0..<job.count {
                group.addTask {
                    do throws(GatewayError) {
                        return (index, .success(try await call()))
                    } catch {
                        return (index, .failure(error))
                    }
                }
            }
            var collected: [(Int, Result<Value, GatewayError>)] = []
            for await result in group { collected.append(result) }
            return collected.sorted { $0.0 < $1.0 }.map(\.1)
        }
        let values = results.compactMap { try? $0.get() }
        guard !values.isEmpty else {
            for case .failure(let error) in results { throw error }
            throw .internal("No upstream call was made.")
        }
        if values.count < results.count {
            logger.warning("some images of the request failed; answering with the others", metadata: ["delivered": "\(values.count)", "asked": "\(job.count)"])
        }
        return values
    }

    /// The images answer for what was delivered: charged now (the settlement's figure is the
    /// answer's `usage.cost`), with the first image's format and size.
    func imagesResponse(
        _ job: ImageRequest, data: [ImageObject], usage delivered: ImageUsage, format: OutputFormat?, pixels: PixelSize?, settlement: Settlement
    ) -> ImagesResponse {
        settlement.delivered(images: data.count, usage: delivered, pixels: pixels)
        var usage = delivered
        usage.cost = TokenPrices.usd(settlement.chargeMicroUSD)
        var response = ImagesResponse(
            created: Int(Date().timeIntervalSince1970), data: data, usage: usage, background: "opaque",
            outputFormat: format?.rawValue, size: pixels?.description, quality: ImageQuality.reported(for: job.spec.imageSize)
        )
        response.serviceTier = settlement.servedTier.openAIName
        return response
    }

    /// The images endpoints, answered as one JSON body. Images that succeeded are returned and
    /// charged even when others of the same request failed.
    func generateImages(
        _ job: ImageRequest, settlement: Settlement, given: [Result<GeminiWire.Response, GatewayError>]? = nil, logger: Logger
    ) async throws(GatewayError) -> ImagesResponse {
        if given == nil, storesThrough(job) { return try await generateStoredImages(job, settlement: settlement, logger: logger) }
        return try await settling(settlement, logger: logger) { () throws(GatewayError) -> ImagesResponse in
            let outcomes = try await produceImages(job, settlement: settlement, given: given, logger: logger)
            var data: [ImageObject] = []
            var delivered = ImageUsage.zero
            var first: FinishedImage?
            for outcome in outcomes {
                // One image per upstream call: Gemini may add more, but `n` is what the client asked for.
                let image = try await images.finish(outcome.images[0], options: job.options)
                switch job.format {
                case .b64JSON:
                    data.append(ImageObject(b64JSON: image.base64, revisedPrompt: outcome.text))
                case .url:
                    do {
                        let url = try await images.store(image, baseURL: job.baseURL)
                        data.append(ImageObject(url: url, revisedPrompt: outcome.text))
                    } catch {
                        logger.error("could not store a generated image", metadata: ["error": "\(error)"])
                        continue
                    }
                }
                first = first ?? image
                delivered = delivered + outcome.usage
            }
            guard !data.isEmpty else { throw .notStored }
            return imagesResponse(job, data: data, usage: delivered, format: first?.format, pixels: first?.pixels, settlement: settlement)
        }
    }
}

/// A generated image as it is delivered: its base64, its real format and pixel size (read
/// from the bytes), after any conversion the client asked for.
struct FinishedImage: Sendable {
    var base64: Base64Text
    /// Decoded bytes when they were needed anyway (conversion, size), so a URL answer does not decode twice.
    var bytes: [UInt8]?
    var format: OutputFormat?
    var pixels: PixelSize?
}

/// Finishes generated images (format, size, conversion) and stores them behind signed,
/// expiring URLs.
struct ImageURLService: Sendable {
    /// The folder, or the shared bucket: where images go and what their URLs look like.
    let images: any ImageRepository
    let ttl: Duration
    let converter: ImageConverter
    /// Where an image streamed through is written before it is moved into the store (on the
    /// data directory's file system, so a folder store takes it by rename); nil when images
    /// are held whole (`NANOGATE_STREAM_IMAGES=off`).
    var scratchDirectory: URL?

    /// Reads the real format and size from the bytes (Gemini labels JPEG as PNG at times) and
    /// converts when the client asked for another format or a compression. Conversion and
    /// decoding of large images run on the blocking pool, never on Swift's cooperative threads.
    func finish(_ image: GeminiWire.InlineData, options: ImageOptions) async throws(GatewayError) -> FinishedImage {
        // A 64 KiB prefix holds the header of every image Google makes (JPEG metadata included).
        let head = SafeBase64.decode(image.data.bytes.readableBytesView.prefix(64 * 1024)) ?? []
        let sniffed = ImageSniffer.mimeType(of: head).flatMap(OutputFormat.init(mimeType:))
        if options.needsConversion(from: sniffed), let target = options.outputFormat ?? sniffed {
            let converted = try await converter.convert(base64: image.data, to: target, quality: options.outputCompression)
            return FinishedImage(base64: converted.base64, bytes: converted.bytes, format: target, pixels: ImageConverter.dimensions(of: converted.bytes.prefix(64 * 1024)))
        }
        var finished = FinishedImage(base64: image.data, bytes: nil, format: sniffed, pixels: ImageConverter.dimensions(of: head))
        if finished.pixels == nil, let bytes = SafeBase64.decode(image.data.bytes.readableBytesView) {
            // A header beyond the prefix (rare): read it from the whole image, kept for a URL answer.
            finished.bytes = bytes
            finished.pixels = ImageConverter.dimensions(of: bytes)
        }
        return finished
    }

    /// Writes the image under its real type's extension and returns its signed URL. Bytes that
    /// are no image Google makes are refused rather than stored under an image extension.
    func store(_ image: FinishedImage, baseURL: String) async throws -> String {
        guard let bytes = image.bytes ?? SafeBase64.decode(image.base64.bytes.readableBytesView) else { throw ImageStoreError.notAnImage }
        guard let mime = ImageSniffer.mimeType(of: bytes.prefix(16)) else { throw ImageStoreError.notAnImage }
        let name = try await images.save(bytes, fileExtension: ImageSniffer.fileExtension(for: mime))
        return images.url(name: name, baseURL: baseURL, ttl: ttl, now: Date())
    }

    /// Google's base64 as a stored image (chat's URL answers: no conversion there).
    func store(base64: Base64Text, baseURL: String) async throws -> String {
        try await store(FinishedImage(base64: base64, bytes: nil, format: nil, pixels: nil), baseURL: baseURL)
    }
}
