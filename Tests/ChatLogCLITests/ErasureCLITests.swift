import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// `chatlog forget --subject` and `export --subject` end to end (issue 15, docs/SECURITY.md
/// "Erasure of a subject", docs/OPERATIONS.md "Subject keys").
@Suite struct ErasureCLITests {
    static let words = "quokkaflux zymurgist obelisklantern"

    /// alice: two conversations (one continued), bob: one; returns their ids.
    static func fill(_ sandbox: Sandbox) throws -> (alice: [String], bob: String) {
        try sandbox.initStore()
        let first = try sandbox.log(["--subject", "alice", "--title", "alice one", "--text", "alice says \(words)"])
        _ = try sandbox.log(["--conversation", first.conversation_id, "--text", "alice again \(words)"])
        let second = try sandbox.log(["--subject", "alice", "--title", "alice two", "--text", "more from alice \(words)"])
        let bob = try sandbox.log(["--subject", "bob", "--title", "bob", "--text", "bob asks about apples"])
        return ([first.conversation_id, second.conversation_id], bob.conversation_id)
    }

    /// Hex of every sealed value of `conversations` in `database` (titles, subjects, contents).
    static func sealedHex(_ sandbox: Sandbox, _ database: String, _ conversations: [String]) throws -> [String] {
        let ids = conversations.map { "'\($0)'" }.joined(separator: ",")
        let out = try sandbox.sqlite(
            database,
            """
            SELECT hex(title) FROM conversations WHERE id IN (\(ids))
            UNION ALL SELECT hex(subject) FROM conversations WHERE id IN (\(ids))
            UNION ALL SELECT hex(m.content) FROM messages m JOIN conversations c ON c.seq = m.conversation_seq WHERE c.id IN (\(ids));
            """)
        return out.split(separator: "\n").map(String.init)
    }

