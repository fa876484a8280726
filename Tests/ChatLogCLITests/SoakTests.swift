import ChatLog
import Foundation
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

// Concurrency soak (hardening item 4): on one store, for 20 s × CHATLOG_TEST_SCALE, eight writer
// processes (`chatlog-test-driver append-loop`, two per conversation), four searcher processes
// (`chatlog-test-driver search-loop`: every hit decrypted and checked to contain the word, and
// exact hit counts in conversations nobody writes to), and `chatlog key rotate --new` run over
// and over (data and index keys in turn). At the end: the store holds exactly the acknowledged
// appends, in each writer's order; every search was verified; no writer or searcher saw
// SQLITE_BUSY (exit 75 or a "busy"/"locked" error); every rotation finished; no row is left under
// an old key; `chatlog verify` passes.

@Suite struct SoakTests {
    @Test func writersSearchersAndRotationsOnOneFile() async throws {
        let duration = 20.0 * Double(Hardening.scale)
        let sandbox = try Sandbox()
        let key = try MasterKey(base64: sandbox.key)
        let db = sandbox.path("chatlog.db")
        let driver = try Hardening.driverURL()
        let fruits = ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach"]
        let colours = ["red", "green", "blue", "amber", "violet"]

        // Four conversations nobody writes to (for exact counts), four for the writers.
        let store = try ChatLogStore.create(at: db, key: .key(key))
        var exact: [String] = []
        var staticMessages = 0
        for index in 0..<4 {
            let id = try await store.createConversation(NewConversation(title: "static \(index)", subject: "user-\(index)"))
            let contents = (0..<150).map { "static s\(index) m\($0) \(fruits[$0 % 7]) \(colours[$0 % 5])" }
            try await store.append(contents.map { NewMessage(role: .user, content: $0) }, to: id)
            staticMessages += contents.count
            let word = fruits[index]
            exact.append("\(id.rawValue):\(word):\(contents.filter { Tokenizer.tokens($0).contains(word) }.count)")
        }
        var targets: [ConversationID] = []
        for index in 0..<4 { targets.append(try await store.createConversation(NewConversation(title: "written \(index)"))) }
        try store.checkpoint()
        try store.close()

        let stop = sandbox.path("stop")
        let seconds = String(Int(duration) + 120)
        let writers = try (0..<8).map { writer in
            try BackgroundProcess(
                ["append-loop", "--db", db, "--conversation", targets[writer % 4].rawValue, "--stop-file", stop, "--seconds", seconds,
                 "--label", "w\(writer) \(fruits[writer % 7])"],
                env: sandbox.environment, cwd: sandbox.directory, scratch: sandbox.root, executable: driver)
        }
        let searchers = try (0..<4).map { searcher in
            try BackgroundProcess(
                ["search-loop", "--db", db, "--words", (0..<7).map { fruits[($0 + searcher) % 7] }.joined(separator: ","), "--exclude",
                 colours[searcher], "--stop-file", stop, "--seconds", seconds, "--exact", exact.joined(separator: ",")],
                env: sandbox.environment, cwd: sandbox.directory, scratch: sandbox.root, executable: driver)
        }
        let committed: @Sendable () -> Int = {
            writers.reduce(0) { $0 + $1.outputSoFar.split(separator: "\n").filter { $0.hasPrefix("committed ") }.count }
        }

        // Rotations, one after another, until the time is up.
        let started = ContinuousClock.now
        var rotations: [String: Int] = [:]
        var rotationFailures: [String] = []
        var round = 0
        while Hardening.seconds(ContinuousClock.now - started) < duration {
            let index = round % 2 == 1
            let result = try await runOffPool(
                ["key", "rotate", "--new", "--batch-size", "200", "--json", "--db", db] + (index ? ["--index"] : []), env: sandbox.environment,
                cwd: sandbox.directory, timeout: 300)
            rotations["\(index ? "index" : "data") exit \(result.status)", default: 0] += 1
            if result.status != 0 && result.status != 75 { rotationFailures.append(result.description) }
            round += 1
            if writers.contains(where: \.hasExited) || searchers.contains(where: \.hasExited) { break }
        }
        let elapsed = Hardening.seconds(ContinuousClock.now - started)
        let committedWhileRotating = committed()
        try Data().write(to: URL(fileURLWithPath: stop))
        var writerResults: [CommandResult] = []
        for writer in writers { writerResults.append(try await writer.finish(timeout: 120)) }
        var searcherResults: [CommandResult] = []
        for searcher in searchers { searcherResults.append(try await searcher.finish(timeout: 120)) }
        #expect(rotationFailures.isEmpty, "\(rotationFailures.prefix(2))")

        // Exact counts: the store holds the static messages and every acknowledged append.
        var acknowledged = 0
        var busy = 0
        var perConversation: [ConversationID: [String: [String]]] = [:]
        for (index, result) in writerResults.enumerated() {
            #expect(result.status == 0 && result.stderr.isEmpty, "writer \(index): \(result)")
            if result.status == 75 || result.err.lowercased().contains("busy") || result.err.contains("locked") { busy += 1 }
            let lines = result.out.split(separator: "\n")
            let commits = lines.filter { $0.hasPrefix("committed ") }.map { $0.split(separator: " ").map(String.init) }
            #expect(lines.last.map(String.init) == "total \(commits.count)", "writer \(index)")
            acknowledged += commits.count
            perConversation[targets[index % 4], default: [:]]["w\(index) \(fruits[index % 7])"] = commits.map { $0[2] }
        }
        var searches = 0, hits = 0, searchFailures = 0
        for (index, result) in searcherResults.enumerated() {
            #expect(result.status == 0 && result.stderr.isEmpty, "searcher \(index): \(result)")
            if result.status != 0 { searchFailures += 1 }
            if result.status == 75 || result.err.lowercased().contains("busy") || result.err.contains("locked") { busy += 1 }
            if let last = result.out.split(separator: "\n").last, last.hasPrefix("searches ") {
                let fields = last.split(separator: " ")
                searches += Int(fields[1]) ?? 0
                hits += Int(fields[3]) ?? 0
            }
        }

        let check = try ChatLogStore.open(at: db, key: .key(key))
        defer { try? check.close() }
        let counts = try await check.counts()
        #expect(counts.messages == staticMessages + acknowledged, "\(counts.messages) messages, \(staticMessages) + \(acknowledged) acknowledged")
        var orderProblems = 0
        for (conversation, byLabel) in perConversation {
            let transcript = try await check.transcript(conversation)
            #expect(transcript.messages.map(\.position) == Array(0..<transcript.messages.count))
            for (label, ids) in byLabel {
                let own = transcript.messages.filter { $0.content.hasPrefix(label + " message ") }
                if own.map(\.id.rawValue) != ids || own.map(\.content) != (0..<ids.count).map({ "\(label) message \($0)" }) {
                    orderProblems += 1
                }
            }
        }
        #expect(orderProblems == 0)
        let status = try await check.keyStatus()
        let leftOld = status.keys.filter { $0.state != .active }.reduce(0) { $0 + $1.rowCount }
        #expect(leftOld == 0, "rows under old keys: \(status.keys.filter { $0.rowCount > 0 && $0.state != .active })")
        let verify = try sandbox.chatlog(["verify", "--json", "--db", db])
        #expect(verify.status == 0, "\(verify)")
        #expect(busy == 0)
        print(
            "concurrency soak: \(Hardening.format(elapsed)) s, 8 writer processes committed \(acknowledged) messages "
                + "(\(committedWhileRotating) while rotations ran), store holds \(counts.messages - staticMessages) of them "
                + "(\(counts.messages == staticMessages + acknowledged ? "exact" : "MISMATCH")), \(orderProblems) out-of-order writers; "
                + "4 searcher processes ran \(searches) searches, \(hits) hits all verified after decryption, \(searchFailures) failed; "
                + "rotations \(rotations.sorted { $0.key < $1.key }.map { "\($0.key) ×\($0.value)" }.joined(separator: ", ")); "
                + "\(busy) busy errors reached a writer or searcher; \(leftOld) rows under old keys; verify exit \(verify.status)")
    }
}
