import Foundation
import GRDB
import Testing

@testable import ChatLog

/// Deleting from the blinded-term index leaves nothing behind (docs/SECURITY.md, "Search index"):
/// after rm, prune and a completed index-key rotation, no FTS5 segment and no byte of the database
/// file or the WAL holds a deleted message's terms or row id, or a term made under the old key.
/// Checked on the index's shadow tables and on the raw files, not only by searching.
@Suite struct IndexScrubTests {
    /// Words no other message uses, so that their terms identify the message.
    static let secretWords = "quokkaflux zymurgist obelisklantern marzipanorbit glaciercomet thimbleharp"

    /// What the index and the files hold of `terms` and `rowIDs`.
    struct Evidence: CustomStringConvertible {
        var instanceTerms = 0
        var instanceRows = 0
        var dataBlocks = 0
        var fileHits: [String] = []
        var clean: Bool { instanceTerms == 0 && instanceRows == 0 && dataBlocks == 0 && fileHits.isEmpty }
        var description: String {
            "instance view: \(instanceTerms) term rows, \(instanceRows) row-id rows; data blocks: \(dataBlocks); files: \(fileHits)"
        }
    }

    /// The tail of each term: FTS5 leaves store a term after the prefix it shares with the term
    /// before it, so a search for the whole term could miss one stored with a shared prefix.
    /// Six base32 characters (30 bits) do not occur by chance in a test-sized file.
    static func needles(_ terms: [String]) -> [[UInt8]] { terms.map { Array($0.utf8.suffix(6)) } }

    static func evidence(_ store: ChatLogStore, path: String, terms: [String], rowIDs: [Int64]) throws -> Evidence {
        var evidence = Evidence()
        let needles = needles(terms)
        try store.read { db in
            for term in terms {
                evidence.instanceTerms += try Int.fetchOne(db, sql: "SELECT count(*) FROM message_terms_instance WHERE term = ?", arguments: [term]) ?? 0
            }
            for rowID in rowIDs {
                evidence.instanceRows += try Int.fetchOne(db, sql: "SELECT count(*) FROM message_terms_instance WHERE doc = ?", arguments: [rowID]) ?? 0
            }
            for block in try Data.fetchAll(db, sql: "SELECT block FROM message_terms_data WHERE block IS NOT NULL") {
                let bytes = [UInt8](block)
                if needles.contains(where: { contains(bytes, $0) }) { evidence.dataBlocks += 1 }
            }
        }
        for file in [path, path + "-wal"] {
            guard let data = FileManager.default.contents(atPath: file) else { continue }
            let bytes = [UInt8](data)
            for (needle, term) in zip(needles, terms) where contains(bytes, needle) {
                evidence.fileHits.append("\(file.hasSuffix("-wal") ? "WAL" : "DB"): \(term)")
            }
        }
        return evidence
    }

