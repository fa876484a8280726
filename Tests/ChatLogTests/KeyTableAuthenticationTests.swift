import Foundation
import GRDB
import Testing

@testable import ChatLog

/// The keys table and the schema are not trusted: key rows carry a MAC under the master key, the
/// active key of a kind must be its newest, a rotation checks that the key it made is active, and
/// schema objects chatlog's migrations did not create are refused (docs/SECURITY.md).
@Suite struct KeyTableAuthenticationTests {
    /// The place and reason of an integrity failure thrown by `body`.
    private func integrityFailure(_ body: () throws -> Void) -> IntegrityFailure? {
        do {
            try body()
        } catch let error as ChatLogError {
            if case .integrity(let failure) = error { return failure }
            Issue.record("expected an integrity failure, got \(error)")
        } catch {
            Issue.record("expected an integrity failure, got \(error)")
        }
        return nil
    }

    @Test func reactivatingAnOldDataKeyIsAnIntegrityFailure() async throws {
        try await withTemporaryDirectory { directory in
            let key = MasterKey.generate()
            let store = try makeStore(in: directory, key: key)
            try store.createConversation(NewConversation(title: "under key 1"))
            try store.rotateDataKey(newKey: true)
            try store.close()
            // The attack of the review: the old data key marked active again, the new one demoted.
            try withRawDatabase(directory.databasePath) { db in
                try db.execute(sql: "UPDATE keys SET state = 'decrypt-only' WHERE id = 3")
                try db.execute(sql: "UPDATE keys SET state = 'active' WHERE id = 1")
            }
            let failure = integrityFailure { try ChatLogStore.open(at: directory.databasePath, key: .key(key)).close() }
            #expect(failure?.table == "keys")
            #expect(failure?.column == "mac")
        }
    }

    @Test func theActiveKeyMustBeTheNewest() async throws {
        try await withTemporaryDirectory { directory in
            let key = MasterKey.generate()
            let store = try makeStore(in: directory, key: key)
            try store.rotateDataKey(newKey: true)
            // Rows consistent with their MACs, but key 1 active while key 3 is newer: only a
            // holder of the master key could write this, and still it is refused.
            try store.writeImmediate { db in
                try db.execute(sql: "UPDATE keys SET state = 'decrypt-only' WHERE id = 3")
                try db.execute(sql: "UPDATE keys SET state = 'active' WHERE id = 1")
                try KeyRowAuthentication.sealAll(master: key, db: db)
            }
            try store.close()
            let failure = integrityFailure { try ChatLogStore.open(at: directory.databasePath, key: .key(key)).close() }
            #expect(failure?.table == "keys")
            #expect(failure?.column == "state")
            #expect(failure?.rowID == "data:1")
        }
    }

    @Test func aRotationWhoseNewKeyIsNotActiveFailsAndChangesNothing() async throws {
        try await withTemporaryDirectory { directory in
            let key = MasterKey.generate()
            let store = try makeStore(in: directory, key: key)
            try store.createConversation(NewConversation(title: "stays under key 1"))
            // Planted after the store was opened (an open refuses it): re-pins key 1.
            try withRawDatabase(directory.databasePath) { db in
                try db.execute(
                    sql: """
                        CREATE TRIGGER repin AFTER INSERT ON keys WHEN NEW.kind = 'data' BEGIN
                            UPDATE keys SET state = 'decrypt-only' WHERE id = NEW.id;
                            UPDATE keys SET state = 'active' WHERE id = 1;
                        END
                        """)
            }
            let before = try withRawDatabase(directory.databasePath) { db in try Row.fetchAll(db, sql: "SELECT * FROM keys ORDER BY id") }
            let failure = integrityFailure { _ = try store.rotateDataKey(RotationOptions(newKey: true)) }
            #expect(failure?.table == "keys")
            let after = try withRawDatabase(directory.databasePath) { db in try Row.fetchAll(db, sql: "SELECT * FROM keys ORDER BY id") }
            #expect(after == before, "the failed rotation changed the keys table")
            try store.close()
            // And the next open refuses the trigger, naming it.
            let refused = integrityFailure { try ChatLogStore.open(at: directory.databasePath, key: .key(key)).close() }
            #expect(refused?.table == "sqlite_master")
            #expect(refused?.rowID == "repin")
        }
    }

    @Test(arguments: [
        "CREATE TRIGGER planted AFTER INSERT ON keys BEGIN SELECT 1; END",
        "CREATE VIEW planted AS SELECT * FROM keys",
        "CREATE TABLE planted (x)",
        "CREATE INDEX planted ON messages (model)",
    ])
    func unknownSchemaObjectsAreRefusedByName(_ sql: String) async throws {
        try await withTemporaryDirectory { directory in
            let key = MasterKey.generate()
            try makeStore(in: directory, key: key).close()
            try withRawDatabase(directory.databasePath) { db in try db.execute(sql: sql) }
            let failure = integrityFailure { try ChatLogStore.open(at: directory.databasePath, key: .key(key)).close() }
            #expect(failure?.table == "sqlite_master")
            #expect(failure?.rowID == "planted")
        }
    }

