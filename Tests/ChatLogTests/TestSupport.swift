import ChatLogTestSupport
import Foundation
import GRDB
import Testing

@testable import ChatLog

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// A fresh directory under the system temporary directory, removed when the test's closure
/// returns (or throws). Every test works in its own directory, so tests run in parallel.
struct TemporaryDirectory: Sendable {
    let path: String

    func file(_ name: String) -> String { path + "/" + name }

    /// The path of a new store file in this directory (not created yet).
    var databasePath: String { file("chat.db") }
}

func withTemporaryDirectory<R>(_ body: (TemporaryDirectory) async throws -> R) async throws -> R {
    var template = Array((NSTemporaryDirectory() + "/chatlog-tests-XXXXXX").utf8CString)
    let created = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
    guard let created else { throw TestSupportError("mkdtemp failed (errno \(errno))") }
    let directory = TemporaryDirectory(path: String(cString: created))
    defer { try? FileManager.default.removeItem(atPath: directory.path) }
    return try await body(directory)
}

struct TestSupportError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

// MARK: - Keys

/// 32 random bytes and the key made from them, so tests can look for the key's bytes in output.
struct TestKey {
    let bytes: [UInt8]
    let key: MasterKey
    var base64: String { Data(bytes).base64EncodedString() }
    var hexLower: String { hex(bytes) }
    var hexUpper: String { hex(bytes).uppercased() }

    init() {
        var generator = SystemRandomNumberGenerator()
        var bytes: [UInt8]
        repeat {
            bytes = (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }
        } while Set(bytes).count < 2
        self.bytes = bytes
        key = try! MasterKey(base64: Data(bytes).base64EncodedString())
    }
}

func hex(_ bytes: some Sequence<UInt8>) -> String {
    bytes.map { String(format: "%02x", $0) }.joined()
}

func base64(_ bytes: some Sequence<UInt8>) -> String {
    Data(Array(bytes)).base64EncodedString()
}

// MARK: - Stores

/// Options that keep Argon2id cheap for passphrase tests.
let fastOptions = ChatLogStore.Options(passphraseKDF: .interactive)

func makeStore(in directory: TemporaryDirectory, key: MasterKey = .generate()) throws -> ChatLogStore {
    try ChatLogStore.create(at: directory.databasePath, key: .key(key), options: fastOptions)
}

/// `[conversations, messages]`.
func counts(_ store: ChatLogStore) throws -> [Int] {
    let counts = try store.counts()
    return [counts.conversations, counts.messages]
}

/// Runs raw SQL on the store's file through a separate GRDB connection: the way an attacker with
/// write access to the file (or a bug elsewhere) would change it.
func withRawDatabase<R>(_ path: String, _ body: (Database) throws -> R) throws -> R {
    var configuration = Configuration()
    configuration.busyMode = .timeout(10)
    let queue = try DatabaseQueue(path: path, configuration: configuration)
    defer { try? queue.close() }
    return try queue.write(body)
}

func rawBlob(_ path: String, table: String, column: String, id: String) throws -> Data {
    try withRawDatabase(path) { db in
        guard let data = try Data.fetchOne(db, sql: "SELECT \(column) FROM \(table) WHERE id = ?", arguments: [id]) else {
            throw TestSupportError("no \(table).\(column) for \(id)")
        }
        return data
    }
}

func setRawBlob(_ path: String, table: String, column: String, id: String, to value: Data) throws {
    try withRawDatabase(path) { db in
        try db.execute(sql: "UPDATE \(table) SET \(column) = ? WHERE id = ?", arguments: [value, id])
        guard db.changesCount == 1 else { throw TestSupportError("no row \(id) in \(table)") }
    }
}

func integrity(_ table: String, _ column: String, _ rowID: String, _ reason: IntegrityFailure.Reason) -> ChatLogError {
    .integrity(IntegrityFailure(table: table, column: column, rowID: rowID, reason: reason))
}

// MARK: - Files

