import Foundation
import GRDB

/// What `chatlog copy` did.
public struct CopyReport: Sendable, Hashable {
    /// Conversations (and their messages) written to the destination by this run.
    public var conversations = 0
    public var messages = 0
    /// Conversations already there from an interrupted run (resumed), each checked complete.
    public var alreadyCopied = 0
    /// (message, term) pairs of the search index added in the second phase (SQLite → PostgreSQL).
    public var termPairs = 0
    /// Conversations and messages compared byte for byte with the source after the copy.
    public var verifiedConversations = 0
    public var verifiedMessages = 0
    /// Import records, proxy tokens and thread digests copied (and compared).
    public var sideRows = 0
    /// Subject keys carried (and compared) to the destination's subject-key store, and the ids of
    /// forgotten ones listed there.
    public var subjectKeys = 0
    public var forgottenSubjectKeys = 0
    /// Forget receipts and interrupted forgets carried (and compared).
    public var forgetReceipts = 0
    public var pendingForgets = 0
    /// Rows of the source that a copy does not carry, by kind (none today; kept for callers that
    /// report it).
    public var notCopied: [String: Int] = [:]
}

/// Where a copy's subject keys come from and go to, worked out before anything is written.
struct SubjectKeyCopyPlan: Sendable {
    /// The source's subject-key store and its head; nil when it has none (or none reachable).
    var source: (any SubjectKeyCopying)?
    var head: SubjectKeyHead?
    /// Whether the copy opened `source` itself (and closes it).
    var ownsSource = false
    /// The destination's subject-key store (it gets the source's rows, or holds the keys already).
    var destination: (any SubjectKeyCopying)?

    func close() async { if ownsSource { await source?.closeCopy() } }
}

extension ChatLogStore {
    /// The `chatlog_meta` values a copy carries: the store's identity, its master-key check value
    /// and fingerprint, and the passphrase parameters.
    static let copiedMeta = [
        "store_id", "created_at", "master_check", "master_fingerprint", "key_kind", "kdf_algorithm", "kdf_salt", "kdf_opslimit", "kdf_memlimit",
        ImportKey.metaName,
    ]

    /// Copies this store to `destination` (another backend, or another SQLite file) **without
    /// opening any sealed value**: sealed values are bound to table, column and public id, which
    /// a copy keeps, so the bytes move as they are, with the wrapped keys and their MACs. The
    /// destination must be empty or hold an interrupted copy of this store (same store id and key
    /// rows): conversations are copied whole, up to 500 per transaction, so a run that was killed
    /// is resumed by running it again. Afterwards every conversation and message of the destination is
    /// compared byte for byte with the source, and the search index's pairs are counted on both.
    ///
    /// The subject keys go with it (docs/ARCHITECTURE.md §10, "Erasure per subject"): the rows of the
    /// source's subject-key store (the file next to a SQLite store; a PostgreSQL store's
    /// CHATLOG_SUBJECT_KEYS database) are copied as bytes into `subjectKeys` — the wrapped keys are
    /// bound to store id, key id and subject hash, which the copy keeps — first, before any
    /// conversation, then the forgotten ids, the pending forgets and the forget receipts. Refused
    /// before anything is written: a store with subject keys and no `subjectKeys`, a `subjectKeys`
    /// holding another store's or other keys, conversations under subject keys that no reachable
    /// store holds. Positions are
    /// renumbered from 0 where the source has gaps (deleted single messages). Writers should be
    /// stopped: a conversation that grows during the copy fails the verification.
    package func copy(
        to destination: any ChatLogStorage, subjectKeys: (any SubjectKeyCopying)?, progress: (@Sendable (Int) -> Void)? = nil
    ) async throws(ChatLogError) -> CopyReport {
        let plan = try await subjectKeyCopyPlan(to: subjectKeys)
        return try await Self.finally({ () async throws(ChatLogError) in try await copy(to: destination, plan: plan, progress: progress) }) {
            await plan.close()
        }
    }

