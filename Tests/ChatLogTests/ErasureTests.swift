import CSodium
import Foundation
import GRDB
import Testing

@testable import ChatLog

/// Per-subject erasure by crypto-shredding (issue 15; docs/SECURITY.md, "Erasure of a subject"):
/// a subject's conversations are sealed under a subject key kept in `STORE.subject-keys`, which
/// `forget` destroys, so a backup made before the forget no longer opens them.
@Suite struct ErasureTests {
    static let aliceWords = "quokkaflux zymurgist obelisklantern"

    /// A store with two conversations of alice (one continued by `append`) and one of bob and
    /// one without subject.
    static func fill(_ store: ChatLogStore) throws -> (alice: [ConversationID], others: [ConversationID]) {
        let first = try store.logExchange(
            ModelExchange(
                conversation: .new(NewConversation(title: "alice one", subject: "alice")),
                prompt: [NewMessage(role: .user, content: "alice says \(aliceWords)")],
                completion: NewMessage(role: .assistant, content: "answer to alice")))
        try store.append(NewMessage(role: .user, content: "alice again \(aliceWords)"), to: first.conversationID)
        let second = try store.createConversation(NewConversation(title: "alice two", subject: "alice", metadata: .object(["k": .string("v")])))
        try store.append(NewMessage(role: .user, content: "second alice \(aliceWords)"), to: second)
        let bob = try store.logExchange(
            ModelExchange(
                conversation: .new(NewConversation(title: "bob", subject: "bob")),
                prompt: [NewMessage(role: .user, content: "bob asks about apples")],
                completion: NewMessage(role: .assistant, content: "apples are fine")))
        let plain = try store.createConversation(NewConversation(title: "nobody"))
        try store.append(NewMessage(role: .user, content: "no subject here apples"), to: plain)
        return ([first.conversationID, second], [bob.conversationID, plain])
    }

    static func sealedValues(_ path: String, conversations: [ConversationID]) throws -> [Data] {
        let queue = try DatabaseQueue(path: path)
        defer { try? queue.close() }
        return try queue.read { db in
            var values: [Data] = []
            for id in conversations {
                values += try Data.fetchAll(
                    db, sql: "SELECT title FROM conversations WHERE id = ? AND title IS NOT NULL", arguments: [id.rawValue])
                values += try Data.fetchAll(
                    db,
                    sql: "SELECT m.content FROM messages m JOIN conversations c ON c.seq = m.conversation_seq WHERE c.id = ?",
                    arguments: [id.rawValue])
            }
            return values
        }
    }

