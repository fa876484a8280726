import ChatLogTestSupport
import Foundation
import Testing

@testable import ChatLog
@testable import ChatLogPostgres

extension PostgreSQLSuites {
    /// `ChatLogStore` on PostgreSQL through the storage seam: the same library calls, the same
    /// answers as on SQLite, and the errors of what is not built there yet.
    @Suite("ChatLogStore on PostgreSQL")
    struct PostgresStoreTests {
        /// One script of library calls; its answers as text lines (ids are given, so they agree).
        static func answers(_ store: ChatLogStore, conversations: [ConversationID], messages: [[MessageID]]) async throws -> [String] {
            let words = ["refund", "card", "charged", "twice", "paypal", "invoice", "zażółć", "naïve", "日本語", "delivery", "late", "broken"]
            var random = SplitMix64(seed: 0x5EED)
            func text(_ minimum: Int, _ spread: Int) -> String {
                let count = minimum + Int(random.next() % UInt64(spread))
                var picked: [String] = []
                for _ in 0..<count { picked.append(words[Int(random.next() % 12)]) }
                return picked.joined(separator: " ")
            }
            let base = Date(timeIntervalSince1970: 1_760_000_000)
            func at(_ seconds: Int) -> Date { base.addingTimeInterval(Double(seconds)) }
            for (index, id) in conversations.dropLast().enumerated() {
                var prompt: [NewMessage] = []
                for turn in 0..<(1 + Int(random.next() % 3)) {
                    var message = NewMessage(role: turn % 2 == 0 ? .user : .system, content: text(3, 9), createdAt: at(index * 60 + turn))
                    message.id = messages[index][turn]
                    prompt.append(message)
                }
                var completion = NewMessage(
                    role: .assistant, content: text(5, 12), model: index % 2 == 0 ? "gpt-4o" : "claude", promptTokens: index,
                    completionTokens: 2 * index, latencyMilliseconds: 100 + index, finishReason: "stop",
                    metadata: .object(["n": .integer(Int64(index))]), createdAt: at(index * 60 + 30))
                completion.id = messages[index][3]
                let conversation = NewConversation(
                    title: "conversation \(index)", metadata: .object(["i": .integer(Int64(index))]), createdAt: at(index * 60), id: id)
                _ = try await store.logExchange(ModelExchange(conversation: .new(conversation), prompt: prompt, completion: completion))
            }
            var late = NewMessage(role: .user, content: "late delivery again", createdAt: at(10_000))
            late.id = messages[0][4]
            _ = try await store.append(late, to: conversations[0])

            var lines: [String] = []
            let counts = try await store.counts()
            lines.append("counts \(counts.conversations) \(counts.messages)")
            var cursor: String?
            repeat {
                let page = try await store.conversations(ConversationQuery(limit: 5, cursor: cursor))
                lines += page.conversations.map { "list \($0.id) \($0.title ?? "-") \($0.messageCount) \(Self.json($0.metadata))" }
                cursor = page.nextCursor
            } while cursor != nil
            lines += try await store.conversations(ConversationQuery(model: "claude")).conversations.map { "claude \($0.id)" }
            lines += try await store.conversations(ConversationQuery(since: base.addingTimeInterval(300), until: base.addingTimeInterval(600))).conversations.map { "window \($0.id)" }
            for id in conversations.prefix(3) {
                let transcript = try await store.transcript(id)
                lines.append("transcript \(id) \(transcript.conversation.title ?? "-") \(transcript.conversation.messageCount)")
                lines += transcript.messages.map {
                    "  \($0.position) \($0.id) \($0.role) \($0.model ?? "-") \($0.promptTokens ?? -1) \($0.latencyMilliseconds ?? -1) \($0.createdAt.timeIntervalSince1970) \($0.content) \(Self.json($0.metadata))"
                }
            }
            for query in ["refund", "card -paypal", "\"charged twice\"", "invoice OR 日本語", "zażółć naïve", "late delivery", "nothinglikethis"] {
                for sort in SearchSort.allCases {
                    for filters in [SearchFilters(), SearchFilters(role: .assistant), SearchFilters(model: "claude"), SearchFilters(conversation: conversations[1]),
                        SearchFilters(since: base.addingTimeInterval(120), until: base.addingTimeInterval(480))]
                    {
                        let results = try await store.search(query, filters: filters, limit: 4, offset: 1, sort: sort)
                        lines.append("search \(query) \(sort) \(filters.role?.rawValue ?? "") \(filters.model ?? "") examined \(results.examined) matched \(results.matched ?? -1) more \(results.more)")
                        lines += results.hits.map {
                            "  \($0.messageID) \($0.conversationID) \($0.role) \($0.score.map { String(format: "%.9f", $0) } ?? "-") \($0.snippet.text) \(Self.highlighted($0.snippet))"
                        }
                    }
                }
            }
            lines.append("short \(try await store.conversationID(matching: String(conversations[2].rawValue.prefix(30))))")
            lines += try await store.keyStatus().keys.map { "key \($0.id) \($0.kind) \($0.state) \($0.rowCount)" }
            _ = try await store.createConversation(NewConversation(title: "empty", createdAt: at(50_000), id: conversations[13]))
            for grouping in [nil] + StatsGrouping.allCases.map(Optional.some) {
                for (since, until) in [(nil, nil), (at(120), at(480)), (at(100_000), nil)] as [(Date?, Date?)] {
                    lines += try await store.stats(by: grouping, since: since, until: until).map {
                        "stats \(grouping?.rawValue ?? "-") \($0.group ?? "-") \($0.conversations) \($0.messages) \($0.promptTokens) \($0.completionTokens)"
                    }
                }
            }
            #expect(try await store.deleteConversation(conversations[1]))
            #expect(try await store.deleteConversations([conversations[2], conversations[1]]) == 1)
            let after = try await store.counts()
            lines.append("after delete \(after.conversations) \(after.messages)")
            lines += try await store.search("refund", sort: .newest).hits.map { "  after \($0.messageID)" }
            return lines
        }

