import Foundation
import GRDB
import Synchronization

/// A subject key: together with a data key, it seals every field of one end user's
/// conversations (sealed-value version 2, docs/FORMAT.md). Destroying it (`forget`) makes those
/// values unreadable everywhere, old backups included.
struct SubjectKey: RedactedSecret, Sendable {
    static let byteCount = 32
    let storage: SecureBytes
}

/// The subject-key file next to a store, `STORE.subject-keys` (docs/FORMAT.md, "Subject-key
/// file"; docs/OPERATIONS.md says how to back it up). A small SQLite file, mode 0600, created at
/// the first conversation with a subject. One row per subject: a keyed hash of the subject (never
/// the subject), its key wrapped under the master key, bound to the store and the row. Ids come
/// from a range of their own (from 0x8000_0000) and are never reused; forgotten ids are listed,
/// so a row of an old backup names its key as "forgotten" rather than "unknown".
///
/// Writes here are their own transactions, always before the store's: a key whose store
/// transaction never committed is an orphan that seals nothing (harmless).
final class SubjectKeyFile: Sendable {
    static let suffix = ".subject-keys"
    static let firstID: UInt32 = 0x8000_0000
    static let schemaVersion = 1
    /// Subject keys kept unwrapped in memory (by subject hash and by id); beyond it the cache is
    /// emptied and refilled from the file on demand. Small on purpose: every key lives in its own
    /// guarded libsodium allocation (`sodium_malloc`: several memory mappings each), and the kernel
    /// allows about 65,000 mappings per process (`vm.max_map_count`); a cache of 65,536 keys ran
    /// out of them at ~20,000 (docs/PERFORMANCE.md, "Logging with per-subject keys").
    static let cacheCapacity = 1_024
    static let hashTag = "chatlog/v1/subject-key-hash"
    static let receiptTag = "chatlog/v1/forget-receipt"

    let path: String
    let storeID: String
    let readOnly: Bool
    let busyTimeout: TimeInterval
    private let keyRing: KeyRing

    private struct Opened {
        let queue: DatabaseQueue
        let hashKey: SecureBytes
    }

    private let opened = Mutex<Opened?>(nil)
    private let cache = Mutex(SubjectKeyCache())

    /// Set for a store on a backend other than SQLite (its location): there is no file next to
    /// it, so no subject key exists and none can be made (docs/ARCHITECTURE.md §10).
    private let backendLocation: String?

    init(storePath: String, storeID: String, readOnly: Bool, busyTimeout: TimeInterval, keyRing: KeyRing, backendLocation: String? = nil) {
        self.backendLocation = backendLocation
        path = storePath + Self.suffix
        self.storeID = storeID
        self.readOnly = readOnly
        self.busyTimeout = busyTimeout
        self.keyRing = keyRing
    }

    var exists: Bool { backendLocation == nil && PrivateFiles.fileExists(path) }

    // MARK: - Keys

