import Foundation
import GRDB
import Synchronization

extension ChatLogStore {
    /// With `relevance`, at most this many candidates (the newest) are opened and ranked.
    public static let relevanceCandidateCap = 20_000

    /// Keyword search over sealed content.
    ///
    /// Candidates come from the blinded-term index (all required words present, under any live
    /// index key), newest first, narrowed by the plain-column filters in SQL; each is opened and
    /// checked against the real query (phrases in order, exact normalised words, exclusions)
    /// before it is returned, so no false positive reaches the caller.
    ///
    /// ```swift
    /// let results = try store.search("refund -paypal \"charged twice\"", filters: SearchFilters(role: .user), limit: 20)
    /// ```
    public func search(
        _ query: String, filters: SearchFilters = SearchFilters(), limit: Int = 20, offset: Int = 0, sort: SearchSort = .relevance
    ) throws(ChatLogError) -> SearchResults {
        let plan = try SearchPlan(query: query, filters: filters, limit: limit, offset: offset, sort: sort, keys: keyRing.current)
        return try read { db in
            var plan = plan
            if try !plan.usesLiveIndexKeys(db) {
                // The keys of this snapshot, which may be older than the handle's.
                let keys = try self.keyRing.reload(db)
                plan = try SearchPlan(query: query, filters: filters, limit: limit, offset: offset, sort: sort, keys: keys)
            }
            return try self.execute(plan, db)
        }
    }

    public func search(
        _ query: String, filters: SearchFilters = SearchFilters(), limit: Int = 20, offset: Int = 0, sort: SearchSort = .relevance
    ) async throws(ChatLogError) -> SearchResults {
        if let storage { return try await storageSearch(query, filters: filters, limit: limit, offset: offset, sort: sort, storage) }
        let plan = try SearchPlan(query: query, filters: filters, limit: limit, offset: offset, sort: sort, keys: keyRing.current)
        return try await read { db in
            var plan = plan
            if try !plan.usesLiveIndexKeys(db) {
                // The keys of this snapshot, which may be older than the handle's.
                let keys = try self.keyRing.reload(db)
                plan = try SearchPlan(query: query, filters: filters, limit: limit, offset: offset, sort: sort, keys: keys)
            }
            return try self.execute(plan, db)
        }
    }

