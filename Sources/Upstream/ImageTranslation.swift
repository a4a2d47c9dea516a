import Foundation
public import NanoGateCore

/// The translation between OpenAI's images API and Gemini's `generateContent`, without I/O.
public enum ImageTranslation {
    /// The Gemini request for one image.
    ///
    /// - Parameters:
    ///   - prompt: the client's prompt, sent as the text part.
    ///   - inputImages: images to edit, sent as `inlineData` parts before the text (Google's samples use both orders).
    ///   - spec: the validated ratio and tier; `imageSize` is only sent to families that have tiers.
    public static func geminiRequest(
        prompt: String, inputImages: [GeminiWire.InlineData] = [], spec: ImageSpec, family: ModelFamily, reasoningEffort: ReasoningEffort? = nil
    ) -> GeminiWire.Request {
        var parts = inputImages.map { GeminiWire.Part(inlineData: $0) }
        parts.append(GeminiWire.Part(text: prompt))
        let imageSize = spec.imageSize.flatMap { family.imageSizes.contains($0) ? $0.rawValue : nil }
        let imageConfig: GeminiWire.ImageConfig? =
            (spec.aspectRatio == nil && imageSize == nil) ? nil : .init(aspectRatio: spec.aspectRatio?.rawValue, imageSize: imageSize)
        let thinking = reasoningEffort.flatMap(family.thinkingLevel(for:)).map { GeminiWire.ThinkingConfig(thinkingLevel: $0) }
        return GeminiWire.Request(
            contents: [GeminiWire.Content(role: "user", parts: parts)],
            generationConfig: .init(responseModalities: ["TEXT", "IMAGE"], imageConfig: imageConfig, thinkingConfig: thinking)
        )
    }

    /// `request` rewritten for a model of another family (a fallback), or nil when that model
    /// cannot honour it (a ratio or tier it lacks). The 2.5 family's requests carry no
    /// `imageSize`, so on a tiered fallback they render at its default 1K: the cell nearest the
    /// 2.5 family's one-megapixel sizes (2:3 answers 848×1264 instead of 832×1248).
    public static func adapted(_ request: GeminiWire.Request, to family: ModelFamily) -> GeminiWire.Request? {
        var request = request
        // A thinking level the fallback does not take is left out (it only tunes the answer).
        if let level = request.generationConfig?.thinkingConfig?.thinkingLevel, !family.thinkingLevels.contains(level) {
            request.generationConfig?.thinkingConfig = nil
        }
        if family.thinks {
            // History from a model that issues no signatures: Gemini 3 wants them on every model
            // turn's first part and images, so it gets Google's documented bypass value.
            for index in request.contents.indices where request.contents[index].role == "model" {
                var parts = request.contents[index].parts ?? []
                for partIndex in parts.indices where (partIndex == 0 || parts[partIndex].inlineData != nil) && parts[partIndex].thoughtSignature == nil {
                    parts[partIndex].thoughtSignature = bypassSignature
                }
                request.contents[index].parts = parts
            }
        }
        guard let config = request.generationConfig?.imageConfig else { return request }
        if let ratio = config.aspectRatio, !family.aspectRatios.map(\.rawValue).contains(ratio) { return nil }
        if let size = config.imageSize {
            if family.imageSizes.isEmpty {
                request.generationConfig?.imageConfig?.imageSize = nil
            } else if !family.imageSizes.map(\.rawValue).contains(size) {
                return nil
            }
        }
        return request
    }

    /// Google's documented value for model turns whose thought signature is unknown (history the
    /// gateway did not produce, or from a model that issues none).
    public static let bypassSignature = "context_engineering_is_the_way_to_go"

    /// The final images and text of one Gemini answer, with its usage.
    public struct Outcome: Sendable, Equatable {
        /// Non-thought `inlineData` parts, in order (base64 exactly as Google sent it).
        public var images: [GeminiWire.InlineData]
        /// Non-thought text the model wrote.
        public var text: String?
        public var usage: ImageUsage
        /// Interim "thought" images (Gemini 3 Pro's drafts; not charged by Google): never
        /// results, but OpenAI's `partial_images` when a client streams.
        public var thoughtImages: [GeminiWire.InlineData] = []
    }

    /// Gemini's finish reason in OpenAI's chat vocabulary.
    public static func chatFinishReason(_ gemini: String?, blocked: Bool) -> String {
        if blocked { return "content_filter" }
        guard let gemini else { return "stop" }
        if policyReasons.contains(gemini) { return "content_filter" }
        return gemini == "MAX_TOKENS" ? "length" : "stop"
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
            let drafts = parts.filter { $0.thought == true }.compactMap(\.inlineData)
            return Outcome(images: images, text: text, usage: usage, thoughtImages: drafts)
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
