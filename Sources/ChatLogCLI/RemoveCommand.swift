import ArgumentParser
import ChatLog

struct RemoveCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rm",
        abstract: "Delete conversations for real: messages, index entries, and their bytes in the files."
    )

    @OptionGroup var store: StoreOptions
    @OptionGroup var output: OutputOptions

    @Argument(help: "Conversation ids (or unique prefixes of at least 8 characters).")
    var ids: [String]

    func validate() throws {
        guard !ids.isEmpty else { throw ValidationError("give at least one conversation id.") }
        for id in ids { try ConversationArgument.validate(id, "'\(id)'") }
    }

    func run() async throws {
        try await reportingErrors {
            let opened = try await StoreAccess.open(store)
            var resolved: [ConversationID] = []
            for id in ids { resolved.append(try await ConversationArgument.resolve(id, in: opened)) }
            let deleted = try opened.deleteConversations(resolved)
            if output.json {
                try CLIOutput.json(["deleted": deleted, "not_found": ids.count - deleted])
            } else {
                CLIOutput.line("deleted \(deleted) conversation\(deleted == 1 ? "" : "s")" + (deleted < ids.count ? "; \(ids.count - deleted) not found" : ""))
            }
            if deleted < ids.count { throw ExitCode(ExitCodes.notFound) }
        }
    }
}
