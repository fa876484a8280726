import Foundation
import GRDB

/// A row ready to insert: sealed before the write transaction starts, so the write lock is held
/// only for the inserts.
struct PreparedConversation: Sendable {
    let id: ConversationID
    let createdAt: Int64
    let keyID: KeyID
    let title: Data?
    let subject: Data?
    let subjectToken: Data?
    let subjectKeyID: KeyID?
    let metadata: Data?
    /// The subject key its values (and its messages') are sealed under; nil without a subject (and
    /// for rows read back through the storage seam, which carry only its id: below).
    var erasure: (id: KeyID, key: SubjectKey)? = nil
    /// For a row moved as bytes (`copy`, `backup`, `import` through the seam): the subject key id
    /// its sealed subject's header names.
    var sealedUnderSubjectKey: KeyID? = nil
    var erasureKeyID: KeyID? { erasure?.id ?? sealedUnderSubjectKey }
}

struct PreparedMessage: Sendable {
    let id: MessageID
    let role: Role
    let createdAt: Int64
    let model: String?
    let promptTokens: Int?
    let completionTokens: Int?
    let latencyMilliseconds: Int?
    let finishReason: String?
    let keyID: KeyID
    let content: Data
    let metadata: Data?
    /// The blinded terms of the content (FTS5 document) and the index key that made them.
    let terms: String
    let indexKeyID: KeyID
    /// The subject key of its conversation (sealed-value version 2); nil without one.
    var subjectKeyID: KeyID? = nil
}

extension ChatLogStore {
    /// The largest message content accepted (bytes of UTF-8).
    public static let maximumContentBytes = 64 << 20

    // MARK: - Public API

    /// Creates a conversation and returns its id.
    @discardableResult
    public func createConversation(_ conversation: NewConversation = NewConversation()) throws(ChatLogError) -> ConversationID {
        try writeSealed { (keys) throws(ChatLogError) in try prepare(conversation, keys: keys) } body: { prepared, db in
            try Self.insert(prepared, db)
            return prepared.id
        }
    }

    /// Appends one message at the end of a conversation.
    @discardableResult
    public func append(_ message: NewMessage, to conversation: ConversationID) throws(ChatLogError) -> MessageID {
        try append([message], to: conversation)[0]
    }

    /// Appends messages in order, in one transaction (all or nothing).
    @discardableResult
    public func append(_ messages: [NewMessage], to conversation: ConversationID) throws(ChatLogError) -> [MessageID] {
        let subject = try existingSubjectKey(conversation)
        return try writeSealed { (keys) throws(ChatLogError) in try prepare(messages, keys: keys, subject: subject) } body: { prepared, db in
            try Self.insert(prepared, into: conversation, db)
            return prepared.map(\.id)
        }
    }

    /// Logs one model call (new prompt messages, then the completion) in one transaction,
    /// creating the conversation first when asked.
    @discardableResult
    public func logExchange(_ exchange: ModelExchange) throws(ChatLogError) -> LoggedExchange {
        let target = exchange.conversation
        let subject = try existingSubjectKey(target)
        return try writeSealed { (keys) throws(ChatLogError) in try prepare(exchange, keys: keys, existing: subject) } body: { prepared, db in
            let id = try Self.insert(conversation: prepared.0, messages: prepared.1, target: target, db)
            return LoggedExchange(conversationID: id, messageIDs: prepared.1.map(\.id))
        }
    }

    /// Deletes a conversation and all its messages, and merges the search index in the same
    /// transaction so that no segment keeps their terms. Returns false when there was none.
    /// `secure_delete` zeroes the freed content in the database file; the WAL keeps old pages
    /// until the next checkpoint (`deleteConversations` also checkpoints).
    /// The merge rewrites the whole index while holding the write lock (about 15 s at 1,000,000
    /// messages: docs/ARCHITECTURE.md §10): delete many conversations with one
    /// `deleteConversations(_:)` call, which merges once.
    @discardableResult
    public func deleteConversation(_ id: ConversationID) throws(ChatLogError) -> Bool {
        try writeImmediate { db in try self.deleteAndScrub(id, db) }
    }

    // MARK: - Async forms (run on GRDB's writer queue; never block the cooperative pool)

    @discardableResult
    public func createConversation(_ conversation: NewConversation = NewConversation()) async throws(ChatLogError) -> ConversationID {
        if let storage { return try await storageCreateConversation(conversation, storage) }
        return try await writeSealed { (keys) throws(ChatLogError) in try prepare(conversation, keys: keys) } body: { prepared, db in
            try Self.insert(prepared, db)
            return prepared.id
        }
    }

