// chatlog-bench: release-mode throughput and latency of the sealed store against plaintext
// baselines in the same run. Baselines write the same rows with GRDB into tables of the same
// shape (TEXT where chatlog stores sealed BLOBs), with the same pragmas and per-row SQL, without
// sealing; the search baseline adds an FTS5 index (unicode61, external content, kept by
// triggers) — the way plain-text LLM log stores keep their logs.
//
//   swift run -c release chatlog-bench [--messages 100000] [--single 2000] [--rounds 3]
//                                      [--search-at 100000,1000000] [--queries 30] [--dir DIR]
//
// Scenarios:
//   log/batch-1000   --messages appended 1,000 per transaction (store vs plain tables, no index)
//   log/single       then --single appended one per transaction into that store
//   index/build      at each --search-at size: 1,000 per transaction, store (sealed + blinded
//                    FTS5) vs plain + FTS5
//   query/newest     one- and two-word queries, top 20 newest, with decryption and snippets
//   logging          with --logging N: N messages 1,000 per transaction into the store (sealed +
//                    blinded FTS5) and into plain + FTS5, alternating over --rounds, then --single
//                    one per transaction into each; --write-corpus FILE writes those N messages for
//                    the C anchor (scripts/bench-logging)
//   subjects         with --subjects 10,10000,1000000: --subject-records exchanges (proxy group commit of
//                    100) and --single exchanges one per transaction, each a new conversation of one of
//                    that many subjects (sealed under its subject key), against the same subjects without
//                    subject keys, the two stores taking turns batch by batch (paired per-round ratios);
//                    -1: every exchange a new subject (its key made on first use); --subject-side with|before
//                    logs one side alone (for profiles)
//   forget           with --forget-at N: forget of a subject with 1,000 conversations in an N-message store
//   query/relevance  top 20 by BM25 for words spread on a log scale over 100–10,000 matching
//                    messages, and for words with 5,000–10,000 matches (the most work in range)
import ChatLog
import Foundation
import GRDB

struct Arguments {
    var messages = 100_000
    var single = 2_000
    var rounds = 3
    var searchAt: [Int] = [100_000]
    var queries = 30
    var importConversations = 0
    var exportAndRotateAt: [Int] = []
    var directory = FileManager.default.temporaryDirectory.path
    var logging = 0
    var corpusPath: String?
    /// With `--only store` or `--only plain`, the logging scenario runs that side alone (for profiles).
    var only: String?
    /// Issue 15: subject counts for the subject-logging scenario (0 = no subject, the baseline).
    var subjects: [Int] = []
    var subjectRecords = 20_000
    var forgetAt: [Int] = []
    /// With `--subject-side with` or `--subject-side before`, the subjects scenario logs that side alone (for profiles).
    var subjectSide: String?

    init() {
        var iterator = CommandLine.arguments.dropFirst().makeIterator()
        while let argument = iterator.next() {
            switch argument {
            case "--messages": messages = Int(iterator.next() ?? "") ?? messages
            case "--single": single = Int(iterator.next() ?? "") ?? single
            case "--rounds": rounds = max(1, Int(iterator.next() ?? "") ?? rounds)
            case "--search-at": searchAt = (iterator.next() ?? "").split(separator: ",").compactMap { Int($0) }
            case "--queries": queries = Int(iterator.next() ?? "") ?? queries
            case "--import": importConversations = Int(iterator.next() ?? "") ?? 0
            case "--export-rotate-at": exportAndRotateAt = (iterator.next() ?? "").split(separator: ",").compactMap { Int($0) }
            case "--dir": directory = iterator.next() ?? directory
            case "--logging": logging = Int(iterator.next() ?? "") ?? 0
            case "--write-corpus": corpusPath = iterator.next()
            case "--only": only = iterator.next()
            case "--subjects": subjects = (iterator.next() ?? "").split(separator: ",").compactMap { Int($0) }
            case "--subject-records": subjectRecords = Int(iterator.next() ?? "") ?? subjectRecords
            case "--subject-side": subjectSide = iterator.next()
            case "--forget-at": forgetAt = (iterator.next() ?? "").split(separator: ",").compactMap { Int($0) }
            default:
                FileHandle.standardError.write(
                    Data("usage: chatlog-bench [--messages N] [--single N] [--rounds N] [--search-at N,N] [--queries N] [--import N] [--export-rotate-at N,N] [--logging N] [--write-corpus FILE] [--only store|plain] [--subjects 0,10,10000] [--subject-records N] [--subject-side with|before] [--forget-at N,N] [--dir DIR]\n".utf8))
                exit(64)
            }
        }
    }
}

