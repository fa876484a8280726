import Foundation
import GRDB
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@testable import ChatLog
@testable import ChatLogPostgres

extension PostgreSQLSuites {
    /// The storage seam, one source for both backends (SQLite, and PostgreSQL on a real server): the
    /// same sealed bytes, the write guard, gap-free positions with concurrent writers, the key-job
    /// lock, deletes that leave no search term.
    @Suite("Storage backends")
    struct StorageBackendTests {
        @Test("rows sealed by the core and rows copied from a SQLite file come back byte-identical and open with the store's keys", arguments: Backend.allCases)
        func sealedBytesRoundTrip(backend: Backend) async throws {
            try await withSQLiteStore { store in
                try await withStorage(backend) { harness in
                    let storage = harness.storage
                    let (meta, keys) = try storedMetaAndKeys(store)
                    try await storage.initialize(meta: meta, keys: keys)
                    #expect(try await storage.isInitialized())
                    #expect(try await storage.keyRows() == keys)
                    for (name, value) in meta { #expect(try await storage.meta(name) == value) }

                    // 1. Sealed by the core for this backend (the write path through the seam).
                    let exchange = ModelExchange(
                        conversation: .new(NewConversation(title: "Zażółć gęślą jaźń", subject: "user-42", metadata: .object(["k": .string("v")]))),
                        prompt: [NewMessage(role: .user, content: "My card was charged twice", metadata: .object(["x": .integer(1)]))],
                        completion: NewMessage(
                            role: .assistant, content: "Sorry about that", model: "gpt-4o", promptTokens: 12, completionTokens: 40,
                            latencyMilliseconds: 850, finishReason: "stop"))
                    let (preparedConversation, preparedMessages) = try store.prepare(exchange, keys: store.keyRing.current)
                    let conversation = try #require(preparedConversation)
                    let conversationRow = SealedConversationRow(conversation)
                    let messageRows = preparedMessages.map { SealedMessageRow($0, conversationID: conversation.id) }
                    #expect(messageRows.allSatisfy { !$0.terms.isEmpty })
                    let positions = try await storage.insert(
                        conversation: conversationRow, messages: messageRows, into: conversation.id.rawValue, guard: writeGuard(store))
                    #expect(positions == [0, 1])
                    // A conversation's updated_at follows its newest message.
                    var expectedConversation = conversationRow
                    expectedConversation.updatedAt = max(conversationRow.createdAt, messageRows.map(\.createdAt).max()!)
                    #expect(try await storage.conversation(id: conversation.id.rawValue) == expectedConversation)
                    let stored = try await storage.messages(ofConversation: conversation.id.rawValue)
                    #expect(stored.count == 2)
                    for (index, (row, original)) in zip(stored, messageRows).enumerated() {
                        var expected = original
                        expected.position = Int64(index)
                        expected.terms = []
                        #expect(row == expected)
                    }
                    #expect(try openText(store, stored[0].content, table: "messages", column: "content", rowID: stored[0].id) == "My card was charged twice")
                    #expect(
                        try openText(store, try #require(conversationRow.title), table: "conversations", column: "title", rowID: conversation.id.rawValue)
                            == "Zażółć gęślą jaźń")

                    // 2. Written by the SQLite backend, moved verbatim (nothing opened on the way).
                    let logged = try await store.logExchange(
                        ModelExchange(
                            conversation: .new(NewConversation(title: "from sqlite")),
                            prompt: [NewMessage(role: .system, content: "be brief"), NewMessage(role: .user, content: "ünïcödé and NUL \u{0}!")],
                            completion: NewMessage(role: .assistant, content: "")))
                    let copied = try await store.read { db -> (SealedConversationRow, [SealedMessageRow]) in
                        let c = try #require(try Row.fetchOne(db, sql: "SELECT * FROM conversations WHERE id = ?", arguments: [logged.conversationID.rawValue]))
                        let conversation = SealedConversationRow(
                            id: c["id"], createdAt: c["created_at"], updatedAt: c["updated_at"], keyID: c["key_id"], title: c["title"], subject: c["subject"],
                            subjectToken: c["subject_token"], subjectKeyID: c["subject_key_id"], metadata: c["metadata"])
                        let messages = try Row.fetchAll(db, sql: "SELECT * FROM messages WHERE conversation_seq = ? ORDER BY position", arguments: [c["seq"] as Int64]).map { m in
                            SealedMessageRow(
                                id: m["id"], conversationID: logged.conversationID.rawValue, position: m["position"], role: m["role"], createdAt: m["created_at"],
                                model: m["model"], promptTokens: m["prompt_tokens"], completionTokens: m["completion_tokens"], latencyMilliseconds: m["latency_ms"],
                                finishReason: m["finish_reason"], keyID: m["key_id"], content: m["content"], metadata: m["metadata"], indexKeyID: m["index_key_id"],
                                terms: [])
                        }
                        return (conversation, messages)
                    }
                    _ = try await storage.insert(conversation: copied.0, messages: copied.1, into: copied.0.id, guard: writeGuard(store))
                    let back = try await storage.messages(ofConversation: copied.0.id)
                    #expect(back == copied.1)
                    let texts = try back.map { try openText(store, $0.content, table: "messages", column: "content", rowID: $0.id) }
                    #expect(texts == ["be brief", "ünïcödé and NUL \u{0}!", ""])
                    #expect(try await storage.counts() == StorageCounts(conversations: 2, messages: 5))
                }
            }
        }

        @Test("a second initialize is refused and changes nothing", arguments: Backend.allCases)
        func initializeOnce(backend: Backend) async throws {
            try await withSQLiteStore { store in
                try await withStorage(backend) { harness in
                    let storage = harness.storage
                    let (meta, keys) = try storedMetaAndKeys(store)
                    try await storage.initialize(meta: meta, keys: keys)
                    await #expect(throws: ChatLogError.storeExists(path: storage.location)) {
                        try await storage.initialize(meta: ["store_id": .text("other")], keys: [])
                    }
                    #expect(try await storage.meta("store_id") == meta["store_id"])
                }
            }
        }

