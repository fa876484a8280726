import Foundation

// The storage seam (docs/ARCHITECTURE.md §10, "Storage backends"). What crosses it is already
// sealed or blinded: a backend stores and returns bytes, ids and numbers, never a key or
// plaintext, and it never checks a sealed value — the core opens what it reads and reports
// damage (one decoder, one meaning of damage). No transaction handle crosses it: each backend
// runs the checks a write depends on (``WriteGuard``) inside its own write transaction.
//
// `package` access: ChatLogPostgres implements it; it is not public API.

/// A value of `chatlog_meta`. SQLite keeps each with its own type; a backend keeps the type.
package enum MetaValue: Sendable, Hashable {
    case integer(Int64)
    case text(String)
    case blob(Data)
}

/// A row of the `keys` table as stored: the key material wrapped under the master key, and the
/// row's MAC (docs/FORMAT.md, "Key-row MAC").
package struct StoredKeyRow: Sendable, Hashable {
    package var id: Int64
    package var kind: String
    package var state: String
    package var createdAt: Int64
    package var retiredAt: Int64?
    package var wrapped: Data?
    package var mac: Data?

    package init(id: Int64, kind: String, state: String, createdAt: Int64, retiredAt: Int64?, wrapped: Data?, mac: Data?) {
        self.id = id
        self.kind = kind
        self.state = state
        self.createdAt = createdAt
        self.retiredAt = retiredAt
        self.wrapped = wrapped
        self.mac = mac
    }
}

/// A conversation row with its sealed fields. Ids and key ids are as stored: the core validates
/// them (``StoredID``, ``KeyID/stored(_:table:column:rowID:)``) when it reads.
package struct SealedConversationRow: Sendable, Hashable {
    package var id: String
    package var createdAt: Int64
    package var updatedAt: Int64
    package var keyID: Int64
    package var title: Data?
    package var subject: Data?
    package var subjectToken: Data?
    package var subjectKeyID: Int64?
    package var metadata: Data?

    package init(
        id: String, createdAt: Int64, updatedAt: Int64, keyID: Int64, title: Data?, subject: Data?, subjectToken: Data?,
        subjectKeyID: Int64?, metadata: Data?
    ) {
        self.id = id
        self.createdAt = createdAt
        self.updatedAt = updatedAt
        self.keyID = keyID
        self.title = title
        self.subject = subject
        self.subjectToken = subjectToken
        self.subjectKeyID = subjectKeyID
        self.metadata = metadata
    }
}

/// A message row with its sealed fields and, when written, its blinded search terms.
package struct SealedMessageRow: Sendable, Hashable {
    package var id: String
    /// The public id of its conversation.
    package var conversationID: String
    /// 0-based order in the conversation. Chosen by the backend on insert (gap-free, in the order
    /// the rows are given); the value given is ignored.
    package var position: Int64
    package var role: String
    package var createdAt: Int64
    package var model: String?
    package var promptTokens: Int64?
    package var completionTokens: Int64?
    package var latencyMilliseconds: Int64?
    package var finishReason: String?
    package var keyID: Int64
    package var content: Data
    package var metadata: Data?
    /// The index key that made ``terms`` (nil: not indexed).
    package var indexKeyID: Int64?
    /// The distinct blinded terms of the content (docs/FORMAT.md §5.1): each term's value, the
    /// SipHash's top bits (``TokenBlinder/forEachDistinctTerm(in:_:)``). Empty on reads.
    package var terms: [UInt64]

    package init(
        id: String, conversationID: String, position: Int64, role: String, createdAt: Int64, model: String?, promptTokens: Int64?,
        completionTokens: Int64?, latencyMilliseconds: Int64?, finishReason: String?, keyID: Int64, content: Data, metadata: Data?,
        indexKeyID: Int64?, terms: [UInt64]
    ) {
        self.id = id
        self.conversationID = conversationID
        self.position = position
        self.role = role
        self.createdAt = createdAt
        self.model = model
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.latencyMilliseconds = latencyMilliseconds
        self.finishReason = finishReason
        self.keyID = keyID
        self.content = content
        self.metadata = metadata
        self.indexKeyID = indexKeyID
        self.terms = terms
    }
}

