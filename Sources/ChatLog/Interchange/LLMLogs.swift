import Foundation
import GRDB

/// Simon Willison's `llm` tool: its SQLite `logs.db`, read-only. Both generations are read: the
/// classic `conversations`/`responses` tables (every llm version) and the message store
/// (`threads`/`turns`/`messages`/`parts`, llm 0.32+). The mapping follows Tests/Fixtures/README.md:
/// one conversation per thread or legacy conversation; a turn's (or response's) time on all of
/// its new messages; the model (`resolved_model`, else `model`) on the answer only; tokens,
/// latency and finish reason on the turn's last message (the assistant's answer); reasoning,
/// tool calls, tool results, attachments, fragments and options in message metadata.
public enum LLMLogs {
    public static let format = "llm"
    /// The newest llm release whose migrations chatlog knows.
    public static let knownVersion = "0.36"

    /// `_llm_migrations` names up to llm 0.36, in the order llm applies them.
    public static let knownMigrations: [String] = [
        "m001_initial", "m002_id_primary_key", "m003_chat_id_foreign_key", "m004_column_order", "m004_drop_provider",
        "m005_debug", "m006_new_logs_table", "m007_finish_logs_table", "m008_reply_to_id_foreign_key",
        "m008_fix_column_order_in_logs", "m009_delete_logs_table_if_empty", "m010_create_new_log_tables",
        "m011_fts_for_responses", "m012_attachments_tables",
        // llm 0.19 … 0.31
        "m013_usage", "m014_schemas", "m015_fragments_tables", "m016_fragments_table_pks", "m017_tools_tables",
        "m017_tools_plugin", "m018_tool_instances", "m019_resolved_model", "m020_tool_results_attachments",
        "m021_tool_results_exception",
        // llm 0.32 … 0.36
        "m022_response_reasoning", "m023_message_store", "m024_tool_instance_references",
        "m025_turn_tools_instance_backfill", "m026_message_tree_view", "m027_turns_response_json",
    ]

    /// Reads every conversation of the logs.db at `path`, without changing the file: it is opened
    /// read-only (SQLITE_OPEN_READONLY), so no journal mode change, no migration, no lock file.
    /// The whole file is read in one read transaction (a consistent snapshot even while llm
    /// writes). Whole-file problems throw; a conversation that cannot be read becomes an
    /// `ImportIssue` naming it ("thread 01…", "conversation 01…").
    public static func records(path: String) throws(ChatLogError) -> [Result<ImportedConversation, ImportIssue>] {
        try checkSQLiteHeader(path)
        var configuration = Configuration()
        configuration.readonly = true
        configuration.busyMode = .timeout(10)
        configuration.label = "chatlog.llm-import"
        let queue: DatabaseQueue
        do {
            queue = try DatabaseQueue(path: path, configuration: configuration)
        } catch {
            throw opening(error, path: path)
        }
        defer { try? queue.close() }
        do {
            return try queue.read { db in try LLMLogsReader(db: db, path: path).read() }
        } catch let error as ChatLogError {
            throw error
        } catch let issue as LLMIssue {
            throw .invalidInput("cannot read \(path) as an llm logs.db: \(issue.problem)")
        } catch {
            throw opening(error, path: path)
        }
    }

    private static func opening(_ error: any Error, path: String) -> ChatLogError {
        if let error = error as? DatabaseError, error.resultCode == .SQLITE_NOTADB {
            return .invalidInput("\(path) is not a SQLite database")
        }
        let wrapped = ChatLogError.wrap(error)
        if case .storage(let why) = wrapped { return .invalidInput("cannot read \(path) as an llm logs.db: \(why)") }
        return wrapped
    }

    private static func checkSQLiteHeader(_ path: String) throws(ChatLogError) {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw .invalidInput("cannot open \(path): no such file")
        }
        guard !isDirectory.boolValue else { throw .invalidInput("\(path) is a directory, not an llm logs.db") }
        guard let handle = FileHandle(forReadingAtPath: path) else { throw .invalidInput("cannot open \(path) for reading") }
        defer { try? handle.close() }
        let header: Data
        do { header = try handle.read(upToCount: 16) ?? Data() } catch { throw .invalidInput("cannot read \(path)") }
        guard header.elementsEqual(Array("SQLite format 3".utf8) + [0]) else {
            throw .invalidInput("\(path) is not a SQLite database")
        }
    }
}

