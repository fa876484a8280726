import ChatLog
import Foundation
import Logging
import NIOCore
import PostgresNIO

// Import and prune through the seam on PostgreSQL (docs/ARCHITECTURE.md §10, "Import and prune
// through the seam").

extension PostgresStorage {
    /// Advisory lock (with ``lockClass``) held by each import batch's transaction.
    static let importLock: Int32 = 3

    /// A meta value as its row's three columns (one of them set).
    static func metaColumns(_ value: MetaValue) -> (Int64?, String?, Data?) {
        switch value {
        case .integer(let value): (value, nil, nil)
        case .text(let value): (nil, value, nil)
        case .blob(let value): (nil, nil, value)
        }
    }

    static func metaValue(_ integer: Int64?, _ text: String?, _ blob: Data?) -> MetaValue? {
        integer.map(MetaValue.integer) ?? text.map(MetaValue.text) ?? blob.map(MetaValue.blob)
    }

    /// `ON CONFLICT DO NOTHING` waits for a concurrent inserter of the same name to commit (or
    /// roll back); the read after it, a new snapshot under READ COMMITTED, sees the winner's value.
    /// The check value is read `FOR SHARE`: a `key rewrap` (which updates it) waits for this
    /// transaction, or this one sees its new value and stores nothing.
    package func setMetaIfAbsent(_ name: String, _ value: MetaValue, checkValues: [Data]) async throws -> MetaValue {
        let logger = logger
        return try await transaction { connection in
            let check = try await connection.statement(
                "SELECT blob_value FROM chatlog_meta WHERE name = 'master_check' FOR SHARE", logger: logger)
            var checkValue: Data?
            for try await value in check.decode(Data?.self) { checkValue = value }
            guard let checkValue, checkValues.contains(checkValue) else { throw StorageConflict.masterKeyChanged }
            let (integer, text, blob) = Self.metaColumns(value)
            try await connection.run(
                """
                INSERT INTO chatlog_meta (name, integer_value, text_value, blob_value) VALUES (\(name), \(integer), \(text), \(blob))
                ON CONFLICT (name) DO NOTHING
                """, logger: logger)
            let rows = try await connection.statement(
                "SELECT integer_value, text_value, blob_value FROM chatlog_meta WHERE name = \(name)", logger: logger)
            var stored: MetaValue?
            for try await (integer, text, blob) in rows.decode((Int64?, String?, Data?).self) {
                stored = Self.metaValue(integer, text, blob)
            }
            guard let stored else { throw ChatLogError.storage("chatlog_meta lost the value \(name) it was just given") }
            return stored
        }
    }

    package func takenIDs(_ ids: [String]) async throws(ChatLogError) -> Set<String> {
        guard !ids.isEmpty else { return [] }
        let logger = logger
        return try await read { connection in try await Self.takenIDs(ids, connection, logger) }
    }

    static func takenIDs(_ ids: [String], _ connection: PostgresConnection, _ logger: Logger) async throws -> Set<String> {
        let rows = try await connection.statement(
            """
            SELECT id FROM conversations WHERE id = ANY(\(ids)::text[])
            UNION ALL SELECT id FROM messages WHERE id = ANY(\(ids)::text[])
            """, logger: logger)
        var taken = Set<String>()
        for try await id in rows.decode(String.self) { taken.insert(id) }
        return taken
    }

    /// Import batches of one store run one at a time (a transaction-level advisory lock, taken
    /// first): the batch that waited then sees the other's `imports` rows and ids, so two
    /// importers of one file import each conversation once. Writers of `log` are not held up.
    package func insertImported(_ items: [ImportedCopy], guard writeGuard: WriteGuard) async throws -> ImportOutcome {
        guard !items.isEmpty else { return ImportOutcome() }
        let logger = logger
        return try await transaction { connection in
            try await connection.run("SELECT pg_advisory_xact_lock(\(Self.lockClass), \(Self.importLock))", logger: logger)
            try await Self.check(writeGuard, connection, logger)
            let hashes = items.map { ByteBuffer(bytes: $0.sourceHash) }
            let known = try await connection.statement(
                "SELECT source_hash FROM imports WHERE source_hash = ANY(\(hashes)::bytea[])", logger: logger)
            var seen = Set<Data>()
            for try await hash in known.decode(Data.self) { seen.insert(hash) }
            var outcome = ImportOutcome()
            var fresh: [ImportedCopy] = []
            for item in items {
                if seen.insert(item.sourceHash).inserted { fresh.append(item) } else { outcome.duplicates += 1 }
            }
            guard !fresh.isEmpty else { return outcome }
            let taken = try await Self.takenIDs(fresh.flatMap { [$0.copy.conversation.id] + $0.copy.messages.map(\.id) }, connection, logger)
            guard taken.isEmpty else { return ImportOutcome(taken: taken) }
            let seqs = try await Self.insertCopyRows(fresh.map(\.copy), connection, logger)
            let now = Int64(Date().timeIntervalSince1970 * 1000)
            try await Self.insertRows(fresh, into: "imports (source_hash, conversation_seq, imported_at)", columns: 3, connection, logger) {
                binds, item in
                binds.append(ByteBuffer(bytes: item.sourceHash))
                binds.append(seqs[item.copy.conversation.id] ?? 0)
                binds.append(now)
            }
            outcome.inserted = fresh.map(\.copy.conversation.id)
            return outcome
        }
    }

    package func inactiveCounts(before: Int64) async throws(ChatLogError) -> StorageCounts {
        try await read { connection in
            let rows = try await connection.statement(
                """
                SELECT count(*), coalesce(sum((SELECT count(*) FROM messages m WHERE m.conversation_seq = c.seq)), 0)::bigint
                FROM conversations c WHERE c.updated_at < \(before)
                """, logger: self.logger)
            for try await (conversations, messages) in rows.decode((Int64, Int64).self) {
                return StorageCounts(conversations: Int(conversations), messages: Int(messages))
            }
            return StorageCounts(conversations: 0, messages: 0)
        }
    }

    /// Selects and locks the batch (`FOR UPDATE`: a writer appending to one of them meanwhile is
    /// waited for, and the row is checked again: active now, it stays), counts its messages and
    /// deletes it; its messages go by `ON DELETE CASCADE`, their terms with their rows (migration
    /// 0010; `terms` is never called).
    package func deleteInactiveConversations(before: Int64, limit: Int, terms: @escaping @Sendable (SealedMessageRow) -> [UInt64]?)
        async throws(ChatLogError) -> StorageCounts
    {
        let logger = logger
        return try await transactionMapped { connection in
            let rows = try await connection.statement(
                """
                WITH doomed AS (
                    SELECT seq FROM conversations WHERE updated_at < \(before) ORDER BY updated_at, seq LIMIT \(Int64(max(0, limit))) FOR UPDATE
                ), gone AS (
                    DELETE FROM conversations c USING doomed d WHERE c.seq = d.seq RETURNING c.seq
                )
                SELECT (SELECT count(*) FROM gone),
                       (SELECT count(*) FROM messages m WHERE m.conversation_seq IN (SELECT seq FROM gone))
                """, logger: logger)
            var counts = StorageCounts(conversations: 0, messages: 0)
            for try await (conversations, messages) in rows.decode((Int64, Int64).self) {
                counts = StorageCounts(conversations: Int(conversations), messages: Int(messages))
            }
            return counts
        }
    }
}
