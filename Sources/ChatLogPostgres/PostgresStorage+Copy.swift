import ChatLog
import Foundation
import Logging
import PostgresNIO

// The store-side erasure rows a copy carries (migration 0007: `forgotten_subject_keys`,
// `forget_pending`, `forget_receipts`), read and written as stored.
extension PostgresStorage {
    package func erasureRows() async throws(ChatLogError) -> ErasureRows {
        let logger = logger
        return try await read { connection in try await Self.erasureRows(connection, logger) }
    }

    static func erasureRows(_ connection: PostgresConnection, _ logger: Logger) async throws -> ErasureRows {
        var rows = ErasureRows()
        for try await (id, at) in try await connection.statement("SELECT key_id, forgotten_at FROM forgotten_subject_keys ORDER BY key_id", logger: logger)
            .decode((Int64, Int64).self)
        {
            rows.forgottenKeys.append(ForgottenSubjectKeyRow(id: id, forgottenAt: at))
        }
        for try await (keys, hash, started, conversations, messages) in try await connection.statement(
            "SELECT key_ids, subject_hash, started_at, conversations, messages FROM forget_pending ORDER BY id", logger: logger
        ).decode(([Int64], Data, Int64, Int64, Int64).self) {
            rows.pending.append(ErasureRows.Pending(keyIDs: keys, subjectHash: hash, startedAt: started, conversations: conversations, messages: messages))
        }
        for try await (at, hash, conversations, messages, keys) in try await connection.statement(
            "SELECT forgotten_at, subject_hash, conversations, messages, subject_keys FROM forget_receipts ORDER BY id", logger: logger
        ).decode((Int64, Data, Int64, Int64, Int64).self) {
            rows.receipts.append(
                StoredForgetReceipt(forgottenAt: at, subjectHash: hash, conversations: Int(conversations), messages: Int(messages), subjectKeys: Int(keys)))
        }
        return rows
    }

    package func insertErasureRows(_ rows: ErasureRows) async throws(ChatLogError) {
        let logger = logger
        let location = location
        try await transactionMapped { connection in
            // One copy's erasure rows at a time (two would each see the tables empty).
            try await connection.run("LOCK TABLE forget_pending, forget_receipts IN EXCLUSIVE MODE", logger: logger)
            if !rows.forgottenKeys.isEmpty {
                try await connection.run(
                    """
                    INSERT INTO forgotten_subject_keys (key_id, forgotten_at)
                    SELECT * FROM unnest(\(rows.forgottenKeys.map(\.id))::bigint[], \(rows.forgottenKeys.map(\.forgottenAt))::bigint[])
                    ON CONFLICT (key_id) DO NOTHING
                    """, logger: logger)
            }
            let stored = try await Self.erasureRows(connection, logger)
            if stored.pending.isEmpty && stored.receipts.isEmpty {
                for forget in rows.pending {
                    try await connection.run(
                        """
                        INSERT INTO forget_pending (key_ids, subject_hash, started_at, conversations, messages)
                        VALUES (\(forget.keyIDs)::bigint[], \(forget.subjectHash), \(forget.startedAt), \(forget.conversations), \(forget.messages))
                        """, logger: logger)
                }
                for receipt in rows.receipts {
                    try await connection.run(
                        """
                        INSERT INTO forget_receipts (forgotten_at, subject_hash, conversations, messages, subject_keys)
                        VALUES (\(receipt.forgottenAt), \(receipt.subjectHash), \(Int64(receipt.conversations)), \(Int64(receipt.messages)), \(Int64(receipt.subjectKeys)))
                        """, logger: logger)
                }
            } else if stored.pending != rows.pending || stored.receipts != rows.receipts {
                // Ones it had already must be the source's (an interrupted copy's).
                throw ChatLogError.invalidInput(
                    "\(location) holds other forget receipts or pending forgets than this store (\(stored.receipts.count) and \(stored.pending.count), here \(rows.receipts.count) and \(rows.pending.count)); copy again into an empty destination")
            }
        }
    }
}
