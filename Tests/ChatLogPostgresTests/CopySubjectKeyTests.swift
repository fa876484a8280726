import Foundation
import GRDB
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@testable import ChatLog
@testable import ChatLogPostgres

extension PostgreSQLSuites {
    /// `chatlog copy` with the subject keys (ChatLogStore+Copy.swift, SubjectKeyCopy.swift,
    /// PostgresSubjectKeys+Copy.swift): the keys, forgotten ids, pending forgets and receipts go
    /// with the store in every direction, as bytes; the refusals come before anything is written.
    @Suite("copy with subject keys")
    struct CopySubjectKeyTests {
        typealias Erasure = ErasureBackendTests

        /// A destination of `backend`: the URL or path, its subject-key URL (PostgreSQL), and raw SQL on its data.
        struct Destination {
            let location: String
            let subjectKeys: String?
            let data: PostgresDatabase?
            let keys: PostgresDatabase?

            func open(_ key: MasterKey) async throws -> ChatLogStore {
                try await ChatLogStore.open(url: location, key: .key(key), subjectKeys: subjectKeys)
            }

            func dataSQL(_ sql: String) throws -> String {
                if let data { return try data.psql(sql) }
                let queue = try DatabaseQueue(path: location)
                defer { try? queue.close() }
                return try queue.read { db in try String.fetchOne(db, sql: sql) ?? "" }
            }
        }

        static func withDestination<R>(_ backend: Backend, _ body: (Destination) async throws -> R) async throws -> R {
            switch backend {
            case .sqlite:
                return try await withSQLiteLocation { path in try await body(Destination(location: path, subjectKeys: nil, data: nil, keys: nil)) }
            case .postgres:
                return try await withPostgresLocation { url, data in
                    try await withPostgresLocation { keysURL, keys in
                        try await body(Destination(location: url, subjectKeys: keysURL, data: data, keys: keys))
                    }
                }
            }
        }

        /// Opening `sealed` (a title of conversation `id`) in `store`: the integrity reason, nil when it opens.
        static func openFailure(_ store: ChatLogStore, _ sealed: Data, _ id: ConversationID) async throws -> IntegrityFailure.Reason? {
            try await store.ensureSubjectKeys(for: [sealed])
            do throws(ChatLogError) {
                _ = try store.openText(sealed, FieldContext(table: "conversations", column: "title", rowID: id.rawValue))
                return nil
            } catch .integrity(let failure) {
                return failure.reason
            }
        }

        static let pairs: [(Backend, Backend)] = [(.sqlite, .postgres), (.postgres, .sqlite), (.postgres, .postgres), (.sqlite, .sqlite)]

