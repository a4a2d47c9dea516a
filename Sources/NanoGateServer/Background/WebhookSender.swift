import AsyncHTTPClient
import Crypto
import Foundation
import Logging
import NanoGateCore
import NanoGateStorage
import NIOCore
import NIOHTTP1

/// Where webhooks may go: the image-fetch policy (no loopback, private or reserved address
/// unless `NANOGATE_ALLOW_PRIVATE_FETCH` or an allowed network; `https` unless plain HTTP is
/// allowed).
struct WebhookPolicy: Sendable {
    let limits: InputLimits

    func checkSyntax(_ url: String) throws(GatewayError) {
        let allowed = limits.allowPlainHTTP ? ["https", "http"] : ["https"]
        guard let components = URLComponents(string: url), let scheme = components.scheme?.lowercased(), allowed.contains(scheme),
            let host = components.host, !host.isEmpty, url.utf8.count <= 2048
        else {
            throw .invalidParameter("webhook_url", "'webhook_url' must be an \(limits.allowPlainHTTP ? "http(s)" : "https") URL.", code: "invalid_webhook_url")
        }
    }
}

/// Delivers a finished job to its `webhook_url`: a POST of the job (as `GET` shows it) with
///
///     NanoGate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(webhook_secret, "<t>.<body>")>
///
/// (the scheme Stripe uses: the timestamp is signed, so a receiver can refuse old replays).
/// Retried with backoff (1, 2, 4, 8 s) until a 2xx, each attempt within 10 s and all of them
/// within 45 s; the target is checked like an image fetch.
struct WebhookSender: Sendable {
    let policy: WebhookPolicy
    let resolver: ThreadPoolResolver
    let attempts = 5
    /// The most one attempt may take, from the address look-up to the answer's last byte (a
    /// receiver that trickles its answer is cut off, not waited on).
    var attemptDeadline: Duration = .seconds(10)
    /// The most one webhook may take, its attempts and the waits between them included: one
    /// delivery holds one of the sender's few slots for no longer than this.
    var totalDeadline: Duration = .seconds(45)

    static let signatureHeader = "NanoGate-Signature"

    static func signature(secret: String, timestamp: Int, body: [UInt8]) -> String {
        let mac = HMAC<SHA256>.authenticationCode(for: Array("\(timestamp).".utf8) + body, using: SymmetricKey(data: Array(secret.utf8)))
        return "t=\(timestamp),v1=" + mac.lowercaseHex
    }

    func deliver(_ job: ImageJobRecord, logger: Logger) async {
        guard let url = job.webhookURL, let secret = job.webhookSecret,
            let body = try? ImageJobs.JobView(job).encoded()
        else { return }
        let bytes = Array(body.readableBytesView)
        let end = ContinuousClock.now.advanced(by: totalDeadline)
        for attempt in 1...attempts {
            if attempt > 1 {
                let pause = Duration.seconds(1 << (attempt - 2))
                guard ContinuousClock.now.advanced(by: pause) < end else { break }
                try? await Task.sleep(for: pause)
            }
            do {
                let attemptEnd = min(ContinuousClock.now.advanced(by: attemptDeadline), end)
                let status = try await Deadline.run(until: attemptEnd, orThrow: GatewayError.requestTimeout("The webhook took longer than \(attemptDeadline).")) {
                    try await post(url: url, body: bytes, secret: secret, jobID: job.id)
                }
                if (200..<300).contains(status) {
                    logger.info("webhook delivered", metadata: ["status": "\(status)", "attempt": "\(attempt)"])
                    return
                }
                logger.warning("webhook refused", metadata: ["status": "\(status)", "attempt": "\(attempt)"])
            } catch let error as GatewayError where Self.isRefusedTarget(error) {
                // The address policy or the URL itself: no later attempt would be allowed either.
                logger.error("webhook not sent: its target is not allowed", metadata: ["error": "\(error.message)"])
                return
            } catch {
                logger.warning("webhook failed", metadata: ["error": "\(error)", "attempt": "\(attempt)"])
            }
        }
        logger.error("webhook given up", metadata: ["attempts": "\(attempts)", "deadline": "\(totalDeadline)"])
    }

    /// A refusal that no retry changes: a loopback, private or reserved address (without the
    /// operator's leave), or a URL that is not one.
    static func isRefusedTarget(_ error: GatewayError) -> Bool {
        error.code == "forbidden_url" || error.code == "invalid_webhook_url"
    }

    private func post(url: String, body: [UInt8], secret: String, jobID: String) async throws -> Int {
        try policy.checkSyntax(url)
        guard let components = URLComponents(string: url), let rawHost = components.host else { throw GatewayError.invalidParameter("webhook_url", "bad URL") }
        let host = rawHost.hasPrefix("[") && rawHost.hasSuffix("]") ? String(rawHost.dropFirst().dropLast()) : rawHost
        let address = try await resolver.checkedAddress(of: host, limits: policy.limits, param: "webhook_url")
        var configuration = HTTPClient.Configuration()
        configuration.redirectConfiguration = .disallow
        configuration.timeout = .init(connect: .seconds(10), read: .seconds(30))
        configuration.dnsOverride = [host: AddressPolicy.text(address)]
        configuration.connectionPool.retryConnectionEstablishment = false
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        var request = HTTPClientRequest(url: url)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "User-Agent", value: "NanoGate-Webhook")
        request.headers.add(name: "NanoGate-Webhook-Id", value: jobID)
        request.headers.add(name: Self.signatureHeader, value: Self.signature(secret: secret, timestamp: Int(Date().timeIntervalSince1970), body: body))
        request.body = .bytes(ByteBuffer(bytes: body))
        let status: Result<Int, any Error>
        do {
            let response = try await client.execute(request, timeout: .seconds(30))
            _ = try? await response.body.collect(upTo: 64 * 1024)
            status = .success(Int(response.status.code))
        } catch {
            status = .failure(error)
        }
        try? await client.shutdown()
        return try status.get()
    }
}
