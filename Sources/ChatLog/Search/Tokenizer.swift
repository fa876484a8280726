import Foundation

/// Splits text into search tokens: words of letters, digits and combining marks, each
/// Unicode-normalised with NFKC and lower-cased. Han characters and kana are one token each
/// (CJK text has no spaces; phrase checking after decryption restores order). Everything else —
/// punctuation, symbols, emoji, spaces, control characters — separates tokens.
///
/// The same scanner tokenizes stored content, queries and candidates under verification, so
/// "matches" always means "the same normalised words". It works on UTF-8 bytes: ASCII words are
/// lower-cased in a reused buffer without allocating; only words with non-ASCII characters go
/// through NFKC.
public enum Tokenizer {
    /// Bumped when tokenization changes in a way that changes tokens.
    /// 2: final sigma folds to sigma; a kana or ideograph takes its combining marks (NFD kana);
    /// a mark without a base, variation selectors and the keycap mark separate words.
    static let version = 2

    /// A token with the range of the original text it came from (for snippets).
    public struct Token: Sendable, Hashable {
        public let text: String
        public let range: Range<String.Index>
    }

    public static func tokens(_ text: String) -> [String] {
        var output: [String] = []
        scan(text) { bytes, _ in output.append(String(decoding: bytes, as: UTF8.self)) }
        return output
    }

    public static func tokensWithRanges(_ text: String) -> [Token] {
        var output: [Token] = []
        let utf8 = text.utf8
        scan(text) { bytes, range in
            let lower = utf8.index(utf8.startIndex, offsetBy: range.lowerBound)
            let upper = utf8.index(lower, offsetBy: range.count)
            output.append(Token(text: String(decoding: bytes, as: UTF8.self), range: lower..<upper))
        }
        return output
    }

    /// Calls `body` with each token's normalised UTF-8 bytes (valid only during the call) and
    /// the byte range of the original text it came from.
    static func scan(_ text: String, _ body: (UnsafeBufferPointer<UInt8>, Range<Int>) -> Void) {
        var text = text
        text.withUTF8 { bytes in scan(bytes, body) }
    }