        @Test(
            "a store with live, forgotten and pending-forget subjects copied SQLite→PG, PG→SQLite, PG→PG and SQLite→SQLite: live subjects open, search and export, the forgotten one fails as on the source, receipts and key counts equal, verify clean after resume; forget on the copy leaves the source alone",
            arguments: pairs)
        func carriesKeys(from: Backend, to: Backend) async throws {
            try await withErasureStore(from) { harness in
                let source = harness.store
                let (alice, bob, _) = try await Erasure.fill(source)
                let carol = try await source.createConversation(NewConversation(title: "carol's", subject: "carol"))
                let carolTitle = try await Erasure.sealed(harness, carol)[0]
                _ = try await source.createConversation(NewConversation(title: "dave's", subject: "dave"))
                #expect(try await source.erasure.forget(subject: "carol")?.conversations == 1)
                // dave's forget killed after its rows were deleted: pending, its key still live.
                let killed = try ProcessOutput.run(
                    testDriverBinary(), ["forget", "--db", harness.location, "--subject", "dave", "--kill-after", ForgetStep.rowsDeleted.rawValue],
                    env: harness.environment, cwd: NSTemporaryDirectory())
                #expect(killed.status == 128 + SIGKILL, "\(killed)")
                #expect(try await source.erasure.pending() == 1)
                let sourceReceipts = try await source.erasure.receipts()
                let sourceCounts = try await source.erasure.keyCounts()
                #expect(sourceCounts == (3, 1))
                let fresh = try await harness.reopen()
                defer { try? fresh.close() }
                let carolFailure = try await Self.openFailure(fresh, carolTitle, carol)
                #expect(carolFailure.map { if case .forgottenSubjectKey = $0 { true } else { false } } == true, "\(String(describing: carolFailure))")

                try await Self.withDestination(to) { destination in
                    let report = try await source.copy(to: destination.location, subjectKeys: destination.subjectKeys)
                    #expect(report.subjectKeys == 3 && report.forgottenSubjectKeys == 1 && report.forgetReceipts == 1 && report.pendingForgets == 1, "\(report)")
                    #expect(report.notCopied.isEmpty && report.conversations == 4 && report.verifiedConversations == 4, "\(report)")
                    #expect(try destination.dataSQL("SELECT count(*) FROM conversations WHERE erasure_key_id IS NOT NULL") == "3")
                    if to == .sqlite {
                        let keyFile = destination.location + SubjectKeyFile.suffix
                        #expect(try FileManager.default.attributesOfItem(atPath: keyFile)[.posixPermissions] as? Int == 0o600)
                    }
                    let copy = try await destination.open(harness.key)
                    defer { try? copy.close() }
                    #expect(try await copy.transcript(alice[0]).messages.map(\.content).first == "alice says \(Erasure.words)")
                    #expect(try await copy.transcript(bob).conversation.title == "bob")
                    #expect(try await copy.search("zymurgist").hits.count == 3)
                    var exported: [String] = []
                    let totals = try await copy.exportOpenAIJSONL(ExportFilter(subject: "alice")) { exported.append(String(decoding: $0, as: UTF8.self)) }
                    #expect(totals.conversations == 2 && exported.allSatisfy { $0.contains("alice") })
                    // The forgotten subject: the same failure as on the source.
                    #expect(try await Self.openFailure(copy, carolTitle, carol) == carolFailure)
                    #expect(try await copy.erasure.receipts() == sourceReceipts)
                    #expect(try await copy.erasure.receiptHash(subject: "carol") == (try await source.erasure.receiptHash(subject: "carol")))
                    #expect(try await copy.erasure.keyCounts() == sourceCounts)
                    #expect(try await copy.erasure.pending() == 1)
                    #expect(try await copy.verify().issueCount == 1)  // the pending forget, as on the source

                    // The copy's own forgets: the pending one finished, bob forgotten; the source keeps both.
                    #expect(try await copy.erasure.resume() == 1)
                    #expect(try await copy.erasure.forget(subject: "bob")?.conversations == 1)
                    #expect(try await copy.erasure.keyCounts() == (1, 3))
                    #expect(try await copy.erasure.receipts().count == 3)
                    #expect(try await copy.verify().issueCount == 0)
                    let again = try await harness.reopen()
                    defer { try? again.close() }
                    #expect(try await again.transcript(bob).messages.count == 2)
                    #expect(try await again.erasure.keyCounts() == sourceCounts)
                    #expect(try await again.erasure.pending() == 1)
                    #expect(try await again.erasure.receipts() == sourceReceipts)
                }
            }
        }

        @Test("an interrupted copy is finished by a rerun: keys, conversations and receipts missing at the destination are put back; a key database filled by an earlier run is taken as it is; keys deleted at the destination make verify name the conversations, and a rerun puts them back")
        func resumes() async throws {
            try await withErasureStore(.sqlite) { harness in
                let source = harness.store
                let (alice, _, _) = try await Erasure.fill(source)
                #expect(try await source.erasure.forget(subject: "bob")?.conversations == 1)
                try await withPostgresLocation { keysURL, keys in
                    try await withPostgresLocation { url, data in
                        _ = try await source.copy(to: url, subjectKeys: keysURL)
                        // As if killed after the keys' first batch and a few conversations: rows gone again.
                        try keys.psql("DELETE FROM subject_keys WHERE id = (SELECT max(id) FROM subject_keys)")
                        try data.psql("DELETE FROM conversations WHERE id = '\(alice[1].rawValue)'; DELETE FROM forget_receipts; DELETE FROM forgotten_subject_keys")
                        let resumed = try await source.copy(to: url, subjectKeys: keysURL)
                        #expect(resumed.conversations == 1 && resumed.alreadyCopied == 2 && resumed.forgetReceipts == 1, "\(resumed)")
                        #expect(try keys.psql("SELECT count(*) FROM subject_keys") == "1")
                        let copy = try await ChatLogStore.open(url: url, key: .key(harness.key), subjectKeys: keysURL)
                        defer { try? copy.close() }
                        #expect(try await copy.transcript(alice[1]).conversation.title == "alice two")
                        #expect(try await copy.verify().issueCount == 0)
                        #expect(try await copy.erasure.receipts() == (try await source.erasure.receipts()))

                        // A key missing at the destination (deleted behind chatlog's back): verify says which
                        // conversation cannot open, and a rerun of the copy puts it back.
                        try keys.psql("DELETE FROM subject_keys")
                        let fresh = try await ChatLogStore.open(url: url, key: .key(harness.key), subjectKeys: keysURL)
                        defer { try? fresh.close() }
                        let broken = try await fresh.verify()
                        #expect(broken.issueCount >= 2 && broken.issues.contains { $0.problem.contains("names subject key") }, "\(broken.issues)")
                        #expect(try await source.copy(to: url, subjectKeys: keysURL).subjectKeys == 1)
                        #expect(try keys.psql("SELECT count(*) FROM subject_keys") == "1")
                    }
                    // The same key database for a new data database (a run killed after the keys): taken as it is.
                    try await withPostgresLocation { url, _ in
                        let report = try await source.copy(to: url, subjectKeys: keysURL)
                        #expect(report.subjectKeys == 1 && report.conversations == 3, "\(report)")
                    }
                }
            }
        }

