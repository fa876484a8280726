import ArgumentParser
import ChatLog

struct KeyRetireCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "retire",
        abstract: "Destroy old keys' material once no row uses them (all unused decrypt-only keys, or --key ID)."
    )

    @OptionGroup var store: StoreOptions
    @OptionGroup var output: OutputOptions

    @Option(name: .long, help: "Retire this key id only (refused while rows use it).")
    var key: UInt32?

    func run() async throws {
        try await reportingErrors {
            let opened = try await StoreAccess.open(store)
            let retired: [KeyID]
            if let key {
                retired = [try opened.retireKey(KeyID(rawValue: key)).id]
            } else {
                retired = try opened.retireUnusedKeys()
            }
            if output.json {
                try CLIOutput.json(["retired": retired.map(\.rawValue)])
            } else if retired.isEmpty {
                CLIOutput.line("no unused decrypt-only key to retire")
            } else {
                CLIOutput.line("retired key\(retired.count == 1 ? "" : "s") \(retired.map(\.description).joined(separator: ", ")); material destroyed")
            }
        }
    }
}
