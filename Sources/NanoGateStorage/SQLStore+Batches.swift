public import Foundation
import SQLKit

/// A file of OpenAI's Files API: a batch's input (`purpose` `batch`) or its output
/// (`batch_output`), kept in the database so every instance serves it.
public struct StoredFile: Sendable, Equatable {
    public var id: String
    public var keyID: String
    public var purpose: String
    public var filename: String
    /// The bytes, when the row holds them (files of earlier versions); empty when `objectName` names them.
    public var content: [UInt8]
    /// The content's name in the file store (nil: in the row).
    public var objectName: String?
    public var bytes: Int
    public var createdAt: Date
    public var expiresAt: Date?

    public init(
        id: String, keyID: String, purpose: String, filename: String, content: [UInt8] = [], objectName: String? = nil, bytes: Int? = nil,
        createdAt: Date = Date(), expiresAt: Date? = nil
    ) {
        self.id = id
        self.keyID = keyID
        self.purpose = purpose
        self.filename = filename
        self.content = content
        self.objectName = objectName
        self.bytes = bytes ?? content.count
        self.createdAt = createdAt
        self.expiresAt = expiresAt
    }
}

/// Where a batch is (OpenAI's Batch object's `status` values that NanoGate uses).
public enum BatchStatus: String, Sendable, Codable {
    case validating
    case inProgress = "in_progress"
    /// Google answered; one instance is delivering the lines.
    case finalizing
    /// Cancelled (by its key, or at its window's end): Google was asked to stop, and what it
    /// answered before it stopped is still to be delivered and charged.
    case cancelling
    case completed
    case failed
    case expired
    case cancelled
}

/// A batch of OpenAI's Batch API, run as one of Google's batches at half price.
public struct BatchRecord: Sendable, Equatable {
    public var id: String
    public var keyID: String
    /// `/v1/images/generations` or `/v1/images/edits`.
    public var endpoint: String
    public var model: String
    public var inputFileID: String
    /// OpenAI's states: `validating`, `in_progress`, `finalizing`, `completed`, `failed`, `expired`, `cancelled`.
    public var status: BatchStatus
    /// Where Google keeps it (JSON of the upstream handle), once submitted.
    public var upstream: String?
    public var outputFileID: String?
    public var errorFileID: String?
    public var total: Int
    public var completed: Int
    public var failed: Int
    public var reservationID: String?
    /// OpenAI's `errors` object (JSON), when the batch failed as a whole.
    public var errors: String?
    public var metadata: String?
    /// The base of image URLs, from the submitting request.
    public var baseURL = ""
    /// Every line's delivery plan (JSON), fixed at submission.
    public var linePlans: String?
    public var createdAt: Date
    public var inProgressAt: Date?
    public var completedAt: Date?
    public var expiresAt: Date

    public init(id: String, keyID: String, endpoint: String, model: String, inputFileID: String, total: Int, reservationID: String?, metadata: String?, createdAt: Date = Date()) {
        self.id = id
        self.keyID = keyID
        self.endpoint = endpoint
        self.model = model
        self.inputFileID = inputFileID
        self.status = .validating
        self.total = total
        self.completed = 0
        self.failed = 0
        self.reservationID = reservationID
        self.metadata = metadata
        self.createdAt = createdAt
        self.expiresAt = createdAt.addingTimeInterval(24 * 3600)
    }
}

