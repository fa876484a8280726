import Foundation
import GRDB

/// What `forget` did (or, with `dryRun`, would do).
public struct ForgetReport: Sendable, Equatable {
    public let conversations: Int
    public let messages: Int
    /// Subject keys destroyed (one per subject; 0 when all its conversations predate subject keys).
    public let subjectKeys: Int
    /// Conversations written before subject keys existed (schema 10): deleted from the live store,
    /// but still readable in backups made before the forget.
    public let conversationsWithoutSubjectKey: Int
    /// The receipt's keyed hash of the subject (hex); nil for a dry run.
    public let receiptHash: String?
    public let dryRun: Bool
}

/// A finished forget, as recorded in the store: no subject, only a keyed hash of it.
public struct ForgetReceipt: Sendable, Equatable {
    public let forgottenAt: Date
    /// Hex of BLAKE2b-256 under a key wrapped by the master key (docs/SECURITY.md).
    public let subjectHash: String
    public let conversations: Int
    public let messages: Int
    public let subjectKeys: Int
}

/// The steps of a forget, in order (a kill after any of them leaves a state the next `forget`
/// or `verify --repair` finishes).
public enum ForgetStep: String, Sendable, CaseIterable {
    /// The rows are deleted and the search index merged, with the pending marker, in one transaction.
    case rowsDeleted = "rows-deleted"
    /// The store's WAL is checkpointed and truncated.
    case storeCheckpointed = "store-checkpointed"
    /// The subject keys are destroyed in the subject-key file.
    case keysDestroyed = "keys-destroyed"
    /// The receipt is written and the marker cleared.
    case receiptWritten = "receipt-written"
}

extension ChatLogStore {
    // MARK: - Export and forget of one subject (GDPR art. 15 and 17)

    /// The SQL condition on `conversations` for the conversations of `subject`: its blind index
    /// under each index key (conversations from before subject keys too), or its subject key.
    /// SQL stays here, behind the store.
    func subjectCondition(_ subject: String, keyID: KeyID?) -> (sql: String, arguments: StatementArguments) {
        let tokens = keyRing.current.subjectTokens(subject)
        var sql = "(subject_token IN (\(tokens.map { _ in "?" }.joined(separator: ",")))"
        var arguments = StatementArguments(tokens)
        if let keyID {
            sql += " OR erasure_key_id = ?"
            arguments += [Int64(keyID.rawValue)]
        }
        return (sql + ")", arguments)
    }

    func subjectFilter(_ subject: String) throws(ChatLogError) -> (sql: String, arguments: StatementArguments) {
        subjectCondition(subject, keyID: try subjectKeys.key(forSubject: subject, create: false)?.id)
    }

    func subjectConversationSeqs(_ subject: String, keyID: KeyID?, _ db: Database) throws -> [Int64] {
        let condition = subjectCondition(subject, keyID: keyID)
        return try Int64.fetchAll(db, sql: "SELECT seq FROM conversations WHERE \(condition.sql) ORDER BY seq", arguments: condition.arguments)
    }

    /// The ids of the conversations of `subject`, oldest first (for `export --subject`).
    public func conversationIDs(subject: String) throws(ChatLogError) -> [ConversationID] {
        let keyID = try subjectKeys.key(forSubject: subject, create: false)?.id
        return try read { db in
            let seqs = try subjectConversationSeqs(subject, keyID: keyID, db)
            guard !seqs.isEmpty else { return [] }
            return try String.fetchAll(
                db, sql: "SELECT id FROM conversations WHERE seq IN (SELECT value FROM json_each(?)) ORDER BY created_at, seq",
                arguments: [Self.jsonArray(seqs)]
            ).compactMap(ConversationID.init)
        }
    }

