import Foundation
import GRDB

extension ChatLogStore {
    /// Master-key rotation: every data and index key is unwrapped with the current master key and
    /// wrapped under the new one, and the check value replaced, in one IMMEDIATE transaction —
    /// cheap (no row is touched) and atomic: interrupted at any instant, exactly one of the two
    /// master keys opens the store. The subject-key file is rewrapped around that transaction
    /// (docs/FORMAT.md §3.2: both wrappings first, the new one made current after the store's
    /// commit). A new passphrase gets a fresh Argon2id salt. Takes the key lock. Returns the new
    /// key's fingerprint.
    @discardableResult
    public func rewrapMasterKey(to newSource: MasterKeySource) throws(ChatLogError) -> KeyFingerprint {
        try rewrapInSQLite(to: newSource)
    }

    /// Async form; also on PostgreSQL (key rows and meta in one transaction, under the advisory lock).
    @discardableResult
    public func rewrapMasterKey(to newSource: MasterKeySource) async throws(ChatLogError) -> KeyFingerprint {
        if let storage { return try await storageRewrap(to: newSource, storage) }
        return try rewrapInSQLite(to: newSource)
    }

    private func rewrapInSQLite(to newSource: MasterKeySource) throws(ChatLogError) -> KeyFingerprint {
        let lock = try keyJobLock()
        defer { withExtendedLifetime(lock) {} }
        let (newMaster, kdf) = try newMasterKey(newSource)
        let oldMaster = keyRing.master
        guard !(newMaster == oldMaster) else { throw .sameMasterKey }
        // Subject keys (their own file): wrapped under the new key beside the old first; made
        // current once the store has committed (docs/FORMAT.md, "Subject-key file").
        try subjectKeys.prepareRewrap(to: newMaster)
        do {
            try rewrapStore(from: oldMaster, to: newMaster, kdf: kdf)
        } catch {
            subjectKeys.abandonRewrap()
            throw error
        }
        keyRing.replaceMaster(newMaster, origin: KeyRing.Origin(newSource))
        try subjectKeys.finishRewrap(old: oldMaster, new: newMaster)
        // The old wrapped keys stay in the WAL until a checkpoint copies the new pages over them.
        try checkpoint()
        return newMaster.fingerprint
    }

    /// The master key a rewrap moves to; for a passphrase, derived under a fresh salt (returned
    /// with its parameters, which the store records).
    func newMasterKey(_ source: MasterKeySource) throws(ChatLogError) -> (MasterKey, PassphraseKDF?) {
        switch source.material {
        case .key(let key):
            return (key, nil)
        case .passphrase(let passphrase):
            if let (name, reason) = options.passphraseKDF.limitsProblem { throw .invalidInput("the passphrase KDF's \(name) \(reason)") }
            let fresh = options.passphraseKDF.withFreshSalt()
            return (try fresh.deriveMasterKey(from: passphrase), fresh)
        }
    }

    func rewrapStore(from oldMaster: MasterKey, to newMaster: MasterKey, kdf: PassphraseKDF?) throws(ChatLogError) {
        try writeImmediate { db in
            // writeImmediate checked that the check value still names our key (no other process
            // rewrapped meanwhile).
            try KeyRing.verifyRows(master: oldMaster, db: db)
            for row in try Row.fetchAll(db, sql: "SELECT id, kind, wrapped FROM keys WHERE state <> 'retired'") {
                guard let kind = KeyStatus.Entry.Kind(rawValue: try row.decode(String.self, forColumn: "kind")) else { continue }
                let stored: Int64 = try row.decode(forColumn: "id")
                let id = try KeyID.stored(stored, table: "keys", column: "id", rowID: String(stored))
                let material = try KeyRing.unwrap(row.sealedBytes("wrapped") ?? Data(), kind: kind, id: id, master: oldMaster)
                try db.execute(
                    sql: "UPDATE keys SET wrapped = ? WHERE id = ?",
                    arguments: [KeyRing.wrap(material, kind: kind, id: id, master: newMaster), Int64(id.rawValue)])
            }
            if let importKey = try ImportKey.load(master: oldMaster, db: db) {
                try Self.setMeta(db, ImportKey.metaName, ImportKey.wrap(importKey, master: newMaster))
            }
            try KeyRowAuthentication.sealAll(master: newMaster, db: db)
            try KeyRowAuthentication.storeCheckValue(newMaster, db: db)
            if let kdf {
                try Self.setMeta(db, "key_kind", "passphrase")
                try Self.setMeta(db, "kdf_algorithm", "argon2id13")
                try Self.setMeta(db, "kdf_salt", Data(kdf.salt))
                try Self.setMeta(db, "kdf_opslimit", Int64(kdf.opsLimit))
                try Self.setMeta(db, "kdf_memlimit", Int64(kdf.memLimit))
            } else {
                try Self.setMeta(db, "key_kind", "key")
                try db.execute(sql: "DELETE FROM chatlog_meta WHERE name LIKE 'kdf_%'")
            }
        }
    }

