import Foundation
import Hummingbird
import Logging
import NanoGateCore
import NanoGateStorage
import NIOCore
import NIOFoundationCompat
import Upstream

extension ImagesController {
    /// `POST /v1/images/edits`: `multipart/form-data` as the SDKs send it (`image`, repeated
    /// `image[]` or `image`, scalars as text fields) or JSON `{"images":[{"image_url":…}], …}`.
    @Sendable func edits(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        let key = try context.requireKey()
        if let jobs, ImageJobs.requested(request) {
            // The whole body is kept with the job (uploaded images included), within the request limit.
            let baseURL = publicURL.base(of: request)
            var request = request
            let body = try await request.collectBody(limit: inputs.limits.maxRequestBytes)
            request.body = RequestBody(buffer: body)
            return try await jobs.submit(request, body: body, key: key, endpoint: .imageEdits, baseURL: baseURL, context: context) { replay in
                try await editJob(replay, key: key, baseURL: baseURL)
            }
        }
        let baseURL = publicURL.base(of: request)
        if !Self.isMultipart(request) {
            // Image URLs are fetched only once the key's limits and credit admitted the request.
            var (job, urls) = try await editJobUnfetched(request, key: key, baseURL: baseURL)
            context.logger.info("image edit", metadata: ["model": "\(job.model.name)", "images": "\(urls.count)", "format": "\(job.format.rawValue)"])
            let settlement = try await open(job, inputImages: urls.count, context: context)
            do {
                job.inputImages = try await fetch(urls, baseURL: baseURL)
            } catch {
                await pipeline.settle(settlement, status: error.status, errorCode: error.code, logger: context.logger)
                throw error
            }
            return try await answer(job, settlement: settlement, request: request, context: context)
        }
        let job = try await editJob(request, key: key, baseURL: baseURL)
        context.logger.info("image edit", metadata: ["model": "\(job.model.name)", "images": "\(job.inputImages.count)", "format": "\(job.format.rawValue)"])
        return try await answer(job, request: request, context: context)
    }

    static func isMultipart(_ request: Request) -> Bool {
        (request.headers[.contentType] ?? "").lowercased().hasPrefix("multipart/form-data")
    }

    /// A JSON edit's image URLs read (data URLs decoded, the gateway's own URLs read from the
    /// store, others fetched under the fetch policy).
    func fetch(_ urls: [String], baseURL: String) async throws(GatewayError) -> [GeminiWire.InlineData] {
        var images: [GeminiWire.InlineData] = []
        for (index, url) in urls.enumerated() {
            images.append(try await inputs.load(url: url, param: "images[\(index)].image_url", baseURLs: [baseURL]))
        }
        return images
    }

    /// An edit request read, validated and its images loaded (also when a background job replays it).
    func editJob(_ request: Request, key: APIKey, baseURL: String) async throws -> ImageRequest {
        let contentType = request.headers[.contentType] ?? ""
        // Validate (model, prompt, sizes, image count) before any image is read or fetched.
        var job: ImageRequest
        if Self.isMultipart(request) {
            guard let boundary = Self.boundary(of: contentType) else {
                throw GatewayError.invalidBody("The multipart body has no boundary in its Content-Type.")
            }
            let form = try await MultipartForm.read(request.body, boundary: boundary, limits: inputs.limits)
            if form.parts.contains(where: { $0.name == "mask" }) { throw ImageRequestValidator.maskUnsupported }
            let files = form.parts.filter { Self.isImageField($0.name) }
            job = try validator.validate(try form.imageFields(), key: key, baseURL: baseURL, endpoint: .imageEdits, inputImageCount: files.count)
            for (index, file) in files.enumerated() {
                job.inputImages.append(try inputs.inline(bytes: file.body, param: files.count == 1 ? file.name : "image[\(index)]"))
            }
        } else {
            let urls: [String]
            (job, urls) = try await editJobUnfetched(request, key: key, baseURL: baseURL)
            job.inputImages = try await fetch(urls, baseURL: baseURL)
        }

        return job
    }

    /// A JSON edit validated, its image URLs not yet read.
    func editJobUnfetched(_ request: Request, key: APIKey, baseURL: String) async throws -> (ImageRequest, [String]) {
        try validator.edit(try await request.decodeJSON(ImageEditJSON.self, limit: inputs.limits.maxRequestBytes), key: key, baseURL: baseURL)
    }

    /// `image`, `image[]`, `image[0]`, … (`images[]` too, leniently).
    static func isImageField(_ name: String) -> Bool {
        name == "image" || name == "images" || name.hasPrefix("image[") || name.hasPrefix("images[")
    }

    static func boundary(of contentType: String) -> String? {
        for parameter in contentType.split(separator: ";").dropFirst() {
            let pair = parameter.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            if pair.count == 2, pair[0].lowercased() == "boundary" {
                let value = pair[1].trimmingCharacters(in: CharacterSet(charactersIn: "\""))
                return value.isEmpty ? nil : value
            }
        }
        return nil
    }
}

/// A `multipart/form-data` body read as it streams in, with per-part and total size limits,
/// so a huge upload is refused without being held in memory first.
struct MultipartForm {
    struct Part {
        var name: String
        var filename: String?
        var body: ByteBuffer
    }

    var parts: [Part]

