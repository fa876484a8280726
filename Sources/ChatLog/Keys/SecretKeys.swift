import CSodium

/// Shared behaviour of chatlog's key types: fixed-length bytes in libsodium memory that never
/// print. `description`, `debugDescription` and the `Mirror` that `dump()` walks all show only the
/// type name, so a key in a log line, an error or a debugger dump reveals nothing.
protocol RedactedSecret: CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    var storage: SecureBytes { get }
}

extension RedactedSecret {
    public var description: String { "\(Self.self)(<redacted>)" }
    public var debugDescription: String { description }
    public var customMirror: Mirror { Mirror(self, children: [], displayStyle: .struct) }

    func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try storage.withUnsafeBytes(body)
    }
}

/// The 32-byte key that wraps every data and index key. It never lives in the database; see
/// ``MasterKeySource`` for where it comes from.
///
/// ```swift
/// let key = try MasterKey(base64: ProcessInfo.processInfo.environment["CHATLOG_MASTER_KEY"]!)
/// print(key)              // MasterKey(<redacted>)
/// print(key.fingerprint)  // 3f9a61c2:0b7d44e1 — safe to show and compare
/// ```
public struct MasterKey: RedactedSecret, Sendable, Equatable {
    public static let byteCount = 32
    let storage: SecureBytes

    init(storage: SecureBytes) throws(ChatLogError) {
        guard storage.count == Self.byteCount else {
            throw .invalidKey("a master key is \(Self.byteCount) bytes; this one is \(storage.count)")
        }
        self.storage = storage
        if let reason = storage.withUnsafeBytes(Self.placeholderReason) { throw .placeholderKey(reason) }
    }

    /// A new random master key.
    public static func generate() -> MasterKey {
        // A random key is never a placeholder (probability 2^-256 aside).
        try! MasterKey(storage: .random(count: byteCount))
    }

    /// Parses a base64 key (standard alphabet, 44 characters with padding).
    public init(base64: some StringProtocol) throws(ChatLogError) {
        guard let bytes = Sodium.decodeBase64Key(Substring(base64), expectedLength: Self.byteCount) else {
            throw .invalidKey("CHATLOG_MASTER_KEY must be \(Self.byteCount) bytes in base64 (44 characters); generate one with `chatlog key generate`")
        }
        try self.init(storage: bytes)
    }

    /// The key in base64, for `chatlog key generate` to hand to the operator. Nothing else in
    /// chatlog calls this: a Swift `String` cannot be wiped, so keep the result short-lived.
    public func exportBase64() -> String {
        storage.withUnsafeBytes { Sodium.encodeBase64($0) }
    }

    /// The example key shown in the README; refused like an all-zero key.
    static let readmeExampleBase64 = "Y2hhdGxvZy1leGFtcGxlLWtleS1kby1ub3QtdXNlISE="

    private static func placeholderReason(_ bytes: UnsafeRawBufferPointer) -> String? {
        if Sodium.isAllZero(bytes) { return "the all-zero key" }
        if bytes.allSatisfy({ $0 == bytes[0] }) { return "a key of one repeated byte" }
        let example = Array("chatlog-example-key-do-not-use!!".utf8)
        if example.withUnsafeBytes({ Sodium.constantTimeEqual($0, bytes) }) { return "the README's example key" }
        return nil
    }

    /// The value stored in the database to recognise this key: keyed BLAKE2b-256 of a fixed
    /// domain tag. It reveals nothing about the key.
    var checkValue: [UInt8] { check(tag: KeyDerivation.masterCheckTag) }

    /// The check value stored by a store whose key rows are authenticated (docs/FORMAT.md): the
    /// same construction under another tag, so the v1 value (and the fingerprint, its first 8
    /// bytes) cannot be computed from it without the key.
    var checkValueV2: [UInt8] { check(tag: KeyDerivation.masterCheckV2Tag) }

    private func check(tag text: String) -> [UInt8] {
        var output = [UInt8](repeating: 0, count: 32)
        let tag = Array(text.utf8)
        storage.withUnsafeBytes { key in
            tag.withUnsafeBytes { message in
                output.withUnsafeMutableBytes { Sodium.keyedHash(key: key, message: message, into: $0) }
            }
        }
        return output
    }

    /// A short, printable name for this key (first 8 bytes of the check value, hex).
    public var fingerprint: KeyFingerprint { KeyFingerprint(checkValue: checkValue) }

    public static func == (lhs: MasterKey, rhs: MasterKey) -> Bool {
        lhs.storage.constantTimeEquals(rhs.storage)
    }
}

/// A printable, non-secret name for a master key: `3f9a61c2:0b7d44e1`.
public struct KeyFingerprint: Hashable, Sendable, CustomStringConvertible {
    public let description: String

    init(checkValue: [UInt8]) {
        let hex = checkValue.prefix(8).map { byte in
            let digits = Array("0123456789abcdef")
            return String([digits[Int(byte >> 4)], digits[Int(byte & 0xF)]])
        }.joined()
        description = String(hex.prefix(8)) + ":" + String(hex.dropFirst(8))
    }
}

/// A 32-byte data key: seals the fields of rows. Stored wrapped by the master key.
struct DataKey: RedactedSecret, Sendable {
    static let byteCount = 32
    let storage: SecureBytes
    static func generate() -> DataKey { DataKey(storage: .random(count: byteCount)) }
}

/// A 32-byte index key: blinds search tokens and subjects. Stored wrapped by the master key.
struct IndexKey: RedactedSecret, Sendable {
    static let byteCount = 32
    let storage: SecureBytes
    static func generate() -> IndexKey { IndexKey(storage: .random(count: byteCount)) }
}

/// The identifier written into every sealed value's header: names exactly one key.
/// Id 0 is the master key (it seals the wrapped data and index keys); data and index keys count
/// from 1 and are never reused.
public struct KeyID: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let master = KeyID(rawValue: 0)
    public var description: String { String(rawValue) }
    public static func < (a: KeyID, b: KeyID) -> Bool { a.rawValue < b.rawValue }
}

extension KeyID {
    /// A key id read from a key-id column. Key ids are 32-bit; any other number there is damage,
    /// reported as an integrity error naming the place instead of trapping on the conversion.
    static func stored(_ value: Int64, table: String, column: String, rowID: String) throws(ChatLogError) -> KeyID {
        guard let raw = UInt32(exactly: value) else {
            throw .integrity(IntegrityFailure(table: table, column: column, rowID: rowID, reason: .invalidKeyID(value)))
        }
        return KeyID(rawValue: raw)
    }
}
