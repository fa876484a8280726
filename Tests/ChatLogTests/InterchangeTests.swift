import Foundation
import GRDB
import Testing

@testable import ChatLog

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Import, export, stats, deletion, prune, backup and verify through the library: the exact
/// export → import round trip of a large store, idempotent and batched imports, how bad input is
/// refused (with its line, and the store left as it was), secure deletion, and the integrity check.
@Suite struct InterchangeTests {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures").path
    static var sampleJSONL: String { fixtures + "/openai/sample.jsonl" }
    static func bad(_ name: String) -> String { fixtures + "/openai/bad/" + name }

    // MARK: - Export → import round trip

    @Test func exportThenImportRoundTrips5000ConversationsExactly() async throws {
        try await withTemporaryDirectory { directory in
            let source = try ChatLogStore.create(at: directory.file("source.db"), key: .key(.generate()), options: fastOptions)
            var generator = SeededRandom(seed: 0x5EED_C4A7_1065)
            let generated = (0..<5_000).map { InterchangeCorpus.conversation($0, &generator) }
            let messageTotal = generated.reduce(0) { $0 + $1.messages.count }
            let seeded = try source.importConversations(
                format: "interchange-tests", records: generated.map { .success($0) }, batchSize: 1_000)
            #expect(seeded.conversations == 5_000)
            #expect(seeded.messages == messageTotal)

            let first = try Self.export(source)
            let file = directory.file("export.jsonl")
            try first.write(to: URL(fileURLWithPath: file))
            #expect(first.split(separator: 0x0A).count == 5_000)

            let target = try ChatLogStore.create(at: directory.file("target.db"), key: .key(.generate()), options: fastOptions)
            let report = try target.importConversations(format: OpenAIJSONL.format, records: OpenAIJSONL.records(path: file), batchSize: 500)
            #expect(report.conversations == 5_000)
            #expect(report.messages == messageTotal)
            #expect(report.duplicates == 0)
            #expect(report.skipped.isEmpty)
            #expect(try counts(target) == [5_000, messageTotal])

            // Transcripts of both stores are equal (ids, titles, subjects, metadata, every message
            // field, positions, times to the millisecond), and both hold exactly what was written,
            // so the edge cases of the corpus really went through.
            var mismatches: [String] = []
            for item in generated {
                let id = item.conversation.id!
                let original = try source.transcript(id)
                let imported = try target.transcript(id)
                if original != imported {
                    mismatches.append(InterchangeCorpus.describe(original, imported))
                } else if let difference = InterchangeCorpus.difference(imported, item) {
                    mismatches.append("differs from what was written: " + difference)
                }
            }
            #expect(mismatches.count == 0, "transcripts differ: \(mismatches.prefix(5))")

            // A second export, of the imported store, is byte for byte the first one.
            let second = try Self.export(target)
            #expect(second == first, "\(Self.firstDifferentLine(first, second))")

            // Importing (part of) the same export again adds nothing.
            let prefix = directory.file("prefix.jsonl")
            try Data(first.split(separator: 0x0A).prefix(300).map { $0 + [0x0A] }.joined()).write(to: URL(fileURLWithPath: prefix))
            let again = try target.importConversations(format: OpenAIJSONL.format, records: OpenAIJSONL.records(path: prefix), batchSize: 100)
            #expect(again.conversations == 0)
            #expect(again.messages == 0)
            #expect(again.duplicates == 300)
            #expect(try counts(target) == [5_000, messageTotal])
        }
    }

    // MARK: - Idempotence and batches

    @Test func importingTheSameFileTwiceAddsNothingAndCountsDuplicates() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let progress = InterchangeRecorder<Int>()
            let first = try store.importConversations(
                format: OpenAIJSONL.format, records: OpenAIJSONL.records(path: Self.sampleJSONL), batchSize: 2,
                progress: { progress.add($0.conversations + $0.duplicates) })
            #expect(first.conversations == 5)
            #expect(first.messages == 15)
            #expect(first.duplicates == 0)
            #expect(first.skipped.isEmpty)
            // One progress report per batch of 2: 2, 4, then the last one.
            #expect(progress.values == [2, 4, 5])
            let before = try Self.snapshot(store)
            #expect(before.imports == 5)

            progress.removeAll()
            let second = try store.importConversations(
                format: OpenAIJSONL.format, records: OpenAIJSONL.records(path: Self.sampleJSONL), batchSize: 2,
                progress: { progress.add($0.conversations + $0.duplicates) })
            #expect(second.conversations == 0)
            #expect(second.messages == 0)
            #expect(second.duplicates == 5)
            #expect(progress.values == [2, 4, 5])
            #expect(try Self.snapshot(store) == before)