    /// Candidates stream out of the index in seq order, newest inserted first (the index's row id
    /// is the message's seq, migration 0011), with each one's created_at and time_lag. Every
    /// message with a smaller seq was created at or before `created_at + time_lag` (its running
    /// maximum), so a scan stops as soon as that bound shows no unread candidate can still make
    /// the page (newest) or pass `since` (both sorts). In a store logged in time order the bound
    /// is the candidate's own created_at and the scan stops right after the page, as when row ids
    /// were times.
    func execute(_ plan: SearchPlan, _ db: Database) throws -> SearchResults {
        let rows = try Row.fetchCursor(db, sql: plan.sql, arguments: plan.arguments)
        let matcher = plan.matcher
        let wanted = plan.offset + plan.limit
        var examined = 0
        var complete = true
        // Newest: the best `wanted + 1` verified candidates by (created_at, seq), descending (one
        // past the page tells whether there are more). Relevance: keep only what scoring needs
        // (term frequencies, length) for every verified candidate; the page's rows are read and
        // opened again at the end.
        var newest: [(key: SearchOrderKey, id: String, content: String, scan: QueryMatcher.Scan)] = []
        var candidates: [RankingInput] = []
        if plan.sort == .relevance {
            // Candidates are read here (this thread owns the connection) and opened and checked
            // on other threads meanwhile, a chunk at a time: reading, decrypting and scanning
            // overlap instead of taking turns.
            let pipeline = RankingPipeline(matcher: matcher)
            defer { pipeline.cancel() }
            var chunk: [SealedCandidate] = []
            chunk.reserveCapacity(RankingPipeline.chunkSize)
            while let row = try rows.next() {
                // By index (the SELECT's order: id, content, seq, created_at, time_lag): name
                // lookups are case-insensitive string searches, and this loop runs once per candidate.
                let createdAt: Int64 = try row.decode(atIndex: 3)
                if let since = plan.since {
                    if SearchOrderKey.runningMaximum(createdAt: createdAt, timeLag: try row.decode(atIndex: 4)) < since { break }
                    if createdAt < since { continue }
                }
                if examined >= Self.relevanceCandidateCap {
                    complete = false
                    break
                }
                examined += 1
                chunk.append(SealedCandidate(
                    id: try row.decode(String.self, atIndex: 0), sealed: row.sealedBytes(at: 1) ?? Data(),
                    key: SearchOrderKey(createdAt: createdAt, seq: try row.decode(Int64.self, atIndex: 2))))
                if chunk.count == RankingPipeline.chunkSize {
                    pipeline.submit(chunk, keys: try keys(for: chunk, db))
                    chunk.removeAll(keepingCapacity: true)
                }
            }
            if !chunk.isEmpty { pipeline.submit(chunk, keys: try keys(for: chunk, db)) }
            candidates = try pipeline.results()
        }
        while plan.sort == .newest, let row = try rows.next() {
            let createdAt: Int64 = try row.decode(atIndex: 3)
            let bound = SearchOrderKey.runningMaximum(createdAt: createdAt, timeLag: try row.decode(atIndex: 4))
            if let since = plan.since, bound < since { break }
            // The page is full and nothing unread can beat its last entry: every unread candidate
            // has a smaller seq and was created at or before `bound`.
            if newest.count > wanted, bound <= newest[newest.count - 1].key.createdAt { break }
            if let since = plan.since, createdAt < since { continue }
            let key = SearchOrderKey(createdAt: createdAt, seq: try row.decode(atIndex: 2))
            if newest.count > wanted, key < newest[newest.count - 1].key { continue }
            examined += 1
            let id: String = try row.decode(atIndex: 0)
            let content = try openText(row.sealedBytes(at: 1) ?? Data(), FieldContext(table: "messages", column: "content", rowID: id), db: db)
            let scan = matcher.scan(content)
            guard matcher.matches(scan) else { continue }
            // Candidates mostly arrive in order (appended); older history imported late is placed.
            var slot = newest.count
            while slot > 0, newest[slot - 1].key < key { slot -= 1 }
            newest.insert((key, id, content, scan), at: slot)
            if newest.count > wanted + 1 { newest.removeLast() }
        }

        if plan.sort == .newest {
            let page = newest.dropFirst(plan.offset).prefix(plan.limit)
            let details = try pageDetails(page.map(\.id), db)
            let hits = try page.compactMap { entry -> SearchHit? in
                guard let row = details[entry.id] else { return nil }
                return try hit(row, content: entry.content, matches: matcher.positiveMatches(entry.scan), score: nil)
            }
            return SearchResults(hits: hits, examined: examined, complete: complete, matched: nil, more: newest.count > wanted)
        }

        guard !candidates.isEmpty else { return SearchResults(hits: [], examined: examined, complete: complete, matched: 0, more: false) }
        let ranking = try BM25(matcher: matcher, blinders: plan.blinders, db: db)
        let averageLength = Double(candidates.reduce(0) { $0 + $1.length }) / Double(candidates.count)
        // Highest score first; ties newest first (created_at, then seq: the order of newest-first
        // search, and of every backend).
        let order = candidates.indices.map { index in
            (index, ranking.score(
                frequencies: candidates[index].frequencies, positive: matcher.positive, length: candidates[index].length,
                averageLength: averageLength))
        }.sorted { ($0.1, candidates[$0.0].key) > ($1.1, candidates[$1.0].key) }
        let page = Array(order.dropFirst(plan.offset).prefix(plan.limit))
        let rowsBySeq = try Row.fetchAll(
            db,
            sql: """
                SELECT m.seq, m.id, c.seq AS conversation_seq, c.id AS conversation_id, m.role, m.created_at, m.model, m.content
                FROM messages m JOIN conversations c ON c.seq = m.conversation_seq
                WHERE m.seq IN (\(page.map { _ in "?" }.joined(separator: ",")))
                """, arguments: StatementArguments(page.map { candidates[$0.0].key.seq })
        ).reduce(into: [Int64: Row]()) { $0[try $1.decode(Int64.self, forColumn: "seq")] = $1 }
        var hits: [SearchHit] = []
        for (index, score) in page {
            guard let row = rowsBySeq[candidates[index].key.seq] else { continue }
            let id: String = try row.decode(forColumn: "id")
            let content = try openText(row.sealedBytes("content") ?? Data(), FieldContext(table: "messages", column: "content", rowID: id), db: db)
            hits.append(try hit(row, content: content, matches: matcher.positiveMatches(matcher.scan(content)), score: score))
        }
        return SearchResults(
            hits: hits, examined: examined, complete: complete, matched: candidates.count, more: candidates.count > plan.offset + plan.limit)
    }

