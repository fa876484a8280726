import ArgumentParser
import ChatLog
import Foundation

struct SearchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "search",
        abstract: "Search message content: words (all must match), \"phrases\", -excluded, a OR b.",
        discussion: """
            Words are matched after Unicode normalisation (NFKC) and lower-casing; Chinese and Japanese characters \
            match one by one, in order. Only uppercase OR joins alternatives: a lowercase "or" is a word like any \
            other. Accents are not folded: "réfund" does not find "refund" (see README.md). Every result is \
            decrypted and checked against the query before it is shown.
            """
    )

    @OptionGroup var store: StoreOptions
    @OptionGroup var output: OutputOptions
    @OptionGroup var display: DisplayOptions

    @Argument(help: "The query.")
    var query: String
    @Option(name: .long, help: "Only this conversation (its id, or a unique prefix of at least 8 characters).")
    var conversation: String?
    @Option(name: .long, help: "Only messages of this role.")
    var role: Role?
    @Option(name: .long, help: "Only messages of this model.")
    var model: String?
    @Option(name: .long, help: "Only messages at or after this time (RFC 3339 date, or a duration like 7d).")
    var since: String?
    @Option(name: .long, help: "Only messages before this time (RFC 3339 date, or a duration like 7d).")
    var until: String?
    @Option(name: .long, help: "Only conversations with this subject (exact).")
    var subject: String?
    @Option(name: [.customShort("n"), .long], help: "How many hits to show (1–1000).")
    var limit: Int = 20
    @Option(name: .long, help: "Skip this many hits first (the next page starts at --offset plus --limit).")
    var offset: Int = 0
    @Option(name: .long, help: "relevance (BM25, default) or newest.")
    var sort: SearchSort = .relevance

    func validate() throws {
        if let conversation { try ConversationArgument.validate(conversation, "--conversation") }
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
        @JSONNullable var model: String?
        let snippet: String
        let content: String
        @JSONNullable var score: Double?
    }

    /// What follows the hits in `--json`: how many matched, whether more follow, where the next
    /// page starts.
    struct PageJSON: Encodable {
        @JSONNullable var matched: Int?
        let more: Bool
        @JSONNullable var next_offset: Int?
        let complete: Bool
    }

    func run() async throws {
        try await reportingErrors {
            let opened = try await StoreAccess.openForReading(store)
            let conversationID: ConversationID?
            if let conversation { conversationID = try await ConversationArgument.resolve(conversation, in: opened) } else { conversationID = nil }
            let filters = SearchFilters(
                conversation: conversationID, role: role, model: model,
                since: since.flatMap { TimeArgument.parse($0) }, until: until.flatMap { TimeArgument.parse($0) }, subject: subject)
            let results = try await opened.search(query, filters: filters, limit: limit, offset: offset, sort: sort)
            let nextOffset = results.more ? offset + limit : nil
            if output.json {
                let writer = JSONListWriter(field: "hits")
                try writer.append(results.hits.map {
                    HitJSON(
                        message_id: $0.messageID.rawValue, conversation_id: $0.conversationID.rawValue, role: $0.role.rawValue,
                        created_at: CLIOutput.timestamp($0.createdAt), model: $0.model, snippet: $0.snippet.text, content: $0.content,
                        score: $0.score)
                })
                try writer.finish(PageJSON(matched: results.matched, more: results.more, next_offset: nextOffset, complete: results.complete))
            } else if results.hits.isEmpty {
                CLIOutput.line(offset > 0 && results.matched.map { $0 > 0 } == true ? "no matches after \(offset)" : "no matches")
            } else {
                try await printHits(results, in: opened)
                let shown = "\(offset + 1)–\(offset + results.hits.count)"
                let seen = offset + results.hits.count
                let total =
                    results.matched.map { "\($0) match\($0 == 1 ? "" : "es")" }
                    ?? (results.more ? "at least \(seen + 1) matches" : "\(seen) match\(seen == 1 ? "" : "es")")
                CLIOutput.line("\n\(total); showing \(shown)" + (nextOffset.map { "; more: --offset \($0)" } ?? ""))
            }
            if !results.complete {
                CLIOutput.note("ranked the newest \(results.examined) candidates only; add words or filters to narrow the search")
            }
        }
    }

    private func printHits(_ results: SearchResults, in store: ChatLogStore) async throws {
        let style = display.style
        let short = try await ShortIDMap(
            store: store, conversations: results.hits.map(\.conversationID.rawValue), messages: results.hits.map(\.messageID.rawValue))
        for hit in results.hits {
            // Ids first: a narrow terminal cuts the time, not the ids.
            let header = "conversation \(short.conversation(hit.conversationID))  message \(short.message(hit.messageID))"
                + "  \(hit.role.rawValue)" + (hit.model.map { "  \(CLIOutput.terminalSafeField($0))" } ?? "")
                + "  \(CLIOutput.timestamp(hit.createdAt))"
            CLIOutput.line(style.dim + style.fit(header) + style.reset)
            for line in style.wrap(hit.snippet.text, highlights: hit.snippet.highlights, indent: "  ") { CLIOutput.line(line) }
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

extension Role: ExpressibleByArgument {}
extension SearchSort: ExpressibleByArgument {}
