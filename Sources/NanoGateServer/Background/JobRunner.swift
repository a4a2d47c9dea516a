import Foundation
import Logging
import NanoGateCore
import NanoGateStorage
import NIOCore
import ServiceLifecycle
import Synchronization

/// Runs queued jobs in the background, a few at a time per instance, until the gateway stops.
/// A job whose gateway died (its lease ran out) is taken over; one charged before its answer
/// was stored is refunded before it runs again, so it is charged once.
struct JobRunner: Service {
    let store: SQLStore
    let owner: String
    let lease: Duration
    let workers: Int
    let resultTTL: Duration
    let pollInterval: Duration
    let webhooks: WebhookSender
    /// Where a job's answer is kept (the row names it): images in a `b64_json` answer never go
    /// into the database.
    let images: any ImageRepository
    let logger: Logger
    /// Runs the stored request for its key (`ImagesController.runStoredJob`): the images answer.
    let execute: @Sendable (ImageJobRecord, APIKey) async throws -> ByteBuffer

    /// How many times a job may start before it fails (its gateways kept dying under it).
    static let maxAttempts = 3

    /// Webhook deliveries in flight at once (each outside the worker slots).
    var webhookConcurrency = 4

    func run() async throws {
        let running = RunningJobs()
        // Finished jobs whose webhook is due: delivered beside the workers, a few at a time, so
        // a slow receiver never holds a worker (nor another key's job) back.
        let (finished, finishedInput) = AsyncStream.makeStream(of: ImageJobRecord.self, bufferingPolicy: .bufferingOldest(1024))
        await withDiscardingTaskGroup { group in
            group.addTask {
                await withTaskGroup(of: Void.self) { deliveries in
                    var active = 0
                    for await job in finished {
                        if active >= webhookConcurrency {
                            await deliveries.next()
                            active -= 1
                        }
                        deliveries.addTask {
                            var logger = self.logger
                            logger[metadataKey: "job"] = "\(job.id)"
                            await webhooks.deliver(job, logger: logger)
                        }
                        active += 1
                    }
                }
            }
            // Leases of the jobs running here, renewed while they run.
            group.addTask {
                while !Task.isCancelled && !Task.isShuttingDownGracefully {
                    try? await cancelWhenGracefulShutdown { try await Task.sleep(for: lease / 3) }
                    let ids = Array(running.ids.withLock { $0 })
                    try? await store.renewJobLeases(ids: ids, owner: owner, until: Date().addingTimeInterval(TimeInterval(lease.components.seconds)))
                }
            }
            while !Task.isCancelled && !Task.isShuttingDownGracefully {
                let busy = running.ids.withLock { $0.count } >= workers
                var claimed: ImageJobRecord?
                if !busy {
                    do {
                        claimed = try await store.claimJob(owner: owner, leaseUntil: Date().addingTimeInterval(TimeInterval(lease.components.seconds)))
                    } catch {
                        logger.warning("could not claim a job", metadata: ["error": "\(String(reflecting: error))"])
                    }
                }
                guard let job = claimed else {
                    try? await cancelWhenGracefulShutdown { try await Task.sleep(for: pollInterval) }
                    continue
                }
                running.ids.withLock { _ = $0.insert(job.id) }
                group.addTask {
                    if let finishedJob = await perform(job), finishedJob.webhookURL != nil {
                        if case .dropped = finishedInput.yield(finishedJob) {
                            logger.error("webhook dropped: too many deliveries waiting", metadata: ["job": "\(job.id)"])
                        }
                    }
                    running.ids.withLock { _ = $0.remove(job.id) }
                }
            }
            // Stopping: the running jobs are cancelled and given back (another instance, or
            // this one's restart, runs them), rather than holding the stop for minutes.
            finishedInput.finish()
            group.cancelAll()
        }
    }

    /// Runs a job and stores its outcome; the finished job (for its webhook), or nil.
    private func perform(_ job: ImageJobRecord) async -> ImageJobRecord? {
        var logger = self.logger
        logger[metadataKey: "job"] = "\(job.id)"
        logger.info("image job started", metadata: ["attempt": "\(job.attempts)"])
        let outcome: Result<ByteBuffer, GatewayError>
        if job.attempts > Self.maxAttempts {
            outcome = .failure(.internal("The job was interrupted \(job.attempts - 1) times (its gateway stopped); submit it again."))
        } else {
            do {
                if job.attempts > 1 { try await refundInterruptedRun(job, logger: logger) }
                guard let key = try await store.key(id: job.keyID), key.revokedAt == nil, !key.disabled else {
                    throw GatewayError.unauthorized("The key that made this job was revoked or disabled before it ran.")
                }
                outcome = .success(try await execute(job, key))
            } catch {
                if Task.isCancelled {
                    // The gateway is stopping: the job goes back to the queue (from a task of its
                    // own: the database refuses work from a cancelled one).
                    let (store, owner) = (self.store, self.owner)
                    await Task { try? await store.requeueJob(id: job.id, owner: owner) }.value
                    logger.info("image job given back", metadata: ["reason": "the gateway is stopping"])
                    return nil
                }
                if let error = error as? GatewayError {
                    outcome = .failure(error)
                } else {
                    logger.error("image job failed unexpectedly", metadata: ["error": "\(String(reflecting: error))"])
                    outcome = .failure(.internal("The job failed unexpectedly; the error has been logged."))
                }
            }
        }
        let expires = Date().addingTimeInterval(TimeInterval(resultTTL.components.seconds))
        do {
            switch outcome {
            case .success(let answer):
                let name = try await images.save(Array(answer.readableBytesView), fileExtension: "json")
                try await store.finishJob(id: job.id, owner: owner, status: .succeeded, resultName: name, error: nil, expiresAt: expires)
            case .failure(let error):
                let body = String(decoding: (try? JSONEncoder().encode(ErrorResponse(error))) ?? Data(), as: UTF8.self)
                try await store.finishJob(id: job.id, owner: owner, status: .failed, resultName: nil, error: body, expiresAt: expires)
            }
        } catch {
            logger.error("could not store a job's outcome", metadata: ["error": "\(String(reflecting: error))"])
            return nil
        }
        logger.info("image job finished", metadata: ["status": "\(outcome.isSuccess ? "succeeded" : "failed")"])
        guard job.webhookURL != nil, let finished = try? await store.job(id: job.id, keyID: job.keyID) else { return nil }
        return await ImageJobs.withAnswer(finished, images: images)
    }

    /// A job taken over may have been charged by the gateway that died before storing its
    /// answer (the answer is lost with it): that charge is refunded (a ledger entry of its own),
    /// and the run now charges once.
    private func refundInterruptedRun(_ job: ImageJobRecord, logger: Logger) async throws {
        let unrefunded = try await store.unrefundedMicroUSD(jobID: job.id, keyID: job.keyID)
        guard unrefunded > 0 else { return }
        try await store.refund(Refund(keyID: job.keyID, jobID: job.id, amountMicroUSD: unrefunded, reason: "job_interrupted"))
        logger.warning("refunded an interrupted job's charge before running it again", metadata: ["micro_usd": "\(unrefunded)"])
    }
}

/// The ids of the jobs running in this instance.
final class RunningJobs: Sendable {
    let ids = Mutex(Set<String>())
}

extension Result {
    var isSuccess: Bool { if case .success = self { true } else { false } }
}
