import Foundation
import Testing

@testable import ChatLog

/// ChatGPT-shaped exports as converters write them: without conversation ids, without
/// `current_node`.
@Suite struct ChatGPTExportTests {
    static var fixture: String { ImportReaderTests.chatGPTPath }

    /// The fixture's conversations with the given fields removed from each.
    static func stripped(_ fields: Set<String>) throws -> [JSONValue] {
        let items = try JSONDecoder().decode([JSONValue].self, from: Data(contentsOf: URL(fileURLWithPath: fixture)))
        return items.map { item in
            guard case .object(var record) = item else { return item }
            for field in fields { record.removeValue(forKey: field) }
            return .object(record)
        }
    }

    static func write(_ items: [JSONValue], to path: String) throws {
        try writeFile(path, Array(try JSONEncoder().encode(items)))
    }

    @Test func conversationsWithoutIDsImportOnceWithTheSameContent() async throws {
        try await withTemporaryDirectory { directory in
            let withIDs = Self.fixture
            let withoutIDs = directory.file("no-ids.json")
            try Self.write(try Self.stripped(["id", "conversation_id"]), to: withoutIDs)
            let withoutEither = directory.file("no-ids-no-current.json")
            try Self.write(try Self.stripped(["id", "conversation_id", "current_node"]), to: withoutEither)

            let reference = ImportReaderTests.successes(try ChatGPTExport.records(path: withIDs))
            for path in [withoutIDs, withoutEither] {
                let results = try ChatGPTExport.records(path: path)
                let conversations = ImportReaderTests.successes(results)
                #expect(conversations.count == reference.count, "\(path): every conversation reads")
                // Same messages as with ids; a content key instead of the id, the same on every read.
                for (read, expected) in zip(conversations, reference) {
                    #expect(read.messages.map(\.content) == expected.messages.map(\.content))
                    #expect(read.conversation.title == expected.conversation.title)
                    #expect(read.sourceID.hasPrefix("chatgpt-content:"))
                }
                let again = ImportReaderTests.successes(try ChatGPTExport.records(path: path))
                #expect(again.map(\.sourceID) == conversations.map(\.sourceID))
                #expect(Set(conversations.map(\.sourceID)).count == conversations.count)
            }

            let store = try ChatLogStore.create(at: directory.databasePath, key: .key(MasterKey.generate()), options: fastOptions)
            let first = try store.importConversations(format: ChatGPTExport.format, records: try ChatGPTExport.records(path: withoutIDs))
            #expect(first.conversations == reference.count)
            #expect(first.skipped.isEmpty)
            let second = try store.importConversations(format: ChatGPTExport.format, records: try ChatGPTExport.records(path: withoutIDs))
            #expect(second.conversations == 0)
            #expect(second.duplicates == reference.count)
            try store.close()
        }
    }

    @Test func aChangedConversationWithoutIDIsANewOne() throws {
        var items = try Self.stripped(["id", "conversation_id"])
        let before = ImportReaderTests.successes(
            items.enumerated().map { index, item in Result { () throws(ImportIssue) in try ChatGPTExport.conversation(item, index: index) } })
        guard case .object(var record) = items[0] else { Issue.record("not an object"); return }
        record["title"] = .string("Renamed")
        items[0] = .object(record)
        let after = try ChatGPTExport.conversation(items[0], index: 0)
        #expect(after.sourceID != before[0].sourceID)
    }

    @Test func anIDThatIsNotAStringIsStillRefused() {
        let item: JSONValue = .object(["id": .integer(5), "mapping": .object([:])])
        #expect(throws: ImportIssue.self) { try ChatGPTExport.conversation(item, index: 0) }
    }
}
