import Foundation
import GRDB

/// One thing `repair` did, naming the row (never its content).
public struct RepairAction: Sendable, Hashable, CustomStringConvertible {
    public let table: String
    public let column: String
    public let rowID: String
    public let action: String

    public var description: String { "\(table).\(column) of row \(rowID): \(action)" }
}

extension ChatLogStore {
    /// Gets rid of what `verify` reports as damaged, so that a nightly job can go on
    /// (docs/OPERATIONS.md, "Damaged rows"):
    /// - a message whose content cannot be opened is deleted (its search terms are read from the
    ///   index and removed);
    /// - an optional sealed value that cannot be opened (a message's metadata, a conversation's
    ///   title, subject or metadata) is cleared (with the subject, its search token);
    /// - index entries of rows that no message has are removed, and a message whose indexed terms
    ///   differ from its content, or that is indexed under a retired or missing index key, is
    ///   indexed again under the active index key;
    /// - deleted terms still in the index's segments are merged away.
    /// Then checkpoints and truncates the WAL. Damaged keys are not repaired (nothing can open
    /// what they sealed). Returns what it did; run `verify` afterwards.
    public func repair() throws(ChatLogError) -> [RepairAction] {
        try repairInSQLite()
    }

    /// Async form; on PostgreSQL the same repairs through the storage seam (docs/ARCHITECTURE.md §10):
    /// messages whose content cannot be opened deleted (their term rows go with them), other damaged
    /// values cleared (compare-and-swap: only if still the damaged bytes), and every message whose term
    /// rows differ from its content's terms, or that is indexed under a key that is not live or not at
    /// all, indexed again under the active index key.
    public func repair() async throws(ChatLogError) -> [RepairAction] {
        guard let storage else { return try repairInSQLite() }
        return try await storageRepair(storage)
    }

    private func repairInSQLite() throws(ChatLogError) -> [RepairAction] {
        // 0. Erasure: interrupted forgets finished, conversations of forgotten subjects deleted.
        var actions = try repairErasure()
        // 1. Damaged sealed values, found by opening each one (one read pass).
        let damaged = try read { db in try self.damagedValues(db) }
        let doomed = damaged.filter { $0.table == "messages" && $0.column == "content" }.compactMap { MessageID($0.rowID) }
        if !doomed.isEmpty {
            _ = try deleteMessages(doomed)
            actions += doomed.map { RepairAction(table: "messages", column: "content", rowID: $0.rawValue, action: "cannot be opened: message deleted") }
        }
        for value in damaged where !(value.table == "messages" && value.column == "content") {
            let cleared = try writeImmediate { db -> Bool in
                let extra = value.column == "subject" ? ", subject_token = NULL, subject_key_id = NULL" : ""
                try db.execute(
                    sql: "UPDATE \(value.table) SET \(value.column) = NULL\(extra) WHERE id = ? AND \(value.column) IS ?",
                    arguments: [value.rowID, value.sealed])
                return db.changesCount > 0
            }
            if cleared { actions.append(RepairAction(table: value.table, column: value.column, rowID: value.rowID, action: "cannot be opened: value cleared")) }
        }
        // 2. Messages indexed under an index key the store no longer has (retired or missing):
        //    their terms are stale; index them again under the active key.
        let orphaned = try read { db in
            try String.fetchAll(
                db,
                sql: """
                    SELECT id FROM messages WHERE index_key_id IS NOT NULL
                    AND index_key_id NOT IN (SELECT id FROM keys WHERE kind = 'index' AND state <> 'retired')
                    """)
        }
        if !orphaned.isEmpty {
            var report = VerificationReport()
            report.misindexedMessages = orphaned
            actions += try writeImmediate { db in try self.reindex(report, db) }
        }
        // 3. time_lag values below the running maximum of created_at in seq order (they would let
        //    newest-first search stop too early), raised to it.
        let raised = try writeImmediate { db -> [String] in
            let ids = try String.fetchAll(db, sql: SearchIndex.lowTimeLagsSQL)
            try db.execute(sql: SearchIndex.raiseTimeLagsSQL)
            return ids
        }
        actions += raised.map { RepairAction(table: "messages", column: "time_lag", rowID: $0, action: "raised to the running maximum of created_at") }
        // 4. The index, against what verify finds (a few rounds: verify details a bounded number
        //    of differing rows per run).
        for _ in 0..<8 {
            let report = try read { db in try self.verify(db, progress: nil) }
            if report.staleSearchRows.isEmpty && report.misindexedMessages.isEmpty { break }
            actions += try writeImmediate { db in try self.reindex(report, db) }
        }
        _ = try SearchIndex.indexMissing(store: self)
        if try scrubSearchIndexIfPending() {
            actions.append(RepairAction(table: "message_terms", column: "(segments)", rowID: "-", action: "deleted terms merged away"))
        }
        try checkpoint()
        return actions
    }