/// Deterministic chat-sized text over a Zipf vocabulary (English function words first, then
/// 50,000 pseudo-words): prompts around 600 bytes, completions around 1.5 KB.
struct Corpus {
    static let vocabulary: [String] = {
        let common = """
            the a to of and in is it you that for on with as this be are can not what how your have or if will my
            model token prompt answer please error code function return value python swift database query index key
            """.split(whereSeparator: \.isWhitespace).map(String.init)
        var generator = Corpus(seed: 7)
        let syllables = ["ka", "lo", "mi", "ne", "ru", "ta", "vo", "xi", "be", "da", "fu", "go", "hi", "je", "zu", "pra", "sto", "qen"]
        var words = common
        var seen = Set(common)
        while words.count < 50_000 {
            let length = 2 + Int(generator.next() % 3)
            let word = (0..<length).map { _ in syllables[Int(generator.next() % UInt64(syllables.count))] }.joined()
            if seen.insert(word).inserted { words.append(word) }
        }
        return words
    }()

    /// Cumulative Zipf(s = 1) weights over the vocabulary.
    static let cumulative: [Double] = {
        var total = 0.0
        return vocabulary.indices.map { rank in
            total += 1 / Double(rank + 1)
            return total
        }
    }()

    private var state: UInt64

    init(seed: UInt64) { state = 0x9E37_79B9_7F4A_7C15 &+ seed &* 0xBF58_476D_1CE4_E5B9 }

    mutating func next() -> UInt64 {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        return state
    }

    mutating func word() -> String {
        let target = Double(next() % 1_000_000) / 1_000_000 * Self.cumulative.last!
        var low = 0
        var high = Self.cumulative.count - 1
        while low < high {
            let middle = (low + high) / 2
            if Self.cumulative[middle] < target { low = middle + 1 } else { high = middle }
        }
        return Self.vocabulary[low]
    }

    mutating func text(meanBytes: Int) -> String {
        let target = meanBytes / 2 + Int(next() % UInt64(meanBytes))
        var output = ""
        output.reserveCapacity(target + 16)
        while output.utf8.count < target {
            output += word()
            output += next() % 12 == 0 ? ". " : " "
        }
        return output
    }

    /// Alternating user prompts and assistant completions, one minute apart from `start`.
    mutating func messages(_ count: Int, start: Date) -> [NewMessage] {
        (0..<count).map { index in
            let createdAt = start.addingTimeInterval(Double(index) * 0.06)
            return index % 2 == 0
                ? NewMessage(role: .user, content: text(meanBytes: 600), createdAt: createdAt)
                : NewMessage(
                    role: .assistant, content: text(meanBytes: 1500), model: "gpt-4o-mini", promptTokens: 150,
                    completionTokens: 380, latencyMilliseconds: 900, finishReason: "stop", createdAt: createdAt)
        }
    }
}

/// The plaintext baseline: same shape and pragmas, plain TEXT instead of sealed BLOBs; with
/// `fullText`, an FTS5 index over the content kept by triggers.
final class PlainStore {
    let pool: DatabasePool

