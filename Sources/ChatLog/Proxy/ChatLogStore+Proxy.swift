import Foundation
import GRDB

/// Keyed digests for conversation threading (the logging proxy, docs/ARCHITECTURE.md §10): one
/// chain per index key the store holds, so that a conversation logged before an index key
/// rotation is still found until the old key is retired. New digests are written under the
/// active key only.
public struct ThreadDigests: Sendable {
    /// Per index key: the digest of each prefix of the sequence (`[i]` covers items `0...i`).
    let chains: [(keyID: KeyID, digests: [Data])]
    let activeKeyID: KeyID

    /// How many items the sequence had.
    public var count: Int { chains.first?.digests.count ?? 0 }

    /// Every digest (under every key) of the prefixes of these lengths, with its length.
    public func candidates(lengths: [Int]) -> [(Data, Int)] {
        chains.flatMap { chain in
            lengths.compactMap { length in length >= 1 && length <= chain.digests.count ? (chain.digests[length - 1], length) : nil }
        }
    }

    /// The digest under the active key of the first `length` items (length ≥ 1), to record.
    public func active(length: Int) -> ThreadDigest? {
        guard length >= 1, let chain = chains.first(where: { $0.keyID == activeKeyID }), length <= chain.digests.count else {
            return nil
        }
        return ThreadDigest(digest: chain.digests[length - 1], indexKeyID: activeKeyID)
    }
}

/// One digest to record, pointing at a conversation.
public struct ThreadDigest: Sendable, Hashable {
    let digest: Data
    let indexKeyID: KeyID
    /// The digest's bytes, for in-memory maps of digests not yet committed (never stored elsewhere).
    public var bytes: Data { digest }
}

/// Threading state kept as the chain is extended: lets a caller add items (the completion) to a
/// digest chain without recomputing the prefix.
public struct ThreadChainer: Sendable {
    let keys: [(KeyID, IndexKey)]
    let activeKeyID: KeyID

    static let tag = "chatlog/v1/proxy-thread"
    static let responseTag = "chatlog/v1/proxy-response"

    /// Digests of every prefix of `items` in `scope` (the app and subject, so that two apps or two
    /// users who send the same words are not threaded together).
    public func chain(scope: String, items: [String]) -> ThreadDigests {
        extend(ThreadDigests(chains: [], activeKeyID: activeKeyID), scope: scope, with: items)
    }

    /// The chain extended by more items (e.g. the completion), under the same keys.
    public func extend(_ digests: ThreadDigests, scope: String, with items: [String]) -> ThreadDigests {
        ThreadDigests(
            chains: keys.map { id, key in
                var chain = digests.chains.first(where: { $0.keyID == id })?.digests ?? []
                chain.reserveCapacity(chain.count + items.count)
                var previous = chain.last ?? Self.hash(key, KeyDerivation.lengthPrefixed([Self.tag, scope]))
                for item in items {
                    var message = Array(previous)
                    message += KeyDerivation.lengthPrefixed([item])
                    previous = Self.hash(key, message)
                    chain.append(previous)
                }
                return (id, chain)
            }, activeKeyID: activeKeyID)
    }

    /// Digests of a Responses API response id (`previous_response_id`), one per index key.
    public func response(_ id: String) -> ThreadDigests {
        ThreadDigests(
            chains: keys.map { keyID, key in (keyID, [Self.hash(key, KeyDerivation.lengthPrefixed([Self.responseTag, id]))]) },
            activeKeyID: activeKeyID)
    }

    static func hash(_ key: IndexKey, _ message: [UInt8]) -> Data {
        var output = Data(count: 32)
        key.withUnsafeBytes { keyBytes in
            message.withUnsafeBytes { messageBytes in
                output.withUnsafeMutableBytes { Sodium.keyedHash(key: keyBytes, message: messageBytes, into: $0) }
            }
        }
        return output
    }
}

/// One exchange logged by the proxy: the messages and where they go. The conversation is
/// created with `conversation`'s fields (and id) when it does not exist, and appended to when
/// it does; the digests then point at it.
public struct ProxyRecord: Sendable {
    public var conversation: NewConversation
    public var messages: [NewMessage]
    public var digests: [ThreadDigest]

    /// `conversation.id` must be set (the proxy tells the client the id before logging).
    public init(conversation: NewConversation, messages: [NewMessage], digests: [ThreadDigest]) {
        self.conversation = conversation
        self.messages = messages
        self.digests = digests
    }
}