            // The line with chatlog's fields keeps its id, times (the +02:00 offset too) and usage.
            let cafe = try store.transcript(ConversationID("0190718a-3c5e-7b2d-9f41-6a8e2d4c1b07")!)
            #expect(cafe.conversation.title == "Café order")
            #expect(cafe.conversation.subject == "customer-4711")
            #expect(cafe.conversation.createdAt.unixMilliseconds == 1_719_826_200_123)
            #expect(cafe.messages.map(\.createdAt.unixMilliseconds) == [1_719_826_200_123, 1_719_826_201_500, 1_719_826_202_750])
            #expect(cafe.messages.last?.model == "gpt-4o-mini-2024-07-18")
            #expect(cafe.messages.last?.promptTokens == 42)
            #expect(cafe.messages.last?.completionTokens == 9)
        }
    }

    /// Each batch is one transaction: with `fail`, batches before the bad record stay written and
    /// the bad record's batch does not; a second run with `skip` adds the rest without duplicating.
    @Test func aBadRecordStopsOnlyItsOwnBatch() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let file = directory.file("five.jsonl")
            try writeFile(
                file,
                text: [
                    Self.goodLine("one"), Self.goodLine("two"), Self.goodLine("three"), "{\"messages\": 7}", Self.goodLine("five"),
                ].joined(separator: "\n") + "\n")
            let refusal = Self.refusal { _ = try store.importConversations(format: OpenAIJSONL.format, records: OpenAIJSONL.records(path: file), batchSize: 2) }
            #expect(refusal.contains("line 4: \"messages\" must be an array"), "\(refusal)")
            #expect(try counts(store) == [2, 2])
            let rest = try store.importConversations(
                format: OpenAIJSONL.format, records: OpenAIJSONL.records(path: file), onError: .skip, batchSize: 2)
            #expect(rest.conversations == 2)
            #expect(rest.duplicates == 2)
            #expect(rest.skipped.map(\.location) == ["line 4"])
            #expect(try counts(store) == [4, 4])
            let contents = try store.conversations(ConversationQuery(limit: 10)).conversations.map { try store.transcript($0.id).messages[0].content }
            #expect(Set(contents) == ["one", "two", "three", "five"])
        }
    }

    // MARK: - Bad input

    struct BadFixture: Sendable, CustomStringConvertible {
        let file: String
        let firstError: String
        let badLines: [Int]
        /// With `skip`: conversations imported and duplicates (the filler line may repeat).
        let imported: Int
        let duplicates: Int
        var description: String { file }
    }

    static let badFixtures: [BadFixture] = [
        BadFixture(file: "truncated.jsonl", firstError: "line 3: not valid JSON", badLines: [3], imported: 1, duplicates: 1),
        BadFixture(file: "not-json.jsonl", firstError: "line 2: not valid JSON", badLines: [2], imported: 1, duplicates: 1),
        BadFixture(
            file: "messages-is-string.jsonl", firstError: "line 1: \"messages\" must be an array", badLines: [1], imported: 1,
            duplicates: 0),
        BadFixture(
            file: "role-is-number.jsonl", firstError: "line 2: messages[0].role must be a string", badLines: [2], imported: 1,
            duplicates: 0),
        BadFixture(file: "missing-messages.jsonl", firstError: "line 2: missing \"messages\"", badLines: [2], imported: 1, duplicates: 1),
        BadFixture(file: "invalid-utf8.jsonl", firstError: "line 2: not valid UTF-8", badLines: [2, 3], imported: 1, duplicates: 0),
    ]

    @Test(arguments: badFixtures)
    func badFixtureFailsByDefaultAndLeavesTheStoreUnchanged(_ fixture: BadFixture) async throws {
        try await withTemporaryDirectory { directory in
            let store = try Self.storeWithSample(directory)
            let before = try Self.snapshot(store)
            let refusal = Self.refusal { _ = try store.importConversations(format: OpenAIJSONL.format, records: OpenAIJSONL.records(path: Self.bad(fixture.file))) }
            #expect(refusal.contains("openai-jsonl import stopped at \(fixture.firstError)"), "\(refusal)")
            #expect(try Self.snapshot(store) == before)
        }
    }

    @Test(arguments: badFixtures)
    func badFixtureWithSkipImportsTheGoodLinesAndNamesTheBadOnes(_ fixture: BadFixture) async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let report = try store.importConversations(
                format: OpenAIJSONL.format, records: OpenAIJSONL.records(path: Self.bad(fixture.file)), onError: .skip)
            #expect(report.skipped.map(\.location) == fixture.badLines.map { "line \($0)" })
            #expect(report.skipped.first?.description.hasPrefix(fixture.firstError) == true)
            #expect(report.conversations == fixture.imported)
            #expect(report.duplicates == fixture.duplicates)
            #expect(try counts(store) == [fixture.imported, 2 * fixture.imported])
        }
    }

    struct BadLine: Sendable, CustomStringConvertible {
        let line: String
        let problem: String
        var description: String { problem }
    }

    static let badLines: [BadLine] = [
        BadLine(line: "hello, I am not JSON", problem: "not valid JSON (truncated or malformed)"),
        BadLine(line: "[1, 2, 3]", problem: "expected a JSON object with \"messages\""),
        BadLine(line: "{\"title\": \"no messages\"}", problem: "missing \"messages\""),
        BadLine(line: "{\"messages\": {\"role\": \"user\"}}", problem: "\"messages\" must be an array"),
        BadLine(line: "{\"messages\": [1]}", problem: "messages[0] must be an object"),
        BadLine(line: "{\"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}", problem: "messages[0].role must be one of"),
        BadLine(
            line: "{\"messages\": [{\"role\": \"user\", \"content\": 42}]}",
            problem: "messages[0].content must be a string, an array of parts or null"),
        BadLine(
            line: "{\"messages\": [{\"role\": \"user\", \"content\": \"x\", \"usage\": {\"prompt_tokens\": \"12\"}}]}",
            problem: "\"messages[0].usage.prompt_tokens\" must be a non-negative integer"),
        BadLine(
            line: "{\"messages\": [{\"role\": \"user\", \"content\": \"x\", \"latency_ms\": -5}]}",
            problem: "\"messages[0].latency_ms\" must be a non-negative integer"),
        BadLine(
            line: "{\"messages\": [{\"role\": \"user\", \"content\": \"x\", \"created_at\": \"yesterday\"}]}",
            problem: "\"messages[0].created_at\" must be an RFC 3339 time"),
        BadLine(line: "{\"messages\": [], \"created_at\": 5}", problem: "\"created_at\" must be an RFC 3339 time string"),
        BadLine(line: "{\"messages\": [], \"title\": [\"x\"]}", problem: "\"title\" must be a string"),
        BadLine(line: "{\"messages\": [], \"id\": 7}", problem: "\"id\" must be a non-empty string"),
    ]

    @Test(arguments: badLines)
    func badLineIsRefusedWithItsNumber(_ bad: BadLine) async throws {
        try await withTemporaryDirectory { directory in
            let store = try Self.storeWithSample(directory)
            let before = try Self.snapshot(store)
            let file = directory.file("input.jsonl")
            try writeFile(file, text: Self.goodLine("first") + "\n\n" + bad.line + "\n" + Self.goodLine("fourth") + "\n")
            let refusal = Self.refusal { _ = try store.importConversations(format: OpenAIJSONL.format, records: OpenAIJSONL.records(path: file)) }
            #expect(refusal.contains("line 3: \(bad.problem)"), "\(refusal)")
            #expect(try Self.snapshot(store) == before)

            // With skip, the same line is reported and the others are imported (the blank line 2 is no record).
            let report = try store.importConversations(format: OpenAIJSONL.format, records: OpenAIJSONL.records(path: file), onError: .skip)
            #expect(report.skipped.map(\.location) == ["line 3"])
            #expect(report.conversations == 2)
        }
    }

    /// A 50 MiB line is reported by number and length, never parsed, and the lines after it keep
    /// their numbers.
    @Test func overlongLineIsReportedWithItsLength() async throws {
        try await withTemporaryDirectory { directory in
            let store = try Self.storeWithSample(directory)
            let before = try Self.snapshot(store)
            let file = directory.file("huge.jsonl")
            let length = 50 << 20
            try Self.writeHugeLineFile(file, length: length, before: [Self.goodLine("before")], after: [Self.goodLine("after"), "not json"])
            let refusal = Self.refusal { _ = try store.importConversations(format: OpenAIJSONL.format, records: OpenAIJSONL.records(path: file)) }
            #expect(refusal.contains("line 2: the line is \(length) bytes; the limit is 32 MiB"), "\(refusal)")
            #expect(try Self.snapshot(store) == before)

            let report = try store.importConversations(format: OpenAIJSONL.format, records: OpenAIJSONL.records(path: file), onError: .skip)
            #expect(report.skipped.map(\.description).first == "line 2: the line is \(length) bytes; the limit is 32 MiB")
            #expect(report.skipped.map(\.location) == ["line 2", "line 4"])
            #expect(report.conversations == 2)
        }
    }

    // MARK: - Deletion leaves no ciphertext behind

    @Test func deletedConversationsLeaveNoSealedBytesInTheFiles() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            var ids: [ConversationID] = []
            for index in 0..<6 {
                let logged = try store.logExchange(
                    ModelExchange(
                        conversation: .new(
                            NewConversation(title: "title \(index)", subject: "subject-\(index)", metadata: .object(["n": .integer(Int64(index))]))),
                        prompt: [NewMessage(role: .user, content: "question quokka\(index) " + String(repeating: "padding ", count: index * 40))],
                        completion: NewMessage(
                            role: .assistant, content: "answer quokka\(index)", metadata: .object(["tool": .string("x\(index)")]))))
                ids.append(logged.conversationID)
            }
            let victims = [ids[1], ids[4]]
            let sealed = try Self.sealedValues(of: victims, path: directory.databasePath)
            #expect(sealed.count == 2 * (3 + 3))
            // Before: every value is somewhere in the files (so the check below can fail).
            let filesBefore = Self.storeFiles(directory.databasePath)
            for value in sealed { #expect(filesBefore.values.contains { contains($0, value) }) }

            let deleted = try store.deleteConversations(victims + [ConversationID.make()])
            #expect(deleted == 2)
            #expect(try counts(store) == [4, 8])
            try Self.expectGone(sealed, from: directory.databasePath)
            for index in [1, 4] {
                #expect(try store.search("quokka\(index)").hits.isEmpty)
            }
            for index in [0, 2, 3, 5] {
                #expect(try store.search("quokka\(index)").hits.count == 2)
            }
            #expect(try store.verify().ok)
        }
    }

    @Test func pruneDeletesOldConversationsForRealAndDryRunChangesNothing() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let old = Date(timeIntervalSince1970: 1_600_000_000)
            var oldIDs: [ConversationID] = []
            var recentIDs: [ConversationID] = []
            for index in 0..<5 {
                let isOld = index % 2 == 0
                let time = isOld ? old.addingTimeInterval(Double(index) * 3_600) : Date()
                let logged = try store.logExchange(
                    ModelExchange(
                        conversation: .new(NewConversation(title: "t\(index)", createdAt: time)),
                        prompt: [NewMessage(role: .user, content: "prompt wombat\(index)", createdAt: time)],
                        completion: NewMessage(role: .assistant, content: "reply wombat\(index)", createdAt: time)))
                if isOld { oldIDs.append(logged.conversationID) } else { recentIDs.append(logged.conversationID) }
            }
            let cutoff = Date().addingTimeInterval(-30 * 86_400)
            let sealed = try Self.sealedValues(of: oldIDs, path: directory.databasePath)

            let before = try Self.snapshot(store)
            let dry = try store.prune(olderThan: cutoff, dryRun: true)
            #expect(dry.conversations == 3)
            #expect(dry.messages == 6)
            #expect(try Self.snapshot(store) == before)

            let done = try store.prune(olderThan: cutoff)
            #expect(done.conversations == 3)
            #expect(done.messages == 6)
            #expect(try counts(store) == [2, 4])
            #expect(Set(try store.conversations(ConversationQuery(limit: 10)).conversations.map(\.id)) == Set(recentIDs))
            try Self.expectGone(sealed, from: directory.databasePath)
            for index in [0, 2, 4] { #expect(try store.search("wombat\(index)").hits.isEmpty) }
            for index in [1, 3] { #expect(try store.search("wombat\(index)").hits.count == 2) }
            #expect(try store.verify().ok)
            // Nothing older is left: a second prune finds nothing.
            let nothing = try store.prune(olderThan: cutoff, dryRun: true)
            #expect(nothing.conversations == 0 && nothing.messages == 0)
        }
    }

    // MARK: - Verify

    @Test func verifyPassesOnAHealthyStore() async throws {
        try await withTemporaryDirectory { directory in
            let store = try Self.storeWithSample(directory)
            let report = try store.verify()
            #expect(report.ok)
            #expect(report.issues.isEmpty)
            #expect(report.conversations == 5)
            #expect(report.messages == 15)
            // 15 contents, metadata on some messages and conversations, titles, wrapped keys.
            #expect(report.sealedValues > 15)
        }
    }

    @Test(arguments: [("messages", "content"), ("messages", "metadata"), ("conversations", "title"), ("conversations", "metadata")])
    func verifyNamesAFlippedByteInASealedValue(_ table: String, _ column: String) async throws {
        try await withTemporaryDirectory { directory in
            let store = try Self.storeWithSample(directory)
            let id = try withRawDatabase(directory.databasePath) { db in
                try String.fetchOne(db, sql: "SELECT id FROM \(table) WHERE \(column) IS NOT NULL ORDER BY id LIMIT 1")
            }
            let rowID = try #require(id)
            var bytes = [UInt8](try rawBlob(directory.databasePath, table: table, column: column, id: rowID))
            bytes[bytes.count - 3] ^= 0x20
            try setRawBlob(directory.databasePath, table: table, column: column, id: rowID, to: Data(bytes))

            let report = try store.verify()
            #expect(!report.ok)
            // The value is named; a content that does not open also leaves its terms unaccounted
            // for, which the index summary (row "-") reports. Nothing else is flagged.
            let issue = try #require(report.issues.first { $0.table == table })
            #expect(report.issues.allSatisfy { $0 == issue || ($0.table == "message_terms" && $0.rowID == "-") }, "\(report.issues)")
            #expect(report.issueCount == report.issues.count)
            #expect(issue.table == table)
            #expect(issue.column == column)
            #expect(issue.rowID == rowID)
            #expect(issue.description.contains("\(table).\(column) of row \(rowID)"))
        }
    }

    /// The "extra terms" path: a row of terms that no message holds.
    @Test func verifyFindsAnExtraIndexEntry() async throws {
        try await withTemporaryDirectory { directory in
            let store = try Self.storeWithSample(directory)
            try withRawDatabase(directory.databasePath) { db in
                let unused = (try Int64.fetchOne(db, sql: "SELECT max(seq) FROM messages") ?? 0) + 1_000
                try db.execute(sql: "INSERT INTO message_terms (rowid, terms) VALUES (?, 'aaaaaaaa')", arguments: [unused])
            }
            let report = try store.verify()
            #expect(!report.ok)
            #expect(report.issues.contains { $0.table == "message_terms" && $0.column == "terms" && $0.rowID == "-" })
        }
    }

    /// The "missing entry" path. The index is contentless, so removing a message's terms needs
    /// its exact terms: they are computed here with the store's own blinder (`@testable` access
    /// to the key ring's `TokenBlinder` for the message's index key), then removed with FTS5's
    /// 'delete' command through raw SQL, as a damaged or tampered index would lack them.
    @Test func verifyFindsAMessageMissingFromTheIndex() async throws {
        try await withTemporaryDirectory { directory in
            let store = try Self.storeWithSample(directory)
            var messages: [Message] = []
            for conversation in try store.conversations(ConversationQuery(limit: 10)).conversations {
                messages += try store.transcript(conversation.id).messages
            }
            let message = try #require(messages.first { !$0.content.isEmpty })
            let (searchRowID, keyID) = try withRawDatabase(directory.databasePath) { db -> (Int64, Int64) in
                let row = try #require(try Row.fetchOne(db, sql: "SELECT seq, index_key_id FROM messages WHERE id = ?", arguments: [message.id.rawValue]))
                return (row["seq"], row["index_key_id"])
            }
            let blinder = try #require(store.keyRing.current.blinders[KeyID(rawValue: UInt32(keyID))])
            let terms = blinder.document(for: message.content)
            #expect(!terms.isEmpty)
            try withRawDatabase(directory.databasePath) { db in
                try db.execute(
                    sql: "INSERT INTO message_terms (message_terms, rowid, terms) VALUES ('delete', ?, ?)", arguments: [searchRowID, terms])
            }
            let report = try store.verify()
            #expect(!report.ok)
            #expect(report.issues.contains { $0.table == "message_terms" && $0.column == "terms" && $0.rowID == message.id.rawValue })
        }
    }

    // MARK: - Backup

    /// Four writers append while the backup runs; the backup holds at least every message each
    /// writer had seen committed before the backup began (a prefix of its sequence), opens with
    /// the same key, verifies, is 0600, and is never overwritten.
    @Test func backupWhileWritersRunIsConsistentAndPrivate() async throws {
        try await withTemporaryDirectory { directory in
            let key = MasterKey.generate()
            let store = try makeStore(in: directory, key: key)
            let writers = 4
            var conversations: [ConversationID] = []
            for writer in 0..<writers { conversations.append(try await store.createConversation(NewConversation(title: "writer \(writer)"))) }
            let committed = (0..<writers).map { _ in InterchangeCounter() }
            let stop = InterchangeCounter()
            let backupPath = directory.file("backup.db")

            let before: [Int] = try await withThrowingTaskGroup(of: Void.self) { group in
                for writer in 0..<writers {
                    let conversation = conversations[writer]
                    let counter = committed[writer]
                    group.addTask {
                        var index = 0
                        while stop.value == 0 {
                            try await store.append(NewMessage(role: .user, content: "writer \(writer) message \(index)"), to: conversation)
                            index += 1
                            counter.set(index)
                        }
                    }
                }
                // Wait (with a generous give-up bound) until every writer has committed a few messages.
                let deadline = ContinuousClock.now + .seconds(60)
                while committed.contains(where: { $0.value < 10 }), ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(20))
                }
                let before = committed.map(\.value)
                try await store.backup(to: backupPath)
                stop.set(1)
                try await group.waitForAll()
                return before
            }
            #expect(before.allSatisfy { $0 >= 10 }, "writers did not get going: \(before)")
            #expect(fileMode(backupPath) == 0o600)

            let backup = try ChatLogStore.open(at: backupPath, key: .key(key))
            await #expect(try backup.verify().ok)
            for writer in 0..<writers {
                let contents = try await backup.transcript(conversations[writer]).messages.map(\.content)
                #expect(contents.count >= before[writer])
                #expect(contents.count <= committed[writer].value)
                #expect(contents == (0..<contents.count).map { "writer \(writer) message \($0)" })
            }
            try backup.close()

            // A second backup to the same path is refused and leaves the first as it was.
            let bytes = try fileBytes(backupPath)
            let refusal = Self.refusal { _ = try store.backup(to: backupPath) }
            #expect(refusal.contains("already exists"), "\(refusal)")
            #expect(try fileBytes(backupPath) == bytes)
            // Nor does it write through a symbolic link.
            let linkTarget = directory.file("elsewhere.db")
            #expect(symlink(linkTarget, directory.file("link.db")) == 0)
            #expect(throws: ChatLogError.self) { try store.backup(to: directory.file("link.db")) }
            #expect(!FileManager.default.fileExists(atPath: linkTarget))
        }
    }

    // MARK: - Stats

    @Test func statsMatchTheDataWritten() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            var generator = SeededRandom(seed: 42)
            let models: [String?] = [nil, "gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet"]
            let day: Int64 = 86_400_000
            // Times across a few UTC days, including both sides of midnight and one before 1970.
            let times: [Int64] = [
                1_700_000_000_000, 1_700_006_399_999, 1_700_006_400_000, 1_700_092_799_999, 1_700_092_800_000 + 3 * day, -1, 0,
            ]
            var written: [NewMessage] = []
            var items: [ImportedConversation] = []
            for index in 0..<40 {
                var messages: [NewMessage] = []
                for _ in 0..<(1 + Int(generator.next() % 4)) {
                    let role = Role.allCases[Int(generator.next() % 4)]
                    let message = NewMessage(
                        role: role, content: "m", model: models[Int(generator.next() % 4)],
                        promptTokens: generator.next() % 3 == 0 ? nil : Int(generator.next() % 1_000),
                        completionTokens: generator.next() % 3 == 0 ? nil : Int(generator.next() % 500),
                        createdAt: Date(unixMilliseconds: times[Int(generator.next() % UInt64(times.count))]))
                    messages.append(message)
                }
                written += messages
                items.append(ImportedConversation(sourceID: "\(index)", conversation: NewConversation(), messages: messages))
            }
            _ = try store.importConversations(format: "stats-tests", records: items.map { .success($0) })

            func expected(_ group: (NewMessage) -> String?) -> [StatsRow] {
                var rows: [String?: (conversations: Set<Int>, messages: Int, prompt: Int, completion: Int)] = [:]
                for (conversation, item) in items.enumerated() {
                    for message in item.messages {
                        var row = rows[group(message), default: ([], 0, 0, 0)]
                        row.conversations.insert(conversation)
                        row.messages += 1
                        row.prompt += message.promptTokens ?? 0
                        row.completion += message.completionTokens ?? 0
                        rows[group(message)] = row
                    }
                }
                return rows.map {
                    StatsRow(
                        group: $0.key, conversations: $0.value.conversations.count, messages: $0.value.messages, promptTokens: $0.value.prompt,
                        completionTokens: $0.value.completion)
                }.sorted { ($0.group ?? "") < ($1.group ?? "") }
            }
            func utcDay(_ message: NewMessage) -> String { String(Timestamps.format(message.createdAt!).prefix(10)) }

            #expect(try store.stats() == expected { _ in nil })
            #expect(try store.stats().first?.messages == written.count)
            #expect(try store.stats(by: .model) == expected { $0.model })
            #expect(try store.stats(by: .role) == expected { $0.role.rawValue })
            #expect(try store.stats(by: .day) == expected(utcDay))
            #expect(Set(try store.stats(by: .day).compactMap(\.group)).isSuperset(of: ["1969-12-31", "1970-01-01", "2023-11-14", "2023-11-15"]))

            // A range counts only the messages in it.
            let since = Date(unixMilliseconds: 1_700_006_400_000)
            let until = Date(unixMilliseconds: 1_700_092_800_000)
            let inRange = written.filter { $0.createdAt! >= since && $0.createdAt! < until }
            let ranged = try store.stats(since: since, until: until)
            #expect(ranged.count == 1)
            #expect(ranged.first?.messages == inRange.count)
            #expect(ranged.first?.promptTokens == inRange.reduce(0) { $0 + ($1.promptTokens ?? 0) })

            // An empty range is one row of zeros.
            #expect(
                try store.stats(since: Date(unixMilliseconds: 2_000_000_000_000))
                    == [StatsRow(group: nil, conversations: 0, messages: 0, promptTokens: 0, completionTokens: 0)])
        }
    }

    // MARK: - Helpers

    static func export(_ store: ChatLogStore, _ filter: ExportFilter = ExportFilter()) throws -> Data {
        var data = Data()
        try store.exportOpenAIJSONL(filter) { data.append($0) }
        return data
    }

    static func firstDifferentLine(_ first: Data, _ second: Data) -> String {
        let a = first.split(separator: 0x0A)
        let b = second.split(separator: 0x0A)
        for index in 0..<max(a.count, b.count) {
            let left = index < a.count ? String(decoding: a[index], as: UTF8.self) : "<none>"
            let right = index < b.count ? String(decoding: b[index], as: UTF8.self) : "<none>"
            if left != right { return "line \(index + 1) differs:\n\(left.prefix(2_000))\n\(right.prefix(2_000))" }
        }
        return "no line differs"
    }

    /// The text of the `invalidInput` error that `body` throws, or a description of what happened instead.
    static func refusal(_ body: () throws -> Void) -> String {
        do {
            try body()
            return "<no error>"
        } catch let error as ChatLogError {
            if case .invalidInput(let why) = error { return why }
            return "<another error: \(error)>"
        } catch {
            return "<another error: \(error)>"
        }
    }

    static func goodLine(_ text: String) -> String {
        "{\"messages\": [{\"role\": \"user\", \"content\": \"\(text)\"}]}"
    }

    /// A store holding `Tests/Fixtures/openai/sample.jsonl` (5 conversations, 15 messages).
    static func storeWithSample(_ directory: TemporaryDirectory) throws -> ChatLogStore {
        let store = try makeStore(in: directory)
        let report = try store.importConversations(format: OpenAIJSONL.format, records: OpenAIJSONL.records(path: sampleJSONL))
        guard report.conversations == 5, report.messages == 15 else { throw TestSupportError("sample.jsonl imported \(report)") }
        return store
    }

    /// What an import must leave alone: the whole export, the counts, the import bookkeeping.
    struct Snapshot: Equatable {
        let export: Data
        let counts: [Int]
        let imports: Int
        let importKey: Bool
    }

    static func snapshot(_ store: ChatLogStore) throws -> Snapshot {
        let (imports, importKey) = try store.read { db in
            (
                try Int.fetchOne(db, sql: "SELECT count(*) FROM imports") ?? -1,
                try Row.fetchOne(db, sql: "SELECT 1 FROM chatlog_meta WHERE name = 'import_key'") != nil
            )
        }
        return Snapshot(export: try export(store), counts: try counts(store), imports: imports, importKey: importKey)
    }

    /// Writes `before` lines, one line of exactly `length` bytes (a valid-looking JSON record), then `after` lines.
    static func writeHugeLineFile(_ path: String, length: Int, before: [String], after: [String]) throws {
        guard FileManager.default.createFile(atPath: path, contents: nil) else { throw TestSupportError("cannot create \(path)") }
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        defer { try? handle.close() }
        try handle.write(contentsOf: Data(before.map { $0 + "\n" }.joined().utf8))
        let head = Data("{\"messages\": [{\"role\": \"user\", \"content\": \"".utf8)
        let tail = Data("\"}]}".utf8)
        try handle.write(contentsOf: head)
        var remaining = length - head.count - tail.count
        let chunk = Data(repeating: UInt8(ascii: "a"), count: 1 << 20)
        while remaining > 0 {
            let size = min(remaining, chunk.count)
            try handle.write(contentsOf: chunk.prefix(size))
            remaining -= size
        }
        try handle.write(contentsOf: tail + Data("\n".utf8))
        try handle.write(contentsOf: Data(after.map { $0 + "\n" }.joined().utf8))
    }

    /// Every sealed value of the conversations and their messages, read raw (the ciphertext).
    static func sealedValues(of ids: [ConversationID], path: String) throws -> [[UInt8]] {
        try withRawDatabase(path) { db in
            var values: [[UInt8]] = []
            for id in ids {
                let conversation = try #require(
                    try Row.fetchOne(db, sql: "SELECT seq, title, subject, metadata FROM conversations WHERE id = ?", arguments: [id.rawValue]))
                for column in ["title", "subject", "metadata"] {
                    if let data = conversation[column] as Data? { values.append([UInt8](data)) }
                }
                for row in try Row.fetchAll(
                    db, sql: "SELECT content, metadata FROM messages WHERE conversation_seq = ?", arguments: [conversation["seq"] as Int64])
                {
                    for column in ["content", "metadata"] {
                        if let data = row[column] as Data? { values.append([UInt8](data)) }
                    }
                }
            }
            return values
        }
    }

    static func storeFiles(_ path: String) -> [String: [UInt8]] {
        var files: [String: [UInt8]] = [:]
        for suffix in ["", "-wal", "-shm", "-journal"] {
            if let data = FileManager.default.contents(atPath: path + suffix) { files[path + suffix] = [UInt8](data) }
        }
        return files
    }

    /// No sealed value, nor its nonce, nor its MAC and ciphertext, is left in any file of the store.
    static func expectGone(_ sealed: [[UInt8]], from path: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let files = storeFiles(path)
        #expect(files[path] != nil, sourceLocation: sourceLocation)
        for (name, bytes) in files {
            for value in sealed {
                let nonce = Array(value[5..<SealedValue.headerSize])
                let body = Array(value[SealedValue.headerSize...])
                #expect(!contains(bytes, value), "a deleted sealed value is still in \(name)", sourceLocation: sourceLocation)
                #expect(!contains(bytes, nonce), "a deleted value's nonce is still in \(name)", sourceLocation: sourceLocation)
                #expect(!contains(bytes, body), "a deleted value's ciphertext is still in \(name)", sourceLocation: sourceLocation)
            }
        }
    }
}

