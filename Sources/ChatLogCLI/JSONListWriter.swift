import Foundation

/// `--json` output of a listing, written as it is read (memory stays flat with `-n 0`): one
/// object holding the array under `field`, one compact element per line, then the paging
/// fields (`next_cursor`, …) from `finish`.
final class JSONListWriter {
    private let encoder: JSONEncoder
    /// The last element, printed once the next one (or the end) shows whether a comma follows.
    private var held: String?

    init(field: String) {
        encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        CLIOutput.line("{\"\(field)\": [")
    }

    func append(_ elements: [some Encodable]) throws {
        for element in elements {
            if let held { CLIOutput.line("  " + held + ",") }
            held = String(decoding: try encoder.encode(element), as: UTF8.self)
        }
    }

    /// Closes the array and adds the fields of `trailer` (an object) after it.
    func finish(_ trailer: some Encodable) throws {
        if let held { CLIOutput.line("  " + held) }
        held = nil
        let fields = String(decoding: try encoder.encode(trailer), as: UTF8.self).dropFirst().dropLast()
        CLIOutput.line("]" + (fields.isEmpty ? "" : ", " + fields) + "}")
    }
}