    struct SealedCandidate: Sendable {
        let id: String
        let sealed: Data
        let key: SearchOrderKey
    }

    struct RankingInput: Sendable {
        let key: SearchOrderKey
        let frequencies: [Int]
        let length: Int
    }

    /// The data keys a chunk of candidates needs, looked up on the connection's thread (a key
    /// this handle does not know yet reloads the key ring from the database).
    private func keys(for chunk: [SealedCandidate], _ db: Database) throws -> CandidateKeys {
        var keys = CandidateKeys()
        for candidate in chunk {
            if let subjectID = SealedValue.subjectKeyID(of: candidate.sealed), keys.subject[subjectID] == nil {
                keys.subject[subjectID] = try subjectKey(subjectID, FieldContext(table: "messages", column: "content", rowID: candidate.id))
            }
            let failure = { (reason: IntegrityFailure.Reason) in
                ChatLogError.integrity(IntegrityFailure(table: "messages", column: "content", rowID: candidate.id, reason: reason))
            }
            let keyID: KeyID
            do { keyID = try SealedValue.keyID(of: candidate.sealed) } catch { throw failure(error.integrityReason) }
            if keys.data[keyID] != nil { continue }
            let ring = try keyRing.keys(opening: keyID, db)
            guard let key = ring.dataKeys[keyID] else {
                throw failure(ring.retired.contains(keyID) ? .retiredKey(keyID) : .unknownKey(keyID))
            }
            keys.data[keyID] = key
        }
        return keys
    }

    /// The keys a chunk of candidates opens with: data keys, and the subject keys of candidates
    /// sealed under one.
    struct CandidateKeys: Sendable {
        var data: [KeyID: DataKey] = [:]
        var subject: [KeyID: SubjectKey] = [:]
    }

    /// The plain columns of the messages on a page, by message id.
    private func pageDetails(_ ids: [String], _ db: Database) throws -> [String: Row] {
        guard !ids.isEmpty else { return [:] }
        return try Row.fetchAll(
            db,
            sql: """
                SELECT m.seq, m.id, c.seq AS conversation_seq, c.id AS conversation_id, m.role, m.created_at, m.model
                FROM messages m JOIN conversations c ON c.seq = m.conversation_seq
                WHERE m.id IN (\(ids.map { _ in "?" }.joined(separator: ",")))
                """, arguments: StatementArguments(ids)
        ).reduce(into: [String: Row]()) { $0[try $1.decode(String.self, forColumn: "id")] = $1 }
    }

    private func hit(_ row: Row, content: String, matches: [Range<Int>], score: Double?) throws -> SearchHit {
        SearchHit(
            messageID: try MessageID.stored(row.storedText("id"), table: "messages", column: "id", seq: try row.decode(forColumn: "seq")),
            conversationID: try ConversationID.stored(
                row.storedText("conversation_id"), table: "conversations", column: "id", seq: try row.decode(forColumn: "conversation_seq")),
            role: Role(rawValue: try row.decode(String.self, forColumn: "role")) ?? .user, createdAt: Date(unixMilliseconds: try row.decode(Int64.self, forColumn: "created_at")), model: row["model"],
            content: content, snippet: Snippets.make(content: content, matches: matches), score: score)
    }
}

/// Everything decided before the read: the parsed query, the FTS5 expression of blinded terms
/// (never any of the user's text), and the SQL for the filters.
struct SearchPlan: Sendable {
    let query: SearchQuery
    let sort: SearchSort
    let limit: Int
    let offset: Int
    let sql: String
    let arguments: StatementArguments
    /// The `since` filter in Unix ms (nil: none).
    let since: Int64?
    let blinders: [TokenBlinder]
    let matcher: QueryMatcher

