import Foundation
import GRDB
import Synchronization

/// How a rotation run behaves. Defaults suit a cron job: resume unfinished work, no new key.
public struct RotationOptions: Sendable {
    /// Make a new key active first, even if the current one is young.
    public var newKey: Bool
    /// Make a new key active first if the active one is older than this.
    public var ifOlderThan: TimeInterval?
    /// Rows per transaction.
    public var batchSize: Int
    /// Stop starting new batches after this long; the run then reports rows remaining.
    public var maxDuration: TimeInterval?
    /// Count what would be done and change nothing.
    public var dryRun: Bool
    /// Called after each batch (on the calling thread).
    public var progress: (@Sendable (RotationProgress) -> Void)?
    /// Polled before each batch; return false to stop early (cancellation).
    public var shouldContinue: (@Sendable () -> Bool)?

    public init(
        newKey: Bool = false, ifOlderThan: TimeInterval? = nil, batchSize: Int = 500, maxDuration: TimeInterval? = nil,
        dryRun: Bool = false, progress: (@Sendable (RotationProgress) -> Void)? = nil,
        shouldContinue: (@Sendable () -> Bool)? = nil
    ) {
        self.newKey = newKey
        self.ifOlderThan = ifOlderThan
        self.batchSize = batchSize
        self.maxDuration = maxDuration
        self.dryRun = dryRun
        self.progress = progress
        self.shouldContinue = shouldContinue
    }
}

public struct RotationProgress: Sendable {
    public let kind: KeyStatus.Entry.Kind
    public let done: Int
    /// Rows still under other keys when the run started, minus those done (an estimate: writers
    /// may delete rows meanwhile).
    public let remaining: Int
}

public struct RotationReport: Sendable {
    public let kind: KeyStatus.Entry.Kind
    /// Whether this run made (with `dryRun`: would make) a new key active.
    public let createsNewKey: Bool
    /// The key made active by this run, if any.
    public let newKeyID: KeyID?
    public let activeKeyID: KeyID
    /// Rows moved to the active key by this run.
    public let rewritten: Int
    /// Rows still under older keys when the run ended, not counting `damaged`: 0 means done.
    public let remaining: Int
    /// Rows skipped because a sealed value did not open (table, column, row id and why); they
    /// stay under their old key. Each is reported, the rest of the rows are rotated.
    public let damaged: [IntegrityFailure]
    /// Rows under each older key at the start (what a dry run reports).
    public let rowsByKey: [KeyID: Int]
    public let dryRun: Bool
    public var complete: Bool { remaining == 0 }
}

extension ChatLogStore {
    /// Data-key rotation (docs/ARCHITECTURE.md §5): under the store's key lock, optionally makes a new data key
    /// active (every process learns it before any row uses it: writers check the active key
    /// inside their transaction), then re-seals every row still under an older data key in
    /// batches. Each batch is one IMMEDIATE transaction whose updates are compare-and-swap on the
    /// row's key id and ciphertext, so a concurrent change is never overwritten. "key id ≠
    /// active" is the checkpoint: a run killed at any instant loses nothing, and the next run
    /// continues. Ends with a truncating WAL checkpoint.
    public func rotateDataKey(_ options: RotationOptions) throws(ChatLogError) -> RotationReport {
        try rotate(.data, options)
    }

    /// Makes a new data key active (unless `newKey` is false) and re-seals everything under it.
    /// Returns the number of rows rewritten.
    @discardableResult
    public func rotateDataKey(newKey: Bool = true, batchSize: Int = 500) throws(ChatLogError) -> Int {
        try rotate(.data, RotationOptions(newKey: newKey, batchSize: batchSize)).rewritten
    }

    /// Index-key rotation: a new index key, then every message's blinded terms and every
    /// subject token rebuilt under it in batches. Search stays exact meanwhile (queries use every
    /// live index key); resumable the same way as data-key rotation.
    public func rotateIndexKey(_ options: RotationOptions) throws(ChatLogError) -> RotationReport {
        try rotate(.index, options)
    }

    /// Makes a new index key active (unless `newKey` is false; then only unfinished work goes on)
    /// and rebuilds every term under it. Returns the number of rows re-indexed.
    @discardableResult
    public func rotateIndexKey(newKey: Bool = true, batchSize: Int = 1_000) throws(ChatLogError) -> Int {
        try rotate(.index, RotationOptions(newKey: newKey, batchSize: batchSize)).rewritten
    }

