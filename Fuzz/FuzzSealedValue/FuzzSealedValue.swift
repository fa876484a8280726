import FuzzSupport
import Foundation

@testable import ChatLog

/// Sealed values (Crypto/SealedValue.swift) and wrapped keys (KeyRing.unwrap). The first byte
/// picks the mode:
///
/// - 0: the rest is a sealed value from outside: `keyID(of:)` and `open` under the keys and
///   contexts of docs/vectors/sealed-v1.json. Whatever opens must re-seal (same key, context,
///   nonce, padded length) to exactly the same bytes.
/// - 1: round trip: seal a fuzz-chosen plaintext for a fuzz-chosen context with the fixed key,
///   open it, compare; then flip one byte (or truncate), which must make the value fail to open
///   the way the store opens it (key id check, then `open`).
/// - 2: `KeyRing.unwrap` of the rest under the vectors' master key (kind and id from the input).

private func key(_ hex: String) -> SecureBytes {
    var bytes: [UInt8] = []
    var index = hex.startIndex
    while index < hex.endIndex {
        let next = hex.index(index, offsetBy: 2)
        bytes.append(UInt8(hex[index..<next], radix: 16)!)
        index = next
    }
    return bytes.withUnsafeBytes { SecureBytes(copying: $0) }
}

private struct Opener: Sendable {
    let id: KeyID
    let key: SecureBytes
    let context: FieldContext
}

/// The (key id, key, context) of each `sealed` vector.
private let vectorOpeners: [Opener] = [
    Opener(
        id: KeyID(rawValue: 1), key: key("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"),
        context: FieldContext(table: "messages", column: "content", rowID: "0193a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b")),
    Opener(
        id: KeyID(rawValue: 3), key: key("202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"),
        context: FieldContext(table: "conversations", column: "title", rowID: "0193a1b2-c3d4-7e5f-8a6b-000000000001")),
    Opener(
        id: KeyID(rawValue: 0x0102_0304), key: key("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"),
        context: FieldContext(table: "messages", column: "content", rowID: "0193a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2c")),
    Opener(
        id: KeyID(rawValue: 1), key: key("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"),
        context: FieldContext(table: "messages", column: "content", rowID: "0193a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2d")),
    Opener(
        id: KeyID(rawValue: 3), key: key("202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"),
        context: FieldContext(table: "messages", column: "metadata", rowID: "0193a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2e")),
]

/// The fixed data key of the round trip (id 7).
private let fixedKeyID = KeyID(rawValue: 7)
private let fixedKey = key("a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf")
/// The master key of the wrapped-key vectors.
private let vectorMaster = try! MasterKey(storage: key("404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f"))

/// The entry point SwiftPM links as main (see `runFuzzer`).
@_cdecl("FuzzSealedValue_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, fuzzInput)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzInput(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let input = fuzzBytes(start, count)
    guard let mode = input.first else { return 0 }
    let rest = Array(input.dropFirst())
    switch mode % 3 {
    case 0: parseAndOpen(rest)
    case 1: roundTrip(FuzzReader(rest))
    default: unwrap(FuzzReader(rest))
    }
    return 0
}

/// Whether the header is one of a known version and long enough for it (version 2, a subject's
/// value, has 4 more header bytes).
private func headerWellFormed(_ sealed: [UInt8]) -> Bool {
    guard let version = sealed.first else { return false }
    if version == SealedValue.version { return sealed.count >= SealedValue.overhead + 1 }
    if version == SealedValue.subjectVersion { return sealed.count >= SealedValue.subjectOverhead + 1 }
    return false
}

/// What `keyID(of:)` and `open` must say about the header alone.
private func checkHeaderFailure(_ failure: SealedValue.Failure, _ sealed: [UInt8], _ what: String) {
    switch failure {
    case .truncated(let length):
        require(
            length == sealed.count
                && (sealed.count < SealedValue.overhead + 1
                    || (sealed[0] == SealedValue.subjectVersion && sealed.count < SealedValue.subjectOverhead + 1)),
            "\(what): truncated(\(length)) for \(sealed.count) bytes")
    case .unsupportedVersion(let version):
        require(
            sealed.count >= SealedValue.overhead + 1 && version == sealed[0] && version != SealedValue.version
                && version != SealedValue.subjectVersion,
            "\(what): unsupportedVersion(\(version))")
    case .authenticationFailed, .badPadding:
        require(headerWellFormed(sealed), "\(what): \(failure) for a value whose header is already wrong")
    }
}

