import ChatLog

/// The three logged routes.
public enum ProxyAPI: String, Sendable, CaseIterable {
    case chatCompletions = "chat.completions"
    case responses = "responses"
    case anthropicMessages = "messages"

    var provider: Provider { self == .anthropicMessages ? .anthropic : .openAI }
}

public enum Provider: String, Sendable {
    case openAI = "openai"
    case anthropic = "anthropic"
}

/// A message of the request, with the canonical form its thread digest is computed from.
struct CapturedMessage: Sendable {
    var message: NewMessage
    /// Role, text and tool-call ids: the same for a completion and for the same message when a
    /// client sends it back in the next call's history (docs/ARCHITECTURE.md §10, threading).
    var canonical: String
}

/// What the proxy reads from a request body: never changed, only read.
struct CapturedRequest: Sendable {
    var api: ProxyAPI
    var model: String?
    var stream = false
    /// OpenAI chat streams: whether the client asked for the usage chunk itself.
    var includeUsage = false
    var messages: [CapturedMessage] = []
    var subject: String?
    var previousResponseID: String?
    /// False when the body was not a JSON object (passed upstream unchanged all the same).
    var parsed = false

    init(api: ProxyAPI) { self.api = api }

    /// Reads a request body; an unreadable body yields an empty capture.
    init(api: ProxyAPI, body: [UInt8]) {
        self.api = api
        guard let json = JSONValue.parse(body), case .object = json else { return }
        parsed = true
        model = json["model"]?.string
        stream = json["stream"]?.bool ?? false
        switch api {
        case .chatCompletions:
            includeUsage = json["stream_options"]?["include_usage"]?.bool ?? false
            subject = json["safety_identifier"]?.string ?? json["user"]?.string
            messages = (json["messages"]?.array ?? []).compactMap(Self.chatMessage)
        case .responses:
            subject = json["safety_identifier"]?.string ?? json["user"]?.string
            previousResponseID = json["previous_response_id"]?.string
            if let instructions = json["instructions"]?.string {
                messages.append(Self.captured(.system, instructions, metadata: nil, ids: []))
            }
            switch json["input"] {
            case .string(let text)?: messages.append(Self.captured(.user, text, metadata: nil, ids: []))
            case .array(let items)?: messages += Self.mergingAssistantRuns(items.compactMap(Self.responsesItem))
            default: break
            }
        case .anthropicMessages:
            subject = json["metadata"]?["user_id"]?.string
            if let system = json["system"] {
                let text = system.string ?? Self.anthropicText(system.array ?? [])
                messages.append(Self.captured(.system, text, metadata: nil, ids: []))
            }
            messages += (json["messages"]?.array ?? []).compactMap(Self.anthropicMessage)
        }
    }

    static func captured(_ role: Role, _ text: String, metadata: JSONValue?, ids: [String]) -> CapturedMessage {
        CapturedMessage(
            message: NewMessage(role: role, content: text, metadata: metadata),
            canonical: canonical(role: role, text: text, ids: ids))
    }

    static func canonical(role: Role, text: String, ids: [String]) -> String {
        role.rawValue + "\u{1}" + text + "\u{1}" + ids.joined(separator: "\u{2}")
    }

    // MARK: OpenAI chat completions

    static func role(_ name: String?) -> Role? {
        switch name {
        case "system", "developer": return .system
        case "user": return .user
        case "assistant": return .assistant
        case "tool", "function": return .tool
        default: return nil
        }
    }

    /// Text of a string or of an array of content parts (`text`, `input_text`, `output_text`);
    /// other parts (images, audio, files) go in metadata by type only, never their data.
    static func partsText(_ content: JSONValue?) -> (text: String, other: [JSONValue]) {
        switch content {
        case .string(let text)?: return (text, [])
        case .array(let parts)?:
            var text = ""
            var other: [JSONValue] = []
            for part in parts {
                if let piece = part["text"]?.string, ["text", "input_text", "output_text"].contains(part["type"]?.string ?? "text") {
                    text += piece
                } else if let refusal = part["refusal"]?.string {
                    text += refusal
                } else {
                    other.append(.object(["type": .string(part["type"]?.string ?? "unknown")]))
                }
            }
            return (text, other)
        default: return ("", [])
        }
    }

    static func chatMessage(_ json: JSONValue) -> CapturedMessage? {
        guard let role = role(json["role"]?.string) else { return nil }
        var (text, other) = partsText(json["content"])
        var metadata: [String: JSONValue] = [:]
        var ids: [String] = []
        if let refusal = json["refusal"]?.string {
            metadata["refusal"] = .string(refusal)
            if text.isEmpty { text = refusal }
        }
        if let calls = json["tool_calls"]?.array, !calls.isEmpty {
            metadata["tool_calls"] = .array(calls.map(chatToolCall))
            ids += calls.compactMap { $0["id"]?.string }
        }
        if let call = json["function_call"], call.object != nil { metadata["function_call"] = call }
        if let id = json["tool_call_id"]?.string {
            metadata["tool_call_id"] = .string(id)
            ids.append(id)
        }
        metadata.set("name", json["name"]?.string)
        if !other.isEmpty { metadata["content_parts"] = .array(other) }
        return captured(role, text, metadata: metadata.isEmpty ? nil : .object(metadata), ids: ids)
    }