    @discardableResult
    public func append(_ message: NewMessage, to conversation: ConversationID) async throws(ChatLogError) -> MessageID {
        try await append([message], to: conversation)[0]
    }

    @discardableResult
    public func append(_ messages: [NewMessage], to conversation: ConversationID) async throws(ChatLogError) -> [MessageID] {
        if let storage { return try await storageAppend(messages, to: conversation, storage) }
        let subject = try await existingSubjectKey(conversation)
        return try await writeSealed { (keys) throws(ChatLogError) in try prepare(messages, keys: keys, subject: subject) } body: { prepared, db in
            try Self.insert(prepared, into: conversation, db)
            return prepared.map(\.id)
        }
    }

    @discardableResult
    public func logExchange(_ exchange: ModelExchange) async throws(ChatLogError) -> LoggedExchange {
        if let storage { return try await storageLogExchange(exchange, storage) }
        let target = exchange.conversation
        let subject = try await existingSubjectKey(target)
        return try await writeSealed { (keys) throws(ChatLogError) in try prepare(exchange, keys: keys, existing: subject) } body: { prepared, db in
            let id = try Self.insert(conversation: prepared.0, messages: prepared.1, target: target, db)
            return LoggedExchange(conversationID: id, messageIDs: prepared.1.map(\.id))
        }
    }

    @discardableResult
    public func deleteConversation(_ id: ConversationID) async throws(ChatLogError) -> Bool {
        if let storage { return try await storageDelete([id], storage) == 1 }
        return try await writeImmediate { db in try self.deleteAndScrub(id, db) }
    }

    // MARK: - Preparation (validation and sealing, outside the transaction)

    /// `subjectKeys`: keys looked up beforehand for a batch (``subjectKeys(for:)``; always, for a
    /// store behind the storage seam); a subject not in it is looked up here.
    func prepare(
        _ conversation: NewConversation, keys: KeyRing.Loaded, subjectKeys known: KnownSubjectKeys = [:]
    ) throws(ChatLogError) -> PreparedConversation {
        let id = conversation.id ?? ConversationID.make()
        // A subject's key is made (in the subject-key file, its own transaction) at its first conversation.
        var erasure: (id: KeyID, key: SubjectKey)?
        if let subject = conversation.subject, options.sealsUnderSubjectKeys {
            erasure = known[subject]
            if erasure == nil { erasure = try subjectKeys.key(forSubject: subject, create: true) }
        }
        let sealer = sealer(keys).under(erasure)
        let index = keys.activeIndexKey
        let table = "conversations"
        return PreparedConversation(
            id: id, createdAt: try SearchIndex.milliseconds(conversation.createdAt ?? Date(), "a conversation"), keyID: sealer.keyID,
            title: conversation.title.map { sealer.seal($0, table: table, column: "title", rowID: id.rawValue) },
            subject: conversation.subject.map { sealer.seal($0, table: table, column: "subject", rowID: id.rawValue) },
            subjectToken: conversation.subject.map { SubjectIndex.token(for: $0, key: index.key) },
            subjectKeyID: conversation.subject == nil ? nil : index.id,
            metadata: try sealer.seal(json: conversation.metadata, table: table, column: "metadata", rowID: id.rawValue), erasure: erasure)
    }

    func prepare(_ messages: [NewMessage], keys: KeyRing.Loaded, subject: (id: KeyID, key: SubjectKey)? = nil) throws(ChatLogError)
        -> [PreparedMessage]
    {
        try messages.map { (message) throws(ChatLogError) in try prepare(message, keys: keys, subject: subject) }
    }

    func prepare(_ message: NewMessage, keys: KeyRing.Loaded, subject: (id: KeyID, key: SubjectKey)? = nil) throws(ChatLogError)
        -> PreparedMessage
    {
        let message = options.redactor.map { $0.redact(message) } ?? message
        let size = message.content.utf8.count
        guard size <= Self.maximumContentBytes else {
            throw .invalidInput("message content is \(size) bytes; the limit is \(Self.maximumContentBytes >> 20) MiB")
        }
        for (name, value) in [("prompt tokens", message.promptTokens), ("completion tokens", message.completionTokens),
            ("latency", message.latencyMilliseconds)]
        {
            if let value, value < 0 { throw .invalidInput("\(name) must not be negative") }
        }
        for (name, value) in [("model", message.model), ("finish reason", message.finishReason)] {
            if let value, value.utf8.count > 256 || value.contains("\0") {
                throw .invalidInput("\(name) must be at most 256 bytes without NUL")
            }
        }
        let id = message.id ?? MessageID.make()
        let sealer = sealer(keys).under(subject)
        let blinder = keys.activeBlinder
        return PreparedMessage(
            id: id, role: message.role, createdAt: try SearchIndex.milliseconds(message.createdAt ?? Date(), "a message"), model: message.model,
            promptTokens: message.promptTokens, completionTokens: message.completionTokens,
            latencyMilliseconds: message.latencyMilliseconds, finishReason: message.finishReason, keyID: sealer.keyID,
            content: sealer.seal(message.content, table: "messages", column: "content", rowID: id.rawValue),
            metadata: try sealer.seal(json: message.metadata, table: "messages", column: "metadata", rowID: id.rawValue),
            terms: blinder.document(for: message.content), indexKeyID: blinder.keyID, subjectKeyID: subject?.id)
    }

