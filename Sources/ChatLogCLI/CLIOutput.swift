import ChatLog
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Everything the CLI writes: data on stdout, diagnostics on stderr (one line, no user data).
/// Diagnostics can carry strings read from the store or an input file (a row id in an integrity
/// error, a record id in an import note), so they pass through the same escaping as message
/// content, with line breaks escaped too: one diagnostic is always one line.
enum CLIOutput {
    static func error(_ message: String) {
        FileHandle.standardError.write(Data("chatlog: error: \(terminalSafeField(message))\n".utf8))
    }

    static func note(_ message: String) {
        FileHandle.standardError.write(Data("chatlog: \(terminalSafeField(message))\n".utf8))
    }

    static func line(_ text: String = "") {
        FileHandle.standardOutput.write(Data((text + "\n").utf8))
    }

    static var stdoutIsTerminal: Bool { isatty(1) == 1 }
    static var stdinIsTerminal: Bool { isatty(0) == 1 }

    /// Pretty, key-sorted JSON on stdout.
    static func json(_ value: some Encodable) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let data = try encoder.encode(value)
        FileHandle.standardOutput.write(data)
        FileHandle.standardOutput.write(Data("\n".utf8))
    }

    /// RFC 3339 in UTC with milliseconds: 2026-11-27T10:04:05.123Z.
    static func timestamp(_ date: Date) -> String { Timestamps.format(date) }

    /// Logged text may hold terminal escape sequences (a prompt can contain anything); shown raw,
    /// they could rewrite the operator's screen. Control characters other than newline and tab are
    /// shown escaped in human output, and so are the bidirectional embedding, override and isolate
    /// controls (U+202A–U+202E, U+2066–U+2069), which can make a line read differently from what
    /// it holds. JSON output is exact.
    /// A one-line field read from the store (a model name, a finish reason, a group): escaped
    /// like content, line breaks included, so it cannot start a line of its own.
    static func terminalSafeField(_ text: String) -> String { terminalSafe(text, keepingLineBreaks: false) }

    static func terminalSafe(_ text: String, keepingLineBreaks: Bool = true) -> String {
        var output = ""
        output.reserveCapacity(text.utf8.count)
        for scalar in text.unicodeScalars {
            switch scalar.value {
            case 0x0A where keepingLineBreaks, 0x09 where keepingLineBreaks: output.unicodeScalars.append(scalar)
            case 0x00..<0x20, 0x7F, 0x80..<0xA0, 0x202A...0x202E, 0x2066...0x2069:
                output += "\\u{" + String(scalar.value, radix: 16) + "}"
            default: output.unicodeScalars.append(scalar)
            }
        }
        return output
    }
}
