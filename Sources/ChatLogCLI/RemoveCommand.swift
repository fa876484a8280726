import ArgumentParser
import ChatLog

struct RemoveCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rm",
        abstract: "Delete conversations (or single messages) for real: messages, index entries, and their bytes in the files.",
        discussion: """
            Needs no intact sealed value: a conversation or message whose values are damaged is deleted all the same \
            (its search terms are then found in the index itself). --message deletes single messages, e.g. those \
            `chatlog verify` reports; their conversation stays.
            """
    )

    @OptionGroup var store: StoreOptions
    @OptionGroup var output: OutputOptions

    @Option(name: .customLong("message"), help: "Delete this message only (repeatable; a full message id).")
    var messageIDs: [String] = []

    @Argument(help: "Conversation ids (or unique prefixes of at least 8 characters).")
    var ids: [String] = []

    func validate() throws {
        guard !ids.isEmpty || !messageIDs.isEmpty else { throw ValidationError("give at least one conversation id (or --message ID).") }
        for id in ids { try ConversationArgument.validate(id, "'\(id)'") }
        for id in messageIDs where MessageID(id) == nil { throw ValidationError("'\(id)' is not a message id (a UUID).") }
    }

    /// Counts of what was not asked for are null (every key always present).
    struct ResultJSON: Encodable {
        @JSONNullable var deleted: Int?
        @JSONNullable var not_found: Int?
        @JSONNullable var deleted_messages: Int?
        @JSONNullable var messages_not_found: Int?
    }

    func run() async throws {
        try await reportingErrors {
            let opened = try await StoreAccess.open(store)
            var resolved: [ConversationID] = []
            for id in ids { resolved.append(try await ConversationArgument.resolve(id, in: opened)) }
            let deleted = ids.isEmpty ? 0 : try await opened.deleteConversations(resolved)
            let deletedMessages = messageIDs.isEmpty ? 0 : try opened.deleteMessages(messageIDs.compactMap { MessageID($0) })
            if output.json {
                try CLIOutput.json(
                    ResultJSON(
                        deleted: ids.isEmpty ? nil : deleted, not_found: ids.isEmpty ? nil : ids.count - deleted,
                        deleted_messages: messageIDs.isEmpty ? nil : deletedMessages,
                        messages_not_found: messageIDs.isEmpty ? nil : messageIDs.count - deletedMessages))
            } else {
                if !ids.isEmpty {
                    CLIOutput.line("deleted \(deleted) conversation\(deleted == 1 ? "" : "s")" + (deleted < ids.count ? "; \(ids.count - deleted) not found" : ""))
                }
                if !messageIDs.isEmpty {
                    CLIOutput.line(
                        "deleted \(deletedMessages) message\(deletedMessages == 1 ? "" : "s")"
                            + (deletedMessages < messageIDs.count ? "; \(messageIDs.count - deletedMessages) not found" : ""))
                }
            }
            if deleted < ids.count || deletedMessages < messageIDs.count { throw ExitCode(ExitCodes.notFound) }
        }
    }
}