    init(query text: String, filters: SearchFilters, limit: Int, offset: Int, sort: SearchSort, keys: KeyRing.Loaded) throws(ChatLogError) {
        guard (1...1_000).contains(limit) else { throw .invalidInput("limit must be between 1 and 1000") }
        guard (0...100_000).contains(offset) else { throw .invalidInput("offset must be between 0 and 100000") }
        query = try SearchQuery(parsing: text)
        matcher = QueryMatcher(query)
        self.sort = sort
        self.limit = limit
        self.offset = offset
        // Every live index key: during an index-key rotation rows are indexed under either.
        blinders = keys.blinders.keys.sorted().map { keys.blinders[$0]! }
        let blinders = self.blinders

        // Required clauses only: exclusions are applied after decryption (a blinded term can
        // be shared by two words, so excluding by term could drop a true match).
        func term(_ token: String) -> String {
            let terms = Set(blinders.map { "\"" + $0.term(for: token) + "\"" }).sorted()
            return terms.count == 1 ? terms[0] : "(" + terms.joined(separator: " OR ") + ")"
        }
        func atom(_ atom: SearchQuery.Atom) -> String {
            let tokens = Array(Set(atom.tokens)).sorted().map(term)
            return tokens.count == 1 ? tokens[0] : "(" + tokens.joined(separator: " AND ") + ")"
        }
        let match = query.required.map { clause in
            clause.count == 1 ? atom(clause[0]) : "(" + clause.map(atom).joined(separator: " OR ") + ")"
        }.joined(separator: " AND ")

        var clauses = ["message_terms MATCH ?"]
        var arguments: StatementArguments = [match]
        // Times outside ±2^43 ms (years 1691–2248, the range every writer accepts) keep everything
        // or nothing.
        func milliseconds(_ date: Date, _ name: String) throws(ChatLogError) -> Int64? {
            let milliseconds = (date.timeIntervalSince1970 * 1000).rounded(.down)
            guard milliseconds.isFinite else { throw .invalidInput("\(name) is not a valid date") }
            guard abs(milliseconds) < Double(SearchIndex.millisecondsLimit) else { return nil }
            return Int64(milliseconds)
        }
        // `since` is applied while reading (ChatLogStore.execute): the scan stops once no unread
        // candidate can be that recent, which a SQL filter would hide from it.
        var since: Int64?
        if let date = filters.since {
            if let bound = try milliseconds(date, "since") {
                since = bound
            } else if date.timeIntervalSince1970 > 0 {
                clauses.append("0")
            }
        }
        self.since = since
        if let until = filters.until {
            if let bound = try milliseconds(until, "until") {
                clauses.append("m.created_at < ?")
                arguments += [bound]
            } else if until.timeIntervalSince1970 < 0 {
                clauses.append("0")
            }
        }
        if let conversation = filters.conversation {
            clauses.append("c.id = ?")
            arguments += [conversation.rawValue]
        }
        if let role = filters.role {
            clauses.append("m.role = ?")
            arguments += [role.rawValue]
        }
        if let model = filters.model {
            clauses.append("m.model = ?")
            arguments += [model]
        }
        if let subject = filters.subject {
            let tokens = keys.subjectTokens(subject)
            clauses.append("c.subject_token IN (\(tokens.map { _ in "?" }.joined(separator: ",")))")
            arguments += StatementArguments(tokens)
        }
        // The index's row id is the message's seq: the join is a row id look-up.
        sql = """
            SELECT m.id, m.content, m.seq, m.created_at, m.time_lag
            FROM message_terms t
            JOIN messages m ON m.seq = t.rowid
            \(filters.conversation != nil || filters.subject != nil ? "JOIN conversations c ON c.seq = m.conversation_seq" : "")
            WHERE \(clauses.joined(separator: " AND "))
            ORDER BY t.rowid DESC
            """
        self.arguments = arguments
    }
}

/// The order of newest-first search on every backend: created_at, then seq (insertion order).
struct SearchOrderKey: Comparable, Hashable, Sendable {
    let createdAt: Int64
    let seq: Int64

    static func < (left: Self, right: Self) -> Bool { (left.createdAt, left.seq) < (right.createdAt, right.seq) }

    /// created_at + time_lag (migration 0011): no message with a smaller seq was created after it.
    /// Saturating, and never below created_at, whatever a damaged row holds.
    static func runningMaximum(createdAt: Int64, timeLag: Int64) -> Int64 {
        let (sum, overflow) = createdAt.addingReportingOverflow(max(0, timeLag))
        return overflow ? .max : sum
    }
}

