import Hummingbird
import NIOCore

/// NanoGate's own OpenAPI 3.1 document, `Sources/NanoGateServer/openapi.json`, compiled into the
/// binary (SwiftPM's `embedInCode`), served at `GET /openapi.json`. `OpenAPITests` checks that
/// it lists exactly the router's routes; CI validates it and fuzzes the gateway with it.
enum OpenAPIDocument {
    static var bytes: [UInt8] { PackageResources.openapi_json }

    static func addRoutes<Context: RequestContext>(to router: Router<Context>) {
        router.get("openapi.json") { _, _ in
            Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
        }
    }
}
