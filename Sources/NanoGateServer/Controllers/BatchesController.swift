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
}

/// One line of a batch input file, read and validated (its image URLs not fetched yet).
struct BatchLine: Sendable {
    var customID: String
    var job: ImageRequest
    /// The edit's image URLs, fetched only once the batch's credit is held.
    var imageURLs: [String] = []
}

/// What delivering one line needs, fixed at submission and stored with the batch: Google has
/// produced (and billed) the line's images by delivery time, so delivery never validates or
/// fetches again — an expired image URL or a model taken off the key cannot fail it.
struct BatchLinePlan: Codable, Sendable, Equatable {
    var customID: String
    /// `images.generations` or `images.edits`.
    var endpoint: Endpoint
    var model: String
    var spec: ImageSpec
    var count: Int
    var format: ResponseFormat
    var options: ImageOptions

    init(_ line: BatchLine) {
        customID = line.customID
        endpoint = line.job.endpoint
        model = line.job.model.name
        spec = line.job.spec
        count = line.job.count
        format = line.job.format
        options = line.job.options
    }

    /// The line as the pipeline delivers it (no prompt or images: Google already has them).
    func job(key: APIKey, catalog: ModelCatalog, baseURL: String) -> ImageRequest? {
        guard let model = catalog.model(named: model) else { return nil }
        return ImageRequest(key: key, endpoint: endpoint, model: model, spec: spec, prompt: "", inputImages: [], count: count, format: format, baseURL: baseURL, options: options)
    }
}

struct BatchesController {
    let store: SQLStore
    /// Where uploaded files and batch outputs are kept (rows hold their names and sizes).
    let files: any ImageRepository
    /// Where a batch's output is written before it goes to `files` (the local file folder).
    let scratchDirectory: URL
    let images: ImagesController
    let pipeline: RequestPipeline
    let maxFileBytes: Int
    /// The bytes one key's unexpired files may take in all (`NANOGATE_FILE_QUOTA_MB`).
    var fileQuotaBytes = 256 * 1024 * 1024
    let owner: String
    static let endpoints = [Endpoint.imageGenerations, .imageEdits].compactMap(\.openAIPath)
    static let maxLines = 1000
    /// Remote image URLs one batch may name (each is fetched at submission, after the credit is held).
    static let maxImageURLs = 100
    /// Image bytes one batch may fetch in all (data: URLs arrive in the file, bounded by its size).
    static let maxImageBytes = 128 * 1024 * 1024
    /// Google's answers to one batch are read whole (inline results), up to the pool's limit:
    /// a batch whose worst-case answer would not fit is refused at submission, not lost later.
    static func worstCaseAnswerBytes(_ spec: ImageSpec) -> Int {
        switch spec.imageSize {
        case .some(.fourK): 48 << 20
        case .some(.twoK): 12 << 20
        default: 3 << 20
        }
    }

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

