public import Foundation
import SQLKit

/// An image generation or edit the client asked to run in the background (`Prefer:
/// respond-async`): the request as it came, its state, and its answer once done. Stored in the
/// database, so a job survives a restart and any instance may run it or answer for it.
public struct ImageJobRecord: Sendable, Equatable {
    public enum Status: String, Sendable, Codable {
        case queued, running, succeeded, failed, cancelled
    }

    public var id: String
    public var keyID: String
    /// `images.generations` or `images.edits`.
    public var endpoint: String
    public var model: String
    public var contentType: String
    /// The request body as sent (replayed by whichever instance runs the job).
    public var body: [UInt8]
    /// The base of image URLs, from the submitting request.
    public var baseURL: String
    public var status: Status
    /// The images answer (JSON), once succeeded: kept in the row by earlier versions; now in
    /// the image store, named by `resultName`.
    public var result: String?
    /// The answer's name in the image store.
    public var resultName: String?
    /// OpenAI's error object (JSON), once failed.
    public var error: String?
    public var webhookURL: String?
    public var webhookSecret: String?
    /// Times a gateway started running it (more than one: an instance died while it ran).
    public var attempts: Int
    public var createdAt: Date
    public var completedAt: Date?
    /// When the answer is forgotten (like the image URLs in it).
    public var expiresAt: Date?

    public init(
        id: String, keyID: String, endpoint: String, model: String, contentType: String, body: [UInt8], baseURL: String,
        webhookURL: String? = nil, webhookSecret: String? = nil, createdAt: Date = Date()
    ) {
        self.id = id
        self.keyID = keyID
        self.endpoint = endpoint
        self.model = model
        self.contentType = contentType
        self.body = body
        self.baseURL = baseURL
        self.status = .queued
        self.webhookURL = webhookURL
        self.webhookSecret = webhookSecret
        self.attempts = 0
        self.createdAt = createdAt
    }
}

extension SQLStore {
    /// Version 7: background image jobs.
    static func createJobsTable(_ database: any SQLDatabase) async throws {
        try await database.raw("""
            CREATE TABLE IF NOT EXISTS image_jobs (
                id TEXT PRIMARY KEY,
                key_id TEXT NOT NULL,
                endpoint TEXT NOT NULL,
                model TEXT NOT NULL,
                content_type TEXT NOT NULL,
                body TEXT NOT NULL,
                base_url TEXT NOT NULL,
                status TEXT NOT NULL,
                result TEXT,
                error TEXT,
                webhook_url TEXT,
                webhook_secret TEXT,
                owner TEXT,
                lease_until BIGINT,
                attempts INTEGER NOT NULL DEFAULT 0,
                created_at BIGINT NOT NULL,
                completed_at BIGINT,
                expires_at BIGINT
            )
            """).run()
        try await database.raw("CREATE INDEX IF NOT EXISTS image_jobs_key ON image_jobs (key_id, created_at)").run()
        try await database.raw("CREATE INDEX IF NOT EXISTS image_jobs_status ON image_jobs (status, created_at)").run()
    }

    static let jobColumns: SQLQueryString = """
        SELECT id, key_id, endpoint, model, content_type, body, base_url, status, result, result_name, error, webhook_url, webhook_secret,
               attempts, created_at, completed_at, expires_at
        FROM image_jobs
        """

    struct JobRow: Decodable {
        var id: String
        var key_id: String
        var endpoint: String
        var model: String
        var content_type: String
        var body: String
        var base_url: String
        var status: String
        var result: String?
        var result_name: String?
        var error: String?
        var webhook_url: String?
        var webhook_secret: String?
        var attempts: Int
        var created_at: Int64
        var completed_at: Int64?
        var expires_at: Int64?

        var record: ImageJobRecord {
            var job = ImageJobRecord(
                id: id, keyID: key_id, endpoint: endpoint, model: model, contentType: content_type,
                body: Array(Data(base64Encoded: body) ?? Data()), baseURL: base_url, webhookURL: webhook_url, webhookSecret: webhook_secret,
                createdAt: Date(timeIntervalSince1970: TimeInterval(created_at) / 1000)
            )
            job.status = ImageJobRecord.Status(rawValue: status) ?? .failed
            job.result = result
            job.resultName = result_name
            job.error = error
            job.attempts = attempts
            job.completedAt = completed_at.map { Date(timeIntervalSince1970: TimeInterval($0) / 1000) }
            job.expiresAt = expires_at.map { Date(timeIntervalSince1970: TimeInterval($0) / 1000) }
            return job
        }
    }

    static func millis(_ date: Date) -> Int64 { Int64(date.timeIntervalSince1970 * 1000) }

    public func createJob(_ job: ImageJobRecord) async throws {
        try await database.raw("""
            INSERT INTO image_jobs (id, key_id, endpoint, model, content_type, body, base_url, status, webhook_url, webhook_secret, attempts, created_at)
            VALUES (\(bind: job.id), \(bind: job.keyID), \(bind: job.endpoint), \(bind: job.model), \(bind: job.contentType),
                    \(bind: Data(job.body).base64EncodedString()), \(bind: job.baseURL), 'queued', \(bind: job.webhookURL), \(bind: job.webhookSecret),
                    0, \(bind: Self.millis(job.createdAt)))
            """).run()
    }