    /// The scalar fields, decoded like the JSON body of a generation.
    func imageFields() throws(GatewayError) -> ImageGenerationRequest {
        func text(_ name: String) -> String? {
            parts.last { $0.name == name && $0.filename == nil }.map { String(buffer: $0.body) }
        }
        guard let prompt = text("prompt") else {
            throw .invalidParameter("prompt", "Missing required parameter: 'prompt'.", code: "missing_required_parameter")
        }
        var n: Int?
        if let raw = text("n") {
            guard let value = Int(raw.trimmingCharacters(in: .whitespaces)) else { throw .invalidParameter("n", "Invalid value for 'n': '\(raw)'. It must be an integer.") }
            n = value
        }
        var options: [String: String] = [:]
        for name in ImageGenerationRequest.optionNames {
            if let value = text(name) { options[name] = value }
        }
        return ImageGenerationRequest(
            prompt: prompt, model: text("model"), n: n, size: text("size"),
            aspectRatio: text("aspect_ratio"), responseFormat: text("response_format"), options: options
        )
    }

    /// Parts one form may have: an edit has up to 16 images and a dozen fields, an upload two
    /// parts. Each part costs memory whatever its size (7 million empty parts took ~480 MB).
    static let maxParts = 64

    private final class Accumulator {
        var parts: [Part] = []
        var name: String?
        var filename: String?
        var body = ByteBuffer()
        var oversizedPart: String?
        var tooManyParts = false
    }

    static func read(_ body: RequestBody, boundary: String, limits: InputLimits) async throws(GatewayError) -> MultipartForm {
        let parser = MultipartStreamParser(boundary: boundary)
        let accumulator = Accumulator()
        parser.onHeader = { field, value in
            guard field.lowercased() == "content-disposition" else { return }
            accumulator.name = Self.parameter("name", in: value)
            accumulator.filename = Self.parameter("filename", in: value)
        }
        parser.onBody = { chunk in
            if accumulator.body.readableBytes + chunk.readableBytes > limits.maxImageBytes {
                accumulator.oversizedPart = accumulator.oversizedPart ?? accumulator.name ?? "a part"
                return
            }
            accumulator.body.writeBuffer(&chunk)
        }
        parser.onPartComplete = {
            guard accumulator.parts.count < Self.maxParts else {
                accumulator.tooManyParts = true
                return
            }
            accumulator.parts.append(Part(name: accumulator.name ?? "", filename: accumulator.filename, body: accumulator.body))
            accumulator.name = nil
            accumulator.filename = nil
            accumulator.body = ByteBuffer()
        }
        var total = 0
        let deadline = ContinuousClock.now.advanced(by: Request.bodyTimeout)
        do {
            for try await chunk in body {
                // A stalled upload is closed by the server's idle timeout; a trickling one ends here.
                guard ContinuousClock.now < deadline else { throw GatewayError.requestTimeout("The request body did not arrive within \(Request.bodyTimeout).") }
                total += chunk.readableBytes
                guard total <= limits.maxRequestBytes else { throw GatewayError.payloadTooLarge(limitBytes: limits.maxRequestBytes) }
                do throws(MultipartSyntaxError) {
                    try parser.execute(chunk)
                } catch {
                    throw GatewayError.invalidBody("The multipart body could not be parsed: \(error.reason).")
                }
                if let part = accumulator.oversizedPart { throw GatewayError.imageTooLarge(part, limitBytes: limits.maxImageBytes) }
                if accumulator.tooManyParts { throw GatewayError.invalidBody("The multipart body has more than \(Self.maxParts) parts.") }
            }
        } catch let error as GatewayError {
            throw error
        } catch {
            throw .clientDisconnected
        }
        do throws(MultipartSyntaxError) {
            try parser.finish()
        } catch {
            throw GatewayError.invalidBody("The multipart body could not be parsed: \(error.reason).")
        }
        return MultipartForm(parts: accumulator.parts)
    }

    /// `name="value"` from a Content-Disposition header. Quoted values may hold `;` and `\"`
    /// (`filename="a;b.png"`), which a plain split on `;` would cut.
    static func parameter(_ key: String, in header: String) -> String? {
        var index = header.startIndex
        func skipSpaces() { while index < header.endIndex, header[index] == " " || header[index] == "\t" { index = header.index(after: index) } }
        // Skip the disposition type (`form-data`).
        while index < header.endIndex, header[index] != ";" { index = header.index(after: index) }
        while index < header.endIndex {
            index = header.index(after: index)  // past ';'
            skipSpaces()
            var name = ""
            while index < header.endIndex, header[index] != "=", header[index] != ";" { name.append(header[index]); index = header.index(after: index) }
            var value = ""
            if index < header.endIndex, header[index] == "=" {
                index = header.index(after: index)
                skipSpaces()
                if index < header.endIndex, header[index] == "\"" {
                    index = header.index(after: index)
                    while index < header.endIndex, header[index] != "\"" {
                        if header[index] == "\\", header.index(after: index) < header.endIndex { index = header.index(after: index) }
                        value.append(header[index])
                        index = header.index(after: index)
                    }
                    if index < header.endIndex { index = header.index(after: index) }  // closing quote
                    while index < header.endIndex, header[index] != ";" { index = header.index(after: index) }
                } else {
                    while index < header.endIndex, header[index] != ";" { value.append(header[index]); index = header.index(after: index) }
                    value = value.trimmingCharacters(in: .whitespaces)
                }
            }
            if name.trimmingCharacters(in: .whitespaces).lowercased() == key { return value }
        }
        return nil
    }
}
