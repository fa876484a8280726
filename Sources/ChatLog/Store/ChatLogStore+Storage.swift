import Foundation

// A store on a backend behind the storage seam (PostgreSQL; docs/ARCHITECTURE.md §10, "Storage
// backends"). The core seals, blinds and opens exactly as for SQLite; the backend stores the
// sealed rows. What runs here: create and open, writes (conversations, messages, exchanges),
// transcripts, listings, short ids, search (newest and relevance), counts, key status and
// deletes. Everything else reaches ``ChatLogStore/pool`` and fails with
// ``ChatLogError/notOnThisBackend(location:what:)``.

extension ChatLogStore {
    // MARK: - Create and open

    /// Creates a store on `storage` (schema, meta, master-key check value, a data key and an
    /// index key, in one transaction). Throws ``ChatLogError/storeExists(path:)`` when it holds one.
    /// `subjectKeys`: where the store's per-subject keys are (nil: not named; a conversation with a
    /// subject is then refused with the error that says how to name it).
    package static func create(
        storage: any ChatLogStorage, key source: MasterKeySource, options: Options = Options(), subjectKeys: (any SubjectKeyRows)? = nil
    ) async throws(ChatLogError)
        -> ChatLogStore
    {
        try checkOptions(options)
        guard !options.readOnly else { throw .invalidInput("a store cannot be created read-only") }
        if case .passphrase = source.material, let (name, reason) = options.passphraseKDF.limitsProblem {
            throw .invalidInput("the passphrase KDF's \(name) \(reason)")
        }
        try await storage.migrate()
        if try await storage.isInitialized() { throw .storeExists(path: storage.location) }
        let master: MasterKey
        var meta: [String: MetaValue] = [:]
        switch source.material {
        case .key(let key):
            master = key
            meta["key_kind"] = .text("key")
        case .passphrase(let passphrase):
            let kdf = options.passphraseKDF.withFreshSalt()
            master = try kdf.deriveMasterKey(from: passphrase)
            meta["key_kind"] = .text("passphrase")
            meta["kdf_algorithm"] = .text("argon2id13")
            meta["kdf_salt"] = .blob(Data(kdf.salt))
            meta["kdf_opslimit"] = .integer(Int64(kdf.opsLimit))
            meta["kdf_memlimit"] = .integer(Int64(kdf.memLimit))
        }
        let storeID = UUIDv7.make()
        let now = Date().unixMilliseconds
        meta["store_id"] = .text(storeID)
        meta["created_at"] = .integer(now)
        meta["master_check"] = .blob(Data(master.checkValueV2))
        meta["master_fingerprint"] = .blob(Data(master.checkValue.prefix(8)))
        // Ids 1 and 2, as `chatlog init` gives on SQLite; each row authenticated under the master key.
        let keys = [(Int64(1), KeyStatus.Entry.Kind.data), (Int64(2), KeyStatus.Entry.Kind.index)].map { id, kind in
            var row = StoredKeyRow(
                id: id, kind: kind.rawValue, state: "active", createdAt: now, retiredAt: nil,
                wrapped: KeyRing.wrap(SecureBytes.random(count: 32), kind: kind, id: KeyID(rawValue: UInt32(id)), master: master), mac: nil)
            row.mac = KeyRowAuthentication.KeyRow(row).mac(master)
            return row
        }
        try await storage.initialize(meta: meta, keys: keys)
        return try await finishOpening(storage: storage, options: options, source: source, master: master, storeID: storeID, subjectKeys: subjectKeys)
    }

