import Foundation
import GRDB
import Testing

@testable import ChatLog

/// `stats` without a filter and `key status` read counters that triggers keep in step with every
/// write (migration 0007): they must equal a full count after every kind of write, and their
/// queries must not scan the message or conversation tables.
@Suite struct CounterTests {
    /// What the counters stand for, counted from the tables.
    static func scanned(_ path: String) throws -> (totals: [Int64], usage: [Int64: Int64]) {
        try withRawDatabase(path) { db in
            let totals = try Row.fetchOne(
                db,
                sql: """
                    SELECT count(*), count(DISTINCT conversation_seq), coalesce(sum(prompt_tokens), 0),
                           coalesce(sum(completion_tokens), 0) FROM messages
                    """)!
            var usage: [Int64: Int64] = [:]
            for row in try Row.fetchAll(
                db,
                sql: """
                    SELECT key_id, count(*) FROM (
                        SELECT key_id FROM messages UNION ALL SELECT key_id FROM conversations
                        UNION ALL SELECT index_key_id FROM messages WHERE index_key_id IS NOT NULL
                        UNION ALL SELECT subject_key_id FROM conversations WHERE subject_key_id IS NOT NULL)
                    GROUP BY key_id
                    """)
            {
                usage[row[0]] = row[1]
            }
            return ((0..<4).map { totals[$0] as Int64 }, usage)
        }
    }

    static func expectCountersMatch(_ store: ChatLogStore, _ path: String, _ step: String) throws {
        let (totals, usage) = try scanned(path)
        let stats = try store.stats()
        #expect(stats.count == 1, "\(step)")
        if let row = stats.first {
            #expect([row.messages, row.conversations, row.promptTokens, row.completionTokens].map(Int64.init) == totals, "\(step)")
        }
        for key in try store.keyStatus().keys {
            #expect(Int64(key.rowCount) == usage[Int64(key.id.rawValue)] ?? 0, "\(step): key \(key.id.rawValue)")
        }
    }

    @Test func countersMatchAFullCountAfterEveryKindOfWrite() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory.databasePath
            let store = try makeStore(in: directory)
            try Self.expectCountersMatch(store, path, "empty")
            var rng = SeededRandom(seed: 0xC0FF)
            var ids: [ConversationID] = []
            for index in 0..<12 {
                let id = try store.createConversation(NewConversation(title: "t\(index)", subject: index % 3 == 0 ? "s\(index % 2)" : nil))
                ids.append(id)
                if index == 5 { continue }  // a conversation without messages is not counted
                let messages = (0..<(1 + rng.below(6))).map { position in
                    NewMessage(
                        role: position % 2 == 0 ? .user : .assistant, content: "words \(position) of \(index)",
                        promptTokens: rng.chance(60) ? rng.below(500) : nil, completionTokens: rng.chance(60) ? rng.below(900) : nil)
                }
                _ = try store.append(messages, to: id)
            }
            try Self.expectCountersMatch(store, path, "logged")
            _ = try store.logExchange(ModelExchange(
                conversation: .existing(ids[5]), prompt: [NewMessage(role: .user, content: "now it has one", promptTokens: 7)],
                completion: NewMessage(role: .assistant, content: "and two", completionTokens: 9)))
            try Self.expectCountersMatch(store, path, "exchange into the empty conversation")
            let line = #"{"messages": [{"role": "user", "content": "imported", "usage": {"prompt_tokens": 3}}, {"role": "assistant", "content": "yes", "usage": {"completion_tokens": 4}}]}"#
            let file = directory.path + "/in.jsonl"
            try Data((line + "\n").utf8).write(to: URL(fileURLWithPath: file))
            _ = try store.importConversations(format: OpenAIJSONL.format, records: try OpenAIJSONL.records(path: file))
            try Self.expectCountersMatch(store, path, "imported")
            #expect(try store.deleteConversation(ids[0]))
            _ = try store.deleteConversations([ids[1], ids[5]])
            try Self.expectCountersMatch(store, path, "deleted")
            _ = try store.rotateDataKey(newKey: true, batchSize: 7)
            try Self.expectCountersMatch(store, path, "data key rotated")
            _ = try store.rotateIndexKey(newKey: true, batchSize: 5)
            try Self.expectCountersMatch(store, path, "index key rotated")
            _ = try store.prune(olderThan: Date().addingTimeInterval(3600))
            try Self.expectCountersMatch(store, path, "pruned")
            #expect(try store.stats().first?.messages == 0)
            try store.close()
        }
    }

    /// The counters start from what a store already holds when the migration runs.
    @Test func migrationCountsAnExistingStore() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory.databasePath
            let key = MasterKey.generate()
            let store = try makeStore(in: directory, key: key)
            let id = try store.createConversation(NewConversation(subject: "s"))
            _ = try store.append([NewMessage(role: .user, content: "a", promptTokens: 5), NewMessage(role: .assistant, content: "b")], to: id)
            try store.close()
            try withRawDatabase(path) { db in
                // Back to the store as a chatlog before migration 0007 left it.
                for trigger in try String.fetchAll(db, sql: "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE '%_count_%'") {
                    try db.execute(sql: "DROP TRIGGER \(trigger)")
                }
                try db.execute(sql: "DROP TABLE message_totals; DROP TABLE key_usage")
                try db.execute(sql: "DELETE FROM grdb_migrations WHERE identifier LIKE '0007%'")
            }
            let reopened = try ChatLogStore.open(at: path, key: .key(key), options: fastOptions)
            try Self.expectCountersMatch(reopened, path, "migrated")
            #expect(try reopened.stats().first?.promptTokens == 5)
            try reopened.close()
        }
    }

    @Test func statsAndKeyStatusQueriesScanNoTable() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            try store.close()
            for sql in [ChatLogStore.totalsSQL, ChatLogStore.keyUsageSQL] {
                let plan = try withRawDatabase(directory.databasePath) { db in
                    try Row.fetchAll(db, sql: "EXPLAIN QUERY PLAN " + sql).map { $0["detail"] as String }
                }
                #expect(!plan.contains { $0.contains("messages") || $0.contains("conversations") }, "\(sql): \(plan)")
            }
        }
    }
}
