import ChatLog
import Foundation
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

// Process-level tests of key rotation (docs/ARCHITECTURE.md §5, docs/OPERATIONS.md): `chatlog key rotate`,
// `rewrap` and `retire` killed at random instants, racing each other, and running while other
// processes append and delete. Stores are built and checked through the library; the rotations
// run as the built `chatlog` binary, the writers as `chatlog-test-driver`.
//
// CHATLOG_TEST_SCALE multiplies every trial count (1, the default, is the CI size; 20 is a long
// run). CHATLOG_TEST_SEED replays a run's random kill instants (the seed is printed). Each kill
// suite prints one line with its trial count and outcome.

// MARK: - JSON of the key commands

private struct RotateReportJSON: Decodable {
    let kind: String
    let dry_run: Bool
    let new_key: Bool
    let new_key_id: Int?
    let active_key_id: Int
    let rewritten: Int
    let remaining: Int
    let complete: Bool
    let rows_by_key: [String: Int]
}

private struct KeyStatusWithRetiredJSON: Decodable {
    struct Key: Decodable {
        let id: Int
        let kind: String
        let state: String
        let created_at: String
        let retired_at: String?
        let rows: Int
    }

    let master_key_fingerprint: String
    let keys: [Key]
}

private struct RetiredJSON: Decodable { let retired: [Int] }

// MARK: - A store with known plaintexts, and its check

/// Conversations and messages written through the library, with the search results each query
/// must give, computed from the plaintexts.
private struct RotationCorpus: Sendable {
    struct Message: Sendable {
        let id: MessageID
        let content: String
        let metadata: JSONValue?
    }

    struct Conversation: Sendable {
        let id: ConversationID
        let title: String
        let subject: String?
        let messages: [Message]
    }

    struct Query: Sendable {
        let text: String
        let filters: SearchFilters
        let expected: Set<MessageID>
    }

    let conversations: [Conversation]
    let queries: [Query]
    var messageCount: Int { conversations.reduce(0) { $0 + $1.messages.count } }
    /// Rows that carry a data key (conversations and messages) and an index key (messages and subjects).
    var dataRows: Int { conversations.count + messageCount }
    var indexRows: Int { messageCount + conversations.filter { $0.subject != nil }.count }

    static let fruits = ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach"]
    static let colours = ["red", "green", "blue", "amber", "violet", "cyan", "ochre", "teal", "umber", "coral", "ivory"]

    static func content(_ global: Int, conversation: Int) -> String {
        var words = ["conversation", "c\(conversation)", "line", "n\(global)", fruits[global % 7], colours[global % 11]]
        if global % 97 == 0 { words.append("kiwi") }
        return (words + ["lorem", "ipsum"]).joined(separator: " ")
    }

    /// A query as the search engine understands it: phrases (a single word is a phrase of one)
    /// that must all occur, words that must not.
    struct Spec {
        let text: String
        let phrases: [[String]]
        var excluded: [String] = []
        var subject: String? = nil

        func matches(_ content: String, subject conversationSubject: String?) -> Bool {
            let words = content.split(separator: " ").map(String.init)
            if let subject, subject != conversationSubject { return false }
            if excluded.contains(where: words.contains) { return false }
            return phrases.allSatisfy { phrase in
                words.indices.contains { start in
                    start + phrase.count <= words.count && Array(words[start..<(start + phrase.count)]) == phrase
                }
            }
        }
    }

    static let specs: [Spec] = [
        Spec(text: "kiwi", phrases: [["kiwi"]]),
        Spec(text: "apple red", phrases: [["apple"], ["red"]]),
        Spec(text: "\"apple red\"", phrases: [["apple", "red"]]),
        Spec(text: "\"red apple\"", phrases: [["red", "apple"]]),
        Spec(text: "kiwi -banana", phrases: [["kiwi"]], excluded: ["banana"]),
        Spec(text: "mango teal", phrases: [["mango"], ["teal"]], subject: "user-2"),
    ]

    /// Creates the store (even conversations get a subject "user-N"); messages go in 1,000 per call.
    static func build(at path: String, key: MasterKey, conversations: Int = 6, perConversation: Int = 500) throws -> RotationCorpus {
        let store = try ChatLogStore.create(at: path, key: .key(key))
        var built: [Conversation] = []
        var global = 0
        for index in 0..<conversations {
            let title = "rotation corpus \(index)"
            let subject = index % 2 == 0 ? "user-\(index)" : nil
            let id = try store.createConversation(
                NewConversation(title: title, subject: subject, metadata: .object(["index": .integer(Int64(index))])))
            var planned: [(content: String, metadata: JSONValue?)] = []
            for position in 0..<perConversation {
                planned.append((content(global, conversation: index), global % 10 == 0 ? .object(["g": .integer(Int64(global)), "p": .integer(Int64(position))]) : nil))
                global += 1
            }
            var messages: [Message] = []
            var start = 0
            while start < planned.count {
                let chunk = planned[start..<min(start + 1_000, planned.count)]
                let ids = try store.append(
                    chunk.enumerated().map { offset, item in
                        NewMessage(role: (start + offset) % 2 == 0 ? .user : .assistant, content: item.content, metadata: item.metadata)
                    }, to: id)
                messages += zip(ids, chunk).map { Message(id: $0, content: $1.content, metadata: $1.metadata) }
                start += chunk.count
            }
            built.append(Conversation(id: id, title: title, subject: subject, messages: messages))
        }
        try store.checkpoint()
        try store.close()
        let queries = specs.map { spec in
            Query(
                text: spec.text, filters: SearchFilters(subject: spec.subject),
                expected: Set(built.flatMap { conversation in
                    conversation.messages.filter { spec.matches($0.content, subject: conversation.subject) }.map(\.id)
                }))
        }
        return RotationCorpus(conversations: built, queries: queries)
    }

