import Foundation
import GRDB
import Synchronization

// The subject keys as `chatlog copy` moves them (docs/ARCHITECTURE.md §10, "Erasure per subject";
// docs/FORMAT.md §3.2): the rows of a subject-key store read and written as bytes — the wrapped
// hash key, the wrapped keys bound to store id, key id and subject hash, the forgotten ids, the
// next id — never unwrapped. A copy opens with the same master key, so the destination opens
// them as the source did. `SubjectKeyFileCopy` below is the SQLite file's side; PostgreSQL's is
// `PostgresSubjectKeys`.

/// What identifies a subject-key store and its next id.
package struct SubjectKeyHead: Sendable, Hashable {
    package var storeID: String
    /// The store's master-key check value when the keys were wrapped.
    package var masterCheck: Data
    /// The key of the subject hashes, wrapped under the master key.
    package var hashKey: Data
    /// The first id the store has not given out (ids are never reused).
    package var nextID: Int64

    package init(storeID: String, masterCheck: Data, hashKey: Data, nextID: Int64) {
        self.storeID = storeID
        self.masterCheck = masterCheck
        self.hashKey = hashKey
        self.nextID = nextID
    }

    /// Whether two heads are the same store's keys (the next id may have moved on).
    package func sameKeys(as other: SubjectKeyHead) -> Bool {
        storeID == other.storeID && KeyRowAuthentication.equal(masterCheck, other.masterCheck) && KeyRowAuthentication.equal(hashKey, other.hashKey)
    }
}

/// A subject key as stored, with its creation time.
package struct CopiedSubjectKey: Sendable, Hashable {
    package var id: Int64
    package var subjectHash: Data
    package var createdAt: Int64
    package var wrapped: Data

    package init(id: Int64, subjectHash: Data, createdAt: Int64, wrapped: Data) {
        self.id = id
        self.subjectHash = subjectHash
        self.createdAt = createdAt
        self.wrapped = wrapped
    }
}

/// A key id destroyed by `forget`, and when.
package struct ForgottenSubjectKeyRow: Sendable, Hashable {
    package var id: Int64
    package var forgottenAt: Int64

    package init(id: Int64, forgottenAt: Int64) {
        self.id = id
        self.forgottenAt = forgottenAt
    }
}

/// A subject-key store read and written row by row, for `chatlog copy`.
package protocol SubjectKeyCopying: Sendable {
    /// Where it is (for messages; never a password).
    var location: String { get }
    /// Its head; nil when there is no subject-key store there yet. Throws when a master-key
    /// rewrap of it is unfinished (its rows are then wrapped twice).
    func copyHead() async throws(ChatLogError) -> SubjectKeyHead?
    /// Up to `limit` keys with ids above `id`, by id.
    func copyKeys(after id: Int64, limit: Int) async throws(ChatLogError) -> [CopiedSubjectKey]
    /// Which of `ids` have a key.
    func presentKeyIDs(_ ids: [Int64]) async throws(ChatLogError) -> Set<Int64>
    func copyForgotten() async throws(ChatLogError) -> [ForgottenSubjectKeyRow]
    /// Creates the store with `head` (schema, meta values) when there is none. One that exists must
    /// be the same keys (``SubjectKeyHead/sameKeys(as:)``): else the specific error, nothing written.
    func receive(head: SubjectKeyHead) async throws(ChatLogError)
    /// Inserts the keys it lacks, in one transaction; a key whose id or subject hash it holds with
    /// other bytes is refused (nothing of the batch written).
    func receive(keys: [CopiedSubjectKey]) async throws(ChatLogError)
    /// Lists the ids as forgotten (their keys deleted from its files, as `forget` does) and moves
    /// its next id to at least `nextID`, in one transaction.
    func receive(forgotten: [ForgottenSubjectKeyRow], nextID: Int64) async throws(ChatLogError)
    /// Whether `other` is this same store reached another way (a host alias, a link): a copy must
    /// never share its source's keys (a forget on one would destroy the other's).
    func isSameStore(as other: any SubjectKeyCopying) async throws(ChatLogError) -> Bool
    func closeCopy() async
}

extension SubjectKeyCopying {
    /// The error naming this store.
    package func copyFailure(_ reason: String) -> ChatLogError { .subjectKeyStore(location: location, reason: reason) }

    /// Refuses a head that is not `expected`'s keys, naming why (nothing is written).
    package func requireSame(_ found: SubjectKeyHead, as expected: SubjectKeyHead) throws(ChatLogError) {
        guard found.storeID == expected.storeID else {
            throw copyFailure("it holds another store's subject keys; copy into an empty subject-key store")
        }
        guard found.sameKeys(as: expected) else {
            throw copyFailure("it is not empty: it holds subject keys of this store that are not the source's (another copy's?); copy into an empty subject-key store")
        }
    }
}

