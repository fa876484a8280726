import ChatLog
import Foundation
import Logging
import PostgresNIO

/// The subject keys of a PostgreSQL store, in a database of their own named by
/// `CHATLOG_SUBJECT_KEYS` (docs/ARCHITECTURE.md §10, "Erasure per subject"; docs/OPERATIONS.md
/// says how to set it up and back it up on a shorter retention than the data). The rows of the
/// subject-key file (docs/FORMAT.md §3.2) in three tables: `subject_key_meta` (store id, master
/// check value, wrapped hash key, and `*_next` during a rewrap), `subject_keys` (id, keyed hash of
/// the subject, wrapped key), `forgotten_subject_keys`. Ids come from a sequence of their own
/// from 0x80000000 and are never reused. The schema is created by the first chatlog that needs a
/// subject key (`schema_version` in the meta table; not the data's migrations: this database is
/// not a store).
///
/// Many writers on many hosts making the key of one subject at once end with one key: the
/// subject hash is unique, each inserts `ON CONFLICT DO NOTHING` and then reads the row that won.
package final class PostgresSubjectKeys: SubjectKeyRows {
    static let schemaVersion = 1
    static let firstID: Int64 = 0x8000_0000
    /// A transaction-level advisory lock for creating the schema (the same class as the store's).
    static let schemaLock: Int64 = 0x6368_6174_0000_0000 - 1

    let connection: PostgresStorage
    package var location: String { connection.location }

    init(connection: PostgresStorage) {
        self.connection = connection
    }

    /// Connects to `location`, refusing the data's own database (`data`): a key in the data's
    /// database would be in every backup of the data, and a forget would never be final.
    /// `setting`: what named it, for the errors (the variable, or `copy`'s option).
    package static func connect(_ location: PostgresLocation, data: PostgresLocation, setting: String = "CHATLOG_SUBJECT_KEYS") async throws(ChatLogError)
        -> PostgresSubjectKeys
    {
        if location.endpoint == data.endpoint, location.database == data.database {
            throw .subjectKeyStore(
                location: data.description,
                reason: "\(setting) names the data's own database; the subject keys need a database of their own (docs/OPERATIONS.md)")
        }
        let storage = try await PostgresStorage.connect(location, maximumConnections: 4)
        let keys = PostgresSubjectKeys(connection: storage)
        do throws(ChatLogError) {
            // The same database reached by another name (a host alias, a socket): it holds a store.
            if try await keys.exists("chatlog_meta") {
                throw ChatLogError.subjectKeyStore(
                    location: data.description,
                    reason: "\(setting) names a database that holds a chatlog store's data; the subject keys need a database of their own (docs/OPERATIONS.md)")
            }
        } catch {
            await storage.close()
            throw error
        }
        return keys
    }

    var logger: Logger { connection.logger }

    private func exists(_ table: String) async throws(ChatLogError) -> Bool {
        let logger = logger
        return try await connection.read { connection in
            var found = false
            for try await name in try await connection.statement("SELECT to_regclass(\(table))::text", logger: logger).decode(String?.self) {
                found = name != nil
            }
            return found
        }
    }

    private static let schema = [
        "CREATE TABLE subject_key_meta (name TEXT PRIMARY KEY, value BYTEA NOT NULL)",
        "CREATE SEQUENCE subject_key_ids AS BIGINT MINVALUE 2147483648 MAXVALUE 4294967295 START 2147483648 NO CYCLE",
        // Hash-partitioned by subject: a forget rewrites only the partition of its key (``destroy(_:)``).
        """
        CREATE TABLE subject_keys (
            id           BIGINT NOT NULL,
            subject_hash BYTEA  NOT NULL PRIMARY KEY,
            created_at   BIGINT NOT NULL,
            wrapped      BYTEA  NOT NULL,
            wrapped_next BYTEA
        ) PARTITION BY HASH (subject_hash)
        """,
        "CREATE INDEX subject_keys_by_id ON subject_keys (id)",
        "CREATE TABLE forgotten_subject_keys (id BIGINT PRIMARY KEY, forgotten_at BIGINT NOT NULL)",
    ] + (0..<partitions).map { "CREATE TABLE subject_keys_\($0) PARTITION OF subject_keys FOR VALUES WITH (MODULUS \(partitions), REMAINDER \($0))" }

    /// Partitions of `subject_keys`: a forget rewrites one (of ~1/64 of the keys: docs/PERFORMANCE.md).
    static let partitions = 64

    package func open(create: Bool, initial: @Sendable () -> [String: Data]) async throws(ChatLogError) -> [String: Data]? {
        if try await !exists("subject_key_meta") {
            guard create else { return nil }
            let logger = logger
            let values = initial()
            try await connection.transactionMapped { connection in
                try await connection.run("SELECT pg_advisory_xact_lock(\(Self.schemaLock))", logger: logger)
                var made = false
                for try await name in try await connection.statement("SELECT to_regclass('subject_key_meta')::text", logger: logger).decode(String?.self) {
                    made = name != nil
                }
                guard !made else { return }  // another process made it while this one waited
                for statement in Self.schema { try await connection.run(PostgresQuery(unsafeSQL: statement), logger: logger) }
                var meta = values
                meta["schema_version"] = Data(String(Self.schemaVersion).utf8)
                for (name, value) in meta.sorted(by: { $0.key < $1.key }) {
                    try await connection.run("INSERT INTO subject_key_meta (name, value) VALUES (\(name), \(value))", logger: logger)
                }
            }
        }
        let meta = try await self.meta()
        let version = meta["schema_version"].flatMap { Int(String(decoding: $0, as: UTF8.self)) } ?? 0
        guard version == Self.schemaVersion else {
            throw .subjectKeyStore(location: location, reason: "its subject keys have format version \(version); this chatlog reads \(Self.schemaVersion)")
        }
        return meta
    }

    private func meta() async throws(ChatLogError) -> [String: Data] {
        let logger = logger
        return try await connection.read { connection in
            var meta: [String: Data] = [:]
            for try await (name, value) in try await connection.statement("SELECT name, value FROM subject_key_meta", logger: logger).decode((String, Data).self) {
                meta[name] = value
            }
            return meta
        }
    }

    private static func rows(_ sequence: PostgresRowSequence) async throws -> [StoredSubjectKey] {
        var rows: [StoredSubjectKey] = []
        for try await (id, hash, wrapped) in sequence.decode((Int64, Data, Data).self) {
            rows.append(StoredSubjectKey(id: id, subjectHash: hash, wrapped: wrapped))
        }
        return rows
    }

    package func keys(hashes: [Data]) async throws(ChatLogError) -> [StoredSubjectKey] {
        guard !hashes.isEmpty else { return [] }
        let logger = logger
        let hashBuffers = hashes.map { ByteBuffer(bytes: $0) }
        return try await connection.read { connection in
            try await Self.rows(
                try await connection.statement(
                    "SELECT id, subject_hash, wrapped FROM subject_keys WHERE subject_hash = ANY(\(hashBuffers)::bytea[])", logger: logger))
        }
    }

    package func key(id: Int64) async throws(ChatLogError) -> StoredSubjectKey? {
        let logger = logger
        return try await connection.read { connection in
            // Twice when absent: a statement that waited for a destroy's rewrite of the table saw
            // it empty (its snapshot was older); the next one sees its rows.
            for _ in 0..<2 {
                let found = try await Self.rows(
                    try await connection.statement("SELECT id, subject_hash, wrapped FROM subject_keys WHERE id = \(id)", logger: logger)).first
                if let found { return found }
            }
            return nil
        }
    }

    package func create(hashes: [Data], masterCheck: Data, wrap: @Sendable (Int64, Data) -> Data) async throws(ChatLogError) -> [StoredSubjectKey] {
        guard !hashes.isEmpty else { return [] }
        // In one order in every process: two creators of the same subjects that insert them in
        // different orders wait for each other's rows (ON CONFLICT waits for the other's commit) —
        // a deadlock PostgreSQL breaks by failing one (seen: PostgresSubjectKeyTests, six handles).
        let hashes = hashes.sorted { $0.lexicographicallyPrecedes($1) }
        let logger = logger
        let location = location
        return try await connection.transactionMapped { connection in
            // Wrapped under the master key the store's key rows are under now: a process still
            // holding the key a rewrap replaced makes nothing here.
            var current = false
            for try await same in try await connection.statement(
                "SELECT value = \(masterCheck) FROM subject_key_meta WHERE name = 'master_check' FOR SHARE", logger: logger
            ).decode(Bool.self) {
                current = same
            }
            guard current else {
                throw ChatLogError.subjectKeyStore(
                    location: location, reason: "its master key changed (another process ran `chatlog key rewrap`); open the store with the new key")
            }
            var ids: [Int64] = []
            for try await id in try await connection.statement(
                "SELECT nextval('subject_key_ids') FROM generate_series(1, \(Int64(hashes.count)))", logger: logger
            ).decode(Int64.self) {
                ids.append(id)
            }
            let wrapped = zip(ids, hashes).map { ByteBuffer(bytes: wrap($0, $1)) }
            let hashBuffers = hashes.map { ByteBuffer(bytes: $0) }
            try await connection.run(
                """
                INSERT INTO subject_keys (id, subject_hash, created_at, wrapped)
                SELECT id, hash, \(Self.now()), wrapped FROM unnest(\(ids)::bigint[], \(hashBuffers)::bytea[], \(wrapped)::bytea[]) AS t (id, hash, wrapped)
                ON CONFLICT (subject_hash) DO NOTHING
                """, logger: logger)
            // The rows that won, this transaction's or another's (committed before the conflict
            // was resolved: READ COMMITTED sees it in this new statement).
            return try await Self.rows(
                try await connection.statement(
                    "SELECT id, subject_hash, wrapped FROM subject_keys WHERE subject_hash = ANY(\(hashBuffers)::bytea[])", logger: logger))
        }
    }

    package func absence(of id: Int64) async throws(ChatLogError) -> SubjectKeyAbsence {
        let logger = logger
        return try await connection.read { connection in
            var forgotten = false
            for try await _ in try await connection.statement("SELECT 1 FROM forgotten_subject_keys WHERE id = \(id)", logger: logger) { forgotten = true }
            if forgotten { return .forgotten }
            var issued: Int64 = Self.firstID - 1
            for try await (last, called) in try await connection.statement("SELECT last_value, is_called FROM subject_key_ids", logger: logger).decode(
                (Int64, Bool).self)
            {
                issued = called ? last : last - 1
            }
            return id < Self.firstID || id > issued ? .neverIssued : .unknown
        }
    }

    /// Deletes the keys and lists them as forgotten, in one transaction that also writes their
    /// partitions anew (`TRUNCATE` and the other rows put back): a `DELETE` leaves the row's bytes in its page
    /// until a vacuum removes it, and a vacuum keeps a row while any snapshot older than the delete
    /// exists anywhere on the server (seen with other databases' long queries: `VACUUM FULL` kept
    /// it). `TRUNCATE` gives the table a new file whatever other snapshots there are; the old
    /// file is emptied at commit. Readers wait on the exclusive lock; a statement whose snapshot is
    /// older than this commit may find no key once (``key(id:)`` then reads again). Costs a copy of
    /// the partition (1/64 of the keys). WAL and its archives keep the bytes until they expire
    /// (docs/OPERATIONS.md).
    package func destroy(_ ids: [Int64]) async throws(ChatLogError) {
        guard !ids.isEmpty else { return }
        let logger = logger
        try await connection.transactionMapped { connection in
            // One destroy at a time (two would each hold every partition shared and wait for the
            // other's to become exclusive); then the partitions holding the keys, each rewritten.
            try await connection.run("SELECT pg_advisory_xact_lock(\(Self.schemaLock - 1))", logger: logger)
            var partitions: [String] = []
            for try await name in try await connection.statement(
                "SELECT DISTINCT tableoid::regclass::text FROM subject_keys WHERE id = ANY(\(ids)::bigint[]) ORDER BY 1", logger: logger
            ).decode(String.self) {
                partitions.append(name)
            }
            for partition in partitions {
                // A name chatlog made (subject_keys_N), checked before it goes into SQL.
                guard partition.hasPrefix("subject_keys_"), partition.dropFirst("subject_keys_".count).allSatisfy(\.isNumber) else {
                    throw ChatLogError.subjectKeyStore(location: self.location, reason: "its table subject_keys has a partition chatlog did not make")
                }
                try await connection.run(PostgresQuery(unsafeSQL: "LOCK TABLE \(partition) IN ACCESS EXCLUSIVE MODE"), logger: logger)
                try await connection.run(
                    "CREATE TEMPORARY TABLE kept_subject_keys ON COMMIT DROP AS SELECT * FROM subject_keys WHERE false", logger: logger)
                try await connection.run(
                    PostgresQuery(
                        unsafeSQL: "INSERT INTO kept_subject_keys SELECT * FROM \(partition) WHERE id <> ALL($1::bigint[])",
                        binds: { var binds = PostgresBindings(); binds.append(ids); return binds }()), logger: logger)
                try await connection.run(PostgresQuery(unsafeSQL: "TRUNCATE \(partition)"), logger: logger)
                try await connection.run(PostgresQuery(unsafeSQL: "INSERT INTO \(partition) SELECT * FROM kept_subject_keys"), logger: logger)
                try await connection.run("DROP TABLE kept_subject_keys", logger: logger)
            }
            try await connection.run(
                """
                INSERT INTO forgotten_subject_keys (id, forgotten_at) SELECT id, \(Self.now()) FROM unnest(\(ids)::bigint[]) AS id
                ON CONFLICT (id) DO NOTHING
                """, logger: logger)
        }
    }

    package func forgottenIDs() async throws(ChatLogError) -> [Int64] {
        let logger = logger
        return try await connection.read { connection in
            var ids: [Int64] = []
            for try await id in try await connection.statement("SELECT id FROM forgotten_subject_keys", logger: logger).decode(Int64.self) { ids.append(id) }
            return ids
        }
    }

    package func counts() async throws(ChatLogError) -> (live: Int, forgotten: Int) {
        let logger = logger
        return try await connection.read { connection in
            var counts = (live: 0, forgotten: 0)
            for try await (live, forgotten) in try await connection.statement(
                "SELECT (SELECT count(*) FROM subject_keys), (SELECT count(*) FROM forgotten_subject_keys)", logger: logger
            ).decode((Int64, Int64).self) {
                counts = (Int(live), Int(forgotten))
            }
            return counts
        }
    }

    package func prepareRewrap(
        onlyMissing: Bool, meta: [String: Data], rewrap: @Sendable (StoredSubjectKey) throws(ChatLogError) -> Data
    ) async throws(ChatLogError) {
        let logger = logger
        try await connection.transactionMapped { connection in
            let rows = try await Self.rows(
                try await connection.statement(
                    PostgresQuery(
                        unsafeSQL: "SELECT id, subject_hash, wrapped FROM subject_keys" + (onlyMissing ? " WHERE wrapped_next IS NULL" : "")
                            + " ORDER BY id FOR UPDATE"), logger: logger))
            var ids: [Int64] = []
            var next: [ByteBuffer] = []
            for row in rows {
                ids.append(row.id)
                next.append(ByteBuffer(bytes: try rewrap(row)))
            }
            if !ids.isEmpty {
                try await connection.run(
                    """
                    UPDATE subject_keys k SET wrapped_next = t.next FROM unnest(\(ids)::bigint[], \(next)::bytea[]) AS t (id, next) WHERE k.id = t.id
                    """, logger: logger)
            }
            for (name, value) in meta.sorted(by: { $0.key < $1.key }) {
                try await connection.run(
                    "INSERT INTO subject_key_meta (name, value) VALUES (\(name), \(value)) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    logger: logger)
            }
        }
    }

    package func finishRewrap() async throws(ChatLogError) {
        let logger = logger
        try await connection.transactionMapped { connection in
            var pending = false
            for try await _ in try await connection.statement("SELECT 1 FROM subject_key_meta WHERE name = 'hash_key_next' FOR UPDATE", logger: logger) {
                pending = true
            }
            guard pending else { return }
            try await connection.run("UPDATE subject_keys SET wrapped = wrapped_next, wrapped_next = NULL WHERE wrapped_next IS NOT NULL", logger: logger)
            try await connection.run(
                """
                UPDATE subject_key_meta m SET value = n.value FROM subject_key_meta n
                WHERE (m.name, n.name) IN (('hash_key', 'hash_key_next'), ('master_check', 'master_check_next'))
                """, logger: logger)
            try await connection.run("DELETE FROM subject_key_meta WHERE name IN ('hash_key_next', 'master_check_next')", logger: logger)
        }
    }

    package func abandonRewrap() async throws(ChatLogError) {
        let logger = logger
        try await connection.transactionMapped { connection in
            try await connection.run("UPDATE subject_keys SET wrapped_next = NULL WHERE wrapped_next IS NOT NULL", logger: logger)
            try await connection.run("DELETE FROM subject_key_meta WHERE name IN ('hash_key_next', 'master_check_next')", logger: logger)
        }
    }

    static func now() -> Int64 { Int64((Date().timeIntervalSince1970 * 1000).rounded(.down)) }

    package func close() async {
        await connection.close()
    }
}
