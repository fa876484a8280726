import Foundation

/// Who spoke: the OpenAI chat roles.
public enum Role: String, Sendable, Codable, CaseIterable, Hashable {
    case system, user, assistant, tool
}

/// A conversation to create. Everything but the times is sealed.
public struct NewConversation: Sendable {
    /// Use this id instead of a new one (imports that preserve ids); it must not exist yet.
    public var id: ConversationID?
    public var title: String?
    /// The end user the app chatted with (sealed, and blind-indexed for equality lookups).
    public var subject: String?
    public var metadata: JSONValue?
    /// Defaults to now.
    public var createdAt: Date?

    public init(
        title: String? = nil, subject: String? = nil, metadata: JSONValue? = nil, createdAt: Date? = nil, id: ConversationID? = nil
    ) {
        self.id = id
        self.title = title
        self.subject = subject
        self.metadata = metadata
        self.createdAt = createdAt
    }
}

/// A message to append. `content` and `metadata` are sealed; the rest stays plain so it can be
/// filtered and aggregated without a key (docs/SECURITY.md).
public struct NewMessage: Sendable {
    /// Use this id instead of a new one (imports that preserve ids); it must not exist yet.
    public var id: MessageID?
    public var role: Role
    public var content: String
    public var model: String?
    public var promptTokens: Int?
    public var completionTokens: Int?
    public var latencyMilliseconds: Int?
    public var finishReason: String?
    public var metadata: JSONValue?
    /// Defaults to now.
    public var createdAt: Date?

    public init(
        role: Role, content: String, model: String? = nil, promptTokens: Int? = nil, completionTokens: Int? = nil,
        latencyMilliseconds: Int? = nil, finishReason: String? = nil, metadata: JSONValue? = nil, createdAt: Date? = nil
    ) {
        self.role = role
        self.content = content
        self.model = model
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.latencyMilliseconds = latencyMilliseconds
        self.finishReason = finishReason
        self.metadata = metadata
        self.createdAt = createdAt
    }

    /// Builds a message from raw bytes, refusing invalid UTF-8 instead of repairing it.
    public init(role: Role, utf8Content bytes: some Collection<UInt8>) throws(ChatLogError) {
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw .invalidInput("message content is not valid UTF-8")
        }
        self.init(role: role, content: text)
    }
}

/// One model call: the messages sent (new in this exchange) and the completion, logged in one
/// transaction. Usage, latency and finish reason go on the completion message.
public struct ModelExchange: Sendable {
    public enum Target: Sendable {
        case existing(ConversationID)
        case new(NewConversation)
    }

    public var conversation: Target
    public var prompt: [NewMessage]
    public var completion: NewMessage

    public init(conversation: Target, prompt: [NewMessage], completion: NewMessage) {
        self.conversation = conversation
        self.prompt = prompt
        self.completion = completion
    }
}

public struct Conversation: Sendable, Hashable {
    public let id: ConversationID
    public let createdAt: Date
    public let updatedAt: Date
    public let title: String?
    public let subject: String?
    public let metadata: JSONValue?
    public let messageCount: Int
}

public struct Message: Sendable, Hashable {
    public let id: MessageID
    public let conversationID: ConversationID
    public let position: Int
    public let role: Role
    public let createdAt: Date
    public let model: String?
    public let promptTokens: Int?
    public let completionTokens: Int?
    public let latencyMilliseconds: Int?
    public let finishReason: String?
    public let content: String
    public let metadata: JSONValue?
}

/// A conversation with its messages, oldest first.
public struct Transcript: Sendable, Hashable {
    public let conversation: Conversation
    public let messages: [Message]
}

/// What `logExchange` wrote.
public struct LoggedExchange: Sendable, Hashable {
    public let conversationID: ConversationID
    public let messageIDs: [MessageID]
}

/// Filters for listing conversations, newest first.
public struct ConversationQuery: Sendable {
    public var since: Date?
    public var until: Date?
    public var subject: String?
    /// Only conversations with at least one message of this model (a plain column).
    public var model: String?
    public var limit: Int
    /// From a previous page's `nextCursor`.
    public var cursor: String?

    public init(
        since: Date? = nil, until: Date? = nil, subject: String? = nil, model: String? = nil, limit: Int = 50, cursor: String? = nil
    ) {
        self.since = since
        self.until = until
        self.subject = subject
        self.model = model
        self.limit = limit
        self.cursor = cursor
    }
}

public struct ConversationPage: Sendable {
    public let conversations: [Conversation]
    /// Pass as `ConversationQuery.cursor` for the next page; nil on the last page.
    public let nextCursor: String?
}

/// What `chatlog key status` shows.
public struct KeyStatus: Sendable {
    public struct Entry: Sendable, Hashable {
        public enum Kind: String, Sendable { case data, index }
        public enum State: String, Sendable { case active, decryptOnly = "decrypt-only", retired }
        public let id: KeyID
        public let kind: Kind
        public let state: State
        public let createdAt: Date
        public let retiredAt: Date?
        /// Rows whose sealed values (data keys) or blind-index entries (index keys) use this key.
        public let rowCount: Int
    }

    public let masterKeyFingerprint: KeyFingerprint
    public let masterKeySource: String
    public let keys: [Entry]
}

extension Date {
    /// Saturating (a filter bound like `.distantFuture` must not trap); writes reject dates
    /// outside the storable range before they get here.
    var unixMilliseconds: Int64 {
        let milliseconds = (timeIntervalSince1970 * 1000).rounded(.down)
        guard milliseconds.isFinite else { return 0 }
        return Int64(max(min(milliseconds, 9.0e18), -9.0e18))
    }
    /// Half a millisecond in, so that rounding down (`unixMilliseconds`, `Timestamps.format`) gives
    /// back exactly `unixMilliseconds` despite binary floating point.
    init(unixMilliseconds: Int64) { self.init(timeIntervalSince1970: (Double(unixMilliseconds) + 0.5) / 1000) }
}
