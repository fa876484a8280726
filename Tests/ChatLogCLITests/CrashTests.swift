import ChatLog
import Foundation
import GRDB
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

// Crash safety (hardening item 1): SIGKILL at random instants during `chatlog log`, during a
// driver process appending messages and logging exchanges, during `chatlog import` of a
// 2,000-conversation file, and during `chatlog rm` / `chatlog prune`. After every kill:
// SQLite's integrity check passes, `chatlog verify` exits 0, every acknowledged write is there
// with its exact content, nothing half-written is visible (an exchange, an import batch, a
// deleted conversation is all there or all gone), and re-running the interrupted command
// completes it. Kills during `key rotate --new`, `key rotate --index --new` and `key rewrap` are
// RotationCLITests' RotationKillTests and RewrapKillTests (70 trials at scale 1).
//
// Kill instants are spread over the time the work of a whole run takes, measured first (a run
// that ends before its kill re-measures the window, as in RotationCLITests), counted from the
// moment the process has opened the store (`chatlog log`: from the moment its message is on
// stdin), so that they land in the work and not in process startup. CHATLOG_TEST_SCALE
// multiplies the trial counts; CHATLOG_TEST_SEED replays the instants.

private let searchWords = ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "kiwi"]

/// Integrity check, `chatlog verify`, and whether both passed.
private struct AfterKill {
    let integrity: String
    let verify: CommandResult

    init(_ sandbox: Sandbox, _ db: String) throws {
        integrity = RawSQLite.integrity(db)
        verify = try sandbox.chatlog(["verify", "--json", "--db", db])
    }

    var integrityOK: Bool { integrity == "ok" }
    var verifyOK: Bool { verify.status == 0 }
    var unopenable: Bool { verify.status == 65 || verify.status == 1 || integrity.hasPrefix("cannot") }
}

/// The longest of `runs` whole runs of `arguments` on copies of `base`, from the moment the
/// process has opened the store to its exit.
private func measureWork(_ arguments: [String], base: String, sandbox: Sandbox, runs: Int) async throws -> Double {
    var longest = 0.0
    let path = sandbox.path("measure.db")
    for _ in 0..<runs {
        try StoreFiles.copy(base, to: path)
        let (child, opened) = try await startAndWaitForOpen(
            arguments + ["--db", "measure.db"], database: path, env: sandbox.environment, cwd: sandbox.directory, scratch: sandbox.root)
        let result = try await child.finish()
        longest = max(longest, Hardening.seconds(ContinuousClock.now - opened))
        guard result.status == 0 else { throw CLITestError("measuring \(arguments.prefix(2)): \(result)") }
    }
    StoreFiles.remove(path)
    return longest
}

@Suite(.serialized) struct CrashTests {
    // MARK: - chatlog log

