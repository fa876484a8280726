/// Domain tags and context encodings for every key derivation. docs/FORMAT.md documents each
/// byte; changing any of these changes the format.
enum KeyDerivation {
    static let fieldTag = "chatlog/v1/field"
    static let masterCheckTag = "chatlog/v1/master-check"
    static let subjectTag = "chatlog/v1/subject"
    static let tokenTag = "chatlog/v1/token"

    /// `u32be(len(part)) ‖ part` for each part, in order.
    static func lengthPrefixed(_ parts: [String]) -> [UInt8] {
        var output: [UInt8] = []
        output.reserveCapacity(parts.reduce(0) { $0 + 4 + $1.utf8.count })
        for part in parts {
            let count = UInt32(part.utf8.count)
            output.append(contentsOf: [UInt8(count >> 24), UInt8((count >> 16) & 0xFF), UInt8((count >> 8) & 0xFF), UInt8(count & 0xFF)])
            output.append(contentsOf: part.utf8)
        }
        return output
    }
}

/// Where a sealed value lives: it opens only there. Rows are named by their public id, never by
/// SQLite's rowid (which VACUUM may renumber and a delete may free for reuse).
public struct FieldContext: Hashable, Sendable, CustomStringConvertible {
    public let table: String
    public let column: String
    public let rowID: String

    public init(table: String, column: String, rowID: String) {
        self.table = table
        self.column = column
        self.rowID = rowID
    }

    /// The BLAKE2b message that derives this field's subkey.
    var derivationMessage: [UInt8] {
        KeyDerivation.lengthPrefixed([KeyDerivation.fieldTag, table, column, rowID])
    }

    public var description: String { "\(table).\(column) of row \(rowID)" }
}