    /// Opens the store on `storage`, checking the master key against the stored check value.
    package static func open(
        storage: any ChatLogStorage, key source: MasterKeySource, options: Options = Options(), subjectKeys: (any SubjectKeyRows)? = nil
    ) async throws(ChatLogError)
        -> ChatLogStore
    {
        try checkOptions(options)
        // A read-only open applies no migration: it refuses a schema that is not this chatlog's.
        if options.readOnly { try await storage.requireCurrentSchema() } else { try await storage.migrate() }
        guard try await storage.isInitialized() else {
            throw .notAChatLogStore(path: storage.location, reason: "it was never fully initialised; run `chatlog init` on it")
        }
        let master: MasterKey
        switch source.material {
        case .key(let key):
            master = key
        case .passphrase(let passphrase):
            var values: [String: MetaValue] = [:]
            for name in ["kdf_algorithm", "kdf_salt", "kdf_opslimit", "kdf_memlimit"] { values[name] = try await storage.meta(name) }
            guard let kdf = try PassphraseKDF.stored(values.isEmpty ? [:] : values) else {
                throw .passphrase("this store was created with a master key, not a passphrase; set CHATLOG_MASTER_KEY or CHATLOG_MASTER_KEY_FILE")
            }
            master = try kdf.deriveMasterKey(from: passphrase)
        }
        try await checkMaster(master, origin: KeyRing.Origin(source), storage: storage)
        guard case .text(let storeID)? = try await storage.meta("store_id") else {
            throw .notAChatLogStore(path: storage.location, reason: "it has no store id")
        }
        return try await finishOpening(storage: storage, options: options, source: source, master: master, storeID: storeID, subjectKeys: subjectKeys)
    }

    private static func finishOpening(
        storage: any ChatLogStorage, options: Options, source: MasterKeySource, master: MasterKey, storeID: String,
        subjectKeys: (any SubjectKeyRows)?
    ) async throws(ChatLogError) -> ChatLogStore {
        let keyRing = try KeyRing(master: master, origin: KeyRing.Origin(source), rows: try await storage.keyRows())
        return ChatLogStore(
            path: storage.location, options: options, origin: source.origin, backend: .storage(storage), keyRing: keyRing, storeID: storeID,
            subjectKeyRows: subjectKeys)
    }

    /// The stored check value names `master` (a store on a seam backend was created with
    /// authenticated key rows: only the v2 check value is accepted), else the wrong-key error.
    private static func checkMaster(_ master: MasterKey, origin: KeyRing.Origin, storage: any ChatLogStorage) async throws(ChatLogError) {
        guard case .blob(let stored)? = try await storage.meta("master_check") else {
            throw .notAChatLogStore(path: storage.location, reason: "it has no master-key check value")
        }
        guard KeyRowAuthentication.equal(stored, master.checkValueV2) else {
            var expected = KeyFingerprint(checkValue: [UInt8](stored))
            if case .blob(let fingerprint)? = try await storage.meta("master_fingerprint"), fingerprint.count == 8 {
                expected = KeyFingerprint(checkValue: [UInt8](fingerprint))
            }
            throw origin.mismatch(expected: expected, given: master)
        }
    }

    // MARK: - Writes

    /// Seals under the keys this process believes active and hands the rows to the backend,
    /// which checks (in its own write transaction) that those keys are still the active ones and
    /// the master key still the store's: otherwise the key ring is reloaded and the rows sealed
    /// again, or the wrong-key error is thrown (another process ran `key rewrap`).
    func storageWrite<T>(
        _ storage: any ChatLogStorage, conversationID: (T) -> String,
        _ prepare: (KeyRing.Loaded) throws(ChatLogError) -> (conversation: PreparedConversation?, messages: [PreparedMessage], result: T)
    ) async throws(ChatLogError) -> T {
        try await storageWrite(storage, subjects: [], conversationID: conversationID) { (keys, _) throws(ChatLogError) in try prepare(keys) }
    }

    /// The same, with the subject keys of `subjects` (see the `subjects` form of
    /// ``storageSealedWrite(_:_:write:)``).
    func storageWrite<T>(
        _ storage: any ChatLogStorage, subjects: Set<String>, conversationID: (T) -> String,
        _ prepare: (KeyRing.Loaded, KnownSubjectKeys) throws(ChatLogError) -> (conversation: PreparedConversation?, messages: [PreparedMessage], result: T)
    ) async throws(ChatLogError) -> T {
        try await storageSealedWrite(storage, subjects: subjects, prepare) { prepared, writeGuard in
            let target = conversationID(prepared.result)
            _ = try await storage.insert(
                conversation: prepared.conversation.map(SealedConversationRow.init),
                messages: prepared.messages.map { SealedMessageRow($0, conversationID: ConversationID(trusted: target)) }, into: target,
                guard: writeGuard)
            return prepared.result
        }
    }

