import ChatLog
import Foundation
import Logging
import PostgresNIO

// The data side of `forget` on PostgreSQL (migration 0007: `conversations.erasure_key_id`,
// `forgotten_subject_keys`, `forget_pending`, `forget_receipts`; docs/ARCHITECTURE.md §10,
// "Erasure per subject"). The subject keys are in their own database (PostgresSubjectKeys.swift).

extension PostgresStorage: ErasureStorage {
    /// The lock of a subject key `id` that migration 0007's trigger takes shared in every
    /// transaction writing a conversation under it, and a forget of it takes exclusively.
    static func subjectKeyLock(_ id: Int64) -> Int64 { 0x6368_6174_0000_0000 + id }

    /// SQLSTATE of migration 0007's trigger: a new conversation under a forgotten subject key.
    static let forgottenSubjectKeyState = "CLF01"

    /// The key id in the trigger's error, when `error` is that error.
    static func forgottenSubjectKey(_ error: any Error) -> Int64? {
        guard let error = error as? PSQLError, error.code == .server, error.serverInfo?[.sqlState] == forgottenSubjectKeyState,
            let message = error.serverInfo?[.message]
        else { return nil }
        return message.split(separator: " ").compactMap { Int64($0) }.first ?? -1
    }

    /// `(c.subject_token IN (…) OR c.erasure_key_id = ANY(…))` with its values bound.
    private static func subjectClause(tokens: [Data], keyIDs: [Int64], _ binds: inout PostgresBindings) throws(ChatLogError) -> String {
        var placeholders: [String] = []
        for token in tokens {
            do { try binds.append(token) } catch { throw .storage("a subject token could not be sent to PostgreSQL (\(type(of: error)))") }
            placeholders.append("$\(binds.count)")
        }
        binds.append(keyIDs)
        let byToken = placeholders.isEmpty ? "FALSE" : "c.subject_token IN (\(placeholders.joined(separator: ", ")))"
        return "(\(byToken) OR c.erasure_key_id = ANY($\(binds.count)::bigint[]))"
    }

    package func subjectCounts(tokens: [Data], keyIDs: [Int64]) async throws(ChatLogError) -> SubjectRowCounts {
        var binds = PostgresBindings()
        let clause = try Self.subjectClause(tokens: tokens, keyIDs: keyIDs, &binds)
        let query = PostgresQuery(
            unsafeSQL: """
                SELECT count(*), count(*) FILTER (WHERE c.erasure_key_id IS NULL),
                       coalesce(sum((SELECT count(*) FROM messages m WHERE m.conversation_seq = c.seq)), 0)::bigint
                FROM conversations c WHERE \(clause)
                """, binds: binds)
        let logger = logger
        return try await read { connection in
            var counts = SubjectRowCounts(conversations: 0, messages: 0, withoutSubjectKey: 0)
            for try await (conversations, without, messages) in try await connection.statement(query, logger: logger).decode((Int64, Int64, Int64).self) {
                counts = SubjectRowCounts(conversations: Int(conversations), messages: Int(messages), withoutSubjectKey: Int(without))
            }
            return counts
        }
    }

