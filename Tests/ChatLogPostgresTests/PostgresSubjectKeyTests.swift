import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@testable import ChatLog
@testable import ChatLogPostgres

extension PostgreSQLSuites {
    /// The subject keys of a PostgreSQL store in their own database (CHATLOG_SUBJECT_KEYS;
    /// PostgresSubjectKeys.swift): one key per subject with writers on many pools, the errors of
    /// the setting, a forgotten key gone from the key database's bytes, the CLI.
    @Suite("Subject keys on PostgreSQL")
    struct PostgresSubjectKeyTests {
        @Test("six handles (six connection pools) making the keys of the same 20 subjects at once, and conversations of them, end with one key per subject")
        func sameSubjectRace() async throws {
            try await withErasureStore(.postgres) { harness in
                let subjects = Set((0..<20).map { "user-\($0)" })
                var handles: [ChatLogStore] = []
                for _ in 0..<6 { handles.append(try await harness.reopen()) }
                defer { for handle in handles { try? handle.close() } }
                let results = try await withThrowingTaskGroup(of: [String: UInt32].self) { group in
                    for handle in handles {
                        group.addTask {
                            let keys = try await handle.subjectKeyStore.keys(forSubjects: subjects, create: true)
                            return keys.mapValues(\.id.rawValue)
                        }
                    }
                    return try await group.reduce(into: [[String: UInt32]]()) { $0.append($1) }
                }
                #expect(results.count == 6 && results.allSatisfy { $0 == results[0] } && results[0].count == 20)
                #expect(Set(results[0].values).count == 20)
                #expect(try harness.keys!.psql("SELECT count(*) FROM subject_keys") == "20")
                // Conversations from every handle at once, for new subjects too: one key each.
                let conversations = try await withThrowingTaskGroup(of: ConversationID.self) { group in
                    for (index, handle) in handles.enumerated() {
                        for subject in ["user-3", "fresh-\(index % 2)"] {
                            group.addTask { try await handle.createConversation(NewConversation(title: "t", subject: subject)) }
                        }
                    }
                    return try await group.reduce(into: [ConversationID]()) { $0.append($1) }
                }
                #expect(conversations.count == 12)
                #expect(try harness.keys!.psql("SELECT count(*) FROM subject_keys") == "22")
                #expect(try harness.data!.psql("SELECT count(DISTINCT erasure_key_id) FROM conversations") == "3")
                #expect(try harness.data!.psql("SELECT count(*) FROM conversations WHERE erasure_key_id = \(results[0]["user-3"]!)") == "6")
            }
        }

        @Test("CHATLOG_SUBJECT_KEYS: unset, a subject is refused naming the variable and nothing is written; the data's own database, a database holding a store, another store's keys and a path are refused; no error names the subject")
        func settingErrors() async throws {
            try await withErasureStore(.postgres) { harness in
                let logged = try await harness.store.createConversation(NewConversation(title: "kept", subject: "user-42"))
                // Unset: the store opens, what needs no subject key works, a subject is refused.
                let without = try await ChatLogStore.open(url: harness.location, key: .key(harness.key))
                defer { try? without.close() }
                var errors: [String] = []
                do {
                    _ = try await without.createConversation(NewConversation(title: "x", subject: "user-42"))
                    Issue.record("a subject was written without a subject-key database")
                } catch {
                    guard case .subjectKeyStore(let location, let reason)? = error as? ChatLogError else { throw error }
                    #expect(location == without.path && reason.contains("CHATLOG_SUBJECT_KEYS"))
                    errors.append("\(error)")
                }
                do {
                    _ = try await without.transcript(logged)
                    Issue.record("a subject's conversation opened without its key")
                } catch {
                    guard case .subjectKeyStore? = error as? ChatLogError else { throw error }
                    errors.append("\(error)")
                }
                _ = try await without.createConversation(NewConversation(title: "no subject"))
                #expect(try await without.counts() == (2, 0))

                // The data's own database.
                do {
                    _ = try await ChatLogStore.open(url: harness.location, key: .key(harness.key), subjectKeys: harness.location)
                    Issue.record("the data's own database was accepted")
                } catch {
                    guard case .subjectKeyStore(_, let reason)? = error as? ChatLogError else { throw error }
                    #expect(reason.contains("the data's own database"))
                    errors.append("\(error)")
                }
                // A path instead of a URL.
                await #expect(throws: ChatLogError.self) {
                    _ = try await ChatLogStore.open(url: harness.location, key: .key(harness.key), subjectKeys: "/tmp/keys.db")
                }
                try await withPostgresLocation { otherURL, _ in
                    // A database holding another store's data.
                    let other = try await ChatLogStore.create(url: otherURL, key: .key(.generate()))
                    try? other.close()
                    do {
                        _ = try await ChatLogStore.open(url: harness.location, key: .key(harness.key), subjectKeys: otherURL)
                        Issue.record("a database holding a store was accepted")
                    } catch {
                        guard case .subjectKeyStore(_, let reason)? = error as? ChatLogError else { throw error }
                        #expect(reason.contains("holds a chatlog store's data"))
                        errors.append("\(error)")
                    }
                }
                // Another store's subject keys.
                try await withPostgresLocation { otherURL, _ in
                    let other = try await ChatLogStore.create(url: otherURL, key: .key(harness.key), subjectKeys: harness.subjectKeys)
                    defer { try? other.close() }
                    do {
                        _ = try await other.createConversation(NewConversation(subject: "user-42"))
                        Issue.record("another store's subject keys were used")
                    } catch {
                        guard case .subjectKeyStore(_, let reason)? = error as? ChatLogError else { throw error }
                        #expect(reason.contains("belongs to another store"))
                        errors.append("\(error)")
                    }
                }
                #expect(errors.count == 5)
                for text in errors { #expect(!text.contains("user-42") && !text.contains(harness.key.exportBase64()), "\(text)") }
            }
        }