    /// SQLite's own planner statistics (`ANALYZE`, `PRAGMA optimize`) are not planted objects.
    @Test func plannerStatisticsDoNotMakeTheStoreRefused() async throws {
        try await withTemporaryDirectory { directory in
            let key = MasterKey.generate()
            try makeStore(in: directory, key: key).close()
            try withRawDatabase(directory.databasePath) { db in try db.execute(sql: "ANALYZE") }
            let tables = try withRawDatabase(directory.databasePath) { db in
                try String.fetchAll(db, sql: "SELECT name FROM sqlite_master WHERE name LIKE 'sqlite_stat%'")
            }
            #expect(!tables.isEmpty, "ANALYZE made no statistics table")
            try ChatLogStore.open(at: directory.databasePath, key: .key(key)).close()
        }
    }

    @Test func aChangedIndexDefinitionIsRefused() async throws {
        try await withTemporaryDirectory { directory in
            let key = MasterKey.generate()
            try makeStore(in: directory, key: key).close()
            try withRawDatabase(directory.databasePath) { db in
                try db.execute(sql: "DROP INDEX keys_one_active_per_kind")
                try db.execute(sql: "CREATE INDEX keys_one_active_per_kind ON keys (kind)")
            }
            let failure = integrityFailure { try ChatLogStore.open(at: directory.databasePath, key: .key(key)).close() }
            #expect(failure?.rowID == "keys_one_active_per_kind")
        }
    }

    @Test func connectionsDoNotTrustTheSchemaAndAreDefensive() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            #expect(try store.read { db in try Int.fetchOne(db, sql: "PRAGMA trusted_schema") } == 0)
            // Defensive mode: no writable_schema, no direct writes to FTS5 shadow tables.
            #expect(throws: (any Error).self) {
                try store.writeImmediate { db in
                    try db.execute(sql: "PRAGMA writable_schema = ON")
                    try db.execute(sql: "UPDATE sqlite_master SET sql = sql WHERE name = 'keys'")
                }
            }
            #expect(throws: (any Error).self) {
                try store.writeImmediate { db in try db.execute(sql: "DELETE FROM message_terms_data") }
            }
            try store.close()
        }
    }

    /// A store from before key rows were authenticated (v1 check value, no MACs) is converted at
    /// its first keyed open; from then on tampering is detected. The fingerprint does not change.
    @Test func aStoreFromAnEarlierSchemaIsConvertedAtItsFirstKeyedOpen() async throws {
        try await withTemporaryDirectory { directory in
            let key = MasterKey.generate()
            let store = try makeStore(in: directory, key: key)
            let fingerprint = try store.keyStatus().masterKeyFingerprint
            try store.close()
            try withRawDatabase(directory.databasePath) { db in
                try db.execute(sql: "UPDATE keys SET mac = NULL")
                try db.execute(sql: "UPDATE chatlog_meta SET value = ? WHERE name = 'master_check'", arguments: [Data(key.checkValue)])
                try db.execute(sql: "DELETE FROM chatlog_meta WHERE name = 'master_fingerprint'")
            }
            let converted = try ChatLogStore.open(at: directory.databasePath, key: .key(key))
            #expect(try converted.keyStatus().masterKeyFingerprint == fingerprint)
            try converted.close()
            let state = try withRawDatabase(directory.databasePath) { db in
                (
                    try Int.fetchOne(db, sql: "SELECT count(*) FROM keys WHERE mac IS NULL"),
                    try Data.fetchOne(db, sql: "SELECT value FROM chatlog_meta WHERE name = 'master_check'")
                )
            }
            #expect(state.0 == 0)
            #expect(state.1 == Data(key.checkValueV2))
            // A wrong key still names the store's (v1-based) fingerprint.
            let wrong = MasterKey.generate()
            #expect(throws: ChatLogError.wrongKey(expected: fingerprint, given: wrong.fingerprint, source: "given by the application")) {
                try ChatLogStore.open(at: directory.databasePath, key: .key(wrong))
            }
            try withRawDatabase(directory.databasePath) { db in try db.execute(sql: "UPDATE keys SET mac = NULL WHERE id = 1") }
            let failure = integrityFailure { try ChatLogStore.open(at: directory.databasePath, key: .key(key)).close() }
            #expect(failure?.column == "mac")
        }
    }
}
