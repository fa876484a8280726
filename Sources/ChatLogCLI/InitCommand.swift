import ArgumentParser
import ChatLog

struct InitCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Create a new encrypted store (schema, data key and index key)."
    )

    @OptionGroup var store: StoreOptions
    @OptionGroup var output: OutputOptions

    struct ReportJSON: Encodable {
        let path: String
        let created: Bool
        let master_key_fingerprint: String
    }

    func run() async throws {
        try await reportingErrors {
            let settings = try await StoreAccess.settings()
            let path = try store.path(settings)
            let source = try StoreAccess.keySource(settings, confirmPassphrase: true)
            let created: Bool
            let opened: ChatLogStore
            do {
                opened = try await ChatLogStore.create(url: path, key: source, subjectKeys: try settings.subjectKeysLocation)
                created = true
            } catch ChatLogError.storeExists {
                // The key is checked on an existing store too: a job that runs `init` before its
                // work must not learn "nothing changed" (exit 0) with a key that opens nothing.
                opened = try await ChatLogStore.open(url: path, key: source, subjectKeys: try settings.subjectKeysLocation)
                created = false
            }
            let fingerprint = try await opened.keyStatus().masterKeyFingerprint
            try opened.close()
            let shown = opened.path
            if output.json {
                try CLIOutput.json(ReportJSON(path: shown, created: created, master_key_fingerprint: fingerprint.description))
            } else if created {
                CLIOutput.line("created chatlog store \(shown) (master key \(fingerprint), from \(source.origin))")
            } else {
                CLIOutput.line("a chatlog store already exists at \(shown) and opens with master key \(fingerprint); nothing changed")
            }
        }
    }
}