    /// The job, if `keyID` made it (another key's job does not exist for it).
    public func job(id: String, keyID: String) async throws -> ImageJobRecord? {
        try await database.raw("\(Self.jobColumns) WHERE id = \(bind: id) AND key_id = \(bind: keyID)").first(decoding: JobRow.self)?.record
    }

    /// The key's jobs, newest first, without their request bodies or answers (a list names
    /// jobs; each answer is read at its own URL).
    public func jobs(keyID: String?, limit: Int) async throws -> [ImageJobRecord] {
        let owned: SQLQueryString = keyID.map { "WHERE key_id = \(bind: $0)" } ?? ""
        return try await database.raw("""
            SELECT id, key_id, endpoint, model, content_type, '' AS body, base_url, status, NULL AS result, NULL AS result_name, error, webhook_url, NULL AS webhook_secret,
                   attempts, created_at, completed_at, expires_at
            FROM image_jobs \(owned) ORDER BY created_at DESC, id LIMIT \(bind: max(1, min(limit, 1000)))
            """).all(decoding: JobRow.self).map(\.record)
    }

    /// How many of the key's jobs wait or run (its queue is capped).
    public func pendingJobs(keyID: String) async throws -> Int {
        struct Row: Decodable { var count: Int64 }
        return try await Int(database.raw("SELECT COUNT(*) AS count FROM image_jobs WHERE key_id = \(bind: keyID) AND status IN ('queued', 'running')")
            .first(decoding: Row.self)?.count ?? 0)
    }

    /// Cancels the job if it is still queued (one statement: a runner claiming it at the same
    /// moment gets it or the cancel does, never both).
    public func cancelJob(id: String, keyID: String, now: Date = Date()) async throws -> Bool {
        try await !database.raw("""
            UPDATE image_jobs SET status = 'cancelled', completed_at = \(bind: Self.millis(now)), body = ''
            WHERE id = \(bind: id) AND key_id = \(bind: keyID) AND status = 'queued' RETURNING id
            """).all().isEmpty
    }

    /// Takes a job that is queued, or running under a lease that ran out (its gateway died), for
    /// `owner` until `leaseUntil`: from the keys running the fewest jobs now, the one served
    /// longest ago (keys take turns), its oldest job; so one key's long queue never holds back
    /// another key's job. The condition is checked again by
    /// the UPDATE itself, so two instances claiming at once never both get the job.
    public func claimJob(owner: String, leaseUntil: Date, now: Date = Date()) async throws -> ImageJobRecord? {
        let nowMillis = Self.millis(now)
        let claimable: SQLQueryString = "(status = 'queued' OR (status = 'running' AND lease_until < \(bind: nowMillis)))"
        guard let id = try await database.raw("""
            UPDATE image_jobs SET status = 'running', owner = \(bind: owner), lease_until = \(bind: Self.millis(leaseUntil)), attempts = attempts + 1
            WHERE id = (
                SELECT id FROM image_jobs AS j WHERE \(claimable)
                ORDER BY (SELECT COUNT(*) FROM image_jobs AS r WHERE r.key_id = j.key_id AND r.status = 'running' AND r.lease_until >= \(bind: nowMillis)),
                         COALESCE((SELECT MAX(r.completed_at) FROM image_jobs AS r WHERE r.key_id = j.key_id), 0), created_at
                LIMIT 1
            ) AND \(claimable)
            RETURNING id
            """).first(decoding: IDRow.self)?.id
        else { return nil }
        return try await database.raw("\(Self.jobColumns) WHERE id = \(bind: id)").first(decoding: JobRow.self)?.record
    }

    private struct IDRow: Decodable { var id: String }

    /// Extends the leases of the jobs this instance is running.
    public func renewJobLeases(ids: [String], owner: String, until: Date) async throws {
        guard !ids.isEmpty else { return }
        try await database.raw("""
            UPDATE image_jobs SET lease_until = \(bind: Self.millis(until)) WHERE id IN (\(binds: ids)) AND owner = \(bind: owner) AND status = 'running'
            """).run()
    }

    /// Gives a running job back to the queue (its gateway is stopping).
    public func requeueJob(id: String, owner: String) async throws {
        try await database.raw("""
            UPDATE image_jobs SET status = 'queued', owner = NULL, lease_until = NULL WHERE id = \(bind: id) AND owner = \(bind: owner) AND status = 'running'
            """).run()
    }

    /// Records the outcome, if `owner` still holds the job (a gateway that lost its lease
    /// cannot overwrite the answer of the one that took over). The request body is dropped.
    @discardableResult
    public func finishJob(
        id: String, owner: String, status: ImageJobRecord.Status, resultName: String?, error: String?, expiresAt: Date, now: Date = Date()
    ) async throws -> Bool {
        try await !database.raw("""
            UPDATE image_jobs SET status = \(bind: status.rawValue), result = NULL, result_name = \(bind: resultName), error = \(bind: error), body = '',
                completed_at = \(bind: Self.millis(now)), expires_at = \(bind: Self.millis(expiresAt)), lease_until = NULL
            WHERE id = \(bind: id) AND owner = \(bind: owner) AND status = 'running' RETURNING id
            """).all().isEmpty
    }

    /// Forgets finished jobs whose answers expired; returns how many.
    public func pruneJobs(now: Date = Date()) async throws -> Int {
        try await database.raw("DELETE FROM image_jobs WHERE expires_at IS NOT NULL AND expires_at < \(bind: Self.millis(now)) RETURNING id").all().count
    }
}
