import Foundation
import Logging
import NanoGateCore
import NanoGateStorage
import NIOCore
import NIOFoundationCompat
import NIOPosix
import ServiceLifecycle
import Synchronization
import Upstream

/// Polls submitted batches (one instance at a time per batch, through a lease), and when Google
/// has answered, delivers every line (`BatchesController.deliver`). A batch cancelled by its
/// key, or still unfinished at Google an hour past its 24 h window, is stopped at Google and
/// then delivered and charged for what Google answered before it stopped (OpenAI's
/// `cancelled` and `expired` batches keep their finished requests); a batch Google does not
/// stop either, another hour on, is given up: its hold released.
struct BatchPoller: Service {
    let store: SQLStore
    let batches: BatchesController
    let owner: String
    let pollInterval: Duration
    let logger: Logger
    /// How long past its 24 h window a batch may stay unfinished at Google before it expires.
    var expiryGrace: Duration = .seconds(3600)

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

    func poll(_ batch: BatchRecord, now: Date = Date()) async {
        var logger = self.logger
        logger[metadataKey: "batch"] = "\(batch.id)"
        guard let upstream = batch.upstreamHandle else {
            await batches.fail(batch, owner: owner, code: "batch_lost", message: "The batch's upstream reference is missing.", logger: logger)
            return
        }
        let grace = TimeInterval(expiryGrace.components.seconds)
        let expired = now > batch.expiresAt.addingTimeInterval(grace)
        let status: GeminiBatch.Status
        do {
            status = try await batches.pipeline.upstream.batchStatus(upstream, logger: logger)
        } catch {
            if expired {
                await stop(batch, upstream: upstream, abandoned: now > batch.expiresAt.addingTimeInterval(2 * grace), logger: logger)
                return
            }
            logger.warning("batch poll failed; retried at the next poll", metadata: ["error": "\(error)"])
            await pollLater(batch)
            return
        }
        guard status.done else {
            if expired {
                await stop(batch, upstream: upstream, abandoned: now > batch.expiresAt.addingTimeInterval(2 * grace), logger: logger)
                return
            }
            // Not done: polled again after the interval (by whichever instance is free then).
            await pollLater(batch)
            return
        }
        if status.results.isEmpty {
            if batch.status == .cancelling || status.state == "BATCH_STATE_CANCELLED" {
                // Stopped before it answered anything: nothing to deliver or charge.
                await batches.endUndelivered(
                    batch, owner: owner, status: expired ? .expired : .cancelled, error: expired ? BatchesController.expiredError : nil, logger: logger
                )
                logger.notice("batch stopped before Google answered any of it", metadata: ["expired": "\(expired)"])
                return
            }
            guard status.state == "BATCH_STATE_SUCCEEDED" else {
                await batches.fail(batch, owner: owner, code: "upstream_batch_failed", message: "Google's batch ended \(status.state)\(status.failure.map { ": \($0)" } ?? "").", logger: logger)
                return
            }
        }
        guard (try? await store.beginDelivery(id: batch.id, owner: owner, leaseUntil: Date().addingTimeInterval(3600))) == true else { return }
        await batches.deliver(batch, status: status, endAs: BatchesController.ending(of: status, expired: expired), owner: owner, logger: logger)
    }

    /// A batch past its window that Google has not finished: asked to stop at Google, then
    /// delivered for what Google answered once it has (`cancelling`); given up with its hold
    /// released when Google did not stop either (`abandoned`).
    private func stop(_ batch: BatchRecord, upstream: GeminiBatch.Handle, abandoned: Bool, logger: Logger) async {
        if abandoned {
            let error = BatchesController.expiredError
            await batches.fail(batch, owner: owner, code: error.code, message: error.message, status: .expired, logger: logger)
            return
        }
        if batch.status == .inProgress {
            do { try await batches.pipeline.upstream.cancelBatch(upstream, logger: logger) } catch {
                logger.warning("Google did not take the expired batch's cancellation", metadata: ["error": "\(error)"])
            }
            _ = try? await store.markCancelling(id: batch.id, keyID: nil)
            logger.notice("batch expired at Google; what it answered will be delivered")
        }
        await pollLater(batch)
    }

    private func pollLater(_ batch: BatchRecord) async {
        try? await store.delayBatchPoll(id: batch.id, owner: owner, until: Date().addingTimeInterval(TimeInterval(pollInterval.components.seconds)))
    }
}

