import Foundation
import Testing

@testable import ChatLog
@testable import ChatLogPostgres

extension PostgreSQLSuites {
    @Suite("verify --repair on PostgreSQL")
    struct PostgresRepairTests {
        @Test("repair deletes a message that cannot open, clears damaged optional values, re-indexes messages whose term rows are wrong or missing; then verify passes and a second repair does nothing")
        func repair() async throws {
            try await withPostgresLocation { location, database in
                let key = MasterKey.generate()
                let store = try await ChatLogStore.create(url: location, key: .key(key))
                defer { try? store.close() }
                var logged: [LoggedExchange] = []
                for n in 0..<6 {
                    logged.append(
                        try await store.logExchange(
                            ModelExchange(
                                conversation: .new(NewConversation(title: "title \(n)", metadata: .object(["n": .integer(Int64(n))]))),
                                prompt: [NewMessage(role: .user, content: "question number\(n) refund", metadata: .object(["p": .integer(Int64(n))]))],
                                completion: NewMessage(role: .assistant, content: "answer alpha\(n)"))))
                }
                let ids = logged.map { ($0.conversationID.rawValue, $0.messageIDs.map(\.rawValue)) }
                func sql(_ text: String) throws { try database.psql(text) }
                // 1. content moved from another row: cannot open → deleted.
                try sql("UPDATE messages SET content = (SELECT content FROM messages WHERE id = '\(ids[1].1[1])') WHERE id = '\(ids[0].1[1])'")
                // 2. a title and a message's metadata moved: cleared.
                try sql("UPDATE conversations SET title = (SELECT title FROM conversations WHERE id = '\(ids[3].0)') WHERE id = '\(ids[2].0)'")
                try sql("UPDATE messages SET metadata = (SELECT metadata FROM messages WHERE id = '\(ids[3].1[0])') WHERE id = '\(ids[2].1[0])'")
                // 3. a message's terms removed, an extra term in another's, a message marked as not indexed.
                // (Terms of a message that does not exist cannot be: they are a column of its row, migration 0010.)
                try sql("UPDATE messages SET terms = NULL WHERE id = '\(ids[4].1[0])'")
                try sql("UPDATE messages SET terms = terms || 42::bigint WHERE id = '\(ids[4].1[1])'")
                try sql("UPDATE messages SET index_key_id = NULL WHERE id = '\(ids[5].1[1])'")
                let before = try await store.verify()
                #expect(!before.ok && before.issueCount == 6, "\(before.issues)")

                let actions = try await store.repair()
                let described = Set(actions.map { "\($0.table).\($0.column) \($0.rowID) \($0.action)" })
                #expect(described == [
                    "messages.content \(ids[0].1[1]) cannot be opened: message deleted",
                    "conversations.title \(ids[2].0) cannot be opened: value cleared",
                    "messages.metadata \(ids[2].1[0]) cannot be opened: value cleared",
                    "message_terms.terms \(ids[4].1[0]) indexed again under index key 2",
                    "message_terms.terms \(ids[4].1[1]) indexed again under index key 2",
                    "message_terms.terms \(ids[5].1[1]) indexed again under index key 2",
                ], "\(described)")
                let after = try await store.verify()
                #expect(after.ok && after.messages == 11, "\(after.issues)")
                #expect(try await store.repair().isEmpty)
                #expect(try await store.transcript(logged[0].conversationID).messages.map(\.content) == ["question number0 refund"])
                #expect(try await store.transcript(logged[2].conversationID).conversation.title == nil)
                #expect(try await store.transcript(logged[2].conversationID).messages[0].metadata == nil)
                #expect(try await store.search("number4").hits.count == 1)
                #expect(try await store.search("alpha5").hits.count == 1)
                #expect(try database.psql("SELECT count(*) FROM messages WHERE 42 = ANY(terms)") == "0")
                #expect(try database.psql("SELECT count(*) FROM messages WHERE terms IS NULL") == "0")
                _ = try await store.deleteConversation(logged[1].conversationID)
                _ = try await store.storage!.deleteMessages([ids[3].1[0]])
                #expect(try await store.verify().ok)
            }
        }
    }
}
