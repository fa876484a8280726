import FuzzSupport
import Foundation
import GRDB

@testable import ChatLog

/// The search query parser and matcher (Search/): the input is `query NUL text` (without a NUL
/// byte, the query is the whole input and the text a fixed multilingual sample).
///
/// Invariants:
/// - `SearchQuery(parsing:)` throws only `invalidInput`, and respects its limits;
/// - `Tokenizer.tokens` and `tokensWithRanges` agree, with no empty token and in-bounds ranges;
/// - the fast matcher (`QueryMatcher`, used on decrypted candidates) and the reference
///   (`SearchQuery.matches`) agree on the text;
/// - the `SearchPlan` gives FTS5 only blinded terms, quotes, parentheses, AND and OR, and the
///   expression is valid FTS5 that finds the text's blinded document whenever the text matches
///   (the index never hides a true match);
/// - snippets and highlights are built without trapping.

private let sample = """
    Grüße aus Köln: the quick brown fox — e-mail me at a.b@example.com. 東京タワーへ行きました。ｶﾞｷﾞ
    ΟΔΟΣ οδος İstanbul ﬁle ½ naïve cafe\u{301} 123 x² "quoted" don't ⁠stop 🙂‍↔️ Ⅻ ǅ
    """

private let indexKeyID = KeyID(rawValue: 2)
private let keys: KeyRing.Loaded = {
    let dataKey = DataKey(storage: SecureBytes.random(count: 32))
    let indexBytes: [UInt8] = (0..<32).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
    let indexKey = IndexKey(storage: indexBytes.withUnsafeBytes { SecureBytes(copying: $0) })
    return KeyRing.Loaded(
        activeDataKey: (KeyID(rawValue: 1), dataKey), activeIndexKey: (indexKeyID, indexKey), dataKeys: [KeyID(rawValue: 1): dataKey],
        indexKeys: [indexKeyID: indexKey], retired: [], blinders: [indexKeyID: TokenBlinder(indexKey: indexKey, keyID: indexKeyID)])
}()

/// The store's FTS5 table (migrations/0002_search.sql), in memory.
private let index: DatabaseQueue = {
    let queue = try! DatabaseQueue()
    try! queue.write { db in
        try db.execute(
            sql: "CREATE VIRTUAL TABLE message_terms USING fts5 (terms, content = '', columnsize = 0, detail = none, tokenize = 'ascii')")
    }
    return queue
}()

private let allowedInMatch = Set("abcdefghijklmnopqrstuvwxyz234567\"() ANDOR".utf8)