/// `SealedValue.open` on an array, with its typed error.
private func open(_ sealed: [UInt8], key: SecureBytes, context: FieldContext) throws(SealedValue.Failure) -> [UInt8] {
    var result: Result<[UInt8], SealedValue.Failure> = .failure(.authenticationFailed)
    sealed.withUnsafeBytes { raw in
        result = Result { () throws(SealedValue.Failure) in try SealedValue.open(raw, key: key, context: context) }
    }
    return try result.get()
}

private func headerKeyID(_ sealed: [UInt8]) -> UInt32 {
    sealed[1..<5].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
}

private func parseAndOpen(_ sealed: [UInt8]) {
    let wellFormed = headerWellFormed(sealed)
    do {
        // A slice that does not start at index 0, as the store passes row data around.
        let id = try SealedValue.keyID(of: ([0xEE] + sealed).dropFirst())
        require(wellFormed, "keyID(of:) accepted a malformed value")
        require(id.rawValue == headerKeyID(sealed), "keyID(of:) read \(id), the header says \(headerKeyID(sealed))")
    } catch {
        checkHeaderFailure(error, sealed, "keyID(of:)")
        require(!wellFormed, "keyID(of:) refused a well-formed header: \(error)")
    }
    for opener in vectorOpeners {
        do {
            let plaintext = try open(sealed, key: opener.key, context: opener.context)
            require(wellFormed && sealed[0] == SealedValue.version, "open accepted a malformed value (or a subject's without its key)")
            // The value opened, so it is exactly what sealing this plaintext gives.
            let paddedLength = sealed.count - SealedValue.overhead
            require(plaintext.count < paddedLength, "opened \(plaintext.count) bytes from \(paddedLength) padded bytes")
            let resealed = plaintext.withUnsafeBytes { raw in
                SealedValue.seal(
                    raw, keyID: KeyID(rawValue: headerKeyID(sealed)), key: opener.key, context: opener.context,
                    paddingBlock: paddedLength, nonce: Array(sealed[5..<(5 + SealedValue.nonceSize)]))
            }
            require(resealed == sealed, "a value that opened does not re-seal to itself")
        } catch {
            checkHeaderFailure(error, sealed, "open")
        }
    }
}

/// Opens the way the store does: the header must name the expected key, then `open`.
private func storeOpen(_ sealed: [UInt8], keyID: KeyID, key: SecureBytes, context: FieldContext) -> [UInt8]? {
    do {
        guard try SealedValue.keyID(of: sealed) == keyID else { return nil }
        return try open(sealed, key: key, context: context)
    } catch {
        return nil
    }
}