extension SQLStore {
    /// Version 8: OpenAI's Files and Batch APIs.
    static func createBatchTables(_ database: any SQLDatabase) async throws {
        try await database.raw("""
            CREATE TABLE IF NOT EXISTS api_files (
                id TEXT PRIMARY KEY,
                key_id TEXT NOT NULL,
                purpose TEXT NOT NULL,
                filename TEXT NOT NULL,
                bytes BIGINT NOT NULL,
                content TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                expires_at BIGINT
            )
            """).run()
        try await database.raw("""
            CREATE TABLE IF NOT EXISTS batches (
                id TEXT PRIMARY KEY,
                key_id TEXT NOT NULL,
                endpoint TEXT NOT NULL,
                model TEXT NOT NULL,
                input_file_id TEXT NOT NULL,
                status TEXT NOT NULL,
                upstream TEXT,
                output_file_id TEXT,
                error_file_id TEXT,
                total INTEGER NOT NULL,
                completed INTEGER NOT NULL DEFAULT 0,
                failed INTEGER NOT NULL DEFAULT 0,
                reservation_id TEXT,
                errors TEXT,
                metadata TEXT,
                base_url TEXT NOT NULL DEFAULT '',
                owner TEXT,
                lease_until BIGINT,
                created_at BIGINT NOT NULL,
                in_progress_at BIGINT,
                completed_at BIGINT,
                expires_at BIGINT NOT NULL
            )
            """).run()
        try await database.raw("CREATE INDEX IF NOT EXISTS batches_status ON batches (status)").run()
    }

    /// Records a file whose content is in the file store under `file.objectName` (the row
    /// holds its name and size only).
    public func storeFile(_ file: StoredFile) async throws {
        try await database.raw("""
            INSERT INTO api_files (id, key_id, purpose, filename, bytes, content, data, object_name, created_at, expires_at)
            VALUES (\(bind: file.id), \(bind: file.keyID), \(bind: file.purpose), \(bind: file.filename), \(bind: Int64(file.bytes)),
                    '', \(bind: file.objectName == nil ? Data(file.content) : nil), \(bind: file.objectName), \(bind: Self.millis(file.createdAt)),
                    \(bind: file.expiresAt.map(Self.millis)))
            """).run()
    }

    private struct FileRow: Decodable {
        var id: String
        var key_id: String
        var purpose: String
        var filename: String
        var bytes: Int64
        var content: String?
        var data: Data?
        var object_name: String?
        var created_at: Int64
        var expires_at: Int64?

        func file(content bytes: [UInt8]) -> StoredFile {
            StoredFile(
                id: id, keyID: key_id, purpose: purpose, filename: filename, content: bytes, objectName: object_name, bytes: Int(self.bytes),
                createdAt: Date(timeIntervalSince1970: TimeInterval(created_at) / 1000),
                expiresAt: expires_at.map { Date(timeIntervalSince1970: TimeInterval($0) / 1000) }
            )
        }
    }

    /// A file's description without its content.
    public struct FileInfo: Sendable, Equatable {
        public var file: StoredFile
        public var bytes: Int
    }

    private func unexpired(_ now: Date) -> SQLQueryString {
        "(expires_at IS NULL OR expires_at >= \(bind: Self.millis(now)))"
    }

    /// The file, if `keyID` owns it and it has not expired.
    public func file(id: String, keyID: String, now: Date = Date()) async throws -> StoredFile? {
        guard let row = try await database.raw("""
            SELECT id, key_id, purpose, filename, bytes, content, data, object_name, created_at, expires_at FROM api_files
            WHERE id = \(bind: id) AND key_id = \(bind: keyID) AND \(unexpired(now))
            """).first(decoding: FileRow.self)
        else { return nil }
        let bytes = row.data.map { Array($0) } ?? Array(Data(base64Encoded: row.content ?? "") ?? Data())
        return row.file(content: bytes)
    }

    /// The file's description (its size from the row, its content not read), if `keyID` owns it and it has not expired.
    public func fileInfo(id: String, keyID: String, now: Date = Date()) async throws -> FileInfo? {
        guard let row = try await database.raw("""
            SELECT id, key_id, purpose, filename, bytes, NULL AS content, NULL AS data, object_name, created_at, expires_at FROM api_files
            WHERE id = \(bind: id) AND key_id = \(bind: keyID) AND \(unexpired(now))
            """).first(decoding: FileRow.self)
        else { return nil }
        return FileInfo(file: row.file(content: []), bytes: Int(row.bytes))
    }

