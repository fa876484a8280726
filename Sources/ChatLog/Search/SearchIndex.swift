import Foundation
import GRDB
import GRDBSQLite

/// Maintenance of the blinded-term index (table `message_terms`, contentless FTS5).
enum SearchIndex {
    /// created_at (Unix ms) must lie in -limit..<limit: times stay far from Int64's ends, so the
    /// running maximum (created_at + time_lag, migration 0011) and every bound derived from it
    /// are computed without overflow.
    static let millisecondsLimit: Int64 = 1 << 43

    /// A creation time in Unix milliseconds, refused (instead of trapping, or overflowing later
    /// arithmetic) when it is not a finite time within ±2^43 ms of 1970.
    static func milliseconds(_ date: Date, _ what: String) throws(ChatLogError) -> Int64 {
        let milliseconds = (date.timeIntervalSince1970 * 1000).rounded(.down)
        guard milliseconds.isFinite, abs(milliseconds) < Double(millisecondsLimit) else {
            throw .invalidInput("\(what)'s createdAt must be between the years 1691 and 2248")
        }
        return Int64(milliseconds)
    }

    /// The largest created_at of the store's messages (the running maximum a writer starts its
    /// transaction's time_lag values from; `messages_by_created` answers it with one look-up).
    static func latestCreatedAt(_ db: Database) throws -> Int64? {
        try Int64.fetchOne(db.cachedStatement(sql: "SELECT max(created_at) FROM messages"))
    }

    /// The running maximum of created_at in seq order, per message (migration 0011's computation).
    private static let runningSQL = "SELECT seq, max(created_at) OVER (ORDER BY seq) AS running FROM messages"
    /// Messages whose created_at + time_lag is below that maximum (damaged or planted values).
    static let lowTimeLagsSQL = """
        SELECT m.id FROM messages m JOIN (\(runningSQL)) r ON r.seq = m.seq
        WHERE r.running > m.created_at + max(0, m.time_lag) ORDER BY m.seq
        """
    /// Raises them to it (one pass over the messages; what `repair` runs).
    static let raiseTimeLagsSQL = """
        UPDATE messages SET time_lag = r.running - messages.created_at FROM (\(runningSQL)) AS r
        WHERE r.seq = messages.seq AND r.running > messages.created_at + max(0, messages.time_lag)
        """

    /// Removes the terms of the messages selected by `whereSQL` from the index. The terms are
    /// recomputed from the opened content under the index key that made them. A message whose
    /// content cannot be opened (damaged, or its index key is gone) is not an error: its terms
    /// are read from the index itself, in one pass over the index's (term, row id) pairs for all
    /// such messages of the call. Marks the index for scrubbing when it deleted anything.
    static func removeTerms(whereSQL: String, arguments: StatementArguments, store: ChatLogStore, _ db: Database) throws {
        let rows = try Row.fetchCursor(
            db, sql: "SELECT seq, id, content, index_key_id FROM messages WHERE \(whereSQL) AND index_key_id IS NOT NULL",
            arguments: arguments)
        let delete = try db.cachedStatement(
            sql: "INSERT INTO message_terms (message_terms, rowid, terms) VALUES ('delete', ?, ?)")
        var deleted = false
        var unreadable = Set<Int64>()
        while let row = try rows.next() {
            let id: String = try row.decode(forColumn: "id")
            let seq = try row.decode(Int64.self, forColumn: "seq")
            let document: String
            do {
                let keyID = try KeyID.stored(try row.decode(Int64.self, forColumn: "index_key_id"), table: "messages", column: "index_key_id", rowID: id)
                let content = try store.openText(row.sealedBytes("content") ?? Data(), FieldContext(table: "messages", column: "content", rowID: id), db: db)
                guard let blinder = try store.blinder(keyID, db) else {
                    throw ChatLogError.integrity(IntegrityFailure(table: "messages", column: "index_key_id", rowID: id, reason: .unknownKey(keyID)))
                }
                document = blinder.document(for: content)
            } catch ChatLogError.integrity {
                unreadable.insert(seq)
                continue
            }
            try delete.execute(arguments: [seq, document])
            deleted = true
        }
        if !unreadable.isEmpty {
            for (rowID, terms) in try indexedTerms(of: unreadable, db) {
                try delete.execute(arguments: [rowID, terms.joined(separator: " ")])
                deleted = true
            }
        }
        if deleted { try markScrubPending(db) }
    }

    /// The terms the index holds for each of `rowIDs`, read from the index: one streamed pass
    /// over all its (term, row id) pairs (the index is in term order; a row's terms are spread
    /// over all of it). Rows the index does not hold are absent from the result.
    static func indexedTerms(of rowIDs: Set<Int64>, _ db: Database) throws -> [Int64: [String]] {
        var terms: [Int64: [String]] = [:]
        try forEachIndexedPair(db) { term, rowID in
            guard rowIDs.contains(rowID) else { return }
            terms[rowID, default: []].append(String(decoding: term, as: UTF8.self))
        }
        return terms
    }

