import ChatLog

/// What the proxy logs of a response: accumulated from a JSON body or from the SSE events of a
/// stream, as they pass through (never changing them).
struct CapturedCompletion: Sendable {
    var text = ""
    var refusal: String?
    var reasoning: String?
    /// `{id, type, name, arguments}` per call, arguments as JSON text.
    var toolCalls: [JSONValue] = []
    var finishReason: String?
    var model: String?
    var responseID: String?
    var usage: JSONValue?
    var promptTokens: Int?
    var completionTokens: Int?
    var cachedTokens: Int?
    var cacheCreationTokens: Int?
    var reasoningTokens: Int?
    /// The upstream's error object (an HTTP error body, an Anthropic `error` event, a failed response).
    var error: JSONValue?
    /// Responses API output items other than messages and function calls (type and id).
    var otherItems: [JSONValue] = []
    /// Choices beyond the first (`n` > 1), as logged JSON.
    var otherChoices: [JSONValue] = []

    /// As `CapturedRequest.canonical`: what the same message looks like when sent back.
    var canonical: String {
        CapturedRequest.canonical(role: .assistant, text: text.isEmpty ? (refusal ?? "") : text, ids: toolCalls.compactMap { $0["id"]?.string })
    }
}

/// Accumulates a response as its bytes pass through.
struct CompletionCapture {
    let api: ProxyAPI
    let streaming: Bool
    let captureLimit: Int
    private(set) var result = CapturedCompletion()
    /// True once the stream's last event (`[DONE]`, `message_stop`, `response.completed` …) or,
    /// for a JSON body, the end of the body was seen.
    private(set) var sawTerminalEvent = false
    /// Stream offset just after the final event (streams only).
    private(set) var terminalEventEnd: Int?
    /// Set when the first content (text, refusal, tool call) arrived.
    private(set) var sawFirstToken = false
    private(set) var truncated = false
    private var parser = ServerSentEventParser()
    private var body: [UInt8] = []
    /// Chat stream tool calls by index.
    private var chatCalls: [Int: [String: JSONValue]] = [:]
    private var chatCallArguments: [Int: String] = [:]
    /// Anthropic content blocks by index.
    private var blocks: [Int: [String: JSONValue]] = [:]
    private var blockInput: [Int: String] = [:]

    init(api: ProxyAPI, streaming: Bool, captureLimit: Int) {
        self.api = api
        self.streaming = streaming
        self.captureLimit = captureLimit
    }

    /// Feeds the next bytes; returns the events they completed (for streams).
    @discardableResult
    mutating func feed(_ bytes: some Collection<UInt8>) -> [ServerSentEventParser.Event] {
        guard streaming else {
            if body.count + bytes.count <= captureLimit { body += bytes } else { truncated = true }
            return []
        }
        let events = parser.feed(bytes)
        for event in events {
            handle(event)
            if sawTerminalEvent, terminalEventEnd == nil { terminalEventEnd = event.end }
        }
        return events
    }

    /// The completion, after the last bytes.
    mutating func finish() -> CapturedCompletion {
        if !streaming, !truncated, let json = JSONValue.parse(body) {
            if !body.isEmpty { sawTerminalEvent = true }
            readBody(json)
        }
        finishStream()
        return result
    }

    // MARK: Non-streaming bodies

    private mutating func readBody(_ json: JSONValue) {
        if let error = json["error"], !error.isNull {
            result.error = error
        }
        switch api {
        case .chatCompletions:
            result.model = json["model"]?.string
            result.responseID = json["id"]?.string
            let choices = json["choices"]?.array ?? []
            if let first = choices.first {
                let message = first["message"]
                result.text = CapturedRequest.partsText(message?["content"]).text
                result.refusal = message?["refusal"]?.string
                result.reasoning = message?["reasoning_content"]?.string ?? message?["reasoning"]?.string
                result.toolCalls = (message?["tool_calls"]?.array ?? []).map(CapturedRequest.chatToolCall)
                result.finishReason = first["finish_reason"]?.string
            }
            result.otherChoices = Array(choices.dropFirst())
            readOpenAIUsage(json["usage"])
        case .responses:
            readResponse(json)
        case .anthropicMessages:
            if json["type"]?.string == "error" { result.error = json["error"] }
            result.model = json["model"]?.string
            result.responseID = json["id"]?.string
            result.finishReason = json["stop_reason"]?.string
            for block in json["content"]?.array ?? [] { readAnthropicBlock(block, input: block["input"]?.jsonText) }
            readAnthropicUsage(json["usage"])
        }
    }

