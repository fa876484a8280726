import Foundation
import GRDB

public struct VerificationIssue: Sendable, Hashable, CustomStringConvertible {
    public let table: String
    public let column: String
    /// The row's public id (or key name); never its content.
    public let rowID: String
    public let problem: String

    public var description: String { "\(table).\(column) of row \(rowID): \(problem)" }
}

public struct VerificationReport: Sendable {
    public var conversations = 0
    public var messages = 0
    public var sealedValues = 0
    /// At most `ChatLogStore.maximumReportedIssues`; `issueCount` counts them all.
    public var issues: [VerificationIssue] = []
    public var issueCount = 0
    public var ok: Bool { issueCount == 0 }
    /// Deleted rows' terms are still in the index's segments (a deletion or index rotation was
    /// interrupted before its merge): not an integrity failure, but they are readable in the file
    /// until `repair`, the next rm or prune, or `key rotate --index` merges them.
    public var unmergedDeletions = false
    /// For `repair`: row ids the index holds for no message, and messages whose indexed terms
    /// differ from their recomputed ones (at most those of `maximumDetailedBuckets` buckets).
    var staleSearchRows: [Int64] = []
    var misindexedMessages: [String] = []
}

extension ChatLogStore {
    public static let maximumReportedIssues = 1_000

    /// Opens every sealed value (wrapped keys, conversations, messages) with the key its header
    /// names, checks that the search index holds exactly the blinded terms recomputed from the
    /// messages (nothing missing; no stale entry of a deleted row or an older index key; no
    /// deleted term left unmerged in its segments), and runs SQLite's and FTS5's integrity checks.
    /// Reads only; safe while writers run (it works on one read snapshot).
    ///
    /// The index is compared in one streamed pass, with memory flat in the store's size: each
    /// (term, row id) pair, recomputed or read from the index, is hashed into one of 65,536
    /// buckets chosen by its row id; only buckets whose sums differ are looked at row by row.
    public func verify(progress: (@Sendable (Int) -> Void)? = nil) throws(ChatLogError) -> VerificationReport {
        try verifySQLite(progress: progress)
    }

    /// The same on any backend. On PostgreSQL: the key rows (their MACs, at the reload), every
    /// sealed value of every conversation and message opened with the key its header names, ids
    /// and roles checked, and each message's rows in the term table compared with the terms its
    /// content gives under its index key (nothing missing, nothing extra).
    public func verify(progress: (@Sendable (Int) -> Void)? = nil) async throws(ChatLogError) -> VerificationReport {
        guard let storage else { return try verifySQLite(progress: progress) }
        var report = VerificationReport()
        func record(_ table: String, _ column: String, _ row: String, _ problem: String) {
            report.issueCount += 1
            if report.issues.count < Self.maximumReportedIssues {
                report.issues.append(VerificationIssue(table: table, column: column, rowID: row, problem: problem))
            }
        }
        func check(_ body: () throws(ChatLogError) -> Void) throws(ChatLogError) {
            do { try body() } catch .integrity(let failure) { record(failure.table, failure.column, failure.rowID, failure.description) }
        }
        try await reloadKeys(storage)
        report.sealedValues += try await storage.keyRows().filter { $0.wrapped != nil }.count
        try await forEachConversationPage(storage) { (page) throws(ChatLogError) in
            let keys = keyRing.current
            for copy in page {
                report.conversations += 1
                let row = copy.conversation
                report.sealedValues += [row.title, row.subject, row.metadata].compactMap { $0 }.count
                try check { () throws(ChatLogError) in _ = try decode(row, messageCount: copy.messages.count) }
                for message in copy.messages {
                    report.messages += 1
                    report.sealedValues += message.metadata == nil ? 1 : 2
                    var content: String?
                    try check { () throws(ChatLogError) in content = try decode(message).content }
                    guard let content else { continue }
                    guard let indexKeyID = message.indexKeyID else {
                        record("messages", "index_key_id", message.id, "the message is not in the search index")
                        continue
                    }
                    guard let raw = UInt32(exactly: indexKeyID), let blinder = keys.blinders[KeyID(rawValue: raw)] else {
                        record("messages", "index_key_id", message.id, "names index key \(indexKeyID), which is not a live index key")
                        continue
                    }
                    var expected = Set<UInt64>()
                    blinder.forEachDistinctTerm(in: content) { expected.insert($0) }
                    let stored = Set(message.terms)
                    if stored != expected {
                        record(
                            "message_terms", "term", message.id,
                            "the index holds \(stored.subtracting(expected).count) terms this message does not give and lacks \(expected.subtracting(stored).count) it gives")
                    }
                }
            }
            progress?(report.messages)
        }
        let orphans = try await storage.orphanTerms(delete: false)
        if orphans > 0 { record("message_terms", "message_seq", "-", "\(orphans) term rows belong to no message") }
        for issue in try await storageErasureIssues(storage) { record(issue.table, issue.column, issue.rowID, issue.problem) }
        return report
    }

