import Foundation
import Testing

@testable import ChatLog

#if canImport(Glibc)
    import Glibc
#endif

/// `Timestamps.parse` and `format` (hand-written RFC 3339) against references that share none of
/// their code: the C library's `timegm` for values, `gmtime_r` for printing, Foundation's
/// `ISO8601DateFormatter` for the canonical forms, and a regular expression for the grammar.
@Suite struct TimestampsTests {
    /// What a timestamp text means, by the grammar and the C library's proleptic Gregorian calendar
    /// (`timegm`, a date being valid when `gmtime_r` gives back the same fields): milliseconds, or nil.
    static func reference(_ text: String) -> Int64? {
        let pattern = #"^([0-9]{4,5})-([0-9]{2})-([0-9]{2})(?:[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:[.,]([0-9]+))?(?:([Zz])|([+-])([0-9]{2})(?::?([0-9]{2}))?))?$"#
        let expression = try! NSRegularExpression(pattern: pattern)
        let range = NSRange(text.startIndex..., in: text)
        guard let match = expression.firstMatch(in: text, range: range) else { return nil }
        func group(_ index: Int) -> String? {
            let found = match.range(at: index)
            guard found.location != NSNotFound, let range = Range(found, in: text) else { return nil }
            return String(text[range])
        }
        func number(_ index: Int) -> Int { group(index).map { Int($0)! } ?? 0 }
        let (year, month, day) = (number(1), number(2), number(3))
        let (hour, minute, second) = (number(4), number(5), number(6))
        guard (1...12).contains(month), hour < 24, minute < 60, second <= 60 else { return nil }
        var fields = tm()
        (fields.tm_year, fields.tm_mon, fields.tm_mday) = (Int32(year - 1900), Int32(month - 1), Int32(day))
        var midnight = timegm(&fields)
        var back = tm()
        gmtime_r(&midnight, &back)
        guard back.tm_year == Int32(year - 1900), back.tm_mon == Int32(month - 1), back.tm_mday == Int32(day) else { return nil }
        let fraction = group(7).map { String(($0 + "000").prefix(3)) }.map { Int64($0)! } ?? 0
        var offset: Int64 = 0
        if let sign = group(9) {
            let (hours, minutes) = (number(10), number(11))
            guard hours < 24, minutes < 60 else { return nil }
            offset = (sign == "-" ? -1 : 1) * Int64(hours * 60 + minutes)
        }
        let seconds = Int64(midnight) + Int64(hour * 3600 + minute * 60 + second) - offset * 60
        return seconds * 1000 + fraction
    }

    /// The printer before this rewrite: `gmtime_r` and zero padding.
    static func referenceFormat(_ milliseconds: Int64) -> String {
        let fraction = ((milliseconds % 1000) + 1000) % 1000
        var seconds = time_t((milliseconds - fraction) / 1000)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        return String(
            format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", parts.tm_year + 1900, parts.tm_mon + 1, parts.tm_mday,
            parts.tm_hour, parts.tm_min, parts.tm_sec, Int32(fraction))
    }

    /// A random valid timestamp in one of the accepted spellings, and its value.
    static func randomTimestamp(_ rng: inout SeededRandom) -> (text: String, milliseconds: Int64, canonical: Bool) {
        // Years 0001–9999 and a few past it.
        let span: Int64 = 253_402_300_800_000 + 62_135_596_800_000
        var milliseconds = Int64(rng.below(Int(span))) - 62_135_596_800_000
        if rng.chance(2) { milliseconds = 253_402_300_800_000 + Int64(rng.below(1 << 40)) }
        let digits = rng.pick([0, 0, 1, 2, 3, 3, 3, 4, 6, 9])
        if digits < 3 {
            let unit = Int64([1000, 100, 10][digits])
            milliseconds -= ((milliseconds % unit) + unit) % unit
        }
        let offsetMinutes = rng.chance(50) ? 0 : (rng.chance(50) ? -1 : 1) * Int64(rng.below(24 * 60))
        let local = milliseconds + offsetMinutes * 60_000
        var text = String(referenceFormat(local).dropLast(5))  // through the seconds
        let fraction = ((local % 1000) + 1000) % 1000
        if digits > 0 {
            let three = String(format: "%03d", Int(fraction))
            let extra = (0..<max(0, digits - 3)).map { _ in String(rng.below(10)) }.joined()
            text += (rng.chance(90) ? "." : ",") + String((three + extra).prefix(digits))
        }
        let separator = rng.pick(["T", "T", "T", "t", " "])
        text = text.replacingOccurrences(of: "T", with: separator)
        let zone: String
        if offsetMinutes == 0 && rng.chance(70) {
            zone = rng.chance(90) ? "Z" : "z"
        } else {
            let sign = offsetMinutes < 0 ? "-" : "+"
            let (hours, minutes) = (abs(offsetMinutes) / 60, abs(offsetMinutes) % 60)
            let (hh, mm) = (String(format: "%02d", Int(hours)), String(format: "%02d", Int(minutes)))
            switch minutes == 0 ? rng.below(3) : rng.below(2) {
            case 0: zone = sign + hh + ":" + mm
            case 1: zone = sign + hh + mm
            default: zone = sign + hh
            }
        }
        let canonical = separator == "T" && digits == 0 && (zone == "Z" || zone.count == 6) && local >= 0 && local < 253_402_300_800_000
        return (text + zone, milliseconds, canonical)
    }

