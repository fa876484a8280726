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
        var utf8 = Array(text.utf8)
        defer { utf8.withUnsafeMutableBytes { memzero($0) } }
        return utf8.withUnsafeBytes { decodeBase64Key(bytes: $0, expectedLength: expectedLength) }
    }

    /// Decodes base64 straight from `bytes` (a key file's content in libsodium memory) into
    /// libsodium memory: leading spaces and tabs and trailing whitespace are skipped by index, so
    /// no copy of the key's text is made on the Swift heap.
    static func decodeBase64Key(bytes: UnsafeRawBufferPointer, expectedLength: Int) -> SecureBytes? {
        ensureInitialized()
        var start = 0
        var end = bytes.count
        while start < end, bytes[start] == 0x20 || bytes[start] == 0x09 { start += 1 }
        while end > start, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[end - 1]) { end -= 1 }
        // libsodium 1.0.18's decoder takes some bytes ≥ 0x80 for base64 characters (the fuzzer
        // found "…d4\u{FC}Xp…" decoding to a key): only the standard alphabet and padding pass.
        for index in start..<end {
            switch bytes[index] {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "+"), UInt8(ascii: "/"), UInt8(ascii: "="):
                continue
            default:
                return nil
            }
        }
        let output = SecureBytes(count: expectedLength + 3)
        var written = 0
        let status = output.withUnsafeMutableBytes { out in
            sodium_base642bin(
                out.baseAddress!.assumingMemoryBound(to: UInt8.self), out.count,
                bytes.baseAddress.map { ($0 + start).assumingMemoryBound(to: CChar.self) }, end - start,
                nil, &written, nil, Int32(sodium_base64_VARIANT_ORIGINAL))
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