    /// The key of `subject`: from the cache, else the file; created (in its own transaction)
    /// when `create` and there is none. nil when there is none and `create` is false.
    func key(forSubject subject: String, create: Bool) throws(ChatLogError) -> (id: KeyID, key: SubjectKey)? {
        guard let file = try open(create: create) else { return nil }
        let hash = Self.subjectHash(subject, hashKey: file.hashKey)
        if let hit = cache.withLock({ $0.bySubject[hash] }) { return hit }
        let master = keyRing.master
        let found: (id: KeyID, key: SubjectKey)?
        do {
            found = try file.queue.inDatabase { db -> (id: KeyID, key: SubjectKey)? in
                if let row = try self.row(hash: hash, db) { return row }
                guard create else { return nil }
                try db.inTransaction(.immediate) {
                    if try self.row(hash: hash, db) != nil { return .commit }  // another process made it
                    let next = try Int64.fetchOne(db, sql: "SELECT value FROM meta WHERE name = 'next_id'") ?? Int64(Self.firstID)
                    guard let raw = UInt32(exactly: next), raw >= Self.firstID else {
                        throw ChatLogError.subjectKeyFile(path: self.path, reason: "it has run out of subject key ids")
                    }
                    let id = KeyID(rawValue: raw)
                    let material = SecureBytes.random(count: SubjectKey.byteCount)
                    try db.execute(
                        sql: "INSERT INTO subject_keys (id, subject_hash, created_at, wrapped) VALUES (?, ?, ?, ?)",
                        arguments: [Int64(raw), hash, Date().unixMilliseconds, self.wrap(material, id: id, hash: hash, master: master)])
                    try db.execute(
                        sql: "INSERT INTO meta (name, value) VALUES ('next_id', ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                        arguments: [next + 1])
                    return .commit
                }
                return try self.row(hash: hash, db)
            }
        } catch {
            throw ChatLogError.wrap(error)
        }
        if let found { cache.withLock { $0.insert(found.id, found.key, hash: hash) } }
        return found
    }

    /// The keys of many subjects at once (the proxy's group commit): one read transaction for those
    /// not cached, then one write transaction creating the missing ones when `create`.
    func keys(forSubjects subjects: Set<String>, create: Bool) throws(ChatLogError) -> [String: (id: KeyID, key: SubjectKey)] {
        guard !subjects.isEmpty, let file = try open(create: create) else { return [:] }
        var found: [String: (id: KeyID, key: SubjectKey)] = [:]
        var missing: [(subject: String, hash: Data)] = []
        cache.withLock { cache in
            for subject in subjects {
                let hash = Self.subjectHash(subject, hashKey: file.hashKey)
                if let hit = cache.bySubject[hash] { found[subject] = hit } else { missing.append((subject, hash)) }
            }
        }
        guard !missing.isEmpty else { return found }
        /// Keys read from the file: into the answer and the cache.
        func remember(_ rows: [(String, Data, (id: KeyID, key: SubjectKey))]) {
            cache.withLock { cache in
                for (subject, hash, row) in rows {
                    found[subject] = row
                    cache.insert(row.id, row.key, hash: hash)
                }
            }
        }
        var loaded: [(String, Data, (id: KeyID, key: SubjectKey))] = []
        do {
            try file.queue.inDatabase { db in
                try db.inTransaction(.deferred) {
                    let rows = try self.rows(hashes: missing.map(\.hash), db)
                    for (subject, hash) in missing { if let row = rows[hash] { loaded.append((subject, hash, row)) } }
                    return .commit
                }
            }
        } catch {
            throw ChatLogError.wrap(error)
        }
        remember(loaded)
        // Subjects without a key yet: made together, in one transaction.
        let new = missing.filter { found[$0.subject] == nil }
        guard create, !new.isEmpty else { return found }
        let master = keyRing.master
        var made: [(String, Data, (id: KeyID, key: SubjectKey))] = []
        do {
            try file.queue.inDatabase { db in
                try db.inTransaction(.immediate) {
                    var next = try Int64.fetchOne(db, sql: "SELECT value FROM meta WHERE name = 'next_id'") ?? Int64(Self.firstID)
                    for (_, hash) in new where try self.row(hash: hash, db) == nil {
                        guard let raw = UInt32(exactly: next), raw >= Self.firstID else {
                            throw ChatLogError.subjectKeyFile(path: self.path, reason: "it has run out of subject key ids")
                        }
                        try db.execute(
                            sql: "INSERT INTO subject_keys (id, subject_hash, created_at, wrapped) VALUES (?, ?, ?, ?)",
                            arguments: [
                                next, hash, Date().unixMilliseconds,
                                self.wrap(SecureBytes.random(count: SubjectKey.byteCount), id: KeyID(rawValue: raw), hash: hash, master: master),
                            ])
                        next += 1
                    }
                    try Self.setMeta(db, "next_id", next)
                    return .commit
                }
                for (subject, hash) in new {
                    if let row = try self.row(hash: hash, db) { made.append((subject, hash, row)) }
                }
            }
        } catch {
            throw ChatLogError.wrap(error)
        }
        remember(made)
        return found
    }

    /// Hashes looked up by one statement (`IN` over this many; a shorter list repeats its first).
    static let lookupBatch = 100
    private static let lookupSQL =
        "SELECT subject_hash, id, wrapped FROM subject_keys WHERE subject_hash IN (" + repeatElement("?", count: lookupBatch).joined(separator: ",") + ")"

    /// The keys of many subject hashes, `lookupBatch` per statement (one statement per look-up
    /// cost more in GRDB and SQLite's per-statement work than the b-tree search itself); up to
    /// `ChatLogStore.fewKeys` hashes, a look-up each (SQLite indexes an `IN` list first).
    private func rows(hashes: [Data], _ db: Database) throws -> [Data: (id: KeyID, key: SubjectKey)] {
        var found: [Data: (id: KeyID, key: SubjectKey)] = [:]
        if hashes.count <= ChatLogStore.fewKeys {
            for hash in hashes { found[hash] = try row(hash: hash, db) }
            return found
        }
        let statement = try db.cachedStatement(sql: Self.lookupSQL)
        for start in stride(from: 0, to: hashes.count, by: Self.lookupBatch) {
            var slice = Array(hashes[start..<min(hashes.count, start + Self.lookupBatch)])
            slice += repeatElement(slice[0], count: Self.lookupBatch - slice.count)
            let cursor = try Row.fetchCursor(statement, arguments: StatementArguments(slice))
            while let row = try cursor.next() {
                guard let hash = row.sealedBytes(at: 0), found[hash] == nil else { continue }
                let stored: Int64 = try row.decode(atIndex: 1)
                let id = try KeyID.stored(stored, table: "subject_keys", column: "id", rowID: String(stored))
                found[hash] = (id, try unwrap(row.sealedBytes(at: 2) ?? Data(), id: id, hash: hash, master: keyRing.master))
            }
        }
        return found
    }

    private func row(hash: Data, _ db: Database) throws -> (id: KeyID, key: SubjectKey)? {
        // Columns by position, not name (one look-up per logged exchange of an uncached subject).
        guard let row = try Row.fetchOne(db.cachedStatement(sql: "SELECT id, wrapped FROM subject_keys WHERE subject_hash = ?"), arguments: [hash])
        else { return nil }
        let stored: Int64 = try row.decode(atIndex: 0)
        let id = try KeyID.stored(stored, table: "subject_keys", column: "id", rowID: String(stored))
        return (id, try unwrap(row.sealedBytes(at: 1) ?? Data(), id: id, hash: hash, master: keyRing.master))
    }

    /// Makes keys for `subjects` that have none, in one transaction, without caching them (for
    /// benchmarks that need a file with many subjects).
    func createKeys(for subjects: [String]) throws(ChatLogError) {
        guard let file = try open(create: true) else { return }
        let master = keyRing.master
        do {
            try file.queue.inDatabase { db in
                try db.inTransaction(.immediate) {
                    var next = try Int64.fetchOne(db, sql: "SELECT value FROM meta WHERE name = 'next_id'") ?? Int64(Self.firstID)
                    let insert = try db.makeStatement(
                        sql: "INSERT INTO subject_keys (id, subject_hash, created_at, wrapped) VALUES (?, ?, ?, ?) ON CONFLICT (subject_hash) DO NOTHING")
                    let now = Date().unixMilliseconds
                    for subject in subjects {
                        let hash = Self.subjectHash(subject, hashKey: file.hashKey)
                        let id = KeyID(rawValue: UInt32(next))
                        try insert.execute(arguments: [next, hash, now, self.wrap(SecureBytes.random(count: SubjectKey.byteCount), id: id, hash: hash, master: master)])
                        if db.changesCount > 0 { next += 1 }
                    }
                    try Self.setMeta(db, "next_id", next)
                    return .commit
                }
            }
        } catch {
            throw ChatLogError.wrap(error)
        }
    }

    /// The key named by a sealed value's header: nil when the file has no such key.
    func key(id: KeyID) throws(ChatLogError) -> SubjectKey? {
        if let hit = cache.withLock({ $0.byID[id] }) { return hit }
        guard let file = try open(create: false) else { return nil }
        let master = keyRing.master
        let key: SubjectKey?
        do {
            key = try file.queue.inDatabase { db -> SubjectKey? in
                guard
                    let row = try Row.fetchOne(
                        db.cachedStatement(sql: "SELECT subject_hash, wrapped FROM subject_keys WHERE id = ?"), arguments: [Int64(id.rawValue)])
                else { return nil }
                let hash = row.sealedBytes("subject_hash") ?? Data()
                return try self.unwrap(row.sealedBytes("wrapped") ?? Data(), id: id, hash: hash, master: master)
            }
        } catch {
            throw ChatLogError.wrap(error)
        }
        if let key { cache.withLock { $0.insert(id, key, hash: nil) } }
        return key
    }

    typealias Absence = SubjectKeyAbsence

    /// Why the file has no key `id`: forgotten (destroyed by `forget`), never issued (outside
    /// the ids this file gave out: the value's header was altered), or unknown (no file, or one
    /// from before the key was made).
    func absence(of id: KeyID) throws(ChatLogError) -> Absence {
        guard let file = try open(create: false) else { return .unknown }
        do {
            return try file.queue.inDatabase { db in
                if try Row.fetchOne(db, sql: "SELECT 1 FROM forgotten WHERE id = ?", arguments: [Int64(id.rawValue)]) != nil { return .forgotten }
                let next = try Int64.fetchOne(db, sql: "SELECT value FROM meta WHERE name = 'next_id'") ?? Int64(Self.firstID)
                return id.rawValue < Self.firstID || Int64(id.rawValue) >= next ? .neverIssued : .unknown
            }
        } catch {
            throw ChatLogError.wrap(error)
        }
    }

    /// How many subject keys exist (`key status`), and how many were forgotten.
    func counts() throws(ChatLogError) -> (live: Int, forgotten: Int) {
        guard let file = try open(create: false) else { return (0, 0) }
        do {
            return try file.queue.inDatabase { db in
                (try Int.fetchOne(db, sql: "SELECT count(*) FROM subject_keys") ?? 0, try Int.fetchOne(db, sql: "SELECT count(*) FROM forgotten") ?? 0)
            }
        } catch {
            throw ChatLogError.wrap(error)
        }
    }

    /// Every forgotten id (for `verify`).
    func forgottenIDs() throws(ChatLogError) -> Set<KeyID> {
        guard let file = try open(create: false) else { return [] }
        do {
            return try file.queue.inDatabase { db in
                Set(try Int64.fetchAll(db, sql: "SELECT id FROM forgotten").compactMap { UInt32(exactly: $0).map(KeyID.init) })
            }
        } catch {
            throw ChatLogError.wrap(error)
        }
    }

    /// Destroys the keys `ids` (one transaction; their rows are zeroed in the file by
    /// `secure_delete`) and lists them as forgotten. Idempotent.
    func destroy(_ ids: [KeyID]) throws(ChatLogError) {
        guard !ids.isEmpty, let file = try open(create: false) else { return }
        do {
            try file.queue.inDatabase { db in
                try db.inTransaction(.immediate) {
                    let now = Date().unixMilliseconds
                    for id in ids {
                        try db.execute(sql: "DELETE FROM subject_keys WHERE id = ?", arguments: [Int64(id.rawValue)])
                        try db.execute(
                            sql: "INSERT INTO forgotten (id, forgotten_at) VALUES (?, ?) ON CONFLICT (id) DO NOTHING",
                            arguments: [Int64(id.rawValue), now])
                    }
                    return .commit
                }
                // Free pages are zeroed already (secure_delete); VACUUM leaves no trace of the
                // rows' old positions in the b-tree either. The rollback journal is deleted at commit.
                try db.execute(sql: "VACUUM")
            }
        } catch {
            throw ChatLogError.wrap(error)
        }
        cache.withLock { $0.evict(ids) }
    }

    /// Forgets the unwrapped keys this process holds for `ids` (another process forgot them).
    func evict(_ ids: [KeyID]) {
        cache.withLock { $0.evict(ids) }
    }

    /// A keyed hash of the subject for a forget receipt: under a key derived from the file's hash
    /// key, so it differs from the key-row hash, from an unkeyed hash, and between stores; only a
    /// holder of the master key (and the key file) can test a name against it.
    func receiptHash(_ subject: String, create: Bool) throws(ChatLogError) -> Data? {
        guard let file = try open(create: create) else { return nil }
        return Self.hash(subject, tag: Self.receiptTag, hashKey: file.hashKey)
    }

    /// A consistent copy of the file (`chatlog backup --subject-keys`), mode 0600.
    func backup(to destination: String) throws(ChatLogError) {
        guard let file = try open(create: false) else {
            throw ChatLogError.subjectKeyFile(path: path, reason: "there is none (no conversation has a subject yet)")
        }
        try PrivateFiles.createEmptyPrivateFile(at: destination, nextToStore: path)
        do {
            try file.queue.inDatabase { db in try db.execute(sql: "VACUUM INTO ?", arguments: [destination]) }
        } catch {
            unlink(destination)
            throw ChatLogError.wrap(error)
        }
    }

    /// Closes the file (a later use opens it again).
    func close() throws(ChatLogError) {
        guard let file = opened.withLock({ file in defer { file = nil }; return file }) else { return }
        do { try file.queue.close() } catch { throw ChatLogError.wrap(error) }
    }

    // MARK: - Master key rewrap (kill-safe across the two files)

    /// Step 1 of a rewrap, before the store's transaction: every wrapped key (and the hash key)
    /// wrapped again under `new` into `*_next`, in one transaction. Until step 3 the file still
    /// opens with the old key.
    func prepareRewrap(to new: MasterKey) throws(ChatLogError) {
        guard let file = try open(create: false) else { return }
        let old = keyRing.master
        do {
            try file.queue.inDatabase { db in
                try db.inTransaction(.immediate) {
                    let rows = try Row.fetchAll(db, sql: "SELECT id, subject_hash, wrapped FROM subject_keys")
                    for row in rows {
                        let stored: Int64 = try row.decode(forColumn: "id")
                        let id = try KeyID.stored(stored, table: "subject_keys", column: "id", rowID: String(stored))
                        let hash = row.sealedBytes("subject_hash") ?? Data()
                        let material = try self.unwrap(row.sealedBytes("wrapped") ?? Data(), id: id, hash: hash, master: old)
                        try db.execute(
                            sql: "UPDATE subject_keys SET wrapped_next = ? WHERE id = ?",
                            arguments: [self.wrap(material.storage, id: id, hash: hash, master: new), stored])
                    }
                    try Self.setMeta(db, "hash_key_next", self.wrapHashKey(file.hashKey, master: new))
                    try Self.setMeta(db, "master_check_next", Data(new.checkValueV2))
                    return .commit
                }
            }
        } catch {
            throw ChatLogError.wrap(error)
        }
    }

    /// Step 3, after the store committed the new master key: the `*_next` values become the
    /// current ones. Also run at open when a rewrap was killed between the two files.
    /// `old` and `new`: the process that ran the rewrap also re-wraps keys another process
    /// created between step 1 and the store's commit (they have no `wrapped_next`).
    func finishRewrap(old: MasterKey, new: MasterKey) throws(ChatLogError) {
        var file = opened.withLock { $0 }
        if file == nil, exists { file = try open(create: false, master: old) }
        guard let file else { return }
        do {
            try file.queue.inDatabase { db in
                try db.inTransaction(.immediate) {
                    for row in try Row.fetchAll(db, sql: "SELECT id, subject_hash, wrapped FROM subject_keys WHERE wrapped_next IS NULL") {
                        let stored: Int64 = try row.decode(forColumn: "id")
                        let id = try KeyID.stored(stored, table: "subject_keys", column: "id", rowID: String(stored))
                        let hash = row.sealedBytes("subject_hash") ?? Data()
                        let material = try self.unwrap(row.sealedBytes("wrapped") ?? Data(), id: id, hash: hash, master: old)
                        try db.execute(
                            sql: "UPDATE subject_keys SET wrapped_next = ? WHERE id = ?",
                            arguments: [self.wrap(material.storage, id: id, hash: hash, master: new), stored])
                    }
                    return .commit
                }
                try Self.finishRewrap(db)
            }
        } catch {
            throw ChatLogError.wrap(error)
        }
    }

    private static func finishRewrap(_ db: Database) throws {
        try db.inTransaction(.immediate) {
            guard let next = try Data.fetchOne(db, sql: "SELECT value FROM meta WHERE name = 'hash_key_next'") else { return .commit }
            try db.execute(sql: "UPDATE subject_keys SET wrapped = wrapped_next, wrapped_next = NULL WHERE wrapped_next IS NOT NULL")
            try setMeta(db, "hash_key", next)
            if let check = try Data.fetchOne(db, sql: "SELECT value FROM meta WHERE name = 'master_check_next'") {
                try setMeta(db, "master_check", check)
            }
            try db.execute(sql: "DELETE FROM meta WHERE name IN ('hash_key_next', 'master_check_next')")
            return .commit
        }
    }

    /// Drops the unfinished step 1 of a rewrap that failed before the store committed.
    func abandonRewrap() {
        guard let file = try? open(create: false) else { return }
        try? file.queue.inDatabase { db in
            try db.inTransaction(.immediate) {
                try db.execute(sql: "UPDATE subject_keys SET wrapped_next = NULL")
                try db.execute(sql: "DELETE FROM meta WHERE name IN ('hash_key_next', 'master_check_next')")
                return .commit
            }
        }
    }

    // MARK: - The file

    static let schema = """
        CREATE TABLE meta (
            name  TEXT PRIMARY KEY NOT NULL,
            value BLOB NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE subject_keys (
            id           INTEGER PRIMARY KEY,
            subject_hash BLOB    NOT NULL UNIQUE,
            created_at   INTEGER NOT NULL,
            wrapped      BLOB    NOT NULL,
            wrapped_next BLOB
        );
        CREATE TABLE forgotten (
            id           INTEGER PRIMARY KEY,
            forgotten_at INTEGER NOT NULL
        );
        """

    private static func setMeta(_ db: Database, _ name: String, _ value: some DatabaseValueConvertible) throws {
        try db.execute(
            sql: "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            arguments: [name, value])
    }

    private func configuration() -> Configuration {
        var configuration = Configuration()
        configuration.readonly = readOnly
        configuration.busyMode = .timeout(busyTimeout)
        configuration.label = "chatlog-subject-keys"
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA trusted_schema = OFF")
            try db.execute(sql: "PRAGMA secure_delete = ON")
            // Lookups are scattered over the whole file (one per subject): map it rather than
            // reading page by page; a larger page cache for the b-tree's upper levels.
            try db.execute(sql: "PRAGMA mmap_size = 1073741824")
            try db.execute(sql: "PRAGMA cache_size = -16384")
        }
        return configuration
    }

    /// The open file and its hash key; creates the file when `create` (and it is missing).
    private func open(create: Bool, master: MasterKey? = nil) throws(ChatLogError) -> Opened? {
        if let file = opened.withLock({ $0 }) { return file }
        if let backendLocation {
            guard !create else { throw .notOnThisBackend(location: backendLocation, what: "per-subject keys") }
            return nil
        }
        if !exists {
            guard create else { return nil }
            if readOnly { throw .invalidInput("the store is open read-only; a conversation with a subject needs \(path)") }
            do { try PrivateFiles.createEmptyPrivateFile(at: path, nextToStore: String(path.dropLast(Self.suffix.count))) } catch {
                if !exists { throw error }  // else another process created it meanwhile
            }
        }
        let master = master ?? keyRing.master
        let file: Opened
        do {
            let queue = try DatabaseQueue(path: path, configuration: configuration())
            if !readOnly { try initialize(queue, master: master) }
            let hashKey = try queue.inDatabase { db -> SecureBytes in
                let tables = try String.fetchSet(db, sql: "SELECT name FROM sqlite_master WHERE type = 'table'")
                guard tables.isSuperset(of: ["meta", "subject_keys", "forgotten"]) else {
                    throw ChatLogError.subjectKeyFile(path: path, reason: "it is not a chatlog subject-key file")
                }
                let version = try Int.fetchOne(db, sql: "PRAGMA user_version") ?? 0
                guard version == Self.schemaVersion else {
                    throw ChatLogError.subjectKeyFile(path: path, reason: "it has format version \(version); this chatlog reads \(Self.schemaVersion)")
                }
                let storeID = try String.fetchOne(db, sql: "SELECT CAST(value AS TEXT) FROM meta WHERE name = 'store_id'")
                guard storeID == self.storeID else {
                    throw ChatLogError.subjectKeyFile(path: path, reason: "it belongs to another store (restore this store's own subject-key file)")
                }
                if !readOnly, try Data.fetchOne(db, sql: "SELECT value FROM meta WHERE name = 'hash_key_next'") != nil,
                    let next = try Data.fetchOne(db, sql: "SELECT value FROM meta WHERE name = 'master_check_next'"),
                    KeyRowAuthentication.equal(next, master.checkValueV2)
                {
                    // A rewrap was killed after the store committed the new master key.
                    try Self.finishRewrap(db)
                }
                guard let check = try Data.fetchOne(db, sql: "SELECT value FROM meta WHERE name = 'master_check'"),
                    KeyRowAuthentication.equal(check, master.checkValueV2)
                else {
                    throw ChatLogError.subjectKeyFile(
                        path: path, reason: "it is not wrapped under this master key (was the store's master key changed without it? restore the subject-key file that matches the store)")
                }
                let wrapped = try Data.fetchOne(db, sql: "SELECT value FROM meta WHERE name = 'hash_key'") ?? Data()
                return try self.unwrapHashKey(wrapped, master: master)
            }
            file = Opened(queue: queue, hashKey: hashKey)
        } catch let error as ChatLogError {
            throw error
        } catch let error as DatabaseError where error.resultCode == .SQLITE_NOTADB {
            throw .subjectKeyFile(path: path, reason: "it is not a SQLite database")
        } catch {
            throw ChatLogError.wrap(error)
        }
        opened.withLock { $0 = $0 ?? file }
        return opened.withLock { $0 }
    }

    private func initialize(_ queue: DatabaseQueue, master: MasterKey) throws {
        try queue.inDatabase { db in
            try db.inTransaction(.immediate) {
                guard try Int.fetchOne(db, sql: "PRAGMA user_version") == 0,
                    try String.fetchSet(db, sql: "SELECT name FROM sqlite_master WHERE type = 'table'").isEmpty
                else { return .commit }
                try db.execute(sql: Self.schema)
                try Self.setMeta(db, "store_id", self.storeID)
                try Self.setMeta(db, "next_id", Int64(Self.firstID))
                try Self.setMeta(db, "master_check", Data(master.checkValueV2))
                try Self.setMeta(db, "hash_key", self.wrapHashKey(SecureBytes.random(count: 32), master: master))
                try db.execute(sql: "PRAGMA user_version = \(Self.schemaVersion)")
                return .commit
            }
        }
    }

    // MARK: - Wrapping and hashing (shared with every subject-key store: SubjectKeyStore.swift)

    private var crypto: SubjectKeyCrypto { SubjectKeyCrypto(storeID: storeID, place: path) }

    /// Lower-case hex.
    static func hex(_ bytes: Data) -> String { SubjectKeyCrypto.hex(bytes) }

    private func wrap(_ material: SecureBytes, id: KeyID, hash: Data, master: MasterKey) -> Data {
        crypto.wrap(material, id: id, hash: hash, master: master)
    }

    private func unwrap(_ wrapped: Data, id: KeyID, hash: Data, master: MasterKey) throws(ChatLogError) -> SubjectKey {
        try crypto.unwrap(wrapped, id: id, hash: hash, master: master)
    }

    private func wrapHashKey(_ material: SecureBytes, master: MasterKey) -> Data { crypto.wrapHashKey(material, master: master) }

    private func unwrapHashKey(_ wrapped: Data, master: MasterKey) throws(ChatLogError) -> SecureBytes {
        try crypto.unwrapHashKey(wrapped, master: master)
    }

    static func subjectHash(_ subject: String, hashKey: SecureBytes) -> Data { SubjectKeyCrypto.subjectHash(subject, hashKey: hashKey) }

    private static func hash(_ subject: String, tag: String, hashKey: SecureBytes) -> Data {
        SubjectKeyCrypto.hash(subject, tag: tag, hashKey: hashKey)
    }
}
