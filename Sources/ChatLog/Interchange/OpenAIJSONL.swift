import Foundation

/// The OpenAI chat JSONL format (fine-tuning / batch): one conversation per line,
/// `{"messages": [{"role": …, "content": …}, …]}`, with chatlog's optional extras (`id`, `title`,
/// `subject`, `model`, `created_at`, `metadata`; per message `id`, `created_at`, `model`, `usage`,
/// `latency_ms`, `finish_reason`, `metadata`) so that `chatlog export | chatlog import` round-trips.
public enum OpenAIJSONL {
    public static let format = "openai-jsonl"
    /// Longer lines are reported as errors (with their number) without being loaded.
    public static let maximumLineLength = 32 << 20

    /// Reads `path` lazily, one conversation per non-empty line.
    public static func records(path: String) throws(ChatLogError) -> some Sequence<Result<ImportedConversation, ImportIssue>> {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw .invalidInput("cannot open \(path) for reading")
        }
        return LineReader(handle: handle, maximumLineLength: maximumLineLength).lazy.compactMap { line -> Result<ImportedConversation, ImportIssue>? in
            switch line {
            case .tooLong(let number, let length):
                return .failure(ImportIssue(location: "line \(number)", problem: "the line is \(length) bytes; the limit is \(maximumLineLength >> 20) MiB"))
            case .text(let number, let bytes):
                if bytes.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) { return nil }
                return Result { () throws(ImportIssue) in try parse(bytes, location: "line \(number)") }
            }
        }
    }

    static func parse(_ bytes: [UInt8], location: String) throws(ImportIssue) -> ImportedConversation {
        func issue(_ problem: String) -> ImportIssue { ImportIssue(location: location, problem: problem) }
        guard String(validating: bytes, as: UTF8.self) != nil else { throw issue("not valid UTF-8") }
        guard let value = bytes.withUnsafeBufferPointer({ JSONValue.parse(validUTF8: $0) }) else {
            throw issue("not valid JSON (truncated or malformed)")
        }
        guard case .object(let record) = value else { throw issue("expected a JSON object with \"messages\"") }
        guard let rawMessages = record["messages"] else { throw issue("missing \"messages\"") }
        guard case .array(let messageList) = rawMessages else { throw issue("\"messages\" must be an array") }

        let conversationCreated = try date(record["created_at"], "created_at", issue)
        var conversation = NewConversation(
            title: try string(record["title"], "title", issue), subject: try string(record["subject"], "subject", issue),
            // Kept as given, any JSON value (an explicit null too), so that an export re-imports exactly.
            metadata: record["metadata"], createdAt: conversationCreated)
        let conversationModel = try string(record["model"], "model", issue)
        let sourceID: String
        if let id = record["id"] {
            guard case .string(let text) = id, !text.isEmpty else { throw issue("\"id\" must be a non-empty string") }
            sourceID = "id:" + text
            conversation.id = ConversationID(text)
        } else {
            sourceID = "record:" + contentHash(bytes)
        }

        let base = conversationCreated ?? Date()
        var messages: [NewMessage] = []
        for (index, raw) in messageList.enumerated() {
            let field = "messages[\(index)]"
            guard case .object(let message) = raw else { throw issue("\(field) must be an object") }
            guard case .string(let roleText)? = message["role"] else { throw issue("\(field).role must be a string") }
            guard let role = Role(rawValue: roleText) else {
                throw issue("\(field).role must be one of system, user, assistant, tool (found \"\(roleText.prefix(20))\")")
            }
            // The message's own metadata is any JSON value (the library takes any, and an export
            // writes what it holds); OpenAI's fields below are merged into it when it is an object.
            let givenMetadata = message["metadata"]
            var metadata: [String: JSONValue] = [:]
            if case .object(let fields)? = givenMetadata { metadata = fields }
            let content: String
            switch message["content"] {
            case nil, .null?:
                content = ""
            case .string(let text)?:
                content = text
            case .array(let parts)?:
                var texts: [String] = []
                var omitted: [JSONValue] = []
                for (partIndex, rawPart) in parts.enumerated() {
                    if case .string(let text) = rawPart {
                        texts.append(text)
                        continue
                    }
                    guard case .object(let part) = rawPart, case .string(let type)? = part["type"] else {
                        throw issue("\(field).content[\(partIndex)] must be a string or an object with a \"type\"")
                    }
                    if type == "text" {
                        guard case .string(let text)? = part["text"] else { throw issue("\(field).content[\(partIndex)].text must be a string") }
                        texts.append(text)
                    } else {
                        omitted.append(.string(type))
                    }
                }
                content = texts.joined()
                if !omitted.isEmpty { metadata["omitted_content_parts"] = .array(omitted) }
            default:
                throw issue("\(field).content must be a string, an array of parts or null")
            }
            for key in ["tool_calls", "tool_call_id", "name", "refusal"] {
                if let value = nonNull(message[key]) { metadata[key] = value }
            }
            var usage: [String: JSONValue] = [:]
            if let value = nonNull(message["usage"]) {
                guard case .object(let fields) = value else { throw issue("\(field).usage must be an object") }
                usage = fields
            }
            let created = try date(message["created_at"], "\(field).created_at", issue)
            var newMessage = NewMessage(
                role: role, content: content,
                model: try string(message["model"], "\(field).model", issue) ?? (role == .assistant ? conversationModel : nil),
                promptTokens: try count(usage["prompt_tokens"], "\(field).usage.prompt_tokens", issue),
                completionTokens: try count(usage["completion_tokens"], "\(field).usage.completion_tokens", issue),
                latencyMilliseconds: try count(message["latency_ms"], "\(field).latency_ms", issue),
                finishReason: try string(message["finish_reason"], "\(field).finish_reason", issue),
                metadata: try mergedMetadata(givenMetadata, metadata, field: field, issue),
                createdAt: created ?? base.addingTimeInterval(Double(index) / 1000))
            if case .string(let id)? = message["id"] { newMessage.id = MessageID(id) }
            messages.append(newMessage)
        }
        return ImportedConversation(sourceID: sourceID, conversation: conversation, messages: messages, location: location)
    }

    /// `given` (absent, or any JSON value) with OpenAI's fields and non-text parts (`extra`,
    /// which already holds `given`'s fields when it is an object) merged in.
    private static func mergedMetadata(
        _ given: JSONValue?, _ extra: [String: JSONValue], field: String, _ issue: (String) -> ImportIssue
    ) throws(ImportIssue) -> JSONValue? {
        switch given {
        case .object?: return .object(extra)
        case nil: return extra.isEmpty ? nil : .object(extra)
        case .null?: return extra.isEmpty ? .null : .object(extra)
        case let other?:
            guard extra.isEmpty else {
                throw issue("\(field).metadata must be an object when the message has tool_calls, tool_call_id, name, refusal or non-text parts")
            }
            return other
        }
    }

    static func contentHash(_ bytes: [UInt8]) -> String {
        // Unkeyed, never stored: only fed to the keyed import hash.
        var output = [UInt8](repeating: 0, count: 32)
        let key = [UInt8](repeating: 0, count: 32)
        key.withUnsafeBytes { keyBytes in
            bytes.withUnsafeBytes { input in output.withUnsafeMutableBytes { Sodium.keyedHash(key: keyBytes, message: input, into: $0) } }
        }
        return output.map { String($0, radix: 16) }.joined()
    }

    private static func nonNull(_ value: JSONValue?) -> JSONValue? {
        if case .null? = value { return nil }
        return value
    }

    private static func string(_ value: JSONValue?, _ name: String, _ issue: (String) -> ImportIssue) throws(ImportIssue) -> String? {
        switch value {
        case nil, .null?: return nil
        case .string(let text)?: return text
        default: throw issue("\"\(name)\" must be a string")
        }
    }

    private static func count(_ value: JSONValue?, _ name: String, _ issue: (String) -> ImportIssue) throws(ImportIssue) -> Int? {
        switch value {
        case nil, .null?: return nil
        case .integer(let number)? where number >= 0: return Int(number)
        default: throw issue("\"\(name)\" must be a non-negative integer")
        }
    }

    private static func date(_ value: JSONValue?, _ name: String, _ issue: (String) -> ImportIssue) throws(ImportIssue) -> Date? {
        switch value {
        case nil, .null?: return nil
        case .string(let text)?:
            guard let date = Timestamps.parse(text) else { throw issue("\"\(name)\" must be an RFC 3339 time") }
            return date
        default: throw issue("\"\(name)\" must be an RFC 3339 time string")
        }
    }
}