    /// `existing`: the subject key of the existing conversation the exchange continues (see
    /// ``existingSubjectKey(_:)``).
    func prepare(
        _ exchange: ModelExchange, keys: KeyRing.Loaded, existing: (id: KeyID, key: SubjectKey)? = nil, subjectKeys known: KnownSubjectKeys = [:]
    ) throws(ChatLogError)
        -> (PreparedConversation?, [PreparedMessage])
    {
        var conversation: PreparedConversation?
        if case .new(let new) = exchange.conversation { conversation = try prepare(new, keys: keys, subjectKeys: known) }
        let subject = conversation?.erasure ?? existing
        var messages = try prepare(exchange.prompt, keys: keys, subject: subject)
        messages.append(try prepare(exchange.completion, keys: keys, subject: subject))
        return (conversation, messages)
    }

    /// The keys of the subjects of a batch of new conversations, in one look-up.
    func subjectKeys(for conversations: [NewConversation]) throws(ChatLogError) -> [String: (id: KeyID, key: SubjectKey)] {
        guard options.sealsUnderSubjectKeys else { return [:] }
        return try subjectKeys.keys(forSubjects: Set(conversations.compactMap(\.subject)), create: true)
    }

    func existingSubjectKey(_ target: ModelExchange.Target) throws(ChatLogError) -> (id: KeyID, key: SubjectKey)? {
        guard case .existing(let id) = target else { return nil }
        return try existingSubjectKey(id)
    }

    func existingSubjectKey(_ target: ModelExchange.Target) async throws(ChatLogError) -> (id: KeyID, key: SubjectKey)? {
        guard case .existing(let id) = target else { return nil }
        return try await existingSubjectKey(id)
    }

    /// The subject key an existing conversation is sealed under (new messages are sealed under it
    /// too); nil when it has none, or does not exist (the insert then says so).
    func existingSubjectKey(_ conversation: ConversationID) throws(ChatLogError) -> (id: KeyID, key: SubjectKey)? {
        let stored = try read { db in try Self.erasureKeyID(of: conversation, db) }
        return try stored.map { (id) throws(ChatLogError) in
            (id, try subjectKey(id, FieldContext(table: "conversations", column: "erasure_key_id", rowID: conversation.rawValue)))
        }
    }

    func existingSubjectKey(_ conversation: ConversationID) async throws(ChatLogError) -> (id: KeyID, key: SubjectKey)? {
        let stored = try await read { db in try Self.erasureKeyID(of: conversation, db) }
        return try stored.map { (id) throws(ChatLogError) in
            (id, try subjectKey(id, FieldContext(table: "conversations", column: "erasure_key_id", rowID: conversation.rawValue)))
        }
    }

    static func erasureKeyID(of conversation: ConversationID, _ db: Database) throws -> KeyID? {
        guard let value = try Int64.fetchOne(
            db.cachedStatement(sql: "SELECT erasure_key_id FROM conversations WHERE id = ?"), arguments: [conversation.rawValue])
        else { return nil }
        return try KeyID.stored(value, table: "conversations", column: "erasure_key_id", rowID: conversation.rawValue)
    }

    // MARK: - Inserts and deletes (inside the IMMEDIATE transaction)

    /// Deletes a conversation, its messages and their search terms. A contentless FTS5 table
    /// forgets a row only when told its exact terms, so each message is opened and re-blinded.
    func delete(_ id: ConversationID, _ db: Database) throws -> Bool {
        guard let seq = try Int64.fetchOne(db, sql: "SELECT seq FROM conversations WHERE id = ?", arguments: [id.rawValue])
        else { return false }
        try delete(seq: seq, db)
        return true
    }

