import Foundation

/// Filters on plain columns (and the subject's blind index): they narrow candidates before
/// anything is decrypted.
public struct SearchFilters: Sendable, Hashable {
    public var conversation: ConversationID?
    public var role: Role?
    public var model: String?
    public var since: Date?
    public var until: Date?
    public var subject: String?

    public init(
        conversation: ConversationID? = nil, role: Role? = nil, model: String? = nil, since: Date? = nil, until: Date? = nil,
        subject: String? = nil
    ) {
        self.conversation = conversation
        self.role = role
        self.model = model
        self.since = since
        self.until = until
        self.subject = subject
    }
}

public enum SearchSort: String, Sendable, CaseIterable {
    /// BM25 over the verified candidates, computed after decryption.
    case relevance
    /// Newest message first (by `created_at`).
    case newest
}

/// An excerpt of a message around its first match. `highlights` are ranges of `text`.
public struct Snippet: Sendable, Hashable {
    public let text: String
    public let highlights: [Range<String.Index>]
}

public struct SearchHit: Sendable, Hashable {
    public let messageID: MessageID
    public let conversationID: ConversationID
    public let role: Role
    public let createdAt: Date
    public let model: String?
    public let content: String
    public let snippet: Snippet
    /// BM25 score with `relevance` sorting; nil with `newest`.
    public let score: Double?
}

public struct SearchResults: Sendable {
    public let hits: [SearchHit]
    /// Candidates from the index that were opened and checked.
    public let examined: Int
    /// False when the work cap stopped the search before every candidate was checked (only
    /// with `relevance`: the ranking then covers the newest `examined` candidates).
    public let complete: Bool
    /// Verified matches in all (of the `examined` candidates): known with `relevance`, which
    /// checks every candidate; nil with `newest`, which stops after the page.
    public let matched: Int?
    /// Whether more matches follow this page (ask again with `offset` + `limit`).
    public let more: Bool
}
