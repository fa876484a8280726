import ChatLogTestSupport
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@testable import ChatLog
@testable import ChatLogPostgres

extension PostgreSQLSuites {
    /// `import` and `prune` through the storage seam: one source run against a SQLite store and a
    /// PostgreSQL store gives the same reports, transcripts and searches.
    @Suite("Import and prune on PostgreSQL")
    struct PostgresImportTests {
        static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures").path

        /// One input of each reader: (format, file, reader).
        enum Input: String, CaseIterable, Sendable, CustomTestStringConvertible {
            case openAI, openAIFixture, chatGPT, llm, llmClassic, llmUpgraded
            var testDescription: String { rawValue }

            var format: String {
                switch self {
                case .openAI, .openAIFixture: OpenAIJSONL.format
                case .chatGPT: ChatGPTExport.format
                case .llm, .llmClassic, .llmUpgraded: LLMLogs.format
                }
            }

            /// The records of the input; those with a subject (which a PostgreSQL store refuses, tested
            /// on their own) left out.
            func records(_ generated: String) throws -> [Result<ImportedConversation, ImportIssue>] {
                // A conversation without a time is dated when sealed: given one here, so both stores agree.
                try all(generated).filter { record in (try? record.get())?.conversation.subject == nil }.map { record in
                    record.map { conversation in
                        var dated = conversation
                        dated.conversation.createdAt = dated.conversation.createdAt ?? Date(timeIntervalSince1970: 1_700_000_000)
                        return dated
                    }
                }
            }

            func all(_ generated: String) throws -> [Result<ImportedConversation, ImportIssue>] {
                switch self {
                case .openAI: Array(try OpenAIJSONL.records(path: generated))
                case .openAIFixture: Array(try OpenAIJSONL.records(path: fixtures + "/openai/sample.jsonl"))
                case .chatGPT: try ChatGPTExport.records(path: fixtures + "/chatgpt/conversations.json")
                case .llm: try LLMLogs.records(path: fixtures + "/llm/logs.db")
                case .llmClassic: try LLMLogs.records(path: fixtures + "/llm/logs-classic.db")
                case .llmUpgraded: try LLMLogs.records(path: fixtures + "/llm/logs-upgraded.db")
                }
            }
        }

