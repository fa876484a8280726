import Foundation
import GRDB
import Testing

@testable import ChatLog

/// The `llm` logs.db and ChatGPT export readers against the real fixture files in
/// Tests/Fixtures (see its README) and their `*.expected.json` imports.
@Suite struct ImportReaderTests {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures").path

    static let llmFixtures = ["logs.db", "logs-classic.db", "logs-classic-0.18.db", "logs-upgraded.db"]

    // MARK: - Expected imports

    struct ExpectedFile: Decodable {
        let conversation_count: Int
        let conversations: [ExpectedConversation]
    }

    struct ExpectedConversation: Decodable {
        let id: String
        let title: String?
        let source: String?
        let created_at_unix_ms: Int64?
        let messages: [ExpectedMessage]
    }

    struct ExpectedMessage: Decodable {
        let role: String
        let content: String
        let created_at_unix_ms: Int64
        let model: String?
        let prompt_tokens: Int?
        let completion_tokens: Int?
        let latency_ms: Int?
        let metadata: JSONValue?
    }

    static func expected(_ path: String) throws -> ExpectedFile {
        try JSONDecoder().decode(ExpectedFile.self, from: Data(contentsOf: URL(fileURLWithPath: path)))
    }

    static func llmPath(_ name: String) -> String { fixtures + "/llm/" + name }
    static func llmExpectedPath(_ name: String) -> String {
        fixtures + "/llm/" + name.replacingOccurrences(of: ".db", with: ".expected.json")
    }
    static var chatGPTPath: String { fixtures + "/chatgpt/conversations.json" }
    static var chatGPTExpectedPath: String { fixtures + "/chatgpt/conversations.expected.json" }

    /// The file and what SQLite could have left beside it.
    static func snapshot(_ path: String) throws -> [String: Data?] {
        var files: [String: Data?] = [path: try Data(contentsOf: URL(fileURLWithPath: path))]
        for suffix in ["-journal", "-wal", "-shm"] {
            files[path + suffix] = FileManager.default.contents(atPath: path + suffix)
        }
        return files
    }

    static func successes(_ results: [Result<ImportedConversation, ImportIssue>]) -> [ImportedConversation] {
        results.compactMap { result in
            switch result {
            case .success(let conversation): return conversation
            case .failure(let issue):
                Issue.record("unexpected import issue: \(issue)")
                return nil
            }
        }
    }

