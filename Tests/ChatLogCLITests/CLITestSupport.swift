import ChatLogTestSupport
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

// End-to-end tests run the built `chatlog` executable as a child process, each in its own
// temporary directory with an explicit environment, and look only at what a user sees: stdout,
// stderr, the exit code and the files left behind.

struct CLITestError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// What one child process did.
struct CommandResult: CustomStringConvertible {
    let status: Int32
    let stdout: Data
    let stderr: Data

    /// Output as text, for assertions (invalid UTF-8 shows as U+FFFD; exact bytes are in `stdout`).
    var out: String { String(decoding: stdout, as: UTF8.self) }
    var err: String { String(decoding: stderr, as: UTF8.self) }

    var description: String { "exit \(status)\n--- stdout:\n\(out)\n--- stderr:\n\(err)" }
}

/// The `chatlog` executable that `swift build` put next to this test bundle.
enum ChatLogBinary {
    private static let located: Result<URL, CLITestError> = {
        var directories: [URL] = []
        if let executable = Bundle.main.executableURL { directories.append(executable.deletingLastPathComponent()) }
        directories.append(Bundle.main.bundleURL)
        if let first = CommandLine.arguments.first {
            directories.append(URL(fileURLWithPath: first).deletingLastPathComponent())
        }
        // On Darwin the test bundle is a directory (…/debug/X.xctest/Contents/MacOS/X): walk up.
        var searched: [String] = []
        for start in directories {
            var directory = start.standardizedFileURL
            for _ in 0..<4 {
                let candidate = directory.appendingPathComponent("chatlog")
                searched.append(candidate.path)
                if FileManager.default.isExecutableFile(atPath: candidate.path) { return .success(candidate) }
                directory = directory.deletingLastPathComponent()
            }
        }
        return .failure(
            CLITestError(
                "the `chatlog` executable was not found next to the test bundle; build it with "
                    + "`swift build --product chatlog` (looked at: \(searched.joined(separator: ", ")))"))
    }()

    static func url() throws -> URL { try located.get() }
}

/// Runs `executable` (the built `chatlog` unless given) with exactly `env` as its environment and
/// `cwd` as its working directory. stdin is `stdin` (empty when nil; never the parent's terminal);
/// stdout and stderr go to files, so large outputs cannot fill a pipe and block the child.
/// Started with posix_spawn and reaped with waitpid (ChildProcess), not Foundation's Process.
func run(
    _ arguments: [String], env: [String: String], stdin: Data?, cwd: URL, executable: URL? = nil,
    timeout: TimeInterval = 120
) throws -> CommandResult {
    let executable = try executable ?? ChatLogBinary.url()
    let result = try ChildProcess.run(executable.path, arguments, environment: env, directory: cwd.path, input: stdin, timeout: timeout)
    return CommandResult(status: result.exit.status, stdout: result.stdout, stderr: result.stderr)
}

/// A fresh base64 master key (32 random bytes, never a placeholder).
func randomMasterKey() -> String {
    var generator = SystemRandomNumberGenerator()
    var bytes: [UInt8]
    repeat {
        bytes = (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }
    } while Set(bytes).count < 2
    return Data(bytes).base64EncodedString()
}

let exampleKeyFromREADME = "Y2hhdGxvZy1leGFtcGxlLWtleS1kby1ub3QtdXNlISE="
let allZeroKey = Data(count: 32).base64EncodedString()

/// One test's world: a temporary working directory, a master key, and a record of every output,
/// all of which are checked for key material (`secrets`, in base64 and hex).
final class Sandbox {
    let root: URL
    /// The working directory of every command (the store, `.env` and key files live here).
    let directory: URL
    /// This sandbox's master key (base64); `environment` passes it as CHATLOG_MASTER_KEY.
    let key: String
    private(set) var secrets: [String] = []
    private var outputs: [(label: String, result: CommandResult)] = []

    init() throws {
        root = FileManager.default.temporaryDirectory.appendingPathComponent("chatlog-cli-tests-\(UUID().uuidString)")
        directory = root.appendingPathComponent("work")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(at: root.appendingPathComponent("tmp"), withIntermediateDirectories: true)
        key = randomMasterKey()
        secrets = [key]
    }

    deinit { try? FileManager.default.removeItem(at: root) }

    /// The child's whole environment, with no key: nothing is inherited from the test process.
    var baseEnvironment: [String: String] {
        [
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": root.path,
            "TMPDIR": root.appendingPathComponent("tmp").path,
            "LANG": "C.UTF-8",
        ]
    }

