/// The translation between OpenAI's images API and Gemini's `generateContent`, without I/O.
public enum ImageTranslation {
    /// The Gemini request for one image.
    ///
    /// - Parameters:
    ///   - prompt: the client's prompt, sent as the text part.
    ///   - inputImages: images to edit, sent as `inlineData` parts before the text (Google's samples use both orders).
    ///   - spec: the validated ratio and tier; `imageSize` is only ever sent to the 3-pro family.
    public static func geminiRequest(prompt: String, inputImages: [GeminiWire.InlineData] = [], spec: ImageSpec, family: ModelFamily) -> GeminiWire.Request {
        var parts = inputImages.map { GeminiWire.Part(inlineData: $0) }
        parts.append(GeminiWire.Part(text: prompt))
        let imageSize = family == .pro3 ? spec.imageSize?.rawValue : nil
        let imageConfig: GeminiWire.ImageConfig? =
            (spec.aspectRatio == nil && imageSize == nil) ? nil : .init(aspectRatio: spec.aspectRatio?.rawValue, imageSize: imageSize)
        return GeminiWire.Request(
            contents: [GeminiWire.Content(role: "user", parts: parts)],
            generationConfig: .init(responseModalities: ["TEXT", "IMAGE"], imageConfig: imageConfig)
        )
    }

    /// The final images and text of one Gemini answer, with its usage.
    public struct Outcome: Sendable, Equatable {
        /// Non-thought `inlineData` parts, in order (base64 exactly as Google sent it).
        public var images: [GeminiWire.InlineData]
        /// Non-thought text the model wrote.
        public var text: String?
        public var usage: ImageUsage
    }

    /// Finish reasons and block reasons that mean "refused on policy grounds".
    public static let policyReasons: Set<String> = [
        "SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "LANGUAGE",
        "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "MODEL_ARMOR", "JAILBREAK",
    ]

    /// Reads a Gemini answer. An answer without a final image is an error, never an empty success:
    /// - a prompt block or a safety finish reason → 400 `content_policy_violation`;
    /// - `NO_IMAGE`, `STOP` or `MAX_TOKENS` without an image → 400 `no_image_generated` (the prompt did not lead to an image);
    /// - `OTHER`, `IMAGE_OTHER`, unknown reasons → 502 `no_image_generated` (worth a retry).
    /// The message carries Google's reason and any text the model wrote.
    public static func outcome(of response: GeminiWire.Response) throws(GatewayError) -> Outcome {
        let usage = usage(of: response.usageMetadata)
        if let block = response.promptFeedback?.blockReason {
            let detail = response.promptFeedback?.blockReasonMessage.map { " (\($0))" } ?? ""
            throw .contentPolicy("Google blocked the prompt: \(block)\(detail).")
        }
        let candidate = response.candidates?.first
        let parts = candidate?.content?.parts ?? []
        let images = parts.filter(\.isFinalImage).compactMap(\.inlineData)
        let texts = parts.filter { $0.thought != true }.compactMap(\.text).filter { !$0.isEmpty }
        let text = texts.isEmpty ? nil : texts.joined(separator: "\n")
        if !images.isEmpty {
            return Outcome(images: images, text: text, usage: usage)
        }

        let reason = candidate?.finishReason ?? (candidate == nil ? "NO_CANDIDATES" : "FINISH_REASON_UNSPECIFIED")
        var explanation = "finish reason \(reason)"
        if let message = candidate?.finishMessage { explanation += ": \(message)" }
        if let text { explanation += " — the model said: \"\(text)\"" }
        if policyReasons.contains(reason) {
            throw .contentPolicy("Google's safety filter stopped it (\(explanation)).")
        }
        switch reason {
        case "NO_IMAGE", "STOP", "MAX_TOKENS":
            throw GatewayError(
                status: 400, type: "invalid_request_error", code: "no_image_generated", param: "prompt",
                message: "The model returned no image (\(explanation)). Rephrase the prompt to ask for an image."
            )
        default:
            throw .noImage("\(explanation).")
        }
    }

