import CSodium
import Synchronization

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
        let reused = count == Self.pooledSize ? Self.pool.withLock { $0.take() } : nil
        guard let pointer = reused.flatMap(UnsafeMutableRawPointer.init(bitPattern:)) ?? sodium_malloc(count) else { fatalError("sodium_malloc failed: out of memory") }
        self.pointer = pointer
        self.count = count
        sodium_memzero(pointer, count)
    }

    /// Key-sized buffers are recycled: each `sodium_malloc` maps its own guarded pages (several
    /// system calls to make and to free), and a process that unwraps one subject key per logged
    /// exchange spent more on that than on the unwrap (docs/PERFORMANCE.md, "Erasure per
    /// subject"). A released buffer is zeroed before it goes back; at most `poolCapacity` wait.
    static let pooledSize = 32
    static let poolCapacity = 2_048

    /// Addresses of free buffers (as integers: they cross threads only through the lock).
    private struct Pool: ~Copyable {
        var free: [UInt] = []

        mutating func take() -> UInt? { free.popLast() }

        mutating func give(_ address: UInt) -> Bool {
            guard free.count < SecureBytes.poolCapacity else { return false }
            free.append(address)
            return true
        }
    }

    private static let pool = Mutex(Pool())

    /// Buffers waiting in the pool (tests).
    static var pooledBuffers: Int { pool.withLock { $0.free.count } }

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
        if count == Self.pooledSize {
            sodium_memzero(pointer, count)
            let address = UInt(bitPattern: pointer)
            if Self.pool.withLock({ $0.give(address) }) { return }
        }
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
