import Foundation
import Testing

@testable import ChatLog

/// Relevance ranking checks candidates with `QueryMatcher.asciiScan` (no tokenizing) when their
/// text is pure ASCII, and with the tokenizer-based `scan` otherwise. Both must give the same
/// scan — token count, matches, positions, ranges — or ranking and verification would depend on
/// which path a message took.
@Suite struct QueryMatcherTests {
    /// Both paths on `text` for `query`: equal scans, equal verdicts.
    private func expectSameScan(_ query: String, _ text: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let matcher = QueryMatcher(try SearchQuery(parsing: query))
        var copy = text
        let fast = copy.withUTF8 { matcher.asciiScan(utf8: $0) }
        let slow = matcher.scan(text)
        guard let fast else {
            Issue.record("asciiScan refused ASCII text \(text.debugDescription)", sourceLocation: sourceLocation)
            return
        }
        #expect(fast.tokenCount == slow.tokenCount, "token count for \(query.debugDescription) in \(text.debugDescription)", sourceLocation: sourceLocation)
        #expect(fast.matches.map(\.position) == slow.matches.map(\.position), "positions for \(query.debugDescription) in \(text.debugDescription)", sourceLocation: sourceLocation)
        #expect(fast.matches.map(\.token) == slow.matches.map(\.token), "tokens for \(query.debugDescription) in \(text.debugDescription)", sourceLocation: sourceLocation)
        #expect(fast.matches.map(\.range) == slow.matches.map(\.range), "ranges for \(query.debugDescription) in \(text.debugDescription)", sourceLocation: sourceLocation)
        #expect(matcher.matches(fast) == matcher.matches(slow), sourceLocation: sourceLocation)
        #expect(matcher.frequencies(fast) == matcher.frequencies(slow), sourceLocation: sourceLocation)
    }

    @Test func handPickedCases() throws {
        try expectSameScan("refund", "Refund REFUND refund, refunds prefund refund")
        try expectSameScan("\"charged twice\"", "I was CHARGED twice. charged  --  twice! charged x twice")
        try expectSameScan("a1 -b2", "a1b2 a1 b2 A1,B2")
        try expectSameScan("x", "x")
        try expectSameScan("x", "")
        try expectSameScan("x", "  ...  ")
        try expectSameScan("end", "the end")
        try expectSameScan("start", "start of it")
        try expectSameScan("café tea", "cafe tea cafe")  // a non-ASCII query word never occurs in ASCII text
        try expectSameScan("ﬁle", "file FILE profile")  // the query is NFKC-folded: "ﬁle" is "file"
        try expectSameScan("a OR b", "b a b a")
        try expectSameScan("\"a a\"", "a a a a")
        try expectSameScan("\"a b a\"", "a b b a b a")
        try expectSameScan("tab", "tab\ttab\ntab\u{0}tab\u{7F}tab")
    }

    @Test func nonASCIITextIsLeftToTheTokenizer() throws {
        let matcher = QueryMatcher(try SearchQuery(parsing: "cafe"))
        for text in ["café", "cafe\u{301}", "ｃａｆｅ", "cafe 😀", "naïve cafe"] {
            var copy = text
            #expect(copy.withUTF8 { matcher.asciiScan(utf8: $0) } == nil, "\(text)")
        }
    }

    /// Random ASCII texts over a small alphabet (so words repeat and abut in every way), random
    /// one- to three-word queries with phrases, exclusions and OR.
    @Test func randomTextsAndQueriesAgree() throws {
        var random = SeededRandom(seed: 0xA5C11)
        let words = ["a", "b", "ab", "ba", "abc", "A", "B", "AB", "x1", "1", "10", "Ab", "aB"]
        let separators = [" ", "  ", ",", ".", "-", "_", "'", "\n", "\t", "\u{0}", "/", "@", "[", "`", "{", "~", ""]
        var trials = 0
        for _ in 0..<3_000 {
            var text = random.chance(20) ? random.pick(separators) : ""
            for _ in 0..<random.below(25) {
                text += random.pick(words) + random.pick(separators)
            }
            let lowered = words.map { $0.lowercased() }
            var parts: [String] = []
            for index in 0..<(1 + random.below(3)) {
                let word = random.pick(lowered)
                switch random.below(5) {
                case 0 where index > 0: parts.append("-" + word)
                case 1: parts.append("\"\(word) \(random.pick(lowered))\"")
                case 2 where index > 0: parts.append("OR \(word)")
                default: parts.append(word)
                }
            }
            guard let query = try? SearchQuery(parsing: parts.joined(separator: " ")) else { continue }
            _ = query
            try expectSameScan(parts.joined(separator: " "), text)
            trials += 1
        }
        #expect(trials > 2_500)
    }

