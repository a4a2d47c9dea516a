public import AsyncHTTPClient
import Foundation
import HummingbirdCore
public import Hummingbird
public import Logging
public import NIOCore
public import NanoGateStorage
import NanoGateCore
public import ServiceLifecycle
import Upstream
public import NIOPosix

/// The long-lived resources the gateway runs on, created once and passed down.
public struct GatewayDependencies: Sendable {
    public var database: DatabaseHandle
    public var httpClient: HTTPClient
    /// The local image folder: `url` answers' files, unless `objectStore` is set.
    public var imageStore: ImageStore
    /// The shared bucket (`NANOGATE_IMAGE_STORE=s3://…`): images go there, URLs are presigned.
    public var objectStore: ObjectImageStore?
    /// Uploaded files and batch outputs, kept for days (not the hours images are): the data
    /// directory's `files` folder, or the bucket's `files/` prefix.
    public var fileStore: ImageStore
    public var fileObjects: ObjectImageStore?
    public var signer: URLSigner
    /// Threads for blocking work on behalf of clients (DNS look-ups, reading stored images), so
    /// it never runs on Swift's cooperative threads; its size also bounds concurrent look-ups.
    public var blockingThreadPool: NIOThreadPool
    /// Threads for image conversions (`output_format`) alone: two, so upstream bytes that decode
    /// large cannot take the threads DNS look-ups and file reads need, nor much memory at once.
    public var conversionThreadPool: NIOThreadPool

    /// Where image bytes are kept (the bucket when there is one, else the folder): one
    /// protocol for whoever saves or loads them.
    public var images: any ImageRepository { objectStore ?? imageStore }
    /// Where file contents are kept, beside the images but swept on their own schedule.
    public var files: any ImageRepository { fileObjects ?? fileStore }
    /// The store for keys and usage.
    public var store: SQLStore { database.store }
    /// Reservations and settlement.
    public var ledger: any Ledger { database.ledger }

    /// Opens the database (the data directory's SQLite file, or `NANOGATE_DATABASE_URL`) with
    /// its schema brought up to date, the image store (the data directory's folder, another
    /// folder, or an S3 bucket), and an HTTP client for Google that follows no redirect.
    public static func live(configuration: GatewayConfiguration, logger: Logger) async throws -> GatewayDependencies {
        let directory = configuration.dataDirectory
        try createPrivateDirectory(directory)
        let signer = URLSigner(secret: try URLSigner.loadOrCreateSecret(environmentValue: configuration.urlSecret, dataDirectory: directory))
        let location = try DatabaseLocation.from(url: configuration.databaseURL, dataDirectory: directory)
        let database = try await DatabaseHandle.open(location, poolSize: configuration.databasePoolSize, migrations: .apply, logger: logger)
        let httpClient = HTTPClient(
            eventLoopGroupProvider: .singleton, configuration: UpstreamPool.clientConfiguration(requestTimeout: configuration.upstream.longestTimeout, trustedCAFile: configuration.upstream.trustedCAFile)
        )
        let threadPool = NIOThreadPool(numberOfThreads: 8)
        threadPool.start()
        let conversionThreadPool = NIOThreadPool(numberOfThreads: 2)
        conversionThreadPool.start()
        var imagesDirectory = directory.appendingPathComponent("images")
        var objectStore: ObjectImageStore?
        var fileObjects: ObjectImageStore?
        if let store = configuration.imageStore {
            if store.hasPrefix("s3://") {
                let s3 = try S3Configuration.fromEnvironment(configuration.awsEnvironment, storeURL: store)
                let client = S3Client(httpClient: httpClient, location: s3.location, credentials: s3.credentials, logger: logger)
                objectStore = ObjectImageStore(client: client, prefix: s3.location.prefix)
                fileObjects = ObjectImageStore(client: client, prefix: s3.location.prefix.isEmpty ? "files" : s3.location.prefix + "/files")
            } else {
                imagesDirectory = URL(fileURLWithPath: store.hasPrefix("file://") ? String(store.dropFirst("file://".count)) : store)
            }
        }
        return GatewayDependencies(
            database: database,
            httpClient: httpClient,
            imageStore: try ImageStore(directory: imagesDirectory, signer: signer),
            objectStore: objectStore,
            fileStore: try ImageStore(directory: directory.appendingPathComponent("files"), signer: signer),
            fileObjects: fileObjects,
            signer: signer,
            blockingThreadPool: threadPool,
            conversionThreadPool: conversionThreadPool
        )
    }
}

