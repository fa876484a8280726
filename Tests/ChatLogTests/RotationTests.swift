import ChatLogTestSupport
import Dispatch
import Foundation
import GRDB
import Synchronization
import Testing

@testable import ChatLog

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

// Library-level tests of key rotation (docs/ARCHITECTURE.md §5): progress and cancellation, --max-duration
// and dry runs, stale store instances that must re-seal, retiring keys, and what the files keep.
// The process-level tests (kills, concurrent processes, the lock, exit codes) are in
// Tests/ChatLogCLITests/RotationCLITests.swift.

// MARK: - Helpers

/// A store with `conversations` conversations (even ones with a subject) of `perConversation`
/// messages each; every tenth message carries metadata. Returns the conversation ids in order.
@discardableResult
private func fill(
    _ store: ChatLogStore, conversations: Int, perConversation: Int, subjects: Bool = true, label: String = "row"
) throws -> [ConversationID] {
    var ids: [ConversationID] = []
    var global = 0
    for conversation in 0..<conversations {
        let id = try store.createConversation(
            NewConversation(
                title: "\(label) conversation \(conversation)", subject: subjects && conversation % 2 == 0 ? "user-\(conversation)" : nil,
                metadata: .object(["n": .integer(Int64(conversation))])))
        var messages: [NewMessage] = []
        for index in 0..<perConversation {
            messages.append(
                NewMessage(
                    role: index % 2 == 0 ? .user : .assistant, content: "\(label) \(global) walrus \(global % 3 == 0 ? "kayak" : "canoe")",
                    metadata: global % 10 == 0 ? .object(["g": .integer(Int64(global))]) : nil))
            global += 1
        }
        if !messages.isEmpty { try store.append(messages, to: id) }
        ids.append(id)
    }
    return ids
}

/// Every conversation's transcript (oldest first), as plain values to compare before and after.
private func snapshot(_ store: ChatLogStore, _ ids: [ConversationID]) throws -> [Transcript] {
    try ids.map { try store.transcript($0) }
}

/// Keys of `kind` other than the active one that rows still use.
private func rowsUnderOldKeys(_ store: ChatLogStore, _ kind: KeyStatus.Entry.Kind) throws -> [KeyID: Int] {
    var rows: [KeyID: Int] = [:]
    for entry in try store.keyStatus().keys where entry.kind == kind && entry.state != .active && entry.rowCount > 0 {
        rows[entry.id] = entry.rowCount
    }
    return rows
}

private func total(_ rows: [KeyID: Int]) -> Int { rows.values.reduce(0, +) }

private func activeKey(_ store: ChatLogStore, _ kind: KeyStatus.Entry.Kind) throws -> KeyID {
    try #require(try store.keyStatus().keys.first { $0.kind == kind && $0.state == .active }).id
}

private func searchIDs(_ store: ChatLogStore, _ query: String, filters: SearchFilters = SearchFilters()) throws -> Set<MessageID> {
    Set(try store.search(query, filters: filters, limit: 1000, sort: .newest).hits.map(\.messageID))
}

/// Messages whose content has `word` as a word, from the transcripts.
private func expectedIDs(_ transcripts: [Transcript], word: String) -> Set<MessageID> {
    Set(transcripts.flatMap(\.messages).filter { $0.content.split(separator: " ").contains(Substring(word)) }.map(\.id))
}

/// A counter a @Sendable closure can bump.
private final class Counter: Sendable {
    private let storage = Mutex(0)
    @discardableResult func increment() -> Int { storage.withLock { $0 += 1; return $0 } }
    var value: Int { storage.withLock { $0 } }
}

private final class Recorder<Value: Sendable>: Sendable {
    private let storage = Mutex<[Value]>([])
    func add(_ value: Value) { storage.withLock { $0.append(value) } }
    var values: [Value] { storage.withLock { $0 } }
}

/// Runs blocking work on a thread of its own so it holds neither one of Swift's cooperative
/// threads (there are as many as cores, and the other suites share them) nor one of Dispatch's
/// global queues (docs/TESTING.md, "The intermittent hang").
private func onDispatchThread<T: Sendable>(
    _ label: String = #function, file: String = #fileID, line: Int = #line, _ body: @escaping @Sendable () -> T
) async -> T {
    await onOwnThread(label, file: file, line: line, body)
}

// MARK: - Progress, cancellation, limits

