// Scenarios for issues 4 and 5: rotation, import, export. Each reports the store beside a
// plaintext baseline doing the same work in the same run, and the peak anonymous memory
// (RssAnon: heap, not the file pages SQLite maps) sampled while the store works.
import ChatLog
import Foundation
import GRDB

/// Peak of /proc/self/status RssAnon over the samples taken since `reset`.
final class AnonymousMemory: @unchecked Sendable {
    // @unchecked Sendable: `peak` is guarded by `lock`.
    private let lock = NSLock()
    private var peak = 0

    func reset() { lock.withLock { peak = 0 } }

    func sample() {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("RssAnon:") }),
            let kilobytes = Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
        else { return }
        lock.withLock { peak = max(peak, kilobytes) }
    }

    var peakMiB: Double { lock.withLock { Double(peak) / 1024 } }
}

let anonymousMemory = AnonymousMemory()

/// Writes `conversations` conversations of four messages as OpenAI JSONL; returns the path.
/// Times in the baselines (and the generated import file) go through Foundation's own RFC 3339 style,
/// as a plaintext Swift app would write them, never through chatlog's `Timestamps`: the baselines
/// share none of chatlog's parsing or formatting helpers (docs/PERFORMANCE.md).
let baselineTimeStyle = Date.ISO8601FormatStyle(includingFractionalSeconds: true)

func writeImportFile(conversations: Int, in folder: URL) throws -> String {
    let path = folder.appendingPathComponent("import.jsonl").path
    _ = FileManager.default.createFile(atPath: path, contents: nil)
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
    var corpus = Corpus(seed: 11)
    var buffer = Data()
    for index in 0..<conversations {
        let messages = corpus.messages(4, start: Date(timeIntervalSince1970: 1_780_000_000 + Double(index)))
        let record: [String: Any] = [
            "title": "conversation \(index)",
            "messages": messages.map { message -> [String: Any] in
                var object: [String: Any] = ["role": message.role.rawValue, "content": message.content]
                if let model = message.model { object["model"] = model }
                if let created = message.createdAt { object["created_at"] = created.formatted(baselineTimeStyle) }
                if message.promptTokens != nil {
                    object["usage"] = ["prompt_tokens": message.promptTokens!, "completion_tokens": message.completionTokens!]
                }
                return object
            },
        ]
        buffer.append(try JSONSerialization.data(withJSONObject: record, options: [.sortedKeys]))
        buffer.append(0x0A)
        if buffer.count > 1 << 20 {
            try handle.write(contentsOf: buffer)
            buffer.removeAll(keepingCapacity: true)
        }
    }
    try handle.write(contentsOf: buffer)
    try handle.close()
    return path
}

