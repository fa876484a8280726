import Foundation
import GRDB
import Testing

@testable import ChatLog

/// Checks the Swift sealing code against docs/vectors/sealed-v1.json, which
/// docs/vectors/make_vectors.py computes independently with PyNaCl and hashlib (docs/FORMAT.md).
/// If one of these fails, either the Swift code or the format changed: a changed format needs a
/// new version byte and new vectors, never edited ones.
@Suite("docs/FORMAT.md test vectors")
struct FormatVectorTests {
    // MARK: - Sealed values

    @Test("seal with the vector's nonce produces exactly the stored bytes", arguments: try FormatVectors.load().sealed)
    func sealMatchesStoredBytes(_ vector: FormatVectors.Sealed) throws {
        let key = secureBytes(vector.keyHex)
        let plaintext = try fromHex(vector.plaintextHex)
        let nonce = try fromHex(vector.nonceHex)
        let sealed = plaintext.withUnsafeBytes {
            SealedValue.seal(
                $0, keyID: KeyID(rawValue: vector.keyID), key: key, context: vector.context,
                paddingBlock: vector.paddingBlock, nonce: nonce)
        }
        #expect(toHex(sealed) == vector.sealedHex)
        #expect(sealed.count == SealedValue.overhead + vector.paddedLength)
    }

    @Test("open returns the plaintext and the header names the key", arguments: try FormatVectors.load().sealed)
    func openReturnsPlaintext(_ vector: FormatVectors.Sealed) throws {
        let key = secureBytes(vector.keyHex)
        let sealed = try fromHex(vector.sealedHex)
        #expect(open(sealed, key: key, context: vector.context) == .success(try fromHex(vector.plaintextHex)))
        #expect(String(decoding: try fromHex(vector.plaintextHex), as: UTF8.self) == vector.plaintextUTF8)
        #expect(try SealedValue.keyID(of: sealed) == KeyID(rawValue: vector.keyID))
    }

    @Test("opening in another table, column or row fails authentication", arguments: try FormatVectors.load().sealed)
    func wrongContextFails(_ vector: FormatVectors.Sealed) throws {
        let key = secureBytes(vector.keyHex)
        let sealed = try fromHex(vector.sealedHex)
        let context = vector.context
        let wrongContexts = [
            FieldContext(table: context.table + "x", column: context.column, rowID: context.rowID),
            FieldContext(table: context.table, column: context.column + "x", rowID: context.rowID),
            FieldContext(table: context.table, column: context.column, rowID: context.rowID + "x"),
            FieldContext(table: context.table, column: context.column, rowID: String(context.rowID.dropLast())),
            // Shifting a boundary keeps the concatenation but not the length prefixes.
            FieldContext(
                table: context.table + context.column.prefix(1), column: String(context.column.dropFirst()),
                rowID: context.rowID),
            FieldContext(table: "conversations", column: "title", rowID: context.rowID),
        ].filter { $0 != context }
        for wrong in wrongContexts {
            #expect(open(sealed, key: key, context: wrong) == .failure(.authenticationFailed), "opened as \(wrong)")
        }
    }

    @Test("tampering, another key and an unknown version are refused", arguments: try FormatVectors.load().sealed)
    func tamperingFails(_ vector: FormatVectors.Sealed) throws {
        let key = secureBytes(vector.keyHex)
        let sealed = try fromHex(vector.sealedHex)

        var otherKeyBytes = try fromHex(vector.keyHex)
        otherKeyBytes[0] ^= 0x01
        let otherKey = otherKeyBytes.withUnsafeBytes { SecureBytes(copying: $0) }
        #expect(open(sealed, key: otherKey, context: vector.context) == .failure(.authenticationFailed))

        for index in [5, SealedValue.headerSize, SealedValue.overhead, sealed.count - 1] {  // nonce, MAC, ciphertext
            var tampered = sealed
            tampered[index] ^= 0x80
            #expect(open(tampered, key: key, context: vector.context) == .failure(.authenticationFailed), "byte \(index)")
        }

        var nextVersion = sealed
        nextVersion[0] = 3
        #expect(open(nextVersion, key: key, context: vector.context) == .failure(.unsupportedVersion(3)))

        let truncated = Array(sealed.prefix(SealedValue.overhead))
        #expect(open(truncated, key: key, context: vector.context) == .failure(.truncated(length: SealedValue.overhead)))
    }

