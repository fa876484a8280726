import Foundation
import GRDB

public struct VerificationIssue: Sendable, Hashable, CustomStringConvertible {
    public let table: String
    public let column: String
    /// The row's public id (or key name); never its content.
    public let rowID: String
    public let problem: String

    public var description: String { "\(table).\(column) of row \(rowID): \(problem)" }
}

public struct VerificationReport: Sendable {
    public var conversations = 0
    public var messages = 0
    public var sealedValues = 0
    /// At most `ChatLogStore.maximumReportedIssues`; `issueCount` counts them all.
    public var issues: [VerificationIssue] = []
    public var issueCount = 0
    public var ok: Bool { issueCount == 0 }
}

extension ChatLogStore {
    public static let maximumReportedIssues = 1_000

    /// Opens every sealed value (wrapped keys, conversations, messages) with the key its header
    /// names, checks that every message's blinded terms are in the search index at its row and
    /// that the index holds nothing else (term document counts against the recomputed ones), and
    /// runs SQLite's and FTS5's integrity checks. Reads only; safe while writers run (it works on
    /// one read snapshot).
    public func verify(progress: (@Sendable (Int) -> Void)? = nil) throws(ChatLogError) -> VerificationReport {
        var report = try read { db in try self.verify(db, progress: progress) }
        // FTS5's own structure check is an INSERT command, so it runs in a (brief) write
        // transaction: not on a store opened read-only (every term is still checked above).
        if options.readOnly { return report }
        do {
            try pool.writeWithoutTransaction { db in
                try db.execute(sql: "INSERT INTO message_terms (message_terms, rank) VALUES ('integrity-check', 0)")
            }
        } catch let error as DatabaseError where error.resultCode == .SQLITE_CORRUPT {
            report.issueCount += 1
            report.issues.append(VerificationIssue(table: "message_terms", column: "(index)", rowID: "-", problem: "FTS5 integrity check failed"))
        } catch {
            throw ChatLogError.wrap(error)
        }
        return report
    }