extension BatchRecord {
    /// Where Google keeps the batch.
    var upstreamHandle: GeminiBatch.Handle? {
        upstream.flatMap { try? JSONDecoder().decode(GeminiBatch.Handle.self, from: Data($0.utf8)) }
    }
}

extension BatchesController {
    /// Ends a batch that cannot be delivered: its hold released, nothing charged.
    func fail(_ batch: BatchRecord, owner: String, code: String, message: String, status: BatchStatus = .failed, logger: Logger) async {
        await endUndelivered(batch, owner: owner, status: status, error: (code, message), logger: logger)
        logger.error("batch ended undelivered", metadata: ["status": "\(status)", "code": "\(code)", "message": "\(message)"])
    }

    /// Ends a batch with nothing delivered (`cancelled` or `expired` before Google answered any
    /// of it, or failed): its hold released, nothing charged, `error` in its `errors`.
    func endUndelivered(_ batch: BatchRecord, owner: String, status: BatchStatus, error: (code: String, message: String)?, logger: Logger) async {
        if let reservationID = batch.reservationID { try? await pipeline.ledger.release(reservationID: reservationID) }
        let errors = error.map { BatchObject.BatchErrors(data: [.init(code: $0.code, message: $0.message, line: nil)]) }
        try? await store.finishBatch(
            id: batch.id, owner: owner, status: status, completed: 0, failed: batch.total, outputFileID: nil, errorFileID: nil,
            errors: errors.flatMap { try? JSONEncoder().encode($0) }.map { String(decoding: $0, as: UTF8.self) }
        )
    }

    /// The `errors` of a batch Google did not finish in its window.
    static let expiredError = (code: "batch_expired", message: "Google did not finish the batch within its 24 h window.")

    /// How a batch Google answered ends: `completed`, or — when it stopped before the end (a
    /// cancel, the window's end) — `cancelled` or `expired`, with what it did answer delivered.
    static func ending(of status: GeminiBatch.Status, expired: Bool) -> BatchStatus {
        guard status.state == "BATCH_STATE_CANCELLED" else { return .completed }
        return expired ? .expired : .cancelled
    }

    /// The delivery plan of every line: stored at submission; for a batch submitted before plans
    /// were stored, the input file is read again (validated, never fetched).
    private func plans(of batch: BatchRecord, key: APIKey) async -> [BatchLinePlan]? {
        if let stored = batch.linePlans {
            return try? JSONDecoder().decode([BatchLinePlan].self, from: Data(stored.utf8))
        }
        guard let file = try? await store.file(id: batch.inputFileID, keyID: batch.keyID),
            let lines = try? await lines(of: file, endpoint: batch.endpoint, key: key, baseURL: batch.baseURL)
        else { return nil }
        return lines.map(BatchLinePlan.init)
    }

