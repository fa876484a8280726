import Foundation

/// A UUIDv7 (RFC 9562): 48-bit Unix-millisecond timestamp, version 7, then random bits; written
/// in lowercase canonical form. Time-ordered, so public ids sort roughly by creation.
enum UUIDv7 {
    static func make(at date: Date = Date()) -> String {
        var bytes = Sodium.randomBytes(16)
        let milliseconds = UInt64(max(0, date.timeIntervalSince1970 * 1000))
        for index in 0..<6 { bytes[index] = UInt8((milliseconds >> (8 * (5 - UInt64(index)))) & 0xFF) }
        bytes[6] = (bytes[6] & 0x0F) | 0x70  // version 7
        bytes[8] = (bytes[8] & 0x3F) | 0x80  // RFC 4122 variant
        return format(bytes)
    }

    static func format(_ bytes: [UInt8]) -> String {
        let hex = Array("0123456789abcdef")
        var output = ""
        output.reserveCapacity(36)
        for (index, byte) in bytes.enumerated() {
            if index == 4 || index == 6 || index == 8 || index == 10 { output.append("-") }
            output.append(hex[Int(byte >> 4)])
            output.append(hex[Int(byte & 0x0F)])
        }
        return output
    }

    /// Accepts any canonical UUID (any case); returns it lowercased, or nil.
    static func normalize(_ text: String) -> String? {
        let utf8 = Array(text.utf8)
        guard utf8.count == 36 else { return nil }
        for (index, byte) in utf8.enumerated() {
            if index == 8 || index == 13 || index == 18 || index == 23 {
                guard byte == UInt8(ascii: "-") else { return nil }
            } else {
                guard (byte >= 0x30 && byte <= 0x39) || (byte >= 0x61 && byte <= 0x66) || (byte >= 0x41 && byte <= 0x46)
                else { return nil }
            }
        }
        return text.lowercased()
    }
}

/// The public, stable id of a conversation (a UUIDv7).
public struct ConversationID: Hashable, Sendable, Codable, CustomStringConvertible, LosslessStringConvertible {
    public let rawValue: String
    public init?(_ description: String) {
        guard let normalized = UUIDv7.normalize(description) else { return nil }
        rawValue = normalized
    }
    init(trusted: String) { rawValue = trusted }
    static func make() -> ConversationID { ConversationID(trusted: UUIDv7.make()) }
    /// An id read from the store (see ``StoredID``).
    static func stored(_ value: String?, table: String, column: String, seq: Int64) throws(ChatLogError) -> ConversationID {
        ConversationID(trusted: try StoredID.check(value, table: table, column: column, seq: seq))
    }
    public var description: String { rawValue }
    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let id = ConversationID(text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not a UUID"))
        }
        self = id
    }
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}

/// The public, stable id of a message (a UUIDv7).
public struct MessageID: Hashable, Sendable, Codable, CustomStringConvertible, LosslessStringConvertible {
    public let rawValue: String
    public init?(_ description: String) {
        guard let normalized = UUIDv7.normalize(description) else { return nil }
        rawValue = normalized
    }
    init(trusted: String) { rawValue = trusted }
    static func make() -> MessageID { MessageID(trusted: UUIDv7.make()) }
    /// An id read from the store (see ``StoredID``).
    static func stored(_ value: String?, table: String, column: String, seq: Int64) throws(ChatLogError) -> MessageID {
        MessageID(trusted: try StoredID.check(value, table: table, column: column, seq: seq))
    }
    public var description: String { rawValue }
    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let id = MessageID(text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not a UUID"))
        }
        self = id
    }
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}

/// Ids read back from the file. chatlog only ever writes canonical UUIDs, so anything else was
/// planted or damaged: it is an integrity failure that names the table, column and the row's
/// internal `seq` — never the value, which could hold terminal escape sequences.
enum StoredID {
    static func check(_ value: String?, table: String, column: String, seq: Int64) throws(ChatLogError) -> String {
        guard let value, UUIDv7.normalize(value) != nil else {
            throw .integrity(IntegrityFailure(table: table, column: column, rowID: "seq \(seq)", reason: .invalidID))
        }
        return value
    }
}
