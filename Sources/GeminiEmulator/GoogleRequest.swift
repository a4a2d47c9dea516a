public import NIOCore
import Foundation
import Upstream
import NIOFoundationCompat

/// The emulator's own reading of Google's `GenerateContentRequest` (Gemini API v1beta), written
/// from Google's documented request format (`wire-formats.md` §A2, §A9), not from the gateway's
/// `GeminiWire` types, so a field the gateway misspells is refused here as Google would refuse it.
///
/// It reads JSON the way Google's proto-JSON front end does:
/// - every field by its lowerCamelCase JSON name **or** its proto snake_case name
///   (`generationConfig`/`generation_config`, `inlineData`/`inline_data`, …); names are case-sensitive;
/// - an unknown name is a 400 `INVALID_ARGUMENT`:
///   `Invalid JSON payload received. Unknown name "X" at 'generation_config.image_config': Cannot find field.`
///   (paths use proto names and `[i]` indexes, as in Google's errors);
/// - a value of the wrong JSON type is a 400 (`Invalid value at 'generation_config.temperature' (TYPE_FLOAT), "hot"`,
///   `… Starting an object on a scalar field.`, `… Proto field is not repeating, cannot start list.`);
/// - enum values (`responseModalities`, safety categories and thresholds) match case-insensitively
///   (Google's own REST samples send `"Image"`), `null` means "not set", a repeated field given a
///   single value holds that one value (Google accepts `"parts": {"text": …}`);
/// - `bytes` fields (`inlineData.data`, `thoughtSignature`) must be base64, standard or URL-safe.
///
/// Checks of meaning (roles, ratios, sizes, MIME types) are the emulator's, in `GeminiEmulator`.
public struct GoogleRequest: Sendable, Equatable {
    /// `contents[]`: the conversation.
    public var contents: [Content]
    /// `systemInstruction`, if given.
    public var systemInstruction: Content?
    /// `generationConfig`, if given.
    public var generationConfig: GenerationConfig?
    /// `safetySettings[]`.
    public var safetySettings: [SafetySetting]
    /// How many `tools[]` entries were given (their insides are not checked).
    public var toolCount: Int
    /// `serviceTier` (F3), lower case (`flex`, `standard`, `priority`), if given.
    public var serviceTier: String?

    /// One turn: `{role, parts[]}`.
    public struct Content: Sendable, Equatable {
        /// `role`: `user` or `model` (Google checks this after parsing).
        public var role: String?
        /// `parts[]`.
        public var parts: [Part]
    }

    /// One part. Exactly one member of Google's `data` oneof must be set.
    public struct Part: Sendable, Equatable {
        /// `text`.
        public var text: String?
        /// `inlineData`.
        public var inlineData: Blob?
        /// `fileData`.
        public var fileData: FileData?
        /// The proto name of the `data` oneof member that is set (`text`, `inline_data`, `function_call`, …), nil if none.
        public var dataField: String?
        /// `thought`.
        public var thought: Bool?
        /// `thoughtSignature`, as the base64 text sent.
        public var thoughtSignature: String?
    }

    /// `inlineData`: `{mimeType, data}`.
    public struct Blob: Sendable, Equatable {
        /// `mimeType` ("" when absent, as proto3 reads it).
        public var mimeType: String
        /// `data`, the base64 text as sent.
        public var data: String
    }

    /// `fileData`: `{mimeType, fileUri}`.
    public struct FileData: Sendable, Equatable {
        /// `mimeType` ("" when absent).
        public var mimeType: String
        /// `fileUri` ("" when absent).
        public var fileUri: String
    }

    /// `generationConfig`: the fields the emulator acts on (all documented fields are accepted).
    public struct GenerationConfig: Sendable, Equatable {
        /// `responseModalities`, normalised to upper case (`TEXT`, `IMAGE`).
        public var responseModalities: [String]?
        /// `candidateCount`.
        public var candidateCount: Int?
        /// `temperature`.
        public var temperature: Double?
        /// `imageConfig`.
        public var imageConfig: ImageConfig?
        /// `thinkingConfig.thinkingLevel`, as sent (`MINIMAL`, `MEDIUM`, `HIGH`, …).
        public var thinkingLevel: String?
    }

