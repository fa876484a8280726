import Foundation
import GRDB

/// How `stats` groups its counts.
public enum StatsGrouping: String, Sendable, CaseIterable {
    case model, day, role
}

public struct StatsRow: Sendable, Hashable {
    /// The group (a model name, a UTC day `2026-11-27`, a role), or nil for the whole store.
    public let group: String?
    public let conversations: Int
    public let messages: Int
    public let promptTokens: Int
    public let completionTokens: Int

    package init(group: String?, conversations: Int, messages: Int, promptTokens: Int, completionTokens: Int) {
        self.group = group
        self.conversations = conversations
        self.messages = messages
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
    }
}

extension ChatLogStore {
    /// The whole store's counts, kept by triggers (migration 0007, docs/FORMAT.md).
    static let totalsSQL = "SELECT messages, conversations, prompt_tokens, completion_tokens FROM message_totals WHERE id = 1"
    /// Rows using each key, kept by triggers (migration 0007).
    static let keyUsageSQL = "SELECT key_id, row_count FROM key_usage"

    /// The same on any backend.
    public func stats(by grouping: StatsGrouping? = nil, since: Date? = nil, until: Date? = nil) async throws(ChatLogError) -> [StatsRow] {
        guard let storage else { return try statsFromSQLite(by: grouping, since: since, until: until) }
        let rows = try await storage.stats(by: grouping, since: since?.unixMilliseconds, until: until?.unixMilliseconds)
        if grouping == nil, rows.isEmpty { return [StatsRow(group: nil, conversations: 0, messages: 0, promptTokens: 0, completionTokens: 0)] }
        return rows
    }

    /// Counts from plain columns only: nothing is decrypted.
    public func stats(by grouping: StatsGrouping? = nil, since: Date? = nil, until: Date? = nil) throws(ChatLogError) -> [StatsRow] {
        try statsFromSQLite(by: grouping, since: since, until: until)
    }

    private func statsFromSQLite(by grouping: StatsGrouping?, since: Date?, until: Date?) throws(ChatLogError) -> [StatsRow] {
        if grouping == nil, since == nil, until == nil {
            // The whole store: the counters migration 0007's triggers keep (no scan).
            return try read { db in
                guard let row = try Row.fetchOne(db, sql: Self.totalsSQL) else { throw ChatLogError.storage("table message_totals has no row") }
                return [StatsRow(
                    group: nil, conversations: try row.decode(forColumn: "conversations"), messages: try row.decode(forColumn: "messages"),
                    promptTokens: try row.decode(forColumn: "prompt_tokens"), completionTokens: try row.decode(forColumn: "completion_tokens"))]
            }
        }
        var clauses = ["1"]
        var arguments: StatementArguments = []
        if let since {
            clauses.append("created_at >= ?")
            arguments += [since.unixMilliseconds]
        }
        if let until {
            clauses.append("created_at < ?")
            arguments += [until.unixMilliseconds]
        }
        let group: String
        switch grouping {
        case nil: group = "NULL"
        case .model: group = "model"
        case .role: group = "role"
        // Real division: integer division truncates toward zero, which put the last second
        // before 1970 on 1970-01-01.
        case .day: group = "strftime('%Y-%m-%d', created_at / 1000.0, 'unixepoch')"
        }
        let sql = """
            SELECT \(group) AS grp, count(DISTINCT conversation_seq) AS conversations, count(*) AS messages,
                   coalesce(sum(prompt_tokens), 0) AS prompt_tokens, coalesce(sum(completion_tokens), 0) AS completion_tokens
            FROM messages WHERE \(clauses.joined(separator: " AND "))
            GROUP BY grp ORDER BY grp
            """
        let rows = try read { db in
            try Row.fetchAll(db, sql: sql, arguments: arguments).map { row in
                StatsRow(
                    group: row["grp"], conversations: try row.decode(forColumn: "conversations"), messages: try row.decode(forColumn: "messages"),
                    promptTokens: try row.decode(forColumn: "prompt_tokens"), completionTokens: try row.decode(forColumn: "completion_tokens"))
            }
        }
        // The total of an empty store (or range) is a row of zeros, not no row.
        if grouping == nil, rows.isEmpty { return [StatsRow(group: nil, conversations: 0, messages: 0, promptTokens: 0, completionTokens: 0)] }
        return rows
    }

    /// Deletes conversations (messages, search terms, import records), merges the search index so
    /// no segment keeps their terms or row ids, and then checkpoints and truncates the WAL, so
    /// their ciphertext and terms are gone from the files and not only unlinked.
    /// Returns how many existed. The merge costs the same for one id as for many (it rewrites the
    /// whole index): pass every id in one call.
    @discardableResult
    public func deleteConversations(_ ids: [ConversationID]) async throws(ChatLogError) -> Int {
        if let storage { return try await storageDelete(ids, storage) }
        return try deleteConversationsInSQLite(ids)
    }

    @discardableResult
    public func deleteConversations(_ ids: [ConversationID]) throws(ChatLogError) -> Int {
        try deleteConversationsInSQLite(ids)
    }

    private func deleteConversationsInSQLite(_ ids: [ConversationID]) throws(ChatLogError) -> Int {
        var deleted = 0
        for chunk in stride(from: 0, to: ids.count, by: 100).map({ Array(ids[$0..<min(ids.count, $0 + 100)]) }) {
            deleted += try writeImmediate { db in try chunk.reduce(0) { $0 + (try self.delete($1, db) ? 1 : 0) } }
        }
        try scrubSearchIndexIfPending()
        try checkpoint()
        return deleted
    }

