import Foundation

// Erasure per subject on a store behind the storage seam (PostgreSQL; docs/ARCHITECTURE.md §10,
// "Erasure per subject"). The subject keys are in the store's subject-key store
// (``SubjectKeyStore``; PostgreSQL: a database of its own named by CHATLOG_SUBJECT_KEYS); the
// data's side — finding a subject's conversations, deleting them with the pending marker,
// receipts, forgotten ids — is ``ErasureStorage``. The steps and their order are the SQLite
// ones (ChatLogStore+Erasure.swift): rows deleted with the marker in one transaction, then the
// keys destroyed, then the receipt written and the marker cleared; a kill after any step leaves
// what the next `forget`, `forget --resume` or `verify --repair` finishes.

/// Subject keys looked up for a write, by subject.
typealias KnownSubjectKeys = [String: (id: KeyID, key: SubjectKey)]

/// A forget receipt as stored.
package struct StoredForgetReceipt: Sendable, Hashable {
    package var forgottenAt: Int64
    package var subjectHash: Data
    package var conversations: Int
    package var messages: Int
    package var subjectKeys: Int

    package init(forgottenAt: Int64, subjectHash: Data, conversations: Int, messages: Int, subjectKeys: Int) {
        self.forgottenAt = forgottenAt
        self.subjectHash = subjectHash
        self.conversations = conversations
        self.messages = messages
        self.subjectKeys = subjectKeys
    }
}

/// A forget whose rows are deleted and whose keys may not be destroyed yet.
package struct PendingForget: Sendable, Hashable {
    package var id: Int64
    package var keyIDs: [Int64]

    package init(id: Int64, keyIDs: [Int64]) {
        self.id = id
        self.keyIDs = keyIDs
    }
}

/// What a subject's conversations come to (a forget's counts).
package struct SubjectRowCounts: Sendable, Hashable {
    package var conversations: Int
    package var messages: Int
    /// Conversations not sealed under a subject key (written before there were any).
    package var withoutSubjectKey: Int

    package init(conversations: Int, messages: Int, withoutSubjectKey: Int) {
        self.conversations = conversations
        self.messages = messages
        self.withoutSubjectKey = withoutSubjectKey
    }
}

/// The data side of erasure behind the seam: the four store-side tables and column of
/// docs/FORMAT.md (`conversations.erasure_key_id`, `forgotten_subject_keys`, `forget_pending`,
/// `forget_receipts`). A subject's conversations are those whose subject token is one of
/// `tokens` (its blind index under each live index key) or whose erasure key is one of `keyIDs`.
package protocol ErasureStorage: ChatLogStorage {
    func subjectCounts(tokens: [Data], keyIDs: [Int64]) async throws(ChatLogError) -> SubjectRowCounts
    /// In one write transaction: the subject's conversations found again (a writer may have
    /// added one) and deleted with their messages and terms, `keyIDs` listed as forgotten (from
    /// then on a conversation under them is refused: ``StorageConflict/forgottenSubjectKey(_:)``),
    /// and the pending marker written.
    func deleteSubject(tokens: [Data], keyIDs: [Int64], receiptHash: Data, at time: Int64) async throws(ChatLogError) -> SubjectRowCounts
    func pendingForgets() async throws(ChatLogError) -> [PendingForget]
    /// The receipts of these pending forgets written and their markers deleted, in one transaction.
    func finishForgets(_ pending: [PendingForget], at time: Int64) async throws(ChatLogError)
    func forgetReceipts() async throws(ChatLogError) -> [StoredForgetReceipt]
    /// Ids of the conversations sealed under a forgotten subject key (the store's list or `forgotten`).
    func forgottenSubjectConversations(_ forgotten: [Int64]) async throws(ChatLogError) -> [String]
    /// How many conversations are sealed under a subject key (`copy` needs their keys).
    func subjectKeyConversationCount() async throws(ChatLogError) -> Int
}