    /// The bytes of the key's files that have not expired (its upload quota counts them).
    public func fileBytes(keyID: String, now: Date = Date()) async throws -> Int {
        struct Row: Decodable { var total: Int64? }
        return try await Int(database.raw("SELECT CAST(SUM(bytes) AS BIGINT) AS total FROM api_files WHERE key_id = \(bind: keyID) AND \(unexpired(now))")
            .first(decoding: Row.self)?.total ?? 0)
    }

    /// Deletes expired files; returns how many.
    public func pruneFiles(now: Date = Date()) async throws -> Int {
        try await database.raw("DELETE FROM api_files WHERE expires_at IS NOT NULL AND expires_at < \(bind: Self.millis(now)) RETURNING id").all().count
    }

    private struct BatchRow: Decodable {
        var id: String
        var key_id: String
        var endpoint: String
        var model: String
        var input_file_id: String
        var status: String
        var upstream: String?
        var output_file_id: String?
        var error_file_id: String?
        var total: Int
        var completed: Int
        var failed: Int
        var reservation_id: String?
        var errors: String?
        var metadata: String?
        var base_url: String
        var line_plans: String?
        var created_at: Int64
        var in_progress_at: Int64?
        var completed_at: Int64?
        var expires_at: Int64

        var record: BatchRecord {
            func date(_ millis: Int64) -> Date { Date(timeIntervalSince1970: TimeInterval(millis) / 1000) }
            var batch = BatchRecord(
                id: id, keyID: key_id, endpoint: endpoint, model: model, inputFileID: input_file_id, total: total, reservationID: reservation_id,
                metadata: metadata, createdAt: date(created_at)
            )
            batch.status = BatchStatus(rawValue: status) ?? .failed
            batch.baseURL = base_url
            batch.linePlans = line_plans
            batch.upstream = upstream
            batch.outputFileID = output_file_id
            batch.errorFileID = error_file_id
            batch.completed = completed
            batch.failed = failed
            batch.errors = errors
            batch.inProgressAt = in_progress_at.map(date)
            batch.completedAt = completed_at.map(date)
            batch.expiresAt = date(expires_at)
            return batch
        }
    }

    static let batchColumns: SQLQueryString = """
        SELECT id, key_id, endpoint, model, input_file_id, status, upstream, output_file_id, error_file_id, total, completed, failed,
               reservation_id, errors, metadata, base_url, line_plans, created_at, in_progress_at, completed_at, expires_at
        FROM batches
        """

    public func createBatch(_ batch: BatchRecord) async throws {
        try await database.raw("""
            INSERT INTO batches (id, key_id, endpoint, model, input_file_id, status, upstream, total, reservation_id, metadata, base_url, line_plans, created_at, in_progress_at, expires_at)
            VALUES (\(bind: batch.id), \(bind: batch.keyID), \(bind: batch.endpoint), \(bind: batch.model), \(bind: batch.inputFileID), \(bind: batch.status.rawValue),
                    \(bind: batch.upstream), \(bind: batch.total), \(bind: batch.reservationID), \(bind: batch.metadata), \(bind: batch.baseURL), \(bind: batch.linePlans), \(bind: Self.millis(batch.createdAt)),
                    \(bind: batch.inProgressAt.map(Self.millis)), \(bind: Self.millis(batch.expiresAt)))
            """).run()
    }

    /// The batch, if `keyID` made it.
    public func batch(id: String, keyID: String) async throws -> BatchRecord? {
        try await database.raw("\(Self.batchColumns) WHERE id = \(bind: id) AND key_id = \(bind: keyID)").first(decoding: BatchRow.self)?.record
    }

    /// Takes the next submitted batch due for a poll (none other instance polls it until the lease ends).
    public func claimBatchForPoll(owner: String, leaseUntil: Date, now: Date = Date()) async throws -> BatchRecord? {
        let nowMillis = Self.millis(now)
        // Submitted batches when due, and deliveries whose instance died (their lease ran out).
        let due: SQLQueryString = "((status IN ('in_progress', 'cancelling') AND (lease_until IS NULL OR lease_until < \(bind: nowMillis))) OR (status = 'finalizing' AND lease_until < \(bind: nowMillis)))"
        struct IDRow: Decodable { var id: String }
        guard let id = try await database.raw("""
            UPDATE batches SET owner = \(bind: owner), lease_until = \(bind: Self.millis(leaseUntil))
            WHERE id = (SELECT id FROM batches WHERE \(due) ORDER BY lease_until, created_at LIMIT 1) AND \(due)
            RETURNING id
            """).first(decoding: IDRow.self)?.id
        else { return nil }
        return try await database.raw("\(Self.batchColumns) WHERE id = \(bind: id)").first(decoding: BatchRow.self)?.record
    }