    /// Removes every conversation of `subject` from the live store (rows, sealed values, search
    /// terms, thread digests, import records; then the search index is merged and the WAL
    /// truncated, as `deleteConversations` does) and destroys the subject's key in the
    /// subject-key file, so its values can no longer be opened in any earlier backup of the
    /// store either. Finishes any earlier forget that was interrupted first.
    ///
    /// Returns nil when the store has no conversation and no key of that subject (nothing is
    /// written then). `afterStep` is called after each step (tests kill the process there).
    public func forget(subject: String, dryRun: Bool = false, afterStep: ((ForgetStep) -> Void)? = nil) throws(ChatLogError) -> ForgetReport? {
        if !dryRun { _ = try resumeForgets(afterStep: afterStep) }
        let key = try subjectKeys.key(forSubject: subject, create: false)
        let keyIDs = key.map { [$0.id] } ?? []
        let found = try read { db in
            let seqs = try subjectConversationSeqs(subject, keyID: key?.id, db)
            return (seqs, try Self.messageCount(seqs, db), try Self.withoutSubjectKey(seqs, db))
        }
        if found.0.isEmpty && keyIDs.isEmpty { return nil }
        if dryRun {
            return ForgetReport(
                conversations: found.0.count, messages: found.1, subjectKeys: keyIDs.count, conversationsWithoutSubjectKey: found.2,
                receiptHash: nil, dryRun: true)
        }
        // The receipt's hash key lives in the subject-key file (created here if the subject's
        // conversations all predate subject keys).
        guard let receipt = try subjectKeys.receiptHash(subject, create: true) else {
            throw .storage("the subject-key file could not be created")
        }
        let deleted = try writeImmediate { db -> (Int, Int, Int) in
            // Found again inside the transaction: a writer may have added a conversation since.
            let seqs = try self.subjectConversationSeqs(subject, keyID: key?.id, db)
            let messages = try Self.messageCount(seqs, db)
            let without = try Self.withoutSubjectKey(seqs, db)
            for seq in seqs { try self.delete(seq: seq, db) }
            let now = Date().unixMilliseconds
            for id in keyIDs {
                try db.execute(
                    sql: "INSERT INTO forgotten_subject_keys (key_id, forgotten_at) VALUES (?, ?) ON CONFLICT (key_id) DO NOTHING",
                    arguments: [Int64(id.rawValue), now])
            }
            try db.execute(
                sql: "INSERT INTO forget_pending (key_ids, subject_hash, started_at, conversations, messages) VALUES (?, ?, ?, ?, ?)",
                arguments: [Self.jsonArray(keyIDs.map { Int64($0.rawValue) }), receipt, now, seqs.count, messages])
            if try SearchIndex.scrubPending(db) { try SearchIndex.scrub(db) }
            return (seqs.count, messages, without)
        }
        afterStep?(.rowsDeleted)
        try finishPending(afterStep: afterStep)
        return ForgetReport(
            conversations: deleted.0, messages: deleted.1, subjectKeys: keyIDs.count, conversationsWithoutSubjectKey: deleted.2,
            receiptHash: SubjectKeyFile.hex(receipt), dryRun: false)
    }

    /// Finishes forgets that were interrupted after their rows were deleted (their keys may
    /// still exist in the subject-key file). Returns how many.
    @discardableResult
    public func resumeForgets(afterStep: ((ForgetStep) -> Void)? = nil) throws(ChatLogError) -> Int {
        let pending = try read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM forget_pending") ?? 0 }
        guard pending > 0 else { return 0 }
        try finishPending(afterStep: afterStep)
        return pending
    }

    /// Forgets interrupted after their rows were deleted.
    public func pendingForgets() throws(ChatLogError) -> Int {
        try read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM forget_pending") ?? 0 }
    }

    private func finishPending(afterStep: ((ForgetStep) -> Void)?) throws(ChatLogError) {
        try checkpoint()
        afterStep?(.storeCheckpointed)
        let pending = try read { db in
            try Row.fetchAll(db, sql: "SELECT id, key_ids FROM forget_pending ORDER BY id").map { row in
                (try row.decode(Int64.self, forColumn: "id"), Self.keyIDs(fromJSON: try row.decode(String.self, forColumn: "key_ids")))
            }
        }
        try subjectKeys.destroy(pending.flatMap(\.1))
        afterStep?(.keysDestroyed)
        try writeImmediate { db in
            for (id, keyIDs) in pending {
                try db.execute(
                    sql: """
                        INSERT INTO forget_receipts (forgotten_at, subject_hash, conversations, messages, subject_keys)
                        SELECT ?, subject_hash, conversations, messages, ? FROM forget_pending WHERE id = ?
                        """,
                    arguments: [Date().unixMilliseconds, keyIDs.count, id])
                try db.execute(sql: "DELETE FROM forget_pending WHERE id = ?", arguments: [id])
            }
        }
        try checkpoint()
        afterStep?(.receiptWritten)
    }

