#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// The raw file-system calls chatlog makes for files that hold secrets: key files, passphrase
/// files, new stores and exports. Everything is created 0600 with O_EXCL and O_NOFOLLOW.
public enum PrivateFiles {
    /// Reads a file that holds a secret, refusing it the way ssh refuses a loose private key:
    /// it must be a regular file (not a symlink), owned by the effective user, mode 0600 or
    /// 0400, and at most `maxLength` bytes. The checks run on the opened descriptor too, so the
    /// file cannot be swapped between check and read.
    static func readSecretFile(at path: String, maxLength: Int = 4096) throws(ChatLogError) -> SecureBytes {
        var linkInfo = stat()
        guard lstat(path, &linkInfo) == 0 else {
            throw .keyFileRejected(path: path, reason: "cannot read it (\(errnoDescription()))")
        }
        if (linkInfo.st_mode & S_IFMT) == S_IFLNK {
            throw .keyFileRejected(path: path, reason: "it is a symbolic link; point the variable at the real file")
        }
        let descriptor = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard descriptor >= 0 else {
            throw .keyFileRejected(path: path, reason: "cannot open it (\(errnoDescription()))")
        }
        defer { close(descriptor) }
        var info = stat()
        guard fstat(descriptor, &info) == 0 else {
            throw .keyFileRejected(path: path, reason: "cannot stat it (\(errnoDescription()))")
        }
        guard info.st_dev == linkInfo.st_dev, info.st_ino == linkInfo.st_ino else {
            throw .keyFileRejected(path: path, reason: "it changed while being opened")
        }
        guard (info.st_mode & S_IFMT) == S_IFREG else {
            throw .keyFileRejected(path: path, reason: "it is not a regular file")
        }
        guard info.st_uid == geteuid() else {
            throw .keyFileRejected(path: path, reason: "it is owned by uid \(info.st_uid), not by you (uid \(geteuid()))")
        }
        let mode = info.st_mode & 0o777
        guard mode & 0o077 == 0 else {
            throw .keyFileRejected(
                path: path, reason: "its mode \(octal(mode)) lets other users read it; run `chmod 600 \(path)`")
        }
        guard info.st_size <= maxLength else {
            throw .keyFileRejected(path: path, reason: "it is \(info.st_size) bytes; a key file holds one key")
        }
        let length = Int(info.st_size)
        guard length > 0 else { throw .keyFileRejected(path: path, reason: "it is empty") }
        let buffer = SecureBytes(count: length)
        var filled = 0
        let complete = buffer.withUnsafeMutableBytes { bytes in
            while filled < length {
                let count = read(descriptor, bytes.baseAddress! + filled, length - filled)
                if count < 0, errno == EINTR { continue }
                guard count > 0 else { return false }
                filled += count
            }
            return true
        }
        guard complete else { throw .keyFileRejected(path: path, reason: "read failed (\(errnoDescription()))") }
        return buffer
    }

    /// Creates `path` with mode 0600 and writes `bytes`; refuses to overwrite or follow a link.
    /// With `store`, a file created next to that store takes its owner when run as root (see
    /// ``storeOwner(forNewFile:nextTo:)``), before anything is written.
    public static func createPrivateFile(
        at path: String, contents bytes: some Collection<UInt8>, nextToStore store: String? = nil
    ) throws(ChatLogError) {
        let descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else {
            if errno == EEXIST { throw .invalidInput("\(path) already exists; refusing to overwrite it") }
            throw .storage("cannot create \(path) (\(errnoDescription()))")
        }
        if let store, let owner = storeOwner(forNewFile: path, nextTo: store), fchown(descriptor, owner.uid, owner.gid) != 0 {
            let failure = errnoDescription()
            close(descriptor)
            unlink(path)
            throw .storage("cannot give \(path) the owner of the store (\(failure))")
        }
        var ok = true
        Array(bytes).withUnsafeBytes { raw in
            var written = 0
            while written < raw.count {
                let count = write(descriptor, raw.baseAddress! + written, raw.count - written)
                if count < 0, errno == EINTR { continue }
                guard count > 0 else { ok = false; return }
                written += count
            }
        }
        if ok, fsync(descriptor) != 0 { ok = false }
        let failure = errnoDescription()
        close(descriptor)
        guard ok else {
            unlink(path)
            throw .storage("cannot write \(path) (\(failure))")
        }
    }