@Suite struct RotationProgressTests {
    @Test func progressReportsIncreasingDoneAndTheConvenienceFormsRewriteEverything() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let ids = try fill(store, conversations: 4, perConversation: 30)
            let before = try snapshot(store, ids)
            let recorder = Recorder<RotationProgress>()
            let report = try store.rotateDataKey(
                RotationOptions(newKey: true, batchSize: 7, progress: { recorder.add($0) }))
            let reports = recorder.values
            #expect(report.complete)
            #expect(report.rewritten == 124)
            #expect(total(report.rowsByKey) == 124)
            #expect(report.newKeyID == report.activeKeyID)
            #expect(reports.count >= 124 / 7, "one progress call per batch: \(reports.count)")
            let done = reports.map(\.done)
            let remaining = reports.map(\.remaining)
            let increasing = zip(done, done.dropFirst()).allSatisfy { (pair: (Int, Int)) in pair.0 < pair.1 }
            let decreasing = zip(remaining, remaining.dropFirst()).allSatisfy { (pair: (Int, Int)) in pair.0 >= pair.1 }
            #expect(increasing, "done must increase: \(done)")
            #expect(decreasing, "remaining must not grow: \(remaining)")
            #expect(reports.last?.done == report.rewritten)
            #expect(reports.last?.remaining == 0)
            #expect(reports.allSatisfy { $0.kind == .data })
            #expect(try rowsUnderOldKeys(store, .data).isEmpty)
            #expect(try snapshot(store, ids) == before)

            // The convenience forms: a new key each, everything moved, nothing left behind.
            #expect(try store.rotateDataKey(newKey: true, batchSize: 50) == 124)
            #expect(try store.rotateDataKey(newKey: false, batchSize: 50) == 0)
            // Index key: every message and the two conversations with a subject.
            #expect(try store.rotateIndexKey(newKey: true, batchSize: 11) == 122)
            #expect(try store.rotateIndexKey(newKey: false) == 0)
            #expect(try rowsUnderOldKeys(store, .data).isEmpty)
            #expect(try rowsUnderOldKeys(store, .index).isEmpty)
            #expect(try snapshot(store, ids) == before)
            #expect(try searchIDs(store, "kayak") == expectedIDs(before, word: "kayak"))
            #expect(try store.conversations(ConversationQuery(subject: "user-2")).conversations.map(\.id) == [ids[2]])
        }
    }

    @Test func shouldContinueReturningFalseStopsEarlyAndTheNextRunContinues() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let ids = try fill(store, conversations: 2, perConversation: 50)
            let before = try snapshot(store, ids)
            let polls = Counter()
            let report = try store.rotateDataKey(
                RotationOptions(newKey: true, batchSize: 10, shouldContinue: { polls.increment() <= 3 }))
            #expect(!report.complete)
            #expect(report.rewritten == 30, "three batches of 10, then stop")
            #expect(report.remaining == 72)
            #expect(total(try rowsUnderOldKeys(store, .data)) == 72)
            #expect(try snapshot(store, ids) == before)

            // Stopped before the first batch: a new key, nothing moved.
            let index = try store.rotateIndexKey(RotationOptions(newKey: true, batchSize: 10, shouldContinue: { false }))
            #expect(!index.complete && index.rewritten == 0 && index.remaining == 101)
            #expect(try searchIDs(store, "kayak") == expectedIDs(before, word: "kayak"), "search spans both index keys")

            let rest = try store.rotateDataKey(RotationOptions())
            #expect(rest.complete && rest.rewritten == 72 && !rest.createsNewKey)
            let restIndex = try store.rotateIndexKey(RotationOptions())
            #expect(restIndex.complete && restIndex.rewritten == 101)
            #expect(try rowsUnderOldKeys(store, .data).isEmpty && rowsUnderOldKeys(store, .index).isEmpty)
            #expect(try snapshot(store, ids) == before)
            #expect(try searchIDs(store, "kayak") == expectedIDs(before, word: "kayak"))
        }
    }

    @Test func asyncRotationStopsWhenItsTaskIsCancelled() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let ids = try fill(store, conversations: 2, perConversation: 100)
            let before = try snapshot(store, ids)
            // The first progress call (after batch 1) parks the rotation until the task is cancelled.
            let firstBatch = DispatchSemaphore(value: 0)
            let resume = DispatchSemaphore(value: 0)
            let calls = Counter()
            let options = RotationOptions(
                newKey: true, batchSize: 10,
                progress: { _ in
                    if calls.increment() == 1 {
                        firstBatch.signal()
                        resume.wait()
                    }
                })
            let task = Task { try await store.rotateDataKey(options) }
            await onDispatchThread { firstBatch.wait() }
            task.cancel()
            resume.signal()
            let report = try await task.value
            #expect(!report.complete)
            #expect(report.rewritten == 10, "exactly the batch before the cancellation")
            #expect(calls.value == 1)
            #expect(total(try rowsUnderOldKeys(store, .data)) == 192)

            // A task cancelled before the rotation starts moves nothing (the new key is made).
            let cancelledEarly = Task {
                withUnsafeCurrentTask { $0?.cancel() }
                return try await store.rotateIndexKey(RotationOptions(newKey: true, batchSize: 10))
            }
            let early = try await cancelledEarly.value
            #expect(early.rewritten == 0 && !early.complete && early.remaining == 201)
            #expect(try await store.rotateIndexKey(RotationOptions()).complete)

            let finished = try await store.rotateDataKey(RotationOptions())
            #expect(finished.complete)
            #expect(try rowsUnderOldKeys(store, .data).isEmpty)
            #expect(try snapshot(store, ids) == before)
        }
    }

    @Test func maxDurationStopsWithinOneBatch() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let ids = try fill(store, conversations: 2, perConversation: 200, subjects: false)
            let rows = 402
            // Zero: at most one batch (this code checks the clock before each batch, so none).
            let zero = try store.rotateDataKey(RotationOptions(newKey: true, batchSize: 25, maxDuration: 0))
            #expect(zero.createsNewKey)
            #expect(zero.rewritten <= 25 && !zero.complete && zero.remaining == rows - zero.rewritten)
            // A deadline that passes during the first batch (its progress call outlasts it): the
            // run stops after that batch instead of starting another.
            let batches = Counter()
            let short = try store.rotateDataKey(
                RotationOptions(
                    batchSize: 25, maxDuration: 0.05,
                    progress: { _ in
                        batches.increment()
                        Thread.sleep(forTimeInterval: 0.1)
                    }))
            #expect(batches.value <= 1, "\(batches.value) batches started within a 50 ms window after a 100 ms batch")
            #expect(short.rewritten <= 25 && !short.complete)
            let left = rows - zero.rewritten - short.rewritten
            #expect(total(try rowsUnderOldKeys(store, .data)) == left)
            let rest = try store.rotateDataKey(RotationOptions(batchSize: 25))
            #expect(rest.complete && rest.rewritten == left)
            #expect(try snapshot(store, ids).flatMap(\.messages).count == 400)
        }
    }

    @Test func dryRunCountsAndChangesNothing() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            try fill(store, conversations: 3, perConversation: 20)
            let dump = { () throws -> [String] in
                try withRawDatabase(directory.databasePath) { db in
                    try String.fetchAll(db, sql: "SELECT id || kind || state || coalesce(hex(wrapped), '') FROM keys ORDER BY id")
                        + String.fetchAll(db, sql: "SELECT id || key_id || index_key_id || hex(content) FROM messages ORDER BY seq")
                        + String.fetchAll(
                            db, sql: "SELECT id || key_id || coalesce(subject_key_id, '') || coalesce(hex(title), '') FROM conversations ORDER BY seq")
                }
            }
            let before = try dump()
            let oldKey = try activeKey(store, .data)
            let plan = try store.rotateDataKey(RotationOptions(newKey: true, dryRun: true))
            #expect(plan.dryRun && plan.createsNewKey && plan.newKeyID == nil && plan.rewritten == 0)
            #expect(plan.rowsByKey == [oldKey: 63])
            #expect(plan.remaining == 63)
            let indexPlan = try store.rotateIndexKey(RotationOptions(dryRun: true))
            #expect(indexPlan.dryRun && !indexPlan.createsNewKey && indexPlan.rowsByKey.isEmpty && indexPlan.remaining == 0)
            #expect(try dump() == before)
            #expect(try store.keyStatus().keys.count == 2)

            // After a partial run, a dry run reports what is left, per key.
            let partial = try store.rotateDataKey(RotationOptions(newKey: true, batchSize: 20, shouldContinue: { false }))
            #expect(!partial.complete)
            let left = try store.rotateDataKey(RotationOptions(dryRun: true))
            #expect(left.rowsByKey == [oldKey: 63] && !left.createsNewKey)
        }
    }
}

