import ChatLog
import Foundation
import Logging
import PostgresNIO

// The logging proxy's tables on PostgreSQL (migrations/postgres/0003_proxy.sql): thread digests and
// proxy tokens, and the proxy's group commit.

extension PostgresStorage {
    package func proxyThreads(_ digests: [Data]) async throws(ChatLogError) -> [Data: String] {
        guard !digests.isEmpty else { return [:] }
        return try await read { connection in
            var found: [Data: String] = [:]
            for start in stride(from: 0, to: digests.count, by: 1_000) {
                var binds = PostgresBindings()
                let slice = digests[start..<min(digests.count, start + 1_000)]
                for digest in slice { try binds.append(digest) }
                let rows = try await connection.statement(
                    PostgresQuery(
                        unsafeSQL: """
                            SELECT t.digest, c.id FROM proxy_threads t JOIN conversations c ON c.seq = t.conversation_seq
                            WHERE t.digest IN (\((1...slice.count).map { "$\($0)" }.joined(separator: ", ")))
                            """, binds: binds), logger: self.logger)
                for try await (digest, id) in rows.decode((Data, String).self) { found[digest] = id }
            }
            return found
        }
    }

    /// One transaction for the whole group (a proxy under load commits many exchanges at once).
    package func insertProxyRecords(_ records: [ProxyRecordRows], guard writeGuard: WriteGuard) async throws {
        guard !records.isEmpty else { return }
        let logger = logger
        try await transaction { connection in
            try await Self.check(writeGuard, connection, logger)
            let now = Int64(Date().timeIntervalSince1970 * 1000)
            for record in records {
                let conversation = record.conversation
                // New, or continued (its row locked: positions stay gap-free with other writers).
                try await connection.run(
                    """
                    WITH c AS (INSERT INTO conversations (id, created_at, updated_at, key_id, title, subject, subject_token, subject_key_id, metadata)
                    VALUES (\(conversation.id), \(conversation.createdAt), \(conversation.updatedAt), \(conversation.keyID),
                            \(conversation.title), \(conversation.subject), \(conversation.subjectToken), \(conversation.subjectKeyID),
                            \(conversation.metadata))
                    ON CONFLICT (id) DO NOTHING RETURNING key_id, subject_key_id),
                    \(unescaped: Self.countingCTEs(conversations: "c", messages: nil))
                    SELECT 1
                    """, logger: logger)
                let found = try await connection.statement(
                    "SELECT seq FROM conversations WHERE id = \(conversation.id) FOR UPDATE", logger: logger)
                var seq: Int64?
                for try await value in found.decode(Int64.self) { seq = value }
                guard let seq else { throw ChatLogError.conversationNotFound(conversation.id) }
                // In statements of at most `messagesPerStatement` messages (a statement's parameter limit).
                for start in stride(from: 0, to: record.messages.count, by: Self.messagesPerStatement) {
                    let chunk = Array(record.messages[start..<min(record.messages.count, start + Self.messagesPerStatement)])
                    _ = try await Self.appendMessages(chunk, to: .locked(seq: seq), connection, logger)
                }
                for digest in record.digests {
                    try await connection.run(
                        """
                        INSERT INTO proxy_threads (digest, conversation_seq, index_key_id, created_at)
                        VALUES (\(digest.digest), \(seq), \(digest.indexKeyID), \(now))
                        ON CONFLICT (digest) DO UPDATE SET conversation_seq = excluded.conversation_seq,
                            index_key_id = excluded.index_key_id, created_at = excluded.created_at
                        """, logger: logger)
                }
            }
        }
    }

    package func createProxyToken(name: String, hash: Data, indexKeyID: Int64, createdAt: Int64) async throws(ChatLogError) -> Bool {
        let logger = logger
        return try await transactionMapped { connection in
            let rows = try await connection.statement(
                """
                INSERT INTO proxy_tokens (name, token_hash, index_key_id, created_at) VALUES (\(name), \(hash), \(indexKeyID), \(createdAt))
                ON CONFLICT (name) DO NOTHING RETURNING name
                """, logger: logger)
            var created = false
            for try await _ in rows { created = true }
            return created
        }
    }

    package func proxyTokens() async throws(ChatLogError) -> [ProxyToken] {
        try await read { connection in
            let rows = try await connection.statement(
                "SELECT name, created_at, revoked_at FROM proxy_tokens ORDER BY created_at, name COLLATE \"C\"", logger: self.logger)
            var tokens: [ProxyToken] = []
            for try await (name, created, revoked) in rows.decode((String, Int64, Int64?).self) {
                tokens.append(ProxyToken(name: name, createdAt: Date(timeIntervalSince1970: Double(created) / 1000), revokedAt: revoked.map { Date(timeIntervalSince1970: Double($0) / 1000) }))
            }
            return tokens
        }
    }