    static func chatToolCall(_ call: JSONValue) -> JSONValue {
        var object: [String: JSONValue] = [:]
        object.set("id", call["id"]?.string)
        object.set("type", call["type"]?.string)
        object.set("name", call["function"]?["name"]?.string ?? call["custom"]?["name"]?.string)
        object.set("arguments", call["function"]?["arguments"]?.string ?? call["custom"]?["input"]?.string)
        return .object(object)
    }

    // MARK: OpenAI Responses API input items

    static func responsesItem(_ item: JSONValue) -> (CapturedMessage, [String])? {
        let type = item["type"]?.string ?? "message"
        switch type {
        case "message":
            guard let role = role(item["role"]?.string) else { return nil }
            let (text, other) = partsText(item["content"])
            return (captured(role, text, metadata: other.isEmpty ? nil : .object(["content_parts": .array(other)]), ids: []), [])
        case "function_call", "custom_tool_call":
            let id = item["call_id"]?.string
            var call: [String: JSONValue] = [:]
            call.set("id", id)
            call.set("type", type)
            call.set("name", item["name"]?.string)
            call.set("arguments", item["arguments"]?.string ?? item["input"]?.string)
            let ids = id.map { [$0] } ?? []
            return (captured(.assistant, "", metadata: .object(["tool_calls": .array([.object(call)])]), ids: ids), ids)
        case "function_call_output", "custom_tool_call_output":
            let id = item["call_id"]?.string
            let output = item["output"]?.string ?? partsText(item["output"]).text
            var metadata: [String: JSONValue] = [:]
            metadata.set("tool_call_id", id)
            let ids = id.map { [$0] } ?? []
            return (captured(.tool, output, metadata: .object(metadata), ids: ids), ids)
        default:
            // Reasoning items, item references, …: kept out of the text and the digest.
            return nil
        }
    }

    /// A response's output items (its message and its function calls) come back as separate
    /// input items; they are one assistant message, as the completion was logged.
    static func mergingAssistantRuns(_ items: [(CapturedMessage, [String])]) -> [CapturedMessage] {
        var result: [CapturedMessage] = []
        var run: (text: String, calls: [JSONValue], ids: [String], other: [JSONValue])?
        func flush() {
            guard let current = run else { return }
            var metadata: [String: JSONValue] = [:]
            if !current.calls.isEmpty { metadata["tool_calls"] = .array(current.calls) }
            if !current.other.isEmpty { metadata["content_parts"] = .array(current.other) }
            result.append(captured(.assistant, current.text, metadata: metadata.isEmpty ? nil : .object(metadata), ids: current.ids))
            run = nil
        }
        for (item, ids) in items {
            guard item.message.role == .assistant else {
                flush()
                result.append(item)
                continue
            }
            var current = run ?? ("", [], [], [])
            current.text += item.message.content
            current.calls += item.message.metadata?["tool_calls"]?.array ?? []
            current.other += item.message.metadata?["content_parts"]?.array ?? []
            current.ids += ids
            run = current
        }
        flush()
        return result
    }

    // MARK: Anthropic messages

    static func anthropicText(_ blocks: [JSONValue]) -> String {
        blocks.compactMap { $0["type"]?.string == "text" ? $0["text"]?.string : nil }.joined()
    }

    static func anthropicMessage(_ json: JSONValue) -> CapturedMessage? {
        guard var role = role(json["role"]?.string) else { return nil }
        if case .string(let text)? = json["content"] { return captured(role, text, metadata: nil, ids: []) }
        let blocks = json["content"]?.array ?? []
        var text = ""
        var ids: [String] = []
        var toolUses: [JSONValue] = []
        var toolResults: [JSONValue] = []
        var other: [JSONValue] = []
        for block in blocks {
            switch block["type"]?.string {
            case "text": text += block["text"]?.string ?? ""
            case "tool_use", "server_tool_use":
                var use: [String: JSONValue] = [:]
                use.set("id", block["id"]?.string)
                use.set("name", block["name"]?.string)
                use.set("arguments", block["input"].map { .string($0.jsonText) })
                toolUses.append(.object(use))
                if let id = block["id"]?.string { ids.append(id) }
            case "tool_result":
                let id = block["tool_use_id"]?.string
                let content = block["content"]?.string ?? anthropicText(block["content"]?.array ?? [])
                var result: [String: JSONValue] = [:]
                result.set("tool_use_id", id)
                result.set("is_error", block["is_error"])
                toolResults.append(.object(result))
                text += content
                if let id { ids.append(id) }
            default:
                other.append(.object(["type": .string(block["type"]?.string ?? "unknown")]))
            }
        }
        var metadata: [String: JSONValue] = [:]
        if !toolUses.isEmpty { metadata["tool_calls"] = .array(toolUses) }
        if !toolResults.isEmpty {
            metadata["tool_results"] = .array(toolResults)
            // A user turn made only of tool results is the tools' answer.
            if role == .user, blocks.allSatisfy({ $0["type"]?.string == "tool_result" }) { role = .tool }
        }
        if !other.isEmpty { metadata["content_blocks"] = .array(other) }
        return captured(role, text, metadata: metadata.isEmpty ? nil : .object(metadata), ids: ids)
    }
}