    /// The loop of ``storageWrite(_:conversationID:_:)`` for any sealing write: `prepare` seals
    /// under the keys believed active, `write` hands the rows to the backend with the guard; on a
    /// ``StorageConflict`` the keys are reloaded (or the master key checked) and it runs again.
    func storageSealedWrite<P, T>(
        _ storage: any ChatLogStorage, _ prepare: (KeyRing.Loaded) throws(ChatLogError) -> P,
        write: (P, WriteGuard) async throws -> T
    ) async throws(ChatLogError) -> T {
        try await storageSealedWrite(storage, subjects: [], { (keys, _) throws(ChatLogError) in try prepare(keys) }, write: write)
    }

    /// The same for rows of new conversations of `subjects`: their subject keys are looked up (and
    /// made) in the subject-key store first, and `prepare` seals under them. A key that a
    /// `forget` destroyed meanwhile (the backend refuses it in its write transaction:
    /// ``StorageConflict/forgottenSubjectKey(_:)``) is dropped and the subject gets a new one.
    func storageSealedWrite<P, T>(
        _ storage: any ChatLogStorage, subjects: Set<String>, _ prepare: (KeyRing.Loaded, KnownSubjectKeys) throws(ChatLogError) -> P,
        write: (P, WriteGuard) async throws -> T
    ) async throws(ChatLogError) -> T {
        let subjects = options.sealsUnderSubjectKeys ? subjects : []
        var known = subjects.isEmpty ? [:] : try await subjectKeyStore.keys(forSubjects: subjects, create: true)
        var refused: Set<KeyID> = []
        for _ in 0..<10 {
            let keys = keyRing.current
            let prepared = try prepare(keys, known)
            let writeGuard = WriteGuard(
                acceptedCheckValues: [Data(keyRing.master.checkValueV2)], activeDataKeyID: Int64(keys.activeDataKey.id.rawValue),
                activeIndexKeyID: Int64(keys.activeIndexKey.id.rawValue))
            do {
                return try await write(prepared, writeGuard)
            } catch StorageConflict.staleKeys {
                try await reloadKeys(storage)
            } catch StorageConflict.masterKeyChanged {
                try await Self.checkMaster(keyRing.master, origin: keyRing.origin, storage: storage)
                // The check value is this key's again (a rewrap and its reversal): seal again.
            } catch StorageConflict.forgottenSubjectKey(let stored) {
                let id = KeyID(rawValue: UInt32(truncatingIfNeeded: stored))
                subjectKeyStore.evict([id])
                guard refused.insert(id).inserted else { throw Self.forgetInProgress }
                known = try await subjectKeyStore.keys(forSubjects: subjects, create: true)
            } catch let error as ChatLogError {
                throw error
            } catch {
                throw ChatLogError.wrap(error)
            }
        }
        // Key jobs changing the keys faster than a write can seal: say so rather than loop.
        throw .busy("the store's keys changed ten times while this write was sealed; try again")
    }

    /// Re-reads the key rows from the backend (after the master key is checked).
    func reloadKeys(_ storage: any ChatLogStorage) async throws(ChatLogError) {
        try await Self.checkMaster(keyRing.master, origin: keyRing.origin, storage: storage)
        try keyRing.reload(rows: try await storage.keyRows())
    }

    /// Before a read that blinds under every live index key (search, a subject's listing): one
    /// read of the key rows, and the full reload (check value, MACs, unwrapping) only when the
    /// live keys differ from those this handle holds (another process rotated or retired).
    func refreshKeys(_ storage: any ChatLogStorage) async throws(ChatLogError) {
        let rows = try await storage.keyRows()
        let current = keyRing.current
        var live: Set<Int64> = []
        for row in rows where row.state != "retired" { live.insert(row.id) }
        let held = Set(current.dataKeys.keys.map { Int64($0.rawValue) }).union(current.indexKeys.keys.map { Int64($0.rawValue) })
        let active = Set(rows.filter { $0.state == "active" }.map(\.id))
        guard live != held || active != [Int64(current.activeDataKey.id.rawValue), Int64(current.activeIndexKey.id.rawValue)] else { return }
        try await Self.checkMaster(keyRing.master, origin: keyRing.origin, storage: storage)
        try keyRing.reload(rows: rows)
    }