    // MARK: - Keys

    @Test("wrapped data and index keys match and unwrap", arguments: try FormatVectors.load().wrappedKeys)
    func wrappedKeys(_ vector: FormatVectors.WrappedKey) throws {
        let master = try MasterKey(storage: secureBytes(vector.masterKeyHex))
        let kind = try #require(KeyStatus.Entry.Kind(rawValue: vector.kind))
        let id = KeyID(rawValue: vector.id)
        let context = KeyRing.wrappingContext(kind: kind, id: id)
        #expect(context == FieldContext(table: vector.table, column: vector.column, rowID: vector.rowID))

        let material = try fromHex(vector.keyMaterialHex)
        let nonce = try fromHex(vector.nonceHex)
        let sealed = material.withUnsafeBytes {
            SealedValue.seal($0, keyID: .master, key: master.storage, context: context, nonce: nonce)
        }
        #expect(toHex(sealed) == vector.sealedHex)
        #expect(try SealedValue.keyID(of: sealed) == .master)

        let unwrapped = try KeyRing.unwrap(Data(sealed), kind: kind, id: id, master: master)
        #expect(unwrapped.withUnsafeBytes { Array($0) } == material)

        // Bound to its key id: the same bytes do not unwrap as another key.
        let otherID = KeyID(rawValue: vector.id + 1)
        #expect(throws: ChatLogError.integrity(
            IntegrityFailure(table: "keys", column: "wrapped", rowID: "\(vector.kind):\(otherID.rawValue)", reason: .authenticationFailed))
        ) {
            _ = try KeyRing.unwrap(Data(sealed), kind: kind, id: otherID, master: master)
        }
    }

    @Test("master-key check value and fingerprint", arguments: try FormatVectors.load().masterCheck)
    func masterCheck(_ vector: FormatVectors.MasterCheck) throws {
        let master = try MasterKey(storage: secureBytes(vector.masterKeyHex))
        #expect(toHex(master.checkValue) == vector.checkValueHex)
        #expect(toHex(master.checkValueV2) == vector.checkValueV2Hex)
        #expect(master.fingerprint.description == vector.fingerprint)
        #expect(KeyFingerprint(checkValue: try fromHex(vector.checkValueHex)).description == vector.fingerprint)
    }

    @Test("key-row MAC", arguments: try FormatVectors.load().keyRows)
    func keyRowMAC(_ vector: FormatVectors.KeyRowVector) throws {
        let master = try MasterKey(storage: secureBytes(vector.masterKeyHex))
        let row = Row([
            "id": vector.id, "kind": vector.kind, "state": vector.state, "created_at": vector.createdAt,
            "retired_at": vector.retiredAt, "wrapped": try vector.wrappedHex.map { Data(try fromHex($0)) }, "mac": nil as Data?,
        ])
        let keyRow = try KeyRowAuthentication.KeyRow(row)
        #expect(toHex(keyRow.mac(master)) == vector.macHex)
    }

    @Test("subject blind index", arguments: try FormatVectors.load().subjectIndex)
    func subjectIndex(_ vector: FormatVectors.Subject) throws {
        let key = IndexKey(storage: secureBytes(vector.indexKeyHex))
        let subject = String(decoding: try fromHex(vector.subjectHex), as: UTF8.self)
        let normalized = String(decoding: try fromHex(vector.normalizedHex), as: UTF8.self)
        #expect(subject == vector.subjectUTF8)
        #expect(toHex(Array(subject.precomposedStringWithCompatibilityMapping.utf8)) == vector.normalizedHex)
        #expect(toHex(Array(SubjectIndex.token(for: subject, key: key))) == vector.tokenHex)
        #expect(toHex(Array(SubjectIndex.token(for: normalized, key: key))) == vector.tokenHex)
    }

    @Test("passphrase KDF (Argon2id13) and the derived key's check value", arguments: try FormatVectors.load().passphraseKDF)
    func passphraseKDF(_ vector: FormatVectors.PassphraseKDFVector) throws {
        #expect(vector.algorithm == "argon2id13")
        let kdf = PassphraseKDF(opsLimit: vector.opslimit, memLimit: vector.memlimit, salt: try fromHex(vector.saltHex))
        let master = try kdf.deriveMasterKey(from: Passphrase(vector.passphraseUTF8))
        #expect(master.withUnsafeBytes { toHex(Array($0)) } == vector.masterKeyHex)
        #expect(toHex(master.checkValue) == vector.checkValueHex)
        #expect(master.fingerprint.description == vector.fingerprint)
    }

    @Test("the vector file covers what FORMAT.md promises")
    func coverage() throws {
        let vectors = try FormatVectors.load()
        #expect(vectors.version == Int(SealedValue.version))
        let plaintexts = try vectors.sealed.map { try fromHex($0.plaintextHex) }
        #expect(plaintexts.contains { $0.isEmpty })
        #expect(plaintexts.contains { $0.count > SealedValue.defaultPaddingBlock })
        #expect(plaintexts.contains { $0.contains { $0 >= 0x80 } })
        #expect(!vectors.wrappedKeys.isEmpty && !vectors.masterCheck.isEmpty)
        #expect(vectors.keyRows.contains { $0.wrappedHex == nil } && vectors.keyRows.contains { $0.wrappedHex != nil })
    }

    // MARK: - Version 2 (a subject's values, docs/vectors/sealed-v2.json)

    @Test("version 2: sealing gives the vector's bytes, opening needs both keys", arguments: try SubjectVectors.load().sealed)
    func subjectVersionVectors(_ vector: SubjectVectors.Sealed) throws {
        let dataKey = secureBytes(vector.dataKeyHex)
        let subjectKey = secureBytes(vector.subjectKeyHex)
        let context = FieldContext(table: vector.table, column: vector.column, rowID: vector.rowID)
        let plaintext = Array(vector.plaintextUTF8.utf8)
        let sealed = plaintext.withUnsafeBytes {
            SealedValue.seal(
                $0, keyID: KeyID(rawValue: vector.dataKeyID), key: dataKey, context: context, paddingBlock: vector.paddingBlock,
                nonce: try! fromHex(vector.nonceHex), subject: (KeyID(rawValue: vector.subjectKeyID), subjectKey))
        }
        #expect(toHex(sealed) == vector.sealedHex)
        let stored = try fromHex(vector.sealedHex)
        #expect(try SealedValue.keyID(of: Data(stored)) == KeyID(rawValue: vector.dataKeyID))
        #expect(SealedValue.subjectKeyID(of: Data(stored)) == KeyID(rawValue: vector.subjectKeyID))
        let opened = stored.withUnsafeBytes { bytes in
            Result { () throws(SealedValue.Failure) in try SealedValue.open(bytes, key: dataKey, context: context, subjectKey: subjectKey) }
        }
        #expect(opened == .success(plaintext))
        #expect(open(stored, key: dataKey, context: context) == .failure(.authenticationFailed))
        let wrongSubject = stored.withUnsafeBytes { bytes in
            Result { () throws(SealedValue.Failure) in try SealedValue.open(bytes, key: dataKey, context: context, subjectKey: dataKey) }
        }
        #expect(wrongSubject == .failure(.authenticationFailed))
    }

    // MARK: - Helpers

    private func open(_ sealed: [UInt8], key: SecureBytes, context: FieldContext) -> Result<[UInt8], SealedValue.Failure> {
        sealed.withUnsafeBytes { bytes in
            Result { () throws(SealedValue.Failure) in try SealedValue.open(bytes, key: key, context: context) }
        }
    }

    private func secureBytes(_ hexString: String) -> SecureBytes {
        try! fromHex(hexString).withUnsafeBytes { SecureBytes(copying: $0) }
    }
}