// MARK: - Other instances (processes) that knew the old keys

@Suite struct RotationStaleInstanceTests {
    /// A reader whose snapshot began before this handle's rotation committed its new key reloads
    /// the keys (a search or listing does when its plan's keys differ from the snapshot's): it
    /// must get the keys of its snapshot, and the handle must keep the new key. It lost it once:
    /// SearchTests.searchesStayExactDuringARotation saw a rotation stop having moved 0 of 3,000
    /// rows, its batches looking for rows outside the old key.
    @Test func aReloadFromAnOlderSnapshotDoesNotTakeTheNewKeyAway() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            try fill(store, conversations: 2, perConversation: 10)
            let old = store.keyRing.current.activeIndexKey.id
            let inSnapshot = DispatchSemaphore(value: 0)
            let committed = DispatchSemaphore(value: 0)
            let seen = Mutex<Result<KeyID, ChatLogError>?>(nil)
            let pool = try store.pool
            Thread {
                let result = Result { () throws(ChatLogError) -> KeyID in
                    do {
                        return try pool.read { db in
                            _ = try Int.fetchOne(db, sql: "SELECT count(*) FROM keys")  // the snapshot starts here
                            inSnapshot.signal()
                            committed.wait()
                            return try store.keyRing.reload(db).activeIndexKey.id
                        }
                    } catch { throw ChatLogError.wrap(error) }
                }
                seen.withLock { $0 = result }
                inSnapshot.signal()
            }.start()
            await onDispatchThread { inSnapshot.wait() }
            // A rotation's first step: a new active index key, committed, and this handle's keys reloaded.
            let new = try await store.writeImmediate { db in
                let id = try KeyRing.addActiveKey(kind: .index, master: store.keyRing.master, db: db)
                try store.keyRing.reload(db)
                return id
            }
            #expect(store.keyRing.current.activeIndexKey.id == new)
            committed.signal()
            await onDispatchThread { inSnapshot.wait() }
            #expect(try seen.withLock { try $0?.get() } == old, "the reader's snapshot has the old key active")
            #expect(store.keyRing.current.activeIndexKey.id == new, "the reload of an older snapshot took the new key away")
            // And the rotation goes on under the new key.
            let report = try await store.rotateIndexKey(RotationOptions(newKey: false, batchSize: 7))
            #expect(report.complete && report.rewritten >= 20, "\(report)")
            #expect(report.activeKeyID == new)
        }
    }

    @Test func appendsThroughAStaleInstanceAreSealedUnderTheNewDataKey() async throws {
        try await withTemporaryDirectory { directory in
            let key = MasterKey.generate()
            let rotator = try makeStore(in: directory, key: key)
            let ids = try fill(rotator, conversations: 2, perConversation: 20)
            // The second instance stands for another process: it loaded the keys before the rotation.
            let stale = try ChatLogStore.open(at: directory.databasePath, key: .key(key))
            try await stale.append(NewMessage(role: .user, content: "before the rotation"), to: ids[0])
            let oldKey = try activeKey(rotator, .data)

            let report = try await rotator.rotateDataKey(RotationOptions(newKey: true, batchSize: 8))
            #expect(report.complete)
            let newKey = try #require(report.newKeyID)
            #expect(newKey != oldKey)

            let appended = try await stale.append(NewMessage(role: .assistant, content: "after the rotation kayak"), to: ids[1])
            let created = try await stale.createConversation(NewConversation(title: "new", subject: "user-new"))
            let exchange = try await stale.logExchange(
                ModelExchange(
                    conversation: .new(NewConversation(title: "exchange", metadata: .object(["k": .bool(true)]))),
                    prompt: [NewMessage(role: .user, content: "question", metadata: .string("m"))],
                    completion: NewMessage(role: .assistant, content: "answer")))
            try await stale.append([NewMessage(role: .user, content: "async one"), NewMessage(role: .user, content: "async two")], to: created)

            #expect(try rowsUnderOldKeys(rotator, .data).isEmpty, "a stale writer committed under the old key")
            let keyIDs = try withRawDatabase(directory.databasePath) { db in
                try Set(Int64.fetchAll(db, sql: "SELECT key_id FROM messages UNION SELECT key_id FROM conversations"))
            }
            #expect(keyIDs == [Int64(newKey.rawValue)])
            // Both instances read everything.
            for store in [rotator, stale] {
                #expect(try await store.transcript(ids[1]).messages.last?.content == "after the rotation kayak")
                #expect(try await store.transcript(exchange.conversationID).messages.map(\.content) == ["question", "answer"])
                #expect(try await store.transcript(created).messages.count == 2)
                #expect(try await store.conversation(created).subject == "user-new")
            }
            #expect(try searchIDs(rotator, "kayak").contains(appended))
        }
    }

    @Test func aStaleInstanceIndexesUnderTheNewIndexKeyAndStillFindsEverything() async throws {
        try await withTemporaryDirectory { directory in
            let key = MasterKey.generate()
            let rotator = try makeStore(in: directory, key: key)
            let ids = try fill(rotator, conversations: 2, perConversation: 30)
            let stale = try ChatLogStore.open(at: directory.databasePath, key: .key(key))
            #expect(try searchIDs(stale, "kayak").count == 20)

            #expect(try rotator.rotateIndexKey(RotationOptions(newKey: true, batchSize: 9)).complete)
            let appended = try stale.append(NewMessage(role: .user, content: "late kayak"), to: ids[0])
            let subject = try stale.createConversation(NewConversation(subject: "user-late"))
            #expect(try rowsUnderOldKeys(rotator, .index).isEmpty, "a stale writer indexed under the old index key")

            let all = try snapshot(rotator, ids)
            let expected = expectedIDs(all, word: "kayak")
            #expect(expected.contains(appended) && expected.count == 21)
            #expect(try searchIDs(rotator, "kayak") == expected)
            // The stale instance has not seen the new index key yet; its search must still be exact.
            #expect(try searchIDs(stale, "kayak") == expected, "search through an instance opened before the index rotation")
            #expect(try stale.conversations(ConversationQuery(subject: "user-0")).conversations.map(\.id) == [ids[0]])
            #expect(try rotator.conversations(ConversationQuery(subject: "user-late")).conversations.map(\.id) == [subject])
        }
    }

    @Test func writersOnAnotherInstanceKeepWritingAndDeletingDuringRotation() async throws {
        try await withTemporaryDirectory { directory in
            let key = MasterKey.generate()
            let rotator = try makeStore(in: directory, key: key)
            let victims = try fill(rotator, conversations: 6, perConversation: 40, label: "victim")
            let writerStore = try ChatLogStore.open(at: directory.databasePath, key: .key(key))
            let target = try await writerStore.createConversation(NewConversation(title: "writer"))
            let stop = Counter()
            let failures = ErrorCollector()
            let committed = Recorder<String>()
            let writer = Task.detached {
                var index = 0
                while stop.value == 0 {
                    do {
                        try await writerStore.append(NewMessage(role: .user, content: "writer \(index)"), to: target)
                        committed.add("writer \(index)")
                    } catch {
                        failures.add("append \(index): \(error)")
                    }
                    index += 1
                }
            }
            let deleter = Task.detached {
                for victim in victims.prefix(4) {
                    do { _ = try await writerStore.deleteConversation(victim) } catch { failures.add("delete: \(error)") }
                }
            }
            for round in 0..<3 {
                let data = try await rotator.rotateDataKey(RotationOptions(newKey: true, batchSize: 16))
                #expect(data.complete, "round \(round)")
                #expect(try rowsUnderOldKeys(rotator, .data).isEmpty, "round \(round): rows under an old data key after `done`")
                let index = try await rotator.rotateIndexKey(RotationOptions(newKey: true, batchSize: 16))
                #expect(index.complete)
                #expect(try rowsUnderOldKeys(rotator, .index).isEmpty, "round \(round): rows under an old index key after `done`")
            }
            stop.increment()
            await writer.value
            await deleter.value
            #expect(failures.messages.isEmpty, "\(failures.messages)")
            #expect(try rowsUnderOldKeys(rotator, .data).isEmpty && rowsUnderOldKeys(rotator, .index).isEmpty)
            #expect(try await rotator.transcript(target).messages.map(\.content) == committed.values)
            for victim in victims.prefix(4) {
                #expect(throws: ChatLogError.conversationNotFound(victim.rawValue)) { try rotator.transcript(victim) }
            }
            #expect(try snapshot(rotator, Array(victims.suffix(2))).flatMap(\.messages).count == 80)
            let rest = try snapshot(rotator, Array(victims.suffix(2)))
            #expect(try searchIDs(rotator, "kayak") == expectedIDs(rest, word: "kayak"))
        }
    }
}