    func storageCreateConversation(_ conversation: NewConversation, _ storage: any ChatLogStorage) async throws(ChatLogError) -> ConversationID {
        var subjectKey: KeyID?
        let id = try await storageWrite(storage, subjects: Set([conversation.subject].compactMap { $0 }), conversationID: \.rawValue) {
            (keys, known) throws(ChatLogError) in
            let prepared = try prepare(conversation, keys: keys, subjectKeys: known)
            subjectKey = prepared.erasure?.id
            return (prepared, [], prepared.id)
        }
        rememberSubjectKey(subjectKey, of: id)
        return id
    }

    func storageAppend(_ messages: [NewMessage], to conversation: ConversationID, _ storage: any ChatLogStorage) async throws(ChatLogError)
        -> [MessageID]
    {
        // Sealed under the conversation's subject key, if it has one (read from its row's header).
        let subject = try await storageExistingSubjectKey(conversation, storage)
        return try await storageWrite(storage, conversationID: { _ in conversation.rawValue }) { (keys) throws(ChatLogError) in
            let prepared = try prepare(messages, keys: keys, subject: subject)
            return (nil, prepared, prepared.map(\.id))
        }
    }

    func storageLogExchange(_ exchange: ModelExchange, _ storage: any ChatLogStorage) async throws(ChatLogError) -> LoggedExchange {
        var subjects: Set<String> = []
        var existing: (id: KeyID, key: SubjectKey)?
        switch exchange.conversation {
        case .new(let new): if let subject = new.subject { subjects.insert(subject) }
        case .existing(let id): existing = try await storageExistingSubjectKey(id, storage)
        }
        var created: (id: ConversationID, subjectKey: KeyID?)?
        let logged = try await storageWrite(storage, subjects: subjects, conversationID: \.conversationID.rawValue) {
            (keys, known) throws(ChatLogError) in
            let (conversation, messages) = try prepare(exchange, keys: keys, existing: existing, subjectKeys: known)
            let id: ConversationID
            switch exchange.conversation {
            case .new:
                id = conversation!.id
                created = (id, conversation!.erasure?.id)
            case .existing(let existing): id = existing
            }
            return (conversation, messages, LoggedExchange(conversationID: id, messageIDs: messages.map(\.id)))
        }
        // The next exchange of a conversation made here needs no read of its row for its subject key.
        if let created { rememberSubjectKey(created.subjectKey, of: created.id) }
        return logged
    }

    /// Deletes conversations with their messages and search terms (one transaction). The backend
    /// is given a message's terms by re-blinding its content when its index needs them.
    func storageDelete(_ ids: [ConversationID], _ storage: any ChatLogStorage) async throws(ChatLogError) -> Int {
        try await storage.deleteConversations(ids.map(\.rawValue), terms: reblinder())
    }

    /// A deleted message's terms for a backend whose index needs them: its content opened and
    /// blinded again under its index key (nil when it cannot be opened or the key is gone).
    func reblinder() -> @Sendable (SealedMessageRow) -> [UInt64]? {
        let keys = keyRing.current
        let store = self
        return { row in
            guard let indexKeyID = row.indexKeyID, let raw = UInt32(exactly: indexKeyID), let blinder = keys.blinders[KeyID(rawValue: raw)],
                let content = try? store.openText(row.content, FieldContext(table: "messages", column: "content", rowID: row.id))
            else { return nil }
            var terms: [UInt64] = []
            blinder.forEachDistinctTerm(in: content) { terms.append($0) }
            return terms
        }
    }

    // MARK: - Reads

    /// Learns the keys that the sealed values read from the backend name and this process does
    /// not know yet (another process rotated), so that opening them needs no database.
    func ensureKeys(for sealed: [Data?], _ storage: any ChatLogStorage) async throws(ChatLogError) {
        try await ensureSubjectKeys(for: sealed)
        let known = keyRing.current
        for value in sealed {
            guard let value, let id = try? SealedValue.keyID(of: value) else { continue }
            if known.dataKeys[id] == nil, !known.retired.contains(id) {
                try await reloadKeys(storage)
                return
            }
        }
    }

    func decode(_ row: SealedConversationRow, messageCount: Int) throws(ChatLogError) -> Conversation {
        let id = row.id
        _ = try ConversationID.stored(id, table: "conversations", column: "id", seq: 0)
        func context(_ column: String) -> FieldContext { FieldContext(table: "conversations", column: column, rowID: id) }
        return Conversation(
            id: ConversationID(trusted: id), createdAt: Date(unixMilliseconds: row.createdAt), updatedAt: Date(unixMilliseconds: row.updatedAt),
            title: try row.title.map { (data) throws(ChatLogError) in try openText(data, context("title")) },
            subject: try row.subject.map { (data) throws(ChatLogError) in try openText(data, context("subject")) },
            metadata: try openJSON(row.metadata, context("metadata")), messageCount: messageCount)
    }