    /// `generationConfig.imageConfig` on the Gemini API: `aspectRatio` and `imageSize` only
    /// (`personGeneration` and `imageOutputOptions` are Vertex fields, §A2).
    public struct ImageConfig: Sendable, Equatable {
        /// `aspectRatio`, exactly as sent.
        public var aspectRatio: String?
        /// `imageSize`, exactly as sent.
        public var imageSize: String?
    }

    /// `safetySettings[]` entry, enum names normalised to upper case.
    public struct SafetySetting: Sendable, Equatable {
        /// `category`.
        public var category: String?
        /// `threshold`.
        public var threshold: String?
    }

    /// All `text` of `contents`, joined by newlines (where fault-injection directives are read).
    public var promptText: String {
        contents.flatMap(\.parts).compactMap(\.text).joined(separator: "\n")
    }

    /// Every `inlineData` part of `contents`, in order.
    public var inlineImages: [Blob] {
        contents.flatMap(\.parts).compactMap(\.inlineData)
    }

    /// Reads a request body as Google would, or says why Google would refuse it.
    public static func parse(_ body: ByteBuffer) -> Result<GoogleRequest, GoogleRequestError> {
        parse(Data(buffer: body, byteTransferStrategy: .noCopy))
    }

    /// Reads a request body as Google would, or says why Google would refuse it.
    static func parse(_ body: Data) -> Result<GoogleRequest, GoogleRequestError> {
        guard let root = try? JSONDecoder().decode(JSONValue.self, from: body) else {
            return .failure(.init(violations: [.init(field: nil, description: "Invalid JSON payload received. Unexpected token.")]))
        }
        guard case .object = root else {
            return .failure(.init(violations: [.init(field: nil, description: "Invalid JSON payload received. Root element must be a message.")]))
        }
        var reader = ProtoJSONReader()
        let normalized = reader.readMessage(root, GoogleSchema.request, path: "")
        guard reader.violations.isEmpty, let normalized else { return .failure(.init(violations: reader.violations)) }
        return .success(GoogleRequest(normalized))
    }

    /// The typed view of a body `ProtoJSONReader` has normalised (proto names as keys).
    init(_ root: JSONValue) {
        contents = (root["contents"]?.elements ?? []).map(Content.init)
        systemInstruction = root["system_instruction"].map(Content.init)
        generationConfig = root["generation_config"].map(GenerationConfig.init)
        safetySettings = (root["safety_settings"]?.elements ?? []).map { .init(category: $0["category"]?.string, threshold: $0["threshold"]?.string) }
        toolCount = root["tools"]?.elements.count ?? 0
        serviceTier = root["service_tier"]?.string?.lowercased()
    }
}

extension GoogleRequest.Content {
    /// A `Content` from its normalised JSON.
    init(_ value: JSONValue) {
        role = value["role"]?.string
        parts = (value["parts"]?.elements ?? []).map(GoogleRequest.Part.init)
    }
}

extension GoogleRequest.Part {
    /// A `Part` from its normalised JSON.
    init(_ value: JSONValue) {
        text = value["text"]?.string
        inlineData = value["inline_data"].map { .init(mimeType: $0["mime_type"]?.string ?? "", data: $0["data"]?.string ?? "") }
        fileData = value["file_data"].map { .init(mimeType: $0["mime_type"]?.string ?? "", fileUri: $0["file_uri"]?.string ?? "") }
        dataField = GoogleSchema.part.fields.first { $0.oneof == "data" && value[$0.proto] != nil }?.proto
        thought = value["thought"]?.bool
        thoughtSignature = value["thought_signature"]?.string
    }
}

