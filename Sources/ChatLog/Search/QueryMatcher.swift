import Foundation

/// A parsed query compiled for checking decrypted candidates quickly: its distinct tokens as
/// bytes, each atom as a sequence of token numbers. Scanning a candidate records each of its
/// tokens that is a query token (position, which one, where) by comparing normalised bytes —
/// exact, with no hashing that could collide.
struct QueryMatcher: Sendable {
    let tokens: [[UInt8]]
    /// The same tokens end to end, and where each is in `flat` (for the scanning loop).
    private let flat: [UInt8]
    private let bounds: [(start: Int, length: Int)]
    /// Required clauses: each an OR of atoms (sequences of token numbers).
    let required: [[[Int]]]
    let excluded: [[Int]]
    /// Whether each token is in a required atom (and not only in excluded ones): only those are
    /// highlighted and ranked.
    let positive: [Bool]
    /// Whether every atom is one token (no phrase): then whether a candidate matches depends
    /// only on which tokens occur in it, and ranking needs no positions (`rankingCounts`).
    private let atomsAreSingleTokens: Bool

    init(_ query: SearchQuery) {
        var numbers: [String: Int] = [:]
        var tokens: [[UInt8]] = []
        func number(_ token: String) -> Int {
            if let existing = numbers[token] { return existing }
            numbers[token] = tokens.count
            tokens.append(Array(token.utf8))
            return tokens.count - 1
        }
        required = query.required.map { clause in clause.map { atom in atom.tokens.map(number) } }
        excluded = query.excluded.map { atom in atom.tokens.map(number) }
        self.tokens = tokens
        flat = tokens.flatMap { $0 }
        var start = 0
        bounds = tokens.map { token in
            defer { start += token.count }
            return (start, token.count)
        }
        var positive = [Bool](repeating: false, count: tokens.count)
        for clause in required { for atom in clause { for token in atom { positive[token] = true } } }
        self.positive = positive
        atomsAreSingleTokens = required.allSatisfy { $0.allSatisfy { $0.count == 1 } } && excluded.allSatisfy { $0.count == 1 }
    }

    /// One candidate, scanned: how many tokens it has, and each token that is a query token —
    /// its position among the candidate's tokens, which query token it is, and where it is in
    /// the original text (byte offsets) — in text order. Positions are enough to check phrases:
    /// an atom matches where its tokens sit at consecutive positions.
    struct Scan {
        var tokenCount = 0
        var matches: [Match] = []
    }

    struct Match {
        let position: Int
        let token: Int
        let range: Range<Int>
    }

    func scan(_ text: String) -> Scan {
        var text = text
        return text.withUTF8 { scan(utf8: $0) }
    }

    /// Scans UTF-8 bytes (authenticated plaintext: valid UTF-8 by construction).
    ///
    /// This runs for every token of every relevance candidate, on all cores at once: the loop
    /// touches no reference-counted value (the query's tokens are read through one flat buffer),
    /// since retains of shared arrays from several threads cost more than the scanning itself.
    func scan(utf8 text: UnsafeBufferPointer<UInt8>) -> Scan {
        var result = Scan()
        var position = 0
        flat.withUnsafeBufferPointer { flat in
            bounds.withUnsafeBufferPointer { bounds in
                Tokenizer.scan(text) { bytes, range in
                    let length = bytes.count
                    guard length > 0, let flat = flat.baseAddress else {
                        position += 1
                        return
                    }
                    let first = bytes[0]
                    var index = 0
                    while index < bounds.count {
                        let bound = bounds[index]
                        if bound.length == length && flat[bound.start] == first
                            && memcmp(flat + bound.start, bytes.baseAddress!, length) == 0
                        {
                            result.matches.append(Match(position: position, token: index, range: range))
                            break
                        }
                        index += 1
                    }
                    position += 1
                }
            }
        }
        result.tokenCount = position
        return result
    }

