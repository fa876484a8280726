import CSodium
import GRDB

/// A passphrase from which the master key is derived with Argon2id. Held in libsodium memory;
/// never printed.
public struct Passphrase: RedactedSecret, Sendable {
    let storage: SecureBytes
    public static let minimumLength = 8

    public init(_ text: String) throws(ChatLogError) {
        var bytes = Array(text.utf8)
        defer { bytes.withUnsafeMutableBytes { Sodium.memzero($0) } }
        try self.init(bytes: bytes)
    }

    init(bytes: [UInt8]) throws(ChatLogError) {
        guard bytes.count >= Self.minimumLength else {
            throw .passphrase("a passphrase needs at least \(Self.minimumLength) bytes")
        }
        storage = bytes.withUnsafeBytes { SecureBytes(copying: $0) }
    }

    /// Reads a passphrase straight into libsodium memory (a prompt's keystrokes): `fill` writes at
    /// most `buffer.count` bytes into the buffer and returns how many it wrote. No `String` or
    /// array on the Swift heap ever holds the passphrase. It must be valid UTF-8.
    public static func reading(
        maxLength: Int = 4096, _ fill: (UnsafeMutableRawBufferPointer) throws(ChatLogError) -> Int
    ) throws(ChatLogError) -> Passphrase {
        let buffer = SecureBytes(count: maxLength)
        let filled = buffer.withUnsafeMutableBytes { bytes in Result { () throws(ChatLogError) in try fill(bytes) } }
        let length = try filled.get()
        guard (0...maxLength).contains(length), length >= Self.minimumLength else {
            throw .passphrase("too short: a passphrase needs at least \(Self.minimumLength) bytes")
        }
        let valid = buffer.withUnsafeBytes { bytes in
            var iterator = bytes.prefix(length).makeIterator()
            var decoder = UTF8()
            while true {
                switch decoder.decode(&iterator) {
                case .scalarValue: continue
                case .emptyInput: return true
                case .error: return false
                }
            }
        }
        guard valid else { throw .passphrase("the passphrase is not valid UTF-8") }
        return Passphrase(storage: buffer.prefix(length))
    }

    private init(storage: SecureBytes) {
        self.storage = storage
    }

    /// Whether two passphrases are the same bytes (constant time), e.g. a prompt's confirmation.
    public func constantTimeEquals(_ other: Passphrase) -> Bool {
        storage.constantTimeEquals(other.storage)
    }

    /// A passphrase file's content: everything up to the first newline.
    init(fileContents: SecureBytes) throws(ChatLogError) {
        let length = fileContents.withUnsafeBytes { bytes in
            bytes.firstIndex(where: { $0 == 0x0A || $0 == 0x0D }) ?? bytes.count
        }
        guard length >= Self.minimumLength else {
            throw .passphrase("the passphrase file holds fewer than \(Self.minimumLength) bytes before its first newline")
        }
        storage = fileContents.prefix(length)
    }
}

/// Argon2id parameters, stored in the database beside the salt so that the same passphrase
/// derives the same master key later.
public struct PassphraseKDF: Sendable, Equatable {
    public var opsLimit: UInt64
    public var memLimit: Int
    var salt: [UInt8]

    /// libsodium's MODERATE limits (3 passes, 256 MiB): about a second here. The default.
    public static let moderate = PassphraseKDF(
        opsLimit: UInt64(crypto_pwhash_OPSLIMIT_MODERATE), memLimit: Int(crypto_pwhash_MEMLIMIT_MODERATE), salt: [])
    /// libsodium's INTERACTIVE limits (2 passes, 64 MiB).
    public static let interactive = PassphraseKDF(
        opsLimit: UInt64(crypto_pwhash_OPSLIMIT_INTERACTIVE), memLimit: Int(crypto_pwhash_MEMLIMIT_INTERACTIVE), salt: [])

    /// The limits a store may name (docs/SECURITY.md, "Passphrase limits"): no weaker than
    /// libsodium's INTERACTIVE (2 passes, 64 MiB), at most 32 passes and 4 GiB. The limits live in
    /// the file beside the salt, so anyone who can write the file could otherwise lower them (a
    /// cheap derivation is a fast offline guessing oracle) or raise them past what a machine can
    /// run (a hang, or a trap on a negative number). Values outside are refused before deriving.
    public static let acceptedOpsLimits: ClosedRange<UInt64> = UInt64(crypto_pwhash_OPSLIMIT_INTERACTIVE)...32
    public static let acceptedMemLimits: ClosedRange<Int> = Int(crypto_pwhash_MEMLIMIT_INTERACTIVE)...(4 << 30)

