/// A parsed query compiled for checking decrypted candidates quickly: its distinct tokens as
/// bytes, each atom as a sequence of token numbers. Scanning a candidate marks, for each of its
/// tokens, which query token it is (or none) by comparing normalised bytes — exact, with no
/// hashing that could collide.
struct QueryMatcher: Sendable {
    let tokens: [[UInt8]]
    /// Required clauses: each an OR of atoms (sequences of token numbers).
    let required: [[[Int]]]
    let excluded: [[Int]]
    /// Whether each token is in a required atom (and not only in excluded ones): only those are
    /// highlighted and ranked.
    let positive: [Bool]

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
        var positive = [Bool](repeating: false, count: tokens.count)
        for clause in required { for atom in clause { for token in atom { positive[token] = true } } }
        self.positive = positive
    }

    /// One candidate, scanned: which query token each of its tokens is (-1: none), and where the
    /// matched ones are in the original text (byte offsets).
    struct Scan {
        var marks: [Int8] = []
        var matches: [(position: Int, range: Range<Int>)] = []
        var tokenCount: Int { marks.count }
    }

    func scan(_ text: String) -> Scan {
        var text = text
        return text.withUTF8 { scan(utf8: $0) }
    }

    /// Scans UTF-8 bytes (authenticated plaintext: valid UTF-8 by construction).
    func scan(utf8 text: UnsafeBufferPointer<UInt8>) -> Scan {
        var result = Scan()
        result.marks.reserveCapacity(text.count / 5)
        Tokenizer.scan(text) { bytes, range in
            var mark: Int8 = -1
            for (index, token) in tokens.enumerated() where token.count == bytes.count && token.first == bytes.first {
                if token.withUnsafeBufferPointer({ $0.elementsEqual(bytes) }) {
                    mark = Int8(index)
                    break
                }
            }
            if mark >= 0 { result.matches.append((result.marks.count, range)) }
            result.marks.append(mark)
        }
        return result
    }

    func matches(_ scan: Scan) -> Bool {
        for clause in required where !clause.contains(where: { contains($0, scan) }) { return false }
        return !excluded.contains { contains($0, scan) }
    }

    func contains(_ atom: [Int], _ scan: Scan) -> Bool {
        let first = Int8(atom[0])
        for (position, _) in scan.matches where scan.marks[position] == first {
            guard position + atom.count <= scan.marks.count else { return false }
            var whole = true
            for offset in 1..<atom.count where scan.marks[position + offset] != Int8(atom[offset]) {
                whole = false
                break
            }
            if whole { return true }
        }
        return false
    }

    /// Where the words searched for (not the excluded ones) are in the text (byte ranges).
    func positiveMatches(_ scan: Scan) -> [Range<Int>] {
        scan.matches.compactMap { positive[Int(scan.marks[$0.position])] ? $0.range : nil }
    }

    /// Term frequency of each query token in the candidate.
    func frequencies(_ scan: Scan) -> [Int] {
        var counts = [Int](repeating: 0, count: tokens.count)
        for (position, _) in scan.matches { counts[Int(scan.marks[position])] += 1 }
        return counts
    }
}
