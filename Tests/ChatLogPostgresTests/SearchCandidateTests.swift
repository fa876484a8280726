import Foundation
import PostgresNIO
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
    
        @Test("every field a search reads arrives intact: large and small contents mixed, NULL and non-ASCII models, any page size", arguments: Backend.allCases)
        func candidateFieldsSurviveTheTransfer(backend: Backend) async throws {
            try await withSQLiteStore { store in
                try await withStorage(backend) { harness in
                    let storage = harness.storage
                    let (meta, keys) = try storedMetaAndKeys(store)
                    try await storage.initialize(meta: meta, keys: keys)
                    let term: UInt64 = 0xBEEF << 24
                    let template = SealedMessageRow(
                        try store.prepare(NewMessage(role: .user, content: "x"), keys: store.keyRing.current),
                        conversationID: ConversationID.make())
                    var expected: [String: SealedMessageRow] = [:]
                    let roles = ["user", "assistant", "tool", "system"]
                    let models: [String?] = [nil, "gpt-4o", "modèle-ü 🚀", ""]
                    for conversationIndex in 0..<3 {
                        let conversation = try store.prepare(NewConversation(title: "c\(conversationIndex)"), keys: store.keyRing.current)
                        _ = try await storage.insert(
                            conversation: SealedConversationRow(conversation), messages: [], into: conversation.id.rawValue, guard: writeGuard(store))
                        var batch: [SealedMessageRow] = []
                        for index in 0..<100 {
                            let number = conversationIndex * 100 + index
                            var row = template
                            row.id = MessageID.make().rawValue
                            row.conversationID = conversation.id.rawValue
                            row.role = roles[number % roles.count]
                            row.model = models[number % models.count]
                            row.createdAt = 1_700_000_000_000 + Int64(number / 3)  // three per millisecond
                            // Every 7th above the per-row packing limit (it travels alone), some empty-ish.
                            let size = number % 7 == 0 ? 70_000 + number : 1 + number * 13
                            row.content = Data((0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ number) })
                            row.terms = [term]
                            batch.append(row)
                        }
                        let positions = try await storage.insert(conversation: nil, messages: batch, into: conversation.id.rawValue, guard: writeGuard(store))
                        for (row, position) in zip(batch, positions) {
                            var row = row
                            row.position = position
                            expected[row.id] = row
                        }
                    }
                    for pageSize in [1_000, 64, 65, 7] {
                        var got: [SearchCandidate] = []
                        var cursor: MessageCursor?
                        while true {
                            let page = try await storage.searchCandidates(required: [[term]], after: cursor, limit: pageSize)
                            got += page
                            guard page.count == pageSize, let last = page.last else { break }
                            cursor = last.cursor
                        }
                        #expect(got.count == expected.count, "page size \(pageSize)")
                        #expect(Set(got.map(\.message.id)).count == got.count)
                        // Newest first, (created_at, seq) strictly decreasing.
                        #expect(zip(got, got.dropFirst()).allSatisfy { ($0.cursor.createdAt, $0.cursor.order) > ($1.cursor.createdAt, $1.cursor.order) })
                        // A backend may name the conversation by seq; the ids it resolves to must be right.
                        let resolved = try await storage.conversationIDs(seqs: got.compactMap(\.conversationSeq))
                        for candidate in got {
                            var message = candidate.message
                            if message.conversationID.isEmpty, let seq = candidate.conversationSeq { message.conversationID = resolved[seq] ?? "missing" }
                            guard let row = expected[message.id] else {
                                Issue.record("unexpected candidate")
                                continue
                            }
                            #expect(message.conversationID == row.conversationID)
                            #expect(message.position == row.position)
                            #expect(message.role == row.role)
                            #expect(message.model == row.model)
                            #expect(message.createdAt == row.createdAt && candidate.cursor.createdAt == row.createdAt)
                            #expect(message.keyID == row.keyID)
                            #expect(message.content == row.content, "content of \(row.content.count) bytes")
                        }
                    }
                    // A conversation deleted after its candidates were read: where the backend named
                    // conversations by seq (PostgreSQL), the core's resolution drops its candidates
                    // (nil) and resolves the others; SQLite's candidates carry their ids already.
                    let read = try await storage.searchCandidates(required: [[term]], after: nil, limit: 1_000)
                    let gone = expected.values.first!.conversationID
                    #expect(try await storage.deleteConversations([gone], terms: { _ in nil }) == 1)
                    let resolved = try await store.withConversationIDs(read, storage)
                    for (candidate, after) in zip(read, resolved) {
                        let owner = expected[candidate.message.id]!.conversationID
                        #expect(after?.message.conversationID == (owner == gone && backend == .postgres ? nil : owner))
                    }
                }
            }
        }

        @Test("a packed candidate cut short or with a length out of range is an error, never a partial candidate")
        func damagedPackedCandidatesAreRefused() throws {
            func packed(model: String?, content: [UInt8]) -> ByteBuffer {
                var buffer = ByteBuffer()
                for value: Int64 in [42, 1_700_000_000_000, 3, 1, 77] { buffer.writeInteger(value, endianness: .big) }
                for text in ["m-id", "user"] {
                    buffer.writeInteger(Int32(text.utf8.count), endianness: .big)
                    buffer.writeString(text)
                }
                if let model {
                    buffer.writeInteger(Int32(model.utf8.count), endianness: .big)
                    buffer.writeString(model)
                } else {
                    buffer.writeInteger(Int32(-1), endianness: .big)
                }
                buffer.writeInteger(Int32(content.count), endianness: .big)
                buffer.writeBytes(content)
                return buffer
            }
            var whole = packed(model: nil, content: [1, 2, 3])
            whole.writeImmutableBuffer(packed(model: "é", content: []))
            var candidates: [SearchCandidate] = []
            try PostgresStorage.unpackCandidates(whole, into: &candidates)
            #expect(candidates.map(\.message.model) == [nil, "é"])
            #expect(candidates.map(\.message.content) == [Data([1, 2, 3]), Data()])
            #expect(candidates.map(\.cursor.order) == [42, 42])
            #expect(candidates.map(\.conversationSeq) == [77, 77])
            // Every proper prefix of one value is refused.
            let one = packed(model: "gpt", content: [9, 9, 9, 9])
            for cut in 1..<one.readableBytes {
                var prefix: [SearchCandidate] = []
                #expect(throws: ChatLogError.self) { try PostgresStorage.unpackCandidates(one.getSlice(at: 0, length: cut)!, into: &prefix) }
                #expect(prefix.isEmpty)
            }
            // A length beyond the value, and a negative one other than NULL's -1.
            var long = one
            long.setInteger(Int32(1_000), at: 40, endianness: .big)
            var negative = one
            negative.setInteger(Int32(-2), at: 40, endianness: .big)
            for bad in [long, negative] {
                var none: [SearchCandidate] = []
                #expect(throws: ChatLogError.self) { try PostgresStorage.unpackCandidates(bad, into: &none) }
            }
        }
}
}
