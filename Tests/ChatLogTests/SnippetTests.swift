import Foundation
import Testing

@testable import ChatLog

/// Snippet windows start and end on word boundaries in every script.
@Suite struct SnippetTests {
    /// The window of `content` that `snippet` shows, as byte offsets (from its first highlight,
    /// which is the first match).
    private func window(_ snippet: Snippet, content: String, firstMatch: Range<Int>) throws -> Range<Int> {
        let highlight = try #require(snippet.highlights.first)
        let prefix = snippet.text.hasPrefix("…") ? "…".utf8.count : 0
        let suffix = snippet.text.hasSuffix("…") && !content.hasSuffix("…") ? "…".utf8.count : 0
        let highlightOffset = snippet.text.utf8.distance(from: snippet.text.utf8.startIndex, to: highlight.lowerBound)
        let start = firstMatch.lowerBound - (highlightOffset - prefix)
        return start..<(start + snippet.text.utf8.count - prefix - suffix)
    }

    /// Checks that neither end of the window cuts a token, and the window does not start or end
    /// with a space.
    private func checkBoundaries(_ content: String, needle: String, _ context: String) throws {
        let tokens = Tokenizer.tokensWithRanges(content)
        let utf8 = content.utf8
        func offset(_ index: String.Index) -> Int { utf8.distance(from: utf8.startIndex, to: index) }
        let matches = tokens.filter { $0.text == needle }.map { offset($0.range.lowerBound)..<offset($0.range.upperBound) }
        let first = try #require(matches.first, "\(context): no match")
        let snippet = Snippets.make(content: content, matches: matches)
        let window = try window(snippet, content: content, firstMatch: first)
        let body = String(decoding: Array(utf8)[window], as: UTF8.self)
        #expect(snippet.text.contains(body), "\(context): \(snippet.text.debugDescription)")
        for boundary in [window.lowerBound, window.upperBound] {
            let cut = tokens.first { offset($0.range.lowerBound) < boundary && offset($0.range.upperBound) > boundary }
            #expect(cut == nil, "\(context): the window cuts \(cut?.text.debugDescription ?? ""): \(snippet.text.debugDescription)")
        }
        #expect(body.first?.isWhitespace != true && body.last?.isWhitespace != true, "\(context): \(snippet.text.debugDescription)")
        #expect(snippet.text.count <= 2 * Snippets.radius + 2, "\(context): too long")
    }

    @Test func theIssueExamplesStartOnAWord() throws {
        let polish = "Cześć, jak analizować dane w python przy użyciu pandas"
        let hit = Snippets.make(content: polish, matches: [polish.utf8.count - 6..<polish.utf8.count])
        // A message shorter than the window is shown whole.
        #expect(hit.text == polish)
        // A longer one: the rough window starts inside "jak" and moves to the next word.
        let longer = polish + " " + String(repeating: "i dalej tekst ", count: 12)
        let window = Snippets.make(content: longer, matches: [polish.utf8.count - 6..<polish.utf8.count])
        #expect(window.text.hasPrefix("…analizować dane"), "\(window.text.debugDescription)")
        let numbers = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen"
        let content = "Żółć gęślą jaźń zażółć: " + numbers + " needle " + numbers + " " + numbers
        try checkBoundaries(content, needle: "needle", "Polish prefix")
        let snippet = Snippets.make(
            content: content, matches: [content.utf8.count - 2 * numbers.utf8.count - 8..<content.utf8.count - 2 * numbers.utf8.count - 2])
        #expect(!snippet.text.hasPrefix("…teen"), "\(snippet.text.debugDescription)")
    }

    @Test(arguments: [
        ("Polish", "Żółć gęślą jaźń zażółć źdźbło chrząszcz brzmi w trzcinie ", "pandas"),
        ("German", "Größenwahn Straßenbahn überprüfen Fußgängerübergänge Ärger ", "pandas"),
        ("Greek", "Καλημέρα κόσμε, ελληνική γλώσσα σήμερα ", "δεδομένα"),
        ("CJK", "東京都の天気は晴れです。日本語のテキスト", "pandas"),
        ("emoji", "family 👨‍👩‍👧 thumbs👍🏽up flag🇵🇱here ", "pandas"),
        ("combining marks", "e\u{301}te\u{301} nai\u{308}ve Z\u{307}o\u{301}l\u{301}c\u{301} a\u{308}\u{301}b ", "pandas"),
        ("mixed", "Cześć, 東京 Καλημέρα 👍🏽 nai\u{308}ve Straße ", "zażółć"),
    ])
    func windowsStartAndEndOnWords(script: String, filler: String, needle: String) throws {
        // Every shift of the filler puts the window's rough start and end somewhere else.
        let characters = Array(filler)
        for shift in 0..<characters.count {
            let before = String(characters[shift...]) + String(repeating: filler, count: 3)
            let content = before + " " + needle + " " + String(repeating: filler, count: 6)
            try checkBoundaries(content, needle: Tokenizer.tokens(needle)[0], "\(script) shift \(shift)")
        }
    }

    @Test func aSnippetWithoutMatchesEndsOnAWord() {
        let content = String(repeating: "Größenwahn ", count: 40)
        let snippet = Snippets.make(content: content, matches: [])
        #expect(snippet.text.hasSuffix("Größenwahn…"), "\(snippet.text.debugDescription)")
    }
}