extension GoogleRequest.GenerationConfig {
    /// A `GenerationConfig` from its normalised JSON.
    init(_ value: JSONValue) {
        responseModalities = value["response_modalities"]?.elements.compactMap(\.string)
        candidateCount = value["candidate_count"]?.number.map { Int($0) }
        temperature = value["temperature"]?.number
        imageConfig = value["image_config"].map { .init(aspectRatio: $0["aspect_ratio"]?.string, imageSize: $0["image_size"]?.string) }
        thinkingLevel = value["thinking_config"]?["thinking_level"]?.string
    }
}

/// Why Google would refuse a request body: its `google.rpc.BadRequest` field violations.
public struct GoogleRequestError: Error, Sendable, Equatable {
    /// One `fieldViolations[]` entry.
    public struct Violation: Sendable, Equatable {
        /// The proto path of the offending message (`generation_config.image_config`); nil at the top level.
        public var field: String?
        /// Google's text for it.
        public var description: String
    }

    /// Every violation found, in the order met.
    public var violations: [Violation]

    /// The error `message`: the descriptions joined by newlines, as Google joins them.
    public var message: String { violations.map(\.description).joined(separator: "\n") }
}

// MARK: - A JSON value

/// A parsed JSON value, keeping booleans, numbers and strings apart (proto-JSON types depend on it).
enum JSONValue: Sendable, Equatable, Decodable {
    /// `null`.
    case null
    /// `true` or `false`.
    case bool(Bool)
    /// Any number.
    case number(Double)
    /// A string.
    case string(String)
    /// An array.
    case array([JSONValue])
    /// An object (member order is not kept).
    case object([String: JSONValue])

    /// Any object key.
    struct Key: CodingKey {
        /// The key's text.
        var stringValue: String
        /// Never an integer key.
        var intValue: Int? { nil }
        /// The key `stringValue`.
        init(stringValue: String) { self.stringValue = stringValue }
        /// Not used: JSON object keys are strings.
        init?(intValue: Int) { nil }
    }

    /// Reads any JSON value; a number never reads as a boolean nor the other way round.
    init(from decoder: any Decoder) throws {
        if let object = try? decoder.container(keyedBy: Key.self) {
            var values: [String: JSONValue] = [:]
            for key in object.allKeys { values[key.stringValue] = try object.decode(JSONValue.self, forKey: key) }
            self = .object(values)
        } else if var array = try? decoder.unkeyedContainer() {
            var values: [JSONValue] = []
            while !array.isAtEnd { values.append(try array.decode(JSONValue.self)) }
            self = .array(values)
        } else {
            let single = try decoder.singleValueContainer()
            if single.decodeNil() {
                self = .null
            } else if let bool = try? single.decode(Bool.self) {
                self = .bool(bool)
            } else if let number = try? single.decode(Double.self) {
                self = .number(number)
            } else {
                self = .string(try single.decode(String.self))
            }
        }
    }

    /// The member `key` of an object; nil for other values.
    subscript(key: String) -> JSONValue? {
        if case .object(let values) = self { return values[key] }
        return nil
    }

    /// The elements of an array; empty for other values.
    var elements: [JSONValue] {
        if case .array(let values) = self { return values }
        return []
    }

    /// The text of a string value.
    var string: String? {
        if case .string(let text) = self { return text }
        return nil
    }

    /// The value of a number.
    var number: Double? {
        if case .number(let value) = self { return value }
        return nil
    }

    /// The value of a boolean.
    var bool: Bool? {
        if case .bool(let value) = self { return value }
        return nil
    }

    /// The value as JSON text, for error messages (long strings shortened).
    var jsonText: String {
        switch self {
        case .null: return "null"
        case .bool(let value): return value ? "true" : "false"
        case .number(let value): return value == value.rounded() && abs(value) < 1e15 ? String(Int(value)) : String(value)
        case .string(let text):
            let shown = text.count > 64 ? String(text.prefix(64)) + "..." : text
            return "\"" + shown.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
        case .array: return "[...]"
        case .object: return "{...}"
        }
    }
}

// MARK: - Google's schema (the part of v1beta that a generateContent request can hold)

