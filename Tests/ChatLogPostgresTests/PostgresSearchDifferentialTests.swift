import Foundation
import Testing

@testable import ChatLog
@testable import ChatLogPostgres

extension PostgreSQLSuites {
    /// Search on PostgreSQL checked against search on SQLite — itself checked exact against a
    /// plaintext reference (SearchTests) — on a random corpus with random queries: the same hits in
    /// the same order with the same scores, for every query form, both sorts, filters and pages,
    /// before and after deletions and an index-key rotation.
    @Suite("Search on PostgreSQL against SQLite (random)")
    struct PostgresSearchDifferentialTests {
        static let vocabulary: [String] = {
            var words = ["refund", "card", "invoice", "naïve", "zażółć", "日本語", "straße", "ok", "the", "a"]
            var random = SplitMix64(seed: 0xD1FF)
            while words.count < 400 {
                let length = 2 + Int(random.next() % 8)
                words.append(String((0..<length).map { _ in Character(UnicodeScalar(UInt8(97 + random.next() % 26))) }))
            }
            return words
        }()

        /// A word with a Zipf-like frequency (rank r with weight ~1/r).
        static func word(_ random: inout SplitMix64) -> String {
            let u = Double(random.next() % 1_000_000) / 1_000_000
            return vocabulary[min(vocabulary.count - 1, Int(pow(Double(vocabulary.count), u)) - 1)]
        }

        static func populate(_ store: ChatLogStore, ids: [(ConversationID, [MessageID])]) async throws {
            var random = SplitMix64(seed: 0xC0FFEE)
            let base = Date(timeIntervalSince1970: 1_750_000_000)
            for (index, (conversation, messageIDs)) in ids.enumerated() {
                var messages: [NewMessage] = []
                for (turn, id) in messageIDs.enumerated() {
                    let count = 3 + Int(random.next() % 25)
                    var message = NewMessage(
                        role: turn % 2 == 0 ? .user : .assistant, content: (0..<count).map { _ in word(&random) }.joined(separator: " "),
                        model: turn % 2 == 0 ? nil : (index % 3 == 0 ? "claude" : "gpt-4o"),
                        createdAt: base.addingTimeInterval(Double(index * 100 + turn)))
                    message.id = id
                    messages.append(message)
                }
                let new = NewConversation(title: "c\(index)", createdAt: base.addingTimeInterval(Double(index * 100)), id: conversation)
                _ = try await store.logExchange(ModelExchange(conversation: .new(new), prompt: Array(messages.dropLast()), completion: messages.last!))
            }
        }

        static func queries(count: Int, seed: UInt64, conversations: [ConversationID]) -> [(String, SearchFilters)] {
            var random = SplitMix64(seed: seed)
            let base = Date(timeIntervalSince1970: 1_750_000_000)
            var result: [(String, SearchFilters)] = []
            for _ in 0..<count {
                let (a, b, c) = (word(&random), word(&random), word(&random))
                let text: String
                switch random.next() % 7 {
                case 0: text = a
                case 1: text = "\(a) \(b)"
                case 2: text = "\(a) OR \(b)"
                case 3: text = "\(a) -\(b)"
                case 4: text = "\"\(a) \(b)\""
                case 5: text = "\(a) OR \(b) \(c)"
                default: text = "\(a) \(b) -\(c)"
                }
                var filters = SearchFilters()
                switch random.next() % 6 {
                case 0: filters.role = .assistant
                case 3: filters.conversation = conversations[Int(random.next() % UInt64(conversations.count))]
                case 1: filters.model = "claude"
                case 2:
                    filters.since = base.addingTimeInterval(Double(random.next() % 30_000))
                    filters.until = filters.since!.addingTimeInterval(20_000)
                default: break
                }
                result.append((text, filters))
            }
            return result
        }

        static func answers(_ store: ChatLogStore, _ queries: [(String, SearchFilters)]) async throws -> [String] {
            var lines: [String] = []
            for (index, (text, filters)) in queries.enumerated() {
                for sort in SearchSort.allCases {
                    let offset = index % 3 == 0 ? 5 : 0
                    let result = try await store.search(text, filters: filters, limit: 30, offset: offset, sort: sort)
                    lines.append(
                        "\(text) \(sort) \(offset) more \(result.more) matched \(result.matched ?? -1): "
                            + result.hits.map { "\($0.conversationID)/\($0.messageID)\($0.score.map { String(format: ":%.9f", $0) } ?? "")" }.joined(separator: " "))
                }
            }
            return lines
        }

        /// The script both backends run: search, delete a tenth, search, rotate the index key, search.
        static func script(_ store: ChatLogStore, _ ids: [(ConversationID, [MessageID])]) async throws -> [String] {
            try await populate(store, ids: ids)
            var lines = try await answers(store, queries(count: 120, seed: 1, conversations: ids.map(\.0)))
            for (conversation, _) in ids.enumerated().filter({ $0.offset % 10 == 3 }).map(\.element) {
                #expect(try await store.deleteConversation(conversation))
            }
            lines.append("after delete")
            lines += try await answers(store, queries(count: 60, seed: 2, conversations: ids.map(\.0)))
            _ = try await store.rotateIndexKey(RotationOptions(newKey: true, batchSize: 97))
            lines.append("after rotation")
            lines += try await answers(store, queries(count: 60, seed: 3, conversations: ids.map(\.0)))
            return lines
        }

        @Test("random queries (words, AND, OR, exclusions, phrases; role, model, conversation and time filters; offsets; both sorts) give the same hits, order and scores on PostgreSQL as on SQLite, before and after deletes and an index rotation")
        func sameAsSQLite() async throws {
            let ids = (0..<200).map { _ in (ConversationID.make(), (0..<6).map { _ in MessageID.make() }) }
            let key = MasterKey.generate()
            let sqlite = try await withSQLiteLocation { location in
                let store = try await ChatLogStore.create(url: location, key: .key(key))
                defer { try? store.close() }
                return try await Self.script(store, ids)
            }
            let postgres = try await withPostgresLocation { location, _ in
                let store = try await ChatLogStore.create(url: location, key: .key(key))
                defer { try? store.close() }
                return try await Self.script(store, ids)
            }
            let nonEmpty = sqlite.filter { !$0.hasSuffix(": ") && $0.contains(":") }.count
            #expect(nonEmpty > 200, "too few queries found anything: \(nonEmpty)")
            var differences = 0
            for (index, (left, right)) in zip(sqlite, postgres).enumerated() where left != right {
                differences += 1
                if differences <= 3 { Issue.record("line \(index): SQLite «\(left.prefix(300))» PostgreSQL «\(right.prefix(300))»") }
            }
            #expect(differences == 0 && sqlite.count == postgres.count)
        }
    }
}
