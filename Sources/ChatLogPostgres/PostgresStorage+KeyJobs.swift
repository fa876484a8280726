import ChatLog
import Foundation
import Logging
import PostgresNIO

// Key jobs on PostgreSQL (docs/ARCHITECTURE.md §10, "Key jobs on PostgreSQL"): the rows a rotation
// still has to move, its compare-and-swap batches, key-row changes and vacuums. The core seals
// and blinds; this file only moves bytes, under the checks the seam describes.

extension PostgresStorage {
    /// Ids of the keys of `kind` other than `active`: the rows to move are those under one of
    /// them, found by equality on the key column's index (`= ANY`), so each batch reads only the
    /// rows it returns — never a scan past rows already moved.
    private static func otherKeys(_ kind: KeyStatus.Entry.Kind) -> String {
        "ARRAY(SELECT id FROM keys WHERE kind = '\(kind == .data ? "data" : "index")' AND id <> $1)"
    }

    /// In seq order after the cursor (a primary-key range: the planner otherwise scans the table
    /// from its start past every row already moved — all rows match the key condition by its
    /// statistics — which made a rotation quadratic: 0.23× a plaintext rewrite at 300,000 messages).
    package func rowsToRotate(
        _ kind: KeyStatus.Entry.Kind, otherThan active: Int64, skipping: Set<String>, after cursor: RotationCursor, limit: Int
    ) async throws(ChatLogError) -> (messages: [SealedMessageRow], conversations: [SealedConversationRow], next: RotationCursor) {
        let skipped = Array(skipping)
        let messageColumn = kind == .data ? "m.key_id" : "m.index_key_id"
        let conversationColumn = kind == .data ? "key_id" : "subject_key_id"
        return try await read { connection in
            var next = cursor
            var binds = PostgresBindings()
            binds.append(active)
            binds.append(skipped)
            binds.append(Int64(limit))
            binds.append(cursor.message)
            var messages: [SealedMessageRow] = []
            let rows = try await connection.statement(
                PostgresQuery(
                    unsafeSQL: """
                        SELECT \(Self.messageColumns) FROM messages m JOIN conversations c ON c.seq = m.conversation_seq
                        WHERE m.seq > $4 AND \(messageColumn) = ANY(\(Self.otherKeys(kind))) AND m.id <> ALL($2::text[])
                        ORDER BY m.seq LIMIT $3
                        """, binds: binds), logger: self.logger)
            for try await row in rows {
                let candidate = try Self.messageRow(row)
                messages.append(candidate.message)
                next.message = max(next.message, candidate.cursor.order)
            }
            var conversations: [SealedConversationRow] = []
            if messages.count < limit {
                var binds = PostgresBindings()
                binds.append(active)
                binds.append(skipped)
                binds.append(Int64(limit - messages.count))
                binds.append(cursor.conversation)
                let rows = try await connection.statement(
                    PostgresQuery(
                        unsafeSQL: """
                            SELECT seq, \(Self.conversationColumns) FROM conversations
                            WHERE seq > $4 AND \(conversationColumn) = ANY(\(Self.otherKeys(kind))) AND id <> ALL($2::text[])
                            ORDER BY seq LIMIT $3
                            """, binds: binds), logger: self.logger)
                for try await row in rows {
                    let cells = row.makeRandomAccess()
                    next.conversation = max(next.conversation, try cells[0].decode(Int64.self))
                    let (id, created, updated, key, title, subject, token, subjectKey, metadata) = (
                        try cells[1].decode(String.self), try cells[2].decode(Int64.self), try cells[3].decode(Int64.self),
                        try cells[4].decode(Int64.self), try cells[5].decode(Data?.self), try cells[6].decode(Data?.self),
                        try cells[7].decode(Data?.self), try cells[8].decode(Int64?.self), try cells[9].decode(Data?.self)
                    )
                    conversations.append(
                        SealedConversationRow(
                            id: id, createdAt: created, updatedAt: updated, keyID: key, title: title, subject: subject, subjectToken: token,
                            subjectKeyID: subjectKey, metadata: metadata))
                }
            }
            return (messages, conversations, next)
        }
    }