    /// Every conversation of a store behind the seam with its messages and their terms, oldest
    /// first, a page of 200 at a time; before each page the key ring learns any data key the
    /// page's sealed values name.
    func forEachConversationPage(
        _ storage: any ChatLogStorage, _ body: ([ConversationCopy]) async throws(ChatLogError) -> Void
    ) async throws(ChatLogError) {
        var cursor: MessageCursor?
        while true {
            let page = try await storage.conversations(ConversationFilter(oldestFirst: true), after: cursor, limit: 200)
            let copies = try await storage.conversationCopies(page.map(\.row.id), withTerms: true)
            try await ensureKeys(
                for: copies.values.flatMap { copy in
                    [copy.conversation.title, copy.conversation.subject, copy.conversation.metadata] + copy.messages.flatMap { [$0.content, $0.metadata] }
                }, storage)
            try await body(page.compactMap { copies[$0.row.id] })  // a conversation deleted meanwhile is left out
            guard page.count == 200, let last = page.last else { return }
            cursor = last.cursor
        }
    }

    private func verifySQLite(progress: (@Sendable (Int) -> Void)?) throws(ChatLogError) -> VerificationReport {
        var report = try read { db in try self.verify(db, progress: progress) }
        for issue in try erasureIssues() {
            report.issueCount += 1
            if report.issues.count < Self.maximumReportedIssues { report.issues.append(issue) }
        }
        // FTS5's own structure check is an INSERT command, so it runs in a (brief) write
        // transaction: not on a store opened read-only (every term is still checked above).
        if options.readOnly { return report }
        do {
            try pool.writeWithoutTransaction { db in
                try db.execute(sql: "INSERT INTO message_terms (message_terms, rank) VALUES ('integrity-check', 0)")
            }
        } catch let error as DatabaseError where error.resultCode == .SQLITE_CORRUPT {
            report.issueCount += 1
            report.issues.append(VerificationIssue(table: "message_terms", column: "(index)", rowID: "-", problem: "FTS5 integrity check failed"))
        } catch {
            throw ChatLogError.wrap(error)
        }
        return report
    }

