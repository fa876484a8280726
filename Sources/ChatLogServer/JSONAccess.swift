import ChatLog

/// Small read accessors over `JSONValue` for the wire formats the proxy reads.
extension JSONValue {
    subscript(key: String) -> JSONValue? {
        if case .object(let members) = self { return members[key] }
        return nil
    }

    var string: String? {
        if case .string(let value) = self { return value }
        return nil
    }

    var int: Int? {
        switch self {
        case .integer(let value): return Int(exactly: value)
        case .number(let value): return value.isFinite && value.rounded() == value && abs(value) < 9e15 ? Int(value) : nil
        default: return nil
        }
    }

    var bool: Bool? {
        if case .bool(let value) = self { return value }
        return nil
    }

    var array: [JSONValue]? {
        if case .array(let items) = self { return items }
        return nil
    }

    var object: [String: JSONValue]? {
        if case .object(let members) = self { return members }
        return nil
    }

    var isNull: Bool {
        if case .null = self { return true }
        return false
    }

    /// JSON text of the value (sorted keys), for tool-call arguments and similar.
    var jsonText: String {
        guard let data = canonicalJSON() else { return "null" }
        return String(decoding: data, as: UTF8.self)
    }

    static func parse(_ bytes: [UInt8]) -> JSONValue? {
        bytes.withUnsafeBytes { JSONValue.parse(bytes: $0) }
    }

    static func parse(_ text: Substring) -> JSONValue? {
        var text = String(text)
        return text.withUTF8 { JSONValue.parse(bytes: UnsafeRawBufferPointer($0)) }
    }
}

extension Dictionary where Key == String, Value == JSONValue {
    /// Sets `key` only when `value` is non-nil.
    mutating func set(_ key: String, _ value: JSONValue?) {
        if let value { self[key] = value }
    }

    mutating func set(_ key: String, _ value: String?) {
        if let value { self[key] = .string(value) }
    }

    mutating func set(_ key: String, _ value: Int?) {
        if let value { self[key] = .integer(Int64(value)) }
    }
}