/// Runs `close` when the service group shuts down, so resources close after the server stops.
struct CloseOnShutdown: Service {
    let close: @Sendable () async throws -> Void

    func run() async throws {
        try? await gracefulShutdown()
        // Close even when the group was cancelled rather than shut down: a resource left open
        // (SQLite asserts on it) is worse than a late close.
        try await Task { try await close() }.value
    }
}

/// The gateway's parts before they become an application: the router with every route and
/// middleware, and what the services need. Tests read `router.routes` (the OpenAPI document
/// must list exactly these).
struct GatewayParts {
    let router: Router<GatewayRequestContext>
    /// The admin API's own router, when it listens apart (`NANOGATE_ADMIN_PORT`).
    var adminRouter: Router<GatewayRequestContext>?
    let metrics: GatewayMetrics
    let pool: UpstreamPool
    let pipeline: RequestPipeline
    let managedChannels: ManagedChannels
    let jobRunner: JobRunner
    let batchPoller: BatchPoller
}

/// A listener of its own beside the API's (`NANOGATE_METRICS_PORT`, `NANOGATE_ADMIN_PORT`).
public enum Listener: Sendable, Hashable {
    case metrics
    case admin
}

/// HTTP/1.1 with the gateway's connection rules, for every listener (the API, and the metrics
/// and admin ports when they are apart): the idle timeout and `ConnectionGuard`'s bounded
/// lingering after an error answer (each connection gets a guard of its own).
func guardedHTTP1(_ configuration: GatewayConfiguration) -> HTTPServerBuilder {
    .http1(configuration: .init(additionalChannelHandlers: [ConnectionGuard(lingerTime: .init(configuration.errorLinger))], idleTimeout: .init(configuration.idleTimeout)))
}

