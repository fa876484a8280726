import ChatLog

#if canImport(Glibc)
    import Glibc
#endif

/// Reads a passphrase from the controlling terminal (`/dev/tty`) with echo off, so it works
/// when stdin is a pipe (`… | chatlog log`). Three tries; the minimum length is said up front.
enum TerminalPrompt {
    static let tries = 3

    /// Whether to ask: someone is at a terminal (stdin or stderr is one) and the process has a
    /// controlling terminal to ask on. Cron and systemd jobs have neither and fail at once
    /// with "no master key" instead of waiting for an answer.
    static var isAvailable: Bool {
        guard isatty(0) == 1 || isatty(2) == 1 else { return false }
        let tty = open("/dev/tty", O_RDWR | O_CLOEXEC)
        guard tty >= 0 else { return false }
        close(tty)
        return true
    }

    static func passphrase(confirm: Bool) throws(ChatLogError) -> Passphrase {
        for attempt in 1...tries {
            let first = try read(
                prompt: attempt == 1 ? "Passphrase (at least \(Passphrase.minimumLength) bytes): " : "Passphrase: ")
            let passphrase: Passphrase
            do {
                passphrase = try Passphrase(first)
            } catch {
                say("too short: at least \(Passphrase.minimumLength) bytes")
                continue
            }
            if confirm, try read(prompt: "Repeat passphrase: ") != first {
                say("the two passphrases differ")
                continue
            }
            return passphrase
        }
        throw .passphrase("no usable passphrase after \(tries) tries")
    }

    /// One line on the terminal (not stderr, which may be a log file).
    static func say(_ text: String) {
        let tty = open("/dev/tty", O_WRONLY | O_CLOEXEC)
        guard tty >= 0 else { return }
        defer { close(tty) }
        _ = (text + "\n").withCString { write(tty, $0, strlen($0)) }
    }

    private static func read(prompt: String) throws(ChatLogError) -> String {
        let tty = open("/dev/tty", O_RDWR | O_CLOEXEC)
        guard tty >= 0 else { throw .passphrase("no terminal to ask on; set CHATLOG_PASSPHRASE_FILE") }
        defer { close(tty) }
        var saved = termios()
        let haveTermios = tcgetattr(tty, &saved) == 0
        if haveTermios {
            var silent = saved
            silent.c_lflag &= ~tcflag_t(ECHO)
            _ = tcsetattr(tty, TCSAFLUSH, &silent)
        }
        // The prompt after echo is off (and typed-ahead input flushed): what is typed once it
        // shows is read, and never echoed.
        _ = prompt.withCString { write(tty, $0, strlen($0)) }
        defer {
            if haveTermios { _ = tcsetattr(tty, TCSAFLUSH, &saved) }
            _ = "\n".withCString { write(tty, $0, 1) }
        }
        var bytes: [UInt8] = []
        var byte: UInt8 = 0
        while Glibc.read(tty, &byte, 1) == 1, byte != 0x0A, byte != 0x0D {
            bytes.append(byte)
            if bytes.count > 4096 { break }
        }
        defer { bytes.withUnsafeMutableBytes { buffer in if let base = buffer.baseAddress { memset(base, 0, buffer.count) } } }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw .passphrase("the passphrase is not valid UTF-8")
        }
        return text
    }
}
