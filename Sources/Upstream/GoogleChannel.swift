import AsyncHTTPClient
import Foundation
import Logging
import NanoGateCore
import NIOCore
import NIOHTTP1
import NIOFoundationCompat

/// Google's own APIs, which share Gemini's body format and differ in URL and credential:
/// the Gemini API (`x-goog-api-key`), Vertex AI express mode (an API key, no project) and
/// Vertex AI with a service account (a bearer token; `role` on every content).
struct GoogleChannel: UpstreamChannel {
    let configuration: ChannelConfiguration
    /// The clients calls go through (`LoopPinnedClients.current`: the calling loop's own).
    let clients: LoopPinnedClients
    var httpClient: HTTPClient { clients.current }
    let maxResponseBytes: Int
    /// Vertex with a service account: the cached OAuth2 token.
    let tokens: AccessTokenProvider?
    let redact: @Sendable (String) -> String

    init(configuration: ChannelConfiguration, httpClient: HTTPClient, maxResponseBytes: Int, tokens: AccessTokenProvider?) {
        self.init(configuration: configuration, clients: LoopPinnedClients(single: httpClient), maxResponseBytes: maxResponseBytes, tokens: tokens)
    }

    init(configuration: ChannelConfiguration, clients: LoopPinnedClients, maxResponseBytes: Int, tokens: AccessTokenProvider?) {
        self.configuration = configuration
        self.clients = clients
        self.maxResponseBytes = maxResponseBytes
        self.tokens = tokens
        self.redact = redactor(secrets: configuration.apiKeys)
    }

    var credentialCount: Int { configuration.kind == .vertex ? 1 : configuration.apiKeys.count }
    var provider: UpstreamError.Provider { .google }
    /// Google's Batch API is the Gemini API's (Vertex batch prediction is not used).
    var batchChannel: GoogleChannel? { configuration.kind == .gemini ? self : nil }

    /// Where `model`'s `action` lives for this kind.
    func url(model: String, action: String) -> String {
        switch configuration.kind {
        case .vertex:
            let location = configuration.location ?? "global"
            let host = location == "global" ? "https://aiplatform.googleapis.com" : "https://\(location)-aiplatform.googleapis.com"
            let project = configuration.project ?? tokens?.projectID ?? ""
            return "\(base(or: host))/v1/projects/\(project)/locations/\(location)/publishers/google/models/\(model):\(action)"
        case .vertexExpress:
            return "\(base(or: "https://aiplatform.googleapis.com"))/v1/publishers/google/models/\(model):\(action)"
        case .gemini, .openai:
            return "\(base(or: "https://generativelanguage.googleapis.com"))/v1beta/models/\(model):\(action)"
        }
    }

    private func base(or standard: String) -> String {
        let base = configuration.baseURL ?? standard
        return base.hasSuffix("/") ? String(base.dropLast()) : base
    }

    /// Vertex refuses a content without `role` (the Gemini API tolerates a lone user turn).
    static func withRoles(_ request: GeminiWire.Request) -> GeminiWire.Request {
        var request = request
        for index in request.contents.indices where request.contents[index].role == nil {
            request.contents[index].role = "user"
        }
        return request
    }

    func generate(model: String, request: GeminiWire.Request, body: ByteBuffer, credential: Int, timeout: Duration, logger: Logger) async -> Result<GeminiWire.Response, ChannelFailure> {
        let limit = maxResponseBytes
        let redact = self.redact
        switch await send(model: model, action: "generateContent", request: request, body: body, credential: credential, timeout: timeout, logger: logger) {
        case .failure(let failure): return .failure(failure)
        case .success(let response):
            let bytes: ByteBuffer
            do {
                bytes = try await response.body.collect(upTo: limit)
            } catch is NIOTooManyBytesError {
                return .failure(.init(error: .init(.tooLarge, detail: "larger than \(limit) bytes"), disposition: .fatal))
            } catch {
                return .failure(HTTPFailures.transport(error, provider: .google))
            }
            let decoded: GeminiWire.Response
            do {
                decoded = try SplicedJSON.decode(GeminiWire.Response.self, from: bytes)
            } catch {
                return .failure(.init(error: .init(.unreadable), disposition: .transient))
            }
            if let status = decoded.error {
                // A 200 whose body is an error: classify it like the HTTP error it describes.
                return .failure(GoogleErrors.classify(status: status.code ?? 500, envelope: .init(error: status), redact: redact, logger: logger))
            }
            return .success(decoded)
        }
    }

    func generateBody(model: String, request: GeminiWire.Request, body: ByteBuffer, credential: Int, deadline: ContinuousClock.Instant, logger: Logger) async -> Result<GeminiAnswerBody, ChannelFailure> {
        let timeout = ContinuousClock.now.duration(to: deadline)
        switch await send(model: model, action: "generateContent", request: request, body: body, credential: credential, timeout: timeout, logger: logger) {
        case .failure(let failure): return .failure(failure)
        case .success(let response):
            let redact = self.redact
            return .success(
                GeminiAnswerBody(pieces: response.body, deadline: deadline, maxBytes: maxResponseBytes) { status in
                    GoogleErrors.classify(status: status.code ?? 500, envelope: .init(error: status), redact: redact, logger: logger)
                }
            )
        }
    }

    func stream(model: String, request: GeminiWire.Request, body: ByteBuffer, credential: Int, deadline: ContinuousClock.Instant, logger: Logger) async -> Result<GeminiEventStream, ChannelFailure> {
        let timeout = ContinuousClock.now.duration(to: deadline)
        switch await send(model: model, action: "streamGenerateContent?alt=sse", request: request, body: body, credential: credential, timeout: timeout, logger: logger) {
        case .failure(let failure): return .failure(failure)
        case .success(let response):
            return .success(GeminiEventStream(body: response.body, maxEventBytes: maxResponseBytes, deadline: deadline, redact: redact))
        }
    }

