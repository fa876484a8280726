import ArgumentParser
import ChatLog
import Foundation

struct ListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "List conversations, newest first."
    )

    @OptionGroup var store: StoreOptions
    @OptionGroup var output: OutputOptions

    @Option(name: .long, help: "How many conversations to show (1–10000).")
    var limit: Int = 20
    @Option(name: .long, help: "Only conversations created at or after this time (RFC 3339 date, or a duration like 7d, 12h).")
    var since: String?
    @Option(name: .long, help: "Only conversations created before this time (RFC 3339 date, or a duration like 7d).")
    var until: String?
    @Option(name: .long, help: "Only conversations with this subject (exact; uses the blind index).")
    var subject: String?
    @Option(name: .long, help: "Continue after a previous page (the cursor it printed).")
    var cursor: String?

    func validate() throws {
        guard (1...10_000).contains(limit) else { throw ValidationError("--limit must be between 1 and 10000.") }
        for (name, value) in [("--since", since), ("--until", until)] {
            if let value, TimeArgument.parse(value) == nil {
                throw ValidationError("\(name) must be a date (2026-11-27 or RFC 3339) or a duration (30m, 12h, 7d, 4w).")
            }
        }
    }

    struct ConversationJSON: Encodable {
        let id: String
        @JSONNullable var title: String?
        @JSONNullable var subject: String?
        let created_at: String
        let updated_at: String
        let message_count: Int
    }

    func run() async throws {
        try await reportingErrors {
            let opened = try await StoreAccess.open(store)
            let page = try await opened.conversations(
                ConversationQuery(
                    since: since.flatMap { TimeArgument.parse($0) }, until: until.flatMap { TimeArgument.parse($0) }, subject: subject,
                    limit: limit, cursor: cursor))
            if output.json {
                try CLIOutput.json(page.conversations.map {
                    ConversationJSON(
                        id: $0.id.rawValue, title: $0.title, subject: $0.subject, created_at: CLIOutput.timestamp($0.createdAt),
                        updated_at: CLIOutput.timestamp($0.updatedAt), message_count: $0.messageCount)
                })
                return
            }
            if page.conversations.isEmpty {
                CLIOutput.line("no conversations")
                return
            }
            CLIOutput.line(Table.render(
                header: ["ID", "CREATED", "MESSAGES", "SUBJECT", "TITLE"],
                rows: page.conversations.map {
                    [$0.id.rawValue, CLIOutput.timestamp($0.createdAt), String($0.messageCount),
                        CLIOutput.terminalSafe(($0.subject ?? "-").oneLine(40)), CLIOutput.terminalSafe(($0.title ?? "-").oneLine(60))]
                }))
            if let next = page.nextCursor { CLIOutput.line("\nmore: --cursor \(next)") }
        }
    }
}

extension String {
    /// First line, cut to `limit` characters with an ellipsis.
    func oneLine(_ limit: Int) -> String {
        let first = split(separator: "\n", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
        return first.count > limit ? String(first.prefix(limit - 1)) + "…" : first
    }
}

/// `--since` / `--until`: an RFC 3339 timestamp, a date (UTC midnight), or a duration back from now.
enum TimeArgument {
    static func parse(_ text: String, now: Date = Date()) -> Date? {
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800]
        if let unit = text.last, let seconds = units[unit], let count = Double(text.dropLast()), count >= 0, count.isFinite {
            return now.addingTimeInterval(-count * seconds)
        }
        return Timestamps.parse(text)
    }
}
