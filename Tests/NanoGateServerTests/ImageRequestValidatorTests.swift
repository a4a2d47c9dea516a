import Foundation
import NanoGateCore
@testable import NanoGateServer
import NanoGateStorage
import Testing

/// Validation, once, into the value every path runs: no HTTP, no database, no upstream.
@Suite struct ImageRequestValidatorTests {
    static let validator = ImageRequestValidator(catalog: .standard())

    static func key(_ group: KeyGroup, models: [String]? = nil) -> APIKey {
        APIKey(id: "id-\(group)", name: "k", group: group, prefix: "sk-ng-x", createdAt: Date(), revokedAt: nil, models: models)
    }

    static func generation(_ json: String, key: APIKey = key(.default)) throws(GatewayError) -> ImageRequest {
        try validator.generation(json: Data(json.utf8), key: key, baseURL: "http://gw")
    }

    /// The gateway error `body` threw, or nil when it threw none.
    static func failure(_ body: () throws -> Void) -> GatewayError? {
        do {
            try body()
            return nil
        } catch {
            return error as? GatewayError
        }
    }

    /// The spec's groups: "default" answers with a URL unless asked, "gemini" with base64; the
    /// names the catalog marks base64-only answer base64 whatever was asked.
    @Test func theGroupDecidesTheDefaultAnswerForm() throws {
        #expect(try Self.generation(#"{"model":"nano-banana","prompt":"a cat"}"#).format == .url)
        #expect(try Self.generation(#"{"model":"nano-banana","prompt":"a cat"}"#, key: Self.key(.gemini)).format == .b64JSON)
        #expect(try Self.generation(#"{"model":"nano-banana","prompt":"a cat","response_format":"b64_json"}"#).format == .b64JSON)
        #expect(try Self.generation(#"{"model":"gemini-2.5-flash-image","prompt":"a cat","response_format":"url"}"#).format == .b64JSON)
    }

    @Test func sizesResolveByTheCatalogsRules() throws {
        let pro = try Self.generation(#"{"model":"nano-banana-pro","prompt":"p","size":"4k","aspect_ratio":"16:9"}"#)
        #expect(pro.spec.imageSize == .fourK && pro.spec.aspectRatio == .landscape16x9)
        let flash = try Self.generation(#"{"model":"nano-banana","prompt":"p","size":"1344x768"}"#)
        #expect(flash.spec.aspectRatio == .landscape16x9)
    }

    @Test func badFieldsAreRefusedNamingTheParameter() {
        let cases: [(String, String?, String?)] = [
            (#"{"prompt":"p"}"#, "model", "missing_required_parameter"),
            (#"{"model":"dall-e-3","prompt":"p"}"#, "model", "model_not_found"),
            (#"{"model":"nano-banana","prompt":"  "}"#, "prompt", nil),
            (#"{"model":"nano-banana","prompt":"p","n":5}"#, "n", nil),
            (#"{"model":"nano-banana","prompt":"p","response_format":"png"}"#, "response_format", nil),
            (#"{"model":"nano-banana","prompt":"p""#, nil, nil),
        ]
        for (json, param, code) in cases {
            let error = Self.failure { _ = try Self.generation(json) }
            #expect(error != nil && error!.status >= 400 && error!.status < 500, "\(json)")
            #expect(error?.param == param, "\(json): \(String(describing: error))")
            if let code { #expect(error?.code == code, "\(json)") }
        }
    }

    /// A key limited to some models sees only those, in the refusal too.
    @Test func aKeysModelListBoundsWhatItMayAskFor() {
        let error = Self.failure { _ = try Self.generation(#"{"model":"nano-banana-pro","prompt":"p"}"#, key: Self.key(.default, models: ["nano-banana"])) }
        #expect(error?.code == "model_not_found")
        #expect(error?.message.hasSuffix("Available models: nano-banana.") == true)
    }

    @Test func editsTakeOneToTheModelsLimitOfImagesAndNoMask() throws {
        let (request, urls) = try Self.validator.edit(json: Data(#"{"model":"nano-banana","prompt":"p","images":[{"image_url":"data:image/png;base64,AA=="}]}"#.utf8), key: Self.key(.default), baseURL: "http://gw")
        #expect(request.endpoint == .imageEdits && urls.count == 1)
        let none = Self.failure { _ = try Self.validator.edit(json: Data(#"{"model":"nano-banana","prompt":"p"}"#.utf8), key: Self.key(.default), baseURL: "") }
        #expect(none?.code == "missing_required_parameter" && none?.param == "image")
        let seven = String(repeating: #"{"image_url":"https://x/a.png"},"#, count: 7).dropLast()
        let tooMany = Self.failure { _ = try Self.validator.edit(json: Data(#"{"model":"nano-banana","prompt":"p","images":[\#(seven)]}"#.utf8), key: Self.key(.default), baseURL: "") }
        #expect(tooMany?.code == "too_many_images")
        let mask = Self.failure { _ = try Self.validator.edit(json: Data(#"{"model":"nano-banana","prompt":"p","image":"https://x/a.png","mask":"https://x/m.png"}"#.utf8), key: Self.key(.default), baseURL: "") }
        #expect(mask?.param == "mask" && mask?.code == "unsupported_parameter")
    }
}
