import ChatLog
import ChatLogTestSupport
import Foundation
import GRDB
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

// Faults as the `chatlog` command reports them (hardening item 2; the library side is
// ChatLogTests/FaultTests.swift): a database locked past the busy timeout exits 75, a full disk
// and a read-only database exit 1 with one line saying so, and the store verifies afterwards.

private func runTool(_ path: String, _ arguments: [String]) -> Bool {
    guard FileManager.default.isExecutableFile(atPath: path) else { return false }
    return (try? ChildProcess(path, arguments).wait(timeout: 120))?.succeeded ?? false
}

@Suite struct FaultCLITests {
    /// Another process's connection holds the write lock for longer than the CLI's busy timeout
    /// (30 s): `chatlog log` exits 75 with a one-line "busy" error, while `chatlog list` reads on.
    @Test func aWriteLockHeldPastTheBusyTimeoutExits75() async throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        try sandbox.initStore(db: "second.db")
        let logged = try sandbox.log(["--title", "busy", "--text", "before"])
        var configuration = Configuration()
        configuration.busyMode = .timeout(5)
        configuration.allowsUnsafeTransactions = true
        let holder = try DatabaseQueue(path: sandbox.path("chatlog.db"), configuration: configuration)
        let second = try DatabaseQueue(path: sandbox.path("second.db"), configuration: configuration)
        let environment = sandbox.environment
        let directory = sandbox.directory
        // chatlog.db: a WAL that holds a commit, then the lock. second.db: an empty WAL (as after a
        // TRUNCATE checkpoint, or once the last process has closed the file), then the lock. With
        // an empty or missing WAL, GRDB's DatabasePool writes once when it opens (it creates and
        // drops a table so that a non-empty WAL exists), so even a read-only command needs the
        // write lock at open and waits for it.
        try holder.inDatabase { db in try db.execute(sql: "CREATE TABLE hold_wal (x); DROP TABLE hold_wal; BEGIN EXCLUSIVE") }
        try second.inDatabase { db in try db.execute(sql: "PRAGMA wal_checkpoint(TRUNCATE); BEGIN EXCLUSIVE") }
        let started = ContinuousClock.now
        async let refused = runOffPool(
            ["log", "--conversation", logged.conversation_id, "--text", "refused"], env: environment, cwd: directory, timeout: 90)
        async let listWithEmptyWAL = runOffPool(["list", "--json", "--db", "second.db"], env: environment, cwd: directory, timeout: 90)
        let list = try await runOffPool(["list", "--json"], env: environment, cwd: directory)
        #expect(list.status == 0, "reads go on under the write lock: \(list)")
        let result = try await refused
        let waited = ContinuousClock.now - started
        let emptyWALList = try await listWithEmptyWAL
        #expect(emptyWALList.status == 75 || emptyWALList.status == 0, "\(emptyWALList)")
        for queue in [holder, second] {
            try queue.inDatabase { db in try db.execute(sql: "ROLLBACK") }
            try queue.close()
        }
        #expect(result.status == 75, "\(result)")
        #expect(result.err.hasPrefix("chatlog: error: busy:") && result.err.split(separator: "\n").count == 1, "\(result)")
        #expect(waited >= .seconds(25), "gave up after \(waited)")
        let verify = try sandbox.chatlog(["verify"])
        #expect(verify.status == 0, "\(verify)")
        #expect(try sandbox.show(logged.conversation_id).messages.map(\.content) == ["before"])
        print(
            "busy (CLI): `chatlog log` under another connection's EXCLUSIVE transaction exited \(result.status) after "
                + "\(Hardening.format(Hardening.seconds(waited))) s: \(result.err.trimmingCharacters(in: .whitespacesAndNewlines)); "
                + "`chatlog list` meanwhile exited \(list.status); on a store whose WAL was empty, `chatlog list` under the lock exited "
                + "\(emptyWALList.status)")
    }

    /// A store on a small tmpfs (root only; skipped where mounting is not permitted): `chatlog log`
    /// of a large message exits 1 saying the disk is full; the store verifies; after space is
    /// freed the same command works.
    @Test func aFullDiskExits1SayingSo() async throws {
        let sandbox = try Sandbox()
        let mountPoint = sandbox.path("small")
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: false)
        guard runTool("/usr/bin/mount", ["-t", "tmpfs", "-o", "size=1024k", "tmpfs", mountPoint]) else {
            print("disk full (CLI): skipped, mounting a tmpfs is not permitted here")
            return
        }
        defer { _ = runTool("/usr/bin/umount", ["-l", mountPoint]) }
        let db = "small/chatlog.db"
        try sandbox.initStore(db: db)
        let logged = try sandbox.log(["--db", db, "--title", "full", "--text", "before"])
        try Data(count: 640 * 1024).write(to: sandbox.url("small/ballast"))
        var contents = ["before"]
        var failure: CommandResult?
        for index in 0..<200 {
            let text = "filling \(index) " + String(repeating: "q", count: 8_000)
            let result = try sandbox.chatlog(["log", "--db", db, "--conversation", logged.conversation_id, "--text", text])
            if result.status != 0 {
                failure = result
                break
            }
            contents.append(text)
        }
        let full = try #require(failure, "the tmpfs never filled up")
        #expect(full.status == 1 && full.err.contains("disk full") && full.err.split(separator: "\n").count == 1, "\(full)")
        let verify = try sandbox.chatlog(["verify", "--db", db])
        #expect(verify.status == 0, "\(verify)")
        try FileManager.default.removeItem(at: sandbox.url("small/ballast"))
        let after = try sandbox.chatlog(["log", "--db", db, "--conversation", logged.conversation_id, "--text", "after"])
        #expect(after.status == 0, "\(after)")
        contents.append("after")
        let shown = try sandbox.chatlog(["show", logged.conversation_id, "--json", "--db", db])
        #expect(try JSONDecoder().decode(TranscriptJSON.self, from: shown.stdout).messages.map(\.content) == contents)
        print("disk full (CLI, tmpfs 1 MiB): exit \(full.status), \(full.err.trimmingCharacters(in: .whitespacesAndNewlines)); verify ok, writes resume once space is freed")
    }

    /// An immutable database file (`chattr +i`, which stops root too): writes exit 1 naming the
    /// read-only database.
    @Test func anImmutableDatabaseExits1OnWritesAndReadsOn() async throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let logged = try sandbox.log(["--title", "frozen", "--text", "before"])
        let db = sandbox.path("chatlog.db")
        _ = try sandbox.sqlite("chatlog.db", "PRAGMA wal_checkpoint(TRUNCATE)")
        guard runTool("/usr/bin/chattr", ["+i", db]) else {
            print("read-only database (CLI): skipped, chattr +i is not available or not permitted here")
            return
        }
        defer { _ = runTool("/usr/bin/chattr", ["-i", db]) }
        let write = try sandbox.chatlog(["log", "--conversation", logged.conversation_id, "--text", "refused"])
        #expect(write.status == 1 && write.err.contains("read-only"), "\(write)")
        // Reads fail too while no WAL exists: GRDB's DatabasePool writes once at open when the
        // WAL is missing or empty (see the busy test), which a read-only file refuses.
        let read = try sandbox.chatlog(["show", logged.conversation_id])
        #expect((read.status == 0 && read.out.contains("before")) || (read.status == 1 && read.err.contains("read-only")), "\(read)")
        #expect(runTool("/usr/bin/chattr", ["-i", db]))
        #expect(try sandbox.chatlog(["verify"]).status == 0)
        print("read-only database (CLI, chattr +i): write exit \(write.status), \(write.err.trimmingCharacters(in: .whitespacesAndNewlines)); reads exit \(read.status)")
    }
}
