import Foundation

/// Free-form metadata (request options, tool calls, anything the app passes), sealed as JSON.
public enum JSONValue: Sendable, Hashable, Codable {
    case null
    case bool(Bool)
    case integer(Int64)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? container.decode(Int64.self) {
            self = .integer(value)
        } else if let value = try? container.decode(Double.self) {
            self = .number(value)
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode([JSONValue].self) {
            self = .array(value)
        } else {
            self = .object(try container.decode([String: JSONValue].self))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case .bool(let value): try container.encode(value)
        case .integer(let value): try container.encode(value)
        case .number(let value): try container.encode(value)
        case .string(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        }
    }

    /// Canonical bytes: sorted keys, no escaped slashes.
    func encoded() throws(ChatLogError) -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        do { return try encoder.encode(self) } catch {
            throw .invalidInput("metadata cannot be encoded as JSON (non-finite number?)")
        }
    }

    static func decoded(_ data: Data) -> JSONValue? {
        parse(data)
    }
}

// MARK: - Parsing without Codable

extension JSONValue {
    /// JSON text to a value, byte by byte (no `Codable` round trip: `JSONDecoder` into `JSONValue` was
    /// a tenth of an import's time). Reads exactly what `JSONDecoder().decode(JSONValue.self, …)` reads
    /// (`JSONValueParserTests` compares the two): RFC 8259 plus a leading byte-order mark and a
    /// trailing comma in arrays and objects; at most 512 levels of nesting; the first of duplicate
    /// keys wins; a number without fraction or exponent that fits `Int64`, or any number whose value
    /// is a whole `Int64` (`1.0`, `1e2`), is `.integer`; others `.number`; numbers beyond `Double` fail.
    /// Returns nil for anything else, invalid UTF-8 included.
    static func parse(_ bytes: UnsafeBufferPointer<UInt8>) -> JSONValue? {
        guard String(validating: bytes, as: UTF8.self) != nil else { return nil }
        return parse(validUTF8: bytes)
    }

    static func parse(_ data: Data) -> JSONValue? {
        data.withUnsafeBytes { parse($0.bindMemory(to: UInt8.self)) }
    }

    /// As `parse`, for bytes already known to be valid UTF-8.
    static func parse(validUTF8 bytes: UnsafeBufferPointer<UInt8>) -> JSONValue? {
        var parser = JSONTextParser(bytes: bytes)
        return try? parser.document()
    }
}

private struct JSONSyntaxError: Error {}

private struct JSONTextParser {
    static let maximumDepth = 512
    let bytes: UnsafeBufferPointer<UInt8>
    var index = 0
    var depth = 0
    /// Inside the value of a repeated key, which is dropped: like `JSONDecoder`, only its structure
    /// is checked (a number beyond `Double`, or a bad escape in a string, there is no error).
    var discarding = 0

    init(bytes: UnsafeBufferPointer<UInt8>) { self.bytes = bytes }

    mutating func document() throws(JSONSyntaxError) -> JSONValue {
        if bytes.count >= 3, bytes[0] == 0xEF, bytes[1] == 0xBB, bytes[2] == 0xBF { index = 3 }
        let value = try value()
        skipSpace()
        guard index == bytes.count else { throw JSONSyntaxError() }
        return value
    }

    mutating func skipSpace() {
        while index < bytes.count {
            switch bytes[index] {
            case 0x20, 0x0A, 0x0D, 0x09: index += 1
            default: return
            }
        }
    }

    mutating func expect(_ word: StaticString) throws(JSONSyntaxError) {
        let count = word.utf8CodeUnitCount
        guard index + count <= bytes.count else { throw JSONSyntaxError() }
        let start = word.utf8Start
        for offset in 0..<count where bytes[index + offset] != start[offset] { throw JSONSyntaxError() }
        index += count
    }

    mutating func value() throws(JSONSyntaxError) -> JSONValue {
        skipSpace()
        guard index < bytes.count else { throw JSONSyntaxError() }
        switch bytes[index] {
        case UInt8(ascii: "{"): return try object()
        case UInt8(ascii: "["): return try array()
        case UInt8(ascii: "\""):
            if discarding > 0 {
                _ = try skipString()
                return .null
            }
            return .string(try string())
        case UInt8(ascii: "t"):
            try expect("true")
            return .bool(true)
        case UInt8(ascii: "f"):
            try expect("false")
            return .bool(false)
        case UInt8(ascii: "n"):
            try expect("null")
            return .null
        default: return try number()
        }
    }

    mutating func enter() throws(JSONSyntaxError) {
        depth += 1
        guard depth <= Self.maximumDepth else { throw JSONSyntaxError() }
        index += 1
    }