    /// Async forms: run on a background thread, cancelled with the calling task.
    public func rotateDataKey(_ options: RotationOptions) async throws(ChatLogError) -> RotationReport {
        try await runDetached(.data, options)
    }

    public func rotateIndexKey(_ options: RotationOptions) async throws(ChatLogError) -> RotationReport {
        try await runDetached(.index, options)
    }

    private func runDetached(_ kind: KeyStatus.Entry.Kind, _ options: RotationOptions) async throws(ChatLogError) -> RotationReport {
        if let storage { return try await storageRotate(kind, options, storage) }
        let cancelled = CancellationFlag()
        var options = options
        let outer = options.shouldContinue
        options.shouldContinue = { !cancelled.isSet && (outer?() ?? true) }
        let frozen = options
        // The worker lets go of the store before it resumes the caller, so the caller's last
        // reference really is the last one. Held by the Dispatch block until that block is
        // released, the store could still be alive (or being torn down on the worker thread)
        // when `chatlog key rotate` exits right after this; LeakSanitizer then reports the Data
        // values its cached statements still hold as leaked (it cannot follow the tagged
        // pointers of Swift enums), and the sanitized run exits 1.
        let handoff = StoreHandoff(self)
        let result: Result<RotationReport, ChatLogError> = await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                DispatchQueue.global().async {
                    let result = handoff.run { store throws(ChatLogError) in try store.rotate(kind, frozen) }
                    continuation.resume(returning: result)
                }
            }
        } onCancel: {
            cancelled.set()
        }
        return try result.get()
    }

    func rotate(_ kind: KeyStatus.Entry.Kind, _ options: RotationOptions) throws(ChatLogError) -> RotationReport {
        guard (1...100_000).contains(options.batchSize) else { throw .invalidInput("the batch size must be between 1 and 100000") }
        let lock = try keyJobLock()
        defer { withExtendedLifetime(lock) {} }
        let started = ContinuousClock.now
        let deadline = options.maxDuration.map { started + .milliseconds(Int64($0 * 1000)) }

        // 1. A new active key, if asked or if the active one is too old.
        _ = try read { db in try self.keyRing.reload(db) }
        let keys = keyRing.current
        let activeID = kind == .data ? keys.activeDataKey.id : keys.activeIndexKey.id
        var wantsNewKey = options.newKey
        if let age = options.ifOlderThan {
            let createdAt = try read { db in
                try Int64.fetchOne(db, sql: "SELECT created_at FROM keys WHERE id = ?", arguments: [Int64(activeID.rawValue)]) ?? 0
            }
            wantsNewKey = wantsNewKey || Date().timeIntervalSince(Date(unixMilliseconds: createdAt)) > age
        }
        let before = try rowsByKey(kind, excluding: activeID)
        if options.dryRun {
            // With a new key, every row (also those under the current active key) would move.
            var rows = before
            if wantsNewKey { rows[activeID, default: 0] += try rowsUnder(kind, key: activeID) }
            return RotationReport(
                kind: kind, createsNewKey: wantsNewKey, newKeyID: nil, activeKeyID: activeID, rewritten: 0,
                remaining: rows.values.reduce(0, +), damaged: [], rowsByKey: rows, dryRun: true)
        }
        var newKeyID: KeyID?
        if wantsNewKey {
            newKeyID = try writeImmediate { db in
                let id = try KeyRing.addActiveKey(kind: kind, master: self.keyRing.master, db: db)
                try self.keyRing.reload(db)
                // The key just made must be the active one before anything is re-sealed or
                // reported (a planted trigger could have re-pinned an older key).
                guard self.keyRing.current.activeKey(kind) == id else {
                    throw ChatLogError.integrity(
                        IntegrityFailure(
                            table: "keys", column: "state", rowID: "\(kind.rawValue):\(id)",
                            reason: .invalidValue("is not active right after it was made active")))
                }
                return id
            }
        }
        let target = newKeyID ?? activeID
        let startRows = try rowsByKey(kind, excluding: target)
        var remaining = startRows.values.reduce(0, +)

        // 2. Batches until nothing is left, the deadline passes or the caller cancels.
        var rewritten = 0
        var skipped = SkippedRows()
        while remaining > 0 {
            if let deadline, ContinuousClock.now >= deadline { break }
            if let shouldContinue = options.shouldContinue, !shouldContinue() { break }
            let done = try rotateBatch(kind, limit: options.batchSize, skipping: &skipped)
            if done.examined == 0 { remaining = 0; break }
            rewritten += done.rewritten
            remaining = max(0, remaining - done.examined)
            options.progress?(RotationProgress(kind: kind, done: rewritten, remaining: remaining))
        }
        let left = try rowsByKey(kind, excluding: keyRing.current.activeKey(kind)).values.reduce(0, +)
        // Every row is under the active index key: merge the index so that no term made under an
        // older key is left in any segment (this also finishes a scrub an earlier run left pending).
        if kind == .index, left == 0 { try scrubSearchIndexIfPending() }
        try checkpoint()
        return RotationReport(
            kind: kind, createsNewKey: newKeyID != nil, newKeyID: newKeyID, activeKeyID: keyRing.current.activeKey(kind), rewritten: rewritten,
            remaining: max(0, left - skipped.failures.count), damaged: skipped.failures, rowsByKey: startRows, dryRun: false)
    }

    /// Rows per key of `kind` other than `excluding` (what is left to rotate).
    func rowsByKey(_ kind: KeyStatus.Entry.Kind, excluding: KeyID) throws(ChatLogError) -> [KeyID: Int] {
        let sql =
            kind == .data
            ? """
            SELECT key_id AS k, count(*) AS n FROM (
                SELECT key_id FROM messages WHERE key_id <> ?1 UNION ALL SELECT key_id FROM conversations WHERE key_id <> ?1)
            GROUP BY key_id
            """
            : """
            SELECT k, count(*) AS n FROM (
                SELECT index_key_id AS k FROM messages WHERE index_key_id <> ?1
                UNION ALL SELECT subject_key_id AS k FROM conversations WHERE subject_key_id <> ?1)
            GROUP BY k
            """
        return try read { db in
            try Row.fetchAll(db, sql: sql, arguments: [Int64(excluding.rawValue)]).reduce(into: [KeyID: Int]()) {
                let key = try KeyID.stored(
                    try $1.decode(Int64.self, forColumn: "k"), table: "messages or conversations",
                    column: kind == .data ? "key_id" : "index_key_id or subject_key_id", rowID: "(one of them)")
                $0[key] = try $1.decode(Int.self, forColumn: "n")
            }
        }
    }

    private func rowsUnder(_ kind: KeyStatus.Entry.Kind, key: KeyID) throws(ChatLogError) -> Int {
        let sql =
            kind == .data
            ? "SELECT (SELECT count(*) FROM messages WHERE key_id = ?1) + (SELECT count(*) FROM conversations WHERE key_id = ?1)"
            : "SELECT (SELECT count(*) FROM messages WHERE index_key_id = ?1) + (SELECT count(*) FROM conversations WHERE subject_key_id = ?1)"
        return try read { db in try Int.fetchOne(db, sql: sql, arguments: [Int64(key.rawValue)]) ?? 0 }
    }

    /// One batch: read rows under older keys, re-seal them outside the write lock, then write
    /// them back in one IMMEDIATE transaction with compare-and-swap updates.
    private func rotateBatch(_ kind: KeyStatus.Entry.Kind, limit: Int, skipping skipped: inout SkippedRows) throws(ChatLogError)
        -> (examined: Int, rewritten: Int)
    {
        while true {
            let keys = keyRing.current
            let known = skipped
            let (updates, damaged) = try read { db in
                var batch = known
                let updates =
                    kind == .data
                    ? try self.resealBatch(keys: keys, limit: limit, skipping: &batch, db)
                    : try self.reblindBatch(keys: keys, limit: limit, skipping: &batch, db)
                return (updates, batch)
            }
            let newlyDamaged = damaged.failures.count - skipped.failures.count
            skipped = damaged
            if updates.isEmpty { return (newlyDamaged, 0) }
            do {
                let written = try pool.writeWithoutTransaction { db in
                    var written = 0
                    try db.inTransaction(.immediate) {
                        // Another process may have rotated again meanwhile: re-seal for the new key.
                        try self.checkKeysForWrite(keys, db)
                        var changed: [RowUpdate] = []
                        for update in updates {
                            // Cached statements: a batch runs the same few statements hundreds of times.
                            try db.cachedStatement(sql: update.sql).execute(arguments: update.arguments)
                            guard db.changesCount > 0 else { continue }  // deleted or changed meanwhile
                            written += 1
                            if !update.followUps.isEmpty { changed.append(update) }
                        }
                        // The search index's statements after all the row updates, not between them: an
                        // UPDATE with a foreign key or trigger opens a statement savepoint, and FTS5
                        // flushes its pending terms at every savepoint, so interleaving wrote one index
                        // segment per row (60 % of an index-key rotation's time in its profile) instead
                        // of one per batch.
                        for update in changed {
                            for (sql, arguments) in update.followUps { try db.cachedStatement(sql: sql).execute(arguments: arguments) }
                        }
                        // Re-blinding deleted old-key terms: they stay in the index's segments until merged away.
                        if kind == .index, written > 0 { try SearchIndex.markScrubPending(db) }
                        return .commit
                    }
                    return written
                }
                return (updates.count + newlyDamaged, written)
            } catch is StaleKeys {
                _ = try read { db in try self.keyRing.reload(db) }
            } catch {
                throw ChatLogError.wrap(error)
            }
        }
    }

    /// Rows a rotation run skipped because a sealed value did not open: excluded from its later
    /// batches (by seq), and reported.
    struct SkippedRows: Sendable {
        var messages: [Int64] = []
        var conversations: [Int64] = []
        var failures: [IntegrityFailure] = []

        /// A JSON array of the seqs, for `seq NOT IN (SELECT value FROM json_each(?))`.
        static func json(_ seqs: [Int64]) -> String { "[" + seqs.map(String.init).joined(separator: ",") + "]" }

        /// Runs `body` for one row; an integrity failure records the row as damaged and returns nil.
        mutating func attempt<T>(table: String, seq: Int64, _ body: () throws -> T) throws -> T? {
            do {
                return try body()
            } catch ChatLogError.integrity(let failure) {
                if table == "messages" { messages.append(seq) } else { conversations.append(seq) }
                failures.append(failure)
                return nil
            }
        }
    }

    struct RowUpdate: Sendable {
        let sql: String
        let arguments: StatementArguments
        /// Run only when the compare-and-swap update changed the row.
        var followUps: [(String, StatementArguments)] = []
    }

    /// "column ≠ ?1" in a form SQLite answers from the column's index (two ranges: a MULTI-INDEX
    /// OR). `<>` is not indexable: each batch would scan the table past every row already moved,
    /// which makes a rotation quadratic in the store's size.
    static func otherThan(_ column: String) -> String { "(\(column) < ?1 OR \(column) > ?1)" }

    /// Re-seals messages, then conversations, still under older data keys.
    /// The subject key a sealed value is under (version 2), to seal its new value under it too.
    func subjectOf(_ sealed: Data, _ context: FieldContext) throws(ChatLogError) -> (id: KeyID, key: SubjectKey)? {
        guard let id = SealedValue.subjectKeyID(of: sealed) else { return nil }
        return (id, try subjectKey(id, context))
    }

    private func resealBatch(keys: KeyRing.Loaded, limit: Int, skipping skipped: inout SkippedRows, _ db: Database) throws -> [RowUpdate] {
        let sealer = sealer(keys)
        let active = Int64(keys.activeDataKey.id.rawValue)
        var updates: [RowUpdate] = []
        for row in try Row.fetchAll(
            db,
            sql: """
                SELECT seq, id, key_id, content, metadata FROM messages
                WHERE \(Self.otherThan("key_id")) AND seq NOT IN (SELECT value FROM json_each(?3)) LIMIT ?2
                """,
            arguments: [active, limit, SkippedRows.json(skipped.messages)])
        {
            let id: String = try row.decode(forColumn: "id")
            let content = row.sealedBytes("content") ?? Data()
            let metadata = row.sealedBytes("metadata")
            let opened = try skipped.attempt(table: "messages", seq: try row.decode(Int64.self, forColumn: "seq")) {
                let plainContent = try openSealed(content, FieldContext(table: "messages", column: "content", rowID: id), db: db)
                let plainMetadata = try metadata.map { (sealed) throws(ChatLogError) in
                    try openSealed(sealed, FieldContext(table: "messages", column: "metadata", rowID: id), db: db)
                }
                return (plainContent, plainMetadata, try subjectOf(content, FieldContext(table: "messages", column: "content", rowID: id)))
            }
            guard let (plainContent, plainMetadata, subject) = opened else { continue }
            // A subject's row stays under its subject key (only the data key changes).
            let sealer = sealer.under(subject)
            let newContent = plainContent.withUnsafeBytes { sealer.seal($0, table: "messages", column: "content", rowID: id) }
            let newMetadata = plainMetadata.map { bytes in bytes.withUnsafeBytes { sealer.seal($0, table: "messages", column: "metadata", rowID: id) } }
            updates.append(
                RowUpdate(
                    sql: "UPDATE messages SET content = ?, metadata = ?, key_id = ? WHERE seq = ? AND key_id = ? AND content = ? AND metadata IS ?",
                    arguments: [newContent, newMetadata, active, (try row.decode(Int64.self, forColumn: "seq")), (try row.decode(Int64.self, forColumn: "key_id")), content, metadata]))
        }
        if updates.count >= limit { return updates }
        for row in try Row.fetchAll(
            db,
            sql: """
                SELECT seq, id, key_id, title, subject, metadata FROM conversations
                WHERE \(Self.otherThan("key_id")) AND seq NOT IN (SELECT value FROM json_each(?3)) LIMIT ?2
                """,
            arguments: [active, limit - updates.count, SkippedRows.json(skipped.conversations)])
        {
            let id: String = try row.decode(forColumn: "id")
            let columns = ["title", "subject", "metadata"]
            let olds = columns.map { row.sealedBytes($0) }
            let opened = try skipped.attempt(table: "conversations", seq: try row.decode(Int64.self, forColumn: "seq")) {
                let plains = try zip(columns, olds).map { column, old in
                    try old.map { (sealed) throws(ChatLogError) in
                        try openSealed(sealed, FieldContext(table: "conversations", column: column, rowID: id), db: db)
                    }
                }
                let sealed = zip(columns, olds).first { $0.1 != nil }
                return (plains, try sealed.flatMap { (column, old) throws(ChatLogError) in
                    try subjectOf(old!, FieldContext(table: "conversations", column: column, rowID: id))
                })
            }
            guard let (plains, subject) = opened else { continue }
            let sealer = sealer.under(subject)
            let values = zip(columns, plains).map { column, plain in
                plain.map { bytes in bytes.withUnsafeBytes { sealer.seal($0, table: "conversations", column: column, rowID: id) } }
            }
            updates.append(
                RowUpdate(
                    sql: """
                        UPDATE conversations SET title = ?, subject = ?, metadata = ?, key_id = ?
                        WHERE seq = ? AND key_id = ? AND title IS ? AND subject IS ? AND metadata IS ?
                        """,
                    arguments: [values[0], values[1], values[2], active, (try row.decode(Int64.self, forColumn: "seq")), (try row.decode(Int64.self, forColumn: "key_id")), olds[0], olds[1], olds[2]]))
        }
        return updates
    }

    /// Re-blinds messages' terms and conversations' subject tokens still under older index keys.
    private func reblindBatch(keys: KeyRing.Loaded, limit: Int, skipping skipped: inout SkippedRows, _ db: Database) throws -> [RowUpdate] {
        let target = keys.activeBlinder
        let active = Int64(target.keyID.rawValue)
        var updates: [RowUpdate] = []
        for row in try Row.fetchAll(
            db,
            sql: """
                SELECT seq, id, content, index_key_id FROM messages
                WHERE \(Self.otherThan("index_key_id")) AND seq NOT IN (SELECT value FROM json_each(?3)) LIMIT ?2
                """,
            arguments: [active, limit, SkippedRows.json(skipped.messages)])
        {
            let id: String = try row.decode(forColumn: "id")
            let oldKey = try KeyID.stored(try row.decode(Int64.self, forColumn: "index_key_id"), table: "messages", column: "index_key_id", rowID: id)
            let opened = try skipped.attempt(table: "messages", seq: try row.decode(Int64.self, forColumn: "seq")) {
                try openText(row.sealedBytes("content") ?? Data(), FieldContext(table: "messages", column: "content", rowID: id), db: db)
            }
            guard let content = opened else { continue }
            guard let old = try blinder(oldKey, db) else {
                throw ChatLogError.integrity(IntegrityFailure(table: "messages", column: "index_key_id", rowID: id, reason: .unknownKey(oldKey)))
            }
            let rowID: Int64 = try row.decode(forColumn: "seq")  // the index's row id (migration 0011)
            var update = RowUpdate(
                sql: "UPDATE messages SET index_key_id = ? WHERE seq = ? AND index_key_id = ?",
                arguments: [active, (try row.decode(Int64.self, forColumn: "seq")), Int64(oldKey.rawValue)])
            update.followUps = [
                ("INSERT INTO message_terms (message_terms, rowid, terms) VALUES ('delete', ?, ?)", [rowID, old.document(for: content)]),
                ("INSERT INTO message_terms (rowid, terms) VALUES (?, ?)", [rowID, target.document(for: content)]),
            ]
            updates.append(update)
        }
        if updates.count >= limit { return updates }
        let indexKey = keys.activeIndexKey
        for row in try Row.fetchAll(
            db,
            sql: """
                SELECT seq, id, subject, subject_key_id FROM conversations
                WHERE \(Self.otherThan("subject_key_id")) AND seq NOT IN (SELECT value FROM json_each(?3)) LIMIT ?2
                """,
            arguments: [active, limit - updates.count, SkippedRows.json(skipped.conversations)])
        {
            let id: String = try row.decode(forColumn: "id")
            guard let sealed = row.sealedBytes("subject") else { continue }
            let opened = try skipped.attempt(table: "conversations", seq: try row.decode(Int64.self, forColumn: "seq")) {
                try openText(sealed, FieldContext(table: "conversations", column: "subject", rowID: id), db: db)
            }
            guard let subject = opened else { continue }
            updates.append(
                RowUpdate(
                    sql: "UPDATE conversations SET subject_token = ?, subject_key_id = ? WHERE seq = ? AND subject_key_id = ?",
                    arguments: [SubjectIndex.token(for: subject, key: indexKey.key), active, (try row.decode(Int64.self, forColumn: "seq")), (try row.decode(Int64.self, forColumn: "subject_key_id"))]))
        }
        return updates
    }

    /// Rewrites the whole database file without free pages (old ciphertext in freed pages is
    /// gone for good). Needs no other writer for its duration; waits on the busy timeout.
    /// Async form; on PostgreSQL `VACUUM FULL` of chatlog's tables (docs/OPERATIONS.md, "PostgreSQL").
    public func vacuum() async throws(ChatLogError) {
        if let storage { return try await storage.vacuum(onlyKeys: false) }
        try vacuumInSQLite()
    }

    public func vacuum() throws(ChatLogError) {
        try vacuumInSQLite()
    }

    private func vacuumInSQLite() throws(ChatLogError) {
        do {
            try pool.writeWithoutTransaction { db in try db.execute(sql: "VACUUM") }
        } catch {
            throw ChatLogError.wrap(error)
        }
        try checkpoint()
    }
}

extension KeyRing.Loaded {
    func activeKey(_ kind: KeyStatus.Entry.Kind) -> KeyID {
        kind == .data ? activeDataKey.id : activeIndexKey.id
    }
}

/// Holds a store for one job on another thread and lets go of it as soon as the job is done,
/// before the job's result is handed back.
final class StoreHandoff: Sendable {
    private let store: Mutex<ChatLogStore?>
    init(_ store: ChatLogStore) { self.store = Mutex(store) }

    func run<T>(_ job: (ChatLogStore) throws(ChatLogError) -> T) -> Result<T, ChatLogError> {
        guard let store = store.withLock({ $0.take() }) else { return .failure(.invalidInput("the job already ran")) }
        return Result { () throws(ChatLogError) in try job(store) }
    }
}

/// Set once, read from another thread: the cancellation signal of an async rotation.
final class CancellationFlag: Sendable {
    private let flag = Mutex(false)
    var isSet: Bool { flag.withLock { $0 } }
    func set() { flag.withLock { $0 = true } }
}
