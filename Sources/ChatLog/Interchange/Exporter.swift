import Foundation
import GRDB

/// Which conversations to export (by creation time), or one conversation, or those of one
/// subject (an access request: `export --subject`).
public struct ExportFilter: Sendable {
    public var conversation: ConversationID?
    public var since: Date?
    public var until: Date?
    /// Only the conversations of this end user (exact subject, NFKC-normalised as `list --subject`).
    public var subject: String?

    public init(conversation: ConversationID? = nil, since: Date? = nil, until: Date? = nil, subject: String? = nil) {
        self.conversation = conversation
        self.since = since
        self.until = until
        self.subject = subject
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
        try exportFromSQLite(filter, skippingDamaged: skippingDamaged, write: write)
    }

    /// The same on any backend (on SQLite it runs on the calling task).
    @discardableResult
    public func exportOpenAIJSONL(
        _ filter: ExportFilter = ExportFilter(), skippingDamaged: ((IntegrityFailure) -> Void)? = nil, write: (Data) throws -> Void
    ) async throws(ChatLogError) -> (conversations: Int, messages: Int) {
        guard let storage else { return try exportFromSQLite(filter, skippingDamaged: skippingDamaged, write: write) }
        let encoder = Self.exportEncoder
        var totals = (conversations: 0, messages: 0)
        func emit(_ transcript: Transcript) throws(ChatLogError) {
            try Self.writeExportLine(transcript, encoder: encoder, write: write)
            totals.conversations += 1
            totals.messages += transcript.messages.count
        }
        if let id = filter.conversation {
            guard let row = try await storage.conversation(id: id.rawValue) else { return totals }
            if let since = filter.since, row.createdAt < since.unixMilliseconds { return totals }
            if let until = filter.until, row.createdAt >= until.unixMilliseconds { return totals }
            if let subject = filter.subject {
                let tokens = keyRing.current.subjectTokens(subject)
                guard let token = row.subjectToken, tokens.contains(token) else { return totals }
            }
            try emit(try await storageTranscript(id, storage))
            return totals
        }
        if filter.subject != nil { try await refreshKeys(storage) }  // subject tokens under every live index key
        let selection = ConversationFilter(
            since: filter.since?.unixMilliseconds, until: filter.until?.unixMilliseconds,
            subjectTokens: filter.subject.map { subject in keyRing.current.subjectTokens(subject) },
            oldestFirst: true)
        var cursor: MessageCursor?
        while true {
            let page = try await storage.conversations(selection, after: cursor, limit: 100)
            for listed in page {
                let transcript: Transcript
                do {
                    transcript = try await storageTranscript(ConversationID(trusted: listed.row.id), storage)
                } catch .integrity(let failure) {
                    guard let skippingDamaged else { throw .integrity(failure) }
                    skippingDamaged(failure)
                    continue
                }
                try emit(transcript)
            }
            guard page.count == 100, let last = page.last else { return totals }
            cursor = last.cursor
        }
    }