/// The subject-key file (`STORE.subject-keys`, docs/FORMAT.md §3.2) as a copy reads and writes it,
/// on a connection of its own (the store's ``SubjectKeyFile`` makes a new hash key when it creates
/// a file; a copy's destination gets the source's).
package final class SubjectKeyFileCopy: SubjectKeyCopying {
    package let path: String
    /// The store file the key file belongs to (the owner of files made next to it).
    let storePath: String
    let readOnly: Bool
    private let queue = Mutex<DatabaseQueue?>(nil)

    package var location: String { path }

    /// What the file's name adds to its store's.
    package static var suffix: String { SubjectKeyFile.suffix }

    /// The subject-key file of the store at `storePath`.
    package init(storePath: String, readOnly: Bool) {
        self.storePath = storePath
        path = storePath + SubjectKeyFile.suffix
        self.readOnly = readOnly
    }

    private func database(create: Bool) throws(ChatLogError) -> DatabaseQueue? {
        if let open = queue.withLock({ $0 }) { return open }
        if PrivateFiles.isDirectory(path) { throw copyFailure("it is a directory") }
        if !PrivateFiles.fileExists(path) {
            guard create else { return nil }
            try PrivateFiles.createEmptyPrivateFile(at: path, nextToStore: storePath)
        }
        var configuration = Configuration()
        configuration.readonly = readOnly
        configuration.busyMode = .timeout(5)
        configuration.label = "chatlog-subject-keys-copy"
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA trusted_schema = OFF")
            try db.execute(sql: "PRAGMA secure_delete = ON")
        }
        let opened: DatabaseQueue
        do {
            opened = try DatabaseQueue(path: path, configuration: configuration)
        } catch {
            throw ChatLogError.wrap(error)
        }
        return queue.withLock { held in
            if held == nil { held = opened }
            return held
        }
    }

    private func run<T>(create: Bool = false, _ body: (Database) throws -> T) throws(ChatLogError) -> T? {
        guard let queue = try database(create: create) else { return nil }
        do {
            return try queue.inDatabase(body)
        } catch let error as ChatLogError {
            throw error
        } catch let error as DatabaseError where error.resultCode == .SQLITE_NOTADB {
            throw copyFailure("it is not a SQLite database")
        } catch {
            throw ChatLogError.wrap(error)
        }
    }

    /// The head of an opened file; nil when it has no tables yet (a new empty file).
    private func head(_ db: Database) throws -> SubjectKeyHead? {
        let tables = try String.fetchSet(db, sql: "SELECT name FROM sqlite_master WHERE type = 'table'")
        if tables.isEmpty { return nil }
        guard tables.isSuperset(of: ["meta", "subject_keys", "forgotten"]) else { throw copyFailure("it is not a chatlog subject-key file") }
        let version = try Int.fetchOne(db, sql: "PRAGMA user_version") ?? 0
        guard version == SubjectKeyFile.schemaVersion else {
            throw copyFailure("it has format version \(version); this chatlog reads \(SubjectKeyFile.schemaVersion)")
        }
        var meta: [String: Data] = [:]
        for row in try Row.fetchAll(db, sql: "SELECT name, value FROM meta WHERE name <> 'next_id'") { meta[row[0]] = row.sealedBytes(at: 1) }
        guard meta["hash_key_next"] == nil else {
            throw copyFailure("a master-key rewrap of it is unfinished; open the store once with its current master key (which finishes it), then copy")
        }
        guard let storeID = meta["store_id"], let check = meta["master_check"], let hashKey = meta["hash_key"] else {
            throw copyFailure("it lacks its store id, master-key check value or hash key")
        }
        let next = try Int64.fetchOne(db, sql: "SELECT value FROM meta WHERE name = 'next_id'") ?? Int64(SubjectKeyFile.firstID)
        return SubjectKeyHead(storeID: String(decoding: storeID, as: UTF8.self), masterCheck: check, hashKey: hashKey, nextID: next)
    }

    package func copyHead() async throws(ChatLogError) -> SubjectKeyHead? {
        try run { db in try self.head(db) } ?? nil
    }

    package func copyKeys(after id: Int64, limit: Int) async throws(ChatLogError) -> [CopiedSubjectKey] {
        try run { db in
            try Row.fetchAll(
                db, sql: "SELECT id, subject_hash, created_at, wrapped FROM subject_keys WHERE id > ? ORDER BY id LIMIT ?", arguments: [id, limit]
            ).map { row in
                CopiedSubjectKey(id: row[0], subjectHash: row.sealedBytes(at: 1) ?? Data(), createdAt: row[2], wrapped: row.sealedBytes(at: 3) ?? Data())
            }
        } ?? []
    }

    package func presentKeyIDs(_ ids: [Int64]) async throws(ChatLogError) -> Set<Int64> {
        guard !ids.isEmpty else { return [] }
        return try run { db in
            var found = Set<Int64>()
            let statement = try db.makeStatement(sql: "SELECT 1 FROM subject_keys WHERE id = ?")
            for id in ids where try Row.fetchOne(statement, arguments: [id]) != nil { found.insert(id) }
            return found
        } ?? []
    }

    package func copyForgotten() async throws(ChatLogError) -> [ForgottenSubjectKeyRow] {
        try run { db in
            try Row.fetchAll(db, sql: "SELECT id, forgotten_at FROM forgotten ORDER BY id").map { ForgottenSubjectKeyRow(id: $0[0], forgottenAt: $0[1]) }
        } ?? []
    }

    package func receive(head expected: SubjectKeyHead) async throws(ChatLogError) {
        _ = try run(create: true) { db in
            try db.inTransaction(.immediate) {
                if let found = try self.head(db) {
                    try self.requireSame(found, as: expected)
                    return .commit
                }
                try db.execute(sql: SubjectKeyFile.schema)
                // As the store's SubjectKeyFile writes them (the store id as text, the next id as an integer).
                try db.execute(
                    sql: "INSERT INTO meta (name, value) VALUES ('store_id', ?), ('next_id', ?), ('master_check', ?), ('hash_key', ?)",
                    arguments: [expected.storeID, expected.nextID, expected.masterCheck, expected.hashKey])
                try db.execute(sql: "PRAGMA user_version = \(SubjectKeyFile.schemaVersion)")
                return .commit
            }
        }
    }

    package func receive(keys: [CopiedSubjectKey]) async throws(ChatLogError) {
        guard !keys.isEmpty else { return }
        _ = try run { db in
            try db.inTransaction(.immediate) {
                let insert = try db.makeStatement(
                    sql: "INSERT INTO subject_keys (id, subject_hash, created_at, wrapped) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING")
                let read = try db.makeStatement(sql: "SELECT subject_hash, created_at, wrapped FROM subject_keys WHERE id = ?")
                for key in keys {
                    try insert.execute(arguments: [key.id, key.subjectHash, key.createdAt, key.wrapped])
                    guard let row = try Row.fetchOne(read, arguments: [key.id]), row.sealedBytes(at: 0) == key.subjectHash,
                        row.sealedBytes(at: 2) == key.wrapped
                    else {
                        throw self.copyFailure("it holds subject key \(key.id), or its subject, with other bytes than the source; copy into an empty subject-key store")
                    }
                }
                return .commit
            }
        }
    }

    package func receive(forgotten: [ForgottenSubjectKeyRow], nextID: Int64) async throws(ChatLogError) {
        _ = try run { db in
            var deleted = 0
            try db.inTransaction(.immediate) {
                for key in forgotten {
                    try db.execute(sql: "DELETE FROM subject_keys WHERE id = ?", arguments: [key.id])
                    deleted += db.changesCount
                    try db.execute(
                        sql: "INSERT INTO forgotten (id, forgotten_at) VALUES (?, ?) ON CONFLICT (id) DO NOTHING", arguments: [key.id, key.forgottenAt])
                }
                try db.execute(
                    sql: "UPDATE meta SET value = ? WHERE name = 'next_id' AND CAST(value AS INTEGER) < ?", arguments: [nextID, nextID])
                return .commit
            }
            // As `forget`: no trace of a deleted key's row in the file (secure_delete zeroes, VACUUM re-packs).
            if deleted > 0 { try db.execute(sql: "VACUUM") }
        }
    }

    package func isSameStore(as other: any SubjectKeyCopying) async throws(ChatLogError) -> Bool {
        guard let other = other as? SubjectKeyFileCopy else { return false }
        if other.path == path { return true }
        var (mine, theirs) = (stat(), stat())
        guard stat(path, &mine) == 0, stat(other.path, &theirs) == 0 else { return false }
        return mine.st_dev == theirs.st_dev && mine.st_ino == theirs.st_ino
    }

    package func closeCopy() async {
        if let queue = queue.withLock({ held in defer { held = nil }; return held }) { try? queue.close() }
    }
}