    func decode(_ row: SealedMessageRow) throws(ChatLogError) -> Message {
        _ = try MessageID.stored(row.id, table: "messages", column: "id", seq: 0)
        guard let role = Role(rawValue: row.role) else {
            throw .integrity(IntegrityFailure(table: "messages", column: "role", rowID: row.id, reason: .invalidUTF8))
        }
        func int(_ value: Int64?) -> Int? { value.map { Int(truncatingIfNeeded: $0) } }
        return Message(
            id: MessageID(trusted: row.id), conversationID: ConversationID(trusted: row.conversationID), position: Int(row.position), role: role,
            createdAt: Date(unixMilliseconds: row.createdAt), model: row.model, promptTokens: int(row.promptTokens),
            completionTokens: int(row.completionTokens), latencyMilliseconds: int(row.latencyMilliseconds), finishReason: row.finishReason,
            content: try openText(row.content, FieldContext(table: "messages", column: "content", rowID: row.id)),
            metadata: try openJSON(row.metadata, FieldContext(table: "messages", column: "metadata", rowID: row.id)))
    }

    func storageTranscript(_ id: ConversationID, _ storage: any ChatLogStorage, withMessages: Bool = true) async throws(ChatLogError) -> Transcript {
        guard let row = try await storage.conversation(id: id.rawValue) else { throw .conversationNotFound(id.rawValue) }
        let messages = try await storage.messages(ofConversation: id.rawValue)
        try await ensureKeys(for: [row.title, row.subject, row.metadata] + messages.flatMap { [$0.content, $0.metadata] }, storage)
        let conversation = try decode(row, messageCount: messages.count)
        guard withMessages else { return Transcript(conversation: conversation, messages: []) }
        var decoded: [Message] = []
        for message in messages { decoded.append(try decode(message)) }
        return Transcript(conversation: conversation, messages: decoded)
    }

    func storageConversations(_ query: ConversationQuery, _ storage: any ChatLogStorage) async throws(ChatLogError) -> ConversationPage {
        _ = try ConversationListPlan(query, keys: keyRing.current)  // the same validation as on SQLite
        var cursor: MessageCursor?
        if let text = query.cursor {
            let parts = text.split(separator: ".")
            guard parts.count == 2, let createdAt = Int64(parts[0]), let order = Int64(parts[1]) else { throw .invalidInput("malformed page cursor") }
            cursor = MessageCursor(createdAt: createdAt, order: order)
        }
        if query.subject != nil { try await refreshKeys(storage) }  // subject tokens under every live index key
        let filter = ConversationFilter(
            since: query.since?.unixMilliseconds, until: query.until?.unixMilliseconds,
            subjectTokens: query.subject.map { subject in keyRing.current.subjectTokens(subject) },
            model: query.model)
        let listed = try await storage.conversations(filter, after: cursor, limit: query.limit + 1)
        try await ensureKeys(for: listed.flatMap { [$0.row.title, $0.row.subject, $0.row.metadata] }, storage)
        var conversations: [Conversation] = []
        for entry in listed.prefix(query.limit) { conversations.append(try decode(entry.row, messageCount: entry.messageCount)) }
        let next = listed.count > query.limit ? listed[query.limit - 1].cursor : nil
        return ConversationPage(conversations: conversations, nextCursor: next.map { "\($0.createdAt).\($0.order)" })
    }

    func storageKeyStatus(_ storage: any ChatLogStorage) async throws(ChatLogError) -> KeyStatus {
        let usage = try await storage.keyUsage()
        var entries: [KeyStatus.Entry] = []
        for row in try await storage.keyRows() {
            entries.append(
                KeyStatus.Entry(
                    id: try KeyID.stored(row.id, table: "keys", column: "id", rowID: String(row.id)), kind: KeyStatus.Entry.Kind(rawValue: row.kind) ?? .data,
                    state: KeyStatus.Entry.State(rawValue: row.state) ?? .retired, createdAt: Date(unixMilliseconds: row.createdAt),
                    retiredAt: row.retiredAt.map(Date.init(unixMilliseconds:)), rowCount: usage[row.id] ?? 0))
        }
        return KeyStatus(masterKeyFingerprint: keyRing.master.fingerprint, masterKeySource: masterKeyOrigin, keys: entries)
    }

