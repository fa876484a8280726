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

    @Argument(help: "The conversation id.")
    var id: String

    func validate() throws {
        if ConversationID(id) == nil { throw ValidationError("the conversation id must be a UUID.") }
    }

    func run() async throws {
        try await reportingErrors {
            let opened = try await StoreAccess.open(store)
            let transcript = try await opened.transcript(ConversationID(id)!)
            if output.json {
                try CLIOutput.json(TranscriptJSON(transcript))
            } else {
                TranscriptPrinter.print(transcript)
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
    static func print(_ transcript: Transcript) {
        let conversation = transcript.conversation
        let bold = CLIOutput.stdoutIsTerminal ? "\u{1B}[1m" : ""
        let dim = CLIOutput.stdoutIsTerminal ? "\u{1B}[2m" : ""
        let reset = CLIOutput.stdoutIsTerminal ? "\u{1B}[0m" : ""
        CLIOutput.line("\(bold)\(CLIOutput.terminalSafe(conversation.title ?? "(untitled)"))\(reset)")
        CLIOutput.line("\(dim)id \(conversation.id)  created \(CLIOutput.timestamp(conversation.createdAt))"
            + (conversation.subject.map { "  subject \(CLIOutput.terminalSafe($0))" } ?? "")
            + "  \(transcript.messages.count) messages\(reset)")
        for message in transcript.messages {
            var details: [String] = []
            if let model = message.model { details.append(CLIOutput.terminalSafe(model)) }
            if message.promptTokens != nil || message.completionTokens != nil {
                details.append("\(message.promptTokens ?? 0)+\(message.completionTokens ?? 0) tokens")
            }
            if let latency = message.latencyMilliseconds { details.append("\(latency) ms") }
            if let reason = message.finishReason { details.append(CLIOutput.terminalSafe(reason)) }
            CLIOutput.line()
            CLIOutput.line("\(bold)\(message.role.rawValue)\(reset) \(dim)\(CLIOutput.timestamp(message.createdAt))"
                + (details.isEmpty ? "" : "  " + details.joined(separator: ", ")) + reset)
            CLIOutput.line(CLIOutput.terminalSafe(message.content).split(separator: "\n", omittingEmptySubsequences: false)
                .map { "  " + $0 }.joined(separator: "\n"))
        }
    }
}