    /// Per trial: `chatlog log` (a new conversation, or the shared one) reading its message from
    /// stdin; once it is blocked reading (startup done), the message is written, stdin closed,
    /// and the process killed at a random instant within the time the rest of a run takes (open,
    /// seal, commit, print). An acknowledged message (the command printed its id) must be there
    /// with its text; a new conversation never appears without its message.
    @Test func killDuringLog() async throws {
        let trials = 30 * Hardening.scale
        let sandbox = try Sandbox()
        let key = try MasterKey(base64: sandbox.key)
        let db = sandbox.path("chatlog.db")
        let setup = try ChatLogStore.create(at: db, key: .key(key))
        let shared = try await setup.createConversation(NewConversation(title: "shared"))
        try setup.close()

        /// Starts `chatlog log`, waits until it blocks reading stdin, sends `text` and closes stdin.
        func start(_ target: [String], _ text: String) async throws -> (BackgroundProcess, ContinuousClock.Instant) {
            let child = try BackgroundProcess(
                ["log", "--json", "--db", db] + target, env: sandbox.environment, cwd: sandbox.directory, scratch: sandbox.root,
                keepStdinOpen: true)
            try? await waitFor("chatlog log reads stdin", timeout: 10) { child.isReadingStdin || child.hasExited }
            child.writeStdin(Data(text.utf8))
            child.closeStdin()
            return (child, ContinuousClock.now)
        }

        var acknowledged: [String: String] = [:]  // message id → text
        var attempted: Set<String> = []
        var measuredRuns: [Double] = []
        for index in 0..<3 {
            attempted.insert("measure \(index)")
            let (child, sent) = try await start(["--conversation", shared.rawValue], "measure \(index)")
            let result = try await child.finish()
            measuredRuns.append(Hardening.seconds(ContinuousClock.now - sent))
            try #require(result.status == 0, "\(result)")
            acknowledged[try JSONDecoder().decode(LoggedJSON.self, from: result.stdout).message_id] = "measure \(index)"
        }
        let fullRun = measuredRuns.max()!
        var window = fullRun

        var random = SeededRandom()
        var lost = 0, halfWritten = 0, unopenable = 0, integrityFailures = 0, verifyFailures = 0, foreign = 0
        var killed = 0, completed = 0, committedUnacknowledged = 0
        for trial in 0..<trials {
            let text = "crash log \(trial) \(searchWords[trial % searchWords.count])"
            attempted.insert(text)
            let target = trial % 2 == 1 ? ["--conversation", shared.rawValue] : ["--title", "crash \(trial)"]
            let delay = Double.random(in: 0...window, using: &random)
            let (child, sent) = try await start(target, text)
            if let ran = try await killAfter(child, started: sent, delay: delay) { window = ran } else { window = min(fullRun, window * 1.02) }
            let result = try await child.finish()
            #expect(result.status == 0 || result.status == 128 + SIGKILL, "trial \(trial): \(result)")
            if result.status == 0 {
                completed += 1
                let logged = try JSONDecoder().decode(LoggedJSON.self, from: result.stdout)
                acknowledged[logged.message_id] = text
            } else {
                killed += 1
            }

            let check = try AfterKill(sandbox, db)
            #expect(check.integrityOK, "trial \(trial): \(check.integrity)")
            #expect(check.verifyOK, "trial \(trial): \(check.verify)")
            if !check.integrityOK { integrityFailures += 1 }
            if !check.verifyOK { verifyFailures += 1 }
            do {
                let store = try ChatLogStore.open(at: db, key: .key(key))
                defer { try? store.close() }
                var stored: [String: String] = [:]
                for conversation in try await store.conversations(ConversationQuery(limit: 10_000)).conversations {
                    let transcript = try await store.transcript(conversation.id)
                    if transcript.messages.isEmpty { halfWritten += 1 }
                    for message in transcript.messages { stored[message.id.rawValue] = message.content }
                    if conversation.id == shared {
                        #expect(transcript.messages.map(\.position) == Array(0..<transcript.messages.count), "trial \(trial)")
                    }
                }
                let missing = acknowledged.filter { stored[$0.key] != $0.value }
                lost = missing.count
                #expect(missing.isEmpty, "trial \(trial): \(missing.count) acknowledged messages missing or changed")
                let strangers = stored.values.filter { !attempted.contains($0) }
                foreign += strangers.count
                #expect(strangers.isEmpty, "trial \(trial): messages with unexpected content")
                if result.status != 0, stored.values.contains(text) { committedUnacknowledged += 1 }
            } catch {
                unopenable += 1
                Issue.record("trial \(trial): the store does not open after the kill: \(error)")
            }
        }
        #expect(halfWritten == 0)
        print(
            "kill during chatlog log: \(trials) trials (\(killed) killed, \(completed) finished first), "
                + "\(acknowledged.count) acknowledged messages, \(lost) lost, \(halfWritten) half-written visible, \(foreign) unexpected, "
                + "\(unopenable) unopenable, \(integrityFailures) integrity-check failures, \(verifyFailures) verify failures; "
                + "\(committedUnacknowledged) killed runs had committed before the kill; "
                + "kill window \(Hardening.format(fullRun)) s after stdin closed; seed \(random.seed)")
    }

    // MARK: - A driver appending and logging exchanges

