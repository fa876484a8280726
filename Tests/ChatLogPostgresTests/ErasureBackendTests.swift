import Foundation
import GRDB
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@testable import ChatLog
@testable import ChatLogPostgres

/// A store of one backend through the public API, with its subject keys: SQLite with the
/// subject-key file next to it; PostgreSQL with the data and the subject keys in two new databases
/// of the test cluster (CHATLOG_SUBJECT_KEYS).
struct ErasureStoreHarness: Sendable {
    let backend: Backend
    let store: ChatLogStore
    let key: MasterKey
    /// The file, or the data's URL.
    let location: String
    /// PostgreSQL: the subject-key database's URL.
    let subjectKeys: String?
    let data: PostgresDatabase?
    let keys: PostgresDatabase?

    /// Another handle on the same store, as another process would open it.
    func reopen(key: MasterKey? = nil) async throws -> ChatLogStore {
        try await ChatLogStore.open(url: location, key: .key(key ?? self.key), subjectKeys: subjectKeys)
    }

    /// The first column of the first row of `sql` on the data (PostgreSQL through psql, SQLite
    /// through GRDB).
    func dataSQL(_ sql: String) throws -> String {
        if let data { return try data.psql(sql) }
        var configuration = Configuration()
        configuration.busyMode = .timeout(10)
        let queue = try DatabaseQueue(path: location, configuration: configuration)
        defer { try? queue.close() }
        return try queue.read { db in try String.fetchOne(db, sql: sql) ?? "" }
    }

    /// Environment for a `chatlog` or `chatlog-test-driver` process on this store.
    var environment: [String: String] {
        var env = ["CHATLOG_MASTER_KEY": key.exportBase64(), "CHATLOG_DB": location, "PATH": "/usr/bin:/bin", "HOME": NSTemporaryDirectory()]
        if let subjectKeys { env["CHATLOG_SUBJECT_KEYS"] = subjectKeys }
        return env
    }
}

func withErasureStore<R>(_ backend: Backend, _ body: (ErasureStoreHarness) async throws -> R) async throws -> R {
    let key = MasterKey.generate()
    switch backend {
    case .sqlite:
        return try await withSQLiteLocation { path in
            let store = try await ChatLogStore.create(url: path, key: .key(key), options: ChatLogStore.Options(passphraseKDF: .interactive))
            defer { try? store.close() }
            return try await body(ErasureStoreHarness(backend: .sqlite, store: store, key: key, location: path, subjectKeys: nil, data: nil, keys: nil))
        }
    case .postgres:
        return try await withPostgresLocation { url, data in
            try await withPostgresLocation { keysURL, keys in
                let store = try await ChatLogStore.create(url: url, key: .key(key), subjectKeys: keysURL)
                defer { try? store.close() }
                return try await body(
                    ErasureStoreHarness(backend: .postgres, store: store, key: key, location: url, subjectKeys: keysURL, data: data, keys: keys))
            }
        }
    }
}

/// The `chatlog-test-driver` executable `swift build` put next to this test bundle.
func testDriverBinary() throws -> URL {
    let chatlog = try chatlogBinary()
    let driver = chatlog.deletingLastPathComponent().appendingPathComponent("chatlog-test-driver")
    guard FileManager.default.isExecutableFile(atPath: driver.path) else {
        throw PostgresTestServerError("chatlog-test-driver was not found next to chatlog (swift build --build-tests)")
    }
    return driver
}

extension PostgreSQLSuites {
    /// `forget`, `export --subject` and the subject keys from one source on both backends
    /// (docs/ARCHITECTURE.md §10, "Erasure per subject"): the SQLite suites' core cases
    /// (ErasureTests, ErasureCLITests) against PostgreSQL too.
    @Suite("Erasure on both backends")
    struct ErasureBackendTests {
        static let words = "quokkaflux zymurgist"