    /// What opening the store with `key` and reading everything back found.
    struct Check {
        var openError: ChatLogError?
        var otherError: String?
        /// Messages of the corpus missing, or with other content or metadata.
        var lost = 0
        var failures: [String] = []
        var searchFailures: [String] = []
        var counts: (conversations: Int, messages: Int)?
        var status: KeyStatus?

        var opened: Bool { openError == nil && otherError == nil }
        var clean: Bool { opened && lost == 0 && failures.isEmpty && searchFailures.isEmpty }
        var summary: String {
            "open error: \(openError.map { "\($0)" } ?? "none"); error: \(otherError ?? "none"); lost \(lost); "
                + "failures \(failures.prefix(5)); search \(searchFailures.prefix(5))"
        }

        /// Rows of `kind` under keys that are not active.
        func oldRows(_ kind: KeyStatus.Entry.Kind) -> Int? {
            status.map { $0.keys.filter { $0.kind == kind && $0.state != .active }.reduce(0) { $0 + $1.rowCount } }
        }

        func keys(_ kind: KeyStatus.Entry.Kind) -> Int? { status.map { $0.keys.filter { $0.kind == kind }.count } }
    }

    /// Opens the store and reads every conversation, runs every query and the subject lookups.
    func check(_ path: String, key: MasterKey) -> Check {
        var check = Check()
        let store: ChatLogStore
        do {
            store = try ChatLogStore.open(at: path, key: .key(key))
        } catch {
            check.openError = error
            return check
        }
        defer { try? store.close() }
        do {
            check.counts = try store.counts()
            check.status = try store.keyStatus()
        } catch {
            check.otherError = "\(error)"
        }
        for conversation in conversations {
            do {
                let transcript = try store.transcript(conversation.id)
                if transcript.conversation.title != conversation.title || transcript.conversation.subject != conversation.subject {
                    check.failures.append("conversation \(conversation.id): title or subject differs")
                }
                for (position, expected) in conversation.messages.enumerated() {
                    guard position < transcript.messages.count else {
                        check.lost += conversation.messages.count - position
                        break
                    }
                    let message = transcript.messages[position]
                    if message.id != expected.id || message.content != expected.content || message.metadata != expected.metadata {
                        check.lost += 1
                    }
                }
                if transcript.messages.count != conversation.messages.count {
                    check.failures.append("conversation \(conversation.id): \(transcript.messages.count) messages, expected \(conversation.messages.count)")
                }
            } catch {
                check.otherError = "transcript \(conversation.id): \(error)"
                check.lost += conversation.messages.count
            }
            if let subject = conversation.subject {
                do {
                    let found = try store.conversations(ConversationQuery(subject: subject)).conversations.map(\.id)
                    if found != [conversation.id] { check.searchFailures.append("subject \(subject): \(found.count) conversations") }
                } catch {
                    check.searchFailures.append("subject \(subject): \(error)")
                }
            }
        }
        for query in queries {
            do {
                let results = try store.search(query.text, filters: query.filters, limit: 1000, sort: .newest)
                let found = results.hits.map(\.messageID)
                if Set(found) != query.expected || found.count != query.expected.count || !results.complete {
                    check.searchFailures.append(
                        "\(query.text): \(found.count) hits, expected \(query.expected.count), "
                            + "\(Set(found).subtracting(query.expected).count) false, \(query.expected.subtracting(found).count) missed")
                }
            } catch {
                check.searchFailures.append("\(query.text): \(error)")
            }
        }
        return check
    }
}

// MARK: - The check itself

@Suite struct RotationCorpusCheckTests {
    /// The kill suites count on `RotationCorpus.check` to notice damage: here it must.
    @Test func theCheckNoticesALostMessageATamperedValueAndAStaleSearchIndex() async throws {
        let sandbox = try Sandbox()
        let key = try MasterKey(base64: sandbox.key)
        let base = sandbox.path("base.db")
        let corpus = try RotationCorpus.build(at: base, key: key, conversations: 2, perConversation: 200)
        #expect(corpus.check(base, key: key).clean)
        let kiwi = try #require(corpus.queries.first { $0.text == "kiwi" }?.expected.first)
        let queried = corpus.queries.reduce(into: Set<MessageID>()) { $0.formUnion($1.expected) }
        let plain = try #require(corpus.conversations.flatMap(\.messages).first { !queried.contains($0.id) })

        try StoreFiles.copy(base, to: sandbox.path("lost.db"))
        _ = try sandbox.sqlite("lost.db", "DELETE FROM messages WHERE id = '\(plain.id.rawValue)'")
        let lost = corpus.check(sandbox.path("lost.db"), key: key)
        #expect(!lost.clean && lost.lost >= 1, "\(lost.summary)")

        try StoreFiles.copy(base, to: sandbox.path("tampered.db"))
        _ = try sandbox.sqlite(
            "tampered.db",
            "UPDATE messages SET content = randomblob(length(content)) WHERE id = '\(plain.id.rawValue)'")
        let tampered = corpus.check(sandbox.path("tampered.db"), key: key)
        #expect(!tampered.clean && !tampered.opened, "\(tampered.summary)")

        try StoreFiles.copy(base, to: sandbox.path("unindexed.db"))
        // The message's terms no longer lead to it.
        _ = try sandbox.sqlite("unindexed.db", "UPDATE messages SET seq = seq + 987654321 WHERE id = '\(kiwi.rawValue)'")
        let unindexed = corpus.check(sandbox.path("unindexed.db"), key: key)
        #expect(!unindexed.clean && !unindexed.searchFailures.isEmpty, "\(unindexed.summary)")

        let wrongKey = corpus.check(base, key: .generate())
        if case .wrongKey? = wrongKey.openError {} else { Issue.record("a wrong key must fail with wrongKey: \(wrongKey.summary)") }
    }
}

