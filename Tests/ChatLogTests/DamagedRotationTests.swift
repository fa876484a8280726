import Foundation
import GRDB
import Testing

@testable import ChatLog

/// One damaged sealed value must not block a rotation: the row is skipped and reported (table,
/// column, row), everything else moves to the new key, and the run ends.
@Suite struct DamagedRotationTests {
    /// A store with 3 conversations of 4 messages; message `damaged` holds another message's
    /// content (a moved ciphertext) and conversation 0's title holds conversation 1's.
    private func damagedStore(_ directory: TemporaryDirectory) throws -> (ChatLogStore, damagedMessage: String, damagedConversation: String) {
        let store = try makeStore(in: directory)
        var ids: [ConversationID] = []
        for conversation in 0..<3 {
            let id = try store.createConversation(NewConversation(title: "conversation \(conversation)", subject: "user-\(conversation)"))
            ids.append(id)
            try store.append((0..<4).map { NewMessage(role: .user, content: "message \($0) of \(conversation) refund") }, to: id)
        }
        let (message, conversation) = try withRawDatabase(directory.databasePath) { db in
            let messages = try String.fetchAll(db, sql: "SELECT id FROM messages ORDER BY seq")
            try db.execute(
                sql: "UPDATE messages SET content = (SELECT content FROM messages WHERE id = ?) WHERE id = ?", arguments: [messages[0], messages[5]])
            try db.execute(
                sql: "UPDATE conversations SET title = (SELECT title FROM conversations WHERE id = ?) WHERE id = ?",
                arguments: [ids[1].rawValue, ids[0].rawValue])
            return (messages[5], ids[0].rawValue)
        }
        return (store, message, conversation)
    }

    @Test func dataKeyRotationSkipsAndReportsDamagedRowsAndMovesTheRest() async throws {
        try await withTemporaryDirectory { directory in
            let (store, message, conversation) = try damagedStore(directory)
            let report = try store.rotateDataKey(RotationOptions(newKey: true, batchSize: 2))
            #expect(report.damaged.map(\.rowID).sorted() == [conversation, message].sorted())
            #expect(Set(report.damaged.map { "\($0.table).\($0.column)" }) == ["messages.content", "conversations.title"])
            #expect(report.rewritten == 12 + 3 - 2)
            #expect(report.remaining == 0)
            let underOld = try store.read { db in
                try String.fetchAll(db, sql: "SELECT id FROM messages WHERE key_id = 1 UNION ALL SELECT id FROM conversations WHERE key_id = 1")
            }
            #expect(underOld.sorted() == [conversation, message].sorted())
            // A second run finds the same two and moves nothing.
            let again = try store.rotateDataKey(RotationOptions(newKey: false))
            #expect(again.rewritten == 0)
            #expect(again.damaged.count == 2)
            try store.close()
        }
    }

    @Test func indexKeyRotationSkipsDamagedMessages() async throws {
        try await withTemporaryDirectory { directory in
            let (store, message, _) = try damagedStore(directory)
            let report = try store.rotateIndexKey(RotationOptions(newKey: true, batchSize: 3))
            #expect(report.damaged.map(\.rowID) == [message])
            #expect(report.rewritten == 12 + 3 - 1)
            #expect(report.remaining == 0)
            try store.close()
        }
    }
}
