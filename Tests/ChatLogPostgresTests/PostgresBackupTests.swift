import Foundation
import Testing

@testable import ChatLog
@testable import ChatLogPostgres

extension PostgreSQLSuites {
    /// Backups of a PostgreSQL store: `chatlog backup FILE` (a verified SQLite copy of one snapshot,
    /// taken while writers go on) and its restore with `copy`; `pg_dump`/`pg_restore` as documented.
    @Suite("Backups of a PostgreSQL store")
    struct PostgresBackupTests {
        static func exchange(_ n: Int, title: String = "c") -> ModelExchange {
            ModelExchange(
                conversation: .new(NewConversation(title: "\(title)\(n)")), prompt: [NewMessage(role: .user, content: "question number\(n) refund")],
                completion: NewMessage(role: .assistant, content: "answer \(n % 5)"))
        }

        /// Every conversation's transcript, in id order, as lines.
        static func transcripts(_ store: ChatLogStore) async throws -> [String] {
            var lines: [String] = []
            var cursor: String?
            var ids: [ConversationID] = []
            repeat {
                let page = try await store.conversations(ConversationQuery(limit: 100, cursor: cursor))
                ids += page.conversations.map(\.id)
                cursor = page.nextCursor
            } while cursor != nil
            for id in ids.sorted(by: { $0.rawValue < $1.rawValue }) {
                let transcript = try await store.transcript(id)
                lines.append("\(id) \(transcript.conversation.title ?? "-") " + transcript.messages.map { "\($0.id) \($0.position) \($0.content)" }.joined(separator: " | "))
            }
            return lines
        }

        @Test("backup while a writer logs: a 0600 SQLite file of one instant (every conversation whole), verified, opened with the same key; restored into another database with copy; an existing file is refused untouched")
        func backupAndRestore() async throws {
            try await withPostgresLocation { location, _ in
                try await withSQLiteLocation { path in
                    let key = MasterKey.generate()
                    let store = try await ChatLogStore.create(url: location, key: .key(key))
                    let writer = try await ChatLogStore.open(url: location, key: .key(key))
                    defer {
                        try? store.close()
                        try? writer.close()
                    }
                    for n in 0..<300 { _ = try await store.logExchange(Self.exchange(n)) }
                    // A writer appends to an existing conversation and logs new ones while the backup runs.
                    let first = try await store.conversations(ConversationQuery(limit: 1)).conversations[0].id
                    let report = try await withThrowingTaskGroup(of: CopyReport?.self) { group in
                        group.addTask {
                            for n in 0..<100 {
                                _ = try await writer.logExchange(Self.exchange(n, title: "during"))
                                _ = try await writer.append(NewMessage(role: .user, content: "more \(n)"), to: first)
                            }
                            return nil
                        }
                        group.addTask { try await store.backup(to: path) }
                        var report: CopyReport?
                        for try await value in group where value != nil { report = value }
                        return report
                    }
                    let copied = try #require(report)
                    #expect(copied.verifiedConversations == copied.conversations && copied.conversations >= 300 && copied.conversations <= 400)
                    var info = stat()
                    #expect(stat(path, &info) == 0 && info.st_mode & 0o777 == 0o600)

                    let backup = try ChatLogStore.open(at: path, key: .key(key))
                    defer { try? backup.close() }
                    #expect(try await backup.verify().ok)
                    let counts = try await backup.counts()
                    #expect(counts.conversations == copied.conversations)
                    // One instant: the appended conversation has as many "more" messages as the
                    // number of "during" conversations the snapshot holds, give or take the one in flight.
                    let grown = try await backup.transcript(first).messages.count
                    let loggedDuring = copied.conversations - 300
                    #expect(grown - 2 == loggedDuring || grown - 2 == loggedDuring - 1, "\(grown) \(loggedDuring)")
                    #expect(try await backup.search("number299").hits.count == 1)

                    // Restore into another database: the same transcripts as the backup.
                    try await withPostgresLocation { restoredLocation, _ in
                        let restoreReport = try await backup.copy(to: restoredLocation)
                        #expect(restoreReport.conversations == copied.conversations)
                        let restored = try await ChatLogStore.open(url: restoredLocation, key: .key(key))
                        defer { try? restored.close() }
                        #expect(try await Self.transcripts(restored) == (try await Self.transcripts(backup)))
                        #expect(try await restored.search("refund", limit: 500).hits.count == copied.conversations)
                    }

                    // Never overwrites.
                    let before = try Data(contentsOf: URL(fileURLWithPath: path))
                    await #expect(throws: ChatLogError.invalidInput("\(path) already exists; refusing to overwrite it")) { try await store.backup(to: path) }
                    #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == before)
                }
            }
        }