        @Test("after forget the destroyed key is in neither a pg_dump of the key database nor the bytes of its table; an old row of the subject is refused by the data database")
        func destroyedKeyIsGone() async throws {
            try await withErasureStore(.postgres) { harness in
                let server = try await PostgresTestServer.shared()
                let keys = try #require(harness.keys)
                let data = try #require(harness.data)
                let id = try await harness.store.createConversation(NewConversation(title: "secret title", subject: "user-42"))
                _ = try await harness.store.createConversation(NewConversation(title: "other", subject: "user-43"))
                let wrapped = try keys.psql("SELECT encode(k.wrapped, 'hex') FROM subject_keys k ORDER BY id LIMIT 1")
                #expect(wrapped.count > 100)
                let oldRow = try data.psql("SELECT encode(subject, 'hex') || ' ' || encode(subject_token, 'hex') FROM conversations WHERE id = '\(id.rawValue)'")
                func dump() throws -> String {
                    let result = try PostgresTestServer.run(
                        server.binaries + "/pg_dump",
                        ["-h", server.socketDirectory, "-p", String(server.port), "-U", server.superuser, "-d", keys.name, "--data-only", "-t", "subject_keys*"])
                    #expect(result.succeeded, "\(result.output)")
                    return result.output
                }
                /// Whether a file of the table (its partitions) holds the wrapped key's bytes (after a checkpoint).
                func tableHoldsKey() throws -> Bool {
                    try keys.psql("CHECKPOINT")
                    let files = try keys.psql("SELECT string_agg(pg_relation_filepath(relid), ' ') FROM pg_partition_tree('subject_keys') WHERE isleaf")
                    #expect(files.split(separator: " ").count == PostgresSubjectKeys.partitions)
                    return try files.split(separator: " ").contains { file in
                        let bytes = try Data(contentsOf: URL(fileURLWithPath: server.dataDirectory + "/" + file))
                        return bytes.range(of: Data(hex: wrapped)!) != nil
                    }
                }
                #expect(try dump().contains(wrapped))
                #expect(try tableHoldsKey())

                #expect(try await harness.store.erasure.forget(subject: "user-42")?.subjectKeys == 1)
                #expect(try keys.psql("SELECT count(*) FROM subject_keys") == "1")
                #expect(try keys.psql("SELECT count(*) FROM forgotten_subject_keys") == "1")
                #expect(try !dump().contains(wrapped))
                #expect(try !tableHoldsKey())
                // The old row put back (a restored backup of the data) is refused by the trigger.
                let parts = oldRow.split(separator: " ")
                do {
                    try data.psql(
                        "INSERT INTO conversations (id, created_at, updated_at, key_id, subject, subject_token, subject_key_id) VALUES ('\(id.rawValue)', 1, 1, 1, '\\x\(parts[0])', '\\x\(parts[1])', 2)")
                    Issue.record("a row under a forgotten subject key was accepted")
                } catch {
                    #expect("\(error)".contains("was forgotten"), "\(error)")
                }
                #expect(try data.psql("SELECT count(*) FROM conversations") == "1")
            }
        }

        @Test("copy carries a PostgreSQL store's subject keys into a file's DEST.subject-keys (the copy opens the subject's rows, the source's key database is untouched); its backup restores into a new database with the same subject-key database")
        func copyAndBackup() async throws {
            try await withErasureStore(.postgres) { harness in
                let id = try await harness.store.createConversation(NewConversation(title: "t", subject: "user-42"))
                _ = try await harness.store.append([NewMessage(role: .user, content: "hello quokkaflux")], to: id)
                let keysBefore = try harness.keys!.psql("SELECT string_agg(encode(wrapped, 'hex'), ',' ORDER BY id) FROM subject_keys")
                try await withSQLiteLocation { path in
                    let report = try await harness.store.copy(to: path)
                    #expect(report.subjectKeys == 1 && report.conversations == 1, "\(report)")
                    #expect(FileManager.default.fileExists(atPath: path + SubjectKeyFile.suffix))
                    let copied = try ChatLogStore.open(at: path, key: .key(harness.key))
                    defer { try? copied.close() }
                    #expect(try await copied.transcript(id).messages.map(\.content) == ["hello quokkaflux"])
                    #expect(try await copied.erasure.forget(subject: "user-42")?.conversations == 1)
                    #expect(try harness.keys!.psql("SELECT string_agg(encode(wrapped, 'hex'), ',' ORDER BY id) FROM subject_keys") == keysBefore)
                    #expect(try await harness.store.transcript(id).messages.count == 1)
                    let backupFile = (path as NSString).deletingLastPathComponent + "/backup.db"
                    _ = try await harness.store.backup(to: backupFile)
                    let backup = try ChatLogStore.open(at: backupFile, key: .key(harness.key))
                    defer { try? backup.close() }
                    try await withPostgresLocation { url, _ in
                        _ = try await backup.copy(to: url, subjectKeys: harness.subjectKeys)
                        let restored = try await ChatLogStore.open(url: url, key: .key(harness.key), subjectKeys: harness.subjectKeys)
                        defer { try? restored.close() }
                        #expect(try await restored.transcript(id).messages.map(\.content) == ["hello quokkaflux"])
                        #expect(try await restored.erasure.forget(subject: "user-42")?.conversations == 1)
                    }
                }
            }
        }