        static func json(_ value: JSONValue?) -> String {
            guard let value, let data = try? value.encoded() else { return "-" }
            return String(decoding: data, as: UTF8.self)
        }

        static func highlighted(_ snippet: Snippet) -> [String] { snippet.highlights.map { String(snippet.text[$0]) } }

        @Test("the same library calls give the same answers on PostgreSQL as on SQLite: logging, listing pages and filters, transcripts, search (newest and relevance, every filter), short ids, key status, deletes")
        func sameAnswersAsSQLite() async throws {
            let conversations = (0..<14).map { _ in ConversationID.make() }
            let messages = conversations.map { _ in (0..<5).map { _ in MessageID.make() } }
            let key = MasterKey.generate()
            let sqlite = try await withSQLiteLocation { location in
                let store = try await ChatLogStore.create(url: location, key: .key(key))
                defer { try? store.close() }
                return try await Self.answers(store, conversations: conversations, messages: messages)
            }
            let postgres = try await withPostgresLocation { location, _ in
                let store = try await ChatLogStore.create(url: location, key: .key(key))
                defer { try? store.close() }
                #expect(store.storage != nil)
                return try await Self.answers(store, conversations: conversations, messages: messages)
            }
            #expect(sqlite.count > 100)
            #expect(sqlite.contains { $0.hasPrefix("  ") && $0.contains("refund") })
            for (index, (left, right)) in zip(sqlite, postgres).enumerated() where left != right {
                Issue.record("line \(index): SQLite «\(left)» PostgreSQL «\(right)»")
                break
            }
            #expect(sqlite.count == postgres.count)
        }

        /// What a reader sees: every listing page, every transcript, searches of both sorts.
        static func summary(_ store: ChatLogStore) async throws -> [String] {
            var lines: [String] = []
            var cursor: String?
            repeat {
                let page = try await store.conversations(ConversationQuery(limit: 7, cursor: cursor))
                for conversation in page.conversations {
                    let transcript = try await store.transcript(conversation.id)
                    lines.append("conversation \(conversation.id) \(conversation.title ?? "-") \(Self.json(conversation.metadata)) \(conversation.createdAt.timeIntervalSince1970)")
                    lines += transcript.messages.map { "  \($0.id) \($0.role) \($0.model ?? "-") \($0.createdAt.timeIntervalSince1970) \($0.content) \(Self.json($0.metadata))" }
                }
                cursor = page.nextCursor
            } while cursor != nil
            for query in ["refund", "card -paypal", "\"charged twice\"", "invoice OR 日本語", "late delivery"] {
                for sort in SearchSort.allCases {
                    let results = try await store.search(query, limit: 50, sort: sort)
                    lines += results.hits.map { "search \(query) \(sort) \($0.messageID) \($0.score.map { String(format: "%.9f", $0) } ?? "-")" }
                }
            }
            let counts = try await store.counts()
            lines.append("counts \(counts.conversations) \(counts.messages)")
            return lines
        }

