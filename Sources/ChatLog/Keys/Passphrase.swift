import CSodium

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
    /// The lowest limits libsodium accepts. For tests only.
    public static let testingOnly = PassphraseKDF(
        opsLimit: UInt64(crypto_pwhash_OPSLIMIT_MIN), memLimit: Int(crypto_pwhash_MEMLIMIT_MIN), salt: [])

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