/// How a field's value is read.
indirect enum ProtoKind: Sendable {
    /// Proto scalars, with proto3 JSON's rules (int32 and float also from numeric strings, bytes as base64).
    case string, bool, int32, float, bytes
    /// An enum, by value name (any case) or number.
    case enumeration(ProtoEnum)
    /// A message whose fields are checked.
    case message(ProtoMessage)
    /// A message the emulator accepts without looking inside (tools, function calls, schemas).
    case unchecked(String)
    /// `google.protobuf.Value`: any JSON.
    case anyValue
}

/// A proto enum: its full name and value names.
struct ProtoEnum: Sendable {
    /// `google.ai.generativelanguage.v1beta.…`, as Google names it in errors.
    var typeName: String
    /// Value names in number order.
    var values: [String]
}

/// A proto field: its proto name, the lowerCamelCase JSON name derived from it, its kind.
struct ProtoField: Sendable {
    /// The proto (snake_case) name, used in error paths.
    var proto: String
    /// The lowerCamelCase JSON name.
    var json: String
    /// How its value is read.
    var kind: ProtoKind
    /// Whether it is a list.
    var repeated: Bool
    /// The oneof it belongs to (`data` for a part's content).
    var oneof: String?

    /// A field named `proto`; its JSON name is derived from it.
    init(_ proto: String, _ kind: ProtoKind, repeated: Bool = false, oneof: String? = nil) {
        self.proto = proto
        let words = proto.split(separator: "_")
        self.json = String(words[0]) + words.dropFirst().map { $0.prefix(1).uppercased() + $0.dropFirst() }.joined()
        self.kind = kind
        self.repeated = repeated
        self.oneof = oneof
    }
}

/// A proto message: its full name and fields.
struct ProtoMessage: Sendable {
    /// The full name, as in `type.googleapis.com/…` of error messages.
    var typeName: String
    /// Its fields.
    var fields: [ProtoField]

    /// A message `name` (relative to Google's package unless it holds a dot) with `fields`.
    init(_ name: String, _ fields: [ProtoField]) {
        self.typeName = name.contains(".") ? name : GoogleSchema.package + name
        self.fields = fields
    }

    /// The field a JSON key names: its JSON name or its proto name, exactly.
    func field(forKey key: String) -> ProtoField? {
        fields.first { $0.json == key || $0.proto == key }
    }
}

/// `google.ai.generativelanguage.v1beta.GenerateContentRequest` and what it contains, from
/// ai.google.dev/api/generate-content and ai.google.dev/api/caching#Content (see wire-formats.md §A2).
enum GoogleSchema {
    /// The proto package of the Gemini API v1beta.
    static let package = "google.ai.generativelanguage.v1beta."

    /// An enum of Google's package.
    static func enumeration(_ name: String, _ values: [String]) -> ProtoKind {
        .enumeration(ProtoEnum(typeName: package + name, values: values))
    }

    /// `Blob` (`inlineData`).
    static let blob = ProtoMessage("Blob", [.init("mime_type", .string), .init("data", .bytes)])
    /// `FileData` (`fileData`).
    static let fileData = ProtoMessage("FileData", [.init("mime_type", .string), .init("file_uri", .string)])

    /// `Part`: one member of the `data` oneof, plus thought flags and signature.
    static let part = ProtoMessage("Part", [
        .init("text", .string, oneof: "data"),
        .init("inline_data", .message(blob), oneof: "data"),
        .init("function_call", .unchecked("FunctionCall"), oneof: "data"),
        .init("function_response", .unchecked("FunctionResponse"), oneof: "data"),
        .init("file_data", .message(fileData), oneof: "data"),
        .init("executable_code", .unchecked("ExecutableCode"), oneof: "data"),
        .init("code_execution_result", .unchecked("CodeExecutionResult"), oneof: "data"),
        .init("video_metadata", .unchecked("VideoMetadata"), oneof: "metadata"),
        .init("thought", .bool),
        .init("thought_signature", .bytes),
        .init("part_metadata", .unchecked("google.protobuf.Struct")),
        .init("media_resolution", .unchecked("Part.MediaResolution")),
    ])

    /// `Content`: `{role, parts[]}`.
    static let content = ProtoMessage("Content", [.init("parts", .message(part), repeated: true), .init("role", .string)])

