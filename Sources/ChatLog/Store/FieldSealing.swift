import Foundation
import GRDB

/// Seals the fields of new rows under the active data key. All sealed fields of one row use the
/// same data key, recorded in the row's `key_id` (the rotation checkpoint). The rows of a
/// conversation with a subject are also sealed under that subject's key (sealed-value version 2).
struct FieldSealer {
    let keyID: KeyID
    let key: DataKey
    let paddingBlock: Int
    var subject: (id: KeyID, key: SubjectKey)? = nil

    func under(_ subject: (id: KeyID, key: SubjectKey)?) -> FieldSealer {
        var copy = self
        copy.subject = subject
        return copy
    }

    func seal(_ text: String, table: String, column: String, rowID: String) -> Data {
        var text = text
        return text.withUTF8 { seal(UnsafeRawBufferPointer($0), table: table, column: column, rowID: rowID) }
    }

    func seal(_ bytes: UnsafeRawBufferPointer, table: String, column: String, rowID: String) -> Data {
        Data(
            SealedValue.seal(
                bytes, keyID: keyID, key: key.storage,
                context: FieldContext(table: table, column: column, rowID: rowID), paddingBlock: paddingBlock,
                subject: subject.map { ($0.id, $0.key.storage) }))
    }

    func seal(json: JSONValue?, table: String, column: String, rowID: String) throws(ChatLogError) -> Data? {
        guard let json else { return nil }
        let encoded = try json.encoded()
        return encoded.withUnsafeBytes { seal($0, table: table, column: column, rowID: rowID) }
    }
}

extension ChatLogStore {
    func sealer(_ keys: KeyRing.Loaded) -> FieldSealer {
        FieldSealer(keyID: keys.activeDataKey.id, key: keys.activeDataKey.key, paddingBlock: options.paddingBlock)
    }

    /// Opens a sealed value with exactly the key its header names (never trying keys in turn),
    /// learning keys added by other processes on a miss (with `db`; without, the caller has
    /// reloaded the key ring for the rows it read: ``ensureKeys(for:)``).
    func openSealed(_ sealed: Data, _ context: FieldContext, db: Database?) throws(ChatLogError) -> [UInt8] {
        let failure = { (reason: IntegrityFailure.Reason) in
            ChatLogError.integrity(
                IntegrityFailure(table: context.table, column: context.column, rowID: context.rowID, reason: reason))
        }
        let keyID: KeyID
        do { keyID = try SealedValue.keyID(of: sealed) } catch { throw failure(error.integrityReason) }
        let ring = try keyRing.keys(opening: keyID, db)
        guard let key = ring.dataKeys[keyID] else {
            throw failure(ring.retired.contains(keyID) ? .retiredKey(keyID) : .unknownKey(keyID))
        }
        var subjectKey: SubjectKey?
        if let subjectID = SealedValue.subjectKeyID(of: sealed) {
            subjectKey = try self.subjectKey(subjectID, context)
        }
        let opened = sealed.withUnsafeBytes { bytes in
            Result { () throws(SealedValue.Failure) in
                try SealedValue.open(bytes, key: key.storage, context: context, subjectKey: subjectKey?.storage)
            }
        }
        switch opened {
        case .success(let plaintext): return plaintext
        case .failure(let error): throw failure(error.integrityReason)
        }
    }

    /// The subject key a version-2 value names, or the specific error: forgotten (an old backup
    /// restored after `forget`) or unknown (the subject-key file is missing or another store's).
    func subjectKey(_ id: KeyID, _ context: FieldContext) throws(ChatLogError) -> SubjectKey {
        let absence: SubjectKeyAbsence
        if case .storage = backend {
            // Loaded beforehand (async) with the rows read: ``ensureSubjectKeys(for:)``.
            let loaded = try loadedSubjectKey(id)
            if let key = loaded.key { return key }
            absence = loaded.absence
        } else {
            if let key = try subjectKeys.key(id: id) { return key }
            absence = try subjectKeys.absence(of: id)
        }
        let reason: IntegrityFailure.Reason
        switch absence {
        case .forgotten: reason = .forgottenSubjectKey(id)
        case .neverIssued: reason = .authenticationFailed
        case .unknown: reason = .unknownSubjectKey(id)
        }
        throw .integrity(IntegrityFailure(table: context.table, column: context.column, rowID: context.rowID, reason: reason))
    }

    func openText(_ sealed: Data, _ context: FieldContext, db: Database? = nil) throws(ChatLogError) -> String {
        let bytes = try openSealed(sealed, context, db: db)
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw .integrity(IntegrityFailure(table: context.table, column: context.column, rowID: context.rowID, reason: .invalidUTF8))
        }
        return text
    }

    func openJSON(_ sealed: Data?, _ context: FieldContext, db: Database? = nil) throws(ChatLogError) -> JSONValue? {
        guard let sealed else { return nil }
        let bytes = try openSealed(sealed, context, db: db)
        guard let value = JSONValue.decoded(Data(bytes)) else {
            throw .integrity(IntegrityFailure(table: context.table, column: context.column, rowID: context.rowID, reason: .invalidJSON))
        }
        return value
    }
}

extension Row {
    /// The bytes of a sealed column, or nil for NULL. GRDB's typed subscripts trap when a value
    /// has another type, and a file edited behind chatlog's back must fail with an integrity
    /// error instead: text and numbers become their text bytes (as `sqlite3_column_blob` does),
    /// which then fail to open like any other damaged value.
    func sealedBytes(_ column: String) -> Data? {
        Self.bytes(of: self[column])
    }

    func sealedBytes(at index: Int) -> Data? {
        Self.bytes(of: self[index])
    }

    /// A column's value if it is stored as text, else nil (no trap on a value of another type);
    /// for ids, which ``StoredID`` then checks.
    func storedText(_ column: String) -> String? {
        let value: DatabaseValue = self[column]
        if case .string(let text) = value.storage { return text }
        return nil
    }

    func storedText(at index: Int) -> String? {
        let value: DatabaseValue = self[index]
        if case .string(let text) = value.storage { return text }
        return nil
    }

    private static func bytes(of value: DatabaseValue) -> Data? {
        switch value.storage {
        case .null: return nil
        case .blob(let data): return data
        case .string(let text): return Data(text.utf8)
        case .int64(let number): return Data(String(number).utf8)
        case .double(let number): return Data(String(number).utf8)
        }
    }
}

/// Equality blind index for conversation subjects: keyed BLAKE2b-128 under the index key, of the
/// NFKC-normalised subject. Lets `list --subject` use an index without decrypting anything.
enum SubjectIndex {
    static func token(for subject: String, key: IndexKey) -> Data {
        let message = KeyDerivation.lengthPrefixed([KeyDerivation.subjectTag, KeyDerivation.compatibilityNormalized(subject)])
        var output = Data(count: 16)
        key.withUnsafeBytes { keyBytes in
            message.withUnsafeBytes { messageBytes in
                output.withUnsafeMutableBytes { Sodium.keyedHash(key: keyBytes, message: messageBytes, into: $0) }
            }
        }
        return output
    }
}