    private mutating func readOpenAIUsage(_ usage: JSONValue?) {
        guard let usage, usage.object != nil else { return }
        result.usage = usage
        result.promptTokens = usage["prompt_tokens"]?.int ?? usage["input_tokens"]?.int
        result.completionTokens = usage["completion_tokens"]?.int ?? usage["output_tokens"]?.int
        result.cachedTokens = (usage["prompt_tokens_details"] ?? usage["input_tokens_details"])?["cached_tokens"]?.int
        result.reasoningTokens = (usage["completion_tokens_details"] ?? usage["output_tokens_details"])?["reasoning_tokens"]?.int
    }

    private mutating func readAnthropicUsage(_ usage: JSONValue?) {
        guard let usage, usage.object != nil else { return }
        var merged = result.usage?.object ?? [:]
        for (key, value) in usage.object ?? [:] where !value.isNull { merged[key] = value }
        result.usage = .object(merged)
        result.promptTokens = merged["input_tokens"]?.int
        result.completionTokens = merged["output_tokens"]?.int
        result.cachedTokens = merged["cache_read_input_tokens"]?.int
        result.cacheCreationTokens = merged["cache_creation_input_tokens"]?.int
    }

    private mutating func readAnthropicBlock(_ block: JSONValue, input: String?) {
        switch block["type"]?.string {
        case "text": result.text += block["text"]?.string ?? ""
        case "thinking": result.reasoning = (result.reasoning ?? "") + (block["thinking"]?.string ?? "")
        case "tool_use", "server_tool_use":
            var call: [String: JSONValue] = [:]
            call.set("id", block["id"]?.string)
            call.set("type", block["type"]?.string)
            call.set("name", block["name"]?.string)
            call.set("arguments", input)
            result.toolCalls.append(.object(call))
        default: break
        }
    }

    private mutating func readResponse(_ json: JSONValue) {
        result.responseID = json["id"]?.string ?? result.responseID
        result.model = json["model"]?.string ?? result.model
        if let error = json["error"], !error.isNull { result.error = error }
        let status = json["status"]?.string
        if status == "incomplete" {
            result.finishReason = json["incomplete_details"]?["reason"]?.string ?? "incomplete"
        } else if let status {
            result.finishReason = status
        }
        var text = ""
        var refusal: String?
        var calls: [JSONValue] = []
        var reasoning: String?
        var otherItems: [JSONValue] = []
        for item in json["output"]?.array ?? [] {
            switch item["type"]?.string {
            case "message":
                for part in item["content"]?.array ?? [] {
                    if part["type"]?.string == "output_text" { text += part["text"]?.string ?? "" }
                    if part["type"]?.string == "refusal" { refusal = (refusal ?? "") + (part["refusal"]?.string ?? "") }
                }
            case "function_call", "custom_tool_call":
                var call: [String: JSONValue] = [:]
                call.set("id", item["call_id"]?.string)
                call.set("type", item["type"]?.string)
                call.set("name", item["name"]?.string)
                call.set("arguments", item["arguments"]?.string ?? item["input"]?.string)
                calls.append(.object(call))
            case "reasoning":
                let summary = (item["summary"]?.array ?? []).compactMap { $0["text"]?.string }.joined(separator: "\n")
                if !summary.isEmpty { reasoning = (reasoning.map { $0 + "\n" } ?? "") + summary }
            default:
                // Built-in tools (web search, file search, …): recorded, but not part of the
                // message a client sends back, so kept out of the threading digest.
                if let type = item["type"]?.string { otherItems.append(.object(["type": .string(type), "id": item["id"] ?? .null])) }
            }
        }
        if json["output"] != nil {
            result.text = text
            result.refusal = refusal
            result.toolCalls = calls
            result.reasoning = reasoning
            result.otherItems = otherItems
        }
        readOpenAIUsage(json["usage"])
    }

    // MARK: Streams

