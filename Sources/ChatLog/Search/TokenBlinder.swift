import CSodium
import Foundation

/// Turns search tokens into opaque index terms: SipHash-2-4 with a 128-bit output
/// (`crypto_shorthash_siphashx24`) under a 16-byte subkey of the index key, truncated to
/// `bits` bits and written in lowercase base32. The FTS5 table sees only these terms.
///
///     sipkey = BLAKE2b-128(key: index key, message: lp("chatlog/v1/token"))
///     term   = base32(first ⌈bits/5⌉·5 bits of SipHash128(sipkey, UTF-8 token))
///
/// Truncation makes distinct words share a term now and then: the search verifies every
/// candidate after decryption, so a shared term costs a decryption, never a wrong result
/// (docs/SECURITY.md weighs the trade).
struct TokenBlinder: Sendable {
    /// 40 bits: about one colliding pair in a vocabulary of a million distinct words.
    static let defaultBits = 40

    let keyID: KeyID
    let bits: Int
    private let sipKey: SecureBytes

    init(indexKey: IndexKey, keyID: KeyID, bits: Int = defaultBits) {
        precondition(bits % 5 == 0 && bits > 0 && bits <= 60)
        self.keyID = keyID
        self.bits = bits
        let derived = SecureBytes(count: 16)
        let message = KeyDerivation.lengthPrefixed([KeyDerivation.tokenTag])
        indexKey.withUnsafeBytes { key in
            message.withUnsafeBytes { input in derived.withUnsafeMutableBytes { Sodium.keyedHash(key: key, message: input, into: $0) } }
        }
        sipKey = derived
    }

    private static let alphabet: [UInt8] = Array("abcdefghijklmnopqrstuvwxyz234567".utf8)

    func term(for token: String) -> String {
        var token = token
        return token.withUTF8 { Self.encode(hash($0), characters: bits / 5) }
    }

    /// The first 64 bits (big-endian) of SipHash128(sipkey, bytes).
    func hash(_ bytes: UnsafeBufferPointer<UInt8>) -> UInt64 {
        var output = (UInt64(0), UInt64(0))
        withUnsafeMutableBytes(of: &output) { out in
            sipKey.withUnsafeBytes { key in
                _ = crypto_shorthash_siphashx24(
                    out.baseAddress!.assumingMemoryBound(to: UInt8.self), bytes.baseAddress, UInt64(bytes.count),
                    key.baseAddress!.assumingMemoryBound(to: UInt8.self))
            }
        }
        return withUnsafeBytes(of: &output) { bytes in bytes.prefix(8).reduce(UInt64(0)) { ($0 << 8) | UInt64($1) } }
    }

    static func encode(_ high: UInt64, characters: Int) -> String {
        String(unsafeUninitializedCapacity: characters) { buffer in
            for index in 0..<characters {
                buffer[index] = alphabet[Int((high >> UInt64(59 - 5 * index)) & 0x1F)]
            }
            return characters
        }
    }

    /// The FTS5 document for one message: its distinct terms, space-separated.
    func document(for text: String) -> String {
        let characters = bits / 5
        var output: [UInt8] = []
        output.reserveCapacity(256)
        forEachDistinctTerm(in: text) { term in
            if !output.isEmpty { output.append(0x20) }
            for index in 0..<characters { output.append(Self.alphabet[Int((term >> UInt64(59 - 5 * index)) & 0x1F)]) }
        }
        return String(decoding: output, as: UTF8.self)
    }

    /// Each distinct term of `text` once, as its value: the hash's top `bits` bits (lower bits
    /// zero), what `decode` gives back for the term's text.
    func forEachDistinctTerm(in text: String, _ body: (UInt64) -> Void) {
        var seen = TermSet()
        forEachDistinctTerm(in: text, seen: &seen, body)
    }

    /// The same with a caller's set (emptied first), so that a loop over many messages reuses
    /// one table instead of allocating one per message.
    func forEachDistinctTerm(in text: String, seen: inout TermSet, _ body: (UInt64) -> Void) {
        let mask: UInt64 = ~0 << UInt64(64 - bits)
        seen.removeAll()
        Tokenizer.scan(text) { token, _ in
            let term = hash(token) & mask
            if seen.insert(term) { body(term) }
        }
    }

    /// The value of one token's term (the hash's top `bits` bits).
    func termValue(_ token: UnsafeBufferPointer<UInt8>) -> UInt64 {
        hash(token) & (~0 << UInt64(64 - bits))
    }

    /// The value of a term's text (`characters` lowercase base32 digits), or nil for any other
    /// text (a term no blinder makes).
    static func decode(_ text: UnsafeRawBufferPointer, characters: Int) -> UInt64? {
        guard text.count == characters, characters <= 12 else { return nil }
        var value: UInt64 = 0
        for index in 0..<characters {
            let byte = text[index]
            let digit: UInt8
            switch byte {
            case 0x61...0x7A: digit = byte - 0x61
            case 0x32...0x37: digit = byte - 0x32 + 26
            default: return nil
            }
            value |= UInt64(digit) << UInt64(59 - 5 * index)
        }
        return value
    }
}

/// A set of term values (keyed hashes: already uniformly spread, so their own top bits index an
/// open-addressing table). Emptying it is O(1) (a generation counter), so one set serves a loop
/// over many messages.
struct TermSet {
    private var values: [UInt64]
    private var generations: [UInt32]
    private var generation: UInt32 = 1
    private var count = 0
    private var shift: UInt64

    init(capacity: Int = 256) {
        let size = max(16, 1 << (Int.bitWidth - (capacity * 2 - 1).leadingZeroBitCount))
        values = [UInt64](repeating: 0, count: size)
        generations = [UInt32](repeating: 0, count: size)
        shift = UInt64(64 - size.trailingZeroBitCount)
    }

    mutating func removeAll() {
        count = 0
        generation &+= 1
        if generation == 0 {
            generations.withUnsafeMutableBufferPointer { $0.update(repeating: 0) }
            generation = 1
        }
    }

    /// Inserts `value`; returns whether it was new.
    mutating func insert(_ value: UInt64) -> Bool {
        if (count + 1) * 2 > values.count { grow() }
        let mask = values.count - 1
        var slot = Int(truncatingIfNeeded: (value &* 0x9E37_79B9_7F4A_7C15) >> shift)
        while generations[slot] == generation {
            if values[slot] == value { return false }
            slot = (slot + 1) & mask
        }
        generations[slot] = generation
        values[slot] = value
        count += 1
        return true
    }

    private mutating func grow() {
        let old = zip(values, generations).filter { $0.1 == generation }.map(\.0)
        self = TermSet(capacity: values.count)
        for value in old { _ = insert(value) }
    }
}