extension ChatLogStore {
    static let forgetInProgress = ChatLogError.busy(
        "a `chatlog forget` of this conversation's subject is in progress (or was interrupted: run `chatlog forget --resume`); try again")

    /// The erasure side of a store behind the seam, or the specific error.
    func erasureStorage(_ storage: any ChatLogStorage) throws(ChatLogError) -> any ErasureStorage {
        guard let erasure = storage as? any ErasureStorage else {
            throw .notOnThisBackend(location: storage.location, what: "per-subject erasure")
        }
        return erasure
    }

    /// The subject key an existing conversation is sealed under, from its subject's header; nil
    /// when it has none, or does not exist (the insert then says so).
    func storageExistingSubjectKey(_ conversation: ConversationID, _ storage: any ChatLogStorage) async throws(ChatLogError)
        -> (id: KeyID, key: SubjectKey)?
    {
        let id: KeyID?
        if let known = conversationSubjectKeys.withLock({ $0[conversation.rawValue] }) {
            id = known
        } else {
            guard let row = try await storage.conversation(id: conversation.rawValue) else { return nil }  // the insert says so
            id = row.subject.flatMap(SealedValue.subjectKeyID)
            rememberSubjectKey(id, of: conversation)
        }
        guard let id else { return nil }
        let context = FieldContext(table: "conversations", column: "erasure_key_id", rowID: conversation.rawValue)
        if let store = subjectKeyStore as? SealedSubjectKeys, store.cachedKey(id: id) == nil {
            guard let key = try await store.key(id: id) else {
                // Forgotten: the conversation went with it (then the insert says it is not found).
                conversationSubjectKeys.withLock { _ = $0.removeValue(forKey: conversation.rawValue) }
                if try await storage.conversation(id: conversation.rawValue) == nil { return nil }
                store.noteAbsence(id, try await store.absence(of: id))
                return (id, try subjectKey(id, context))  // the specific error
            }
            return (id, key)
        }
        return (id, try subjectKey(id, context))
    }

    static let conversationSubjectKeysCapacity = 4_096

    /// Notes which subject key (or none) `conversation` is sealed under: read from its row, or
    /// known because this handle created it (then its first continued exchange reads nothing).
    func rememberSubjectKey(_ id: KeyID?, of conversation: ConversationID) {
        conversationSubjectKeys.withLock { known in
            if known.count >= Self.conversationSubjectKeysCapacity { known.removeAll(keepingCapacity: true) }
            known[conversation.rawValue] = id
        }
    }

    /// Loads the subject keys that version-2 values read from the backend name (so that opening
    /// them needs no round trip), and the reason for each that is absent.
    func ensureSubjectKeys(for sealed: [Data?]) async throws(ChatLogError) {
        guard case .storage = backend else { return }
        var wanted: Set<KeyID> = []
        for value in sealed {
            if let value, let id = SealedValue.subjectKeyID(of: value) { wanted.insert(id) }
        }
        guard !wanted.isEmpty, let store = subjectKeyStore as? SealedSubjectKeys else { return }
        for id in wanted where store.cachedKey(id: id) == nil {
            if try await store.key(id: id) == nil { store.noteAbsence(id, try await store.absence(of: id)) }
        }
    }

    /// For ``subjectKey(_:_:)`` on a store behind the seam: the key loaded by
    /// ``ensureSubjectKeys(for:)``, or why there is none.
    func loadedSubjectKey(_ id: KeyID) throws(ChatLogError) -> (key: SubjectKey?, absence: SubjectKeyAbsence) {
        if let missing = subjectKeyStore as? MissingSubjectKeys { throw missing.error }
        guard let store = subjectKeyStore as? SealedSubjectKeys else { return (nil, .unknown) }
        if let key = store.cachedKey(id: id) { return (key, .unknown) }
        return (nil, store.notedAbsence(id) ?? .unknown)
    }