extension SearchPlan {
    /// Whether the plan's blinded terms and subject tokens cover exactly the store's live index
    /// keys. Another process may have rotated the index key since this one loaded its keys; the
    /// rows it moved are then under a key the plan does not know and would be missed.
    func usesLiveIndexKeys(_ db: Database) throws -> Bool {
        let live = try Int64.fetchSet(db, sql: "SELECT id FROM keys WHERE kind = 'index' AND state <> 'retired'")
        return live == Set(blinders.map { Int64($0.keyID.rawValue) })
    }
}

/// Okapi BM25 (k1 = 1.2, b = 0.75) over decrypted candidates. Document frequencies come from
/// the index's term statistics (fts5vocab), so idf reflects the whole store, not just the
/// candidates; a blinded-term collision can only overstate a frequency.
struct BM25 {
    private var idf: [Double] = []

    init(matcher: QueryMatcher, blinders: [TokenBlinder], db: Database) throws {
        // The number of messages (migration 0007's counter, kept by the writers and the delete
        // triggers): exact after deletes, as on every backend (max(seq) counted deleted rows too).
        let total = Double(max(1, try Int64.fetchOne(db, sql: "SELECT messages FROM message_totals WHERE id = 1") ?? 1))
        let statement = try db.cachedStatement(sql: "SELECT doc FROM message_terms_vocab WHERE term = ?")
        for token in matcher.tokens {
            var frequency = 0.0
            for blinder in blinders {
                let term = token.withUnsafeBufferPointer { TokenBlinder.encode(blinder.hash($0), characters: blinder.bits / 5) }
                frequency += Double(try Int64.fetchOne(statement, arguments: [term]) ?? 0)
            }
            idf.append(log(1 + (total - frequency + 0.5) / (frequency + 0.5)))
        }
    }

    /// With document frequencies from the storage seam: `frequencies` by term value (what
    /// ``TokenBlinder/forEachDistinctTerm(in:_:)`` gives), `total` messages in the store.
    init(matcher: QueryMatcher, blinders: [TokenBlinder], total: Int, frequencies: [UInt64: Int]) {
        let total = Double(max(1, total))
        for token in matcher.tokens {
            var frequency = 0.0
            for blinder in blinders {
                frequency += Double(frequencies[token.withUnsafeBufferPointer { blinder.termValue($0) }] ?? 0)
            }
            idf.append(log(1 + (total - frequency + 0.5) / (frequency + 0.5)))
        }
    }

    /// `frequencies` per query token (excluded tokens are not scored), `length` in tokens.
    func score(frequencies: [Int], positive: [Bool], length tokenCount: Int, averageLength: Double) -> Double {
        let length = Double(tokenCount)
        var score = 0.0
        for (token, count) in frequencies.enumerated() where count > 0 && positive[token] {
            let tf = Double(count)
            score += idf[token] * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * length / max(1, averageLength)))
        }
        return score
    }
}

/// About 160 characters around the first match, with the matched words as highlight ranges.
/// The window starts and ends on word boundaries as the search tokenizer sees them (so in every
/// script: a Polish or Greek word is never cut, CJK characters are words of their own, a
/// character with its combining marks stays whole), and leading or trailing spaces and
/// punctuation are left out.
enum Snippets {
    static let radius = 80

