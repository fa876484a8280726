@_spi(Benchmarks) import ChatLog
import Foundation

// Issue 15: logging with per-subject keys against logging without subjects, in one run, and the
// time `forget` takes for a subject with 1,000 conversations in a large store.

/// Rates (messages per second) of one configuration over the rounds.
struct SubjectLoggingResult {
    var group: [Double] = []
    var groupCPU: [Double] = []
    var single: [Double] = []
    var singleCPU: [Double] = []
}

/// `records` exchanges (a prompt and a completion; each exchange a new conversation) logged as the
/// proxy does (`logProxyRecords`, 100 per group commit), then `singles` more with `logExchange`,
/// one transaction each, by a freshly opened store (nothing cached). The subject of exchange i is
/// "user-(i mod subjects)"; -1: every exchange a subject never seen before (its key made on first
/// use, one more small transaction in the subject-key file). Each subject count runs twice: with
/// subject keys, and as logging was before them (the same subjects sealed and blind-indexed, no
/// subject key): the issue's 0.9× is "with ÷ before". Subject keys of a count > 0 are made before
/// the timed part (returning users). 0 subjects (no subject at all) is shown for reference.
func subjectLogging(subjectCounts: [Int], records: Int, singles: Int, rounds: Int, folder: URL) throws {
    struct Config: Hashable {
        let subjects: Int
        let keys: Bool
    }
    var configs = [Config(subjects: 0, keys: false)]
    for subjects in subjectCounts where subjects != 0 { configs += [Config(subjects: subjects, keys: false), Config(subjects: subjects, keys: true)] }
    var results: [Config: SubjectLoggingResult] = [:]
    var corpus = Corpus(seed: 11)
    let messages = corpus.messages(2 * (records + singles), start: base)
    for round in 1...rounds {
        for config in round % 2 == 1 ? configs : configs.reversed() {
            let subjects = config.subjects
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
            let store = try ChatLogStore.open(at: path, key: .key(key, origin: "benchmark"), options: options)
            func subject(_ index: Int) -> String? {
                switch subjects {
                case 0: nil
                case -1: "new-user-\(index)"
                default: "user-\(index % subjects)"
                }
            }
            var result = results[config] ?? SubjectLoggingResult()
            var cpu = processCPUSeconds()
            let groupTime = try seconds {
                for start in stride(from: 0, to: records, by: 100) {
                    let batch = (start..<min(records, start + 100)).map { index in
                        ProxyRecord(
                            conversation: NewConversation(subject: subject(index), id: ConversationID.generate()),
                            messages: [messages[2 * index], messages[2 * index + 1]], digests: [])
                    }
                    for outcome in try store.logProxyRecords(batch) { _ = try outcome.get() }
                }
            }
            result.group.append(Double(2 * records) / groupTime)
            result.groupCPU.append(Double(2 * records) / (processCPUSeconds() - cpu))
            cpu = processCPUSeconds()
            let singleTime = try seconds {
                for index in records..<(records + singles) {
                    try store.logExchange(
                        ModelExchange(
                            conversation: .new(NewConversation(subject: subject(index))), prompt: [messages[2 * index]],
                            completion: messages[2 * index + 1]))
                }
            }
            result.single.append(Double(2 * singles) / singleTime)
            result.singleCPU.append(Double(2 * singles) / (processCPUSeconds() - cpu))
            results[config] = result
            try store.close()
            for suffix in ["", "-wal", "-shm", ".subject-keys", ".subject-keys-journal"] { try? FileManager.default.removeItem(atPath: path + suffix) }
        }
        FileHandle.standardError.write(Data("subject logging round \(round)/\(rounds) done\n".utf8))
    }
    print("Logging with per-subject keys (issue 15), same run: \(records) exchanges by group commit of 100, \(singles) one per transaction")
    print("store = with subject keys; baseline = the same subjects as before subject keys (ratio = with ÷ before)")
    let none = results[Config(subjects: 0, keys: false)] ?? SubjectLoggingResult()
    for subjects in subjectCounts where subjects != 0 {
        let with = results[Config(subjects: subjects, keys: true)] ?? SubjectLoggingResult()
        let before = results[Config(subjects: subjects, keys: false)] ?? SubjectLoggingResult()
        let name = subjects == -1 ? "log/new subject each exchange" : "log/subjects=\(subjects)"
        report("\(name) group commit", sealed: median(with.group), plain: median(before.group), unit: "msg/s", higherIsBetter: true)
        report("\(name) group commit, per CPU s", sealed: median(with.groupCPU), plain: median(before.groupCPU), unit: "msg/s", higherIsBetter: true)
        report("\(name) one per transaction", sealed: median(with.single), plain: median(before.single), unit: "msg/s", higherIsBetter: true)
        report("\(name) one per transaction, per CPU s", sealed: median(with.singleCPU), plain: median(before.singleCPU), unit: "msg/s", higherIsBetter: true)
        report("\(name) group commit vs no subject at all", sealed: median(with.group), plain: median(none.group), unit: "msg/s", higherIsBetter: true)
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