private func roundTrip(_ input: FuzzReader) {
    var input = input
    let context = FieldContext(table: input.shortString(), column: input.shortString(), rowID: input.shortString())
    let paddingBlock = 1 + Int(input.byte())
    let nonce = input.take(SealedValue.nonceSize) + [UInt8](repeating: 0, count: SealedValue.nonceSize)
    let flip = Int(input.uint16())
    let maskByte = input.byte()
    let mask: UInt8 = maskByte == 0 ? 1 : maskByte
    let cut = Int(input.byte())
    let plaintext = input.rest()

    let sealed = plaintext.withUnsafeBytes { raw in
        SealedValue.seal(
            raw, keyID: fixedKeyID, key: fixedKey, context: context, paddingBlock: paddingBlock,
            nonce: Array(nonce.prefix(SealedValue.nonceSize)))
    }
    let paddedLength = sealed.count - SealedValue.overhead
    require(
        paddedLength > plaintext.count && paddedLength % paddingBlock == 0 && paddedLength - plaintext.count <= paddingBlock,
        "sealed \(plaintext.count) bytes into \(paddedLength) padded bytes with block \(paddingBlock)")
    guard let opened = storeOpen(sealed, keyID: fixedKeyID, key: fixedKey, context: context) else {
        fuzzFailure("a freshly sealed value does not open")
    }
    require(opened == plaintext, "the opened value differs from what was sealed")

    // Any one byte changed: refused (the key id names another key, or authentication fails).
    var tampered = sealed
    tampered[flip % tampered.count] ^= mask
    require(
        storeOpen(tampered, keyID: fixedKeyID, key: fixedKey, context: context) == nil,
        "a value with byte \(flip % tampered.count) changed still opens")
    // Truncated: refused.
    let truncated = Array(sealed.prefix(sealed.count - 1 - cut % sealed.count))
    require(storeOpen(truncated, keyID: fixedKeyID, key: fixedKey, context: context) == nil, "a truncated value still opens")
    // Moved to another row: refused.
    let moved = FieldContext(table: context.table, column: context.column, rowID: context.rowID + "x")
    require(storeOpen(sealed, keyID: fixedKeyID, key: fixedKey, context: moved) == nil, "a value opens in another row")

    // Version 2 (a subject's value): opens with both keys only.
    let subjectKey = [UInt8](repeating: 0x5A, count: 32).withUnsafeBytes { SecureBytes(copying: $0) }
    let otherSubjectKey = [UInt8](repeating: 0x5B, count: 32).withUnsafeBytes { SecureBytes(copying: $0) }
    let subjectID = KeyID(rawValue: 0x8000_0000 | UInt32(flip))
    let sealed2 = plaintext.withUnsafeBytes { raw in
        SealedValue.seal(
            raw, keyID: fixedKeyID, key: fixedKey, context: context, paddingBlock: paddingBlock,
            nonce: Array(nonce.prefix(SealedValue.nonceSize)), subject: (subjectID, subjectKey))
    }
    require(sealed2.count == sealed.count + 4 && sealed2.first == SealedValue.subjectVersion, "a version-2 value has the wrong layout")
    require(SealedValue.subjectKeyID(of: Data(sealed2)) == subjectID, "the subject key id does not read back")
    let opened2 = sealed2.withUnsafeBytes { raw in
        Result { () throws(SealedValue.Failure) in try SealedValue.open(raw, key: fixedKey, context: context, subjectKey: subjectKey) }
    }
    require((try? opened2.get()) == plaintext, "a version-2 value does not open to its plaintext")
    for key in [nil, otherSubjectKey] {
        let refused = sealed2.withUnsafeBytes { raw in
            Result { () throws(SealedValue.Failure) in try SealedValue.open(raw, key: fixedKey, context: context, subjectKey: key) }
        }
        require((try? refused.get()) == nil, "a version-2 value opens without its subject key")
    }
    require(storeOpen(sealed2, keyID: fixedKeyID, key: fixedKey, context: context) == nil, "a version-2 value opens as version 1")
}

private func unwrap(_ input: FuzzReader) {
    var input = input
    let kind: KeyStatus.Entry.Kind = input.byte() & 1 == 0 ? .data : .index
    let id = KeyID(rawValue: input.uint32())
    let wrapped = Data(input.rest())
    do {
        let material = try KeyRing.unwrap(wrapped, kind: kind, id: id, master: vectorMaster)
        require(material.count == 32, "unwrapped \(material.count) bytes")
        // It must be exactly what wrapping it again (with the same nonce) gives.
        let rewrapped = material.withUnsafeBytes { raw in
            SealedValue.seal(
                raw, keyID: .master, key: vectorMaster.storage, context: KeyRing.wrappingContext(kind: kind, id: id),
                paddingBlock: wrapped.count - SealedValue.overhead, nonce: Array(wrapped[5..<(5 + SealedValue.nonceSize)]))
        }
        require(Data(rewrapped) == wrapped, "an unwrapped key does not re-wrap to the same bytes")
    } catch {
        guard case .integrity(let failure) = error else { fuzzFailure("unwrap threw \(error), not an integrity failure") }
        require(failure.table == "keys" && failure.column == "wrapped", "unwrap blamed \(failure)")
    }
}
