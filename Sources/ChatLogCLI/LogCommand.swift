import ArgumentParser
import ChatLog
import Foundation

struct LogCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "log",
        abstract: "Append one message; its content comes from --text or from stdin.",
        discussion: "Without --conversation, starts a new conversation (with --title and --subject if given)."
    )

    @OptionGroup var store: StoreOptions
    @OptionGroup var output: OutputOptions

    @Option(name: .long, help: "Append to this conversation (its id, or a unique prefix of at least 8 characters).")
    var conversation: String?
    @Option(name: .long, help: "Title of the new conversation.")
    var title: String?
    @Option(name: .long, help: "Subject (end user) of the new conversation.")
    var subject: String?
    @Option(name: .long, help: "Who wrote the message.")
    var role: Role = .user
    @Option(name: .long, help: "Model name.")
    var model: String?
    @Option(name: .long, help: "Prompt token count.")
    var promptTokens: Int?
    @Option(name: .long, help: "Completion token count.")
    var completionTokens: Int?
    @Option(name: .long, help: "Metadata as a JSON value (sealed).")
    var metadata: String?
    @Option(name: .long, help: "Message content (else read from stdin).")
    var text: String?
    @Option(name: .long, help: RedactMode.help)
    var redact: RedactMode = .none

    func validate() throws {
        if conversation != nil, title != nil || subject != nil {
            throw ValidationError("--title and --subject describe a new conversation; they cannot go with --conversation.")
        }
        if let conversation { try ConversationArgument.validate(conversation, "--conversation") }
        for (name, value) in [("--prompt-tokens", promptTokens), ("--completion-tokens", completionTokens)] {
            if let value, value < 0 { throw ValidationError("\(name) must not be negative.") }
        }
    }

    func run() async throws {
        try await reportingErrors {
            var message: NewMessage
            if let text {
                message = NewMessage(role: role, content: text)
            } else {
                if CLIOutput.stdinIsTerminal { CLIOutput.note("reading the message from stdin; end it with Ctrl-D") }
                let bytes = FileHandle.standardInput.readDataToEndOfFile()
                message = try NewMessage(role: role, utf8Content: bytes)
            }
            message.model = model
            message.promptTokens = promptTokens
            message.completionTokens = completionTokens
            if let metadata {
                guard let value = try? JSONDecoder().decode(JSONValue.self, from: Data(metadata.utf8)) else {
                    throw ChatLogError.invalidInput("--metadata is not valid JSON")
                }
                message.metadata = value
            }
            if let redactor = redact.redactor { message = redactor.redact(message) }
            let opened = try await StoreAccess.open(store)
            let conversationID: ConversationID
            let messageID: MessageID
            if let conversation {
                conversationID = try await ConversationArgument.resolve(conversation, in: opened)
                messageID = try await opened.append(message, to: conversationID)
            } else {
                let logged = try await opened.logExchange(
                    ModelExchange(conversation: .new(NewConversation(title: title, subject: subject)), prompt: [], completion: message))
                conversationID = logged.conversationID
                messageID = logged.messageIDs[0]
            }
            if output.json {
                try CLIOutput.json(["conversation_id": conversationID.rawValue, "message_id": messageID.rawValue])
            } else {
                CLIOutput.line("conversation \(conversationID)")
                CLIOutput.line("message \(messageID)")
            }
        }
    }
}
