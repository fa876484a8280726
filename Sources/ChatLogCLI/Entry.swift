import ArgumentParser
import ChatLog

/// Process set-up that must happen before anything reads a secret, then the command line.
@main
enum Entry {
    static func main() async {
        ProcessHygiene.apply()
        CLIOutput.ignoreBrokenPipeSignal()
        if let message = ProcessHygiene.invalidUTF8Argument() {
            CLIOutput.error(message)
            ProcessHygiene.exit(ExitCodes.invalidInput)
        }
        ProcessHygiene.exit(await run(Array(CommandLine.arguments.dropFirst())))
    }

    /// Parses and runs the command line; returns the exit code. Usage errors are the README's one
    /// line `chatlog: error: …` and exit 64 (ArgumentParser prints a 3–4 line block with the
    /// usage); `--help` and `--version` print in full on stdout.
    static func run(_ arguments: [String]) async -> Int32 {
        do {
            let arguments = try CommandLineArguments.normalized(arguments)
            var command = try ChatLogCommand.parseAsRoot(arguments)
            if var command = command as? any AsyncParsableCommand {
                try await command.run()
            } else {
                try command.run()
            }
            return ExitCodes.success
        } catch let error as CommandLineArguments.UsageError {
            CLIOutput.error(error.message)
            return ExitCodes.usage
        } catch {
            let code = ChatLogCommand.exitCode(for: error).rawValue
            if code == ExitCodes.success {
                // --help, --version.
                CLIOutput.line(ChatLogCommand.fullMessage(for: error))
                return code
            }
            if error is ExitCode { return code }
            let message = ChatLogCommand.message(for: error)
            if !message.isEmpty { CLIOutput.error(CommandLineArguments.oneLine(message)) }
            return code
        }
    }
}
