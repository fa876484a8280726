import Foundation
import GRDB

extension ChatLogStore {
    private static let conversationColumns = """
        c.seq, c.id, c.created_at, c.updated_at, c.title, c.subject, c.metadata,
        (SELECT count(*) FROM messages m WHERE m.conversation_seq = c.seq) AS message_count
        """

    /// Read by position in `decodeMessage` (a lookup by name hashes a lower-cased copy of the
    /// name for every column of every row: a tenth of an export's time).
    private static let messageColumns = """
        m.seq, m.id, c.seq AS conversation_seq, c.id AS conversation_id, m.position, m.role, m.created_at, m.model, m.prompt_tokens, m.completion_tokens,
        m.latency_ms, m.finish_reason, m.content, m.metadata
        """

    // MARK: - Public API

    /// One conversation with its messages, oldest first.
    public func transcript(_ id: ConversationID) throws(ChatLogError) -> Transcript {
        try read { db in try self.transcript(id, db) }
    }

    public func transcript(_ id: ConversationID) async throws(ChatLogError) -> Transcript {
        if let storage { return try await storageTranscript(id, storage) }
        return try await read { db in try self.transcript(id, db) }
    }

    /// One conversation without its messages.
    public func conversation(_ id: ConversationID) throws(ChatLogError) -> Conversation {
        try read { db in try self.conversation(id, db) }
    }

    public func conversation(_ id: ConversationID) async throws(ChatLogError) -> Conversation {
        if let storage { return try await storageTranscript(id, storage, withMessages: false).conversation }
        return try await read { db in try self.conversation(id, db) }
    }

    /// Conversations newest first (by creation), filtered and paginated by cursor.
    public func conversations(_ query: ConversationQuery = ConversationQuery()) throws(ChatLogError) -> ConversationPage {
        _ = try ConversationListPlan(query, keys: keyRing.current)  // validate before reading
        return try read { db in try self.conversations(query, db) }
    }

    public func conversations(_ query: ConversationQuery = ConversationQuery()) async throws(ChatLogError) -> ConversationPage {
        if let storage { return try await storageConversations(query, storage) }
        _ = try ConversationListPlan(query, keys: keyRing.current)
        return try await read { db in try self.conversations(query, db) }
    }

    /// Plans inside the read: subject tokens under the index keys live in this snapshot (another
    /// process may have rotated since this handle loaded its keys).
    private func conversations(_ query: ConversationQuery, _ db: Database) throws -> ConversationPage {
        var keys = keyRing.current
        if query.subject != nil {
            let live = try Int64.fetchSet(db, sql: "SELECT id FROM keys WHERE kind = 'index' AND state <> 'retired'")
            // The keys of this snapshot, which may be older than the handle's.
            if live != Set(keys.indexKeys.keys.map { Int64($0.rawValue) }) { keys = try keyRing.reload(db) }
        }
        return try conversations(try ConversationListPlan(query, keys: keys), db)
    }

    /// Key ids, states, ages and how many rows use each; the master key's fingerprint.
    public func keyStatus() throws(ChatLogError) -> KeyStatus {
        try keyStatusInSQLite()
    }

    private func keyStatusInSQLite() throws(ChatLogError) -> KeyStatus {
        try read { db in
            // Counters kept by triggers (migration 0007): no scan of the tables.
            let usage = try Row.fetchAll(db, sql: Self.keyUsageSQL).reduce(into: [Int64: Int]()) {
                $0[try $1.decode(Int64.self, forColumn: "key_id")] = try $1.decode(Int.self, forColumn: "row_count")
            }
            let entries = try Row.fetchAll(db, sql: "SELECT id, kind, state, created_at, retired_at FROM keys ORDER BY id").map { row in
                let id: Int64 = try row.decode(forColumn: "id")
                return KeyStatus.Entry(
                    id: try KeyID.stored(id, table: "keys", column: "id", rowID: String(id)), kind: KeyStatus.Entry.Kind(rawValue: try row.decode(String.self, forColumn: "kind")) ?? .data,
                    state: KeyStatus.Entry.State(rawValue: try row.decode(String.self, forColumn: "state")) ?? .retired,
                    createdAt: Date(unixMilliseconds: try row.decode(Int64.self, forColumn: "created_at")),
                    retiredAt: (row["retired_at"] as Int64?).map(Date.init(unixMilliseconds:)), rowCount: usage[id] ?? 0)
            }
            return KeyStatus(masterKeyFingerprint: keyRing.master.fingerprint, masterKeySource: masterKeyOrigin, keys: entries)
        }
    }

    public func keyStatus() async throws(ChatLogError) -> KeyStatus {
        if let storage { return try await storageKeyStatus(storage) }
        return try keyStatusInSQLite()
    }

    public func counts() async throws(ChatLogError) -> (conversations: Int, messages: Int) {
        if let storage {
            let counts = try await storage.counts()
            return (counts.conversations, counts.messages)
        }
        return try countsInSQLite()
    }

    /// Number of conversations and messages.
    public func counts() throws(ChatLogError) -> (conversations: Int, messages: Int) {
        try countsInSQLite()
    }

    private func countsInSQLite() throws(ChatLogError) -> (conversations: Int, messages: Int) {
        try read { db in
            (try Int.fetchOne(db, sql: "SELECT count(*) FROM conversations") ?? 0,
                try Int.fetchOne(db, sql: "SELECT count(*) FROM messages") ?? 0)
        }
    }

    // MARK: - Implementation

    func conversation(_ id: ConversationID, _ db: Database) throws -> Conversation {
        guard let row = try Row.fetchOne(
            db.cachedStatement(sql: "SELECT \(Self.conversationColumns) FROM conversations c WHERE c.id = ?"), arguments: [id.rawValue])
        else { throw ChatLogError.conversationNotFound(id.rawValue) }
        return try decodeConversation(row, db)
    }

