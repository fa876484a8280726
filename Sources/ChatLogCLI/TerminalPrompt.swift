import ChatLog

#if canImport(Glibc)
    import Glibc
#endif

/// Reads a passphrase from the controlling terminal with echo off.
enum TerminalPrompt {
    static func passphrase(confirm: Bool) throws(ChatLogError) -> Passphrase {
        let first = try read(prompt: "Passphrase: ")
        if confirm {
            let second = try read(prompt: "Repeat passphrase: ")
            guard first == second else { throw .passphrase("the two passphrases differ") }
        }
        return try Passphrase(first)
    }

    private static func read(prompt: String) throws(ChatLogError) -> String {
        let tty = open("/dev/tty", O_RDWR | O_CLOEXEC)
        guard tty >= 0 else { throw .passphrase("no terminal to ask on; set CHATLOG_PASSPHRASE_FILE") }
        defer { close(tty) }
        _ = prompt.withCString { write(tty, $0, strlen($0)) }
        var saved = termios()
        let haveTermios = tcgetattr(tty, &saved) == 0
        if haveTermios {
            var silent = saved
            silent.c_lflag &= ~tcflag_t(ECHO)
            _ = tcsetattr(tty, TCSAFLUSH, &silent)
        }
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
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw .passphrase("the passphrase is not valid UTF-8")
        }
        return text
    }
}
