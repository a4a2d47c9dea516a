import ExtrasBase64
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NanoGateCore
import NanoGateStorage
import NIOCore
import NIOFoundationCompat

extension MCPController {
    /// One content block of a tool result: `text`, `image` (base64 and MIME type) or `resource_link`.
    struct Content: Encodable {
        var type: String
        var text: String?
        var data: Base64Text?
        var mimeType: String?
        var uri: String?
        var name: String?
        var description: String?

        static func text(_ text: String) -> Content { Content(type: "text", text: text) }
    }

    struct ToolResult: Encodable {
        var content: [Content]
        var structuredContent: JSONAny?
        var isError: Bool
        /// The 2026 envelope's marker of a finished call (older clients ignore it).
        var resultType = "complete"

        /// Inline images of an SSE answer above this many base64 bytes are left out: the official
        /// Python SDK refuses any event over 1 MiB (`max_sse_event_size`), and the result is one event.
        static let inlineLimitOnStreams = 900 * 1024

        /// The result as one SSE event can carry it: images too large to go inline are left to
        /// their `resource_link` (a plain JSON answer, without progress, carries them whatever their size).
        func fittingOneEvent() -> ToolResult {
            let inline = content.reduce(0) { $0 + ($1.data?.count ?? 0) }
            guard inline > Self.inlineLimitOnStreams else { return self }
            var fitted = self
            fitted.content = content.filter { $0.type != "image" }
            fitted.content.append(.text(
                "The image data (\(inline / 1024) KiB of base64) is too large for one progress-stream event; download it from the resource link, or call without a progress token to receive it inline."
            ))
            return fitted
        }

        /// A failed call: OpenAI's error object as the text, as the HTTP API would answer it.
        static func failure(_ error: GatewayError) -> ToolResult {
            let body = (try? JSONEncoder().encode(ErrorResponse(error))).map { String(decoding: $0, as: UTF8.self) } ?? error.message
            return ToolResult(content: [.text(body)], structuredContent: nil, isError: true)
        }
    }

    /// Any value `JSONSerialization` reads, encodable again.
    struct JSONAny: Encodable, @unchecked Sendable {
        let value: Any
        init(_ value: Any) { self.value = value }

        func encode(to encoder: any Encoder) throws {
            switch value {
            case let object as [String: Any]:
                var container = encoder.container(keyedBy: AnyCodingKey.self)
                for (name, item) in object.sorted(by: { $0.key < $1.key }) { try container.encode(JSONAny(item), forKey: AnyCodingKey(name)) }
            case let list as [Any]:
                var container = encoder.unkeyedContainer()
                for item in list { try container.encode(JSONAny(item)) }
            case let text as String:
                var container = encoder.singleValueContainer()
                try container.encode(text)
            case let number as NSNumber:
                var container = encoder.singleValueContainer()
                // JSONSerialization's booleans are NSNumbers of ObjC type `c` (`is Bool` holds for 0 and 1 too).
                if String(cString: number.objCType) == "c" {
                    try container.encode(number.boolValue)
                } else if let integer = Int(exactly: number.doubleValue) {
                    try container.encode(integer)
                } else {
                    try container.encode(number.doubleValue)
                }
            default:
                var container = encoder.singleValueContainer()
                try container.encodeNil()
            }
        }
    }

