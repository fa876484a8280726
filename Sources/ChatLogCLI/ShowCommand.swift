import ArgumentParser
import ChatLog
import Foundation

struct ShowCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show",
        abstract: "Show one conversation, messages oldest first."
    )

    @OptionGroup var store: StoreOptions
    @OptionGroup var output: OutputOptions
    @OptionGroup var display: DisplayOptions

    @Argument(help: "The conversation id, or a unique prefix of it (at least 8 characters). Without one on a terminal: the latest.")
    var id: String?
    @Flag(name: .long, help: "Show the most recently created conversation.")
    var latest = false
    @Flag(name: .long, help: "Print the conversation as Markdown (a heading per message, like `llm logs`).")
    var markdown = false

    func validate() throws {
        if let id {
            if latest { throw ValidationError("give a conversation id or --latest, not both.") }
            try ConversationArgument.validate(id, "the conversation id")
        } else if !latest && !CLIOutput.stdoutIsTerminal {
            throw ValidationError("give a conversation id, or --latest for the most recent conversation.")
        }
        if markdown && output.json { throw ValidationError("--markdown and --json cannot go together.") }
    }

    func run() async throws {
        try await reportingErrors {
            let opened = try await StoreAccess.openForReading(store)
            let conversationID: ConversationID
            if let id {
                conversationID = try await ConversationArgument.resolve(id, in: opened)
            } else {
                guard let newest = try await opened.conversations(ConversationQuery(limit: 1)).conversations.first else {
                    throw ChatLogError.conversationNotFound("(the store has no conversations)")
                }
                conversationID = newest.id
            }
            let transcript = try await opened.transcript(conversationID)
            if output.json {
                try CLIOutput.json(TranscriptJSON(transcript))
            } else if markdown {
                TranscriptPrinter.markdown(transcript)
            } else {
                TranscriptPrinter.print(transcript, style: display.style)
            }
        }
    }
}

struct TranscriptJSON: Encodable {
    struct MessageJSON: Encodable {
        let id: String
        let role: String
        let content: String
        @JSONNullable var model: String?
        let created_at: String
        @JSONNullable var prompt_tokens: Int?
        @JSONNullable var completion_tokens: Int?
        @JSONNullable var latency_ms: Int?
        @JSONNullable var finish_reason: String?
        @JSONNullable var metadata: JSONValue?
    }

    let id: String
    @JSONNullable var title: String?
    @JSONNullable var subject: String?
    let created_at: String
    let updated_at: String
    @JSONNullable var metadata: JSONValue?
    let messages: [MessageJSON]

    init(_ transcript: Transcript) {
        let conversation = transcript.conversation
        id = conversation.id.rawValue
        title = conversation.title
        subject = conversation.subject
        created_at = CLIOutput.timestamp(conversation.createdAt)
        updated_at = CLIOutput.timestamp(conversation.updatedAt)
        metadata = conversation.metadata
        messages = transcript.messages.map {
            MessageJSON(
                id: $0.id.rawValue, role: $0.role.rawValue, content: $0.content, model: $0.model,
                created_at: CLIOutput.timestamp($0.createdAt), prompt_tokens: $0.promptTokens,
                completion_tokens: $0.completionTokens, latency_ms: $0.latencyMilliseconds, finish_reason: $0.finishReason,
                metadata: $0.metadata)
        }
    }
}