    /// Ranking's counting path (`rankingCounts`: no positions, no per-match allocation) gives the
    /// scan's verdict, frequencies and token count, and declines phrases and non-ASCII text.
    private func expectSameCounts(_ query: String, _ text: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let parsed = try SearchQuery(parsing: query)
        let matcher = QueryMatcher(parsed)
        var copy = text
        let counts = copy.withUTF8 { matcher.rankingCounts(utf8: $0) }
        let scan = matcher.scan(text)
        let hasPhrase = matcher.required.contains { $0.contains { $0.count > 1 } } || matcher.excluded.contains { $0.count > 1 }
        guard !hasPhrase, !text.isEmpty, text.utf8.allSatisfy({ $0 < 0x80 }) else {
            #expect(counts == nil, "rankingCounts accepted \(query.debugDescription) on \(text.debugDescription)", sourceLocation: sourceLocation)
            return
        }
        guard let counts else {
            Issue.record("rankingCounts declined \(query.debugDescription) on \(text.debugDescription)", sourceLocation: sourceLocation)
            return
        }
        #expect(counts.matches == matcher.matches(scan), "verdict for \(query.debugDescription) in \(text.debugDescription)", sourceLocation: sourceLocation)
        #expect(counts.frequencies == matcher.frequencies(scan), "frequencies for \(query.debugDescription) in \(text.debugDescription)", sourceLocation: sourceLocation)
        #expect(counts.length == scan.tokenCount, "length for \(query.debugDescription) in \(text.debugDescription)", sourceLocation: sourceLocation)
    }

    @Test func rankingCountsAgreeWithTheScan() throws {
        try expectSameCounts("refund", "Refund REFUND refund, refunds prefund refund")
        try expectSameCounts("i", "I think i said: I/O is fine, i.e. iii I")
        try expectSameCounts("a1 -b2", "a1b2 a1 b2 A1,B2")
        try expectSameCounts("a OR b -c", "b a b a c")
        try expectSameCounts("\"charged twice\"", "I was charged twice")  // a phrase: declined
        try expectSameCounts("cafe", "naïve cafe")  // non-ASCII text: declined
        try expectSameCounts("café tea", "cafe tea")  // a non-ASCII query word never occurs in ASCII text
        try expectSameCounts("x", "")
        // Words longer than a 16-byte block, and matches at every offset of the blocks.
        try expectSameCounts("abcdefghijklmnopqrstu", String(repeating: "abcdefghijklmnopqrstu ", count: 5) + "xabcdefghijklmnopqrstu")
        for padding in 0..<40 {
            try expectSameCounts("ab", String(repeating: " ", count: padding) + "ab AB aB abab ab")
        }
        var random = SeededRandom(seed: 0x5C0_7E)
        let words = ["a", "b", "ab", "ba", "abc", "A", "B", "AB", "x1", "1", "10", "Ab", "aB", "bab", "abcabcabcabcabcabc"]
        let separators = [" ", "  ", ",", ".", "-", "_", "'", "\n", "\t", "\u{0}", "/", "@", "[", "`", "{", "~", "", "é"]
        var trials = 0
        for _ in 0..<3_000 {
            var text = random.chance(20) ? random.pick(separators) : ""
            for _ in 0..<random.below(40) { text += random.pick(words) + random.pick(separators) }
            let lowered = words.map { $0.lowercased() }
            var parts: [String] = []
            for index in 0..<(1 + random.below(3)) {
                let word = random.pick(lowered)
                switch random.below(6) {
                case 0 where index > 0: parts.append("-" + word)
                case 1: parts.append("\"\(word) \(random.pick(lowered))\"")
                case 2 where index > 0: parts.append("OR \(word)")
                default: parts.append(word)
                }
            }
            guard (try? SearchQuery(parsing: parts.joined(separator: " "))) != nil else { continue }
            try expectSameCounts(parts.joined(separator: " "), text)
            trials += 1
        }
        #expect(trials > 2_500)
    }
}