    /// One transaction: the guard, then each kind of rewrite as one statement over a VALUES list
    /// (compare-and-swap in its WHERE clause), re-blinded messages' terms replaced.
    package func rewrite(_ rewrites: [RowRewrite], guard writeGuard: WriteGuard) async throws -> Int {
        var messages: [(old: SealedMessageRow, new: SealedMessageRow)] = []
        var conversations: [(old: SealedConversationRow, new: SealedConversationRow)] = []
        var terms: [(id: String, from: Int64?, to: Int64, terms: [UInt64])] = []
        var clears: [String: [(id: String, expected: Data)]] = [:]
        var tokens: [(id: String, from: Int64, to: Int64, token: Data)] = []
        for rewrite in rewrites {
            switch rewrite {
            case .message(let old, let new): messages.append((old, new))
            case .conversation(let old, let new): conversations.append((old, new))
            case .messageTerms(let id, let from, let to, let values): terms.append((id, from, to, values))
            case .subjectToken(let id, let from, let to, let token): tokens.append((id, from, to, token))
            case .clear(let table, let column, let id, let expected):
                let allowed = table == .conversations ? ["title", "subject", "metadata"] : ["metadata"]
                guard allowed.contains(column) else { throw ChatLogError.invalidInput("\(table.rawValue).\(column) cannot be cleared") }
                clears["\(table.rawValue).\(column)", default: []].append((id, expected))
            }
        }
        let logger = logger
        return try await transaction { connection in
            try await Self.check(writeGuard, connection, logger)
            var written = 0
            for chunk in Self.chunks(messages, size: 500) {
                written += try await Self.update(
                    chunk, columns: ["id::text", "old_key::bigint", "old_content::bytea", "old_metadata::bytea", "key::bigint", "content::bytea", "metadata::bytea"],
                    sql: """
                        UPDATE messages m SET key_id = u.key, content = u.content, metadata = u.metadata FROM (VALUES %@) AS u (%@)
                        WHERE m.id = u.id AND m.key_id = u.old_key AND m.content = u.old_content AND m.metadata IS NOT DISTINCT FROM u.old_metadata
                        RETURNING m.seq
                        """, connection, logger
                ) { binds, pair in
                    binds.append(pair.old.id)
                    binds.append(pair.old.keyID)
                    try binds.append(pair.old.content)
                    try binds.append(pair.old.metadata)
                    binds.append(pair.new.keyID)
                    try binds.append(pair.new.content)
                    try binds.append(pair.new.metadata)
                }.count
            }
            for chunk in Self.chunks(conversations, size: 500) {
                written += try await Self.update(
                    chunk,
                    columns: [
                        "id::text", "old_key::bigint", "old_title::bytea", "old_subject::bytea", "old_metadata::bytea", "key::bigint", "title::bytea",
                        "subject::bytea", "metadata::bytea",
                    ],
                    sql: """
                        UPDATE conversations c SET key_id = u.key, title = u.title, subject = u.subject, metadata = u.metadata
                        FROM (VALUES %@) AS u (%@)
                        WHERE c.id = u.id AND c.key_id = u.old_key AND c.title IS NOT DISTINCT FROM u.old_title
                          AND c.subject IS NOT DISTINCT FROM u.old_subject AND c.metadata IS NOT DISTINCT FROM u.old_metadata
                        RETURNING c.seq
                        """, connection, logger
                ) { binds, pair in
                    binds.append(pair.old.id)
                    binds.append(pair.old.keyID)
                    try binds.append(pair.old.title)
                    try binds.append(pair.old.subject)
                    try binds.append(pair.old.metadata)
                    binds.append(pair.new.keyID)
                    try binds.append(pair.new.title)
                    try binds.append(pair.new.subject)
                    try binds.append(pair.new.metadata)
                }.count
            }
            for chunk in Self.chunks(terms, size: 500) {
                // Moved messages (index_key_id was still the old key): their terms replaced.
                let moved = try await Self.update(
                    chunk, columns: ["id::text", "old_key::bigint", "key::bigint", "terms::bigint[]"],
                    sql: """
                        UPDATE messages m SET index_key_id = u.key, terms = u.terms FROM (VALUES %@) AS u (%@)
                        WHERE m.id = u.id AND m.index_key_id IS NOT DISTINCT FROM u.old_key
                        RETURNING m.seq
                        """, connection, logger
                ) { binds, item in
                    binds.append(item.id)
                    binds.append(item.from)
                    binds.append(item.to)
                    binds.append(Self.termColumn(item.terms))
                }
                written += moved.count
            }
            for (place, items) in clears.sorted(by: { $0.key < $1.key }) {
                let parts = place.split(separator: ".").map(String.init)
                let (table, column) = (parts[0], parts[1])
                // A cleared subject takes its blinded token with it.
                let extra = column == "subject" ? ", subject_token = NULL, subject_key_id = NULL" : ""
                for chunk in Self.chunks(items, size: 500) {
                    written += try await Self.update(
                        chunk, columns: ["id::text", "expected::bytea"],
                        sql: """
                            UPDATE \(table) t SET \(column) = NULL\(extra) FROM (VALUES %@) AS u (%@)
                            WHERE t.id = u.id AND t.\(column) = u.expected
                            RETURNING t.seq
                            """, connection, logger
                    ) { binds, item in
                        binds.append(item.id)
                        try binds.append(item.expected)
                    }.count
                }
            }
            for chunk in Self.chunks(tokens, size: 500) {
                written += try await Self.update(
                    chunk, columns: ["id::text", "old_key::bigint", "key::bigint", "token::bytea"],
                    sql: """
                        UPDATE conversations c SET subject_key_id = u.key, subject_token = u.token FROM (VALUES %@) AS u (%@)
                        WHERE c.id = u.id AND c.subject_key_id = u.old_key
                        RETURNING c.seq
                        """, connection, logger
                ) { binds, item in
                    binds.append(item.id)
                    binds.append(item.from)
                    binds.append(item.to)
                    try binds.append(item.token)
                }.count
            }
            return written
        }
    }