    /// Message by message: role, exact content, model, tokens, latency, time (ms), and the
    /// expected metadata keys (the reader may add more).
    static func compare(_ actual: [ImportedConversation], _ expected: ExpectedFile, prefix: (ExpectedConversation) -> String, llm: Bool) {
        #expect(actual.count == expected.conversation_count)
        #expect(actual.map(\.sourceID) == expected.conversations.map(prefix), "conversations in the expected order with stable source ids")
        for (conversation, wanted) in zip(actual, expected.conversations) {
            let place = wanted.id
            #expect(conversation.conversation.title == wanted.title, "\(place) title")
            #expect(conversation.messages.count == wanted.messages.count, "\(place) message count")
            let created = conversation.conversation.createdAt?.unixMilliseconds
            #expect(created == (wanted.created_at_unix_ms ?? wanted.messages.first?.created_at_unix_ms), "\(place) created")
            for (index, (message, want)) in zip(conversation.messages, wanted.messages).enumerated() {
                let at = "\(place) message \(index)"
                #expect(message.role.rawValue == want.role, "\(at) role")
                #expect(message.content == want.content, "\(at) content")
                #expect(message.model == want.model, "\(at) model")
                #expect(message.promptTokens == want.prompt_tokens, "\(at) prompt tokens")
                #expect(message.completionTokens == want.completion_tokens, "\(at) completion tokens")
                if llm { #expect(message.latencyMilliseconds == want.latency_ms, "\(at) latency") }
                #expect(message.createdAt?.unixMilliseconds == want.created_at_unix_ms, "\(at) time")
                if case .object(let wantedFields)? = want.metadata {
                    guard case .object(let fields)? = message.metadata else {
                        Issue.record("\(at): metadata missing, expected \(wantedFields)")
                        continue
                    }
                    for (key, value) in wantedFields { #expect(fields[key] == value, "\(at) metadata \(key)") }
                }
            }
        }
    }

    /// Imports twice into a new store: everything once, then nothing but duplicates. Checks the
    /// stored transcripts against the expectation too.
    static func importTwice(
        format: String, _ read: () throws -> [Result<ImportedConversation, ImportIssue>], _ expected: ExpectedFile, idKey: String
    ) async throws {
        try await withTemporaryDirectory { directory in
            let store = try ChatLogStore.create(at: directory.databasePath, key: .key(MasterKey.generate()), options: fastOptions)
            let messageCount = expected.conversations.reduce(0) { $0 + $1.messages.count }
            let first = try store.importConversations(format: format, records: try read())
            #expect(first.conversations == expected.conversation_count)
            #expect(first.messages == messageCount)
            #expect(first.duplicates == 0)
            #expect(first.skipped.isEmpty)
            let second = try store.importConversations(format: format, records: try read())
            #expect(second.conversations == 0)
            #expect(second.messages == 0)
            #expect(second.duplicates == expected.conversation_count)
            let counts = try store.counts()
            #expect(counts.conversations == expected.conversation_count)
            #expect(counts.messages == messageCount)

            // What the store gives back.
            let page = try store.conversations(ConversationQuery(limit: 500))
            #expect(page.conversations.count == expected.conversation_count)
            var byID: [String: Conversation] = [:]
            for conversation in page.conversations {
                if case .object(let fields)? = conversation.metadata, case .string(let id)? = fields[idKey] { byID[id] = conversation }
            }
            for wanted in expected.conversations {
                guard let conversation = byID[wanted.id] else {
                    Issue.record("\(wanted.id) not found in the store")
                    continue
                }
                #expect(conversation.title == wanted.title)
                let transcript = try store.transcript(conversation.id)
                #expect(transcript.messages.count == wanted.messages.count)
                for (message, want) in zip(transcript.messages, wanted.messages) {
                    #expect(message.role.rawValue == want.role)
                    #expect(message.content == want.content)
                    #expect(message.model == want.model)
                    #expect(message.promptTokens == want.prompt_tokens)
                    #expect(message.completionTokens == want.completion_tokens)
                    #expect(message.createdAt.unixMilliseconds == want.created_at_unix_ms, "\(wanted.id) stored time")
                }
            }
            try store.close()
        }
    }

    static func invalidInput(_ body: () throws(ChatLogError) -> Void) -> String? {
        do {
            try body()
        } catch {
            if case .invalidInput(let why) = error { return why }
            Issue.record("expected invalidInput, got \(error)")
            return nil
        }
        Issue.record("expected an error")
        return nil
    }

    // MARK: - llm

    @Test(arguments: llmFixtures)
    func llmFixtureMatchesItsExpectedImport(_ name: String) async throws {
        let path = Self.llmPath(name)
        let before = try Self.snapshot(path)
        let expected = try Self.expected(Self.llmExpectedPath(name))
        let results = try LLMLogs.records(path: path)
        let conversations = Self.successes(results)
        Self.compare(conversations, expected, prefix: Self.llmSourceID, llm: true)
        try await Self.importTwice(format: LLMLogs.format, { try LLMLogs.records(path: path) }, expected, idKey: "llm_id")
        #expect(try Self.snapshot(path) == before, "\(name) is byte-for-byte unchanged, with no journal, WAL or shm left beside it")
    }

    /// Legacy conversations (and the thread continuing one) by their `conversations.id`; threads
    /// of the message store by theirs.
    static func llmSourceID(_ conversation: ExpectedConversation) -> String {
        (conversation.source == "message-store" ? "thread:" : "conversation:") + conversation.id
    }

    @Test func llmSourceIDsNameTheGeneration() throws {
        let results = Self.successes(try LLMLogs.records(path: Self.llmPath("logs-upgraded.db")))
        let ids = Dictionary(uniqueKeysWithValues: results.map { ($0.sourceID, $0) })
        #expect(ids["conversation:01m8d7h1vbyrcatgwbxmzvfexs"]?.messages.count == 8, "the upgraded conversation, once, with 8 messages")
        #expect(ids["thread:01m8d7h1vbyrcatgwbxmzvfexs"] == nil)
        #expect(ids["thread:01m8d7jnj8vd44h8vnjm0ey2sa"]?.messages.count == 2)
        #expect(results.filter { $0.sourceID.hasPrefix("conversation:") }.count == 10)
        let assistants = results.flatMap(\.messages).filter { $0.role == .assistant }.count
        #expect(assistants == 15, "13 legacy responses and 2 turns, as `llm logs` shows")
    }

    @Test func llmMessageStoreDetails() throws {
        let results = Self.successes(try LLMLogs.records(path: Self.llmPath("logs.db")))
        #expect(results.count == 11)
        #expect(results.allSatisfy { $0.sourceID.hasPrefix("thread:") })
        // Asked twice: two threads over the very same message rows, both imported.
        #expect(results.filter { $0.conversation.title == "Capital of France?" }.count == 2)
        let thinking = try #require(results.first { $0.conversation.title == "Think about this." })
        #expect(thinking.messages[1].metadata?.field("reasoning") == .string("First I consider the prompt, then I decide what to say."))
        #expect(thinking.messages[1].metadata?.field("options") == .object(["example_bool": .bool(true), "thinking": .bool(true)]))
        let tools = try #require(results.first { $0.conversation.title?.hasPrefix("{\"prompt\"") == true })
        #expect(tools.messages.map(\.role) == [.user, .assistant, .tool, .assistant])
        #expect(tools.messages[2].content == "0.36")
        #expect(tools.messages[1].promptTokens == 7 && tools.messages[3].promptTokens == 1)
        #expect(tools.messages[0].model == nil && tools.messages[2].model == nil, "the model goes on answers only")
        let notes = try #require(results.first { $0.conversation.title?.hasPrefix("Meeting notes") == true })
        #expect(notes.messages[0].content == "Meeting notes, 3 March:\n- ship the importer\n- write fixtures\n\nSummarise these notes.")
    }

    @Test func llmClassicToolFollowUpHasNoEmptyUserMessage() throws {
        for name in ["logs-classic.db", "logs-upgraded.db"] {
            let results = Self.successes(try LLMLogs.records(path: Self.llmPath(name)))
            #expect(!results.flatMap(\.messages).contains { $0.role == .user && $0.content.isEmpty }, "\(name)")
        }
    }

    /// A classic conversation continued after the upgrade keeps its source id, so importing the
    /// upgraded file after the classic one adds only the new conversation (the two turns added
    /// to the old conversation are not appended: an import never changes a conversation).
    @Test func importingTheUpgradedFileAfterTheClassicOneAddsOnlyNewConversations() async throws {
        try await withTemporaryDirectory { directory in
            let store = try ChatLogStore.create(at: directory.databasePath, key: .key(MasterKey.generate()), options: fastOptions)
            let classic = try store.importConversations(format: LLMLogs.format, records: try LLMLogs.records(path: Self.llmPath("logs-classic.db")))
            #expect(classic.conversations == 10)
            let upgraded = try store.importConversations(
                format: LLMLogs.format, records: try LLMLogs.records(path: Self.llmPath("logs-upgraded.db")))
            #expect(upgraded.conversations == 1)
            #expect(upgraded.duplicates == 10)
            try store.close()
        }
    }

    @Test func nonSQLiteFileIsRefused() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory.file("logs.db")
            try writeFile(path, text: "this is a text file, not a database\n")
            let why = Self.invalidInput { () throws(ChatLogError) in _ = try LLMLogs.records(path: path) }
            #expect(why == "\(path) is not a SQLite database")
            let empty = directory.file("empty.db")
            try writeFile(empty, text: "")
            let whyEmpty = Self.invalidInput { () throws(ChatLogError) in _ = try LLMLogs.records(path: empty) }
            #expect(whyEmpty == "\(empty) is not a SQLite database")
            let missing = directory.file("missing.db")
            let whyMissing = Self.invalidInput { () throws(ChatLogError) in _ = try LLMLogs.records(path: missing) }
            #expect(whyMissing?.contains("no such file") == true)
            #expect(!FileManager.default.fileExists(atPath: missing))
        }
    }