        @Test("copy moves a store SQLite → PostgreSQL → SQLite without opening a value: the same transcripts and search answers, resumed after an interruption, verified; another store or a foreign file at the destination is refused untouched, and so is the store itself, also by another name")
        func copyBothWays() async throws {
            let conversations = (0..<14).map { _ in ConversationID.make() }
            let messages = conversations.map { _ in (0..<5).map { _ in MessageID.make() } }
            let key = MasterKey.generate()
            try await withSQLiteLocation { path in
                let source = try await ChatLogStore.create(url: path, key: .key(key))
                defer { try? source.close() }
                _ = try await Self.answers(source, conversations: conversations, messages: messages)
                let expected = try await Self.summary(source)
                #expect(expected.count > 60)
                try await withPostgresLocation { url, database in
                    let report = try await source.copy(to: url)
                    #expect(report.conversations == 12 && report.alreadyCopied == 0 && report.termPairs > 100, "\(report)")
                    #expect(report.verifiedConversations == 12 && report.verifiedMessages == report.messages)
                    let copied = try await ChatLogStore.open(url: url, key: .key(key))
                    defer { try? copied.close() }
                    let first = try await Self.summary(copied)
                    for (left, right) in zip(expected, first) where left != right {
                        Issue.record("SQLite «\(left)» copy «\(right)»")
                        break
                    }
                    #expect(first == expected)
                    // The export (OpenAI JSONL with chatlog's fields) of the copy is the source's, byte for byte, with every filter.
                    for filter in [ExportFilter(), ExportFilter(conversation: conversations[3]), ExportFilter(since: Date(timeIntervalSince1970: 1_760_000_200), until: Date(timeIntervalSince1970: 1_760_000_500)), ExportFilter(conversation: conversations[1])] {
                        var here = Data()
                        var there = Data()
                        let a = try await source.exportOpenAIJSONL(filter) { here.append($0) }
                        let b = try await copied.exportOpenAIJSONL(filter) { there.append($0) }
                        #expect(a == b && here == there, "\(filter)")
                        #expect(filter.conversation == conversations[1] ? a.conversations == 0 : a.conversations > 0)
                    }

                    // Interrupted before five conversations (each is copied in one transaction): a rerun copies just those.
                    try database.psql("DELETE FROM conversations WHERE id IN (SELECT id FROM conversations ORDER BY created_at LIMIT 5)")
                    let resumed = try await source.copy(to: url)
                    #expect(resumed.conversations == 5 && resumed.alreadyCopied == 7 && resumed.verifiedConversations == 12, "\(resumed)")
                    #expect(try await Self.summary(copied) == expected)

                    // Interrupted in the middle of the terms' bulk load (the staging table holding part of the pairs, no
                    // message's terms written yet, the GIN index dropped): the rerun loads them all again, writes every
                    // message's terms and builds the index.
                    let pairs = try database.psql("SELECT sum(cardinality(terms)) FROM messages")
                    try database.psql(
                        """
                        CREATE TABLE chatlog_term_load (message_seq BIGINT NOT NULL, term BIGINT NOT NULL);
                        INSERT INTO chatlog_term_load SELECT seq, t FROM messages, unnest(terms) AS t WHERE t % 2 = 0;
                        UPDATE messages SET terms = NULL; DROP INDEX messages_by_term
                        """)
                    let reloaded = try await source.copy(to: url)
                    #expect(reloaded.conversations == 0 && reloaded.termPairs == Int(pairs), "\(reloaded)")
                    #expect(try database.psql("SELECT sum(cardinality(terms)) FROM messages") == pairs)
                    #expect(try database.psql("SELECT count(*) FROM pg_indexes WHERE indexname = 'messages_by_term'") == "1")
                    #expect(try database.psql("SELECT to_regclass('chatlog_term_load') IS NULL") == "t")
                    #expect(try await Self.summary(copied) == expected)

                    // And back into a new SQLite file, which opens as an ordinary store.
                    try await withSQLiteLocation { back in
                        let returned = try await copied.copy(to: back)
                        #expect(returned.conversations == 12 && returned.termPairs == 0)
                        let reopened = try ChatLogStore.open(at: back, key: .key(key))
                        defer { try? reopened.close() }
                        #expect(try await Self.summary(reopened) == expected)
                        await #expect(try reopened.verify().ok)
                    }

                    // Into itself: refused by its name, and by another name (a link to the server's socket
                    // folder), which only the server can tell; nothing changed.
                    await #expect(throws: ChatLogError.invalidInput("the destination is this store")) { try await copied.copy(to: url) }
                    try await withAliasedPostgresURL(url) { aliased in
                        await #expect(throws: ChatLogError.invalidInput("the destination is this store (its database by another name)")) {
                            try await copied.copy(to: aliased)
                        }
                    }
                    #expect(try await Self.summary(copied) == expected)

                    // Another store at the destination, and a file of another program: refused, nothing changed.
                    try await withSQLiteLocation { other in
                        let unrelated = try ChatLogStore.create(at: other, key: .key(key))
                        try unrelated.close()
                        await #expect(throws: ChatLogError.invalidInput("\(other) holds another chatlog store; copy into an empty database or a new file")) {
                            try await source.copy(to: other)
                        }
                        let foreign = other + ".txt"
                        try Data("not a database".utf8).write(to: URL(fileURLWithPath: foreign))
                        await #expect(throws: ChatLogError.self) { try await source.copy(to: foreign) }
                        #expect(try Data(contentsOf: URL(fileURLWithPath: foreign)) == Data("not a database".utf8))
                        await #expect(throws: ChatLogError.invalidInput("the destination is this store's own file")) { try await source.copy(to: path) }
                    }
                }
                // With subject keys, a PostgreSQL destination needs a key database of its own: refused before the destination is touched
                // (CopySubjectKeyTests copies them).
                _ = try await source.createConversation(NewConversation(title: "s", subject: "user-7"))
                try await withPostgresLocation { url, database in
                    await #expect(
                        throws: ChatLogError.invalidInput(
                            "this store has per-subject keys (1 conversation is sealed under per-subject keys): the destination needs a subject-key database of its own (`chatlog copy --subject-keys-to postgresql://…`, docs/OPERATIONS.md); nothing was copied")
                    ) {
                        try await source.copy(to: url)
                    }
                    let tables = try database.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
                    #expect(tables == "0")
                }
            }
        }

        @Test("open checks the master key (wrong key: the expected fingerprint), a second create is refused, a passphrase store reopens, and the key rows are authenticated")
        func keysAndCreation() async throws {
            try await withPostgresLocation { location, database in
                let key = MasterKey.generate()
                let store = try await ChatLogStore.create(url: location, key: .key(key))
                let id = try await store.logExchange(
                    ModelExchange(conversation: .new(NewConversation(title: "t")), prompt: [], completion: NewMessage(role: .assistant, content: "hello"))
                ).conversationID
                try? store.close()
                await #expect(throws: ChatLogError.storeExists(path: store.path)) {
                    try await ChatLogStore.create(url: location, key: .key(key))
                }
                let other = MasterKey.generate()
                await #expect(throws: ChatLogError.wrongKey(expected: key.fingerprint, given: other.fingerprint, source: "given by the application")) {
                    try await ChatLogStore.open(url: location, key: .key(other))
                }
                let reopened = try await ChatLogStore.open(url: location, key: .key(key))
                #expect(try await reopened.transcript(id).messages.map(\.content) == ["hello"])
                try? reopened.close()

                // A key row changed behind chatlog's back (re-activated, or its wrapped bytes swapped) is refused.
                try database.psql("UPDATE keys SET created_at = created_at + 1 WHERE id = 1")
                await #expect(throws: ChatLogError.integrity(IntegrityFailure(table: "keys", column: "mac", rowID: "data:1", reason: .authenticationFailed))) {
                    try await ChatLogStore.open(url: location, key: .key(key))
                }
            }
            try await withPostgresLocation { location, _ in
                let passphrase = try Passphrase("correct horse battery staple")
                let options = ChatLogStore.Options(passphraseKDF: .interactive)
                let store = try await ChatLogStore.create(url: location, key: .passphrase(passphrase), options: options)
                _ = try await store.createConversation(NewConversation(title: "p"))
                try? store.close()
                let reopened = try await ChatLogStore.open(url: location, key: .passphrase(passphrase), options: options)
                #expect(try await reopened.conversations().conversations.map(\.title) == ["p"])
                try? reopened.close()
                await #expect(throws: ChatLogError.self) {
                    try await ChatLogStore.open(url: location, key: .passphrase(try Passphrase("wrong horse battery staple")), options: options)
                }
            }
        }

        @Test("what needs what is not there fails with one specific error and writes nothing: a conversation with a subject without CHATLOG_SUBJECT_KEYS, SQLite-only operations")
        func notYetOnPostgres() async throws {
            try await withPostgresLocation { location, _ in
                let store = try await ChatLogStore.create(url: location, key: .key(.generate()))
                defer { try? store.close() }
                await #expect(throws: ChatLogError.subjectKeyStore(location: store.path, reason: MissingSubjectKeys(location: store.path).reason)) {
                    try await store.logExchange(
                        ModelExchange(conversation: .new(NewConversation(subject: "user-42")), prompt: [], completion: NewMessage(role: .assistant, content: "x")))
                }
                #expect(try await store.counts() == (0, 0))
                #expect(throws: ChatLogError.notOnThisBackend(location: store.path, what: "this")) { try store.verify() }
                #expect(throws: ChatLogError.notOnThisBackend(location: store.path, what: "this")) { try store.counts() }
                #expect(!store.path.contains("password"))
            }
        }

        @Test("a sealed value moved to another row on the server fails to open, naming the row; the rest still opens")
        func movedCiphertext() async throws {
            try await withPostgresLocation { location, database in
                let store = try await ChatLogStore.create(url: location, key: .key(.generate()))
                defer { try? store.close() }
                let first = try await store.logExchange(
                    ModelExchange(conversation: .new(NewConversation(title: "a")), prompt: [NewMessage(role: .user, content: "secret one")],
                        completion: NewMessage(role: .assistant, content: "secret two")))
                let second = try await store.logExchange(
                    ModelExchange(conversation: .new(NewConversation(title: "b")), prompt: [], completion: NewMessage(role: .assistant, content: "other")))
                let clean = try await store.verify()
                #expect(clean.ok && clean.conversations == 2 && clean.messages == 3 && clean.sealedValues == 2 + 2 + 3, "\(clean.issues)")
                try database.psql(
                    "UPDATE messages SET content = (SELECT content FROM messages WHERE id = '\(first.messageIDs[0])') WHERE id = '\(first.messageIDs[1])'")
                await #expect(throws: ChatLogError.integrity(IntegrityFailure(table: "messages", column: "content", rowID: first.messageIDs[1].rawValue, reason: .authenticationFailed))) {
                    try await store.transcript(first.conversationID)
                }
                #expect(try await store.transcript(second.conversationID).messages.map(\.content) == ["other"])
                // verify names that row, and a message whose terms were removed from the index behind chatlog's back.
                try database.psql("UPDATE messages SET terms = NULL WHERE id = '\(second.messageIDs[0])'")
                let report = try await store.verify()
                #expect(!report.ok && report.issueCount == 2, "\(report.issues)")
                #expect(report.issues.contains { $0.table == "messages" && $0.column == "content" && $0.rowID == first.messageIDs[1].rawValue })
                #expect(report.issues.contains { $0.table == "message_terms" && $0.rowID == second.messageIDs[0].rawValue })
            }
        }

        @Test("one append of 6,000 messages (14 values each: more than PostgreSQL's 65,535 parameters of one statement) to a conversation that has messages: positions continue gap-free, every message's terms are stored, updated_at is the newest message's")
        func appendAcrossStatements() async throws {
            try await withPostgresLocation { location, database in
                let store = try await ChatLogStore.create(url: location, key: .key(MasterKey.generate()))
                defer { try? store.close() }
                let start = Date(timeIntervalSince1970: 1_790_000_000)
                let first = try await store.logExchange(
                    ModelExchange(
                        conversation: .new(NewConversation(title: "long", createdAt: start)), prompt: [NewMessage(role: .user, content: "opening words", createdAt: start)],
                        completion: NewMessage(role: .assistant, content: "first answer", createdAt: start)))
                let count = 6_000
                let messages = (0..<count).map { index in
                    NewMessage(role: index % 2 == 0 ? .user : .assistant, content: "turn\(index) shared", createdAt: start.addingTimeInterval(Double(index + 1)))
                }
                let ids = try await store.append(messages, to: first.conversationID)
                #expect(ids.count == count)
                let transcript = try await store.transcript(first.conversationID)
                #expect(transcript.messages.map(\.position) == Array(0..<(count + 2)))
                #expect(transcript.messages.dropFirst(2).map(\.content) == messages.map(\.content))
                #expect(try database.psql("SELECT count(*) FROM messages WHERE terms IS NULL") == "0")
                for index in [0, PostgresStorage.messagesPerStatement - 1, PostgresStorage.messagesPerStatement, count - 1] {
                    let hits = try await store.search("turn\(index)", limit: 5, sort: .newest).hits
                    #expect(hits.map(\.messageID) == [ids[index]], "turn\(index)")
                }
                #expect(try await store.search("shared", limit: 20, sort: .relevance).matched == count)
                let newest = Int64((start.timeIntervalSince1970 + Double(count)) * 1000)
                #expect(try database.psql("SELECT updated_at FROM conversations") == "\(newest)")
            }
        }

        @Test("concurrent writers on two handles append to one conversation: every message kept, positions gap-free")
        func concurrentWriters() async throws {
            try await withPostgresLocation { location, _ in
                let key = MasterKey.generate()
                let one = try await ChatLogStore.create(url: location, key: .key(key))
                let two = try await ChatLogStore.open(url: location, key: .key(key))
                defer {
                    try? one.close()
                    try? two.close()
                }
                let id = try await one.createConversation(NewConversation(title: "shared"))
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for writer in 0..<8 {
                        let store = writer % 2 == 0 ? one : two
                        group.addTask {
                            for turn in 0..<15 { _ = try await store.append([NewMessage(role: .user, content: "w\(writer) t\(turn)")], to: id) }
                        }
                    }
                    try await group.waitForAll()
                }
                let transcript = try await two.transcript(id)
                #expect(transcript.messages.map(\.position) == Array(0..<120))
                #expect(Set(transcript.messages.map(\.content)).count == 120)
            }
        }
    }
}