    /// `tools/call`: the tool run as a request of the caller's key. With a `progressToken`
    /// (and a client that takes SSE), progress notifications come while it runs.
    func call(_ params: [String: Any], id: Any, request: Request, context: GatewayRequestContext) async throws -> Response {
        let key = try context.requireKey()
        guard let name = params["name"] as? String else { throw RPCError(code: .invalidParams, message: "tools/call needs the tool's 'name'.") }
        guard Self.toolNames.contains(name) else {
            throw RPCError(code: .invalidParams, message: "Unknown tool '\(name)'. Call tools/list for the tools.")
        }
        guard let arguments = try? JSONSerialization.data(withJSONObject: params["arguments"] as? [String: Any] ?? [:]) else {
            throw RPCError(code: .invalidParams, message: "The tool's 'arguments' must be an object.")
        }
        let token = (params["_meta"] as? [String: Any])?["progressToken"]
        let wantsEvents = request.headers[values: .accept].contains { $0.lowercased().contains("text/event-stream") }
        guard let token, token is String || token is NSNumber, wantsEvents else {
            return try Self.rpc(id: id, result: await run(name, arguments: arguments, request: request, context: context))
        }

        // Progress while Google works: one notification at once, one per keep-alive interval.
        let rpcID = RPCID(id)
        let progressToken = RPCID(token)
        let model = (try? JSONSerialization.jsonObject(with: arguments) as? [String: Any])?["model"] as? String ?? defaultModel(for: key) ?? ""
        let interval = keepAliveInterval
        let controller = self
        return Response(
            status: .ok,
            headers: [.contentType: "text/event-stream", .cacheControl: "no-cache", .init("X-Accel-Buffering")!: "no"],
            body: .init { writer in
                let work = Task { await controller.run(name, arguments: arguments, request: request, context: context) }
                func event(_ value: some Encodable) throws -> ByteBuffer {
                    var buffer = ByteBuffer(string: "event: message\ndata: ")
                    var body = try SplicedJSON.encodeJoined(value)
                    buffer.writeBuffer(&body)
                    buffer.writeString("\n\n")
                    return buffer
                }
                var step = 0
                let started = ContinuousClock.now
                func progress(_ message: String) async throws {
                    let notification = ProgressNotification(params: .init(progressToken: progressToken, progress: step, message: message))
                    step += 1
                    try await writer.write(try event(notification))
                }
                let result: ToolResult
                do {
                    try await progress(name.hasPrefix("get_") || name == "list_models" ? "Reading." : "Sent to Google (\(model)).")
                    result = try await Heartbeat.wait(for: work, every: interval) {
                        let seconds = (ContinuousClock.now - started).components.seconds
                        try await progress("Google is still working (\(seconds) s).")
                    }
                } catch {
                    // The client left: the request stops (and settles for what was delivered: nothing).
                    work.cancel()
                    throw error
                }
                try await writer.write(try event(RPCEnvelope(id: rpcID, result: result.fittingOneEvent())))
                try await writer.finish(nil)
            }
        )
    }

    struct ProgressNotification: Encodable {
        struct Params: Encodable {
            var progressToken: RPCID
            var progress: Int
            var message: String
        }
        var jsonrpc = "2.0"
        var method = "notifications/progress"
        var params: Params
    }

