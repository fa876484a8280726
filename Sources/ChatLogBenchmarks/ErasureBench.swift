@_spi(Benchmarks) import ChatLog
import Foundation

// Issue 15: logging with per-subject keys against logging without subjects, in one run, and the
// time `forget` takes for a subject with 1,000 conversations in a large store.

/// Wall and CPU seconds one side of a comparison spent in the timed parts of one round.
struct SideTimes {
    var groupWall = 0.0
    var groupCPU = 0.0
    var singleWall = 0.0
    var singleCPU = 0.0
}

/// `records` exchanges (a prompt and a completion; each exchange a new conversation) logged as the
/// proxy does (`logProxyRecords`, 100 per group commit), then `singles` more with `logExchange`,
/// one transaction each. The subject of exchange i is "user-(i mod subjects)"; -1: every exchange
/// a subject never seen before (its key made on first use, one more small transaction in the
/// subject-key file). Each subject count is logged by two stores side by side: one with subject
/// keys, one as logging was before them (the same subjects sealed and blind-indexed, no subject
/// key); the issue's 0.9× is "with ÷ before". The two stores take turns batch by batch (ABBA: each
/// group of 100, and each run of 10 single exchanges, alternately first), so both see the same
/// machine load (another process's build slows both alike) and each round gives a paired ratio.
/// Subject keys of a count > 0 are made before the timed part (returning users). 0 subjects (no
/// subject at all) is shown for reference. `side` ("with" or "before") logs that side alone (for
/// profiles).
func subjectLogging(subjectCounts: [Int], records: Int, singles: Int, rounds: Int, side only: String?, folder: URL) throws {
    struct Config: Hashable {
        let subjects: Int
        let keys: Bool
    }
    var times: [Config: [SideTimes]] = [:]
    var corpus = Corpus(seed: 11)
    let messages = corpus.messages(2 * (records + singles), start: base)
    for round in 1...rounds {
        for subjects in round % 2 == 1 ? subjectCounts : subjectCounts.reversed() where only == nil || subjects != 0 {
            var configs = subjects == 0 ? [Config(subjects: 0, keys: false)] : [Config(subjects: subjects, keys: false), Config(subjects: subjects, keys: true)]
            configs = configs.filter { only == nil || only == ($0.keys ? "with" : "before") }
            if round % 2 == 0 { configs.reverse() }
            var stores: [ChatLogStore] = []
            var paths: [String] = []
            for config in configs {
                let path = folder.appendingPathComponent("subjects-\(subjects)-\(config.keys)-\(round).db").path
                let key = MasterKey.generate()
                var options = ChatLogStore.Options()
                options.sealsUnderSubjectKeys = config.keys
                let created = try ChatLogStore.create(at: path, key: .key(key, origin: "benchmark"), options: options)
                if subjects > 0, config.keys {
                    let made = try seconds { try created.prepareSubjectKeys((0..<subjects).map { "user-\($0)" }) }
                    FileHandle.standardError.write(Data("round \(round): \(subjects) subject keys made in \(String(format: "%.1f", made)) s\n".utf8))
                }
                try created.close()
                stores.append(try ChatLogStore.open(at: path, key: .key(key, origin: "benchmark"), options: options))
                paths.append(path)
            }
            func subject(_ index: Int) -> String? {
                switch subjects {
                case 0: nil
                case -1: "new-user-\(index)"
                default: "user-\(index % subjects)"
                }
            }
            var spent = [SideTimes](repeating: SideTimes(), count: configs.count)
            /// Runs `body` for each side in turn, the order flipped every call; adds the time taken.
            func alternate(_ turn: Int, _ time: WritableKeyPath<SideTimes, Double>, _ cpu: WritableKeyPath<SideTimes, Double>,
                _ body: (ChatLogStore) throws -> Void) throws {
                for side in turn % 2 == 0 ? Array(stores.indices) : stores.indices.reversed() {
                    let before = processCPUSeconds()
                    spent[side][keyPath: time] += try seconds { try body(stores[side]) }
                    spent[side][keyPath: cpu] += processCPUSeconds() - before
                }
            }
            for (turn, start) in stride(from: 0, to: records, by: 100).enumerated() {
                let batch = (start..<min(records, start + 100)).map { index in
                    (NewConversation(subject: subject(index)), [messages[2 * index], messages[2 * index + 1]])
                }
                try alternate(turn, \.groupWall, \.groupCPU) { store in
                    // Each store its own conversation ids (the proxy names them before logging).
                    let records = batch.map { conversation, messages in
                        var conversation = conversation
                        conversation.id = ConversationID.generate()
                        return ProxyRecord(conversation: conversation, messages: messages, digests: [])
                    }
                    for outcome in try store.logProxyRecords(records) { _ = try outcome.get() }
                }
            }
            for (turn, start) in stride(from: records, to: records + singles, by: 10).enumerated() {
                try alternate(turn, \.singleWall, \.singleCPU) { store in
                    for index in start..<min(records + singles, start + 10) {
                        try store.logExchange(
                            ModelExchange(
                                conversation: .new(NewConversation(subject: subject(index))), prompt: [messages[2 * index]],
                                completion: messages[2 * index + 1]))
                    }
                }
            }
            for (config, side) in zip(configs, spent) { times[config, default: []].append(side) }
            for (store, path) in zip(stores, paths) {
                try store.close()
                for suffix in ["", "-wal", "-shm", ".subject-keys", ".subject-keys-journal"] { try? FileManager.default.removeItem(atPath: path + suffix) }
            }
        }
        FileHandle.standardError.write(Data("subject logging round \(round)/\(rounds) done\n".utf8))
    }
    print("Logging with per-subject keys (issue 15), same run: \(records) exchanges by group commit of 100, \(singles) one per transaction")
    print("store = with subject keys; baseline = the same subjects as before subject keys, logged alternately with it")
    print("rates: medians over the rounds; \"paired\": median of the per-round ratios (with ÷ before), [each round's ratio]")
    let rate = { (count: Int, seconds: Double) in Double(2 * count) / seconds }
    let none = times[Config(subjects: 0, keys: false)] ?? []
    for subjects in subjectCounts where subjects != 0 {
        let with = times[Config(subjects: subjects, keys: true)] ?? []
        let before = times[Config(subjects: subjects, keys: false)] ?? []
        let name = subjects == -1 ? "log/new subject each exchange" : "log/subjects=\(subjects)"
        let measures: [(String, Int, KeyPath<SideTimes, Double>)] = [
            ("group commit", records, \.groupWall), ("group commit, per CPU s", records, \.groupCPU),
            ("one per transaction", singles, \.singleWall), ("one per transaction, per CPU s", singles, \.singleCPU),
        ]
        for (measure, count, path) in measures {
            let withRates = with.map { rate(count, $0[keyPath: path]) }
            let beforeRates = before.map { rate(count, $0[keyPath: path]) }
            report("\(name) \(measure)", sealed: median(withRates), plain: median(beforeRates), unit: "msg/s", higherIsBetter: true)
            let paired = zip(withRates, beforeRates).map { $0 / $1 }
            if !paired.isEmpty {
                print(
                    "    paired \(String(format: "%.3f", median(paired)))× ["
                        + paired.map { String(format: "%.3f", $0) }.joined(separator: " ") + "]")
            }
        }
        report(
            "\(name) group commit vs no subject at all", sealed: median(with.map { rate(records, $0.groupWall) }),
            plain: median(none.map { rate(records, $0.groupWall) }), unit: "msg/s", higherIsBetter: true)
    }
    print()
}

