import Foundation
import GRDB
import Testing

@testable import ChatLog

/// Creating, opening and refusing files; writing and reading conversations.
@Suite struct StoreLifecycleTests {
    @Test func createTwiceIsRefused() async throws {
        try await withTemporaryDirectory { directory in
            let key = MasterKey.generate()
            let store = try makeStore(in: directory, key: key)
            let id = try store.createConversation(NewConversation(title: "keep me"))
            try store.close()
            #expect(throws: ChatLogError.storeExists(path: directory.databasePath)) {
                try ChatLogStore.create(at: directory.databasePath, key: .key(key))
            }
            #expect(throws: ChatLogError.storeExists(path: directory.databasePath)) {
                try ChatLogStore.create(at: directory.databasePath, key: .key(.generate()))
            }
            // Nothing was reset.
            let reopened = try ChatLogStore.open(at: directory.databasePath, key: .key(key))
            #expect(try reopened.conversation(id).title == "keep me")
        }
    }

    @Test func openingAMissingPathIsRefused() async throws {
        try await withTemporaryDirectory { directory in
            #expect(throws: ChatLogError.storeNotFound(path: directory.databasePath)) {
                try ChatLogStore.open(at: directory.databasePath, key: .key(.generate()))
            }
            #expect(!FileManager.default.fileExists(atPath: directory.databasePath))
        }
    }

    @Test func openingANonSQLiteFileIsRefusedAndLeavesItAlone() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory.file("notes.txt")
            let contents = Array(String(repeating: "These are not the pages you are looking for.\n", count: 200).utf8)
            try writeFile(path, contents, mode: 0o644)
            for attempt in ["open", "create"] {
                let error = #expect(throws: ChatLogError.self, "\(attempt)") {
                    if attempt == "open" {
                        try ChatLogStore.open(at: path, key: .key(.generate()))
                    } else {
                        try ChatLogStore.create(at: path, key: .key(.generate()))
                    }
                }
                guard case .notAChatLogStore(let rejected, _)? = error else {
                    Issue.record("\(attempt): expected notAChatLogStore, got \(String(describing: error))")
                    continue
                }
                #expect(rejected == path)
            }
            #expect(try fileBytes(path) == contents)
            #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path) == ["notes.txt"])
        }
    }

    @Test func openingAForeignSQLiteDatabaseIsRefusedAndLeavesItUnchanged() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory.file("other-app.sqlite")
            do {
                let queue = try DatabaseQueue(path: path)
                try queue.write { db in
                    try db.execute(sql: "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
                    try db.execute(sql: "INSERT INTO notes (body) VALUES ('hello'), ('world')")
                }
                try queue.close()
            }
            let before = try fileBytes(path)
            let modeBefore = fileMode(path)
            for attempt in ["open", "create"] {
                let error = #expect(throws: ChatLogError.self, "\(attempt)") {
                    if attempt == "open" {
                        try ChatLogStore.open(at: path, key: .key(.generate()))
                    } else {
                        try ChatLogStore.create(at: path, key: .key(.generate()))
                    }
                }
                guard case .notAChatLogStore(let rejected, let reason)? = error else {
                    Issue.record("\(attempt): expected notAChatLogStore, got \(String(describing: error))")
                    continue
                }
                #expect(rejected == path)
                #expect(reason.contains("another program"))
            }
            #expect(try fileBytes(path) == before)
            #expect(fileMode(path) == modeBefore)
            // No journal, WAL or SHM file was left beside it.
            #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path) == ["other-app.sqlite"])
        }
    }

    @Test func openingAnEmptyFileIsRefused() async throws {
        try await withTemporaryDirectory { directory in
            try writeFile(directory.databasePath, [UInt8](), mode: 0o600)
            #expect {
                try ChatLogStore.open(at: directory.databasePath, key: .key(.generate()))
            } throws: { error in
                guard case ChatLogError.notAChatLogStore(let path, _) = error else { return false }
                return path == directory.databasePath
            }
            // An empty file can still become a store.
            let store = try ChatLogStore.create(at: directory.databasePath, key: .key(.generate()))
            #expect(try counts(store) == [0, 0])
        }
    }

    @Test func schemaNewerThanTheBinaryIsRefused() async throws {
        try await withTemporaryDirectory { directory in
            let key = MasterKey.generate()
            try makeStore(in: directory, key: key).close()
            try withRawDatabase(directory.databasePath) { db in
                try db.execute(sql: "INSERT INTO grdb_migrations (identifier) VALUES ('9999_future')")
            }
            #expect(throws: ChatLogError.schemaTooNew(found: 9999, supported: Schema.latestVersion)) {
                try ChatLogStore.open(at: directory.databasePath, key: .key(key))
            }
            // The refusal applied nothing: the fake migration is still the only unknown one.
            let identifiers = try withRawDatabase(directory.databasePath) { db in
                try String.fetchAll(db, sql: "SELECT identifier FROM grdb_migrations ORDER BY identifier")
            }
            #expect(identifiers == Schema.migrations.map(\.identifier) + ["9999_future"])
        }
    }

    @Test func migrationsAreRecordedInOrder() async throws {
        try await withTemporaryDirectory { directory in
            try makeStore(in: directory).close()
            let identifiers = try withRawDatabase(directory.databasePath) { db in
                try String.fetchAll(db, sql: "SELECT identifier FROM grdb_migrations ORDER BY identifier")
            }
            #expect(!identifiers.isEmpty)
            #expect(identifiers == Schema.migrations.map(\.identifier))
            #expect(Schema.migrations.map(\.version) == Array(1...Schema.latestVersion))
        }
    }

    @Test func storeReopensWithItsData() async throws {
        try await withTemporaryDirectory { directory in
            let key = MasterKey.generate()
            let store = try makeStore(in: directory, key: key)
            let id = try store.createConversation(NewConversation(title: "persisted", subject: "s"))
            try store.append(NewMessage(role: .user, content: "still here"), to: id)
            try store.close()
            let reopened = try ChatLogStore.open(at: directory.databasePath, key: .key(key))
            let transcript = try reopened.transcript(id)
            #expect(transcript.conversation.title == "persisted")
            #expect(transcript.messages.map(\.content) == ["still here"])
        }
    }
}

