import Foundation
import GRDB

/// Authentication of the `keys` table under the master key (docs/FORMAT.md, "Key-row MAC").
///
/// Every key row carries `mac = BLAKE2b-256(key: master key, msg: lp("chatlog/v1/key-row") ‖
/// lp(id) ‖ lp(kind) ‖ lp(state) ‖ lp(created_at) ‖ lp(retired_at or "") ‖ lp(wrapped or ""))`,
/// numbers in decimal. Without the master key nobody can change a key's state (re-activate an old
/// key, un-retire one), its kind, times or wrapped value undetected. The active key of each kind
/// must also be its newest, so an old row restored with its old MAC is refused too.
///
/// A store whose key rows are authenticated stores the v2 master-key check value; a store from an
/// earlier schema still has the v1 one and is converted at its first keyed open.
enum KeyRowAuthentication {
    static let rowTag = "chatlog/v1/key-row"

    struct KeyRow {
        let id: Int64
        let kind: String
        let state: String
        let createdAt: Int64
        let retiredAt: Int64?
        let wrapped: Data?
        let mac: Data?

        init(_ row: Row) throws {
            id = try row.decode(forColumn: "id")
            kind = try row.decode(forColumn: "kind")
            state = try row.decode(forColumn: "state")
            createdAt = try row.decode(forColumn: "created_at")
            retiredAt = try row.decode(forColumn: "retired_at")
            wrapped = row.sealedBytes("wrapped")
            mac = row.sealedBytes("mac")
        }

        /// A row read through the storage seam.
        init(_ row: StoredKeyRow) {
            id = row.id
            kind = row.kind
            state = row.state
            createdAt = row.createdAt
            retiredAt = row.retiredAt
            wrapped = row.wrapped
            mac = row.mac
        }

        var place: String { "\(kind):\(id)" }

        /// The MAC's message: length-prefixed parts, the wrapped bytes as the last part.
        var message: [UInt8] {
            KeyDerivation.lengthPrefixed([rowTag, String(id), kind, state, String(createdAt), retiredAt.map(String.init) ?? ""])
                + KeyDerivation.lengthPrefixed(bytes: [UInt8](wrapped ?? Data()))
        }

        func mac(_ master: MasterKey) -> Data {
            var output = Data(count: 32)
            let message = self.message
            master.withUnsafeBytes { key in
                message.withUnsafeBytes { input in output.withUnsafeMutableBytes { Sodium.keyedHash(key: key, message: input, into: $0) } }
            }
            return output
        }
    }

    static let selectRows = "SELECT id, kind, state, created_at, retired_at, wrapped, mac FROM keys"

    /// Whether the stored check value marks the store's key rows as authenticated (v2).
    static func isAuthenticated(_ db: Database, master: MasterKey) throws -> Bool {
        guard let stored = try Data.fetchOne(db.cachedStatement(sql: "SELECT value FROM chatlog_meta WHERE name = 'master_check'"))
        else { return false }
        return Self.equal(stored, master.checkValueV2)
    }

    /// Writes the MAC of the key rows `ids` (after the caller changed them).
    static func seal(_ ids: [Int64], master: MasterKey, db: Database) throws {
        for id in ids {
            guard let row = try Row.fetchOne(db, sql: selectRows + " WHERE id = ?", arguments: [id]) else { continue }
            try db.execute(sql: "UPDATE keys SET mac = ? WHERE id = ?", arguments: [try KeyRow(row).mac(master), id])
        }
    }

    /// Writes the MAC of every key row.
    static func sealAll(master: MasterKey, db: Database) throws {
        try seal(try Int64.fetchAll(db, sql: "SELECT id FROM keys"), master: master, db: db)
    }

    /// Checks every key row's MAC and that the active key of each kind is its newest. Throws an
    /// integrity failure naming the row.
    static func verify(_ rows: [KeyRow], master: MasterKey) throws(ChatLogError) {
        var newest: [String: Int64] = [:]
        for row in rows {
            guard let mac = row.mac, equal(mac, row.mac(master)) else {
                throw .integrity(IntegrityFailure(table: "keys", column: "mac", rowID: row.place, reason: .authenticationFailed))
            }
            newest[row.kind] = max(newest[row.kind] ?? row.id, row.id)
        }
        for row in rows where row.state == "active" && newest[row.kind] != row.id {
            throw .integrity(
                IntegrityFailure(
                    table: "keys", column: "state", rowID: row.place,
                    reason: .invalidValue("is active, but key \(newest[row.kind] ?? 0) of the same kind is newer (the active key must be the newest)")))
        }
    }

    /// At the first keyed open of a store from an earlier schema (v1 check value): MACs for every
    /// key row and the v2 check value, in one transaction. Trust on first use: the rows are taken
    /// as they are at that moment. Nothing to do for an authenticated store; skipped (the store is
    /// read as before, unauthenticated) when the file cannot be written.
    static func convertIfNeeded(_ pool: DatabasePool, master: MasterKey) throws {
        let needed = try pool.read { db in try !isAuthenticated(db, master: master) }
        guard needed else { return }
        do {
            try pool.writeWithoutTransaction { db in
                try db.inTransaction(.immediate) {
                    // Another process may have converted meanwhile.
                    if try isAuthenticated(db, master: master) { return .commit }
                    let stored = try Data.fetchOne(db, sql: "SELECT value FROM chatlog_meta WHERE name = 'master_check'")
                    guard let stored, equal(stored, master.checkValue) else { return .rollback }
                    try sealAll(master: master, db: db)
                    try storeCheckValue(master, db: db)
                    return .commit
                }
            }
        } catch let error as DatabaseError where error.resultCode == .SQLITE_READONLY {
            return
        }
    }

    /// The v2 check value and the fingerprint shown for this store's key.
    static func storeCheckValue(_ master: MasterKey, db: Database) throws {
        try ChatLogStore.setMeta(db, "master_check", Data(master.checkValueV2))
        try ChatLogStore.setMeta(db, "master_fingerprint", Data(master.checkValue.prefix(8)))
    }

    /// The fingerprint of the key the store expects: from `master_fingerprint` (v2 stores), else
    /// the first bytes of the v1 check value.
    static func expectedFingerprint(_ db: Database) throws -> KeyFingerprint {
        if let stored = try Data.fetchOne(db, sql: "SELECT value FROM chatlog_meta WHERE name = 'master_fingerprint'"), stored.count == 8 {
            return KeyFingerprint(checkValue: [UInt8](stored))
        }
        let check = try Data.fetchOne(db, sql: "SELECT value FROM chatlog_meta WHERE name = 'master_check'") ?? Data()
        return KeyFingerprint(checkValue: [UInt8](check))
    }

    static func equal(_ a: Data, _ b: some ContiguousBytes) -> Bool {
        a.withUnsafeBytes { x in b.withUnsafeBytes { y in Sodium.constantTimeEqual(x, y) } }
    }
}