        /// Two conversations of alice (one continued), one of bob, one without subject.
        static func fill(_ store: ChatLogStore) async throws -> (alice: [ConversationID], bob: ConversationID, plain: ConversationID) {
            let first = try await store.logExchange(
                ModelExchange(
                    conversation: .new(NewConversation(title: "alice one", subject: "alice")),
                    prompt: [NewMessage(role: .user, content: "alice says \(words)")], completion: NewMessage(role: .assistant, content: "answer to alice")))
            _ = try await store.append([NewMessage(role: .user, content: "alice again \(words)")], to: first.conversationID)
            let second = try await store.createConversation(NewConversation(title: "alice two", subject: "alice", metadata: .object(["k": .string("v")])))
            _ = try await store.append([NewMessage(role: .user, content: "second alice \(words)")], to: second)
            let bob = try await store.logExchange(
                ModelExchange(
                    conversation: .new(NewConversation(title: "bob", subject: "bob")), prompt: [NewMessage(role: .user, content: "bob asks about apples")],
                    completion: NewMessage(role: .assistant, content: "apples are fine")))
            let plain = try await store.createConversation(NewConversation(title: "nobody"))
            _ = try await store.append([NewMessage(role: .user, content: "no subject here apples")], to: plain)
            return ([first.conversationID, second], bob.conversationID, plain)
        }

        /// The sealed title and message contents of a conversation, as stored.
        static func sealed(_ harness: ErasureStoreHarness, _ id: ConversationID) async throws -> [Data] {
            let transcript = try await harness.store.storageOrFile { storage in
                let row = try await storage.conversation(id: id.rawValue)
                return [row?.title] + (try await storage.messages(ofConversation: id.rawValue)).map { Optional($0.content) }
            }
            return transcript.compactMap { $0 }
        }

        @Test("a subject's rows are sealed under its own key (version 2) and open everywhere; export and list by subject; forget deletes them, destroys the key, writes a receipt, and the subject's next conversation gets a new key", arguments: Backend.allCases)
        func forgetEndToEnd(backend: Backend) async throws {
            try await withErasureStore(backend) { harness in
                let store = harness.store
                let (alice, bob, plain) = try await Self.fill(store)
                let aliceValues = try await Self.sealed(harness, alice[0]) + (try await Self.sealed(harness, alice[1]))
                #expect(aliceValues.count == 6 && Set(aliceValues.map(\.first)) == [2])
                let aliceKeys = Set(aliceValues.compactMap(SealedValue.subjectKeyID))
                #expect(aliceKeys.count == 1 && aliceKeys.allSatisfy { $0.rawValue >= 0x8000_0000 })
                let bobKeys = Set(try await Self.sealed(harness, bob).compactMap(SealedValue.subjectKeyID))
                #expect(bobKeys.count == 1 && bobKeys != aliceKeys)
                #expect(Set(try await Self.sealed(harness, plain).map(\.first)) == [1])
                #expect(try harness.dataSQL("SELECT count(*) FROM conversations WHERE erasure_key_id IS NOT NULL") == "3")

                // Everything opens, in this handle and in a fresh one (no cache).
                #expect(try await store.transcript(alice[0]).messages.map(\.content) == ["alice says \(Self.words)", "answer to alice", "alice again \(Self.words)"])
                let reopened = try await harness.reopen()
                defer { try? reopened.close() }
                #expect(try await reopened.transcript(alice[1]).conversation.metadata == .object(["k": .string("v")]))
                #expect(try await reopened.search("zymurgist").hits.count == 3)
                #expect(try await reopened.erasure.keyCounts() == (2, 0))
                #expect(Set(try await reopened.conversations(ConversationQuery(subject: "alice")).conversations.map(\.id)) == Set(alice))
                var exported: [String] = []
                let totals = try await reopened.exportOpenAIJSONL(ExportFilter(subject: "alice")) { exported.append(String(decoding: $0, as: UTF8.self)) }
                #expect(totals.conversations == 2 && totals.messages == 4 && exported.count == 2)
                #expect(exported.allSatisfy { $0.contains("alice") && !$0.contains("bob asks") })

                // A dry run counts and changes nothing; an unknown subject is nothing.
                let dry = try #require(try await store.erasure.forget(subject: "alice", dryRun: true))
                #expect(dry.conversations == 2 && dry.messages == 4 && dry.subjectKeys == 1 && dry.receiptHash == nil)
                #expect(try await store.erasure.forget(subject: "nobody-at-all") == nil)
                #expect(try await store.erasure.receipts().isEmpty)

                let report = try #require(try await store.erasure.forget(subject: "alice"))
                #expect(report.conversations == 2 && report.messages == 4 && report.subjectKeys == 1 && report.conversationsWithoutSubjectKey == 0)
                let receiptHash = try #require(report.receiptHash)
                #expect(receiptHash.count == 64 && !receiptHash.contains("alice"))
                for id in alice {
                    await #expect(throws: ChatLogError.conversationNotFound(id.rawValue)) { try await reopened.transcript(id) }
                }
                #expect(try await reopened.transcript(bob).messages.count == 2)
                #expect(try await reopened.search("zymurgist").hits.isEmpty)
                #expect(try await reopened.erasure.keyCounts() == (1, 1))
                let receipts = try await reopened.erasure.receipts()
                #expect(receipts.count == 1 && receipts[0].subjectHash == receiptHash && receipts[0].conversations == 2 && receipts[0].messages == 4)
                #expect(try await reopened.erasure.receiptHash(subject: "alice") == receiptHash)
                #expect(try await reopened.erasure.receiptHash(subject: "bob") != receiptHash)
                #expect(try await reopened.verify().issueCount == 0)

                // A value of the forgotten subject (an old backup's) no longer opens: its key is gone
                // (for a handle that never held it; `reopened` still does in memory, as a process would).
                let old = aliceValues[0]
                let fresh = try await harness.reopen()
                defer { try? fresh.close() }
                try await fresh.ensureSubjectKeys(for: [old])
                do throws(ChatLogError) {
                    _ = try fresh.openText(old, FieldContext(table: "conversations", column: "title", rowID: alice[0].rawValue))
                    Issue.record("a value of a forgotten subject opened")
                } catch .integrity(let failure) {
                    #expect(failure.reason == .forgottenSubjectKey(aliceKeys.first!))
                } catch {
                    Issue.record("\(error)")
                }

                // alice again: a new key, never the destroyed one.
                let again = try await store.createConversation(NewConversation(title: "alice back", subject: "alice"))
                let newKeys = Set(try await Self.sealed(harness, again).compactMap(SealedValue.subjectKeyID))
                #expect(newKeys.count == 1 && newKeys.isDisjoint(with: aliceKeys))
                #expect(try await reopened.transcript(again).conversation.title == "alice back")
            }
        }