/// Writing and reading: exchanges, appends, listings, deletes, metadata.
@Suite struct StoreContentTests {
    @Test func logExchangeWritesPromptAndCompletionInOrder() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let logged = try store.logExchange(
                ModelExchange(
                    conversation: .new(NewConversation(title: "Support", subject: "user-42")),
                    prompt: [
                        NewMessage(role: .system, content: "You are helpful."),
                        NewMessage(role: .user, content: "My card was charged twice"),
                    ],
                    completion: NewMessage(
                        role: .assistant, content: "Sorry about that.", model: "gpt-4o", promptTokens: 12, completionTokens: 40,
                        latencyMilliseconds: 850, finishReason: "stop")))
            #expect(logged.messageIDs.count == 3)
            let transcript = try store.transcript(logged.conversationID)
            #expect(transcript.conversation.title == "Support")
            #expect(transcript.conversation.subject == "user-42")
            #expect(transcript.conversation.messageCount == 3)
            #expect(transcript.messages.map(\.id) == logged.messageIDs)
            #expect(transcript.messages.map(\.position) == [0, 1, 2])
            #expect(transcript.messages.map(\.role) == [.system, .user, .assistant])
            #expect(transcript.messages.map(\.content) == ["You are helpful.", "My card was charged twice", "Sorry about that."])
            let completion = try #require(transcript.messages.last)
            #expect(completion.model == "gpt-4o")
            #expect(completion.promptTokens == 12)
            #expect(completion.completionTokens == 40)
            #expect(completion.latencyMilliseconds == 850)
            #expect(completion.finishReason == "stop")
            #expect(transcript.messages[0].model == nil)