/// Builds the router and the objects behind it.
func makeGatewayParts(
    configuration: GatewayConfiguration, dependencies: GatewayDependencies, logger: Logger, hostLookup: @escaping HostLookup = systemHostLookup
) -> GatewayParts {
    let metrics = GatewayMetrics(keyLabels: configuration.metricsKeyLabels)
    let pool = UpstreamPool(configuration: configuration.upstream, logger: logger, observer: metrics)
    let managedChannels = ManagedChannels(store: dependencies.store, pool: pool, logger: logger)
    let urls = ImageURLService(
        images: dependencies.images, ttl: configuration.urlTTL,
        converter: ImageConverter(threadPool: dependencies.conversionThreadPool), scratchDirectory: configuration.streamImages == .off ? nil : dependencies.fileStore.directory
    )
    var pipeline = RequestPipeline(
        upstream: pool, ledger: dependencies.ledger, images: urls, priceBook: PriceBook(store: dependencies.store),
        limiter: KeyLimiter(rates: dependencies.store), billing: configuration.billing, live: LiveReservations(), metrics: metrics
    )
    pipeline.held = HeldAnswers(limit: configuration.heldAnswers)
    let inputs = InputImageLoader(
        images: dependencies.images, limits: configuration.inputs,
        resolver: ThreadPoolResolver(threadPool: dependencies.blockingThreadPool, lookup: hostLookup)
    )
    let publicURL = PublicURL(configured: configuration.publicBaseURL, trustForwardedHeaders: configuration.trustForwardedHeaders)

    let router = Router(context: GatewayRequestContext.self)
    if configuration.handlersOnEventLoop { router.add(middleware: EventLoopAffinityMiddleware()) }
    router.add(middleware: RequestIDMiddleware())
    if configuration.tracing { router.add(middleware: RequestTracingMiddleware()) }
    router.add(middleware: RequestLogMiddleware(metrics: metrics))
    router.add(middleware: OpenAIErrorMiddleware())
    router.get("health") { _, _ in "ok" }
    ReadinessController(
        database: dependencies.database, images: dependencies.images, catalog: configuration.catalog, pool: pool
    ).addRoutes(to: router)
    OpenAPIDocument.addRoutes(to: router)
    let metricsRoutes = MetricsController<GatewayRequestContext>(metrics: metrics, pool: pool, live: pipeline.live, token: configuration.metricsToken)
    if configuration.metricsOnMainPort { metricsRoutes.addRoutes(to: router) }
    ImageFilesController(store: dependencies.imageStore).addRoutes(to: router)

    /// The key's own API: the `/v1` routes, and the console's copy of them (`console/api/v1`).
    func idempotent(_ group: RouterGroup<GatewayRequestContext>) -> RouterGroup<GatewayRequestContext> {
        group.add(middleware: IdempotencyMiddleware(
            store: dependencies.store, maxBodyBytes: configuration.inputs.maxRequestBytes, maxJSONBodyBytes: configuration.maxJSONBodyBytes,
            staleAfter: configuration.idempotencyStaleAfter
        ))
        .add(middleware: DisconnectMiddleware())
    }
    let api = idempotent(router.group("v1").add(middleware: APIKeyAuthenticator(keys: dependencies.database.keys)))
    var images = ImagesController(
        catalog: configuration.catalog, pipeline: pipeline, publicURL: publicURL,
        maxJSONBodyBytes: configuration.maxJSONBodyBytes, inputs: inputs, keepAliveInterval: configuration.keepAliveInterval
    )
    images.streamImages = configuration.streamImages == .on
    let webhookPolicy = WebhookPolicy(limits: configuration.inputs)
    images.jobs = ImageJobs(
        store: dependencies.store, resultTTL: configuration.urlTTL, webhookPolicy: webhookPolicy, pipeline: pipeline, images: dependencies.images,
        maxPendingPerKey: configuration.jobQueuePerKey
    )
    let batches = BatchesController(
        store: dependencies.store, files: dependencies.files, scratchDirectory: dependencies.fileStore.directory, images: images, pipeline: pipeline,
        maxFileBytes: configuration.inputs.maxRequestBytes,
        fileQuotaBytes: configuration.fileQuotaBytes, owner: configuration.billing.owner
    )
    let batchPoller = BatchPoller(store: dependencies.store, batches: batches, owner: configuration.billing.owner, pollInterval: configuration.batchPollInterval, logger: logger)
    let jobRunner = JobRunner(
        store: dependencies.store, owner: configuration.billing.owner, lease: configuration.billing.lease, workers: configuration.jobWorkers,
        resultTTL: configuration.urlTTL, pollInterval: .milliseconds(500),
        webhooks: WebhookSender(policy: webhookPolicy, resolver: ThreadPoolResolver(threadPool: dependencies.blockingThreadPool, lookup: hostLookup)),
        images: dependencies.images, logger: logger, execute: { [images, repository = dependencies.images] record, key in
            try await images.runStoredJob(record, key: key, images: repository, logger: logger)
        }
    )
    let models = ModelsController(catalog: configuration.catalog, prices: { [pipeline] in pipeline.prices(of: $0, fallback: $1) })
    // Google's own API for its SDKs: under /v1beta, and /v1 (google-genai's other default).
    let native = NativeController(catalog: configuration.catalog, pipeline: pipeline, maxRequestBytes: configuration.inputs.maxRequestBytes)
    let chat = ChatController(
        catalog: configuration.catalog, pipeline: pipeline, signatures: dependencies.store,
        inputs: inputs, publicURL: publicURL, keepAliveInterval: configuration.keepAliveInterval, chatImages: configuration.chatImages
    )
    let responses = ResponsesController(
        catalog: configuration.catalog, pipeline: pipeline, chat: chat, store: dependencies.store, inputs: inputs, publicURL: publicURL,
        keepAliveInterval: configuration.keepAliveInterval, background: BackgroundResponses(), staleAfter: configuration.idempotencyStaleAfter
    )
    let addPublicRoutes = { (group: RouterGroup<GatewayRequestContext>) in
        images.addRoutes(to: group)
        ImageJobsController(store: dependencies.store, images: dependencies.images).addRoutes(to: group)
        batches.addRoutes(to: group)
        models.addRoutes(to: group)
        native.addRoutes(to: group, listModels: false)
        AccountController(store: dependencies.store).addRoutes(to: group)
        chat.addRoutes(to: group)
        responses.addRoutes(to: group)
    }
    addPublicRoutes(api)
    // MCP (issue 26): image tools for agents, on the caller's key.
    MCPController(
        images: images, models: models, store: dependencies.store,
        keepAliveInterval: configuration.keepAliveInterval, maxRequestBytes: configuration.inputs.maxRequestBytes
    ).addRoutes(to: router.group("mcp").add(middleware: APIKeyAuthenticator(keys: dependencies.database.keys)).add(middleware: DisconnectMiddleware()))
    native.addRoutes(to: router.group("v1beta").add(middleware: APIKeyAuthenticator(keys: dependencies.database.keys)).add(middleware: DisconnectMiddleware()), listModels: true)
    var adminRouter: Router<GatewayRequestContext>?
    var addAdminRoutes: ((RouterGroup<GatewayRequestContext>) -> Void)?
    if let token = configuration.adminToken {
        let adminHome: Router<GatewayRequestContext>
        if configuration.adminPort != nil {
            adminHome = Router(context: GatewayRequestContext.self)
            adminHome.add(middleware: RequestIDMiddleware())
            adminHome.add(middleware: RequestLogMiddleware(metrics: metrics))
            adminHome.add(middleware: OpenAIErrorMiddleware())
            adminRouter = adminHome
        } else {
            adminHome = router
        }
        let admin = AdminController(
            store: dependencies.store, catalog: configuration.catalog, pool: pool, channels: managedChannels,
            fileChannels: Set(configuration.upstream.effectiveChannels.map(\.name))
        )
        let keyCacheRefresh = KeyCacheRefresh<GatewayRequestContext>(keys: dependencies.database.keys)
        admin.addRoutes(
            to: adminHome.group("admin/v1")
                .add(middleware: AdminTokenAuthenticator(token: token, throttle: AdminThrottle(), trustForwardedHeaders: configuration.trustForwardedHeaders))
                .add(middleware: keyCacheRefresh)
        )
        addAdminRoutes = { admin.addRoutes(to: $0.add(middleware: keyCacheRefresh)) }
    }
    if configuration.console != .off {
        // The browser console (issue 25): its pages, and the same API behind its session. With
        // the admin API on a listener of its own, the operator signs in there only: the public
        // port's console serves key holders, so no admin action is reachable from it.
        let operatorToken = configuration.console == .on ? configuration.adminToken : nil
        func addConsole(to router: Router<GatewayRequestContext>, operatorToken: String?) {
            let settings = ConsoleSettings(adminToken: operatorToken, publicURL: publicURL)
            var console = ConsoleController(
                settings: settings, store: dependencies.store, operatorService: OperatorService(store: dependencies.store, catalog: configuration.catalog),
                pool: pool, catalog: configuration.catalog, models: models
            )
            console.trustForwardedHeaders = configuration.trustForwardedHeaders
            console.imageOrigin = dependencies.objectStore?.origin
            console.addRoutes(to: router, publicAPI: { addPublicRoutes(idempotent($0)) }, adminAPI: operatorToken == nil ? nil : addAdminRoutes)
        }
        addConsole(to: router, operatorToken: adminRouter == nil ? operatorToken : nil)
        if let adminRouter { addConsole(to: adminRouter, operatorToken: operatorToken) }
    }
    return GatewayParts(
        router: router, adminRouter: adminRouter, metrics: metrics, pool: pool, pipeline: pipeline, managedChannels: managedChannels,
        jobRunner: jobRunner, batchPoller: batchPoller
    )
}