/// One database of the test cluster, for SQL run beside chatlog.
struct PostgresDatabase: Sendable {
    let server: PostgresTestServer
    let name: String

    @discardableResult
    func psql(_ sql: String) throws -> String { try server.psql(sql, database: name) }

    /// `psql` on a thread of its own: for polling loops, which would otherwise hold one of Swift's
    /// two cooperative threads here while the work they wait for needs it.
    @discardableResult
    func psqlOffPool(_ sql: String) async throws -> String { try await server.psqlOffPool(sql, database: name) }
}

/// A location for a new SQLite store (a path in a temporary directory removed after `body`).
func withSQLiteLocation<R>(_ body: (String) async throws -> R) async throws -> R {
    var template = Array((NSTemporaryDirectory() + "/chatlog-pgstore-XXXXXX").utf8CString)
    guard let created = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
        throw PostgresTestServerError("mkdtemp failed")
    }
    let directory = String(cString: created)
    defer { try? FileManager.default.removeItem(atPath: directory) }
    return try await body(directory + "/chat.db")
}

/// The URL of a new, empty database of the shared test cluster (dropped after `body`).
/// `url` reaching the same database by another name: its socket folder through a symbolic link
/// (removed after `body`), so that only the server can tell the two apart.
@discardableResult
func withAliasedPostgresURL<R>(_ url: String, _ body: (String) async throws -> R) async throws -> R {
    let host = try #require(url.range(of: "host="))
    let folder = String(url[host.upperBound...])
    let alias = "/tmp/chatlog-alias-\(UUID().uuidString.prefix(8))"
    try FileManager.default.createSymbolicLink(atPath: alias, withDestinationPath: folder)
    defer { try? FileManager.default.removeItem(atPath: alias) }
    let aliased = url.replacingOccurrences(of: folder, with: alias)
    #expect(try PostgresLocation(url: aliased).description != (try PostgresLocation(url: url).description))
    return try await body(aliased)
}