    /// Runs one tool; every failure is a tool error carrying OpenAI's error object.
    func run(_ name: String, arguments: Data, request: Request, context: GatewayRequestContext) async -> ToolResult {
        do {
            let key = try context.requireKey()
            let arguments = (try? JSONSerialization.jsonObject(with: arguments)) as? [String: Any] ?? [:]
            switch name {
            case "generate_image":
                let body = try imageFields(arguments, key: key)
                return try await images(from: images.generations(synthesized(request, path: "/v1/images/generations", json: body), context: context), request: request)
            case "edit_image":
                var body = try imageFields(arguments, key: key)
                body["images"] = try references(arguments, request: request, required: true).map { ["image_url": $0] }
                return try await images(from: images.edits(synthesized(request, path: "/v1/images/edits", json: body), context: context), request: request)
            case "start_image_job":
                var body = try imageFields(arguments, key: key)
                body["async"] = true
                let references = try references(arguments, request: request, required: false)
                let response: Response
                if references.isEmpty {
                    response = try await images.generations(synthesized(request, path: "/v1/images/generations", json: body), context: context)
                } else {
                    body["images"] = references.map { ["image_url": $0] }
                    response = try await images.edits(synthesized(request, path: "/v1/images/edits", json: body), context: context)
                }
                let job = try await Self.object(of: response)
                let id = job["id"] as? String ?? ""
                return ToolResult(
                    content: [.text("Started image job \(id) (\(job["status"] as? String ?? "queued")). Call get_image_job with job_id \"\(id)\" until it succeeded.")],
                    structuredContent: JSONAny(["job_id": id, "status": job["status"] ?? "queued", "model": job["model"] ?? ""]), isError: false
                )
            case "get_image_job":
                guard let id = arguments["job_id"] as? String, !id.isEmpty else {
                    throw GatewayError.invalidParameter("job_id", "Missing required argument: 'job_id'.", code: "missing_required_parameter")
                }
                guard let record = try await store.job(id: id, keyID: key.id) else { throw ImageJobsController.notFound(id) }
                let view = try await Self.object(ImageJobs.JobView(ImageJobs.withAnswer(record, images: repository)).encoded())
                let status = view["status"] as? String ?? ""
                guard status == "succeeded", let answer = view["result"] as? [String: Any] else {
                    var summary = "Image job \(id): \(status)."
                    if let error = view["error"] as? [String: Any], let message = error["message"] as? String { summary += " \(message)" }
                    return ToolResult(content: [.text(summary)], structuredContent: JSONAny(["job_id": id, "status": status, "error": view["error"] ?? NSNull()]), isError: status == "failed")
                }
                var result = try await images(answer: answer, request: request)
                result.content.insert(.text("Image job \(id) succeeded."), at: 0)
                return result
            case "list_models":
                let objects = models.models(for: key).map { models.object($0, key: key) }
                let data = try JSONEncoder().encode(objects)
                let list = try JSONSerialization.jsonObject(with: data)
                return ToolResult(content: [.text(String(decoding: data, as: UTF8.self))], structuredContent: JSONAny(["models": list]), isError: false)
            case "get_balance":
                let current = try await store.key(id: key.id) ?? key
                let data = try JSONEncoder().encode(OperatorService.KeyView(current))
                let view = try JSONSerialization.jsonObject(with: data) as? [String: Any] ?? [:]
                let balance = (view["balance_usd"] as? Double).map { String(format: "$%.4f", $0) } ?? "unlimited"
                return ToolResult(
                    content: [.text("Balance \(balance) (credit, spent and reserved in USD): \(String(decoding: data, as: UTF8.self))")],
                    structuredContent: JSONAny(view), isError: false
                )
            default:
                throw GatewayError.invalidParameter("name", "Unknown tool '\(name)'.")
            }
        } catch let error as GatewayError {
            return .failure(error)
        } catch is CancellationError {
            return .failure(.clientDisconnected)
        } catch {
            return .failure(.internal("The tool failed."))
        }
    }

    /// The images API's fields from a tool's arguments: base64 answers (the tool returns the
    /// image itself), the key's default model when none is named.
    func imageFields(_ arguments: [String: Any], key: APIKey) throws -> [String: Any] {
        guard let prompt = arguments["prompt"] as? String else {
            throw GatewayError.invalidParameter("prompt", "Missing required argument: 'prompt'.", code: "missing_required_parameter")
        }
        // `url`: the image is stored once, by the images API, and read back for the inline copy
        // (models that answer base64 only do so anyway).
        var body: [String: Any] = ["prompt": prompt, "response_format": "url", "model": arguments["model"] as? String ?? defaultModel(for: key) ?? ""]
        for field in ["aspect_ratio", "size", "output_format"] {
            if let value = arguments[field] as? String { body[field] = value }
        }
        if let count = arguments["n"] as? NSNumber { body["n"] = count.intValue }
        return body
    }