    private func storageRepair(_ storage: any ChatLogStorage) async throws(ChatLogError) -> [RepairAction] {
        try await reloadKeys(storage)
        // First, as on SQLite: interrupted forgets finished, a forgotten subject's rows deleted
        // (rather than their values cleared one by one below).
        var actions: [RepairAction] = try await storageRepairErasure(storage)
        try await forEachConversationPage(storage) { (page) throws(ChatLogError) in
            let keys = keyRing.current
            let active = Int64(keys.activeBlinder.keyID.rawValue)
            var doomed: [String] = []
            var rewrites: [RowRewrite] = []
            var planned: [RepairAction] = []
            func damaged(_ table: String, _ column: String, _ id: String, _ sealed: Data?, json: Bool) -> Bool {
                guard let sealed else { return false }
                let context = FieldContext(table: table, column: column, rowID: id)
                do throws(ChatLogError) {
                    if json { _ = try openJSON(sealed, context) } else { _ = try openText(sealed, context) }
                    return false
                } catch {
                    if case .integrity = error { return true }
                    return false
                }
            }
            func clear(_ table: IDTable, _ column: String, _ id: String, _ sealed: Data?) {
                guard let sealed else { return }
                rewrites.append(.clear(table: table, column: column, id: id, expected: sealed))
                planned.append(RepairAction(table: table.rawValue, column: column, rowID: id, action: "cannot be opened: value cleared"))
            }
            for copy in page {
                let row = copy.conversation
                for (column, sealed) in [("title", row.title), ("subject", row.subject), ("metadata", row.metadata)]
                where damaged("conversations", column, row.id, sealed, json: column == "metadata") {
                    clear(.conversations, column, row.id, sealed)
                }
                for message in copy.messages {
                    let content: String
                    do throws(ChatLogError) {
                        content = try openText(message.content, FieldContext(table: "messages", column: "content", rowID: message.id))
                    } catch {
                        guard case .integrity = error else { throw error }
                        doomed.append(message.id)
                        continue
                    }
                    if damaged("messages", "metadata", message.id, message.metadata, json: true) { clear(.messages, "metadata", message.id, message.metadata) }
                    let blinder = message.indexKeyID.flatMap(UInt32.init(exactly:)).flatMap { keys.blinders[KeyID(rawValue: $0)] }
                    var expected = Set<UInt64>()
                    blinder?.forEachDistinctTerm(in: content) { expected.insert($0) }
                    guard blinder == nil || Set(message.terms) != expected else { continue }
                    var terms: [UInt64] = []
                    keys.activeBlinder.forEachDistinctTerm(in: content) { terms.append($0) }
                    rewrites.append(.messageTerms(id: message.id, from: message.indexKeyID, to: active, terms: terms))
                    planned.append(
                        RepairAction(table: "message_terms", column: "terms", rowID: message.id, action: "indexed again under index key \(keys.activeBlinder.keyID)"))
                }
            }
            if !doomed.isEmpty {
                _ = try await storage.deleteMessages(doomed)
                actions += doomed.map { RepairAction(table: "messages", column: "content", rowID: $0, action: "cannot be opened: message deleted") }
            }
            if !rewrites.isEmpty {
                let writeGuard = WriteGuard(
                    acceptedCheckValues: [Data(keyRing.master.checkValueV2)], activeDataKeyID: Int64(keys.activeDataKey.id.rawValue),
                    activeIndexKeyID: active)
                do {
                    _ = try await storage.rewrite(rewrites, guard: writeGuard)
                } catch StorageConflict.staleKeys {
                    throw .busy("the keys changed while repairing (a key job ran); run `chatlog verify --repair` again")
                } catch StorageConflict.masterKeyChanged {
                    try await reloadKeys(storage)
                    throw .busy("the master key changed while repairing; run `chatlog verify --repair` again")
                } catch let error as ChatLogError {
                    throw error
                } catch {
                    throw .wrap(error)
                }
                actions += planned
            }
        }
        let orphans = try await storage.orphanTerms(delete: true)
        if orphans > 0 {
            actions.append(RepairAction(table: "message_terms", column: "message_seq", rowID: "-", action: "\(orphans) term rows of no message removed"))
        }
        return actions
    }

