import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// RFC 3339 timestamps in UTC with milliseconds (`2026-11-27T10:04:05.123Z`): the form chatlog
/// prints and exports. Parsing also takes other offsets and no or more fractional digits.
public enum Timestamps {
    public static func format(_ date: Date) -> String {
        // Saturating: a damaged time column can hold any 64-bit number, which must print, not trap.
        let milliseconds = date.unixMilliseconds
        let fraction = ((milliseconds % 1000) + 1000) % 1000
        var seconds = time_t((milliseconds - fraction) / 1000)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(fraction), 3))Z"
    }

    /// RFC 3339 (with or without fractional seconds), or a bare date (UTC midnight). Fractional
    /// seconds are kept to the millisecond, exactly (further digits are dropped).
    public static func parse(_ text: String) -> Date? {
        // ISO8601DateFormatter returns "….123" as a double a hair below it, which stores and
        // formats as ….122: parse the whole seconds with it and add the milliseconds exactly.
        let bytes = Array(text.utf8)
        if let dot = bytes.firstIndex(of: UInt8(ascii: ".")) {
            var end = dot + 1
            while end < bytes.count, bytes[end] >= 0x30, bytes[end] <= 0x39 { end += 1 }
            guard end > dot + 1 else { return nil }
            let whole = ISO8601DateFormatter()
            whole.formatOptions = [.withInternetDateTime]
            guard let seconds = whole.date(from: String(decoding: bytes[..<dot] + bytes[end...], as: UTF8.self)) else { return nil }
            var milliseconds: Int64 = 0
            for index in (dot + 1)..<(dot + 4) { milliseconds = milliseconds * 10 + (index < end ? Int64(bytes[index] - 0x30) : 0) }
            return Date(unixMilliseconds: Int64(seconds.timeIntervalSince1970.rounded()) * 1000 + milliseconds)
        }
        let plain = ISO8601DateFormatter()
        plain.formatOptions = [.withInternetDateTime]
        if let date = plain.date(from: text) { return date }
        let dateOnly = ISO8601DateFormatter()
        dateOnly.formatOptions = [.withFullDate]
        return dateOnly.date(from: text)
    }
}