/// docs/vectors/sealed-v1.json.
struct FormatVectors: Decodable, Sendable {
    let version: Int
    let sealed: [Sealed]
    let wrappedKeys: [WrappedKey]
    let masterCheck: [MasterCheck]
    let keyRows: [KeyRowVector]
    let subjectIndex: [Subject]
    let passphraseKDF: [PassphraseKDFVector]

    enum CodingKeys: String, CodingKey {
        case version, sealed
        case wrappedKeys = "wrapped_keys"
        case masterCheck = "master_check"
        case keyRows = "key_rows"
        case subjectIndex = "subject_index"
        case passphraseKDF = "passphrase_kdf"
    }

    struct Sealed: Decodable, Sendable, CustomTestStringConvertible {
        let name: String
        let keyHex: String
        let keyID: UInt32
        let table: String
        let column: String
        let rowID: String
        let nonceHex: String
        let paddingBlock: Int
        let plaintextHex: String
        let plaintextUTF8: String
        let paddedLength: Int
        let sealedHex: String

        enum CodingKeys: String, CodingKey {
            case name, table, column
            case keyHex = "key_hex"
            case keyID = "key_id"
            case rowID = "row_id"
            case nonceHex = "nonce_hex"
            case paddingBlock = "padding_block"
            case plaintextHex = "plaintext_hex"
            case plaintextUTF8 = "plaintext_utf8"
            case paddedLength = "padded_length"
            case sealedHex = "sealed_hex"
        }