/// What a sealing write depends on, checked by the backend inside its write transaction: the
/// stored master-key check value is one of `acceptedCheckValues` (else another process ran
/// `key rewrap`: ``StorageConflict/masterKeyChanged``), and the active keys are the ones the
/// rows were sealed and blinded under (else ``StorageConflict/staleKeys``: seal again).
package struct WriteGuard: Sendable, Hashable {
    package var acceptedCheckValues: [Data]
    package var activeDataKeyID: Int64
    package var activeIndexKeyID: Int64

    package init(acceptedCheckValues: [Data], activeDataKeyID: Int64, activeIndexKeyID: Int64) {
        self.acceptedCheckValues = acceptedCheckValues
        self.activeDataKeyID = activeDataKeyID
        self.activeIndexKeyID = activeIndexKeyID
    }
}

/// A write the backend refused because of its ``WriteGuard``; nothing was written.
package enum StorageConflict: Error, Sendable, Equatable {
    case masterKeyChanged
    case staleKeys
    /// A new conversation is sealed under this subject key, which a `forget` destroyed: the
    /// subject gets a new key (the write is sealed again).
    case forgottenSubjectKey(Int64)
}

/// Where a newest-first page of messages ends: (created_at, backend row order) of the last
/// message given. Opaque to the core beyond passing it back.
package struct MessageCursor: Sendable, Hashable {
    package var createdAt: Int64
    package var order: Int64

    package init(createdAt: Int64, order: Int64) {
        self.createdAt = createdAt
        self.order = order
    }
}

/// One search candidate: a message holding every required term, and its cursor.
package struct SearchCandidate: Sendable, Hashable {
    package var message: SealedMessageRow
    package var cursor: MessageCursor
    /// Set when the backend left `message.conversationID` empty and named the conversation by its
    /// internal seq instead (a join per candidate saved: most candidates of a relevance search are
    /// never shown); the core resolves the ids it needs with ``ChatLogStorage/conversationIDs(seqs:)``.
    package var conversationSeq: Int64?

    package init(message: SealedMessageRow, cursor: MessageCursor, conversationSeq: Int64? = nil) {
        self.message = message
        self.cursor = cursor
        self.conversationSeq = conversationSeq
    }
}

/// Row counts of a store.
package struct StorageCounts: Sendable, Hashable {
    package var conversations: Int
    package var messages: Int

    package init(conversations: Int, messages: Int) {
        self.conversations = conversations
        self.messages = messages
    }
}

/// Which conversations a listing wants (plain columns and blinded subject tokens only).
package struct ConversationFilter: Sendable, Hashable {
    /// created_at ≥ since, < until (Unix milliseconds).
    package var since: Int64?
    package var until: Int64?
    /// The subject's token under each live index key (any of them).
    package var subjectTokens: [Data]?
    /// At least one message of this model.
    package var model: String?
    /// Oldest first (created_at, then insertion order) instead of newest first; the cursor then
    /// continues after the last conversation in that order.
    package var oldestFirst: Bool

    package init(since: Int64? = nil, until: Int64? = nil, subjectTokens: [Data]? = nil, model: String? = nil, oldestFirst: Bool = false) {
        self.since = since
        self.until = until
        self.subjectTokens = subjectTokens
        self.model = model
        self.oldestFirst = oldestFirst
    }
}

/// A conversation of a listing: its row, how many messages it has, and where the page is.
package struct ListedConversation: Sendable, Hashable {
    package var row: SealedConversationRow
    package var messageCount: Int
    /// (created_at, backend row order), for the next page.
    package var cursor: MessageCursor

    package init(row: SealedConversationRow, messageCount: Int, cursor: MessageCursor) {
        self.row = row
        self.messageCount = messageCount
        self.cursor = cursor
    }
}

/// A conversation row with all its messages, as `chatlog copy` moves it.
package struct ConversationCopy: Sendable, Hashable {
    package var conversation: SealedConversationRow
    package var messages: [SealedMessageRow]

    package init(conversation: SealedConversationRow, messages: [SealedMessageRow]) {
        self.conversation = conversation
        self.messages = messages
    }
}

