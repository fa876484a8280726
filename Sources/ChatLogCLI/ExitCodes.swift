import ArgumentParser
import ChatLog

/// Exit codes. Scripts and cron jobs rely on them; README.md lists the same table.
enum ExitCodes {
    static let success: Int32 = 0
    static let failure: Int32 = 1
    static let rotationIncomplete: Int32 = 3
    static let integrityFailure: Int32 = 4
    static let usage: Int32 = 64  // EX_USAGE: ArgumentParser's validation failures
    static let invalidInput: Int32 = 65  // EX_DATAERR
    static let notFound: Int32 = 66  // EX_NOINPUT
    static let busy: Int32 = 75  // EX_TEMPFAIL
    static let keyProblem: Int32 = 77  // EX_NOPERM

    static let help = """
        Exit codes: 0 success; 1 other error; 3 key rotate stopped with rows remaining (run it again); \
        4 integrity failure (tampered or misplaced data); \
        64 usage error (also key rewrap to the same key); 65 invalid input (bad UTF-8, bad JSON, not a chatlog store, \
        retiring an active, retired or still used key); 66 store, conversation or key not found; 75 busy or locked, try again; \
        77 wrong, missing or refused master key.
        """

    static func code(for error: ChatLogError) -> Int32 {
        switch error.category {
        case .key: keyProblem
        case .integrity: integrityFailure
        case .invalidInput: invalidInput
        case .notFound: notFound
        case .busy: busy
        case .usage: usage
        case .other: failure
        }
    }
}

/// Runs a command body; a ChatLogError becomes one line on stderr and its exit code.
func reportingErrors(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch ChatLogError.notOnThisBackend(let location, "this") {
        // Named by the command that was run ("`chatlog export`"), not the library's "this".
        var arguments: [String] = []
        var rest = CommandLine.arguments.dropFirst()[...]
        while let argument = rest.popFirst() {
            if argument == "--db" || argument == "--to" { _ = rest.popFirst() } else if !argument.hasPrefix("-") { arguments.append(argument) }
        }
        let words = ["key", "token"].contains(arguments.first ?? "") ? arguments.prefix(2) : arguments.prefix(1)
        let error = ChatLogError.notOnThisBackend(location: location, what: "`chatlog \(words.joined(separator: " "))`")
        CLIOutput.error(error.description)
        throw ExitCode(ExitCodes.code(for: error))
    } catch let error as ChatLogError {
        CLIOutput.error(error.description)
        throw ExitCode(ExitCodes.code(for: error))
    }
}
