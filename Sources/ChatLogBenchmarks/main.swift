// chatlog-bench: release-mode throughput of the sealed store against a plaintext baseline in the
// same run. The baseline writes the same rows with GRDB into tables of the same shape (TEXT where
// chatlog stores sealed BLOBs), with the same pragmas and the same per-row SQL, without sealing.
//
//   swift run -c release chatlog-bench [--messages 100000] [--single 2000] [--rounds 3] [--json]
//
// Scenarios:
//   batch-1000  messages appended 1,000 per transaction, building a store of --messages rows
//   single      then --single messages appended one per transaction into that store
import ChatLog
import Foundation
import GRDB

struct Arguments {
    var messages = 100_000
    var single = 2_000
    var rounds = 3
    var json = false
    var directory = FileManager.default.temporaryDirectory.path

    init() {
        var iterator = CommandLine.arguments.dropFirst().makeIterator()
        while let argument = iterator.next() {
            switch argument {
            case "--messages": messages = Int(iterator.next() ?? "") ?? messages
            case "--single": single = Int(iterator.next() ?? "") ?? single
            case "--rounds": rounds = Int(iterator.next() ?? "") ?? rounds
            case "--dir": directory = iterator.next() ?? directory
            case "--json": json = true
            default:
                FileHandle.standardError.write(Data("usage: chatlog-bench [--messages N] [--single N] [--rounds N] [--dir DIR] [--json]\n".utf8))
                exit(64)
            }
        }
    }
}

/// Deterministic chat-sized text: prompts around 600 bytes, completions around 1.5 KB.
struct Corpus {
    private var state: UInt64 = 0x9E37_79B9_7F4A_7C15
    private static let words = """
        the a to of and in is it you that for on with as this be are can not what how your have or if will my
        model token prompt answer please error code function return value python swift database query index key
        patient dose insulin budget invoice account password server deploy cluster latency memory thread async
        explain example summary question because before after between during without within through against
        """.split(whereSeparator: \.isWhitespace).map(String.init)

    mutating func next() -> UInt64 {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        return state
    }

    mutating func text(meanBytes: Int) -> String {
        let target = meanBytes / 2 + Int(next() % UInt64(meanBytes))
        var output = ""
        output.reserveCapacity(target + 16)
        while output.utf8.count < target {
            let zipf = Int(Double(Self.words.count) * pow(Double(next() % 10_000) / 10_000, 3))
            output += Self.words[min(zipf, Self.words.count - 1)]
            output += next() % 12 == 0 ? ". " : " "
        }
        return output
    }

    /// Alternating user prompts and assistant completions.
    mutating func messages(_ count: Int) -> [NewMessage] {
        (0..<count).map { index in
            index % 2 == 0
                ? NewMessage(role: .user, content: text(meanBytes: 600))
                : NewMessage(
                    role: .assistant, content: text(meanBytes: 1500), model: "gpt-4o-mini", promptTokens: 150,
                    completionTokens: 380, latencyMilliseconds: 900, finishReason: "stop")
        }
    }
}

/// The plaintext baseline: same shape and pragmas, plain TEXT instead of sealed BLOBs.
final class PlainStore {
    let pool: DatabasePool

    init(path: String) throws {
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
        let prepared = messages.map { ($0, UUID().uuidString.lowercased(), Int64(Date().timeIntervalSince1970 * 1000)) }
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
                for (message, id, now) in prepared {
                    try statement.execute(arguments: [
                        id, seq, position, message.role.rawValue, now, message.model, message.promptTokens,
                        message.completionTokens, message.latencyMilliseconds, message.finishReason, message.content,
                    ])
                    position += 1
                    latest = now
                }
                try db.execute(sql: "UPDATE conversations SET updated_at = max(updated_at, ?) WHERE seq = ?", arguments: [latest, seq])
                return .commit
            }
        }
    }
}

