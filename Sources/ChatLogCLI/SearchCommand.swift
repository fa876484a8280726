import ArgumentParser
import ChatLog
import Foundation

struct SearchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "search",
        abstract: "Search message content: words (all must match), \"phrases\", -excluded, a OR b.",
        discussion: """
            Words are matched after Unicode normalisation (NFKC) and lower-casing; Chinese and Japanese characters \
            match one by one, in order. Every result is decrypted and checked against the query before it is shown.
            """
    )

    @OptionGroup var store: StoreOptions
    @OptionGroup var output: OutputOptions

    @Argument(help: "The query.")
    var query: String
    @Option(name: .long, help: "Only this conversation (its id).")
    var conversation: String?
    @Option(name: .long, help: "Only messages of this role: user, assistant, system or tool.")
    var role: String?
    @Option(name: .long, help: "Only messages of this model.")
    var model: String?
    @Option(name: .long, help: "Only messages at or after this time (RFC 3339 date, or a duration like 7d).")
    var since: String?
    @Option(name: .long, help: "Only messages before this time (RFC 3339 date, or a duration like 7d).")
    var until: String?
    @Option(name: .long, help: "Only conversations with this subject (exact).")
    var subject: String?
    @Option(name: .long, help: "How many hits to show (1–1000).")
    var limit: Int = 20
    @Option(name: .long, help: "Skip this many hits first.")
    var offset: Int = 0
    @Option(name: .long, help: "relevance (BM25, default) or newest.")
    var sort: String = "relevance"

    func validate() throws {
        if let conversation, ConversationID(conversation) == nil { throw ValidationError("--conversation must be a conversation id (a UUID).") }
        if let role, Role(rawValue: role) == nil { throw ValidationError("--role must be one of: user, assistant, system, tool.") }
        if SearchSort(rawValue: sort) == nil { throw ValidationError("--sort must be relevance or newest.") }
        guard (1...1_000).contains(limit) else { throw ValidationError("--limit must be between 1 and 1000.") }
        guard (0...100_000).contains(offset) else { throw ValidationError("--offset must be between 0 and 100000.") }
        for (name, value) in [("--since", since), ("--until", until)] {
            if let value, TimeArgument.parse(value) == nil {
                throw ValidationError("\(name) must be a date (2026-11-27 or RFC 3339) or a duration (30m, 12h, 7d, 4w).")
            }
        }
    }

    struct HitJSON: Encodable {
        let message_id: String
        let conversation_id: String
        let role: String
        let created_at: String
        let model: String?
        let snippet: String
        let content: String
        let score: Double?
    }

    func run() async throws {
        try await reportingErrors {
            let opened = try await StoreAccess.open(store)
            let filters = SearchFilters(
                conversation: conversation.flatMap { ConversationID($0) }, role: role.flatMap { Role(rawValue: $0) }, model: model,
                since: since.flatMap { TimeArgument.parse($0) }, until: until.flatMap { TimeArgument.parse($0) }, subject: subject)
            let results = try await opened.search(query, filters: filters, limit: limit, offset: offset, sort: SearchSort(rawValue: sort)!)
            if output.json {
                try CLIOutput.json(results.hits.map {
                    HitJSON(
                        message_id: $0.messageID.rawValue, conversation_id: $0.conversationID.rawValue, role: $0.role.rawValue,
                        created_at: CLIOutput.timestamp($0.createdAt), model: $0.model, snippet: $0.snippet.text, content: $0.content,
                        score: $0.score)
                })
            } else if results.hits.isEmpty {
                CLIOutput.line("no matches")
            } else {
                for hit in results.hits {
                    let bold = CLIOutput.stdoutIsTerminal ? "\u{1B}[1m" : ""
                    let dim = CLIOutput.stdoutIsTerminal ? "\u{1B}[2m" : ""
                    let reset = CLIOutput.stdoutIsTerminal ? "\u{1B}[0m" : ""
                    CLIOutput.line("\(dim)\(CLIOutput.timestamp(hit.createdAt))  \(hit.role.rawValue)"
                        + (hit.model.map { "  \(CLIOutput.terminalSafe($0))" } ?? "")
                        + "  conversation \(hit.conversationID)  message \(hit.messageID)\(reset)")
                    CLIOutput.line("  " + Self.highlighted(hit.snippet, on: bold, off: reset).replacingOccurrences(of: "\n", with: " "))
                }
            }
            if !results.complete {
                CLIOutput.note("ranked the newest \(results.examined) candidates only; add words or filters to narrow the search")
            }
        }
    }

    /// The snippet with its matches wrapped in `on`/`off` (bold on a terminal, nothing otherwise),
    /// control characters escaped.
    static func highlighted(_ snippet: Snippet, on: String, off: String) -> String {
        var output = ""
        var cursor = snippet.text.startIndex
        for range in snippet.highlights.sorted(by: { $0.lowerBound < $1.lowerBound }) where range.lowerBound >= cursor {
            output += CLIOutput.terminalSafe(String(snippet.text[cursor..<range.lowerBound]))
            output += on + CLIOutput.terminalSafe(String(snippet.text[range])) + off
            cursor = range.upperBound
        }
        return output + CLIOutput.terminalSafe(String(snippet.text[cursor...]))
    }
}
