import ExtrasBase64
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NanoGateCore
import NanoGateStorage
import NIOCore
import NIOFoundationCompat

/// An MCP server at `/mcp` (Model Context Protocol, Streamable HTTP transport, stateless): image
/// tools for agents (Claude, Cursor, IDEs) on the caller's own NanoGate key and credit.
///
/// JSON-RPC 2.0 over `POST /mcp`, one message per request, in both eras of the protocol: the
/// stateless per-request envelope of 2026-07-28 (`server/discover`, then requests stamped with
/// `_meta` `io.modelcontextprotocol/protocolVersion`; results carry `resultType`, and lists
/// `ttlMs` and `cacheScope`), and the initialize handshake of 2024-11-05 to 2025-11-25. No
/// session is kept: every request carries the key (`Authorization: Bearer sk-ng-…`), so every
/// tool call is a normal request of that key, and tool lists are `private` to it. The image tools run the very handlers of
/// `/v1/images/generations`, `/v1/images/edits` and `/v1/images/jobs` (validation, the key's
/// models, limits, credit reserved before any fetch, usage rows), on a request built from the
/// tool's arguments.
///
/// The official SDKs are not used here: the Swift SDK (modelcontextprotocol/swift-sdk 0.12)
/// depends on a branch of swift-docc-plugin, which a package that pins versions cannot
/// resolve, and its transports bring their own session model; the protocol's tool subset is a
/// few JSON-RPC methods.
///
/// A `tools/call` whose `_meta` carries a `progressToken` is answered as an SSE stream: a
/// `notifications/progress` at once and then every keep-alive interval while Google works,
/// then the result. Images come back as MCP image content (base64 and MIME type) plus a
/// `resource_link` to the image's signed URL; the image's id (its name in the image store, as
/// good as its URL) names it in a later `edit_image`.
struct MCPController {
    let images: ImagesController
    let models: ModelsController
    let store: SQLStore
    let keepAliveInterval: Duration
    let maxRequestBytes: Int

    var repository: any ImageRepository { images.pipeline.images.images }
    var ttl: Duration { images.pipeline.images.ttl }

    /// Versions of the initialize handshake, newest first.
    static let protocolVersions = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"]
    /// Versions of the per-request envelope (`server/discover`).
    static let modernVersions = ["2026-07-28"]
    static let serverName = "NanoGate"
    static let toolNames: Set = ["generate_image", "edit_image", "list_models", "get_balance", "start_image_job", "get_image_job"]

    func addRoutes(to group: RouterGroup<GatewayRequestContext>) {
        group.post(use: handle)
        // No server-initiated stream and no session to end: the SDKs accept a 405 for both.
        group.get { _, _ in Self.methodNotAllowed() }
        group.delete { _, _ in Self.methodNotAllowed() }
    }

    static func methodNotAllowed() -> Response {
        Response(status: .methodNotAllowed, headers: [.allow: "POST"])
    }

    // MARK: JSON-RPC

    /// JSON-RPC's error codes.
    enum RPCCode: Int {
        case parseError = -32700
        case invalidRequest = -32600
        case methodNotFound = -32601
        case invalidParams = -32602
        /// A protocol version the server does not speak (2026-07-28); `data` names the supported ones.
        case unsupportedProtocolVersion = -32022
    }

    struct RPCError: Error {
        var code: RPCCode
        var message: String
        var data: JSONAny?
    }

    @Sendable func handle(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        let key = try context.requireKey()
        var request = request
        let body = try await request.collectBody(limit: maxRequestBytes)
        guard let message = try? JSONSerialization.jsonObject(with: Data(buffer: body)) else {
            return try Self.rpc(id: NSNull(), error: RPCError(code: .parseError, message: "The body is not JSON."), status: .badRequest)
        }
        guard let object = message as? [String: Any] else {
            return try Self.rpc(id: NSNull(), error: RPCError(code: .invalidRequest, message: "Send one JSON-RPC message per request (batches are not part of MCP since 2025-06-18)."), status: .badRequest)
        }
        let id = object["id"]
        guard let method = object["method"] as? String else {
            // A response or an error the client sends back: nothing was asked of it.
            if id != nil, object["result"] != nil || object["error"] != nil { return Response(status: .accepted) }
            return try Self.rpc(id: id ?? NSNull(), error: RPCError(code: .invalidRequest, message: "A JSON-RPC request needs a 'method'."), status: .badRequest)
        }
        // Notifications (`notifications/initialized`, cancellations) need no answer.
        guard let id, id is String || id is NSNumber else { return Response(status: .accepted) }
        let params = object["params"] as? [String: Any] ?? [:]
        do {
            switch method {
            case "server/discover":
                return try Self.rpc(id: id, result: try discoverResult(params))
            case "initialize":
                return try Self.rpc(id: id, result: initializeResult(params))
            case "ping":
                return try Self.rpc(id: id, result: [String: String]())
            case "tools/list":
                return try Self.rpc(id: id, result: ToolList(tools: tools(for: key)))
            case "tools/call":
                return try await call(params, id: id, request: request, context: context)
            default:
                throw RPCError(code: .methodNotFound, message: "Method '\(method)' is not served here; NanoGate's MCP server has tools only.")
            }
        } catch let error as RPCError {
            return try Self.rpc(id: id, error: error)
        }
    }