struct Measurement {
    let scenario: String
    var sealed: [Double] = []
    var plain: [Double] = []

    static func median(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        return sorted.isEmpty ? 0 : sorted[sorted.count / 2]
    }

    var ratio: Double { Self.median(sealed) / Self.median(plain) }
}

func seconds(_ body: () throws -> Void) rethrows -> Double {
    let start = ContinuousClock.now
    try body()
    let elapsed = ContinuousClock.now - start
    return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
}

let arguments = Arguments()
let batchSize = 1_000
let messagesPerConversation = 1_000
var corpus = Corpus()
let batches = (0..<(arguments.messages / batchSize)).map { _ in corpus.messages(batchSize) }
let singles = corpus.messages(arguments.single)

var batch = Measurement(scenario: "batch-1000 (\(arguments.messages) messages, 1,000 per transaction)")
var single = Measurement(scenario: "single (\(arguments.single) messages, 1 per transaction, store of \(arguments.messages))")

for round in 1...arguments.rounds {
    let folder = URL(fileURLWithPath: arguments.directory).appendingPathComponent("chatlog-bench-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: folder) }

    // Plaintext baseline first in odd rounds, sealed first in even rounds, so drift cancels out.
    let order = round % 2 == 1 ? ["plain", "sealed"] : ["sealed", "plain"]
    for kind in order {
        if kind == "plain" {
            let store = try PlainStore(path: folder.appendingPathComponent("plain.db").path)
            var conversations: [String] = []
            let batchTime = try seconds {
                for (index, messages) in batches.enumerated() {
                    if index % (messagesPerConversation / batchSize) == 0 {
                        conversations.append(try store.createConversation(title: "conversation \(index)"))
                    }
                    try store.append(messages, to: conversations.last!)
                }
            }
            let singleTime = try seconds {
                for (index, message) in singles.enumerated() {
                    try store.append([message], to: conversations[index % conversations.count])
                }
            }
            batch.plain.append(Double(arguments.messages) / batchTime)
            single.plain.append(Double(arguments.single) / singleTime)
            try store.pool.close()
        } else {
            let store = try ChatLogStore.create(
                at: folder.appendingPathComponent("sealed.db").path, key: .key(MasterKey.generate(), origin: "benchmark"))
            var conversations: [ConversationID] = []
            let batchTime = try seconds {
                for (index, messages) in batches.enumerated() {
                    if index % (messagesPerConversation / batchSize) == 0 {
                        conversations.append(try store.createConversation(NewConversation(title: "conversation \(index)")))
                    }
                    try store.append(messages, to: conversations.last!)
                }
            }
            let singleTime = try seconds {
                for (index, message) in singles.enumerated() {
                    try store.append(message, to: conversations[index % conversations.count])
                }
            }
            batch.sealed.append(Double(arguments.messages) / batchTime)
            single.sealed.append(Double(arguments.single) / singleTime)
            try store.close()
        }
    }
    FileHandle.standardError.write(Data("round \(round)/\(arguments.rounds) done\n".utf8))
}

let results = [batch, single]
if arguments.json {
    let objects = results.map {
        [
            "scenario": $0.scenario, "sealed_rows_per_s": String(format: "%.0f", Measurement.median($0.sealed)),
            "plain_rows_per_s": String(format: "%.0f", Measurement.median($0.plain)), "ratio": String(format: "%.2f", $0.ratio),
        ]
    }
    let data = try JSONSerialization.data(withJSONObject: objects, options: [.prettyPrinted, .sortedKeys])
    print(String(decoding: data, as: UTF8.self))
} else {
    print("chatlog-bench: median of \(arguments.rounds) rounds; rows/s; ratio = sealed / plaintext baseline")
    for result in results {
        print(
            String(
                format: "%-72@ sealed %9.0f  plain %9.0f  ratio %.2f×", result.scenario as NSString, Measurement.median(result.sealed),
                Measurement.median(result.plain), result.ratio))
    }
}
