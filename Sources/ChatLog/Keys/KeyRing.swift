import Foundation
import GRDB
import Synchronization

/// The unwrapped data and index keys of one store, in libsodium memory. Loaded at open; reloaded
/// when a sealed value names a key this process has not seen (another process rotated), so a
/// reader learns a new key before it has to open a row sealed under it.
final class KeyRing: Sendable {
    struct Loaded: Sendable {
        var activeDataKey: (id: KeyID, key: DataKey)
        var activeIndexKey: (id: KeyID, key: IndexKey)
        var dataKeys: [KeyID: DataKey]
        var indexKeys: [KeyID: IndexKey]
        var retired: Set<KeyID>
        /// One blinder per live index key (search terms), built once per load.
        var blinders: [KeyID: TokenBlinder]
        var activeBlinder: TokenBlinder { blinders[activeIndexKey.id]! }

        /// The subject's blind-index token under each live index key (a listing or search by
        /// subject stays exact while the index key rotates).
        func subjectTokens(_ subject: String) -> [Data] {
            indexKeys.values.map { SubjectIndex.token(for: subject, key: $0) }
        }

        /// Whether these keys were read before `other`: key ids only grow, the active key of each
        /// kind is the newest, and a retired key never comes back.
        func isOlder(than other: Loaded) -> Bool {
            activeDataKey.id.rawValue < other.activeDataKey.id.rawValue || activeIndexKey.id.rawValue < other.activeIndexKey.id.rawValue
                || !other.retired.isSubset(of: retired)
        }
    }

    /// Where a master key came from, for error messages: its origin, and whether it was derived
    /// from a passphrase (then no fingerprint of it is ever shown).
    struct Origin: Sendable {
        let description: String
        let isPassphrase: Bool

        init(_ source: MasterKeySource) {
            description = source.origin
            if case .passphrase = source.material { isPassphrase = true } else { isPassphrase = false }
        }

        /// The error for a master key whose check value is not the stored one.
        func mismatch(expected: KeyFingerprint, given: MasterKey) -> ChatLogError {
            isPassphrase
                ? .wrongPassphrase(expected: expected, source: description)
                : .wrongKey(expected: expected, given: given.fingerprint, source: description)
        }
    }

    private let masterKey: Mutex<(key: MasterKey, origin: Origin)>
    private let state: Mutex<Loaded>

    init(master: MasterKey, origin: Origin, db: Database) throws(ChatLogError) {
        masterKey = Mutex((master, origin))
        state = Mutex(try Self.load(master: master, db: db))
    }

    /// From key rows read through the storage seam. Such a store was created with authenticated
    /// key rows (a backend other than SQLite has no earlier schema), so every row's MAC is checked.
    init(master: MasterKey, origin: Origin, rows: [StoredKeyRow]) throws(ChatLogError) {
        masterKey = Mutex((master, origin))
        state = Mutex(try Self.load(master: master, rows: rows.map(KeyRowAuthentication.KeyRow.init), authenticated: true))
    }

    /// Re-reads the key rows given through the storage seam (the caller checked the master key).
    func reload(rows: [StoredKeyRow]) throws(ChatLogError) {
        install(try Self.load(master: master, rows: rows.map(KeyRowAuthentication.KeyRow.init), authenticated: true))
    }

    /// Makes `loaded` this handle's keys unless it is older than the keys the handle holds: a
    /// reader whose snapshot began before another thread's rotation committed must not take the
    /// rotation's new key away (a concurrent index-key rotation then found nothing to re-blind
    /// and stopped having moved no row).
    private func install(_ loaded: Loaded) {
        state.withLock { current in
            if !loaded.isOlder(than: current) { current = loaded }
        }
    }

    var master: MasterKey { masterKey.withLock { $0.key } }
    var origin: Origin { masterKey.withLock { $0.origin } }
    var current: Loaded { state.withLock { $0 } }

    /// Inside a write transaction: throws unless the stored check value still names this
    /// process's master key. Every write that wraps key material, or seals under keys unwrapped
    /// with the master key, runs it, so a `key rewrap` committed by another process meanwhile
    /// makes the write fail (wrong key, exit 77) instead of wrapping a key under the old master.
    func checkMaster(_ db: Database) throws {
        let (master, origin) = masterKey.withLock { ($0.key, $0.origin) }
        let stored = try Data.fetchOne(db.cachedStatement(sql: "SELECT value FROM chatlog_meta WHERE name = 'master_check'"))
        guard let stored, Self.matches(stored, master) else {
            throw origin.mismatch(expected: try KeyRowAuthentication.expectedFingerprint(db), given: master)
        }
    }