        init(_ file: StoredFile, bytes: Int? = nil) {
            id = file.id
            self.bytes = bytes ?? file.bytes
            created_at = Int(file.createdAt.timeIntervalSince1970)
            expires_at = file.expiresAt.map { Int($0.timeIntervalSince1970) }
            filename = file.filename
            purpose = file.purpose
        }
    }

    static func quotaExceeded(stored: Int, quota: Int) -> GatewayError {
        GatewayError(
            status: 413, type: "invalid_request_error", code: "file_quota_exceeded", param: "file",
            message: "This key's files may take \(quota >> 20) MiB in all and hold \(stored >> 20) MiB; files expire \(fileDays) days after upload."
        )
    }

    /// Days an uploaded file (and a batch's output) is kept; expired files are swept.
    static let fileDays = 30

    @Sendable func upload(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        let key = try context.requireKey()
        // Files serve batches, which the key pays for: a key with nothing left to spend stores nothing.
        if let balance = key.balanceMicroUSD, balance <= 0 {
            throw GatewayError.insufficientQuota(balanceMicroUSD: balance, neededMicroUSD: 1)
        }
        let stored = try await store.fileBytes(keyID: key.id)
        guard stored < fileQuotaBytes else { throw Self.quotaExceeded(stored: stored, quota: fileQuotaBytes) }
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
        guard stored + file.body.readableBytes <= fileQuotaBytes else { throw Self.quotaExceeded(stored: stored, quota: fileQuotaBytes) }
        guard file.body.readableBytes > 0 else { throw GatewayError.invalidParameter("file", "The file is empty.") }
        let objectName = try await files.save(Array(file.body.readableBytesView), fileExtension: "jsonl")
        let upload = StoredFile(
            id: "file-" + randomHex(bytes: 12), keyID: key.id, purpose: purpose, filename: file.filename ?? "batch.jsonl",
            objectName: objectName, bytes: file.body.readableBytes, expiresAt: Date().addingTimeInterval(TimeInterval(Self.fileDays * 24 * 3600))
        )
        try await store.storeFile(upload)
        return try json(FileObject(upload))
    }

    static func fileNotFound(_ id: String) -> GatewayError {
        GatewayError(status: 404, type: "invalid_request_error", code: "file_not_found", param: "id", message: "No file '\(id)' for this key (files expire \(fileDays) days after upload).")
    }

    private func ownFile(_ id: String, key: APIKey) async throws -> StoredFile {
        guard let file = try await store.file(id: id, keyID: key.id) else { throw Self.fileNotFound(id) }
        return file
    }

    /// A file's bytes: from the file store, or the row (files of earlier versions).
    func content(of file: StoredFile) async throws -> [UInt8] {
        guard let name = file.objectName else { return file.content }
        guard let bytes = try await files.load(name: name) else { throw Self.fileNotFound(file.id) }
        return bytes
    }

    @Sendable func fileObject(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        let key = try context.requireKey()
        let id = context.parameters.get("id") ?? ""
        // The size comes from the row: the content is not read to describe the file.
        guard let info = try await store.fileInfo(id: id, keyID: key.id) else { throw Self.fileNotFound(id) }
        return try json(FileObject(info.file, bytes: info.bytes))
    }

    @Sendable func fileContent(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        let key = try context.requireKey()
        let file = try await ownFile(context.parameters.get("id") ?? "", key: key)
        guard let name = file.objectName else {
            return Response(status: .ok, headers: [.contentType: "application/jsonl"], body: .init(byteBuffer: ByteBuffer(bytes: file.content)))
        }
        // Streamed from the file store as it is read: a batch's output is never held whole.
        guard let pieces = try await files.stream(name: name) else { throw Self.fileNotFound(file.id) }
        return Response(
            status: .ok, headers: [.contentType: "application/jsonl", .contentLength: "\(file.bytes)"],
            body: ResponseBody { writer in
                for try await piece in pieces { try await writer.write(piece) }
                try await writer.finish(nil)
            }
        )
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
        let content: [UInt8]
        do {
            content = try await self.content(of: file)
        } catch {
            throw error as? GatewayError ?? .internal("The input file could not be read from the file store; retry.")
        }
        let texts = String(decoding: content, as: UTF8.self).split(whereSeparator: \.isNewline).filter { !$0.trimmingCharacters(in: .whitespaces).isEmpty }
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
            // The line's body is validated as the endpoint validates a JSON body (no HTTP request made up).
            let job: ImageRequest
            var urls: [String] = []
            do throws(GatewayError) {
                if Endpoint(batchPath: endpoint) == .imageEdits {
                    (job, urls) = try images.validator.edit(json: bodyData, key: key, baseURL: baseURL)
                } else {
                    job = try images.validator.generation(json: bodyData, key: key, baseURL: baseURL)
                }
            } catch {
                throw refuse(error.message)
            }
            guard !job.options.stream else { throw refuse("a batch line cannot stream.") }
            if let first = result.first, first.job.model.name != job.model.name {
                throw refuse("every line of a batch must use one model (line 1 uses '\(first.job.model.name)', this one '\(job.model.name)').")
            }
            result.append(BatchLine(customID: customID, job: job, imageURLs: urls))
        }
        return result
    }

    @Sendable func create(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        let key = try context.requireKey()
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
        // Validated without fetching anything: the credit is held before the first image URL is read.
        var lines = try await lines(of: file, endpoint: endpoint, key: key, baseURL: baseURL)
        let model = lines[0].job.model
        let id = "batch_" + randomHex(bytes: 12)
        let urlCount = lines.reduce(0) { $0 + $1.imageURLs.count }
        guard urlCount <= Self.maxImageURLs else {
            throw GatewayError.invalidParameter("input_file_id", "A batch may name at most \(Self.maxImageURLs) image URLs; this one names \(urlCount). Split it, or send the images as data: URLs.", code: "too_many_images")
        }
        let answerBytes = lines.reduce(0) { $0 + Self.worstCaseAnswerBytes($1.job.spec) * $1.job.count }
        guard answerBytes <= pipeline.upstream.maxResponseBytes else {
            throw GatewayError.invalidParameter(
                "input_file_id", "Google's answer to this batch could reach \(answerBytes >> 20) MiB, more than the \(pipeline.upstream.maxResponseBytes >> 20) MiB the gateway reads; split it into smaller batches (fewer lines, or smaller sizes).",
                code: "batch_too_large"
            )
        }

        // The worst case of every line at batch prices, held until the batch is settled.
        var reservationID: String?
        if key.creditMicroUSD != nil {
            let batchTier = TierRequest.batch(pricing: pipeline.billing.tiers)
            let estimate = lines.reduce(0) { total, line in
                let job = line.job
                return total + pipeline.estimate(key: key, model: job.model, spec: job.spec, count: job.count, prompt: job.prompt, inputImages: line.imageURLs.count, tier: batchTier)
            }
            let reservation = Reservation(keyID: key.id, amountMicroUSD: estimate, owner: "batch:\(id)", leaseUntil: Date().addingTimeInterval(26 * 3600))
            switch try await pipeline.ledger.reserve(reservation) {
            case .held: reservationID = reservation.id
            case .unlimited: break
            case .insufficient: throw GatewayError.insufficientQuota(balanceMicroUSD: key.balanceMicroUSD ?? 0, neededMicroUSD: estimate)
            }
        }
        do {
            try await fetchImages(of: &lines, baseURL: baseURL)
        } catch {
            if let reservationID { try? await pipeline.ledger.release(reservationID: reservationID) }
            throw error
        }
        var requests: [(key: String, request: GeminiWire.Request)] = []
        for (index, line) in lines.enumerated() {
            let job = line.job
            let gemini = ImageTranslation.geminiRequest(
                prompt: job.prompt, inputImages: job.inputImages, spec: job.spec, family: job.model.family, reasoningEffort: job.options.reasoningEffort
            )
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
        batch.status = .inProgress
        batch.inProgressAt = Date()
        batch.baseURL = baseURL
        batch.upstream = (try? JSONEncoder().encode(handle)).map { String(decoding: $0, as: UTF8.self) }
        batch.linePlans = (try? JSONEncoder().encode(lines.map(BatchLinePlan.init))).map { String(decoding: $0, as: UTF8.self) }
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
        return try json(BatchObject(batch))
    }

    /// Reads every line's image URLs, once, after the batch's credit is held: at most
    /// `maxImageURLs` fetches and `maxImageBytes` of images for the whole batch.
    private func fetchImages(of lines: inout [BatchLine], baseURL: String) async throws(GatewayError) {
        var total = 0
        for index in lines.indices {
            for (position, url) in lines[index].imageURLs.enumerated() {
                let image: GeminiWire.InlineData
                do {
                    image = try await images.inputs.load(url: url, param: "images[\(position)].image_url", baseURLs: [baseURL])
                } catch {
                    throw .invalidParameter("input_file_id", "Line \(index + 1) of the input file: \(error.message)")
                }
                total += image.data.count / 4 * 3
                guard total <= Self.maxImageBytes else {
                    throw .invalidParameter("input_file_id", "The batch's images exceed \(Self.maxImageBytes >> 20) MiB in all; split it.", code: "batch_too_large")
                }
                lines[index].job.inputImages.append(image)
            }
            lines[index].imageURLs = []
        }
    }

    @Sendable func show(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        let key = try context.requireKey()
        let id = context.parameters.get("id") ?? ""
        guard let batch = try await store.batch(id: id, keyID: key.id) else {
            throw GatewayError(status: 404, type: "invalid_request_error", code: "batch_not_found", param: "id", message: "No batch '\(id)' for this key.")
        }
        return try json(BatchObject(batch))
    }

    @Sendable func list(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        let key = try context.requireKey()
        let limit = request.uri.queryParameters.get("limit", as: Int.self) ?? 20
        let objects = try await store.batches(keyID: key.id, limit: limit).map(BatchObject.init)
        struct Page: Encodable {
            var object = "list"
            var data: [BatchObject]
            var first_id: String?
            var last_id: String?
            var has_more = false
        }
        return try json(Page(data: objects, first_id: objects.first?.id, last_id: objects.last?.id))
    }

    /// `POST /v1/batches/{id}/cancel`. Google is asked first: a batch it has already finished is
    /// delivered and charged like any finished batch (the operator paid for it) and answered as
    /// `completed`. Otherwise Google is asked to stop it and it is answered `cancelling`, as
    /// OpenAI does: once Google has stopped, the poller delivers and charges the requests it
    /// answered before that (`cancelled`, with an output file), or releases the hold when there
    /// are none. A batch Google never took ends `cancelled` at once.
    @Sendable func cancel(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        let key = try context.requireKey()
        let id = context.parameters.get("id") ?? ""
        guard let batch = try await store.batch(id: id, keyID: key.id) else {
            throw GatewayError(status: 404, type: "invalid_request_error", code: "batch_not_found", param: "id", message: "No batch '\(id)' for this key.")
        }
        func notCancellable(_ status: BatchStatus) -> GatewayError {
            GatewayError(status: 409, type: "invalid_request_error", code: "batch_not_cancellable", param: "id", message: "Batch '\(id)' is \(status.rawValue); only a batch in progress can be cancelled.")
        }
        guard batch.status == .inProgress else { throw notCancellable(batch.status) }
        let handle = batch.upstreamHandle
        if let handle, let status = try? await pipeline.upstream.batchStatus(handle, logger: context.logger), status.done, !status.results.isEmpty {
            // Google's work is done and billed: deliver it rather than drop it. The delivery's
            // owner is this request alone, so this instance's poller cannot deliver it too.
            let delivery = "\(owner)/cancel-\(randomHex(bytes: 6))"
            guard try await store.beginDelivery(id: id, owner: delivery, leaseUntil: Date().addingTimeInterval(3600)) else {
                throw notCancellable((try await store.batch(id: id, keyID: key.id))?.status ?? .completed)
            }
            await deliver(batch, status: status, endAs: Self.ending(of: status, expired: false), owner: delivery, logger: context.logger)
        } else if let handle {
            guard try await store.markCancelling(id: id, keyID: key.id) else {
                throw notCancellable((try await store.batch(id: id, keyID: key.id))?.status ?? .completed)
            }
            do { try await pipeline.upstream.cancelBatch(handle, logger: context.logger) } catch {
                context.logger.warning("Google did not take the batch's cancellation", metadata: ["error": "\(error)"])
            }
        } else {
            guard try await store.cancelBatch(id: id, keyID: key.id) else {
                throw notCancellable((try await store.batch(id: id, keyID: key.id))?.status ?? .completed)
            }
            if let reservationID = batch.reservationID { try? await pipeline.ledger.release(reservationID: reservationID) }
        }
        guard let final = try await store.batch(id: id, keyID: key.id) else { throw GatewayError.internal("The batch vanished.") }
        return try json(BatchObject(final))
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
            status = batch.status.rawValue
            output_file_id = batch.outputFileID
            error_file_id = batch.errorFileID
            created_at = Int(batch.createdAt.timeIntervalSince1970)
            in_progress_at = batch.inProgressAt.map { Int($0.timeIntervalSince1970) }
            expires_at = Int(batch.expiresAt.timeIntervalSince1970)
            let finished = batch.completedAt.map { Int($0.timeIntervalSince1970) }
            completed_at = batch.status == .completed ? finished : nil
            failed_at = batch.status == .failed ? finished : nil
            cancelled_at = batch.status == .cancelled ? finished : nil
            request_counts = Counts(total: batch.total, completed: batch.completed, failed: batch.failed)
            metadata = batch.metadata.flatMap { try? JSONDecoder().decode([String: String].self, from: Data($0.utf8)) }
        }
    }
}