        @Test("the chatlog CLI on PostgreSQL with CHATLOG_SUBJECT_KEYS: log --subject, list and export --subject, forget, its receipts and key status; backup --subject-keys points to pg_dump; unset, key status says the keys are unknown and log --subject exits 77 naming the variable")
        func cli() async throws {
            try await withErasureStore(.postgres) { harness in
                let env = harness.environment
                func chatlog(_ arguments: String..., env: [String: String] = env) throws -> ProcessOutput {
                    try ProcessOutput.run(chatlogBinary(), arguments, env: env, cwd: NSTemporaryDirectory())
                }
                let logged = try chatlog("log", "--subject", "user-42", "--title", "Billing", "--text", "charged twice quokkaflux")
                #expect(logged.status == 0, "\(logged)")
                #expect(try chatlog("log", "--subject", "user-43", "--text", "other").status == 0)
                let listed = try chatlog("list", "--subject", "user-42", "--json")
                #expect(listed.status == 0 && listed.out.contains("Billing"), "\(listed)")
                let exported = try chatlog("export", "--subject", "user-42")
                #expect(exported.status == 0 && exported.out.split(separator: "\n").count == 1 && exported.out.contains("quokkaflux"), "\(exported)")
                let status = try chatlog("key", "status")
                #expect(status.status == 0 && status.out.contains("subject keys  2  (0 forgotten)"), "\(status)")
                let dry = try chatlog("forget", "--subject", "user-42", "--dry-run")
                #expect(dry.status == 0 && dry.out.contains("would erase 1 conversation"), "\(dry)")
                let forgot = try chatlog("forget", "--subject", "user-42")
                #expect(forgot.status == 0 && forgot.out.contains("erased 1 conversation (1 message) and 1 subject key; receipt "), "\(forgot)")
                let receipts = try chatlog("forget", "--receipts", "--subject", "user-42")
                #expect(receipts.status == 0 && receipts.out.contains("1 conversations, 1 messages, 1 subject keys"), "\(receipts)")
                #expect(try chatlog("search", "quokkaflux", "--json").out.contains("message_id") == false)
                #expect(try chatlog("forget", "--subject", "user-42").status == 66)
                #expect(try chatlog("key", "status").out.contains("subject keys  1  (1 forgotten)"))
                let backup = try chatlog("backup", "--subject-keys", NSTemporaryDirectory() + "/keys-\(UUID().uuidString)")
                #expect(backup.status == 77 && backup.err.contains("pg_dump"), "\(backup)")
                var unset = env
                unset["CHATLOG_SUBJECT_KEYS"] = nil
                // key status without the key database: not "0 subject keys" but unknown, naming the variable.
                let blind = try chatlog("key", "status", env: unset)
                #expect(blind.status == 0 && blind.out.contains("subject keys  unknown: CHATLOG_SUBJECT_KEYS") && !blind.out.contains("subject keys  0"), "\(blind)")
                let blindJSON = try chatlog("key", "status", "--json", env: unset)
                #expect(blindJSON.status == 0 && blindJSON.out.contains("\"subject_keys\" : null") && blindJSON.out.contains("\"forgotten_subject_keys\" : null"), "\(blindJSON)")
                let refused = try chatlog("log", "--subject", "user-44", "--text", "x", env: unset)
                #expect(refused.status == 77 && refused.err.contains("CHATLOG_SUBJECT_KEYS") && !refused.err.contains("user-44"), "\(refused)")
                var same = env
                same["CHATLOG_SUBJECT_KEYS"] = harness.location
                let own = try chatlog("list", env: same)
                #expect(own.status == 77 && own.err.contains("data's own database"), "\(own)")
            }
        }
    }
}

extension Data {
    /// Bytes from lower-case hex (nil when it is not hex).
    init?(hex: String) {
        var bytes: [UInt8] = []
        var iterator = hex.utf8.makeIterator()
        while let high = iterator.next() {
            guard let low = iterator.next(), let h = Self.nibble(high), let l = Self.nibble(low) else { return nil }
            bytes.append(h << 4 | l)
        }
        self.init(bytes)
    }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
        default: nil
        }
    }
}