    /// Per trial, on a fresh copy of an empty store: `chatlog-test-driver append-loop` (one
    /// message per transaction to one conversation) or `exchange-loop` (two prompt messages and a
    /// completion per transaction, every other one in a new conversation), killed at a random
    /// instant. Every acknowledged commit is there with its exact content; at most the one commit
    /// in flight is there unacknowledged; no exchange is visible in part.
    @Test func killDuringDriverAppends() async throws {
        let trials = 30 * Hardening.scale
        let sandbox = try Sandbox()
        let key = try MasterKey(base64: sandbox.key)
        let base = sandbox.path("base.db")
        let setup = try ChatLogStore.create(at: base, key: .key(key))
        let shared = try await setup.createConversation(NewConversation(title: "shared"))
        try setup.checkpoint()
        try setup.close()
        let driver = try Hardening.driverURL()

        // The time to the first commit, measured once: kills land from startup to ~0.4 s of commits.
        let measurePath = sandbox.path("measure.db")
        try StoreFiles.copy(base, to: measurePath)
        let started = ContinuousClock.now
        let measuring = try BackgroundProcess(
            ["append-loop", "--db", measurePath, "--conversation", shared.rawValue, "--stop-file", sandbox.path("stop-measure")],
            env: sandbox.environment, cwd: sandbox.directory, scratch: sandbox.root, executable: driver)
        try await waitFor("the first commit") {
            if measuring.hasExited { throw CLITestError("the driver exited: \(measuring.errorSoFar)") }
            return measuring.outputSoFar.contains("committed ")
        }
        let firstCommit = Hardening.seconds(ContinuousClock.now - started)
        measuring.signal(SIGKILL)
        _ = try await measuring.finish()
        StoreFiles.remove(measurePath)
        let window = firstCommit + 0.4

        var random = SeededRandom()
        var acknowledgedTotal = 0, lost = 0, halfWritten = 0, inFlight = 0, tooMany = 0, unopenable = 0
        var integrityFailures = 0, verifyFailures = 0, beforeFirstCommit = 0
        var exchangeTrials = 0
        for trial in 0..<trials {
            let path = sandbox.path("trial-\(trial).db")
            try StoreFiles.copy(base, to: path)
            let exchange = trial % 2 == 1
            if exchange { exchangeTrials += 1 }
            let label = "t\(trial)"
            let stop = sandbox.path("stop-\(trial)")
            let arguments =
                exchange
                ? ["exchange-loop", "--db", path, "--stop-file", stop, "--label", label, "--seconds", "60"]
                : ["append-loop", "--db", path, "--conversation", shared.rawValue, "--stop-file", stop, "--label", label, "--seconds", "60"]
            let delay = Double.random(in: 0...window, using: &random)
            let launched = ContinuousClock.now
            let child = try BackgroundProcess(arguments, env: sandbox.environment, cwd: sandbox.directory, scratch: sandbox.root, executable: driver)
            _ = try await killAfter(child, started: launched, delay: delay)
            let result = try await child.finish()
            #expect(result.status == 128 + SIGKILL, "trial \(trial): \(result)")
            // Only whole lines: each is one write(2), so a kill cannot cut one; a torn one is ignored.
            let lines = result.out.split(separator: "\n", omittingEmptySubsequences: false).dropLast().map(String.init)
            let commits = lines.filter { $0.hasPrefix("committed ") }.map { $0.split(separator: " ").map(String.init) }
            acknowledgedTotal += commits.count
            if commits.isEmpty { beforeFirstCommit += 1 }

            let check = try AfterKill(sandbox, path)
            #expect(check.integrityOK, "trial \(trial): \(check.integrity)")
            #expect(check.verifyOK, "trial \(trial): \(check.verify)")
            if !check.integrityOK { integrityFailures += 1 }
            if !check.verifyOK { verifyFailures += 1 }
            do {
                let store = try ChatLogStore.open(at: path, key: .key(key))
                defer { try? store.close() }
                if exchange {
                    var present = 0
                    var byID: [String: (conversation: String, content: String)] = [:]
                    for conversation in try await store.conversations(ConversationQuery(limit: 10_000)).conversations where conversation.id != shared {
                        let transcript = try await store.transcript(conversation.id)
                        if transcript.messages.count % 3 != 0 || transcript.messages.isEmpty { halfWritten += 1 }
                        present += transcript.messages.count / 3
                        for message in transcript.messages { byID[message.id.rawValue] = (conversation.id.rawValue, message.content) }
                    }
                    for commit in commits where commit.count == 4 {
                        let ids = commit[3].split(separator: ",").map(String.init)
                        for (part, id) in ids.enumerated()
                        where byID[id]?.content != "\(label) exchange \(commit[1]) part \(part)" || byID[id]?.conversation != commit[2] {
                            lost += 1
                        }
                    }
                    if present == commits.count + 1 { inFlight += 1 } else if present != commits.count { tooMany += 1 }
                    #expect(present == commits.count || present == commits.count + 1, "trial \(trial): \(present) exchanges, \(commits.count) acknowledged")
                } else {
                    let messages = try await store.transcript(shared).messages
                    let expected = (0..<messages.count).map { "\(label) message \($0)" }
                    #expect(messages.map(\.content) == expected, "trial \(trial): contents")
                    for commit in commits where commit.count == 3 {
                        guard let index = Int(commit[1]), index < messages.count, messages[index].id.rawValue == commit[2],
                            messages[index].content == "\(label) message \(index)"
                        else {
                            lost += 1
                            continue
                        }
                    }
                    if messages.count == commits.count + 1 { inFlight += 1 } else if messages.count != commits.count { tooMany += 1 }
                    #expect(
                        messages.count == commits.count || messages.count == commits.count + 1,
                        "trial \(trial): \(messages.count) messages, \(commits.count) acknowledged")
                }
            } catch {
                unopenable += 1
                Issue.record("trial \(trial): the store does not open after the kill: \(error)")
            }
            #expect(lost == 0 && halfWritten == 0, "trial \(trial)")
            StoreFiles.remove(path)
        }
        print(
            "kill during driver appends: \(trials) trials (\(trials - exchangeTrials) append-loop, \(exchangeTrials) exchange-loop of 3 "
                + "messages per transaction), \(acknowledgedTotal) acknowledged commits, \(lost) acknowledged messages lost, "
                + "\(halfWritten) half-written visible, \(inFlight) commits in flight at the kill kept, \(tooMany) unexplained counts, "
                + "\(unopenable) unopenable, \(integrityFailures) integrity-check failures, \(verifyFailures) verify failures, "
                + "\(beforeFirstCommit) kills before the first commit; kill window \(Hardening.format(window)) s; seed \(random.seed)")
    }

    // MARK: - chatlog import

    /// A JSONL file of 2,000 conversations (1–4 messages each, with their own ids), imported in
    /// the default batches of 200 conversations per transaction: killed at a random instant, the
    /// store holds exactly the first k whole batches; the re-run adds exactly the rest.
    @Test func killDuringImport() async throws {
        let trials = 6 * Hardening.scale
        let total = 2_000
        let batch = 200
        let sandbox = try Sandbox()
        let key = try MasterKey(base64: sandbox.key)
        let base = sandbox.path("base.db")
        try ChatLogStore.create(at: base, key: .key(key)).close()

        struct Source {
            let id: String
            let title: String
            let contents: [String]
        }
        var sources: [Source] = []
        var jsonl = Data()
        for index in 0..<total {
            let id = UUID().uuidString.lowercased()
            let contents = (0...(index % 4)).map { "import \(index) line \($0) \(searchWords[(index + $0) % searchWords.count])" }
            sources.append(Source(id: id, title: "imported \(index)", contents: contents))
            let messages = contents.enumerated().map { ["role": $0.offset % 2 == 0 ? "user" : "assistant", "content": $0.element] }
            let record: [String: Any] = ["id": id, "title": "imported \(index)", "messages": messages]
            jsonl.append(try JSONSerialization.data(withJSONObject: record))
            jsonl.append(0x0A)
        }
        try jsonl.write(to: sandbox.url("source.jsonl"))
        let expectedCounts = Dictionary(uniqueKeysWithValues: sources.map { ($0.id, $0.contents.count) })
        let importArguments = ["import", "--json", "--format", "openai-jsonl", "source.jsonl"]

        let fullRun = try await measureWork(importArguments, base: base, sandbox: sandbox, runs: 2)
        var window = fullRun

        var random = SeededRandom()
        var partialBatches = 0, wrongCounts = 0, notPrefix = 0, unopenable = 0, integrityFailures = 0, verifyFailures = 0
        var rerunMismatches = 0, contentMismatches = 0, finishedFirst = 0
        var presentAfterKill: [Int] = []
        for trial in 0..<trials {
            let name = "trial-\(trial).db"
            let path = sandbox.path(name)
            try StoreFiles.copy(base, to: path)
            let delay = Double.random(in: 0...window, using: &random)
            let (child, launched) = try await startAndWaitForOpen(
                importArguments + ["--db", name], database: path, env: sandbox.environment, cwd: sandbox.directory, scratch: sandbox.root)
            if let ran = try await killAfter(child, started: launched, delay: delay) { window = ran } else { window = min(fullRun, window * 1.02) }
            let killed = try await child.finish()
            #expect(killed.status == 0 || killed.status == 128 + SIGKILL, "trial \(trial): \(killed)")
            if killed.status == 0 { finishedFirst += 1 }

            let check = try AfterKill(sandbox, path)
            #expect(check.integrityOK, "trial \(trial): \(check.integrity)")
            #expect(check.verifyOK, "trial \(trial): \(check.verify)")
            if !check.integrityOK { integrityFailures += 1 }
            if !check.verifyOK { verifyFailures += 1 }
            if check.unopenable { unopenable += 1 }
            let counts = try RawSQLite.messageCounts(path)
            presentAfterKill.append(counts.count)
            // Whole batches only, in file order, each conversation with all its messages.
            if counts.count % batch != 0 && counts.count != total { partialBatches += 1 }
            if counts.contains(where: { expectedCounts[$0.key] != $0.value }) { wrongCounts += 1 }
            if Set(counts.keys) != Set(sources.prefix(counts.count).map(\.id)) { notPrefix += 1 }
            #expect(counts.count % batch == 0 || counts.count == total, "trial \(trial): \(counts.count) conversations after the kill")
            #expect(!counts.contains { expectedCounts[$0.key] != $0.value }, "trial \(trial): a conversation with a wrong message count")

            // The re-run imports exactly the missing conversations.
            let rerun = try sandbox.chatlog(importArguments + ["--db", name])
            #expect(rerun.status == 0, "trial \(trial): \(rerun)")
            if let report = try? JSONDecoder().decode(ImportReportJSON.self, from: rerun.stdout) {
                let missing = sources.filter { counts[$0.id] == nil }
                let good = report.conversations == missing.count && report.duplicates == counts.count
                    && report.messages == missing.reduce(0) { $0 + $1.contents.count }
                if !good { rerunMismatches += 1 }
                #expect(good, "trial \(trial): re-run \(report) after \(counts.count) were imported")
            } else {
                rerunMismatches += 1
                Issue.record("trial \(trial): no JSON report from the re-run: \(rerun)")
            }
            let after = try RawSQLite.messageCounts(path)
            #expect(after == expectedCounts, "trial \(trial): after the re-run, \(after.count) conversations")
            #expect(RawSQLite.integrity(path) == "ok", "trial \(trial)")
            // A sample read back through the library, contents exact.
            let store = try ChatLogStore.open(at: path, key: .key(key))
            for _ in 0..<10 {
                let source = sources[Int.random(in: 0..<total, using: &random)]
                let transcript = try await store.transcript(ConversationID(source.id)!)
                if transcript.messages.map(\.content) != source.contents || transcript.conversation.title != source.title {
                    contentMismatches += 1
                }
            }
            try store.close()
            StoreFiles.remove(path)
        }
        #expect(contentMismatches == 0)
        print(
            "kill during import (openai-jsonl, \(total) conversations, batches of \(batch)): \(trials) trials "
                + "(\(finishedFirst) finished before the kill), conversations present after the kill \(presentAfterKill), "
                + "\(partialBatches) partial batches visible, \(wrongCounts) conversations with a wrong message count, "
                + "\(notPrefix) not a prefix of the file, \(unopenable) unopenable, \(integrityFailures) integrity-check failures, "
                + "\(verifyFailures) verify failures, \(rerunMismatches) re-runs that did not add exactly the missing ones, "
                + "\(contentMismatches) content mismatches; kill window \(Hardening.format(fullRun)) s from opening the store; seed \(random.seed)")
    }

    // MARK: - chatlog rm and prune

    /// A store of 200 old conversations (3 messages, 60 days old) and 40 recent ones: `chatlog rm`
    /// of the 200 (100 per transaction) or `chatlog prune --older-than 30d`, killed at a random
    /// instant. Each old conversation is all there or all gone, the recent ones are untouched,
    /// and the re-run deletes exactly the rest and leaves none of their ciphertext in the files.
    @Test func killDuringRemoveAndPrune() async throws {
        let trials = 16 * Hardening.scale
        let sandbox = try Sandbox()
        let key = try MasterKey(base64: sandbox.key)
        let base = sandbox.path("base.db")
        let setup = try ChatLogStore.create(at: base, key: .key(key))
        let old = Date().addingTimeInterval(-60 * 86_400)
        var doomed: [ConversationID] = []
        for index in 0..<200 {
            let id = try await setup.createConversation(NewConversation(title: "old \(index)", subject: "user-\(index % 7)", createdAt: old))
            try await setup.append(
                (0..<3).map { NewMessage(role: .user, content: "old \(index) line \($0) \(searchWords[$0])", createdAt: old) }, to: id)
            doomed.append(id)
        }
        var keepers: [ConversationID] = []
        for index in 0..<40 {
            let id = try await setup.createConversation(NewConversation(title: "recent \(index)"))
            try await setup.append((0..<2).map { NewMessage(role: .assistant, content: "recent \(index) line \($0) kiwi") }, to: id)
            keepers.append(id)
        }
        try setup.checkpoint()
        try setup.close()
        let doomedSet = Set(doomed.map(\.rawValue))
        // Ciphertext of some of the doomed messages, to look for in the files afterwards.
        let sealed: [Data] = try RawSQLite.read(base) { db in
            try Data.fetchAll(
                db,
                sql: """
                    SELECT m.content FROM messages m JOIN conversations c ON c.seq = m.conversation_seq
                    WHERE c.updated_at < ? ORDER BY m.seq LIMIT 600
                    """, arguments: [Int64(Date().addingTimeInterval(-30 * 86_400).timeIntervalSince1970 * 1000)])
        }.enumerated().filter { $0.offset % 15 == 0 }.map { $0.element.suffix(32) }
        #expect(sealed.count == 40 && sealed.allSatisfy { StoreFiles.contain(base, $0) })

        let commands: [(name: String, arguments: [String])] = [
            ("rm", ["rm", "--json"] + doomed.map(\.rawValue)),
            ("prune", ["prune", "--json", "--older-than", "30d"]),
        ]
        var windows: [Double] = []
        for command in commands { windows.append(try await measureWork(command.arguments, base: base, sandbox: sandbox, runs: 3)) }
        let fullRuns = windows

        var random = SeededRandom()
        var halfDeleted = 0, keepersDamaged = 0, unopenable = 0, integrityFailures = 0, verifyFailures = 0
        var rerunMismatches = 0, leftAfterRerun = 0, residualCiphertext = 0, finishedFirst = 0
        var deletedAtKill: [String] = []
        for trial in 0..<trials {
            let which = trial % 2
            let command = commands[which]
            let name = "trial-\(trial).db"
            let path = sandbox.path(name)
            try StoreFiles.copy(base, to: path)
            // Half the kills anywhere in the work, half in its last 40 % (the first transaction
            // takes most of a run: deleting decrypts every message to re-blind its terms).
            let lowest = (trial / 2) % 2 == 1 ? 0.6 * windows[which] : 0
            let delay = Double.random(in: lowest...windows[which], using: &random)
            let (child, launched) = try await startAndWaitForOpen(
                command.arguments + ["--db", name], database: path, env: sandbox.environment, cwd: sandbox.directory, scratch: sandbox.root)
            if let ran = try await killAfter(child, started: launched, delay: delay) {
                windows[which] = ran
            } else {
                windows[which] = min(fullRuns[which], windows[which] * 1.02)
            }
            let killed = try await child.finish()
            #expect(killed.status == 0 || killed.status == 128 + SIGKILL, "trial \(trial): \(killed)")
            if killed.status == 0 { finishedFirst += 1 }

            let check = try AfterKill(sandbox, path)
            #expect(check.integrityOK, "trial \(trial): \(check.integrity)")
            #expect(check.verifyOK, "trial \(trial): \(check.verify)")
            if !check.integrityOK { integrityFailures += 1 }
            if !check.verifyOK { verifyFailures += 1 }
            if check.unopenable { unopenable += 1 }
            let counts = try RawSQLite.messageCounts(path)
            let remaining = counts.keys.filter { doomedSet.contains($0) }.count
            deletedAtKill.append("\(command.name) \(200 - remaining)")
            let partial = counts.filter { doomedSet.contains($0.key) && $0.value != 3 }.count
            halfDeleted += partial
            #expect(partial == 0, "trial \(trial): \(partial) conversations partly deleted")
            let keptWhole = keepers.allSatisfy { counts[$0.rawValue] == 2 }
            if !keptWhole { keepersDamaged += 1 }
            #expect(keptWhole, "trial \(trial): a recent conversation was touched")

            // The re-run deletes exactly the rest.
            let rerun = try sandbox.chatlog(command.arguments + ["--db", name])
            let object = try? jsonObject(rerun.stdout)
            let good: Bool
            if which == 0 {
                good = rerun.status == (remaining == 200 ? 0 : 66) && object?["deleted"] as? Int == remaining
            } else {
                good = rerun.status == 0 && object?["conversations"] as? Int == remaining && object?["messages"] as? Int == 3 * remaining
            }
            if !good { rerunMismatches += 1 }
            #expect(good, "trial \(trial): \(remaining) left after the kill; re-run: \(rerun)")
            let after = try RawSQLite.messageCounts(path)
            let left = after.keys.filter { doomedSet.contains($0) }.count
            leftAfterRerun += left
            #expect(left == 0 && keepers.allSatisfy { after[$0.rawValue] == 2 } && after.count == keepers.count, "trial \(trial)")
            let residual = sealed.filter { StoreFiles.contain(path, $0) }.count
            residualCiphertext += residual
            #expect(residual == 0, "trial \(trial): ciphertext of \(residual) deleted messages is still in the files")
            #expect(RawSQLite.integrity(path) == "ok", "trial \(trial)")
            StoreFiles.remove(path)
        }
        print(
            "kill during rm/prune: \(trials) trials (\(trials - trials / 2) rm of 200 conversations, \(trials / 2) prune; "
                + "\(finishedFirst) finished before the kill), deleted when killed \(deletedAtKill), "
                + "\(halfDeleted) half-deleted conversations visible, \(keepersDamaged) trials touched a kept conversation, "
                + "\(unopenable) unopenable, \(integrityFailures) integrity-check failures, \(verifyFailures) verify failures, "
                + "\(rerunMismatches) re-runs that did not delete exactly the rest, \(leftAfterRerun) left after the re-run, "
                + "\(residualCiphertext) deleted ciphertexts still in the files; kill windows from opening the store: rm "
                + "\(Hardening.format(fullRuns[0])) s, prune \(Hardening.format(fullRuns[1])) s; seed \(random.seed)")
    }
}