        var context: FieldContext { FieldContext(table: table, column: column, rowID: rowID) }
        var testDescription: String { name }
    }

    struct WrappedKey: Decodable, Sendable, CustomTestStringConvertible {
        let name: String
        let masterKeyHex: String
        let kind: String
        let id: UInt32
        let table: String
        let column: String
        let rowID: String
        let nonceHex: String
        let keyMaterialHex: String
        let sealedHex: String

        enum CodingKeys: String, CodingKey {
            case name, kind, id, table, column
            case masterKeyHex = "master_key_hex"
            case rowID = "row_id"
            case nonceHex = "nonce_hex"
            case keyMaterialHex = "key_material_hex"
            case sealedHex = "sealed_hex"
        }

        var testDescription: String { name }
    }

    struct MasterCheck: Decodable, Sendable, CustomTestStringConvertible {
        let name: String
        let masterKeyHex: String
        let checkValueHex: String
        let checkValueV2Hex: String
        let fingerprint: String

        enum CodingKeys: String, CodingKey {
            case name, fingerprint
            case masterKeyHex = "master_key_hex"
            case checkValueHex = "check_value_hex"
            case checkValueV2Hex = "check_value_v2_hex"
        }

        var testDescription: String { name }
    }

    struct KeyRowVector: Decodable, Sendable, CustomTestStringConvertible {
        let name: String
        let masterKeyHex: String
        let id: Int64
        let kind: String
        let state: String
        let createdAt: Int64
        let retiredAt: Int64?
        let wrappedHex: String?
        let macHex: String

        enum CodingKeys: String, CodingKey {
            case name, id, kind, state
            case masterKeyHex = "master_key_hex"
            case createdAt = "created_at"
            case retiredAt = "retired_at"
            case wrappedHex = "wrapped_hex"
            case macHex = "mac_hex"
        }

        var testDescription: String { name }
    }

    struct Subject: Decodable, Sendable, CustomTestStringConvertible {
        let name: String
        let indexKeyHex: String
        let subjectUTF8: String
        let subjectHex: String
        let normalizedHex: String
        let tokenHex: String