    /// Destroys the material of a data or index key that no row uses any more (the wrapped key
    /// is overwritten; `secure_delete` zeroes the old bytes and the WAL is checkpointed and
    /// truncated). The key stays listed as retired. Refuses the active key and keys in use.
    @discardableResult
    public func retireKey(_ id: KeyID) throws(ChatLogError) -> KeyStatus.Entry {
        try retireInSQLite(id)
    }

    /// Async form; also on PostgreSQL.
    @discardableResult
    public func retireKey(_ id: KeyID) async throws(ChatLogError) -> KeyStatus.Entry {
        guard let storage else { return try retireInSQLite(id) }
        _ = try await storageRetire([id], storage)
        guard let entry = try await keyStatus().keys.first(where: { $0.id == id }) else { throw .keyNotFound(id) }
        return entry
    }

    private func retireInSQLite(_ id: KeyID) throws(ChatLogError) -> KeyStatus.Entry {
        let lock = try keyJobLock()
        defer { withExtendedLifetime(lock) {} }
        try writeImmediate { db in try self.retire(id, db) }
        _ = try read { db in try self.keyRing.reload(db) }
        try checkpoint()
        guard let entry = try keyStatus().keys.first(where: { $0.id == id }) else { throw .keyNotFound(id) }
        return entry
    }

    /// Retires every decrypt-only key that no row uses and no unmoved proxy token needs. Returns
    /// their ids.
    @discardableResult
    public func retireUnusedKeys() throws(ChatLogError) -> [KeyID] {
        try retireUnusedInSQLite()
    }

    /// Async form; also on PostgreSQL (which has no proxy tokens yet to keep a key for).
    @discardableResult
    public func retireUnusedKeys() async throws(ChatLogError) -> [KeyID] {
        if let storage { return try await storageRetire(nil, storage) }
        return try retireUnusedInSQLite()
    }

    private func retireUnusedInSQLite() throws(ChatLogError) -> [KeyID] {
        let lock = try keyJobLock()
        defer { withExtendedLifetime(lock) {} }
        let retired = try writeImmediate { db -> [KeyID] in
            var retired: [KeyID] = []
            for id in try Int64.fetchAll(db, sql: "SELECT id FROM keys WHERE state = 'decrypt-only' ORDER BY id") {
                let key = try KeyID.stored(id, table: "keys", column: "id", rowID: String(id))
                if try Self.references(key, db) == 0, try Self.proxyTokensChecked(by: key, db).isEmpty {
                    try self.retire(key, db)
                    retired.append(key)
                }
            }
            return retired
        }
        _ = try read { db in try self.keyRing.reload(db) }
        try checkpoint()
        return retired
    }