    mutating func array() throws(JSONSyntaxError) -> JSONValue {
        try enter()
        var elements: [JSONValue] = []
        skipSpace()
        if index < bytes.count, bytes[index] == UInt8(ascii: "]") {
            index += 1
            depth -= 1
            return .array(elements)
        }
        while true {
            elements.append(try value())
            skipSpace()
            guard index < bytes.count else { throw JSONSyntaxError() }
            if bytes[index] == UInt8(ascii: "]") { break }
            guard bytes[index] == UInt8(ascii: ",") else { throw JSONSyntaxError() }
            index += 1
            skipSpace()
            if index < bytes.count, bytes[index] == UInt8(ascii: "]") { break }  // a trailing comma
        }
        index += 1
        depth -= 1
        return .array(elements)
    }

    mutating func object() throws(JSONSyntaxError) -> JSONValue {
        try enter()
        var fields: [String: JSONValue] = [:]
        skipSpace()
        if index < bytes.count, bytes[index] == UInt8(ascii: "}") {
            index += 1
            depth -= 1
            return .object(fields)
        }
        while true {
            guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { throw JSONSyntaxError() }
            // Keys of a dropped value are only skipped; a repeated key's value is dropped.
            let key: String? = discarding > 0 ? try skipString() : try string()
            skipSpace()
            guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { throw JSONSyntaxError() }
            index += 1
            if let key, fields[key] == nil {
                fields[key] = try value()
            } else {
                discarding += 1
                _ = try value()
                discarding -= 1
            }
            skipSpace()
            guard index < bytes.count else { throw JSONSyntaxError() }
            if bytes[index] == UInt8(ascii: "}") { break }
            guard bytes[index] == UInt8(ascii: ",") else { throw JSONSyntaxError() }
            index += 1
            skipSpace()
            if index < bytes.count, bytes[index] == UInt8(ascii: "}") { break }  // a trailing comma
        }
        index += 1
        depth -= 1
        return .object(fields)
    }