        enum CodingKeys: String, CodingKey {
            case name
            case indexKeyHex = "index_key_hex"
            case subjectUTF8 = "subject_utf8"
            case subjectHex = "subject_hex"
            case normalizedHex = "normalized_hex"
            case tokenHex = "token_hex"
        }

        var testDescription: String { name }
    }

    struct PassphraseKDFVector: Decodable, Sendable, CustomTestStringConvertible {
        let name: String
        let passphraseUTF8: String
        let algorithm: String
        let saltHex: String
        let opslimit: UInt64
        let memlimit: Int
        let masterKeyHex: String
        let checkValueHex: String
        let fingerprint: String

        enum CodingKeys: String, CodingKey {
            case name, algorithm, opslimit, memlimit, fingerprint
            case passphraseUTF8 = "passphrase_utf8"
            case saltHex = "salt_hex"
            case masterKeyHex = "master_key_hex"
            case checkValueHex = "check_value_hex"
        }

        var testDescription: String { name }
    }

    /// The file lives at docs/vectors/sealed-v1.json in the package root, two levels above this
    /// file's directory (Tests/ChatLogTests).
    static let url = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent()  // Tests/ChatLogTests
        .deletingLastPathComponent()  // Tests
        .deletingLastPathComponent()  // package root
        .appendingPathComponent("docs/vectors/sealed-v1.json")

    static func load() throws -> FormatVectors {
        try JSONDecoder().decode(FormatVectors.self, from: Data(contentsOf: url))
    }
}

/// docs/vectors/sealed-v2.json (docs/vectors/make_vectors_v2.py, PyNaCl and hashlib).
struct SubjectVectors: Decodable, Sendable {
    let version: Int
    let sealed: [Sealed]

    struct Sealed: Decodable, Sendable, CustomTestStringConvertible {
        let name: String
        let dataKeyHex: String
        let dataKeyID: UInt32
        let subjectKeyHex: String
        let subjectKeyID: UInt32
        let table: String
        let column: String
        let rowID: String
        let nonceHex: String
        let paddingBlock: Int
        let plaintextUTF8: String
        let sealedHex: String

        enum CodingKeys: String, CodingKey {
            case name, table, column
            case dataKeyHex = "data_key_hex"
            case dataKeyID = "data_key_id"
            case subjectKeyHex = "subject_key_hex"
            case subjectKeyID = "subject_key_id"
            case rowID = "row_id"
            case nonceHex = "nonce_hex"
            case paddingBlock = "padding_block"
            case plaintextUTF8 = "plaintext_utf8"
            case sealedHex = "sealed_hex"
        }

        var testDescription: String { name }
    }

    static func load() throws -> SubjectVectors {
        let url = FormatVectors.url.deletingLastPathComponent().appendingPathComponent("sealed-v2.json")
        return try JSONDecoder().decode(SubjectVectors.self, from: Data(contentsOf: url))
    }
}

private struct InvalidHex: Error, CustomStringConvertible {
    let text: String
    var description: String { "invalid hex: \(text)" }
}

private func fromHex(_ text: String) throws -> [UInt8] {
    let digits = Array(text.utf8)
    guard digits.count.isMultiple(of: 2) else { throw InvalidHex(text: text) }
    func value(_ digit: UInt8) throws -> UInt8 {
        switch digit {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): digit - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): digit - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): digit - UInt8(ascii: "A") + 10
        default: throw InvalidHex(text: text)
        }
    }
    return try stride(from: 0, to: digits.count, by: 2).map { try value(digits[$0]) << 4 | value(digits[$0 + 1]) }
}

private func toHex(_ bytes: some Sequence<UInt8>) -> String {
    let digits = Array("0123456789abcdef")
    return String(bytes.flatMap { [digits[Int($0 >> 4)], digits[Int($0 & 0x0F)]] })
}
