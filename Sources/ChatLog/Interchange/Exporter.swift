import Foundation
import GRDB

/// Which conversations to export (by creation time), or one conversation.
public struct ExportFilter: Sendable {
    public var conversation: ConversationID?
    public var since: Date?
    public var until: Date?

    public init(conversation: ConversationID? = nil, since: Date? = nil, until: Date? = nil) {
        self.conversation = conversation
        self.since = since
        self.until = until
    }
}

extension ChatLogStore {
    /// Streams conversations, oldest first, as OpenAI chat JSONL with chatlog's extras (one line
    /// per conversation, written through `write`). Reads 100 conversations per read transaction,
    /// so memory stays flat however large the store. Returns (conversations, messages) written.
    ///
    /// A conversation with a value that does not open (or a damaged id) stops the export with
    /// its integrity error, unless `skippingDamaged` is given: then that conversation is left out,
    /// reported to `skippingDamaged` (table, column, row of the first failure), and the export
    /// goes on with the next one.
    @discardableResult
    public func exportOpenAIJSONL(
        _ filter: ExportFilter = ExportFilter(), skippingDamaged: ((IntegrityFailure) -> Void)? = nil, write: (Data) throws -> Void
    ) throws(ChatLogError) -> (conversations: Int, messages: Int) {
        let skipsDamaged = skippingDamaged != nil
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var cursor: (createdAt: Int64, seq: Int64)? = nil
        var totals = (conversations: 0, messages: 0)
        while true {
            let (rowCount, page, damaged, stop): (Int, [Transcript], [IntegrityFailure], IntegrityFailure?) = try read { db in
                var clauses = ["1"]
                var arguments: StatementArguments = []
                if let id = filter.conversation {
                    clauses.append("id = ?")
                    arguments += [id.rawValue]
                }
                if let since = filter.since {
                    clauses.append("created_at >= ?")
                    arguments += [since.unixMilliseconds]
                }
                if let until = filter.until {
                    clauses.append("created_at < ?")
                    arguments += [until.unixMilliseconds]
                }
                if let cursor {
                    clauses.append("(created_at > ? OR (created_at = ? AND seq > ?))")
                    arguments += [cursor.createdAt, cursor.createdAt, cursor.seq]
                }
                let rows = try Row.fetchAll(
                    db, sql: "SELECT seq, id, created_at FROM conversations WHERE \(clauses.joined(separator: " AND ")) ORDER BY created_at, seq LIMIT 100",
                    arguments: arguments)
                if let last = rows.last { cursor = (try last.decode(forColumn: "created_at"), try last.decode(forColumn: "seq")) }
                var transcripts: [Transcript] = []
                var damaged: [IntegrityFailure] = []
                for row in rows {
                    do {
                        let id = try ConversationID.stored(
                            row.storedText("id"), table: "conversations", column: "id", seq: try row.decode(forColumn: "seq"))
                        transcripts.append(try self.transcript(id, db))
                    } catch ChatLogError.integrity(let failure) {
                        // Without skipping, the conversations before it are still written.
                        guard skipsDamaged else { return (rows.count, transcripts, damaged, failure) }
                        damaged.append(failure)
                    }
                }
                return (rows.count, transcripts, damaged, nil)
            }
            if rowCount == 0 { return totals }
            for failure in damaged { skippingDamaged?(failure) }
            for transcript in page {
                var line: Data
                do {
                    line = try encoder.encode(ExportRecord(transcript))
                } catch {
                    throw .invalidInput("conversation \(transcript.conversation.id) cannot be encoded as JSON")
                }
                line.append(0x0A)
                do { try write(line) } catch { throw .storage("cannot write the export (\(error))") }
                totals.conversations += 1
                totals.messages += transcript.messages.count
            }
            if let stop { throw .integrity(stop) }
            if filter.conversation != nil { return totals }
        }
    }
}

/// One exported line. Field names follow the OpenAI chat format where it has them.
struct ExportRecord: Encodable {
    struct Usage: Encodable {
        let prompt_tokens: Int?
        let completion_tokens: Int?
    }

    struct MessageRecord: Encodable {
        let id: String
        let role: String
        let content: String
        let created_at: String
        let model: String?
        let usage: Usage?
        let latency_ms: Int?
        let finish_reason: String?
        let metadata: JSONValue?
        // OpenAI's own fields, repeated from the metadata so other tools read them.
        let tool_calls: JSONValue?
        let tool_call_id: JSONValue?
        let name: JSONValue?
    }

    let id: String
    let title: String?
    let subject: String?
    let created_at: String
    let metadata: JSONValue?
    let messages: [MessageRecord]

    init(_ transcript: Transcript) {
        let conversation = transcript.conversation
        id = conversation.id.rawValue
        title = conversation.title
        subject = conversation.subject
        created_at = Timestamps.format(conversation.createdAt)
        metadata = conversation.metadata
        messages = transcript.messages.map { message in
            var fields: [String: JSONValue] = [:]
            if case .object(let object)? = message.metadata { fields = object }
            return MessageRecord(
                id: message.id.rawValue, role: message.role.rawValue, content: message.content,
                created_at: Timestamps.format(message.createdAt), model: message.model,
                usage: message.promptTokens == nil && message.completionTokens == nil
                    ? nil : Usage(prompt_tokens: message.promptTokens, completion_tokens: message.completionTokens),
                latency_ms: message.latencyMilliseconds, finish_reason: message.finishReason, metadata: message.metadata,
                tool_calls: fields["tool_calls"], tool_call_id: fields["tool_call_id"], name: fields["name"])
        }
    }
}