    package func revokeProxyToken(name: String, at time: Int64) async throws(ChatLogError) -> Bool {
        let logger = logger
        return try await transactionMapped { connection in
            let rows = try await connection.statement(
                "UPDATE proxy_tokens SET revoked_at = \(time) WHERE name = \(name) AND revoked_at IS NULL RETURNING name", logger: logger)
            var revoked = false
            for try await _ in rows { revoked = true }
            return revoked
        }
    }

    package func proxyToken(hashes: [Data]) async throws(ChatLogError) -> (name: String, indexKeyID: Int64)? {
        guard !hashes.isEmpty else { return nil }
        return try await read { connection in
            var binds = PostgresBindings()
            for hash in hashes { try binds.append(hash) }
            let rows = try await connection.statement(
                PostgresQuery(
                    unsafeSQL: """
                        SELECT name, index_key_id FROM proxy_tokens
                        WHERE revoked_at IS NULL AND token_hash IN (\((1...hashes.count).map { "$\($0)" }.joined(separator: ", ")))
                        """, binds: binds), logger: self.logger)
            for try await (name, key) in rows.decode((String, Int64).self) { return (name, key) }
            return nil
        }
    }

    package func rehashProxyToken(name: String, hash: Data, indexKeyID: Int64) async throws(ChatLogError) {
        let logger = logger
        try await transactionMapped { connection in
            try await connection.run(
                "UPDATE proxy_tokens SET token_hash = \(hash), index_key_id = \(indexKeyID) WHERE name = \(name) AND revoked_at IS NULL",
                logger: logger)
        }
    }

    package func proxyTokenNamesByIndexKey() async throws(ChatLogError) -> [Int64: [String]] {
        try await read { connection in
            let rows = try await connection.statement(
                "SELECT index_key_id, name FROM proxy_tokens WHERE revoked_at IS NULL ORDER BY name COLLATE \"C\"", logger: self.logger)
            var names: [Int64: [String]] = [:]
            for try await (key, name) in rows.decode((Int64, String).self) { names[key, default: []].append(name) }
            return names
        }
    }
}

// Side tables a copy carries verbatim (import records, proxy tokens, thread digests).
extension PostgresStorage {
    package func sideRows() async throws(ChatLogError) -> SideRows {
        try await read { connection in
            var rows = SideRows()
            let imports = try await connection.statement(
                "SELECT i.source_hash, c.id, i.imported_at FROM imports i JOIN conversations c ON c.seq = i.conversation_seq", logger: self.logger)
            for try await (hash, id, at) in imports.decode((Data, String, Int64).self) {
                rows.imports.append(SideRows.Import(sourceHash: hash, conversationID: id, importedAt: at))
            }
            let tokens = try await connection.statement(
                "SELECT name, token_hash, index_key_id, created_at, revoked_at FROM proxy_tokens", logger: self.logger)
            for try await (name, hash, key, created, revoked) in tokens.decode((String, Data, Int64, Int64, Int64?).self) {
                rows.tokens.append(SideRows.Token(name: name, hash: hash, indexKeyID: key, createdAt: created, revokedAt: revoked))
            }
            let threads = try await connection.statement(
                "SELECT t.digest, c.id, t.index_key_id, t.created_at FROM proxy_threads t JOIN conversations c ON c.seq = t.conversation_seq",
                logger: self.logger)
            for try await (digest, id, key, created) in threads.decode((Data, String, Int64, Int64).self) {
                rows.threads.append(SideRows.Thread(digest: digest, conversationID: id, indexKeyID: key, createdAt: created))
            }
            return rows
        }
    }

    package func insertSideRows(_ rows: SideRows) async throws(ChatLogError) {
        let logger = logger
        try await transactionMapped { connection in
            for item in rows.imports {
                try await connection.run(
                    """
                    INSERT INTO imports (source_hash, conversation_seq, imported_at)
                    SELECT \(item.sourceHash), seq, \(item.importedAt) FROM conversations WHERE id = \(item.conversationID)
                    ON CONFLICT DO NOTHING
                    """, logger: logger)
            }
            for token in rows.tokens {
                try await connection.run(
                    """
                    INSERT INTO proxy_tokens (name, token_hash, index_key_id, created_at, revoked_at)
                    VALUES (\(token.name), \(token.hash), \(token.indexKeyID), \(token.createdAt), \(token.revokedAt))
                    ON CONFLICT DO NOTHING
                    """, logger: logger)
            }
            for thread in rows.threads {
                try await connection.run(
                    """
                    INSERT INTO proxy_threads (digest, conversation_seq, index_key_id, created_at)
                    SELECT \(thread.digest), seq, \(thread.indexKeyID), \(thread.createdAt) FROM conversations WHERE id = \(thread.conversationID)
                    ON CONFLICT DO NOTHING
                    """, logger: logger)
            }
        }
    }
}
