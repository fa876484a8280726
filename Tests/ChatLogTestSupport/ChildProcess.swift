import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

// Child processes for every test suite, without Foundation's `Process`.
//
// Foundation's `Process` on Linux learns that a child exited when a socket the child inherited
// reaches end-of-file, on a run loop thread of its own, and runs the termination handler on a
// new thread; its children get the other descriptors closed from a list made before the spawn,
// so a socket another thread opens meanwhile can leak into a long-lived child and hide a short
// one's exit until the long one ends. PostgresTestServer had already seen it leave exited
// children unreaped, and a CI run (of 0000edd) failed with two `chatlog key rewrap`s of about a
// second each reported "did not finish within 30 s" at the same moment while every other test
// stood still (whether Foundation's monitor or the stall of docs/TESTING.md "The intermittent hang" held them
// is not known). Here a child is started with posix_spawn, inherits no descriptor but its three
// standard ones (closefrom in the child, atomic with the spawn) and every signal unblocked at its
// default action, and is reaped by waitpid from the thread that asks: noticing its exit depends
// on no other thread.

// glibc's posix_spawn extensions (2.29, 2.34), which Swift's Glibc module does not export.
private typealias SpawnChangeDirectory = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, UnsafePointer<CChar>) -> Int32
private typealias SpawnCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
private let spawnChangeDirectory: SpawnChangeDirectory? = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addchdir_np")
    .map { unsafeBitCast($0, to: SpawnChangeDirectory.self) }
private let spawnCloseFrom: SpawnCloseFrom? = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np")
    .map { unsafeBitCast($0, to: SpawnCloseFrom.self) }

// Linux 5.3's pidfd_open (glibc 2.36 wraps it): a descriptor that becomes readable when the child
// exits, so a blocking wait wakes at the exit instead of at the next poll.
private typealias PidfdOpen = @convention(c) (pid_t, UInt32) -> Int32
private let pidfdOpen: PidfdOpen? = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "pidfd_open")
    .map { unsafeBitCast($0, to: PidfdOpen.self) }

/// Blocks until `descriptor` is readable or `milliseconds` have passed.
private func waitReadable(_ descriptor: Int32, milliseconds: Int32) {
    var entry = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
    _ = poll(&entry, 1, milliseconds)
}

public struct ChildProcessError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Where one of a child's standard descriptors goes.
public enum ChildIO: Sendable {
    /// /dev/null.
    case null
    /// A file: read from (stdin), or created or truncated with mode 0600 and written (stdout, stderr).
    case file(String)
    /// The caller's open descriptor, duplicated into the child; the caller still owns it.
    case descriptor(Int32)
    /// A pipe whose other end this side keeps: `writeStdin`/`closeStdin` for stdin,
    /// `readOutput` for stdout.
    case pipe
    /// stderr only: wherever stdout goes.
    case sameAsOutput
}

/// How a child ended: `raw` is waitpid's status.
public struct ChildExit: Sendable, Equatable, CustomStringConvertible {
    public let raw: Int32
    public init(raw: Int32) { self.raw = raw }
    /// The signal that ended the child, or nil when it exited.
    public var signal: Int32? { raw & 0x7F == 0 ? nil : raw & 0x7F }
    /// The exit code, or 128 + the signal (as a shell reports it).
    public var status: Int32 { signal.map { 128 + $0 } ?? (raw >> 8) & 0xFF }
    public var succeeded: Bool { raw == 0 }
    public var description: String { signal.map { "killed by signal \($0)" } ?? "exit \(status)" }
}

/// SIGUSR2 caught by a handler that does nothing, without SA_RESTART: scripts/test-watchdog sends it
/// to one thread of a stuck test process at a time, so that thread's blocking system call returns
/// EINTR and its loop looks at its work again — which thread's interruption lets the run go on
/// tells whose wake-up was missed (docs/TESTING.md, "The intermittent hang"). Children get it back
/// at its default action (POSIX_SPAWN_SETSIGDEF below).
private let interruptionHandler: Void = {
    var action = sigaction()
    action.__sigaction_handler.sa_handler = { _ in }
    sigemptyset(&action.sa_mask)
    action.sa_flags = 0
    _ = sigaction(SIGUSR2, &action, nil)
}()