    /// Reference images: URLs as given, and ids of earlier results as this gateway's signed URLs
    /// (read from the image store, never fetched).
    func references(_ arguments: [String: Any], request: Request, required: Bool) throws -> [String] {
        var urls = (arguments["images"] as? [Any] ?? []).compactMap { $0 as? String }
        let baseURL = images.publicURL.base(of: request)
        for id in (arguments["image_ids"] as? [Any] ?? []).compactMap({ $0 as? String }) {
            guard !id.isEmpty, id.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "." || $0 == "-" || $0 == "_" }) else {
                throw GatewayError.invalidParameter("image_ids", "'\(id)' is not an image id of this gateway.")
            }
            urls.append(repository.url(name: id, baseURL: baseURL, ttl: ttl, now: Date()))
        }
        if required, urls.isEmpty {
            throw GatewayError.invalidParameter("images", "Send at least one reference image in 'images' (URLs) or 'image_ids'.", code: "missing_required_parameter")
        }
        return urls
    }

    /// The images API's request for the tool: the caller's request head (its key, host and
    /// forwarding headers), this path and JSON body.
    func synthesized(_ original: Request, path: String, json body: [String: Any]) throws -> Request {
        let data = try JSONSerialization.data(withJSONObject: body)
        var head = original.head
        head.method = .post
        head.path = path
        head.headerFields[.contentType] = "application/json"
        head.headerFields[.contentLength] = "\(data.count)"
        head.headerFields[.accept] = "application/json"
        head.headerFields[.init("Prefer")!] = nil
        head.headerFields[IdempotencyMiddleware.header] = nil
        return Request(head: head, body: RequestBody(buffer: ByteBuffer(data: data)))
    }

    /// A JSON answer's object; an error body (a keep-alive answer's failure arrives as a 200) becomes its error.
    static func object(of response: Response) async throws -> [String: Any] {
        let collector = CollectingWriter()
        try await response.body.write(collector.writer)
        return try object(ByteBuffer(bytes: collector.bytes))
    }

    static func object(_ body: ByteBuffer) throws -> [String: Any] {
        guard let object = try? JSONSerialization.jsonObject(with: Data(buffer: body)) as? [String: Any] else {
            throw GatewayError.internal("The images API's answer could not be read.")
        }
        if let error = object["error"] as? [String: Any] {
            throw GatewayError(
                status: 400, type: error["type"] as? String ?? "invalid_request_error", code: error["code"] as? String, param: error["param"] as? String,
                message: error["message"] as? String ?? "The request failed."
            )
        }
        return object
    }

    func images(from response: Response, request: Request) async throws -> ToolResult {
        try await images(answer: Self.object(of: response), request: request)
    }

    /// An images answer as MCP content: each image inline (base64, MIME type) and as a link to
    /// its signed URL; its id, size, the usage and the charge as structured content.
    func images(answer: [String: Any], request: Request) async throws -> ToolResult {
        let baseURL = images.publicURL.base(of: request)
        var content: [Content] = []
        var described: [[String: Any]] = []
        for item in answer["data"] as? [[String: Any]] ?? [] {
            let name: String
            let base64: Base64Text
            let mime: String
            if let url = item["url"] as? String, case .valid(let stored) = repository.ownImage(url: url, baseURLs: [baseURL], now: Date()),
                let bytes = try await repository.load(name: stored), let type = ImageSniffer.mimeType(of: bytes.prefix(16))
            {
                (name, mime) = (stored, type)
                base64 = Base64Text(bytes: ByteBuffer(bytes: Base64.encodeToBytes(bytes: bytes)))
            } else if let text = item["b64_json"] as? String, let bytes = SafeBase64.decode(text.utf8), let type = ImageSniffer.mimeType(of: bytes.prefix(16)) {
                (base64, mime) = (Base64Text(text), type)
                name = try await repository.save(bytes, fileExtension: ImageSniffer.fileExtension(for: type))
            } else {
                continue
            }
            let url = repository.url(name: name, baseURL: baseURL, ttl: ttl, now: Date())
            content.append(Content(type: "image", data: base64, mimeType: mime))
            content.append(Content(type: "resource_link", mimeType: mime, uri: url, name: name, description: "The image (id \(name)); the link expires with the gateway's image URLs."))
            var entry: [String: Any] = ["id": name, "url": url, "mime_type": mime]
            if let revised = item["revised_prompt"] as? String { entry["revised_prompt"] = revised }
            described.append(entry)
        }
        guard !described.isEmpty else { throw GatewayError.internal("The answer held no image.") }
        var summary: [String: Any] = ["images": described]
        for field in ["size", "output_format", "quality", "usage", "service_tier"] { if let value = answer[field] { summary[field] = value } }
        let cost = (answer["usage"] as? [String: Any])?["cost"] as? Double
        let size = answer["size"] as? String ?? ""
        let text = "\(described.count == 1 ? "One image" : "\(described.count) images") \(size)"
            + (cost.map { String(format: ", charged $%.6f", $0) } ?? "") + ". Image id" + (described.count == 1 ? " " : "s ")
            + described.compactMap { $0["id"] as? String }.joined(separator: ", ") + " (usable in edit_image's image_ids)."
        return ToolResult(content: [.text(text)] + content, structuredContent: JSONAny(summary), isError: false)
    }
}
