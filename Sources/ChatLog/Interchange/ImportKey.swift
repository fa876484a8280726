import Foundation
import GRDB

/// The key behind import bookkeeping: `imports.source_hash = BLAKE2b-128(key: import key,
/// msg: lp("chatlog/v1/import") ‖ lp(format) ‖ lp(source id))`. It is wrapped by the master key
/// in `chatlog_meta` (name `import_key`, context keys/wrapped/"import:0") and never rotated:
/// rotating it would make every earlier import look new.
enum ImportKey {
    static let metaName = "import_key"
    static let tag = "chatlog/v1/import"
    static let context = FieldContext(table: "keys", column: "wrapped", rowID: "import:0")

    static func load(master: MasterKey, db: Database) throws -> SecureBytes? {
        guard let wrapped = try Data.fetchOne(db, sql: "SELECT value FROM chatlog_meta WHERE name = ?", arguments: [metaName])
        else { return nil }
        return try unwrap(wrapped, master: master)
    }

    /// Inside a write transaction: the key, created on first use.
    static func loadOrCreate(master: MasterKey, db: Database) throws -> SecureBytes {
        if let key = try load(master: master, db: db) { return key }
        let key = SecureBytes.random(count: 32)
        try ChatLogStore.setMeta(db, metaName, wrap(key, master: master))
        return key
    }

    static func wrap(_ key: SecureBytes, master: MasterKey) -> Data {
        Data(key.withUnsafeBytes { SealedValue.seal($0, keyID: .master, key: master.storage, context: context) })
    }

    static func unwrap(_ wrapped: Data, master: MasterKey) throws(ChatLogError) -> SecureBytes {
        let opened = wrapped.withUnsafeBytes { bytes in
            Result { () throws(SealedValue.Failure) in try SealedValue.open(bytes, key: master.storage, context: context) }
        }
        switch opened {
        case .success(var plain):
            defer { plain.withUnsafeMutableBytes { Sodium.memzero($0) } }
            guard plain.count == 32 else {
                throw .integrity(IntegrityFailure(table: "chatlog_meta", column: "value", rowID: metaName, reason: .truncated(length: plain.count)))
            }
            return plain.withUnsafeBytes { SecureBytes(copying: $0) }
        case .failure(let failure):
            throw .integrity(IntegrityFailure(table: "chatlog_meta", column: "value", rowID: metaName, reason: failure.integrityReason))
        }
    }

    static func sourceHash(key: SecureBytes, format: String, sourceID: String) -> Data {
        let message = KeyDerivation.lengthPrefixed([tag, format, sourceID])
        var output = Data(count: 16)
        key.withUnsafeBytes { keyBytes in
            message.withUnsafeBytes { input in output.withUnsafeMutableBytes { Sodium.keyedHash(key: keyBytes, message: input, into: $0) } }
        }
        return output
    }
}
