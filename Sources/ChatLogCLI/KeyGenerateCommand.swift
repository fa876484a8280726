import ArgumentParser
import ChatLog

struct KeyGenerateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Print a new random master key in base64, or write it to a new 0600 file."
    )

    @Option(name: .long, help: "Write the key to this new file (mode 0600) instead of stdout; never overwrites.")
    var output: String?

    func run() async throws {
        try await reportingErrors {
            let key = MasterKey.generate()
            if let output {
                try PrivateFiles.createPrivateFile(at: output, contents: Array((key.exportBase64() + "\n").utf8))
                CLIOutput.note("wrote a new master key to \(output) (mode 0600), fingerprint \(key.fingerprint)")
            } else {
                CLIOutput.line(key.exportBase64())
            }
        }
    }
}