    private static func chunks<T>(_ items: [T], size: Int) -> [ArraySlice<T>] {
        stride(from: 0, to: items.count, by: size).map { items[$0..<min(items.count, $0 + size)] }
    }


    /// Runs `sql` with its first `%@` replaced by the VALUES rows of `items` (each value cast to its
    /// column's type, given as "name::type"), its second by the column names. Returns the rows.
    private static func update<Item>(
        _ items: ArraySlice<Item>, columns: [String], sql: String, _ connection: PostgresConnection, _ logger: Logger,
        bind: (inout PostgresBindings, Item) throws -> Void
    ) async throws -> [Int64] {
        let types = columns.map { String($0.split(separator: ":", maxSplits: 1).last ?? "") }
        let names = columns.map { String($0.split(separator: ":", maxSplits: 1).first ?? "") }
        var binds = PostgresBindings()
        var rows: [String] = []
        for item in items {
            let first = binds.count + 1
            try bind(&binds, item)
            rows.append("(" + types.enumerated().map { "$\(first + $0.offset)::\($0.element.dropFirst())" }.joined(separator: ", ") + ")")
        }
        var text = sql
        if let range = text.range(of: "%@") { text.replaceSubrange(range, with: rows.joined(separator: ", ")) }
        if let range = text.range(of: "%@") { text.replaceSubrange(range, with: names.joined(separator: ", ")) }
        let result = try await connection.statement(PostgresQuery(unsafeSQL: text, binds: binds), logger: logger)
        var updated: [Int64] = []
        for try await seq in result.decode(Int64.self) { updated.append(seq) }
        return updated
    }

