public import AsyncHTTPClient
import Foundation
public import Hummingbird
public import Logging
public import NIOCore
public import NanoGateStorage
import NanoGateCore
import ServiceLifecycle
import Upstream

/// The long-lived resources the gateway runs on, created once and passed down.
public struct GatewayDependencies: Sendable {
    public var database: SQLiteDatabaseHandle
    public var httpClient: HTTPClient
    public var imageStore: ImageStore
    public var signer: URLSigner

    /// The store for keys and usage.
    public var store: SQLStore { database.store }

    /// Opens the embedded database and image directory under the data directory, and an HTTP client for Google.
    public static func live(configuration: GatewayConfiguration, logger: Logger) async throws -> GatewayDependencies {
        let directory = configuration.dataDirectory
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let database = try await SQLiteDatabaseHandle.open(path: directory.appendingPathComponent("nanogate.sqlite").path, logger: logger)
        var clientConfiguration = HTTPClient.Configuration()
        clientConfiguration.timeout = .init(connect: .seconds(10))
        // AsyncHTTPClient keeps 8 connections per host by default; image calls are long, so allow
        // as many as the gateway has requests in flight.
        clientConfiguration.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: 256)
        let httpClient = HTTPClient(eventLoopGroupProvider: .singleton, configuration: clientConfiguration)
        return GatewayDependencies(
            database: database,
            httpClient: httpClient,
            imageStore: try ImageStore(directory: directory.appendingPathComponent("images")),
            signer: URLSigner(secret: try URLSigner.loadOrCreateSecret(environmentValue: configuration.urlSecret, dataDirectory: directory))
        )
    }
}

/// Runs `close` when the service group shuts down, so resources close after the server stops.
struct CloseOnShutdown: Service {
    let close: @Sendable () async throws -> Void

    func run() async throws {
        try? await gracefulShutdown()
        try await close()
    }
}

/// Builds the gateway: routes, middleware, and the services that own its resources.
public func buildApplication(
    configuration: GatewayConfiguration,
    dependencies: GatewayDependencies,
    logger: Logger,
    onServerRunning: @escaping @Sendable (any Channel) async -> Void = { _ in }
) -> some ApplicationProtocol {
    let pool = UpstreamPool(httpClient: dependencies.httpClient, configuration: configuration.upstream)
    let urls = ImageURLService(store: dependencies.imageStore, signer: dependencies.signer, ttl: configuration.urlTTL)
    let pipeline = GenerationPipeline(upstream: pool, usage: dependencies.store, images: urls)
    let inputs = InputImageLoader(
        httpClient: dependencies.httpClient, imageStore: dependencies.imageStore, signer: dependencies.signer, limits: configuration.inputs
    )

    let router = Router(context: GatewayRequestContext.self)
    router.add(middleware: LogRequestsMiddleware(.info))
    router.add(middleware: OpenAIErrorMiddleware())
    router.get("health") { _, _ in "ok" }
    ImageFilesController(store: dependencies.imageStore, signer: dependencies.signer).addRoutes(to: router)

    let api = router.group("v1").add(middleware: APIKeyAuthenticator(keys: dependencies.store))
    ImagesController(
        catalog: configuration.catalog, pipeline: pipeline, publicURL: configuration.publicBaseURL,
        maxJSONBodyBytes: configuration.maxJSONBodyBytes, inputs: inputs
    ).addRoutes(to: api)
    ModelsController(catalog: configuration.catalog).addRoutes(to: api)
    ChatController(
        catalog: configuration.catalog, upstream: pool, usage: dependencies.store, signatures: dependencies.store, urls: urls,
        inputs: inputs, publicURL: configuration.publicBaseURL,
        keepAliveInterval: configuration.keepAliveInterval
    ).addRoutes(to: api)

    var app = Application(
        router: router,
        server: .http1(configuration: .init(additionalChannelHandlers: [ExpectContinueHandler()])),
        configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "NanoGate"),
        onServerRunning: onServerRunning,
        logger: logger
    )
    let database = dependencies.database
    let httpClient = dependencies.httpClient
    app.addServices(
        ImageSweeper(store: dependencies.imageStore, ttl: configuration.urlTTL, signatures: dependencies.store, logger: logger),
        CloseOnShutdown { try await httpClient.shutdown() },
        CloseOnShutdown { try await database.close() }
    )
    return app
}