        @Test("a writer holding a forgotten subject key in memory is refused in its transaction and seals again under a new key", arguments: Backend.allCases)
        func writerWithForgottenKey(backend: Backend) async throws {
            try await withErasureStore(backend) { harness in
                let writer = harness.store
                let first = try await writer.createConversation(NewConversation(subject: "alice"))
                let forgetter = try await harness.reopen()
                defer { try? forgetter.close() }
                #expect(try await forgetter.erasure.forget(subject: "alice")?.conversations == 1)
                // The writer still holds alice's old key.
                let second = try await writer.createConversation(NewConversation(title: "back", subject: "alice"))
                #expect(try await forgetter.transcript(second).conversation.title == "back")
                await #expect(throws: ChatLogError.conversationNotFound(first.rawValue)) {
                    _ = try await writer.append([NewMessage(role: .user, content: "x")], to: first)
                }
                #expect(try await forgetter.erasure.keyCounts() == (1, 1))
                #expect(try await forgetter.verify().issueCount == 0)
            }
        }

        /// Behind the storage seam an append reads its conversation's row for the subject key it is
        /// sealed under — except for a conversation the same handle made: that key is remembered, so
        /// a continued exchange is one statement. Seen here by emptying the row's subject in the
        /// database behind the handle's back: the maker still seals under the subject's key (it read
        /// nothing), a fresh handle reads the row and seals under the data key.
        @Test("a conversation this handle made is continued without reading its row first (its subject key is remembered)")
        func madeHereIsNotReadAgain() async throws {
            try await withErasureStore(.postgres) { harness in
                let store = harness.store
                let logged = try await store.logExchange(
                    ModelExchange(
                        conversation: .new(NewConversation(subject: "carol")), prompt: [NewMessage(role: .user, content: "carol asks")],
                        completion: NewMessage(role: .assistant, content: "carol hears")))
                let created = try await store.createConversation(NewConversation(subject: "carol"))
                let carol = Set(try await Self.sealed(harness, logged.conversationID).compactMap(SealedValue.subjectKeyID))
                #expect(carol.count == 1)
                _ = try harness.dataSQL(
                    "UPDATE conversations SET subject = NULL WHERE id IN ('\(logged.conversationID.rawValue)', '\(created.rawValue)')")
                for id in [logged.conversationID, created] {
                    _ = try await store.logExchange(
                        ModelExchange(
                            conversation: .existing(id), prompt: [NewMessage(role: .user, content: "again")],
                            completion: NewMessage(role: .assistant, content: "still carol")))
                    let values = try await Self.sealed(harness, id)
                    #expect(Set(values.compactMap(SealedValue.subjectKeyID)) == carol && values.allSatisfy { $0.first == 2 })
                }
                let fresh = try await harness.reopen()
                defer { try? fresh.close() }
                _ = try await fresh.append([NewMessage(role: .user, content: "read first")], to: created)
                let last = try #require(try await Self.sealed(harness, created).last)
                #expect(last.first == 1 && SealedValue.subjectKeyID(of: last) == nil)
            }
        }