    private func copy(to destination: any ChatLogStorage, plan: SubjectKeyCopyPlan, progress: (@Sendable (Int) -> Void)?) async throws(ChatLogError)
        -> CopyReport
    {
        let source: any ChatLogStorage
        var sqlitePool: DatabasePool?
        switch backend {
        case .sqlite(let pool):
            source = try SQLiteStorage.open(path: path, options: options)
            sqlitePool = pool
        case .storage(let storage):
            source = storage
        }
        return try await Self.finally({ () async throws(ChatLogError) in
            try await copy(from: source, sqlite: sqlitePool, to: destination, subjectKeyPlan: plan, progress: progress)
        }) {
            if sqlitePool != nil { await source.close() }
        }
    }

    /// A copy into the SQLite file at `location` (new, or an interrupted copy of this store), its
    /// subject keys into `location.subject-keys`. A file of another program is refused untouched,
    /// and so is this store's own file.
    package func copy(toFile location: String, progress: (@Sendable (Int) -> Void)? = nil) async throws(ChatLogError) -> CopyReport {
        if PrivateFiles.isDirectory(location) { throw .storeIsADirectory(path: location) }
        if storage == nil, let here = Self.fileIdentity(path), let there = Self.fileIdentity(location), here == there {
            throw .invalidInput("the destination is this store's own file")
        }
        if PrivateFiles.fileExists(location), (PrivateFiles.fileSize(location) ?? 0) > 0 { _ = try Self.holdsInitializedStore(location) }
        let keys = SubjectKeyFileCopy(storePath: location, readOnly: false)
        return try await Self.finally({ () async throws(ChatLogError) in
            let plan = try await subjectKeyCopyPlan(to: keys)  // before the file is made
            return try await Self.finally({ () async throws(ChatLogError) in
                try await copyAndClose(to: try SQLiteStorage.open(path: location), plan: plan, progress: progress)
            }) { await plan.close() }
        }) { await keys.closeCopy() }
    }

    /// The subject-key store of this store as a copy reads it, and what to say when it is missing.
    private var copySourceKeys: (store: (any SubjectKeyCopying)?, owned: Bool, missing: String) {
        switch backend {
        case .sqlite:
            return (SubjectKeyFileCopy(storePath: path, readOnly: true), true, "\(path)\(SubjectKeyFile.suffix) is missing: put this store's subject-key file back")
        case .storage:
            return (
                (subjectKeyStore as? SealedSubjectKeys)?.rows as? any SubjectKeyCopying, false,
                "CHATLOG_SUBJECT_KEYS, the store's subject-key database, is not set"
            )
        }
    }

    /// How many conversations are sealed under subject keys (from their subject's header, which
    /// also finds those of a backup made before `erasure_key_id` was filled by copies).
    private func subjectKeyConversationCount() async throws(ChatLogError) -> Int {
        switch backend {
        case .sqlite(let pool):
            do {
                return try await pool.read { db in
                    try Int.fetchOne(
                        db,
                        sql: """
                            SELECT count(*) FROM conversations
                            WHERE erasure_key_id IS NOT NULL OR (length(subject) >= 50 AND hex(substr(subject, 1, 1)) = '02')
                            """) ?? 0
                }
            } catch {
                throw ChatLogError.wrap(error)
            }
        case .storage(let storage):
            guard let erasure = storage as? any ErasureStorage else { return 0 }
            return try await erasure.subjectKeyConversationCount()
        }
    }

    /// Whether the store has forgotten subject-key ids, interrupted forgets or forget receipts.
    private func hasErasureRows() async throws(ChatLogError) -> Bool {
        switch backend {
        case .sqlite(let pool):
            do {
                return try await pool.read { db in !(try SQLiteStorage.erasureRows(db)).isEmpty }
            } catch {
                throw ChatLogError.wrap(error)
            }
        case .storage(let storage):
            return !(try await storage.erasureRows()).isEmpty
        }
    }