    /// The same `Scan` as `scan(utf8:)` for text that is pure ASCII, found without tokenizing
    /// it: each query token is searched for directly (ASCII letters compared case-insensitively,
    /// whole words only), and positions come from counting word starts. ASCII text is its own
    /// NFKC form, and its words are the runs of ASCII letters and digits, so this is exactly what
    /// the tokenizer would give; a query token with non-ASCII bytes cannot occur in it.
    /// Returns nil when the text has any non-ASCII byte (then `scan(utf8:)` applies).
    ///
    /// Relevance ranking opens and checks every candidate; on chat text this is several times
    /// faster than tokenizing (a few simple passes over the bytes instead of a branch per
    /// character class change).
    func asciiScan(utf8 text: UnsafeBufferPointer<UInt8>) -> Scan? {
        guard let base = text.baseAddress, !text.isEmpty else { return text.isEmpty ? Scan() : nil }
        let count = text.count
        let raw = UnsafeRawPointer(base)
        // 1. Where each query token occurs as a whole word: 16 positions at a time, filtered on
        // the token's first two bytes (either case), then checked one by one.
        var found: [Match] = []
        flat.withUnsafeBufferPointer { flat in
            guard let flat = flat.baseAddress else { return }
            for (token, bound) in bounds.enumerated() where bound.length > 0 && bound.length <= count {
                let length = bound.length
                let word = flat + bound.start
                guard word[0] < 0x80 else { continue }
                func check(_ start: Int) {
                    guard start == 0 || !Self.isWordByte(base[start - 1]),
                        start + length == count || !Self.isWordByte(base[start + length])
                    else { return }
                    var offset = 0
                    while offset < length {
                        let byte = base[start + offset]
                        if ((byte >= 0x41 && byte <= 0x5A) ? byte | 0x20 : byte) != word[offset] { return }
                        offset += 1
                    }
                    found.append(Match(position: 0, token: token, range: start..<(start + length)))
                }
                let lastStart = count - length
                var start = 0
                if length >= 2 {
                    let first = SIMD16<UInt8>(repeating: word[0]), firstUpper = SIMD16<UInt8>(repeating: Self.upper(word[0]))
                    let second = SIMD16<UInt8>(repeating: word[1]), secondUpper = SIMD16<UInt8>(repeating: Self.upper(word[1]))
                    while start + 17 <= count && start + 15 <= lastStart {
                        let here = raw.loadUnaligned(fromByteOffset: start, as: SIMD16<UInt8>.self)
                        let next = raw.loadUnaligned(fromByteOffset: start + 1, as: SIMD16<UInt8>.self)
                        var hits = Self.bitmask(((here .== first) .| (here .== firstUpper)) .& ((next .== second) .| (next .== secondUpper)))
                        while hits != 0 {
                            check(start + hits.trailingZeroBitCount)
                            hits &= hits &- 1
                        }
                        start += 16
                    }
                } else {
                    let first = SIMD16<UInt8>(repeating: word[0]), firstUpper = SIMD16<UInt8>(repeating: Self.upper(word[0]))
                    while start + 16 <= count && start + 15 <= lastStart {
                        let here = raw.loadUnaligned(fromByteOffset: start, as: SIMD16<UInt8>.self)
                        var hits = Self.bitmask((here .== first) .| (here .== firstUpper))
                        while hits != 0 {
                            check(start + hits.trailingZeroBitCount)
                            hits &= hits &- 1
                        }
                        start += 16
                    }
                }
                while start <= lastStart {
                    check(start)
                    start += 1
                }
            }
        }
        if bounds.count > 1 { found.sort { $0.range.lowerBound < $1.range.lowerBound } }

        // 2. Positions: word starts before each match; the total is the token count. The same
        // pass checks that the text is pure ASCII (else everything above is void).
        var result = Scan()
        result.matches = found
        var words = 0
        var position = 0
        var high: UInt64 = 0
        for index in result.matches.indices {
            let start = result.matches[index].range.lowerBound
            words += Self.wordStarts(base, from: position, to: start, high: &high)
            position = start
            result.matches[index] = Match(position: words, token: result.matches[index].token, range: result.matches[index].range)
        }
        words += Self.wordStarts(base, from: position, to: count, high: &high)
        guard high & 0x8080_8080_8080_8080 == 0 else { return nil }
        result.tokenCount = words
        return result
    }

