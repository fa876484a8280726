import ArgumentParser
import ChatLog

struct InitCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Create a new encrypted store (schema, data key and index key)."
    )

    @OptionGroup var store: StoreOptions
    @OptionGroup var output: OutputOptions

    func run() async throws {
        try await reportingErrors {
            let settings = try await StoreAccess.settings()
            let path = store.path(settings)
            let source = try StoreAccess.keySource(settings, confirmPassphrase: true)
            do {
                let created = try ChatLogStore.create(at: path, key: source)
                let fingerprint = try created.keyStatus().masterKeyFingerprint
                try created.close()
                if output.json {
                    try CLIOutput.json(["path": path, "created": "true", "master_key_fingerprint": fingerprint.description])
                } else {
                    CLIOutput.line("created chatlog store \(path) (master key \(fingerprint), from \(source.origin))")
                }
            } catch ChatLogError.storeExists {
                if output.json {
                    try CLIOutput.json(["path": path, "created": "false"])
                } else {
                    CLIOutput.line("a chatlog store already exists at \(path); nothing changed")
                }
            }
        }
    }
}