    /// Where the subject keys come from and go to; every refusal before anything is written.
    func subjectKeyCopyPlan(to destination: (any SubjectKeyCopying)?) async throws(ChatLogError) -> SubjectKeyCopyPlan {
        let (sourceKeys, owned, missing) = copySourceKeys
        var plan = SubjectKeyCopyPlan(source: sourceKeys, ownsSource: owned, destination: destination)
        do throws(ChatLogError) {
            let sealed = try await subjectKeyConversationCount()
            let conversations = "\(sealed) conversation\(sealed == 1 ? " is" : "s are") sealed under per-subject keys"
            plan.head = try await sourceKeys?.copyHead()
            let forgotten = plan.head == nil && sealed == 0 ? try await hasErasureRows() : false
            if let head = plan.head, let sourceKeys {
                try requireThisStore(head, in: sourceKeys)
                guard let destination else {
                    let why = sealed > 0 ? conversations : "its forget receipts and forgotten key ids go with them"
                    throw .invalidInput(
                        "this store has per-subject keys (\(why)): the destination needs a subject-key database of its own (`chatlog copy --subject-keys-to postgresql://…`, docs/OPERATIONS.md); nothing was copied")
                }
                guard destination.location != sourceKeys.location, try await !destination.isSameStore(as: sourceKeys) else {
                    throw destination.copyFailure("it is the source's own subject-key store; the copy needs one of its own")
                }
                if let found = try await destination.copyHead() { try destination.requireSame(found, as: head) }
            } else if sealed > 0 || forgotten {
                // No keys to carry: they must be at the destination already (a backup restored
                // next to the key database it was made from). Also when no conversation is sealed
                // under one any more but forgets were made: the key store's next id goes with the
                // forgotten ids, so that a key store made anew never hands out a forgotten id again.
                guard let destination, let found = try await destination.copyHead() else {
                    let what =
                        sealed > 0
                        ? "\(conversations), whose keys are not reachable"
                        : "this store has forget receipts or forgotten subject-key ids, and its subject-key store, which must go with them, is not reachable"
                    throw .invalidInput("\(what) (\(missing)); nothing was copied (docs/OPERATIONS.md)")
                }
                try requireThisStore(found, in: destination)
            } else {
                plan.destination = nil  // nothing to carry or to check
            }
            return plan
        } catch {
            await plan.close()
            throw error
        }
    }

    /// Refuses a subject-key store (`head` read from `keys`) that is not this store's or not wrapped
    /// under its master key.
    private func requireThisStore(_ head: SubjectKeyHead, in keys: any SubjectKeyCopying) throws(ChatLogError) {
        guard head.storeID == subjectKeys.storeID else { throw keys.copyFailure("it belongs to another store") }
        guard KeyRowAuthentication.equal(head.masterCheck, keyRing.master.checkValueV2) else {
            throw keys.copyFailure("it is not wrapped under this store's master key")
        }
    }

    /// ``copy(to:subjectKeys:progress:)``, then the destination's connections are released (also on failure).
    package func copyAndClose(
        to destination: any ChatLogStorage, subjectKeys: (any SubjectKeyCopying)?, progress: (@Sendable (Int) -> Void)? = nil
    ) async throws(ChatLogError) -> CopyReport {
        try await Self.finally({ () async throws(ChatLogError) in try await copy(to: destination, subjectKeys: subjectKeys, progress: progress) }) {
            await destination.close()
        }
    }

    private func copyAndClose(to destination: any ChatLogStorage, plan: SubjectKeyCopyPlan, progress: (@Sendable (Int) -> Void)?)
        async throws(ChatLogError) -> CopyReport
    {
        try await Self.finally({ () async throws(ChatLogError) in try await copy(to: destination, plan: plan, progress: progress) }) {
            await destination.close()
        }
    }

    /// `body`'s result, with `cleanup` run after it whether it returned or threw.
    static func finally<T>(_ body: () async throws(ChatLogError) -> T, _ cleanup: () async -> Void) async throws(ChatLogError) -> T {
        let result: Result<T, ChatLogError>
        do throws(ChatLogError) { result = .success(try await body()) } catch { result = .failure(error) }
        await cleanup()
        return try result.get()
    }