/// Which ids ``ChatLogStorage/ids(_:_:limit:)`` lists, in byte order of the id text.
package enum IDRange: Sendable, Hashable {
    /// Ids starting with the prefix, ascending.
    case startingWith(String)
    /// Ids sorting before the id, descending (the nearest first).
    case before(String)
    /// Ids sorting after the id, ascending.
    case after(String)
}

/// A table with public ids.
package enum IDTable: String, Sendable, Hashable {
    case conversations, messages
}

/// A backend of the store. Every method is one transaction (or none, for reads) of its own.
package protocol ChatLogStorage: Sendable {
    /// Where the store is, for messages (a path, or a URL without its password).
    var location: String { get }

    /// Applies the backend's schema migrations that are missing; refuses a store migrated by a
    /// newer chatlog (``ChatLogError/schemaTooNew(found:supported:)``).
    func migrate() async throws(ChatLogError)

    /// For a read-only open, which applies no migration: refuses a store migrated by a newer
    /// chatlog, and one that still needs this chatlog's migrations (a command that writes applies
    /// them), instead of failing later on a table or column it lacks.
    func requireCurrentSchema() async throws(ChatLogError)

    /// Whether `chatlog init` completed on this store (its master-key check value exists).
    func isInitialized() async throws(ChatLogError) -> Bool

    /// In one transaction: the store-wide facts and the first keys. Throws
    /// ``ChatLogError/storeExists(path:)`` when the store is initialized already.
    func initialize(meta: [String: MetaValue], keys: [StoredKeyRow]) async throws(ChatLogError)

    func meta(_ name: String) async throws(ChatLogError) -> MetaValue?

    /// Every key row, by id.
    func keyRows() async throws(ChatLogError) -> [StoredKeyRow]

    /// Runs `body` holding the store's key-job lock (rotate, rewrap, retire), released when
    /// `body` ends or the process dies; ``ChatLogError/locked(holder:path:)`` at once, naming the
    /// holder, when another job holds it.
    func withKeyJobLock<T: Sendable>(_ body: @Sendable () async throws(ChatLogError) -> T) async throws(ChatLogError) -> T

    /// In one transaction, after checking `guard`: the conversation (when new) and the messages
    /// appended to conversation `conversationID` at the next positions, with their terms.
    /// Returns the positions given. ``ChatLogError/conversationNotFound(_:)`` when it does not
    /// exist; ``StorageConflict`` when the guard fails.
    func insert(
        conversation: SealedConversationRow?, messages: [SealedMessageRow], into conversationID: String, guard: WriteGuard
    ) async throws -> [Int64]

    func conversation(id: String) async throws(ChatLogError) -> SealedConversationRow?

    /// The messages of a conversation in position order.
    func messages(ofConversation id: String) async throws(ChatLogError) -> [SealedMessageRow]

    /// Deletes the conversations, their messages and every search term of those messages, in one
    /// transaction. Returns how many conversations existed. `terms` gives a message's blinded
    /// terms when the backend's index needs them to forget it — SQLite's contentless FTS5 does;
    /// PostgreSQL's term table does not and never calls it. The core answers by opening and
    /// re-blinding the content (the key stays on the core's side); nil when it cannot (damaged, or
    /// its index key is gone), and then the backend finds the terms in its index itself.
    func deleteConversations(_ ids: [String], terms: @escaping @Sendable (SealedMessageRow) -> [UInt64]?) async throws(ChatLogError) -> Int

    /// Up to `limit` messages holding, for every element of `required`, at least one of its
    /// terms (an element lists a word's term under each live index key), newest first (by
    /// created_at, then insertion order), strictly after `cursor` when given. A backend may leave
    /// the rows' optional columns out (nil: metadata, token counts, latency, finish reason, index
    /// key): a search reads none of them. A backend may also name the conversation by seq only
    /// (``SearchCandidate/conversationSeq``).
    func searchCandidates(required: [[UInt64]], after cursor: MessageCursor?, limit: Int) async throws(ChatLogError)
        -> [SearchCandidate]

    /// The public ids of the conversations with these seqs (those that exist).
    func conversationIDs(seqs: [Int64]) async throws(ChatLogError) -> [Int64: String]

    /// How many messages hold each term.
    func documentFrequencies(_ terms: [UInt64]) async throws(ChatLogError) -> [UInt64: Int]

    /// The `limit` a relevance search asks ``searchCandidates(required:after:limit:)`` for per page.
    /// SQLite: 1,000 (each page is an index range; the next is read while this one is ranked).
    /// PostgreSQL: the whole candidate cap at once — its pages come from a GIN bitmap of every
    /// match, read again for each page, so one scan costs least.
    var relevancePageSize: Int { get }

    func counts() async throws(ChatLogError) -> StorageCounts

    /// Up to `limit` conversations matching `filter`, newest first (created_at, then insertion
    /// order; oldest first with ``ConversationFilter/oldestFirst``), strictly after `cursor` when given.
    func conversations(_ filter: ConversationFilter, after cursor: MessageCursor?, limit: Int) async throws(ChatLogError)
        -> [ListedConversation]

    /// How many rows (conversations and messages) each key id seals or indexes: `key_id`,
    /// `subject_key_id` and `index_key_id` columns counted together.
    func keyUsage() async throws(ChatLogError) -> [Int64: Int]

    /// Up to `limit` public ids of `table` in `range` (short-id prefixes and their neighbours).
    func ids(_ table: IDTable, _ range: IDRange, limit: Int) async throws(ChatLogError) -> [String]

    /// The blinded terms of each message of a conversation, by message id.
    func messageTerms(ofConversation id: String) async throws(ChatLogError) -> [String: [UInt64]]

    /// The conversations of `ids` that exist, each with its messages in position order (and their
    /// terms with `withTerms`), by id: what `chatlog copy` reads and compares, a batch at a time.
    func conversationCopies(_ ids: [String], withTerms: Bool) async throws(ChatLogError) -> [String: ConversationCopy]

    /// Inserts new conversations with their messages (positions from 0, `updated_at` as given,
    /// terms as given) in one transaction, after checking `guard` (``StorageConflict``).
    func insertCopies(_ copies: [ConversationCopy], guard: WriteGuard) async throws

    /// Whether ``addTerms(_:)`` works: the index takes a message's terms after its row (PostgreSQL's
    /// term table does; SQLite's contentless FTS5 row is written once, with all its terms).
    var addsTermsLater: Bool { get }

    /// Adds (message id, term) pairs to the index, ignoring pairs it has and messages it has not
    /// (a copy's second phase, rerun when resumed).
    func addTerms(_ pairs: [(messageID: String, term: UInt64)]) async throws(ChatLogError)

    /// Before a copy's complete pass of ``addTerms(_:)``: the backend may drop its term indexes
    /// for a bulk load (and, when an earlier pass was interrupted in that state, empty the terms
    /// to load them again). Returns whether it did; then ``endTermLoad()`` must follow.
    func beginTermLoad() async throws(ChatLogError) -> Bool

    /// After the pass: the term indexes back (idempotent).
    func endTermLoad() async throws(ChatLogError)

    /// Conversations, messages and token sums of the messages created in [since, until), per
    /// group (model, role or UTC day, in byte order, none first) or for all (no row when there
    /// are none); a conversation counts where it has messages.
    func stats(by grouping: StatsGrouping?, since: Int64?, until: Int64?) async throws(ChatLogError) -> [StatsRow]

    /// How many (message, term) pairs the search index holds (a copy's verification).
    func termPairCount() async throws(ChatLogError) -> Int

    /// Releases the backend's connections.
    func close() async

    // MARK: Key jobs (rotate, retire, rewrap), each run under ``withKeyJobLock(_:)``

    /// Up to `limit` rows still to rotate for `kind`: for `.data`, messages then conversations
    /// whose `key_id` is not `active`; for `.index`, messages whose `index_key_id` is not `active`,
    /// then conversations whose `subject_key_id` is neither `active` nor NULL. Rows whose public
    /// id is in `skipping` (damaged, reported by the core) are left out.
    /// `cursor`: where the previous batch of this run ended (rows are read in the backend's row
    /// order after it, so a batch never passes over rows moved before); the next batch's cursor is
    /// returned. A run starts at ``RotationCursor/start``.
    func rowsToRotate(
        _ kind: KeyStatus.Entry.Kind, otherThan active: Int64, skipping: Set<String>, after cursor: RotationCursor, limit: Int
    ) async throws(ChatLogError) -> (messages: [SealedMessageRow], conversations: [SealedConversationRow], next: RotationCursor)

    /// In one transaction, after checking `guard` (``StorageConflict``): each rewrite is applied
    /// only when the row still holds what it was computed from (compare-and-swap: a row deleted
    /// or changed meanwhile is left as it is). Returns how many were applied.
    func rewrite(_ rewrites: [RowRewrite], guard: WriteGuard) async throws -> Int

    /// In one transaction: the key rows `rows` written (replacing rows of the same id, inserting
    /// the others) and the `meta` values set (nil: removed), after checking that the master-key
    /// check value is one of `checkValues` (else ``StorageConflict/masterKeyChanged``) and the key
    /// rows are still exactly `expected` (else ``StorageConflict/staleKeys``). A row that becomes
    /// retired must be used by no row of the store (``ChatLogError/keyInUse(_:rows:)``), checked in
    /// that transaction: a rotation's key, a rewrap's new wrapping, a retirement. `expectedMeta`:
    /// meta values (nil: absent) that must still be as the core read them (a rewrap's import key,
    /// which an importer may have created meanwhile), else ``StorageConflict/staleKeys``.
    func replaceKeys(
        _ rows: [StoredKeyRow], expected: [StoredKeyRow], checkValues: [Data], meta: [String: MetaValue?], expectedMeta: [String: MetaValue?]
    ) async throws

    /// Gives the space of deleted and rewritten rows back so that no old ciphertext stays in the
    /// backend's files (SQLite: `VACUUM`; PostgreSQL: `VACUUM FULL` of chatlog's tables, or of
    /// the key table only with `onlyKeys`: after a retirement, the old row versions holding the
    /// wrapped key).
    func vacuum(onlyKeys: Bool) async throws(ChatLogError)

    /// Runs `body` with a read-only view of the store as of one instant, while writers go on
    /// (a backup's source).
    func withSnapshot<T: Sendable>(_ body: @Sendable (any ChatLogStorage) async throws(ChatLogError) -> T) async throws(ChatLogError) -> T

    /// Deletes single messages (their terms with them); returns how many existed. Positions of
    /// the others are kept (gaps stay, as on SQLite).
    func deleteMessages(_ ids: [String]) async throws(ChatLogError) -> Int

    /// Term rows whose message does not exist (none unless the index was changed behind chatlog's
    /// back); with `delete`, they are deleted. Returns how many there were.
    func orphanTerms(delete: Bool) async throws(ChatLogError) -> Int

    // MARK: The logging proxy's tables (threads, tokens)

    /// The conversations (public ids) that the thread digests found point at, by digest.
    func proxyThreads(_ digests: [Data]) async throws(ChatLogError) -> [Data: String]

    /// Group commit of proxy exchanges, in one transaction after checking `guard`: for each record
    /// its conversation inserted unless one with its id exists, its messages appended at the next
    /// positions with their terms, its thread digests recorded (replacing a digest recorded before).
    func insertProxyRecords(_ records: [ProxyRecordRows], guard: WriteGuard) async throws

    /// Stores a new token's hash under `name`; false when a token with that name exists.
    func createProxyToken(name: String, hash: Data, indexKeyID: Int64, createdAt: Int64) async throws(ChatLogError) -> Bool

    /// Every token, oldest first, revoked ones included.
    func proxyTokens() async throws(ChatLogError) -> [ProxyToken]

    /// Revokes the valid token `name`; false when there is none.
    func revokeProxyToken(name: String, at time: Int64) async throws(ChatLogError) -> Bool

    /// The valid token whose hash is one of `hashes`: its name and the index key of its hash.
    func proxyToken(hashes: [Data]) async throws(ChatLogError) -> (name: String, indexKeyID: Int64)?

    /// Replaces a valid token's hash (re-hashed under the active index key).
    func rehashProxyToken(name: String, hash: Data, indexKeyID: Int64) async throws(ChatLogError)

    /// Names of the valid tokens by the index key of their hash (a key still checking tokens is
    /// not retired).
    func proxyTokenNamesByIndexKey() async throws(ChatLogError) -> [Int64: [String]]

    // MARK: Side tables a copy carries verbatim

    /// Import records, proxy tokens and thread digests, as stored (all keyed: they stay valid
    /// wherever the same keys are).
    func sideRows() async throws(ChatLogError) -> SideRows

    /// Inserts side rows that are missing (present ones are left); a row whose conversation does
    /// not exist is skipped. One transaction.
    func insertSideRows(_ rows: SideRows) async throws(ChatLogError)

    /// The store-side rows of erasure per subject (forgotten key ids, pending forgets, forget
    /// receipts), as stored: a copy carries them with the subject keys.
    func erasureRows() async throws(ChatLogError) -> ErasureRows

    /// In one transaction: the forgotten ids it lacks listed; the pending forgets and receipts
    /// inserted in order when it has none, left when it has exactly these, else refused
    /// (``ChatLogError/invalidInput(_:)``, nothing written).
    func insertErasureRows(_ rows: ErasureRows) async throws(ChatLogError)

    // MARK: - Import and prune (docs/ARCHITECTURE.md §10, "Import and prune through the seam")

    /// In one transaction, after checking that the master-key check value is one of `checkValues`
    /// (else ``StorageConflict/masterKeyChanged``, nothing written: `value` is wrapped under a master
    /// key a `key rewrap` replaced): stores `value` under `name` unless the name has a value
    /// already, and returns the stored value (`value`, or the one another process stored first):
    /// two concurrent callers get the same answer (the import key).
    func setMetaIfAbsent(_ name: String, _ value: MetaValue, checkValues: [Data]) async throws -> MetaValue

    /// Which of `ids` a conversation or a message has already.
    func takenIDs(_ ids: [String]) async throws(ChatLogError) -> Set<String>

    /// In one transaction, after checking `guard` (``StorageConflict``): each item whose source
    /// hash is not in `imports` yet (nor earlier in `items`) is inserted as ``insertCopies(_:guard:)``
    /// does, with its `imports` row; the others count as duplicates. One import batch at a time
    /// per store (two importers of one file agree on what is new). When an id of a new item is
    /// taken (by another importer since the caller looked), nothing is written and the outcome
    /// names those ids.
    func insertImported(_ items: [ImportedCopy], guard: WriteGuard) async throws -> ImportOutcome

    /// How many conversations have had no activity (`updated_at`) since `before`, and their messages.
    func inactiveCounts(before: Int64) async throws(ChatLogError) -> StorageCounts

    /// In one transaction: deletes up to `limit` conversations with no activity since `before`
    /// (oldest activity first), their messages and search terms, as ``deleteConversations(_:terms:)``
    /// does. Returns what it deleted; none left when it deleted no conversation.
    func deleteInactiveConversations(before: Int64, limit: Int, terms: @escaping @Sendable (SealedMessageRow) -> [UInt64]?)
        async throws(ChatLogError) -> StorageCounts
}

