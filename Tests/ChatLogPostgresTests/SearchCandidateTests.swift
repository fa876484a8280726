import Foundation
import Testing

@testable import ChatLog
@testable import ChatLogPostgres

extension PostgreSQLSuites {
    /// Search candidates of both backends (SQLite's FTS5, PostgreSQL's term table) against a reference
    /// that keeps the same term sets in memory: every page of every query, newest first, equals the
    /// reference exactly.
    @Suite("Search candidates")
    struct SearchCandidateTests {
        @Test("random term sets and queries: candidates and document frequencies equal the in-memory reference", arguments: Backend.allCases, [UInt64(14), 15])
        func candidatesEqualReference(backend: Backend, seed: UInt64) async throws {
            try await withSQLiteStore { store in
                try await withStorage(backend) { harness in
                    let storage = harness.storage
                    let (meta, keys) = try storedMetaAndKeys(store)
                    try await storage.initialize(meta: meta, keys: keys)
                    var random = SplitMix64(seed: seed)
                    // A Zipf-ish vocabulary of term values, some negative as BIGINT (top bit set).
                    let vocabulary = (0..<60).map { _ in random.next() & ~UInt64(0xFF_FFFF) }
                    func word() -> UInt64 {
                        let rank = Int(Double(vocabulary.count) * pow(Double(random.next() % 10_000) / 10_000, 2.5))
                        return vocabulary[min(rank, vocabulary.count - 1)]
                    }
                    let conversation = try store.prepare(NewConversation(title: "corpus"), keys: store.keyRing.current)
                    _ = try await storage.insert(
                        conversation: SealedConversationRow(conversation), messages: [], into: conversation.id.rawValue, guard: writeGuard(store))
                    let template = SealedMessageRow(
                        try store.prepare(NewMessage(role: .user, content: "x"), keys: store.keyRing.current), conversationID: conversation.id)
                    // Reference: (createdAt, insertion order, id, terms). Several messages share a millisecond.
                    var reference: [(createdAt: Int64, order: Int, id: String, terms: Set<UInt64>)] = []
                    var batch: [SealedMessageRow] = []
                    for index in 0..<400 {
                        var row = template
                        row.id = MessageID.make().rawValue
                        row.createdAt = 1_700_000_000_000 + Int64(random.next() % 50)
                        row.terms = Array(Set((0..<(1 + Int(random.next() % 8))).map { _ in word() }))
                        reference.append((row.createdAt, index, row.id, Set(row.terms)))
                        batch.append(row)
                        if batch.count == 25 {
                            _ = try await storage.insert(conversation: nil, messages: batch, into: conversation.id.rawValue, guard: writeGuard(store))
                            batch = []
                        }
                    }
                    let frequencies = try await storage.documentFrequencies(vocabulary + [12345 << 24])
                    for term in vocabulary { #expect(frequencies[term] == reference.filter { $0.terms.contains(term) }.count) }
                    #expect(frequencies[12345 << 24] == 0)

                    for _ in 0..<60 {
                        // 1–3 required words, each with 1–2 alternatives (a word under two index keys).
                        let required = (0..<(1 + Int(random.next() % 3))).map { _ in (0..<(1 + Int(random.next() % 2))).map { _ in word() } }
                        let expected = reference.filter { message in required.allSatisfy { group in group.contains { message.terms.contains($0) } } }
                            .sorted { ($0.createdAt, $0.order) > ($1.createdAt, $1.order) }.map(\.id)
                        let pageSize = 1 + Int(random.next() % 30)
                        var got: [String] = []
                        var cursor: MessageCursor?
                        while true {
                            let page = try await storage.searchCandidates(required: required, after: cursor, limit: pageSize)
                            got += page.map(\.message.id)
                            guard page.count == pageSize, let last = page.last else { break }
                            cursor = last.cursor
                        }
                        #expect(got == expected, "query \(required)")
                    }
                }
            }
        }
    }
}