// MARK: - Times

/// llm's `datetime_utc` texts, and dates that store exactly the millisecond they came from.
enum ImportTimes {
    /// Microseconds since the Unix epoch from llm's `datetime_utc`: `2026-11-27T00:45:43.732358+00:00`,
    /// the same with a space for `T`, naive (`2026-11-27T00:47:58.581154`, which llm means as UTC),
    /// `Z`, other offsets, fewer or no fractional digits.
    static func microseconds(llm text: String) -> Int64? {
        Timestamps.microseconds(text, lenient: true)
    }

    /// Milliseconds, rounded down (as chatlog stores times).
    static func milliseconds(microseconds: Int64) -> Int64 {
        microseconds >= 0 ? microseconds / 1000 : -((-microseconds + 999) / 1000)
    }

    /// Milliseconds (rounded down) from fractional Unix seconds as a JSON number gives them. The
    /// double nearest to `1718207114.258` may be a hair below it; that is corrected, so the
    /// result is the floor of the decimal number written in the file (for up to microsecond digits).
    static func milliseconds(unixSeconds value: Double) -> Int64? {
        guard value.isFinite, abs(value) < 1e14 else { return nil }
        var result = Int64((value * 1000).rounded(.down))
        if Double(result + 1) / 1000 <= value { result += 1 }
        return result
    }

    /// A date whose `unixMilliseconds` (the floor chatlog stores) is exactly `milliseconds`:
    /// `Date(timeIntervalSince1970: ms / 1000)` alone comes back one millisecond short for some
    /// values, so the interval is nudged up by as many ulps as that takes.
    static func date(milliseconds: Int64) -> Date {
        var interval = Double(milliseconds) / 1000
        for _ in 0..<4096 {
            let date = Date(timeIntervalSince1970: interval)
            if date.unixMilliseconds >= milliseconds { return date }
            interval = interval.nextUp
        }
        return Date(timeIntervalSince1970: (Double(milliseconds) + 0.5) / 1000)
    }
}

// MARK: - The reader

private struct LLMIssue: Error {
    let problem: String
    init(_ problem: String) { self.problem = problem }
}

/// Column values as the reader takes them. GRDB's `row[column]` traps (`try!`) on a value of
/// another type than asked for, which a damaged or hand-made logs.db can hold in any column
/// (an integer or a non-UTF-8 blob where llm writes text): these throw an `LLMIssue` instead,
/// which fails the conversation it is in, or else the file.
extension Row {
    fileprivate func text(_ column: String) throws(LLMIssue) -> String? {
        do { return try decode(String?.self, forColumn: column) } catch {
            throw LLMIssue("a value in column \(column) is not text")
        }
    }

    fileprivate func integer(_ column: String) throws(LLMIssue) -> Int64? {
        do { return try decode(Int64?.self, forColumn: column) } catch {
            throw LLMIssue("a value in column \(column) is not an integer")
        }
    }
}

/// One conversation ready to emit, with what orders the result.
private struct LLMEntry {
    let sortKey: Int64
    let id: String
    let result: Result<ImportedConversation, ImportIssue>
}

private struct ClassicConversation {
    let id: String
    let title: String?
    let messages: [NewMessage]
    let firstMicroseconds: Int64
}

private struct LLMTurn {
    let rowid: Int64
    let id: String
    let threadID: String?
    let parentHash: String?
    let tipHash: String?
    let model: String?
    let options: String?
    let inputTokens: Int?
    let outputTokens: Int?
    let durationMilliseconds: Int?
    let microseconds: Int64?
    let responseJSON: String?
}

private struct LLMLogsReader {
    let db: Database
    let path: String

