import Foundation
import GRDB

/// One conversation read from another tool's export, ready to import.
public struct ImportedConversation: Sendable {
    /// Stable id of the conversation in its source (its own id, or a hash of its record):
    /// importing the same source id twice adds nothing.
    public var sourceID: String
    public var conversation: NewConversation
    public var messages: [NewMessage]
    /// Where the record is in its source ("line 12"), for messages about it; nil when the reader
    /// does not say (a message then counts the records).
    public var location: String?

    public init(sourceID: String, conversation: NewConversation, messages: [NewMessage], location: String? = nil) {
        self.sourceID = sourceID
        self.conversation = conversation
        self.messages = messages
        self.location = location
    }
}

/// A record that could not be read, with where it is ("line 12", "conversation 6f1c…").
public struct ImportIssue: Error, Sendable, Hashable, CustomStringConvertible {
    public let location: String
    public let problem: String

    public init(location: String, problem: String) {
        self.location = location
        self.problem = problem
    }

    public var description: String { "\(location): \(problem)" }
}

public enum ImportErrorPolicy: String, Sendable, CaseIterable {
    /// Stop at the first bad record; the batch it is in is not written.
    case fail
    /// Report bad records and import the rest.
    case skip
}

public struct ImportReport: Sendable {
    public var conversations = 0
    public var messages = 0
    /// Conversations already imported earlier (same source), not added again.
    public var duplicates = 0
    public var skipped: [ImportIssue] = []
}

extension ChatLogStore {
    /// Imports conversations in batches of `batchSize`, each batch one transaction, idempotent by
    /// source (a keyed hash of `format` and each record's `sourceID`). Records come as results
    /// so that a reader can report a bad record without stopping the stream. Ids given in the
    /// records are kept when they are free (an export of chatlog re-imports with its ids).
    public func importConversations(
        format: String, records: some Sequence<Result<ImportedConversation, ImportIssue>>, onError: ImportErrorPolicy = .fail,
        batchSize: Int = 200, progress: (@Sendable (ImportReport) -> Void)? = nil
    ) throws(ChatLogError) -> ImportReport {
        try importIntoSQLite(format: format, records: records, onError: onError, batchSize: batchSize, progress: progress)
    }

    /// The same on any backend: on a store behind the storage seam, each batch is sealed here and
    /// written by the backend in one transaction (``storageImport(format:records:onError:batchSize:progress:_:)``).
    public func importConversations(
        format: String, records: some Sequence<Result<ImportedConversation, ImportIssue>>, onError: ImportErrorPolicy = .fail,
        batchSize: Int = 200, progress: (@Sendable (ImportReport) -> Void)? = nil
    ) async throws(ChatLogError) -> ImportReport {
        guard let storage else {
            return try importIntoSQLite(format: format, records: records, onError: onError, batchSize: batchSize, progress: progress)
        }
        return try await storageImport(format: format, records: records, onError: onError, batchSize: batchSize, progress: progress, storage)
    }

    private func importIntoSQLite(
        format: String, records: some Sequence<Result<ImportedConversation, ImportIssue>>, onError: ImportErrorPolicy, batchSize: Int,
        progress: (@Sendable (ImportReport) -> Void)?
    ) throws(ChatLogError) -> ImportReport {
        var report = ImportReport()
        var batches = try ImportBatches(format: format, records: records, onError: onError, batchSize: batchSize)
        while let batch = try batches.next(skipping: &report) {
            try importBatch(format: format, batch, into: &report)
            progress?(report)
        }
        return report
    }

