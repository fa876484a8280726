import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// RFC 3339 timestamps in UTC with milliseconds (`2026-11-27T10:04:05.123Z`): the form chatlog
/// prints and exports. Parsing also takes other offsets and no or more fractional digits.
///
/// Both directions are written by hand, without Foundation's `ISO8601DateFormatter` (which built an
/// ICU formatter on every call and was ~42 % of an import's time; docs/PERFORMANCE.md).
public enum Timestamps {
    public static func format(_ date: Date) -> String {
        // Saturating: a damaged time column can hold any 64-bit number, which must print, not trap.
        let milliseconds = date.unixMilliseconds
        let fraction = ((milliseconds % 1000) + 1000) % 1000
        let seconds = (milliseconds - fraction) / 1000
        let days = seconds >= 0 ? seconds / 86_400 : -((-seconds + 86_399) / 86_400)
        let civil = civil(days: days)
        guard (0...9999).contains(civil.year) else { return formatOutOfRange(seconds: seconds, fraction: fraction) }
        let secondOfDay = seconds - days * 86_400
        return String(unsafeUninitializedCapacity: 24) { buffer in
            func put(_ value: Int64, _ width: Int, at offset: Int) {
                var value = value
                for position in stride(from: offset + width - 1, through: offset, by: -1) {
                    buffer[position] = UInt8(truncatingIfNeeded: 0x30 + value % 10)
                    value /= 10
                }
            }
            put(civil.year, 4, at: 0)
            put(civil.month, 2, at: 5)
            put(civil.day, 2, at: 8)
            put(secondOfDay / 3600, 2, at: 11)
            put(secondOfDay / 60 % 60, 2, at: 14)
            put(secondOfDay % 60, 2, at: 17)
            put(fraction, 3, at: 20)
            (buffer[4], buffer[7], buffer[10]) = (UInt8(ascii: "-"), UInt8(ascii: "-"), UInt8(ascii: "T"))
            (buffer[13], buffer[16], buffer[19], buffer[23]) = (UInt8(ascii: ":"), UInt8(ascii: ":"), UInt8(ascii: "."), UInt8(ascii: "Z"))
            return 24
        }
    }

