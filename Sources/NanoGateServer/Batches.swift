import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NanoGateCore
import NanoGateStorage
import NIOCore
import NIOFoundationCompat
import ServiceLifecycle
import Upstream

/// Half-price batches: OpenAI's Files and Batch APIs, run as Google batches
/// (`models/{m}:batchGenerateContent`). Google bills batch work at half its price, and so does
/// the gateway: every line is priced at half the catalog's price, times the group's multiplier.
///
/// - `POST /v1/files` (`purpose=batch`, a JSONL file; one line per request:
///   `{"custom_id": …, "method": "POST", "url": "/v1/images/generations", "body": {…}}`),
///   `GET /v1/files/{id}`, `GET /v1/files/{id}/content`.
/// - `POST /v1/batches` (`input_file_id`, `endpoint`, `completion_window: "24h"`): every line is
///   validated as if sent alone, the worst case of all is reserved, and the batch goes to Google.
/// - `GET /v1/batches/{id}`: OpenAI's batch object; once `completed`, `output_file_id` holds one
///   line per request (`{"id","custom_id","response":{"status_code","request_id","body"},"error"}`).
enum BatchPricing {
    /// Batch work costs this share of the standard price (Google's Batch API: 50%).
    static let sharePPM = 500_000

    static func batchPrices(_ prices: TokenPrices) -> TokenPrices {
        func half(_ value: Int) -> Int { Int((Int64(value) * Int64(sharePPM) + 500_000) / 1_000_000) }
        return TokenPrices(inputText: half(prices.inputText), inputImage: half(prices.inputImage), outputText: half(prices.outputText), outputImage: half(prices.outputImage))
    }
}

/// One line of a batch input file, read and validated.
struct BatchLine: Sendable {
    var customID: String
    var job: ImageJob
}

struct BatchesController {
    let store: SQLStore
    let images: ImagesController
    let pipeline: RequestPipeline
    let maxFileBytes: Int
    let owner: String
    static let endpoints = ["/v1/images/generations", "/v1/images/edits"]
    static let maxLines = 1000

    func addRoutes(to group: RouterGroup<GatewayRequestContext>) {
        group.post("files", use: upload)
        group.get("files/{id}", use: fileObject)
        group.get("files/{id}/content", use: fileContent)
        group.post("batches", use: create)
        group.get("batches", use: list)
        group.get("batches/{id}", use: show)
        group.post("batches/{id}/cancel", use: cancel)
    }

    // MARK: Files

    struct FileObject: Encodable {
        var id: String
        var object = "file"
        var bytes: Int
        var created_at: Int
        var expires_at: Int?
        var filename: String
        var purpose: String
        var status = "processed"

        init(_ file: StoredFile) {
            id = file.id
            bytes = file.content.count
            created_at = Int(file.createdAt.timeIntervalSince1970)
            expires_at = file.expiresAt.map { Int($0.timeIntervalSince1970) }
            filename = file.filename
            purpose = file.purpose
        }
    }

