import CSodium

/// The few libsodium entry points chatlog needs, behind Swift names. All raw libsodium calls
/// outside key storage and sealing live here.
enum Sodium {
    /// `sodium_init` must run once before any other call; it is idempotent and thread-safe.
    private static let initialized: Bool = sodium_init() >= 0

    static func ensureInitialized() {
        precondition(initialized, "libsodium failed to initialise")
    }

    static func randomBytes(_ count: Int) -> [UInt8] {
        ensureInitialized()
        var bytes = [UInt8](repeating: 0, count: count)
        bytes.withUnsafeMutableBytes { randombytes_buf($0.baseAddress!, $0.count) }
        return bytes
    }

    static func fillRandom(_ buffer: UnsafeMutableRawBufferPointer) {
        ensureInitialized()
        if buffer.count > 0 { randombytes_buf(buffer.baseAddress!, buffer.count) }
    }

    /// Keyed BLAKE2b (`crypto_generichash`) with a 32-byte output written into `output`.
    static func keyedHash(
        key: UnsafeRawBufferPointer, message: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer
    ) {
        let status = crypto_generichash(
            output.baseAddress!.assumingMemoryBound(to: UInt8.self), output.count,
            message.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt64(message.count),
            key.baseAddress!.assumingMemoryBound(to: UInt8.self), key.count)
        precondition(status == 0, "crypto_generichash rejected its parameters")
    }

    static func constantTimeEqual(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Bool {
        guard a.count == b.count else { return false }
        if a.count == 0 { return true }
        return sodium_memcmp(a.baseAddress!, b.baseAddress!, a.count) == 0
    }

    static func memzero(_ buffer: UnsafeMutableRawBufferPointer) {
        if buffer.count > 0 { sodium_memzero(buffer.baseAddress!, buffer.count) }
    }

    static func isAllZero(_ buffer: UnsafeRawBufferPointer) -> Bool {
        if buffer.count == 0 { return true }
        return sodium_is_zero(buffer.baseAddress!.assumingMemoryBound(to: UInt8.self), buffer.count) == 1
    }

    /// Base64 (standard alphabet, with padding) decoding that never copies the secret into a
    /// Swift `[UInt8]`: the result lands straight in `SecureBytes`.
    static func decodeBase64Key(_ text: Substring, expectedLength: Int) -> SecureBytes? {
        ensureInitialized()
        let trimmed = text.utf8.drop(while: { $0 == 0x20 || $0 == 0x09 })
        var utf8 = Array(trimmed)
        defer { utf8.withUnsafeMutableBytes { memzero($0) } }
        while let last = utf8.last, last == 0x20 || last == 0x09 || last == 0x0A || last == 0x0D { utf8.removeLast() }
        let output = SecureBytes(count: expectedLength + 3)
        var written = 0
        let status = utf8.withUnsafeBytes { input in
            output.withUnsafeMutableBytes { out in
                sodium_base642bin(
                    out.baseAddress!.assumingMemoryBound(to: UInt8.self), out.count,
                    input.baseAddress?.assumingMemoryBound(to: CChar.self), input.count,
                    nil, &written, nil, Int32(sodium_base64_VARIANT_ORIGINAL))
            }
        }
        guard status == 0, written == expectedLength else { return nil }
        return output.prefix(expectedLength)
    }

    static func encodeBase64(_ bytes: UnsafeRawBufferPointer) -> String {
        ensureInitialized()
        let variant = Int32(sodium_base64_VARIANT_ORIGINAL)
        let length = sodium_base64_encoded_len(bytes.count, variant)
        var output = [CChar](repeating: 0, count: length)
        _ = sodium_bin2base64(
            &output, length, bytes.baseAddress?.assumingMemoryBound(to: UInt8.self), bytes.count, variant)
        defer { output.withUnsafeMutableBytes { memzero($0) } }
        return String(decoding: output.prefix(length - 1).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