    /// `ImageConfig` on the Gemini API (no Vertex-only fields).
    static let imageConfig = ProtoMessage("ImageConfig", [.init("aspect_ratio", .string), .init("image_size", .string)])

    /// `ThinkingConfig`.
    static let thinkingConfig = ProtoMessage("ThinkingConfig", [
        .init("include_thoughts", .bool),
        .init("thinking_budget", .int32),
        .init("thinking_level", enumeration("ThinkingConfig.ThinkingLevel", ["THINKING_LEVEL_UNSPECIFIED", "MINIMAL", "LOW", "MEDIUM", "HIGH"])),
    ])

    /// `GenerationConfig`.
    static let generationConfig = ProtoMessage("GenerationConfig", [
        .init("stop_sequences", .string, repeated: true),
        .init("response_mime_type", .string),
        .init("response_schema", .unchecked("Schema")),
        .init("response_json_schema", .anyValue),
        .init("response_modalities", enumeration("GenerationConfig.Modality", ["MODALITY_UNSPECIFIED", "TEXT", "IMAGE", "AUDIO"]), repeated: true),
        .init("candidate_count", .int32),
        .init("max_output_tokens", .int32),
        .init("temperature", .float),
        .init("top_p", .float),
        .init("top_k", .int32),
        .init("seed", .int32),
        .init("presence_penalty", .float),
        .init("frequency_penalty", .float),
        .init("response_logprobs", .bool),
        .init("logprobs", .int32),
        .init("enable_enhanced_civic_answers", .bool),
        .init("speech_config", .unchecked("SpeechConfig")),
        .init("thinking_config", .message(thinkingConfig)),
        .init("image_config", .message(imageConfig)),
        .init("media_resolution", enumeration("GenerationConfig.MediaResolution", [
            "MEDIA_RESOLUTION_UNSPECIFIED", "MEDIA_RESOLUTION_LOW", "MEDIA_RESOLUTION_MEDIUM", "MEDIA_RESOLUTION_HIGH",
        ])),
    ])

    /// Gemini API categories; `HARM_CATEGORY_IMAGE_*` are Vertex only (§A2), so they are not values here.
    static let safetySetting = ProtoMessage("SafetySetting", [
        .init("category", enumeration("HarmCategory", [
            "HARM_CATEGORY_UNSPECIFIED", "HARM_CATEGORY_DEROGATORY", "HARM_CATEGORY_TOXICITY", "HARM_CATEGORY_VIOLENCE",
            "HARM_CATEGORY_SEXUAL", "HARM_CATEGORY_MEDICAL", "HARM_CATEGORY_DANGEROUS", "HARM_CATEGORY_HARASSMENT",
            "HARM_CATEGORY_HATE_SPEECH", "HARM_CATEGORY_SEXUALLY_EXPLICIT", "HARM_CATEGORY_DANGEROUS_CONTENT", "HARM_CATEGORY_CIVIC_INTEGRITY",
        ])),
        .init("threshold", enumeration("SafetySetting.HarmBlockThreshold", [
            "HARM_BLOCK_THRESHOLD_UNSPECIFIED", "BLOCK_LOW_AND_ABOVE", "BLOCK_MEDIUM_AND_ABOVE", "BLOCK_ONLY_HIGH", "BLOCK_NONE", "OFF",
        ])),
    ])

    /// `Tool` (insides unchecked).
    static let tool = ProtoMessage("Tool", [
        .init("function_declarations", .unchecked("FunctionDeclaration"), repeated: true),
        .init("google_search_retrieval", .unchecked("GoogleSearchRetrieval")),
        .init("code_execution", .unchecked("CodeExecution")),
        .init("google_search", .unchecked("Tool.GoogleSearch")),
        .init("url_context", .unchecked("UrlContext")),
        .init("computer_use", .unchecked("Tool.ComputerUse")),
        .init("file_search", .unchecked("FileSearch")),
        .init("google_maps", .unchecked("GoogleMaps")),
    ])