        @Test("refused before anything is written, in one line naming no subject: no subject-key database for a PostgreSQL destination, the data's own database, a database holding a store, the source's own key database (also by another name), another store's keys, other keys of this store, a missing source key file, the option with a file destination; a password in --subject-keys-to (CLI); forget receipts without a reachable subject-key store (PostgreSQL without CHATLOG_SUBJECT_KEYS, SQLite without its key file)")
        func refusals() async throws {
            try await withErasureStore(.postgres) { harness in
                _ = try await Erasure.fill(harness.store)
                func refused(_ location: String, _ subjectKeys: String?, _ expected: String) async throws {
                    do {
                        _ = try await harness.store.copy(to: location, subjectKeys: subjectKeys)
                        Issue.record("copied: \(expected)")
                    } catch {
                        let text = "\(error)"
                        #expect(text.contains(expected), "\(text)")
                        #expect(!text.contains("alice") && !text.contains("bob") && !text.contains("\n"), "\(text)")
                    }
                }
                try await withPostgresLocation { url, data in
                    try await refused(url, nil, "--subject-keys-to")
                    try await refused(url, url, "data's own database")
                    try await refused(url, harness.location, "holds a chatlog store's data")
                    try await refused(url, harness.subjectKeys, "source's own subject-key store")
                    // The same, reached by another name (a link to the server's socket folder).
                    try await withAliasedPostgresURL(try #require(harness.subjectKeys)) { aliased in
                        try await refused(url, aliased, "source's own subject-key store")
                    }
                    // Another store's keys.
                    try await withErasureStore(.postgres) { other in
                        _ = try await other.store.createConversation(NewConversation(subject: "someone"))
                        try await refused(url, other.subjectKeys, "another store's subject keys")
                    }
                    #expect(try data.psql("SELECT to_regclass('conversations') IS NULL") == "t")
                    // Other keys of this store (here: a copy's whose hash key was replaced).
                    try await withPostgresLocation { keysURL, keys in
                        try await withPostgresLocation { first, _ in _ = try await harness.store.copy(to: first, subjectKeys: keysURL) }
                        try keys.psql("UPDATE subject_key_meta SET value = '\\x00' WHERE name = 'hash_key'")
                        try await refused(url, keysURL, "is not empty")
                    }
                    // A key id of this store held there for another subject (an id given out on both sides
                    // since an earlier copy): refused, nothing added (the id is not unique in the table).
                    try await withPostgresLocation { keysURL, keys in
                        try await withPostgresLocation { first, _ in _ = try await harness.store.copy(to: first, subjectKeys: keysURL) }
                        try keys.psql("UPDATE subject_keys SET subject_hash = '\\x00' WHERE id = (SELECT min(id) FROM subject_keys)")
                        let before = try keys.psql("SELECT count(*) FROM subject_keys")
                        try await withPostgresLocation { second, secondData in
                            try await refused(second, keysURL, "with other bytes than the source")
                            #expect(try secondData.psql("SELECT count(*) FROM conversations") == "0")
                        }
                        #expect(try keys.psql("SELECT count(*) FROM subject_keys") == before)
                    }
                    #expect(try data.psql("SELECT to_regclass('conversations') IS NULL") == "t")
                }
                try await withSQLiteLocation { path in
                    try await refused(path, harness.subjectKeys!, "for a PostgreSQL destination")
                    // A PostgreSQL source without its key database: the keys are not reachable.
                    let blind = try await ChatLogStore.open(url: harness.location, key: .key(harness.key))
                    defer { try? blind.close() }
                    do {
                        _ = try await blind.copy(to: path)
                        Issue.record("copied without the subject keys")
                    } catch {
                        #expect("\(error)".contains("3 conversations are sealed under per-subject keys, whose keys are not reachable (CHATLOG_SUBJECT_KEYS"), "\(error)")
                    }
                    #expect(!FileManager.default.fileExists(atPath: path) && !FileManager.default.fileExists(atPath: path + SubjectKeyFile.suffix))
                }
            }
            // A SQLite store whose key file is missing.
            try await withErasureStore(.sqlite) { harness in
                _ = try await Erasure.fill(harness.store)
                let keyFile = harness.location + SubjectKeyFile.suffix
                try FileManager.default.moveItem(atPath: keyFile, toPath: keyFile + ".away")
                try await withSQLiteLocation { path in
                    let store = try ChatLogStore.open(at: harness.location, key: .key(harness.key))
                    defer { try? store.close() }
                    do {
                        _ = try await store.copy(to: path)
                        Issue.record("copied without the subject keys")
                    } catch {
                        #expect("\(error)".contains("chat.db.subject-keys is missing"), "\(error)")
                    }
                    #expect(!FileManager.default.fileExists(atPath: path))
                }
                // The CLI refuses a password in --subject-keys-to before connecting.
                var env = harness.environment
                env["CHATLOG_DB"] = harness.location
                let cli = try ProcessOutput.run(
                    chatlogBinary(), ["copy", "--to", "postgresql://u@/x?host=/nonexistent", "--subject-keys-to", "postgresql://u:hunter2@/y?host=/nonexistent"],
                    env: env, cwd: NSTemporaryDirectory())
                #expect(cli.status == 65 && cli.err.contains("--subject-keys-to must not carry a password") && !cli.err.contains("hunter2"), "\(cli)")
            }
            // Every subject forgotten: no conversation under a subject key, but the receipts need the keys' store.
            try await withErasureStore(.sqlite) { harness in
                _ = try await harness.store.createConversation(NewConversation(subject: "gone"))
                #expect(try await harness.store.erasure.forget(subject: "gone")?.conversations == 1)
                try await withPostgresLocation { (url: String, data: PostgresDatabase) async throws in
                    do {
                        _ = try await harness.store.copy(to: url)
                        Issue.record("copied without the subject keys")
                    } catch {
                        #expect("\(error)".contains("(its forget receipts and forgotten key ids go with them)"), "\(error)")
                    }
                    #expect(try data.psql("SELECT to_regclass('conversations') IS NULL") == "t")
                }
            }
            // Every subject forgotten and the source's subject-key store out of reach (a PostgreSQL store
            // opened without CHATLOG_SUBJECT_KEYS; a SQLite store whose key file is away): the forgotten
            // ids would go without the key store's next id, so the copy is refused.
            let unreachable = "forget receipts or forgotten subject-key ids, and its subject-key store, which must go with them, is not reachable ("
            /// A harness store whose one subject is forgotten; `reopen` gives the handle to copy from
            /// without its subject-key store, whose copy into a new file must be refused naming `missing`.
            func refusesReceiptsWithoutKeys(_ backend: Backend, missing: String, reopen: (ErasureStoreHarness) async throws -> ChatLogStore) async throws {
                try await withErasureStore(backend) { harness in
                    _ = try await harness.store.createConversation(NewConversation(subject: "gone"))
                    #expect(try await harness.store.erasure.forget(subject: "gone")?.conversations == 1)
                    let source = try await reopen(harness)
                    defer { try? source.close() }
                    try await withSQLiteLocation { path in
                        do {
                            _ = try await source.copy(to: path)
                            Issue.record("copied the receipts without the subject-key store (\(backend))")
                        } catch {
                            #expect("\(error)".contains(unreachable) && "\(error)".contains(missing), "\(error)")
                        }
                        #expect(!FileManager.default.fileExists(atPath: path))
                    }
                }
            }
            try await refusesReceiptsWithoutKeys(.postgres, missing: "(CHATLOG_SUBJECT_KEYS") { harness in
                try await ChatLogStore.open(url: harness.location, key: .key(harness.key))
            }
            try await refusesReceiptsWithoutKeys(.sqlite, missing: "subject-keys is missing") { harness in
                let keyFile = harness.location + SubjectKeyFile.suffix
                try FileManager.default.moveItem(atPath: keyFile, toPath: keyFile + ".away")
                return try ChatLogStore.open(at: harness.location, key: .key(harness.key))
            }
        }