    struct DamagedValue {
        let table: String
        let column: String
        let rowID: String
        let sealed: Data?
    }

    private func damagedValues(_ db: Database) throws -> [DamagedValue] {
        var damaged: [DamagedValue] = []
        func probe(_ table: String, _ column: String, _ id: String, _ sealed: Data?, json: Bool) {
            guard let sealed else { return }
            let context = FieldContext(table: table, column: column, rowID: id)
            do {
                if json { _ = try openJSON(sealed, context, db: db) } else { _ = try openText(sealed, context, db: db) }
            } catch ChatLogError.integrity {
                damaged.append(DamagedValue(table: table, column: column, rowID: id, sealed: sealed))
            } catch {
                return  // not damage (an I/O error, say): left for verify to report
            }
        }
        let conversations = try Row.fetchCursor(db, sql: "SELECT id, title, subject, metadata FROM conversations")
        while let row = try conversations.next() {
            let id: String = try row.decode(forColumn: "id")
            for column in ["title", "subject", "metadata"] { probe("conversations", column, id, row.sealedBytes(column), json: column == "metadata") }
        }
        let messages = try Row.fetchCursor(db, sql: "SELECT id, content, metadata FROM messages")
        while let row = try messages.next() {
            let id: String = try row.decode(forColumn: "id")
            probe("messages", "content", id, row.sealedBytes("content") ?? Data(), json: false)
            probe("messages", "metadata", id, row.sealedBytes("metadata"), json: true)
        }
        return damaged
    }

    /// Removes the index entries of rows no message has, and indexes misindexed messages again.
    private func reindex(_ report: VerificationReport, _ db: Database) throws -> [RepairAction] {
        var actions: [RepairAction] = []
        let delete = try db.cachedStatement(sql: "INSERT INTO message_terms (message_terms, rowid, terms) VALUES ('delete', ?, ?)")
        var rows = Set(report.staleSearchRows)
        var messages: [Int64: (seq: Int64, id: String, content: Data)] = [:]
        for id in report.misindexedMessages {
            guard let row = try Row.fetchOne(db, sql: "SELECT seq, content FROM messages WHERE id = ?", arguments: [id]) else { continue }
            let rowID: Int64 = try row.decode(forColumn: "seq")  // the index's row id (migration 0011)
            rows.insert(rowID)
            messages[rowID] = (rowID, id, row.sealedBytes("content") ?? Data())
        }
        for (rowID, terms) in try SearchIndex.indexedTerms(of: rows, db) {
            try delete.execute(arguments: [rowID, terms.joined(separator: " ")])
            if messages[rowID] == nil {
                actions.append(RepairAction(table: "message_terms", column: "terms", rowID: "search row \(rowID)", action: "stale entries of a deleted row removed"))
            }
        }
        try SearchIndex.markScrubPending(db)
        let blinder = activeBlinder
        for (rowID, message) in messages {
            let content = try openText(message.content, FieldContext(table: "messages", column: "content", rowID: message.id), db: db)
            try db.execute(sql: "INSERT INTO message_terms (rowid, terms) VALUES (?, ?)", arguments: [rowID, blinder.document(for: content)])
            try db.execute(sql: "UPDATE messages SET index_key_id = ? WHERE seq = ?", arguments: [Int64(blinder.keyID.rawValue), message.seq])
            actions.append(RepairAction(table: "message_terms", column: "terms", rowID: message.id, action: "indexed again under index key \(blinder.keyID)"))
        }
        return actions
    }
}