// MARK: - Retiring keys

@Suite struct RotationRetireTests {
    private func wrapped(_ path: String, _ id: KeyID) throws -> Data {
        try withRawDatabase(path) { db in
            try #require(try Data.fetchOne(db, sql: "SELECT wrapped FROM keys WHERE id = ?", arguments: [Int64(id.rawValue)]))
        }
    }

    /// The database file and its WAL (if any), to look for bytes that must be gone.
    private func fileContents(_ path: String) throws -> [(String, [UInt8])] {
        var files = [(path, try fileBytes(path))]
        if FileManager.default.fileExists(atPath: path + "-wal") { files.append((path + "-wal", try fileBytes(path + "-wal"))) }
        return files
    }

    private func expectKeyInUse(_ store: ChatLogStore, _ id: KeyID, rows: Int, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(throws: ChatLogError.keyInUse(id, rows: rows), sourceLocation: sourceLocation) { try store.retireKey(id) }
        let message = ChatLogError.keyInUse(id, rows: rows).description
        #expect(message.contains("\(rows) rows"), sourceLocation: sourceLocation)
    }

    @Test func retiringADataKeyIsRefusedWhileAnyRowUsesItThenDestroysItsMaterial() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let ids = try fill(store, conversations: 3, perConversation: 10)
            let before = try snapshot(store, ids)
            let oldKey = try activeKey(store, .data)
            #expect(throws: ChatLogError.self) { try store.retireKey(oldKey) }  // active
            // Messages are re-sealed first: after 30 rows only the 3 conversation rows use the old key.
            let partial = try store.rotateDataKey(
                RotationOptions(newKey: true, batchSize: 30, shouldContinue: { [counter = Counter()] in counter.increment() <= 1 }))
            #expect(partial.rewritten == 30 && !partial.complete)
            expectKeyInUse(store, oldKey, rows: 3)
            #expect(try store.retireUnusedKeys().isEmpty)
            let secret = try wrapped(directory.databasePath, oldKey)