// MARK: - 1. SIGKILL during `key rotate`

@Suite(.serialized) struct RotationKillTests {
    @Test func killingADataKeyRotationLosesNothing() async throws {
        try await killTrials(index: false, trials: 30 * Hardening.scale)
    }

    @Test func killingAnIndexKeyRotationLosesNothing() async throws {
        try await killTrials(index: true, trials: 20 * Hardening.scale)
    }

    /// Per trial: a copy of a 3,006-row store, `key rotate --new --batch-size 25` killed after a
    /// random delay within the time a whole run takes, then the checks, the run that finishes
    /// the job, and a run that must find nothing to do.
    private func killTrials(index: Bool, trials: Int) async throws {
        let sandbox = try Sandbox()
        let key = try MasterKey(base64: sandbox.key)
        let base = sandbox.path("base.db")
        let corpus = try RotationCorpus.build(at: base, key: key)
        let kind: KeyStatus.Entry.Kind = index ? .index : .data
        let other: KeyStatus.Entry.Kind = index ? .data : .index
        let rotate = ["key", "rotate", "--new", "--batch-size", "25"] + (index ? ["--index"] : [])
        let resume = ["key", "rotate", "--json"] + (index ? ["--index"] : [])

        // How long one whole run takes, measured once: the kill instants are spread over it.
        try StoreFiles.copy(base, to: sandbox.path("measure.db"))
        let started = ContinuousClock.now
        let measured = try sandbox.chatlog(rotate + ["--db", "measure.db"])
        let fullRun = Hardening.seconds(ContinuousClock.now - started)
        try #require(measured.status == 0, "\(measured)")
        StoreFiles.remove(sandbox.path("measure.db"))
        var window = fullRun

        var random = SeededRandom()
        var lost = 0, unopenable = 0, searchErrors = 0, leftBehind = 0, rewrittenAgain = 0
        var beforeNewKey = 0, midRotation = 0, afterLastBatch = 0, finishedBeforeKill = 0
        for trial in 0..<trials {
            let name = "trial-\(trial).db"
            let path = sandbox.path(name)
            try StoreFiles.copy(base, to: path)
            let delay = Double.random(in: 0...window, using: &random)
            let launched = ContinuousClock.now
            let child = try BackgroundProcess(rotate + ["--db", name], env: sandbox.environment, cwd: sandbox.directory, scratch: sandbox.root)
            // A run that ended before its kill re-measures a whole run; a killed one lets the window
            // drift back towards the first measurement.
            if let ran = try await killAfter(child, started: launched, delay: delay) { window = ran } else { window = min(fullRun, window * 1.02) }
            let killed = try await child.finish()
            #expect(killed.status == 128 + SIGKILL || killed.status == 0, "trial \(trial): \(killed)")
            if killed.status == 0 { finishedBeforeKill += 1 }

            // Everything opens and reads back exactly, search included.
            let afterKill = corpus.check(path, key: key)
            #expect(afterKill.clean, "trial \(trial) after the kill: \(afterKill.summary)")
            #expect(afterKill.counts.map { [$0.conversations, $0.messages] } == [corpus.conversations.count, corpus.messageCount])
            lost += afterKill.lost
            if !afterKill.opened { unopenable += 1 }
            searchErrors += afterKill.searchFailures.count
            switch (afterKill.keys(kind), afterKill.oldRows(kind)) {
            case (1?, _): beforeNewKey += 1
            case (_, let rows?) where rows > 0: midRotation += 1
            default: afterLastBatch += 1
            }

            // The next run (no --new) finishes the job; a second one finds nothing to do.
            let next = try sandbox.chatlog(resume + ["--db", name])
            #expect(next.status == 0, "trial \(trial): \(next)")
            let afterResume = corpus.check(path, key: key)
            #expect(afterResume.clean, "trial \(trial) after the resumed run: \(afterResume.summary)")
            lost += afterResume.lost
            if !afterResume.opened { unopenable += 1 }
            searchErrors += afterResume.searchFailures.count
            #expect(afterResume.oldRows(kind) == 0, "trial \(trial): rows left under an old \(kind.rawValue) key")
            #expect(afterResume.oldRows(other) == 0)
            #expect(afterResume.keys(kind) == afterKill.keys(kind), "trial \(trial): the resumed run made no key")
            #expect((afterKill.keys(kind) ?? 0) <= 2, "trial \(trial): at most one new \(kind.rawValue) key")
            if afterResume.oldRows(kind) != 0 { leftBehind += 1 }
            let again = try sandbox.chatlog(resume + ["--db", name])
            #expect(again.status == 0, "trial \(trial): \(again)")
            if let report = try? JSONDecoder().decode(RotateReportJSON.self, from: again.stdout) {
                #expect(report.rewritten == 0 && !report.new_key && report.complete && report.remaining == 0, "trial \(trial): \(again)")
                rewrittenAgain += report.rewritten
            } else {
                Issue.record("trial \(trial): no JSON report: \(again)")
            }
            StoreFiles.remove(path)
        }
        print(
            "kill during rotate (\(index ? "index key, --index" : "data key")): \(trials) trials, \(lost) messages lost, "
                + "\(unopenable) unopenable, \(searchErrors) search mismatches, \(leftBehind) resumed runs left rows under an old key, "
                + "\(rewrittenAgain) rows rewritten by the second run; kills landed \(beforeNewKey) before the new key, "
                + "\(midRotation) mid-rotation, \(afterLastBatch) after the last batch (\(finishedBeforeKill) runs had exited); "
                + "kill window \(String(format: "%.2f", fullRun)) s (a measured full run over \(index ? corpus.indexRows : corpus.dataRows) rows), "
                + "last \(String(format: "%.2f", window)) s after re-measuring by runs that ended before their kill; seed \(random.seed)")
    }
}

// MARK: - 2. Writers in other processes while keys rotate

