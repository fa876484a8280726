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
        standardError("chatlog: error: \(terminalSafeField(message))\n")
    }

    static func note(_ message: String) {
        standardError("chatlog: \(terminalSafeField(message))\n")
    }

    static func line(_ text: String = "") {
        standardOutput(Data((text + "\n").utf8))
    }

    // MARK: - Writing
    //
    // Foundation's `FileHandle.write(_:)` traps (`try!`) when the write fails: `chatlog list >
    // /dev/full` died with exit 132 and a backtrace. Every byte the CLI prints goes through
    // write(2) here instead. SIGPIPE is ignored from the start (`ignoreBrokenPipeSignal`), so a
    // reader that went away shows up as EPIPE at a known place.

    /// Called once at start-up, before anything is written.
    static func ignoreBrokenPipeSignal() {
        signal(SIGPIPE, SIG_IGN)
    }

    /// Writes all of `data` to stdout. A closed pipe (`chatlog export | head -1`) ends the process
    /// the way it ends `cat` or `git`: quietly, by SIGPIPE (status 141 in a shell). Any other
    /// failure (a full disk, /dev/full, an I/O error) is one line on stderr and exit 1.
    static func standardOutput(_ data: Data) {
        let failure = data.withUnsafeBytes { writeAll(1, $0) }
        guard failure != 0 else { return }
        if failure == EPIPE {
            signal(SIGPIPE, SIG_DFL)
            raise(SIGPIPE)
            _exit(128 + SIGPIPE)
        }
        error("cannot write to standard output (\(String(cString: strerror(failure))))")
        // _exit, not exit: nothing is buffered (every byte goes through write(2)), SQLite needs no
        // close to stay consistent, and exit's handlers would run while this thread still holds
        // the unwritten output (LeakSanitizer reported it as leaked).
        _exit(ExitCodes.failure)
    }

    /// Writes to stderr; a failure there has nowhere to be reported and is ignored.
    static func standardError(_ text: String) {
        _ = Data(text.utf8).withUnsafeBytes { writeAll(2, $0) }
    }

    /// write(2) until everything is written; 0, or the errno of the failure.
    private static func writeAll(_ descriptor: Int32, _ bytes: UnsafeRawBufferPointer) -> Int32 {
        var written = 0
        while written < bytes.count {
            let count = write(descriptor, bytes.baseAddress! + written, bytes.count - written)
            if count < 0 {
                if errno == EINTR { continue }
                return errno
            }
            if count == 0 { return EIO }
            written += count
        }
        return 0
    }

    static var stdoutIsTerminal: Bool { isatty(1) == 1 }
    static var stdinIsTerminal: Bool { isatty(0) == 1 }

    /// Pretty, key-sorted JSON on stdout.
    static func json(_ value: some Encodable) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        var data = try encoder.encode(value)
        data.append(0x0A)
        standardOutput(data)
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
