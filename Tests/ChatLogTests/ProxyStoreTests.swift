import Foundation
import GRDB
import Testing

@testable import ChatLog

/// The library side of the logging proxy: thread digests, group-committed records, tokens.
@Suite struct ProxyStoreTests {
    func record(_ id: ConversationID, _ texts: [String], digests: [ThreadDigest] = [], subject: String? = nil) -> ProxyRecord {
        var conversation = NewConversation(subject: subject)
        conversation.id = id
        return ProxyRecord(
            conversation: conversation, messages: texts.enumerated().map { NewMessage(role: $0.offset % 2 == 0 ? .user : .assistant, content: $0.element) },
            digests: digests)
    }

    @Test func aChainFindsTheLongestLoggedPrefix() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let chainer = store.threadChainer()
            let first = chainer.chain(scope: "s", items: ["u:hi", "a:hello"])
            let id = ConversationID.generate()
            let results = try store.logProxyRecords([record(id, ["hi", "hello"], digests: [first.active(length: 2)!])])
            #expect(results.count == 1)
            let next = chainer.chain(scope: "s", items: ["u:hi", "a:hello", "u:more"])
            let found = try await store.findThread(next)
            #expect(found?.length == 2 && found?.conversation == id)
            // Another scope (app, subject) or another history does not match.
            #expect(try await store.findThread(chainer.chain(scope: "t", items: ["u:hi", "a:hello", "u:more"])) == nil)
            #expect(try await store.findThread(chainer.chain(scope: "s", items: ["u:hi", "a:HELLO", "u:more"])) == nil)
            // Restricted lengths.
            #expect(try await store.findThread(next, lengths: [1, 3]) == nil)
        }
    }

    @Test func digestsAreKeyedSoAnotherStoreComputesOthers() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let other = try ChatLogStore.create(at: directory.file("other.db"), key: .key(.generate()), options: fastOptions)
            let a = store.threadChainer().chain(scope: "", items: ["x"]).active(length: 1)!
            let b = other.threadChainer().chain(scope: "", items: ["x"]).active(length: 1)!
            #expect(a.bytes != b.bytes && a.bytes.count == 32)
        }
    }

    @Test func groupCommitWritesManyRecordsAndAppendsToExistingConversations() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let ids = (0..<50).map { _ in ConversationID.generate() }
            var batch = ids.map { record($0, ["q", "a"]) }
            // Two more records for the first conversation in the same batch: appended in order.
            batch.append(record(ids[0], ["q2", "a2"]))
            batch.append(record(ids[0], ["q3", "a3"]))
            let results = try store.logProxyRecords(batch)
            #expect(results.allSatisfy { if case .success = $0 { true } else { false } })
            #expect(try counts(store) == [50, 104])
            let transcript = try await store.transcript(ids[0])
            #expect(transcript.messages.map(\.content) == ["q", "a", "q2", "a2", "q3", "a3"])
        }
    }

    @Test func aRecordTheStoreRefusesFailsAloneInItsBatch() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            var bad = record(.generate(), ["x"])
            bad.messages[0].model = String(repeating: "m", count: 300)
            let results = try store.logProxyRecords([record(.generate(), ["ok"]), bad, record(.generate(), ["ok too"])])
            #expect(results.map { if case .success = $0 { true } else { false } } == [true, false, true])
            #expect(try counts(store) == [2, 2])
        }
    }

    @Test func deletingAConversationDeletesItsDigests() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let chain = store.threadChainer().chain(scope: "", items: ["a", "b"])
            let id = ConversationID.generate()
            _ = try store.logProxyRecords([record(id, ["a", "b"], digests: [chain.active(length: 2)!])])
            #expect(try await store.findThread(chain) != nil)
            try await store.deleteConversation(id)
            #expect(try await store.findThread(chain) == nil)
            #expect(try await store.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM proxy_threads") } == 0)
        }
    }

    @Test func digestsSurviveAnIndexKeyRotation() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let chain = store.threadChainer().chain(scope: "", items: ["a", "b"])
            let id = ConversationID.generate()
            _ = try store.logProxyRecords([record(id, ["a", "b"], digests: [chain.active(length: 2)!])])
            _ = try store.rotateIndexKey()
            let after = store.threadChainer().chain(scope: "", items: ["a", "b", "c"])
            #expect(try await store.findThread(after)?.conversation == id)
        }
    }

    @Test func tokensAreStoredAsKeyedHashesAndCanBeRevoked() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let token = try await store.createProxyToken(name: "billing-app")
            #expect(token.hasPrefix("clp_") && token.count > 40)
            #expect(try await store.proxyTokenName(token) == "billing-app")
            #expect(try await store.proxyTokenName(token + "x") == nil)
            #expect(try await store.proxyTokenName("sk-other") == nil)
            await #expect(throws: ChatLogError.self) { try await store.createProxyToken(name: "billing-app") }
            await #expect(throws: ChatLogError.self) { try await store.createProxyToken(name: "bad name") }
            // The file holds no token text.
            let file = try Data(contentsOf: URL(fileURLWithPath: directory.databasePath))
            let wal = (try? Data(contentsOf: URL(fileURLWithPath: directory.databasePath + "-wal"))) ?? Data()
            #expect(file.range(of: Data(token.utf8)) == nil && wal.range(of: Data(token.utf8)) == nil)
            #expect(try await store.revokeProxyToken(name: "billing-app"))
            #expect(try await store.proxyTokenName(token) == nil)
            #expect(try await !store.revokeProxyToken(name: "billing-app"))
            let listed = try await store.proxyTokens()
            #expect(listed.map(\.name) == ["billing-app"] && listed[0].revokedAt != nil)
        }
    }

    @Test func aTokenInUseMovesToTheActiveIndexKeyAndSurvivesRetiringTheOldOne() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let token = try await store.createProxyToken(name: "app")
            let old = try await store.read { db in try Int64.fetchOne(db, sql: "SELECT index_key_id FROM proxy_tokens") }
            _ = try store.rotateIndexKey()
            #expect(try await store.proxyTokenName(token) == "app")
            let moved = try await store.read { db in try Int64.fetchOne(db, sql: "SELECT index_key_id FROM proxy_tokens") }
            #expect(moved != old)
            #expect(try store.retireUnusedKeys().map { Int64($0.rawValue) }.contains(old ?? -1))
            #expect(try await store.proxyTokenName(token) == "app")
        }
    }
}