        @Test("a snapshot view reads one instant and refuses writes")
        func snapshotIsReadOnly() async throws {
            try await withPostgresLocation { location, _ in
                let store = try await ChatLogStore.create(url: location, key: .key(.generate()))
                defer { try? store.close() }
                _ = try await store.logExchange(Self.exchange(0))
                let storage = try #require(store.storage as? PostgresStorage)
                let seen = try await storage.withSnapshot { (snapshot) async throws(ChatLogError) -> [Int] in
                    let before = try await snapshot.counts().conversations
                    _ = try? await store.logExchange(Self.exchange(1))
                    let after = try await snapshot.counts().conversations
                    do {
                        _ = try await snapshot.deleteConversations(["0193a5f2-0000-7000-8000-000000000000"], terms: { _ in nil })
                        return [before, after, -1]
                    } catch {
                        return [before, after, (error as? ChatLogError) == .invalidInput("a snapshot of a PostgreSQL store is read-only") ? 0 : -2]
                    }
                }
                #expect(seen == [1, 1, 0])
                #expect(try await store.counts().conversations == 2)
            }
        }

        @Test("pg_dump and pg_restore (the documented alternative) give a store that opens, verifies and answers as the original")
        func pgDumpRestore() async throws {
            try await withPostgresLocation { location, database in
                let key = MasterKey.generate()
                let store = try await ChatLogStore.create(url: location, key: .key(key))
                defer { try? store.close() }
                for n in 0..<50 { _ = try await store.logExchange(Self.exchange(n)) }
                _ = try await store.rotateDataKey(RotationOptions(newKey: true))
                let dump = NSTemporaryDirectory() + "/chatlog-pgdump-\(UUID().uuidString).dump"
                defer { unlink(dump) }
                let server = database.server
                let connection = ["-h", server.socketDirectory, "-p", String(server.port), "-U", server.superuser]
                let dumped = try PostgresTestServer.run(server.binaries + "/pg_dump", connection + ["-Fc", "-f", dump, database.name])
                #expect(dumped.succeeded, "\(dumped.output)")
                try await withPostgresLocation { restoredLocation, restoredDatabase in
                    let restored = try PostgresTestServer.run(
                        server.binaries + "/pg_restore", connection + ["--no-owner", "-d", restoredDatabase.name, dump])
                    #expect(restored.succeeded, "\(restored.output)")
                    let reopened = try await ChatLogStore.open(url: restoredLocation, key: .key(key))
                    defer { try? reopened.close() }
                    #expect(try await reopened.verify().ok)
                    #expect(try await Self.transcripts(reopened) == (try await Self.transcripts(store)))
                    #expect(try await reopened.search("number42").hits.map(\.messageID) == (try await store.search("number42").hits.map(\.messageID)))
                    _ = try await reopened.logExchange(Self.exchange(99))
                }
            }
        }
    }
}

extension PostgreSQLSuites.PostgresCLITests {
    @Test("chatlog backup FILE on a PostgreSQL store: exit 0, a 0600 file that verifies and searches with the same key, restored with chatlog copy --to URL; an existing file refused (exit 65) untouched")
    func backupCommand() async throws {
        try await withPostgresLocation { url, _ in
            try await withSQLiteLocation { path in
                let key = MasterKey.generate()
                let store = try await ChatLogStore.create(url: url, key: .key(key))
                for n in 0..<20 { _ = try await store.logExchange(PostgreSQLSuites.PostgresBackupTests.exchange(n)) }
                try store.close()
                let home = (path as NSString).deletingLastPathComponent
                let env = ["CHATLOG_MASTER_KEY": key.exportBase64(), "CHATLOG_DB": url, "HOME": home, "PATH": "/usr/bin:/bin"]
                let backup = try ProcessOutput.run(chatlogBinary(), ["backup", path], env: env, cwd: home)
                #expect(backup.status == 0 && backup.out.contains("wrote backup \(path)"), "\(backup)")
                var info = stat()
                #expect(stat(path, &info) == 0 && info.st_mode & 0o777 == 0o600)
                let verify = try ProcessOutput.run(chatlogBinary(), ["--db", path, "verify", "--json"], env: env, cwd: home)
                #expect(verify.status == 0 && verify.out.contains("\"ok\" : true") && verify.out.contains("\"conversations\" : 20"), "\(verify)")
                let again = try ProcessOutput.run(chatlogBinary(), ["backup", path], env: env, cwd: home)
                #expect(again.status == 65 && again.err.contains("already exists"), "\(again)")
                try await withPostgresLocation { restoredURL, _ in
                    let restore = try ProcessOutput.run(chatlogBinary(), ["--db", path, "copy", "--to", restoredURL], env: env, cwd: home)
                    #expect(restore.status == 0, "\(restore)")
                    var restoredEnv = env
                    restoredEnv["CHATLOG_DB"] = restoredURL
                    let search = try ProcessOutput.run(chatlogBinary(), ["search", "number17", "--json"], env: restoredEnv, cwd: home)
                    #expect(search.status == 0 && search.out.contains("question number17 refund"), "\(search)")
                }
            }
        }
    }
}

