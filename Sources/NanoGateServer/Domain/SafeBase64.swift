import ExtrasBase64

/// Base64 decoding that cannot trap: swift-extras-base64 indexes out of range on an empty
/// input (a crash that ends every request in flight), and both clients (`data:` URLs) and
/// upstreams (`inlineData`) can send one.
enum SafeBase64 {
    /// The decoded bytes, or nil for an empty or invalid input.
    static func decode<Bytes: Collection<UInt8>>(_ bytes: Bytes) -> [UInt8]? {
        guard !bytes.isEmpty else { return nil }
        return try? Base64.decode(bytes: bytes)
    }
}
