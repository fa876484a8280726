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
    @OptionGroup var display: DisplayOptions

    @Option(name: [.customShort("n"), .long], help: "How many conversations to show (0 for all, page by page; at most 10000 otherwise).")
    var limit: Int = 20
    @Option(name: .long, help: "Only conversations created at or after this time (RFC 3339 date, or a duration like 7d, 12h).")
    var since: String?
    @Option(name: .long, help: "Only conversations created before this time (RFC 3339 date, or a duration like 7d).")
    var until: String?
    @Option(name: .long, help: "Only conversations with this subject (exact; uses the blind index).")
    var subject: String?
    @Option(name: .long, help: "Only conversations with a message of this model.")
    var model: String?
    @Option(name: .long, help: "Continue after a previous page (the cursor it printed).")
    var cursor: String?

    func validate() throws {
        guard (0...10_000).contains(limit) else { throw ValidationError("--limit must be between 0 (all) and 10000.") }
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

    struct PageJSON: Encodable {
        @JSONNullable var next_cursor: String?
    }

    /// Rows per read with `-n 0`.
    static let streamingPage = 500

    func run() async throws {
        try await reportingErrors {
            let opened = try await StoreAccess.openForReading(store)
            var query = ConversationQuery(
                since: since.flatMap { TimeArgument.parse($0) }, until: until.flatMap { TimeArgument.parse($0) }, subject: subject,
                model: model, limit: limit == 0 ? Self.streamingPage : limit, cursor: cursor)
            let json = output.json ? JSONListWriter(field: "conversations") : nil
            let style = display.style
            var shown = 0
            var nextCursor: String?
            repeat {
                let page = try await opened.conversations(query)
                nextCursor = page.nextCursor
                query.cursor = page.nextCursor
                shown += page.conversations.count
                if let json {
                    try json.append(page.conversations.map {
                        ConversationJSON(
                            id: $0.id.rawValue, title: $0.title, subject: $0.subject, created_at: CLIOutput.timestamp($0.createdAt),
                            updated_at: CLIOutput.timestamp($0.updatedAt), message_count: $0.messageCount)
                    })
                } else if !page.conversations.isEmpty {
                    let short = try await ShortIDMap(store: opened, conversations: page.conversations.map(\.id.rawValue))
                    let lines = Table.render(
                        header: ["ID", "CREATED", "MESSAGES", "SUBJECT", "TITLE"],
                        rows: page.conversations.map {
                            [short.conversation($0.id), CLIOutput.timestamp($0.createdAt), String($0.messageCount),
                                CLIOutput.terminalSafe(($0.subject ?? "-").oneLine(40)), CLIOutput.terminalSafe(($0.title ?? "-").oneLine(60))]
                        }
                    ).split(separator: "\n", omittingEmptySubsequences: false)
                    // The header once, at the top of the first page.
                    for (index, line) in lines.enumerated() where index > 0 || shown == page.conversations.count {
                        let text = style.fit(String(line))
                        CLIOutput.line(index == 0 ? style.bold + text + style.reset : text)
                    }
                }
            } while limit == 0 && nextCursor != nil
            if let json {
                try json.finish(PageJSON(next_cursor: nextCursor))
            } else if shown == 0 {
                CLIOutput.line("no conversations")
            } else if let nextCursor {
                CLIOutput.line("\nmore: --cursor \(nextCursor)")
            }
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