    func deleteAndScrub(_ id: ConversationID, _ db: Database) throws -> Bool {
        guard try delete(id, db) else { return false }
        if try SearchIndex.scrubPending(db) { try SearchIndex.scrub(db) }
        return true
    }

    func delete(seq: Int64, _ db: Database) throws {
        try SearchIndex.removeTerms(whereSQL: "conversation_seq = ?", arguments: [seq], store: self, db)
        try db.execute(sql: "DELETE FROM conversations WHERE seq = ?", arguments: [seq])
    }

    /// `forgottenChecked`: the caller has already run ``refuseForgotten(_:_:)`` for its subject key
    /// in this transaction (a group commit checks each key once).
    static func insert(_ conversation: PreparedConversation, _ db: Database, forgottenChecked: Bool = false) throws {
        // Counters of migration 0007 (deletes and key changes are counted by its triggers); first,
        // so that `lastInsertedRowID` stays the conversation's for the callers.
        if !forgottenChecked, let erasure = conversation.erasureKeyID { try refuseForgotten(erasure, db) }
        try countKeyUse(Int64(conversation.keyID.rawValue), 1, db)
        if let subjectKey = conversation.subjectKeyID { try countKeyUse(Int64(subjectKey.rawValue), 1, db) }
        try db.cachedStatement(
            sql: """
                INSERT INTO conversations (id, created_at, updated_at, key_id, title, subject, subject_token, subject_key_id, metadata, erasure_key_id)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """
        ).execute(
            arguments: [
                conversation.id.rawValue, conversation.createdAt, conversation.createdAt, Int64(conversation.keyID.rawValue),
                conversation.title, conversation.subject, conversation.subjectToken,
                conversation.subjectKeyID.map { Int64($0.rawValue) }, conversation.metadata, conversation.erasureKeyID.map { Int64($0.rawValue) },
            ])
    }

    static func countKeyUse(_ keyID: Int64, _ rows: Int64, _ db: Database) throws {
        try db.cachedStatement(
            sql: "INSERT INTO key_usage (key_id, row_count) VALUES (?, ?) ON CONFLICT (key_id) DO UPDATE SET row_count = row_count + excluded.row_count"
        ).execute(arguments: [keyID, rows])
    }

    static func insert(_ messages: [PreparedMessage], into conversation: ConversationID, _ db: Database) throws {
        // Cached statements here and below: a proxy logs one exchange per transaction, and compiling
        // the same SQL (and GRDB's authorizer pass over it) on every call cost ~10 % of such a write.
        guard
            let seq = try Int64.fetchOne(
                db.cachedStatement(sql: "SELECT seq FROM conversations WHERE id = ?"), arguments: [conversation.rawValue])
        else { throw ChatLogError.conversationNotFound(conversation.rawValue) }
        try insert(messages, conversationSeq: seq, db)
    }

    /// Thrown inside a write transaction (rolling it back) when a subject key this process holds
    /// was forgotten by `forget` meanwhile.
    struct ForgottenSubjectKey: Error { let id: KeyID }

    static func refuseForgotten(_ id: KeyID, _ db: Database) throws {
        if try Int64.fetchOne(
            db.cachedStatement(sql: "SELECT 1 FROM forgotten_subject_keys WHERE key_id = ?"), arguments: [Int64(id.rawValue)]) != nil
        {
            throw ForgottenSubjectKey(id: id)
        }
    }

    static let fewKeys = 10
    private static let forgottenAmongSQL =
        "SELECT key_id FROM forgotten_subject_keys WHERE key_id IN (" + repeatElement("?", count: 100).joined(separator: ",") + ")"

    /// The same for the keys of a group commit: up to `fewKeys`, a look-up each; more, 100 per
    /// statement (a statement per key costs more than its look-up; an `IN` list of 100 costs
    /// SQLite an index of the list, more than a few single look-ups).
    static func refuseForgotten(_ ids: Set<KeyID>, _ db: Database) throws {
        guard ids.count > fewKeys else {
            for id in ids { try refuseForgotten(id, db) }
            return
        }
        let all = ids.map { Int64($0.rawValue) }
        guard let first = all.first else { return }
        let statement = try db.cachedStatement(sql: forgottenAmongSQL)
        for start in stride(from: 0, to: all.count, by: 100) {
            let slice = all[start..<min(all.count, start + 100)]
            if let id = try Int64.fetchOne(statement, arguments: StatementArguments(slice + repeatElement(first, count: 100 - slice.count))),
                let raw = UInt32(exactly: id)
            {
                throw ForgottenSubjectKey(id: KeyID(rawValue: raw))
            }
        }
    }