    struct InitializeResult: Encodable {
        struct Capabilities: Encodable {
            struct Tools: Encodable { var listChanged = false }
            var tools = Tools()
        }
        struct Info: Encodable {
            var name: String
            var title: String
            var version: String
        }
        var protocolVersion: String
        var capabilities = Capabilities()
        var serverInfo: Info
        var instructions: String
    }

    /// `server/discover` (2026-07-28): the versions, capabilities and instructions, with the
    /// cache fields the envelope requires (nothing cached across keys: `private`, `ttlMs` 0).
    struct DiscoverResult: Encodable {
        struct Meta: Encodable {
            var serverInfo: InitializeResult.Info
            enum CodingKeys: String, CodingKey { case serverInfo = "io.modelcontextprotocol/serverInfo" }
        }
        var supportedVersions: [String]
        var capabilities = InitializeResult.Capabilities()
        var instructions: String
        var resultType = "complete"
        var ttlMs = 0
        var cacheScope = "private"
        var meta: Meta

        enum CodingKeys: String, CodingKey {
            case supportedVersions, capabilities, instructions, resultType, ttlMs, cacheScope
            case meta = "_meta"
        }
    }

    func discoverResult(_ params: [String: Any]) throws -> DiscoverResult {
        let requested = (params["_meta"] as? [String: Any])?["io.modelcontextprotocol/protocolVersion"] as? String
        let supported = Self.modernVersions + Self.protocolVersions
        if let requested, !Self.modernVersions.contains(requested) {
            throw RPCError(
                code: .unsupportedProtocolVersion, message: "Protocol version '\(requested)' is not supported.",
                data: JSONAny(["supported": supported, "requested": requested])
            )
        }
        let initialize = initializeResult([:])
        return DiscoverResult(supportedVersions: supported, instructions: initialize.instructions, meta: .init(serverInfo: initialize.serverInfo))
    }

    func initializeResult(_ params: [String: Any]) -> InitializeResult {
        let asked = params["protocolVersion"] as? String ?? ""
        return InitializeResult(
            protocolVersion: Self.protocolVersions.contains(asked) ? asked : Self.protocolVersions[0],
            serverInfo: .init(name: Self.serverName, title: "NanoGate image tools", version: "1.0.0"),
            instructions: "Image generation and editing with Google's nano-banana models, paid from this NanoGate key's credit. "
                + "Call list_models for the models, their aspect ratios, sizes and prices; get_balance for the credit left. "
                + "generate_image and edit_image answer with the image; start_image_job and get_image_job run long work (4K) in the background."
        )
    }

    /// A JSON-RPC answer as `application/json`.
    static func rpc(id: Any, result: some Encodable) throws -> Response {
        try json(RPCEnvelope(id: RPCID(id), result: result), sortedKeys: false)
    }

    static func rpc(id: Any, error: RPCError, status: HTTPResponse.Status = .ok) throws -> Response {
        var response = try json(RPCEnvelope<String>(id: RPCID(id), error: .init(code: error.code.rawValue, message: error.message, data: error.data)), sortedKeys: false)
        response.status = status
        return response
    }

    /// A request's id as sent: a string, a number, or null for a message that could not be read.
    struct RPCID: Encodable, @unchecked Sendable {
        let value: Any
        init(_ value: Any) { self.value = value }

        func encode(to encoder: any Encoder) throws {
            var container = encoder.singleValueContainer()
            if let text = value as? String {
                try container.encode(text)
            } else if let number = value as? NSNumber {
                if let integer = Int(exactly: number.doubleValue) { try container.encode(integer) } else { try container.encode(number.doubleValue) }
            } else {
                try container.encodeNil()
            }
        }
    }

    struct RPCEnvelope<Result: Encodable>: Encodable {
        struct ErrorBody: Encodable {
            var code: Int
            var message: String
            var data: JSONAny?
        }
        var jsonrpc = "2.0"
        var id: RPCID
        var result: Result?
        var error: ErrorBody?
    }

    // MARK: Tools

    /// `tools/list`'s result; the cache fields are the 2026 envelope's (older clients ignore them).
    struct ToolList: Encodable {
        var tools: [Tool]
        var resultType = "complete"
        var ttlMs = 0
        var cacheScope = "private"
    }

    struct Tool: Encodable {
        var name: String
        var title: String
        var description: String
        var inputSchema: Schema
        var annotations: Annotations

        struct Annotations: Encodable {
            var readOnlyHint: Bool
            var openWorldHint: Bool
        }
    }

    /// The JSON Schema of a tool's arguments (the subset the tools use).
    struct Schema: Encodable {
        var type = "object"
        var properties: [String: Property]
        var required: [String]
        var additionalProperties = false
    }

    final class Property: Encodable, Sendable {
        let type: String
        let description: String
        let enumeration: [String]?
        let items: Property?
        let minimum: Int?
        let maximum: Int?
        let maxItems: Int?

