import ArgumentParser
import ChatLog

struct StatsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stats",
        abstract: "Count conversations, messages and tokens, in total or by model, day or role (no decryption)."
    )

    @OptionGroup var store: StoreOptions
    @OptionGroup var output: OutputOptions

    @Option(name: .long, help: "Group by model, day or role.")
    var by: StatsGrouping?
    @Option(name: .long, help: "Only messages at or after this time (RFC 3339 date, or a duration like 7d).")
    var since: String?
    @Option(name: .long, help: "Only messages before this time.")
    var until: String?

    func validate() throws {
        for (name, value) in [("--since", since), ("--until", until)] {
            if let value, TimeArgument.parse(value) == nil {
                throw ValidationError("\(name) must be a date (2026-11-27 or RFC 3339) or a duration (30m, 12h, 7d, 4w).")
            }
        }
    }

    struct RowJSON: Encodable {
        @JSONNullable var group: String?
        let conversations: Int
        let messages: Int
        let prompt_tokens: Int
        let completion_tokens: Int
    }

    func run() async throws {
        try await reportingErrors {
            let opened = try await StoreAccess.openForReading(store)
            let rows = try await opened.stats(
                by: by, since: since.flatMap { TimeArgument.parse($0) },
                until: until.flatMap { TimeArgument.parse($0) })
            if output.json {
                try CLIOutput.json(rows.map {
                    RowJSON(group: $0.group, conversations: $0.conversations, messages: $0.messages, prompt_tokens: $0.promptTokens,
                        completion_tokens: $0.completionTokens)
                })
                return
            }
            CLIOutput.line(Table.render(
                header: [by?.rawValue.uppercased() ?? "ALL", "CONVERSATIONS", "MESSAGES", "PROMPT TOKENS", "COMPLETION TOKENS"],
                rows: rows.map {
                    [CLIOutput.terminalSafeField($0.group ?? (by == nil ? "all" : "-")), String($0.conversations), String($0.messages),
                        String($0.promptTokens), String($0.completionTokens)]
                }))
        }
    }
}

extension StatsGrouping: ExpressibleByArgument {}