    static func scan(_ bytes: UnsafeBufferPointer<UInt8>, _ body: (UnsafeBufferPointer<UInt8>, Range<Int>) -> Void) {
        // Lower-cased ASCII words go here: a raw buffer, not an array (no uniqueness check or
        // retain per word; this loop runs for every token of every search candidate).
        var capacity = 64
        var scratch = UnsafeMutablePointer<UInt8>.allocate(capacity: capacity)
        defer { scratch.deallocate() }
        var wordStart = -1
        var ascii = true
        var index = 0
        let count = bytes.count

        func flush(_ end: Int) {
            guard wordStart >= 0 else { return }
            let start = wordStart
            wordStart = -1
            if ascii {
                let length = end - start
                if capacity < length {
                    scratch.deallocate()
                    capacity = length
                    scratch = UnsafeMutablePointer<UInt8>.allocate(capacity: capacity)
                }
                for offset in 0..<length {
                    let byte = bytes[start + offset]
                    scratch[offset] = (byte >= 0x41 && byte <= 0x5A) ? byte | 0x20 : byte
                }
                body(UnsafeBufferPointer(start: scratch, count: length), start..<end)
            } else {
                // NFKC may turn one word into several ("½" → "1⁄2") or into ideographs: split again.
                let word = String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<end]), as: UTF8.self)
                var normalized = word.precomposedStringWithCompatibilityMapping
                // Foundation's NFKC can leave a composition undone after a compatibility mapping
                // (halfwidth "ｶﾞ" gives "カ" + U+3099, not "ガ"): compose again if a mark is left.
                if normalized.unicodeScalars.contains(where: isMark) { normalized = normalized.precomposedStringWithCanonicalMapping }
                normalized = normalized.lowercased()
                // Case folding, not just lower-casing: "ΟΔΟΣ" lower-cases to "οδοσ", "οδος" has ς.
                if normalized.unicodeScalars.contains("\u{3C2}") {
                    normalized = String(String.UnicodeScalarView(normalized.unicodeScalars.map { $0 == "\u{3C2}" ? "\u{3C3}" : $0 }))
                }
                normalized.withUTF8 { normalizedBytes in
                    splitNormalized(normalizedBytes) { part in body(part, start..<end) }
                }
            }
        }

        while index < count {
            let byte = bytes[index]
            if byte < 0x80 {
                let isWord = (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                if isWord {
                    if wordStart < 0 {
                        wordStart = index
                        ascii = true
                    }
                } else {
                    flush(index)
                }
                index += 1
                continue
            }
            let (scalar, length) = decode(bytes, at: index)
            if isIdeograph(scalar) {
                // One token, with the marks that follow it: NFD "か" + U+3099 is "が", halfwidth
                // "ｶﾞ" is "ガ".
                flush(index)
                var end = index + length
                while end < count, bytes[end] >= 0x80 {
                    let (next, nextLength) = decode(bytes, at: end)
                    guard (isMark(next) && !isSeparatorMark(next)) || next.value == 0xFF9E || next.value == 0xFF9F else { break }
                    end += nextLength
                }
                wordStart = index
                ascii = false
                flush(end)
                index = end
                continue
            } else if isSeparatorMark(scalar) {
                flush(index)
            } else if isWordScalar(scalar) {
                // A mark with no base (after a space, a symbol, an emoji) starts no word: "=" +
                // U+0338 is "≠", a symbol.
                if wordStart < 0 && !isMark(scalar) { wordStart = index }
                if wordStart >= 0 { ascii = false }
            } else {
                flush(index)
            }
            index += length
        }
        flush(count)
    }

    /// Splits already-normalised text into word runs and single ideographs.
    private static func splitNormalized(_ bytes: UnsafeBufferPointer<UInt8>, _ body: (UnsafeBufferPointer<UInt8>) -> Void) {
        var start = -1
        var index = 0
        while index < bytes.count {
            let (scalar, length) = bytes[index] < 0x80 ? (Unicode.Scalar(bytes[index]), 1) : decode(bytes, at: index)
            if isIdeograph(scalar) {
                if start >= 0 { body(UnsafeBufferPointer(rebasing: bytes[start..<index])) }
                body(UnsafeBufferPointer(rebasing: bytes[index..<(index + length)]))
                start = -1
            } else if isWordScalar(scalar) && !isSeparatorMark(scalar) {
                if start < 0 && !isMark(scalar) { start = index }
            } else {
                if start >= 0 { body(UnsafeBufferPointer(rebasing: bytes[start..<index])) }
                start = -1
            }
            index += length
        }
        if start >= 0 { body(UnsafeBufferPointer(rebasing: bytes[start..<bytes.count])) }
    }

    /// Decodes the UTF-8 sequence at `index` (Swift strings hold valid UTF-8).
    @inline(__always)
    private static func decode(_ bytes: UnsafeBufferPointer<UInt8>, at index: Int) -> (Unicode.Scalar, Int) {
        let lead = UInt32(bytes[index])
        var value: UInt32
        var length: Int
        if lead < 0xE0 {
            value = lead & 0x1F
            length = 2
        } else if lead < 0xF0 {
            value = lead & 0x0F
            length = 3
        } else {
            value = lead & 0x07
            length = 4
        }
        length = min(length, bytes.count - index)
        for offset in 1..<max(1, length) { value = (value << 6) | (UInt32(bytes[index + offset]) & 0x3F) }
        return (Unicode.Scalar(value) ?? "\u{FFFD}", max(1, length))
    }

    static func isWordScalar(_ scalar: Unicode.Scalar) -> Bool {
        let value = scalar.value
        if value < 0x80 {
            return (value >= 0x30 && value <= 0x39) || (value >= 0x41 && value <= 0x5A) || (value >= 0x61 && value <= 0x7A)
        }
        let properties = scalar.properties
        if properties.isAlphabetic { return true }
        switch properties.generalCategory {
        case .decimalNumber, .letterNumber, .otherNumber, .nonspacingMark, .spacingMark, .enclosingMark: return true
        default: return false
        }
    }

    static func isMark(_ scalar: Unicode.Scalar) -> Bool {
        guard scalar.value >= 0x300 else { return false }
        switch scalar.properties.generalCategory {
        case .nonspacingMark, .spacingMark, .enclosingMark: return true
        default: return false
        }
    }

    /// Marks that only select a presentation (emoji or text style, ideographic variants) or
    /// make a keycap emoji: they separate words instead of joining them.
    static func isSeparatorMark(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0xFE00...0xFE0F, 0xE0100...0xE01EF, 0x20E3: return true
        default: return false
        }
    }

    /// Han ideographs and Japanese kana: one token per character.
    static func isIdeograph(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x3040...0x30FF,  // Hiragana, Katakana
            0x31F0...0x31FF,  // Katakana phonetic extensions
            0x3400...0x4DBF,  // CJK Extension A
            0x4E00...0x9FFF,  // CJK Unified Ideographs
            0xF900...0xFAFF,  // CJK Compatibility Ideographs
            0xFF66...0xFF9F,  // Halfwidth Katakana
            0x20000...0x323AF:  // CJK Extensions B–H
            return true
        default:
            return false
        }
    }
}