    /// At the opening quote.
    mutating func string() throws(JSONSyntaxError) -> String {
        index += 1
        let start = index
        while index < bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\"") {
                let text = String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<index]), as: UTF8.self)
                index += 1
                return text
            }
            if byte == UInt8(ascii: "\\") { return try escapedString(from: start) }
            guard byte >= 0x20 else { throw JSONSyntaxError() }
            index += 1
        }
        throw JSONSyntaxError()
    }

    /// A dropped value's string: JSONDecoder only looks for its end.
    mutating func skipString() throws(JSONSyntaxError) -> String? {
        index += 1
        while index < bytes.count {
            switch bytes[index] {
            case UInt8(ascii: "\""):
                index += 1
                return nil
            case UInt8(ascii: "\\"): index += 2
            default: index += 1
            }
        }
        throw JSONSyntaxError()
    }

    mutating func escapedString(from start: Int) throws(JSONSyntaxError) -> String {
        var output = Array(UnsafeBufferPointer(rebasing: bytes[start..<index]))
        while index < bytes.count {
            let byte = bytes[index]
            index += 1
            switch byte {
            case UInt8(ascii: "\""):
                return String(decoding: output, as: UTF8.self)
            case UInt8(ascii: "\\"):
                guard index < bytes.count else { throw JSONSyntaxError() }
                let escape = bytes[index]
                index += 1
                switch escape {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): output.append(escape)
                case UInt8(ascii: "b"): output.append(0x08)
                case UInt8(ascii: "f"): output.append(0x0C)
                case UInt8(ascii: "n"): output.append(0x0A)
                case UInt8(ascii: "r"): output.append(0x0D)
                case UInt8(ascii: "t"): output.append(0x09)
                case UInt8(ascii: "u"):
                    var scalar = UInt32(try hex4())
                    if (0xD800..<0xDC00).contains(scalar) {
                        guard index + 1 < bytes.count, bytes[index] == UInt8(ascii: "\\"), bytes[index + 1] == UInt8(ascii: "u") else {
                            throw JSONSyntaxError()
                        }
                        index += 2
                        let low = UInt32(try hex4())
                        guard (0xDC00..<0xE000).contains(low) else { throw JSONSyntaxError() }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    } else if (0xDC00..<0xE000).contains(scalar) {
                        throw JSONSyntaxError()
                    }
                    guard let unicode = Unicode.Scalar(scalar) else { throw JSONSyntaxError() }
                    output.append(contentsOf: unicode.utf8)
                default:
                    throw JSONSyntaxError()
                }
            default:
                guard byte >= 0x20 else { throw JSONSyntaxError() }
                output.append(byte)
            }
        }
        throw JSONSyntaxError()
    }

    mutating func hex4() throws(JSONSyntaxError) -> UInt16 {
        guard index + 4 <= bytes.count else { throw JSONSyntaxError() }
        var value: UInt16 = 0
        for _ in 0..<4 {
            let byte = bytes[index]
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
            default: throw JSONSyntaxError()
            }
            value = value << 4 | UInt16(digit)
            index += 1
        }
        return value
    }

    mutating func number() throws(JSONSyntaxError) -> JSONValue {
        let start = index
        if discarding > 0 {
            // A dropped value's number: JSONDecoder only takes the characters a number can have.
            while index < bytes.count, bytes[index] &- 0x30 < 10 || bytes[index] | 0x20 == UInt8(ascii: "e")
                || bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") || bytes[index] == UInt8(ascii: ".")
            {
                index += 1
            }
            guard index > start else { throw JSONSyntaxError() }
            return .null
        }
        func digit(_ at: Int) -> Bool { at < bytes.count && bytes[at] &- 0x30 < 10 }
        var negative = false
        if index < bytes.count, bytes[index] == UInt8(ascii: "-") {
            negative = true
            index += 1
        }
        guard digit(index) else { throw JSONSyntaxError() }
        // Whole numbers accumulate as a negative Int64 (its range is one larger on that side).
        var magnitude: Int64 = 0
        var overflow = false
        if bytes[index] == UInt8(ascii: "0") {
            index += 1
            guard !digit(index) else { throw JSONSyntaxError() }
        } else {
            while digit(index) {
                let (times, o1) = magnitude.multipliedReportingOverflow(by: 10)
                let (next, o2) = times.subtractingReportingOverflow(Int64(bytes[index] &- 0x30))
                overflow = overflow || o1 || o2
                magnitude = next
                index += 1
            }
        }
        var whole = true
        if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
            index += 1
            guard digit(index) else { throw JSONSyntaxError() }
            while digit(index) { index += 1 }
            whole = false
        }
        if index < bytes.count, bytes[index] | 0x20 == UInt8(ascii: "e") {
            index += 1
            if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") { index += 1 }
            guard digit(index) else { throw JSONSyntaxError() }
            while digit(index) { index += 1 }
            whole = false
        }
        if whole && !overflow {
            if negative { return .integer(magnitude) }
            if magnitude != .min { return .integer(-magnitude) }
        }
        let literal = UnsafeBufferPointer(rebasing: bytes[start..<index])
        guard let double = Double(String(decoding: literal, as: UTF8.self)), double.isFinite else { throw JSONSyntaxError() }
        // JSONDecoder's rule for Int64: a whole number that overflows stays a Double; otherwise the
        // Double's value when it is a whole number below 2^53, or above that the decimal literal's
        // digits (fraction digits dropped) when they fit.
        guard !whole, Int64(exactly: double) != nil else { return .number(double) }
        if double.magnitude < 0x1p53 { return .integer(Int64(double)) }
        return Self.decimalInteger(literal).map(JSONValue.integer) ?? .number(double)
    }

    /// `-?digits(.digits)?([eE][+-]?digits)?` as an Int64 from its decimal digits, truncating
    /// fraction digits, or nil when its digits or the result overflow.
    static func decimalInteger(_ literal: UnsafeBufferPointer<UInt8>) -> Int64? {
        var mantissa: UInt64 = 0
        var scale = 0
        var index = 0
        let negative = literal.first == UInt8(ascii: "-")
        if negative { index = 1 }
        var afterPoint = false
        while index < literal.count, literal[index] | 0x20 != UInt8(ascii: "e") {
            let byte = literal[index]
            index += 1
            if byte == UInt8(ascii: ".") {
                afterPoint = true
                continue
            }
            let (times, o1) = mantissa.multipliedReportingOverflow(by: 10)
            let (next, o2) = times.addingReportingOverflow(UInt64(byte &- 0x30))
            guard !o1, !o2 else { return nil }
            mantissa = next
            if afterPoint { scale -= 1 }
        }
        if index < literal.count {
            index += 1
            var exponentNegative = false
            if literal[index] == UInt8(ascii: "+") || literal[index] == UInt8(ascii: "-") {
                exponentNegative = literal[index] == UInt8(ascii: "-")
                index += 1
            }
            var exponent = 0
            while index < literal.count {
                exponent = min(exponent * 10 + Int(literal[index] &- 0x30), 100_000)
                index += 1
            }
            scale += exponentNegative ? -exponent : exponent
        }
        if scale < 0 {
            for _ in 0..<min(-scale, 40) { mantissa /= 10 }
        } else {
            for _ in 0..<scale {
                let (next, overflow) = mantissa.multipliedReportingOverflow(by: 10)
                guard !overflow else { return nil }
                mantissa = next
            }
        }
        guard let value = Int64(exactly: mantissa) else { return nil }
        return negative ? -value : value
    }
}