    // MARK: - Forget behind the seam

    func storageForget(subject: String, dryRun: Bool, afterStep: ((ForgetStep) -> Void)?, _ storage: any ChatLogStorage) async throws(ChatLogError)
        -> ForgetReport?
    {
        let erasure = try erasureStorage(storage)
        // Without its subject keys a forget could delete the rows but never destroy the key.
        if let missing = subjectKeyStore as? MissingSubjectKeys { throw missing.error }
        if !dryRun { _ = try await storageResumeForgets(afterStep: afterStep, erasure) }
        try await refreshKeys(storage)  // subject tokens under every live index key
        let tokens = keyRing.current.subjectTokens(subject)
        let key = try await subjectKeyStore.key(forSubject: subject, create: false)
        let keyIDs = key.map { [Int64($0.id.rawValue)] } ?? []
        let found = try await erasure.subjectCounts(tokens: tokens, keyIDs: keyIDs)
        if found.conversations == 0 && keyIDs.isEmpty { return nil }
        if dryRun {
            return ForgetReport(
                conversations: found.conversations, messages: found.messages, subjectKeys: keyIDs.count,
                conversationsWithoutSubjectKey: found.withoutSubjectKey, receiptHash: nil, dryRun: true)
        }
        guard let receipt = try await subjectKeyStore.receiptHash(subject, create: true) else {
            throw .storage("the subject-key store could not be created")
        }
        let deleted = try await erasure.deleteSubject(tokens: tokens, keyIDs: keyIDs, receiptHash: receipt, at: Date().unixMilliseconds)
        afterStep?(.rowsDeleted)
        try await storageFinishPending(afterStep: afterStep, erasure)
        return ForgetReport(
            conversations: deleted.conversations, messages: deleted.messages, subjectKeys: keyIDs.count,
            conversationsWithoutSubjectKey: deleted.withoutSubjectKey, receiptHash: SubjectKeyCrypto.hex(receipt), dryRun: false)
    }

    func storageResumeForgets(afterStep: ((ForgetStep) -> Void)?, _ erasure: any ErasureStorage) async throws(ChatLogError) -> Int {
        let pending = try await erasure.pendingForgets()
        guard !pending.isEmpty else { return 0 }
        if let missing = subjectKeyStore as? MissingSubjectKeys { throw missing.error }
        try await storageFinishPending(afterStep: afterStep, erasure)
        return pending.count
    }

    /// The steps after the rows' transaction. PostgreSQL has no WAL file of the store's to
    /// truncate (docs/OPERATIONS.md: its WAL archives keep deleted rows until they expire), so
    /// `storeCheckpointed` only marks the step.
    private func storageFinishPending(afterStep: ((ForgetStep) -> Void)?, _ erasure: any ErasureStorage) async throws(ChatLogError) {
        afterStep?(.storeCheckpointed)
        let pending = try await erasure.pendingForgets()
        try await subjectKeyStore.destroy(pending.flatMap(\.keyIDs).compactMap { UInt32(exactly: $0).map(KeyID.init) })
        afterStep?(.keysDestroyed)
        try await erasure.finishForgets(pending, at: Date().unixMilliseconds)
        afterStep?(.receiptWritten)
    }

    func storageForgetReceipts(_ storage: any ChatLogStorage) async throws(ChatLogError) -> [ForgetReceipt] {
        try await erasureStorage(storage).forgetReceipts().map {
            ForgetReceipt(
                forgottenAt: Date(unixMilliseconds: $0.forgottenAt), subjectHash: SubjectKeyCrypto.hex($0.subjectHash), conversations: $0.conversations,
                messages: $0.messages, subjectKeys: $0.subjectKeys)
        }
    }

