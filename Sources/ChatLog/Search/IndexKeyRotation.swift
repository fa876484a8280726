import Foundation
import GRDB

extension ChatLogStore {
    /// Makes a new index key active and re-blinds every message's terms under it, in batches
    /// of `batchSize` (each one IMMEDIATE transaction). Search stays exact throughout: queries
    /// look terms up under every live index key. The predicate "index key ≠ active" is the
    /// checkpoint, so an interrupted rebuild continues where it stopped when called again with
    /// `newKey: false`. Returns how many messages were re-indexed.
    @discardableResult
    public func rotateIndexKey(newKey: Bool = true, batchSize: Int = 1_000) throws(ChatLogError) -> Int {
        guard batchSize > 0 else { throw .invalidInput("the batch size must be positive") }
        if newKey {
            try writeImmediate { db in
                try KeyRing.addActiveKey(kind: .index, master: self.keyRing.master, db: db)
                try self.keyRing.reload(db)
            }
        } else {
            try read { db in try self.keyRing.reload(db) }
        }
        var total = 0
        while true {
            let done = try writeImmediate { db -> Int in
                // Another process may have rotated again: always move rows to the key active now.
                try self.keyRing.reload(db)
                let target = self.activeBlinder
                let rows = try Row.fetchAll(
                    db,
                    sql: """
                        SELECT seq, id, content, search_rowid, index_key_id FROM messages
                        WHERE index_key_id IS NOT NULL AND index_key_id <> ? LIMIT ?
                        """, arguments: [Int64(target.keyID.rawValue), batchSize])
                for row in rows {
                    let id: String = row["id"]
                    let oldKey = KeyID(rawValue: UInt32(row["index_key_id"] as Int64))
                    let content = try self.openText(row.sealedBytes("content") ?? Data(), FieldContext(table: "messages", column: "content", rowID: id), db: db)
                    guard let old = try self.blinder(oldKey, db) else {
                        throw ChatLogError.integrity(IntegrityFailure(table: "messages", column: "index_key_id", rowID: id, reason: .unknownKey(oldKey)))
                    }
                    let rowID: Int64 = row["search_rowid"]
                    try db.execute(
                        sql: "INSERT INTO message_terms (message_terms, rowid, terms) VALUES ('delete', ?, ?)",
                        arguments: [rowID, old.document(for: content)])
                    try db.execute(sql: "INSERT INTO message_terms (rowid, terms) VALUES (?, ?)", arguments: [rowID, target.document(for: content)])
                    try db.execute(
                        sql: "UPDATE messages SET index_key_id = ? WHERE seq = ? AND index_key_id = ?",
                        arguments: [Int64(target.keyID.rawValue), row["seq"] as Int64, Int64(oldKey.rawValue)])
                }
                // Subjects' equality tokens follow the same key.
                let subjects = try Row.fetchAll(
                    db,
                    sql: "SELECT seq, id, subject, subject_key_id FROM conversations WHERE subject_key_id IS NOT NULL AND subject_key_id <> ? LIMIT ?",
                    arguments: [Int64(target.keyID.rawValue), batchSize])
                let indexKey = self.keyRing.current.activeIndexKey
                for row in subjects {
                    let id: String = row["id"]
                    guard let sealed = row.sealedBytes("subject") else { continue }
                    let subject = try self.openText(sealed, FieldContext(table: "conversations", column: "subject", rowID: id), db: db)
                    try db.execute(
                        sql: "UPDATE conversations SET subject_token = ?, subject_key_id = ? WHERE seq = ? AND subject_key_id = ?",
                        arguments: [SubjectIndex.token(for: subject, key: indexKey.key), Int64(indexKey.id.rawValue), row["seq"] as Int64,
                            row["subject_key_id"] as Int64])
                }
                return rows.count + subjects.count
            }
            total += done
            if done == 0 { return total }
        }
    }
}