    /// Creates an empty 0600 file for a new store (or a backup of `store`). SQLite gives the
    /// -wal and -shm files it creates later the same permissions as the database file, and the
    /// same owner when it runs as root.
    static func createEmptyPrivateFile(at path: String, nextToStore store: String? = nil) throws(ChatLogError) {
        try createPrivateFile(at: path, contents: [UInt8](), nextToStore: store)
    }

    /// The owner and group of a file.
    public struct Owner: Sendable, Equatable {
        public let uid: uid_t
        public let gid: gid_t
    }

    /// The owner that a file chatlog creates at `path` must have: the store file's, when this
    /// process runs as root, the store belongs to another user and `path` is in the store's
    /// directory (the key lock, the -wal and -shm files, a backup or export written beside the
    /// store). A key job run once as root (`chatlog key rotate` from root's crontab) would
    /// otherwise leave root-owned files that every later job of the service user fails to open.
    /// nil otherwise: files belong to whoever creates them.
    public static func storeOwner(forNewFile path: String, nextTo store: String) -> Owner? {
        guard geteuid() == 0 else { return nil }
        var storeInfo = stat()
        guard stat(store, &storeInfo) == 0, storeInfo.st_uid != 0 else { return nil }
        var directory = stat()
        var storeDirectory = stat()
        guard stat(parentDirectory(path), &directory) == 0, stat(parentDirectory(store), &storeDirectory) == 0,
            directory.st_dev == storeDirectory.st_dev, directory.st_ino == storeDirectory.st_ino
        else { return nil }
        return Owner(uid: storeInfo.st_uid, gid: storeInfo.st_gid)
    }

    /// Gives an open file next to `store` the store's owner when ``storeOwner(forNewFile:nextTo:)``
    /// says so and it has another one (also repairing a file an older chatlog left root-owned).
    static func adoptStoreOwner(_ descriptor: Int32, path: String, store: String) throws(ChatLogError) {
        guard let owner = storeOwner(forNewFile: path, nextTo: store) else { return }
        var info = stat()
        guard fstat(descriptor, &info) == 0 else { throw .storage("cannot stat \(path) (\(errnoDescription()))") }
        if info.st_uid == owner.uid, info.st_gid == owner.gid { return }
        guard fchown(descriptor, owner.uid, owner.gid) == 0 else {
            throw .storage("cannot give \(path) the owner of the store (\(errnoDescription()))")
        }
    }

    /// The directory part of a path ("." for a bare name).
    static func parentDirectory(_ path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    /// "owned by uid N" for an error message about a file this user cannot open, or "".
    static func ownerNote(_ path: String) -> String {
        var info = stat()
        guard stat(path, &info) == 0, info.st_uid != geteuid() else { return "" }
        return "; it is owned by uid \(info.st_uid), not by you (uid \(geteuid()))"
    }

    /// Sets mode 0600 on a file the user owns; refuses a file owned by someone else.
    static func restrictToOwner(_ path: String) throws(ChatLogError) {
        var info = stat()
        guard stat(path, &info) == 0 else { throw .storage("cannot stat \(path) (\(errnoDescription()))") }
        guard info.st_uid == geteuid() else {
            throw .invalidInput("\(path) is owned by uid \(info.st_uid), not by you; refusing to create a store in it")
        }
        if info.st_mode & 0o077 != 0, chmod(path, 0o600) != 0 {
            throw .storage("cannot set mode 0600 on \(path) (\(errnoDescription()))")
        }
    }

    static func fileExists(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0
    }

    /// Whether `path` is a directory (following links).
    static func isDirectory(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
    }

    static func fileSize(_ path: String) -> Int? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return Int(info.st_size)
    }

    /// Permission bits of `path` (following links), or nil.
    public static func mode(of path: String) -> UInt32? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return UInt32(info.st_mode & 0o7777)
    }

    static func octal(_ mode: some BinaryInteger) -> String {
        "0" + String(mode, radix: 8)
    }

    static func errnoDescription() -> String {
        String(cString: strerror(errno))
    }
}
