import ChatLog
import Foundation
import Logging
import PostgresNIO

// The subject-key database as `chatlog copy` reads and writes it (SubjectKeyCopy.swift in the
// core): rows as bytes, never unwrapped.
extension PostgresSubjectKeys: SubjectKeyCopying {
    package func copyHead() async throws(ChatLogError) -> SubjectKeyHead? {
        guard let meta = try await open(create: false, initial: { [:] }) else { return nil }
        return try head(meta, nextID: try await nextID())
    }

    private func head(_ meta: [String: Data], nextID: Int64) throws(ChatLogError) -> SubjectKeyHead {
        guard meta["hash_key_next"] == nil else {
            throw copyFailure("a master-key rewrap of it is unfinished; open the store once with its current master key (which finishes it), then copy")
        }
        guard let storeID = meta["store_id"], let check = meta["master_check"], let hashKey = meta["hash_key"] else {
            throw copyFailure("it lacks its store id, master-key check value or hash key")
        }
        return SubjectKeyHead(storeID: String(decoding: storeID, as: UTF8.self), masterCheck: check, hashKey: hashKey, nextID: nextID)
    }

    /// The first id the sequence has not given out.
    private func nextID() async throws(ChatLogError) -> Int64 {
        let logger = logger
        return try await connection.read { connection in
            var next = Self.firstID
            for try await (last, called) in try await connection.statement("SELECT last_value, is_called FROM subject_key_ids", logger: logger).decode(
                (Int64, Bool).self)
            {
                next = called ? last + 1 : last
            }
            return next
        }
    }

    package func copyKeys(after id: Int64, limit: Int) async throws(ChatLogError) -> [CopiedSubjectKey] {
        let logger = logger
        return try await connection.read { connection in
            var keys: [CopiedSubjectKey] = []
            for try await (id, hash, created, wrapped) in try await connection.statement(
                "SELECT id, subject_hash, created_at, wrapped FROM subject_keys WHERE id > \(id) ORDER BY id LIMIT \(Int64(limit))", logger: logger
            ).decode((Int64, Data, Int64, Data).self) {
                keys.append(CopiedSubjectKey(id: id, subjectHash: hash, createdAt: created, wrapped: wrapped))
            }
            return keys
        }
    }

    package func presentKeyIDs(_ ids: [Int64]) async throws(ChatLogError) -> Set<Int64> {
        guard !ids.isEmpty else { return [] }
        let logger = logger
        return try await connection.read { connection in
            var found = Set<Int64>()
            for try await id in try await connection.statement("SELECT id FROM subject_keys WHERE id = ANY(\(ids)::bigint[])", logger: logger).decode(Int64.self) {
                found.insert(id)
            }
            return found
        }
    }

    package func copyForgotten() async throws(ChatLogError) -> [ForgottenSubjectKeyRow] {
        let logger = logger
        return try await connection.read { connection in
            var forgotten: [ForgottenSubjectKeyRow] = []
            for try await (id, at) in try await connection.statement("SELECT id, forgotten_at FROM forgotten_subject_keys ORDER BY id", logger: logger).decode(
                (Int64, Int64).self)
            {
                forgotten.append(ForgottenSubjectKeyRow(id: id, forgottenAt: at))
            }
            return forgotten
        }
    }

    package func receive(head expected: SubjectKeyHead) async throws(ChatLogError) {
        // An existing one is checked before anything is written; a new one gets the source's values.
        if let found = try await copyHead() {
            try requireSame(found, as: expected)
            return
        }
        let values = ["store_id": Data(expected.storeID.utf8), "master_check": expected.masterCheck, "hash_key": expected.hashKey]
        guard let meta = try await open(create: true, initial: { values }) else { throw copyFailure("its schema could not be created") }
        try requireSame(try head(meta, nextID: expected.nextID), as: expected)  // another process made it meanwhile
    }

    package func receive(keys: [CopiedSubjectKey]) async throws(ChatLogError) {
        guard !keys.isEmpty else { return }
        let logger = logger
        let location = location
        try await connection.transactionMapped { connection in
            let ids = keys.map(\.id)
            let hashes = keys.map { ByteBuffer(bytes: $0.subjectHash) }
            // The id is not unique in the table (the subject hash is its key): rows with either of
            // the batch's ids or hashes must be the source's, else nothing is written.
            var stored: [Int64: (hash: Data, wrapped: Data)] = [:]
            var storedHashes: [Data: Int64] = [:]
            var duplicate = false
            for try await (id, hash, wrapped) in try await connection.statement(
                "SELECT id, subject_hash, wrapped FROM subject_keys WHERE id = ANY(\(ids)::bigint[]) OR subject_hash = ANY(\(hashes)::bytea[]) FOR UPDATE",
                logger: logger
            ).decode((Int64, Data, Data).self) {
                duplicate = duplicate || stored[id] != nil
                stored[id] = (hash, wrapped)
                storedHashes[hash] = id
            }
            var missing: [CopiedSubjectKey] = []
            for key in keys {
                if let row = stored[key.id] {
                    if !duplicate, row.hash == key.subjectHash, row.wrapped == key.wrapped { continue }
                } else if storedHashes[key.subjectHash] == nil {
                    missing.append(key)
                    continue
                }
                throw ChatLogError.subjectKeyStore(
                    location: location,
                    reason: "it holds subject key \(key.id), or its subject, with other bytes than the source; copy into an empty subject-key store")
            }
            guard !missing.isEmpty else { return }
            try await connection.run(
                """
                INSERT INTO subject_keys (id, subject_hash, created_at, wrapped)
                SELECT * FROM unnest(\(missing.map(\.id))::bigint[], \(missing.map { ByteBuffer(bytes: $0.subjectHash) })::bytea[],
                    \(missing.map(\.createdAt))::bigint[], \(missing.map { ByteBuffer(bytes: $0.wrapped) })::bytea[])
                """, logger: logger)
        }
    }

    package func receive(forgotten: [ForgottenSubjectKeyRow], nextID: Int64) async throws(ChatLogError) {
        let logger = logger
        if !forgotten.isEmpty {
            // Listed first with the source's times; then keys this database still has (an earlier
            // copy's) destroyed as `forget` destroys them (their partitions rewritten).
            let ids = forgotten.map(\.id)
            try await connection.transactionMapped { connection in
                try await connection.run(
                    """
                    INSERT INTO forgotten_subject_keys (id, forgotten_at) SELECT * FROM unnest(\(ids)::bigint[], \(forgotten.map(\.forgottenAt))::bigint[])
                    ON CONFLICT (id) DO NOTHING
                    """, logger: logger)
            }
            let present = try await presentKeyIDs(ids)
            if !present.isEmpty { try await destroy(present.sorted()) }
        }
        // Ids the source gave out are never given out here.
        if nextID - 1 >= Self.firstID {
            try await connection.transactionMapped { connection in
                try await connection.run(
                    """
                    SELECT setval('subject_key_ids', \(nextID - 1), true) FROM subject_key_ids
                    WHERE (CASE WHEN is_called THEN last_value ELSE last_value - 1 END) < \(nextID - 1)
                    """, logger: logger)
            }
        }
    }

    /// The same database reached by another name (PostgresStorage.isSameDatabase).
    package func isSameStore(as other: any SubjectKeyCopying) async throws(ChatLogError) -> Bool {
        guard let other = other as? PostgresSubjectKeys else { return false }
        return try await connection.isSameDatabase(as: other.connection)
    }

    package func closeCopy() async { await close() }
}