    /// `baseEnvironment` plus CHATLOG_MASTER_KEY = `key`.
    var environment: [String: String] { baseEnvironment.merging(["CHATLOG_MASTER_KEY": key]) { $1 } }

    func path(_ name: String) -> String { directory.appendingPathComponent(name).path }
    func url(_ name: String) -> URL { directory.appendingPathComponent(name) }

    /// A new random key that outputs are checked for.
    func makeKey() -> String {
        let key = randomMasterKey()
        addSecret(key)
        return key
    }

    /// Checks every output so far, and every later one, for `secret`.
    func addSecret(_ secret: String, sourceLocation: SourceLocation = #_sourceLocation) {
        secrets.append(secret)
        for (label, result) in outputs { checkNoSecret(secret, in: result, label: label, sourceLocation: sourceLocation) }
    }

    /// Runs `chatlog` here. Every output is checked for every secret of this sandbox.
    @discardableResult
    func chatlog(
        _ arguments: [String], env: [String: String]? = nil, stdin: Data? = nil,
        sourceLocation: SourceLocation = #_sourceLocation
    ) throws -> CommandResult {
        let result = try run(arguments, env: env ?? environment, stdin: stdin, cwd: directory)
        record(result, label: "chatlog \(arguments.joined(separator: " "))", sourceLocation: sourceLocation)
        return result
    }

    /// Runs `/bin/sh -c script` here with `$0` set to the chatlog executable, for arguments a
    /// Swift `String` cannot hold (invalid UTF-8 made with printf).
    @discardableResult
    func shell(_ script: String, env: [String: String]? = nil, sourceLocation: SourceLocation = #_sourceLocation) throws
        -> CommandResult
    {
        let result = try run(
            ["-c", script, try ChatLogBinary.url().path], env: env ?? environment, stdin: nil, cwd: directory,
            executable: URL(fileURLWithPath: "/bin/sh"))
        record(result, label: "sh -c \(script)", sourceLocation: sourceLocation)
        return result
    }

    /// Runs the sqlite3 command-line shell on a file of this sandbox.
    @discardableResult
    func sqlite(_ database: String, _ sql: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> String {
        guard let sqlite3 = ["/usr/bin/sqlite3", "/usr/local/bin/sqlite3"].first(where: FileManager.default.isExecutableFile)
        else { throw CLITestError("these tests need the sqlite3 command-line shell (apt-get install sqlite3)") }
        let result = try run(
            [database, sql], env: baseEnvironment, stdin: nil, cwd: directory, executable: URL(fileURLWithPath: sqlite3))
        guard result.status == 0 else { throw CLITestError("sqlite3 failed: \(result)") }
        return result.out.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    private func record(_ result: CommandResult, label: String, sourceLocation: SourceLocation) {
        outputs.append((label, result))
        for secret in secrets { checkNoSecret(secret, in: result, label: label, sourceLocation: sourceLocation) }
    }

    private func checkNoSecret(_ secret: String, in result: CommandResult, label: String, sourceLocation: SourceLocation) {
        var forms = [secret]
        if let bytes = Data(base64Encoded: secret) {
            let hex = bytes.map { String(format: "%02x", $0) }.joined()
            forms += [hex, hex.uppercased()]
        }
        for form in forms {
            let needle = Data(form.utf8)
            #expect(
                result.stdout.range(of: needle) == nil, "`\(label)` printed key material on stdout", sourceLocation: sourceLocation)
            #expect(
                result.stderr.range(of: needle) == nil, "`\(label)` printed key material on stderr", sourceLocation: sourceLocation)
        }
    }

    // MARK: - Shortcuts

    /// `chatlog init` with this sandbox's key; returns the master-key fingerprint it reports.
    @discardableResult
    func initStore(db: String? = nil, sourceLocation: SourceLocation = #_sourceLocation) throws -> String {
        let result = try chatlog(["init", "--json"] + (db.map { ["--db", $0] } ?? []), sourceLocation: sourceLocation)
        guard result.status == 0 else { throw CLITestError("chatlog init failed: \(result)") }
        let object = try jsonObject(result.stdout)
        guard let fingerprint = object["master_key_fingerprint"] as? String else {
            throw CLITestError("chatlog init --json printed no master_key_fingerprint: \(result)")
        }
        return fingerprint
    }

    /// `chatlog log --json` with `arguments`; fails the test unless it succeeds.
    func log(_ arguments: [String], stdin: Data? = nil, sourceLocation: SourceLocation = #_sourceLocation) throws -> LoggedJSON {
        let result = try chatlog(["log", "--json"] + arguments, stdin: stdin, sourceLocation: sourceLocation)
        guard result.status == 0 else { throw CLITestError("chatlog log failed: \(result)") }
        return try JSONDecoder().decode(LoggedJSON.self, from: result.stdout)
    }

    func list(_ arguments: [String] = [], sourceLocation: SourceLocation = #_sourceLocation) throws -> [ConversationSummaryJSON] {
        let result = try chatlog(["list", "--json"] + arguments, sourceLocation: sourceLocation)
        guard result.status == 0 else { throw CLITestError("chatlog list failed: \(result)") }
        return try JSONDecoder().decode(ListPageJSON.self, from: result.stdout).conversations
    }

    func show(_ id: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> TranscriptJSON {
        let result = try chatlog(["show", id, "--json"], sourceLocation: sourceLocation)
        guard result.status == 0 else { throw CLITestError("chatlog show failed: \(result)") }
        return try JSONDecoder().decode(TranscriptJSON.self, from: result.stdout)
    }

    /// Bytes of the store file and its -wal and -shm files that exist.
    func storeFiles(_ name: String = "chatlog.db") -> [String: Data] {
        var files: [String: Data] = [:]
        for suffix in ["", "-wal", "-shm"] {
            if let data = FileManager.default.contents(atPath: path(name + suffix)) { files[name + suffix] = data }
        }
        return files
    }

    func fileMode(_ name: String) -> UInt32? { fileMode(atPath: path(name)) }

    func fileMode(atPath path: String) -> UInt32? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return UInt32(info.st_mode & 0o7777)
    }

    func write(_ text: String, to name: String, mode: mode_t) throws {
        try Data(text.utf8).write(to: url(name))
        guard chmod(path(name), mode) == 0 else { throw CLITestError("chmod \(name) failed") }
    }

    func exists(_ name: String) -> Bool { FileManager.default.fileExists(atPath: path(name)) }
}

// MARK: - JSON the CLI prints

struct LoggedJSON: Decodable {
    let conversation_id: String
    let message_id: String
}

struct ConversationSummaryJSON: Decodable, Equatable {
    let id: String
    let title: String?
    let subject: String?
    let created_at: String
    let updated_at: String
    let message_count: Int
}

struct TranscriptJSON: Decodable {
    struct Message: Decodable {
        let id: String
        let role: String
        let content: String
        let model: String?
        let created_at: String
        let prompt_tokens: Int?
        let completion_tokens: Int?
    }