            #expect(try store.rotateDataKey(RotationOptions()).complete)
            let entry = try store.retireKey(oldKey)
            #expect(entry.state == .retired && entry.retiredAt != nil && entry.rowCount == 0)
            let listed = try #require(try store.keyStatus().keys.first { $0.id == oldKey })
            #expect(listed.state == .retired && listed.retiredAt != nil)
            #expect(throws: ChatLogError.self) { try store.retireKey(oldKey) }  // already retired
            #expect(try withRawDatabase(directory.databasePath) { db in
                try Row.fetchOne(db, sql: "SELECT 1 FROM keys WHERE id = ? AND wrapped IS NULL", arguments: [Int64(oldKey.rawValue)]) != nil
            })
            for (file, bytes) in try fileContents(directory.databasePath) {
                #expect(!contains(bytes, Array(secret)), "the retired key's wrapped bytes are still in \(file)")
                #expect(!contains(bytes, Array(secret.suffix(32))), "part of the retired key's wrapped bytes is still in \(file)")
            }
            #expect(try snapshot(store, ids) == before, "every value still opens after retiring the old key")
        }
    }

    @Test func anIndexKeyUsedOnlyByTheSearchIndexIsInUse() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let ids = try fill(store, conversations: 2, perConversation: 15, subjects: false)
            let oldIndex = try activeKey(store, .index)
            // The data key moves entirely: the old index key is then referenced only by messages'
            // blinded terms (no subject exists).
            #expect(try store.rotateDataKey(RotationOptions(newKey: true)).complete)
            #expect(try !store.rotateIndexKey(RotationOptions(newKey: true, shouldContinue: { false })).complete)
            expectKeyInUse(store, oldIndex, rows: 30)
            #expect(try store.retireUnusedKeys().count == 1, "only the old data key is unused")
            let secret = try wrapped(directory.databasePath, oldIndex)
            #expect(try store.rotateIndexKey(RotationOptions(batchSize: 7)).complete)
            #expect(try store.retireUnusedKeys() == [oldIndex])
            for (file, bytes) in try fileContents(directory.databasePath) {
                #expect(!contains(bytes, Array(secret)), "the retired index key's wrapped bytes are still in \(file)")
            }
            let all = try snapshot(store, ids)
            #expect(try searchIDs(store, "kayak") == expectedIDs(all, word: "kayak"))
            #expect(try store.keyStatus().keys.filter { $0.state == .retired }.count == 2)
        }
    }

    @Test func anIndexKeyUsedOnlyByASubjectTokenIsInUse() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let ids = try fill(store, conversations: 1, perConversation: 12)  // conversation 0 has a subject
            let oldIndex = try activeKey(store, .index)
            // One batch of exactly the 12 messages: the subject token is left under the old key.
            let calls = Counter()
            let partial = try store.rotateIndexKey(
                RotationOptions(newKey: true, batchSize: 12, shouldContinue: { calls.increment() <= 1 }))
            #expect(partial.rewritten == 12 && !partial.complete)
            #expect(try withRawDatabase(directory.databasePath) { db in
                try Int.fetchOne(db, sql: "SELECT count(*) FROM messages WHERE index_key_id = ?", arguments: [Int64(oldIndex.rawValue)])
            } == 0)
            expectKeyInUse(store, oldIndex, rows: 1)
            #expect(try store.conversations(ConversationQuery(subject: "user-0")).conversations.map(\.id) == ids)
            #expect(try store.rotateIndexKey(RotationOptions()).complete)
            #expect(try store.retireKey(oldIndex).state == .retired)
            #expect(try store.conversations(ConversationQuery(subject: "user-0")).conversations.map(\.id) == ids)
        }
    }

    @Test func aDataKeyUsedOnlyByAConversationRowIsInUse() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let empty = try store.createConversation(NewConversation(title: "no messages yet"))
            let oldKey = try activeKey(store, .data)
            #expect(try !store.rotateDataKey(RotationOptions(newKey: true, shouldContinue: { false })).complete)
            expectKeyInUse(store, oldKey, rows: 1)
            #expect(try store.rotateDataKey(RotationOptions()).complete)
            #expect(try store.retireUnusedKeys() == [oldKey])
            #expect(try store.conversation(empty).title == "no messages yet")
        }
    }

    @Test func rotationLeavesNoOldCiphertextInTheFiles() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let ids = try fill(store, conversations: 2, perConversation: 40)
            let messageID = try store.transcript(ids[1]).messages[7].id.rawValue
            let oldContent = try rawBlob(directory.databasePath, table: "messages", column: "content", id: messageID)
            let oldTitle = try rawBlob(directory.databasePath, table: "conversations", column: "title", id: ids[0].rawValue)
            #expect(try store.rotateDataKey(RotationOptions(newKey: true, batchSize: 13)).complete)
            for (file, bytes) in try fileContents(directory.databasePath) {
                #expect(!contains(bytes, Array(oldContent.suffix(32))), "old message ciphertext survives in \(file)")
                #expect(!contains(bytes, Array(oldTitle.suffix(32))), "old title ciphertext survives in \(file)")
            }
            try store.vacuum()
            #expect(try snapshot(store, ids).flatMap(\.messages).count == 80)
        }
    }
}