// MARK: - A corpus with every edge case

private enum InterchangeCorpus {
    static let texts: [String] = [
        "",
        "\u{0}",
        "plain words about the weather",
        "Café crème, naïve façade — 東京で寿司を食べる 🍣🎉",
        "nul\u{0}bytes\u{0}inside\u{0}",
        "line one\nline two\r\n\tindented\n\n",
        "quote \" backslash \\ slash / <tag> &amp; {\"json\": [1]}",
        "\u{2028}line separator\u{2029}paragraph\u{FEFF}bom\u{200B}zero width",
        "e\u{301} é ﬁ ß İ ς Σ ǅ",
        "\u{1B}[31mred\u{1B}[0m \u{7F} \u{1} \u{9F}",
        "👩🏽‍💻 🇫🇷 עברית مرحبا हिन्दी 한국어",
        "   ",
        String(repeating: "a longer message with many words ", count: 40),
    ]
    static let models: [String?] = [nil, nil, "gpt-4o", "gpt-4o-mini-2024-07-18", "claude-3-5-sonnet", "llama3.1:8b", "模型"]
    static let finishReasons: [String?] = [nil, "stop", "length", "tool_calls", "content_filter"]

    static func metadata(_ generator: inout SeededRandom) -> JSONValue? {
        // Mostly none (JSON is the slow part of a debug build); every shape below still occurs
        // hundreds of times in 5,000 conversations.
        switch generator.next() % 24 {
        case 0..<16: return nil
        case 16:
            return .object([
                "app": .string("interchange"),
                "nested": .object([
                    "list": .array([.integer(1), .number(2.5), .bool(true), .null, .string("ü\u{0}"), .array([])]),
                    "empty": .object([:]), "deeper": .object(["a": .object(["b": .object(["c": .number(-0.125)])])]),
                ]),
                "big": .integer(Int64.max), "small": .integer(Int64.min), "ключ": .string("значение"), "name": .null,
            ])
        case 17:
            return .object([
                "tool_calls": .array([
                    .object([
                        "id": .string("call_\(generator.next() % 1000)"), "type": .string("function"),
                        "function": .object(["name": .string("get_weather"), "arguments": .string("{\"city\": \"Paris\"}")]),
                    ])
                ]),
                "tool_call_id": .string("call_1"), "name": .string("get_weather"), "refusal": .string("no"),
            ])
        case 18: return .object([:])
        case 19: return .array([.string("a"), .object(["b": .null])])
        case 20: return .string("just a string")
        case 21: return .integer(7)
        case 22: return .bool(false)
        default: return .null
        }
    }