    init(path: String, fullText: Bool) throws {
        var configuration = Configuration()
        configuration.busyMode = .timeout(30)
        configuration.prepareDatabase { db in try db.execute(sql: "PRAGMA secure_delete = ON") }
        pool = try DatabasePool(path: path, configuration: configuration)
        try pool.write { db in
            try db.execute(
                sql: """
                    CREATE TABLE conversations (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, created_at INTEGER NOT NULL,
                        updated_at INTEGER NOT NULL, key_id INTEGER NOT NULL, title TEXT, subject TEXT, subject_token BLOB,
                        subject_key_id INTEGER, metadata TEXT);
                    CREATE INDEX conversations_by_created ON conversations (created_at);
                    CREATE INDEX conversations_by_updated ON conversations (updated_at);
                    CREATE INDEX conversations_by_key ON conversations (key_id);
                    CREATE TABLE messages (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,
                        conversation_seq INTEGER NOT NULL REFERENCES conversations (seq) ON DELETE CASCADE,
                        position INTEGER NOT NULL, role TEXT NOT NULL, created_at INTEGER NOT NULL, model TEXT,
                        prompt_tokens INTEGER, completion_tokens INTEGER, latency_ms INTEGER, finish_reason TEXT,
                        key_id INTEGER NOT NULL, content TEXT NOT NULL, metadata TEXT, UNIQUE (conversation_seq, position));
                    CREATE INDEX messages_by_created ON messages (created_at);
                    CREATE INDEX messages_by_key ON messages (key_id);
                    """)
            if fullText {
                try db.execute(
                    sql: """
                        CREATE VIRTUAL TABLE messages_fts USING fts5 (content, content = 'messages', content_rowid = 'seq',
                            tokenize = 'unicode61');
                        CREATE TRIGGER messages_ai AFTER INSERT ON messages BEGIN
                            INSERT INTO messages_fts (rowid, content) VALUES (new.seq, new.content);
                        END;
                        CREATE TRIGGER messages_ad AFTER DELETE ON messages BEGIN
                            INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.seq, old.content);
                        END;
                        """)
            }
        }
    }

    func createConversation(title: String) throws -> String {
        let id = UUID().uuidString.lowercased()
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        try pool.writeWithoutTransaction { db in
            try db.inTransaction(.immediate) {
                try db.execute(
                    sql: "INSERT INTO conversations (id, created_at, updated_at, key_id, title) VALUES (?, ?, ?, 1, ?)",
                    arguments: [id, now, now, title])
                return .commit
            }
        }
        return id
    }

    func append(_ messages: [NewMessage], to conversation: String) throws {
        let prepared = messages.map { ($0, UUID().uuidString.lowercased(), Int64(($0.createdAt ?? Date()).timeIntervalSince1970 * 1000)) }
        try pool.writeWithoutTransaction { db in
            try db.inTransaction(.immediate) {
                guard let seq = try Int64.fetchOne(db, sql: "SELECT seq FROM conversations WHERE id = ?", arguments: [conversation])
                else { fatalError("missing conversation") }
                var position = try Int64.fetchOne(
                    db, sql: "SELECT coalesce(max(position) + 1, 0) FROM messages WHERE conversation_seq = ?", arguments: [seq]) ?? 0
                let statement = try db.cachedStatement(
                    sql: """
                        INSERT INTO messages (id, conversation_seq, position, role, created_at, model, prompt_tokens,
                            completion_tokens, latency_ms, finish_reason, key_id, content, metadata)
                        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, NULL)
                        """)
                var latest: Int64 = 0
                for (message, id, createdAt) in prepared {
                    try statement.execute(arguments: [
                        id, seq, position, message.role.rawValue, createdAt, message.model, message.promptTokens,
                        message.completionTokens, message.latencyMilliseconds, message.finishReason, message.content,
                    ])
                    position += 1
                    latest = createdAt
                }
                try db.execute(sql: "UPDATE conversations SET updated_at = max(updated_at, ?) WHERE seq = ?", arguments: [latest, seq])
                return .commit
            }
        }
    }

    /// Conversations with their messages, in one transaction (the import baseline).
    func appendConversations(_ conversations: [(title: String, messages: [NewMessage])]) throws {
        try pool.writeWithoutTransaction { db in
            try db.inTransaction(.immediate) {
                for (title, messages) in conversations {
                    let now = Int64(Date().timeIntervalSince1970 * 1000)
                    try db.execute(
                        sql: "INSERT INTO conversations (id, created_at, updated_at, key_id, title) VALUES (?, ?, ?, 1, ?)",
                        arguments: [UUID().uuidString.lowercased(), now, now, title])
                    let seq = db.lastInsertedRowID
                    let statement = try db.cachedStatement(
                        sql: """
                            INSERT INTO messages (id, conversation_seq, position, role, created_at, model, prompt_tokens,
                                completion_tokens, latency_ms, finish_reason, key_id, content, metadata)
                            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, NULL)
                            """)
                    for (position, message) in messages.enumerated() {
                        try statement.execute(arguments: [
                            UUID().uuidString.lowercased(), seq, position, message.role.rawValue,
                            Int64((message.createdAt ?? Date()).timeIntervalSince1970 * 1000), message.model, message.promptTokens,
                            message.completionTokens, message.latencyMilliseconds, message.finishReason, message.content,
                        ])
                    }
                }
                return .commit
            }
        }
    }