    /// Bit i set when lane i of `mask` is true (a lane-by-lane `mask[i]` loop cost more than the
    /// comparisons themselves in the relevance profile).
    @inline(__always)
    private static func bitmask(_ mask: SIMDMask<SIMD16<Int8>>) -> UInt32 {
        let weights = SIMD16<UInt8>(1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128)
        let bits = unsafeBitCast(mask, to: SIMD16<UInt8>.self) & weights
        return UInt32(bits.lowHalf.wrappedSum()) | UInt32(bits.highHalf.wrappedSum()) << 8
    }

    /// What relevance ranking needs of one candidate — whether it matches, each query token's
    /// frequency, its token count — without positions or ranges: the same values as
    /// `matches`/`frequencies`/`tokenCount` of `asciiScan`, found with no per-match allocation.
    /// Nil when the text is not pure ASCII or the query has a phrase (then `asciiScan` or `scan`).
    func rankingCounts(utf8 text: UnsafeBufferPointer<UInt8>) -> (matches: Bool, frequencies: [Int], length: Int)? {
        guard atomsAreSingleTokens, let base = text.baseAddress, !text.isEmpty else { return nil }
        let count = text.count
        var high: UInt64 = 0
        let length = Self.wordStarts(base, from: 0, to: count, high: &high)
        guard high & 0x8080_8080_8080_8080 == 0 else { return nil }
        var frequencies = [Int](repeating: 0, count: bounds.count)
        flat.withUnsafeBufferPointer { flat in
            guard let flat = flat.baseAddress else { return }
            for (token, bound) in bounds.enumerated() where bound.length > 0 && bound.length <= count && flat[bound.start] < 0x80 {
                frequencies[token] = Self.occurrences(of: flat + bound.start, length: bound.length, in: base, count: count)
            }
        }
        let occurs = { (atom: [Int]) in frequencies[atom[0]] > 0 }
        let matches = required.allSatisfy { $0.contains(where: occurs) } && !excluded.contains(where: occurs)
        return (matches, frequencies, length)
    }

    /// Whole-word, ASCII-case-insensitive occurrences of `word` (lower-case ASCII) in ASCII text.
    private static func occurrences(of word: UnsafePointer<UInt8>, length: Int, in base: UnsafePointer<UInt8>, count: Int) -> Int {
        var total = 0
        @inline(__always) func check(_ start: Int) {
            guard start == 0 || !isWordByte(base[start - 1]), start + length == count || !isWordByte(base[start + length]) else { return }
            var offset = 0
            while offset < length {
                let byte = base[start + offset]
                if ((byte >= 0x41 && byte <= 0x5A) ? byte | 0x20 : byte) != word[offset] { return }
                offset += 1
            }
            total += 1
        }
        let raw = UnsafeRawPointer(base)
        let lastStart = count - length
        var start = 0
        let first = SIMD16<UInt8>(repeating: word[0]), firstUpper = SIMD16<UInt8>(repeating: upper(word[0]))
        if length >= 2 {
            let second = SIMD16<UInt8>(repeating: word[1]), secondUpper = SIMD16<UInt8>(repeating: upper(word[1]))
            while start + 17 <= count && start + 15 <= lastStart {
                let here = raw.loadUnaligned(fromByteOffset: start, as: SIMD16<UInt8>.self)
                let next = raw.loadUnaligned(fromByteOffset: start + 1, as: SIMD16<UInt8>.self)
                var hits = bitmask(((here .== first) .| (here .== firstUpper)) .& ((next .== second) .| (next .== secondUpper)))
                while hits != 0 {
                    check(start + hits.trailingZeroBitCount)
                    hits &= hits &- 1
                }
                start += 16
            }
        } else {
            while start + 16 <= count && start + 15 <= lastStart {
                let here = raw.loadUnaligned(fromByteOffset: start, as: SIMD16<UInt8>.self)
                var hits = bitmask((here .== first) .| (here .== firstUpper))
                while hits != 0 {
                    check(start + hits.trailingZeroBitCount)
                    hits &= hits &- 1
                }
                start += 16
            }
        }
        while start <= lastStart {
            check(start)
            start += 1
        }
        return total
    }