    func transcript(_ id: ConversationID, _ db: Database) throws -> Transcript {
        let conversation = try self.conversation(id, db)
        let rows = try Row.fetchCursor(
            db.cachedStatement(
                sql: """
                    SELECT \(Self.messageColumns) FROM messages m JOIN conversations c ON c.seq = m.conversation_seq
                    WHERE c.id = ? ORDER BY m.position
                    """), arguments: [id.rawValue])
        var messages: [Message] = []
        while let row = try rows.next() { messages.append(try decodeMessage(row, db)) }
        return Transcript(conversation: conversation, messages: messages)
    }

    func conversations(_ plan: ConversationListPlan, _ db: Database) throws -> ConversationPage {
        let rows = try Row.fetchAll(
            db,
            sql: "SELECT \(Self.conversationColumns) FROM conversations c WHERE \(plan.whereClause) ORDER BY c.created_at DESC, c.seq DESC LIMIT ?",
            arguments: plan.arguments + [plan.limit + 1])
        var conversations: [Conversation] = []
        var nextCursor: String?
        for (index, row) in rows.enumerated() {
            if index == plan.limit {
                let last = rows[index - 1]
                nextCursor = "\((try last.decode(Int64.self, forColumn: "created_at"))).\((try last.decode(Int64.self, forColumn: "seq")))"
                break
            }
            conversations.append(try decodeConversation(row, db))
        }
        return ConversationPage(conversations: conversations, nextCursor: nextCursor)
    }

    func decodeConversation(_ row: Row, _ db: Database) throws -> Conversation {
        let id = try ConversationID.stored(row.storedText("id"), table: "conversations", column: "id", seq: try row.decode(forColumn: "seq")).rawValue
        func context(_ column: String) -> FieldContext { FieldContext(table: "conversations", column: column, rowID: id) }
        return Conversation(
            id: ConversationID(trusted: id), createdAt: Date(unixMilliseconds: try row.decode(Int64.self, forColumn: "created_at")),
            updatedAt: Date(unixMilliseconds: try row.decode(Int64.self, forColumn: "updated_at")),
            title: try row.sealedBytes("title").map { (data) throws(ChatLogError) in try openText(data, context("title"), db: db) },
            subject: try row.sealedBytes("subject").map { (data) throws(ChatLogError) in try openText(data, context("subject"), db: db) },
            metadata: try openJSON(row.sealedBytes("metadata"), context("metadata"), db: db),
            messageCount: try row.decode(Int.self, forColumn: "message_count"))
    }

    func decodeMessage(_ row: Row, _ db: Database) throws -> Message {
        // Positions in `messageColumns`.
        let id = try MessageID.stored(row.storedText(at: 1), table: "messages", column: "id", seq: try row.decode(atIndex: 0)).rawValue
        let conversationID = try ConversationID.stored(
            row.storedText(at: 3), table: "conversations", column: "id", seq: try row.decode(atIndex: 2))
        let rawRole: String = try row.decode(atIndex: 5)
        guard let role = Role(rawValue: rawRole) else {
            throw ChatLogError.integrity(IntegrityFailure(table: "messages", column: "role", rowID: id, reason: .invalidUTF8))
        }
        return Message(
            id: MessageID(trusted: id), conversationID: conversationID, position: try row.decode(Int.self, atIndex: 4),
            role: role, createdAt: Date(unixMilliseconds: try row.decode(Int64.self, atIndex: 6)),
            model: row[7], promptTokens: row[8], completionTokens: row[9], latencyMilliseconds: row[10], finishReason: row[11],
            content: try openText(row.sealedBytes(at: 12) ?? Data(), FieldContext(table: "messages", column: "content", rowID: id), db: db),
            metadata: try openJSON(row.sealedBytes(at: 13), FieldContext(table: "messages", column: "metadata", rowID: id), db: db))
    }
}

/// The SQL filter for a conversation listing, computed before the read (subject tokens under
/// every live index key, so a listing stays exact while the index key rotates).
struct ConversationListPlan: Sendable {
    var clauses: [String] = ["1"]
    var arguments: StatementArguments = []
    let limit: Int
    var whereClause: String { clauses.joined(separator: " AND ") }

    init(_ query: ConversationQuery, keys: KeyRing.Loaded) throws(ChatLogError) {
        guard query.limit > 0, query.limit <= 10_000 else { throw .invalidInput("limit must be between 1 and 10000") }
        limit = query.limit
        if let since = query.since {
            clauses.append("c.created_at >= ?")
            arguments += [since.unixMilliseconds]
        }
        if let until = query.until {
            clauses.append("c.created_at < ?")
            arguments += [until.unixMilliseconds]
        }
        if let subject = query.subject {
            let tokens = keys.subjectTokens(subject)
            clauses.append("c.subject_token IN (\(tokens.map { _ in "?" }.joined(separator: ",")))")
            arguments += StatementArguments(tokens)
        }
        if let model = query.model {
            clauses.append("EXISTS (SELECT 1 FROM messages m WHERE m.conversation_seq = c.seq AND m.model = ?)")
            arguments += [model]
        }
        if let cursor = query.cursor {
            let parts = cursor.split(separator: ".")
            guard parts.count == 2, let createdAt = Int64(parts[0]), let seq = Int64(parts[1]) else {
                throw .invalidInput("malformed page cursor")
            }
            clauses.append("(c.created_at < ? OR (c.created_at = ? AND c.seq < ?))")
            arguments += [createdAt, createdAt, seq]
        }
    }
}