    static func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
        guard let first = needle.first, haystack.count >= needle.count else { return false }
        var index = 0
        let last = haystack.count - needle.count
        while index <= last {
            if haystack[index] == first, haystack[index..<(index + needle.count)].elementsEqual(needle) { return true }
            index += 1
        }
        return false
    }

    static func terms(_ store: ChatLogStore, _ text: String) -> [String] {
        store.activeBlinder.document(for: text).split(separator: " ").map(String.init)
    }

    static func searchRowIDs(_ store: ChatLogStore, conversation: ConversationID) throws -> [Int64] {
        try store.read { db in
            try Int64.fetchAll(
                db, sql: "SELECT m.seq FROM messages m JOIN conversations c ON c.seq = m.conversation_seq WHERE c.id = ?",
                arguments: [conversation.rawValue])
        }
    }

    /// Three conversations written in separate transactions (so the index has several segments):
    /// the doomed one holds the secret words, the others ordinary text.
    static func fill(_ store: ChatLogStore) throws -> (doomed: ConversationID, kept: [ConversationID]) {
        let first = try store.createConversation(NewConversation(title: "kept 1"))
        try store.append(NewMessage(role: .user, content: "ordinary words about kayaks and rivers"), to: first)
        let doomed = try store.createConversation(NewConversation(title: "doomed"))
        try store.append(NewMessage(role: .user, content: "the secret is \(secretWords)"), to: doomed)
        try store.append(NewMessage(role: .assistant, content: "noted: \(secretWords)"), to: doomed)
        let second = try store.createConversation(NewConversation(title: "kept 2"))
        try store.append(NewMessage(role: .assistant, content: "more ordinary words about kayaks"), to: second)
        return (doomed, [first, second])
    }

    /// The secret words' terms only (the shared words also belong to kept messages).
    static func secretTerms(_ store: ChatLogStore) -> [String] { terms(store, secretWords) }

    @Test func rmLeavesNoTermOrRowIDOfTheDeletedConversation() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let (doomed, kept) = try Self.fill(store)
            let terms = Self.secretTerms(store)
            let rowIDs = try Self.searchRowIDs(store, conversation: doomed)
            let before = try Self.evidence(store, path: directory.databasePath, terms: terms, rowIDs: rowIDs)
            #expect(before.instanceTerms == 2 * terms.count && before.instanceRows > 0, "the probe sees the terms before: \(before)")

            #expect(try store.deleteConversations([doomed]) == 1)
            let after = try Self.evidence(store, path: directory.databasePath, terms: terms, rowIDs: rowIDs)
            #expect(after.clean, "\(after)")
            #expect(try store.read { db in try SearchIndex.scrubPending(db) } == false)
            #expect(try store.search("kayaks", limit: 10).hits.count == 2)
            #expect(try store.conversations(ConversationQuery()).conversations.map(\.id).sorted { $0.rawValue < $1.rawValue }
                == kept.sorted { $0.rawValue < $1.rawValue })
            #expect(try store.verify().ok)
        }
    }

    @Test func theLibrarysSingleDeleteAlsoMerges() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let (doomed, _) = try Self.fill(store)
            let terms = Self.secretTerms(store)
            let rowIDs = try Self.searchRowIDs(store, conversation: doomed)
            #expect(!terms.isEmpty && !rowIDs.isEmpty)
            #expect(try !Self.evidence(store, path: directory.databasePath, terms: terms, rowIDs: rowIDs).clean, "the probe sees them before")
            #expect(try await store.deleteConversation(doomed))
            try store.checkpoint()
            let after = try Self.evidence(store, path: directory.databasePath, terms: terms, rowIDs: rowIDs)
            #expect(after.clean, "\(after)")
        }
    }

    @Test func pruneLeavesNoTermOrRowIDOfPrunedConversations() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let old = Date(timeIntervalSinceNow: -90 * 86_400)
            let doomed = try store.createConversation(NewConversation(title: "old", createdAt: old))
            try store.append(NewMessage(role: .user, content: "the secret is \(Self.secretWords)", createdAt: old), to: doomed)
            let fresh = try store.createConversation(NewConversation(title: "fresh"))
            try store.append(NewMessage(role: .user, content: "ordinary words about kayaks"), to: fresh)
            let terms = Self.secretTerms(store)
            let rowIDs = try Self.searchRowIDs(store, conversation: doomed)
            #expect(!terms.isEmpty && !rowIDs.isEmpty)
            #expect(try !Self.evidence(store, path: directory.databasePath, terms: terms, rowIDs: rowIDs).clean, "the probe sees them before")

            let pruned = try store.prune(olderThan: Date(timeIntervalSinceNow: -30 * 86_400))
            #expect(pruned.conversations == 1 && pruned.messages == 1)
            let after = try Self.evidence(store, path: directory.databasePath, terms: terms, rowIDs: rowIDs)
            #expect(after.clean, "\(after)")
            #expect(try store.search("kayaks", limit: 10).hits.count == 1)
        }
    }

    @Test func aCompletedIndexRotationLeavesNoTermUnderTheOldKey() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let (doomed, _) = try Self.fill(store)
            let oldKey = store.activeBlinder.keyID
            // Every term made under the old key, the kept messages' too.
            let oldTerms = Self.terms(store, "\(Self.secretWords) ordinary words about kayaks and rivers more noted")
            #expect(try !Self.evidence(store, path: directory.databasePath, terms: oldTerms, rowIDs: []).clean, "the probe sees them before")
            #expect(try store.deleteConversations([doomed]) == 1)

            let report = try store.rotateIndexKey(RotationOptions(newKey: true, batchSize: 1))
            #expect(report.complete && report.rewritten == 2)
            let after = try Self.evidence(store, path: directory.databasePath, terms: oldTerms, rowIDs: [])
            #expect(after.clean, "\(after)")
            #expect(try store.search("kayaks", limit: 10).hits.count == 2, "found under the new key")
            #expect(try store.retireKey(oldKey).state == .retired)
            #expect(try store.verify().ok)
        }
    }

    @Test func retiringAnIndexKeyIsRefusedWhileDeletedTermsAreUnmerged() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            _ = try Self.fill(store)
            let oldKey = store.activeBlinder.keyID
            let oldTerms = Self.terms(store, Self.secretWords)
            _ = try store.rotateIndexKey(RotationOptions(newKey: true))
            // A run that moved every row but was killed before its merge leaves the pending mark.
            try store.writeImmediate { db in try SearchIndex.markScrubPending(db) }
            #expect(throws: ChatLogError.self) { try store.retireKey(oldKey) }
            #expect(throws: ChatLogError.self) { try store.retireUnusedKeys() }
            #expect(try store.keyStatus().keys.first { $0.id == oldKey }?.state == .decryptOnly)

            // Resuming the rotation (nothing left to move) finishes the merge; then retire works.
            let resumed = try store.rotateIndexKey(RotationOptions())
            #expect(resumed.complete && resumed.rewritten == 0)
            #expect(try store.read { db in try SearchIndex.scrubPending(db) } == false)
            #expect(try Self.evidence(store, path: directory.databasePath, terms: oldTerms, rowIDs: []).clean)
            #expect(try store.retireKey(oldKey).state == .retired)
        }
    }
}