    // MARK: - Search

    /// The same answers as on SQLite: candidates holding every required word (a word's term
    /// under each live index key) come newest first from the backend, in pages; each is opened
    /// and checked against the real query, then the plain-column filters apply. Relevance ranks
    /// the newest ``relevanceCandidateCap`` verified candidates with BM25 over the backend's
    /// document frequencies.
    func storageSearch(
        _ text: String, filters: SearchFilters, limit: Int, offset: Int, sort: SearchSort, _ storage: any ChatLogStorage
    ) async throws(ChatLogError) -> SearchResults {
        // Blinders under every live index key (another process may have rotated since).
        try await refreshKeys(storage)
        let plan = try SearchPlan(query: text, filters: filters, limit: limit, offset: offset, sort: sort, keys: keyRing.current)
        let matcher = plan.matcher
        let blinders = plan.blinders
        // A clause of several atoms ("a OR "b c"") asks for any atom: every atom's first token is
        // a superset of the clause's matches; the check after opening is exact.
        var required: [[UInt64]] = []
        for clause in plan.query.required {
            var group = Set<UInt64>()
            if clause.count == 1 {
                for token in Set(clause[0].tokens) {
                    required.append(blinders.map { blinder in Self.termValue(blinder, token) })
                }
                continue
            }
            for atom in clause { if let token = atom.tokens.first { for blinder in blinders { group.insert(Self.termValue(blinder, token)) } } }
            required.append(Array(group))
        }
        var subjectConversations: Set<String>?
        if let subject = filters.subject {
            let tokens = keyRing.current.subjectTokens(subject)
            var ids = Set<String>()
            var cursor: MessageCursor?
            while true {
                let page = try await storage.conversations(ConversationFilter(subjectTokens: tokens), after: cursor, limit: 1_000)
                ids.formUnion(page.map(\.row.id))
                guard page.count == 1_000, let last = page.last else { break }
                cursor = last.cursor
            }
            subjectConversations = ids
        }
        let since = filters.since?.unixMilliseconds
        let until = filters.until?.unixMilliseconds
        func wanted(_ row: SealedMessageRow) -> Bool {
            if let since, row.createdAt < since { return false }
            if let until, row.createdAt >= until { return false }
            if let conversation = filters.conversation, row.conversationID != conversation.rawValue { return false }
            if let role = filters.role, row.role != role.rawValue { return false }
            if let model = filters.model, row.model != model { return false }
            if let subjectConversations, !subjectConversations.contains(row.conversationID) { return false }
            return true
        }

        let want = offset + limit
        // Filters on the conversation need every candidate's conversation id; otherwise only the
        // hits shown need one (a backend may name the conversation by seq: SearchCandidate).
        let filtersConversations = filters.conversation != nil || subjectConversations != nil
        func hit(_ row: SealedMessageRow, content: String, scan: QueryMatcher.Scan, score: Double?) throws(ChatLogError) -> SearchHit {
            SearchHit(
                messageID: try MessageID.stored(row.id, table: "messages", column: "id", seq: 0),
                conversationID: try ConversationID.stored(row.conversationID, table: "conversations", column: "id", seq: 0),
                role: Role(rawValue: row.role) ?? .user, createdAt: Date(unixMilliseconds: row.createdAt), model: row.model,
                content: content, snippet: Snippets.make(content: content, matches: matcher.positiveMatches(scan)), score: score)
        }
        func open(_ row: SealedMessageRow) throws(ChatLogError) -> String {
            try openText(row.content, FieldContext(table: "messages", column: "content", rowID: row.id))
        }

        guard sort == .relevance else {
            // Newest first: candidates are opened in order until one past the page.
            var examined = 0
            var verified: [(candidate: SearchCandidate, content: String, scan: QueryMatcher.Scan)] = []
            var cursor: MessageCursor?
            pages: while true {
                let read = try await storage.searchCandidates(required: required, after: cursor, limit: max(50, want + 1))
                try await ensureKeys(for: read.map(\.message.content), storage)
                let page = filtersConversations ? try await withConversationIDs(read, storage).compactMap { $0 } : read
                for candidate in page {
                    guard wanted(candidate.message) else { continue }
                    examined += 1
                    let content = try open(candidate.message)
                    let scan = matcher.scan(content)
                    guard matcher.matches(scan) else { continue }
                    verified.append((candidate, content, scan))
                    // One match past the page tells whether there are more.
                    if verified.count > want { break pages }
                }
                guard let last = read.last else { break }
                cursor = last.cursor
            }
            let shown = Array(verified.dropFirst(offset).prefix(limit))
            let resolved = try await withConversationIDs(shown.map(\.candidate), storage)
            var hits: [SearchHit] = []
            for (entry, candidate) in zip(shown, resolved) {
                guard let candidate else { continue }  // deleted meanwhile
                hits.append(try hit(candidate.message, content: entry.content, scan: entry.scan, score: nil))
            }
            return SearchResults(hits: hits, examined: examined, complete: true, matched: nil, more: verified.count > want)
        }

        // Relevance: the newest `relevanceCandidateCap` candidates are opened and counted (term
        // frequencies and length, no match positions), on every core, while the next page is read
        // from the backend; only the hits on the page are opened again, for their snippets.
        let pageSize = storage.relevancePageSize
        // The document frequencies and the message count are read while the candidates are
        // (another connection on PostgreSQL: counting a word's matches is a scan of its own).
        var terms: [UInt64] = []
        for token in matcher.tokens { for blinder in blinders { terms.append(token.withUnsafeBufferPointer { blinder.termValue($0) }) } }
        async let frequencies = storage.documentFrequencies(terms)
        async let total = storage.counts()
        var examined = 0
        var complete = true
        var rows: [SealedMessageRow] = []  // every candidate examined, in order
        var rowConversationSeqs: [Int64?] = []  // when the backend named a row's conversation by seq
        var counted: [RankedCandidate] = []  // those that match, by index into `rows`
        var pending = try await storage.searchCandidates(required: required, after: nil, limit: pageSize)
        while !pending.isEmpty {
            try await ensureKeys(for: pending.map(\.message.content), storage)
            let page = filtersConversations ? try await withConversationIDs(pending, storage).compactMap { $0 } : pending
            let first = rows.count
            var capped = false
            for candidate in page where wanted(candidate.message) {
                if examined >= Self.relevanceCandidateCap {
                    capped = true
                    complete = false
                    break
                }
                examined += 1
                rows.append(candidate.message)
                rowConversationSeqs.append(candidate.conversationSeq)
            }
            let cursor = pending[pending.count - 1].cursor
            async let next = capped ? [] : storage.searchCandidates(required: required, after: cursor, limit: pageSize)
            let ranked: [RankedCandidate]
            do { ranked = try await rankingCounts(rows[first...], matcher) } catch {
                _ = try? await next
                throw error
            }
            counted += ranked
            do { pending = try await next } catch let error as ChatLogError { throw error } catch {
                // `async let` drops the typed error; the backend throws only ChatLogError. Name the
                // type only: another error's description could quote what it was given.
                throw .storage("a page of search candidates could not be read (\(type(of: error)))")
            }
        }
        guard !counted.isEmpty else {
            _ = try? await (frequencies, total)
            return SearchResults(hits: [], examined: examined, complete: complete, matched: 0, more: false)
        }
        let ranking: BM25
        do {
            ranking = BM25(matcher: matcher, blinders: blinders, total: try await total.messages, frequencies: try await frequencies)
        } catch let error as ChatLogError { throw error } catch {
            throw .storage("the search's document frequencies could not be read (\(type(of: error)))")
        }
        let averageLength = Double(counted.reduce(0) { $0 + $1.length }) / Double(counted.count)
        // Highest score first; ties newest first (candidates arrived newest first).
        let order = counted.indices.map { index in
            (index, ranking.score(
                frequencies: counted[index].frequencies, positive: matcher.positive, length: counted[index].length,
                averageLength: averageLength))
        }.sorted { ($0.1, -$0.0) > ($1.1, -$1.0) }
        let shown = Array(order.dropFirst(offset).prefix(limit))
        let resolved = try await withConversationIDs(
            shown.map { SearchCandidate(message: rows[counted[$0.0].index], cursor: MessageCursor(createdAt: 0, order: 0),
                                        conversationSeq: rowConversationSeqs[counted[$0.0].index]) }, storage)
        var hits: [SearchHit] = []
        for ((_, score), candidate) in zip(shown, resolved) {
            guard let row = candidate?.message else { continue }  // deleted meanwhile
            let content = try open(row)
            hits.append(try hit(row, content: content, scan: matcher.scan(content), score: score))
        }
        return SearchResults(hits: hits, examined: examined, complete: complete, matched: counted.count, more: counted.count > want)
    }