    /// Delivers every line of a batch Google finished, like a request of its own — images stored
    /// or inlined per its `response_format`, a usage row and a charge at batch price each, no
    /// per-minute or concurrency limit (Google already did the work) — writes the output file
    /// and releases what the batch held. The caller holds the batch (`beginDelivery`).
    func deliver(_ batch: BatchRecord, status: GeminiBatch.Status, endAs ending: BatchStatus, owner: String, logger: Logger) async {
        guard let key = try? await store.key(id: batch.keyID), let plans = await plans(of: batch, key: key) else {
            await fail(batch, owner: owner, code: "batch_input_unavailable", message: "The batch's key or input is gone.", logger: logger)
            return
        }
        // The output is written line by line to a file as each line is delivered, never held
        // whole (a few hundred b64_json lines are gigabytes).
        let output: LineFileWriter
        do {
            output = try await LineFileWriter.create(in: scratchDirectory)
        } catch {
            logger.error("could not start a batch's output file", metadata: ["error": "\(String(reflecting: error))"])
            return
        }
        var completed = 0
        var failed = 0
        for (index, plan) in plans.enumerated() {
            let requestID = "batch_req_" + randomHex(bytes: 12)
            let statusCode: Int
            var body: ByteBuffer
            do {
                guard let job = plan.job(key: key, catalog: images.catalog, baseURL: batch.baseURL) else {
                    throw GatewayError(status: 502, type: "server_error", code: "upstream_error", param: nil, message: "The model '\(plan.model)' left the catalog.")
                }
                let answers: [Result<GeminiWire.Response, GatewayError>] = (0..<job.count).map { copy in
                    switch status.results["\(index):\(copy)"] {
                    case .success(let response): .success(response)
                    case .failure(let error): .failure(GatewayError(upstream: error))
                    case nil: .failure(GatewayError(status: 502, type: "server_error", code: "upstream_error", param: nil, message: "Google's batch has no answer for this request."))
                    }
                }
                // Its row names the batch (the console sums a batch's charges by it).
                let info = RequestInfo(requestID: requestID, started: .now, observation: nil, requestedSize: job.spec.label, jobID: batch.id)
                // Priced at the batch share from the start (the settlement's input, never swapped in).
                let settlement = try await pipeline.open(
                    key: key, endpoint: job.endpoint, model: job.model, info: info, estimateMicroUSD: 0, batchLine: true,
                    tier: .batch(pricing: pipeline.billing.tiers), logger: logger
                )
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
            let customID = String(decoding: (try? JSONEncoder().encode(plan.customID)) ?? Data(), as: UTF8.self)
            var line = ByteBuffer(string: #"{"id":"\#(requestID)","custom_id":\#(customID),"response":{"status_code":\#(statusCode),"request_id":"\#(requestID)","body":"#)
            line.writeBuffer(&body)
            line.writeString("},\"error\":null}\n")
            do {
                try await output.append(line)
            } catch {
                logger.error("could not write a batch's output", metadata: ["error": "\(String(reflecting: error))"])
                await output.discard()
                return
            }
        }
        if let reservationID = batch.reservationID {
            do { try await pipeline.ledger.release(reservationID: reservationID) } catch { logger.error("could not release the batch's hold", metadata: ["error": "\(error)"]) }
        }
        do {
            let size = try await output.close()
            let objectName = try await files.saveFile(at: output.path, fileExtension: "jsonl")
            let outputFile = StoredFile(
                id: "file-" + randomHex(bytes: 12), keyID: batch.keyID, purpose: "batch_output", filename: "\(batch.id)_output.jsonl",
                objectName: objectName, bytes: size, expiresAt: Date().addingTimeInterval(TimeInterval(Self.fileDays * 24 * 3600))
            )
            try await store.storeFile(outputFile)
            try await store.finishBatch(id: batch.id, owner: owner, status: ending, completed: completed, failed: failed, outputFileID: outputFile.id, errorFileID: nil, errors: nil)
            logger.info("batch delivered", metadata: ["status": "\(ending)", "completed": "\(completed)", "failed": "\(failed)"])
        } catch {
            logger.error("could not store a batch's output", metadata: ["error": "\(String(reflecting: error))"])
        }
    }
}

/// A file written one line at a time on NIO's thread pool (never on Swift's cooperative
/// threads), until it is handed to a store. It is written in the local file folder: handing it
/// over is a rename there, and one a crash leaves half-written is swept with the old files.
final class LineFileWriter: Sendable {
    let path: URL
    private let handle: FileHandle
    private let written = Mutex(0)

    private init(path: URL, handle: FileHandle) {
        self.path = path
        self.handle = handle
    }

    static func create(in directory: URL) async throws -> LineFileWriter {
        let path = directory.appendingPathComponent("partial-\(randomHex(bytes: 12)).jsonl")
        let handle = try await NIOThreadPool.singleton.runIfActive {
            guard FileManager.default.createFile(atPath: path.path, contents: nil, attributes: [.posixPermissions: 0o600]) else {
                throw CocoaError(.fileWriteUnknown)
            }
            return try FileHandle(forWritingTo: path)
        }
        return LineFileWriter(path: path, handle: handle)
    }

    func append(_ bytes: ByteBuffer) async throws {
        let handle = self.handle
        try await NIOThreadPool.singleton.runIfActive { try handle.write(contentsOf: Data(buffer: bytes)) }
        written.withLock { $0 += bytes.readableBytes }
    }

    /// Closes the file; its size.
    func close() async throws -> Int {
        let handle = self.handle
        try await NIOThreadPool.singleton.runIfActive { try handle.close() }
        return written.withLock { $0 }
    }

    /// Closes and deletes it.
    func discard() async {
        let (handle, path) = (self.handle, self.path)
        try? await NIOThreadPool.singleton.runIfActive {
            try? handle.close()
            try? FileManager.default.removeItem(at: path)
        }
    }
}
