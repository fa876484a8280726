import Foundation

/// ChatGPT's data export: `conversations.json`, a JSON array of conversations, each a tree of
/// nodes (`mapping`) of which the visible conversation is the path from `current_node` up through
/// `parent` to the root. Edits and regenerations left on other branches are not imported.
public enum ChatGPTExport {
    public static let format = "chatgpt"

    /// Reads `path` (the `conversations.json` of an unzipped export, or the folder holding it).
    /// A file that is not a JSON array throws; a conversation that cannot be read becomes an
    /// `ImportIssue` naming it ("conversation 6667c28a-…", or "conversation #3" without an id).
    public static func records(path: String) throws(ChatLogError) -> [Result<ImportedConversation, ImportIssue>] {
        var file = path
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw .invalidInput("cannot open \(path): no such file")
        }
        if isDirectory.boolValue { file = (path as NSString).appendingPathComponent("conversations.json") }
        var data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: file))
        } catch {
            throw .invalidInput("cannot read \(file)")
        }
        if data.starts(with: [0x50, 0x4B, 0x03, 0x04]) {
            throw .invalidInput("\(file) is a zip archive: unzip the ChatGPT export and import its conversations.json")
        }
        if data.starts(with: [0xEF, 0xBB, 0xBF]) { data.removeFirst(3) }
        let value: JSONValue
        do {
            value = try JSONDecoder().decode(JSONValue.self, from: data)
        } catch {
            let utf8 = String(validating: data, as: UTF8.self) != nil
            throw .invalidInput(
                "\(file) is not a ChatGPT export: it is not valid JSON\(utf8 ? " (truncated or malformed)" : " (not UTF-8)")")
        }
        guard case .array(let items) = value else {
            throw .invalidInput("\(file) is not a ChatGPT export: expected a JSON array of conversations, found \(kind(value))")
        }
        return items.enumerated().map { index, item in
            Result { () throws(ImportIssue) in try conversation(item, index: index) }
        }
    }

    static func conversation(_ item: JSONValue, index: Int) throws(ImportIssue) -> ImportedConversation {
        var location = "conversation #\(index + 1)"
        func issue(_ problem: String) -> ImportIssue { ImportIssue(location: location, problem: problem) }
        guard case .object(let record) = item else { throw issue("expected a JSON object, found \(kind(item))") }
        // Some export converters write no conversation id: the import key is then derived from
        // the content (see `contentKey`).
        let id: String?
        switch (record["id"], record["conversation_id"]) {
        case (.string(let text)?, _) where !text.isEmpty, (_, .string(let text)?) where !text.isEmpty:
            id = text
            location = "conversation \(text)"
        case (nil, nil), (.null?, nil), (nil, .null?), (.null?, .null?):
            id = nil
        default:
            throw issue("\"id\" and \"conversation_id\" must be non-empty strings")
        }
        let title: String?
        switch record["title"] {
        case nil, .null?: title = nil
        case .string(let text)?: title = text
        default: throw issue("\"title\" must be a string")
        }
        guard case .object(let mapping)? = record["mapping"] else { throw issue("\"mapping\" must be an object of nodes") }
        let created = try milliseconds(record["create_time"], "create_time", issue)
        let updated = try milliseconds(record["update_time"], "update_time", issue)

        // The visible branch: from current_node up to the root, reversed.
        let current: String
        switch record["current_node"] {
        case .string(let node)?:
            current = node
        case nil, .null?:
            guard let leaf = latestLeaf(mapping) else { throw issue("no \"current_node\" and no node to start from") }
            current = leaf
        default:
            throw issue("\"current_node\" must be a string")
        }
        var path: [(id: String, node: [String: JSONValue])] = []
        var seen = Set<String>()
        var next: String? = current
        while let nodeID = next {
            guard seen.insert(nodeID).inserted else { throw issue("the parent chain loops at node \(nodeID)") }
            guard let raw = mapping[nodeID] else { throw issue("node \(nodeID) is referenced but not in \"mapping\"") }
            guard case .object(let node) = raw else { throw issue("node \(nodeID) is not an object") }
            path.append((nodeID, node))
            switch node["parent"] {
            case nil, .null?: next = nil
            case .string(let parent)?: next = parent
            default: throw issue("node \(nodeID) has a \"parent\" that is not a string")
            }
        }
        path.reverse()

        var messages: [NewMessage] = []
        var lastTime = created
        for (nodeID, node) in path {
            guard let raw = node["message"], raw != .null else { continue }
            func nodeIssue(_ problem: String) -> ImportIssue { issue("node \(nodeID): \(problem)") }
            guard case .object(let message) = raw else { throw nodeIssue("\"message\" is not an object") }
            guard case .object(let author)? = message["author"], case .string(let roleText)? = author["role"] else {
                throw nodeIssue("the message has no author.role")
            }
            guard let role = Role(rawValue: roleText) else {
                throw nodeIssue("author.role must be one of system, user, assistant, tool (found \"\(roleText.prefix(20))\")")
            }
            var messageMetadata: [String: JSONValue] = [:]
            switch message["metadata"] {
            case nil, .null?: break
            case .object(let fields)?: messageMetadata = fields
            default: throw nodeIssue("the message's metadata is not an object")
            }
            let content: [String: JSONValue]
            switch message["content"] {
            case nil, .null?: content = [:]
            case .object(let fields)?: content = fields
            default: throw nodeIssue("the message's content is not an object")
            }
            let contentType: String
            switch content["content_type"] {
            case nil, .null?: contentType = "text"
            case .string(let type)?: contentType = type
            default: throw nodeIssue("content.content_type is not a string")
            }

            var text = ""
            var metadata: [String: JSONValue] = [:]
            switch (content["parts"], content["text"]) {
            case (.array(let parts)?, _):
                var strings: [String] = []
                var others: [JSONValue] = []
                for part in parts {
                    switch part {
                    case .string(let string):
                        strings.append(string)
                    case .object(let fields):
                        // Voice conversations carry their transcript as a part with text.
                        if fields["content_type"] == .string("audio_transcription"), case .string(let transcript)? = fields["text"] {
                            strings.append(transcript)
                        }
                        others.append(.object(["content_type": fields["content_type"] ?? .null, "asset_pointer": fields["asset_pointer"] ?? .null]))
                    case .null:
                        continue
                    default:
                        others.append(.object(["content_type": .null, "asset_pointer": .null]))
                    }
                }
                text = strings.joined()
                if !others.isEmpty { metadata["non_text_parts"] = .array(others) }
            case (_, .string(let string)?):
                // code, execution_output and similar carry `text`, not `parts`.
                text = string
            case (nil, nil), (.null?, _), (_, .null?):
                break
            default:
                throw nodeIssue("content.parts must be an array and content.text a string")
            }
            if contentType == "code", let language = content["language"] { metadata["language"] = language }

            // Hidden messages (the empty system message at the root, custom instructions) carry
            // no conversation text.
            if messageMetadata["is_visually_hidden_from_conversation"] == .bool(true) { continue }
            if text.isEmpty && metadata.isEmpty { continue }
            if contentType != "text" { metadata["content_type"] = .string(contentType) }
            if case .string(let recipient)? = message["recipient"], recipient != "all" { metadata["recipient"] = .string(recipient) }
            if case .string(let name)? = author["name"], !name.isEmpty { metadata["author_name"] = .string(name) }

            let time = try milliseconds(message["create_time"], "node \(nodeID): create_time", issue) ?? lastTime
            if let time { lastTime = time }
            var model: String?
            var finishReason: String?
            if role == .assistant {
                if case .string(let slug)? = messageMetadata["model_slug"], !slug.isEmpty { model = slug }
                if case .object(let details)? = messageMetadata["finish_details"], case .string(let type)? = details["type"] {
                    finishReason = type
                }
            }
            messages.append(
                NewMessage(
                    role: role, content: text, model: model, finishReason: finishReason, metadata: metadata.isEmpty ? nil : .object(metadata),
                    createdAt: time.map(ImportTimes.date(milliseconds:))))
        }

        var conversationMetadata: [String: JSONValue] = [:]
        if let id { conversationMetadata["chatgpt_id"] = .string(id) }
        if let updated { conversationMetadata["chatgpt_updated_at"] = .string(Timestamps.format(ImportTimes.date(milliseconds: updated))) }
        if case .string(let gizmo)? = record["gizmo_id"], !gizmo.isEmpty { conversationMetadata["chatgpt_gizmo_id"] = .string(gizmo) }
        return ImportedConversation(
            sourceID: id.map { "chatgpt:\($0)" } ?? contentKey(title: title, created: created, messages: messages),
            conversation: NewConversation(
                title: title, metadata: .object(conversationMetadata),
                createdAt: (created ?? messages.first?.createdAt?.unixMilliseconds).map(ImportTimes.date(milliseconds:))),
            messages: messages, location: location)
    }

    /// The import key of a conversation without an id: a hash of its title, its `create_time`
    /// and the visible branch's messages (role, text, time), each length-prefixed. Importing the
    /// same file again finds the same keys (idempotent); a conversation that changed since (a
    /// message more, a new title) counts as a new one. Node ids are left out: converters make
    /// them up anew on each run.
    static func contentKey(title: String?, created: Int64?, messages: [NewMessage]) -> String {
        var bytes: [UInt8] = []
        func field(_ text: String?) {
            guard let text else { return bytes.append(0) }
            bytes.append(1)
            withUnsafeBytes(of: UInt64(text.utf8.count).littleEndian) { bytes.append(contentsOf: $0) }
            bytes.append(contentsOf: text.utf8)
        }
        field(title)
        field(created.map { String($0) })
        for message in messages {
            field(message.role.rawValue)
            field(message.content)
            field(message.createdAt.map { String($0.unixMilliseconds) })
        }
        return "chatgpt-content:" + OpenAIJSONL.contentHash(bytes)
    }

    /// Without `current_node`: the leaf whose message is newest.
    private static func latestLeaf(_ mapping: [String: JSONValue]) -> String? {
        var best: (id: String, time: Double)?
        for (id, raw) in mapping {
            guard case .object(let node) = raw else { continue }
            if case .array(let children)? = node["children"], !children.isEmpty { continue }
            var time = -Double.infinity
            if case .object(let message)? = node["message"] {
                switch message["create_time"] {
                case .number(let value)?: time = value
                case .integer(let value)?: time = Double(value)
                default: break
                }
            }
            if best == nil || time > best!.time || (time == best!.time && id < best!.id) { best = (id, time) }
        }
        return best?.id
    }

    private static func milliseconds(_ value: JSONValue?, _ name: String, _ issue: (String) -> ImportIssue) throws(ImportIssue)
        -> Int64?
    {
        switch value {
        case nil, .null?:
            return nil
        case .integer(let seconds)?:
            let (result, overflow) = seconds.multipliedReportingOverflow(by: 1000)
            guard !overflow else { throw issue("\(name) is out of range") }
            return result
        case .number(let seconds)?:
            guard let result = ImportTimes.milliseconds(unixSeconds: seconds) else { throw issue("\(name) is out of range") }
            return result
        default:
            throw issue("\(name) must be a number of Unix seconds")
        }
    }

    private static func kind(_ value: JSONValue) -> String {
        switch value {
        case .null: "null"
        case .bool: "a boolean"
        case .integer, .number: "a number"
        case .string: "a string"
        case .array: "an array"
        case .object: "an object"
        }
    }
}