        @Test("the write guard: a changed master check value or active key refuses the write, and nothing is written", arguments: Backend.allCases)
        func writeGuardRefuses(backend: Backend) async throws {
            try await withSQLiteStore { store in
                try await withStorage(backend) { harness in
                    let storage = harness.storage
                    let (meta, keys) = try storedMetaAndKeys(store)
                    try await storage.initialize(meta: meta, keys: keys)
                    let prepared = try store.prepare(NewConversation(title: "t"), keys: store.keyRing.current)
                    let row = SealedConversationRow(prepared)
                    let message = SealedMessageRow(
                        try store.prepare(NewMessage(role: .user, content: "hello"), keys: store.keyRing.current), conversationID: prepared.id)

                    var stale = writeGuard(store)
                    stale.activeDataKeyID += 1
                    await #expect(throws: StorageConflict.staleKeys) {
                        try await storage.insert(conversation: row, messages: [message], into: row.id, guard: stale)
                    }
                    var rewrapped = writeGuard(store)
                    rewrapped.acceptedCheckValues = [Data(repeating: 7, count: 32)]
                    await #expect(throws: StorageConflict.masterKeyChanged) {
                        try await storage.insert(conversation: row, messages: [message], into: row.id, guard: rewrapped)
                    }
                    #expect(try await storage.counts() == StorageCounts(conversations: 0, messages: 0))
                    #expect(try harness.termPairs().all == 0)

                    // Another process rotated: the active data key row changed under the writer.
                    let active = try #require(keys.first { $0.kind == "data" && $0.state == "active" })
                    try harness.sql("UPDATE keys SET state = 'decrypt-only' WHERE id = \(active.id)")
                    await #expect(throws: StorageConflict.staleKeys) {
                        try await storage.insert(conversation: row, messages: [message], into: row.id, guard: writeGuard(store))
                    }
                    try harness.sql("UPDATE keys SET state = 'active' WHERE id = \(active.id)")
                    _ = try await storage.insert(conversation: row, messages: [message], into: row.id, guard: writeGuard(store))
                    #expect(try await storage.counts() == StorageCounts(conversations: 1, messages: 1))
                    await #expect(throws: ChatLogError.conversationNotFound("no-such-conversation")) {
                        try await storage.insert(conversation: nil, messages: [message], into: "no-such-conversation", guard: writeGuard(store))
                    }
                }
            }
        }

        @Test("concurrent writers on separate handles: every message once, positions gap-free", arguments: Backend.allCases)
        func concurrentWritersGapFree(backend: Backend) async throws {
            try await withSQLiteStore { store in
                try await withStorage(backend) { harness in
                    let storage = harness.storage
                    let (meta, keys) = try storedMetaAndKeys(store)
                    try await storage.initialize(meta: meta, keys: keys)
                    let prepared = try store.prepare(NewConversation(title: "shared"), keys: store.keyRing.current)
                    _ = try await storage.insert(conversation: SealedConversationRow(prepared), messages: [], into: prepared.id.rawValue, guard: writeGuard(store))
                    let writers = 6
                    let perWriter = 40
                    let rows = try (0..<(writers * perWriter)).map { index in
                        SealedMessageRow(
                            try store.prepare(NewMessage(role: .user, content: "message \(index)"), keys: store.keyRing.current), conversationID: prepared.id)
                    }
                    let guardValue = writeGuard(store)
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        for writer in 0..<writers {
                            let mine = Array(rows[(writer * perWriter)..<((writer + 1) * perWriter)])
                            group.addTask {
                                let own = try await harness.reopen()
                                do {
                                    for row in mine {
                                        _ = try await own.insert(conversation: nil, messages: [row], into: prepared.id.rawValue, guard: guardValue)
                                    }
                                } catch {
                                    await own.close()
                                    throw error
                                }
                                await own.close()
                            }
                        }
                        try await group.waitForAll()
                    }
                    let stored = try await storage.messages(ofConversation: prepared.id.rawValue)
                    #expect(stored.count == writers * perWriter)
                    #expect(stored.map(\.position) == (0..<Int64(writers * perWriter)).map { $0 })
                    #expect(Set(stored.map(\.id)) == Set(rows.map(\.id)))
                    #expect(try harness.sql("SELECT count(*) FROM messages") == String(writers * perWriter))
                    #expect(try harness.termPairs().orphaned == 0)
                }
            }
        }

        @Test("the key-job lock: a second job fails at once naming the holder; released when the job ends", arguments: Backend.allCases)
        func keyJobLock(backend: Backend) async throws {
            try await withStorage(backend) { harness in
                let storage = harness.storage
                let other = try await harness.reopen()
                defer { Task { await other.close() } }
                let (entered, enter) = AsyncStream<Void>.makeStream()
                let (released, release) = AsyncStream<Void>.makeStream()
                let holder = Task {
                    try await storage.withKeyJobLock { () throws(ChatLogError) in
                        enter.yield()
                        for await _ in released { break }
                        return 1
                    }
                }
                for await _ in entered { break }
                var refused: ChatLogError?
                do throws(ChatLogError) {
                    _ = try await other.withKeyJobLock { () throws(ChatLogError) in 2 }
                } catch {
                    refused = error
                }
                guard case .locked(let holderPID, let path)? = refused else {
                    Issue.record("expected a lock error, got \(String(describing: refused))")
                    release.yield()
                    _ = try await holder.value
                    return
                }
                switch backend {
                case .postgres:
                    #expect(path.contains("advisory lock"))
                    #expect(path.contains("chatlog pid \(getpid())"))
                case .sqlite:
                    #expect(path == harness.location + ".keys.lock")
                    #expect(holderPID == getpid())
                }
                #expect(refused?.category == .busy)
                release.yield()
                #expect(try await holder.value == 1)
                #expect(try await other.withKeyJobLock { () throws(ChatLogError) in 3 } == 3)
            }
        }

        @Test("deleting conversations removes their messages and every search term, also of messages the core cannot re-blind", arguments: Backend.allCases)
        func deleteLeavesNoTerms(backend: Backend) async throws {
            try await withSQLiteStore { store in
                try await withStorage(backend) { harness in
                    let storage = harness.storage
                    let (meta, keys) = try storedMetaAndKeys(store)
                    try await storage.initialize(meta: meta, keys: keys)
                    var ids: [String] = []
                    var termsByMessage: [String: [UInt64]] = [:]
                    for index in 0..<4 {
                        let (conversation, messages) = try store.prepare(
                            ModelExchange(
                                conversation: .new(NewConversation(title: "c\(index)")), prompt: [NewMessage(role: .user, content: "alpha beta \(index)")],
                                completion: NewMessage(role: .assistant, content: "gamma delta")), keys: store.keyRing.current)
                        let row = SealedConversationRow(try #require(conversation))
                        let messageRows = messages.map { SealedMessageRow($0, conversationID: conversation!.id) }
                        for message in messageRows { termsByMessage[message.id] = message.terms }
                        _ = try await storage.insert(conversation: row, messages: messageRows, into: row.id, guard: writeGuard(store))
                        ids.append(row.id)
                    }
                    let before = try harness.termPairs().all
                    #expect(before == termsByMessage.values.reduce(0) { $0 + $1.count })
                    // The core re-blinds what it can open; the assistant messages stand for ones it cannot.
                    let known = termsByMessage
                    let deleted = try await storage.deleteConversations([ids[0], ids[2], "missing"]) { message in
                        message.role == "assistant" ? nil : known[message.id]
                    }
                    #expect(deleted == 2)
                    #expect(try await storage.counts() == StorageCounts(conversations: 2, messages: 4))
                    let after = try harness.termPairs()
                    #expect(after.orphaned == 0)
                    #expect(after.all == before / 2)
                }
            }
        }
    }
}