    /// Unix milliseconds: mostly recent, with the epoch, sub-second edges and a few old dates.
    static func time(_ generator: inout SeededRandom) -> Date {
        let edges: [Int64] = [0, 1, 999, 1_000, -1, -999, 1_719_826_202_750, 1_700_000_000_999, 4_102_444_799_999, -2_208_988_800_000]
        let milliseconds: Int64
        if generator.next() % 20 == 0 {
            milliseconds = edges[Int(generator.next() % UInt64(edges.count))]
        } else {
            milliseconds = 946_684_800_000 + Int64(generator.next() % 1_000_000_000_000)
        }
        return Date(unixMilliseconds: milliseconds)
    }

    static func conversation(_ index: Int, _ generator: inout SeededRandom) -> ImportedConversation {
        func pick<T>(_ values: [T]) -> T { values[Int(generator.next() % UInt64(values.count))] }
        func optionalCount(_ range: UInt64) -> Int? { generator.next() % 4 == 0 ? nil : Int(generator.next() % range) }
        let titles: [String?] = [nil, "", "Conversation \(index)", "Café ☕ \(index)", "title with\nnewline and \u{0}"]
        let subjects: [String?] = [nil, nil, "user-\(index % 97)", "ユーザー\(index % 13)"]
        var conversation = NewConversation(
            title: pick(titles), subject: pick(subjects), metadata: metadata(&generator), createdAt: time(&generator))
        conversation.id = ConversationID.make()
        let count = index % 50 == 0 ? 0 : 1 + Int(generator.next() % 3)
        var messages: [NewMessage] = []
        for position in 0..<count {
            var text = pick(texts)
            if generator.next() % 2 == 0 { text += " unique\(index)x\(position)" }
            var message = NewMessage(
                role: pick(Role.allCases), content: text, model: pick(models), promptTokens: optionalCount(100_000),
                completionTokens: optionalCount(10_000), latencyMilliseconds: optionalCount(120_000), finishReason: pick(finishReasons),
                metadata: metadata(&generator), createdAt: time(&generator))
            message.id = MessageID.make()
            messages.append(message)
        }
        return ImportedConversation(sourceID: "corpus:\(index)", conversation: conversation, messages: messages)
    }

