import CProcessHygiene

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Keeps secrets out of places they could leak from: core dumps, other users' view of
/// /proc/<pid>/environ, and files created with loose permissions.
enum ProcessHygiene {
    static func apply() {
        // Files this process creates are 0600 unless created otherwise explicitly.
        umask(0o077)
        // No core dumps (they would hold the unwrapped keys); not dumpable, which also makes
        // /proc/<pid>/mem and environ unreadable to other processes of the same user.
        _ = chatlog_disable_core_dumps()
    }

    /// Removes key material from the environment once it has been read, so child processes
    /// and later /proc readers do not see it.
    static func scrubEnvironment(_ names: [String] = ["CHATLOG_MASTER_KEY", "CHATLOG_NEW_MASTER_KEY"]) {
        for name in names {
            // unsetenv only drops the entry from `environ`; /proc/<pid>/environ shows the
            // environment block the process started with, where the value stays. Zero the value
            // there first.
            let prefix = name + "="
            var entry: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = environ
            while let current = entry, let string = current.pointee {
                if strncmp(string, prefix, prefix.utf8.count) == 0 {
                    let value = string + prefix.utf8.count
                    memset(value, 0, strlen(value))
                }
                entry = current + 1
            }
            unsetenv(name)
        }
    }

    /// Swift's CommandLine.arguments silently repairs invalid UTF-8; check the raw bytes first.
    static func invalidUTF8Argument() -> String? {
        for index in 1..<Int(CommandLine.argc) {
            guard let pointer = CommandLine.unsafeArgv[index] else { continue }
            let bytes = UnsafeBufferPointer(start: UnsafeRawPointer(pointer).assumingMemoryBound(to: UInt8.self), count: strlen(pointer))
            if String(validating: bytes, as: UTF8.self) == nil {
                return "invalid input: command-line argument \(index) is not valid UTF-8"
            }
        }
        return nil
    }

    static func exit(_ code: Int32) -> Never { Glibc.exit(code) }

    /// Raises the soft limit on open files to the hard limit (`chatlog serve`: each call in flight
    /// holds a client and an upstream connection; the usual soft limit of 1,024 would cap it near
    /// 500). Returns the limit now in force.
    @discardableResult
    static func raiseOpenFileLimit() -> UInt64 {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 0 }
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            if setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &raised) == 0 { return UInt64(raised.rlim_cur) }
        }
        return UInt64(limit.rlim_cur)
    }
}