    /// New messages of a conversation sealed under a subject key must be under that key (a
    /// conversation from before subject keys takes messages under one: `forget` finds it by its
    /// subject all the same).
    static func checkSubjectKey(of messages: [PreparedMessage], conversationSeq seq: Int64, _ db: Database) throws {
        guard let first = messages.first else { return }
        let stored = try Int64.fetchOne(
            db.cachedStatement(sql: "SELECT erasure_key_id FROM conversations WHERE seq = ?"), arguments: [seq])
        for message in messages where message.subjectKeyID != first.subjectKeyID || (stored != nil && stored != message.subjectKeyID.map({ Int64($0.rawValue) })) {
            throw ChatLogError.invalidInput(
                "the conversation is sealed under another subject's key than the new messages (a different subject); nothing was written")
        }
        // A conversation under key K exists only while K is not forgotten (forget deletes its rows
        // in the transaction that lists K); a conversation without one can still be handed a
        // destroyed key a process kept in memory.
        if stored == nil, let id = first.subjectKeyID { try refuseForgotten(id, db) }
    }

    static func insert(_ messages: [PreparedMessage], conversationSeq seq: Int64, _ db: Database) throws {
        try checkSubjectKey(of: messages, conversationSeq: seq, db)
        var position = try Int64.fetchOne(
            db.cachedStatement(sql: "SELECT coalesce(max(position) + 1, 0) FROM messages WHERE conversation_seq = ?"), arguments: [seq]) ?? 0
        let statement = try db.cachedStatement(
            sql: """
                INSERT INTO messages (id, conversation_seq, position, role, created_at, model, prompt_tokens, completion_tokens,
                                      latency_ms, finish_reason, key_id, content, metadata, index_key_id, time_lag)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """)
        let index = try db.cachedStatement(sql: "INSERT INTO message_terms (rowid, terms) VALUES (?, ?)")
        var latest: Int64 = 0
        let firstPosition = position
        var tokens: (prompt: Int64, completion: Int64) = (0, 0)
        var keyUse: [Int64: Int64] = [:]
        // The running maximum of created_at in insertion (seq) order: time_lag is how far a message
        // lies behind it (migration 0011; 0 for messages logged in time order).
        var running = messages.isEmpty ? 0 : try SearchIndex.latestCreatedAt(db) ?? Int64.min
        for message in messages {
            running = max(running, message.createdAt)
            try statement.execute(arguments: [
                message.id.rawValue, seq, position, message.role.rawValue, message.createdAt, message.model,
                message.promptTokens, message.completionTokens, message.latencyMilliseconds, message.finishReason,
                Int64(message.keyID.rawValue), message.content, message.metadata, Int64(message.indexKeyID.rawValue),
                running - message.createdAt,
            ])
            // The index's row id is the message's seq (migration 0011).
            try index.execute(arguments: [db.lastInsertedRowID, message.terms])
            position += 1
            latest = max(latest, message.createdAt)
            tokens.prompt += Int64(message.promptTokens ?? 0)
            tokens.completion += Int64(message.completionTokens ?? 0)
            keyUse[Int64(message.keyID.rawValue), default: 0] += 1
            keyUse[Int64(message.indexKeyID.rawValue), default: 0] += 1
        }
        // Counters of migration 0007, once per call (deletes and key changes are counted by its triggers).
        if !messages.isEmpty {
            try db.cachedStatement(
                sql: """
                    UPDATE message_totals SET messages = messages + ?, conversations = conversations + ?,
                        prompt_tokens = prompt_tokens + ?, completion_tokens = completion_tokens + ? WHERE id = 1
                    """
            ).execute(arguments: [messages.count, firstPosition == 0 ? 1 : 0, tokens.prompt, tokens.completion])
            for (keyID, rows) in keyUse { try countKeyUse(keyID, rows, db) }
        }
        try db.cachedStatement(sql: "UPDATE conversations SET updated_at = max(updated_at, ?) WHERE seq = ?").execute(arguments: [latest, seq])
    }

    static func insert(
        conversation: PreparedConversation?, messages: [PreparedMessage], target: ModelExchange.Target, _ db: Database
    ) throws -> ConversationID {
        let id: ConversationID
        if let conversation {
            try insert(conversation, db)
            id = conversation.id
        } else if case .existing(let existing) = target {
            id = existing
        } else {
            preconditionFailure("a new conversation is always prepared")
        }
        try insert(messages, into: id, db)
        return id
    }
}
