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
            let results = try await store.logProxyRecords([record(id, ["hi", "hello"], digests: [first.active(length: 2)!])])
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
            let results = try await store.logProxyRecords(batch)
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
            _ = try await store.logProxyRecords([record(id, ["a", "b"], digests: [chain.active(length: 2)!])])
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
            _ = try await store.logProxyRecords([record(id, ["a", "b"], digests: [chain.active(length: 2)!])])
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
            await #expect(try store.retireUnusedKeys().map { Int64($0.rawValue) }.contains(old ?? -1))
            #expect(try await store.proxyTokenName(token) == "app")
        }
    }

    @Test func anIndexKeyStillCheckingAnUnusedTokenIsNotRetiredAndDeadThreadsGo() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let idle = try await store.createProxyToken(name: "idle-app")
            let busy = try await store.createProxyToken(name: "busy-app")
            let old = try #require(try await store.read { db in try Int64.fetchOne(db, sql: "SELECT index_key_id FROM proxy_tokens LIMIT 1") })
            let oldKey = KeyID(rawValue: UInt32(old))
            let conversation = try await store.createConversation(NewConversation(title: "threaded"))
            try await store.writeImmediate { db in
                let seq = try Int64.fetchOne(db, sql: "SELECT seq FROM conversations WHERE id = ?", arguments: [conversation.rawValue]) ?? -1
                try db.execute(
                    sql: "INSERT INTO proxy_threads (digest, conversation_seq, index_key_id, created_at) VALUES (?, ?, ?, 0)",
                    arguments: [Data(repeating: 7, count: 32), seq, old])
            }
            _ = try store.rotateIndexKey()
            #expect(try await store.proxyTokenName(busy) == "busy-app")
            // idle-app's hash is still under the old key: retiring it would lock that app out.
            await #expect(try store.retireUnusedKeys().isEmpty)
            #expect(throws: ChatLogError.keyChecksProxyTokens(oldKey, names: ["idle-app"])) { try store.retireKey(oldKey) }
            #expect(try await store.proxyTokenName(idle) == "idle-app")
            // Used once, it moved: now the key goes, and with it the thread digests made under it.
            await #expect(try store.retireUnusedKeys() == [oldKey])
            #expect(try await store.proxyTokenName(idle) == "idle-app")
            #expect(try await store.proxyTokenName(busy) == "busy-app")
            #expect(try await store.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM proxy_threads") } == 0)
        }
    }

    @Test func aSubjectsProxyRecordsAreSealedUnderItsKeyAndForgetTakesTheirDigests() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let chainer = store.threadChainer()
            let alice = ConversationID.generate()
            let bob = ConversationID.generate()
            let aliceDigest = chainer.chain(scope: "alice", items: ["u:hi", "a:hello"])
            let results = try await store.logProxyRecords([
                record(alice, ["hi", "hello"], digests: [aliceDigest.active(length: 2)!], subject: "alice"),
                record(bob, ["yo", "hey"], digests: [chainer.chain(scope: "bob", items: ["u:yo"]).active(length: 1)!], subject: "bob"),
                // Continued in the same batch: under alice's key too.
                record(alice, ["more", "sure"], subject: "alice"),
            ])
            #expect(results.allSatisfy { if case .success = $0 { true } else { false } })
            let contents = try await store.read { db in
                try Data.fetchAll(
                    db, sql: "SELECT m.content FROM messages m JOIN conversations c ON c.seq = m.conversation_seq WHERE c.id = ?",
                    arguments: [alice.rawValue])
            }
            #expect(contents.count == 4 && contents.allSatisfy { $0.first == SealedValue.subjectVersion })
            #expect(Set(contents.compactMap(SealedValue.subjectKeyID)).count == 1)
            // A record continuing alice's conversation under another subject fails alone.
            let mixed = try await store.logProxyRecords([record(alice, ["x"], subject: "bob"), record(bob, ["y"], subject: "bob")])
            if case .failure(let error) = mixed[0] { #expect("\(error)".contains("another subject's key")) } else { Issue.record("accepted") }
            if case .failure = mixed[1] { Issue.record("the other record failed too") }
            #expect(try await store.transcript(alice).messages.count == 4)

            #expect(try store.forget(subject: "alice")?.conversations == 1)
            #expect(try await store.findThread(chainer.chain(scope: "alice", items: ["u:hi", "a:hello", "u:again"])) == nil)
            let digests = try await store.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM proxy_threads") }
            #expect(digests == 1)
            // The proxy's next record for alice gets a new key (the old one is destroyed).
            let again = ConversationID.generate()
            await #expect(try store.logProxyRecords([record(again, ["back"], subject: "alice")]).count == 1)
            #expect(try await store.transcript(again).messages.map(\.content) == ["back"])
            #expect(try store.subjectKeyCounts() == (2, 1))
        }
    }
}