    /// Whether these limits are inside the accepted range; the reason when not.
    var limitsProblem: (name: String, reason: String)? {
        if !Self.acceptedOpsLimits.contains(opsLimit) {
            return ("kdf_opslimit", "is \(opsLimit), outside the accepted \(Self.acceptedOpsLimits.lowerBound)…\(Self.acceptedOpsLimits.upperBound) passes")
        }
        if !Self.acceptedMemLimits.contains(memLimit) {
            return ("kdf_memlimit", "is \(memLimit) bytes, outside the accepted \(Self.acceptedMemLimits.lowerBound >> 20) MiB…\(Self.acceptedMemLimits.upperBound >> 30) GiB")
        }
        return nil
    }

    /// The parameters stored in `chatlog_meta`, checked before anything is derived: each must be
    /// there with its documented SQLite type (INTEGER limits, a 16-byte BLOB salt, the algorithm
    /// name) and the limits inside the accepted range. Anything else is an integrity failure
    /// naming the row. Returns nil when the store has no passphrase parameters at all.
    static func stored(_ db: Database) throws -> PassphraseKDF? {
        var values: [String: MetaValue] = [:]
        for row in try Row.fetchAll(db, sql: "SELECT name, value FROM chatlog_meta WHERE name LIKE 'kdf\\_%' ESCAPE '\\'") {
            let value: MetaValue? =
                switch (row["value"] as DatabaseValue).storage {
                case .int64(let number): .integer(number)
                case .string(let text): .text(text)
                case .blob(let bytes): .blob(bytes)
                case .double, .null: nil
                }
            values[try row.decode(String.self, forColumn: "name")] = value ?? .text("")
        }
        return try stored(values)
    }

    /// From the `kdf_…` values of `chatlog_meta` (any backend); nil when there are none.
    static func stored(_ values: [String: MetaValue]) throws(ChatLogError) -> PassphraseKDF? {
        if values.isEmpty { return nil }
        func invalid(_ name: String, _ reason: String) -> ChatLogError {
            .integrity(IntegrityFailure(table: "chatlog_meta", column: "value", rowID: name, reason: .invalidValue(reason)))
        }
        func integer(_ name: String) throws(ChatLogError) -> Int64 {
            guard case .integer(let value)? = values[name] else {
                throw invalid(name, values[name] == nil ? "is missing" : "is not an INTEGER")
            }
            return value
        }
        guard case .text("argon2id13")? = values["kdf_algorithm"] else {
            throw invalid("kdf_algorithm", "is not 'argon2id13'")
        }
        guard case .blob(let salt)? = values["kdf_salt"], salt.count == Int(crypto_pwhash_SALTBYTES) else {
            throw invalid("kdf_salt", "is not a \(crypto_pwhash_SALTBYTES)-byte BLOB")
        }
        let ops = try integer("kdf_opslimit")
        let mem = try integer("kdf_memlimit")
        guard let opsLimit = UInt64(exactly: ops), Self.acceptedOpsLimits.contains(opsLimit) else {
            throw invalid("kdf_opslimit", "is \(ops), outside the accepted \(Self.acceptedOpsLimits.lowerBound)…\(Self.acceptedOpsLimits.upperBound) passes")
        }
        let kdf = PassphraseKDF(opsLimit: opsLimit, memLimit: Int(clamping: mem), salt: [UInt8](salt))
        if let (name, reason) = kdf.limitsProblem { throw invalid(name, reason) }
        return kdf
    }

    func withFreshSalt() -> PassphraseKDF {
        var copy = self
        copy.salt = Sodium.randomBytes(Int(crypto_pwhash_SALTBYTES))
        return copy
    }

    func deriveMasterKey(from passphrase: Passphrase) throws(ChatLogError) -> MasterKey {
        guard salt.count == Int(crypto_pwhash_SALTBYTES) else { throw .passphrase("the stored KDF salt is malformed") }
        let output = SecureBytes(count: MasterKey.byteCount)
        let status = output.withUnsafeMutableBytes { out in
            passphrase.storage.withUnsafeBytes { password in
                salt.withUnsafeBytes { saltBytes in
                    crypto_pwhash(
                        out.baseAddress!.assumingMemoryBound(to: UInt8.self), UInt64(out.count),
                        password.baseAddress!.assumingMemoryBound(to: CChar.self), UInt64(password.count),
                        saltBytes.baseAddress!.assumingMemoryBound(to: UInt8.self), opsLimit, memLimit,
                        crypto_pwhash_ALG_ARGON2ID13)
                }
            }
        }
        guard status == 0 else { throw .passphrase("Argon2id failed (out of memory for \(memLimit >> 20) MiB?)") }
        return try MasterKey(storage: output)
    }
}