/// The rows of the small tables beside conversations and messages (docs/FORMAT.md): each keyed
/// under the master key or an index key, so a copy moves them as bytes.
package struct SideRows: Sendable, Hashable {
    package struct Import: Sendable, Hashable {
        package var sourceHash: Data
        package var conversationID: String
        package var importedAt: Int64
        package init(sourceHash: Data, conversationID: String, importedAt: Int64) {
            self.sourceHash = sourceHash
            self.conversationID = conversationID
            self.importedAt = importedAt
        }
    }
    package struct Token: Sendable, Hashable {
        package var name: String
        package var hash: Data
        package var indexKeyID: Int64
        package var createdAt: Int64
        package var revokedAt: Int64?
        package init(name: String, hash: Data, indexKeyID: Int64, createdAt: Int64, revokedAt: Int64?) {
            self.name = name
            self.hash = hash
            self.indexKeyID = indexKeyID
            self.createdAt = createdAt
            self.revokedAt = revokedAt
        }
    }
    package struct Thread: Sendable, Hashable {
        package var digest: Data
        package var conversationID: String
        package var indexKeyID: Int64
        package var createdAt: Int64
        package init(digest: Data, conversationID: String, indexKeyID: Int64, createdAt: Int64) {
            self.digest = digest
            self.conversationID = conversationID
            self.indexKeyID = indexKeyID
            self.createdAt = createdAt
        }
    }
    package var imports: [Import] = []
    package var tokens: [Token] = []
    package var threads: [Thread] = []

    package init(imports: [Import] = [], tokens: [Token] = [], threads: [Thread] = []) {
        self.imports = imports
        self.tokens = tokens
        self.threads = threads
    }

    /// Sorted, for comparing two stores' rows.
    package var normalized: SideRows {
        SideRows(
            imports: imports.sorted { $0.sourceHash.lexicographicallyPrecedes($1.sourceHash) }, tokens: tokens.sorted { $0.name < $1.name },
            threads: threads.sorted { $0.digest.lexicographicallyPrecedes($1.digest) })
    }
}

