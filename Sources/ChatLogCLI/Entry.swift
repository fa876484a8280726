import ArgumentParser

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
        await ChatLogCommand.main()
    }
}