    func verify(_ db: Database, progress: (@Sendable (Int) -> Void)?) throws -> VerificationReport {
        var report = VerificationReport()
        func record(_ table: String, _ column: String, _ row: String, _ problem: String) {
            report.issueCount += 1
            if report.issues.count < Self.maximumReportedIssues {
                report.issues.append(VerificationIssue(table: table, column: column, rowID: row, problem: problem))
            }
        }
        func check(_ body: () throws -> Void) throws {
            do { try body() } catch let error as ChatLogError {
                if case .integrity(let failure) = error {
                    record(failure.table, failure.column, failure.rowID, failure.description)
                } else {
                    throw error
                }
            }
        }

        // SQLite's own structure first: a broken b-tree makes everything else unreliable.
        for line in try String.fetchAll(db, sql: "PRAGMA integrity_check") where line != "ok" {
            record("(file)", "(pages)", "-", "SQLite integrity check: \(line)")
        }

        // Wrapped keys (data, index, import).
        let master = keyRing.master
        for row in try Row.fetchAll(db, sql: "SELECT id, kind, wrapped FROM keys WHERE state <> 'retired'") {
            guard let kind = KeyStatus.Entry.Kind(rawValue: try row.decode(String.self, forColumn: "kind")) else { continue }
            report.sealedValues += 1
            let stored: Int64 = try row.decode(forColumn: "id")
            try check {
                _ = try KeyRing.unwrap(
                    row.sealedBytes("wrapped") ?? Data(), kind: kind, id: try KeyID.stored(stored, table: "keys", column: "id", rowID: String(stored)), master: master)
            }
        }
        try check { _ = try ImportKey.load(master: master, db: db) }
        let keys = try keyRing.reload(db)

        // Conversations: sealed fields and subject tokens.
        let conversations = try Row.fetchCursor(db, sql: "SELECT seq, id, title, subject, subject_token, subject_key_id, metadata FROM conversations")
        while let row = try conversations.next() {
            report.conversations += 1
            let id: String = try row.decode(forColumn: "id")
            try check { _ = try ConversationID.stored(row.storedText("id"), table: "conversations", column: "id", seq: try row.decode(forColumn: "seq")) }
            for column in ["title", "subject", "metadata"] {
                guard let sealed = row.sealedBytes(column) else { continue }
                report.sealedValues += 1
                try check {
                    let context = FieldContext(table: "conversations", column: column, rowID: id)
                    if column == "metadata" { _ = try openJSON(sealed, context, db: db) } else { _ = try openText(sealed, context, db: db) }
                }
            }
            if let sealed = row.sealedBytes("subject"), let keyID = row["subject_key_id"] as Int64? {
                try check {
                    let subject = try openText(sealed, FieldContext(table: "conversations", column: "subject", rowID: id), db: db)
                    guard let raw = UInt32(exactly: keyID), let key = keys.indexKeys[KeyID(rawValue: raw)] else {
                        record("conversations", "subject_key_id", id, "names index key \(keyID), which this store does not have")
                        return
                    }
                    if SubjectIndex.token(for: subject, key: key) != row.sealedBytes("subject_token") {
                        record("conversations", "subject_token", id, "does not match the subject")
                    }
                }
            }
        }

        // Messages: sealed fields, and the terms recomputed from their content.
        var ledger = IndexLedger()
        var unverifiable = Set<Int64>()  // rows whose terms cannot be recomputed (reported already)
        var latest = Int64.min  // the largest created_at so far in seq order
        let messages = try Row.fetchCursor(db, sql: "SELECT seq, id, content, metadata, index_key_id, created_at, time_lag FROM messages ORDER BY seq")
        while let row = try messages.next() {
            report.messages += 1
            if report.messages % 10_000 == 0 { progress?(report.messages) }
            let id: String = try row.decode(forColumn: "id")
            try check { _ = try MessageID.stored(row.storedText("id"), table: "messages", column: "id", seq: try row.decode(forColumn: "seq")) }
            let searchRowID: Int64 = try row.decode(forColumn: "seq")  // the index's row id (migration 0011)
            // Newest-first search stops at the first candidate whose created_at + time_lag is below
            // its page: a lag smaller than the running maximum would hide older messages from it.
            let createdAt: Int64 = try row.decode(forColumn: "created_at")
            latest = max(latest, createdAt)
            if SearchOrderKey.runningMaximum(createdAt: createdAt, timeLag: try row.decode(forColumn: "time_lag")) < latest {
                record("messages", "time_lag", id, "is below the running maximum of created_at (newest-first search could miss older messages)")
            }
            report.sealedValues += 1
            var content: String?
            try check { content = try openText(row.sealedBytes("content") ?? Data(), FieldContext(table: "messages", column: "content", rowID: id), db: db) }
            if let metadata = row.sealedBytes("metadata") {
                report.sealedValues += 1
                try check { _ = try openJSON(metadata, FieldContext(table: "messages", column: "metadata", rowID: id), db: db) }
            }
            guard let content else {
                unverifiable.insert(searchRowID)
                continue
            }
            guard let keyID = row["index_key_id"] as Int64? else {
                record("messages", "index_key_id", id, "the message is not in the search index")
                continue
            }
            guard let raw = UInt32(exactly: keyID), let blinder = keys.blinders[KeyID(rawValue: raw)] else {
                record("messages", "index_key_id", id, "names index key \(keyID), which this store does not have (retired or missing): its terms are stale")
                unverifiable.insert(searchRowID)
                continue
            }
            ledger.expect(content, blinder: blinder, rowID: searchRowID)
        }

        // The index, streamed once in term order: every (term, row id) pair it holds.
        try SearchIndex.forEachIndexedPair(db) { term, rowID in
            if !unverifiable.isEmpty, unverifiable.contains(rowID) { return }
            ledger.found(term, rowID: rowID)
        }
        let differing = ledger.differingBuckets
        if !differing.isEmpty {
            let located = try locateIndexDifferences(in: differing, skipping: unverifiable, ledger: ledger, keys: keys, db, record: record)
            report.staleSearchRows = located.staleRows
            report.misindexedMessages = located.misindexed
        }
        // Not a failure (a killed rm or prune leaves it; nothing is inconsistent), but deleted
        // terms are still readable in the file until the merge.
        report.unmergedDeletions = try SearchIndex.scrubPending(db)
        return report
    }
}

/// Sums of keyed hashes of (term, row id) pairs in buckets by row id: recomputed pairs add, pairs
/// read from the index subtract, so a bucket whose balance is not zero holds a difference. The
/// hash key is random per run (no crafted index can cancel out a difference it cannot predict).
/// Terms are compared as values (`TokenBlinder.decode`), not as text.
struct IndexLedger {
    static let bucketBits = 16
    static let characters = TokenBlinder.defaultBits / 5
    private(set) var balance = [UInt64](repeating: 0, count: 1 << bucketBits)
    private var seen = TermSet()
    let seed: UInt64

