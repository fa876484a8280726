import CSodium
import Foundation

/// The byte format of one sealed field (docs/FORMAT.md, version 1):
///
///     version (1 byte, 0x01) ‖ key id (4 bytes, big-endian) ‖ nonce (24 bytes) ‖ MAC (16) ‖ ciphertext
///
/// The ciphertext is `crypto_secretbox_easy` (XSalsa20-Poly1305) of the ISO/IEC 7816-4 padded
/// plaintext (`sodium_pad`), under a subkey bound to where the value lives:
///
///     subkey = BLAKE2b-256(key: data key, message: lp("chatlog/v1/field") ‖ lp(table) ‖ lp(column) ‖ lp(row id))
///
/// where `lp(x) = u32be(len(x)) ‖ x`. A value copied to another row, column or store derives a
/// different subkey and fails authentication.
///
/// Version 2 (a conversation with a subject, docs/FORMAT.md) also names the subject key and needs
/// it as well as the data key, so destroying the subject key makes the value unreadable even to a
/// holder of the master key (crypto-shredding):
///
///     version (0x02) ‖ data key id (4) ‖ subject key id (4) ‖ nonce (24) ‖ MAC (16) ‖ ciphertext
///     subkey = BLAKE2b-256(key: subject key, message: lp("chatlog/v2/subject-field") ‖ lp(v1 subkey))
enum SealedValue {
    static let version: UInt8 = 1
    static let subjectVersion: UInt8 = 2
    static let subjectHeaderSize = 1 + 4 + 4 + nonceSize
    static let subjectOverhead = subjectHeaderSize + macSize
    static let nonceSize = 24  // crypto_secretbox_NONCEBYTES
    static let macSize = 16  // crypto_secretbox_MACBYTES
    static let headerSize = 1 + 4 + nonceSize
    static let overhead = headerSize + macSize
    static let defaultPaddingBlock = 32

    enum Failure: Error, Equatable, Sendable {
        case truncated(length: Int)
        case unsupportedVersion(UInt8)
        case authenticationFailed
        case badPadding
    }

    /// The key id a sealed value names, without opening it.
    static func keyID(of sealed: some Collection<UInt8>) throws(Failure) -> KeyID {
        guard sealed.count >= overhead + 1 else { throw .truncated(length: sealed.count) }
        var iterator = sealed.makeIterator()
        let version = iterator.next()!
        guard version == Self.version || (version == subjectVersion && sealed.count >= subjectOverhead + 1) else {
            throw version == subjectVersion ? .truncated(length: sealed.count) : .unsupportedVersion(version)
        }
        var id: UInt32 = 0
        for _ in 0..<4 { id = (id << 8) | UInt32(iterator.next()!) }
        return KeyID(rawValue: id)
    }

    /// The same for `Data`, without the generic collection walk (hot in search).
    static func keyID(of sealed: Data) throws(Failure) -> KeyID {
        let header: (count: Int, version: UInt8, id: UInt32) = sealed.withUnsafeBytes { bytes in
            guard bytes.count >= overhead + 1 else { return (bytes.count, 0, 0) }
            let id = (UInt32(bytes[1]) << 24) | (UInt32(bytes[2]) << 16) | (UInt32(bytes[3]) << 8) | UInt32(bytes[4])
            return (bytes.count, bytes[0], id)
        }
        guard header.count >= overhead + 1 else { throw .truncated(length: header.count) }
        guard header.version == version else {
            guard header.version == subjectVersion else { throw .unsupportedVersion(header.version) }
            guard header.count >= subjectOverhead + 1 else { throw .truncated(length: header.count) }
            return KeyID(rawValue: header.id)
        }
        return KeyID(rawValue: header.id)
    }

    /// The subject key a version-2 value names, nil for version 1 (and for anything malformed,
    /// which ``keyID(of:)`` and ``open(_:key:context:subjectKey:)`` report).
    static func subjectKeyID(of sealed: Data) -> KeyID? {
        sealed.withUnsafeBytes { bytes in
            guard bytes.count >= subjectOverhead + 1, bytes[0] == subjectVersion else { return nil }
            return KeyID(rawValue: (UInt32(bytes[5]) << 24) | (UInt32(bytes[6]) << 16) | (UInt32(bytes[7]) << 8) | UInt32(bytes[8]))
        }
    }