    private func retire(_ id: KeyID, _ db: Database) throws {
        guard let state = try String.fetchOne(db, sql: "SELECT state FROM keys WHERE id = ?", arguments: [Int64(id.rawValue)]) else {
            throw ChatLogError.keyNotFound(id)
        }
        switch state {
        case "active": throw ChatLogError.keyIsActive(id)
        case "retired": throw ChatLogError.keyAlreadyRetired(id)
        default: break
        }
        let rows = try Self.references(id, db)
        guard rows == 0 else { throw ChatLogError.keyInUse(id, rows: rows) }
        let tokens = try Self.proxyTokensChecked(by: id, db)
        guard tokens.isEmpty else { throw ChatLogError.keyChecksProxyTokens(id, names: tokens) }
        let master = keyRing.master
        try KeyRing.verifyRows(master: master, db: db)
        if try SearchIndex.scrubPending(db),
            try String.fetchOne(db, sql: "SELECT kind FROM keys WHERE id = ?", arguments: [Int64(id.rawValue)]) == "index"
        {
            // Deleted terms (perhaps made under this key) are still in the index's segments.
            throw ChatLogError.keyOperation(
                "the search index still holds deleted terms that may be under key \(id); run `chatlog key rotate --index` to merge them away first")
        }
        // Overwrite the wrapped key in place before clearing it, so no page image keeps it.
        try db.execute(
            sql: "UPDATE keys SET wrapped = zeroblob(length(wrapped)) WHERE id = ?", arguments: [Int64(id.rawValue)])
        try db.execute(
            sql: "UPDATE keys SET state = 'retired', wrapped = NULL, retired_at = ? WHERE id = ?",
            arguments: [Date().unixMilliseconds, Int64(id.rawValue)])
        try KeyRowAuthentication.seal([Int64(id.rawValue)], master: master, db: db)
        // Thread digests under the destroyed key can never match again (threads that went on
        // after the rotation have digests under the newer key).
        try db.execute(sql: "DELETE FROM proxy_threads WHERE index_key_id = ?", arguments: [Int64(id.rawValue)])
    }

    /// Decrypt-only index keys that `retireUnusedKeys` keeps because valid proxy tokens not
    /// presented since the rotation still need them, with those tokens' names.
    /// Async form; also on PostgreSQL.
    public func keysKeptForProxyTokens() async throws(ChatLogError) -> [(key: KeyID, tokens: [String])] {
        guard let storage else { return try keysKeptInSQLite() }
        let names = try await storage.proxyTokenNamesByIndexKey()
        var kept: [(key: KeyID, tokens: [String])] = []
        for row in try await storage.keyRows() where row.kind == "index" && row.state == "decrypt-only" {
            guard let tokens = names[row.id] else { continue }
            kept.append((try KeyID.stored(row.id, table: "keys", column: "id", rowID: String(row.id)), tokens))
        }
        return kept
    }

    public func keysKeptForProxyTokens() throws(ChatLogError) -> [(key: KeyID, tokens: [String])] {
        try keysKeptInSQLite()
    }

    private func keysKeptInSQLite() throws(ChatLogError) -> [(key: KeyID, tokens: [String])] {
        try read { db in
            try Int64.fetchAll(db, sql: "SELECT id FROM keys WHERE state = 'decrypt-only' AND kind = 'index' ORDER BY id").compactMap { id in
                let key = try KeyID.stored(id, table: "keys", column: "id", rowID: String(id))
                let tokens = try Self.proxyTokensChecked(by: key, db)
                return tokens.isEmpty ? nil : (key, tokens)
            }
        }
    }

    /// Names of the valid proxy tokens whose hash is under index key `id` (not presented since
    /// the index key changed: a presented token moves to the active key).
    static func proxyTokensChecked(by id: KeyID, _ db: Database) throws -> [String] {
        try String.fetchAll(
            db, sql: "SELECT name FROM proxy_tokens WHERE index_key_id = ? AND revoked_at IS NULL ORDER BY name", arguments: [Int64(id.rawValue)])
    }

    /// Rows whose sealed values or index entries use key `id`.
    static func references(_ id: KeyID, _ db: Database) throws -> Int {
        try Int.fetchOne(
            db,
            sql: """
                SELECT (SELECT count(*) FROM messages WHERE key_id = ?1) + (SELECT count(*) FROM conversations WHERE key_id = ?1)
                     + (SELECT count(*) FROM messages WHERE index_key_id = ?1) + (SELECT count(*) FROM conversations WHERE subject_key_id = ?1)
                """, arguments: [Int64(id.rawValue)]) ?? 0
    }
}