extension PostgreSQLSuites {
    /// The key-job lock of PostgreSQL lives in the holder's server session: when the holding process
    /// dies (SIGKILL, no cleanup), the server ends the session and the lock is free.
    @Suite("PostgreSQL key-job lock and dead holders")
    struct PostgresLockKillTests {
        @Test("a holder killed with SIGKILL: refused while it lives (named), free once it is dead")
        func lockFreedWhenHolderDies() async throws {
            try await withPostgresStorage { storage, server, database in
                // Another process takes the same advisory lock chatlog's key jobs take, then waits with
                // its session idle (as a chatlog job's lock session is), in its own process group.
                let holder = try PostgresTestServer.spawn(
                    server.binaries + "/psql",
                    [
                        "-X", "-q", "-h", server.socketDirectory, "-U", server.superuser, "-d", database, "-c",
                        "SELECT pg_advisory_lock(\(PostgresStorage.lockClass), \(PostgresStorage.keyJobLock))", "-c", "\\! exec sleep 600",
                    ], output: "/dev/null", newSession: true)
                defer {
                    kill(-holder, SIGKILL)
                    var status: Int32 = 0
                    _ = waitpid(holder, &status, 0)
                }
                let held = try await waitUntil {
                    (try? server.psql(
                        """
                        SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = \(PostgresStorage.keyJobLock)
                        AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                        """, database: database)) == "1"
                }
                try #require(held)
                var refused: ChatLogError?
                do throws(ChatLogError) { _ = try await storage.withKeyJobLock { () throws(ChatLogError) in 1 } } catch { refused = error }
                guard case .locked(_, let path)? = refused else {
                    Issue.record("expected a lock error, got \(String(describing: refused))")
                    return
                }
                #expect(path.contains("held by psql from local socket"), "\(path)")
                kill(-holder, SIGKILL)
                var status: Int32 = 0
                _ = waitpid(holder, &status, 0)
                // The server notices the closed connection and ends the session (bounded wait, not asserted).
                var acquired: Int?
                for _ in 0..<200 where acquired == nil {
                    do throws(ChatLogError) { acquired = try await storage.withKeyJobLock { () throws(ChatLogError) in 2 } } catch {
                        try await Task.sleep(for: .milliseconds(50))
                    }
                }
                #expect(acquired == 2)
            }
        }
    }
}