    init(seed: UInt64 = UInt64.random(in: .min ... .max)) { self.seed = seed }

    static func mix(_ value: UInt64) -> UInt64 {
        var z = value &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    func rowKey(_ rowID: Int64) -> UInt64 { Self.mix(UInt64(bitPattern: rowID) ^ seed) }
    func bucket(_ rowID: Int64) -> Int { Int(rowKey(rowID) >> UInt64(64 - Self.bucketBits)) }
    func pair(_ term: UInt64, _ rowKey: UInt64) -> UInt64 { Self.mix(term ^ rowKey) }

    /// Adds the distinct terms of one message's content.
    mutating func expect(_ content: String, blinder: TokenBlinder, rowID: Int64) {
        let key = rowKey(rowID)
        var sum: UInt64 = 0
        blinder.forEachDistinctTerm(in: content, seen: &seen) { sum &+= Self.mix($0 ^ key) }
        balance[Int(key >> UInt64(64 - Self.bucketBits))] &+= sum
    }

    /// Subtracts one pair read from the index. Text no blinder makes gets a value no blinder
    /// makes (the lowest bit set), so it always shows as a difference.
    mutating func found(_ term: UnsafeRawBufferPointer, rowID: Int64) {
        let key = rowKey(rowID)
        let value = TokenBlinder.decode(term, characters: Self.characters) ?? (term.reduce(Self.mix(UInt64(term.count))) { Self.mix($0 ^ UInt64($1)) } | 1)
        balance[Int(key >> UInt64(64 - Self.bucketBits))] &-= pair(value, key)
    }

    var differingBuckets: Set<Int> { Set(balance.indices.filter { balance[$0] != 0 }) }
}

extension ChatLogStore {
    /// Row by row, in the buckets whose sums differ: which messages lack terms, which hold terms
    /// their index key did not make (stale: an older or retired key), and which row ids in the
    /// index belong to no message (stale: a deleted row). Holds only those buckets' pairs.
    func locateIndexDifferences(
        in differing: Set<Int>, skipping unverifiable: Set<Int64>, ledger: IndexLedger, keys: KeyRing.Loaded, _ db: Database,
        record: (String, String, String, String) -> Void
    ) throws -> (staleRows: [Int64], misindexed: [String]) {
        var misindexed: [String] = []
        let detailed = Set(differing.sorted().prefix(Self.maximumDetailedBuckets))
        var indexed: [Int64: Set<String>] = [:]
        try SearchIndex.forEachIndexedPair(db) { term, rowID in
            guard !unverifiable.contains(rowID), detailed.contains(ledger.bucket(rowID)) else { return }
            indexed[rowID, default: []].insert(String(decoding: term, as: UTF8.self))
        }
        let messages = try Row.fetchCursor(
            db, sql: "SELECT seq, id, content, index_key_id FROM messages WHERE index_key_id IS NOT NULL ORDER BY seq")
        while let row = try messages.next() {
            let rowID: Int64 = try row.decode(forColumn: "seq")
            guard !unverifiable.contains(rowID), detailed.contains(ledger.bucket(rowID)) else { continue }
            let id: String = try row.decode(forColumn: "id")
            let have = indexed.removeValue(forKey: rowID) ?? []
            guard let raw = UInt32(exactly: try row.decode(Int64.self, forColumn: "index_key_id")),
                let blinder = keys.blinders[KeyID(rawValue: raw)],
                let content = try? openText(row.sealedBytes("content") ?? Data(), FieldContext(table: "messages", column: "content", rowID: id), db: db)
            else { continue }
            let want = Set(blinder.document(for: content).split(separator: " ").map(String.init))
            if want != have { misindexed.append(id) }
            if !want.isSubset(of: have) { record("message_terms", "terms", id, "the search index lacks some of this message's terms") }
            if !have.isSubset(of: want) {
                record(
                    "message_terms", "terms", id,
                    "the search index holds \(have.subtracting(want).count) terms at this message's row that its index key did not make (stale: an older or retired index key)")
            }
        }
        for rowID in indexed.keys.sorted() {
            record(
                "message_terms", "terms", "-",
                "the search index holds \(indexed[rowID]!.count) terms at search row \(rowID), which no message has (stale: a deleted row)")
        }
        if differing.count > detailed.count {
            record(
                "message_terms", "terms", "-",
                "\(differing.count - detailed.count) more groups of rows differ from the search index (not listed row by row)")
        }
        return (indexed.keys.sorted(), misindexed)
    }

    static let maximumDetailedBuckets = 256
}