    /// One transaction: the key-change lock (exclusive: it waits for every `chatlog_append` in
    /// flight, which holds it shared, and holds off new ones until the commit), the check value
    /// (row-locked: the guard of a write transaction reads it `FOR SHARE` and waits), the key rows
    /// compared with `expected` (locked `FOR UPDATE`), every row that becomes retired counted unused,
    /// then the rows and meta values written.
    package func replaceKeys(
        _ rows: [StoredKeyRow], expected: [StoredKeyRow], checkValues: [Data], meta: [String: MetaValue?], expectedMeta: [String: MetaValue?]
    ) async throws {
        let logger = logger
        try await transaction { connection in
            try await connection.run("SELECT pg_advisory_xact_lock(\(Self.lockClass), \(Self.keyChangeLock))", logger: logger)
            let check = try await connection.statement(
                "SELECT blob_value FROM chatlog_meta WHERE name = 'master_check' FOR UPDATE", logger: logger)
            var stored: Data?
            for try await value in check.decode(Data?.self) { stored = value }
            guard let stored, checkValues.contains(stored) else { throw StorageConflict.masterKeyChanged }
            let current = try await connection.statement(
                "SELECT id, kind, state, created_at, retired_at, wrapped, mac FROM keys ORDER BY id FOR UPDATE", logger: logger)
            var found: [StoredKeyRow] = []
            for try await (id, kind, state, created, retired, wrapped, mac) in current.decode((Int64, String, String, Int64, Int64?, Data?, Data?).self) {
                found.append(StoredKeyRow(id: id, kind: kind, state: state, createdAt: created, retiredAt: retired, wrapped: wrapped, mac: mac))
            }
            guard found == expected.sorted(by: { $0.id < $1.id }) else { throw StorageConflict.staleKeys }
            for (name, value) in expectedMeta.sorted(by: { $0.key < $1.key }) {
                let stored = try await connection.statement(
                    "SELECT integer_value, text_value, blob_value FROM chatlog_meta WHERE name = \(name) FOR UPDATE", logger: logger)
                var current: MetaValue?
                for try await (integer, text, blob) in stored.decode((Int64?, String?, Data?).self) {
                    current = integer.map(MetaValue.integer) ?? text.map(MetaValue.text) ?? blob.map(MetaValue.blob)
                }
                guard current == value else { throw StorageConflict.staleKeys }
            }
            let before = Dictionary(found.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
            for row in rows where row.state == "retired" && before[row.id]?.state != "retired" {
                let used = try await connection.statement(
                    """
                    SELECT (SELECT count(*) FROM messages WHERE key_id = \(row.id)) + (SELECT count(*) FROM conversations WHERE key_id = \(row.id))
                         + (SELECT count(*) FROM messages WHERE index_key_id = \(row.id))
                         + (SELECT count(*) FROM conversations WHERE subject_key_id = \(row.id))
                    """, logger: logger)
                var count: Int64 = 0
                for try await value in used.decode(Int64.self) { count = value }
                guard count == 0 else {
                    throw ChatLogError.keyInUse(KeyID(rawValue: UInt32(truncatingIfNeeded: row.id)), rows: Int(count))
                }
                // Thread digests under a destroyed index key can never match again.
                try await connection.run("DELETE FROM proxy_threads WHERE index_key_id = \(row.id)", logger: logger)
            }
            // Demotions before the new active key: one active key per kind at every statement.
            for row in rows.sorted(by: { ($0.state == "active" ? 1 : 0, $0.id) < ($1.state == "active" ? 1 : 0, $1.id) }) {
                try await connection.run(
                    """
                    INSERT INTO keys (id, kind, state, created_at, retired_at, wrapped, mac)
                    VALUES (\(row.id), \(row.kind), \(row.state), \(row.createdAt), \(row.retiredAt), \(row.wrapped), \(row.mac))
                    ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, state = excluded.state, created_at = excluded.created_at,
                        retired_at = excluded.retired_at, wrapped = excluded.wrapped, mac = excluded.mac
                    """, logger: logger)
            }
            for (name, value) in meta.sorted(by: { $0.key < $1.key }) {
                if let value {
                    try await Self.setMeta(name, value, connection, logger)
                } else {
                    try await connection.run("DELETE FROM chatlog_meta WHERE name = \(name)", logger: logger)
                }
            }
        }
    }

    package func deleteMessages(_ ids: [String]) async throws(ChatLogError) -> Int {
        guard !ids.isEmpty else { return 0 }
        let logger = logger
        return try await transactionMapped { connection in
            // Their conversations locked first, as an append locks its conversation: a delete of a
            // conversation's last message and an append to it cannot pass each other, so migration
            // 0008's count of conversations with messages stays exact.
            try await connection.run(
                """
                SELECT seq FROM conversations WHERE seq IN (SELECT conversation_seq FROM messages WHERE id = ANY(\(ids)::text[]))
                ORDER BY seq FOR UPDATE
                """, logger: logger)
            let rows = try await connection.statement("DELETE FROM messages WHERE id = ANY(\(ids)::text[]) RETURNING seq", logger: logger)
            var count = 0
            for try await _ in rows { count += 1 }
            return count
        }
    }

    /// None can exist: a message's terms are a column of its row (migration postgres/0010).
    package func orphanTerms(delete: Bool) async throws(ChatLogError) -> Int { 0 }

    /// `VACUUM FULL`: rewrites each table into new files without dead row versions (old
    /// ciphertext, old wrapped keys), taking an exclusive lock on each for its duration.
    package func vacuum(onlyKeys: Bool) async throws(ChatLogError) {
        let tables = onlyKeys ? ["keys", "chatlog_meta"] : ["keys", "chatlog_meta", "conversations", "messages", "imports"]
        try await read { connection in
            for table in tables { try await connection.run(PostgresQuery(unsafeSQL: "VACUUM (FULL) \(table)"), logger: self.logger) }
        }
    }
}