            // A second exchange on the same conversation continues the positions.
            let next = try store.logExchange(
                ModelExchange(
                    conversation: .existing(logged.conversationID), prompt: [NewMessage(role: .user, content: "Thanks")],
                    completion: NewMessage(role: .assistant, content: "You're welcome.")))
            #expect(next.conversationID == logged.conversationID)
            #expect(try store.transcript(logged.conversationID).messages.map(\.position) == [0, 1, 2, 3, 4])
        }
    }

    @Test func logExchangeIsOneTransaction() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            // Make the completion's insert fail after the conversation and prompt rows were inserted.
            try withRawDatabase(directory.databasePath) { db in
                try db.execute(
                    sql: """
                        CREATE TRIGGER fail_completion BEFORE INSERT ON messages WHEN NEW.role = 'assistant'
                        BEGIN SELECT RAISE(ABORT, 'injected failure'); END
                        """)
            }
            #expect(throws: ChatLogError.self) {
                try store.logExchange(
                    ModelExchange(
                        conversation: .new(NewConversation(title: "never")),
                        prompt: [NewMessage(role: .system, content: "a"), NewMessage(role: .user, content: "b")],
                        completion: NewMessage(role: .assistant, content: "c")))
            }
            #expect(try counts(store) == [0, 0])
            try withRawDatabase(directory.databasePath) { db in try db.execute(sql: "DROP TRIGGER fail_completion") }
            let logged = try store.logExchange(
                ModelExchange(
                    conversation: .new(NewConversation()), prompt: [NewMessage(role: .user, content: "b")],
                    completion: NewMessage(role: .assistant, content: "c")))
            #expect(try store.transcript(logged.conversationID).messages.map(\.position) == [0, 1])
        }
    }

    @Test func appendToAMissingConversationWritesNothing() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let existing = try store.createConversation()
            let missing = try #require(ConversationID("0190d5a4-1111-7000-8000-000000000001"))
            #expect(throws: ChatLogError.conversationNotFound(missing.rawValue)) {
                try store.append(NewMessage(role: .user, content: "lost"), to: missing)
            }
            #expect(throws: ChatLogError.conversationNotFound(missing.rawValue)) {
                try store.append([NewMessage(role: .user, content: "a"), NewMessage(role: .user, content: "b")], to: missing)
            }
            #expect(throws: ChatLogError.conversationNotFound(missing.rawValue)) {
                try store.logExchange(
                    ModelExchange(
                        conversation: .existing(missing), prompt: [NewMessage(role: .user, content: "q")],
                        completion: NewMessage(role: .assistant, content: "a")))
            }
            #expect(throws: ChatLogError.conversationNotFound(missing.rawValue)) { try store.transcript(missing) }
            #expect(try counts(store) == [1, 0])
            #expect(try store.transcript(existing).messages.isEmpty)
        }
    }

    @Test func appendBatchIsAllOrNothing() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let id = try store.createConversation()
            // The second message is invalid: nothing of the batch is written.
            #expect(throws: ChatLogError.self) {
                try store.append(
                    [NewMessage(role: .user, content: "ok"), NewMessage(role: .user, content: "bad", promptTokens: -1)], to: id)
            }
            #expect(try store.counts().messages == 0)
            let ids = try store.append((0..<5).map { NewMessage(role: .user, content: "m\($0)") }, to: id)
            let transcript = try store.transcript(id)
            #expect(transcript.messages.map(\.id) == ids)
            #expect(transcript.messages.map(\.position) == [0, 1, 2, 3, 4])
            #expect(transcript.messages.map(\.content) == ["m0", "m1", "m2", "m3", "m4"])
        }
    }

    @Test func conversationsPaginateNewestFirstExactlyOnce() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let base = Date(timeIntervalSince1970: 1_700_000_000)
            var created: [ConversationID: Date] = [:]
            for index in 0..<23 {
                // Several conversations share a creation time, so the cursor must break ties.
                let date = base.addingTimeInterval(Double(index / 3) * 60)
                let id = try store.createConversation(NewConversation(title: "c\(index)", createdAt: date))
                created[id] = date
            }
            for limit in [1, 4, 7, 23, 50] {
                var seen: [Conversation] = []
                var cursor: String?
                var pages = 0
                repeat {
                    let page = try store.conversations(ConversationQuery(limit: limit, cursor: cursor))
                    #expect(page.conversations.count <= limit)
                    seen += page.conversations
                    cursor = page.nextCursor
                    pages += 1
                } while cursor != nil && pages < 100
                #expect(seen.count == 23, "limit \(limit)")
                #expect(Set(seen.map(\.id)) == Set(created.keys), "limit \(limit)")
                let dates = seen.map(\.createdAt)
                #expect(dates == dates.sorted(by: >), "limit \(limit): newest first")
                #expect(pages == (23 + limit - 1) / limit, "limit \(limit): no empty last page")
            }
            // Within one creation time, later-created conversations come first.
            let all = try store.conversations(ConversationQuery(limit: 100)).conversations
            #expect(all.map(\.title) == (0..<23).reversed().map { "c\($0)" })
        }
    }

    @Test func conversationsFilterByTimeAndSubject() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let base = Date(timeIntervalSince1970: 1_700_000_000)
            var ids: [ConversationID] = []
            for index in 0..<10 {
                ids.append(
                    try store.createConversation(
                        NewConversation(
                            title: "c\(index)", subject: index % 2 == 0 ? "alice@example.com" : "bob",
                            createdAt: base.addingTimeInterval(Double(index) * 3600))))
            }
            let since = base.addingTimeInterval(3 * 3600)
            let until = base.addingTimeInterval(7 * 3600)
            let window = try store.conversations(ConversationQuery(since: since, until: until)).conversations
            // since is inclusive, until exclusive.
            #expect(window.map(\.id) == [ids[6], ids[5], ids[4], ids[3]])

            let alice = try store.conversations(ConversationQuery(subject: "alice@example.com")).conversations
            #expect(alice.map(\.id) == [ids[8], ids[6], ids[4], ids[2], ids[0]])
            #expect(alice.allSatisfy { $0.subject == "alice@example.com" })

            let aliceInWindow = try store.conversations(ConversationQuery(since: since, until: until, subject: "alice@example.com"))
            #expect(aliceInWindow.conversations.map(\.id) == [ids[6], ids[4]])

            #expect(try store.conversations(ConversationQuery(subject: "carol")).conversations.isEmpty)
            #expect(try store.conversations(ConversationQuery(subject: "Alice@example.com")).conversations.isEmpty)

            // Paging through a filtered listing also returns each match once.
            let first = try store.conversations(ConversationQuery(subject: "bob", limit: 2))
            let second = try store.conversations(ConversationQuery(subject: "bob", limit: 2, cursor: first.nextCursor))
            let third = try store.conversations(ConversationQuery(subject: "bob", limit: 2, cursor: second.nextCursor))
            #expect((first.conversations + second.conversations + third.conversations).map(\.id) == [ids[9], ids[7], ids[5], ids[3], ids[1]])
            #expect(third.nextCursor == nil)
        }
    }

    @Test func badListingQueriesAreRefused() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            for query in [ConversationQuery(limit: 0), ConversationQuery(limit: 10_001), ConversationQuery(cursor: "nonsense")] {
                #expect {
                    try store.conversations(query)
                } throws: { error in
                    guard case ChatLogError.invalidInput = error else { return false }
                    return true
                }
            }
        }
    }

    @Test func deleteConversationRemovesItsMessages() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let doomed = try store.createConversation(NewConversation(title: "doomed"))
            try store.append((0..<4).map { NewMessage(role: .user, content: "m\($0)") }, to: doomed)
            let kept = try store.createConversation(NewConversation(title: "kept"))
            try store.append(NewMessage(role: .user, content: "stay"), to: kept)
            #expect(try counts(store) == [2, 5])

            #expect(try store.deleteConversation(doomed))
            #expect(try counts(store) == [1, 1])
            #expect(throws: ChatLogError.conversationNotFound(doomed.rawValue)) { try store.transcript(doomed) }
            let orphans = try withRawDatabase(directory.databasePath) { db in
                try Int.fetchOne(
                    db, sql: "SELECT count(*) FROM messages WHERE conversation_seq NOT IN (SELECT seq FROM conversations)")
            }
            #expect(orphans == 0)
            #expect(try store.transcript(kept).messages.map(\.content) == ["stay"])
            #expect(try store.deleteConversation(doomed) == false)
        }
    }

    @Test func asyncFormsWork() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let id = try await store.createConversation(NewConversation(title: "async"))
            let first = try await store.append(NewMessage(role: .user, content: "one"), to: id)
            let more = try await store.append([NewMessage(role: .assistant, content: "two"), NewMessage(role: .user, content: "three")], to: id)
            let logged = try await store.logExchange(
                ModelExchange(
                    conversation: .existing(id), prompt: [NewMessage(role: .user, content: "four")],
                    completion: NewMessage(role: .assistant, content: "five", model: "m")))
            let transcript = try await store.transcript(id)
            #expect(transcript.messages.map(\.id) == [first] + more + logged.messageIDs)
            #expect(transcript.messages.map(\.content) == ["one", "two", "three", "four", "five"])
            #expect(transcript.messages.map(\.position) == [0, 1, 2, 3, 4])
            let conversation = try await store.conversation(id)
            #expect(conversation.title == "async")
            #expect(conversation.messageCount == 5)
            let fresh = try await store.logExchange(
                ModelExchange(
                    conversation: .new(NewConversation(title: "second")), prompt: [],
                    completion: NewMessage(role: .assistant, content: "hi")))
            let page = try await store.conversations(ConversationQuery())
            #expect(Set(page.conversations.map(\.id)) == [id, fresh.conversationID])
            #expect(try await store.deleteConversation(id))
            #expect(try await store.deleteConversation(id) == false)
            await #expect(throws: ChatLogError.conversationNotFound(id.rawValue)) { try await store.transcript(id) }
            #expect(try counts(store) == [1, 1])
        }
    }

    @Test func keyStatusCountsRowsPerKey() async throws {
        try await withTemporaryDirectory { directory in
            let key = MasterKey.generate()
            let store = try ChatLogStore.create(at: directory.databasePath, key: .key(key, origin: "test origin"))
            let withSubject = try store.createConversation(NewConversation(title: "a", subject: "someone"))
            let withoutSubject = try store.createConversation(NewConversation(title: "b"))
            try store.append((0..<3).map { NewMessage(role: .user, content: "m\($0)") }, to: withSubject)
            try store.append((0..<2).map { NewMessage(role: .user, content: "n\($0)") }, to: withoutSubject)

            let status = try store.keyStatus()
            #expect(status.masterKeyFingerprint == key.fingerprint)
            #expect(status.masterKeySource == "test origin")
            #expect(status.keys.count == 2)
            let data = try #require(status.keys.first { $0.kind == .data })
            let index = try #require(status.keys.first { $0.kind == .index })
            #expect(data.state == .active)
            #expect(index.state == .active)
            #expect(data.id != index.id)
            // Two conversations and five messages are sealed under the data key; the five
            // messages' search terms and one subject are blinded under the index key.
            #expect(data.rowCount == 7)
            #expect(index.rowCount == 6)
            #expect(data.retiredAt == nil)
        }
    }

    @Test func metadataJSONRoundTrips() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let metadata: JSONValue = .object([
                "request": .object([
                    "temperature": .number(0.7),
                    "top_p": .number(1.0e-3),
                    "max_tokens": .integer(1024),
                    "seed": .integer(Int64.max),
                    "offset": .integer(-42),
                    "zero": .integer(0),
                    "one": .integer(1),
                    "stream": .bool(false),
                    "stop": .array([.string("\n\n"), .string("END")]),
                    "user": .null,
                ]),
                "tool_calls": .array([
                    .object(["name": .string("lookup"), "arguments": .object(["query": .string("naïve café 日本語 🌍 \"quoted\" \\ / \u{7}")])])
                ]),
                "empty_object": .object([:]),
                "empty_array": .array([]),
                "huge": .number(1.5e300),
                "tiny": .number(-2.5e-300),
            ])
            let id = try store.createConversation(NewConversation(metadata: metadata))
            try store.append(NewMessage(role: .tool, content: "x", metadata: metadata), to: id)
            try store.append(NewMessage(role: .user, content: "no metadata"), to: id)
            let transcript = try store.transcript(id)
            #expect(transcript.conversation.metadata == metadata)
            #expect(transcript.messages[0].metadata == metadata)
            #expect(transcript.messages[1].metadata == nil)
            #expect(transcript.messages[0].role == .tool)
            for scalar in [JSONValue.string("just a string"), .integer(7), .number(3.25), .bool(true), .array([.null])] {
                let other = try store.createConversation(NewConversation(metadata: scalar))
                #expect(try store.conversation(other).metadata == scalar)
            }
        }
    }

    @Test func nonFiniteMetadataIsRefused() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            #expect {
                try store.createConversation(NewConversation(metadata: .object(["x": .number(.nan)])))
            } throws: { error in
                guard case ChatLogError.invalidInput = error else { return false }
                return true
            }
            #expect(try counts(store) == [0, 0])
        }
    }

    @Test func plainColumnsAreValidated() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let id = try store.createConversation()
            let bad: [NewMessage] = [
                NewMessage(role: .user, content: "x", promptTokens: -1),
                NewMessage(role: .user, content: "x", completionTokens: -1),
                NewMessage(role: .user, content: "x", latencyMilliseconds: -5),
                NewMessage(role: .user, content: "x", model: String(repeating: "m", count: 257)),
                NewMessage(role: .user, content: "x", finishReason: "stop\0"),
            ]
            for message in bad {
                #expect {
                    try store.append(message, to: id)
                } throws: { error in
                    guard case ChatLogError.invalidInput = error else { return false }
                    return true
                }
            }
            #expect(try store.counts().messages == 0)
        }
    }

    @Test func publicIDsAreCanonicalUUIDs() async throws {
        #expect(ConversationID("0190D5A4-ABCD-7000-8000-00000000000F")?.rawValue == "0190d5a4-abcd-7000-8000-00000000000f")
        for bad in ["", "not-a-uuid", "0190d5a4abcd70008000000000000000", "0190d5a4-abcd-7000-8000-00000000000g", "0190d5a4-abcd-7000-8000-00000000000f0"] {
            #expect(ConversationID(bad) == nil, "\(bad)")
            #expect(MessageID(bad) == nil, "\(bad)")
        }
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let id = try store.createConversation()
            let message = try store.append(NewMessage(role: .user, content: "x"), to: id)
            for text in [id.rawValue, message.rawValue] {
                let characters = Array(text)
                #expect(characters.count == 36)
                #expect(characters[14] == "7", "UUID version 7: \(text)")
                #expect("89ab".contains(characters[19]), "RFC 9562 variant: \(text)")
                #expect(text == text.lowercased())
            }
            #expect(ConversationID(id.rawValue.uppercased()) == id)
        }
    }

    @Test func explicitTimesArePreservedToTheMillisecond() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let created = Date(timeIntervalSince1970: 1_700_000_000.125)
            let said = Date(timeIntervalSince1970: 1_700_000_100.625)
            let id = try store.createConversation(NewConversation(createdAt: created))
            try store.append(NewMessage(role: .user, content: "x", createdAt: said), to: id)
            let transcript = try store.transcript(id)
            #expect(transcript.conversation.createdAt.unixMilliseconds == 1_700_000_000_125)
            #expect(transcript.conversation.updatedAt.unixMilliseconds == 1_700_000_100_625)
            #expect(transcript.messages[0].createdAt.unixMilliseconds == 1_700_000_100_625)
        }
    }
}