    func read() throws -> [Result<ImportedConversation, ImportIssue>] {
        let tables = Set(try String.fetchAll(db, sql: "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')"))
        guard tables.contains("_llm_migrations") else {
            throw ChatLogError.invalidInput("\(path) is a SQLite database but not an llm logs.db (it has no _llm_migrations table)")
        }
        let names = try String?.fetchAll(db, sql: "SELECT name FROM _llm_migrations")
        let known = Set(LLMLogs.knownMigrations)
        var migrations = Set<String>()
        for name in names {
            guard let name, known.contains(name) else {
                throw ChatLogError.invalidInput(
                    "unknown llm logs.db version: migration \(name ?? "NULL"); chatlog knows llm up to \(LLMLogs.knownVersion)")
            }
            migrations.insert(name)
        }
        guard migrations.contains("m010_create_new_log_tables"), tables.contains("conversations"), tables.contains("responses") else {
            throw ChatLogError.invalidInput(
                "\(path) is an llm logs.db older than the conversations/responses tables (no migration m010_create_new_log_tables); "
                    + "open it once with a newer llm (0.4 or later) to upgrade it")
        }
        var hasMessageStore = false
        if migrations.contains("m023_message_store") {
            for table in ["threads", "turns", "messages", "parts"] where !tables.contains(table) {
                throw ChatLogError.invalidInput("\(path) records migration m023_message_store but has no \(table) table")
            }
            hasMessageStore = true
        }

        let turns = hasMessageStore ? try loadTurns() : []
        var entries: [LLMEntry] = []
        var legacy = try readClassic(tables: tables, skipping: Set(turns.map(\.id)), into: &entries)
        if hasMessageStore {
            try readMessageStore(tables: tables, turns: turns, legacy: &legacy, into: &entries)
        }
        // Legacy conversations that no thread continued.
        for conversation in legacy.values {
            entries.append(
                LLMEntry(
                    sortKey: ImportTimes.milliseconds(microseconds: conversation.firstMicroseconds), id: conversation.id,
                    result: .success(imported(conversation, source: "classic"))))
        }
        entries.sort { ($0.sortKey, $0.id) < ($1.sortKey, $1.id) }
        return entries.map(\.result)
    }

    private func imported(_ conversation: ClassicConversation, source: String) -> ImportedConversation {
        ImportedConversation(
            sourceID: "conversation:\(conversation.id)",
            conversation: NewConversation(
                title: conversation.title,
                metadata: .object(["llm_id": .string(conversation.id), "llm_source": .string(source)]),
                createdAt: conversation.messages.first?.createdAt),
            messages: conversation.messages)
    }

    // MARK: Classic tables