    /// `matches` are byte ranges of `content` (from the scanner), in text order.
    static func make(content: String, matches: [Range<Int>]) -> Snippet {
        let utf8 = content.utf8
        func index(_ offset: Int) -> String.Index { utf8.index(utf8.startIndex, offsetBy: offset) }
        guard let first = matches.first else {
            let limit = content.index(content.startIndex, offsetBy: 2 * radius, limitedBy: content.endIndex) ?? content.endIndex
            let end = wordEnd(in: content, before: limit, notBefore: content.startIndex)
            return Snippet(text: String(content[..<end]) + (content[end...].contains { !$0.isWhitespace } ? "…" : ""), highlights: [])
        }
        let firstIndex = index(first.lowerBound)
        let roughStart = content.index(firstIndex, offsetBy: -radius / 2, limitedBy: content.startIndex) ?? content.startIndex
        var start = wordStart(in: content, after: roughStart, notAfter: firstIndex)
        let roughEnd = content.index(start, offsetBy: 2 * radius, limitedBy: content.endIndex) ?? content.endIndex
        let end = wordEnd(in: content, before: roughEnd, notBefore: index(first.upperBound))
        // A window that reached the end gives what it did not use to the text before it (a short
        // message is shown whole).
        if end == content.endIndex, start > content.startIndex {
            let unused = 2 * radius - content.distance(from: start, to: end)
            if unused > 0 {
                let earlier = content.index(start, offsetBy: -unused, limitedBy: content.startIndex) ?? content.startIndex
                start = wordStart(in: content, after: earlier, notAfter: start)
            }
        }
        let prefix = content[..<start].contains { !$0.isWhitespace } ? "…" : ""
        let suffix = content[end...].contains { !$0.isWhitespace } ? "…" : ""
        let text = prefix + String(content[start..<end]) + suffix
        let startOffset = utf8.distance(from: utf8.startIndex, to: start)
        let endOffset = utf8.distance(from: utf8.startIndex, to: end)
        let shift = prefix.utf8.count - startOffset
        var highlights: [Range<String.Index>] = []
        var last = -1
        for range in matches where range.lowerBound >= startOffset && range.upperBound <= endOffset && range.lowerBound > last {
            last = range.lowerBound
            let lower = text.utf8.index(text.utf8.startIndex, offsetBy: range.lowerBound + shift)
            let upper = text.utf8.index(lower, offsetBy: range.count)
            highlights.append(lower..<upper)
        }
        return Snippet(text: text, highlights: highlights)
    }

    /// `index` moved forward past the rest of a word it cuts, then past spaces and punctuation,
    /// never beyond `limit` (the first match).
    static func wordStart(in content: String, after index: String.Index, notAfter limit: String.Index) -> String.Index {
        var index = index
        while index < limit, cutsWord(content, at: index) { index = content.index(after: index) }
        while index < limit, index < content.endIndex, content[index].isWhitespace || content[index].isPunctuation {
            index = content.index(after: index)
        }
        return index
    }

    /// `index` moved back to the start of a word it cuts, then before trailing spaces, never
    /// before `limit` (the end of the first match).
    static func wordEnd(in content: String, before index: String.Index, notBefore limit: String.Index) -> String.Index {
        var index = index
        while index > limit, index < content.endIndex, cutsWord(content, at: index) { index = content.index(before: index) }
        while index > limit, index > content.startIndex, content[content.index(before: index)].isWhitespace {
            index = content.index(before: index)
        }
        return index
    }

    /// Whether the characters either side of `index` belong to one search token.
    static func cutsWord(_ content: String, at index: String.Index) -> Bool {
        guard index > content.startIndex, index < content.endIndex else { return false }
        let pair = String(content[content.index(before: index)..<content.index(after: index)])
        let middle = pair.index(after: pair.startIndex)
        return Tokenizer.tokensWithRanges(pair).contains { $0.range.lowerBound < middle && $0.range.upperBound > middle }
    }
}

/// Opens and checks relevance candidates on worker threads while the caller keeps reading them.
/// Each submitted chunk is queued with its own result slots, and a task on a global concurrent
/// queue takes the oldest queued chunk. The reading thread never just blocks on the workers: when
/// too many chunks are queued (bounded memory) and at the end, it takes queued chunks itself, and
/// then waits only for chunks a worker has already started — so the search finishes even when no
/// pool thread is free (say, every pool thread is an app thread waiting on a search).
final class RankingPipeline: Sendable {
    static let chunkSize = 512
    private static let maximumQueued = 8

    private struct Work: Sendable {
        let chunk: [ChatLogStore.SealedCandidate]
        let keys: ChatLogStore.CandidateKeys
        let results: ResultSlots<ChatLogStore.RankingInput?>
    }

    private struct State {
        var queued: [Work] = []
        var running = 0
        var submitted: [ResultSlots<ChatLogStore.RankingInput?>] = []
    }

    private let matcher: QueryMatcher
    private let state = Mutex(State())
    /// Signalled once per chunk a worker finishes.
    private let finished = DispatchSemaphore(value: 0)

    init(matcher: QueryMatcher) { self.matcher = matcher }

