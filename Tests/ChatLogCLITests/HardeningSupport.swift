import ChatLog
import ChatLogTestSupport
import Foundation
import GRDB
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

// Shared by the hardening suites (CrashTests, CorruptionTests, SoakTests, HygieneTests): the
// scale and seed, background child processes that can be killed at a chosen instant, and raw
// SQLite access to a store file. Adapted from RotationCLITests (whose helpers are private there).
//
// CHATLOG_TEST_SCALE multiplies every trial count and the soak's duration (1, the default, is the
// CI size). CHATLOG_TEST_SEED replays a run's random choices (each suite prints its seed).

enum Hardening {
    static let scale: Int = max(1, Int(ProcessInfo.processInfo.environment["CHATLOG_TEST_SCALE"] ?? "") ?? 1)

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }

    static func format(_ value: Double) -> String { String(format: "%.2f", value) }

    /// `chatlog-test-driver`, built next to `chatlog`.
    static func driverURL() throws -> URL {
        let url = try ChatLogBinary.url().deletingLastPathComponent().appendingPathComponent("chatlog-test-driver")
        guard FileManager.default.isExecutableFile(atPath: url.path) else {
            throw CLITestError("chatlog-test-driver not found at \(url.path); run `swift build --build-tests`")
        }
        return url
    }
}

/// SplitMix64, seeded from CHATLOG_TEST_SEED or at random.
struct SeededRandom: RandomNumberGenerator {
    let seed: UInt64
    private var state: UInt64

    init() {
        self.init(seed: ProcessInfo.processInfo.environment["CHATLOG_TEST_SEED"].flatMap { UInt64($0) } ?? UInt64.random(in: 0...UInt64.max))
    }

    /// A fixed seed: the same numbers on every run (a corpus that must not change).
    init(seed: UInt64) {
        self.seed = seed
        state = seed
    }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

// MARK: - Background children

/// A child process running in the background, its stdout and stderr going to files that can be
/// read while it runs; stdin is /dev/null, or a pipe this side keeps open (`keepStdinOpen`) until
/// `closeStdin()`. A ChildProcess: started with posix_spawn and reaped here with waitpid, so a
/// signal never reaches a reaped (possibly reused) pid, and the child inherits no descriptor of
/// other tests.
final class BackgroundProcess: Sendable {
    let child: ChildProcess
    var pid: pid_t { child.pid }
    var label: String { child.label }
    private let outputURL: URL
    private let errorURL: URL

    init(
        _ arguments: [String], env: [String: String], cwd: URL, scratch: URL, executable: URL? = nil, keepStdinOpen: Bool = false
    ) throws {
        let executable = try executable ?? ChatLogBinary.url()
        let name = UUID().uuidString
        outputURL = scratch.appendingPathComponent("child-\(name).out")
        errorURL = scratch.appendingPathComponent("child-\(name).err")
        child = try ChildProcess(
            executable.path, arguments, environment: env, directory: cwd.path, stdin: keepStdinOpen ? .pipe : .null,
            stdout: .file(outputURL.path), stderr: .file(errorURL.path))
    }

    /// Writes to the child's stdin (when it was kept open).
    func writeStdin(_ data: Data) { child.writeStdin(data) }

    /// Whether one of the child's threads is blocked in read(2) on descriptor 0, from
    /// /proc/<pid>/task/*/syscall (x86-64 and arm64 number read 0 and 63).
    var isReadingStdin: Bool {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        return tasks.contains { task in
            guard let text = try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/syscall", encoding: .utf8) else { return false }
            #if arch(arm64)
                return text.hasPrefix("63 0x0 ")
            #else
                return text.hasPrefix("0 0x0 ")
            #endif
        }
    }

    /// Whether the child has `path` open (a link in /proc/<pid>/fd resolves to it).
    func hasOpen(_ path: String) -> Bool {
        let target = URL(fileURLWithPath: path).standardizedFileURL.path
        let directory = "/proc/\(pid)/fd"
        let descriptors = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return descriptors.contains { (try? FileManager.default.destinationOfSymbolicLink(atPath: directory + "/" + $0)) == target }
    }

    /// Ends the child's stdin (when it was kept open).
    func closeStdin() { child.closeStdin() }

    /// Reaps the child if it has exited (never blocks).
    var hasExited: Bool { child.hasExited }

    func signal(_ signal: Int32) { child.signal(signal) }

    var outputSoFar: String { String(decoding: (try? Data(contentsOf: outputURL)) ?? Data(), as: UTF8.self) }
    var errorSoFar: String { String(decoding: (try? Data(contentsOf: errorURL)) ?? Data(), as: UTF8.self) }

