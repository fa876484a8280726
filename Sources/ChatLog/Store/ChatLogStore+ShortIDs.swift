import Foundation
import GRDB

/// Short ids, as `git` abbreviates commits: any unique prefix of at least
/// `ShortIDs.minimumLength` characters names a conversation, and listings show the shortest
/// prefix (at least that long) that is unique in the store. Ids are plain columns, so this
/// reads no sealed value; the lookups are range scans of the id's unique index.
public enum ShortIDs {
    /// The shortest prefix accepted and shown (8 hex digits: the first group of the UUID).
    public static let minimumLength = 8
    /// How many candidates an ambiguous prefix lists at most.
    public static let candidateLimit = 10

    /// The prefix, lowercased, when it can be the start of a canonical UUID; nil otherwise.
    public static func normalizedPrefix(_ text: String) -> String? {
        let utf8 = Array(text.lowercased().utf8)
        guard (minimumLength...36).contains(utf8.count) else { return nil }
        for (index, byte) in utf8.enumerated() {
            if index == 8 || index == 13 || index == 18 || index == 23 {
                guard byte == UInt8(ascii: "-") else { return nil }
            } else {
                guard (byte >= 0x30 && byte <= 0x39) || (byte >= 0x61 && byte <= 0x66) else { return nil }
            }
        }
        return String(decoding: utf8, as: UTF8.self)
    }

    /// The shortest prefix of `id` (at least `minimumLength`, never ending at a hyphen) that
    /// differs from both neighbours in sorted order.
    static func shortest(_ id: String, neighbours: [String]) -> String {
        let characters = Array(id)
        var length = minimumLength
        for neighbour in neighbours {
            let common = zip(characters, neighbour).prefix { $0 == $1 }.count
            length = max(length, common + 1)
        }
        length = min(length, characters.count)
        if length < characters.count, characters[length - 1] == "-" { length += 1 }
        return String(characters.prefix(length))
    }
}

extension ChatLogStore {
    /// The conversation whose id is `text` or starts with `text` (at least
    /// `ShortIDs.minimumLength` characters, any case). A prefix that more than one conversation
    /// starts with fails as invalid input listing up to `ShortIDs.candidateLimit` of them; one
    /// that none does, as not found.
    public func conversationID(matching text: String) async throws(ChatLogError) -> ConversationID {
        guard let prefix = ShortIDs.normalizedPrefix(text) else { throw Self.badPrefix }
        let candidates =
            if let storage {
                try await storage.ids(.conversations, .startingWith(prefix), limit: ShortIDs.candidateLimit + 1)
            } else {
                try await read { db in try Self.ids(startingWith: prefix, table: "conversations", db) }
            }
        return try Self.resolve(prefix, candidates)
    }

    /// For each id, its shortest unique prefix among the store's conversation ids (or message ids
    /// with `messages: true`), for human output. Ids not in the store map to their shortest
    /// prefix against their would-be neighbours.
    public func shortIDs(_ ids: [String], messages: Bool = false) async throws(ChatLogError) -> [String: String] {
        let table = messages ? "messages" : "conversations"
        if let storage {
            var short: [String: String] = [:]
            for id in ids where short[id] == nil {
                let neighbours =
                    try await storage.ids(messages ? .messages : .conversations, .before(id), limit: 1)
                    + storage.ids(messages ? .messages : .conversations, .after(id), limit: 1)
                short[id] = ShortIDs.shortest(id, neighbours: neighbours)
            }
            return short
        }
        return try await read { db in
            var short: [String: String] = [:]
            let before = try db.cachedStatement(sql: "SELECT id FROM \(table) WHERE id < ? ORDER BY id DESC LIMIT 1")
            let after = try db.cachedStatement(sql: "SELECT id FROM \(table) WHERE id > ? ORDER BY id LIMIT 1")
            for id in ids where short[id] == nil {
                let neighbours = [try String.fetchOne(before, arguments: [id]), try String.fetchOne(after, arguments: [id])]
                short[id] = ShortIDs.shortest(id, neighbours: neighbours.compactMap { $0 })
            }
            return short
        }
    }

    private static let badPrefix = ChatLogError.invalidInput(
        "a conversation id must be a UUID or a prefix of one with at least \(ShortIDs.minimumLength) characters")

    private static func ids(startingWith prefix: String, table: String, _ db: Database) throws -> [String] {
        // Every id character sorts below "~", so [prefix, prefix + "~") holds exactly the ids
        // starting with the prefix.
        try String.fetchAll(
            db, sql: "SELECT id FROM \(table) WHERE id >= ? AND id < ? ORDER BY id LIMIT ?",
            arguments: [prefix, prefix + "~", ShortIDs.candidateLimit + 1])
    }

    private static func resolve(_ prefix: String, _ candidates: [String]) throws(ChatLogError) -> ConversationID {
        switch candidates.count {
        case 0: throw .conversationNotFound(prefix)
        case 1: return ConversationID(trusted: candidates[0])
        default:
            let shown = candidates.prefix(ShortIDs.candidateLimit).joined(separator: ", ")
            let more = candidates.count > ShortIDs.candidateLimit ? ", …" : ""
            throw .invalidInput("the id prefix \(prefix) matches several conversations: \(shown)\(more)")
        }
    }
}
