import Foundation

/// Domain tags and context encodings for every key derivation. docs/FORMAT.md documents each
/// byte; changing any of these changes the format.
enum KeyDerivation {
    static let fieldTag = "chatlog/v1/field"
    static let masterCheckTag = "chatlog/v1/master-check"
    /// The check value of a store whose key rows are authenticated (schema 6 on).
    static let masterCheckV2Tag = "chatlog/v2/master-check"
    static let subjectTag = "chatlog/v1/subject"
    static let tokenTag = "chatlog/v1/token"

    /// NFKC (`precomposedStringWithCompatibilityMapping`), as subjects are hashed; ASCII text is
    /// already in NFKC and is returned as it is (Foundation's normalisation cost as much as the
    /// keyed hash itself, on every logged exchange with a subject).
    static func compatibilityNormalized(_ text: String) -> String {
        text.utf8.allSatisfy { $0 < 0x80 } ? text : text.precomposedStringWithCompatibilityMapping
    }

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

    /// `u32be(len(bytes)) ‖ bytes`.
    static func lengthPrefixed(bytes: [UInt8]) -> [UInt8] {
        let count = UInt32(bytes.count)
        return [UInt8(count >> 24), UInt8((count >> 16) & 0xFF), UInt8((count >> 8) & 0xFF), UInt8(count & 0xFF)] + bytes
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

    /// Lends `body` the BLAKE2b message that derives this field's subkey,
    /// `KeyDerivation.lengthPrefixed([fieldTag, table, column, rowID])`, built in a temporary
    /// buffer (no heap allocation: every sealed value opened derives a subkey, and search opens
    /// thousands per query).
    func withDerivationMessage<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R {
        let tag = KeyDerivation.fieldTag
        let total = 16 + tag.utf8.count + table.utf8.count + column.utf8.count + rowID.utf8.count
        return withUnsafeTemporaryAllocation(byteCount: total, alignment: 1) { buffer in
            var offset = 0
            func append(_ part: String) {
                let count = part.utf8.count
                buffer[offset] = UInt8(truncatingIfNeeded: count >> 24)
                buffer[offset + 1] = UInt8(truncatingIfNeeded: count >> 16)
                buffer[offset + 2] = UInt8(truncatingIfNeeded: count >> 8)
                buffer[offset + 3] = UInt8(truncatingIfNeeded: count)
                offset += 4
                UnsafeMutableRawBufferPointer(rebasing: buffer[offset..<(offset + count)]).copyBytes(from: part.utf8)
                offset += count
            }
            append(tag)
            append(table)
            append(column)
            append(rowID)
            return body(UnsafeRawBufferPointer(buffer))
        }
    }

    public var description: String { "\(table).\(column) of row \(rowID)" }
}