    /// OpenAI usage from Gemini's `usageMetadata`. Thoughts are billed as text output, so they
    /// count in `output_tokens` and `output_tokens_details.text_tokens`.
    public static func usage(of metadata: GeminiWire.UsageMetadata?) -> ImageUsage {
        guard let metadata else { return .zero }
        // Every count is already clamped by the decoder; the sums are clamped again, so no
        // number Google sends can overflow here or in the bill.
        func sum(_ details: [GeminiWire.ModalityTokenCount]?, _ modality: String) -> Int {
            UpstreamNumbers.clamp((details ?? []).prefix(16).filter { $0.modality == modality }.reduce(0) { $0 + UpstreamNumbers.clamp($1.tokenCount ?? 0) })
        }
        let input = UpstreamNumbers.clamp(metadata.promptTokenCount ?? 0)
        let inputImage = min(input, sum(metadata.promptTokensDetails, "IMAGE"))
        let output = UpstreamNumbers.clamp(UpstreamNumbers.clamp(metadata.candidatesTokenCount ?? 0) + UpstreamNumbers.clamp(metadata.thoughtsTokenCount ?? 0))
        let outputImage = min(output, sum(metadata.candidatesTokensDetails, "IMAGE"))
        return ImageUsage(
            inputTokens: input,
            inputTokensDetails: .init(imageTokens: inputImage, textTokens: input - inputImage),
            outputTokens: output,
            outputTokensDetails: .init(imageTokens: outputImage, textTokens: output - outputImage),
            totalTokens: input + output
        )
    }
}

/// Billing arithmetic: what Google charges for a usage, in micro-dollars (integers, so sums are exact).
public enum Pricing {
    public static func costMicroUSD(_ usage: ImageUsage, prices: TokenPrices) -> Int {
        let dollars =
            Double(usage.inputTokens) * prices.inputPerMillion
            + Double(usage.outputTokensDetails.imageTokens) * prices.outputImagePerMillion
            + Double(usage.outputTokensDetails.textTokens) * prices.outputTextPerMillion
        // dollars is per million tokens × tokens, i.e. already micro-dollars. Token counts are
        // clamped, but a configured price could still be absurd: never trap on the conversion.
        guard dollars.isFinite, dollars > 0 else { return 0 }
        return dollars >= 1e15 ? 1_000_000_000_000_000 : Int(dollars.rounded())
    }
}

/// Recognises image bytes by their magic numbers (Gemini sometimes labels JPEG bytes `image/png`).
public enum ImageSniffer {
    /// The MIME type of the bytes, or nil for anything that is not PNG, JPEG, WebP, GIF or HEIC/HEIF.
    public static func mimeType<Bytes: Collection<UInt8>>(of bytes: Bytes) -> String? {
        let head = Array(bytes.prefix(16))
        if head.starts(with: [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]) { return "image/png" }
        if head.starts(with: [0xFF, 0xD8, 0xFF]) { return "image/jpeg" }
        if head.count >= 12, head[0..<4].elementsEqual(Array("RIFF".utf8)), head[8..<12].elementsEqual(Array("WEBP".utf8)) { return "image/webp" }
        if head.starts(with: Array("GIF8".utf8)) { return "image/gif" }
        if head.count >= 12, head[4..<8].elementsEqual(Array("ftyp".utf8)) {
            let brand = String(decoding: head[8..<12], as: UTF8.self)
            if ["heic", "heix", "hevc", "heim", "heis"].contains(brand) { return "image/heic" }
            if ["mif1", "msf1"].contains(brand) { return "image/heif" }
        }
        return nil
    }

    /// File extension for a sniffed MIME type.
    public static func fileExtension(for mimeType: String) -> String {
        switch mimeType {
        case "image/png": "png"
        case "image/jpeg": "jpg"
        case "image/webp": "webp"
        case "image/gif": "gif"
        case "image/heic": "heic"
        case "image/heif": "heif"
        default: "bin"
        }
    }
}