// MARK: - The key lock

@Suite struct RotationLockLibraryTests {
    /// Holds `<db>.keys.lock` the way another key job would, with `contents` in the file.
    private func holdLock(_ databasePath: String, contents: String) throws -> Int32 {
        let descriptor = open(databasePath + ".keys.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw TestSupportError("cannot open the lock file") }
        guard flock(descriptor, LOCK_EX | LOCK_NB) == 0 else { throw TestSupportError("the lock is taken") }
        _ = ftruncate(descriptor, 0)
        let bytes = Array(contents.utf8)
        _ = bytes.withUnsafeBytes { pwrite(descriptor, $0.baseAddress, $0.count, 0) }
        return descriptor
    }

    /// The pid of a process that has exited (and been reaped).
    private func deadProcessID() throws -> Int32 {
        let process = try ChildProcess("/bin/true", [])
        try process.wait(timeout: 120)
        return process.pid
    }

    @Test func everyKeyJobIsRefusedWhileAnotherHoldsTheLockAndNamesOnlyALiveHolder() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            try fill(store, conversations: 1, perConversation: 5)
            let lockPath = directory.databasePath + ".keys.lock"

            // A live holder (this process, through another descriptor) is named.
            var descriptor = try holdLock(directory.databasePath, contents: "\(getpid())\n")
            let jobs: [(String, () throws -> Void)] = [
                ("rotate data", { _ = try store.rotateDataKey(RotationOptions(newKey: true)) }),
                ("rotate index", { _ = try store.rotateIndexKey(RotationOptions(dryRun: true)) }),
                ("rewrap", { _ = try store.rewrapMasterKey(to: .key(.generate())) }),
                ("retire", { _ = try store.retireUnusedKeys() }),
                ("lock", { _ = try RotationLock.acquire(forDatabase: directory.databasePath) }),
            ]
            for (name, job) in jobs {
                #expect(throws: ChatLogError.locked(holder: getpid(), path: lockPath), "\(name)") { try job() }
            }
            #expect(try store.keyStatus().keys.count == 2, "a refused job changed the keys")
            close(descriptor)

            // The file still names a holder that died (it was killed before a new holder wrote its
            // pid): the refusal must not name that process.
            let dead = try deadProcessID()
            descriptor = try holdLock(directory.databasePath, contents: "\(dead)\n")
            #expect(throws: ChatLogError.locked(holder: nil, path: lockPath)) { try store.rotateDataKey(RotationOptions()) }
            close(descriptor)
            descriptor = try holdLock(directory.databasePath, contents: "")
            #expect(throws: ChatLogError.locked(holder: nil, path: lockPath)) { try store.rotateDataKey(RotationOptions()) }
            close(descriptor)

            // Released: the job runs, and its own lock is released when it returns.
            #expect(try store.rotateDataKey(RotationOptions(newKey: true)).complete)
            let lock = try RotationLock.acquire(forDatabase: directory.databasePath)
            #expect(throws: ChatLogError.locked(holder: getpid(), path: lockPath)) { try store.rotateIndexKey(RotationOptions()) }
            withExtendedLifetime(lock) {}
        }
    }
}