/// The store-side tables of erasure per subject (docs/FORMAT.md): keyed hashes, ids and counts,
/// never a subject or a key.
package struct ErasureRows: Sendable, Hashable {
    /// A forget interrupted after its rows were deleted (`forget --resume` finishes it).
    package struct Pending: Sendable, Hashable {
        package var keyIDs: [Int64]
        package var subjectHash: Data
        package var startedAt: Int64
        package var conversations: Int64
        package var messages: Int64
        package init(keyIDs: [Int64], subjectHash: Data, startedAt: Int64, conversations: Int64, messages: Int64) {
            self.keyIDs = keyIDs
            self.subjectHash = subjectHash
            self.startedAt = startedAt
            self.conversations = conversations
            self.messages = messages
        }
    }
    /// `forgotten_subject_keys`, by id.
    package var forgottenKeys: [ForgottenSubjectKeyRow] = []
    /// `forget_pending` and `forget_receipts`, oldest first.
    package var pending: [Pending] = []
    package var receipts: [StoredForgetReceipt] = []

    package init(forgottenKeys: [ForgottenSubjectKeyRow] = [], pending: [Pending] = [], receipts: [StoredForgetReceipt] = []) {
        self.forgottenKeys = forgottenKeys
        self.pending = pending
        self.receipts = receipts
    }

    package var isEmpty: Bool { forgottenKeys.isEmpty && pending.isEmpty && receipts.isEmpty }
}