    /// Where a stored transcript differs from what was written, or nil.
    static func difference(_ transcript: Transcript, _ item: ImportedConversation) -> String? {
        let id = transcript.conversation.id.rawValue
        let written = item.conversation
        if transcript.conversation.title != written.title { return "\(id): title" }
        if transcript.conversation.subject != written.subject { return "\(id): subject" }
        if transcript.conversation.metadata != written.metadata {
            return "\(id): metadata \(String(describing: transcript.conversation.metadata)) != \(String(describing: written.metadata))"
        }
        if transcript.conversation.createdAt.unixMilliseconds != written.createdAt!.unixMilliseconds { return "\(id): created_at" }
        if transcript.messages.count != item.messages.count { return "\(id): \(transcript.messages.count) messages" }
        for (stored, message) in zip(transcript.messages, item.messages) {
            let place = "\(id) message \(stored.position)"
            if stored.id != message.id { return "\(place): id" }
            if stored.role != message.role { return "\(place): role" }
            if stored.content != message.content { return "\(place): content" }
            if stored.model != message.model { return "\(place): model" }
            if stored.promptTokens != message.promptTokens || stored.completionTokens != message.completionTokens { return "\(place): tokens" }
            if stored.latencyMilliseconds != message.latencyMilliseconds { return "\(place): latency" }
            if stored.finishReason != message.finishReason { return "\(place): finish reason" }
            if stored.metadata != message.metadata {
                return "\(place): metadata \(String(describing: stored.metadata)) != \(String(describing: message.metadata))"
            }
            if stored.createdAt.unixMilliseconds != message.createdAt!.unixMilliseconds {
                return "\(place): created_at \(stored.createdAt.unixMilliseconds) != \(message.createdAt!.unixMilliseconds)"
            }
        }
        return nil
    }