    /// Seals `plaintext` for `context` under `key`, which the header names as `keyID`.
    /// `nonce` is for test vectors only; production callers leave it nil (fresh random nonce).
    static func seal(
        _ plaintext: UnsafeRawBufferPointer, keyID: KeyID, key: SecureBytes, context: FieldContext,
        paddingBlock: Int = defaultPaddingBlock, nonce: [UInt8]? = nil, subject: (id: KeyID, key: SecureBytes)? = nil
    ) -> [UInt8] {
        Sodium.ensureInitialized()
        precondition(paddingBlock > 0)
        let paddedLength = (plaintext.count / paddingBlock + 1) * paddingBlock
        let headerSize = subject == nil ? Self.headerSize : subjectHeaderSize
        let total = headerSize + macSize + paddedLength
        return [UInt8](unsafeUninitializedCapacity: total) { buffer, initialized in
            let base = buffer.baseAddress!
            base[0] = subject == nil ? version : subjectVersion
            base[1] = UInt8(keyID.rawValue >> 24)
            base[2] = UInt8((keyID.rawValue >> 16) & 0xFF)
            base[3] = UInt8((keyID.rawValue >> 8) & 0xFF)
            base[4] = UInt8(keyID.rawValue & 0xFF)
            if let subject {
                base[5] = UInt8(subject.id.rawValue >> 24)
                base[6] = UInt8((subject.id.rawValue >> 16) & 0xFF)
                base[7] = UInt8((subject.id.rawValue >> 8) & 0xFF)
                base[8] = UInt8(subject.id.rawValue & 0xFF)
            }
            let noncePointer = base + (headerSize - nonceSize)
            if let nonce {
                precondition(nonce.count == nonceSize)
                noncePointer.update(from: nonce, count: nonceSize)
            } else {
                randombytes_buf(noncePointer, nonceSize)
            }
            // Plaintext is copied behind the MAC slot, padded there, then encrypted in place
            // (libsodium allows the overlap).
            let message = base + headerSize + macSize
            if plaintext.count > 0 {
                UnsafeMutableRawPointer(message).copyMemory(from: plaintext.baseAddress!, byteCount: plaintext.count)
            }
            var padded = 0
            let padStatus = sodium_pad(&padded, message, plaintext.count, paddingBlock, paddedLength)
            precondition(padStatus == 0 && padded == paddedLength)
            withSubkey(key: key, context: context, subjectKey: subject?.key) { subkey in
                let status = crypto_secretbox_easy(
                    base + headerSize, message, UInt64(paddedLength), noncePointer, subkey)
                precondition(status == 0)
            }
            initialized = total
        }
    }

    /// Opens a value sealed for `context` under `key` (and, for version 2, `subjectKey`). The
    /// caller has already checked that the header's key ids name these keys.
    static func open(
        _ sealed: UnsafeRawBufferPointer, key: SecureBytes, context: FieldContext, subjectKey: SecureBytes? = nil
    ) throws(Failure) -> [UInt8] {
        guard sealed.count >= overhead + 1 else { throw .truncated(length: sealed.count) }
        let bytes = sealed.bindMemory(to: UInt8.self)
        let headerSize: Int
        switch bytes[0] {
        case version: headerSize = Self.headerSize
        case subjectVersion:
            guard sealed.count >= subjectOverhead + 1 else { throw .truncated(length: sealed.count) }
            // A version-2 value opened without its subject key (or v1 with one) never opens.
            guard subjectKey != nil else { throw .authenticationFailed }
            headerSize = subjectHeaderSize
        default: throw .unsupportedVersion(bytes[0])
        }
        if bytes[0] == version, subjectKey != nil { throw .authenticationFailed }
        let cipherLength = sealed.count - headerSize
        let paddedLength = cipherLength - macSize
        var opened = false
        var plaintext = [UInt8](unsafeUninitializedCapacity: paddedLength) { buffer, initialized in
            withSubkey(key: key, context: context, subjectKey: subjectKey) { subkey in
                opened =
                    crypto_secretbox_open_easy(
                        buffer.baseAddress!, bytes.baseAddress! + headerSize, UInt64(cipherLength),
                        bytes.baseAddress! + headerSize - nonceSize, subkey) == 0
            }
            initialized = opened ? paddedLength : 0
        }
        guard opened else { throw .authenticationFailed }
        // ISO/IEC 7816-4 unpadding: trailing zeros, then 0x80. The MAC has already been checked,
        // so the bytes are authentic; the block size is a sealing choice and not needed here.
        var end = plaintext.count
        while end > 0, plaintext[end - 1] == 0 { end -= 1 }
        guard end > 0, plaintext[end - 1] == 0x80 else {
            plaintext.withUnsafeMutableBytes { Sodium.memzero($0) }
            throw .badPadding
        }
        plaintext.removeSubrange((end - 1)...)
        return plaintext
    }

    /// Derives the per-field subkey on the stack, lends it to `body`, then wipes it.
    private static func withSubkey(
        key: SecureBytes, context: FieldContext, subjectKey: SecureBytes? = nil, _ body: (UnsafePointer<UInt8>) -> Void
    ) {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 32) { subkey in
            let raw = UnsafeMutableRawBufferPointer(subkey)
            key.withUnsafeBytes { keyBytes in
                context.withDerivationMessage { Sodium.keyedHash(key: keyBytes, message: $0, into: raw) }
            }
            if let subjectKey {
                // Version 2: lp("chatlog/v2/subject-field") ‖ lp(v1 subkey), keyed by the subject key.
                let length = subjectMessagePrefix.count + 32
                withUnsafeTemporaryAllocation(of: UInt8.self, capacity: length) { input in
                    let message = UnsafeMutableRawBufferPointer(input)
                    message.copyBytes(from: subjectMessagePrefix)
                    (message.baseAddress! + subjectMessagePrefix.count).copyMemory(from: raw.baseAddress!, byteCount: 32)
                    subjectKey.withUnsafeBytes { keyBytes in
                        Sodium.keyedHash(key: keyBytes, message: UnsafeRawBufferPointer(message), into: raw)
                    }
                    Sodium.memzero(message)
                }
            }
            body(UnsafePointer(subkey.baseAddress!))
            Sodium.memzero(raw)
        }
    }

    static let subjectFieldTag = "chatlog/v2/subject-field"
    /// `lp("chatlog/v2/subject-field") ‖ u32be(32)`: the fixed start of every version-2 subkey
    /// message (made once, not per sealed field).
    private static let subjectMessagePrefix = KeyDerivation.lengthPrefixed([subjectFieldTag]) + [0, 0, 0, 32]
}