    static func json(_ value: some Encodable, status: HTTPResponse.Status = .ok) throws -> Response {
        Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(data: try JSONEncoder().encode(value))))
    }

    @Sendable func upload(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        guard let key = context.apiKey else { throw GatewayError.unauthorized("Missing API key.") }
        let contentType = request.headers[.contentType] ?? ""
        guard contentType.lowercased().hasPrefix("multipart/form-data"), let boundary = ImagesController.boundary(of: contentType) else {
            throw GatewayError.invalidBody("Upload a file as multipart/form-data with 'file' and 'purpose'.")
        }
        var limits = images.inputs.limits
        limits.maxImageBytes = maxFileBytes
        let form = try await MultipartForm.read(request.body, boundary: boundary, limits: limits)
        let purpose = form.parts.last { $0.name == "purpose" && $0.filename == nil }.map { String(buffer: $0.body) } ?? ""
        guard purpose == "batch" else {
            throw GatewayError.invalidParameter("purpose", "Only purpose 'batch' is accepted (the input of /v1/batches).", code: "unsupported_value")
        }
        guard let file = form.parts.last(where: { $0.name == "file" }) else {
            throw GatewayError.invalidParameter("file", "Missing required parameter: 'file'.", code: "missing_required_parameter")
        }
        let stored = StoredFile(
            id: "file-" + randomHex(bytes: 12), keyID: key.id, purpose: purpose, filename: file.filename ?? "batch.jsonl",
            content: Array(file.body.readableBytesView), expiresAt: Date().addingTimeInterval(30 * 24 * 3600)
        )
        try await store.storeFile(stored)
        return try Self.json(FileObject(stored))
    }

    private func ownFile(_ id: String, key: APIKey) async throws -> StoredFile {
        guard let file = try await store.file(id: id, keyID: key.id) else {
            throw GatewayError(status: 404, type: "invalid_request_error", code: "file_not_found", param: "id", message: "No file '\(id)' for this key.")
        }
        return file
    }

    @Sendable func fileObject(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        guard let key = context.apiKey else { throw GatewayError.unauthorized("Missing API key.") }
        return try Self.json(FileObject(try await ownFile(context.parameters.get("id") ?? "", key: key)))
    }

    @Sendable func fileContent(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        guard let key = context.apiKey else { throw GatewayError.unauthorized("Missing API key.") }
        let file = try await ownFile(context.parameters.get("id") ?? "", key: key)
        return Response(status: .ok, headers: [.contentType: "application/jsonl"], body: .init(byteBuffer: ByteBuffer(bytes: file.content)))
    }

    // MARK: Batches

    struct CreateBody: Decodable {
        var input_file_id: String?
        var endpoint: String?
        var completion_window: String?
        var metadata: [String: String]?
    }

    /// Every line of the file, validated for `key` as if each were sent alone.
    func lines(of file: StoredFile, endpoint: String, key: APIKey, baseURL: String) async throws(GatewayError) -> [BatchLine] {
        struct RawLine: Decodable {
            var custom_id: String?
            var method: String?
            var url: String?
        }
        var result: [BatchLine] = []
        var seen = Set<String>()
        let texts = String(decoding: file.content, as: UTF8.self).split(whereSeparator: \.isNewline).filter { !$0.trimmingCharacters(in: .whitespaces).isEmpty }
        guard !texts.isEmpty else { throw .invalidParameter("input_file_id", "The input file has no requests.") }
        guard texts.count <= Self.maxLines else { throw .invalidParameter("input_file_id", "A batch takes at most \(Self.maxLines) requests; the file has \(texts.count).") }
        for (index, text) in texts.enumerated() {
            func refuse(_ message: String) -> GatewayError { .invalidParameter("input_file_id", "Line \(index + 1) of the input file: \(message)") }
            let data = Data(text.utf8)
            guard let raw = try? JSONDecoder().decode(RawLine.self, from: data),
                let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any], let body = object["body"] as? [String: Any],
                let bodyData = try? JSONSerialization.data(withJSONObject: body)
            else { throw refuse("not a JSON object with custom_id, method, url and body.") }
            guard let customID = raw.custom_id, !customID.isEmpty, customID.count <= 512 else { throw refuse("custom_id is required.") }
            guard seen.insert(customID).inserted else { throw refuse("custom_id '\(customID)' is used twice.") }
            guard (raw.method ?? "POST").uppercased() == "POST", raw.url == endpoint else { throw refuse("method must be POST and url \(endpoint), the batch's endpoint.") }
            let head = HTTPRequest(method: .post, scheme: "http", authority: "nanogate-batch", path: endpoint, headerFields: [.contentType: "application/json"])
            let request = Request(head: head, body: RequestBody(buffer: ByteBuffer(data: bodyData)))
            let job: ImageJob
            do {
                job = endpoint == "/v1/images/edits"
                    ? try await images.editJob(request, key: key, baseURL: baseURL)
                    : try await images.generationJob(request, key: key, baseURL: baseURL)
            } catch let error as GatewayError {
                throw refuse(error.message)
            } catch {
                throw refuse("it could not be read.")
            }
            guard !job.options.stream else { throw refuse("a batch line cannot stream.") }
            if let first = result.first, first.job.model.name != job.model.name {
                throw refuse("every line of a batch must use one model (line 1 uses '\(first.job.model.name)', this one '\(job.model.name)').")
            }
            result.append(BatchLine(customID: customID, job: job))
        }
        return result
    }

    @Sendable func create(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        guard let key = context.apiKey else { throw GatewayError.unauthorized("Missing API key.") }
        let body = try await request.decodeJSON(CreateBody.self, limit: 64 * 1024)
        guard let fileID = body.input_file_id, !fileID.isEmpty else {
            throw GatewayError.invalidParameter("input_file_id", "Missing required parameter: 'input_file_id'.", code: "missing_required_parameter")
        }
        guard let endpoint = body.endpoint, Self.endpoints.contains(endpoint) else {
            throw GatewayError.invalidParameter("endpoint", "'endpoint' must be one of \(Self.endpoints.joined(separator: ", ")).", code: "unsupported_value")
        }
        guard (body.completion_window ?? "24h") == "24h" else {
            throw GatewayError.invalidParameter("completion_window", "'completion_window' must be 24h.", code: "unsupported_value")
        }
        let file = try await ownFile(fileID, key: key)
        let baseURL = images.publicURL.base(of: request)
        let lines = try await lines(of: file, endpoint: endpoint, key: key, baseURL: baseURL)
        let model = lines[0].job.model
        let id = "batch_" + randomHex(bytes: 12)

        // The worst case of every line at batch prices, held until the batch is settled.
        var reservationID: String?
        if key.creditMicroUSD != nil {
            let estimate = lines.reduce(0) { total, line in
                let job = line.job
                let full = pipeline.estimate(key: key, model: job.model, spec: job.spec, count: job.count, prompt: job.prompt, inputImages: job.inputImages.count)
                return total + (full * BatchPricing.sharePPM + 999_999) / 1_000_000
            }
            let reservation = Reservation(keyID: key.id, amountMicroUSD: estimate, owner: "batch:\(id)", leaseUntil: Date().addingTimeInterval(26 * 3600))
            switch try await pipeline.ledger.reserve(reservation) {
            case .held: reservationID = reservation.id
            case .unlimited: break
            case .insufficient: throw GatewayError.insufficientQuota(balanceMicroUSD: key.balanceMicroUSD ?? 0, neededMicroUSD: estimate)
            }
        }
        var requests: [(key: String, request: GeminiWire.Request)] = []
        for (index, line) in lines.enumerated() {
            let job = line.job
            let gemini = ImageTranslation.geminiRequest(prompt: job.prompt, inputImages: job.inputImages, spec: job.spec, family: job.model.family)
            for copy in 0..<job.count { requests.append(("\(index):\(copy)", gemini)) }
        }
        let handle: GeminiBatch.Handle
        do {
            handle = try await pipeline.upstream.submitBatch(model: model.upstreamModel, aliases: [model.name], requests: requests, displayName: id, logger: context.logger)
        } catch {
            if let reservationID { try? await pipeline.ledger.release(reservationID: reservationID) }
            throw GatewayError(upstream: error)
        }
        var batch = BatchRecord(
            id: id, keyID: key.id, endpoint: endpoint, model: model.name, inputFileID: fileID, total: lines.count, reservationID: reservationID,
            metadata: body.metadata.flatMap { try? JSONEncoder().encode($0) }.map { String(decoding: $0, as: UTF8.self) }
        )
        batch.status = "in_progress"
        batch.inProgressAt = Date()
        batch.baseURL = baseURL
        batch.upstream = (try? JSONEncoder().encode(handle)).map { String(decoding: $0, as: UTF8.self) }
        do {
            try await store.createBatch(batch)
        } catch {
            // Unrecorded, the batch could never be delivered: stop it and free its hold.
            if let reservationID { try? await pipeline.ledger.release(reservationID: reservationID) }
            try? await pipeline.upstream.cancelBatch(handle, logger: context.logger)
            context.logger.error("could not store a batch", metadata: ["error": "\(String(reflecting: error))"])
            throw GatewayError.internal("The batch could not be stored; retry.")
        }
        context.logger.info("batch submitted", metadata: ["batch": "\(id)", "lines": "\(lines.count)", "upstream.batch": "\(handle.name)"])
        return try Self.json(BatchObject(batch))
    }

    @Sendable func show(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        guard let key = context.apiKey else { throw GatewayError.unauthorized("Missing API key.") }
        let id = context.parameters.get("id") ?? ""
        guard let batch = try await store.batch(id: id, keyID: key.id) else {
            throw GatewayError(status: 404, type: "invalid_request_error", code: "batch_not_found", param: "id", message: "No batch '\(id)' for this key.")
        }
        return try Self.json(BatchObject(batch))
    }

    @Sendable func list(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        guard let key = context.apiKey else { throw GatewayError.unauthorized("Missing API key.") }
        let limit = request.uri.queryParameters.get("limit", as: Int.self) ?? 20
        let objects = try await store.batches(keyID: key.id, limit: limit).map(BatchObject.init)
        struct Page: Encodable {
            var object = "list"
            var data: [BatchObject]
            var first_id: String?
            var last_id: String?
            var has_more = false
        }
        return try Self.json(Page(data: objects, first_id: objects.first?.id, last_id: objects.last?.id))
    }

    /// `POST /v1/batches/{id}/cancel`: a running batch stops at once for the key — nothing of it
    /// is delivered or charged, its hold is released — and Google is asked to stop it too.
    @Sendable func cancel(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        guard let key = context.apiKey else { throw GatewayError.unauthorized("Missing API key.") }
        let id = context.parameters.get("id") ?? ""
        guard let batch = try await store.batch(id: id, keyID: key.id) else {
            throw GatewayError(status: 404, type: "invalid_request_error", code: "batch_not_found", param: "id", message: "No batch '\(id)' for this key.")
        }
        guard try await store.cancelBatch(id: id, keyID: key.id) else {
            throw GatewayError(status: 409, type: "invalid_request_error", code: "batch_not_cancellable", param: "id", message: "Batch '\(id)' is \(batch.status); only a batch in progress can be cancelled.")
        }
        if let reservationID = batch.reservationID { try? await pipeline.ledger.release(reservationID: reservationID) }
        if let handle = batch.upstream.flatMap({ try? JSONDecoder().decode(GeminiBatch.Handle.self, from: Data($0.utf8)) }) {
            do { try await pipeline.upstream.cancelBatch(handle, logger: context.logger) } catch {
                context.logger.warning("Google did not take the batch's cancellation", metadata: ["error": "\(error)"])
            }
        }
        guard let cancelled = try await store.batch(id: id, keyID: key.id) else { throw GatewayError.internal("The batch vanished.") }
        return try Self.json(BatchObject(cancelled))
    }

    /// OpenAI's batch object.
    struct BatchObject: Encodable {
        var id: String
        var object = "batch"
        var endpoint: String
        var model: String
        var errors: BatchErrors?
        var input_file_id: String
        var completion_window = "24h"
        var status: String
        var output_file_id: String?
        var error_file_id: String?
        var created_at: Int
        var in_progress_at: Int?
        var expires_at: Int
        var completed_at: Int?
        var failed_at: Int?
        var cancelled_at: Int?
        var request_counts: Counts
        var metadata: [String: String]?

        struct Counts: Encodable {
            var total: Int
            var completed: Int
            var failed: Int
        }

        struct BatchErrors: Codable {
            var object = "list"
            var data: [Entry]

            struct Entry: Codable {
                var code: String
                var message: String
                var line: Int?
            }
        }

        init(_ batch: BatchRecord) {
            id = batch.id
            endpoint = batch.endpoint
            model = batch.model
            errors = batch.errors.flatMap { try? JSONDecoder().decode(BatchErrors.self, from: Data($0.utf8)) }
            input_file_id = batch.inputFileID
            status = batch.status
            output_file_id = batch.outputFileID
            error_file_id = batch.errorFileID
            created_at = Int(batch.createdAt.timeIntervalSince1970)
            in_progress_at = batch.inProgressAt.map { Int($0.timeIntervalSince1970) }
            expires_at = Int(batch.expiresAt.timeIntervalSince1970)
            let finished = batch.completedAt.map { Int($0.timeIntervalSince1970) }
            completed_at = batch.status == "completed" ? finished : nil
            failed_at = batch.status == "failed" ? finished : nil
            cancelled_at = batch.status == "cancelled" ? finished : nil
            request_counts = Counts(total: batch.total, completed: batch.completed, failed: batch.failed)
            metadata = batch.metadata.flatMap { try? JSONDecoder().decode([String: String].self, from: Data($0.utf8)) }
        }
    }
}