// MARK: - The closing checkpoint

@Suite struct RotationCheckpointTests {
    /// Every key job ends with a truncating checkpoint. SQLite answers SQLITE_BUSY at once, without
    /// calling the busy handler, when another connection is running a checkpoint — which writers
    /// do on their own (auto-checkpoint) — so the job must wait for it like for any other lock.
    @Test func theClosingCheckpointWaitsForAnotherConnectionsCheckpoint() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            try fill(store, conversations: 2, perConversation: 50)
            var configuration = Configuration()
            configuration.busyMode = .timeout(10)
            let writer = try DatabaseQueue(path: directory.databasePath, configuration: configuration)
            let checkpointer = try DatabaseQueue(path: directory.databasePath, configuration: configuration)
            defer {
                try? writer.close()
                try? checkpointer.close()
            }
            // A writer holds the write lock; another connection starts a FULL checkpoint, which
            // takes the checkpoint lock and then waits (busy handler) for the writer.
            let writing = DispatchSemaphore(value: 0)
            let release = DispatchSemaphore(value: 0)
            let writerDone = DispatchSemaphore(value: 0)
            DispatchQueue.global().async {
                try? writer.writeWithoutTransaction { db in
                    try db.inTransaction(.immediate) {
                        try db.execute(sql: "UPDATE chatlog_meta SET value = value WHERE name = 'store_id'")
                        writing.signal()
                        release.wait()
                        return .commit
                    }
                }
                writerDone.signal()
            }
            writing.wait()
            let checkpointDone = DispatchSemaphore(value: 0)
            DispatchQueue.global().async {
                _ = try? checkpointer.writeWithoutTransaction { db in try db.checkpoint(.full) }
                checkpointDone.signal()
            }
            await onDispatchThread { Thread.sleep(forTimeInterval: 0.2) }  // the checkpointer is now waiting
            DispatchQueue.global().asyncAfter(deadline: .now() + 0.3) { release.signal() }
            #expect(throws: Never.self) { try store.checkpoint() }
            await onDispatchThread {
                writerDone.wait()
                checkpointDone.wait()
            }
            #expect(throws: Never.self) { try store.retireUnusedKeys() }
        }
    }

    /// While a reader in another process keeps a snapshot that uses the WAL, a truncating
    /// checkpoint cannot finish; it must not hold the write lock all that time, or every writer
    /// waits behind it until its own busy timeout and fails with SQLITE_BUSY (the ASan soak run
    /// saw all eight writers and a rotation fail at once). A writer with a 2 s busy timeout must
    /// commit while the checkpoint waits for a reader that stays 4 s; then the WAL is empty.
    @Test func aCheckpointWaitingForAReaderLetsWritersThrough() async throws {
        try await withTemporaryDirectory { directory in
            var options = fastOptions
            options.busyTimeout = 15
            let store = try ChatLogStore.create(at: directory.databasePath, key: .key(MasterKey.generate()), options: options)
            try fill(store, conversations: 2, perConversation: 50)
            var configuration = Configuration()
            configuration.busyMode = .timeout(2)
            let writer = try DatabaseQueue(path: directory.databasePath, configuration: configuration)
            defer { try? writer.close() }
            try await writer.write { db in try db.execute(sql: "UPDATE chatlog_meta SET value = value WHERE name = 'store_id'") }

            let ready = directory.file("reading")
            let reader = try RunningProcess(
                executable: try testDriverPath(), arguments: ["hold-read", "--db", directory.databasePath, "--ready-file", ready, "--seconds", "4"],
                environment: [:], directory: directory.path)
            await onDispatchThread {
                let deadline = ContinuousClock.now + .seconds(30)
                while !FileManager.default.fileExists(atPath: ready) && ContinuousClock.now < deadline { usleep(5_000) }
            }
            #expect(FileManager.default.fileExists(atPath: ready), "the reader did not start")

            let checkpointResult = Mutex<Result<Void, ChatLogError>?>(nil)
            let checkpointDone = DispatchSemaphore(value: 0)
            DispatchQueue.global().async {
                let result = Result { () throws(ChatLogError) in try store.checkpoint() }
                checkpointResult.withLock { $0 = result }
                checkpointDone.signal()
            }
            await onDispatchThread { Thread.sleep(forTimeInterval: 0.5) }  // the checkpoint is waiting for the reader
            let wrote = await onDispatchThread { () -> Bool in
                (try? writer.write { db in try db.execute(sql: "UPDATE chatlog_meta SET value = value WHERE name = 'store_id'") }) != nil
            }
            #expect(wrote, "a writer failed with SQLITE_BUSY behind the checkpoint")
            let readerResult = try await reader.waitAsync()
            #expect(readerResult.status == 0, "\(readerResult.standardError)")
            await onDispatchThread { checkpointDone.wait() }
            let result = checkpointResult.withLock { $0 }
            #expect(throws: Never.self) { try result?.get() }
            let walSize = (try? FileManager.default.attributesOfItem(atPath: directory.databasePath + "-wal")[.size] as? Int) ?? 0
            #expect(walSize == 0, "the WAL was not truncated (\(walSize) bytes)")
        }
    }
}