    private func verify(_ db: Database, progress: (@Sendable (Int) -> Void)?) throws -> VerificationReport {
        var report = VerificationReport()
        func record(_ table: String, _ column: String, _ row: String, _ problem: String) {
            report.issueCount += 1
            if report.issues.count < Self.maximumReportedIssues {
                report.issues.append(VerificationIssue(table: table, column: column, rowID: row, problem: problem))
            }
        }
        func check(_ body: () throws -> Void) throws {
            do { try body() } catch let error as ChatLogError {
                if case .integrity(let failure) = error {
                    record(failure.table, failure.column, failure.rowID, failure.description)
                } else {
                    throw error
                }
            }
        }

        // SQLite's own structure first: a broken b-tree makes everything else unreliable.
        for line in try String.fetchAll(db, sql: "PRAGMA integrity_check") where line != "ok" {
            record("(file)", "(pages)", "-", "SQLite integrity check: \(line)")
        }

        // Wrapped keys (data, index, import).
        let master = keyRing.master
        for row in try Row.fetchAll(db, sql: "SELECT id, kind, wrapped FROM keys WHERE state <> 'retired'") {
            guard let kind = KeyStatus.Entry.Kind(rawValue: try row.decode(String.self, forColumn: "kind")) else { continue }
            report.sealedValues += 1
            let stored: Int64 = try row.decode(forColumn: "id")
            try check {
                _ = try KeyRing.unwrap(
                    row.sealedBytes("wrapped") ?? Data(), kind: kind, id: try KeyID.stored(stored, table: "keys", column: "id", rowID: String(stored)), master: master)
            }
        }
        try check { _ = try ImportKey.load(master: master, db: db) }
        try keyRing.reload(db)
        let keys = keyRing.current

        // Conversations: sealed fields and subject tokens.
        let conversations = try Row.fetchCursor(db, sql: "SELECT seq, id, title, subject, subject_token, subject_key_id, metadata FROM conversations")
        while let row = try conversations.next() {
            report.conversations += 1
            let id: String = try row.decode(forColumn: "id")
            try check { _ = try ConversationID.stored(row.storedText("id"), table: "conversations", column: "id", seq: try row.decode(forColumn: "seq")) }
            for column in ["title", "subject", "metadata"] {
                guard let sealed = row.sealedBytes(column) else { continue }
                report.sealedValues += 1
                try check {
                    let context = FieldContext(table: "conversations", column: column, rowID: id)
                    if column == "metadata" { _ = try openJSON(sealed, context, db: db) } else { _ = try openText(sealed, context, db: db) }
                }
            }
            if let sealed = row.sealedBytes("subject"), let keyID = row["subject_key_id"] as Int64? {
                try check {
                    let subject = try openText(sealed, FieldContext(table: "conversations", column: "subject", rowID: id), db: db)
                    guard let raw = UInt32(exactly: keyID), let key = keys.indexKeys[KeyID(rawValue: raw)] else {
                        record("conversations", "subject_key_id", id, "names index key \(keyID), which this store does not have")
                        return
                    }
                    if SubjectIndex.token(for: subject, key: key) != row.sealedBytes("subject_token") {
                        record("conversations", "subject_token", id, "does not match the subject")
                    }
                }
            }
        }

        // Messages: sealed fields, and their terms in the index.
        var expected: [String: Int] = [:]
        let messages = try Row.fetchCursor(db, sql: "SELECT seq, id, content, metadata, search_rowid, index_key_id FROM messages ORDER BY seq")
        let present = try db.cachedStatement(sql: "SELECT 1 FROM message_terms WHERE message_terms MATCH ? AND rowid = ?")
        while let row = try messages.next() {
            report.messages += 1
            if report.messages % 10_000 == 0 { progress?(report.messages) }
            let id: String = try row.decode(forColumn: "id")
            try check { _ = try MessageID.stored(row.storedText("id"), table: "messages", column: "id", seq: try row.decode(forColumn: "seq")) }
            report.sealedValues += 1
            var content: String?
            try check { content = try openText(row.sealedBytes("content") ?? Data(), FieldContext(table: "messages", column: "content", rowID: id), db: db) }
            if let metadata = row.sealedBytes("metadata") {
                report.sealedValues += 1
                try check { _ = try openJSON(metadata, FieldContext(table: "messages", column: "metadata", rowID: id), db: db) }
            }
            guard let content else { continue }
            guard let keyID = row["index_key_id"] as Int64?, let searchRowID = row["search_rowid"] as Int64? else {
                record("messages", "index_key_id", id, "the message is not in the search index")
                continue
            }
            guard let raw = UInt32(exactly: keyID), let blinder = keys.blinders[KeyID(rawValue: raw)] else {
                record("messages", "index_key_id", id, "names index key \(keyID), which this store does not have")
                continue
            }
            let document = blinder.document(for: content)
            let terms = document.split(separator: " ")
            for term in terms { expected[String(term), default: 0] += 1 }
            guard !terms.isEmpty else { continue }
            let match = terms.map { "\"\($0)\"" }.joined(separator: " AND ")
            if try Row.fetchOne(present, arguments: [match, searchRowID]) == nil {
                record("message_terms", "terms", id, "the search index lacks some of this message's terms")
            }
        }

        // Nothing extra in the index: per-term document counts equal the recomputed ones.
        var extra = 0
        let vocabulary = try Row.fetchCursor(db, sql: "SELECT term, doc FROM message_terms_vocab")
        while let row = try vocabulary.next() {
            let term: String = try row.decode(forColumn: "term")
            let count: Int = try row.decode(forColumn: "doc")
            if expected.removeValue(forKey: term) != count { extra += 1 }
        }
        if extra > 0 || !expected.isEmpty {
            record("message_terms", "terms", "-", "\(extra + expected.count) terms are indexed for rows that do not hold them (or are missing)")
        }
        return report
    }
}
