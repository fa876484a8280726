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
            let answer = try read(
                prompt: attempt == 1 ? "Passphrase (at least \(Passphrase.minimumLength) bytes): " : "Passphrase: ")
            guard case .success(let passphrase) = answer else {
                if case .failure(.passphrase(let why)) = answer { say(why) }
                continue
            }
            if confirm {
                guard case .success(let second) = try read(prompt: "Repeat passphrase: "), passphrase.constantTimeEquals(second) else {
                    say("the two passphrases differ")
                    continue
                }
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

    /// Reads one line into libsodium memory (Passphrase.reading): no String holds the passphrase.
    /// Throws when there is no terminal; a line that is no passphrase (too short, not UTF-8) is
    /// returned as a failure, so the caller can ask again.
    private static func read(prompt: String) throws(ChatLogError) -> Result<Passphrase, ChatLogError> {
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
        return Result { () throws(ChatLogError) in
            try Passphrase.reading { buffer in
                var count = 0
                var byte: UInt8 = 0
                while count < buffer.count, Glibc.read(tty, &byte, 1) == 1, byte != 0x0A, byte != 0x0D {
                    buffer[count] = byte
                    count += 1
                }
                byte = 0
                return count
            }
        }
    }
}