// MARK: - Batches find their rows through an index

@Suite struct RotationQueryPlanTests {
    /// Each batch looks for rows still under an older key. With `key_id <> ?` SQLite scans the
    /// table past every row already moved, so a rotation's cost grows with the square of the
    /// store's size; the batch queries must be answered from the key-id indexes instead.
    @Test func batchQueriesUseTheKeyIndexes() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            try fill(store, conversations: 2, perConversation: 5)
            try store.close()
            let cases = [
                ("messages", "key_id", "messages_by_key"),
                ("messages", "index_key_id", "messages_by_index_key"),
                ("conversations", "key_id", "conversations_by_key"),
                ("conversations", "subject_key_id", "conversations_by_subject_key"),
            ]
            for (table, column, index) in cases {
                let plan = try withRawDatabase(directory.databasePath) { db in
                    try Row.fetchAll(
                        db, sql: "EXPLAIN QUERY PLAN SELECT seq FROM \(table) WHERE \(ChatLogStore.otherThan(column)) LIMIT ?2",
                        arguments: [1, 500]
                    ).map { $0["detail"] as String }
                }
                #expect(plan.contains { $0.contains("USING") && $0.contains(index) }, "\(table).\(column): \(plan)")
                #expect(!plan.contains { $0.hasPrefix("SCAN \(table)") && !$0.contains("INDEX") }, "\(table).\(column) scans the table: \(plan)")
            }
        }
    }
}