    func submit(_ chunk: [ChatLogStore.SealedCandidate], keys: ChatLogStore.CandidateKeys) {
        let work = Work(chunk: chunk, keys: keys, results: ResultSlots(count: chunk.count))
        let queued = state.withLock { state in
            state.queued.append(work)
            state.submitted.append(work.results)
            return state.queued.count
        }
        if queued > Self.maximumQueued, let oldest = take(countingAsRunning: false) { process(oldest) }
        DispatchQueue.global(qos: .userInitiated).async { [self] in
            guard let work = take(countingAsRunning: true) else { return }
            process(work)
            state.withLock { $0.running -= 1 }
            finished.signal()
        }
    }

    private func take(countingAsRunning: Bool) -> Work? {
        state.withLock { state in
            guard !state.queued.isEmpty else { return nil }
            if countingAsRunning { state.running += 1 }
            return state.queued.removeFirst()
        }
    }

    private func process(_ work: Work) {
        for index in work.chunk.indices { work.results.set(index, Self.check(work.chunk[index], matcher: matcher, keys: work.keys)) }
    }

    /// Drops the chunks no worker has started (the reader failed; nobody will read the results).
    func cancel() {
        state.withLock { $0.queued.removeAll() }
    }

    /// Opens one candidate and scans it: its ranking input if it matches, nil if not.
    private static func check(
        _ candidate: ChatLogStore.SealedCandidate, matcher: QueryMatcher, keys: ChatLogStore.CandidateKeys
    ) -> Result<ChatLogStore.RankingInput?, ChatLogError> {
        let context = FieldContext(table: "messages", column: "content", rowID: candidate.id)
        do {
            guard let key = keys.data[try SealedValue.keyID(of: candidate.sealed)] else { throw SealedValue.Failure.authenticationFailed }
            let subjectKey = SealedValue.subjectKeyID(of: candidate.sealed).flatMap { keys.subject[$0] }
            let plaintext = try candidate.sealed.withUnsafeBytes { (bytes) throws(SealedValue.Failure) in
                try SealedValue.open(bytes, key: key.storage, context: context, subjectKey: subjectKey?.storage)
            }
            if let counts = plaintext.withUnsafeBufferPointer({ matcher.rankingCounts(utf8: $0) }) {
                return .success(counts.matches
                    ? ChatLogStore.RankingInput(key: candidate.key, frequencies: counts.frequencies, length: counts.length) : nil)
            }
            let scan = plaintext.withUnsafeBufferPointer { matcher.asciiScan(utf8: $0) ?? matcher.scan(utf8: $0) }
            return .success(matcher.matches(scan)
                ? ChatLogStore.RankingInput(key: candidate.key, frequencies: matcher.frequencies(scan), length: scan.tokenCount) : nil)
        } catch {
            return .failure(.integrity(IntegrityFailure(
                table: "messages", column: "content", rowID: candidate.id, reason: (error as? SealedValue.Failure)?.integrityReason ?? .authenticationFailed)))
        }
    }

    /// Every chunk's results, in submission order, once all are done (this thread takes the chunks
    /// still queued); or the first integrity failure.
    func results() throws(ChatLogError) -> [ChatLogStore.RankingInput] {
        while let work = take(countingAsRunning: false) { process(work) }
        while state.withLock({ $0.running }) > 0 { finished.wait() }
        var output: [ChatLogStore.RankingInput] = []
        for chunk in state.withLock({ $0.submitted }) {
            for value in chunk.values() {
                if let input = try value.get() { output.append(input) }
            }
        }
        return output
    }
}

/// Fixed slots that a worker fills, each index by exactly one thread.
final class ResultSlots<Value>: @unchecked Sendable {
    // @unchecked Sendable: all slots of one instance are written by the one thread that took its
    // chunk (RankingPipeline), through a raw buffer allocated once (no Swift exclusivity access to
    // a shared array), and read only after that thread has finished: it then decrements the
    // pipeline's running count under its mutex, and the reader sees zero under the same mutex,
    // which orders the writes before the reads (or the reader processed the chunk itself).
    private let slots: UnsafeMutableBufferPointer<Result<Value, ChatLogError>?>

    init(count: Int) {
        slots = .allocate(capacity: count)
        slots.initialize(repeating: nil)
    }

    deinit {
        slots.deinitialize()
        slots.deallocate()
    }

    func set(_ index: Int, _ value: Result<Value, ChatLogError>) { slots[index] = value }

    func values() -> [Result<Value, ChatLogError>] { slots.map { $0! } }
}
