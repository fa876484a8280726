import Foundation
import GRDB
import Testing

@testable import ChatLog

/// Newest-first search with the index's row id = messages.seq (migration 0011): candidates stream
/// in insertion order, and the order by (created_at, seq) comes from time_lag. Every page is
/// compared with a brute-force sort of the matching messages while recent messages, older history
/// imported after them, both interleaved, shared milliseconds and deletes of the newest messages
/// (whose seq is then reused) pile up.
@Suite("Search order with history logged out of time order", .serialized)
struct SearchOrderTests {
    static let words = ["harbour", "lantern", "kayak", "tide", "gull", "anchor", "rope", "sail", "keel", "mast"]

    struct Entry {
        let id: MessageID
        let conversation: ConversationID
        let role: Role
        let createdAt: Int64
        let words: Set<String>
    }

    /// The store's messages with their seq, from the file.
    static func seqs(_ store: ChatLogStore) throws -> [String: Int64] {
        try store.read { db in
            try Row.fetchAll(db, sql: "SELECT id, seq FROM messages").reduce(into: [:]) { $0[$1["id"]] = $1["seq"] }
        }
    }

    /// The invariant search relies on: created_at + time_lag >= every created_at at a smaller seq.
    static func lagsHold(_ store: ChatLogStore) throws -> Bool {
        try store.read { db in
            try Int.fetchOne(db, sql: "SELECT count(*) FROM (\(SearchIndex.lowTimeLagsSQL))") == 0
        }
    }

    final class Log {
        let store: ChatLogStore
        var random: SeededRandom
        var entries: [MessageID: Entry] = [:]
        var conversations: [ConversationID] = []
        /// Every created_at logged, in logging order (deterministic picks).
        var times: [Int64] = []
        var queries = 0

        init(_ store: ChatLogStore, seed: UInt64) {
            self.store = store
            random = SeededRandom(seed: seed)
        }

        func content() -> (String, Set<String>) {
            let picked = (0..<(2 + random.below(6))).map { _ in
                SearchOrderTests.words[Int(Double(SearchOrderTests.words.count) * pow(Double(random.below(1_000)) / 1_000, 1.8))]
            }
            return (picked.joined(separator: " "), Set(picked))
        }

        /// A conversation of 1–12 messages from `start` on (some at the same millisecond as an
        /// existing message), appended in one call or several.
        func conversation(startingAt start: Int64) throws {
            let id = try store.createConversation(NewConversation(title: "c", createdAt: Date(unixMilliseconds: start)))
            conversations.append(id)
            var time = start
            var pending: [(NewMessage, Set<String>, Int64)] = []
            func flush() throws {
                let ids = try store.append(pending.map(\.0), to: id)
                for (messageID, (message, words, createdAt)) in zip(ids, pending) {
                    entries[messageID] = Entry(id: messageID, conversation: id, role: message.role, createdAt: createdAt, words: words)
                    times.append(createdAt)
                }
                pending = []
            }
            for _ in 0..<(1 + random.below(12)) {
                if random.chance(10), !times.isEmpty { time = random.pick(times) }
                let (text, words) = content()
                let role: Role = random.chance(50) ? .user : .assistant
                pending.append((NewMessage(role: role, content: text, createdAt: Date(unixMilliseconds: time)), words, time))
                if random.chance(30) { try flush() }
                time += Int64(random.below(3)) * Int64(1 + random.below(60_000))
            }
            if !pending.isEmpty { try flush() }
        }

        /// Every page of random queries against a brute-force sort; relevance's count and set.
        func check(_ phase: String) throws {
            let seqs = try SearchOrderTests.seqs(store)
            for _ in 0..<40 {
                let query = (0..<(1 + random.below(2))).map { _ in random.pick(SearchOrderTests.words) }
                var filters = SearchFilters()
                switch random.below(7) {
                case 0: filters.since = Date(unixMilliseconds: random.pick(times))
                case 1: filters.until = Date(unixMilliseconds: random.pick(times))
                case 2:
                    filters.since = Date(unixMilliseconds: random.pick(times))
                    filters.until = Date(unixMilliseconds: random.pick(times) + 1)
                case 3: filters.role = random.chance(50) ? .user : .assistant
                case 4: filters.conversation = random.pick(conversations)
                default: break
                }
                let since = filters.since?.unixMilliseconds
                let until = filters.until?.unixMilliseconds
                let matching = entries.values.filter { entry in
                    Set(query).isSubset(of: entry.words) && since.map { entry.createdAt >= $0 } != false
                        && until.map { entry.createdAt < $0 } != false && filters.role.map { entry.role == $0 } != false
                        && filters.conversation.map { entry.conversation == $0 } != false
                }
                let expected = matching.sorted { ($0.createdAt, seqs[$0.id.rawValue]!) > ($1.createdAt, seqs[$1.id.rawValue]!) }.map(\.id)
                let text = query.joined(separator: " ")
                for limit in [1, 5, 20] {
                    let offset = random.chance(30) ? random.below(8) : 0
                    let results = try store.search(text, filters: filters, limit: limit, offset: offset, sort: .newest)
                    queries += 1
                    let page = Array(expected.dropFirst(offset).prefix(limit))
                    #expect(results.hits.map(\.messageID) == page, "[\(phase)] \(text) \(filters) limit \(limit) offset \(offset)")
                    #expect(results.more == (expected.count > offset + limit), "[\(phase)] \(text) \(filters) limit \(limit): more")
                }
                let ranked = try store.search(text, filters: filters, limit: 1_000, sort: .relevance)
                #expect(ranked.matched == expected.count && Set(ranked.hits.map(\.messageID)) == Set(expected), "[\(phase)] \(text) relevance")
            }
            #expect(try SearchOrderTests.lagsHold(store), "[\(phase)] time_lag")
        }
    }