        /// An openai-jsonl file of `count` conversations (two messages each) with chatlog's fields:
        /// ids given (kept when free), times `daysAgo` days back (a conversation's index in days
        /// for nil), and a message id repeated from an earlier record (it gets a new one).
        static func jsonl(count: Int, ids: [ConversationID]? = nil, daysAgo: Int? = nil, extra: [String] = []) -> String {
            let words = ["refund", "card", "charged", "twice", "paypal", "invoice", "zażółć", "naïve", "日本語", "delivery", "late", "broken"]
            var random = SplitMix64(seed: 0x1A7)
            var lines: [String] = []
            let now = Date().timeIntervalSince1970
            var messageIDs: [String] = []
            for index in 0..<count {
                let created = Date(timeIntervalSince1970: now - (Double(daysAgo ?? index) + 0.5) * 86_400 - Double(index) / 1000)
                let (conversationTime, replyTime) = (Timestamps.format(created), Timestamps.format(created.addingTimeInterval(0.5)))
                let text = (0..<(3 + Int(random.next() % 6))).map { _ in words[Int(random.next() % 12)] }.joined(separator: " ")
                let id = ids.map { #""id": "\#($0[index % $0.count].rawValue)", "# } ?? ""
                // Every fifth record repeats the second message id of the record two before.
                let messageID = index % 5 == 4 ? messageIDs[index - 2] : MessageID.make().rawValue
                messageIDs.append(messageID)
                lines.append(
                    #"{\#(id)"title": "conversation \#(index)", "created_at": "\#(conversationTime)", "metadata": {"n": \#(index)}, "messages": ["#
                        + #"{"role": "user", "content": "\#(text) number\#(index)", "created_at": "\#(conversationTime)"}, "#
                        + #"{"id": "\#(messageID)", "role": "assistant", "content": "answer \#(words[index % 12])", "model": "gpt-4o", "#
                        + #""usage": {"prompt_tokens": \#(index), "completion_tokens": 3}, "created_at": "\#(replyTime)"}]}"#)
            }
            return (lines + extra).joined(separator: "\n") + "\n"
        }

        /// The ids in `lines` replaced by their order of first appearance (imports without ids
        /// get new ones on each store).
        static func normalized(_ lines: [String]) -> [String] {
            var names: [String: String] = [:]
            let pattern = try! NSRegularExpression(pattern: "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
            return lines.map { line in
                var result = ""
                var last = line.startIndex
                for match in pattern.matches(in: line, range: NSRange(line.startIndex..., in: line)) {
                    let range = Range(match.range, in: line)!
                    let id = String(line[range])
                    if names[id] == nil { names[id] = "#\(names.count)" }
                    result += line[last..<range.lowerBound] + names[id]!
                    last = range.upperBound
                }
                return result + line[last...]
            }
        }

        static func report(_ report: ImportReport) -> String {
            "imported \(report.conversations) (\(report.messages)); duplicates \(report.duplicates); skipped \(report.skipped.map(\.description))"
        }

        /// Imports `input` twice (the second adds nothing) in small batches; the reports and what
        /// a reader sees after.
        static func importTwice(_ store: ChatLogStore, _ input: Input, _ records: [Result<ImportedConversation, ImportIssue>]) async throws -> [String] {
            let first = try await store.importConversations(format: input.format, records: records, batchSize: 3)
            #expect(first.conversations > 0 && first.skipped.isEmpty, "\(input)")
            let second = try await store.importConversations(format: input.format, records: records, batchSize: 4)
            #expect(second.conversations == 0 && second.messages == 0 && second.duplicates == first.conversations + first.duplicates, "\(input)")
            return [Self.report(first), Self.report(second)] + (try await PostgresStoreTests.summary(store))
        }

        @Test("every reader's import (openai-jsonl, chatgpt, llm) gives the same report, transcripts and searches on PostgreSQL as on SQLite; a rerun adds nothing; given ids are kept when free", arguments: Input.allCases)
        func sameImportAsSQLite(input: Input) async throws {
            let ids = (0..<8).map { _ in ConversationID.make() }
            let key = MasterKey.generate()
            try await withSQLiteLocation { path in
                let generated = (path as NSString).deletingLastPathComponent + "/in.jsonl"
                // 12 records, 8 ids: records 8…11 repeat ids 0…3 (same source: duplicates).
                try Data(Self.jsonl(count: 12, ids: ids).utf8).write(to: URL(fileURLWithPath: generated))
                // Read once: a record without times is dated when read.
                let records = try input.records(generated)
                let sqlite = try await {
                    let store = try await ChatLogStore.create(url: path, key: .key(key))
                    defer { try? store.close() }
                    #expect(store.storage == nil)
                    return try await Self.importTwice(store, input, records)
                }()
                try await withPostgresLocation { url, database in
                    let store = try await ChatLogStore.create(url: url, key: .key(key))
                    defer { try? store.close() }
                    let postgres = try await Self.importTwice(store, input, records)
                    #expect(sqlite.count > 4)
                    for (index, (left, right)) in zip(Self.normalized(sqlite), Self.normalized(postgres)).enumerated() where left != right {
                        Issue.record("line \(index): SQLite «\(left)» PostgreSQL «\(right)»")
                        break
                    }
                    #expect(sqlite.count == postgres.count)
                    #expect(try database.psql("SELECT count(*) FROM imports") == (try database.psql("SELECT count(*) FROM conversations")))
                    if input == .openAI {
                        #expect(sqlite[0] == "imported 8 (16); duplicates 4; skipped []", "\(sqlite[0])")
                        // The ids given are the ids stored; a repeated message id got a new one.
                        for id in ids { #expect(try await store.transcript(id).messages.count == 2) }
                        let messageIDs = try database.psql("SELECT count(DISTINCT id) FROM messages")
                        #expect(messageIDs == "16")
                    }
                    await #expect(try store.verify().ok)
                }
            }
        }

        @Test("a bad record with --on-error fail stops the import and nothing of its batch is written; on PostgreSQL a conversation with a subject needs CHATLOG_SUBJECT_KEYS (refused without it, nothing of its batch written) and is sealed under its subject key with it")
        func badRecordsAndSubjects() async throws {
            try await withSQLiteLocation { path in
                let directory = (path as NSString).deletingLastPathComponent
                let bad = directory + "/bad.jsonl"
                try Data((Self.jsonl(count: 5, extra: [#"{"messages": "not a list"}"#, "{}"])).utf8).write(to: URL(fileURLWithPath: bad))
                let subject = directory + "/subject.jsonl"
                let withSubject = #"{"subject": "user-42", "messages": [{"role": "user", "content": "secret of user-42"}]}"#
                try Data((Self.jsonl(count: 2, extra: [withSubject, #"{"messages": [{"role": "user", "content": "after"}]}"#])).utf8)
                    .write(to: URL(fileURLWithPath: subject))
                let key = MasterKey.generate()
                var errors: [Backend: String] = [:]
                for backend in Backend.allCases {
                    let run: (String) async throws -> Void = { location in
                        let store = try await ChatLogStore.create(url: location, key: .key(key))
                        defer { try? store.close() }
                        // Batches of 4: lines 1–4 are written, line 5 is in the batch that line 6 stops.
                        do {
                            _ = try await store.importConversations(format: OpenAIJSONL.format, records: try OpenAIJSONL.records(path: bad), batchSize: 4)
                            Issue.record("\(backend): a bad record was accepted")
                        } catch {
                            errors[backend] = "\(error)"
                        }
                        #expect(try await store.counts() == (4, 8), "\(backend)")
                        let skipped = try await store.importConversations(
                            format: OpenAIJSONL.format, records: try OpenAIJSONL.records(path: bad), onError: .skip, batchSize: 4)
                        #expect(Self.report(skipped).hasPrefix("imported 1 (2); duplicates 4; skipped [\"line 6: "), "\(backend) \(Self.report(skipped))")
                        #expect(skipped.skipped.map(\.location) == ["line 6", "line 7"])
                        guard backend == .postgres else { return }
                        for policy in [ImportErrorPolicy.fail, .skip] {
                            do {
                                _ = try await store.importConversations(
                                    format: OpenAIJSONL.format, records: try OpenAIJSONL.records(path: subject), onError: policy, batchSize: 10)
                                Issue.record("a conversation with a subject was imported into PostgreSQL without subject keys")
                            } catch {
                                guard case .subjectKeyStore(_, let reason)? = error as? ChatLogError else { throw error }
                                #expect(reason.contains("CHATLOG_SUBJECT_KEYS"))
                                #expect(!"\(error)".contains("user-42"))
                            }
                        }
                        #expect(try await store.counts() == (5, 10))
                        try await withPostgresLocation { keysURL, _ in
                            let withKeys = try await ChatLogStore.open(url: location, key: .key(key), subjectKeys: keysURL)
                            defer { try? withKeys.close() }
                            let rest = try await withKeys.importConversations(
                                format: OpenAIJSONL.format, records: try OpenAIJSONL.records(path: subject), batchSize: 10)
                            #expect(rest.conversations == 4 && rest.skipped.isEmpty, "\(Self.report(rest))")
                            let hits = try await withKeys.search("user-42").hits
                            #expect(hits.count == 1)
                            #expect(try await withKeys.transcript(try #require(hits.first).conversationID).conversation.subject == "user-42")
                            #expect(try await withKeys.erasure.keyCounts() == (1, 0))
                        }
                    }
                    switch backend {
                    case .sqlite: try await run(path)
                    case .postgres: try await withPostgresLocation { url, _ in try await run(url) }
                    }
                }
                #expect(errors.count == 2 && errors[.sqlite] == errors[.postgres], "\(errors)")
                let error = errors[.sqlite] ?? ""
                #expect(error.contains("import stopped at line 6") && error.contains("nothing of its batch was written"), "\(error)")
            }
        }

        /// Conversations of the last 400 days (one a day), some of the old ones continued today:
        /// what survives a prune of everything inactive for 100 days.
        static func pruneScript(_ store: ChatLogStore, file: String, today: Date) async throws -> [String] {
            let imported = try await store.importConversations(format: OpenAIJSONL.format, records: try OpenAIJSONL.records(path: file))
            #expect(imported.conversations == 400)
            let page = try await store.conversations(ConversationQuery(limit: 400))
            // The 30 oldest get a message today: active again, they stay.
            for conversation in page.conversations.suffix(30) {
                _ = try await store.append(NewMessage(role: .user, content: "still here wombat", createdAt: today), to: conversation.id)
            }
            let cutoff = Date().addingTimeInterval(-100 * 86_400)
            let dry = try await store.prune(olderThan: cutoff, dryRun: true)
            let done = try await store.prune(olderThan: cutoff)
            #expect(dry == done)
            let again = try await store.prune(olderThan: cutoff)
            var lines = ["dry \(dry.conversations) \(dry.messages)", "done \(done.conversations) \(done.messages)", "again \(again.conversations)"]
            lines += try await PostgresStoreTests.summary(store)
            lines += try await store.search("wombat", limit: 100).hits.map { "wombat \($0.conversationID)" }
            // Their import records went with them: importing the file again brings back the pruned ones only.
            let reimported = try await store.importConversations(format: OpenAIJSONL.format, records: try OpenAIJSONL.records(path: file))
            lines.append("reimported \(Self.report(reimported))")
            return lines
        }

        @Test("prune (and --dry-run) on PostgreSQL deletes the same conversations as on SQLite (no activity since the cutoff: updated_at), in batches, with their messages, terms and import records")
        func pruneSameSurvivors() async throws {
            let ids = (0..<400).map { _ in ConversationID.make() }
            let key = MasterKey.generate()
            let today = Date()
            try await withSQLiteLocation { path in
                let file = (path as NSString).deletingLastPathComponent + "/old.jsonl"
                try Data(Self.jsonl(count: 400, ids: ids).utf8).write(to: URL(fileURLWithPath: file))
                let sqlite = try await {
                    let store = try await ChatLogStore.create(url: path, key: .key(key))
                    defer { try? store.close() }
                    return try await Self.pruneScript(store, file: file, today: today)
                }()
                #expect(sqlite[0] == "dry 270 540" && sqlite[1] == "done 270 540" && sqlite[2] == "again 0", "\(sqlite.prefix(3))")
                #expect(sqlite.last == "reimported imported 270 (540); duplicates 130; skipped []")
                try await withPostgresLocation { url, database in
                    let store = try await ChatLogStore.create(url: url, key: .key(key))
                    defer { try? store.close() }
                    let terms = try await Self.pruneScriptCheckingTerms(store, file: file, today: today, database)
                    for (index, (left, right)) in zip(Self.normalized(sqlite), Self.normalized(terms)).enumerated() where left != right {
                        Issue.record("line \(index): SQLite «\(left)» PostgreSQL «\(right)»")
                        break
                    }
                    #expect(sqlite.count == terms.count)
                }
            }
        }

        /// ``pruneScript(_:file:today:)`` on PostgreSQL, checking after the prune that no term, message or
        /// import record of a deleted conversation is left.
        static func pruneScriptCheckingTerms(_ store: ChatLogStore, file: String, today: Date, _ database: PostgresDatabase) async throws -> [String] {
            let lines = try await Self.pruneScript(store, file: file, today: today)
            // After the re-import everything is back: 400 conversations, each with its import record.
            #expect(try database.psql("SELECT count(*) FROM imports") == "400")
            // Terms are a column of their message's row (migration 0010): those of deleted messages went with them;
            // every message there has its own.
            #expect(try database.psql("SELECT count(*) FROM messages WHERE terms IS NULL") == "0")
            return lines
        }

        @Test("prune on PostgreSQL while another handle appends to the conversations it is deleting: every append that succeeded is kept with its conversation, every other one failed with conversationNotFound and its conversation is gone")
        func pruneWhileWriting() async throws {
            try await withPostgresLocation { url, _ in
                let key = MasterKey.generate()
                let pruner = try await ChatLogStore.create(url: url, key: .key(key))
                let writer = try await ChatLogStore.open(url: url, key: .key(key))
                defer {
                    try? pruner.close()
                    try? writer.close()
                }
                let old = Date().addingTimeInterval(-200 * 86_400)
                var ids: [ConversationID] = []
                let records = (0..<600).map { index -> Result<ImportedConversation, ImportIssue> in
                    let id = ConversationID.make()
                    ids.append(id)
                    let time = old.addingTimeInterval(Double(index))
                    return .success(
                        ImportedConversation(
                            sourceID: "c\(index)", conversation: NewConversation(title: "c\(index)", createdAt: time, id: id),
                            messages: [NewMessage(role: .user, content: "old \(index)", createdAt: time)]))
                }
                #expect(try await pruner.importConversations(format: "test", records: records, batchSize: 600).conversations == 600)
                // The writer starts at the conversations the prune reaches last and walks towards it.
                async let pruned = pruner.prune(olderThan: Date().addingTimeInterval(-100 * 86_400))
                var kept: [ConversationID] = []
                var refused: [ConversationID] = []
                for id in ids.reversed() {
                    do {
                        _ = try await writer.append(NewMessage(role: .assistant, content: "still here"), to: id)
                        kept.append(id)
                    } catch ChatLogError.conversationNotFound {
                        refused.append(id)
                    }
                }
                let result = try await pruned
                // How the two meet depends on timing (usually the prune reaches most first); what must hold does not.
                #expect(kept.count + refused.count == 600, "kept \(kept.count), refused \(refused.count)")
                #expect(result.conversations == 600 - kept.count && result.messages == 600 - kept.count, "\(result)")
                for id in kept { #expect(try await writer.transcript(id).messages.map(\.content).last == "still here") }
                for id in refused.prefix(20) {
                    await #expect(throws: ChatLogError.conversationNotFound(id.rawValue)) { try await writer.transcript(id) }
                }
                #expect(try await writer.counts() == (kept.count, 2 * kept.count))
            }
        }

        @Test("the seam's import operations on both backends: the meta value set once (concurrent callers agree), duplicates by source hash, ids taken meanwhile refuse the batch unwritten, a stale key refuses it; inactive conversations counted and deleted with their terms", arguments: Backend.allCases)
        func seamOperations(backend: Backend) async throws {
            try await withSQLiteStore { store in
                try await withStorage(backend) { harness in
                    let storage = harness.storage
                    let (meta, keys) = try storedMetaAndKeys(store)
                    try await storage.initialize(meta: meta, keys: keys)
                    let checkValues = writeGuard(store).acceptedCheckValues
                    // Under a master key that is no longer the store's (a rewrap): refused, nothing stored.
                    await #expect(throws: StorageConflict.masterKeyChanged) {
                        try await storage.setMetaIfAbsent("probe", .text("stale"), checkValues: [Data(MasterKey.generate().checkValueV2)])
                    }
                    #expect(try await storage.meta("probe") == nil)
                    let values = try await withThrowingTaskGroup(of: MetaValue.self) { group in
                        for index in 0..<8 {
                            group.addTask { try await storage.setMetaIfAbsent("probe", .blob(Data([UInt8(index)])), checkValues: checkValues) }
                        }
                        return try await group.reduce(into: [MetaValue]()) { $0.append($1) }
                    }
                    #expect(Set(values).count == 1 && values.count == 8)
                    #expect(try await storage.meta("probe") == values[0])
                    #expect(try await storage.setMetaIfAbsent("probe", .text("other"), checkValues: checkValues) == values[0])

                    func item(_ hash: UInt8, daysAgo: Double, messageID: MessageID = .make()) throws -> ImportedCopy {
                        let time = Date().addingTimeInterval(-daysAgo * 86_400)
                        let conversation = try store.prepare(NewConversation(title: "t\(hash)", createdAt: time), keys: store.keyRing.current)
                        var message = NewMessage(role: .user, content: "word\(hash) common", createdAt: time)
                        message.id = messageID
                        var row = SealedMessageRow(try store.prepare(message, keys: store.keyRing.current), conversationID: conversation.id)
                        row.position = 0
                        var conversationRow = SealedConversationRow(conversation)
                        conversationRow.updatedAt = row.createdAt
                        return ImportedCopy(sourceHash: Data(repeating: hash, count: 16), copy: ConversationCopy(conversation: conversationRow, messages: [row]))
                    }
                    let first = [try item(1, daysAgo: 50), try item(2, daysAgo: 40), try item(1, daysAgo: 30)]
                    let outcome = try await storage.insertImported(first, guard: writeGuard(store))
                    #expect(outcome == ImportOutcome(inserted: [first[0].copy.conversation.id, first[1].copy.conversation.id], duplicates: 1))
                    let taken = try await storage.takenIDs([first[1].copy.messages[0].id, first[0].copy.conversation.id, MessageID.make().rawValue])
                    #expect(taken == [first[1].copy.messages[0].id, first[0].copy.conversation.id])

                    // A message id another import took: nothing of the batch is written.
                    let clash = [try item(3, daysAgo: 20), try item(4, daysAgo: 10, messageID: MessageID(first[1].copy.messages[0].id)!)]
                    #expect(try await storage.insertImported(clash, guard: writeGuard(store)) == ImportOutcome(taken: [first[1].copy.messages[0].id]))
                    var stale = writeGuard(store)
                    stale.activeIndexKeyID += 1
                    await #expect(throws: StorageConflict.staleKeys) { try await storage.insertImported([try item(5, daysAgo: 1)], guard: stale) }
                    #expect(try await storage.counts() == StorageCounts(conversations: 2, messages: 2))
                    let fresh = [try item(3, daysAgo: 20), try item(2, daysAgo: 1), try item(6, daysAgo: 1)]
                    let second = try await storage.insertImported(fresh, guard: writeGuard(store))
                    #expect(second.inserted == [fresh[0].copy.conversation.id, fresh[2].copy.conversation.id] && second.duplicates == 1)

                    // Inactive for 15 days: the 50- and 20-day-old ones (the 40-day one, touched today, is active).
                    _ = try await storage.insert(
                        conversation: nil, messages: [SealedMessageRow(try store.prepare(NewMessage(role: .user, content: "again"), keys: store.keyRing.current), conversationID: ConversationID(first[1].copy.conversation.id)!)],
                        into: first[1].copy.conversation.id, guard: writeGuard(store))
                    let cutoff = Date().addingTimeInterval(-15 * 86_400).unixMilliseconds
                    #expect(try await storage.inactiveCounts(before: cutoff) == StorageCounts(conversations: 2, messages: 2))
                    let pairs = try await storage.termPairCount()
                    var doomedPairs = 0
                    for id in [first[0], fresh[0]].map(\.copy.conversation.id) {
                        doomedPairs += try await storage.messageTerms(ofConversation: id).values.reduce(0) { $0 + $1.count }
                    }
                    #expect(doomedPairs >= 4)
                    let terms = store.reblinder()
                    #expect(try await storage.deleteInactiveConversations(before: cutoff, limit: 1, terms: terms) == StorageCounts(conversations: 1, messages: 1))
                    #expect(try await storage.conversation(id: first[0].copy.conversation.id) == nil)
                    #expect(try await storage.deleteInactiveConversations(before: cutoff, limit: 5, terms: terms) == StorageCounts(conversations: 1, messages: 1))
                    #expect(try await storage.deleteInactiveConversations(before: cutoff, limit: 5, terms: terms) == StorageCounts(conversations: 0, messages: 0))
                    #expect(try await storage.counts() == StorageCounts(conversations: 2, messages: 3))
                    // Each deleted message held "wordN" and "common": its two terms are gone from the index.
                    #expect(try await storage.termPairCount() == pairs - doomedPairs)
                }
            }
        }
    }
}

extension PostgreSQLSuites.PostgresCLITests {
    @Test("two chatlog import processes of one file on PostgreSQL at once import each conversation once; their reports add up; a third finds only duplicates")
    func concurrentImporters() async throws {
        try await withPostgresLocation { url, database in
            try await withSQLiteLocation { path in
                let home = (path as NSString).deletingLastPathComponent
                let file = home + "/in.jsonl"
                try Data(PostgreSQLSuites.PostgresImportTests.jsonl(count: 600).utf8).write(to: URL(fileURLWithPath: file))
                let env = ["CHATLOG_MASTER_KEY": MasterKey.generate().exportBase64(), "CHATLOG_DB": url, "HOME": home, "PATH": "/usr/bin:/bin"]
                let created = try ProcessOutput.run(chatlogBinary(), ["init"], env: env, cwd: home)
                #expect(created.status == 0, "\(created)")
                // Started together, waited for together (not two blocking waits on the test's threads).
                let runs = try (0..<2).map { _ in
                    try BackgroundRun(chatlogBinary(), ["import", "--format", "openai-jsonl", "--batch-size", "25", "--json", file], env: env, cwd: home)
                }
                var reports: [ProcessOutput] = []
                for run in runs { reports.append(try await run.wait()) }
                var conversations = 0
                var duplicates = 0
                for report in reports {
                    #expect(report.status == 0, "\(report)")
                    let json = try JSONSerialization.jsonObject(with: Data(report.out.utf8)) as? [String: Any]
                    conversations += json?["conversations"] as? Int ?? -1
                    duplicates += json?["duplicates"] as? Int ?? -1
                }
                #expect(conversations == 600 && duplicates == 600, "\(reports)")
                #expect(try database.psql("SELECT count(*) FROM conversations") == "600")
                #expect(try database.psql("SELECT count(*) FROM messages") == "1200")
                #expect(try database.psql("SELECT count(*) FROM chatlog_meta WHERE name = 'import_key'") == "1")
                let third = try ProcessOutput.run(chatlogBinary(), ["import", "--format", "openai-jsonl", file], env: env, cwd: home)
                #expect(third.status == 0 && third.out.contains("imported 0 conversations (0 messages); 600 already imported; 0 skipped"), "\(third)")
            }
        }
    }

    /// Large enough that the import is still running when the test sees 300 conversations, on an
    /// idle machine too (a 3,000-conversation import once finished between two looks).
    static let killedImportSize = 12_000

    @Test("chatlog import of 12,000 conversations into PostgreSQL, SIGKILLed mid-import: every conversation there is whole with its import record; the rerun imports the rest once")
    func importKilledAndResumed() async throws {
        try await withPostgresLocation { url, database in
            try await withSQLiteLocation { path in
                let home = (path as NSString).deletingLastPathComponent
                let file = home + "/in.jsonl"
                try Data(PostgreSQLSuites.PostgresImportTests.jsonl(count: Self.killedImportSize).utf8).write(to: URL(fileURLWithPath: file))
                let env = ["CHATLOG_MASTER_KEY": MasterKey.generate().exportBase64(), "CHATLOG_DB": url, "HOME": home, "PATH": "/usr/bin:/bin"]
                #expect(try ProcessOutput.run(chatlogBinary(), ["init"], env: env, cwd: home).status == 0)
                let process = try ChildProcess(
                    try chatlogBinary().path, ["import", "--format", "openai-jsonl", "--batch-size", "25", file], environment: env)
                var importedBeforeKill = 0
                for _ in 0..<600 {
                    importedBeforeKill = Int((try? database.psql("SELECT count(*) FROM conversations")) ?? "") ?? 0
                    if importedBeforeKill >= 300 || process.hasExited { break }
                    try await Task.sleep(for: .milliseconds(20))
                }
                process.stop()
                let there = Int(try database.psql("SELECT count(*) FROM conversations")) ?? -1
                #expect(importedBeforeKill >= 300 && there < Self.killedImportSize && there % 25 == 0, "killed after \(there) conversations")
                let partial = try database.psql(
                    "SELECT count(*) FROM conversations c WHERE (SELECT count(*) FROM messages m WHERE m.conversation_seq = c.seq) <> 2")
                #expect(partial == "0")
                #expect(try database.psql("SELECT count(*) FROM imports") == String(there))

                let resumed = try ProcessOutput.run(chatlogBinary(), ["import", "--format", "openai-jsonl", "--json", file], env: env, cwd: home, timeout: 300)
                #expect(resumed.status == 0, "\(resumed)")
                let report = try JSONSerialization.jsonObject(with: Data(resumed.out.utf8)) as? [String: Any]
                #expect(report?["duplicates"] as? Int == there && report?["conversations"] as? Int == Self.killedImportSize - there, "\(resumed)")
                #expect(try database.psql("SELECT count(*) FROM conversations") == String(Self.killedImportSize))
                #expect(try database.psql("SELECT count(DISTINCT id) FROM messages") == String(2 * Self.killedImportSize))
                let search = try ProcessOutput.run(chatlogBinary(), ["search", "number\(Self.killedImportSize - 1)", "--json"], env: env, cwd: home)
                #expect(search.status == 0 && search.out.components(separatedBy: "\"message_id\"").count == 2, "\(search)")
            }
        }
    }
}

/// A `chatlog` process started in the background, its output in files.
final class BackgroundRun {
    let process: ChildProcess
    let io = NSTemporaryDirectory() + "/chatlog-pgimport-io-" + UUID().uuidString

    init(_ executable: URL, _ arguments: [String], env: [String: String], cwd: String) throws {
        try FileManager.default.createDirectory(atPath: io, withIntermediateDirectories: true)
        process = try ChildProcess(executable.path, arguments, environment: env, directory: cwd, stdout: .file(io + "/out"), stderr: .file(io + "/err"))
    }

    /// Waits without holding a thread of Swift's cooperative pool; killed after 5 minutes.
    func wait() async throws -> ProcessOutput {
        let exit = try await process.exit(timeout: 300)
        defer { try? FileManager.default.removeItem(atPath: io) }
        return ProcessOutput(
            status: exit.status, out: (try? String(contentsOfFile: io + "/out", encoding: .utf8)) ?? "",
            err: (try? String(contentsOfFile: io + "/err", encoding: .utf8)) ?? "")
    }
}