/// Builds the gateway: routes, middleware, and the services that own its resources.
public func buildApplication(
    configuration: GatewayConfiguration,
    dependencies: GatewayDependencies,
    logger: Logger,
    services extra: [any Service] = [],
    hostLookup: @escaping HostLookup = systemHostLookup,
    onServerRunning: @escaping @Sendable (any Channel) async -> Void = { _ in },
    onListenerRunning: @escaping @Sendable (Listener, any Channel) async -> Void = { _, _ in }
) -> some ApplicationProtocol {
    let parts = makeGatewayParts(configuration: configuration, dependencies: dependencies, logger: logger, hostLookup: hostLookup)
    let (router, metrics, pool, pipeline, managedChannels) = (parts.router, parts.metrics, parts.pool, parts.pipeline, parts.managedChannels)
    var app = Application(
        router: router,
        // The idle timeout closes connections that send nothing: idle keep-alive ones, request
        // heads or bodies that stall (slowloris). It never cuts a request whose handler is
        // still working (waiting on Google): Hummingbird suspends it between head and response.
        server: guardedHTTP1(configuration),
        configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "NanoGate"),
        onServerRunning: onServerRunning,
        logger: logger
    )
    let database = dependencies.database
    let httpClient = dependencies.httpClient
    let threadPool = dependencies.blockingThreadPool
    app.addServices(
        ChannelKnowledgeService(
            store: dependencies.store, pool: pool, catalog: configuration.catalog, checkModels: configuration.checkModelsAtStart,
            interval: configuration.modelCheckInterval, logger: logger
        )
    )
    app.addServices(managedChannels, parts.jobRunner, parts.batchPoller)
    if configuration.metricsPort == nil && !configuration.metricsOnMainPort {
        logger.warning(
            "/metrics is off: the gateway listens on a non-loopback address without NANOGATE_METRICS_TOKEN; set NANOGATE_METRICS_TOKEN or NANOGATE_METRICS_PORT to scrape it",
            metadata: ["host": "\(configuration.host)"]
        )
    }
    if let port = configuration.metricsPort {
        // Metrics on their own port (a scraper on an internal network, the API on a public one).
        let metricsRouter = Router()
        MetricsController<BasicRequestContext>(metrics: metrics, pool: pool, live: pipeline.live, token: configuration.metricsToken).addRoutes(to: metricsRouter)
        app.addServices(
            Application(
                router: metricsRouter, server: guardedHTTP1(configuration),
                configuration: .init(address: .hostname(configuration.host, port: port), serverName: "NanoGate-metrics"),
                onServerRunning: { await onListenerRunning(.metrics, $0) }, logger: logger
            )
        )
    }
    if let adminRouter = parts.adminRouter, let port = configuration.adminPort {
        // The admin API on its own address (an internal network, or loopback behind a tunnel).
        let host = configuration.adminHost ?? configuration.host
        app.addServices(
            Application(
                router: adminRouter, server: guardedHTTP1(configuration), configuration: .init(address: .hostname(host, port: port), serverName: "NanoGate-admin"),
                onServerRunning: { await onListenerRunning(.admin, $0) }, logger: logger
            )
        )
    }
    app.addServices(KeyEpochWatcher(keys: dependencies.database.keys))
    app.addServices(LeaseKeeper(ledger: dependencies.ledger, live: pipeline.live, lease: configuration.billing.lease, logger: logger))
    app.addServices(
        ImageSweeper(
            stores: [dependencies.imageStore] + (dependencies.objectStore.map { [$0] } ?? []), ttl: configuration.urlTTL, signatures: dependencies.store,
            logger: logger, onSweep: { metrics.swept($0) }
        ),
        // File contents outlive their rows by a day at most (every file expires after the same days).
        ImageSweeper(
            stores: [dependencies.fileStore] + (dependencies.fileObjects.map { [$0] } ?? []), ttl: .seconds((BatchesController.fileDays + 1) * 24 * 3600),
            interval: .seconds(3600), logger: logger
        ),
        CloseOnShutdown { try await httpClient.shutdown() },
        CloseOnShutdown { await pool.shutdown() },
        CloseOnShutdown { try await database.close() },
        CloseOnShutdown { try await threadPool.shutdownGracefully() },
        CloseOnShutdown { [conversions = dependencies.conversionThreadPool] in try await conversions.shutdownGracefully() }
    )
    // The caller's own (swift-otel's exporter): flushed after the listeners stopped.
    app.addServices(extra)
    return app
}
