import Foundation
import GRDB

// Import and prune through the seam on SQLite (docs/ARCHITECTURE.md §10, "Import and prune
// through the seam"): the same inserts, counters and index as `ChatLogStore`'s own import and
// prune, each call one IMMEDIATE transaction (the write lock serialises importers).

extension SQLiteStorage {
    package func setMetaIfAbsent(_ name: String, _ value: MetaValue, checkValues: [Data]) async throws -> MetaValue {
        do {
            return try await write { db in try Self.setMetaIfAbsent(name, value, checkValues: checkValues, db) }
        } catch let conflict as StorageConflict {
            throw conflict
        } catch {
            throw ChatLogError.wrap(error)
        }
    }

    static func setMetaIfAbsent(_ name: String, _ value: MetaValue, checkValues: [Data], _ db: Database) throws -> MetaValue {
        let check = try Data.fetchOne(db, sql: "SELECT value FROM chatlog_meta WHERE name = 'master_check'")
        guard let check, checkValues.contains(check) else { throw StorageConflict.masterKeyChanged }
        if let stored = try Self.meta(name, db) { return stored }
        switch value {
        case .integer(let number): try ChatLogStore.setMeta(db, name, number)
        case .text(let text): try ChatLogStore.setMeta(db, name, text)
        case .blob(let data): try ChatLogStore.setMeta(db, name, data)
        }
        return value
    }

    package func takenIDs(_ ids: [String]) async throws(ChatLogError) -> Set<String> {
        try await read { db in try Self.takenIDs(ids, db) }
    }

    static func takenIDs(_ ids: [String], _ db: Database) throws -> Set<String> {
        let conversation = try db.cachedStatement(sql: "SELECT 1 FROM conversations WHERE id = ?")
        let message = try db.cachedStatement(sql: "SELECT 1 FROM messages WHERE id = ?")
        var taken = Set<String>()
        for id in ids where try Row.fetchOne(conversation, arguments: [id]) != nil || Row.fetchOne(message, arguments: [id]) != nil {
            taken.insert(id)
        }
        return taken
    }

    package func insertImported(_ items: [ImportedCopy], guard writeGuard: WriteGuard) async throws -> ImportOutcome {
        guard !items.isEmpty else { return ImportOutcome() }
        let prepared = try items.map { item in
            let (conversation, messages) = try Self.prepared(item.copy)
            return (item.sourceHash, conversation, messages)
        }
        do {
            return try await write { db in
                try Self.check(writeGuard, db)
                let known = try db.cachedStatement(sql: "SELECT 1 FROM imports WHERE source_hash = ?")
                var seen = Set<Data>()
                var fresh: [(hash: Data, conversation: PreparedConversation, messages: [PreparedMessage])] = []
                var outcome = ImportOutcome()
                for (hash, conversation, messages) in prepared {
                    if try !seen.insert(hash).inserted || Row.fetchOne(known, arguments: [hash]) != nil {
                        outcome.duplicates += 1
                    } else {
                        fresh.append((hash, conversation, messages))
                    }
                }
                outcome.taken = try Self.takenIDs(fresh.flatMap { [$0.conversation.id.rawValue] + $0.messages.map(\.id.rawValue) }, db)
                guard outcome.taken.isEmpty else { return ImportOutcome(taken: outcome.taken) }
                let now = Date().unixMilliseconds
                for (hash, conversation, messages) in fresh {
                    try ChatLogStore.insert(conversation, db)
                    let seq = db.lastInsertedRowID
                    try ChatLogStore.insert(messages, conversationSeq: seq, db)
                    try db.execute(
                        sql: "INSERT INTO imports (source_hash, conversation_seq, imported_at) VALUES (?, ?, ?)", arguments: [hash, seq, now])
                    outcome.inserted.append(conversation.id.rawValue)
                }
                return outcome
            }
        } catch let conflict as StorageConflict {
            throw conflict
        } catch {
            throw ChatLogError.wrap(error)
        }
    }

    package func inactiveCounts(before: Int64) async throws(ChatLogError) -> StorageCounts {
        try await read { db in try Self.inactiveCounts(before: before, db) }
    }

    /// What `prune --dry-run` reports (the SQLite store's own prune too).
    static func inactiveCounts(before: Int64, _ db: Database) throws -> StorageCounts {
        let row = try Row.fetchOne(
            db,
            sql: """
                SELECT count(*) AS c, coalesce(sum((SELECT count(*) FROM messages m WHERE m.conversation_seq = c.seq)), 0) AS m
                FROM conversations c WHERE c.updated_at < ?
                """, arguments: [before])
        return StorageCounts(conversations: try row?.decode(forColumn: "c") ?? 0, messages: try row?.decode(forColumn: "m") ?? 0)
    }

    package func deleteInactiveConversations(before: Int64, limit: Int, terms: @escaping @Sendable (SealedMessageRow) -> [UInt64]?)
        async throws(ChatLogError) -> StorageCounts
    {
        try await writeMapped { db in
            let ids = try String.fetchAll(
                db, sql: "SELECT id FROM conversations WHERE updated_at < ? ORDER BY updated_at, seq LIMIT ?", arguments: [before, max(0, limit)])
            guard !ids.isEmpty else { return StorageCounts(conversations: 0, messages: 0) }
            let messages = try Int.fetchOne(
                db,
                sql: "SELECT count(*) FROM messages WHERE conversation_seq IN (SELECT seq FROM conversations WHERE id IN (\(ids.map { _ in "?" }.joined(separator: ","))))",
                arguments: StatementArguments(ids)) ?? 0
            return StorageCounts(conversations: try Self.deleteConversations(ids, terms: terms, db), messages: messages)
        }
    }
}