    let id: String
    let title: String?
    let subject: String?
    let created_at: String
    let messages: [Message]
}

struct KeyStatusJSON: Decodable {
    struct Key: Decodable {
        let id: Int
        let kind: String
        let state: String
        let created_at: String
        let rows: Int
    }

    let master_key_fingerprint: String
    let master_key_source: String
    let keys: [Key]
}

func jsonObject(_ data: Data) throws -> [String: Any] {
    guard let object = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
        throw CLITestError("not a JSON object: \(String(decoding: data, as: UTF8.self))")
    }
    return object
}

/// The elements of a `list --json` (`field` "conversations") or `search --json` ("hits") page.
func jsonPage(_ data: Data, _ field: String) throws -> [[String: Any]] {
    guard let elements = try jsonObject(data)[field] as? [[String: Any]] else {
        throw CLITestError("no array \(field) in \(String(decoding: data, as: UTF8.self))")
    }
    return elements
}

/// `list --json`: the conversations of one page and the cursor of the next.
struct ListPageJSON: Decodable {
    let conversations: [ConversationSummaryJSON]
    let next_cursor: String?
}

func jsonArray(_ data: Data) throws -> [[String: Any]] {
    guard let array = try JSONSerialization.jsonObject(with: data) as? [[String: Any]] else {
        throw CLITestError("not a JSON array of objects: \(String(decoding: data, as: UTF8.self))")
    }
    return array
}

/// RFC 3339 in UTC with milliseconds, as the README promises: 2026-11-27T10:04:05.123Z.
func isTimestamp(_ text: String) -> Bool {
    text.wholeMatch(of: /[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z/) != nil
}

/// A canonical lowercase UUID, as chatlog prints ids.
func isUUID(_ text: String) -> Bool {
    text.wholeMatch(of: /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/) != nil
}

/// Whitespace runs (including line breaks from help-text wrapping) collapsed to one space.
func collapsingWhitespace(_ text: String) -> String {
    text.split(whereSeparator: { $0.isWhitespace }).joined(separator: " ")
}