    /// `verify`'s erasure problems behind the seam (as ``erasureIssues()``).
    func storageErasureIssues(_ storage: any ChatLogStorage) async throws(ChatLogError) -> [VerificationIssue] {
        guard let erasure = storage as? any ErasureStorage else { return [] }
        let forgotten = try await subjectKeyStore.forgottenIDs().map { Int64($0.rawValue) }
        return Self.erasureIssues(
            forgottenConversations: try await erasure.forgottenSubjectConversations(forgotten),
            pendingForgets: try await erasure.pendingForgets().count)
    }

    /// `verify --repair`'s erasure part behind the seam (as ``repairErasure()``).
    func storageRepairErasure(_ storage: any ChatLogStorage) async throws(ChatLogError) -> [RepairAction] {
        guard let erasure = storage as? any ErasureStorage else { return [] }
        let resumed = try await storageResumeForgets(afterStep: nil, erasure)
        let forgotten = try await subjectKeyStore.forgottenIDs().map { Int64($0.rawValue) }
        let ids = try await erasure.forgottenSubjectConversations(forgotten)
        if !ids.isEmpty { _ = try await storage.deleteConversations(ids, terms: reblinder()) }
        return Self.erasureRepairActions(resumedForgets: resumed, deletedConversations: ids)
    }
}

// MARK: - Public API on every backend

extension ChatLogStore {
    /// Erasure per subject on any backend (async): `forget`, its receipts and the subject-key
    /// counts. On a SQLite store these are the synchronous methods of ChatLogStore+Erasure.swift;
    /// on PostgreSQL the subject keys are in the database named by CHATLOG_SUBJECT_KEYS
    /// (docs/OPERATIONS.md).
    public var erasure: Erasure { Erasure(store: self) }

    public struct Erasure: Sendable {
        let store: ChatLogStore

        /// ``ChatLogStore/forget(subject:dryRun:afterStep:)`` on any backend.
        public func forget(subject: String, dryRun: Bool = false, afterStep: ((ForgetStep) -> Void)? = nil) async throws(ChatLogError)
            -> ForgetReport?
        {
            if let storage = store.storage { return try await store.storageForget(subject: subject, dryRun: dryRun, afterStep: afterStep, storage) }
            return try store.forget(subject: subject, dryRun: dryRun, afterStep: afterStep)
        }

        /// Finishes forgets that were interrupted; returns how many.
        @discardableResult
        public func resume(afterStep: ((ForgetStep) -> Void)? = nil) async throws(ChatLogError) -> Int {
            if let storage = store.storage { return try await store.storageResumeForgets(afterStep: afterStep, try store.erasureStorage(storage)) }
            return try store.resumeForgets(afterStep: afterStep)
        }

        /// Forgets interrupted after their rows were deleted.
        public func pending() async throws(ChatLogError) -> Int {
            if let storage = store.storage { return try await store.erasureStorage(storage).pendingForgets().count }
            return try store.pendingForgets()
        }

        /// The receipts of finished forgets, oldest first.
        public func receipts() async throws(ChatLogError) -> [ForgetReceipt] {
            if let storage = store.storage { return try await store.storageForgetReceipts(storage) }
            return try store.forgetReceipts()
        }

        /// The receipt hash `subject` would have (nil when the store has no subject keys at all).
        public func receiptHash(subject: String) async throws(ChatLogError) -> String? {
            try await store.subjectKeyStore.receiptHash(subject, create: false).map(SubjectKeyCrypto.hex)
        }

        /// How many subject keys exist (never which subjects), and how many were forgotten.
        public func keyCounts() async throws(ChatLogError) -> (live: Int, forgotten: Int) {
            try await store.subjectKeyStore.counts()
        }

        /// Whether the store reaches its subject keys: always on SQLite (the key file); on
        /// PostgreSQL only with a subject-key database (CHATLOG_SUBJECT_KEYS). Without one,
        /// ``keyCounts()`` cannot see any key and answers zero.
        public var reachesSubjectKeys: Bool { !(store.subjectKeyStore is MissingSubjectKeys) }
    }
}
