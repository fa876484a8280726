import CSodium

/// Secret bytes in libsodium-guarded memory (`sodium_malloc`: guard pages, canary, excluded from
/// core dumps where the kernel allows), zeroed and freed on release.
///
/// The bytes are reachable only through `withUnsafeBytes`; nothing prints them.
final class SecureBytes: @unchecked Sendable {
    // @unchecked Sendable: the buffer is written only during initialisation (before the instance
    // is shared) and is read-only afterwards; no method mutates it once `init` returns, except
    // `withUnsafeMutableBytes`, which is internal and used only on instances not yet shared.
    private let pointer: UnsafeMutableRawPointer
    let count: Int

    init(count: Int) {
        Sodium.ensureInitialized()
        precondition(count > 0)
        guard let pointer = sodium_malloc(count) else { fatalError("sodium_malloc failed: out of memory") }
        self.pointer = pointer
        self.count = count
        sodium_memzero(pointer, count)
    }

    /// Copies `bytes` in; the caller remains responsible for wiping its own copy.
    convenience init(copying bytes: UnsafeRawBufferPointer) {
        self.init(count: bytes.count)
        pointer.copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
    }

    static func random(count: Int) -> SecureBytes {
        let bytes = SecureBytes(count: count)
        bytes.withUnsafeMutableBytes { Sodium.fillRandom($0) }
        return bytes
    }

    deinit {
        sodium_free(pointer)  // zeroes before freeing
    }

    func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(start: pointer, count: count))
    }

    func withUnsafeMutableBytes<R>(_ body: (UnsafeMutableRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeMutableRawBufferPointer(start: pointer, count: count))
    }

    func prefix(_ length: Int) -> SecureBytes {
        precondition(length <= count)
        return withUnsafeBytes { SecureBytes(copying: UnsafeRawBufferPointer(rebasing: $0.prefix(length))) }
    }

    func constantTimeEquals(_ other: SecureBytes) -> Bool {
        withUnsafeBytes { a in other.withUnsafeBytes { b in Sodium.constantTimeEqual(a, b) } }
    }
}