/// One proxy exchange as stored: its conversation (inserted when new), messages and thread digests.
package struct ProxyRecordRows: Sendable, Hashable {
    package var conversation: SealedConversationRow
    package var messages: [SealedMessageRow]
    package var digests: [(digest: Data, indexKeyID: Int64)]

    package init(conversation: SealedConversationRow, messages: [SealedMessageRow], digests: [(digest: Data, indexKeyID: Int64)]) {
        self.conversation = conversation
        self.messages = messages
        self.digests = digests
    }

    package static func == (a: Self, b: Self) -> Bool {
        a.conversation == b.conversation && a.messages == b.messages && a.digests.map(\.digest) == b.digests.map(\.digest)
            && a.digests.map(\.indexKeyID) == b.digests.map(\.indexKeyID)
    }

    package func hash(into hasher: inout Hasher) {
        hasher.combine(conversation)
        hasher.combine(messages)
        for digest in digests { hasher.combine(digest.digest) }
    }
}

/// Where a rotation run's batches have got to: the last message and conversation read (backend row
/// order). Opaque to the core.
package struct RotationCursor: Sendable, Hashable {
    package var message: Int64
    package var conversation: Int64
    package static let start = RotationCursor(message: Int64.min, conversation: Int64.min)

    package init(message: Int64, conversation: Int64) {
        self.message = message
        self.conversation = conversation
    }
}