    /// Whether `stored` is this key's check value: v2 (key rows authenticated) or, for a store
    /// not yet converted, v1.
    static func matches(_ stored: Data, _ master: MasterKey) -> Bool {
        KeyRowAuthentication.equal(stored, master.checkValueV2) || KeyRowAuthentication.equal(stored, master.checkValue)
    }

    /// Re-reads the keys table and returns the keys of `db`'s snapshot, for use in that
    /// transaction; the handle's own keys only move forward (`install`). If the master key was
    /// changed by another process (`key rewrap`), this process's master key no longer matches
    /// and it must be reopened with the new one.
    @discardableResult
    func reload(_ db: Database) throws(ChatLogError) -> Loaded {
        let master = self.master
        do {
            try checkMaster(db)
        } catch {
            throw ChatLogError.wrap(error)
        }
        let loaded = try Self.load(master: master, db: db)
        install(loaded)
        return loaded
    }

    /// The keys to open a value sealed under data key `id`: the handle's, or — when it does not know
    /// that key and a transaction is at hand — `db`'s snapshot's (another process may have rotated).
    func keys(opening id: KeyID, _ db: Database?) throws(ChatLogError) -> Loaded {
        let keys = current
        guard keys.dataKeys[id] == nil, let db else { return keys }
        return try reload(db)
    }

    /// After a rewrap committed by this process.
    func replaceMaster(_ master: MasterKey, origin: Origin) {
        masterKey.withLock { $0 = (master, origin) }
    }

    /// The context a wrapped key is bound to: the keys table, its `wrapped` column, and
    /// `"<kind>:<id>"` as row id (key ids are never reused).
    static func wrappingContext(kind: KeyStatus.Entry.Kind, id: KeyID) -> FieldContext {
        FieldContext(table: "keys", column: "wrapped", rowID: "\(kind.rawValue):\(id.rawValue)")
    }

    static func wrap(_ material: SecureBytes, kind: KeyStatus.Entry.Kind, id: KeyID, master: MasterKey) -> Data {
        Data(material.withUnsafeBytes { bytes in
            SealedValue.seal(bytes, keyID: .master, key: master.storage, context: wrappingContext(kind: kind, id: id))
        })
    }

    static func unwrap(_ wrapped: Data, kind: KeyStatus.Entry.Kind, id: KeyID, master: MasterKey) throws(ChatLogError)
        -> SecureBytes
    {
        let context = wrappingContext(kind: kind, id: id)
        let failure = { (reason: IntegrityFailure.Reason) in
            ChatLogError.integrity(IntegrityFailure(table: "keys", column: "wrapped", rowID: "\(kind.rawValue):\(id.rawValue)", reason: reason))
        }
        do {
            guard try SealedValue.keyID(of: wrapped) == .master else { throw failure(.unknownKey(try SealedValue.keyID(of: wrapped))) }
            var plain = try wrapped.withUnsafeBytes { (bytes) throws(SealedValue.Failure) in
                try SealedValue.open(bytes, key: master.storage, context: context)
            }
            defer { plain.withUnsafeMutableBytes { Sodium.memzero($0) } }
            guard plain.count == 32 else { throw failure(.truncated(length: plain.count)) }
            return plain.withUnsafeBytes { SecureBytes(copying: $0) }
        } catch let error as SealedValue.Failure {
            throw failure(error.integrityReason)
        } catch let error as ChatLogError {
            throw error
        } catch {
            throw failure(.authenticationFailed)
        }
    }