        @Test("a forget killed after each step is finished by the next forget (or --resume, or verify --repair); the rows are never half-forgotten", arguments: Backend.allCases, ForgetStep.allCases)
        func killedForget(backend: Backend, step: ForgetStep) async throws {
            try await withErasureStore(backend) { harness in
                let (alice, bob, _) = try await Self.fill(harness.store)
                let killed = try ProcessOutput.run(
                    testDriverBinary(), ["forget", "--db", harness.location, "--subject", "alice", "--kill-after", step.rawValue], env: harness.environment,
                    cwd: NSTemporaryDirectory())
                #expect(killed.status == 128 + SIGKILL, "\(killed)")  // killed by the signal
                let store = try await harness.reopen()
                defer { try? store.close() }
                for id in alice {
                    await #expect(throws: ChatLogError.conversationNotFound(id.rawValue)) { try await store.transcript(id) }
                }
                let pending = step == .receiptWritten ? 0 : 1
                #expect(try await store.erasure.pending() == pending)
                #expect(try await store.verify().issueCount == pending)
                switch step {
                case .rowsDeleted, .receiptWritten:
                    #expect(try await store.erasure.forget(subject: "nobody") == nil)  // finishes the pending one first
                case .storeCheckpointed:
                    #expect(try await store.erasure.resume() == 1)
                case .keysDestroyed:
                    #expect(try await store.repair().contains { $0.table == "forget_pending" })
                }
                #expect(try await store.erasure.pending() == 0)
                #expect(try await store.verify().issueCount == 0)
                #expect(try await store.erasure.keyCounts() == (1, 1))
                let receipts = try await store.erasure.receipts()
                #expect(receipts.count == 1 && receipts[0].conversations == 2 && receipts[0].messages == 4 && receipts[0].subjectKeys == 1)
                #expect(try await store.transcript(bob).messages.count == 2)
            }
        }

        @Test("master-key rewrap and data-key rotation keep a subject's rows open under the same subject key; a reopen under the new master key opens the subject keys", arguments: Backend.allCases)
        func rewrapAndRotation(backend: Backend) async throws {
            try await withErasureStore(backend) { harness in
                let (alice, _, _) = try await Self.fill(harness.store)
                let before = Set(try await Self.sealed(harness, alice[0]).compactMap(SealedValue.subjectKeyID))
                _ = try await harness.store.rotateDataKey(RotationOptions(newKey: true))
                #expect(Set(try await Self.sealed(harness, alice[0]).compactMap(SealedValue.subjectKeyID)) == before)
                let newKey = MasterKey.generate()
                try await harness.store.rewrapMasterKey(to: .key(newKey))
                let reopened = try await harness.reopen(key: newKey)
                defer { try? reopened.close() }
                #expect(try await reopened.transcript(alice[0]).messages.count == 3)
                let third = try await reopened.createConversation(NewConversation(title: "carol", subject: "carol"))
                #expect(try await reopened.transcript(third).conversation.subject == "carol")
                #expect(try await reopened.erasure.forget(subject: "alice")?.subjectKeys == 1)
                await #expect(throws: ChatLogError.self) { _ = try await harness.reopen() }  // the old master key opens nothing
            }
        }
    }
}

extension ChatLogStore {
    /// The store's rows through the storage seam (a SQLite store through its own seam backend).
    func storageOrFile<T: Sendable>(_ body: (any ChatLogStorage) async throws -> T) async throws -> T {
        if let storage { return try await body(storage) }
        let storage = try SQLiteStorage.open(path: path)
        do {
            let result = try await body(storage)
            await storage.close()
            return result
        } catch {
            await storage.close()
            throw error
        }
    }
}