    /// Deletes single messages (their search terms too) and then merges the search index and
    /// checkpoints and truncates the WAL, like `deleteConversations`. Nothing is opened that
    /// needs to be intact: a message whose sealed values are damaged is deleted all the same
    /// (the way to get rid of rows `verify` reports). The conversation stays, with a gap in its
    /// positions. Returns how many existed.
    @discardableResult
    public func deleteMessages(_ ids: [MessageID]) throws(ChatLogError) -> Int {
        var deleted = 0
        for chunk in stride(from: 0, to: ids.count, by: 100).map({ Array(ids[$0..<min(ids.count, $0 + 100)]) }) {
            deleted += try writeImmediate { db in
                try chunk.reduce(0) { count, id in
                    try SearchIndex.removeTerms(whereSQL: "id = ?", arguments: [id.rawValue], store: self, db)
                    try db.execute(sql: "DELETE FROM messages WHERE id = ?", arguments: [id.rawValue])
                    return count + db.changesCount
                }
            }
        }
        try scrubSearchIndexIfPending()
        try checkpoint()
        return deleted
    }

    /// Deletes every conversation whose last activity (`updated_at`) is before `cutoff`, in
    /// batches of 100 conversations per transaction, then merges the search index (one merge for
    /// the whole run) and checkpoints and truncates the WAL.
    /// With `dryRun`, only counts. Returns (conversations, messages).
    @discardableResult
    public func prune(olderThan cutoff: Date, dryRun: Bool = false) throws(ChatLogError) -> (conversations: Int, messages: Int) {
        try pruneInSQLite(olderThan: cutoff, dryRun: dryRun)
    }

    /// The same on any backend. Behind the storage seam each batch of ``pruneBatch`` conversations
    /// is selected and deleted in one backend transaction (a conversation written to meanwhile
    /// is active again and stays), until one deletes none.
    @discardableResult
    public func prune(olderThan cutoff: Date, dryRun: Bool = false) async throws(ChatLogError) -> (conversations: Int, messages: Int) {
        guard let storage else { return try pruneInSQLite(olderThan: cutoff, dryRun: dryRun) }
        let before = cutoff.unixMilliseconds
        if dryRun {
            let counts = try await storage.inactiveCounts(before: before)
            return (counts.conversations, counts.messages)
        }
        var totals = (conversations: 0, messages: 0)
        let terms = reblinder()
        while true {
            let done = try await storage.deleteInactiveConversations(before: before, limit: Self.pruneBatch, terms: terms)
            if done.conversations == 0 { return totals }
            totals.conversations += done.conversations
            totals.messages += done.messages
        }
    }

    /// Conversations deleted per transaction by `prune`.
    static let pruneBatch = 100

    private func pruneInSQLite(olderThan cutoff: Date, dryRun: Bool) throws(ChatLogError) -> (conversations: Int, messages: Int) {
        let limit = cutoff.unixMilliseconds
        if dryRun {
            let counts = try read { db in try SQLiteStorage.inactiveCounts(before: limit, db) }
            return (counts.conversations, counts.messages)
        }
        var totals = (conversations: 0, messages: 0)
        while true {
            let done = try writeImmediate { db -> (Int, Int) in
                let seqs = try Int64.fetchAll(
                    db, sql: "SELECT seq FROM conversations WHERE updated_at < ? LIMIT ?", arguments: [limit, Self.pruneBatch])
                var messages = 0
                for seq in seqs {
                    messages += try Int.fetchOne(db, sql: "SELECT count(*) FROM messages WHERE conversation_seq = ?", arguments: [seq]) ?? 0
                    try self.delete(seq: seq, db)
                }
                return (seqs.count, messages)
            }
            totals.conversations += done.0
            totals.messages += done.1
            if done.0 < Self.pruneBatch { break }
        }
        try scrubSearchIndexIfPending()
        try checkpoint()
        return totals
    }

    /// A consistent copy of the store, taken while writers run (`VACUUM INTO`: one read
    /// transaction), still encrypted, written to a new 0600 file (never overwrites, never follows
    /// a link). Useless without the master key.
    public func backup(to destination: String) throws(ChatLogError) {
        try backupInSQLite(to: destination)
    }

    /// Async form. On PostgreSQL: a new 0600 SQLite store file holding the store as of one
    /// instant (one `REPEATABLE READ` snapshot, while writers go on), copied without opening a
    /// sealed value and compared byte for byte with the snapshot (``copy(to:progress:)``); it opens
    /// with the same master key and restores with `chatlog copy --to URL`. Returns that copy's
    /// report (nil for a SQLite store, whose `VACUUM INTO` copies everything).
    @discardableResult
    public func backup(to destination: String) async throws(ChatLogError) -> CopyReport? {
        guard let storage else {
            try backupInSQLite(to: destination)
            return nil
        }
        try PrivateFiles.createEmptyPrivateFile(at: destination)
        do throws(ChatLogError) {
            return try await storage.withSnapshot { (snapshot) async throws(ChatLogError) -> CopyReport in
                let file = try SQLiteStorage.open(path: destination)
                do throws(ChatLogError) {
                    let report = try await self.copy(from: snapshot, sqlite: nil, to: file, subjectKeyPlan: nil, progress: nil)
                    await file.close()
                    return report
                } catch {
                    await file.close()
                    throw error
                }
            }
        } catch {
            for suffix in ["", "-wal", "-shm"] { unlink(destination + suffix) }
            throw error
        }
    }

    private func backupInSQLite(to destination: String) throws(ChatLogError) {
        let pool = try pool  // a SQLite store only, before any file is made
        try PrivateFiles.createEmptyPrivateFile(at: destination, nextToStore: path)
        do {
            try pool.unsafeRead { db in try db.execute(sql: "VACUUM INTO ?", arguments: [destination]) }
        } catch {
            unlink(destination)
            throw ChatLogError.wrap(error)
        }
    }
}
