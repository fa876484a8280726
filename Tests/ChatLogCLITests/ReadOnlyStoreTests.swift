import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Commands that only read open the store read-only: a 0444 file in a 0555 directory (a
/// read-only mount, a restored backup) can be listed, shown, searched, verified, exported and
/// counted by a user who cannot write it, and no `-wal`/`-shm` is left behind anywhere.
@Suite struct ReadOnlyStoreTests {
    private static let readingCommands: [[String]] = [
        ["list"], ["list", "--json"], ["search", "lighthouse"], ["search", "lighthouse", "--sort", "newest", "--json"], ["verify"],
        ["verify", "--json"], ["export"], ["stats"], ["stats", "--by", "model", "--json"], ["key", "status"],
    ]

    /// Runs chatlog as a user who is not root: `chatlog-app` through runuser when the tests run
    /// as root (root can write anything), else as the current user.
    private func chatlogAsUser(_ sandbox: Sandbox, _ arguments: [String], db: String) throws -> CommandResult {
        let env = sandbox.environment.merging(["CHATLOG_DB": db]) { $1 }
        if geteuid() != 0 { return try run(arguments, env: env, stdin: nil, cwd: URL(fileURLWithPath: "/")) }
        return try run(
            ["-u", ServiceUserTests.user, "--", try ChatLogBinary.url().path] + arguments, env: env, stdin: nil,
            cwd: URL(fileURLWithPath: "/"), executable: URL(fileURLWithPath: "/usr/sbin/runuser"))
    }

    /// A store in `<root>/<name>/chatlog.db` with a few messages, closed cleanly (no -wal).
    private func makeStore(_ sandbox: Sandbox, name: String) throws -> (directory: String, db: String, conversation: String) {
        let directory = sandbox.root.appendingPathComponent(name).path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        chmod(sandbox.root.path, 0o755)
        let db = directory + "/chatlog.db"
        try sandbox.initStore(db: db)
        let first = try sandbox.log(["--db", db, "--title", "Harbour", "--text", "the lighthouse keeper", "--model", "m1"])
        _ = try sandbox.log(["--db", db, "--conversation", first.conversation_id, "--text", "a second lighthouse", "--model", "m2"])
        #expect(!FileManager.default.fileExists(atPath: db + "-wal"))
        return (directory, db, first.conversation_id)
    }

    private func ensureServiceUser() throws {
        guard geteuid() == 0, ServiceUserTests.serviceUID == nil else { return }
        let result = try run(
            ["--system", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", ServiceUserTests.user], env: [:], stdin: nil,
            cwd: URL(fileURLWithPath: "/"), executable: URL(fileURLWithPath: "/usr/sbin/useradd"))
        // 9: created meanwhile by another test.
        guard result.status == 0 || result.status == 9 else { throw CLITestError("useradd failed: \(result)") }
    }

    private func sidecars(_ directory: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix("-wal") || $0.hasSuffix("-shm") }
    }

    @Test func a0444FileInA0555DirectoryCanBeReadByAnotherUser() throws {
        try ensureServiceUser()
        let sandbox = try Sandbox()
        let store = try makeStore(sandbox, name: "readonly")
        if geteuid() == 0, let uid = ServiceUserTests.serviceUID {
            #expect(chown(store.db, uid, 0) == 0 && chown(store.directory, uid, 0) == 0)
        }
        #expect(chmod(store.db, 0o444) == 0)
        #expect(chmod(store.directory, 0o555) == 0)
        defer { chmod(store.directory, 0o755) }
        let before = try Data(contentsOf: URL(fileURLWithPath: store.db))

        for arguments in Self.readingCommands + [["show", store.conversation], ["show", store.conversation, "--json"]] {
            let result = try chatlogAsUser(sandbox, arguments, db: store.db)
            #expect(result.status == 0, "\(arguments): \(result)")
            let left = try sidecars(store.directory)
            #expect(left.isEmpty, "\(arguments) left \(left)")
        }
        let search = try chatlogAsUser(sandbox, ["search", "lighthouse", "--json"], db: store.db)
        #expect((try jsonObject(search.stdout)["hits"] as? [Any])?.count == 2, "\(search)")
        let verify = try chatlogAsUser(sandbox, ["verify"], db: store.db)
        #expect(verify.out.contains("all well"), "\(verify)")
        let export = try chatlogAsUser(sandbox, ["export"], db: store.db)
        #expect(export.out.contains("the lighthouse keeper"), "\(export)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: store.db)) == before, "the read-only store changed")

        // A command that writes says the store is read-only (exit 1), and changes nothing.
        let log = try chatlogAsUser(sandbox, ["log", "--text", "refused"], db: store.db)
        #expect(log.status == 1, "\(log)")
        #expect(log.err.contains("read-only") || log.err.contains("readonly"), "\(log)")
        #expect(try sidecars(store.directory).isEmpty)
        #expect(try Data(contentsOf: URL(fileURLWithPath: store.db)) == before)
    }

    @Test func a0444FileInAWritableDirectoryLeavesNoWALOrSHM() throws {
        try ensureServiceUser()
        let sandbox = try Sandbox()
        let store = try makeStore(sandbox, name: "readonly-file")
        if geteuid() == 0, let uid = ServiceUserTests.serviceUID {
            #expect(chown(store.db, uid, 0) == 0 && chown(store.directory, uid, 0) == 0)
        }
        #expect(chmod(store.db, 0o444) == 0)
        for arguments in Self.readingCommands {
            let result = try chatlogAsUser(sandbox, arguments, db: store.db)
            #expect(result.status == 0, "\(arguments): \(result)")
            let left = try sidecars(store.directory)
            #expect(left.isEmpty, "\(arguments) left \(left)")
        }
    }

    @Test func readingAWritableStoreLeavesItAsItWas() throws {
        let sandbox = try Sandbox()
        let store = try makeStore(sandbox, name: "writable")
        for arguments in Self.readingCommands {
            let result = try sandbox.chatlog(arguments + ["--db", store.db])
            #expect(result.status == 0, "\(arguments): \(result)")
            let left = try sidecars(store.directory)
            #expect(left.isEmpty, "\(arguments) left \(left)")
        }
        // Writers still work after readers.
        #expect(try sandbox.chatlog(["log", "--db", store.db, "--text", "more"]).status == 0)
    }
}