    /// Every legacy conversation by id (responses logged as turns too, by llm 0.32's dual write,
    /// are left out: the message store has them).
    private func readClassic(tables: Set<String>, skipping turnIDs: Set<String>, into entries: inout [LLMEntry]) throws
        -> [String: ClassicConversation]
    {
        let columns = Set(try db.columns(in: "responses").map { $0.name.lowercased() })
        func optional(_ column: String) -> String { columns.contains(column) ? "\"\(column)\"" : "NULL" }
        let rows = try Row.fetchAll(
            db,
            sql: """
                SELECT rowid AS chatlog_rowid, id, model, prompt, system, options_json, response, conversation_id, duration_ms,
                       datetime_utc, \(optional("response_json")) AS response_json, \(optional("input_tokens")) AS input_tokens,
                       \(optional("output_tokens")) AS output_tokens, \(optional("resolved_model")) AS resolved_model,
                       \(optional("reasoning")) AS reasoning
                FROM responses
                """)
        var titles: [String: String?] = [:]
        for row in try Row.fetchAll(db, sql: "SELECT id, name FROM conversations") {
            if let id = try row.text("id") { titles[id] = try row.text("name") }
        }
        let promptFragments = tables.contains("prompt_fragments") && tables.contains("fragments")
            ? try grouped(
                """
                SELECT pf.response_id AS key, f.content AS content, f.hash AS hash FROM prompt_fragments pf
                JOIN fragments f ON f.id = pf.fragment_id ORDER BY pf.response_id, pf."order"
                """) : [:]
        let systemFragments = tables.contains("system_fragments") && tables.contains("fragments")
            ? try grouped(
                """
                SELECT sf.response_id AS key, f.content AS content, f.hash AS hash FROM system_fragments sf
                JOIN fragments f ON f.id = sf.fragment_id ORDER BY sf.response_id, sf."order"
                """) : [:]
        let attachments = tables.contains("prompt_attachments") && tables.contains("attachments")
            ? try grouped(
                """
                SELECT pa.response_id AS key, pa.attachment_id AS id, a.type AS type FROM prompt_attachments pa
                LEFT JOIN attachments a ON a.id = pa.attachment_id ORDER BY pa.response_id, pa."order"
                """) : [:]
        let toolCalls = tables.contains("tool_calls")
            ? try grouped("SELECT response_id AS key, name, arguments, tool_call_id FROM tool_calls ORDER BY response_id, id") : [:]
        let toolResultColumns = tables.contains("tool_results") ? Set(try db.columns(in: "tool_results").map { $0.name.lowercased() }) : []
        let toolResults = tables.contains("tool_results")
            ? try grouped(
                """
                SELECT response_id AS key, name, output, tool_call_id,
                       \(toolResultColumns.contains("exception") ? "exception" : "NULL") AS exception
                FROM tool_results ORDER BY response_id, id
                """) : [:]

        // Group by conversation, in time order (then rowid).
        struct Response {
            let row: Row
            let microseconds: Int64
            let rowid: Int64
        }
        var byConversation: [String: [Response]] = [:]
        var order: [String] = []
        var bad: [String: String] = [:]
        for row in rows {
            let id = try row.text("id") ?? ""
            if turnIDs.contains(id) { continue }
            let conversationID = try row.text("conversation_id") ?? "response-\(id)"
            let text = try row.text("datetime_utc")
            guard let text, let microseconds = ImportTimes.microseconds(llm: text) else {
                bad[conversationID] = bad[conversationID] ?? "response \(id) has an unreadable datetime_utc \(text.map { "\"\($0.prefix(40))\"" } ?? "NULL")"
                continue
            }
            if byConversation[conversationID] == nil { order.append(conversationID) }
            byConversation[conversationID, default: []].append(Response(row: row, microseconds: microseconds, rowid: try row.integer("chatlog_rowid") ?? 0))
        }

        var result: [String: ClassicConversation] = [:]
        for conversationID in order {
            if let problem = bad[conversationID] {
                entries.append(
                    LLMEntry(
                        sortKey: byConversation[conversationID]?.first.map { ImportTimes.milliseconds(microseconds: $0.microseconds) } ?? .max,
                        id: conversationID,
                        result: .failure(ImportIssue(location: "conversation \(conversationID)", problem: problem))))
                continue
            }
            let responses = (byConversation[conversationID] ?? []).sorted { ($0.microseconds, $0.rowid) < ($1.microseconds, $1.rowid) }
            var messages: [NewMessage] = []
            var lastSystem: String?
            do {
                for response in responses {
                    let row = response.row
                    let id = try row.text("id") ?? ""
                    let created = ImportTimes.date(milliseconds: ImportTimes.milliseconds(microseconds: response.microseconds))

                    // System prompt, with system fragments as llm's Prompt.system joins them.
                    var system = try row.text("system")
                    let fragmentsOfSystem = systemFragments[id] ?? []
                    if !fragmentsOfSystem.isEmpty {
                        let bits = (try fragmentsOfSystem.map { try $0.text("content") ?? "" } + [system ?? ""])
                            .map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }.filter { !$0.isEmpty }
                        system = bits.joined(separator: "\n\n")
                    }
                    if let system, !system.isEmpty, system != lastSystem {
                        var metadata: [String: JSONValue] = [:]
                        if !fragmentsOfSystem.isEmpty { metadata["fragments"] = .array(try fragmentsOfSystem.map { json(try $0.text("hash")) }) }
                        messages.append(NewMessage(role: .system, content: system, metadata: object(metadata), createdAt: created))
                        lastSystem = system
                    }

                    let results = toolResults[id] ?? []
                    for result in results {
                        var metadata: [String: JSONValue] = ["tool_name": json(try result.text("name"))]
                        if let callID = try result.text("tool_call_id"), !callID.isEmpty { metadata["tool_call_id"] = .string(callID) }
                        if let exception = try result.text("exception"), !exception.isEmpty { metadata["tool_exception"] = .string(exception) }
                        messages.append(
                            NewMessage(role: .tool, content: try result.text("output") ?? "", metadata: .object(metadata), createdAt: created))
                    }

                    // The user prompt, with prompt fragments first (llm's Prompt.prompt).
                    let prompt = try row.text("prompt") ?? ""
                    let fragments = promptFragments[id] ?? []
                    let userText = (try fragments.map { try $0.text("content") ?? "" } + (prompt.isEmpty ? [] : [prompt]))
                        .joined(separator: "\n")
                    if !userText.isEmpty || results.isEmpty {
                        var metadata: [String: JSONValue] = [:]
                        let files = attachments[id] ?? []
                        if !files.isEmpty {
                            metadata["attachments"] = .array(
                                try files.map { .object(["id": json(try $0.text("id")), "type": json(try $0.text("type"))]) })
                        }
                        if !fragments.isEmpty { metadata["fragments"] = .array(try fragments.map { json(try $0.text("hash")) }) }
                        messages.append(NewMessage(role: .user, content: userText, metadata: object(metadata), createdAt: created))
                    }

                    var metadata: [String: JSONValue] = [:]
                    if let options = try row.text("options_json"), let value = parsedJSON(options), value != .object([:]), value != .null {
                        metadata["options"] = value
                    }
                    let calls = toolCalls[id] ?? []
                    if !calls.isEmpty {
                        metadata["tool_calls"] = .array(
                            try calls.map { call in
                                var entry: [String: JSONValue] = [
                                    "name": json(try call.text("name")),
                                    "arguments": try call.text("arguments").map { parsedJSON($0) ?? .string($0) } ?? .null,
                                ]
                                if let callID = try call.text("tool_call_id"), !callID.isEmpty { entry["tool_call_id"] = .string(callID) }
                                return .object(entry)
                            })
                    }
                    if let reasoning = try row.text("reasoning"), !reasoning.isEmpty { metadata["reasoning"] = .string(reasoning) }
                    messages.append(
                        NewMessage(
                            role: .assistant, content: try row.text("response") ?? "",
                            model: try nonEmpty(row.text("resolved_model")) ?? nonEmpty(row.text("model")),
                            promptTokens: try count(row, "input_tokens", response: id),
                            completionTokens: try count(row, "output_tokens", response: id),
                            latencyMilliseconds: try count(row, "duration_ms", response: id),
                            finishReason: finishReason(try row.text("response_json")),
                            metadata: object(metadata), createdAt: created))
                }
            } catch let issue as LLMIssue {
                entries.append(
                    LLMEntry(
                        sortKey: responses.first.map { ImportTimes.milliseconds(microseconds: $0.microseconds) } ?? .max, id: conversationID,
                        result: .failure(ImportIssue(location: "conversation \(conversationID)", problem: issue.problem))))
                continue
            }
            guard let first = responses.first else { continue }
            result[conversationID] = ClassicConversation(
                id: conversationID, title: titles[conversationID] ?? nil, messages: messages, firstMicroseconds: first.microseconds)
        }
        return result
    }

    /// Rows of `sql` (which selects a `key` column) grouped by key, in the query's order.
    private func grouped(_ sql: String) throws -> [String: [Row]] {
        var groups: [String: [Row]] = [:]
        for row in try Row.fetchAll(db, sql: sql) {
            guard let key = try row.text("key") else { continue }
            groups[key, default: []].append(row)
        }
        return groups
    }

    private func count(_ row: Row, _ column: String, response: String) throws -> Int? {
        guard let value = row[column] as DatabaseValue?, !value.isNull else { return nil }
        guard let number = Int64.fromDatabaseValue(value), number >= 0, let result = Int(exactly: number) else {
            throw LLMIssue("response \(response) has an invalid \(column)")
        }
        return result
    }

    // MARK: Message store

    private func loadTurns() throws -> [LLMTurn] {
        let columns = Set(try db.columns(in: "turns").map { $0.name.lowercased() })
        func optional(_ column: String) -> String { columns.contains(column) ? "\"\(column)\"" : "NULL" }
        return try Row.fetchAll(
            db,
            sql: """
                SELECT rowid AS chatlog_rowid, id, thread_id, parent_message_hash, tip_message_hash, model,
                       \(optional("resolved_model")) AS resolved_model, \(optional("options_json")) AS options_json,
                       \(optional("input_tokens")) AS input_tokens, \(optional("output_tokens")) AS output_tokens,
                       \(optional("duration_ms")) AS duration_ms, datetime_utc, \(optional("response_json")) AS response_json
                FROM turns
                """
        ).map { row in
            func count(_ column: String) throws(LLMIssue) -> Int? {
                guard let value = try row.integer(column), value >= 0 else { return nil }
                return Int(exactly: value)
            }
            return LLMTurn(
                rowid: try row.integer("chatlog_rowid") ?? 0, id: try row.text("id") ?? "", threadID: try row.text("thread_id"),
                parentHash: try row.text("parent_message_hash"), tipHash: try row.text("tip_message_hash"),
                model: try nonEmpty(row.text("resolved_model")) ?? nonEmpty(row.text("model")), options: try row.text("options_json"),
                inputTokens: try count("input_tokens"), outputTokens: try count("output_tokens"),
                durationMilliseconds: try count("duration_ms"),
                microseconds: try row.text("datetime_utc").flatMap(ImportTimes.microseconds(llm:)), responseJSON: try row.text("response_json"))
        }.sorted { ($0.microseconds ?? .max, $0.rowid) < ($1.microseconds ?? .max, $1.rowid) }
    }

    private func readMessageStore(
        tables: Set<String>, turns: [LLMTurn], legacy: inout [String: ClassicConversation], into entries: inout [LLMEntry]
    ) throws {
        var turnsByThread: [String: [Int]] = [:]
        for (index, turn) in turns.enumerated() {
            if let thread = turn.threadID { turnsByThread[thread, default: []].append(index) }
        }
        var turnsByTip: [String: [Int]] = [:]
        for (index, turn) in turns.enumerated() {
            if let tip = turn.tipHash { turnsByTip[tip, default: []].append(index) }
        }
        let parts = PartReader(db: db, tables: tables)
        // (Sort keys first: a comparator cannot throw.)
        let threads = try Row.fetchAll(db, sql: "SELECT rowid AS chatlog_rowid, id, name, tip_message_hash, datetime_utc FROM threads")
            .map { row in
                (row, try row.text("datetime_utc").flatMap(ImportTimes.microseconds(llm:)) ?? .max, try row.integer("chatlog_rowid") ?? 0)
            }
            .sorted { ($0.1, $0.2) < ($1.1, $1.2) }.map(\.0)
        let messageStatement = try db.makeStatement(sql: "SELECT parent_hash, role FROM messages WHERE hash = ?")

        for thread in threads {
            guard let threadID = try thread.text("id") else { continue }
            guard let tip = try thread.text("tip_message_hash") else { continue }  // nothing logged yet
            let threadMicroseconds = try thread.text("datetime_utc").flatMap(ImportTimes.microseconds(llm:))
            do {
                // The chain, root first.
                var chain: [(hash: String, role: String)] = []
                var seen = Set<String>()
                var next: String? = tip
                while let hash = next {
                    guard seen.insert(hash).inserted else { throw LLMIssue("the message chain loops at \(hash)") }
                    guard let row = try Row.fetchOne(messageStatement, arguments: [hash]) else {
                        throw LLMIssue("message \(hash) of the chain is missing")
                    }
                    chain.append((hash, try row.text("role") ?? ""))
                    next = try row.text("parent_hash")
                }
                chain.reverse()
                var position: [String: Int] = [:]
                for (index, message) in chain.enumerated() { position[message.hash] = index }

                // Which turn each chain message came from: a turn's outputs are the messages after
                // its parent_message_hash up to its tip; its new inputs are parent_message_hash and
                // its ancestors back to (not including) the previous assistant message.
                var owner: [(turn: Int, output: Bool)?] = Array(repeating: nil, count: chain.count)
                func assign(_ candidates: [Int], onlyBefore limit: Int) {
                    for index in candidates {
                        let turn = turns[index]
                        guard let tipHash = turn.tipHash, let tipIndex = position[tipHash], tipIndex < limit else { continue }
                        let parentIndex: Int
                        if let parentHash = turn.parentHash {
                            guard let found = position[parentHash], found < tipIndex else { continue }
                            parentIndex = found
                        } else {
                            parentIndex = -1
                        }
                        for output in (parentIndex + 1)...tipIndex where owner[output] == nil { owner[output] = (index, true) }
                        var input = parentIndex
                        while input >= 0, owner[input] == nil, chain[input].role != "assistant" {
                            owner[input] = (index, false)
                            input -= 1
                        }
                    }
                }
                assign(turnsByThread[threadID] ?? [], onlyBefore: chain.count)
                var prefix = 0
                while prefix < chain.count, owner[prefix] == nil { prefix += 1 }

                var messages: [NewMessage] = []
                var title = try thread.text("name")
                var source = "message-store"
                var sourceID = "thread:\(threadID)"
                var start = 0
                if prefix > 0, let conversation = legacy.removeValue(forKey: threadID) {
                    // A thread continuing a legacy conversation: llm rebuilt the legacy exchanges as
                    // untimed chain messages. Take them from the legacy rows (real times, tokens).
                    messages = conversation.messages
                    title = conversation.title ?? title
                    source = "classic+message-store"
                    sourceID = "conversation:\(threadID)"
                    start = prefix
                } else if prefix > 0 {
                    // A fork, or a chain shared with another thread: date the prefix by the turns
                    // of other threads that produced it.
                    var others: [Int] = []
                    for message in chain[0..<prefix] { others.append(contentsOf: turnsByTip[message.hash] ?? []) }
                    assign(Array(Set(others)).sorted(), onlyBefore: prefix)
                }

                var lastTime: Int64? = nil
                for index in start..<chain.count {
                    let (hash, roleText) = chain[index]
                    guard let role = Role(rawValue: roleText) else {
                        throw LLMIssue("message \(hash) has the unknown role \"\(roleText.prefix(20))\"")
                    }
                    let (content, partMetadata) = try parts.content(of: hash)
                    var metadata = partMetadata
                    var message = NewMessage(role: role, content: content)
                    var microseconds: Int64?
                    if let entry = owner[index] {
                        let turn = turns[entry.turn]
                        microseconds = turn.microseconds
                        if entry.output { message.model = turn.model }
                        if hash == turn.tipHash {
                            message.promptTokens = turn.inputTokens
                            message.completionTokens = turn.outputTokens
                            message.latencyMilliseconds = turn.durationMilliseconds
                            message.finishReason = finishReason(turn.responseJSON)
                            if let options = turn.options, let value = parsedJSON(options), value != .object([:]), value != .null {
                                metadata["options"] = value
                            }
                        }
                    }
                    // A message no turn accounts for takes the time before it (or the thread's).
                    let time = microseconds ?? lastTime ?? firstOwnedTime(owner, turns, from: index) ?? threadMicroseconds
                    if let time {
                        message.createdAt = ImportTimes.date(milliseconds: ImportTimes.milliseconds(microseconds: time))
                        lastTime = time
                    }
                    message.metadata = object(metadata)
                    messages.append(message)
                }
                entries.append(
                    LLMEntry(
                        sortKey: messages.first?.createdAt?.unixMilliseconds ?? .max, id: threadID,
                        result: .success(
                            ImportedConversation(
                                sourceID: sourceID,
                                conversation: NewConversation(
                                    title: title, metadata: .object(["llm_id": .string(threadID), "llm_source": .string(source)]),
                                    createdAt: messages.first?.createdAt),
                                messages: messages))))
            } catch let issue as LLMIssue {
                entries.append(
                    LLMEntry(
                        sortKey: threadMicroseconds.map(ImportTimes.milliseconds(microseconds:)) ?? .max, id: threadID,
                        result: .failure(ImportIssue(location: "thread \(threadID)", problem: issue.problem))))
            }
        }
    }

    private func firstOwnedTime(_ owner: [(turn: Int, output: Bool)?], _ turns: [LLMTurn], from index: Int) -> Int64? {
        for entry in owner[index...] {
            if let entry, let time = turns[entry.turn].microseconds { return time }
        }
        return nil
    }
}