    /// Years outside 0000–9999 (only a damaged time column holds them): printed as `gmtime` gives them.
    private static func formatOutOfRange(seconds: Int64, fraction: Int64) -> String {
        var time = time_t(seconds)
        var parts = tm()
        gmtime_r(&time, &parts)
        func pad(_ value: Int64, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        return "\(pad(Int64(parts.tm_year) + 1900, 4))-\(pad(Int64(parts.tm_mon) + 1, 2))-\(pad(Int64(parts.tm_mday), 2))T"
            + "\(pad(Int64(parts.tm_hour), 2)):\(pad(Int64(parts.tm_min), 2)):\(pad(Int64(parts.tm_sec), 2)).\(pad(fraction, 3))Z"
    }

    /// RFC 3339 (`2026-11-27T10:04:05Z`, `…05.123456+02:00`; `t`/`z` or a space for `T` too; `,` for
    /// `.`; offsets `±HH:MM`, `±HHMM` or `±HH`), or a bare date `2026-11-27` (UTC midnight). Fractional
    /// seconds are kept to the millisecond, exactly (further digits are dropped); `:60` (a leap
    /// second) is the next second. Anything else is refused: a time without an offset, without
    /// seconds, with a trailing character, an impossible date (`02-30`) or hour (`24`).
    public static func parse(_ text: String) -> Date? {
        guard let microseconds = microseconds(text, lenient: false) else { return nil }
        let milliseconds = microseconds >= 0 ? microseconds / 1000 : -((-microseconds + 999) / 1000)
        // Whole seconds as the exact double; otherwise half a millisecond in (see Date(unixMilliseconds:)).
        if milliseconds % 1000 == 0 { return Date(timeIntervalSince1970: Double(milliseconds / 1000)) }
        return Date(unixMilliseconds: milliseconds)
    }

    /// Microseconds since the Unix epoch (fractional digits after the sixth dropped). `lenient`
    /// also takes what llm writes and means as UTC: a time without an offset (`2026-11-27T00:47:58.581154`)
    /// or without seconds, and an offset after a bare date.
    static func microseconds(_ text: String, lenient: Bool) -> Int64? {
        var text = text
        return text.withUTF8 { microseconds($0, lenient: lenient) }
    }

    static func microseconds(_ bytes: UnsafeBufferPointer<UInt8>, lenient: Bool) -> Int64? {
        var index = 0
        let end = bytes.count
        func digits(_ count: Int) -> Int64? {
            guard index + count <= end else { return nil }
            var value: Int64 = 0
            for position in index..<(index + count) {
                let digit = bytes[position] &- 0x30
                guard digit < 10 else { return nil }
                value = value * 10 + Int64(digit)
            }
            index += count
            return value
        }
        func skip(_ byte: UInt8) -> Bool {
            guard index < end, bytes[index] == byte else { return false }
            index += 1
            return true
        }
        // Four or five year digits (years past 9999 are what `format` prints for them; five keep
        // every value within Int64 microseconds).
        var year: Int64 = 0
        while index < end, index < 5, bytes[index] &- 0x30 < 10 {
            year = year * 10 + Int64(bytes[index] &- 0x30)
            index += 1
        }
        guard index >= 4, skip(UInt8(ascii: "-")), let month = digits(2), skip(UInt8(ascii: "-")), let day = digits(2),
            (1...12).contains(month), day >= 1, day <= daysIn(month: month, year: year)
        else { return nil }
        var secondOfDay: Int64 = 0
        var micro: Int64 = 0
        var hasTime = false
        if index < end, bytes[index] == UInt8(ascii: "T") || bytes[index] == UInt8(ascii: "t") || bytes[index] == 0x20 {
            index += 1
            hasTime = true
            guard let hour = digits(2), skip(UInt8(ascii: ":")), let minute = digits(2), hour < 24, minute < 60 else { return nil }
            var second: Int64 = 0
            if skip(UInt8(ascii: ":")) {
                guard let value = digits(2), value <= 60 else { return nil }
                second = value
                if skip(UInt8(ascii: ".")) || skip(UInt8(ascii: ",")) {
                    var count = 0
                    while index < end, bytes[index] &- 0x30 < 10 {
                        if count < 6 { micro = micro * 10 + Int64(bytes[index] &- 0x30) }
                        count += 1
                        index += 1
                    }
                    guard count > 0 else { return nil }
                    for _ in count..<max(count, 6) { micro *= 10 }
                }
            } else if !lenient {
                return nil
            }
            secondOfDay = hour * 3600 + minute * 60 + second
        }
        var offsetMinutes: Int64 = 0
        if index < end {
            guard hasTime || lenient else { return nil }
            if skip(UInt8(ascii: "Z")) || skip(UInt8(ascii: "z")) {
            } else if bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") {
                let sign: Int64 = bytes[index] == UInt8(ascii: "-") ? -1 : 1
                index += 1
                guard let hours = digits(2) else { return nil }
                var minutes: Int64 = 0
                if skip(UInt8(ascii: ":")) {
                    guard let value = digits(2) else { return nil }
                    minutes = value
                } else if index < end {
                    guard let value = digits(2) else { return nil }
                    minutes = value
                }
                guard hours < 24, minutes < 60 else { return nil }
                offsetMinutes = sign * (hours * 60 + minutes)
            } else {
                return nil
            }
            guard index == end else { return nil }
        } else if hasTime && !lenient {
            return nil  // no offset: the time could be anywhere's
        }
        let seconds = days(year: year, month: month, day: day) * 86_400 + secondOfDay - offsetMinutes * 60
        return seconds * 1_000_000 + micro
    }

    private static func daysIn(month: Int64, year: Int64) -> Int64 {
        switch month {
        case 2: return year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    /// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
    private static func days(year: Int64, month: Int64, day: Int64) -> Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }

    /// The inverse (`civil_from_days`).
    private static func civil(days: Int64) -> (year: Int64, month: Int64, day: Int64) {
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let monthIndex = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * monthIndex + 2) / 5 + 1
        let month = monthIndex < 10 ? monthIndex + 3 : monthIndex - 9
        return (yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }
}