/// `verify` compares the index with the recomputed terms in one streamed pass and names the rows
/// that differ.
@Suite struct StreamedVerifyTests {
    @Test func aTermAtALiveMessagesRowThatItsKeyDidNotMakeIsReported() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let conversation = try store.createConversation(NewConversation(title: "t"))
            let id = try store.append(NewMessage(role: .user, content: "ordinary words about kayaks"), to: conversation)
            let other = try store.append(NewMessage(role: .user, content: "more words"), to: conversation)
            #expect(try store.verify().ok)
            // A term no key made for this message, at its row (as an old index key's term would be).
            try store.writeImmediate { db in
                let rowID = try Int64.fetchOne(db, sql: "SELECT seq FROM messages WHERE id = ?", arguments: [id.rawValue])
                try db.execute(sql: "INSERT INTO message_terms (rowid, terms) VALUES (?, 'aaaaaaaa')", arguments: [rowID])
            }
            let report = try store.verify()
            #expect(report.issues.map(\.rowID) == [id.rawValue], "\(report.issues)")
            #expect(report.issues.first?.problem.contains("did not make") == true)
            #expect(!report.issues.contains { $0.rowID == other.rawValue })

            let actions = try store.repair()
            #expect(actions.contains { $0.rowID == id.rawValue && $0.action.contains("indexed again") }, "\(actions)")
            #expect(try store.verify().ok)
            #expect(try store.search("kayaks", limit: 5).hits.map(\.messageID) == [id])
        }
    }
}

extension StreamedVerifyTests {
    @Test func aMessageUnderARetiredIndexKeyIsReportedAndRepaired() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let conversation = try store.createConversation(NewConversation(title: "t"))
            let id = try store.append(NewMessage(role: .user, content: "ordinary words about kayaks"), to: conversation)
            let oldKey = store.activeBlinder.keyID
            _ = try store.rotateIndexKey(RotationOptions(newKey: true))
            _ = try store.retireKey(oldKey)
            // Tampering (or a bug) points the message back at the retired key.
            try store.writeImmediate { db in
                try db.execute(sql: "UPDATE messages SET index_key_id = ? WHERE id = ?", arguments: [Int64(oldKey.rawValue), id.rawValue])
            }
            let report = try store.verify()
            #expect(report.issues.contains { $0.rowID == id.rawValue && $0.column == "index_key_id" && $0.problem.contains("stale") }, "\(report.issues)")
            let actions = try store.repair()
            #expect(actions.contains { $0.rowID == id.rawValue && $0.action.contains("indexed again") }, "\(actions)")
            #expect(try store.verify().ok)
            #expect(try store.search("kayaks", limit: 5).hits.map(\.messageID) == [id])
        }
    }
}

@Suite struct TermSetTests {
    @Test func behavesLikeASetAcrossGrowthAndEmptying() {
        var random = SystemRandomNumberGenerator()
        var set = TermSet(capacity: 4)
        for round in 0..<3 {
            set.removeAll()
            var reference = Set<UInt64>()
            for _ in 0..<5_000 {
                // Values like terms (lower 24 bits zero), drawn from a small range so many repeat.
                let value = UInt64.random(in: 0..<3_000, using: &random) << 24
                #expect(set.insert(value) == reference.insert(value).inserted, "round \(round)")
            }
        }
    }
}
