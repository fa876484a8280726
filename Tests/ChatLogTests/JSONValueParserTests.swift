import Foundation
import Testing

@testable import ChatLog

/// `JSONValue.parse` (byte by byte, used by the openai-jsonl reader and for sealed metadata) reads
/// exactly what `JSONDecoder().decode(JSONValue.self, …)` reads: the same value, or a failure for
/// both, on chosen edge cases, on random documents and on random damage to them.
@Suite struct JSONValueParserTests {
    static func decoder(_ bytes: [UInt8]) -> JSONValue? { try? JSONDecoder().decode(JSONValue.self, from: Data(bytes)) }
    static func parser(_ bytes: [UInt8]) -> JSONValue? { JSONValue.parse(Data(bytes)) }

    @Test func edgeCasesAsJSONDecoderReadsThem() {
        let cases = [
            "1", "1.0", "1.5", "-0", "-0.0", "1e2", "1E+2", "1e400", "-1e400", "1e-400", "12345678901234567890",
            "9223372036854775807", "9223372036854775808", "-9223372036854775808", "-9223372036854775809",
            "9223372036854775807.0", "2.0000000000000000001", "01", "-01", "1.", ".5", "+1", "0x10", "NaN", "-", "1e",
            "1e+", "[00]", "[-0]", "5e-324", "0.30000000000000004", "1.7976931348623157e309", "18446744073709551616",
            "true", "false", "null", "tru", "nulll", #""a\u0041""#, #""\ud83d\ude00""#, #""\uDBFF\uDFFF""#, #""\ud83d""#,
            #""\ude00x""#, #""\uD800\u0041""#, #""\u0000""#, "\"tab\there\"", "\"nl\nhere\"", #""\/""#, #""\x""#,
            #""\U0041""#, #""\u004g""#, #""\u00""#, #""\b\f\n\r\t\"\\""#, "\"é\u{2028}\u{7F}\"", #"{"a":1,"a":2}"#,
            "[1,]", #"{"a":1,}"#, "[,]", "[1,,2]", "{,}", #"{"a":1,,}"#, " [1] ", "[1] x", "[1]\n", "[1]\0", "{}", "[]",
            "\u{FEFF}[1]", "\u{FEFF}\u{FEFF}[1]", "[1]\u{FEFF}", "\u{FEFF}", "", "  ", "/*c*/[1]", "[\u{0C}1]",
            "[\u{A0}1]", "[\r\n\t1]", "[1 2]", #"{"a" 1}"#, "{a:1}", "'a'", #"{"a":}"#, #"{"a"}"#, #"{"a":1 "b":2}"#,
            "{1:2}", #"{"":1}"#, #"{"a":{"b":[1,{"c":null}]}}"#, "[true false]", "123456789012345678901234567890.5",
            "1" + String(repeating: "0", count: 400), "0." + String(repeating: "0", count: 400) + "1",
            String(repeating: "[", count: 512) + String(repeating: "]", count: 512),
            String(repeating: "[", count: 513) + String(repeating: "]", count: 513),
            String(repeating: #"{"a":"#, count: 512) + "1" + String(repeating: "}", count: 512),
            String(repeating: #"{"a":"#, count: 513) + "1" + String(repeating: "}", count: 513),
        ]
        for text in cases {
            let bytes = Array(text.utf8)
            #expect(Self.parser(bytes) == Self.decoder(bytes), "\(text.prefix(60).debugDescription)")
        }
        for bytes: [UInt8] in [[0x22, 0xFF, 0x22], [0x22, 0xC3, 0x22], [0x5B, 0x31, 0x5D, 0x80], [0x22, 0xED, 0xA0, 0x80, 0x22]] {
            #expect(Self.parser(bytes) == nil && Self.decoder(bytes) == nil, "\(bytes)")
        }
    }

    @Test func utf8Only() {
        #expect(Self.decoder(Array("\u{0}3".utf8)) == .integer(3))
        #expect(Self.parser(Array("\u{0}3".utf8)) == nil)
        let utf16 = Array("[1]".utf16).flatMap { [UInt8($0 >> 8), UInt8($0 & 0xFF)] }
        #expect(Self.parser(utf16) == nil)
    }

    static func randomNumber(_ rng: inout SeededRandom) -> String {
        switch rng.below(8) {
        case 0: return String(Int64(bitPattern: rng.next()))
        case 1: return String(rng.below(1000) - 500)
        case 2: return String(Double(bitPattern: rng.next() & 0x7FEF_FFFF_FFFF_FFFF) * (rng.chance(50) ? 1 : -1))
        case 3: return "\(rng.below(100)).\(rng.below(1000))"
        case 4: return "\(rng.chance(30) ? "-" : "")\(rng.below(10))\(rng.chance(50) ? ".\(rng.below(100))" : "")\(rng.pick(["e", "E"]))\(rng.pick(["", "+", "-"]))\(rng.below(400))"
        case 5: return (0..<(1 + rng.below(30))).map { _ in String(rng.below(10)) }.joined().replacingOccurrences(of: "^0+(?=.)", with: "", options: .regularExpression)
        case 6: return rng.pick(["0", "-0", "0.0", "1.0", "-1.0", "1e0", "9223372036854775807", "-9223372036854775808", "9223372036854775808", "1e19", "1e18", "0.5e1"])
        default: return String(Double(rng.below(1 << 20)) / Double(1 << rng.below(20)))
        }
    }

    static func randomString(_ rng: inout SeededRandom) -> String {
        var out = "\""
        for _ in 0..<rng.below(12) {
            switch rng.below(10) {
            case 0: out += rng.pick([#"\""#, #"\\"#, #"\/"#, #"\b"#, #"\f"#, #"\n"#, #"\r"#, #"\t"#])
            case 1: out += String(format: "\\u%04x", rng.below(0xD800))
            case 2:
                let scalar = 0x10000 + rng.below(0x100000)
                out += String(format: "\\u%04X\\u%04X", 0xD800 + ((scalar - 0x10000) >> 10), 0xDC00 + ((scalar - 0x10000) & 0x3FF))
            case 3: out += rng.pick(["é", "日本", "😀", "\u{2028}", "\u{7F}", "ß"])
            default: out += String(UnicodeScalar(UInt8(0x20 + rng.below(0x5F))))
                .replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            }
        }
        return out + "\""
    }

    static func randomValue(_ rng: inout SeededRandom, depth: Int) -> String {
        func space(_ rng: inout SeededRandom) -> String { rng.chance(80) ? "" : rng.pick([" ", "\n", "\t", "\r\n ", "  "]) }
        switch depth > 4 ? rng.below(5) : rng.below(7) {
        case 0: return randomNumber(&rng)
        case 1: return randomString(&rng)
        case 2: return rng.pick(["true", "false", "null"])
        case 3, 4: return randomNumber(&rng)
        case 5:
            let items = (0..<rng.below(5)).map { _ in space(&rng) + randomValue(&rng, depth: depth + 1) + space(&rng) }
            return "[" + items.joined(separator: ",") + (items.isEmpty || rng.chance(90) ? "" : ",") + "]"
        default:
            var keys = (0..<rng.below(5)).map { _ in randomString(&rng) }
            if !keys.isEmpty && rng.chance(15) { keys.append(keys[0]) }  // a duplicate key
            let fields = keys.map { space(&rng) + $0 + space(&rng) + ":" + space(&rng) + randomValue(&rng, depth: depth + 1) }
            return "{" + fields.joined(separator: ",") + (fields.isEmpty || rng.chance(90) ? "" : ",") + "}"
        }
    }

    @Test func randomDocumentsAndDamageAgainstJSONDecoder() {
        var rng = SeededRandom(seed: 0x150A)
        var valid = 0
        // No NUL bytes: JSONDecoder takes text with NULs in some places for UTF-16 or UTF-32
        // (`"\u{0}3"` is 3 to it); the parser reads UTF-8 only (`utf8Only`).
        let damage = Array("{}[],:\"\\-+.eE0123456789 \ntrufalsnx".utf8)
        for round in 0..<20_000 {
            var bytes = Array(Self.randomValue(&rng, depth: 0).utf8)
            if round % 2 == 1 {
                for _ in 0...rng.below(3) {
                    let position = rng.below(bytes.count + 1)
                    switch rng.below(4) {
                    case 0 where position < bytes.count: bytes[position] = rng.chance(90) ? rng.pick(damage) : UInt8(1 + rng.below(255))
                    case 1: bytes.insert(rng.pick(damage), at: position)
                    case 2 where position < bytes.count: bytes.remove(at: position)
                    default: bytes = Array(bytes.prefix(position))
                    }
                }
            }
            let expected = Self.decoder(bytes)
            if expected != nil { valid += 1 }
            #expect(Self.parser(bytes) == expected, "\(String(decoding: bytes, as: UTF8.self).debugDescription)")
        }
        #expect(valid > 10_000)
    }
}