    /// Moves a batch Google has finished from `in_progress` (or `cancelling`) to `finalizing` for `owner`, who
    /// then delivers it (one statement: a cancel, or another instance, racing it finds it
    /// taken). True when `owner` holds it now.
    public func beginDelivery(id: String, owner: String, leaseUntil: Date) async throws -> Bool {
        struct IDRow: Decodable { var id: String }
        return try await database.raw("""
            UPDATE batches SET status = 'finalizing', owner = \(bind: owner), lease_until = \(bind: Self.millis(leaseUntil))
            WHERE id = \(bind: id) AND (status IN ('in_progress', 'cancelling') OR (status = 'finalizing' AND owner = \(bind: owner)))
            RETURNING id
            """).first(decoding: IDRow.self) != nil
    }

    /// Leaves a batch that is not done yet for the next poll, after `until`.
    public func delayBatchPoll(id: String, owner: String, until: Date) async throws {
        try await database.raw("UPDATE batches SET lease_until = \(bind: Self.millis(until)) WHERE id = \(bind: id) AND owner = \(bind: owner)").run()
    }

    /// Records a finished batch (if `owner` still holds it).
    public func finishBatch(
        id: String, owner: String, status: BatchStatus, completed: Int, failed: Int, outputFileID: String?, errorFileID: String?, errors: String?, now: Date = Date()
    ) async throws {
        try await database.raw("""
            UPDATE batches SET status = \(bind: status.rawValue), completed = \(bind: completed), failed = \(bind: failed), output_file_id = \(bind: outputFileID),
                error_file_id = \(bind: errorFileID), errors = \(bind: errors), completed_at = \(bind: Self.millis(now)), lease_until = NULL
            WHERE id = \(bind: id) AND owner = \(bind: owner) AND status IN ('in_progress', 'cancelling', 'finalizing')
            """).run()
    }

    /// The key's batches, newest first.
    public func batches(keyID: String?, limit: Int) async throws -> [BatchRecord] {
        let owned: SQLQueryString = keyID.map { "WHERE key_id = \(bind: $0)" } ?? ""
        return try await database.raw("\(Self.batchColumns) \(owned) ORDER BY created_at DESC, id LIMIT \(bind: max(1, min(limit, 100)))")
            .all(decoding: BatchRow.self).map(\.record)
    }

    /// Marks a running batch `cancelling` (its key's cancel, or its window's end), due for the
    /// next poll at once, which delivers what Google answered before it stopped. `keyID` nil:
    /// the gateway's own decision. True when the batch was running.
    public func markCancelling(id: String, keyID: String?) async throws -> Bool {
        let owned: SQLQueryString = keyID.map { "AND key_id = \(bind: $0)" } ?? ""
        return try await !database.raw("""
            UPDATE batches SET status = 'cancelling', lease_until = NULL
            WHERE id = \(bind: id) \(owned) AND status = 'in_progress' RETURNING id
            """).all().isEmpty
    }

    /// Cancels the batch if it is still running (one statement: the poller delivering it at the
    /// same moment either finishes first or finds it cancelled).
    public func cancelBatch(id: String, keyID: String, now: Date = Date()) async throws -> Bool {
        try await !database.raw("""
            UPDATE batches SET status = 'cancelled', completed_at = \(bind: Self.millis(now)), lease_until = NULL
            WHERE id = \(bind: id) AND key_id = \(bind: keyID) AND status = 'in_progress' RETURNING id
            """).all().isEmpty
    }
}