@Suite struct RotationWithWritersTests {
    /// Per round, on a fresh copy of a store of 1,600 messages and 20 doomed conversations: two
    /// appender processes (tight loops, one message per transaction) and a deleter process run
    /// while two rotations follow each other; then the writers stop and everything is checked.
    /// Rounds: 2 at CI scale, each with a data-key and an index-key rotation, through the CLI and
    /// through the library in this process.
    @Test func appendersAndADeleterInOtherProcessesLoseNothingAndNothingStaysUnderAnOldKey() async throws {
        let rounds = 2 * Hardening.scale
        let sandbox = try Sandbox()
        let key = try MasterKey(base64: sandbox.key)
        let base = sandbox.path("base.db")
        let corpus = try RotationCorpus.build(at: base, key: key, conversations: 4, perConversation: 400)
        let setup = try ChatLogStore.open(at: base, key: .key(key))
        var victims: [ConversationID] = []
        for victim in 0..<20 {
            let id = try await setup.createConversation(NewConversation(title: "victim \(victim)", subject: "victim-\(victim)"))
            try await setup.append((0..<25).map { NewMessage(role: .user, content: "victim \(victim) line \($0) kiwi") }, to: id)
            victims.append(id)
        }
        var targets: [ConversationID] = []
        for writer in 0..<2 { targets.append(try await setup.createConversation(NewConversation(title: "writer \(writer)"))) }
        try setup.checkpoint()
        try setup.close()
        let driver = try Hardening.driverURL()

        var rotations: [String] = []
        var committedTotal = 0, duringRotations = 0, lost = 0, busyFailures = 0, leftUnderOldKeys = 0, deletedTotal = 0
        for round in 0..<rounds {
            let db = sandbox.path("round-\(round).db")
            try StoreFiles.copy(base, to: db)
            let stopFile = sandbox.path("stop-\(round)")
            let appenders = try (0..<2).map { writer in
                try BackgroundProcess(
                    ["append-loop", "--db", db, "--conversation", targets[writer].rawValue, "--stop-file", stopFile, "--label",
                     "writer \(writer)", "--seconds", "600"],
                    env: sandbox.environment, cwd: sandbox.directory, scratch: sandbox.root, executable: driver)
            }
            let committed: @Sendable () -> [Int] = {
                appenders.map { $0.outputSoFar.split(separator: "\n").filter { $0.hasPrefix("committed ") }.count }
            }
            try await waitFor("both appenders commit") {
                if let gone = appenders.first(where: \.hasExited) { throw CLITestError("an appender exited early: \(gone.errorSoFar)") }
                return committed().allSatisfy { $0 >= 3 }
            }
            let deleter = try BackgroundProcess(
                ["delete", "--db", db, "--conversations", victims.map(\.rawValue).joined(separator: ","), "--pause-ms", "40"],
                env: sandbox.environment, cwd: sandbox.directory, scratch: sandbox.root, executable: driver)

            /// Right after a rotation reports done, no row may be under an old key of its kind,
            /// though the writers never stopped.
            func expectNothingOld(_ kind: KeyStatus.Entry.Kind, after label: String) throws {
                let store = try ChatLogStore.open(at: db, key: .key(key))
                defer { try? store.close() }
                let old = try store.keyStatus().keys.filter { $0.kind == kind && $0.state != .active && $0.rowCount > 0 }
                #expect(old.isEmpty, "round \(round), after \(label): rows under old keys \(old.map { "\($0.id): \($0.rowCount)" })")
                leftUnderOldKeys += old.reduce(0) { $0 + $1.rowCount }
            }
            let steps = round % 2 == 0 ? ["cli data", "library index"] : ["cli index", "library data"]
            for step in steps {
                let before = committed().reduce(0, +)
                let kind: KeyStatus.Entry.Kind = step.hasSuffix("index") ? .index : .data
                if step.hasPrefix("library") {
                    let store = try ChatLogStore.open(at: db, key: .key(key))
                    let options = RotationOptions(newKey: true, batchSize: 25)
                    let report = kind == .index ? try await store.rotateIndexKey(options) : try await store.rotateDataKey(options)
                    try store.close()
                    #expect(report.complete && report.rewritten > 0, "round \(round) \(step)")
                } else {
                    let result = try sandbox.chatlog(["key", "rotate", "--new", "--batch-size", "25", "--db", db] + (kind == .index ? ["--index"] : []))
                    #expect(result.status == 0, "round \(round) \(step): \(result)")
                    if result.err.lowercased().contains("busy") { busyFailures += 1 }
                }
                try expectNothingOld(kind, after: step)
                duringRotations += committed().reduce(0, +) - before
                rotations.append(step)
                #expect(!appenders.contains { $0.hasExited }, "the appenders run through every rotation")
            }
            // Appends go on after the rotations, then the writers stop.
            let afterRotations = committed()
            try await waitFor("the appenders commit after the rotations") {
                zip(committed(), afterRotations).allSatisfy { $0 >= $1 + 5 } || appenders.contains(where: \.hasExited)
            }
            try Data().write(to: URL(fileURLWithPath: stopFile))
            var appended: [CommandResult] = []
            for appender in appenders { appended.append(try await appender.finish()) }
            let deleted = try await deleter.finish()

            let store = try ChatLogStore.open(at: db, key: .key(key))
            defer { try? store.close() }
            var roundCommitted = 0
            for (writer, result) in appended.enumerated() {
                #expect(result.status == 0 && result.stderr.isEmpty, "round \(round) appender \(writer): \(result)")
                if result.err.lowercased().contains("busy") || result.err.contains("locked") { busyFailures += 1 }
                let lines = result.out.split(separator: "\n")
                let commits = lines.filter { $0.hasPrefix("committed ") }.map { $0.split(separator: " ") }
                #expect(lines.last == "total \(commits.count)", "round \(round) appender \(writer): \(result)")
                roundCommitted += commits.count
                let transcript = try await store.transcript(targets[writer])
                let stored = Dictionary(uniqueKeysWithValues: transcript.messages.map { ($0.id.rawValue, $0.content) })
                for commit in commits where commit.count == 3 {
                    if stored[String(commit[2])] != "writer \(writer) message \(commit[1])" { lost += 1 }
                }
                #expect(transcript.messages.map(\.content) == (0..<commits.count).map { "writer \(writer) message \($0)" })
            }
            committedTotal += roundCommitted
            #expect(deleted.status == 0 && deleted.stderr.isEmpty, "round \(round) deleter: \(deleted)")
            if deleted.err.lowercased().contains("busy") || deleted.err.contains("locked") { busyFailures += 1 }
            #expect(deleted.out.split(separator: "\n").map(String.init) == victims.map { "deleted \($0) true" })
            deletedTotal += deleted.out.split(separator: "\n").filter { $0.hasSuffix(" true") }.count
            for victim in victims {
                #expect(throws: ChatLogError.conversationNotFound(victim.rawValue)) { try store.transcript(victim) }
            }
            let status = try await store.keyStatus()
            #expect(status.keys.filter { $0.state != .active }.allSatisfy { $0.rowCount == 0 }, "round \(round): \(status.keys)")
            await #expect(try store.counts().messages == corpus.messageCount + roundCommitted)
            let check = corpus.check(db, key: key)
            #expect(check.clean, "round \(round): \(check.summary)")
            StoreFiles.remove(db)
        }
        #expect(lost == 0, "\(lost) committed appends are missing or different")
        let kinds = Dictionary(grouping: rotations, by: { $0 }).map { "\($0.key) ×\($0.value.count)" }.sorted().joined(separator: ", ")
        print(
            "writers during rotation: \(rounds) rounds, \(rotations.count) rotations (\(kinds)); 2 appender processes per round "
                + "committed \(committedTotal) messages (\(duringRotations) while a rotation ran), \(lost) lost; a deleter process per "
                + "round removed \(deletedTotal) conversations; \(leftUnderOldKeys) rows under an old key after `done`; "
                + "\(busyFailures) busy failures")
    }
}