/// The entry point SwiftPM links as main (see `runFuzzer`).
@_cdecl("FuzzSearchQuery_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, fuzzInput)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzInput(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let input = fuzzBytes(start, count)
    let split = input.firstIndex(of: 0)
    let queryText = String(decoding: input[..<(split ?? input.count)], as: UTF8.self)
    let text = split.map { String(decoding: input[($0 + 1)...], as: UTF8.self) } ?? sample

    let tokens = checkedTokens(text)
    _ = checkedTokens(queryText)

    let query: SearchQuery
    do {
        query = try SearchQuery(parsing: queryText)
    } catch {
        guard case .invalidInput = error else { fuzzFailure("SearchQuery(parsing:) threw \(error)") }
        return 0
    }
    let atoms = query.required.flatMap { $0 } + query.excluded
    require(!query.required.isEmpty && query.required.allSatisfy { !$0.isEmpty }, "a query with an empty clause")
    require(atoms.count <= SearchQuery.maximumAtoms, "\(atoms.count) atoms")
    require(atoms.allSatisfy { !$0.tokens.isEmpty && $0.tokens.allSatisfy { !$0.isEmpty } }, "an empty atom or token")
    require(Set(atoms.flatMap(\.tokens)).count <= SearchQuery.maximumDistinctTokens, "too many distinct tokens")
    _ = query.description

    // Fast matcher against the reference.
    let matcher = QueryMatcher(query)
    let scan = matcher.scan(text)
    require(scan.tokenCount == tokens.count, "the matcher scanned \(scan.tokenCount) tokens, the tokenizer gives \(tokens.count)")
    let fast = matcher.matches(scan)
    let reference = query.matches(tokens: tokens, set: Set(tokens))
    require(fast == reference, "QueryMatcher says \(fast), SearchQuery.matches says \(reference) for \(query)")
    // The ASCII fast path (relevance ranking) gives the same scan, or declines non-ASCII text.
    var textCopy = text
    if let ascii = textCopy.withUTF8({ matcher.asciiScan(utf8: $0) }) {
        require(text.utf8.allSatisfy { $0 < 0x80 }, "asciiScan accepted non-ASCII text")
        require(ascii.tokenCount == scan.tokenCount, "asciiScan counted \(ascii.tokenCount) tokens, scan \(scan.tokenCount)")
        require(ascii.matches.map(\.position) == scan.matches.map(\.position) && ascii.matches.map(\.token) == scan.matches.map(\.token)
            && ascii.matches.map(\.range) == scan.matches.map(\.range), "asciiScan and scan found different matches")
    } else {
        require(!text.utf8.allSatisfy { $0 < 0x80 }, "asciiScan declined ASCII text")
    }
    let frequencies = matcher.frequencies(scan)
    require(frequencies.reduce(0, +) == scan.matches.count, "frequencies do not add up")
    // Ranking's counting path agrees with the scan, or declines (phrases, non-ASCII text).
    if let counts = textCopy.withUTF8({ matcher.rankingCounts(utf8: $0) }) {
        require(text.utf8.allSatisfy { $0 < 0x80 }, "rankingCounts accepted non-ASCII text")
        require(counts.matches == fast && counts.frequencies == frequencies && counts.length == scan.tokenCount,
            "rankingCounts and scan disagree")
    }
    let highlights = matcher.positiveMatches(scan)
    let snippet = Snippets.make(content: text, matches: highlights)
    for range in snippet.highlights { _ = snippet.text[range] }

    // The plan: blinded terms only, valid FTS5, no false negative.
    let plan: SearchPlan
    do {
        plan = try SearchPlan(query: queryText, filters: SearchFilters(), limit: 20, offset: 0, sort: .relevance, keys: keys)
    } catch {
        fuzzFailure("SearchPlan refused a query that parses: \(error)")
    }
    require(plan.query == query, "the plan parsed the query differently")
    // Without filters the MATCH expression is the plan's only argument.
    guard let match = try? index.read({ db in try String.fetchOne(db, sql: "SELECT ?", arguments: plan.arguments) }) ?? nil else {
        fuzzFailure("the plan's arguments are not one MATCH expression")
    }
    require(match.utf8.allSatisfy(allowedInMatch.contains), "user text reached the MATCH expression: \(match)")
    let document = keys.activeBlinder.document(for: text)
    let found: Bool
    do {
        found = try index.write { db in
            try db.execute(sql: "INSERT INTO message_terms (message_terms) VALUES ('delete-all')")
            try db.execute(sql: "INSERT INTO message_terms (rowid, terms) VALUES (1, ?)", arguments: [document])
            return try Int.fetchOne(db, sql: "SELECT count(*) FROM message_terms WHERE message_terms MATCH ?", arguments: [match])! > 0
        }
    } catch {
        fuzzFailure("FTS5 refused the plan's expression \(match): \(error)")
    }
    if reference { require(found, "the index hides a true match of \(query)") }
    return 0
}

private func checkedTokens(_ text: String) -> [String] {
    let tokens = Tokenizer.tokens(text)
    let ranged = Tokenizer.tokensWithRanges(text)
    require(tokens == ranged.map(\.text), "tokens and tokensWithRanges disagree")
    for token in ranged {
        require(!token.text.isEmpty, "an empty token")
        require(token.range.lowerBound >= text.startIndex && token.range.upperBound <= text.endIndex, "a range out of the text")
        _ = text[token.range]
    }
    return tokens
}