    /// Inserts a new active key of `kind`, demoting the previous active one to decrypt-only.
    /// Runs inside the caller's IMMEDIATE transaction.
    @discardableResult
    static func addActiveKey(kind: KeyStatus.Entry.Kind, master: MasterKey, db: Database, now: Date = Date())
        throws -> KeyID
    {
        try verifyRows(master: master, db: db)
        let maxID = try Int64.fetchOne(db, sql: "SELECT max(id) FROM keys") ?? 0
        let sequence = try Int64.fetchOne(db, sql: "SELECT seq FROM sqlite_sequence WHERE name = 'keys'") ?? 0
        let next = max(maxID, sequence) + 1
        guard let raw = UInt32(exactly: next) else {
            throw ChatLogError.integrity(IntegrityFailure(table: "keys", column: "id", rowID: String(next - 1), reason: .invalidKeyID(next - 1)))
        }
        let id = KeyID(rawValue: raw)
        let material = SecureBytes.random(count: 32)
        let demoted = try Int64.fetchAll(db, sql: "SELECT id FROM keys WHERE kind = ? AND state = 'active'", arguments: [kind.rawValue])
        try db.execute(
            sql: "UPDATE keys SET state = 'decrypt-only' WHERE kind = ? AND state = 'active'", arguments: [kind.rawValue])
        try db.execute(
            sql: "INSERT INTO keys (id, kind, state, created_at, wrapped) VALUES (?, ?, 'active', ?, ?)",
            arguments: [Int64(id.rawValue), kind.rawValue, now.unixMilliseconds, wrap(material, kind: kind, id: id, master: master)])
        try KeyRowAuthentication.seal(demoted + [Int64(id.rawValue)], master: master, db: db)
        return id
    }

    /// Inside a write transaction that changes key rows: the rows as they are now are authentic
    /// (so the change does not re-MAC a row someone altered since this process loaded them).
    static func verifyRows(master: MasterKey, db: Database) throws {
        guard try KeyRowAuthentication.isAuthenticated(db, master: master) else { return }
        let rows = try Row.fetchAll(db, sql: KeyRowAuthentication.selectRows).map(KeyRowAuthentication.KeyRow.init)
        try KeyRowAuthentication.verify(rows, master: master)
    }

    private static func load(master: MasterKey, db: Database) throws(ChatLogError) -> Loaded {
        let rows: [KeyRowAuthentication.KeyRow]
        let authenticated: Bool
        do {
            rows = try Row.fetchAll(db, sql: KeyRowAuthentication.selectRows + " ORDER BY id").map(KeyRowAuthentication.KeyRow.init)
            authenticated = try KeyRowAuthentication.isAuthenticated(db, master: master)
        } catch {
            throw ChatLogError.wrap(error)
        }
        return try load(master: master, rows: rows, authenticated: authenticated)
    }

    private static func load(master: MasterKey, rows: [KeyRowAuthentication.KeyRow], authenticated: Bool) throws(ChatLogError) -> Loaded {
        // Ids first: a number no key id can be is reported as such, not as a bad MAC.
        for row in rows { _ = try KeyID.stored(row.id, table: "keys", column: "id", rowID: String(row.id)) }
        if authenticated { try KeyRowAuthentication.verify(rows, master: master) }
        var dataKeys: [KeyID: DataKey] = [:]
        var indexKeys: [KeyID: IndexKey] = [:]
        var retired: Set<KeyID> = []
        var activeData: KeyID?
        var activeIndex: KeyID?
        for row in rows {
            let id = try KeyID.stored(row.id, table: "keys", column: "id", rowID: String(row.id))
            let state = row.state
            guard let kind = KeyStatus.Entry.Kind(rawValue: row.kind) else { continue }
            if state == "retired" {
                retired.insert(id)
                continue
            }
            guard let wrapped = row.wrapped else {
                throw .integrity(IntegrityFailure(table: "keys", column: "wrapped", rowID: "\(kind.rawValue):\(id)", reason: .truncated(length: 0)))
            }
            let material = try unwrap(wrapped, kind: kind, id: id, master: master)
            switch kind {
            case .data:
                dataKeys[id] = DataKey(storage: material)
                if state == "active" { activeData = id }
            case .index:
                indexKeys[id] = IndexKey(storage: material)
                if state == "active" { activeIndex = id }
            }
        }
        guard let activeData, let activeIndex else {
            throw .notAChatLogStore(path: "", reason: "it has no active data or index key (was `chatlog init` interrupted? run it again)")
        }
        return Loaded(
            activeDataKey: (activeData, dataKeys[activeData]!), activeIndexKey: (activeIndex, indexKeys[activeIndex]!),
            dataKeys: dataKeys, indexKeys: indexKeys, retired: retired,
            blinders: Dictionary(uniqueKeysWithValues: indexKeys.map { ($0.key, TokenBlinder(indexKey: $0.value, keyID: $0.key)) }))
    }
}

extension SealedValue.Failure {
    var integrityReason: IntegrityFailure.Reason {
        switch self {
        case .truncated(let length): .truncated(length: length)
        case .unsupportedVersion(let version): .unsupportedVersion(version)
        case .authenticationFailed: .authenticationFailed
        case .badPadding: .badPadding
        }
    }
}