    /// Every (term, row id) pair of the index's live rows (`message_terms_instance`), in term
    /// order, straight from SQLite: at 1M messages there are over 100 million pairs, too many
    /// to wrap each in a GRDB row. `term` is valid only during the call.
    static func forEachIndexedPair(_ db: Database, _ body: (UnsafeRawBufferPointer, Int64) throws -> Void) throws {
        var statement: OpaquePointer?
        let prepared = sqlite3_prepare_v2(db.sqliteConnection, "SELECT term, doc FROM message_terms_instance", -1, &statement, nil)
        defer { sqlite3_finalize(statement) }
        guard prepared == SQLITE_OK else { throw stepError(prepared, db) }
        while true {
            let step = sqlite3_step(statement)
            if step == SQLITE_DONE { return }
            guard step == SQLITE_ROW else { throw stepError(step, db) }
            let rowID = sqlite3_column_int64(statement, 1)
            let text = sqlite3_column_text(statement, 0)
            let count = Int(sqlite3_column_bytes(statement, 0))
            try body(UnsafeRawBufferPointer(start: text, count: text == nil ? 0 : count), rowID)
        }
    }

    private static func stepError(_ code: Int32, _ db: Database) -> DatabaseError {
        DatabaseError(resultCode: ResultCode(rawValue: code), message: String(cString: sqlite3_errmsg(db.sqliteConnection)))
    }

    // MARK: - Scrubbing (docs/SECURITY.md, "Search index")
    //
    // A 'delete' on a contentless FTS5 table only appends a tombstone: the deleted row's terms and
    // row id stay in the old segment, and the tombstone repeats them, until a merge whose output is
    // the oldest segment drops both. SQLite 3.40 has neither `secure-delete` nor
    // `contentless_delete`, so chatlog forces that merge ('optimize': every segment into one) after
    // deleting. The meta row `search_scrub_pending` is set in the transaction that deletes terms
    // and cleared in the one that merges, so an interrupted run is finished by the next.

    static let scrubPendingName = "search_scrub_pending"

    /// Records that the index holds tombstoned terms (call inside the deleting transaction).
    static func markScrubPending(_ db: Database) throws {
        try db.execute(
            sql: "INSERT INTO chatlog_meta (name, value) VALUES (?, 1) ON CONFLICT (name) DO NOTHING", arguments: [scrubPendingName])
    }

    static func scrubPending(_ db: Database) throws -> Bool {
        try Row.fetchOne(db, sql: "SELECT 1 FROM chatlog_meta WHERE name = ?", arguments: [scrubPendingName]) != nil
    }

    /// Merges every segment into one, which drops deleted rows' terms and their tombstones, and
    /// clears the pending mark. Rewrites the whole index: its cost grows with the index, not with
    /// what was deleted (docs/PERFORMANCE.md, "Deletion and scrubbing").
    static func scrub(_ db: Database) throws {
        try db.execute(sql: "INSERT INTO message_terms (message_terms) VALUES ('optimize')")
        try db.execute(sql: "DELETE FROM chatlog_meta WHERE name = ?", arguments: [scrubPendingName])
    }

    /// Indexes messages that have no terms yet (stores written before search existed), in
    /// batches of `batchSize`, each its own transaction. Returns how many were indexed.
    static func indexMissing(store: ChatLogStore, batchSize: Int = 1_000) throws(ChatLogError) -> Int {
        var total = 0
        while true {
            let done = try store.writeImmediate { db -> Int in
                let rows = try Row.fetchAll(
                    db, sql: "SELECT seq, id, content FROM messages WHERE index_key_id IS NULL ORDER BY seq LIMIT ?",
                    arguments: [batchSize])
                let blinder = store.activeBlinder
                for row in rows {
                    let id: String = try row.decode(forColumn: "id")
                    let content = try store.openText(row.sealedBytes("content") ?? Data(), FieldContext(table: "messages", column: "content", rowID: id), db: db)
                    let seq = try row.decode(Int64.self, forColumn: "seq")
                    try db.execute(
                        sql: "UPDATE messages SET index_key_id = ? WHERE seq = ? AND index_key_id IS NULL",
                        arguments: [Int64(blinder.keyID.rawValue), seq])
                    try db.execute(sql: "INSERT INTO message_terms (rowid, terms) VALUES (?, ?)", arguments: [seq, blinder.document(for: content)])
                }
                return rows.count
            }
            total += done
            if done < batchSize { return total }
        }
    }
}

extension ChatLogStore {
    /// Finishes a pending scrub (merges the index so no deleted term is left), if one is pending.
    /// Returns whether it merged.
    @discardableResult
    func scrubSearchIndexIfPending() throws(ChatLogError) -> Bool {
        try writeImmediate { db in
            guard try SearchIndex.scrubPending(db) else { return false }
            try SearchIndex.scrub(db)
            return true
        }
    }

    var activeBlinder: TokenBlinder { keyRing.current.activeBlinder }

    /// The blinder of index key `id`, learning keys added by other processes on a miss.
    func blinder(_ id: KeyID, _ db: Database) throws -> TokenBlinder? {
        if let blinder = keyRing.current.blinders[id] { return blinder }
        return try keyRing.reload(db).blinders[id]
    }
}