    static var exportEncoder: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }

    static func writeExportLine(_ transcript: Transcript, encoder: JSONEncoder, write: (Data) throws -> Void) throws(ChatLogError) {
        let line: Data
        do {
            line = try ExportRecord(transcript).jsonLine(metadataEncoder: encoder)
        } catch {
            throw .invalidInput("conversation \(transcript.conversation.id) cannot be encoded as JSON")
        }
        do { try write(line) } catch { throw .storage("cannot write the export (\(error))") }
    }

    private func exportFromSQLite(
        _ filter: ExportFilter, skippingDamaged: ((IntegrityFailure) -> Void)?, write: (Data) throws -> Void
    ) throws(ChatLogError) -> (conversations: Int, messages: Int) {
        let skipsDamaged = skippingDamaged != nil
        let encoder = Self.exportEncoder
        var cursor: (createdAt: Int64, seq: Int64)? = nil
        var totals = (conversations: 0, messages: 0)
        let subjectClause = try filter.subject.map { (subject) throws(ChatLogError) in try subjectFilter(subject) }
        while true {
            let (rowCount, page, damaged, stop): (Int, [Transcript], [IntegrityFailure], IntegrityFailure?) = try read { db in
                var clauses = ["1"]
                var arguments: StatementArguments = []
                if let id = filter.conversation {
                    clauses.append("id = ?")
                    arguments += [id.rawValue]
                }
                if let subjectClause {
                    clauses.append(subjectClause.sql)
                    arguments += subjectClause.arguments
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
                try Self.writeExportLine(transcript, encoder: encoder, write: write)
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

extension ExportRecord {
    /// The record as `JSONEncoder` with `[.sortedKeys, .withoutEscapingSlashes]` writes it, and a
    /// newline, without the `Codable` machinery for the record itself (it was most of an export's
    /// JSON time; `ExportWriterTests` compares the bytes). Metadata values still go through
    /// `metadataEncoder`, so their key order and number forms are JSONEncoder's own.
    func jsonLine(metadataEncoder: JSONEncoder) throws -> Data {
        var out = JSONBytes()
        out.bytes.reserveCapacity(messages.reduce(256) { $0 + $1.content.utf8.count + 160 })
        out.open()
        out.field("created_at", created_at)
        out.field("id", id)
        out.key("messages")
        out.append(UInt8(ascii: "["))
        for (index, message) in messages.enumerated() {
            if index > 0 { out.append(UInt8(ascii: ",")) }
            out.open()
            out.field("content", message.content)
            out.field("created_at", message.created_at)
            if let value = message.finish_reason { out.field("finish_reason", value) }
            out.field("id", message.id)
            if let value = message.latency_ms { out.field("latency_ms", value) }
            if let value = message.metadata { try out.field("metadata", value, metadataEncoder) }
            if let value = message.model { out.field("model", value) }
            if let value = message.name { try out.field("name", value, metadataEncoder) }
            out.field("role", message.role)
            if let value = message.tool_call_id { try out.field("tool_call_id", value, metadataEncoder) }
            if let value = message.tool_calls { try out.field("tool_calls", value, metadataEncoder) }
            if let usage = message.usage {
                out.key("usage")
                out.open()
                if let value = usage.completion_tokens { out.field("completion_tokens", value) }
                if let value = usage.prompt_tokens { out.field("prompt_tokens", value) }
                out.close()
            }
            out.close()
        }
        out.append(UInt8(ascii: "]"))
        out.first = false
        if let metadata { try out.field("metadata", metadata, metadataEncoder) }
        if let subject { out.field("subject", subject) }
        if let title { out.field("title", title) }
        out.close()
        out.append(0x0A)
        return Data(out.bytes)
    }
}

/// A JSON object written field by field, strings escaped as `JSONEncoder` escapes them.
private struct JSONBytes {
    var bytes: [UInt8] = []
    var first = true

    mutating func append(_ byte: UInt8) { bytes.append(byte) }

    mutating func open() {
        bytes.append(UInt8(ascii: "{"))
        first = true
    }

    mutating func close() {
        bytes.append(UInt8(ascii: "}"))
        first = false
    }

    mutating func key(_ name: StaticString) {
        if !first { bytes.append(UInt8(ascii: ",")) }
        first = false
        bytes.append(UInt8(ascii: "\""))
        bytes.append(contentsOf: UnsafeBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount))
        bytes.append(UInt8(ascii: "\""))
        bytes.append(UInt8(ascii: ":"))
    }

    mutating func field(_ name: StaticString, _ value: String) {
        key(name)
        string(value)
    }

    mutating func field(_ name: StaticString, _ value: Int) {
        key(name)
        bytes.append(contentsOf: String(value).utf8)
    }

    mutating func field(_ name: StaticString, _ value: JSONValue, _ encoder: JSONEncoder) throws {
        key(name)
        bytes.append(contentsOf: try encoder.encode(value))
    }

    mutating func string(_ text: String) {
        bytes.append(UInt8(ascii: "\""))
        var text = text
        text.withUTF8 { utf8 in
            var start = 0
            for index in 0..<utf8.count {
                let byte = utf8[index]
                guard byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") else { continue }
                bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[start..<index]))
                start = index + 1
                bytes.append(UInt8(ascii: "\\"))
                switch byte {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"): bytes.append(byte)
                case 0x08: bytes.append(UInt8(ascii: "b"))
                case 0x09: bytes.append(UInt8(ascii: "t"))
                case 0x0A: bytes.append(UInt8(ascii: "n"))
                case 0x0C: bytes.append(UInt8(ascii: "f"))
                case 0x0D: bytes.append(UInt8(ascii: "r"))
                default:
                    let hex = Array("0123456789abcdef".utf8)
                    bytes.append(contentsOf: [UInt8(ascii: "u"), 0x30, 0x30, hex[Int(byte >> 4)], hex[Int(byte & 0x0F)]])
                }
            }
            bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[start...]))
        }
        bytes.append(UInt8(ascii: "\""))
    }
}
