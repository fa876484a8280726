import ArgumentParser
import ChatLog

struct KeyRewrapCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rewrap",
        abstract: "Rotate the master key: rewrap every data and index key under a new one, in one transaction.",
        discussion: """
            The current key comes from CHATLOG_MASTER_KEY / _FILE / CHATLOG_PASSPHRASE_FILE as usual, the new one \
            from CHATLOG_NEW_MASTER_KEY, CHATLOG_NEW_MASTER_KEY_FILE or CHATLOG_NEW_PASSPHRASE_FILE. Interrupted at \
            any instant, exactly one of the two keys opens the store.
            """
    )

    @OptionGroup var store: StoreOptions
    @OptionGroup var output: OutputOptions

    func run() async throws {
        try await reportingErrors {
            let settings = try await StoreAccess.settings()
            let newSource = try settings.newMasterKeySource(
                prompt: CLIOutput.stdinIsTerminal ? { @Sendable () throws(ChatLogError) -> Passphrase in
                    CLIOutput.note("new passphrase:")
                    return try TerminalPrompt.passphrase(confirm: true)
                } : nil)
            let opened = try await StoreAccess.open(store)
            let old = try await opened.keyStatus().masterKeyFingerprint
            let new = try await opened.rewrapMasterKey(to: newSource)
            if output.json {
                try CLIOutput.json(["old_master_key_fingerprint": old.description, "new_master_key_fingerprint": new.description])
            } else {
                CLIOutput.line("master key changed: \(old) → \(new); use the new key from now on")
            }
        }
    }
}