// MARK: - 3. The key lock

@Suite struct RotationLockTests {
    @Test func twoRotationsStartedTogetherOneRunsTheOtherExits75NamingTheHolder() async throws {
        let trials = 3 * Hardening.scale
        let sandbox = try Sandbox()
        let key = try MasterKey(base64: sandbox.key)
        let base = sandbox.path("base.db")
        let corpus = try RotationCorpus.build(at: base, key: key)
        var refusedNamingHolder = 0
        var killedHolders = 0
        var resumed = 0
        for trial in 0..<trials {
            let db = sandbox.path("trial-\(trial).db")
            try StoreFiles.copy(base, to: db)
            let arguments = ["key", "rotate", "--new", "--batch-size", "1", "--db", db] + (trial % 2 == 1 ? ["--index"] : [])
            let first = try BackgroundProcess(arguments, env: sandbox.environment, cwd: sandbox.directory, scratch: sandbox.root)
            let second = try BackgroundProcess(arguments, env: sandbox.environment, cwd: sandbox.directory, scratch: sandbox.root)
            try await waitFor("one of the two exits") { first.hasExited || second.hasExited }
            var (loser, winner) = first.hasExited ? (first, second) : (second, first)
            if winner.hasExited, try await winner.finish().status == 75 { swap(&loser, &winner) }
            // Refused at once: exit 75 naming the other run, which held the lock at that moment (a
            // run that waited for the lock would have got it once the other ended, and run).
            let refused = try await loser.finish()
            #expect(refused.status == 75, "trial \(trial): \(refused)")
            #expect(refused.err.contains("(process \(winner.pid))"), "trial \(trial): stderr must name the holder \(winner.pid): \(refused)")
            if refused.status == 75, refused.err.contains("(process \(winner.pid))") { refusedNamingHolder += 1 }

            // Kill the holder mid-run (batch size 1 over 3,000 rows: it is still at work): the
            // kernel releases its lock.
            winner.signal(SIGKILL)
            let killed = try await winner.finish()
            #expect(killed.status == 128 + SIGKILL || killed.status == 0, "trial \(trial): \(killed)")
            if killed.status == 128 + SIGKILL { killedHolders += 1 }
            let afterKill = corpus.check(db, key: key)
            #expect(afterKill.clean, "trial \(trial): \(afterKill.summary)")
            #expect(afterKill.keys(.data) == (trial % 2 == 1 ? 1 : 2), "trial \(trial): one new key at most: the refused run changed nothing")
            #expect(afterKill.keys(.index) == (trial % 2 == 1 ? 2 : 1), "trial \(trial): one new key at most: the refused run changed nothing")

            let next = try sandbox.chatlog(["key", "rotate", "--json", "--db", db] + (trial % 2 == 1 ? ["--index"] : []))
            #expect(next.status == 0, "trial \(trial): \(next)")
            if let report = try? JSONDecoder().decode(RotateReportJSON.self, from: next.stdout), report.complete, !report.new_key { resumed += 1 }
            let finished = corpus.check(db, key: key)
            #expect(finished.clean && finished.oldRows(.data) == 0 && finished.oldRows(.index) == 0, "trial \(trial): \(finished.summary)")
            StoreFiles.remove(db)
        }
        #expect(resumed == trials)
        print(
            "two rotations started together: \(trials) trials, \(refusedNamingHolder) second runs exited 75 naming the holder, "
                + "\(killedHolders) holders killed mid-run, \(resumed) runs after that finished the rotation")
    }

