/// Any object key: for objects read field by field (OpenAI's loosely typed options, echoed tools,
/// arbitrary JSON).
public struct AnyCodingKey: CodingKey, Sendable {
    public var stringValue: String
    public var intValue: Int? { nil }
    public init(_ name: String) { stringValue = name }
    public init(stringValue: String) { self.stringValue = stringValue }
    public init?(intValue: Int) { nil }
}

extension KeyedDecodingContainer where K == AnyCodingKey {
    /// A scalar field as text, the way clients send OpenAI's options (`"2"`, `2`, `true`):
    /// strings as they are, booleans `true`/`false`, numbers in decimal; nil when absent or null.
    public func scalarText(_ name: String) throws -> String? {
        let key = AnyCodingKey(name)
        guard contains(key), try !decodeNil(forKey: key) else { return nil }
        if let text = try? decode(String.self, forKey: key) { return text }
        if let flag = try? decode(Bool.self, forKey: key) { return flag ? "true" : "false" }
        if let number = try? decode(Int.self, forKey: key) { return String(number) }
        if let number = try? decode(Double.self, forKey: key) { return String(number) }
        throw DecodingError.dataCorruptedError(forKey: key, in: self, debugDescription: "'\(name)' must be a string, a number or a boolean")
    }
}
