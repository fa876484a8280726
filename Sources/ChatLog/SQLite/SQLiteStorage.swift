import Foundation
import GRDB

/// The SQLite backend of the storage seam (docs/ARCHITECTURE.md §10): the store file through
/// GRDB, with the inserts, counters, FTS5 index and scrubbing the store already uses — no second
/// copy of them. Like every backend it holds no key: the one thing its index needs that only the
/// core can give (a deleted message's terms) comes through the `terms` closure of
/// ``deleteConversations(_:terms:)``.
///
/// `ChatLogStore` does not run on it yet (issue 14, stage 3): it is the seam's reference
/// implementation, and the shared storage suites run against it and PostgreSQL from one source.
package final class SQLiteStorage: ChatLogStorage {
    package let path: String
    let pool: DatabasePool
    package var location: String { path }

    private init(path: String, pool: DatabasePool) {
        self.path = path
        self.pool = pool
    }

    /// Opens (creating it 0600 when missing) the store file at `path`.
    package static func open(path: String, options: ChatLogStore.Options = ChatLogStore.Options()) throws(ChatLogError) -> SQLiteStorage {
        if PrivateFiles.isDirectory(path) { throw .storeIsADirectory(path: path) }
        if !PrivateFiles.fileExists(path) { try PrivateFiles.createEmptyPrivateFile(at: path) }
        return SQLiteStorage(path: path, pool: try ChatLogStore.openPool(path, options: options))
    }

    package func close() async {
        try? pool.close()
    }

    func write<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        try await pool.writeWithoutTransaction { db in
            var result: T?
            try db.inTransaction(.immediate) {
                result = try body(db)
                return .commit
            }
            return result!
        }
    }

    func writeMapped<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws(ChatLogError) -> T {
        do { return try await write(body) } catch { throw ChatLogError.wrap(error) }
    }

    func read<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws(ChatLogError) -> T {
        do { return try await pool.read(body) } catch { throw ChatLogError.wrap(error) }
    }

    // MARK: - Schema, meta, keys

    package func migrate() async throws(ChatLogError) {
        try Schema.migrate(pool)
    }

    package func requireCurrentSchema() async throws(ChatLogError) {
        try Schema.requireCurrent(pool, path: location)
    }

    package func isInitialized() async throws(ChatLogError) -> Bool {
        try await meta("master_check") != nil
    }

    package func initialize(meta: [String: MetaValue], keys: [StoredKeyRow]) async throws(ChatLogError) {
        let path = path
        try await writeMapped { db in
            if try Row.fetchOne(db, sql: "SELECT 1 FROM chatlog_meta WHERE name = 'master_check'") != nil {
                throw ChatLogError.storeExists(path: path)
            }
            for (name, value) in meta.sorted(by: { $0.key < $1.key }) {
                switch value {
                case .integer(let number): try ChatLogStore.setMeta(db, name, number)
                case .text(let text): try ChatLogStore.setMeta(db, name, text)
                case .blob(let data): try ChatLogStore.setMeta(db, name, data)
                }
            }
            for key in keys {
                try db.execute(
                    sql: "INSERT INTO keys (id, kind, state, created_at, retired_at, wrapped, mac) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    arguments: [key.id, key.kind, key.state, key.createdAt, key.retiredAt, key.wrapped, key.mac])
            }
        }
    }

    package func meta(_ name: String) async throws(ChatLogError) -> MetaValue? {
        try await read { db in try Self.meta(name, db) }
    }

    static func meta(_ name: String, _ db: Database) throws -> MetaValue? {
        guard let row = try Row.fetchOne(db, sql: "SELECT value FROM chatlog_meta WHERE name = ?", arguments: [name]) else { return nil }
        let value: DatabaseValue = row["value"]
        switch value.storage {
        case .int64(let number): return .integer(number)
        case .string(let text): return .text(text)
        case .blob(let data): return .blob(data)
        case .null, .double:
            throw ChatLogError.integrity(
                IntegrityFailure(table: "chatlog_meta", column: "value", rowID: name, reason: .invalidValue("is neither text, integer nor blob")))
        }
    }

    package func keyRows() async throws(ChatLogError) -> [StoredKeyRow] {
        try await read { db in
            try Row.fetchAll(db, sql: KeyRowAuthentication.selectRows + " ORDER BY id").map { row in
                let key = try KeyRowAuthentication.KeyRow(row)
                return StoredKeyRow(
                    id: key.id, kind: key.kind, state: key.state, createdAt: key.createdAt, retiredAt: key.retiredAt, wrapped: key.wrapped, mac: key.mac)
            }
        }
    }

    /// The `flock` of `<path>.keys.lock` (``RotationLock``), held for the whole job.
    package func withKeyJobLock<T: Sendable>(_ body: @Sendable () async throws(ChatLogError) -> T) async throws(ChatLogError) -> T {
        let lock = try RotationLock.acquire(forDatabase: path)
        defer { withExtendedLifetime(lock) {} }
        return try await body()
    }

    // MARK: - Writes

    package func insert(
        conversation: SealedConversationRow?, messages: [SealedMessageRow], into conversationID: String, guard writeGuard: WriteGuard
    ) async throws -> [Int64] {
        let preparedConversation = try conversation.map(Self.prepared)
        let preparedMessages = try messages.map(Self.prepared)
        do {
            return try await write { db in
                try Self.check(writeGuard, db)
                if let preparedConversation { try ChatLogStore.insert(preparedConversation, db) }
                guard let seq = try Int64.fetchOne(db, sql: "SELECT seq FROM conversations WHERE id = ?", arguments: [conversationID]) else {
                    throw ChatLogError.conversationNotFound(conversationID)
                }
                let first = try Int64.fetchOne(
                    db, sql: "SELECT coalesce(max(position) + 1, 0) FROM messages WHERE conversation_seq = ?", arguments: [seq]) ?? 0
                try ChatLogStore.insert(preparedMessages, conversationSeq: seq, db)
                return (0..<Int64(preparedMessages.count)).map { first + $0 }
            }
        } catch let conflict as StorageConflict {
            throw conflict
        } catch {
            throw ChatLogError.wrap(error)
        }
    }

    /// Inside the IMMEDIATE transaction (the write lock is held: nothing changes under it).
    static func check(_ writeGuard: WriteGuard, _ db: Database) throws {
        let stored = try Data.fetchOne(db.cachedStatement(sql: "SELECT value FROM chatlog_meta WHERE name = 'master_check'"))
        guard let stored, writeGuard.acceptedCheckValues.contains(stored) else { throw StorageConflict.masterKeyChanged }
        var data: Int64?
        var index: Int64?
        for row in try Row.fetchAll(db.cachedStatement(sql: "SELECT kind, id FROM keys WHERE state = 'active'")) {
            switch try row.decode(String.self, forColumn: "kind") {
            case "data": data = try row.decode(forColumn: "id")
            case "index": index = try row.decode(forColumn: "id")
            default: break
            }
        }
        guard data == writeGuard.activeDataKeyID, index == writeGuard.activeIndexKeyID else { throw StorageConflict.staleKeys }
    }

    static func keyID(_ value: Int64, _ what: String) throws(ChatLogError) -> KeyID {
        guard let raw = UInt32(exactly: value) else { throw .invalidInput("\(what) key id \(value) is not a key id") }
        return KeyID(rawValue: raw)
    }

    static func prepared(_ row: SealedConversationRow) throws(ChatLogError) -> PreparedConversation {
        guard let id = ConversationID(row.id) else { throw .invalidInput("conversation id is not a UUID") }
        return PreparedConversation(
            id: id, createdAt: row.createdAt, keyID: try keyID(row.keyID, "a conversation's"), title: row.title, subject: row.subject,
            subjectToken: row.subjectToken, subjectKeyID: try row.subjectKeyID.map { (value) throws(ChatLogError) in try keyID(value, "a subject's") },
            metadata: row.metadata)
    }

    /// A conversation with its messages as a copy (or an import through the seam) writes them as
    /// bytes: under the subject key its sealed subject's header names (`erasure_key_id`, as
    /// PostgreSQL's generated column reads it), and its messages with it.
    static func prepared(_ copy: ConversationCopy) throws(ChatLogError) -> (conversation: PreparedConversation, messages: [PreparedMessage]) {
        var conversation = try prepared(copy.conversation)
        conversation.sealedUnderSubjectKey = copy.conversation.subject.flatMap(SealedValue.subjectKeyID)
        let subjectKey = conversation.erasureKeyID
        let messages = try copy.messages.map { (row) throws(ChatLogError) in
            var message = try prepared(row)
            message.subjectKeyID = subjectKey
            return message
        }
        return (conversation, messages)
    }

    static func prepared(_ row: SealedMessageRow) throws(ChatLogError) -> PreparedMessage {
        guard let id = MessageID(row.id) else { throw .invalidInput("message id is not a UUID") }
        guard let role = Role(rawValue: row.role) else { throw .invalidInput("unknown role") }
        guard let indexKey = row.indexKeyID else { throw .invalidInput("a message to insert has no index key") }
        // The range every writer accepts (the running maximum of migration 0011 never overflows).
        guard abs(row.createdAt) < SearchIndex.millisecondsLimit else {
            throw .invalidInput("a message's createdAt must be between the years 1691 and 2248")
        }
        func int(_ value: Int64?) -> Int? { value.map { Int(truncatingIfNeeded: $0) } }
        return PreparedMessage(
            id: id, role: role, createdAt: row.createdAt, model: row.model, promptTokens: int(row.promptTokens),
            completionTokens: int(row.completionTokens), latencyMilliseconds: int(row.latencyMilliseconds), finishReason: row.finishReason,
            keyID: try keyID(row.keyID, "a message's"), content: row.content, metadata: row.metadata, terms: document(row.terms),
            indexKeyID: try keyID(indexKey, "a message's index"))
    }

    /// The FTS5 document of term values: their base32 texts, space-separated.
    static func document(_ terms: [UInt64]) -> String {
        terms.map { TokenBlinder.encode($0, characters: TokenBlinder.defaultBits / 5) }.joined(separator: " ")
    }

    /// Deletes in one IMMEDIATE transaction and merges the FTS5 index in it (docs/ARCHITECTURE.md
    /// §10, "Deleting from the search index"). A contentless FTS5 table forgets a row only when
    /// told its terms: `terms` (the core: open, re-blind) gives them, and for a message it cannot
    /// open they are read back from the index itself.
    package func deleteConversations(_ ids: [String], terms: @escaping @Sendable (SealedMessageRow) -> [UInt64]?) async throws(ChatLogError)
        -> Int
    {
        guard !ids.isEmpty else { return 0 }
        return try await writeMapped { db in try Self.deleteConversations(ids, terms: terms, db) }
    }

    /// The body of ``deleteConversations(_:terms:)``, inside its IMMEDIATE transaction.
    static func deleteConversations(_ ids: [String], terms: (SealedMessageRow) -> [UInt64]?, _ db: Database) throws -> Int {
        var deleted = 0
        let forget = try db.cachedStatement(sql: "INSERT INTO message_terms (message_terms, rowid, terms) VALUES ('delete', ?, ?)")
        var unreadable = Set<Int64>()
        var forgotAny = false
        for id in ids {
            guard let seq = try Int64.fetchOne(db, sql: "SELECT seq FROM conversations WHERE id = ?", arguments: [id]) else { continue }
            let rows = try Row.fetchAll(
                db,
                sql: """
                    SELECT \(Self.messageColumns) FROM messages m JOIN conversations c ON c.seq = m.conversation_seq
                    WHERE m.conversation_seq = ? AND m.index_key_id IS NOT NULL
                    """, arguments: [seq])
            for row in rows {
                let rowID: Int64 = try row.decode(forColumn: "seq")
                if let found = terms(try Self.message(row)) {
                    try forget.execute(arguments: [rowID, Self.document(found)])
                    forgotAny = true
                } else {
                    unreadable.insert(rowID)
                }
            }
            try db.execute(sql: "DELETE FROM conversations WHERE seq = ?", arguments: [seq])
            deleted += 1
        }
        for (rowID, found) in try SearchIndex.indexedTerms(of: unreadable, db) {
            try forget.execute(arguments: [rowID, found.joined(separator: " ")])
            forgotAny = true
        }
        if forgotAny { try SearchIndex.markScrubPending(db) }
        if try SearchIndex.scrubPending(db) { try SearchIndex.scrub(db) }
        return deleted
    }

    // MARK: - Reads

    static let messageColumns = """
        m.seq, m.id, c.id AS conversation_id, m.position, m.role, m.created_at, m.model, m.prompt_tokens, m.completion_tokens,
        m.latency_ms, m.finish_reason, m.key_id, m.content, m.metadata, m.index_key_id
        """

    static func message(_ row: Row) throws -> SealedMessageRow {
        SealedMessageRow(
            id: row.storedText("id") ?? "", conversationID: row.storedText("conversation_id") ?? "", position: try row.decode(forColumn: "position"),
            role: row.storedText("role") ?? "", createdAt: try row.decode(forColumn: "created_at"), model: try row.decode(forColumn: "model"),
            promptTokens: try row.decode(forColumn: "prompt_tokens"), completionTokens: try row.decode(forColumn: "completion_tokens"),
            latencyMilliseconds: try row.decode(forColumn: "latency_ms"), finishReason: try row.decode(forColumn: "finish_reason"),
            keyID: try row.decode(forColumn: "key_id"), content: row.sealedBytes("content") ?? Data(), metadata: row.sealedBytes("metadata"),
            indexKeyID: try row.decode(forColumn: "index_key_id"), terms: [])
    }

    package func conversation(id: String) async throws(ChatLogError) -> SealedConversationRow? {
        try await read { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT * FROM conversations WHERE id = ?", arguments: [id]) else { return nil }
            return SealedConversationRow(
                id: row.storedText("id") ?? "", createdAt: try row.decode(forColumn: "created_at"), updatedAt: try row.decode(forColumn: "updated_at"),
                keyID: try row.decode(forColumn: "key_id"), title: row.sealedBytes("title"), subject: row.sealedBytes("subject"),
                subjectToken: row.sealedBytes("subject_token"), subjectKeyID: try row.decode(forColumn: "subject_key_id"),
                metadata: row.sealedBytes("metadata"))
        }
    }

    package func messages(ofConversation id: String) async throws(ChatLogError) -> [SealedMessageRow] {
        try await read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT \(Self.messageColumns) FROM messages m JOIN conversations c ON c.seq = m.conversation_seq
                    WHERE c.id = ? ORDER BY m.position
                    """, arguments: [id]
            ).map(Self.message)
        }
    }

    /// FTS5 answers the conjunction (`(a OR b) AND c`, terms are base32 words) in its row id
    /// order, which is seq order (migration 0011). The page is the `limit` best candidates by
    /// (created_at, seq) below the cursor, read newest inserted first until a candidate's running
    /// maximum (created_at + time_lag: no message with a smaller seq was created later) shows that
    /// nothing unread can enter the page. A store logged in time order stops right after the page;
    /// each page scans again from the newest row (this reference backend pages by rescanning; the
    /// store's own search reads once, ChatLogStore.execute).
    package func searchCandidates(required: [[UInt64]], after cursor: MessageCursor?, limit: Int) async throws(ChatLogError)
        -> [SearchCandidate]
    {
        guard !required.isEmpty, required.allSatisfy({ !$0.isEmpty }), limit > 0 else { return [] }
        let characters = TokenBlinder.defaultBits / 5
        let match = required.map { group in
            "(" + Set(group).sorted().map { TokenBlinder.encode($0, characters: characters) }.joined(separator: " OR ") + ")"
        }.joined(separator: " AND ")
        let after = cursor.map { SearchOrderKey(createdAt: $0.createdAt, seq: $0.order) }
        return try await read { db in
            let scan = try Row.fetchCursor(
                db,
                sql: """
                    SELECT m.seq, m.created_at, m.time_lag FROM message_terms t JOIN messages m ON m.seq = t.rowid
                    WHERE message_terms MATCH ? ORDER BY t.rowid DESC
                    """, arguments: [match])
            var page: [SearchOrderKey] = []  // descending
            while let row = try scan.next() {
                let createdAt: Int64 = try row.decode(atIndex: 1)
                let bound = SearchOrderKey.runningMaximum(createdAt: createdAt, timeLag: try row.decode(atIndex: 2))
                if page.count == limit, bound <= page[limit - 1].createdAt { break }
                let key = SearchOrderKey(createdAt: createdAt, seq: try row.decode(atIndex: 0))
                if let after, key >= after { continue }
                if page.count == limit, key < page[limit - 1] { continue }
                var slot = page.count
                while slot > 0, page[slot - 1] < key { slot -= 1 }
                page.insert(key, at: slot)
                if page.count > limit { page.removeLast() }
            }
            guard !page.isEmpty else { return [] }
            let rows = try Row.fetchAll(
                db,
                sql: """
                    SELECT \(Self.messageColumns) FROM messages m JOIN conversations c ON c.seq = m.conversation_seq
                    WHERE m.seq IN (\(page.map { _ in "?" }.joined(separator: ",")))
                    """, arguments: StatementArguments(page.map(\.seq))
            ).reduce(into: [Int64: Row]()) { $0[try $1.decode(Int64.self, forColumn: "seq")] = $1 }
            return try page.compactMap { key -> SearchCandidate? in
                guard let row = rows[key.seq] else { return nil }
                return SearchCandidate(message: try Self.message(row), cursor: MessageCursor(createdAt: key.createdAt, order: key.seq))
            }
        }
    }

    package func conversationIDs(seqs: [Int64]) async throws(ChatLogError) -> [Int64: String] {
        guard !seqs.isEmpty else { return [:] }
        return try await read { db in
            try Row.fetchAll(db, sql: "SELECT seq, id FROM conversations WHERE seq IN (SELECT value FROM json_each(?))", arguments: [ChatLogStore.jsonArray(seqs)])
                .reduce(into: [Int64: String]()) { $0[$1[0]] = $1[1] }
        }
    }

    package func documentFrequencies(_ terms: [UInt64]) async throws(ChatLogError) -> [UInt64: Int] {
        guard !terms.isEmpty else { return [:] }
        let characters = TokenBlinder.defaultBits / 5
        return try await read { db in
            var counts: [UInt64: Int] = [:]
            let statement = try db.cachedStatement(sql: "SELECT doc FROM message_terms_vocab WHERE term = ?")
            for term in Set(terms) {
                counts[term] = try Int.fetchOne(statement, arguments: [TokenBlinder.encode(term, characters: characters)]) ?? 0
            }
            return counts
        }
    }

    package func counts() async throws(ChatLogError) -> StorageCounts {
        try await read { db in
            let row = try Row.fetchOne(db, sql: "SELECT (SELECT count(*) FROM conversations) AS c, (SELECT count(*) FROM messages) AS m")
            return StorageCounts(conversations: try row?.decode(forColumn: "c") ?? 0, messages: try row?.decode(forColumn: "m") ?? 0)
        }
    }
    package func conversations(_ filter: ConversationFilter, after cursor: MessageCursor?, limit: Int) async throws(ChatLogError)
        -> [ListedConversation]
    {
        var clauses = ["1"]
        var arguments: StatementArguments = []
        if let since = filter.since {
            clauses.append("c.created_at >= ?")
            arguments += [since]
        }
        if let until = filter.until {
            clauses.append("c.created_at < ?")
            arguments += [until]
        }
        if let tokens = filter.subjectTokens {
            clauses.append("c.subject_token IN (\(tokens.map { _ in "?" }.joined(separator: ",")))")
            arguments += StatementArguments(tokens)
            if tokens.isEmpty { clauses.append("0") }
        }
        if let model = filter.model {
            clauses.append("EXISTS (SELECT 1 FROM messages m WHERE m.conversation_seq = c.seq AND m.model = ?)")
            arguments += [model]
        }
        let (after, direction) = filter.oldestFirst ? (">", "") : ("<", " DESC")
        if let cursor {
            clauses.append("(c.created_at \(after) ? OR (c.created_at = ? AND c.seq \(after) ?))")
            arguments += [cursor.createdAt, cursor.createdAt, cursor.order]
        }
        arguments += [max(0, limit)]
        let bound = arguments
        let sql = """
            SELECT c.*, (SELECT count(*) FROM messages m WHERE m.conversation_seq = c.seq) AS message_count FROM conversations c
            WHERE \(clauses.joined(separator: " AND ")) ORDER BY c.created_at\(direction), c.seq\(direction) LIMIT ?
            """
        return try await read { db in
            try Row.fetchAll(db, sql: sql, arguments: bound).map { row in
                let conversation = SealedConversationRow(
                    id: row.storedText("id") ?? "", createdAt: try row.decode(forColumn: "created_at"), updatedAt: try row.decode(forColumn: "updated_at"),
                    keyID: try row.decode(forColumn: "key_id"), title: row.sealedBytes("title"), subject: row.sealedBytes("subject"),
                    subjectToken: row.sealedBytes("subject_token"), subjectKeyID: try row.decode(forColumn: "subject_key_id"),
                    metadata: row.sealedBytes("metadata"))
                return ListedConversation(
                    row: conversation, messageCount: try row.decode(forColumn: "message_count"),
                    cursor: MessageCursor(createdAt: conversation.createdAt, order: try row.decode(forColumn: "seq")))
            }
        }
    }

    /// From the counters of migration 0007 (no scan).
    package func keyUsage() async throws(ChatLogError) -> [Int64: Int] {
        try await read { db in
            try Row.fetchAll(db, sql: ChatLogStore.keyUsageSQL).reduce(into: [Int64: Int]()) {
                $0[try $1.decode(Int64.self, forColumn: "key_id")] = try $1.decode(Int.self, forColumn: "row_count")
            }
        }
    }

    package func ids(_ table: IDTable, _ range: IDRange, limit: Int) async throws(ChatLogError) -> [String] {
        // Every id character sorts below "~": [prefix, prefix + "~") holds the ids starting with it.
        let (condition, order, arguments): (String, String, StatementArguments) =
            switch range {
            case .startingWith(let prefix): ("id >= ? AND id < ?", "id", [prefix, prefix + "~"])
            case .before(let id): ("id < ?", "id DESC", [id])
            case .after(let id): ("id > ?", "id", [id])
            }
        return try await read { db in
            try String.fetchAll(
                db, sql: "SELECT id FROM \(table.rawValue) WHERE \(condition) ORDER BY \(order) LIMIT ?", arguments: arguments + [max(0, limit)])
        }
    }

    /// Read back from the FTS5 index (one pass over its pairs: slow on a large store; `chatlog
    /// copy` from SQLite streams the whole index once instead).
    package func messageTerms(ofConversation id: String) async throws(ChatLogError) -> [String: [UInt64]] {
        let characters = TokenBlinder.defaultBits / 5
        return try await read { db in
            let rows = try Row.fetchAll(
                db,
                sql: "SELECT m.id, m.seq, m.index_key_id FROM messages m JOIN conversations c ON c.seq = m.conversation_seq WHERE c.id = ?",
                arguments: [id])
            var ids: [Int64: String] = [:]
            for row in rows where row["index_key_id"] as Int64? != nil { ids[row["seq"]] = row["id"] }
            var terms: [String: [UInt64]] = [:]
            for row in rows { terms[row["id"]] = [] }
            for (rowID, texts) in try SearchIndex.indexedTerms(of: Set(ids.keys), db) {
                guard let message = ids[rowID] else { continue }
                terms[message] = texts.compactMap { text in Array(text.utf8).withUnsafeBytes { TokenBlinder.decode($0, characters: characters) } }
            }
            return terms
        }
    }

    package var addsTermsLater: Bool { false }

    package var relevancePageSize: Int { 1_000 }

    package func addTerms(_ pairs: [(messageID: String, term: UInt64)]) async throws(ChatLogError) {
        throw .invalidInput("a SQLite store's search index takes a message's terms only with the message")
    }

    package func termPairCount() async throws(ChatLogError) -> Int {
        try await read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM message_terms_instance") ?? 0 }
    }

    /// Not used by the store (which runs its SQLite statistics itself); for the shared suites.
    package func stats(by grouping: StatsGrouping?, since: Int64?, until: Int64?) async throws(ChatLogError) -> [StatsRow] {
        throw .invalidInput("SQLiteStorage.stats: use ChatLogStore.stats on a SQLite store")
    }

    package func conversationCopies(_ ids: [String], withTerms: Bool) async throws(ChatLogError) -> [String: ConversationCopy] {
        guard !ids.isEmpty else { return [:] }
        var copies: [String: ConversationCopy] = [:]
        for id in ids {
            guard let conversation = try await conversation(id: id) else { continue }
            var messages = try await messages(ofConversation: id)
            if withTerms {
                let terms = try await messageTerms(ofConversation: id)
                for index in messages.indices { messages[index].terms = terms[messages[index].id] ?? [] }
            }
            copies[id] = ConversationCopy(conversation: conversation, messages: messages)
        }
        return copies
    }

    package func insertCopies(_ copies: [ConversationCopy], guard writeGuard: WriteGuard) async throws {
        let prepared = try copies.map { copy in
            let (conversation, messages) = try Self.prepared(copy)
            return (conversation, copy.conversation.updatedAt, messages)
        }
        do {
            try await write { db in
                try Self.check(writeGuard, db)
                for (conversation, updatedAt, messages) in prepared {
                    try ChatLogStore.insert(conversation, db)
                    try ChatLogStore.insert(messages, into: conversation.id, db)
                    try db.execute(sql: "UPDATE conversations SET updated_at = ? WHERE id = ?", arguments: [updatedAt, conversation.id.rawValue])
                }
            }
        } catch let conflict as StorageConflict {
            throw conflict
        } catch {
            throw ChatLogError.wrap(error)
        }
    }

    package func beginTermLoad() async throws(ChatLogError) -> Bool { false }

    package func endTermLoad() async throws(ChatLogError) {}

    // MARK: Key jobs: a SQLite store runs its own (KeyRotation.swift, MasterKeyRewrap.swift), with
    // its counters, FTS5 index and scrub; these seam operations are PostgreSQL's.

    package func rowsToRotate(
        _ kind: KeyStatus.Entry.Kind, otherThan active: Int64, skipping: Set<String>, after cursor: RotationCursor, limit: Int
    ) async throws(ChatLogError) -> (messages: [SealedMessageRow], conversations: [SealedConversationRow], next: RotationCursor) {
        throw .invalidInput("SQLiteStorage.rowsToRotate: a SQLite store rotates with ChatLogStore.rotateDataKey/rotateIndexKey")
    }

    package func rewrite(_ rewrites: [RowRewrite], guard: WriteGuard) async throws -> Int {
        throw ChatLogError.invalidInput("SQLiteStorage.rewrite: a SQLite store rotates with ChatLogStore.rotateDataKey/rotateIndexKey")
    }

    package func replaceKeys(
        _ rows: [StoredKeyRow], expected: [StoredKeyRow], checkValues: [Data], meta: [String: MetaValue?], expectedMeta: [String: MetaValue?]
    ) async throws {
        throw ChatLogError.invalidInput("SQLiteStorage.replaceKeys: a SQLite store changes keys with ChatLogStore's key jobs")
    }

    package func orphanTerms(delete: Bool) async throws(ChatLogError) -> Int {
        throw .invalidInput("SQLiteStorage.orphanTerms: a SQLite store's verify finds stale index rows itself")
    }

    package func deleteMessages(_ ids: [String]) async throws(ChatLogError) -> Int {
        throw .invalidInput("SQLiteStorage.deleteMessages: a SQLite store deletes messages with ChatLogStore.deleteMessages")
    }

    // The proxy's tables: a SQLite store runs its own (Proxy/ChatLogStore+Proxy.swift, +ProxyTokens.swift).

    package func proxyThreads(_ digests: [Data]) async throws(ChatLogError) -> [Data: String] { throw Self.proxyOnStore }
    package func insertProxyRecords(_ records: [ProxyRecordRows], guard: WriteGuard) async throws { throw Self.proxyOnStore }
    package func createProxyToken(name: String, hash: Data, indexKeyID: Int64, createdAt: Int64) async throws(ChatLogError) -> Bool {
        throw Self.proxyOnStore
    }
    package func proxyTokens() async throws(ChatLogError) -> [ProxyToken] { throw Self.proxyOnStore }
    package func revokeProxyToken(name: String, at time: Int64) async throws(ChatLogError) -> Bool { throw Self.proxyOnStore }
    package func proxyToken(hashes: [Data]) async throws(ChatLogError) -> (name: String, indexKeyID: Int64)? { throw Self.proxyOnStore }
    package func rehashProxyToken(name: String, hash: Data, indexKeyID: Int64) async throws(ChatLogError) { throw Self.proxyOnStore }
    package func proxyTokenNamesByIndexKey() async throws(ChatLogError) -> [Int64: [String]] { throw Self.proxyOnStore }
    private static let proxyOnStore = ChatLogError.invalidInput("SQLiteStorage: a SQLite store keeps the proxy's tables through ChatLogStore")

    package func sideRows() async throws(ChatLogError) -> SideRows {
        do {
            return try await pool.read { db in
                var rows = SideRows()
                for row in try Row.fetchAll(db, sql: "SELECT i.source_hash, c.id, i.imported_at FROM imports i JOIN conversations c ON c.seq = i.conversation_seq") {
                    rows.imports.append(SideRows.Import(sourceHash: row.sealedBytes(at: 0) ?? Data(), conversationID: row[1], importedAt: row[2]))
                }
                for row in try Row.fetchAll(db, sql: "SELECT name, token_hash, index_key_id, created_at, revoked_at FROM proxy_tokens") {
                    rows.tokens.append(
                        SideRows.Token(name: row[0], hash: row.sealedBytes(at: 1) ?? Data(), indexKeyID: row[2], createdAt: row[3], revokedAt: row[4]))
                }
                for row in try Row.fetchAll(
                    db, sql: "SELECT t.digest, c.id, t.index_key_id, t.created_at FROM proxy_threads t JOIN conversations c ON c.seq = t.conversation_seq")
                {
                    rows.threads.append(SideRows.Thread(digest: row.sealedBytes(at: 0) ?? Data(), conversationID: row[1], indexKeyID: row[2], createdAt: row[3]))
                }
                return rows
            }
        } catch {
            throw .wrap(error)
        }
    }

    package func insertSideRows(_ rows: SideRows) async throws(ChatLogError) {
        do {
            try await pool.write { db in
                for item in rows.imports {
                    try db.execute(
                        sql: "INSERT OR IGNORE INTO imports (source_hash, conversation_seq, imported_at) SELECT ?, seq, ? FROM conversations WHERE id = ?",
                        arguments: [item.sourceHash, item.importedAt, item.conversationID])
                }
                for token in rows.tokens {
                    try db.execute(
                        sql: "INSERT OR IGNORE INTO proxy_tokens (name, token_hash, index_key_id, created_at, revoked_at) VALUES (?, ?, ?, ?, ?)",
                        arguments: [token.name, token.hash, token.indexKeyID, token.createdAt, token.revokedAt])
                }
                for thread in rows.threads {
                    try db.execute(
                        sql: """
                            INSERT OR IGNORE INTO proxy_threads (digest, conversation_seq, index_key_id, created_at)
                            SELECT ?, seq, ?, ? FROM conversations WHERE id = ?
                            """, arguments: [thread.digest, thread.indexKeyID, thread.createdAt, thread.conversationID])
                }
            }
        } catch {
            throw .wrap(error)
        }
    }

    /// A SQLite store backs up with `VACUUM INTO` (one read transaction); not through the seam.
    package func withSnapshot<T: Sendable>(_ body: @Sendable (any ChatLogStorage) async throws(ChatLogError) -> T) async throws(ChatLogError) -> T {
        throw .invalidInput("SQLiteStorage.withSnapshot: a SQLite store backs up with ChatLogStore.backup (VACUUM INTO)")
    }

    package func vacuum(onlyKeys: Bool) async throws(ChatLogError) {
        do { try await pool.writeWithoutTransaction { db in try db.execute(sql: "VACUUM") } } catch { throw .wrap(error) }
    }
}