    /// The receipts of finished forgets, oldest first.
    public func forgetReceipts() throws(ChatLogError) -> [ForgetReceipt] {
        try read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM forget_receipts ORDER BY id").map { row in
                ForgetReceipt(
                    forgottenAt: Date(unixMilliseconds: try row.decode(Int64.self, forColumn: "forgotten_at")),
                    subjectHash: SubjectKeyFile.hex(row.sealedBytes("subject_hash") ?? Data()),
                    conversations: try row.decode(forColumn: "conversations"), messages: try row.decode(forColumn: "messages"),
                    subjectKeys: try row.decode(forColumn: "subject_keys"))
            }
        }
    }

    /// The receipt hash `subject` would have in this store (to find its receipt); nil when the
    /// store has no subject-key file.
    public func receiptHash(subject: String) throws(ChatLogError) -> String? {
        try subjectKeys.receiptHash(subject, create: false).map(SubjectKeyFile.hex)
    }

    /// How many subject keys exist (never which subjects), and how many were forgotten.
    public func subjectKeyCounts() throws(ChatLogError) -> (live: Int, forgotten: Int) {
        try subjectKeys.counts()
    }

    /// Copies the subject-key file (consistent, mode 0600) for a backup kept on the shorter
    /// retention docs/OPERATIONS.md gives.
    public func backupSubjectKeys(to destination: String) throws(ChatLogError) {
        if let storage {
            throw .subjectKeyStore(
                location: storage.location,
                reason: "its subject keys are in their own database (CHATLOG_SUBJECT_KEYS): back that database up with pg_dump, on the shorter retention of docs/OPERATIONS.md")
        }
        try subjectKeys.backup(to: destination)
    }

    /// Problems of erasure, for `verify`: conversations of a forgotten subject still in the
    /// store (an old backup restored after the forget), and forgets interrupted before their
    /// subject key was destroyed.
    public func erasureIssues() throws(ChatLogError) -> [VerificationIssue] {
        let forgotten = try subjectKeys.forgottenIDs()
        return try read { db in
            Self.erasureIssues(
                forgottenConversations: try self.forgottenSubjectConversations(forgotten, db),
                pendingForgets: try Int.fetchOne(db, sql: "SELECT count(*) FROM forget_pending") ?? 0)
        }
    }

    /// `verify`'s erasure problems on either backend: conversations of a forgotten subject, and
    /// forgets interrupted before their subject key was destroyed.
    static func erasureIssues(forgottenConversations: [String], pendingForgets pending: Int) -> [VerificationIssue] {
        var issues = forgottenConversations.map {
            VerificationIssue(
                table: "conversations", column: "erasure_key_id", rowID: $0,
                problem: "belongs to a forgotten subject (its key was destroyed by `chatlog forget`); `chatlog verify --repair` deletes it")
        }
        if pending > 0 {
            issues.append(
                VerificationIssue(
                    table: "forget_pending", column: "-", rowID: "-",
                    problem: "\(pending) forget\(pending == 1 ? " was" : "s were") interrupted before the subject key was destroyed (run `chatlog forget --resume`)"))
        }
        return issues
    }

    /// Ids of the conversations sealed under a forgotten subject key (the subject-key file's list
    /// and the store's).
    func forgottenSubjectConversations(_ forgotten: Set<KeyID>, _ db: Database) throws -> [String] {
        try String.fetchAll(
            db,
            sql: """
                SELECT id FROM conversations WHERE erasure_key_id IN (SELECT key_id FROM forgotten_subject_keys)
                OR erasure_key_id IN (SELECT value FROM json_each(?)) ORDER BY seq
                """,
            arguments: [Self.jsonArray(forgotten.map { Int64($0.rawValue) })])
    }

    /// For `repair`: finishes interrupted forgets and deletes the conversations of forgotten
    /// subjects (rows nothing can open any more).
    func repairErasure() throws(ChatLogError) -> [RepairAction] {
        let resumed = try resumeForgets()
        let forgotten = try subjectKeys.forgottenIDs()
        let ids = try read { db in try self.forgottenSubjectConversations(forgotten, db) }.compactMap(ConversationID.init)
        if !ids.isEmpty { _ = try deleteConversations(ids) }
        return Self.erasureRepairActions(resumedForgets: resumed, deletedConversations: ids.map(\.rawValue))
    }

    /// What `verify --repair`'s erasure part did, on either backend.
    static func erasureRepairActions(resumedForgets resumed: Int, deletedConversations: [String]) -> [RepairAction] {
        var actions: [RepairAction] = []
        if resumed > 0 {
            actions.append(RepairAction(table: "forget_pending", column: "-", rowID: "-", action: "finished \(resumed) interrupted forget\(resumed == 1 ? "" : "s")"))
        }
        return actions + deletedConversations.map {
            RepairAction(table: "conversations", column: "erasure_key_id", rowID: $0, action: "belongs to a forgotten subject: conversation deleted")
        }
    }

    /// For benchmarks: makes the subject keys of `subjects` (as their first conversations
    /// would) in one transaction, so a store can start with many subjects.
    @_spi(Benchmarks) public func prepareSubjectKeys(_ subjects: [String]) throws(ChatLogError) {
        try subjectKeys.createKeys(for: subjects)
    }

    // MARK: - Helpers

    static func jsonArray(_ values: [Int64]) -> String { "[" + values.map(String.init).joined(separator: ",") + "]" }

    static func keyIDs(fromJSON text: String) -> [KeyID] {
        text.trimmingCharacters(in: CharacterSet(charactersIn: "[] ")).split(separator: ",").compactMap {
            UInt32($0.trimmingCharacters(in: .whitespaces)).map(KeyID.init)
        }
    }

    static func messageCount(_ seqs: [Int64], _ db: Database) throws -> Int {
        guard !seqs.isEmpty else { return 0 }
        return try Int.fetchOne(
            db, sql: "SELECT count(*) FROM messages WHERE conversation_seq IN (SELECT value FROM json_each(?))", arguments: [jsonArray(seqs)]) ?? 0
    }

    static func withoutSubjectKey(_ seqs: [Int64], _ db: Database) throws -> Int {
        guard !seqs.isEmpty else { return 0 }
        return try Int.fetchOne(
            db, sql: "SELECT count(*) FROM conversations WHERE seq IN (SELECT value FROM json_each(?)) AND erasure_key_id IS NULL",
            arguments: [jsonArray(seqs)]) ?? 0
    }
}