/// Starts `executable` and returns its pid; the caller reaps it (`ChildProcess` does). The child
/// gets exactly `environment` (this process's when nil) and no descriptor but 0, 1 and 2.
public func spawnChild(
    _ executable: String, _ arguments: [String], environment: [String: String]? = nil, directory: String? = nil,
    stdin: Int32, stdout: Int32, stderr: Int32, newSession: Bool = false, newProcessGroup: Bool = false
) throws -> pid_t {
    _ = interruptionHandler
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_adddup2(&actions, stdin, 0)
    posix_spawn_file_actions_adddup2(&actions, stdout, 1)
    posix_spawn_file_actions_adddup2(&actions, stderr, 2)
    if let closeFrom = spawnCloseFrom {
        _ = closeFrom(&actions, 3)
    } else {
        let open = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []).compactMap { Int32($0) }
        for descriptor in open where descriptor > 2 { posix_spawn_file_actions_addclose(&actions, descriptor) }
    }
    var command = [executable] + arguments
    if let directory {
        if let changeDirectory = spawnChangeDirectory {
            _ = changeDirectory(&actions, directory)
        } else {
            command = ["/bin/sh", "-c", "cd \"$0\" && exec \"$@\"", directory] + command
        }
    }
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    // Every signal unblocked and at its default action, as when a shell starts a program: the
    // spawning thread may be one of Dispatch's, which block signals (a child started from one
    // ignored SIGTERM), and this process ignores SIGPIPE.
    var flags = Int32(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF)
    var mask = sigset_t()
    sigemptyset(&mask)
    posix_spawnattr_setsigmask(&attributes, &mask)
    var defaults = sigset_t()
    sigfillset(&defaults)
    sigdelset(&defaults, SIGKILL)
    sigdelset(&defaults, SIGSTOP)
    posix_spawnattr_setsigdefault(&attributes, &defaults)
    if newSession {
        flags |= 0x80  // POSIX_SPAWN_SETSID (glibc)
    } else if newProcessGroup {
        posix_spawnattr_setpgroup(&attributes, 0)
        flags |= Int32(POSIX_SPAWN_SETPGROUP)
    }
    posix_spawnattr_setflags(&attributes, Int16(flags))
    let argv = command.map { strdup($0) } + [nil]
    let envp = (environment ?? ProcessInfo.processInfo.environment).map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer { for pointer in argv + envp { free(pointer) } }
    var pid: pid_t = 0
    let result = posix_spawn(&pid, command[0], &actions, &attributes, argv, envp)
    guard result == 0 else {
        throw ChildProcessError("cannot start \(command[0]): \(String(cString: strerror(result)))")
    }
    return pid
}

/// A running child process, reaped here with waitpid. Dropped while still running, it is killed
/// (SIGKILL) and reaped: no test leaves a child behind. A signal is only ever sent to a child not
/// yet reaped, so never to a pid the system has given to another process.
public final class ChildProcess: @unchecked Sendable {
    // @unchecked Sendable: `pid` and `label` are set once in init; mutable state is in Mutexes.
    public let pid: pid_t
    public let label: String
    private let reaped = Mutex<ChildExit?>(nil)
    private let inputWriter = Mutex<Int32>(-1)
    private let outputReader = Mutex<Int32>(-1)
    private let group: Bool
    /// Readable once the child has exited (-1 without pidfd_open).
    private let exitDescriptor: Int32