    static func restore(_ sandbox: Sandbox, from backup: String) throws {
        for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: sandbox.path("chatlog.db" + suffix)) }
        try FileManager.default.copyItem(atPath: sandbox.path(backup), toPath: sandbox.path("chatlog.db"))
    }

    @Test func backupForgetRestoreRefusesTheSubjectAndOpensTheRest() throws {
        let sandbox = try Sandbox()
        let (alice, bob) = try Self.fill(sandbox)
        #expect(sandbox.fileMode("chatlog.db.subject-keys") == 0o600)
        #expect(try sandbox.chatlog(["backup", "old.db"]).status == 0)
        let sealed = try Self.sealedHex(sandbox, "old.db", alice)
        #expect(sealed.count == 7)

        let forgot = try sandbox.chatlog(["forget", "--subject", "alice", "--json"])
        #expect(forgot.status == 0, "\(forgot)")
        let report = try jsonObject(forgot.stdout)
        #expect(report["conversations"] as? Int == 2 && report["messages"] as? Int == 3 && report["subject_keys"] as? Int == 1)
        #expect((report["receipt"] as? String)?.count == 64)
        #expect(try sandbox.list().map(\.id) == [bob])
        #expect(try sandbox.chatlog(["verify"]).status == 0)
        // The receipt is found again from the subject (keyed hash), never listing the subject.
        let receipts = try sandbox.chatlog(["forget", "--receipts", "--subject", "alice", "--json"])
        #expect(receipts.status == 0, "\(receipts)")
        let listed = try jsonArray(receipts.stdout)
        #expect(listed.count == 1 && listed.first?["subject_hash"] as? String == report["receipt"] as? String)
        #expect(listed.first?["conversations"] as? Int == 2 && listed.first?["messages"] as? Int == 3)
        #expect(try sandbox.chatlog(["forget", "--receipts", "--subject", "bob"]).status == 66)
        let all = try sandbox.chatlog(["forget", "--receipts"])
        #expect(all.status == 0 && all.out.split(separator: "\n").count == 1 && !all.out.contains("alice"))

        // No byte of alice's sealed values in the live files (database, WAL, subject keys).
        for file in ["chatlog.db", "chatlog.db-wal", "chatlog.db.subject-keys"] {
            guard let data = FileManager.default.contents(atPath: sandbox.path(file)) else { continue }
            for value in sealed {
                let tail = Data(hexString: String(value.suffix(48)))!
                #expect(data.range(of: tail) == nil, "\(file) still holds a sealed value of the forgotten subject")
            }
        }

        // The old backup, restored with the current subject-key file: alice's rows refuse to open.
        try Self.restore(sandbox, from: "old.db")
        for id in alice {
            let shown = try sandbox.chatlog(["show", id])
            #expect(shown.status == 4, "\(shown)")
            #expect(shown.err.contains(id) && shown.err.contains("forgotten subject"), "\(shown.err)")
            #expect(!shown.err.contains("alice"))
        }
        #expect(try sandbox.show(bob).messages.map(\.content) == ["bob asks about apples"])
        let exported = try sandbox.chatlog(["export", "--skip-damaged"])
        #expect(exported.status == 4)
        #expect(exported.out.split(separator: "\n").count == 1 && exported.out.contains("bob asks about apples"))
        let verified = try sandbox.chatlog(["verify", "--json"])
        #expect(verified.status == 4)
        #expect(verified.out.contains("belongs to a forgotten subject"))
        // verify --repair deletes them; then all is well.
        let repaired = try sandbox.chatlog(["verify", "--repair"])
        #expect(repaired.status == 0, "\(repaired)")
        #expect(try sandbox.list().map(\.id) == [bob])
    }

    @Test func forgettingAnUnknownSubjectChangesNothingAndSaysSo() throws {
        let sandbox = try Sandbox()
        _ = try Self.fill(sandbox)
        // Every open bumps SQLite's header counters: compare the content (a full dump) instead.
        let before = try sandbox.sqlite("chatlog.db", ".dump")
        let keysBefore = FileManager.default.contents(atPath: sandbox.path("chatlog.db.subject-keys"))
        for arguments in [["forget", "--subject", "carol"], ["forget", "--subject", "carol", "--dry-run"]] {
            let result = try sandbox.chatlog(arguments)
            #expect(result.status == 66, "\(result)")
            #expect(result.out == "no conversation of that subject; nothing changed\n")
        }
        #expect(try sandbox.sqlite("chatlog.db", ".dump") == before)
        #expect(FileManager.default.contents(atPath: sandbox.path("chatlog.db.subject-keys")) == keysBefore)
    }

    @Test func aDryRunCountsOnly() throws {
        let sandbox = try Sandbox()
        let (alice, _) = try Self.fill(sandbox)
        let result = try sandbox.chatlog(["forget", "--subject", "alice", "--dry-run"])
        #expect(result.status == 0)
        #expect(result.out == "would erase 2 conversations (3 messages) and 1 subject key; nothing changed (dry run)\n")
        #expect(try sandbox.show(alice[0]).messages.count == 2)
    }

    @Test func exportSubjectGivesEverythingOfOneEndUser() throws {
        let sandbox = try Sandbox()
        let (alice, bob) = try Self.fill(sandbox)
        let result = try sandbox.chatlog(["export", "--subject", "alice"])
        #expect(result.status == 0, "\(result)")
        let lines = result.out.split(separator: "\n")
        #expect(lines.count == 2)
        #expect(alice.allSatisfy { result.out.contains($0) } && !result.out.contains(bob) && !result.out.contains("apples"))
        #expect(result.out.contains("alice again"))
        let none = try sandbox.chatlog(["export", "--subject", "nobody"])
        #expect(none.status == 0 && none.out.isEmpty)
    }

    /// The subject is personal data: `--subject-file` (or `-` for stdin) keeps it out of `ps`.
    @Test func theSubjectCanComeFromAFileOrStandardInput() throws {
        let sandbox = try Sandbox()
        let (alice, bob) = try Self.fill(sandbox)
        try sandbox.write("alice\n", to: "subject.txt", mode: 0o600)
        let exported = try sandbox.chatlog(["export", "--subject-file", "subject.txt"])
        #expect(exported.status == 0 && exported.out.split(separator: "\n").count == 2, "\(exported)")
        #expect(alice.allSatisfy { exported.out.contains($0) } && !exported.out.contains(bob))
        let dry = try sandbox.chatlog(["forget", "--subject-file", "-", "--dry-run"], stdin: Data("alice\n".utf8))
        #expect(dry.status == 0 && dry.out.hasPrefix("would erase 2 conversations"), "\(dry)")
        let forgot = try sandbox.chatlog(["forget", "--subject-file", "-"], stdin: Data("bob".utf8))
        #expect(forgot.status == 0 && forgot.out.hasPrefix("erased 1 conversation"), "\(forgot)")
        #expect(try sandbox.chatlog(["forget", "--receipts", "--subject-file", "-"], stdin: Data("bob\n".utf8)).out.contains("1 conversations"))
        // Bad files: one specific line each, nothing changed.
        try sandbox.write("alice\nbob\n", to: "two.txt", mode: 0o600)
        try sandbox.write("", to: "empty.txt", mode: 0o600)
        for (arguments, says) in [
            (["forget", "--subject-file", "two.txt"], "more than one line"), (["forget", "--subject-file", "empty.txt"], "is empty"),
            (["forget", "--subject-file", "missing.txt"], "cannot be read"), (["forget", "--subject-file", "."], "cannot be read"),
            (["forget", "--subject", "alice", "--subject-file", "two.txt"], "not both"),
        ] {
            let result = try sandbox.chatlog(arguments)
            #expect(result.status == 65 || result.status == 64, "\(arguments): \(result)")
            #expect(result.err.contains(says), "\(arguments): \(result)")
        }
        #expect(try sandbox.show(alice[0]).messages.count == 2)
    }

    @Test func keyStatusCountsSubjectKeysWithoutNamingThem() throws {
        let sandbox = try Sandbox()
        _ = try Self.fill(sandbox)
        #expect(try sandbox.chatlog(["forget", "--subject", "bob"]).status == 0)
        let text = try sandbox.chatlog(["key", "status"])
        #expect(text.status == 0)
        #expect(text.out.contains("subject keys  1  (1 forgotten)"))
        #expect(!text.out.contains("alice") && !text.out.contains("bob"))
        let json = try jsonObject(try sandbox.chatlog(["key", "status", "--json"]).stdout)
        #expect(json["subject_keys"] as? Int == 1 && json["forgotten_subject_keys"] as? Int == 1)
    }

    @Test func theSubjectKeyFileUnderAnotherMasterKeyIsAClearError() throws {
        let sandbox = try Sandbox()
        let (alice, bob) = try Self.fill(sandbox)
        // Rewrapped while the subject-key file was away: it is still under the old key.
        try FileManager.default.moveItem(atPath: sandbox.path("chatlog.db.subject-keys"), toPath: sandbox.path("away"))
        let newKey = sandbox.makeKey()
        let rewrap = try sandbox.chatlog(["key", "rewrap"], env: sandbox.environment.merging(["CHATLOG_NEW_MASTER_KEY": newKey]) { $1 })
        #expect(rewrap.status == 0, "\(rewrap)")
        try FileManager.default.moveItem(atPath: sandbox.path("away"), toPath: sandbox.path("chatlog.db.subject-keys"))
        let env = sandbox.environment.merging(["CHATLOG_MASTER_KEY": newKey]) { $1 }
        let shown = try sandbox.chatlog(["show", alice[0]], env: env)
        #expect(shown.status == 77, "\(shown)")
        #expect(shown.err.contains("subject-key file ") && shown.err.contains("not wrapped under this master key"), "\(shown.err)")
        #expect(try sandbox.chatlog(["show", bob], env: env).status == 77)
        // Another store's subject-key file is refused too.
        let other = try Sandbox()
        _ = try Self.fill(other)
        try FileManager.default.removeItem(atPath: sandbox.path("chatlog.db.subject-keys"))
        try FileManager.default.copyItem(atPath: other.path("chatlog.db.subject-keys"), toPath: sandbox.path("chatlog.db.subject-keys"))
        let foreign = try sandbox.chatlog(["show", alice[0]], env: env)
        #expect(foreign.status == 77 && foreign.err.contains("belongs to another store"), "\(foreign)")
    }

    @Test(arguments: ["rows-deleted", "store-checkpointed", "keys-destroyed", "receipt-written"])
    func aKillDuringForgetIsFinishedByTheNextRun(step: String) throws {
        let sandbox = try Sandbox()
        let (alice, bob) = try Self.fill(sandbox)
        #expect(try sandbox.chatlog(["backup", "old.db"]).status == 0)
        let killed = try run(
            ["forget", "--db", sandbox.path("chatlog.db"), "--subject", "alice", "--kill-after", step], env: sandbox.environment, stdin: nil,
            cwd: sandbox.directory, executable: try Hardening.driverURL())
        #expect(killed.status == 128 + SIGKILL, "\(killed)")
        // Never half-forgotten: the rows are gone whatever happened to the key.
        #expect(try sandbox.list().map(\.id) == [bob])
        let pending = step == "receipt-written" ? 0 : 1
        let verified = try sandbox.chatlog(["verify"])
        #expect(verified.status == (pending == 0 ? 0 : 4), "\(verified)")
        // The next forget (of anyone) finishes it first.
        let next = try sandbox.chatlog(["forget", "--subject", "nobody"])
        #expect(next.status == 66)
        #expect(try sandbox.chatlog(["verify"]).status == 0)
        let status = try jsonObject(try sandbox.chatlog(["key", "status", "--json"]).stdout)
        #expect(status["subject_keys"] as? Int == 1 && status["forgotten_subject_keys"] as? Int == 1)
        #expect(try sandbox.sqlite("chatlog.db", "SELECT count(*), sum(conversations), sum(messages) FROM forget_receipts") == "1|2|3")
        try Self.restore(sandbox, from: "old.db")
        #expect(try sandbox.chatlog(["show", alice[1]]).status == 4)
        #expect(try sandbox.chatlog(["show", bob]).status == 0)
    }

    @Test func resumeFinishesAnInterruptedForget() throws {
        let sandbox = try Sandbox()
        _ = try Self.fill(sandbox)
        let killed = try run(
            ["forget", "--db", sandbox.path("chatlog.db"), "--subject", "alice", "--kill-after", "rows-deleted"], env: sandbox.environment,
            stdin: nil, cwd: sandbox.directory, executable: try Hardening.driverURL())
        #expect(killed.status == 128 + SIGKILL)
        let resumed = try sandbox.chatlog(["forget", "--resume"])
        #expect(resumed.status == 0 && resumed.out == "finished 1 interrupted forget\n", "\(resumed)")
        #expect(try sandbox.chatlog(["forget", "--resume"]).out == "no interrupted forget; nothing changed\n")
    }

    @Test func backupOfTheSubjectKeysIsASeparateFile() throws {
        let sandbox = try Sandbox()
        let (alice, _) = try Self.fill(sandbox)
        let stored = try sandbox.chatlog(["backup", "old.db"])
        #expect(stored.status == 0 && stored.err.contains("does not hold the subject keys") && stored.err.contains("--subject-keys"), "\(stored)")
        let result = try sandbox.chatlog(["backup", "--subject-keys", "old.subject-keys"])
        #expect(result.status == 0, "\(result)")
        #expect(sandbox.fileMode("old.subject-keys") == 0o600)
        // The store backup holds no subject key: restoring both files undoes a forget (hence
        // the shorter retention for subject-key backups, docs/OPERATIONS.md).
        #expect(try sandbox.chatlog(["forget", "--subject", "alice"]).status == 0)
        try Self.restore(sandbox, from: "old.db")
        #expect(try sandbox.chatlog(["show", alice[0]]).status == 4)
        try FileManager.default.removeItem(atPath: sandbox.path("chatlog.db.subject-keys"))
        try FileManager.default.copyItem(atPath: sandbox.path("old.subject-keys"), toPath: sandbox.path("chatlog.db.subject-keys"))
        #expect(try sandbox.show(alice[0]).messages.count == 2)
    }
}

extension Data {
    init?(hexString: String) {
        var bytes: [UInt8] = []
        var index = hexString.startIndex
        while index < hexString.endIndex {
            let next = hexString.index(index, offsetBy: 2, limitedBy: hexString.endIndex) ?? hexString.endIndex
            guard let byte = UInt8(hexString[index..<next], radix: 16) else { return nil }
            bytes.append(byte)
            index = next
        }
        self.init(bytes)
    }
}