extension ChatLogStore {
    /// The current index keys, for computing thread digests outside any transaction.
    public func threadChainer() -> ThreadChainer {
        let keys = keyRing.current
        let ordered = keys.indexKeys.sorted { $0.key > $1.key }.filter { !keys.retired.contains($0.key) }
        return ThreadChainer(keys: ordered.map { ($0.key, $0.value) }, activeKeyID: keys.activeIndexKey.id)
    }

    /// The longest prefix of a chain that a logged exchange recorded: its length and conversation.
    /// Only prefixes of the given lengths are looked for, when given.
    public func findThread(_ digests: ThreadDigests, lengths: [Int]? = nil) async throws(ChatLogError)
        -> (length: Int, conversation: ConversationID)?
    {
        let candidates = digests.candidates(lengths: lengths ?? Array(1...max(1, digests.count)))
        guard !candidates.isEmpty else { return nil }
        let lengths = Dictionary(candidates, uniquingKeysWith: max)
        if let storage {
            var best: (length: Int, conversation: ConversationID)?
            for (digest, id) in try await storage.proxyThreads(Array(lengths.keys)) {
                guard let length = lengths[digest], let id = ConversationID(id) else { continue }
                if length > (best?.length ?? 0) { best = (length, id) }
            }
            return best
        }
        return try await read { db in
            var best: (length: Int, conversation: ConversationID)?
            // In slices, well under SQLite's limit on bound parameters.
            let all = Array(lengths.keys)
            for start in stride(from: 0, to: all.count, by: 500) {
                let slice = Array(all[start..<min(start + 500, all.count)])
                let rows = try Row.fetchAll(
                    db,
                    sql: """
                        SELECT t.digest, c.id FROM proxy_threads t JOIN conversations c ON c.seq = t.conversation_seq
                        WHERE t.digest IN (\(slice.map { _ in "?" }.joined(separator: ",")))
                        """, arguments: StatementArguments(slice))
                for row in rows {
                    let digest: Data = row[0]
                    guard let length = lengths[digest], let id = ConversationID(row[1] as String) else { continue }
                    if length > (best?.length ?? 0) { best = (length, id) }
                }
            }
            return best
        }
    }

    /// Whether a conversation with this id exists.
    public func conversationExists(_ id: ConversationID) async throws(ChatLogError) -> Bool {
        if let storage { return try await storage.conversation(id: id.rawValue) != nil }
        return try await read { db in try Bool.fetchOne(db, sql: "SELECT 1 FROM conversations WHERE id = ?", arguments: [id.rawValue]) ?? false }
    }

    /// Logs many proxy exchanges in one transaction (group commit). A record that cannot be
    /// prepared (too large, bad values) fails alone; the others are still written. Returns one
    /// result per record, in order.
    public func logProxyRecords(_ records: [ProxyRecord]) throws(ChatLogError) -> [Result<LoggedExchange, ChatLogError>] {
        try logProxyRecordsInSQLite(records)
    }

    private func logProxyRecordsInSQLite(_ records: [ProxyRecord]) throws(ChatLogError) -> [Result<LoggedExchange, ChatLogError>] {
        try writeSealed { (keys) throws(ChatLogError) in
            // The subjects' keys in one look-up for the whole group.
            let known = try subjectKeys(for: records.map(\.conversation))
            return records.map { record -> Result<(PreparedConversation, [PreparedMessage], [ThreadDigest]), ChatLogError> in
                do throws(ChatLogError) {
                    guard record.conversation.id != nil else { throw .invalidInput("a proxy record needs a conversation id") }
                    let conversation = try prepare(record.conversation, keys: keys, subjectKeys: known)
                    return .success((conversation, try prepare(record.messages, keys: keys, subject: conversation.erasure), record.digests))
                } catch {
                    return .failure(error)
                }
            }
        } body: { prepared, db in
            // A subject key forgotten meanwhile refuses the whole transaction (writeSealed then
            // seals again): the group's keys checked together, not once per record.
            var keys = Set<KeyID>()
            for case .success(let (conversation, _, _)) in prepared { if let id = conversation.erasureKeyID { keys.insert(id) } }
            try Self.refuseForgotten(keys, db)
            return try prepared.map { entry -> Result<LoggedExchange, ChatLogError> in
                switch entry {
                case .failure(let error): return .failure(error)
                case .success(let (conversation, messages, digests)):
                    do {
                        return .success(try Self.insertProxyRecord(conversation, messages, digests, db, forgottenChecked: true))
                    } catch let error as ChatLogError {
                        // Refused before anything of this record was written (a continued
                        // conversation of another subject): this record fails alone.
                        return .failure(error)
                    }
                }
            }
        }
    }