    @Test func aSubjectsRowsAreSealedUnderItsOwnKeyAndOpen() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            #expect(!FileManager.default.fileExists(atPath: directory.databasePath + ".subject-keys"))
            let (alice, others) = try Self.fill(store)
            #expect(PrivateFiles.mode(of: directory.databasePath + ".subject-keys") == 0o600)
            // Version 2 under one subject key per subject; no subject: version 1.
            let aliceValues = try Self.sealedValues(directory.databasePath, conversations: alice)
            #expect(aliceValues.count == 6)
            #expect(Set(aliceValues.map { $0.first }) == [2])
            #expect(Set(aliceValues.compactMap(SealedValue.subjectKeyID)).count == 1)
            #expect(aliceValues.compactMap(SealedValue.subjectKeyID).allSatisfy { $0.rawValue >= 0x8000_0000 })
            let bobValues = try Self.sealedValues(directory.databasePath, conversations: [others[0]])
            #expect(Set(bobValues.compactMap(SealedValue.subjectKeyID)).count == 1)
            #expect(bobValues.compactMap(SealedValue.subjectKeyID) != aliceValues.compactMap(SealedValue.subjectKeyID).prefix(bobValues.count).map { $0 })
            #expect(Set(try Self.sealedValues(directory.databasePath, conversations: [others[1]]).map { $0.first }) == [1])
            // Everything opens, in this process and in a fresh one (no cache).
            #expect(try store.transcript(alice[0]).messages.map(\.content) == ["alice says \(Self.aliceWords)", "answer to alice", "alice again \(Self.aliceWords)"])
            let reopened = try ChatLogStore.open(at: directory.databasePath, key: .key(store.keyRing.master))
            #expect(try reopened.transcript(alice[1]).conversation.metadata == .object(["k": .string("v")]))
            #expect(try reopened.search("zymurgist").hits.count == 3)
            #expect(try reopened.subjectKeyCounts() == (2, 0))
            #expect(try reopened.conversationIDs(subject: "alice") == alice)
        }
    }

    @Test func backupForgetRestoreRefusesOnlyTheSubjectsConversations() async throws {
        try await withTemporaryDirectory { directory in
            let key = MasterKey.generate()
            let store = try makeStore(in: directory, key: key)
            let (alice, others) = try Self.fill(store)
            let terms = IndexScrubTests.terms(store, Self.aliceWords)
            let backup = directory.file("backup.db")
            try store.backup(to: backup)
            let sealed = try Self.sealedValues(backup, conversations: alice)

            let report = try #require(try store.forget(subject: "alice"))
            #expect(report.conversations == 2 && report.messages == 4 && report.subjectKeys == 1 && report.conversationsWithoutSubjectKey == 0)
            #expect(try store.conversationIDs(subject: "alice").isEmpty)
            #expect(try store.subjectKeyCounts() == (1, 1))
            #expect(try store.erasureIssues().isEmpty)
            // No byte of alice's sealed values or terms in the live files.
            for file in [directory.databasePath, directory.databasePath + "-wal", directory.databasePath + ".subject-keys"] {
                guard let data = FileManager.default.contents(atPath: file) else { continue }
                let bytes = [UInt8](data)
                for value in sealed { #expect(!IndexScrubTests.contains(bytes, [UInt8](value.suffix(24))), "\(file)") }
            }
            let evidence = try IndexScrubTests.evidence(store, path: directory.databasePath, terms: terms, rowIDs: [])
            #expect(evidence.clean, "\(evidence)")

            // Restore the old backup over the store; the current subject-key file stays.
            try FileManager.default.removeItem(atPath: directory.databasePath)
            try? FileManager.default.removeItem(atPath: directory.databasePath + "-wal")
            try? FileManager.default.removeItem(atPath: directory.databasePath + "-shm")
            try FileManager.default.copyItem(atPath: backup, toPath: directory.databasePath)
            let restored = try ChatLogStore.open(at: directory.databasePath, key: .key(key))
            for id in alice {
                #expect {
                    _ = try restored.transcript(id)
                } throws: { error in
                    guard case .integrity(let failure) = error as? ChatLogError, case .forgottenSubjectKey = failure.reason else { return false }
                    return failure.rowID == id.rawValue && "\(error)".contains("forgotten subject")
                }
            }
            #expect(try restored.transcript(others[0]).messages.count == 2)
            #expect(try restored.transcript(others[1]).messages.count == 1)
            #expect(try restored.erasureIssues().count == 2)
            // Forget again on the restored store removes the rows (no key left to destroy).
            let again = try #require(try restored.forget(subject: "alice"))
            #expect(again.conversations == 2 && again.subjectKeys == 0)
            #expect(try restored.erasureIssues().isEmpty)
        }
    }

    @Test func forgettingAnUnknownSubjectChangesNothing() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            _ = try Self.fill(store)
            try store.checkpoint()
            let before = try Data(contentsOf: URL(fileURLWithPath: directory.databasePath))
            let keysBefore = try Data(contentsOf: URL(fileURLWithPath: directory.databasePath + ".subject-keys"))
            #expect(try store.forget(subject: "carol") == nil)
            #expect(try store.forget(subject: "carol", dryRun: true) == nil)
            try store.checkpoint()
            #expect(try Data(contentsOf: URL(fileURLWithPath: directory.databasePath)) == before)
            #expect(try Data(contentsOf: URL(fileURLWithPath: directory.databasePath + ".subject-keys")) == keysBefore)
            #expect(try store.forgetReceipts().isEmpty)
        }
    }

    @Test func aDryRunCountsAndChangesNothing() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let (alice, _) = try Self.fill(store)
            let report = try #require(try store.forget(subject: "alice", dryRun: true))
            #expect(report == ForgetReport(conversations: 2, messages: 4, subjectKeys: 1, conversationsWithoutSubjectKey: 0, receiptHash: nil, dryRun: true))
            #expect(try store.transcript(alice[0]).messages.count == 3)
            #expect(try store.subjectKeyCounts() == (2, 0))
        }
    }

    @Test func theReceiptHashIsKeyedAndDiffersAcrossStores() async throws {
        try await withTemporaryDirectory { directory in
            let key = MasterKey.generate()
            let one = try ChatLogStore.create(at: directory.file("one.db"), key: .key(key), options: fastOptions)
            let two = try ChatLogStore.create(at: directory.file("two.db"), key: .key(key), options: fastOptions)
            for store in [one, two] { _ = try Self.fill(store) }
            let first = try #require(try one.forget(subject: "alice")?.receiptHash)
            let second = try #require(try two.forget(subject: "alice")?.receiptHash)
            #expect(first != second)
            #expect(first.count == 64)
            // Not an unkeyed hash of the subject (BLAKE2b-256 or SHA-256 of it).
            var unkeyed = [UInt8](repeating: 0, count: 32)
            let subject = Array("alice".utf8)
            #expect(crypto_generichash(&unkeyed, 32, subject, UInt64(subject.count), nil, 0) == 0)
            #expect(first != unkeyed.map { String(format: "%02x", $0) }.joined())
            // The receipt is in the store, and the operator can find it again with the subject.
            let receipts = try one.forgetReceipts()
            #expect(receipts.count == 1 && receipts[0].subjectHash == first && receipts[0].conversations == 2 && receipts[0].messages == 4)
            #expect(try one.receiptHash(subject: "alice") == first)
            #expect(try one.receiptHash(subject: "bob") != first)
        }
    }

    @Test func dataKeyRotationKeepsSubjectRowsUnderTheirSubjectKeyAndRetireWorks() async throws {
        try await withTemporaryDirectory { directory in
            let key = MasterKey.generate()
            let store = try makeStore(in: directory, key: key)
            let (alice, others) = try Self.fill(store)
            try store.backup(to: directory.file("before-rotation.db"))
            let subjectIDs = Set(try Self.sealedValues(directory.databasePath, conversations: alice).compactMap(SealedValue.subjectKeyID))
            let oldDataKey = store.keyRing.current.activeDataKey.id
            #expect(try store.rotateDataKey(newKey: true) > 0)
            #expect(try store.retireUnusedKeys().contains(oldDataKey))
            // Re-sealed under the new data key, still under the same subject key.
            let after = try Self.sealedValues(directory.databasePath, conversations: alice)
            #expect(Set(after.compactMap(SealedValue.subjectKeyID)) == subjectIDs && after.allSatisfy { $0.first == 2 })
            #expect(after.allSatisfy { (try? SealedValue.keyID(of: $0)) == store.keyRing.current.activeDataKey.id })
            #expect(try store.transcript(alice[0]).messages.count == 3)
            #expect(try store.transcript(others[1]).messages.count == 1)
            // Forget after the rotation still reaches the backup made before it.
            #expect(try store.forget(subject: "alice")?.subjectKeys == 1)
            // Restored elsewhere with the current subject-key file beside it.
            try FileManager.default.copyItem(atPath: directory.databasePath + ".subject-keys", toPath: directory.file("before-rotation.db.subject-keys"))
            let old = try ChatLogStore.open(at: directory.file("before-rotation.db"), key: .key(key))
            #expect(throws: ChatLogError.self) { try old.transcript(alice[0]) }
            #expect(try old.transcript(others[0]).messages.count == 2)
        }
    }

    @Test func masterKeyRewrapCoversTheSubjectKeys() async throws {
        try await withTemporaryDirectory { directory in
            let key = MasterKey.generate()
            let store = try makeStore(in: directory, key: key)
            let (alice, _) = try Self.fill(store)
            let new = MasterKey.generate()
            try store.rewrapMasterKey(to: .key(new))
            #expect(try store.transcript(alice[0]).messages.count == 3)
            // A fresh process with the new key opens the subject keys; a new subject gets one.
            let reopened = try ChatLogStore.open(at: directory.databasePath, key: .key(new))
            #expect(try reopened.transcript(alice[1]).messages.count == 1)
            _ = try reopened.createConversation(NewConversation(subject: "carol"))
            #expect(try reopened.subjectKeyCounts() == (3, 0))
            #expect(throws: ChatLogError.self) { try ChatLogStore.open(at: directory.databasePath, key: .key(key)) }
        }
    }

    @Test func aRewrapKilledBetweenTheTwoFilesLeavesOneKeyThatOpensBoth() async throws {
        try await withTemporaryDirectory { directory in
            let key = MasterKey.generate()
            let new = MasterKey.generate()
            // Killed after step 1 (subject keys wrapped under both), before the store committed:
            // the old key still opens everything.
            do {
                let store = try makeStore(in: directory, key: key)
                let (alice, _) = try Self.fill(store)
                try store.subjectKeys.prepareRewrap(to: new)
                let again = try ChatLogStore.open(at: directory.databasePath, key: .key(key))
                #expect(try again.transcript(alice[0]).messages.count == 3)
                // Killed after the store committed, before step 3: the new key opens everything
                // (the subject-key file is finished at open).
                try store.rewrapStore(from: key, to: new, kdf: nil)
                let after = try ChatLogStore.open(at: directory.databasePath, key: .key(new))
                #expect(try after.transcript(alice[0]).messages.count == 3)
                #expect(try after.transcript(alice[1]).messages.count == 1)
            }
        }
    }

    @Test func aWriterHoldingAForgottenKeyInMemoryGetsANewKeyNotTheDestroyedOne() async throws {
        try await withTemporaryDirectory { directory in
            let key = MasterKey.generate()
            let writer = try makeStore(in: directory, key: key)
            let first = try writer.createConversation(NewConversation(subject: "alice"))
            let forgetter = try ChatLogStore.open(at: directory.databasePath, key: .key(key))
            #expect(try forgetter.forget(subject: "alice")?.conversations == 1)
            // The writer still has alice's old key cached; its write is refused in the
            // transaction, and sealed again under a new key.
            let second = try writer.createConversation(NewConversation(title: "back", subject: "alice"))
            #expect(try forgetter.conversation(second).title == "back")
            #expect(throws: ChatLogError.conversationNotFound(first.rawValue)) { try writer.append(NewMessage(role: .user, content: "x"), to: first) }
            #expect(try forgetter.subjectKeyCounts() == (1, 1))
            #expect(try forgetter.erasureIssues().isEmpty)
        }
    }

    /// Every unwrapped subject key is a guarded libsodium allocation (several memory mappings);
    /// a cache of tens of thousands of them ran out of the kernel's mappings (`vm.max_map_count`,
    /// 65,530) and crashed. 30,000 subjects looked up in turn must work.
    @Test func thirtyThousandSubjectsDoNotExhaustMemoryMappings() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let subjects = (0..<30_000).map { "user-\($0)" }
            try store.subjectKeys.createKeys(for: subjects)
            var ids = Set<KeyID>()
            for subject in subjects {
                guard let key = try store.subjectKeys.key(forSubject: subject, create: false) else {
                    Issue.record("no key for a prepared subject")
                    return
                }
                ids.insert(key.id)
            }
            #expect(ids.count == subjects.count)
            #expect(try store.subjectKeyCounts() == (30_000, 0))
        }
    }
}
