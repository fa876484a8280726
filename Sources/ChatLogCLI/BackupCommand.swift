import ArgumentParser
import ChatLog

struct BackupCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup",
        abstract: "Write a consistent, still-encrypted copy of the store to a new 0600 file, while writers run.",
        discussion: """
            The copy is useless without the master key: keep the two apart (docs/OPERATIONS.md). It does not hold the \
            subject keys (STORE.subject-keys): back those up with --subject-keys, on a shorter retention, since a \
            `chatlog forget` is final only once every subject-key backup older than it has expired.
            """
    )

    @OptionGroup var store: StoreOptions
    @OptionGroup var output: OutputOptions

    @Flag(name: .long, help: "Copy the subject-key file (STORE.subject-keys) instead of the store.")
    var subjectKeys = false

    @Argument(help: "The new backup file (never overwritten).")
    var file: String

    func run() async throws {
        try await reportingErrors {
            let opened = try await StoreAccess.open(store)
            if subjectKeys {
                try opened.backupSubjectKeys(to: file)
            } else if let report = try await opened.backup(to: file) {
                // PostgreSQL: a verified copy of one snapshot; say what it does not carry.
                for (kind, count) in report.notCopied.sorted(by: { $0.key < $1.key }) {
                    CLIOutput.note("the backup does not carry the store's \(count) \(kind)")
                }
            }
            if output.json {
                try CLIOutput.json(["backup": file])
            } else if subjectKeys {
                CLIOutput.line("wrote subject-key backup \(file) (mode 0600; keep it on the shorter retention of docs/OPERATIONS.md)")
            } else {
                CLIOutput.line("wrote backup \(file) (mode 0600; open it with the same master key)")
            }
            if !subjectKeys, opened.storage == nil, try opened.subjectKeyCounts().live > 0 {
                CLIOutput.note(
                    "the backup does not hold the subject keys (\(opened.path).subject-keys): back them up with `chatlog backup --subject-keys FILE`, on a shorter retention (docs/OPERATIONS.md)")
            }
        }
    }
}