func fileBytes(_ path: String) throws -> [UInt8] {
    [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
}

func fileMode(_ path: String) -> UInt32? {
    var info = stat()
    guard lstat(path, &info) == 0 else { return nil }
    return UInt32(info.st_mode & 0o7777)
}

/// Writes `contents` to a new file and sets its mode explicitly (independent of the umask).
func writeFile(_ path: String, _ contents: some Sequence<UInt8>, mode: mode_t = 0o600) throws {
    let descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
    guard descriptor >= 0 else { throw TestSupportError("cannot create \(path) (errno \(errno))") }
    defer { close(descriptor) }
    let bytes = Array(contents)
    let written = bytes.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
    guard written == bytes.count else { throw TestSupportError("short write to \(path)") }
    guard fchmod(descriptor, mode) == 0 else { throw TestSupportError("chmod \(path) failed (errno \(errno))") }
}

func writeFile(_ path: String, text: String, mode: mode_t = 0o600) throws {
    try writeFile(path, Array(text.utf8), mode: mode)
}

func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
    guard !needle.isEmpty, haystack.count >= needle.count else { return needle.isEmpty }
    let first = needle[0]
    var index = 0
    let last = haystack.count - needle.count
    return haystack.withUnsafeBufferPointer { hay in
        while index <= last {
            if hay[index] == first, hay[index..<(index + needle.count)].elementsEqual(needle) { return true }
            index += 1
        }
        return false
    }
}

let isRoot = geteuid() == 0

// MARK: - The test driver executable

/// `chatlog-test-driver`, built next to the test bundle (e.g. `.build/debug/`).
func testDriverPath() throws -> String {
    var candidates: [URL] = []
    if let executable = Bundle.main.executableURL { candidates.append(executable.deletingLastPathComponent()) }
    candidates.append(URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent())
    candidates.append(URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent())
    for directory in candidates {
        // The test bundle may be a directory (`….xctest/`) on some platforms: look beside it too.
        for base in [directory, directory.deletingLastPathComponent()] {
            let candidate = base.appendingPathComponent("chatlog-test-driver").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
    }
    throw TestSupportError(
        "chatlog-test-driver not found next to the test executable (looked in \(candidates.map(\.path))); run `swift build --build-tests`")
}

struct ProcessResult: Sendable {
    let status: Int32
    let standardOutput: String
    let standardError: String
}

/// Starts a process (a ChildProcess: posix_spawn, reaped with waitpid); `wait()` collects its
/// output and exit status. Output goes to files, so a chatty child never blocks on a full pipe.
final class RunningProcess: Sendable {
    private let child: ChildProcess
    private let outputPath: String
    private let errorPath: String

    init(executable: String, arguments: [String], environment: [String: String], directory: String) throws {
        let base = NSTemporaryDirectory() + "/chatlog-running-\(UUID().uuidString)"
        outputPath = base + ".out"
        errorPath = base + ".err"
        child = try ChildProcess(
            executable, arguments, environment: environment, directory: directory, stdout: .file(outputPath), stderr: .file(errorPath))
    }

    deinit {
        unlink(outputPath)
        unlink(errorPath)
    }

    private func result(_ exit: ChildExit) -> ProcessResult {
        ProcessResult(
            status: exit.status, standardOutput: (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? "",
            standardError: (try? String(contentsOfFile: errorPath, encoding: .utf8)) ?? "")
    }

    /// Blocks this thread until the child exits (killed after 10 minutes: a hang, not a result).
    func wait() throws -> ProcessResult { result(try child.wait(timeout: 600)) }

    /// Waits without holding a thread of Swift's cooperative pool (which the other tests running
    /// in parallel share) while the child runs.
    func waitAsync() async throws -> ProcessResult { result(try await child.exit(timeout: 600)) }
}

/// SplitMix64: a fixed seed gives the same cases on every run (a failure can be replayed).
struct SeededRandom: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(bound)) }
    mutating func chance(_ percent: Int) -> Bool { below(100) < percent }
    mutating func pick<T>(_ items: [T]) -> T { items[below(items.count)] }
}