    /// Starts `executable` with `arguments`. `environment` nil: this process's environment.
    /// `newProcessGroup`: `stop` (and dropping it while it runs) also kills the children it started.
    public init(
        _ executable: String, _ arguments: [String], environment: [String: String]? = nil, directory: String? = nil,
        stdin: ChildIO = .null, stdout: ChildIO = .null, stderr: ChildIO = .null, newProcessGroup: Bool = false
    ) throws {
        label = ([URL(fileURLWithPath: executable).lastPathComponent] + arguments.prefix(5)).joined(separator: " ")
        group = newProcessGroup
        var toClose: [Int32] = []
        defer { for descriptor in toClose { close(descriptor) } }
        var keptWriter: Int32 = -1
        var keptReader: Int32 = -1
        func opened(_ path: String, _ flags: Int32) throws -> Int32 {
            let descriptor = open(path, flags | O_CLOEXEC, 0o600)
            guard descriptor >= 0 else { throw ChildProcessError("cannot open \(path): \(String(cString: strerror(errno)))") }
            toClose.append(descriptor)
            return descriptor
        }
        func pipeEnds() throws -> (read: Int32, write: Int32) {
            var ends: [Int32] = [-1, -1]
            guard pipe(&ends) == 0 else { throw ChildProcessError("pipe failed: \(String(cString: strerror(errno)))") }
            for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
            return (ends[0], ends[1])
        }
        do {
            let input: Int32
            switch stdin {
            case .null, .sameAsOutput: input = try opened("/dev/null", O_RDONLY)
            case .file(let path): input = try opened(path, O_RDONLY)
            case .descriptor(let descriptor): input = descriptor
            case .pipe:
                let ends = try pipeEnds()
                toClose.append(ends.read)
                keptWriter = ends.write
                input = ends.read
            }
            func output(_ io: ChildIO, other: Int32?) throws -> Int32 {
                switch io {
                case .null: return try opened("/dev/null", O_WRONLY)
                case .file(let path): return try opened(path, O_WRONLY | O_CREAT | O_TRUNC)
                case .descriptor(let descriptor): return descriptor
                case .sameAsOutput:
                    guard let other else { throw ChildProcessError("stdout cannot be .sameAsOutput") }
                    return other
                case .pipe:
                    guard other == nil else { throw ChildProcessError("stderr cannot be a pipe of its own (use .sameAsOutput)") }
                    let ends = try pipeEnds()
                    toClose.append(ends.write)
                    keptReader = ends.read
                    return ends.write
                }
            }
            let out = try output(stdout, other: nil)
            let err = try output(stderr, other: out)
            pid = try spawnChild(
                executable, arguments, environment: environment, directory: directory, stdin: input, stdout: out, stderr: err,
                newProcessGroup: newProcessGroup)
        } catch {
            for descriptor in [keptWriter, keptReader] where descriptor >= 0 { close(descriptor) }
            throw error
        }
        inputWriter.withLock { $0 = keptWriter }
        outputReader.withLock { $0 = keptReader }
        // Not yet reaped, so the pid is still this child's.
        exitDescriptor = pidfdOpen?(pid, 0) ?? -1
    }

    deinit {
        if exitDescriptor >= 0 { close(exitDescriptor) }
        closeStdin()
        outputReader.withLock { descriptor in
            if descriptor >= 0 { close(descriptor) }
            descriptor = -1
        }
        reaped.withLock { state in
            guard state == nil else { return }
            _ = kill(group ? -pid : pid, SIGKILL)
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0, errno == EINTR {}
        }
    }

    /// Reaps the child if it has exited; never blocks.
    public var hasExited: Bool { poll() != nil }

    /// How the child ended, once it has (reaping it); nil while it runs.
    public func poll() -> ChildExit? {
        reaped.withLock { state in
            if let state { return state }
            var status: Int32 = 0
            var result: pid_t
            repeat { result = waitpid(pid, &status, WNOHANG) } while result < 0 && errno == EINTR
            if result == pid {
                state = ChildExit(raw: status)
            } else if result < 0 {
                // ECHILD: someone else reaped it (never done in these tests); report it as lost.
                state = ChildExit(raw: 0x7F)
            }
            return state
        }
    }

    /// Sends `signal` to the child, unless it has been reaped.
    public func signal(_ signal: Int32) {
        reaped.withLock { state in
            if state == nil { _ = kill(pid, signal) }
        }
    }

    /// Waits for the exit, blocking this thread (polling waitpid). After `timeout` seconds the
    /// child is killed, reaped and an error describes what it was doing.
    @discardableResult
    public func wait(timeout: Double? = nil) throws -> ChildExit {
        let deadline = timeout.map { ContinuousClock.now + .seconds($0) }
        var pause: UInt32 = 500
        while true {
            if let exit = try exitOrTimeout(deadline, timeout) { return exit }
            if exitDescriptor >= 0 {
                // Sleeps until the exit (or the deadline, or at most a second).
                var milliseconds: Int32 = 1_000
                if let deadline {
                    let left = ContinuousClock.now.duration(to: deadline).components
                    milliseconds = Int32(max(0, min(1_000, left.seconds * 1_000 + left.attoseconds / 1_000_000_000_000_000 + 1)))
                }
                waitReadable(exitDescriptor, milliseconds: milliseconds)
            } else {
                usleep(pause)
                pause = min(pause * 2, 10_000)
            }
        }
    }

    /// Waits for the exit without holding a thread of Swift's cooperative pool: a thread of its
    /// own blocks in `wait` (on the pidfd: no polling), so the two cooperative threads of a 2-core
    /// machine stay free for the tests. After `timeout` seconds the child is killed, reaped and an
    /// error describes what it was doing.
    @discardableResult
    public func exit(timeout: Double? = nil) async throws -> ChildExit {
        if let exit = poll() { return exit }
        return try await onOwnThread("the exit of \(label) (pid \(pid))") { try self.wait(timeout: timeout) }
    }