    struct Hit { let id: String; let content: String; let snippet: String }

    /// Top 20 by recency or by FTS5's bm25, with FTS5's own snippets.
    func search(_ words: [String], newest: Bool) throws -> [Hit] {
        let match = words.map { "\"\($0)\"" }.joined(separator: " ")
        return try pool.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT m.id, m.content, snippet(messages_fts, 0, '[', ']', '…', 24) AS snippet
                    FROM messages_fts f JOIN messages m ON m.seq = f.rowid
                    WHERE messages_fts MATCH ? ORDER BY \(newest ? "f.rowid DESC" : "f.rank") LIMIT 20
                    """, arguments: [match]
            ).map { Hit(id: $0["id"], content: $0["content"], snippet: $0["snippet"]) }
        }
    }

    func documentFrequency(_ word: String) throws -> Int {
        try pool.read { db in
            try Int.fetchOne(db, sql: "SELECT count(*) FROM messages_fts WHERE messages_fts MATCH ?", arguments: ["\"\(word)\""]) ?? 0
        }
    }
}

// MARK: - Measurement helpers

func seconds(_ body: () throws -> Void) rethrows -> Double {
    let start = ContinuousClock.now
    try body()
    let elapsed = ContinuousClock.now - start
    return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
}

func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    return sorted.isEmpty ? 0 : sorted[sorted.count / 2]
}

func percentile(_ values: [Double], _ fraction: Double) -> Double {
    let sorted = values.sorted()
    return sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * fraction))]
}

func peakMemoryMiB() -> Double {
    var usage = rusage()
    getrusage(Int32(RUSAGE_SELF.rawValue), &usage)
    return Double(usage.ru_maxrss) / 1024
}

func report(_ name: String, sealed: Double, plain: Double, unit: String, higherIsBetter: Bool) {
    let ratio = higherIsBetter ? sealed / plain : plain / sealed
    print(
        name.padding(toLength: 58, withPad: " ", startingAt: 0)
            + String(format: " store %10.2f  baseline %10.2f %@  ratio %.2f×", sealed, plain, unit, ratio))
}

let arguments = Arguments()
let base = Date(timeIntervalSince1970: 1_780_000_000)
let folder = URL(fileURLWithPath: arguments.directory).appendingPathComponent("chatlog-bench-\(UUID().uuidString)")
try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
defer { try? FileManager.default.removeItem(at: folder) }

/// Builds a store of `count` messages, 1,000 per transaction in conversations of 1,000, the same
/// text for every kind of store (a fresh corpus with the same seed). Returns messages per second.
func build(count: Int, createConversation: (Int) throws -> Void, append: ([NewMessage]) throws -> Void) throws -> Double {
    var corpus = Corpus(seed: 1)
    var total = 0.0
    var index = 0
    lastBuildCPUSeconds = 0
    while index < count {
        let batch = corpus.messages(min(1_000, count - index), start: base.addingTimeInterval(Double(index) * 0.06))
        let cpuBefore = processCPUSeconds()
        total += try seconds {
            try createConversation(index)
            try append(batch)
        }
        lastBuildCPUSeconds += processCPUSeconds() - cpuBefore
        index += batch.count
    }
    return Double(count) / total
}

/// The process's CPU time (user + system, all threads) spent in the timed parts of the last `build`:
/// what the work costs, which other processes' load disturbs much less than wall time.
nonisolated(unsafe) var lastBuildCPUSeconds = 0.0

func processCPUSeconds() -> Double {
    var usage = rusage()
    getrusage(Int32(RUSAGE_SELF.rawValue), &usage)
    return Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6 + Double(usage.ru_stime.tv_sec)
        + Double(usage.ru_stime.tv_usec) / 1e6
}

print("chatlog-bench: \(ProcessInfo.processInfo.processorCount) cores; rates are medians over \(arguments.rounds) rounds")
print("ratio = store ÷ baseline for rates, baseline ÷ store for latencies (higher is better for the store)\n")

// MARK: Logging (issue 2): the store against plain tables of the same shape, no search index.
if arguments.messages > 0 {
    var batchRates: (store: [Double], plain: [Double]) = ([], [])
    var singleRates: (store: [Double], plain: [Double]) = ([], [])
    var singles = Corpus(seed: 2)
    let singleMessages = singles.messages(arguments.single, start: base.addingTimeInterval(1e7))
    for round in 1...arguments.rounds {
        for kind in round % 2 == 1 ? ["plain", "store"] : ["store", "plain"] {
            let path = folder.appendingPathComponent("\(kind)-\(round).db").path
            if kind == "plain" {
                let store = try PlainStore(path: path, fullText: false)
                var conversations: [String] = []
                batchRates.plain.append(
                    try build(
                        count: arguments.messages, createConversation: { _ in conversations.append(try store.createConversation(title: "c")) },
                        append: { try store.append($0, to: conversations.last!) }))
                let time = try seconds {
                    for (index, message) in singleMessages.enumerated() { try store.append([message], to: conversations[index % conversations.count]) }
                }
                singleRates.plain.append(Double(arguments.single) / time)
                try store.pool.close()
            } else {
                let store = try ChatLogStore.create(at: path, key: .key(MasterKey.generate(), origin: "benchmark"))
                var conversations: [ConversationID] = []
                batchRates.store.append(
                    try build(
                        count: arguments.messages,
                        createConversation: { _ in conversations.append(try store.createConversation(NewConversation(title: "c"))) },
                        append: { try store.append($0, to: conversations.last!) }))
                let time = try seconds {
                    for (index, message) in singleMessages.enumerated() { try store.append(message, to: conversations[index % conversations.count]) }
                }
                singleRates.store.append(Double(arguments.single) / time)
                try store.close()
            }
            try? FileManager.default.removeItem(atPath: path)
            try? FileManager.default.removeItem(atPath: path + "-wal")
            try? FileManager.default.removeItem(atPath: path + "-shm")
        }
        FileHandle.standardError.write(Data("logging round \(round)/\(arguments.rounds) done\n".utf8))
    }
    print("Logging: store (sealed + blinded search index) vs plain tables without any index")
    report("log/batch-1000 (\(arguments.messages) messages)", sealed: median(batchRates.store), plain: median(batchRates.plain),
        unit: "msg/s", higherIsBetter: true)
    report("log/single (\(arguments.single) into a \(arguments.messages)-message store)", sealed: median(singleRates.store),
        plain: median(singleRates.plain), unit: "msg/s", higherIsBetter: true)
    print()
}

// MARK: Library logging with the index (issue 12): the store against plaintext + FTS5, and the
// corpus for the C anchor.
if let corpusPath = arguments.corpusPath, arguments.logging > 0 {
    var corpus = Corpus(seed: 1)
    var bytes = Data()
    var index = 0
    while index < arguments.logging {
        for message in corpus.messages(min(1_000, arguments.logging - index), start: base.addingTimeInterval(Double(index) * 0.06)) {
            let length = UInt32(message.content.utf8.count)
            bytes.append(contentsOf: [UInt8(length & 0xFF), UInt8((length >> 8) & 0xFF), UInt8((length >> 16) & 0xFF), UInt8(length >> 24)])
            bytes.append(contentsOf: message.content.utf8)
            index += 1
        }
    }
    try bytes.write(to: URL(fileURLWithPath: corpusPath))
}
/// For A/B runs of the index's FTS5 settings in one binary: CHATLOG_BENCH_FTS5="automerge=4,hashsize=1048576"
/// sets them on a new store through a side connection (FTS5 reloads its configuration when it changes).
func overrideIndexSettings(_ path: String) throws {
    guard let settings = ProcessInfo.processInfo.environment["CHATLOG_BENCH_FTS5"], !settings.isEmpty else { return }
    let queue = try DatabaseQueue(path: path)
    try queue.write { db in
        for setting in settings.split(separator: ",") {
            let parts = setting.split(separator: "=")
            guard parts.count == 2, let value = Int(parts[1]) else { continue }
            try db.execute(sql: "INSERT INTO message_terms (message_terms, rank) VALUES (?, ?)", arguments: [String(parts[0]), value])
        }
    }
    try queue.close()
    FileHandle.standardError.write(Data("FTS5 settings overridden: \(settings)\n".utf8))
}

if arguments.logging > 0 {
    var buildRates: (store: [Double], plain: [Double]) = ([], [])
    var cpuRates: (store: [Double], plain: [Double]) = ([], [])
    var singleRates: (store: [Double], plain: [Double]) = ([], [])
    var singles = Corpus(seed: 3)
    let singleMessages = singles.messages(max(1, arguments.single), start: base.addingTimeInterval(2e7))
    for round in 1...arguments.rounds {
        for kind in round % 2 == 1 ? ["store", "plain"] : ["plain", "store"] where arguments.only == nil || arguments.only == kind {
            let path = folder.appendingPathComponent("logging-\(kind)-\(round).db").path
            if kind == "plain" {
                let plain = try PlainStore(path: path, fullText: true)
                var conversations: [String] = []
                buildRates.plain.append(
                    try build(
                        count: arguments.logging, createConversation: { _ in conversations.append(try plain.createConversation(title: "c")) },
                        append: { try plain.append($0, to: conversations.last!) }))
                cpuRates.plain.append(Double(arguments.logging) / lastBuildCPUSeconds)
                let time = try seconds {
                    for (index, message) in singleMessages.enumerated() { try plain.append([message], to: conversations[index % conversations.count]) }
                }
                singleRates.plain.append(Double(singleMessages.count) / time)
                try plain.pool.close()
            } else {
                let store = try ChatLogStore.create(at: path, key: .key(MasterKey.generate(), origin: "benchmark"))
                try overrideIndexSettings(path)
                var conversations: [ConversationID] = []
                buildRates.store.append(
                    try build(
                        count: arguments.logging,
                        createConversation: { _ in conversations.append(try store.createConversation(NewConversation(title: "c"))) },
                        append: { try store.append($0, to: conversations.last!) }))
                cpuRates.store.append(Double(arguments.logging) / lastBuildCPUSeconds)
                let time = try seconds {
                    for (index, message) in singleMessages.enumerated() { try store.append(message, to: conversations[index % conversations.count]) }
                }
                singleRates.store.append(Double(singleMessages.count) / time)
                try store.close()
            }
            for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) }
        }
        FileHandle.standardError.write(Data("logging (indexed) round \(round)/\(arguments.rounds) done\n".utf8))
    }
    print("Logging with the index: store (sealed + blinded FTS5) vs plaintext + FTS5 (unicode61, external content, triggers)")
    print("log+index rates per round (msg/s): store " + buildRates.store.map { String(format: "%.0f", $0) }.joined(separator: ", ")
        + "; plain " + buildRates.plain.map { String(format: "%.0f", $0) }.joined(separator: ", "))
    report("log+index/batch-1000 (\(arguments.logging) messages)", sealed: median(buildRates.store), plain: median(buildRates.plain),
        unit: "msg/s", higherIsBetter: true)
    report("log+index/batch-1000, per CPU second", sealed: median(cpuRates.store), plain: median(cpuRates.plain),
        unit: "msg/s", higherIsBetter: true)
    report("log+index/single (\(singleMessages.count) into that store)", sealed: median(singleRates.store), plain: median(singleRates.plain),
        unit: "msg/s", higherIsBetter: true)
    print()
}

// MARK: Issue 15: logging with per-subject keys, and forget.
if !arguments.subjects.isEmpty {
    try subjectLogging(
        subjectCounts: ([0] + arguments.subjects.filter { $0 != 0 }), records: arguments.subjectRecords, singles: arguments.single,
        rounds: arguments.rounds, side: arguments.subjectSide, folder: folder)
}
for size in arguments.forgetAt where size > 0 { try forgetBenchmark(size: size, folder: folder) }

// MARK: Search (issue 3): the store against plaintext + FTS5.
for size in arguments.searchAt where size > 0 {
    let plainPath = folder.appendingPathComponent("search-plain-\(size).db").path
    let storePath = folder.appendingPathComponent("search-store-\(size).db").path
    let plain = try PlainStore(path: plainPath, fullText: true)
    var plainConversations: [String] = []
    let plainRate = try build(
        count: size, createConversation: { _ in plainConversations.append(try plain.createConversation(title: "c")) },
        append: { try plain.append($0, to: plainConversations.last!) })
    let store = try ChatLogStore.create(at: storePath, key: .key(MasterKey.generate(), origin: "benchmark"))
    try overrideIndexSettings(storePath)
    var storeConversations: [ConversationID] = []
    let storeRate = try build(
        count: size, createConversation: { _ in storeConversations.append(try store.createConversation(NewConversation(title: "c"))) },
        append: { try store.append($0, to: storeConversations.last!) })
    FileHandle.standardError.write(Data("search store of \(size) built\n".utf8))

    // One message per transaction on top, into both indexed stores.
    var extra = Corpus(seed: 3)
    let singleMessages = extra.messages(max(1, arguments.single), start: base.addingTimeInterval(2e7))
    let plainSingle = Double(singleMessages.count) / (try seconds {
        for (index, message) in singleMessages.enumerated() { try plain.append([message], to: plainConversations[index % plainConversations.count]) }
    })
    let storeSingle = Double(singleMessages.count) / (try seconds {
        for (index, message) in singleMessages.enumerated() { try store.append(message, to: storeConversations[index % storeConversations.count]) }
    })

    func fileSize(_ path: String) -> Double {
        let main = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
        let wal = (try? FileManager.default.attributesOfItem(atPath: path + "-wal")[.size] as? Int) ?? 0
        return Double(main + wal) / 1_048_576
    }

    // Query words across the frequency range, chosen by document frequency in the baseline.
    let vocabulary = Corpus.vocabulary
    let ranks = stride(from: 0, to: arguments.queries, by: 1).map { index in
        [5, 20, 60, 150, 400, 1_000, 3_000, 8_000, 20_000][index % 9] + index / 9
    }
    let oneWord = ranks.map { [vocabulary[min($0, vocabulary.count - 1)]] }
    let twoWords = ranks.map { [vocabulary[min($0, vocabulary.count - 1)], vocabulary[min($0 * 3 + 7, vocabulary.count - 1)]] }
    // Relevance words: spread evenly on a log scale over 100–10,000 matching messages (by the
    // baseline's own counts), so the median query is a typical word of that range; and a second
    // set from the top of the range (5,000–10,000 matches), the most work a word under 10,000
    // matches can ask for. Document frequency falls with the Zipf rank, so each target is found
    // by bisecting the ranks.
    func words(matching low: Double, _ high: Double) throws -> [String] {
        var chosen: [String] = []
        for index in 0..<arguments.queries {
            let target = Int(low * pow(high / low, Double(index) / Double(max(1, arguments.queries - 1))))
            var lower = 0
            var upper = vocabulary.count - 1
            while lower < upper {
                let middle = (lower + upper) / 2
                if try plain.documentFrequency(vocabulary[middle]) > target { lower = middle + 1 } else { upper = middle }
            }
            // The nearest unused rank whose count is inside the range.
            for rank in (max(0, lower - 20)...min(vocabulary.count - 1, lower + 20)).sorted(by: { abs($0 - lower) < abs($1 - lower) }) {
                let word = vocabulary[rank]
                let frequency = try plain.documentFrequency(word)
                if Double(frequency) >= low, Double(frequency) < high, !chosen.contains(word) {
                    chosen.append(word)
                    break
                }
            }
        }
        return chosen
    }
    let rareWords = try words(matching: 100, 10_000)
    let topWords = try words(matching: 5_000, 10_000)

    func timeQueries(_ queries: [[String]], newest: Bool) throws -> (store: [Double], plain: [Double], examined: Int) {
        var examinedTotal = 0
        var storeTimes: [Double] = []
        var plainTimes: [Double] = []
        for words in queries {
            for repetition in 0..<7 {
                var storeHits: [SearchHit] = []
                var plainHits: [PlainStore.Hit] = []
                let storeTime = try seconds {
                    let results = try store.search(words.joined(separator: " "), limit: 20, sort: newest ? .newest : .relevance)
                    storeHits = results.hits
                    examinedTotal += results.examined
                }
                let plainTime = try seconds { plainHits = try plain.search(words, newest: newest) }
                if repetition >= 2 {  // the first two warm the caches
                    storeTimes.append(storeTime * 1000)
                    plainTimes.append(plainTime * 1000)
                }
                if newest, storeHits.map(\.content) != plainHits.map(\.content) {
                    FileHandle.standardError.write(Data("warning: results differ for \(words) (tokenizers differ on this text?)\n".utf8))
                }
            }
        }
        return (storeTimes, plainTimes, examinedTotal)
    }

    let newestOne = try timeQueries(oneWord, newest: true)
    let newestTwo = try timeQueries(twoWords, newest: true)
    let relevance = try timeQueries(rareWords.map { [$0] }, newest: false)
    let examinedPerQuery = Double(relevance.examined) / Double(max(1, rareWords.count * 7))
    let relevanceTop = try timeQueries(topWords.map { [$0] }, newest: false)
    let examinedPerTopQuery = Double(relevanceTop.examined) / Double(max(1, topWords.count * 7))

    print("Search at \(size) messages: store (sealed + blinded FTS5, SipHash) vs plaintext + FTS5 (unicode61, external content)")
    report("index/build (1,000 per transaction)", sealed: storeRate, plain: plainRate, unit: "msg/s", higherIsBetter: true)
    report("index/single (1 per transaction, \(singleMessages.count) messages)", sealed: storeSingle, plain: plainSingle, unit: "msg/s",
        higherIsBetter: true)
    report("size on disk (database + WAL)", sealed: fileSize(storePath), plain: fileSize(plainPath), unit: "MiB  ", higherIsBetter: false)
    report("query/newest, 1 word, top 20: median", sealed: median(newestOne.store), plain: median(newestOne.plain), unit: "ms   ",
        higherIsBetter: false)
    report("query/newest, 1 word, top 20: p95", sealed: percentile(newestOne.store, 0.95), plain: percentile(newestOne.plain, 0.95),
        unit: "ms   ", higherIsBetter: false)
    report("query/newest, 2 words, top 20: median", sealed: median(newestTwo.store), plain: median(newestTwo.plain), unit: "ms   ",
        higherIsBetter: false)
    report("query/relevance, 100–10k matches (\(rareWords.count) words): median", sealed: median(relevance.store),
        plain: median(relevance.plain), unit: "ms   ", higherIsBetter: false)
    report("query/relevance, 100–10k matches: p95", sealed: percentile(relevance.store, 0.95), plain: percentile(relevance.plain, 0.95),
        unit: "ms   ", higherIsBetter: false)
    print(String(format: "query/relevance, 100–10k matches: %.0f candidates opened per query on average", examinedPerQuery))
    report("query/relevance, 5k–10k matches (\(topWords.count) words): median", sealed: median(relevanceTop.store),
        plain: median(relevanceTop.plain), unit: "ms   ", higherIsBetter: false)
    report("query/relevance, 5k–10k matches: p95", sealed: percentile(relevanceTop.store, 0.95), plain: percentile(relevanceTop.plain, 0.95),
        unit: "ms   ", higherIsBetter: false)
    print(String(format: "query/relevance, 5k–10k matches: %.0f candidates opened per query on average (%.1f µs each, total time ÷ candidates)",
        examinedPerTopQuery, relevanceTop.store.reduce(0, +) * 1000 / max(1, Double(relevanceTop.examined) * 5 / 7)))
    print()
    try store.close()
    try plain.pool.close()
    for path in [plainPath, storePath] {
        for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) }
    }
}
// MARK: Import (issue 5), export (issue 5) and rotation (issue 4).
if arguments.importConversations > 0 {
    try runImportScenario(conversations: arguments.importConversations, folder: folder)
}
for size in arguments.exportAndRotateAt where size > 0 {
    let pair = try buildPair(messages: size, folder: folder, name: "pair-\(size)")
    try runExportScenario(pair, messages: size)
    try runRotationScenario(pair, messages: size)
    try pair.store.close()
    try pair.plain.pool.close()
}
print(String(format: "peak memory (max RSS, includes SQLite's memory-mapped file pages): %.0f MiB", peakMemoryMiB()))