    @Test func sqliteFileThatIsNotAnLLMLogIsRefused() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory.file("other.db")
            try withRawDatabase(path) { db in try db.execute(sql: "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)") }
            let before = try Self.snapshot(path)
            let why = Self.invalidInput { () throws(ChatLogError) in _ = try LLMLogs.records(path: path) }
            #expect(why?.contains("not an llm logs.db") == true, "\(why ?? "")")
            #expect(try Self.snapshot(path) == before)
        }
    }

    @Test func unknownMigrationIsRefused() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory.file("logs.db")
            try FileManager.default.copyItem(atPath: Self.llmPath("logs.db"), toPath: path)
            try withRawDatabase(path) { db in
                try db.execute(
                    sql: "INSERT INTO _llm_migrations (name, applied_at) VALUES (?, ?)",
                    arguments: ["m028_from_the_future", "2027-01-01 00:00:00.000000+00:00"])
            }
            let why = Self.invalidInput { () throws(ChatLogError) in _ = try LLMLogs.records(path: path) }
            #expect(why == "unknown llm logs.db version: migration m028_from_the_future; chatlog knows llm up to 0.36")
        }
    }

    @Test func brokenThreadIsReportedAloneByName() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory.file("logs.db")
            try FileManager.default.copyItem(atPath: Self.llmPath("logs.db"), toPath: path)
            var configuration = Configuration()
            configuration.foreignKeysEnabled = false  // a dangling hash is the point
            let queue = try DatabaseQueue(path: path, configuration: configuration)
            try queue.write { db in
                try db.execute(sql: "UPDATE threads SET tip_message_hash = 'b2:gone' WHERE id = '01m8d7ef2fy2m5erjgewkpmjj6'")
            }
            try queue.close()
            let results = try LLMLogs.records(path: path)
            #expect(results.count == 11)
            var issues: [ImportIssue] = []
            for result in results { if case .failure(let issue) = result { issues.append(issue) } }
            #expect(issues == [ImportIssue(location: "thread 01m8d7ef2fy2m5erjgewkpmjj6", problem: "message b2:gone of the chain is missing")])
        }
    }

    @Test func llmTimeFormats() {
        let micro = ImportTimes.microseconds(llm:)
        let expected: Int64 = 1_795_740_343_732_358
        #expect(micro("2026-11-27T00:45:43.732358+00:00") == expected)
        #expect(micro("2026-11-27 00:45:43.732358+00:00") == expected)
        #expect(micro("2026-11-27T00:45:43.732358") == expected, "naive times are UTC")
        #expect(micro("2026-11-27T00:45:43.732358Z") == expected)
        #expect(micro("2026-11-27T02:45:43.732358+02:00") == expected)
        #expect(micro("2026-11-26T21:45:43.732358-0300") == expected)
        #expect(micro("2026-11-27T00:45:43.7323589") == expected, "digits past microseconds are dropped")
        #expect(micro("2026-11-27T00:45:43") == 1_795_740_343_000_000)
        #expect(micro("2026-11-27T00:45:43.7") == 1_795_740_343_700_000)
        #expect(micro("1969-12-31T23:59:59.999500") == -500)
        #expect(ImportTimes.milliseconds(microseconds: -500) == -1)
        #expect(micro("2026-13-27T00:45:43") == nil)
        #expect(micro("yesterday") == nil)
        #expect(micro("2026-11-27T00:45:43+00:00 trailing") == nil)
    }

    @Test func datesKeepTheirMillisecond() {
        // Values for which `Date(timeIntervalSince1970: ms / 1000)` alone comes back 1 ms short.
        for milliseconds: Int64 in [1_090_386_494_284, 1_077_710_519_468, 1_083_999_890_853, 1_795_740_343_732, 0, 1, 999] {
            #expect(ImportTimes.date(milliseconds: milliseconds).unixMilliseconds == milliseconds)
        }
        #expect(ImportTimes.milliseconds(unixSeconds: 1_718_207_114.258) == 1_718_207_114_258)
        #expect(ImportTimes.milliseconds(unixSeconds: 1_718_207_114.257999) == 1_718_207_114_257)
        #expect(ImportTimes.milliseconds(unixSeconds: 1_718_207_114.001) == 1_718_207_114_001)
    }

    // MARK: - ChatGPT

    @Test func chatGPTFixtureMatchesItsExpectedImport() async throws {
        let path = Self.chatGPTPath
        let before = try Self.snapshot(path)
        let expected = try Self.expected(Self.chatGPTExpectedPath)
        let conversations = Self.successes(try ChatGPTExport.records(path: path))
        Self.compare(conversations, expected, prefix: { "chatgpt:" + $0.id }, llm: false)
        try await Self.importTwice(format: ChatGPTExport.format, { try ChatGPTExport.records(path: path) }, expected, idKey: "chatgpt_id")
        #expect(try Self.snapshot(path) == before)
    }

    @Test func chatGPTDetails() throws {
        let conversations = Self.successes(try ChatGPTExport.records(path: Self.chatGPTPath))
        #expect(conversations.map(\.messages.count) == [4, 4, 4, 2])
        let haiku = conversations[1]
        #expect(!haiku.messages.contains { $0.content.contains("Write a haiku about autumn.") }, "abandoned branches are left out")
        #expect(haiku.messages[1].model == "gpt-4o", "the regeneration, not the first answer")
        let code = conversations[2]
        #expect(code.messages[1].metadata?.field("recipient") == .string("python"))
        #expect(code.messages[1].finishReason == "stop")
        #expect(code.messages[2].role == .tool && code.messages[2].model == nil)
        let cat = conversations[3]
        guard case .array(let parts)? = cat.messages[0].metadata?.field("non_text_parts") else {
            Issue.record("the image part is not recorded")
            return
        }
        #expect(parts.count == 1)
        #expect(cat.messages[0].content == "What breed is this cat?")
    }

    @Test func chatGPTFileThatIsNotAnArrayIsRefused() async throws {
        try await withTemporaryDirectory { directory in
            let object = directory.file("object.json")
            try writeFile(object, text: #"{"conversations": []}"#)
            let why = Self.invalidInput { () throws(ChatLogError) in _ = try ChatGPTExport.records(path: object) }
            #expect(why == "\(object) is not a ChatGPT export: expected a JSON array of conversations, found an object")
            let broken = directory.file("broken.json")
            try writeFile(broken, text: #"[{"id": "abc", "mapping": {"#)
            let whyBroken = Self.invalidInput { () throws(ChatLogError) in _ = try ChatGPTExport.records(path: broken) }
            #expect(whyBroken?.contains("not valid JSON") == true, "\(whyBroken ?? "")")
            let zip = directory.file("export.zip")
            try writeFile(zip, [0x50, 0x4B, 0x03, 0x04, 0, 0, 0, 0])
            let whyZip = Self.invalidInput { () throws(ChatLogError) in _ = try ChatGPTExport.records(path: zip) }
            #expect(whyZip?.contains("unzip") == true)
        }
    }

    @Test func malformedChatGPTConversationsAreReportedByName() async throws {
        try await withTemporaryDirectory { directory in
            let good = try JSONDecoder().decode([JSONValue].self, from: Data(contentsOf: URL(fileURLWithPath: Self.chatGPTPath)))[0]
            let items: [JSONValue] = [
                good,
                .object(["id": .string("broken-mapping"), "title": .string("x"), "mapping": .integer(5), "current_node": .string("a")]),
                .object([
                    "id": .string("dangling-parent"), "current_node": .string("a"),
                    "mapping": .object(["a": .object(["id": .string("a"), "parent": .string("gone"), "children": .array([]), "message": .null])]),
                ]),
                .integer(42),
            ]
            let path = directory.file("conversations.json")
            try writeFile(path, Array(try JSONEncoder().encode(items)))
            let results = try ChatGPTExport.records(path: path)
            #expect(results.count == 4)
            var issues: [ImportIssue] = []
            for result in results { if case .failure(let issue) = result { issues.append(issue) } }
            #expect(issues.map(\.location) == ["conversation broken-mapping", "conversation dangling-parent", "conversation #4"])
            #expect(issues[1].problem.contains("gone"))

            let store = try ChatLogStore.create(at: directory.databasePath, key: .key(MasterKey.generate()), options: fastOptions)
            let report = try store.importConversations(format: ChatGPTExport.format, records: results, onError: .skip)
            #expect(report.conversations == 1)
            #expect(report.skipped == issues)
            let failed = Self.invalidInput { () throws(ChatLogError) in
                _ = try store.importConversations(format: ChatGPTExport.format, records: results, onError: .fail)
            }
            #expect(failed?.contains("conversation broken-mapping") == true)
            try store.close()
        }
    }
}

extension JSONValue {
    fileprivate func field(_ key: String) -> JSONValue? {
        if case .object(let fields) = self { return fields[key] }
        return nil
    }
}