    /// (device, inode) of a file, to tell two names of one file apart from two files.
    private static func fileIdentity(_ path: String) -> [UInt64]? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return [UInt64(info.st_dev), UInt64(info.st_ino)]
    }

    /// The copy itself. `subjectKeyPlan`: where the subject keys go (nil: they stay where they are — a
    /// backup, whose keys are backed up on their own); the erasure rows of the store go in any case.
    func copy(
        from source: any ChatLogStorage, sqlite: DatabasePool?, to destination: any ChatLogStorage, subjectKeyPlan: SubjectKeyCopyPlan?,
        progress: (@Sendable (Int) -> Void)?
    ) async throws(ChatLogError) -> CopyReport {
        var report = CopyReport()
        // 1. The store's identity and keys, verbatim; or the same ones already there (resume).
        var meta: [String: MetaValue] = [:]
        for name in Self.copiedMeta { if let value = try await source.meta(name) { meta[name] = value } }
        let keys = try await source.keyRows()
        guard case .blob(let check)? = meta["master_check"], let activeData = keys.first(where: { $0.kind == "data" && $0.state == "active" }),
            let activeIndex = keys.first(where: { $0.kind == "index" && $0.state == "active" })
        else { throw .notAChatLogStore(path: path, reason: "it has no master-key check value or no active keys") }
        try await destination.migrate()
        let resumed = try await destination.isInitialized()
        if resumed {
            guard try await destination.meta("store_id") == meta["store_id"] else {
                throw .invalidInput("\(destination.location) holds another chatlog store; copy into an empty database or a new file")
            }
            guard try await destination.keyRows() == keys else {
                throw .invalidInput(
                    "the keys of \(destination.location) are not this store's any more (a key job ran on one of them since the copy began); copy again into an empty destination")
            }
        }
        // 1b. The subject keys, before any conversation sealed under them (idempotent: same ids).
        if let plan = keysToCarry(subjectKeyPlan) { report.subjectKeys = try await Self.copySubjectKeys(plan.source, plan.head, to: plan.destination) }
        if !resumed { try await destination.initialize(meta: meta, keys: keys) }
        let writeGuard = WriteGuard(acceptedCheckValues: [check], activeDataKeyID: activeData.id, activeIndexKeyID: activeIndex.id)

        // 2. Conversations with their messages, one transaction each. From SQLite into a backend
        // that takes terms later, the terms follow in one pass over the index (3); otherwise each
        // message carries its terms.
        let termsLater = sqlite != nil && destination.addsTermsLater
        var cursor: MessageCursor?
        while true {
            let page = try await source.conversations(ConversationFilter(), after: cursor, limit: 500)
            let there = try await destination.conversationCopies(page.map(\.row.id), withTerms: false)
            var wanted: [String] = []
            for listed in page {
                guard let copied = there[listed.row.id] else {
                    wanted.append(listed.row.id)
                    continue
                }
                guard copied.messages.count == listed.messageCount else {
                    throw .invalidInput(
                        "conversation \(listed.row.id) has \(copied.messages.count) messages at \(destination.location) and \(listed.messageCount) here (it changed since the copy began); copy again into an empty destination")
                }
                report.alreadyCopied += 1
            }
            let read = try await source.conversationCopies(wanted, withTerms: !termsLater)
            let batch = wanted.compactMap { read[$0] }
            do {
                try await destination.insertCopies(batch, guard: writeGuard)
            } catch let error as ChatLogError {
                throw error
            } catch {
                throw .storage("\(destination.location) refused a batch of \(batch.count) conversations (\(error)); nothing of it was written")
            }
            report.conversations += batch.count
            report.messages += batch.reduce(0) { $0 + $1.messages.count }
            progress?(report.conversations + report.alreadyCopied)
            guard page.count == 500, let last = page.last else { break }
            cursor = last.cursor
        }

        // 3. The search index, from SQLite's FTS5 into a term table: every (message, term) pair, a
        // two-character term prefix at a time (bounded memory), joined to the message ids in SQL.
        if termsLater, let sqlite {
            let bulk = try await destination.beginTermLoad()
            let alphabet = Array("234567abcdefghijklmnopqrstuvwxyz")
            let characters = TokenBlinder.defaultBits / 5
            for first in alphabet {
                for second in alphabet {
                    let low = String([first, second])
                    let high = String([first, second]) + "~"
                    let pairs: [(messageID: String, term: UInt64)]
                    do {
                        pairs = try await sqlite.read { db in
                            var pairs: [(messageID: String, term: UInt64)] = []
                            let rows = try Row.fetchCursor(
                                db,
                                sql: """
                                    SELECT m.id, v.term FROM message_terms_instance v JOIN messages m ON m.seq = v.doc
                                    WHERE v.term >= ? AND v.term < ?
                                    """, arguments: [low, high])
                            while let row = try rows.next() {
                                let text: String = row[1]
                                if let term = Array(text.utf8).withUnsafeBytes({ TokenBlinder.decode($0, characters: characters) }) {
                                    pairs.append((row[0], term))
                                }
                            }
                            return pairs
                        }
                    } catch {
                        throw ChatLogError.wrap(error)
                    }
                    for start in stride(from: 0, to: pairs.count, by: 20_000) {
                        try await destination.addTerms(Array(pairs[start..<min(pairs.count, start + 20_000)]))
                    }
                    report.termPairs += pairs.count
                }
            }
            if bulk { try await destination.endTermLoad() }
        }

        // 4. Verification: every row byte for byte (positions aside), and the index's pair counts.
        var sealedUnder = Set<Int64>()
        cursor = nil
        while true {
            let page = try await source.conversations(ConversationFilter(), after: cursor, limit: 500)
            let ids = page.map(\.row.id)
            let (originals, copies) = (try await source.conversationCopies(ids, withTerms: false), try await destination.conversationCopies(ids, withTerms: false))
            for id in ids {
                guard let original = originals[id] else { continue }  // deleted from the source meanwhile
                guard let copy = copies[id] else {
                    throw .integrity(IntegrityFailure(table: "conversations", column: "id", rowID: id, reason: .invalidValue("is missing after the copy")))
                }
                guard copy.conversation == original.conversation else {
                    throw .integrity(IntegrityFailure(table: "conversations", column: "*", rowID: id, reason: .invalidValue("differs after the copy")))
                }
                guard copy.messages.count == original.messages.count else {
                    throw .integrity(IntegrityFailure(table: "messages", column: "*", rowID: id, reason: .invalidValue("the conversation's messages differ after the copy")))
                }
                for (left, right) in zip(original.messages, copy.messages) {
                    var right = right
                    right.position = left.position
                    guard left == right else {
                        throw .integrity(IntegrityFailure(table: "messages", column: "*", rowID: left.id, reason: .invalidValue("differs after the copy")))
                    }
                }
                if let id = copy.conversation.subject.flatMap(SealedValue.subjectKeyID) { sealedUnder.insert(Int64(id.rawValue)) }
                report.verifiedConversations += 1
                report.verifiedMessages += copy.messages.count
            }
            guard page.count == 500, let last = page.last else { break }
            cursor = last.cursor
        }
        // 5. Import records, proxy tokens and thread digests (keyed; valid under the same keys), then
        // compared with the source's.
        let side = try await source.sideRows()
        try await destination.insertSideRows(side)
        guard try await destination.sideRows().normalized == side.normalized else {
            throw .integrity(
                IntegrityFailure(
                    table: "imports, proxy_tokens, proxy_threads", column: "*", rowID: "all", reason: .invalidValue("differ after the copy")))
        }
        report.sideRows = side.imports.count + side.tokens.count + side.threads.count
        // 6. The subject keys compared, every subject conversation's key there (or forgotten), and
        // the erasure rows (forgotten ids, pending forgets, receipts) carried and compared.
        if let plan = keysToCarry(subjectKeyPlan) {
            try await Self.compareSubjectKeys(plan.source, plan.destination)
            report.forgottenSubjectKeys = try await plan.destination.copyForgotten().count
        }
        if let destinationKeys = subjectKeyPlan?.destination, !sealedUnder.isEmpty {
            let ids = sealedUnder.sorted()
            let there = try await destinationKeys.presentKeyIDs(ids).union(try await destinationKeys.copyForgotten().map(\.id))
            if let missing = ids.first(where: { !there.contains($0) }) {
                throw .integrity(
                    IntegrityFailure(
                        table: destinationKeys.location + ":subject_keys", column: "id", rowID: String(missing),
                        reason: .invalidValue("is neither there nor forgotten, and conversations are sealed under it")))
            }
        }
        let erasure = try await source.erasureRows()
        if !erasure.isEmpty { try await destination.insertErasureRows(erasure) }
        guard try await destination.erasureRows() == erasure else {
            throw .integrity(
                IntegrityFailure(
                    table: "forgotten_subject_keys, forget_pending, forget_receipts", column: "*", rowID: "all", reason: .invalidValue("differ after the copy")))
        }
        (report.forgetReceipts, report.pendingForgets) = (erasure.receipts.count, erasure.pending.count)
        let (sourcePairs, copiedPairs) = (try await source.termPairCount(), try await destination.termPairCount())
        guard sourcePairs == copiedPairs else {
            throw .integrity(
                IntegrityFailure(
                    table: "message_terms", column: "*", rowID: "all",
                    reason: .invalidValue("holds \(copiedPairs) (message, term) pairs after the copy, the source \(sourcePairs)")))
        }
        return report
    }

    /// The plan's source and destination when there are keys to carry.
    private func keysToCarry(_ plan: SubjectKeyCopyPlan?) -> (source: any SubjectKeyCopying, head: SubjectKeyHead, destination: any SubjectKeyCopying)? {
        guard let plan, let source = plan.source, let head = plan.head, let destination = plan.destination else { return nil }
        return (source, head, destination)
    }

    /// Keys moved per transaction.
    static let subjectKeyBatch = 5_000

    /// The head, the keys (a batch per transaction) and the forgotten ids, as bytes. Returns how
    /// many keys the source has.
    private static func copySubjectKeys(_ source: any SubjectKeyCopying, _ head: SubjectKeyHead, to destination: any SubjectKeyCopying)
        async throws(ChatLogError) -> Int
    {
        try await destination.receive(head: head)
        var after = Int64.min
        var count = 0
        while true {
            let batch = try await source.copyKeys(after: after, limit: subjectKeyBatch)
            try await destination.receive(keys: batch)
            count += batch.count
            guard batch.count == subjectKeyBatch, let last = batch.last else { break }
            after = last.id
        }
        try await destination.receive(forgotten: try await source.copyForgotten(), nextID: head.nextID)
        return count
    }

    /// Every key of the source is at the destination with the same bytes, and every forgotten id
    /// is listed there; the destination's head is the source's.
    private static func compareSubjectKeys(_ source: any SubjectKeyCopying, _ destination: any SubjectKeyCopying) async throws(ChatLogError) {
        func differ(_ row: String) -> ChatLogError {
            .integrity(
                IntegrityFailure(table: destination.location + ":subject_keys", column: "*", rowID: row, reason: .invalidValue("differs after the copy")))
        }
        guard let original = try await source.copyHead(), let copied = try await destination.copyHead(), copied.sameKeys(as: original),
            copied.nextID >= original.nextID
        else { throw differ("meta") }
        var after = Int64.min
        // The destination's keys, read ahead in id order (it may hold others: a restore's).
        var there: [CopiedSubjectKey] = []
        var index = 0
        var thereAfter = Int64.min
        var thereExhausted = false
        while true {
            let batch = try await source.copyKeys(after: after, limit: subjectKeyBatch)
            for key in batch {
                while true {
                    while index < there.count, there[index].id < key.id { index += 1 }
                    if index < there.count || thereExhausted { break }
                    there = try await destination.copyKeys(after: thereAfter, limit: subjectKeyBatch)
                    index = 0
                    thereExhausted = there.count < subjectKeyBatch
                    if let last = there.last { thereAfter = last.id }
                }
                guard index < there.count, there[index] == key else { throw differ(String(key.id)) }
            }
            guard batch.count == subjectKeyBatch, let last = batch.last else { break }
            after = last.id
        }
        let listed = Set(try await destination.copyForgotten().map(\.id))
        if let missing = try await source.copyForgotten().first(where: { !listed.contains($0.id) }) { throw differ("forgotten \(missing.id)") }
    }
}