    /// Async form; also on PostgreSQL, where the group is one transaction and a subject's
    /// conversations are sealed under its key from the subject-key store (CHATLOG_SUBJECT_KEYS).
    public func logProxyRecords(_ records: [ProxyRecord]) async throws(ChatLogError) -> [Result<LoggedExchange, ChatLogError>] {
        guard let storage else { return try logProxyRecordsInSQLite(records) }
        // The subjects' keys in one look-up for the whole group; a key a `forget` destroyed
        // meanwhile is dropped and looked up again (a new one), as on SQLite.
        let subjects = options.sealsUnderSubjectKeys ? Set(records.compactMap(\.conversation.subject)) : []
        var known: KnownSubjectKeys = subjects.isEmpty ? [:] : try await subjectKeyStore.keys(forSubjects: subjects, create: true)
        var refused: Set<KeyID> = []
        for _ in 0..<10 {
            let keys = keyRing.current
            var results: [Result<LoggedExchange, ChatLogError>] = []
            var rows: [ProxyRecordRows] = []
            for record in records {
                do throws(ChatLogError) {
                    guard let id = record.conversation.id else { throw .invalidInput("a proxy record needs a conversation id") }
                    let conversation = try prepare(record.conversation, keys: keys, subjectKeys: known)
                    let messages = try prepare(record.messages, keys: keys, subject: conversation.erasure)
                    rows.append(
                        ProxyRecordRows(
                            conversation: SealedConversationRow(conversation), messages: messages.map { SealedMessageRow($0, conversationID: id) },
                            digests: record.digests.map { ($0.digest, Int64($0.indexKeyID.rawValue)) }))
                    results.append(.success(LoggedExchange(conversationID: id, messageIDs: messages.map(\.id))))
                } catch {
                    results.append(.failure(error))
                }
            }
            let writeGuard = WriteGuard(
                acceptedCheckValues: [Data(keyRing.master.checkValueV2)], activeDataKeyID: Int64(keys.activeDataKey.id.rawValue),
                activeIndexKeyID: Int64(keys.activeIndexKey.id.rawValue))
            do {
                try await storage.insertProxyRecords(rows, guard: writeGuard)
                return results
            } catch StorageConflict.staleKeys {
                try await reloadKeys(storage)
            } catch StorageConflict.masterKeyChanged {
                try await reloadKeys(storage)  // the wrong-key error unless it was changed back
            } catch StorageConflict.forgottenSubjectKey(let stored) {
                let id = KeyID(rawValue: UInt32(truncatingIfNeeded: stored))
                subjectKeyStore.evict([id])
                guard refused.insert(id).inserted else { throw Self.forgetInProgress }
                known = try await subjectKeyStore.keys(forSubjects: subjects, create: true)
            } catch let error as ChatLogError {
                throw error
            } catch {
                throw .wrap(error)
            }
        }
        throw .busy("the active keys kept changing while logging proxy exchanges; they are retried")
    }

    static func insertProxyRecord(
        _ conversation: PreparedConversation, _ messages: [PreparedMessage], _ digests: [ThreadDigest], _ db: Database,
        forgottenChecked: Bool
    ) throws -> LoggedExchange {
        var seq = try Int64.fetchOne(
            db.cachedStatement(sql: "SELECT seq FROM conversations WHERE id = ?"), arguments: [conversation.id.rawValue])
        if seq == nil {
            try insert(conversation, db, forgottenChecked: forgottenChecked)
            seq = db.lastInsertedRowID
        }
        guard let seq else { throw ChatLogError.conversationNotFound(conversation.id.rawValue) }
        try insert(messages, conversationSeq: seq, db)
        let now = Date().unixMilliseconds
        let statement = try db.cachedStatement(
            sql: "INSERT OR REPLACE INTO proxy_threads (digest, conversation_seq, index_key_id, created_at) VALUES (?, ?, ?, ?)")
        for digest in digests {
            try statement.execute(arguments: [digest.digest, seq, Int64(digest.indexKeyID.rawValue), now])
        }
        return LoggedExchange(conversationID: conversation.id, messageIDs: messages.map(\.id))
    }
}

extension ConversationID {
    /// A new, time-ordered conversation id (for callers that must name a conversation before it
    /// is written, like the proxy's `X-Chatlog-Conversation` response header).
    public static func generate() -> ConversationID { make() }
}

extension JSONValue {
    /// Parses JSON text (RFC 8259, as `JSONDecoder` reads it); nil when it is not valid JSON.
    public static func parse(bytes: UnsafeRawBufferPointer) -> JSONValue? {
        parse(bytes.bindMemory(to: UInt8.self))
    }

    /// Canonical JSON text (sorted keys); nil for a non-finite number.
    public func canonicalJSON() -> Data? {
        try? encoded()
    }
}
