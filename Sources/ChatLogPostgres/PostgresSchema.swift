import Foundation
import ChatLog
import Logging
import PostgresNIO

/// Applies migrations/postgres/NNNN_name.sql (embedded at build time as `embeddedMigrations`),
/// each in its own transaction, recorded in `chatlog_migrations`. Every run holds a transaction-
/// level advisory lock, so two processes opening a new store at once apply each migration once.
enum PostgresSchema {
    static var migrations: [EmbeddedMigration] { embeddedMigrations }
    static var latestVersion: Int { migrations.last?.version ?? 0 }

    static func migrate(_ storage: PostgresStorage) async throws(ChatLogError) {
        let logger = storage.logger
        let applied: Int = try await storage.transactionMapped { connection in
            try await lock(connection, logger)
            try await connection.run(
                """
                CREATE TABLE IF NOT EXISTS chatlog_migrations (
                    version    INTEGER PRIMARY KEY,
                    name       TEXT NOT NULL,
                    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
                )
                """, logger: logger)
            return try await appliedVersion(connection, logger)
        }
        if applied > latestVersion { throw .schemaTooNew(found: applied, supported: latestVersion) }
        for migration in migrations where migration.version > applied {
            try await storage.transactionMapped { connection in
                try await lock(connection, logger)
                // Another process may have applied it while this one waited for the lock.
                guard try await appliedVersion(connection, logger) < migration.version else { return }
                // The extended query protocol runs one statement at a time.
                for statement in statements(migration.sql) {
                    try await connection.run(PostgresQuery(unsafeSQL: statement), logger: logger)
                }
                try await connection.run(
                    "INSERT INTO chatlog_migrations (version, name) VALUES (\(Int32(migration.version)), \(migration.name))", logger: logger)
            }
        }
    }

    /// The statements of a migration file: split at `;` outside quotes ('…', "…"), dollar-quoted
    /// bodies ($tag$…$tag$) and comments (-- to the end of the line, /* … */); empty ones dropped.
    static func statements(_ sql: String) -> [String] {
        let characters = Array(sql.unicodeScalars)
        var statements: [String] = []
        var current = String.UnicodeScalarView()
        var index = 0
        func flush() {
            let text = String(current).trimmingCharacters(in: .whitespacesAndNewlines)
            if !text.isEmpty { statements.append(text) }
            current = String.UnicodeScalarView()
        }
        func starts(_ text: String, at position: Int) -> Bool {
            let scalars = Array(text.unicodeScalars)
            guard position + scalars.count <= characters.count else { return false }
            return Array(characters[position..<(position + scalars.count)]) == scalars
        }
        while index < characters.count {
            let character = characters[index]
            if starts("--", at: index) {
                while index < characters.count, characters[index] != "\n" { index += 1 }
                continue
            }
            if starts("/*", at: index) {
                index += 2
                while index < characters.count, !starts("*/", at: index) { index += 1 }
                index += 2
                continue
            }
            if character == "'" || character == "\"" {
                current.append(character)
                index += 1
                while index < characters.count {
                    current.append(characters[index])
                    if characters[index] == character {
                        // A doubled quote is an escaped quote, not the end.
                        if index + 1 < characters.count, characters[index + 1] == character {
                            current.append(characters[index + 1])
                            index += 2
                            continue
                        }
                        index += 1
                        break
                    }
                    index += 1
                }
                continue
            }
            if character == "$" {
                var end = index + 1
                while end < characters.count, characters[end] == "_" || characters[end].properties.isAlphabetic || ("0"..."9").contains(characters[end]) {
                    end += 1
                }
                if end < characters.count, characters[end] == "$" {
                    let tag = String(String.UnicodeScalarView(characters[index...end]))
                    current.append(contentsOf: characters[index...end])
                    index = end + 1
                    while index < characters.count, !starts(tag, at: index) {
                        current.append(characters[index])
                        index += 1
                    }
                    current.append(contentsOf: tag.unicodeScalars)
                    index += tag.unicodeScalars.count
                    continue
                }
            }
            if character == ";" {
                flush()
                index += 1
                continue
            }
            current.append(character)
            index += 1
        }
        flush()
        return statements
    }

    /// The highest version recorded (0 for none).
    static func appliedVersion(_ connection: PostgresConnection, _ logger: Logger) async throws -> Int {
        let rows = try await connection.statement("SELECT coalesce(max(version), 0) FROM chatlog_migrations", logger: logger)
        var version = 0
        for try await value in rows.decode(Int32.self) { version = Int(value) }
        return version
    }

    static func lock(_ connection: PostgresConnection, _ logger: Logger) async throws {
        try await connection.run(
            "SELECT pg_advisory_xact_lock(\(PostgresStorage.lockClass), \(PostgresStorage.migrationLock))", logger: logger)
    }

    /// The version a store's database is at (0: never migrated), for tests and `verify`.
    static func version(_ storage: PostgresStorage) async throws(ChatLogError) -> Int {
        try await storage.read { connection in
            let exists = try await connection.statement("SELECT to_regclass('chatlog_migrations') IS NOT NULL", logger: storage.logger)
            var present = false
            for try await value in exists.decode(Bool.self) { present = value }
            guard present else { return 0 }
            return try await appliedVersion(connection, storage.logger)
        }
    }
}