/// Reads a message's parts (text, reasoning, tool_call, tool_result, attachment).
private struct PartReader {
    let db: Database
    let hasFragments: Bool
    let hasAttachments: Bool

    init(db: Database, tables: Set<String>) {
        self.db = db
        hasFragments = tables.contains("fragments")
        hasAttachments = tables.contains("attachments")
    }

    func content(of hash: String) throws -> (String, [String: JSONValue]) {
        let rows = try Row.fetchAll(
            db.cachedStatement(sql: "SELECT position, type, tool_name, text, payload FROM parts WHERE message_hash = ? ORDER BY position"),
            arguments: [hash])
        var texts: [String] = []
        var metadata: [String: JSONValue] = [:]
        func append(_ key: String, _ value: JSONValue) {
            if case .array(let list)? = metadata[key] {
                metadata[key] = .array(list + [value])
            } else {
                metadata[key] = .array([value])
            }
        }
        for row in rows {
            let type = try row.text("type") ?? ""
            let positionText = try row.integer("position").map(String.init) ?? "?"
            var payload: [String: JSONValue] = [:]
            if let text = try row.text("payload") {
                guard case .object(let fields)? = parsedJSON(text) else {
                    throw LLMIssue("part \(positionText) of message \(hash) has a payload that is not a JSON object")
                }
                payload = fields
            }
            switch type {
            case "text", "reasoning":
                var text: String
                if let plain = try row.text("text") {
                    text = plain
                } else if let reference = payload["text_ref"] {
                    let (resolved, fragmentHashes) = try resolve(reference, hash: hash)
                    text = resolved
                    for fragment in fragmentHashes { append("fragments", fragment) }
                } else {
                    text = ""
                }
                if type == "text" {
                    texts.append(text)
                } else {
                    if case .string(let earlier)? = metadata["reasoning"] { text = earlier + text }
                    metadata["reasoning"] = .string(text)
                }
            case "tool_call":
                append(
                    "tool_calls",
                    .object([
                        "name": try payload["name"] ?? json(row.text("tool_name")), "arguments": payload["arguments"] ?? .null,
                        "tool_call_id": payload["tool_call_id"] ?? .null,
                    ]))
            case "tool_result":
                switch payload["output"] {
                case .string(let output)?: texts.append(output)
                case nil, .null?: break
                case let value?: texts.append(String(decoding: (try? value.encoded()) ?? Data(), as: UTF8.self))
                }
                metadata["tool_name"] = try payload["name"] ?? json(row.text("tool_name"))
                metadata["tool_call_id"] = payload["tool_call_id"] ?? .null
                if let exception = payload["exception"], exception != .null { metadata["tool_exception"] = exception }
            case "attachment":
                guard case .object(let attachment)? = payload["attachment"], case .string(let id)? = attachment["id"] else {
                    throw LLMIssue("attachment part \(positionText) of message \(hash) names no attachment id")
                }
                var type: String? = nil
                if hasAttachments {
                    type = try String.fetchOne(db.cachedStatement(sql: "SELECT type FROM attachments WHERE id = ?"), arguments: [id])
                }
                append("attachments", .object(["id": .string(id), "type": json(type)]))
            default:
                var entry: [String: JSONValue] = ["type": .string(type)]
                if let text = try row.text("text") { entry["text"] = .string(text) }
                if !payload.isEmpty { entry["payload"] = .object(payload) }
                append("other_parts", .object(entry))
            }
        }
        return (texts.joined(), metadata)
    }