/// One row change of a key job, applied only when the row still holds what it was computed from.
package enum RowRewrite: Sendable, Hashable {
    /// A message re-sealed under another data key: `key_id`, `content` and `metadata` are set to
    /// `new`'s where they still are `old`'s.
    case message(old: SealedMessageRow, new: SealedMessageRow)
    /// A conversation re-sealed: `key_id`, `title`, `subject`, `metadata` (compared, then set).
    case conversation(old: SealedConversationRow, new: SealedConversationRow)
    /// A message re-blinded: where `index_key_id` is still `from` (nil: not indexed), its terms are
    /// replaced by `terms` and `index_key_id` set to `to`.
    case messageTerms(id: String, from: Int64?, to: Int64, terms: [UInt64])
    /// A conversation's subject token re-blinded: where `subject_key_id` is still `from`.
    case subjectToken(id: String, from: Int64, to: Int64, token: Data)
    /// A damaged optional sealed value (a title, subject — with its token — or metadata) set to
    /// NULL where it still holds `expected` (`verify --repair`).
    case clear(table: IDTable, column: String, id: String, expected: Data)
}

/// A conversation to import: the keyed hash of its source (``ImportKey``) and its sealed rows
/// (positions from 0, `updated_at` its last activity).
package struct ImportedCopy: Sendable, Hashable {
    package var sourceHash: Data
    package var copy: ConversationCopy

    package init(sourceHash: Data, copy: ConversationCopy) {
        self.sourceHash = sourceHash
        self.copy = copy
    }
}