        init(_ type: String, _ description: String, enumeration: [String]? = nil, items: Property? = nil, minimum: Int? = nil, maximum: Int? = nil, maxItems: Int? = nil) {
            (self.type, self.description, self.enumeration, self.items) = (type, description, enumeration, items)
            (self.minimum, self.maximum, self.maxItems) = (minimum, maximum, maxItems)
        }

        enum CodingKeys: String, CodingKey {
            case type, description, items, minimum, maximum, maxItems
            case enumeration = "enum"
        }
    }

    /// The tools for this key, their enums from the catalog (the models the key may use, their
    /// ratios, sizes and most reference images).
    func tools(for key: APIKey) -> [Tool] {
        let models = self.models.models(for: key)
        let names = models.map(\.name)
        var ratios: [String] = []
        var sizes: [String] = []
        for model in models {
            for ratio in model.aspectRatios.map(\.rawValue) where !ratios.contains(ratio) { ratios.append(ratio) }
            // The spec's spelling (`1k`, `2k`, `4k`); the images API takes either case.
            for size in model.sizes.map({ $0.rawValue.lowercased() }) where !sizes.contains(size) { sizes.append(size) }
        }
        let perModel = models.map { model in
            "\(model.name): ratios \(model.aspectRatios.map(\.rawValue).joined(separator: ", "))"
                + (model.sizes.isEmpty ? "" : "; sizes \(model.sizes.map { $0.rawValue.lowercased() }.joined(separator: ", "))")
                + "; up to \(model.maxInputImages) reference images"
        }.joined(separator: ". ")
        let maxReferences = models.map(\.maxInputImages).max() ?? 0
        let defaultModel = defaultModel(for: key) ?? ""
        let image: [String: Property] = [
            "prompt": Property("string", "What to draw (or, for an edit, what to change)."),
            "model": Property("string", "The model (default \(defaultModel)). \(perModel).", enumeration: names),
            "aspect_ratio": Property("string", "The picture's aspect ratio; each model takes the ratios listed under 'model'.", enumeration: ratios),
            "size": Property("string", "The resolution tier, for models that have tiers (see 'model').", enumeration: sizes.isEmpty ? nil : sizes),
            "n": Property("integer", "How many images (1 to 4).", minimum: 1, maximum: 4),
            "output_format": Property("string", "The image format.", enumeration: ImageConverter.webpAvailable ? ["png", "jpeg", "webp"] : ["png", "jpeg"]),
        ]
        var edit = image
        edit["images"] = Property(
            "array", "Reference images: https:// URLs, data: URLs, or this gateway's image URLs.", items: Property("string", "An image URL."), maxItems: maxReferences
        )
        edit["image_ids"] = Property("array", "Reference images by the ids of earlier results of these tools.", items: Property("string", "An image id."), maxItems: maxReferences)
        return [
            Tool(
                name: "generate_image", title: "Generate an image",
                description: "Generates images from a prompt with Google's nano-banana models, paid from this key's credit. Returns the images and a link to each.",
                inputSchema: Schema(properties: image, required: ["prompt"]), annotations: .init(readOnlyHint: false, openWorldHint: true)
            ),
            Tool(
                name: "edit_image", title: "Edit images",
                description: "Edits or combines reference images (by URL or by the ids of earlier results) as the prompt says. Returns the images and a link to each.",
                inputSchema: Schema(properties: edit, required: ["prompt"]), annotations: .init(readOnlyHint: false, openWorldHint: true)
            ),
            Tool(
                name: "list_models", title: "List models",
                description: "The models this key may use, with their aspect ratios, sizes, pixel sizes, most reference images and price per image.",
                inputSchema: Schema(properties: [:], required: []), annotations: .init(readOnlyHint: true, openWorldHint: false)
            ),
            Tool(
                name: "get_balance", title: "Get the balance",
                description: "This key's credit, what it spent, what is reserved for requests under way, and the balance left (USD).",
                inputSchema: Schema(properties: [:], required: []), annotations: .init(readOnlyHint: true, openWorldHint: false)
            ),
            Tool(
                name: "start_image_job", title: "Start an image job",
                description: "Starts a generation (or, with reference images, an edit) in the background, for long work such as 4K. Returns the job id at once; poll get_image_job.",
                // The edit's fields: with reference images the job is an edit.
                inputSchema: Schema(properties: edit, required: ["prompt"]), annotations: .init(readOnlyHint: false, openWorldHint: true)
            ),
            Tool(
                name: "get_image_job", title: "Get an image job",
                description: "The state of a background image job of this key; once it succeeded, its images.",
                inputSchema: Schema(properties: ["job_id": Property("string", "The id start_image_job returned.")], required: ["job_id"]),
                annotations: .init(readOnlyHint: true, openWorldHint: false)
            ),
        ]
    }

    func defaultModel(for key: APIKey) -> String? {
        let allowed = models.models(for: key)
        return allowed.contains { $0.name == "nano-banana" } ? "nano-banana" : allowed.first?.name
    }
}