    @Test func randomTimesAgainstTimegmAndISO8601DateFormatter() {
        var rng = SeededRandom(seed: 0x7157)
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        var canonicalChecked = 0
        for _ in 0..<20_000 {
            let (text, milliseconds, canonical) = Self.randomTimestamp(&rng)
            #expect(Self.reference(text) == milliseconds, "reference disagrees with the generator on \(text)")
            let parsed = Timestamps.parse(text)
            #expect(parsed?.unixMilliseconds == milliseconds, "\(text)")
            if canonical {
                canonicalChecked += 1
                #expect(formatter.date(from: text) == parsed, "\(text)")
            }
        }
        #expect(canonicalChecked > 1_000)
    }

    @Test func formatMatchesGmtimeAndRoundTrips() {
        var rng = SeededRandom(seed: 0xF0F0)
        var values: [Int64] = [0, 1, -1, 999, -999, -1000, 86_399_999, -86_400_000, -62_135_596_800_000, -62_167_219_200_000,
                               253_402_300_799_999, 951_782_400_000, 1_795_773_845_123]
        for _ in 0..<20_000 { values.append(Int64(rng.below(Int(253_402_300_800_000 + 62_167_219_200_000))) - 62_167_219_200_000) }
        for milliseconds in values {
            let date = Date(unixMilliseconds: milliseconds)
            let text = Timestamps.format(date)
            #expect(text == Self.referenceFormat(milliseconds), "\(milliseconds)")
            #expect(Timestamps.parse(text)?.unixMilliseconds == milliseconds, "\(text)")
        }
        // Outside 0000–9999 (a damaged column): prints, as before.
        for milliseconds: Int64 in [9_000_000_000_000_000, 253_402_300_800_000] {
            #expect(Timestamps.format(Date(unixMilliseconds: milliseconds)) == Self.referenceFormat(milliseconds))
        }
        for milliseconds: Int64 in [-9_000_000_000_000_000, -62_167_219_200_001] {
            #expect(!Timestamps.format(Date(unixMilliseconds: milliseconds)).isEmpty)
        }
    }

    /// Valid timestamps with random damage (a byte changed, inserted, dropped, the text cut or
    /// doubled): the parser says exactly what the grammar and the calendar say, never more.
    @Test func malformedInputsAgainstTheGrammar() {
        var rng = SeededRandom(seed: 0xBAD)
        let alphabet = Array("0123456789-:T tZz+-.,x\u{0}é٢".unicodeScalars)
        var accepted = 0
        for _ in 0..<30_000 {
            var scalars = Array(Self.randomTimestamp(&rng).text.unicodeScalars)
            for _ in 0...rng.below(3) {
                let position = rng.below(scalars.count + 1)
                switch rng.below(5) {
                case 0 where position < scalars.count: scalars[position] = rng.pick(alphabet)
                case 1: scalars.insert(rng.pick(alphabet), at: position)
                case 2 where position < scalars.count: scalars.remove(at: position)
                case 3: scalars = Array(scalars.prefix(position))
                default: scalars += scalars.prefix(rng.below(4))
                }
            }
            var text = ""
            text.unicodeScalars.append(contentsOf: scalars)
            let expected = Self.reference(text)
            let parsed = Timestamps.parse(text)
            #expect(parsed?.unixMilliseconds == expected, "\(text.debugDescription)")
            if parsed != nil { accepted += 1 }
        }
        #expect(accepted > 100)
    }

    @Test func formsThatUsedToBeReadWrongAreReadRightOrRefused() {
        func ms(_ text: String) -> Int64? { Timestamps.parse(text)?.unixMilliseconds }
        // A space for T: was UTC midnight of that day (the time dropped).
        #expect(ms("2026-11-27 10:04:05Z") == 1_795_773_845_000)
        #expect(ms("2026-11-27 10:04:05.123+01:00") == 1_795_770_245_123)
        #expect(ms("2026-11-27T10:04:05,5Z") == 1_795_773_845_500)
        // Refused instead of read as midnight or past the end of a month.
        for text in ["2026-11-27T10:04Z", "2026-11-27T10:04:05", "2026-11-27T10:04:05.123", "2026-02-30T00:00:00Z",
                     "2026-11-31", "2026-11-27T10:04:05ZX", "2026-11-27T10:04:05Z ", " 2026-11-27T10:04:05Z",
                     "2026-11-27T10:04:05GMT", "٢٠٢٦-11-27T10:04:05Z", "2026-11-27T24:00:00Z", "2026-1-27T10:04:05Z",
                     "2026-11-27T10:04:05+1:00", "2026-11-27T10:04:05+24:00", "2026-11-27T10:04:05.Z", "2026-11-27Z", ""] {
            #expect(ms(text) == nil, "\(text)")
        }
        #expect(ms("2026-11-27") == 1_795_737_600_000)
        #expect(ms("2026-11-27T23:59:60Z") == 1_795_824_000_000, "a leap second is the next second")
        #expect(ms("1969-12-31T23:59:59.5Z") == -500)
        #expect(Timestamps.parse("2026-11-27T10:04:05Z") == Date(timeIntervalSince1970: 1_795_773_845), "whole seconds exactly")
    }
}