func withPostgresLocation<R>(_ body: (String, PostgresDatabase) async throws -> R) async throws -> R {
    let server = try await PostgresTestServer.shared()
    return try await server.withDatabase { database in try await body(server.url(database: database), PostgresDatabase(server: server, name: database)) }
}

extension PostgreSQLSuites {
    /// The `chatlog` binary on a PostgreSQL store, from the environment (CHATLOG_DB) or `--db`.
    @Suite("chatlog CLI on PostgreSQL")
    struct PostgresCLITests {
        @Test("init, log, import, list, show, search, key status, rm and prune work on a postgres:// store; without CHATLOG_SUBJECT_KEYS a subject and forget exit 77 naming it; a password in --db is refused")
        func commands() async throws {
            try await withPostgresLocation { location, _ in
                let home = NSTemporaryDirectory() + "/chatlog-pgcli-" + UUID().uuidString
                try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
                defer { try? FileManager.default.removeItem(atPath: home) }
                let key = MasterKey.generate()
                let env = [
                    "CHATLOG_MASTER_KEY": key.exportBase64(), "CHATLOG_DB": location, "HOME": home, "PATH": "/usr/bin:/bin",
                ]
                func chatlog(_ arguments: String..., env: [String: String] = env) throws -> ProcessOutput {
                    try ProcessOutput.run(chatlogBinary(), arguments, env: env, cwd: home)
                }

                let created = try chatlog("init")
                #expect(created.status == 0, "\(created)")
                #expect(created.out.hasPrefix("created chatlog store postgresql://"))
                let again = try chatlog("init")
                #expect(again.status == 0 && again.out.contains("already exists"), "\(again)")

                let first = try chatlog("log", "--title", "Billing", "--text", "My card was charged twice, I want a refund", "--json")
                #expect(first.status == 0, "\(first)")
                let ids = try JSONSerialization.jsonObject(with: Data(first.out.utf8)) as? [String: String]
                let conversation = try #require(ids?["conversation_id"])
                let reply = try chatlog(
                    "log", "--conversation", String(conversation.prefix(8)), "--role", "assistant", "--model", "gpt-4o", "--text",
                    "Sorry about that: the refund is on its way")
                #expect(reply.status == 0, "\(reply)")
                #expect(try chatlog("log", "--title", "Other", "--text", "delivery late").status == 0)

                let list = try chatlog("list", "--json")
                #expect(list.status == 0 && list.out.contains("Billing") && list.out.contains("Other"), "\(list)")
                let show = try chatlog("show", String(conversation.prefix(13)), "--json")
                #expect(show.status == 0, "\(show)")
                #expect(show.out.contains("My card was charged twice") && show.out.contains("the refund is on its way"))
                let search = try chatlog("search", "refund", "--json")
                #expect(search.status == 0 && search.out.components(separatedBy: "\"message_id\"").count == 3, "\(search)")
                let newest = try chatlog("search", "refund -sorry", "--sort", "newest")
                #expect(newest.status == 0 && newest.out.contains("charged twice") && !newest.out.contains("on its way"), "\(newest)")
                let verify = try chatlog("verify", "--json")
                #expect(verify.status == 0 && verify.out.contains("\"ok\" : true"), "\(verify)")
                let stats = try chatlog("stats", "--by", "model", "--json")
                #expect(stats.status == 0 && stats.out.contains("gpt-4o"), "\(stats)")
                let status = try chatlog("key", "status")
                #expect(status.status == 0 && status.out.contains("active"), "\(status)")
                let overview = try chatlog("status", "--json")
                #expect(overview.status == 0 && overview.out.contains("\"files\" : null") && overview.out.contains("\"messages\" : 3"), "\(overview)")

                let export = try chatlog("export")
                #expect(export.status == 0 && export.out.split(separator: "\n").count == 2 && export.out.contains("charged twice"), "\(export)")
                let rotate = try chatlog("key", "rotate", "--new", "--vacuum")
                #expect(rotate.status == 0 && rotate.out.contains("new active data key 3") && rotate.out.contains("none remain"), "\(rotate)")
                try Data(#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}"#.utf8 + [0x0A]).write(to: URL(fileURLWithPath: home + "/in.jsonl"))
                // Without CHATLOG_SUBJECT_KEYS (ErasureBackendTests and PostgresSubjectKeyTests have it):
                // one error naming the variable, nothing written.
                let forget = try chatlog("forget", "--subject", "user-42")
                #expect(forget.status == 77 && forget.err.contains("CHATLOG_SUBJECT_KEYS") && !forget.err.contains("user-42"), "\(forget)")
                // Nothing was created beside the URL (a lock or subject-key file named after it).
                #expect(try FileManager.default.contentsOfDirectory(atPath: home) == ["in.jsonl"])
                let subject = try chatlog("log", "--subject", "user-42", "--text", "x")
                #expect(subject.status == 77 && subject.err.contains("CHATLOG_SUBJECT_KEYS"), "\(subject)")

                // --db instead of CHATLOG_DB; a password in it is refused before anything is opened.
                var withoutDB = env
                withoutDB["CHATLOG_DB"] = nil
                let named = try chatlog("--db", location, "forget", "--subject", "user-42", env: withoutDB)
                #expect(named.status == 77 && named.err.contains("CHATLOG_SUBJECT_KEYS"), "\(named)")
                let byOption = try chatlog("list", "--db", location, env: withoutDB)
                #expect(byOption.status == 0 && byOption.out.contains("Billing"), "\(byOption)")
                let withPassword = location.replacingOccurrences(of: "@/", with: ":hunter2secret@/")
                let refused = try chatlog("list", "--db", withPassword, env: withoutDB)
                #expect(refused.status == 65 && refused.err.contains("must not carry a password") && !refused.err.contains("hunter2secret"), "\(refused)")

                let imported = try chatlog("import", "--format", "openai-jsonl", home + "/in.jsonl")
                #expect(imported.status == 0 && imported.out.contains("imported 1 conversations (2 messages); 0 already imported"), "\(imported)")
                let reimported = try chatlog("--db", location, "import", "--format", "openai-jsonl", home + "/in.jsonl", env: withoutDB)
                #expect(reimported.status == 0 && reimported.out.contains("imported 0 conversations (0 messages); 1 already imported"), "\(reimported)")
                let dry = try chatlog("prune", "--older-than", "1d", "--dry-run", "--json")
                #expect(dry.status == 0 && dry.out.contains("\"conversations\" : 0"), "\(dry)")
                let pruned = try chatlog("prune", "--older-than", "1h", "--force")
                #expect(pruned.status == 0 && pruned.out.hasPrefix("deleted 0 conversations (0 messages)"), "\(pruned)")

                let removed = try chatlog("rm", conversation)
                #expect(removed.status == 0 && removed.out.contains("deleted 1 conversation"), "\(removed)")
                let gone = try chatlog("search", "refund", "--json")
                #expect(gone.status == 0 && !gone.out.contains("message_id"), "\(gone)")
                let wrongKey = try chatlog("list", env: env.merging(["CHATLOG_MASTER_KEY": MasterKey.generate().exportBase64()]) { $1 })
                #expect(wrongKey.status == 77 && wrongKey.err.contains("wrong master key"), "\(wrongKey)")
                let down = try chatlog("list", "--db", "postgresql://nobody@/none?host=/nonexistent-socket-dir", env: withoutDB)
                #expect(down.status == 1 && down.err.split(separator: "\n").count == 1, "\(down)")
            }
        }
    }
}

extension PostgreSQLSuites.PostgresCLITests {
    static func hits(_ json: String) throws -> [(id: String, createdAt: String)] {
        let object = try JSONSerialization.jsonObject(with: Data(json.utf8))
        let hits = ((object as? [String: Any])?["hits"] as? [[String: Any]]) ?? (object as? [[String: Any]]) ?? []
        return hits.map { ($0["message_id"] as? String ?? "", $0["created_at"] as? String ?? "") }
    }

