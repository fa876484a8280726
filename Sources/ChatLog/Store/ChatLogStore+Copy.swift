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
    /// Rows of the source that a copy does not carry yet, by kind (e.g. "forget receipts": 3).
    public var notCopied: [String: Int] = [:]
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
    /// Not carried yet (the copy refuses or reports them): conversations sealed under per-subject
    /// keys (refused: their keys live in a file next to a SQLite store) and forget receipts
    /// (counted in ``CopyReport/notCopied``). Import records, proxy tokens and thread digests are
    /// carried and compared. Positions are
    /// renumbered from 0 where the source has gaps (deleted single messages). Writers should be
    /// stopped: a conversation that grows during the copy fails the verification.
    package func copy(to destination: any ChatLogStorage, progress: (@Sendable (Int) -> Void)? = nil) async throws(ChatLogError) -> CopyReport {
        let source: any ChatLogStorage
        var sqlitePool: DatabasePool?
        switch backend {
        case .sqlite(let pool):
            source = try SQLiteStorage.open(path: path, options: options)
            sqlitePool = pool
        case .storage(let storage):
            source = storage
            try await refuseSubjectKeyRows(storage)
        }
        do {
            let report = try await copy(from: source, sqlite: sqlitePool, to: destination, progress: progress)
            if sqlitePool != nil { await source.close() }
            return report
        } catch {
            if sqlitePool != nil { await source.close() }
            throw error
        }
    }

    /// A copy into the SQLite file at `location` (new, or an interrupted copy of this store). A
    /// file of another program is refused untouched, and so is this store's own file.
    package func copy(toFile location: String, progress: (@Sendable (Int) -> Void)? = nil) async throws(ChatLogError) -> CopyReport {
        if PrivateFiles.isDirectory(location) { throw .storeIsADirectory(path: location) }
        if let storage { try await refuseSubjectKeyRows(storage) }  // before the file is made
        if storage == nil, let here = Self.fileIdentity(path), let there = Self.fileIdentity(location), here == there {
            throw .invalidInput("the destination is this store's own file")
        }
        if PrivateFiles.fileExists(location), (PrivateFiles.fileSize(location) ?? 0) > 0 { _ = try Self.holdsInitializedStore(location) }
        return try await copyAndClose(to: try SQLiteStorage.open(path: location), progress: progress)
    }

    /// A store behind the seam whose conversations are sealed under subject keys cannot be copied
    /// yet: their keys are in the subject-key database (CHATLOG_SUBJECT_KEYS), which a copy does not
    /// move. (A backup carries them: it restores into PostgreSQL, where their keys stay.)
    func refuseSubjectKeyRows(_ storage: any ChatLogStorage) async throws(ChatLogError) {
        guard let erasure = storage as? any ErasureStorage else { return }
        let subject = try await erasure.subjectKeyConversationCount()
        if subject > 0 {
            throw .invalidInput(
                "\(subject) conversation\(subject == 1 ? " is" : "s are") sealed under per-subject keys, whose database (CHATLOG_SUBJECT_KEYS) `copy` cannot move yet; nothing was copied (docs/OPERATIONS.md)")
        }
    }

    /// ``copy(to:progress:)``, then the destination's connections are released (also on failure).
    package func copyAndClose(to destination: any ChatLogStorage, progress: (@Sendable (Int) -> Void)? = nil) async throws(ChatLogError)
        -> CopyReport
    {
        do {
            let report = try await copy(to: destination, progress: progress)
            await destination.close()
            return report
        } catch {
            await destination.close()
            throw error
        }
    }

    /// (device, inode) of a file, to tell two names of one file apart from two files.
    private static func fileIdentity(_ path: String) -> [UInt64]? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return [UInt64(info.st_dev), UInt64(info.st_ino)]
    }

    func copy(
        from source: any ChatLogStorage, sqlite: DatabasePool?, to destination: any ChatLogStorage, progress: (@Sendable (Int) -> Void)?
    ) async throws(ChatLogError) -> CopyReport {
        var report = CopyReport()
        // 0. What a copy cannot carry yet.
        if let sqlite {
            let counts: [String: Int]
            do {
                counts = try await sqlite.read { db in
                    var counts: [String: Int] = [:]
                    for (name, sql) in [
                        ("subject", "SELECT count(*) FROM conversations WHERE erasure_key_id IS NOT NULL"),
                        ("forget receipts", "SELECT count(*) FROM forget_receipts"),
                    ] {
                        counts[name] = try Int.fetchOne(db, sql: sql) ?? 0
                    }
                    return counts
                }
            } catch {
                throw ChatLogError.wrap(error)
            }
            if let subject = counts["subject"], subject > 0 {
                throw .invalidInput(
                    "\(subject) conversation\(subject == 1 ? " is" : "s are") sealed under per-subject keys, which `copy` cannot move yet; nothing was copied")
            }
            report.notCopied = counts.filter { $0.key != "subject" && $0.value > 0 }
        }

        // 1. The store's identity and keys, verbatim; or the same ones already there (resume).
        var meta: [String: MetaValue] = [:]
        for name in Self.copiedMeta { if let value = try await source.meta(name) { meta[name] = value } }
        let keys = try await source.keyRows()
        guard case .blob(let check)? = meta["master_check"], let activeData = keys.first(where: { $0.kind == "data" && $0.state == "active" }),
            let activeIndex = keys.first(where: { $0.kind == "index" && $0.state == "active" })
        else { throw .notAChatLogStore(path: path, reason: "it has no master-key check value or no active keys") }
        try await destination.migrate()
        if try await destination.isInitialized() {
            guard try await destination.meta("store_id") == meta["store_id"] else {
                throw .invalidInput("\(destination.location) holds another chatlog store; copy into an empty database or a new file")
            }
            guard try await destination.keyRows() == keys else {
                throw .invalidInput(
                    "the keys of \(destination.location) are not this store's any more (a key job ran on one of them since the copy began); copy again into an empty destination")
            }
        } else {
            try await destination.initialize(meta: meta, keys: keys)
        }
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
                let (sourcePairs, copiedPairs) = (try await source.termPairCount(), try await destination.termPairCount())
        guard sourcePairs == copiedPairs else {
            throw .integrity(
                IntegrityFailure(
                    table: "message_terms", column: "*", rowID: "all",
                    reason: .invalidValue("holds \(copiedPairs) (message, term) pairs after the copy, the source \(sourcePairs)")))
        }
        return report
    }
}