    /// The exit when the child has ended; past `deadline`, kills it and throws what it was doing.
    private func exitOrTimeout(_ deadline: ContinuousClock.Instant?, _ timeout: Double?) throws -> ChildExit? {
        if let exit = poll() { return exit }
        guard let deadline, ContinuousClock.now > deadline else { return nil }
        let doing = whatItIsDoing()
        stop()
        throw ChildProcessError("\(label) did not finish within \(Int(timeout ?? 0)) s (pid \(pid): \(doing))")
    }

    /// Sends `signal` (to the group when there is one) unless the child has been reaped, and
    /// reaps it; returns how it ended.
    @discardableResult
    public func stop(_ signal: Int32 = SIGKILL) -> ChildExit {
        reaped.withLock { state in
            if let state { return state }
            _ = kill(group ? -pid : pid, signal)
            var status: Int32 = 0
            var result: pid_t
            repeat { result = waitpid(pid, &status, 0) } while result < 0 && errno == EINTR
            let exit = ChildExit(raw: result == pid ? status : 0x7F)
            state = exit
            return exit
        }
    }

    /// The child's state, kernel wait channel and system call, from /proc (for a timeout's message).
    private func whatItIsDoing() -> String {
        func read(_ name: String) -> String {
            ((try? String(contentsOfFile: "/proc/\(pid)/\(name)", encoding: .utf8)) ?? "?").trimmingCharacters(in: .whitespacesAndNewlines)
        }
        let stat = read("stat")
        let state = stat.split(separator: ")").last.map { $0.split(separator: " ").first.map(String.init) ?? "?" } ?? "?"
        return "state \(state), wchan \(read("wchan")), syscall \(read("syscall").split(separator: " ").first ?? "?")"
    }

    /// Writes to the child's stdin (started with `stdin: .pipe`).
    public func writeStdin(_ data: Data) {
        inputWriter.withLock { descriptor in
            guard descriptor >= 0 else { return }
            data.withUnsafeBytes { raw in
                var written = 0
                while written < raw.count {
                    let count = write(descriptor, raw.baseAddress! + written, raw.count - written)
                    if count < 0, errno == EINTR { continue }
                    guard count > 0 else { return }
                    written += count
                }
            }
        }
    }

    /// Ends the child's stdin (started with `stdin: .pipe`).
    public func closeStdin() {
        inputWriter.withLock { descriptor in
            if descriptor >= 0 { close(descriptor) }
            descriptor = -1
        }
    }

    /// Reads what the child wrote to its stdout pipe (`stdout: .pipe`): blocks until some is
    /// there; empty at end of file.
    public func readOutput(maximum: Int = 65_536) -> Data {
        let descriptor = outputReader.withLock { $0 }
        guard descriptor >= 0 else { return Data() }
        var buffer = [UInt8](repeating: 0, count: maximum)
        while true {
            let count = read(descriptor, &buffer, maximum)
            if count < 0, errno == EINTR { continue }
            return count > 0 ? Data(buffer[0..<count]) : Data()
        }
    }

    /// Reads the child's stdout pipe to its end.
    public func readAllOutput() -> Data {
        var data = Data()
        while true {
            let chunk = readOutput()
            if chunk.isEmpty { return data }
            data.append(chunk)
        }
    }
}

extension ChildProcess {
    /// Runs `executable` to its end with stdin from `input` (empty when nil), stdout and stderr
    /// into files (so no amount of output can block the child); kills it after `timeout` seconds.
    public static func run(
        _ executable: String, _ arguments: [String], environment: [String: String]? = nil, directory: String? = nil,
        input: Data? = nil, timeout: Double? = nil, scratch: String = NSTemporaryDirectory()
    ) throws -> (exit: ChildExit, stdout: Data, stderr: Data) {
        let base = scratch + "/chatlog-child-\(UUID().uuidString)"
        let inputPath = base + ".in"
        let outputPath = base + ".out"
        let errorPath = base + ".err"
        defer { for path in [inputPath, outputPath, errorPath] { unlink(path) } }
        guard FileManager.default.createFile(atPath: inputPath, contents: input ?? Data(), attributes: [.posixPermissions: 0o600]) else {
            throw ChildProcessError("cannot write \(inputPath)")
        }
        let child = try ChildProcess(
            executable, arguments, environment: environment, directory: directory, stdin: .file(inputPath), stdout: .file(outputPath),
            stderr: .file(errorPath))
        let exit = try child.wait(timeout: timeout)
        return (
            exit, (try? Data(contentsOf: URL(fileURLWithPath: outputPath))) ?? Data(),
            (try? Data(contentsOf: URL(fileURLWithPath: errorPath))) ?? Data()
        )
    }
}