    package func deleteSubject(tokens: [Data], keyIDs: [Int64], receiptHash: Data, at time: Int64) async throws(ChatLogError) -> SubjectRowCounts {
        var binds = PostgresBindings()
        let clause = try Self.subjectClause(tokens: tokens, keyIDs: keyIDs, &binds)
        let find = PostgresQuery(unsafeSQL: "SELECT c.seq, c.erasure_key_id IS NULL FROM conversations c WHERE \(clause) ORDER BY c.seq FOR UPDATE", binds: binds)
        let locks = keyIDs.sorted().map(Self.subjectKeyLock)
        let logger = logger
        return try await transactionMapped { connection in
            // Writers of these keys finish first (or wait and are then refused): see migration 0007.
            try await connection.run("SELECT pg_advisory_xact_lock(k) FROM unnest(\(locks)::bigint[]) AS k", logger: logger)
            try await connection.run(
                """
                INSERT INTO forgotten_subject_keys (key_id, forgotten_at) SELECT k, \(time) FROM unnest(\(keyIDs)::bigint[]) AS k
                ON CONFLICT (key_id) DO NOTHING
                """, logger: logger)
            // Found again (a writer may have added a conversation since the count) and locked: no
            // message is appended to them any more.
            var seqs: [Int64] = []
            var without = 0
            for try await (seq, noKey) in try await connection.statement(find, logger: logger).decode((Int64, Bool).self) {
                seqs.append(seq)
                if noKey { without += 1 }
            }
            var messages: Int64 = 0
            for try await count in try await connection.statement(
                "SELECT count(*) FROM messages WHERE conversation_seq = ANY(\(seqs)::bigint[])", logger: logger
            ).decode(Int64.self) { messages = count }
            try await connection.run("DELETE FROM conversations WHERE seq = ANY(\(seqs)::bigint[])", logger: logger)
            try await connection.run(
                """
                INSERT INTO forget_pending (key_ids, subject_hash, started_at, conversations, messages)
                VALUES (\(keyIDs)::bigint[], \(receiptHash), \(time), \(Int64(seqs.count)), \(messages))
                """, logger: logger)
            return SubjectRowCounts(conversations: seqs.count, messages: Int(messages), withoutSubjectKey: without)
        }
    }

    package func pendingForgets() async throws(ChatLogError) -> [PendingForget] {
        let logger = logger
        return try await read { connection in
            var pending: [PendingForget] = []
            for try await (id, keys) in try await connection.statement("SELECT id, key_ids FROM forget_pending ORDER BY id", logger: logger).decode(
                (Int64, [Int64]).self)
            {
                pending.append(PendingForget(id: id, keyIDs: keys))
            }
            return pending
        }
    }

    package func finishForgets(_ pending: [PendingForget], at time: Int64) async throws(ChatLogError) {
        guard !pending.isEmpty else { return }
        let logger = logger
        try await transactionMapped { connection in
            for forget in pending {
                try await connection.run(
                    """
                    INSERT INTO forget_receipts (forgotten_at, subject_hash, conversations, messages, subject_keys)
                    SELECT \(time), subject_hash, conversations, messages, \(Int64(forget.keyIDs.count)) FROM forget_pending WHERE id = \(forget.id)
                    """, logger: logger)
                try await connection.run("DELETE FROM forget_pending WHERE id = \(forget.id)", logger: logger)
            }
        }
    }

    package func forgetReceipts() async throws(ChatLogError) -> [StoredForgetReceipt] {
        let logger = logger
        return try await read { connection in
            var receipts: [StoredForgetReceipt] = []
            let rows = try await connection.statement(
                "SELECT forgotten_at, subject_hash, conversations, messages, subject_keys FROM forget_receipts ORDER BY id", logger: logger)
            for try await (at, hash, conversations, messages, keys) in rows.decode((Int64, Data, Int64, Int64, Int64).self) {
                receipts.append(
                    StoredForgetReceipt(forgottenAt: at, subjectHash: hash, conversations: Int(conversations), messages: Int(messages), subjectKeys: Int(keys)))
            }
            return receipts
        }
    }

    package func forgottenSubjectConversations(_ forgotten: [Int64]) async throws(ChatLogError) -> [String] {
        let logger = logger
        return try await read { connection in
            var ids: [String] = []
            let rows = try await connection.statement(
                """
                SELECT id FROM conversations WHERE erasure_key_id IN (SELECT key_id FROM forgotten_subject_keys)
                OR erasure_key_id = ANY(\(forgotten)::bigint[]) ORDER BY seq
                """, logger: logger)
            for try await id in rows.decode(String.self) { ids.append(id) }
            return ids
        }
    }

    package func subjectKeyConversationCount() async throws(ChatLogError) -> Int {
        let logger = logger
        return try await read { connection in
            var count: Int64 = 0
            for try await value in try await connection.statement("SELECT count(*) FROM conversations WHERE erasure_key_id IS NOT NULL", logger: logger)
                .decode(Int64.self)
            {
                count = value
            }
            return Int(count)
        }
    }
}
