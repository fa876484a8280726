import ArgumentParser
import ChatLog

struct BackupCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup",
        abstract: "Write a consistent, still-encrypted copy of the store to a new 0600 file, while writers run.",
        discussion: "The copy is useless without the master key: keep the two apart (docs/OPERATIONS.md)."
    )

    @OptionGroup var store: StoreOptions
    @OptionGroup var output: OutputOptions

    @Argument(help: "The new backup file (never overwritten).")
    var file: String

    func run() async throws {
        try await reportingErrors {
            let opened = try await StoreAccess.open(store)
            try opened.backup(to: file)
            if output.json {
                try CLIOutput.json(["backup": file])
            } else {
                CLIOutput.line("wrote backup \(file) (mode 0600; open it with the same master key)")
            }
        }
    }
}