enum TranscriptPrinter {
    static func print(_ transcript: Transcript, style: TerminalStyle = TerminalStyle(.auto)) {
        let conversation = transcript.conversation
        let (bold, dim, reset) = (style.bold, style.dim, style.reset)
        CLIOutput.line("\(bold)\(CLIOutput.terminalSafe(conversation.title ?? "(untitled)"))\(reset)")
        CLIOutput.line("\(dim)id \(conversation.id)  created \(CLIOutput.timestamp(conversation.createdAt))"
            + (conversation.subject.map { "  subject \(CLIOutput.terminalSafeField($0))" } ?? "")
            + "  \(transcript.messages.count) messages\(reset)")
        if let metadata = conversation.metadata { CLIOutput.line("\(dim)metadata \(CLIOutput.terminalSafe(compact(metadata)))\(reset)") }
        for message in transcript.messages {
            var details: [String] = []
            if let model = message.model { details.append(CLIOutput.terminalSafeField(model)) }
            if message.promptTokens != nil || message.completionTokens != nil {
                details.append("\(message.promptTokens ?? 0)+\(message.completionTokens ?? 0) tokens")
            }
            if let latency = message.latencyMilliseconds { details.append("\(latency) ms") }
            if let reason = message.finishReason { details.append(CLIOutput.terminalSafeField(reason)) }
            CLIOutput.line()
            CLIOutput.line("\(bold)\(message.role.rawValue)\(reset) \(dim)\(CLIOutput.timestamp(message.createdAt))"
                + (details.isEmpty ? "" : "  " + details.joined(separator: ", ")) + reset)
            if !message.content.isEmpty {
                CLIOutput.line(CLIOutput.terminalSafe(message.content).split(separator: "\n", omittingEmptySubsequences: false)
                    .map { "  " + $0 }.joined(separator: "\n"))
            }
            for line in MessageExtras(message.metadata).lines { CLIOutput.line("  \(dim)\(CLIOutput.terminalSafe(line))\(reset)") }
        }
    }

    /// Markdown, as `llm logs` prints a conversation: a heading for the conversation, one per
    /// message, the content as written (it usually is Markdown already), tool calls as code.
    static func markdown(_ transcript: Transcript) {
        let conversation = transcript.conversation
        CLIOutput.line("# \(CLIOutput.terminalSafe(conversation.title ?? "(untitled)"))")
        CLIOutput.line()
        CLIOutput.line("id: `\(conversation.id)`, created \(CLIOutput.timestamp(conversation.createdAt))"
            + (conversation.subject.map { ", subject: \(CLIOutput.terminalSafeField($0))" } ?? ""))
        for message in transcript.messages {
            CLIOutput.line()
            CLIOutput.line("## \(message.role.rawValue)" + (message.model.map { " (\(CLIOutput.terminalSafeField($0)))" } ?? ""))
            CLIOutput.line()
            CLIOutput.line("*\(CLIOutput.timestamp(message.createdAt))*")
            if !message.content.isEmpty {
                CLIOutput.line()
                CLIOutput.line(CLIOutput.terminalSafe(message.content))
            }
            let extras = MessageExtras(message.metadata).lines
            if !extras.isEmpty {
                CLIOutput.line()
                CLIOutput.line("```")
                for line in extras { CLIOutput.line(CLIOutput.terminalSafe(line)) }
                CLIOutput.line("```")
            }
        }
    }

    static func compact(_ value: JSONValue) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? String(decoding: encoder.encode(value), as: UTF8.self)) ?? ""
    }
}

/// What a message's metadata says beyond its text: the tool calls an assistant made (OpenAI's
/// `tool_calls`), the call a tool message answers (`tool_call_id`, `name`), and the rest as
/// compact JSON.
struct MessageExtras {
    var lines: [String] = []

    init(_ metadata: JSONValue?) {
        guard let metadata else { return }
        guard case .object(var fields) = metadata else {
            lines.append("metadata " + TranscriptPrinter.compact(metadata))
            return
        }
        if case .array(let calls)? = fields["tool_calls"] {
            for call in calls {
                guard case .object(let callFields) = call, case .object(let function)? = callFields["function"],
                    case .string(let name)? = function["name"]
                else {
                    lines.append("tool call " + TranscriptPrinter.compact(call))
                    continue
                }
                var arguments = ""
                if case .string(let text)? = function["arguments"] { arguments = text } else if let value = function["arguments"] {
                    arguments = TranscriptPrinter.compact(value)
                }
                var line = "→ tool call \(name)(\(arguments))"
                if case .string(let id)? = callFields["id"] { line += "  id \(id)" }
                lines.append(line)
            }
            fields["tool_calls"] = nil
        }
        if case .string(let id)? = fields["tool_call_id"] {
            var line = "← result of tool call \(id)"
            if case .string(let name)? = fields["name"] {
                line += " (\(name))"
                fields["name"] = nil
            }
            lines.append(line)
            fields["tool_call_id"] = nil
        }
        if !fields.isEmpty { lines.append("metadata " + TranscriptPrinter.compact(.object(fields))) }
    }
}