extension PostgreSQLSuites.PostgresBackupTests {
    @Test("copy and backup carry import records, proxy tokens and thread digests: after SQLite → PostgreSQL → SQLite the token still names its app, the thread still finds its conversation, the import records are there; a backup of the PostgreSQL store holds them too")
    func sideTablesTravel() async throws {
        try await withSQLiteLocation { path in
            let key = MasterKey.generate()
            let source = try ChatLogStore.create(at: path, key: .key(key))
            let imported = try await source.importConversations(
                format: "openai-jsonl",
                records: [
                    .success(
                        ImportedConversation(
                            sourceID: "line 1", conversation: NewConversation(title: "imported"),
                            messages: [NewMessage(role: .user, content: "imported question"), NewMessage(role: .assistant, content: "imported answer")]))
                ])
            #expect(imported.conversations == 1)
            let token = try await source.createProxyToken(name: "billing")
            let conversation = ConversationID.generate()
            let digests = source.threadChainer().chain(scope: "openai", items: ["hello", "hi there"])
            _ = try await source.logProxyRecords([
                ProxyRecord(
                    conversation: NewConversation(id: conversation),
                    messages: [NewMessage(role: .user, content: "hello"), NewMessage(role: .assistant, content: "hi there")],
                    digests: [digests.active(length: 2)!])
            ])
            let sourceSide = try await SQLiteStorage.open(path: path).sideRows()
            #expect(sourceSide.imports.count == 1 && sourceSide.tokens.count == 1 && sourceSide.threads.count == 1)

            try await withPostgresLocation { url, database in
                let report = try await source.copy(to: url)
                #expect(report.sideRows == 3 && report.notCopied.isEmpty, "\(report)")
                let remote = try await ChatLogStore.open(url: url, key: .key(key))
                defer { try? remote.close() }
                #expect(try await remote.proxyTokenName(token) == "billing")
                #expect(try await remote.findThread(digests)?.conversation == conversation)
                #expect(try database.psql("SELECT count(*) FROM imports") == "1")
                #expect(try database.psql("SELECT count(*) FROM chatlog_meta WHERE name = 'import_key'") == "1")

                try await withSQLiteLocation { back in
                    let reportBack = try await remote.copy(to: back)
                    #expect(reportBack.sideRows == 3)
                    let local = try ChatLogStore.open(at: back, key: .key(key))
                    defer { try? local.close() }
                    #expect(try await local.proxyTokenName(token) == "billing")
                    #expect(try await local.findThread(digests)?.conversation == conversation)
                    // The same source record imported again into the round-tripped store adds nothing.
                    let again = try await local.importConversations(
                        format: "openai-jsonl",
                        records: [
                            .success(
                                ImportedConversation(
                                    sourceID: "line 1", conversation: NewConversation(title: "imported"),
                                    messages: [NewMessage(role: .user, content: "imported question")]))
                        ])
                    #expect(again.duplicates == 1 && again.conversations == 0)
                }
                try await withSQLiteLocation { backupPath in
                    let backupReport = try #require(try await remote.backup(to: backupPath))
                    #expect(backupReport.sideRows == 3)
                    let backup = try ChatLogStore.open(at: backupPath, key: .key(key))
                    defer { try? backup.close() }
                    #expect(try await backup.proxyTokenName(token) == "billing")
                }
            }
            try source.close()
        }
    }
}
