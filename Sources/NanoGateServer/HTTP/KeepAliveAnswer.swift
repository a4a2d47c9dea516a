import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NanoGateCore
import NIOCore
import NIOFoundationCompat

/// `Prefer: keep-alive` on a non-streamed request: for clients behind proxies that cut a
/// connection silent for ~100 s (Cloudflare's 524) while a 4K image takes longer. The status
/// line and headers go out at once, then one space every few seconds until the JSON body, which
/// every JSON parser reads past (RFC 8259 allows whitespace before a value).
///
/// The trade-off: the status is 200 before the outcome is known, so a failure arrives as a 200
/// whose body is OpenAI's `{"error": …}` (`Preference-Applied: keep-alive` says the answer was
/// sent this way). The OpenAI SDKs raise only on a status ≥ 400, so a client opting in checks the
/// body for `error`; clients that never send the header are unaffected.
enum KeepAliveAnswer {
    static let preferenceApplied = HTTPField.Name("Preference-Applied")!

    /// The interval the client asked for: `Prefer: keep-alive` (the gateway's interval) or
    /// `Prefer: keep-alive=N` (every N seconds, 1 to 60); nil without the preference.
    static func requested(_ request: Request, defaultInterval: Duration) -> Duration? {
        for field in request.headers[values: .init("Prefer")!] {
            for preference in field.split(separator: ",") {
                let parts = preference.split(separator: ";")[0].split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
                guard parts.first?.lowercased() == "keep-alive" else { continue }
                if parts.count == 2, let seconds = Int(parts[1].trimmingCharacters(in: CharacterSet(charactersIn: "\""))) {
                    return .seconds(min(60, max(1, seconds)))
                }
                return defaultInterval
            }
        }
        return nil
    }

    /// A 200 whose body is spaces every `interval`, then what `produce` made (or its error as
    /// OpenAI's error JSON). When the client goes away the work is cancelled, unless
    /// `survivesDisconnect` (an `Idempotency-Key`: the result is stored for the retry).
    static func response(
        interval: Duration, survivesDisconnect: Bool, headers extra: HTTPFields = [:], logger: Logger,
        produce: @escaping @Sendable () async throws -> [ByteBuffer]
    ) -> Response {
        var headers: HTTPFields = [.contentType: "application/json", preferenceApplied: "keep-alive", .cacheControl: "no-store"]
        headers.append(contentsOf: extra)
        return Response(status: .ok, headers: headers, body: ResponseBody { writer in
            // Not a child task: with an Idempotency-Key the work outlives a client that left.
            let work = Task { () -> [ByteBuffer] in
                do {
                    return try await produce()
                } catch let error as GatewayError {
                    return [ByteBuffer(data: (try? JSONEncoder().encode(ErrorResponse(error))) ?? Data())]
                } catch {
                    logger.error("unexpected error", metadata: ["error": "\(String(reflecting: error))"])
                    return [ByteBuffer(data: (try? JSONEncoder().encode(ErrorResponse(.internal("The gateway failed unexpectedly; the error has been logged.")))) ?? Data())]
                }
            }
            do {
                let body = try await Heartbeat.wait(for: work, every: interval) { try await writer.write(Heartbeat.space) }
                for buffer in body { try await writer.write(buffer) }
                try await writer.finish(nil)
            } catch {
                // The client went away (a write failed).
                if !survivesDisconnect { work.cancel() }
                throw error
            }
        })
    }
}