/// What ``ChatLogStorage/insertImported(_:guard:)`` did.
package struct ImportOutcome: Sendable, Hashable {
    /// The ids of the conversations inserted, in the order given.
    package var inserted: [String]
    /// Items whose source was imported before.
    package var duplicates: Int
    /// Ids of new items that exist already: then nothing was written.
    package var taken: Set<String>

    package init(inserted: [String] = [], duplicates: Int = 0, taken: Set<String> = []) {
        self.inserted = inserted
        self.duplicates = duplicates
        self.taken = taken
    }
}

extension SealedConversationRow {
    /// The row a prepared (sealed) conversation is stored as.
    init(_ prepared: PreparedConversation) {
        self.init(
            id: prepared.id.rawValue, createdAt: prepared.createdAt, updatedAt: prepared.createdAt, keyID: Int64(prepared.keyID.rawValue),
            title: prepared.title, subject: prepared.subject, subjectToken: prepared.subjectToken,
            subjectKeyID: prepared.subjectKeyID.map { Int64($0.rawValue) }, metadata: prepared.metadata)
    }
}

extension SealedMessageRow {
    /// The row a prepared (sealed, blinded) message is stored as: its terms are read back from
    /// the FTS5 document the SQLite backend stores.
    init(_ prepared: PreparedMessage, conversationID: ConversationID) {
        let characters = TokenBlinder.defaultBits / 5
        var terms: [UInt64] = []
        for word in prepared.terms.utf8.split(separator: 0x20) {
            if let value = Array(word).withUnsafeBytes({ TokenBlinder.decode($0, characters: characters) }) { terms.append(value) }
        }
        self.init(
            id: prepared.id.rawValue, conversationID: conversationID.rawValue, position: 0, role: prepared.role.rawValue,
            createdAt: prepared.createdAt, model: prepared.model, promptTokens: prepared.promptTokens.map(Int64.init),
            completionTokens: prepared.completionTokens.map(Int64.init), latencyMilliseconds: prepared.latencyMilliseconds.map(Int64.init),
            finishReason: prepared.finishReason, keyID: Int64(prepared.keyID.rawValue), content: prepared.content, metadata: prepared.metadata,
            indexKeyID: Int64(prepared.indexKeyID.rawValue), terms: terms)
    }
}
