import ArgumentParser
import ChatLog

struct KeyStatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show the master key's fingerprint, every data and index key with its state and use, and how many subject keys exist.",
        discussion: "Subject keys (one per end user, in STORE.subject-keys) are only counted: which subjects exist is never shown."
    )

    @OptionGroup var store: StoreOptions
    @OptionGroup var output: OutputOptions

    struct KeyJSON: Encodable {
        let id: UInt32
        let kind: String
        let state: String
        let created_at: String
        @JSONNullable var retired_at: String?
        let rows: Int
    }

    struct StatusJSON: Encodable {
        let master_key_fingerprint: String
        let master_key_source: String
        let keys: [KeyJSON]
        /// null when the store cannot reach its subject keys (PostgreSQL without CHATLOG_SUBJECT_KEYS).
        @JSONNullable var subject_keys: Int?
        @JSONNullable var forgotten_subject_keys: Int?
    }

    func run() async throws {
        try await reportingErrors {
            let opened = try await StoreAccess.openForReading(store)
            let status = try await opened.keyStatus()
            // Without its subject-key database a PostgreSQL store sees no subject key: say so
            // rather than print zero.
            let subjects = opened.erasure.reachesSubjectKeys ? try await opened.erasure.keyCounts() : nil
            if output.json {
                try CLIOutput.json(
                    StatusJSON(
                        master_key_fingerprint: status.masterKeyFingerprint.description,
                        master_key_source: status.masterKeySource,
                        keys: status.keys.map {
                            KeyJSON(
                                id: $0.id.rawValue, kind: $0.kind.rawValue, state: $0.state.rawValue,
                                created_at: CLIOutput.timestamp($0.createdAt), retired_at: $0.retiredAt.map(CLIOutput.timestamp),
                                rows: $0.rowCount)
                        }, subject_keys: subjects?.live, forgotten_subject_keys: subjects?.forgotten))
                return
            }
            CLIOutput.line("master key  \(status.masterKeyFingerprint)  (\(status.masterKeySource))")
            CLIOutput.line()
            CLIOutput.line(Table.render(
                header: ["ID", "KIND", "STATE", "CREATED", "ROWS"],
                rows: status.keys.map {
                    [String($0.id.rawValue), $0.kind.rawValue, $0.state.rawValue, CLIOutput.timestamp($0.createdAt), String($0.rowCount)]
                }))
            CLIOutput.line()
            if let subjects {
                CLIOutput.line("subject keys  \(subjects.live)  (\(subjects.forgotten) forgotten)")
            } else {
                CLIOutput.line("subject keys  unknown: CHATLOG_SUBJECT_KEYS (the subject-key database) is not set")
            }
        }
    }
}