    @Test("every page equals a brute-force sort: recent messages, older history after them, interleaved, deletes", arguments: [UInt64(1), 2, 3])
    func pagesEqualABruteForceSort(seed: UInt64) async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let log = Log(store, seed: seed)
            let now: Int64 = 1_760_000_000_000
            // 1. Recent messages, in time order.
            for index in 0..<25 { try log.conversation(startingAt: now + Int64(index) * 900_000) }
            try log.check("recent")
            // 2. Older history imported after them.
            for _ in 0..<25 { try log.conversation(startingAt: now - Int64(1 + log.random.below(300)) * 86_400_000) }
            try log.check("history after")
            // 3. Both interleaved.
            for index in 0..<30 {
                let start = log.random.chance(50) ? now + Int64(25 + index) * 900_000 : now - Int64(log.random.below(300)) * 86_400_000
                try log.conversation(startingAt: start)
            }
            try log.check("interleaved")
            // 4. The newest messages deleted (the largest seq is then free again), more logged.
            let newest = log.entries.values.sorted { $0.createdAt > $1.createdAt }.prefix(15).map(\.id)
            let lastSeq = try #require(try Self.seqs(store).values.max())
            let doomed = newest + [try #require(try Self.seqs(store).first { $0.value == lastSeq }.flatMap { MessageID($0.key) })]
            _ = try store.deleteMessages(Array(Set(doomed)))
            for id in Set(doomed) { log.entries[id] = nil }
            try log.check("newest deleted")
            for _ in 0..<10 { try log.conversation(startingAt: now - Int64(log.random.below(300)) * 86_400_000) }
            try log.conversation(startingAt: now + 100 * 900_000)
            try log.check("after deletes")
            #expect(try store.verify().ok)
            #expect(log.queries >= 600)
        }
    }

    /// Older history imported after the recent messages is skipped without being opened: each
    /// of its candidates is older than the page, and the scan stops at the first whose running
    /// maximum is.
    @Test func olderHistoryImportedLaterIsNotOpened() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let now: Int64 = 1_760_000_000_000
            let recent = try store.createConversation(NewConversation(title: "recent"))
            _ = try store.append(
                (0..<50).map { NewMessage(role: .user, content: "kayak \($0)", createdAt: Date(unixMilliseconds: now + Int64($0) * 1_000)) }, to: recent)
            let old = try store.createConversation(NewConversation(title: "old"))
            _ = try store.append(
                (0..<2_000).map { NewMessage(role: .user, content: "kayak old \($0)", createdAt: Date(unixMilliseconds: now - 86_400_000 + Int64($0))) },
                to: old)
            let page = try store.search("kayak", limit: 5, sort: .newest)
            #expect(page.hits.map(\.content) == (45..<50).reversed().map { "kayak \($0)" })
            // Six of the old history (before the page filled), then the six newest: the other 1,994
            // old candidates are older than the page and skipped unopened, and the scan stops at
            // the seventh recent one.
            #expect(page.examined == 12, "opened \(page.examined) candidates for a page of 5")
            let since = try store.search("kayak", filters: SearchFilters(since: Date(unixMilliseconds: now - 1_000)), limit: 100, sort: .newest)
            #expect(since.hits.count == 50 && since.examined == 50, "opened \(since.examined)")
            // The old history is found when asked for.
            let older = try store.search("kayak", filters: SearchFilters(until: Date(unixMilliseconds: now)), limit: 3, sort: .newest)
            #expect(older.hits.map(\.content) == ["kayak old 1999", "kayak old 1998", "kayak old 1997"])
        }
    }

    /// A time_lag below the running maximum (a damaged or planted value) would let newest-first
    /// search stop too early: verify reports it and repair raises it.
    @Test func verifyFindsALowTimeLagAndRepairRaisesIt() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let conversation = try store.createConversation(NewConversation(title: "t"))
            let now: Int64 = 1_760_000_000_000
            _ = try store.append(NewMessage(role: .user, content: "kayak new", createdAt: Date(unixMilliseconds: now)), to: conversation)
            let old = try store.append(NewMessage(role: .user, content: "kayak old", createdAt: Date(unixMilliseconds: now - 5_000)), to: conversation)
            let lag = try store.read { db in try Int64.fetchOne(db, sql: "SELECT time_lag FROM messages WHERE id = ?", arguments: [old.rawValue]) }
            #expect(lag == 5_000)
            #expect(try store.verify().ok)
            try withRawDatabase(directory.databasePath) { db in
                try db.execute(sql: "UPDATE messages SET time_lag = 0 WHERE id = ?", arguments: [old.rawValue])
            }
            let report = try store.verify()
            #expect(report.issues.map(\.rowID) == [old.rawValue] && report.issues.first?.column == "time_lag", "\(report.issues)")
            let actions = try store.repair()
            #expect(actions.contains { $0.rowID == old.rawValue && $0.column == "time_lag" }, "\(actions)")
            #expect(try store.verify().ok)
            #expect(try store.search("kayak", limit: 2, sort: .newest).hits.map(\.content) == ["kayak new", "kayak old"])
        }
    }
}
