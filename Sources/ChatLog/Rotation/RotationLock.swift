#if canImport(Glibc)
    import Glibc
#endif

/// The exclusive lock a key-maintenance job (rotate, rewrap, retire) holds for its whole run:
/// an `flock` on `<database>.keys.lock`, which the kernel releases when the holder exits or
/// dies. The holder's pid is written into the file so a second job can say who holds it.
public final class RotationLock: Sendable {
    private let descriptor: Int32
    public let path: String

    private init(descriptor: Int32, path: String) {
        self.descriptor = descriptor
        self.path = path
    }

    /// Takes the lock or throws ``ChatLogError/locked(holder:path:)`` at once.
    public static func acquire(forDatabase databasePath: String) throws(ChatLogError) -> RotationLock {
        let path = databasePath + ".keys.lock"
        let descriptor = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else {
            throw .storage("cannot open the lock file \(path) (\(PrivateFiles.errnoDescription())\(PrivateFiles.ownerNote(path)))")
        }
        // Run as root on a store of another user: the lock file is the store owner's (docs/OPERATIONS.md).
        do { try PrivateFiles.adoptStoreOwner(descriptor, path: path, store: databasePath) } catch {
            close(descriptor)
            throw error
        }
        guard flock(descriptor, LOCK_EX | LOCK_NB) == 0 else {
            // The holder writes its pid just after taking the lock: until then the file is empty
            // or still names an earlier holder that died. Give it a moment (at most ~100 ms), and
            // never name a process that does not exist.
            var holder = readHolder(descriptor)
            var waits = 0
            while !isAlive(holder), waits < 50 {
                usleep(2_000)
                waits += 1
                holder = readHolder(descriptor)
            }
            close(descriptor)
            throw .locked(holder: isAlive(holder) ? holder : nil, path: path)
        }
        let text = Array("\(getpid())\n".utf8)
        _ = ftruncate(descriptor, 0)
        _ = text.withUnsafeBytes { pwrite(descriptor, $0.baseAddress, $0.count, 0) }
        return RotationLock(descriptor: descriptor, path: path)
    }

    private static func isAlive(_ pid: Int32?) -> Bool {
        guard let pid, pid > 0 else { return false }
        return kill(pid, 0) == 0 || errno == EPERM
    }

    private static func readHolder(_ descriptor: Int32) -> Int32? {
        var buffer = [UInt8](repeating: 0, count: 32)
        let count = buffer.withUnsafeMutableBytes { pread(descriptor, $0.baseAddress, $0.count, 0) }
        guard count > 0 else { return nil }
        return Int32(String(decoding: buffer.prefix(count), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
    }

    deinit {
        _ = ftruncate(descriptor, 0)
        flock(descriptor, LOCK_UN)
        close(descriptor)
    }
}

extension String {
    fileprivate func trimmingCharacters(in set: Set<Character>) -> String {
        var text = Substring(self)
        while let first = text.first, set.contains(first) { text = text.dropFirst() }
        while let last = text.last, set.contains(last) { text = text.dropLast() }
        return String(text)
    }
}

extension Set where Element == Character {
    fileprivate static var whitespacesAndNewlines: Set<Character> { [" ", "\n", "\t", "\r"] }
}
