import Foundation
import GRDB

// The store-side erasure rows a copy carries (migration 0010: `forgotten_subject_keys`,
// `forget_pending`, `forget_receipts`), read and written as stored.
extension SQLiteStorage {
    package func erasureRows() async throws(ChatLogError) -> ErasureRows {
        try await read { db in try Self.erasureRows(db) }
    }

    static func erasureRows(_ db: Database) throws -> ErasureRows {
        var rows = ErasureRows()
        rows.forgottenKeys = try Row.fetchAll(db, sql: "SELECT key_id, forgotten_at FROM forgotten_subject_keys ORDER BY key_id").map {
            ForgottenSubjectKeyRow(id: $0[0], forgottenAt: $0[1])
        }
        rows.pending = try Row.fetchAll(db, sql: "SELECT key_ids, subject_hash, started_at, conversations, messages FROM forget_pending ORDER BY id").map {
            ErasureRows.Pending(
                keyIDs: ChatLogStore.keyIDs(fromJSON: $0[0]).map { Int64($0.rawValue) }, subjectHash: $0.sealedBytes(at: 1) ?? Data(), startedAt: $0[2],
                conversations: $0[3], messages: $0[4])
        }
        rows.receipts = try Row.fetchAll(
            db, sql: "SELECT forgotten_at, subject_hash, conversations, messages, subject_keys FROM forget_receipts ORDER BY id"
        ).map {
            StoredForgetReceipt(forgottenAt: $0[0], subjectHash: $0.sealedBytes(at: 1) ?? Data(), conversations: $0[2], messages: $0[3], subjectKeys: $0[4])
        }
        return rows
    }

    package func insertErasureRows(_ rows: ErasureRows) async throws(ChatLogError) {
        let location = location
        try await writeMapped { db in
            for key in rows.forgottenKeys {
                try db.execute(
                    sql: "INSERT INTO forgotten_subject_keys (key_id, forgotten_at) VALUES (?, ?) ON CONFLICT (key_id) DO NOTHING",
                    arguments: [key.id, key.forgottenAt])
            }
            let stored = try Self.erasureRows(db)
            if stored.pending.isEmpty && stored.receipts.isEmpty {
                for forget in rows.pending {
                    try db.execute(
                        sql: "INSERT INTO forget_pending (key_ids, subject_hash, started_at, conversations, messages) VALUES (?, ?, ?, ?, ?)",
                        arguments: [ChatLogStore.jsonArray(forget.keyIDs), forget.subjectHash, forget.startedAt, forget.conversations, forget.messages])
                }
                for receipt in rows.receipts {
                    try db.execute(
                        sql: "INSERT INTO forget_receipts (forgotten_at, subject_hash, conversations, messages, subject_keys) VALUES (?, ?, ?, ?, ?)",
                        arguments: [receipt.forgottenAt, receipt.subjectHash, receipt.conversations, receipt.messages, receipt.subjectKeys])
                }
            } else if stored.pending != rows.pending || stored.receipts != rows.receipts {
                // Ones it had already must be the source's (an interrupted copy's).
                throw ChatLogError.invalidInput(
                    "\(location) holds other forget receipts or pending forgets than this store (\(stored.receipts.count) and \(stored.pending.count), here \(rows.receipts.count) and \(rows.pending.count)); copy again into an empty destination")
            }
        }
    }
}