/// A store of `size` messages: `size - 2,000` in conversations of 1,000 without subject, and
/// 1,000 conversations of one subject with an exchange each; then `forget` of that subject
/// (dry run first), timed (wall and CPU).
func forgetBenchmark(size: Int, folder: URL) throws {
    let path = folder.appendingPathComponent("forget-\(size).db").path
    let store = try ChatLogStore.create(at: path, key: .key(MasterKey.generate(), origin: "benchmark"))
    var conversations: [ConversationID] = []
    let others = max(0, size - 2_000)
    let buildRate = try build(
        count: others, createConversation: { _ in conversations.append(try store.createConversation(NewConversation(title: "c"))) },
        append: { try store.append($0, to: conversations.last!) })
    var corpus = Corpus(seed: 13)
    let messages = corpus.messages(2_000, start: base.addingTimeInterval(1e8))
    for start in stride(from: 0, to: 1_000, by: 100) {
        let batch = (start..<(start + 100)).map { index in
            ProxyRecord(
                conversation: NewConversation(title: "t", subject: "target-user", id: ConversationID.generate()),
                messages: [messages[2 * index], messages[2 * index + 1]], digests: [])
        }
        for outcome in try store.logProxyRecords(batch) { _ = try outcome.get() }
    }
    try store.checkpoint()
    FileHandle.standardError.write(Data("forget store of \(size) messages built (\(String(format: "%.0f", buildRate)) msg/s)\n".utf8))
    var cpu = processCPUSeconds()
    var report: ForgetReport?
    let dryRun = try seconds { report = try store.forget(subject: "target-user", dryRun: true) }
    let dryCPU = processCPUSeconds() - cpu
    cpu = processCPUSeconds()
    let forget = try seconds { report = try store.forget(subject: "target-user") }
    let forgetCPU = processCPUSeconds() - cpu
    print("forget of a subject with \(report?.conversations ?? 0) conversations (\(report?.messages ?? 0) messages) in a \(size)-message store:")
    print(String(format: "  dry run %.2f s wall, %.2f s CPU; forget %.2f s wall, %.2f s CPU", dryRun, dryCPU, forget, forgetCPU))
    print()
    try store.close()
    for suffix in ["", "-wal", "-shm", ".subject-keys"] { try? FileManager.default.removeItem(atPath: path + suffix) }
}