        @Test("the CLI: `chatlog copy --to URL --subject-keys-to URL` of a SQLite store with subjects; on the copy `forget --receipts` (also by subject), `key status` and `export --subject` answer as on the source; the copy's report names the keys and receipts")
        func cli() async throws {
            try await withErasureStore(.sqlite) { harness in
                func chatlog(_ arguments: [String], _ env: [String: String]) throws -> ProcessOutput {
                    try ProcessOutput.run(chatlogBinary(), arguments, env: env, cwd: NSTemporaryDirectory())
                }
                let here = harness.environment
                for (subject, text) in [("user-1", "first quokkaflux"), ("user-2", "second zymurgist"), ("user-3", "third")] {
                    #expect(try chatlog(["log", "--subject", subject, "--text", text], here).status == 0)
                }
                #expect(try chatlog(["forget", "--subject", "user-2"], here).status == 0)
                try await withPostgresLocation { url, _ in
                    try await withPostgresLocation { keysURL, _ in
                        let copied = try chatlog(["copy", "--to", url, "--subject-keys-to", keysURL], here)
                        #expect(copied.status == 0, "\(copied)")
                        #expect(copied.out.contains("subject keys: 2 copied, 1 forgotten ids listed; 1 forget receipts and 0 interrupted forgets copied"), "\(copied)")
                        var there = here
                        there["CHATLOG_DB"] = url
                        there["CHATLOG_SUBJECT_KEYS"] = keysURL
                        for arguments in [["forget", "--receipts"], ["forget", "--receipts", "--subject", "user-2"], ["key", "status"], ["export", "--subject", "user-1"]] {
                            let (a, b) = (try chatlog(arguments, here), try chatlog(arguments, there))
                            #expect(a.status == 0 && b.status == 0 && !a.out.isEmpty, "\(arguments): \(a) \(b)")
                            if arguments[0] == "key" {
                                // The store's location differs; the subject-key line is the same.
                                let line = { (out: String) in out.split(separator: "\n").first { $0.hasPrefix("subject keys") } }
                                #expect(line(a.out) != nil && line(a.out) == line(b.out), "\(a.out) \(b.out)")
                            } else {
                                #expect(a.out == b.out, "\(arguments)")
                            }
                        }
                        #expect(try chatlog(["export", "--subject", "user-1"], there).out.contains("first quokkaflux"))
                    }
                }
            }
        }