    /// A child holds the key lock (`chatlog-test-driver hold-lock`) until it is killed: every key
    /// job exits 75 naming it meanwhile, and once it is SIGKILLed (no chance to unlock) the next
    /// rotation runs.
    @Test func aKilledHolderReleasesTheLockAndEveryKeyJobNamesItMeanwhile() async throws {
        let trials = 3 * Hardening.scale
        let sandbox = try Sandbox()
        let key = try MasterKey(base64: sandbox.key)
        let db = sandbox.path("chatlog.db")
        let corpus = try RotationCorpus.build(at: db, key: key, conversations: 2, perConversation: 100)
        let driver = try Hardening.driverURL()
        var random = SeededRandom()
        var refusals = 0
        var completed = 0
        for trial in 0..<trials {
            let holder = try BackgroundProcess(
                ["hold-lock", "--db", db], env: sandbox.baseEnvironment, cwd: sandbox.directory, scratch: sandbox.root, executable: driver)
            try await waitFor("the holder takes the lock") {
                if holder.hasExited { throw CLITestError("the holder exited: \(holder.errorSoFar)") }
                return holder.outputSoFar == "holding \(holder.pid)\n"
            }
            try await sleepOnDispatchThread(Double.random(in: 0...0.2, using: &random))
            let newKey = sandbox.makeKey()
            for job in [["key", "rotate", "--new"], ["key", "rotate", "--index", "--dry-run"], ["key", "rewrap"], ["key", "retire"]] {
                let env = sandbox.environment.merging(["CHATLOG_NEW_MASTER_KEY": newKey]) { $1 }
                let result = try sandbox.chatlog(job + ["--db", db], env: env)
                #expect(result.status == 75, "trial \(trial) \(job): \(result)")
                #expect(result.err.contains("(process \(holder.pid))"), "trial \(trial) \(job) must name the holder: \(result)")
                if result.status == 75 { refusals += 1 }
            }
            #expect(!holder.hasExited, "the holder kept the lock through the refusals")
            holder.signal(SIGKILL)
            let killed = try await holder.finish()
            #expect(killed.status == 128 + SIGKILL, "\(killed)")

            let next = try sandbox.chatlog(["key", "rotate", "--new", "--json", "--db", db] + (trial % 2 == 1 ? ["--index"] : []))
            #expect(next.status == 0, "trial \(trial): the lock of a killed holder must be free: \(next)")
            if next.status == 0 { completed += 1 }
            let check = corpus.check(db, key: key)
            #expect(check.clean && check.oldRows(.data) == 0 && check.oldRows(.index) == 0, "trial \(trial): \(check.summary)")
            #expect(check.keys(.data).map { $0 + check.keys(.index)! } == 2 + trial + 1, "trial \(trial): one new key per trial")
        }
        print(
            "kill the lock holder: \(trials) trials, \(refusals) key jobs (rotate, rotate --index --dry-run, rewrap, retire) refused "
                + "with 75 naming the holder, \(completed) rotations after SIGKILL of the holder finished, seed \(random.seed)")
    }
}

// MARK: - 4. SIGKILL during `key rewrap`

@Suite struct RewrapKillTests {
    @Test func killingARewrapLeavesExactlyOneMasterKeyThatOpensEverything() async throws {
        let trials = 20 * Hardening.scale
        let sandbox = try Sandbox()
        let db = sandbox.path("chatlog.db")
        let corpus = try RotationCorpus.build(at: db, key: try MasterKey(base64: sandbox.key), conversations: 4, perConversation: 50)

        func environment(current: String, new: String) -> [String: String] {
            sandbox.baseEnvironment.merging(["CHATLOG_MASTER_KEY": current, "CHATLOG_NEW_MASTER_KEY": new]) { $1 }
        }
        // A whole run, measured once on a copy.
        try StoreFiles.copy(db, to: sandbox.path("measure.db"))
        let started = ContinuousClock.now
        let measured = try sandbox.chatlog(["key", "rewrap", "--db", "measure.db"], env: environment(current: sandbox.key, new: sandbox.makeKey()))
        let fullRun = Hardening.seconds(ContinuousClock.now - started)
        try #require(measured.status == 0, "\(measured)")
        var window = fullRun

        var random = SeededRandom()
        var current = sandbox.key
        var stayedOld = 0, movedNew = 0, unopenable = 0, openedByBoth = 0, lost = 0
        for trial in 0..<trials {
            let next = sandbox.makeKey()
            let delay = Double.random(in: 0...window, using: &random)
            let launched = ContinuousClock.now
            let child = try BackgroundProcess(
                ["key", "rewrap", "--db", db], env: environment(current: current, new: next), cwd: sandbox.directory, scratch: sandbox.root)
            // A run that ended before its kill re-measures a whole run; a killed one lets the window
            // drift back towards the first measurement.
            if let ran = try await killAfter(child, started: launched, delay: delay) { window = ran } else { window = min(fullRun, window * 1.02) }
            let killed = try await child.finish()
            #expect(killed.status == 0 || killed.status == 128 + SIGKILL, "trial \(trial): \(killed)")

            let withOld = corpus.check(db, key: try MasterKey(base64: current))
            let withNew = corpus.check(db, key: try MasterKey(base64: next))
            switch (withOld.opened, withNew.opened) {
            case (true, false): stayedOld += 1
            case (false, true): movedNew += 1
            case (true, true): openedByBoth += 1
            case (false, false): unopenable += 1
            }
            #expect(withOld.opened != withNew.opened, "trial \(trial): old key \(withOld.summary); new key \(withNew.summary)")
            if killed.status == 0 { #expect(withNew.opened, "trial \(trial): rewrap reported success") }
            let (working, refused, wrongKey) = withNew.opened ? (withNew, withOld, current) : (withOld, withNew, next)
            if case .wrongKey? = refused.openError {
            } else {
                Issue.record("trial \(trial): the other key must fail with wrongKey: \(refused.summary)")
            }
            #expect(working.clean, "trial \(trial): \(working.summary)")
            #expect(working.counts.map { [$0.conversations, $0.messages] } == [corpus.conversations.count, corpus.messageCount])
            lost += working.opened ? working.lost : corpus.messageCount
            let cli = try sandbox.chatlog(["list", "--db", db], env: environment(current: wrongKey, new: next))
            #expect(cli.status == 77, "trial \(trial): \(cli)")
            if withNew.opened { current = next }
        }
        print(
            "kill during rewrap: \(trials) trials, \(stayedOld) left under the old master key, \(movedNew) under the new one, "
                + "\(openedByBoth) opened by both, \(unopenable) unopenable, \(lost) messages lost; "
                + "kill window \(String(format: "%.3f", fullRun)) s (a measured full run), last \(String(format: "%.3f", window)) s; "
                + "seed \(random.seed)")
    }
}

// MARK: - 5. `key retire`

@Suite struct RetireCommandTests {
    private func status(_ sandbox: Sandbox) throws -> KeyStatusWithRetiredJSON {
        let result = try sandbox.chatlog(["key", "status", "--json"])
        guard result.status == 0 else { throw CLITestError("key status failed: \(result)") }
        return try JSONDecoder().decode(KeyStatusWithRetiredJSON.self, from: result.stdout)
    }

