import Foundation
import Testing

@testable import ChatLog

/// The tokenizer is the definition of "word" for search: stored content, queries and the
/// verification of candidates all go through it. Tokens are compared scalar by scalar here,
/// because Swift's `==` on strings already treats canonically equivalent strings as equal and
/// would hide a missing normalisation (the index blinds the UTF-8 bytes, not Characters).
@Suite struct TokenizerTests {
    /// Tokens as arrays of scalar values: equality that does not forgive a missing NFKC.
    private func scalars(_ text: String) -> [[UInt32]] {
        Tokenizer.tokens(text).map { $0.unicodeScalars.map(\.value) }
    }

    private func scalars(_ tokens: [String]) -> [[UInt32]] {
        tokens.map { $0.unicodeScalars.map(\.value) }
    }

    // MARK: - Words, case, punctuation

    @Test func asciiWordsAreLowerCasedAndPunctuationSplitsThem() {
        #expect(Tokenizer.tokens("Hello, World! It's an E-mail_v2.0 (test); x/y: OK?") ==
            ["hello", "world", "it", "s", "an", "e", "mail", "v2", "0", "test", "x", "y", "ok"])
        #expect(Tokenizer.tokens("  \t\n ") == [])
        #expect(Tokenizer.tokens("...!!!???---___") == [])
        #expect(Tokenizer.tokens("a\u{0}b\u{1}c\u{7F}d") == ["a", "b", "c", "d"])
        #expect(Tokenizer.tokens("\"quoted\" 'single' [brackets] {braces} <angle> back\\slash") ==
            ["quoted", "single", "brackets", "braces", "angle", "back", "slash"])
        #expect(Tokenizer.tokens("MiXeD CaSe WORDS") == ["mixed", "case", "words"])
    }

    @Test func digitsAreWordCharacters() {
        #expect(Tokenizer.tokens("2024-05-01 v1.2 1,000,000 abc123def 42") ==
            ["2024", "05", "01", "v1", "2", "1", "000", "000", "abc123def", "42"])
        // Other scripts' digits are digits too (not ASCII, so they go through NFKC).
        #expect(Tokenizer.tokens("٣٤ ४२") == ["٣٤", "४२"])
        // Compatibility digits fold to ASCII: fullwidth, superscript.
        #expect(Tokenizer.tokens("１２３ x² H₂O") == ["123", "x2", "h2o"])
        // NFKC can split a word: ½ is 1⁄2 (fraction slash separates).
        #expect(Tokenizer.tokens("½") == ["1", "2"])
    }

    // MARK: - NFKC

    @Test func composedDecomposedAndCasedFormsAreTheSameToken() {
        let expected = scalars(["caf\u{E9}"])
        for form in ["Café", "café", "cafe\u{301}", "CAFÉ", "CAFE\u{301}", "Cafe\u{301}", "c\u{41}f\u{C9}"] {
            #expect(scalars(form) == expected, "form \(form.unicodeScalars.map { String($0.value, radix: 16) })")
        }
        // Inside longer text, and with several marks in non-canonical order.
        #expect(scalars("Le cafe\u{301} est nai\u{308}ve") == scalars(["le", "caf\u{E9}", "est", "na\u{EF}ve"]))
        #expect(scalars("a\u{323}\u{307}") == scalars("a\u{307}\u{323}"))  // canonical reordering
        #expect(scalars("a\u{323}\u{307}") == scalars("\u{1EA1}\u{307}"))
        // Hangul: conjoining jamo compose.
        #expect(scalars("\u{1112}\u{1161}\u{11AB}\u{1100}\u{1173}\u{11AF}") == scalars("한글"))
        #expect(Tokenizer.tokens("한글 텍스트") == ["한글", "텍스트"])
    }

    @Test func compatibilityFormsFold() {
        #expect(Tokenizer.tokens("ＡＢＣ") == ["abc"])
        #expect(Tokenizer.tokens("ａｂｃ ＡＢＣｄｅｆ") == ["abc", "abcdef"])
        #expect(Tokenizer.tokens("ﬁle") == ["file"])
        #expect(Tokenizer.tokens("ﬃx ﬂow ﬀ") == ["ffix", "flow", "ff"])
        #expect(Tokenizer.tokens("\u{212A}elvin") == ["kelvin"])  // KELVIN SIGN
        #expect(Tokenizer.tokens("ℌello") == ["hello"])
        #expect(Tokenizer.tokens("Ⅻ") == ["xii"])  // ROMAN NUMERAL TWELVE (a letter number)
        // Halfwidth katakana and its voiced mark compose like the fullwidth form.
        #expect(scalars("ｶﾞ") == scalars("ガ"))
        #expect(scalars("ﾊﾟﾝ") == scalars("パン"))
        #expect(scalars("ｅ\u{301}") == scalars("é"))  // fullwidth e + combining acute
    }

    @Test func tokensAreAFixedPointOfTheTokenizer() {
        // Re-tokenizing a token gives the token: a query built from stored tokens finds them.
        let samples = ["Café au LAIT", "ﬁle ＡＢＣ", "ΚΑΛΗΜΈΡΑ κόσμε", "ПРИВЕТ мир", "東京タワー", "x² ½", "nai\u{308}ve",
            "ΟΔΟΣ", "Straße STRASSE", "İstanbul"]
        for sample in samples {
            for token in Tokenizer.tokens(sample) {
                #expect(scalars(token) == scalars([token]), "token \(token) of \(sample)")
            }
        }
    }

    // MARK: - Case folding beyond ASCII

    @Test func cyrillicFoldsCase() {
        #expect(Tokenizer.tokens("ПРИВЕТ Привет привет") == ["привет", "привет", "привет"])
        #expect(scalars("ЁЖИК") == scalars("ёжик"))
        #expect(scalars("Е\u{308}ЖИК") == scalars("ёжик"))  // decomposed Ё
        #expect(Tokenizer.tokens("Москва, Россия!") == ["москва", "россия"])
    }

    @Test func greekFoldsCase() {
        #expect(scalars("ΚΑΛΗΜΕΡΑ") == scalars("καλημερα"))
        #expect(scalars("ΑΘΉΝΑ") == scalars("Αθήνα"))
        #expect(scalars("Α\u{301}ΘΗΝΑ") == scalars("άθηνα"))  // decomposed tonos
        // Final sigma: the upper-case word has no final form, so lower-casing alone gives σ
        // where the lower-case word has ς. Folding must make them the same word.
        #expect(scalars("ΟΔΟΣ") == scalars("οδος"))
        #expect(scalars("Λόγος") == scalars("ΛΌΓΟΣ"))
        #expect(scalars("ΚΌΣΜΟΣ κόσμος Κόσμος") == scalars("κόσμος κόσμος κόσμος"))
    }

    // MARK: - CJK

    @Test func hanAndKanaAreOneTokenPerCharacter() {
        #expect(Tokenizer.tokens("東京") == ["東", "京"])
        #expect(Tokenizer.tokens("日本語のテキスト") == ["日", "本", "語", "の", "テ", "キ", "ス", "ト"])
        #expect(Tokenizer.tokens("中文abc漢字123") == ["中", "文", "abc", "漢", "字", "123"])
        #expect(Tokenizer.tokens("北京，上海。") == ["北", "京", "上", "海"])  // fullwidth punctuation separates
        // CJK compatibility ideograph folds to the unified one.
        #expect(scalars("\u{F900}") == scalars("\u{8C48}"))
        // Extension B (outside the BMP).
        #expect(Tokenizer.tokens("𠀀𠀁") == ["𠀀", "𠀁"])
        // Kana with a combining voiced mark is the same as the precomposed kana (NFD text).
        #expect(scalars("か\u{3099}") == scalars("が"))
        #expect(scalars("ハ\u{309A}ン") == scalars("パン"))
        #expect(scalars("カ\u{3099}ラス") == ["ガ", "ラ", "ス"].map { $0.unicodeScalars.map(\.value) })
    }

    // MARK: - Emoji and symbols

    @Test func emojiSeparateWords() {
        #expect(Tokenizer.tokens("good🙂day") == ["good", "day"])
        #expect(Tokenizer.tokens("🚀launch🚀") == ["launch"])
        #expect(Tokenizer.tokens("thumbs👍🏽up") == ["thumbs", "up"])  // skin-tone modifier
        #expect(Tokenizer.tokens("family👨‍👩‍👧time") == ["family", "time"])  // ZWJ sequence
        #expect(Tokenizer.tokens("go🇫🇷now") == ["go", "now"])  // flag
        // Emoji with the emoji-presentation selector (U+FE0F, a combining mark) next to words.
        #expect(Tokenizer.tokens("I ❤️ cats") == ["i", "cats"])
        #expect(Tokenizer.tokens("I❤️cats") == ["i", "cats"])
        #expect(Tokenizer.tokens("❤️cats") == ["cats"])
        #expect(Tokenizer.tokens("cats❤️") == ["cats"])
        #expect(Tokenizer.tokens("☺︎ok✔️done") == ["ok", "done"])
        #expect(Tokenizer.tokens("🙂🙂🙂") == [])
        #expect(Tokenizer.tokens("€100 $5 ±3 ©2024 → ∑") == ["100", "5", "3", "2024"])
    }

    @Test func markWithoutABaseIsNotAWord() {
        // A combining mark after a separator is not a word of its own: "≠" and its canonical
        // decomposition "=\u{338}" must tokenize alike.
        #expect(Tokenizer.tokens("a ≠ b") == Tokenizer.tokens("a =\u{338} b"))
        #expect(Tokenizer.tokens("\u{301}") == [])
    }

    // MARK: - Ranges

    @Test func rangesPointAtTheWordsInTheOriginalText() {
        let text = "Café ＡＢＣ, ﬁle! 東京 cafe\u{301}🙂ok ΟΔΟΣ"
        let tokens = Tokenizer.tokensWithRanges(text)
        #expect(tokens.map(\.text) == Tokenizer.tokens(text))
        let originals = tokens.map { String(text.unicodeScalars[$0.range]) }
        #expect(originals.map { $0.unicodeScalars.map(\.value) } == [
            "Café", "ＡＢＣ", "ﬁle", "東", "京", "cafe\u{301}", "ok", "ΟΔΟΣ",
        ].map { $0.unicodeScalars.map(\.value) })
        // Each range re-tokenizes to its token.
        for token in tokens {
            #expect(Tokenizer.tokens(String(text.unicodeScalars[token.range])).contains(token.text))
        }
    }

    @Test func canonicallyEquivalentTextsTokenizeAlike() {
        // Property over a mix of scripts: NFC, NFD, NFKC and NFKD inputs give the same tokens.
        let texts = [
            "Crème brûlée à la façade, jalapeño señor Zürich Ærø smørrebrød",
            "ΚΑΛΗΜΈΡΑ Αθήνα ψυχή ΆΝΘΡΩΠΟΣ", "Ёжик в тумане, ЙОД и йод",
            "がぎぐげご パピプペポ ゔ", "한국어 텍스트", "Tiếng Việt có dấu", "ǅungla ǈ ǋ",
        ]
        for text in texts {
            let expected = scalars(text)
            #expect(!expected.isEmpty)
            for form in [text.decomposedStringWithCanonicalMapping, text.precomposedStringWithCanonicalMapping,
                text.decomposedStringWithCompatibilityMapping, text.precomposedStringWithCompatibilityMapping]
            {
                #expect(scalars(form) == expected, "\(text)")
            }
        }
    }
}