    private func importBatch(format: String, _ batch: [ImportedConversation], into report: inout ImportReport) throws(ChatLogError) {
        let batch = try withFreeIDs(batch)
        let master = keyRing.master
        let (conversations, messages, duplicates) = try writeSealed { (keys) throws(ChatLogError) in
            let known = try subjectKeys(for: batch.map(\.conversation))
            return try batch.map { (item) throws(ChatLogError) in
                let conversation = try prepare(item.conversation, keys: keys, subjectKeys: known)
                return (conversation, try prepare(item.messages, keys: keys, subject: conversation.erasure))
            }
        } body: { prepared, db -> (Int, Int, Int) in
            let key = try ImportKey.loadOrCreate(master: master, db: db)
            var conversations = 0
            var messages = 0
            var duplicates = 0
            for (index, (conversation, rows)) in prepared.enumerated() {
                let hash = ImportKey.sourceHash(key: key, format: format, sourceID: batch[index].sourceID)
                if try Row.fetchOne(db, sql: "SELECT 1 FROM imports WHERE source_hash = ?", arguments: [hash]) != nil {
                    duplicates += 1
                    continue
                }
                try Self.insert(conversation, db)
                let seq = db.lastInsertedRowID
                try Self.insert(rows, conversationSeq: seq, db)
                try db.execute(
                    sql: "INSERT INTO imports (source_hash, conversation_seq, imported_at) VALUES (?, ?, ?)",
                    arguments: [hash, seq, Date().unixMilliseconds])
                conversations += 1
                messages += rows.count
            }
            return (conversations, messages, duplicates)
        }
        report.conversations += conversations
        report.messages += messages
        report.duplicates += duplicates
    }

    /// Ids from the source are kept only when free (not in the store, not earlier in the batch);
    /// otherwise the row gets a new one.
    private func withFreeIDs(_ batch: [ImportedConversation]) throws(ChatLogError) -> [ImportedConversation] {
        let wanted = batch.compactMap(\.conversation.id?.rawValue) + batch.flatMap { $0.messages.compactMap(\.id?.rawValue) }
        if wanted.isEmpty { return batch }
        let taken = try read { db in try SQLiteStorage.takenIDs(wanted, db) }
        return Self.keepingFreeIDs(batch, taken: taken)
    }

    /// The batch with each id that is `taken`, or used earlier in the batch, removed (a new one
    /// is made when the row is sealed).
    static func keepingFreeIDs(_ batch: [ImportedConversation], taken: Set<String>) -> [ImportedConversation] {
        var used = taken
        return batch.map { item in
            var item = item
            if let id = item.conversation.id, !used.insert(id.rawValue).inserted { item.conversation.id = nil }
            for index in item.messages.indices {
                if let id = item.messages[index].id, !used.insert(id.rawValue).inserted { item.messages[index].id = nil }
            }
            return item
        }
    }
}

/// Cuts a stream of read records into batches: a bad record stops the import (`fail`: its batch
/// is not written) or is reported and left out (`skip`). Records get a location when their
/// reader gave none ("record 7": the 7th read).
struct ImportBatches<Records: Sequence<Result<ImportedConversation, ImportIssue>>> {
    let format: String
    let onError: ImportErrorPolicy
    let batchSize: Int
    private var iterator: Records.Iterator
    private var read = 0

    init(format: String, records: Records, onError: ImportErrorPolicy, batchSize: Int) throws(ChatLogError) {
        guard (1...10_000).contains(batchSize) else { throw .invalidInput("the batch size must be between 1 and 10000") }
        self.format = format
        self.onError = onError
        self.batchSize = batchSize
        iterator = records.makeIterator()
    }

    /// The next batch (nil at the end); skipped records go into `report`.
    mutating func next(skipping report: inout ImportReport) throws(ChatLogError) -> [ImportedConversation]? {
        var batch: [ImportedConversation] = []
        while batch.count < batchSize, let record = iterator.next() {
            read += 1
            switch record {
            case .success(var conversation):
                if conversation.location == nil { conversation.location = "record \(read)" }
                batch.append(conversation)
            case .failure(let issue):
                if onError == .fail { throw .invalidInput("\(format) import stopped at \(issue); nothing of its batch was written") }
                report.skipped.append(issue)
            }
        }
        return batch.isEmpty ? nil : batch
    }
}