    private mutating func handle(_ event: ServerSentEventParser.Event) {
        switch api {
        case .chatCompletions:
            if event.data == "[DONE]" {
                sawTerminalEvent = true
                return
            }
            guard let json = JSONValue.parse(event.data[...]) else { return }
            if let error = json["error"], !error.isNull { result.error = error }
            result.model = result.model ?? json["model"]?.string
            result.responseID = result.responseID ?? json["id"]?.string
            if let usage = json["usage"], !usage.isNull { readOpenAIUsage(usage) }
            for choice in json["choices"]?.array ?? [] {
                let index = choice["index"]?.int ?? 0
                guard index == 0 else {
                    if let reason = choice["finish_reason"]?.string { result.otherChoices.append(.object(["index": .integer(Int64(index)), "finish_reason": .string(reason)])) }
                    continue
                }
                let delta = choice["delta"]
                if let content = delta?["content"]?.string, !content.isEmpty {
                    result.text += content
                    sawFirstToken = true
                }
                if let refusal = delta?["refusal"]?.string {
                    result.refusal = (result.refusal ?? "") + refusal
                    sawFirstToken = true
                }
                if let reasoning = delta?["reasoning_content"]?.string ?? delta?["reasoning"]?.string {
                    result.reasoning = (result.reasoning ?? "") + reasoning
                }
                for call in delta?["tool_calls"]?.array ?? [] {
                    sawFirstToken = true
                    let callIndex = call["index"]?.int ?? 0
                    var known = chatCalls[callIndex] ?? [:]
                    known.set("id", call["id"]?.string)
                    known.set("type", call["type"]?.string)
                    known.set("name", call["function"]?["name"]?.string)
                    chatCalls[callIndex] = known
                    chatCallArguments[callIndex, default: ""] += call["function"]?["arguments"]?.string ?? ""
                }
                if let reason = choice["finish_reason"]?.string { result.finishReason = reason }
            }
        case .responses:
            guard let json = JSONValue.parse(event.data[...]) else { return }
            let type = json["type"]?.string ?? event.event ?? ""
            switch type {
            case "response.created", "response.in_progress":
                if let response = json["response"] {
                    result.responseID = response["id"]?.string ?? result.responseID
                    result.model = response["model"]?.string ?? result.model
                }
            case "response.output_text.delta":
                result.text += json["delta"]?.string ?? ""
                sawFirstToken = true
            case "response.refusal.delta":
                result.refusal = (result.refusal ?? "") + (json["delta"]?.string ?? "")
                sawFirstToken = true
            case "response.function_call_arguments.delta":
                sawFirstToken = true
            case "response.completed", "response.failed", "response.incomplete":
                sawTerminalEvent = true
                if let response = json["response"] { readResponse(response) }
            case "error":
                sawTerminalEvent = true
                result.error = json["error"] ?? json
                result.finishReason = "upstream_error"
            default: break
            }
        case .anthropicMessages:
            guard let json = JSONValue.parse(event.data[...]) else { return }
            let type = json["type"]?.string ?? event.event ?? ""
            switch type {
            case "message_start":
                let message = json["message"]
                result.responseID = message?["id"]?.string
                result.model = message?["model"]?.string
                readAnthropicUsage(message?["usage"])
            case "content_block_start":
                let index = json["index"]?.int ?? 0
                blocks[index] = json["content_block"]?.object ?? [:]
                if let type = blocks[index]?["type"]?.string, type.hasSuffix("tool_use") { sawFirstToken = true }
            case "content_block_delta":
                let index = json["index"]?.int ?? 0
                let delta = json["delta"]
                switch delta?["type"]?.string {
                case "text_delta":
                    let text = delta?["text"]?.string ?? ""
                    if case .string(let earlier)? = blocks[index]?["text"] {
                        blocks[index]?["text"] = .string(earlier + text)
                    } else {
                        blocks[index, default: ["type": .string("text")]]["text"] = .string(text)
                    }
                    sawFirstToken = true
                case "thinking_delta":
                    let text = delta?["thinking"]?.string ?? ""
                    let earlier = blocks[index]?["thinking"]?.string ?? ""
                    blocks[index, default: ["type": .string("thinking")]]["thinking"] = .string(earlier + text)
                case "input_json_delta":
                    blockInput[index, default: ""] += delta?["partial_json"]?.string ?? ""
                default: break
                }
            case "message_delta":
                if let reason = json["delta"]?["stop_reason"]?.string { result.finishReason = reason }
                readAnthropicUsage(json["usage"])
            case "message_stop":
                sawTerminalEvent = true
            case "error":
                sawTerminalEvent = true
                result.error = json["error"] ?? json
                result.finishReason = "upstream_error"
            default: break
            }
        }
    }

    private mutating func finishStream() {
        guard streaming else { return }
        switch api {
        case .chatCompletions:
            result.toolCalls = chatCalls.keys.sorted().map { index in
                var call = chatCalls[index] ?? [:]
                call["arguments"] = .string(chatCallArguments[index] ?? "")
                return .object(call)
            }
        case .anthropicMessages:
            // Built from the blocks seen so far (a cut-off stream keeps its partial text).
            result.text = ""
            for index in blocks.keys.sorted() {
                guard let block = blocks[index] else { continue }
                let input = blockInput[index].map { $0.isEmpty ? "{}" : $0 } ?? block["input"]?.jsonText
                readAnthropicBlock(.object(block), input: input)
            }
        case .responses:
            break
        }
    }
}