    /// The upper-case form of an ASCII lower-case letter; any other byte itself.
    @inline(__always)
    private static func upper(_ byte: UInt8) -> UInt8 { (byte >= 0x61 && byte <= 0x7A) ? byte - 0x20 : byte }

    @inline(__always)
    private static func isWordByte(_ byte: UInt8) -> Bool {
        (byte &- 0x30) < 10 || ((byte | 0x20) &- 0x61) < 26
    }

    /// Word starts in `from..<to` of ASCII text: word bytes at the start of the text or after a
    /// non-word byte. Every byte is also ORed into `high` (the caller's ASCII check; on other
    /// text the count means nothing). Eight bytes at a time in a UInt64 (SWAR): every byte is below 0x80, so
    /// adding a constant below 0x80 to each byte never carries into the next one, and a byte's
    /// high bit then says whether it was at least some bound.
    private static func wordStarts(_ base: UnsafePointer<UInt8>, from: Int, to: Int, high: inout UInt64) -> Int {
        guard from < to else { return 0 }
        var starts = 0
        var index = from
        // The high bit of the byte before `index`: set when it is a word byte.
        var carry: UInt64 = from > 0 && isWordByte(base[from - 1]) ? 0x80 : 0
        let raw = UnsafeRawPointer(base)
        while index + 8 <= to {
            let bytes = raw.loadUnaligned(fromByteOffset: index, as: UInt64.self)
            high |= bytes
            let word = wordBits(bytes)
            starts += (word & ~((word << 8) | carry)).nonzeroBitCount
            carry = word >> 56
            index += 8
        }
        while index < to {
            high |= UInt64(base[index])
            let isWord = isWordByte(base[index])
            if isWord && carry == 0 { starts += 1 }
            carry = isWord ? 0x80 : 0
            index += 1
        }
        return starts
    }

    /// 0x80 in each byte of `bytes` (all below 0x80) that is an ASCII letter or digit, else 0.
    @inline(__always)
    private static func wordBits(_ bytes: UInt64) -> UInt64 {
        let ones: UInt64 = 0x0101_0101_0101_0101
        let high: UInt64 = 0x8080_8080_8080_8080
        func atLeast(_ value: UInt64, _ bound: UInt64) -> UInt64 { (value &+ (0x80 - bound) &* ones) & high }
        func atMost(_ value: UInt64, _ bound: UInt64) -> UInt64 { ~(value &+ (0x7F - bound) &* ones) & high }
        let folded = bytes | (0x20 &* ones)
        let digit = atLeast(bytes, 0x30) & atMost(bytes, 0x39)
        let letter = atLeast(folded, 0x61) & atMost(folded, 0x7A)
        return digit | letter
    }

    func matches(_ scan: Scan) -> Bool {
        for clause in required where !clause.contains(where: { contains($0, scan) }) { return false }
        return !excluded.contains { contains($0, scan) }
    }

    /// Whether the atom's tokens occur at consecutive positions (matches are in position order,
    /// one per position at most).
    func contains(_ atom: [Int], _ scan: Scan) -> Bool {
        let matches = scan.matches
        for start in matches.indices where matches[start].token == atom[0] {
            guard start + atom.count <= matches.count else { return false }
            var whole = true
            for offset in 1..<atom.count {
                let next = matches[start + offset]
                if next.position != matches[start].position + offset || next.token != atom[offset] {
                    whole = false
                    break
                }
            }
            if whole { return true }
        }
        return false
    }

    /// Where the words searched for (not the excluded ones) are in the text (byte ranges).
    func positiveMatches(_ scan: Scan) -> [Range<Int>] {
        scan.matches.compactMap { positive[$0.token] ? $0.range : nil }
    }

    /// Term frequency of each query token in the candidate.
    func frequencies(_ scan: Scan) -> [Int] {
        var counts = [Int](repeating: 0, count: tokens.count)
        for match in scan.matches { counts[match.token] += 1 }
        return counts
    }
}