    /// `{"text_ref": [{"fragment": 1}, {"literal": "…"}]}` → the text, and the fragments' hashes.
    private func resolve(_ reference: JSONValue, hash: String) throws -> (String, [JSONValue]) {
        guard case .array(let pieces) = reference else { throw LLMIssue("a text_ref of message \(hash) is not an array") }
        var text = ""
        var hashes: [JSONValue] = []
        for piece in pieces {
            if case .object(let fields) = piece, case .string(let literal)? = fields["literal"] {
                text += literal
            } else if case .object(let fields) = piece, case .integer(let id)? = fields["fragment"], hasFragments {
                guard let row = try Row.fetchOne(db.cachedStatement(sql: "SELECT content, hash FROM fragments WHERE id = ?"), arguments: [id])
                else { throw LLMIssue("message \(hash) uses fragment \(id), which is missing") }
                text += try row.text("content") ?? ""
                hashes.append(json(try row.text("hash")))
            } else {
                throw LLMIssue("message \(hash) has a text_ref piece chatlog does not understand")
            }
        }
        return (text, hashes)
    }
}

// MARK: - Helpers

private func parsedJSON(_ text: String) -> JSONValue? {
    try? JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))
}

private func json(_ text: String?) -> JSONValue { text.map(JSONValue.string) ?? .null }

private func object(_ fields: [String: JSONValue]) -> JSONValue? { fields.isEmpty ? nil : .object(fields) }

private func nonEmpty(_ text: String?) -> String? {
    guard let text, !text.isEmpty else { return nil }
    return text
}

/// The finish reason in a response_json, where llm's plugins put it: OpenAI's `finish_reason`
/// (top level after llm combines the stream, or in `choices[0]`), Anthropic's `stop_reason`,
/// Gemini's `candidates[0].finishReason`.
private func finishReason(_ responseJSON: String?) -> String? {
    guard let responseJSON, case .object(let fields)? = parsedJSON(responseJSON) else { return nil }
    for key in ["finish_reason", "stop_reason", "done_reason"] {
        if case .string(let reason)? = fields[key], !reason.isEmpty { return reason }
    }
    if case .array(let choices)? = fields["choices"], case .object(let first)? = choices.first,
        case .string(let reason)? = first["finish_reason"], !reason.isEmpty
    {
        return reason
    }
    if case .array(let candidates)? = fields["candidates"], case .object(let first)? = candidates.first,
        case .string(let reason)? = first["finishReason"], !reason.isEmpty
    {
        return reason
    }
    return nil
}