/// Polls submitted batches (one instance at a time per batch, through a lease), and when Google
/// has answered, delivers every line like a request of its own — images stored or inlined per its
/// `response_format`, a usage row and a charge at batch price each — writes the output file,
/// and releases what the batch held.
struct BatchPoller: Service {
    let store: SQLStore
    let batches: BatchesController
    let owner: String
    let pollInterval: Duration
    let logger: Logger

    func run() async throws {
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            do {
                while let batch = try await store.claimBatchForPoll(owner: owner, leaseUntil: Date().addingTimeInterval(TimeInterval(pollInterval.components.seconds) + 60)) {
                    await poll(batch)
                }
            } catch {
                logger.warning("could not poll batches", metadata: ["error": "\(String(reflecting: error))"])
            }
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: pollInterval) }
        }
    }

    private func poll(_ batch: BatchRecord) async {
        var logger = self.logger
        logger[metadataKey: "batch"] = "\(batch.id)"
        guard let upstream = batch.upstream.flatMap({ try? JSONDecoder().decode(GeminiBatch.Handle.self, from: Data($0.utf8)) }) else {
            await fail(batch, code: "batch_lost", message: "The batch's upstream reference is missing.", logger: logger)
            return
        }
        let status: GeminiBatch.Status
        do {
            status = try await batches.pipeline.upstream.batchStatus(upstream, logger: logger)
        } catch {
            logger.warning("batch poll failed; retried at the next poll", metadata: ["error": "\(error)"])
            try? await store.delayBatchPoll(id: batch.id, owner: owner, until: Date().addingTimeInterval(TimeInterval(pollInterval.components.seconds)))
            return
        }
        guard status.done else {
            // Not done: polled again after the interval (by whichever instance is free then).
            try? await store.delayBatchPoll(id: batch.id, owner: owner, until: Date().addingTimeInterval(TimeInterval(pollInterval.components.seconds)))
            return
        }
        guard status.state == "BATCH_STATE_SUCCEEDED" else {
            await fail(batch, code: "upstream_batch_failed", message: "Google's batch ended \(status.state)\(status.failure.map { ": \($0)" } ?? "").", logger: logger)
            return
        }
        await deliver(batch, status: status, logger: logger)
    }

    private func fail(_ batch: BatchRecord, code: String, message: String, logger: Logger) async {
        let errors = BatchesController.BatchObject.BatchErrors(data: [.init(code: code, message: message, line: nil)])
        if let reservationID = batch.reservationID { try? await batches.pipeline.ledger.release(reservationID: reservationID) }
        try? await store.finishBatch(
            id: batch.id, owner: owner, status: "failed", completed: 0, failed: batch.total, outputFileID: nil, errorFileID: nil,
            errors: (try? JSONEncoder().encode(errors)).map { String(decoding: $0, as: UTF8.self) }
        )
        logger.error("batch failed", metadata: ["code": "\(code)", "message": "\(message)"])
    }

    private func deliver(_ batch: BatchRecord, status: GeminiBatch.Status, logger: Logger) async {
        let pipeline = batches.pipeline
        guard let key = try? await store.key(id: batch.keyID), let file = try? await store.file(id: batch.inputFileID, keyID: batch.keyID),
            let lines = try? await batches.lines(of: file, endpoint: batch.endpoint, key: key, baseURL: batch.baseURL)
        else {
            await fail(batch, code: "batch_input_unavailable", message: "The batch's key or input file is gone.", logger: logger)
            return
        }
        var output = ByteBuffer()
        var completed = 0
        var failed = 0
        for (index, line) in lines.enumerated() {
            let job = line.job
            let requestID = "batch_req_" + randomHex(bytes: 12)
            let answers: [Result<GeminiWire.Response, GatewayError>] = (0..<job.count).map { copy in
                switch status.results["\(index):\(copy)"] {
                case .success(let response): .success(response)
                case .failure(let error): .failure(GatewayError(upstream: error))
                case nil: .failure(GatewayError(status: 502, type: "server_error", code: "upstream_error", param: nil, message: "Google's batch has no answer for this request."))
                }
            }
            let info = RequestInfo(requestID: requestID, started: .now, observation: nil, requestedSize: job.spec.label)
            let statusCode: Int
            var body: ByteBuffer
            do {
                let settlement = try await pipeline.open(key: key, endpoint: job.endpoint, model: job.model, info: info, estimateMicroUSD: 0, reserve: false, logger: logger)
                let primary = settlement.servedBy
                settlement.serve(by: UpstreamTarget(id: primary.id, family: primary.family, prices: BatchPricing.batchPrices(primary.prices)))
                let answer = try await pipeline.generateImages(job, settlement: settlement, given: answers, logger: logger)
                body = try SplicedJSON.encodeJoined(answer)
                statusCode = 200
                completed += 1
            } catch {
                let gatewayError = error as? GatewayError ?? .internal("The line could not be delivered.")
                body = ByteBuffer(data: (try? JSONEncoder().encode(ErrorResponse(gatewayError))) ?? Data())
                statusCode = gatewayError.status
                failed += 1
            }
            let customID = String(decoding: (try? JSONEncoder().encode(line.customID)) ?? Data(), as: UTF8.self)
            output.writeString(#"{"id":"\#(requestID)","custom_id":\#(customID),"response":{"status_code":\#(statusCode),"request_id":"\#(requestID)","body":"#)
            output.writeBuffer(&body)
            output.writeString("},\"error\":null}\n")
        }
        if let reservationID = batch.reservationID {
            do { try await pipeline.ledger.release(reservationID: reservationID) } catch { logger.error("could not release the batch's hold", metadata: ["error": "\(error)"]) }
        }
        let outputFile = StoredFile(
            id: "file-" + randomHex(bytes: 12), keyID: batch.keyID, purpose: "batch_output", filename: "\(batch.id)_output.jsonl",
            content: Array(output.readableBytesView), expiresAt: Date().addingTimeInterval(30 * 24 * 3600)
        )
        do {
            try await store.storeFile(outputFile)
            try await store.finishBatch(id: batch.id, owner: owner, status: "completed", completed: completed, failed: failed, outputFileID: outputFile.id, errorFileID: nil, errors: nil)
            logger.info("batch completed", metadata: ["completed": "\(completed)", "failed": "\(failed)"])
        } catch {
            logger.error("could not store a batch's output", metadata: ["error": "\(String(reflecting: error))"])
        }
    }
}