    /// `ToolConfig` (insides unchecked).
    static let toolConfig = ProtoMessage("ToolConfig", [
        .init("function_calling_config", .unchecked("FunctionCallingConfig")),
        .init("retrieval_config", .unchecked("RetrievalConfig")),
    ])

    /// `GenerateContentRequest`, the body.
    static let request = ProtoMessage("GenerateContentRequest", [
        .init("model", .string),
        .init("service_tier", enumeration("ServiceTier", ["SERVICE_TIER_UNSPECIFIED", "STANDARD", "FLEX", "PRIORITY"])),
        .init("contents", .message(content), repeated: true),
        .init("tools", .message(tool), repeated: true),
        .init("tool_config", .message(toolConfig)),
        .init("safety_settings", .message(safetySetting), repeated: true),
        .init("system_instruction", .message(content)),
        .init("generation_config", .message(generationConfig)),
        .init("cached_content", .string),
    ])
}

// MARK: - The reader

/// Walks a JSON value against a `ProtoMessage`, collecting Google-worded violations and
/// returning the value normalised: keys are proto names, repeated fields are arrays, enum
/// values are their upper-case names, `null`s are gone.
struct ProtoJSONReader {
    /// What was found wrong so far.
    var violations: [GoogleRequestError.Violation] = []

    /// Records Google's `Unknown name "key" at 'path': reason` (no `at` at the top level).
    mutating func unknownName(_ key: String, at path: String, _ reason: String) {
        let at = path.isEmpty ? "" : " at '\(path)'"
        violations.append(.init(field: path.isEmpty ? nil : path, description: "Invalid JSON payload received. Unknown name \"\(key)\"\(at): \(reason)"))
    }

    /// Records Google's `Invalid value at 'path' (type), shown`.
    mutating func invalidValue(at path: String, type: String, _ shown: String) {
        violations.append(.init(field: path, description: "Invalid value at '\(path)' (\(type)), \(shown)"))
    }

    /// `path.name`, or `name` at the top level.
    static func join(_ path: String, _ name: String) -> String {
        path.isEmpty ? name : path + "." + name
    }

    /// Reads an object as `message`: each key by either name, unknown keys refused, oneofs checked.
    mutating func readMessage(_ value: JSONValue, _ message: ProtoMessage, path: String) -> JSONValue? {
        guard case .object(let members) = value else {
            invalidValue(at: path, type: "type.googleapis.com/" + message.typeName, value.jsonText)
            return nil
        }
        var normalized: [String: JSONValue] = [:]
        var givenAs: [String: String] = [:]
        var oneofs: [String: String] = [:]
        for key in members.keys.sorted() {
            let member = members[key]!
            guard let field = message.field(forKey: key) else {
                unknownName(key, at: path, "Cannot find field.")
                continue
            }
            if let earlier = givenAs[field.proto] {
                // Emulator's wording: the field is named twice, once in each spelling.
                violations.append(.init(field: Self.join(path, field.proto), description: "Invalid JSON payload received. Field \"\(field.proto)\" is given twice, as \"\(earlier)\" and as \"\(key)\"."))
                continue
            }
            givenAs[field.proto] = key
            if case .null = member { continue }
            if let oneof = field.oneof {
                if oneofs[oneof] != nil {
                    invalidValue(at: Self.join(path, oneof), type: "oneof", "oneof field '\(oneof)' is already set. Cannot set '\(field.proto)'")
                    continue
                }
                oneofs[oneof] = field.proto
            }
            if let read = readField(member, field, key: key, parent: path) {
                normalized[field.proto] = read
            }
        }
        return .object(normalized)
    }