    /// `candidates` with the conversation ids a backend left out (``SearchCandidate/conversationSeq``)
    /// filled in, in order; nil for one whose conversation no longer exists (deleted since the
    /// candidates were read).
    func withConversationIDs(_ candidates: [SearchCandidate], _ storage: any ChatLogStorage) async throws(ChatLogError) -> [SearchCandidate?] {
        let missing = candidates.compactMap { $0.message.conversationID.isEmpty ? $0.conversationSeq : nil }
        guard !missing.isEmpty else { return candidates }
        let ids = try await storage.conversationIDs(seqs: missing)
        return candidates.map { candidate in
            guard candidate.message.conversationID.isEmpty, let seq = candidate.conversationSeq else { return candidate }
            guard let id = ids[seq] else { return nil }
            var resolved = candidate
            resolved.message.conversationID = id
            return resolved
        }
    }

    /// A verified relevance candidate: what BM25 needs of it, and its place among the candidates.
    struct RankedCandidate: Sendable {
        let index: Int
        let frequencies: [Int]
        let length: Int
    }

    /// Opens and counts candidates in chunks on the cooperative pool (one per core at a time), in
    /// their order; those that do not match the query are left out. The keys were loaded first
    /// (``ensureKeys(for:_:)``).
    func rankingCounts(_ rows: ArraySlice<SealedMessageRow>, _ matcher: QueryMatcher) async throws(ChatLogError) -> [RankedCandidate] {
        let chunkSize = 256
        let chunks = stride(from: rows.startIndex, to: rows.endIndex, by: chunkSize).map { rows[$0..<min($0 + chunkSize, rows.endIndex)] }
        let results = await withTaskGroup(of: (Int, Result<[RankedCandidate], ChatLogError>).self) { group in
            for (index, chunk) in chunks.enumerated() {
                group.addTask { (index, Result { () throws(ChatLogError) in try self.rankingCountsOfChunk(chunk, matcher) }) }
            }
            var results = [Result<[RankedCandidate], ChatLogError>?](repeating: nil, count: chunks.count)
            for await (index, result) in group { results[index] = result }
            return results
        }
        var ranked: [RankedCandidate] = []
        for result in results { ranked += try result!.get() }
        return ranked
    }