/// Import (issue 5): the store's openai-jsonl import against a plaintext + FTS5 load of the same file.
func runImportScenario(conversations: Int, folder: URL) throws {
    let file = try writeImportFile(conversations: conversations, in: folder)
    let storePath = folder.appendingPathComponent("import-store.db").path
    let plainPath = folder.appendingPathComponent("import-plain.db").path
    let store = try ChatLogStore.create(at: storePath, key: .key(MasterKey.generate(), origin: "benchmark"))
    anonymousMemory.reset()
    var imported: ImportReport?
    let storeTime = try seconds {
        imported = try store.importConversations(
            format: OpenAIJSONL.format, records: try OpenAIJSONL.records(path: file), progress: { _ in anonymousMemory.sample() })
    }
    let storePeak = anonymousMemory.peakMiB
    try store.close()

    let plain = try PlainStore(path: plainPath, fullText: true)
    let plainTime = try seconds {
        guard let handle = FileHandle(forReadingAtPath: file) else { return }
        var pending: [(String, [NewMessage])] = []
        func flush() throws {
            try plain.appendConversations(pending)
            pending.removeAll(keepingCapacity: true)
        }
        var leftover = Data()
        while let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty {
            leftover.append(chunk)
            while let newline = leftover.firstIndex(of: 0x0A) {
                let line = leftover[leftover.startIndex..<newline]
                leftover.removeSubrange(leftover.startIndex...newline)
                guard let object = try JSONSerialization.jsonObject(with: line) as? [String: Any],
                    let messages = object["messages"] as? [[String: Any]]
                else { continue }
                pending.append(
                    (object["title"] as? String ?? "",
                        messages.map { message in
                            let usage = message["usage"] as? [String: Int]
                            return NewMessage(
                                role: Role(rawValue: message["role"] as? String ?? "user") ?? .user, content: message["content"] as? String ?? "",
                                model: message["model"] as? String, promptTokens: usage?["prompt_tokens"], completionTokens: usage?["completion_tokens"],
                                createdAt: (message["created_at"] as? String).flatMap { try? baselineTimeStyle.parse($0) })
                        }))
                if pending.count == 200 { try flush() }
            }
        }
        try flush()
    }
    try plain.pool.close()
    print("Import of \(conversations) conversations (\(imported?.messages ?? 0) messages) from openai-jsonl: store vs plaintext + FTS5 load")
    report(
        "import (200 conversations per transaction)", sealed: Double(imported?.conversations ?? 0) / storeTime,
        plain: Double(conversations) / plainTime, unit: "conv/s", higherIsBetter: true)
    print(String(format: "import: peak anonymous memory of the store's import %.0f MiB (file %.0f MiB)", storePeak,
        Double((try? FileManager.default.attributesOfItem(atPath: file)[.size] as? Int) ?? 0) / 1_048_576))
    print()
}

/// A store and its plaintext twin with `messages` messages in conversations of 100.
func buildPair(messages: Int, folder: URL, name: String) throws -> (store: ChatLogStore, plain: PlainStore, storeRate: Double) {
    let plain = try PlainStore(path: folder.appendingPathComponent("\(name)-plain.db").path, fullText: false)
    let store = try ChatLogStore.create(at: folder.appendingPathComponent("\(name)-store.db").path, key: .key(MasterKey.generate(), origin: "benchmark"))
    var plainConversations: [String] = []
    var storeConversations: [ConversationID] = []
    _ = try build(
        count: messages, createConversation: { _ in plainConversations.append(try plain.createConversation(title: "c")) },
        append: { try plain.append($0, to: plainConversations.last!) })
    let storeRate = try build(
        count: messages, createConversation: { _ in storeConversations.append(try store.createConversation(NewConversation(title: "c"))) },
        append: { try store.append($0, to: storeConversations.last!) })
    return (store, plain, storeRate)
}

/// Export (issue 5): streaming JSONL of every conversation, against the same JSON written from
/// the plaintext tables.
func runExportScenario(_ pair: (store: ChatLogStore, plain: PlainStore, storeRate: Double), messages: Int) throws {
    anonymousMemory.reset()
    var bytes = 0
    var exported = 0
    var conversations = 0
    let storeTime = try seconds {
        let totals = try pair.store.exportOpenAIJSONL { data in
            bytes += data.count
            conversations += 1
            if conversations % 100 == 0 { anonymousMemory.sample() }
        }
        exported = totals.messages
        anonymousMemory.sample()
    }
    let storePeak = anonymousMemory.peakMiB
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    struct Line: Encodable {
        struct Message: Encodable { let id: String; let role: String; let content: String; let created_at: String; let model: String? }
        let id: String
        let title: String?
        let created_at: String
        let messages: [Message]
    }
    var plainBytes = 0
    let plainTime = try seconds {
        var last: Int64 = 0
        while true {
            let lines: [Line] = try pair.plain.pool.read { db in
                let conversations = try Row.fetchAll(db, sql: "SELECT seq, id, title, created_at FROM conversations WHERE seq > ? ORDER BY seq LIMIT 100", arguments: [last])
                if let final = conversations.last { last = final["seq"] }
                return try conversations.map { conversation in
                    let messages = try Row.fetchAll(
                        db, sql: "SELECT id, role, content, created_at, model FROM messages WHERE conversation_seq = ? ORDER BY position",
                        arguments: [conversation["seq"] as Int64])
                    return Line(
                        id: conversation["id"], title: conversation["title"],
                        created_at: Date(timeIntervalSince1970: Double(conversation["created_at"] as Int64) / 1000).formatted(baselineTimeStyle),
                        messages: messages.map {
                            Line.Message(
                                id: $0["id"], role: $0["role"], content: $0["content"],
                                created_at: Date(timeIntervalSince1970: Double($0["created_at"] as Int64) / 1000).formatted(baselineTimeStyle), model: $0["model"])
                        })
                }
            }
            if lines.isEmpty { break }
            for line in lines { plainBytes += try encoder.encode(line).count + 1 }
        }
    }
    print("Export of \(exported) messages as JSONL: store (open every value) vs the same JSON from plaintext tables")
    report("export", sealed: Double(exported) / storeTime, plain: Double(messages) / plainTime, unit: "msg/s", higherIsBetter: true)
    print(String(format: "export: %.0f MiB written; peak anonymous memory during the store's export %.0f MiB", Double(bytes) / 1_048_576, storePeak))
    print()
}