        @Test("a backup of a PostgreSQL store (a SQLite file, no keys next to it) restores with --subject-keys-to the key database it was made from; without it, or next to a key database of the store that lacks the keys, the restore is refused")
        func restoresBackup() async throws {
            try await withErasureStore(.postgres) { harness in
                let (alice, _, _) = try await Erasure.fill(harness.store)
                #expect(try await harness.store.erasure.forget(subject: "bob")?.conversations == 1)
                try await withSQLiteLocation { path in
                    let backupFile = (path as NSString).deletingLastPathComponent + "/backup.db"
                    let made = try #require(try await harness.store.backup(to: backupFile))
                    #expect(made.forgetReceipts == 1 && made.subjectKeys == 0, "\(made)")
                    let backup = try ChatLogStore.open(at: backupFile, key: .key(harness.key))
                    defer { try? backup.close() }
                    try await withPostgresLocation { url, data in
                        do {
                            _ = try await backup.copy(to: url)
                            Issue.record("restored without the key database")
                        } catch {
                            #expect("\(error)".contains("whose keys are not reachable (\(backupFile).subject-keys is missing"), "\(error)")
                        }
                        #expect(try data.psql("SELECT to_regclass('conversations') IS NULL") == "t")
                        // A key database of this store that lacks the keys: the copy's check fails.
                        try await withPostgresLocation { keysURL, keys in
                            try await withPostgresLocation { scratch, _ in _ = try await harness.store.copy(to: scratch, subjectKeys: keysURL) }
                            try keys.psql("DELETE FROM subject_keys")
                            try await withPostgresLocation { elsewhere, _ in
                                do {
                                    _ = try await backup.copy(to: elsewhere, subjectKeys: keysURL)
                                    Issue.record("restored next to a key database without the keys")
                                } catch {
                                    #expect("\(error)".contains("is neither there nor forgotten"), "\(error)")
                                }
                            }
                        }
                        let report = try await backup.copy(to: url, subjectKeys: harness.subjectKeys)
                        #expect(report.subjectKeys == 0 && report.forgetReceipts == 1 && report.conversations == 3, "\(report)")
                        let restored = try await ChatLogStore.open(url: url, key: .key(harness.key), subjectKeys: harness.subjectKeys)
                        defer { try? restored.close() }
                        #expect(try await restored.transcript(alice[0]).conversation.title == "alice one")
                        #expect(try await restored.erasure.receipts() == (try await harness.store.erasure.receipts()))
                        #expect(try await restored.verify().issueCount == 0)
                    }
                }
            }
        }
    }
}
