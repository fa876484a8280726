import Foundation
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// A process that opened the store under master key m1 must not write after another process ran
/// `chatlog key rewrap` to m2: every write transaction checks the stored check value first. Before
/// that check, an import started under m1 wrapped the new import key under m1 after the rewrap, and
/// the store was broken under m2 for good (verify and import exit 4, a later rewrap failed).
@Suite struct RewrapRaceTests {
    /// The environment with `current` as the master key and `new` as the rewrap target.
    private func environment(_ sandbox: Sandbox, current: String, new: String? = nil) -> [String: String] {
        var env = sandbox.baseEnvironment
        env["CHATLOG_MASTER_KEY"] = current
        if let new { env["CHATLOG_NEW_MASTER_KEY"] = new }
        return env
    }

    private func rewrap(_ sandbox: Sandbox, from old: String, to new: String) throws {
        let result = try sandbox.chatlog(["key", "rewrap"], env: environment(sandbox, current: old, new: new))
        #expect(result.status == 0, "rewrap: \(result)")
    }

    /// After the race, the store works under the new key: verify passes, an import adds its
    /// conversation, and a second rewrap succeeds.
    private func expectHealthy(_ sandbox: Sandbox, key m2: String) throws {
        let verify = try sandbox.chatlog(["verify"], env: environment(sandbox, current: m2))
        #expect(verify.status == 0, "verify under the new key: \(verify)")
        try sandbox.write(#"{"id":"after","messages":[{"role":"user","content":"after the race"}]}"# + "\n", to: "after.jsonl", mode: 0o600)
        let imported = try sandbox.chatlog(["import", "--format", "openai-jsonl", "after.jsonl"], env: environment(sandbox, current: m2))
        #expect(imported.status == 0, "import under the new key: \(imported)")
        let m3 = sandbox.makeKey()
        try rewrap(sandbox, from: m2, to: m3)
        #expect(try sandbox.chatlog(["verify"], env: environment(sandbox, current: m3)).status == 0)
    }

    @Test func importReadingAFIFOWhileRewrapRunsFailsAndLeavesTheStoreHealthy() async throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let fifo = sandbox.path("input.fifo")
        #expect(mkfifo(fifo, 0o600) == 0)
        let importer = try BackgroundProcess(
            ["import", "--format", "openai-jsonl", "input.fifo"], env: sandbox.environment, cwd: sandbox.directory, scratch: sandbox.root)
        // Once the importer has the FIFO open for reading, it has opened the store (under m1).
        let writer = Mutex<Int32>(-1)
        try await waitFor("the importer opens the FIFO") {
            if importer.hasExited { throw CLITestError("the importer exited early: \(importer.errorSoFar)") }
            let descriptor = open(fifo, O_WRONLY | O_NONBLOCK | O_CLOEXEC)
            guard descriptor >= 0 else { return false }
            writer.withLock { $0 = descriptor }
            return true
        }
        let m2 = sandbox.makeKey()
        try rewrap(sandbox, from: sandbox.key, to: m2)
        let line = Data((#"{"id":"during","messages":[{"role":"user","content":"during the rewrap"}]}"# + "\n").utf8)
        writer.withLock { descriptor in
            let flags = fcntl(descriptor, F_GETFL)
            _ = fcntl(descriptor, F_SETFL, flags & ~O_NONBLOCK)
            _ = line.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
            close(descriptor)
        }
        let result = try await importer.finish()
        #expect(result.status == 77, "the import under the replaced key must fail: \(result)")
        #expect(result.err.contains("wrong master key"), "\(result)")
        try expectHealthy(sandbox, key: m2)
    }

    /// The race above needs an import that reads a FIFO; the progress total must not consume it
    /// (counting the lines of a FIFO read the whole input, and the import then imported nothing).
    @Test func importFromAFIFOImportsItsInput() async throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let fifo = sandbox.path("input.fifo")
        #expect(mkfifo(fifo, 0o600) == 0)
        let importer = try BackgroundProcess(
            ["import", "--json", "--format", "openai-jsonl", "input.fifo"], env: sandbox.environment, cwd: sandbox.directory,
            scratch: sandbox.root)
        let line = Data((#"{"id":"fifo","messages":[{"role":"user","content":"through a fifo"}]}"# + "\n").utf8)
        try await offCooperativePool {
            let descriptor = open(fifo, O_WRONLY | O_CLOEXEC)
            guard descriptor >= 0 else { throw CLITestError("cannot open the FIFO") }
            _ = line.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
            close(descriptor)
        }
        let result = try await importer.finish()
        #expect(result.status == 0, "\(result)")
        #expect(try jsonObject(result.stdout)["conversations"] as? Int == 1, "\(result)")
    }

    /// `log`, `key rotate` and `key retire` in a process that opened the store before the rewrap
    /// (chatlog-test-driver after-open: open, wait, then write).
    @Test(arguments: ["log", "rotate", "retire"])
    func writeAfterAnotherProcessRewrappedFails(_ operation: String) async throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        _ = try sandbox.log(["--text", "before the rewrap"])
        var extra: [String] = []
        if operation == "retire" {
            // Key 1 (the first data key) becomes decrypt-only and unused: retirable.
            let rotated = try sandbox.chatlog(["key", "rotate", "--new"])
            #expect(rotated.status == 0, "\(rotated)")
            extra = ["--key", "1"]
        }
        let before = try sandbox.sqlite("chatlog.db", "SELECT id, state FROM keys ORDER BY id")
        let driver = try BackgroundProcess(
            ["after-open", "--db", sandbox.path("chatlog.db"), "--ready-file", sandbox.path("ready"), "--go-file", sandbox.path("go"),
             "--then", operation] + extra,
            env: sandbox.environment, cwd: sandbox.directory, scratch: sandbox.root, executable: try Hardening.driverURL())
        let ready = sandbox.path("ready")
        try await waitFor("the driver opened the store") {
            if driver.hasExited { throw CLITestError("the driver exited early: \(driver.errorSoFar)") }
            return FileManager.default.fileExists(atPath: ready)
        }
        let m2 = sandbox.makeKey()
        try rewrap(sandbox, from: sandbox.key, to: m2)
        try sandbox.write("", to: "go", mode: 0o600)
        let result = try await driver.finish()
        #expect(result.status != 0, "\(operation) under the replaced key must fail: \(result)")
        #expect(result.err.contains("wrong master key"), "\(result)")
        #expect(try sandbox.sqlite("chatlog.db", "SELECT id, state FROM keys ORDER BY id") == before, "the keys changed")
        #expect(try sandbox.sqlite("chatlog.db", "SELECT count(*) FROM messages") == "1")
        try expectHealthy(sandbox, key: m2)
    }
}