    /// Reads one field's value, a list for repeated fields (a lone value counts as a list of one).
    mutating func readField(_ value: JSONValue, _ field: ProtoField, key: String, parent: String) -> JSONValue? {
        let path = Self.join(parent, field.proto)
        if field.repeated {
            guard case .array(let items) = value else {
                // Google takes a single value for a repeated field as a list of one.
                return readSingle(value, field.kind, path: path, key: key, parent: parent).map { .array([$0]) }
            }
            var read: [JSONValue] = []
            for (index, item) in items.enumerated() {
                if case .array = item {
                    unknownName(key, at: path, "Proto field is not repeating, cannot start list.")
                    continue
                }
                if let value = readSingle(item, field.kind, path: "\(path)[\(index)]", key: key, parent: path) { read.append(value) }
            }
            return .array(read)
        }
        if case .array = value {
            unknownName(key, at: parent, "Proto field is not repeating, cannot start list.")
            return nil
        }
        return readSingle(value, field.kind, path: path, key: key, parent: parent)
    }

    /// Reads one value of `kind` at `path`; `key` and `parent` name it in "Unknown name" errors.
    mutating func readSingle(_ value: JSONValue, _ kind: ProtoKind, path: String, key: String, parent: String) -> JSONValue? {
        switch kind {
        case .message(let message):
            return readMessage(value, message, path: path)
        case .unchecked(let name):
            guard case .object = value else {
                invalidValue(at: path, type: "type.googleapis.com/" + (name.hasPrefix("google.") ? name : GoogleSchema.package + name), value.jsonText)
                return nil
            }
            return value
        case .anyValue:
            return value
        default:
            break
        }
        if case .object = value {
            unknownName(key, at: parent, "Starting an object on a scalar field.")
            return nil
        }
        switch kind {
        case .string:
            guard case .string = value else { return invalid(value, path, "TYPE_STRING") }
            return value
        case .bool:
            guard case .bool = value else { return invalid(value, path, "TYPE_BOOL") }
            return value
        case .int32:
            let number: Double? = switch value {
            case .number(let number): number
            case .string(let text): Double(text)
            default: nil
            }
            guard let number, number == number.rounded(), number >= Double(Int32.min), number <= Double(Int32.max) else { return invalid(value, path, "TYPE_INT32") }
            return .number(number)
        case .float:
            let number: Double? = switch value {
            case .number(let number): number
            case .string(let text): Double(text) ?? ["NaN": .nan, "Infinity": .infinity, "-Infinity": -.infinity][text]
            default: nil
            }
            guard let number else { return invalid(value, path, "TYPE_FLOAT") }
            return .number(number)
        case .bytes:
            guard case .string(let text) = value else { return invalid(value, path, "TYPE_BYTES") }
            guard Self.isBase64(text) else {
                invalidValue(at: path, type: "TYPE_BYTES", "Base64 decoding failed for \(value.jsonText)")
                return nil
            }
            return value
        case .enumeration(let enumeration):
            switch value {
            case .string(let text):
                guard let name = enumeration.values.first(where: { $0.caseInsensitiveCompare(text) == .orderedSame }) else {
                    return invalid(value, path, "type.googleapis.com/" + enumeration.typeName)
                }
                return .string(name)
            case .number(let number):
                guard number == number.rounded(), number >= 0, Int(number) < enumeration.values.count else {
                    return invalid(value, path, "type.googleapis.com/" + enumeration.typeName)
                }
                return .string(enumeration.values[Int(number)])
            default:
                return invalid(value, path, "type.googleapis.com/" + enumeration.typeName)
            }
        case .message, .unchecked, .anyValue:
            return nil
        }
    }

    /// Records an invalid value of `type` and reads nothing.
    mutating func invalid(_ value: JSONValue, _ path: String, _ type: String) -> JSONValue? {
        invalidValue(at: path, type: type, value.jsonText)
        return nil
    }

    /// Proto-JSON `bytes`: standard or URL-safe base64, padded or not.
    static func isBase64(_ text: String) -> Bool {
        var symbols = 0
        var padding = 0
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "+"), UInt8(ascii: "/"), UInt8(ascii: "-"), UInt8(ascii: "_"):
                guard padding == 0 else { return false }
                symbols += 1
            case UInt8(ascii: "="):
                padding += 1
                guard padding <= 2 else { return false }
            default:
                return false
            }
        }
        return padding > 0 ? (symbols + padding) % 4 == 0 : symbols % 4 != 1
    }
}
