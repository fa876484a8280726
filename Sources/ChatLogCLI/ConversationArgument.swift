import ArgumentParser
import ChatLog

/// A conversation id given on the command line: the full UUID or a unique prefix of at least
/// `ShortIDs.minimumLength` characters (resolved by the store).
enum ConversationArgument {
    static var help: String { "a conversation id, or a unique prefix of one (at least \(ShortIDs.minimumLength) characters)" }

    /// Shape check before the store is opened (exit 64 for something that cannot be an id).
    static func validate(_ text: String, _ name: String) throws {
        guard ShortIDs.normalizedPrefix(text) != nil else {
            throw ValidationError("\(name) must be \(help).")
        }
    }

    static func resolve(_ text: String, in store: ChatLogStore) async throws(ChatLogError) -> ConversationID {
        if let id = ConversationID(text) { return id }
        return try await store.conversationID(matching: text)
    }
}

/// Short ids for human output: the shortest unique prefix in the store (`--json` keeps full ids).
struct ShortIDMap {
    private let conversations: [String: String]
    private let messages: [String: String]

    init(store: ChatLogStore, conversations: [String], messages: [String] = []) async throws(ChatLogError) {
        self.conversations = try await store.shortIDs(conversations)
        self.messages = messages.isEmpty ? [:] : try await store.shortIDs(messages, messages: true)
    }

    func conversation(_ id: ConversationID) -> String { conversations[id.rawValue] ?? id.rawValue }
    func message(_ id: MessageID) -> String { messages[id.rawValue] ?? id.rawValue }
}