    /// One HTTP call; a 200 response is returned with its body unread, anything else is classified.
    private func send(model: String, action: String, request: GeminiWire.Request, body: ByteBuffer, credential: Int, timeout: Duration, logger: Logger) async -> Result<HTTPClientResponse, ChannelFailure> {
        var call = HTTPClientRequest(url: url(model: model, action: action))
        call.method = .POST
        call.headers.add(name: "Content-Type", value: "application/json")
        var payload = body
        switch configuration.kind {
        case .vertex:
            do throws(UpstreamError) {
                guard let tokens else { throw UpstreamError(.authFailed, detail: "no service account") }
                call.headers.add(name: "Authorization", value: "Bearer \(try await tokens.token(logger: logger))")
            } catch {
                return .failure(.init(error: error, disposition: error.code == .authFailed ? .credentialRejected : .transient))
            }
        case .gemini, .vertexExpress, .openai:
            call.headers.add(name: "x-goog-api-key", value: configuration.apiKeys[credential])
        }
        if configuration.kind != .gemini, request.contents.contains(where: { $0.role == nil }) {
            guard let encoded = try? SplicedJSON.encodeJoined(Self.withRoles(request)) else {
                return .failure(.init(error: .init(.invalidRequest, detail: "the request could not be encoded"), disposition: .fatal))
            }
            payload = encoded
        }
        call.body = .bytes(payload)
        do {
            let response = try await httpClient.execute(call, timeout: .init(timeout))
            if response.status == .ok { return .success(response) }
            if (300..<400).contains(response.status.code) {
                logger.error("the upstream answered with a redirect, which the gateway refuses; check the channel's base_url", metadata: ["http.status": "\(response.status.code)"])
                return .failure(.init(error: .init(.redirect, status: Int(response.status.code)), disposition: .fatal))
            }
            let errorBody = await HTTPFailures.errorBody(response)
            if configuration.kind == .vertex, response.status.code == 401 {
                // An access token Google no longer takes (revoked, clock skew): fetch a new one next time.
                await tokens?.invalidate()
                return .failure(.init(error: .init(.authFailed, status: 401, detail: "the access token was refused"), disposition: .transient))
            }
            return .failure(GoogleErrors.classify(status: Int(response.status.code), envelope: GoogleErrors.envelope(in: errorBody), redact: redact, logger: logger))
        } catch {
            return .failure(HTTPFailures.transport(error, provider: .google))
        }
    }

    /// Google's `GET /v1beta/models`, every page (at most 50), for the Gemini API; Vertex has no
    /// such list of publisher models.
    func listModels(logger: Logger) async throws(UpstreamError) -> Set<String>? {
        guard configuration.kind == .gemini, let key = configuration.apiKeys.first else { return nil }
        struct Page: Decodable {
            struct Model: Decodable { var name: String? }
            var models: [Model]?
            var nextPageToken: String?
        }
        var ids = Set<String>()
        var token: String?
        for _ in 0..<50 {
            var url = "\(base(or: "https://generativelanguage.googleapis.com"))/v1beta/models?pageSize=1000"
            if let token {
                url += "&pageToken=" + (token.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? "")
            }
            var request = HTTPClientRequest(url: url)
            request.headers.add(name: "x-goog-api-key", value: key)
            let body: ByteBuffer
            let status: Int
            do {
                let response = try await httpClient.execute(request, timeout: .seconds(30))
                status = Int(response.status.code)
                body = try await response.body.collect(upTo: 16 * 1024 * 1024)
            } catch {
                throw HTTPFailures.transport(error, provider: .google).error
            }
            guard status == 200 else {
                throw GoogleErrors.classify(status: status, envelope: GoogleErrors.envelope(in: body), redact: redact, logger: logger).error
            }
            guard let page = try? JSONDecoder().decode(Page.self, from: body) else { throw UpstreamError(.unreadable) }
            for model in page.models ?? [] {
                if let name = model.name { ids.insert(name.hasPrefix("models/") ? String(name.dropFirst(7)) : name) }
            }
            guard let next = page.nextPageToken, !next.isEmpty, next != token else { break }
            token = next
        }
        return ids
    }

    /// `countTokens` on `model` with a one-word prompt: free, and it proves the URL, the
    /// credential and the model id.
    func probe(model: String, logger: Logger) async throws(UpstreamError) -> String {
        let request = GeminiWire.Request(contents: [.init(role: "user", parts: [.init(text: "ping")])], generationConfig: nil)
        guard let body = try? SplicedJSON.encodeJoined(CountTokensBody(contents: request.contents)) else { throw UpstreamError(.invalidRequest) }
        var tokens = 0
        for credential in 0..<max(1, credentialCount) {
            switch await send(model: model, action: "countTokens", request: request, body: body, credential: credential, timeout: .seconds(30), logger: logger) {
            case .failure(let failure): throw failure.error
            case .success(let response):
                let bytes = (try? await response.body.collect(upTo: 1024 * 1024)) ?? ByteBuffer()
                struct Count: Decodable { var totalTokens: Int? }
                guard let count = try? JSONDecoder().decode(Count.self, from: bytes) else { throw UpstreamError(.unreadable) }
                tokens = count.totalTokens ?? 0
            }
        }
        return "countTokens on \(model) answered \(tokens) tokens with every credential (\(max(1, credentialCount)))"
    }

    private struct CountTokensBody: Encodable {
        var contents: [GeminiWire.Content]
    }

    func shutdown() async {
        await clients.shutdown()
    }
}