    private func wrappedBytes(_ sandbox: Sandbox, key id: Int) throws -> Data {
        let hex = try sandbox.sqlite("chatlog.db", "SELECT hex(wrapped) FROM keys WHERE id = \(id)")
        var bytes = Data()
        var index = hex.startIndex
        while index < hex.endIndex {
            let next = hex.index(index, offsetBy: 2)
            guard let byte = UInt8(hex[index..<next], radix: 16) else { throw CLITestError("bad hex \(hex)") }
            bytes.append(byte)
            index = next
        }
        guard bytes.count > 32 else { throw CLITestError("no wrapped key \(id): \(hex)") }
        return bytes
    }

    @Test func retireRefusesWhileRowsUseAKeyThenDestroysItsMaterial() async throws {
        let sandbox = try Sandbox()
        let corpus = try RotationCorpus.build(
            at: sandbox.path("chatlog.db"), key: try MasterKey(base64: sandbox.key), conversations: 3, perConversation: 40)

        // Data key 1: a new key, nothing moved yet.
        let partial = try sandbox.chatlog(["key", "rotate", "--new", "--max-duration", "0s", "--batch-size", "10", "--json"])
        #expect(partial.status == 3, "\(partial)")
        let secret = try wrappedBytes(sandbox, key: 1)
        let inUse = try #require(try status(sandbox).keys.first { $0.id == 1 }).rows
        #expect(inUse >= corpus.dataRows - 10 && inUse > 0)
        let refused = try sandbox.chatlog(["key", "retire", "--key", "1"])
        #expect(refused.status != 0, "\(refused)")
        #expect(refused.err.contains("key 1 is still used by \(inUse) rows"), "\(refused)")
        let none = try sandbox.chatlog(["key", "retire", "--json"])
        #expect(none.status == 0, "\(none)")
        #expect(try JSONDecoder().decode(RetiredJSON.self, from: none.stdout).retired.isEmpty)

        #expect(try sandbox.chatlog(["key", "rotate"]).status == 0)
        let retired = try sandbox.chatlog(["key", "retire", "--key", "1", "--json"])
        #expect(retired.status == 0, "\(retired)")
        #expect(try JSONDecoder().decode(RetiredJSON.self, from: retired.stdout).retired == [1])
        let entry = try #require(try status(sandbox).keys.first { $0.id == 1 })
        #expect(entry.state == "retired" && entry.rows == 0)
        #expect(entry.retired_at.map(isTimestamp) == true, "retired_at: \(String(describing: entry.retired_at))")
        for (file, bytes) in sandbox.storeFiles() {
            #expect(bytes.range(of: secret) == nil, "the retired key's wrapped bytes are still in \(file)")
            #expect(bytes.range(of: secret.suffix(32)) == nil, "part of the retired key's wrapped bytes is still in \(file)")
        }
        let again = try sandbox.chatlog(["key", "retire", "--key", "1"])
        #expect(again.status != 0 && again.err.contains("already retired"), "\(again)")
        let activeID = try #require(try status(sandbox).keys.first { $0.kind == "data" && $0.state == "active" }).id
        let active = try sandbox.chatlog(["key", "retire", "--key", "\(activeID)"])
        #expect(active.status != 0 && active.err.contains("active"), "\(active)")
        for conversation in corpus.conversations {
            #expect(try sandbox.show(conversation.id.rawValue).messages.map(\.content) == conversation.messages.map(\.content))
        }

        // Index key 2: rows use it only through the search index and the subject tokens.
        let indexPartial = try sandbox.chatlog(["key", "rotate", "--index", "--new", "--max-duration", "0s", "--batch-size", "10"])
        #expect(indexPartial.status == 3, "\(indexPartial)")
        let indexSecret = try wrappedBytes(sandbox, key: 2)
        let indexInUse = try #require(try status(sandbox).keys.first { $0.id == 2 }).rows
        #expect(indexInUse > 0 && indexInUse >= corpus.indexRows - 10)
        let indexRefused = try sandbox.chatlog(["key", "retire", "--key", "2"])
        #expect(indexRefused.status != 0 && indexRefused.err.contains("still used by \(indexInUse) rows"), "\(indexRefused)")
        #expect(try sandbox.chatlog(["key", "rotate", "--index"]).status == 0)
        let all = try sandbox.chatlog(["key", "retire", "--json"])
        #expect(try JSONDecoder().decode(RetiredJSON.self, from: all.stdout).retired == [2], "\(all)")
        let indexEntry = try #require(try status(sandbox).keys.first { $0.id == 2 })
        #expect(indexEntry.state == "retired" && indexEntry.retired_at.map(isTimestamp) == true)
        for (file, bytes) in sandbox.storeFiles() {
            #expect(bytes.range(of: indexSecret) == nil, "the retired index key's wrapped bytes are still in \(file)")
        }
        // --vacuum after a finished rotation; everything still reads back.
        let vacuumed = try sandbox.chatlog(["key", "rotate", "--new", "--vacuum"])
        #expect(vacuumed.status == 0, "\(vacuumed)")
        let search = try sandbox.chatlog(["search", "kiwi", "--json", "--limit", "1000"])
        #expect(search.status == 0, "\(search)")
        let hits = try jsonPage(search.stdout, "hits").compactMap { $0["message_id"] as? String }
        let expected = try #require(corpus.queries.first { $0.text == "kiwi" }).expected
        #expect(Set(hits) == Set(expected.map(\.rawValue)))
    }
}

// MARK: - 6. --max-duration, --dry-run, exit codes

@Suite struct RotateLimitsCommandTests {
    @Test func maxDurationStopsWithinOneBatchAndDryRunChangesNothing() async throws {
        let sandbox = try Sandbox()
        let corpus = try RotationCorpus.build(
            at: sandbox.path("chatlog.db"), key: try MasterKey(base64: sandbox.key), conversations: 4, perConversation: 500)
        let total = corpus.dataRows
        func dump() throws -> String { try sandbox.sqlite("chatlog.db", ".dump") }
        func report(_ result: CommandResult) throws -> RotateReportJSON {
            try JSONDecoder().decode(RotateReportJSON.self, from: result.stdout)
        }

        // --dry-run: counts, no change.
        let original = try dump()
        let dry = try sandbox.chatlog(["key", "rotate", "--new", "--dry-run", "--json"])
        #expect(dry.status == 0, "\(dry)")
        let plan = try report(dry)
        #expect(plan.dry_run && plan.new_key && plan.rewritten == 0 && plan.rows_by_key == ["1": total] && plan.remaining == total)
        let human = try sandbox.chatlog(["key", "rotate", "--new", "--dry-run"])
        #expect(human.status == 0)
        #expect(human.out.contains("would make a new data key active") && human.out.contains("would move \(total) rows from key 1"), "\(human)")
        let indexDry = try sandbox.chatlog(["key", "rotate", "--index", "--dry-run", "--json"])
        #expect(indexDry.status == 0, "\(indexDry)")
        #expect(try report(indexDry).rows_by_key.isEmpty, "\(indexDry)")
        #expect(try dump() == original, "a dry run changed the store")

        // --max-duration 0s: a new key, at most one batch, exit 3.
        let zero = try sandbox.chatlog(["key", "rotate", "--new", "--max-duration", "0s", "--batch-size", "50", "--json"])
        #expect(zero.status == 3, "\(zero)")
        let zeroReport = try report(zero)
        #expect(zeroReport.new_key && !zeroReport.complete && zeroReport.rewritten <= 50)
        #expect(zeroReport.remaining == total - zeroReport.rewritten)
        // A tiny duration: no second batch of 500 rows fits into a millisecond.
        let tiny = try sandbox.chatlog(["key", "rotate", "--max-duration", "0.001s", "--json"])
        #expect(tiny.status == 3, "\(tiny)")
        let tinyReport = try report(tiny)
        #expect(!tinyReport.new_key && tinyReport.rewritten <= 500 && tinyReport.remaining == total - zeroReport.rewritten - tinyReport.rewritten)

        // A dry run now reports what is left under key 1, and changes nothing.
        let beforeDry = try dump()
        let left = try sandbox.chatlog(["key", "rotate", "--dry-run", "--json"])
        #expect(left.status == 0)
        let leftReport = try report(left)
        #expect(leftReport.rows_by_key == ["1": tinyReport.remaining] && !leftReport.new_key, "\(left)")
        #expect(try dump() == beforeDry, "a dry run changed the store")

        let finish = try sandbox.chatlog(["key", "rotate", "--json"])
        #expect(finish.status == 0, "\(finish)")
        let finishReport = try report(finish)
        #expect(finishReport.complete && finishReport.rewritten == tinyReport.remaining)
        let nothing = try sandbox.chatlog(["key", "rotate", "--json"])
        #expect(nothing.status == 0, "\(nothing)")
        #expect(try report(nothing).rewritten == 0, "\(nothing)")
        // --if-older-than: a young key stays; any age over zero makes a new one.
        let young = try sandbox.chatlog(["key", "rotate", "--if-older-than", "90d", "--json"])
        #expect(young.status == 0, "\(young)")
        #expect(try !report(young).new_key && report(young).rewritten == 0)
        let old = try sandbox.chatlog(["key", "rotate", "--if-older-than", "0s", "--json"])
        #expect(old.status == 0, "\(old)")
        let oldReport = try report(old)
        #expect(oldReport.new_key && oldReport.rewritten == total && oldReport.complete)
        let check = corpus.check(sandbox.path("chatlog.db"), key: try MasterKey(base64: sandbox.key))
        #expect(check.clean && check.oldRows(.data) == 0 && check.keys(.data) == 3, "\(check.summary)")
    }

    @Test func theHelpDocumentsTheRotationExitCodes() throws {
        let sandbox = try Sandbox()
        let rotate = try sandbox.chatlog(["key", "rotate", "--help"], env: sandbox.baseEnvironment)
        #expect(rotate.status == 0)
        let text = collapsingWhitespace(rotate.out)
        #expect(text.contains("exits 75") && text.contains("3 when rows remain") && text.contains("Exit 0"), "\(rotate.out)")
        let root = collapsingWhitespace(try sandbox.chatlog(["--help"], env: sandbox.baseEnvironment).out)
        #expect(root.contains("3 key rotate"), "`chatlog --help` must list exit code 3: \(root)")
    }
}