    @Test("chatlog copy SQLite → PostgreSQL, SIGKILLed mid-copy: the rerun finishes it (never a half-copied conversation), verifies every row, and search answers as on the source")
    func copyKilledAndResumed() async throws {
        try await withPostgresLocation { url, database in
            try await withSQLiteLocation { path in
                let key = MasterKey.generate()
                let source = try ChatLogStore.create(at: path, key: .key(key))
                let words = ["refund", "card", "invoice", "delivery", "late", "broken", "paypal", "twice"]
                for index in 0..<3_000 {
                    _ = try await source.logExchange(
                        ModelExchange(
                            conversation: .new(NewConversation(title: "c\(index)")),
                            prompt: [NewMessage(role: .user, content: "\(words[index % 8]) \(words[(index / 8) % 8]) number\(index)")],
                            completion: NewMessage(role: .assistant, content: "answer \(words[(index + 3) % 8])")))
                }
                try source.close()
                let home = (path as NSString).deletingLastPathComponent
                let env = ["CHATLOG_MASTER_KEY": key.exportBase64(), "CHATLOG_DB": path, "HOME": home, "PATH": "/usr/bin:/bin"]

                let process = try ChildProcess(try chatlogBinary().path, ["copy", "--to", url], environment: env)
                var copiedBeforeKill = 0
                for _ in 0..<600 {
                    copiedBeforeKill = Int((try? database.psql("SELECT count(*) FROM conversations")) ?? "") ?? 0
                    if copiedBeforeKill >= 300 || process.hasExited { break }
                    try await Task.sleep(for: .milliseconds(50))
                }
                process.stop()
                #expect(copiedBeforeKill >= 300 && copiedBeforeKill < 3_000, "killed after \(copiedBeforeKill) conversations")
                // Every conversation there is whole: two messages each.
                let partial = try database.psql(
                    "SELECT count(*) FROM conversations c WHERE (SELECT count(*) FROM messages m WHERE m.conversation_seq = c.seq) <> 2")
                #expect(partial == "0")

                let resumed = try ProcessOutput.run(chatlogBinary(), ["copy", "--to", url, "--json"], env: env, cwd: home, timeout: 300)
                #expect(resumed.status == 0, "\(resumed)")
                let report = try JSONSerialization.jsonObject(with: Data(resumed.out.utf8)) as? [String: Any]
                let already = report?["already_copied"] as? Int ?? -1
                #expect(already >= copiedBeforeKill && already < 3_000, "\(resumed)")
                #expect((report?["conversations"] as? Int ?? 0) + already == 3_000)
                #expect(report?["verified_conversations"] as? Int == 3_000 && report?["verified_messages"] as? Int == 6_000)

                for query in ["refund invoice", "late -broken", "number2999", "answer twice"] {
                    let here = try ProcessOutput.run(chatlogBinary(), ["search", query, "--limit", "1000", "--sort", "newest", "--json"], env: env, cwd: home)
                    var remote = env
                    remote["CHATLOG_DB"] = url
                    let there = try ProcessOutput.run(chatlogBinary(), ["search", query, "--limit", "1000", "--sort", "newest", "--json"], env: remote, cwd: home)
                    #expect(here.status == 0 && there.status == 0 && here.out.contains("message_id"), "\(query): \(here) \(there)")
                    // The same hits, newest first on both; messages logged within one millisecond may
                    // come in another order after a copy (each backend breaks ties by its own row order).
                    let (left, right) = (try Self.hits(here.out), try Self.hits(there.out))
                    #expect(!left.isEmpty && Set(left.map(\.id)) == Set(right.map(\.id)) && left.count == right.count, "\(query)")
                    #expect(left.map(\.createdAt) == right.map(\.createdAt), "\(query)")
                }
            }
        }
    }
}

/// The `chatlog` executable `swift build` put next to this test bundle.
func chatlogBinary() throws -> URL {
    var directories: [URL] = []
    if let executable = Bundle.main.executableURL { directories.append(executable.deletingLastPathComponent()) }
    if let first = CommandLine.arguments.first { directories.append(URL(fileURLWithPath: first).deletingLastPathComponent()) }
    for start in directories {
        var directory = start.standardizedFileURL
        for _ in 0..<4 {
            let candidate = directory.appendingPathComponent("chatlog")
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
            directory = directory.deletingLastPathComponent()
        }
    }
    throw PostgresTestServerError("the `chatlog` executable was not found next to the test bundle (swift build --product chatlog)")
}

/// A finished process: exit status (128 + the signal when one ended it) and its output as text.
struct ProcessOutput: CustomStringConvertible {
    let status: Int32
    let out: String
    let err: String
    var description: String { "exit \(status)\n--- stdout:\n\(out)\n--- stderr:\n\(err)" }

    /// Runs `executable` with exactly `env`, empty stdin, output through files (never a full
    /// pipe); killed after `timeout` seconds.
    static func run(_ executable: URL, _ arguments: [String], env: [String: String], cwd: String, timeout: TimeInterval = 120) throws -> ProcessOutput {
        let result = try ChildProcess.run(executable.path, arguments, environment: env, directory: cwd, timeout: timeout)
        return ProcessOutput(status: result.exit.status, out: String(decoding: result.stdout, as: UTF8.self), err: String(decoding: result.stderr, as: UTF8.self))
    }
}
