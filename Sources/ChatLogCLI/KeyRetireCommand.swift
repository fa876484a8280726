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

    struct KeptJSON: Encodable {
        let key_id: UInt32
        let tokens: [String]
    }

    struct RetireJSON: Encodable {
        let retired: [UInt32]
        let kept_for_proxy_tokens: [KeptJSON]
    }

    func run() async throws {
        try await reportingErrors {
            let opened = try await StoreAccess.open(store)
            let retired: [KeyID]
            if let key {
                retired = [try await opened.retireKey(KeyID(rawValue: key)).id]
            } else {
                retired = try await opened.retireUnusedKeys()
            }
            // Index keys kept for proxy tokens nobody presented since the rotation (`--key` refuses them).
            let kept = key == nil ? try await opened.keysKeptForProxyTokens() : []
            if output.json {
                try CLIOutput.json(
                    RetireJSON(
                        retired: retired.map(\.rawValue),
                        kept_for_proxy_tokens: kept.map { KeptJSON(key_id: $0.key.rawValue, tokens: $0.tokens) }))
            } else {
                if retired.isEmpty {
                    CLIOutput.line("no unused decrypt-only key to retire")
                } else {
                    CLIOutput.line("retired key\(retired.count == 1 ? "" : "s") \(retired.map(\.description).joined(separator: ", ")); material destroyed")
                }
                for entry in kept {
                    CLIOutput.line(
                        "kept key \(entry.key): it still checks proxy token\(entry.tokens.count == 1 ? "" : "s") "
                            + entry.tokens.map { CLIOutput.terminalSafeField($0) }.joined(separator: ", ")
                            + ", not used since the index key changed; make one call with each through `chatlog serve`, or revoke it, then retire again")
                }
            }
        }
    }
}