    private func rankingCountsOfChunk(_ rows: ArraySlice<SealedMessageRow>, _ matcher: QueryMatcher) throws(ChatLogError) -> [RankedCandidate] {
        var ranked: [RankedCandidate] = []
        for (index, row) in zip(rows.indices, rows) {
            let context = FieldContext(table: "messages", column: "content", rowID: row.id)
            let plaintext = try openSealed(row.content, context, db: nil)
            let counts = plaintext.withUnsafeBufferPointer { text in
                matcher.rankingCounts(utf8: text) ?? {
                    let scan = matcher.asciiScan(utf8: text) ?? matcher.scan(utf8: text)
                    return (matcher.matches(scan), matcher.frequencies(scan), scan.tokenCount)
                }()
            }
            if counts.matches { ranked.append(RankedCandidate(index: index, frequencies: counts.frequencies, length: counts.length)) }
        }
        return ranked
    }

    static func termValue(_ blinder: TokenBlinder, _ token: String) -> UInt64 {
        var token = token
        return token.withUTF8 { blinder.termValue($0) }
    }

    static func checkOptions(_ options: Options) throws(ChatLogError) {
        guard (1...4096).contains(options.paddingBlock) else {
            throw .invalidInput("the padding block must be between 1 and 4096 bytes")
        }
        guard options.busyTimeout >= 0 else { throw .invalidInput("the busy timeout must not be negative") }
    }
}