    /// The first field in which two transcripts differ (no secret here: test data).
    static func describe(_ original: Transcript, _ imported: Transcript) -> String {
        let id = original.conversation.id.rawValue
        let a = original.conversation
        let b = imported.conversation
        if a.title != b.title { return "\(id): title \(String(describing: a.title)) → \(String(describing: b.title))" }
        if a.subject != b.subject { return "\(id): subject" }
        if a.metadata != b.metadata { return "\(id): metadata \(String(describing: a.metadata)) → \(String(describing: b.metadata))" }
        if a.createdAt != b.createdAt { return "\(id): created_at \(a.createdAt.unixMilliseconds) → \(b.createdAt.unixMilliseconds)" }
        if a.updatedAt != b.updatedAt { return "\(id): updated_at \(a.updatedAt.unixMilliseconds) → \(b.updatedAt.unixMilliseconds)" }
        if a.messageCount != b.messageCount || original.messages.count != imported.messages.count { return "\(id): message count" }
        for (x, y) in zip(original.messages, imported.messages) where x != y {
            let place = "\(id) message \(x.position)"
            if x.id != y.id { return "\(place): id" }
            if x.content != y.content { return "\(place): content \(x.content.debugDescription) → \(y.content.debugDescription)" }
            if x.metadata != y.metadata { return "\(place): metadata \(String(describing: x.metadata)) → \(String(describing: y.metadata))" }
            if x.createdAt != y.createdAt { return "\(place): created_at \(x.createdAt.unixMilliseconds) → \(y.createdAt.unixMilliseconds)" }
            return "\(place): \(x) → \(y)"
        }
        return "\(id): differs"
    }
}

/// Values recorded from `@Sendable` callbacks.
private final class InterchangeRecorder<Value: Sendable>: @unchecked Sendable {
    // @unchecked Sendable: every access holds `lock`.
    private let lock = NSLock()
    private var stored: [Value] = []
    func add(_ value: Value) { lock.withLock { stored.append(value) } }
    func removeAll() { lock.withLock { stored.removeAll() } }
    var values: [Value] { lock.withLock { stored } }
}

private final class InterchangeCounter: @unchecked Sendable {
    // @unchecked Sendable: every access holds `lock`.
    private let lock = NSLock()
    private var stored = 0
    func set(_ value: Int) { lock.withLock { stored = value } }
    var value: Int { lock.withLock { stored } }
}