/// Rotation (issue 4): re-sealing every row under a new data key, against a plaintext rewrite of
/// the same rows with the same batch and compare-and-swap pattern; then the index-key rebuild.
func runRotationScenario(_ pair: (store: ChatLogStore, plain: PlainStore, storeRate: Double), messages: Int) throws {
    anonymousMemory.reset()
    var dataReport: RotationReport?
    let storeTime = try seconds {
        dataReport = try pair.store.rotateDataKey(RotationOptions(newKey: true, batchSize: 500, progress: { _ in anonymousMemory.sample() }))
    }
    let dataPeak = anonymousMemory.peakMiB
    var rewritten = 0
    let plainTime = try seconds {
        var last: Int64 = 0
        while true {
            let rows = try pair.plain.pool.read { db in
                try Row.fetchAll(db, sql: "SELECT seq, key_id, content FROM messages WHERE seq > ? AND key_id = 1 ORDER BY seq LIMIT 500", arguments: [last])
            }
            guard let final = rows.last else { break }
            last = final["seq"]
            try pair.plain.pool.writeWithoutTransaction { db in
                try db.inTransaction(.immediate) {
                    let update = try db.cachedStatement(
                        sql: "UPDATE messages SET content = ?, key_id = 2 WHERE seq = ? AND key_id = ? AND content = ?")
                    for row in rows {
                        try update.execute(
                            arguments: [row["content"] as String, row["seq"] as Int64, row["key_id"] as Int64, row["content"] as String])
                        rewritten += db.changesCount
                    }
                    return .commit
                }
            }
        }
    }
    anonymousMemory.reset()
    var indexReport: RotationReport?
    let indexTime = try seconds {
        indexReport = try pair.store.rotateIndexKey(RotationOptions(newKey: true, batchSize: 500, progress: { _ in anonymousMemory.sample() }))
    }
    let indexPeak = anonymousMemory.peakMiB
    let rows = Double(dataReport?.rewritten ?? 0)
    print("Rotation at \(messages) messages (batches of 500 rows, one IMMEDIATE transaction each)")
    report("rotate data key: re-seal every row", sealed: rows / storeTime, plain: Double(rewritten) / plainTime, unit: "rows/s", higherIsBetter: true)
    print(String(format: "rotate data key: peak anonymous memory %.0f MiB; %d rows, %.1f s", dataPeak, Int(rows), storeTime))
    print(String(format: "rotate index key: %.0f rows/s (%d rows, %.1f s; initial index build while logging: %.0f msg/s); peak anonymous memory %.0f MiB",
        Double(indexReport?.rewritten ?? 0) / indexTime, indexReport?.rewritten ?? 0, indexTime, pair.storeRate, indexPeak))
    print()
}
