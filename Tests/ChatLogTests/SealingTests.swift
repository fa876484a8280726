import Foundation
import Testing

@testable import ChatLog

/// The sealed-value primitive on its own (docs/ARCHITECTURE.md §3): layout, padding, context binding, failures.
@Suite struct SealingTests {
    let key = SecureBytes.random(count: 32)
    let context = FieldContext(table: "messages", column: "content", rowID: "0190d5a4-0000-7000-8000-000000000001")

    func seal(_ text: String, keyID: KeyID = KeyID(rawValue: 7), context: FieldContext? = nil, paddingBlock: Int = 32)
        -> [UInt8]
    {
        Array(text.utf8).withUnsafeBytes {
            SealedValue.seal($0, keyID: keyID, key: key, context: context ?? self.context, paddingBlock: paddingBlock)
        }
    }

    func open(_ sealed: [UInt8], key: SecureBytes? = nil, context: FieldContext? = nil) throws(SealedValue.Failure) -> [UInt8] {
        let result = sealed.withUnsafeBytes { bytes in
            Result { () throws(SealedValue.Failure) in
                try SealedValue.open(bytes, key: key ?? self.key, context: context ?? self.context)
            }
        }
        return try result.get()
    }

    @Test func roundTripsText() throws {
        for text in ["", "a", "hello, world", String(repeating: "x", count: 31), String(repeating: "y", count: 32), "naïve 🌍 \u{0}end"] {
            #expect(try open(seal(text)) == Array(text.utf8))
        }
    }

    @Test func headerNamesVersionAndKeyID() throws {
        let sealed = seal("hi", keyID: KeyID(rawValue: 0x0102_0304))
        #expect(sealed[0] == 1)
        #expect(Array(sealed[1..<5]) == [1, 2, 3, 4])
        #expect(try SealedValue.keyID(of: sealed) == KeyID(rawValue: 0x0102_0304))
    }

    @Test func paddingHidesExactLength() {
        // ISO 7816-4 padding always adds at least one byte, so 0…31 bytes fill one block and 32 needs two.
        let overhead = SealedValue.overhead
        #expect(seal("").count == overhead + 32)
        #expect(seal(String(repeating: "a", count: 31)).count == overhead + 32)
        #expect(seal(String(repeating: "a", count: 32)).count == overhead + 64)
        #expect(seal(String(repeating: "a", count: 100), paddingBlock: 64).count == overhead + 128)
        #expect(seal("abc", paddingBlock: 1).count == overhead + 4)
    }

    @Test func everySealUsesAFreshNonce() {
        let first = seal("same text")
        let second = seal("same text")
        #expect(first != second)
        #expect(Array(first[5..<29]) != Array(second[5..<29]))
    }

    @Test func fixedNonceIsDeterministic() {
        let nonce = [UInt8](repeating: 9, count: 24)
        let a = Array("x".utf8).withUnsafeBytes { SealedValue.seal($0, keyID: KeyID(rawValue: 1), key: key, context: context, nonce: nonce) }
        let b = Array("x".utf8).withUnsafeBytes { SealedValue.seal($0, keyID: KeyID(rawValue: 1), key: key, context: context, nonce: nonce) }
        #expect(a == b)
        #expect(Array(a[5..<29]) == nonce)
    }

    @Test(arguments: [
        FieldContext(table: "conversations", column: "content", rowID: "0190d5a4-0000-7000-8000-000000000001"),
        FieldContext(table: "messages", column: "metadata", rowID: "0190d5a4-0000-7000-8000-000000000001"),
        FieldContext(table: "messages", column: "content", rowID: "0190d5a4-0000-7000-8000-000000000002"),
        // Length prefixes keep "ab"+"c" apart from "a"+"bc".
        FieldContext(table: "messagesc", column: "ontent", rowID: "0190d5a4-0000-7000-8000-000000000001"),
    ])
    func openingInAnotherContextFails(other: FieldContext) {
        #expect(throws: SealedValue.Failure.authenticationFailed) { try open(seal("secret"), context: other) }
    }

    @Test func openingWithAnotherKeyFails() {
        #expect(throws: SealedValue.Failure.authenticationFailed) { try open(seal("secret"), key: .random(count: 32)) }
    }

    @Test func truncatedAndVersionFailures() {
        let sealed = seal("secret")
        #expect(throws: SealedValue.Failure.truncated(length: 0)) { try open([]) }
        #expect(throws: SealedValue.Failure.truncated(length: 45)) { try open(Array(sealed.prefix(45))) }
        #expect(throws: SealedValue.Failure.authenticationFailed) { try open(Array(sealed.dropLast())) }
        var wrongVersion = sealed
        wrongVersion[0] = 3
        #expect(throws: SealedValue.Failure.unsupportedVersion(3)) { try open(wrongVersion) }
        // Version 2 (a subject's value) needs its subject key: a v1 value relabelled never opens.
        wrongVersion[0] = 2
        #expect(throws: SealedValue.Failure.authenticationFailed) { try open(wrongVersion) }
        #expect(throws: SealedValue.Failure.truncated(length: 3)) { try SealedValue.keyID(of: [1, 0, 0]) }
    }

    @Test func everyFlippedBitIsDetected() {
        let sealed = seal("short")
        // The version byte and key id (bytes 0…4) select how and with which key to open; the store
        // checks them (IntegrityTests). Every byte after them, nonce included, is authenticated.
        for position in 5..<sealed.count {
            var tampered = sealed
            tampered[position] ^= UInt8(1 << (position % 8))
            #expect(throws: SealedValue.Failure.authenticationFailed, "byte \(position)") { try open(tampered) }
        }
    }

    /// The subkey message is built without allocating; it must be exactly the documented encoding.
    @Test func fieldDerivationMessageIsTheLengthPrefixedEncoding() {
        for context in [
            FieldContext(table: "messages", column: "content", rowID: "01a21b83-c24c-78fa-b417-0047058769cb"),
            FieldContext(table: "", column: "é", rowID: String(repeating: "x", count: 300)),
        ] {
            let built = context.withDerivationMessage { [UInt8]($0) }
            #expect(built == KeyDerivation.lengthPrefixed([KeyDerivation.fieldTag, context.table, context.column, context.rowID]))
        }
    }

    @Test func lengthPrefixedLayout() {
        #expect(KeyDerivation.lengthPrefixed(["ab", ""]) == [0, 0, 0, 2, 0x61, 0x62, 0, 0, 0, 0])
        #expect(KeyDerivation.lengthPrefixed(["a", "bc"]) != KeyDerivation.lengthPrefixed(["ab", "c"]))
    }
}