    /// Waits for the exit; kills the child and fails after `timeout`. Status: the exit code, or
    /// 128 + the signal.
    func finish(timeout: TimeInterval = 120) async throws -> CommandResult {
        let exit: ChildExit
        do {
            exit = try await child.exit(timeout: timeout)
        } catch {
            throw CLITestError("\(error)")
        }
        return CommandResult(status: exit.status, stdout: try Data(contentsOf: outputURL), stderr: try Data(contentsOf: errorURL))
    }
}

/// Runs `body` on a thread of its own: Swift's cooperative pool has as many threads as cores and
/// other suites keep them busy, so a sleep there could end seconds late. Not on Dispatch's global
/// queues either: these bodies block for up to minutes (polling a child, a semaphore), and full
/// runs on a loaded 2-core machine were twice found hung with every test task suspended and no
/// Dispatch worker thread left to run anything (docs/TESTING.md, "The intermittent hang").
func offCooperativePool<T: Sendable>(
    _ label: String = #function, file: String = #fileID, line: Int = #line, _ body: @escaping @Sendable () throws -> T
) async throws -> T {
    try await onOwnThread(label, file: file, line: line, body)
}

/// Sends SIGKILL `delay` seconds after `started`, unless the child exits first. Returns how long
/// the child ran when it exited before the kill (nil when it was killed).
func killAfter(_ child: BackgroundProcess, started: ContinuousClock.Instant, delay: Double) async throws -> Double? {
    try await offCooperativePool {
        let instant = started + .seconds(delay)
        while ContinuousClock.now < instant {
            if child.hasExited { return Hardening.seconds(ContinuousClock.now - started) }
            usleep(300)
        }
        child.signal(SIGKILL)
        return nil
    }
}

/// Starts a child and returns once it has opened `database` (its startup is over) or has exited,
/// with that instant: kill instants are drawn from there, over the time the rest of a run takes.
func startAndWaitForOpen(
    _ arguments: [String], database: String, env: [String: String], cwd: URL, scratch: URL, executable: URL? = nil
) async throws -> (BackgroundProcess, ContinuousClock.Instant) {
    let child = try BackgroundProcess(arguments, env: env, cwd: cwd, scratch: scratch, executable: executable)
    try await offCooperativePool {
        let deadline = ContinuousClock.now + .seconds(30)
        while !child.hasOpen(database), !child.hasExited, ContinuousClock.now < deadline { usleep(200) }
    }
    return (child, ContinuousClock.now)
}

/// Polls `condition` every 2 ms on a Dispatch thread; fails after `timeout`.
func waitFor(_ what: String, timeout: TimeInterval = 60, _ condition: @escaping @Sendable () throws -> Bool) async throws {
    try await offCooperativePool {
        let deadline = ContinuousClock.now + .seconds(timeout)
        while try !condition() {
            guard ContinuousClock.now < deadline else { throw CLITestError("timed out waiting until \(what)") }
            usleep(2_000)
        }
    }
}

func sleepOnDispatchThread(_ seconds: Double) async throws {
    _ = try await offCooperativePool { usleep(UInt32(max(0, seconds) * 1_000_000)) }
}

/// Runs `chatlog` (or another executable) on a Dispatch thread, so waiting for it does not hold a
/// thread of the cooperative pool.
func runOffPool(
    _ arguments: [String], env: [String: String], cwd: URL, executable: URL? = nil, stdin: Data? = nil, timeout: TimeInterval = 60
) async throws -> CommandResult {
    try await offCooperativePool { try run(arguments, env: env, stdin: stdin, cwd: cwd, executable: executable, timeout: timeout) }
}

// MARK: - Store files

enum StoreFiles {
    /// A store's files: the database, its WAL and shared memory, the key lock, and the subject-key
    /// file (docs/FORMAT.md §3.2) with its rollback journal.
    static let suffixes = ["", "-wal", "-shm", ".keys.lock", ".subject-keys", ".subject-keys-journal"]

    static func remove(_ path: String) {
        for suffix in suffixes { try? FileManager.default.removeItem(atPath: path + suffix) }
    }

    /// Copies a closed store (database, WAL and subject-key file if any) to `destination`, mode 0600.
    static func copy(_ source: String, to destination: String) throws {
        remove(destination)
        for suffix in ["", "-wal", ".subject-keys"] where FileManager.default.fileExists(atPath: source + suffix) {
            try FileManager.default.copyItem(atPath: source + suffix, toPath: destination + suffix)
            guard chmod(destination + suffix, 0o600) == 0 else { throw CLITestError("chmod \(destination + suffix) failed") }
        }
    }

    /// Whether `needle` occurs in the database file or its WAL.
    static func contain(_ path: String, _ needle: Data) -> Bool {
        ["", "-wal"].contains { suffix in
            (FileManager.default.contents(atPath: path + suffix)?.range(of: needle)) != nil
        }
    }
}

/// Raw SQLite access to a store file through GRDB, bypassing chatlog: what SQLite itself says.
enum RawSQLite {
    /// `PRAGMA integrity_check` on a read-only connection ("ok" when sound). A store left by a
    /// killed writer still has its -wal and -shm files, which a read-only connection reads.
    static func integrity(_ path: String) -> String {
        do {
            return try read(path) { db in try String.fetchAll(db, sql: "PRAGMA integrity_check").joined(separator: "; ") }
        } catch {
            return "cannot check: \(error)"
        }
    }

    static func read<T>(_ path: String, _ body: (Database) throws -> T) throws -> T {
        var configuration = Configuration()
        configuration.readonly = true
        configuration.busyMode = .timeout(20)
        let queue = try DatabaseQueue(path: path, configuration: configuration)
        defer { try? queue.close() }
        return try queue.read(body)
    }

    static func write<T>(_ path: String, _ body: (Database) throws -> T) throws -> T {
        var configuration = Configuration()
        configuration.busyMode = .timeout(20)
        let queue = try DatabaseQueue(path: path, configuration: configuration)
        defer { try? queue.close() }
        return try queue.write(body)
    }

    /// Conversation id → number of messages (plain columns only).
    static func messageCounts(_ path: String) throws -> [String: Int] {
        try read(path) { db in
            var counts: [String: Int] = [:]
            for row in try Row.fetchAll(
                db, sql: "SELECT c.id AS id, (SELECT count(*) FROM messages m WHERE m.conversation_seq = c.seq) AS n FROM conversations c")
            {
                counts[row["id"]] = row["n"]
            }
            return counts
        }
    }
}

/// `chatlog verify --json`'s report.
struct VerifyReportJSON: Decodable {
    let ok: Bool
    let conversations: Int
    let messages: Int
    let failure_count: Int
}

/// `chatlog import --json`'s report.
struct ImportReportJSON: Decodable {
    let conversations: Int
    let messages: Int
    let duplicates: Int
}
