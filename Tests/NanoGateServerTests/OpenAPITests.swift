import Foundation
import Hummingbird
import Logging
import NanoGateCore
import NIOHTTP1
import Testing
import Upstream
@testable import NanoGateServer

/// The OpenAPI document (`Sources/NanoGateServer/openapi.json`, served at `/openapi.json`) and
/// the router agree: every route served is documented, and every documented route is served.
@Suite(.timeLimit(.minutes(10))) struct OpenAPITests {
    static let methods: Set<String> = ["get", "post", "put", "patch", "delete", "head", "options"]

    @Test func everyRouteIsDocumentedAndEveryDocumentedRouteIsServed() async throws {
        try await withGateway(configure: { $0.adminToken = "admin-token-for-openapi-tests-0123456789" }) { gateway in
            var logger = Logger(label: "test")
            logger.logLevel = .critical
            let parts = makeGatewayParts(configuration: gateway.configuration, dependencies: gateway.dependencies, logger: logger)
            await parts.pool.shutdown()
            let served = Set(parts.router.routes.map { route -> String in
                let path = "\(route.path)"
                return "\(route.method.rawValue) " + (path.hasPrefix("/") ? path : "/" + path)
            })

            let document = try #require(try JSONSerialization.jsonObject(with: Data(OpenAPIDocument.bytes)) as? [String: Any])
            #expect((document["openapi"] as? String)?.hasPrefix("3.1") == true)
            let paths = try #require(document["paths"] as? [String: [String: Any]])
            var documented = Set<String>()
            for (path, item) in paths {
                for method in item.keys where Self.methods.contains(method) {
                    documented.insert("\(method.uppercased()) \(path)")
                }
            }
            // The browser console's pages are not API; its `console/api/…` routes are the
            // documented API again behind the console's session (the same handlers).
            let console = served.filter { $0.split(separator: " ")[1].hasPrefix("/console") }
            let mirrored = Set(console.compactMap { route -> String? in
                guard let range = route.range(of: " /console/api/") else { return nil }
                return route.replacingCharacters(in: range, with: " /")
            })
            #expect(!mirrored.isEmpty && mirrored.subtracting(documented).sorted() == [], "the console's API is the documented API")
            #expect(served.subtracting(console).subtracting(documented).sorted() == [], "served but not documented")
            #expect(documented.subtracting(served).sorted() == [], "documented but not served")

            let reply = try await gateway.get(gateway.baseURL + "/openapi.json")
            #expect(reply.status == 200)
            #expect(reply.headers.first(name: "content-type")?.hasPrefix("application/json") == true)
            #expect(Array(reply.body.readableBytesView) == OpenAPIDocument.bytes, "served as kept in the repository")
        }
    }
}
