import Foundation
import GRDB
import Synchronization
import Testing

@testable import ChatLog

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

// Search must return exactly the messages a plaintext reference finds. The reference below
// tokenizes each message with `Tokenizer.tokens` (the definition of "word"), checks phrases as
// contiguous token runs, OR, exclusions and the plain filters, and is compared with the store's
// answers on a generated corpus, after deletions and across index-key rotations.

// MARK: - Scratch directory, store, PRNG

private struct SearchTestError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Runs `body` with a fresh private directory, removed afterwards.
private func withSearchScratch<R>(_ body: (String) throws -> R) throws -> R {
    var template = Array((NSTemporaryDirectory() + "/chatlog-search-XXXXXX").utf8CString)
    let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
    guard let made else { throw SearchTestError("mkdtemp failed (errno \(errno))") }
    let path = String(cString: made)
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try body(path)
}

private func makeSearchStore(in directory: String, key: MasterKey = MasterKey.generate()) throws -> ChatLogStore {
    try ChatLogStore.create(at: directory + "/chat.db", key: .key(key))
}


/// Milliseconds the way the store counts them (rounded down), without trapping on huge dates.
private func milliseconds(_ date: Date) -> Double { (date.timeIntervalSince1970 * 1000).rounded(.down) }

private func nfkc(_ text: String) -> [UInt32] { text.precomposedStringWithCompatibilityMapping.unicodeScalars.map(\.value) }

// MARK: - Plaintext reference

private struct ReferenceMessage {
    let id: String
    /// Insertion order: message ids are random UUIDs, so sampling sorts by this instead.
    let ordinal: Int
    let conversation: String
    let role: Role
    let model: String?
    let createdAt: Double
    let content: String
    let tokens: [String]
    let tokenSet: Set<String>
}

/// Clauses (all must match) of atoms (any may match); an atom is the token run of a word or a
/// phrase. Excluded atoms must not occur.
private struct ReferenceQuery {
    var required: [[[String]]]
    var excluded: [[String]]
    var positiveTokens: Set<String> { Set(required.flatMap { $0.flatMap { $0 } }) }
}

private final class ReferenceIndex {
    private(set) var messages: [String: ReferenceMessage] = [:]
    /// Live message ids in insertion order (deterministic sampling).
    private(set) var ids: [String] = []
    /// Live conversation ids in creation order.
    private(set) var conversations: [ConversationID] = []
    private var subjects: [String: [UInt32]] = [:]
    private var postings: [String: Set<String>] = [:]
    private var nextOrdinal = 0

    func addConversation(_ id: ConversationID, subject: String?) {
        conversations.append(id)
        if let subject { subjects[id.rawValue] = nfkc(subject) }
    }

    func add(id: MessageID, conversation: ConversationID, _ message: NewMessage) {
        let tokens = Tokenizer.tokens(message.content)
        let entry = ReferenceMessage(
            id: id.rawValue, ordinal: nextOrdinal, conversation: conversation.rawValue, role: message.role, model: message.model,
            createdAt: milliseconds(message.createdAt!), content: message.content, tokens: tokens, tokenSet: Set(tokens))
        nextOrdinal += 1
        messages[entry.id] = entry
        ids.append(entry.id)
        for token in entry.tokenSet { postings[token, default: []].insert(entry.id) }
    }

    /// Removes a conversation and returns the ids of its messages.
    @discardableResult
    func removeConversation(_ id: ConversationID) -> Set<String> {
        conversations.removeAll { $0 == id }
        subjects[id.rawValue] = nil
        let removed = Set(ids.filter { messages[$0]!.conversation == id.rawValue })
        for messageID in removed {
            for token in messages[messageID]!.tokenSet { postings[token]?.remove(messageID) }
            messages[messageID] = nil
        }
        ids.removeAll { removed.contains($0) }
        return removed
    }

    func documentFrequency(_ token: String) -> Int { postings[token]?.count ?? 0 }

    /// Ids of the live messages holding `token`, sorted (deterministic sampling).
    func messages(containing token: String) -> [String] {
        (postings[token] ?? []).sorted { messages[$0]!.ordinal < messages[$1]!.ordinal }
    }

    func passes(_ message: ReferenceMessage, _ filters: SearchFilters) -> Bool {
        if let conversation = filters.conversation, conversation.rawValue != message.conversation { return false }
        if let role = filters.role, role != message.role { return false }
        if let model = filters.model, Array(model.utf8) != message.model.map({ Array($0.utf8) }) { return false }
        if let since = filters.since, message.createdAt < milliseconds(since) { return false }
        if let until = filters.until, message.createdAt >= milliseconds(until) { return false }
        if let subject = filters.subject, subjects[message.conversation] != nfkc(subject) { return false }
        return true
    }

    static func contains(_ atom: [String], in message: ReferenceMessage) -> Bool {
        guard atom.allSatisfy(message.tokenSet.contains) else { return false }
        if atom.count == 1 { return true }
        let tokens = message.tokens
        guard tokens.count >= atom.count else { return false }
        for start in 0...(tokens.count - atom.count) where Array(tokens[start..<(start + atom.count)]) == atom { return true }
        return false
    }

    func matches(_ message: ReferenceMessage, _ query: ReferenceQuery, ignoringExclusions: Bool = false) -> Bool {
        for clause in query.required where !clause.contains(where: { Self.contains($0, in: message) }) { return false }
        if !ignoringExclusions, query.excluded.contains(where: { Self.contains($0, in: message) }) { return false }
        return true
    }

    /// The ids of the live messages that satisfy the query and the filters.
    func evaluate(_ query: ReferenceQuery, _ filters: SearchFilters, ignoringExclusions: Bool = false) -> Set<String> {
        // Candidates: messages holding the rarest token of some atom of the most selective clause.
        var candidates: Set<String>?
        for clause in query.required {
            var union = Set<String>()
            for atom in clause {
                let lists = atom.map { postings[$0] ?? [] }
                union.formUnion(lists.min { $0.count < $1.count } ?? [])
            }
            if candidates == nil || union.count < candidates!.count { candidates = union }
        }
        return (candidates ?? []).filter { id in
            let message = messages[id]!
            return passes(message, filters) && matches(message, query, ignoringExclusions: ignoringExclusions)
        }
    }
}

/// The documented query grammar, for queries typed by hand (the adversarial ones): whitespace
/// (and control characters) separate clauses, `"…"` is a phrase (an unclosed quote runs to the
/// end), `-atom` excludes, a bare `OR` joins two positive atoms, a word that tokenizes to
/// several tokens is a phrase, and an atom without tokens is ignored. At most 64 atoms and 100
/// distinct words.
private enum ReferenceParse {
    case invalid(String)
    case query(ReferenceQuery)
}

private func referenceParse(_ text: String) -> ReferenceParse {
    if text.utf8.count > 4096 { return .invalid("too long") }
    enum Piece { case atom([String], excluded: Bool), or }
    var pieces: [Piece] = []
    let scalars = Array(text.unicodeScalars)
    func isSpace(_ scalar: Unicode.Scalar) -> Bool { scalar.properties.isWhitespace || scalar.value < 0x20 || scalar.value == 0x7F }
    var index = 0
    var atoms = 0
    while index < scalars.count {
        if isSpace(scalars[index]) { index += 1; continue }
        var excluded = false
        if scalars[index] == "-", index + 1 < scalars.count, !isSpace(scalars[index + 1]) {
            excluded = true
            index += 1
        }
        var raw = String.UnicodeScalarView()
        var quoted = false
        if scalars[index] == "\"" {
            quoted = true
            index += 1
            while index < scalars.count, scalars[index] != "\"" { raw.append(scalars[index]); index += 1 }
            index += 1
        } else {
            while index < scalars.count, !isSpace(scalars[index]), scalars[index] != "\"" { raw.append(scalars[index]); index += 1 }
        }
        let word = String(raw)
        if !quoted, !excluded, word.unicodeScalars.elementsEqual("OR".unicodeScalars) {
            pieces.append(.or)
            continue
        }
        let tokens = Tokenizer.tokens(word)
        if tokens.isEmpty { continue }
        atoms += 1
        pieces.append(.atom(tokens, excluded: excluded))
    }
    if atoms > 64 { return .invalid("too many atoms") }
    var distinct = Set<String>()
    for case .atom(let tokens, _) in pieces { distinct.formUnion(tokens) }
    if distinct.count > 100 { return .invalid("too many distinct words") }
    var query = ReferenceQuery(required: [], excluded: [])
    var pendingOr = false
    for piece in pieces {
        switch piece {
        case .or:
            if query.required.isEmpty || pendingOr { return .invalid("OR without a left side") }
            pendingOr = true
        case .atom(let tokens, let excluded):
            if excluded {
                if pendingOr { return .invalid("excluded atom in an OR") }
                query.excluded.append(tokens)
            } else if pendingOr {
                query.required[query.required.count - 1].append(tokens)
                pendingOr = false
            } else {
                query.required.append([tokens])
            }
        }
    }
    if pendingOr { return .invalid("OR without a right side") }
    if query.required.isEmpty { return .invalid("nothing to search for") }
    return .query(query)
}

// MARK: - Corpus

private struct Corpus {
    static let accented = [
        "café", "naïve", "résumé", "façade", "jalapeño", "über", "smørrebrød", "crème", "brûlée", "señor", "ångström",
        "garçon", "déjà", "Zürich", "Ærø", "mañana", "coöperate", "Straße", "élève", "Tiếng",
    ]
    static let cyrillic = ["привет", "мир", "Москва", "книга", "ёлка", "щука", "объявление", "Жизнь", "спасибо", "Россия"]
    static let greek = ["καλημέρα", "λόγος", "Αθήνα", "θάλασσα", "ψυχή", "νόμος", "κόσμος", "φως", "ήλιος", "Ελλάδα"]
    static let cjk = ["東京", "日本語", "漢字", "中文", "学生", "カタカナ", "ひらがな", "大学", "電話", "北京", "が"]
    static let other = ["e-mail", "t-shirt", "x-ray", "2024", "42", "3.14", "v2", "ﬁle", "ＡＢＣ", "한국어"]
    static var specials: [String] { accented + cyrillic + greek + cjk + other }

    static let separators = [
        " ", " ", " ", " ", " ", " ", " ", " ", " ", " ", ", ", ". ", "! ", "? ", " (", ") ", "\n", " — ", " 🙂 ", "🙂", "/",
        " \"", "\" ", ": ", "; ", "…", "-", "\t", " ❤️ ", "👍🏽",
    ]

    let vocabulary: [String]
    private let cumulative: [Double]

    init(_ rng: inout SeededRandom, asciiWords: Int = 3_000) {
        let syllables = [
            "ka", "lo", "mi", "ne", "ru", "ta", "ve", "zo", "pi", "sha", "tor", "en", "al", "qu", "ix", "on", "ber", "gan", "dul",
            "fi", "ro", "su", "mek", "lin", "dra", "po", "vy", "tek", "nal", "ou",
        ]
        var seen = Set<String>()
        var words: [String] = []
        while words.count < asciiWords {
            let word = (0..<(2 + rng.below(3))).map { _ in rng.pick(syllables) }.joined()
            if word != "or", seen.insert(word).inserted { words.append(word) }
        }
        // Spread the non-ASCII words over the ranks: some common, most rare.
        for (index, word) in Self.specials.enumerated() {
            words.insert(word, at: min(words.count, 2 + 3 * index * index))
        }
        vocabulary = words
        var total = 0.0
        cumulative = words.indices.map { rank in
            total += 1 / pow(Double(rank + 1), 1.05)
            return total
        }
    }

    func zipfWord(_ rng: inout SeededRandom) -> String {
        let target = Double(rng.next() >> 11) / Double(1 << 53) * cumulative[cumulative.count - 1]
        var low = 0
        var high = cumulative.count - 1
        while low < high {
            let mid = (low + high) / 2
            if cumulative[mid] < target { low = mid + 1 } else { high = mid }
        }
        return vocabulary[low]
    }

    /// A word as it may appear in text: capitalised, upper-cased, decomposed.
    static func surface(_ word: String, _ rng: inout SeededRandom) -> String {
        var text = word
        let roll = rng.below(100)
        if roll < 8 {
            text = text.prefix(1).uppercased() + text.dropFirst()
        } else if roll < 11 {
            text = text.uppercased()
        }
        if !text.allSatisfy(\.isASCII), rng.chance(30) { text = text.decomposedStringWithCanonicalMapping }
        return text
    }

    private static func isCJK(_ word: String) -> Bool { word.unicodeScalars.first.map(Tokenizer.isIdeograph) ?? false }

    func content(_ rng: inout SeededRandom) -> String {
        let count = rng.chance(5) ? 60 + rng.below(60) : 3 + rng.below(35)
        var text = ""
        var previous = ""
        for index in 0..<count {
            let word = zipfWord(&rng)
            if index > 0 {
                if (Self.isCJK(word) || Self.isCJK(previous)) && rng.chance(50) {
                    // CJK runs without spaces
                } else {
                    text += rng.pick(Self.separators)
                }
            }
            text += Self.surface(word, &rng)
            previous = word
        }
        if rng.chance(30) { text += rng.pick([".", "!", "?", " 🙂", "…"]) }
        return text
    }
}

private let corpusModels = ["gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet", "llama-3.1-70b"]
private let corpusSubjects = ["alice", "bob", "carol", "Zoë", "user-42", "大阪-客户", "Ωmega"]
/// 2023-11-14T22:13:20Z, and a 60-day window after it.
private let corpusStart: Int64 = 1_700_000_000_000
private let corpusWindow: Int64 = 60 * 86_400_000

private func randomMessage(_ corpus: Corpus, _ rng: inout SeededRandom, previous: Date?) -> NewMessage {
    let role: Role
    switch rng.below(10) {
    case 0: role = .system
    case 1: role = .tool
    case 2, 3, 4, 5: role = .assistant
    default: role = .user
    }
    let model: String? =
        switch role {
        case .assistant: rng.pick(corpusModels)
        case .tool: rng.chance(50) ? "tool-runner" : nil
        default: nil
        }
    // Some messages share a millisecond with the previous one.
    let createdAt =
        if let previous, rng.chance(5) {
            previous
        } else {
            Date(timeIntervalSince1970: Double(corpusStart + Int64(rng.below(Int(corpusWindow)))) / 1000)
        }
    return NewMessage(role: role, content: corpus.content(&rng), model: model, createdAt: createdAt)
}

/// Creates `conversations` conversations holding `messages` messages in all (sizes skewed, a
/// few near 1,000), appended with `append([...], to:)` at most 1,000 per call.
@discardableResult
private func populate(
    _ store: ChatLogStore, _ reference: ReferenceIndex, _ corpus: Corpus, _ rng: inout SeededRandom, conversations: Int,
    messages: Int
) throws -> [ConversationID] {
    let weights = (0..<conversations).map { 1 / pow(Double($0 + 1), 0.7) }
    let total = weights.reduce(0, +)
    var sizes = weights.map { max(5, Int(Double(messages) * $0 / total)) }
    sizes[0] += messages - sizes.reduce(0, +)
    var ids: [ConversationID] = []
    for (index, size) in sizes.enumerated() {
        let subject = rng.chance(40) ? rng.pick(corpusSubjects) : nil
        let id = try store.createConversation(
            NewConversation(title: "Conversation \(index)", subject: subject,
                createdAt: Date(timeIntervalSince1970: Double(corpusStart + Int64(index)) / 1000)))
        reference.addConversation(id, subject: subject)
        ids.append(id)
        var remaining = size
        while remaining > 0 {
            let batch = min(1_000, remaining)
            var newMessages: [NewMessage] = []
            for _ in 0..<batch { newMessages.append(randomMessage(corpus, &rng, previous: newMessages.last?.createdAt)) }
            let messageIDs = try store.append(newMessages, to: id)
            for (messageID, message) in zip(messageIDs, newMessages) { reference.add(id: messageID, conversation: id, message) }
            remaining -= batch
        }
    }
    return ids
}

// MARK: - Generated queries

private struct GeneratedQuery {
    let text: String
    let query: ReferenceQuery
    let filters: SearchFilters
    let sort: SearchSort
}

private struct QueryAtom {
    let text: String
    let tokens: [String]
    init(_ raw: String, quoted: Bool) {
        text = quoted ? "\"" + raw + "\"" : raw
        tokens = Tokenizer.tokens(raw)
    }
}

private struct QueryGenerator {
    let corpus: Corpus
    let reference: ReferenceIndex

    /// A token as a user might type it: as stored, upper-cased, capitalised, decomposed.
    private func typed(_ token: String, _ rng: inout SeededRandom) -> String {
        var text = token
        switch rng.below(10) {
        case 0, 1: text = token.uppercased()
        case 2: text = token.prefix(1).uppercased() + token.dropFirst()
        case 3: text = token.decomposedStringWithCanonicalMapping
        default: break
        }
        return text == "OR" ? "or" : text
    }

    private func randomMessage(_ rng: inout SeededRandom) -> ReferenceMessage {
        reference.messages[rng.pick(reference.ids)]!
    }

    private func wordAtom(_ rng: inout SeededRandom) -> QueryAtom {
        let raw: String
        switch rng.below(10) {
        case 0, 1, 2, 3:
            raw = typed(randomMessage(&rng).tokens.randomElement(using: &rng)!, &rng)
        case 4:
            raw = Corpus.surface(corpus.vocabulary[rng.below(40)], &rng)  // common
        case 5:
            raw = Corpus.surface(rng.pick(Corpus.specials), &rng)  // CJK words are phrases
        default:
            raw = Corpus.surface(corpus.vocabulary[40 + rng.below(corpus.vocabulary.count - 40)], &rng)
        }
        return QueryAtom(raw, quoted: rng.chance(10))
    }

    private func phraseAtom(_ rng: inout SeededRandom, from source: ReferenceMessage? = nil) -> QueryAtom {
        var message = source ?? randomMessage(&rng)
        while message.tokens.count < 2 { message = randomMessage(&rng) }
        let length = min(message.tokens.count, 2 + rng.below(2))
        let start = rng.below(message.tokens.count - length + 1)
        let words = message.tokens[start..<(start + length)].map { typed($0, &rng) }
        return QueryAtom(words.joined(separator: rng.chance(20) ? "  " : " "), quoted: true)
    }

    /// Words of one message, so that AND queries often find something.
    private func coOccurring(_ count: Int, _ rng: inout SeededRandom) -> [QueryAtom] {
        let message = randomMessage(&rng)
        return (0..<count).map { _ in QueryAtom(typed(message.tokens.randomElement(using: &rng)!, &rng), quoted: false) }
    }

    private func filters(_ rng: inout SeededRandom) -> SearchFilters {
        var filters = SearchFilters()
        guard rng.chance(55) else { return filters }
        for _ in 0..<(1 + rng.below(2)) {
            switch rng.below(10) {
            case 0, 1:
                filters.conversation = ConversationID(trusted: randomMessage(&rng).conversation)
            case 2, 3:
                filters.role = rng.pick(Role.allCases)
            case 4, 5:
                filters.model = rng.pick(corpusModels + ["tool-runner", "no-such-model"])
            case 6, 7:
                let from = corpusStart + Int64(rng.below(Int(corpusWindow)))
                let to = from + Int64(rng.below(Int(corpusWindow / 4)))
                switch rng.below(3) {
                case 0: filters.since = Date(timeIntervalSince1970: Double(from) / 1000)
                case 1: filters.until = Date(timeIntervalSince1970: Double(to) / 1000)
                default:
                    filters.since = Date(timeIntervalSince1970: Double(from) / 1000)
                    filters.until = Date(timeIntervalSince1970: Double(to) / 1000)
                }
            default:
                filters.subject = rng.pick(corpusSubjects + ["Zoe\u{308}", "nobody"])
            }
        }
        return filters
    }

    func make(_ rng: inout SeededRandom) -> GeneratedQuery {
        var clauses: [[QueryAtom]] = []
        var excluded: [QueryAtom] = []
        switch rng.below(20) {
        case 0, 1, 2, 3:  // one word
            clauses = [[wordAtom(&rng)]]
        case 4, 5, 6:  // two or three words
            clauses = coOccurring(2 + rng.below(2), &rng).map { [$0] }
        case 7:
            clauses = [[wordAtom(&rng)], [wordAtom(&rng)]]
        case 8, 9, 10:  // a phrase, maybe with a word
            clauses = [[phraseAtom(&rng)]]
            if rng.chance(30) { clauses.append([wordAtom(&rng)]) }
        case 11, 12, 13:  // exclusions
            let message = randomMessage(&rng)
            let first = message.tokens.randomElement(using: &rng)!
            clauses = [[QueryAtom(typed(first, &rng), quoted: false)]]
            // Exclude a word or phrase of another message holding the first word, so that it bites.
            let other = reference.messages[rng.pick(reference.messages(containing: first))]!
            excluded.append(
                rng.chance(40)
                    ? phraseAtom(&rng, from: other) : QueryAtom(typed(other.tokens.randomElement(using: &rng)!, &rng), quoted: rng.chance(20)))
            if rng.chance(20) { excluded.append(wordAtom(&rng)) }
        case 14, 15, 16:  // OR
            var alternatives = [wordAtom(&rng), wordAtom(&rng)]
            if rng.chance(25) { alternatives.append(rng.chance(50) ? phraseAtom(&rng) : wordAtom(&rng)) }
            clauses = [alternatives]
            if rng.chance(30) { clauses.append([wordAtom(&rng)]) }
        case 17:  // a word nobody wrote
            clauses = [[QueryAtom("zzqx\(rng.below(1000))notaword", quoted: false)]]
            if rng.chance(50) { clauses.append([wordAtom(&rng)]) }
        default:  // common words, narrowed by a filter
            clauses = [[QueryAtom(Corpus.surface(corpus.vocabulary[rng.below(12)], &rng), quoted: false)]]
        }
        var filters = filters(&rng)
        if clauses.count == 1, clauses[0].count == 1, clauses[0][0].tokens.count == 1,
            reference.documentFrequency(clauses[0][0].tokens[0]) > 1_000, filters.conversation == nil
        {
            filters.conversation = ConversationID(trusted: randomMessage(&rng).conversation)
        }
        let text = (clauses.map { $0.map(\.text).joined(separator: " OR ") } + excluded.map { "-" + $0.text })
            .joined(separator: rng.chance(10) ? " \t " : " ")
        return GeneratedQuery(
            text: text, query: ReferenceQuery(required: clauses.map { $0.map(\.tokens) }, excluded: excluded.map(\.tokens)),
            filters: filters, sort: rng.chance(50) ? .newest : .relevance)
    }
}

// MARK: - Checking the store against the reference

private struct ExactnessTally {
    var queries = 0
    var nonEmpty = 0
    var hits = 0
    var failures = 0
}

private func describe(_ filters: SearchFilters) -> String {
    var parts: [String] = []
    if let conversation = filters.conversation { parts.append("conversation=\(conversation)") }
    if let role = filters.role { parts.append("role=\(role)") }
    if let model = filters.model { parts.append("model=\(model)") }
    if let since = filters.since { parts.append("since=\(milliseconds(since))") }
    if let until = filters.until { parts.append("until=\(milliseconds(until))") }
    if let subject = filters.subject { parts.append("subject=\(subject.debugDescription)") }
    return parts.isEmpty ? "no filters" : parts.joined(separator: " ")
}

/// Checks one hit's plain fields, content and snippet against the reference.
private func checkHit(_ hit: SearchHit, _ reference: ReferenceIndex, wanted: Set<String>, context: String) {
    guard let message = reference.messages[hit.messageID.rawValue] else {
        Issue.record("\(context): hit \(hit.messageID) is not a live message")
        return
    }
    #expect(hit.conversationID.rawValue == message.conversation, "\(context)")
    #expect(hit.role == message.role, "\(context)")
    #expect(hit.model == message.model, "\(context)")
    #expect(abs(hit.createdAt.timeIntervalSince1970 * 1000 - message.createdAt) < 1, "\(context)")
    #expect(Array(hit.content.utf8) == Array(message.content.utf8), "\(context)")
    // The snippet shows at least one matched word, and every highlight is a matched word.
    let snippet = hit.snippet
    #expect(!snippet.highlights.isEmpty, "\(context): no highlight in \(snippet.text.debugDescription)")
    for range in snippet.highlights {
        guard range.lowerBound >= snippet.text.startIndex, range.upperBound <= snippet.text.endIndex else {
            Issue.record("\(context): highlight outside the snippet")
            continue
        }
        let highlighted = Tokenizer.tokens(String(snippet.text.unicodeScalars[range]))
        #expect(!Set(highlighted).isDisjoint(with: wanted),
            "\(context): highlight \(String(snippet.text.unicodeScalars[range]).debugDescription) is not a query word")
    }
}

/// Runs one query through the store and compares with the reference. Returns the number of hits.
@discardableResult
private func checkQuery(
    _ store: ChatLogStore, _ reference: ReferenceIndex, text: String, query: ReferenceQuery, filters: SearchFilters,
    sort: SearchSort, phase: String, tally: inout ExactnessTally
) throws -> Int {
    let expected = reference.evaluate(query, filters)
    let results = try store.search(text, filters: filters, limit: 1_000, offset: 0, sort: sort)
    let got = results.hits.map(\.messageID.rawValue)
    let context = "[\(phase)] \(text.debugDescription) \(describe(filters)) sort=\(sort)"
    tally.queries += 1
    tally.hits += got.count
    if !got.isEmpty { tally.nonEmpty += 1 }
    var failed = false
    #expect(Set(got).count == got.count, "\(context): duplicate hits")
    if sort == .relevance {
        #expect(results.complete, "\(context): relevance search did not finish")
        let scores = results.hits.map { $0.score ?? .nan }
        #expect(scores.allSatisfy { $0.isFinite && $0 >= 0 }, "\(context): scores \(scores.prefix(5))")
        #expect(zip(scores, scores.dropFirst()).allSatisfy { $0 >= $1 }, "\(context): not sorted by score")
    } else {
        #expect(results.hits.allSatisfy { $0.score == nil }, "\(context): scores with newest sort")
        let times = results.hits.map(\.createdAt)
        if !zip(times, times.dropFirst()).allSatisfy({ $0 >= $1 }) {
            Issue.record("\(context): not newest first")
            failed = true
        }
    }
    if Set(got) != expected {
        let missing = expected.subtracting(got)
        let extra = Set(got).subtracting(expected)
        Issue.record(
            "\(context): expected \(expected.count) hits, got \(got.count); missing \(missing.count) e.g. \(missing.prefix(2).map { reference.messages[$0]?.content.prefix(120) ?? "?" }), extra \(extra.count) e.g. \(extra.prefix(2).map { reference.messages[$0]?.content.prefix(120) ?? "deleted" })"
        )
        failed = true
    }
    let wanted = query.positiveTokens
    for hit in results.hits.prefix(200) { checkHit(hit, reference, wanted: wanted, context: context) }
    if failed { tally.failures += 1 }
    return expected.count
}

private func runGeneratedQueries(
    _ store: ChatLogStore, _ reference: ReferenceIndex, _ generator: QueryGenerator, _ rng: inout SeededRandom, count: Int,
    phase: String
) throws -> ExactnessTally {
    var tally = ExactnessTally()
    var made = 0
    while made < count {
        let query = generator.make(&rng)
        // Keep every answer within one page and the decryption work bounded.
        let expected = reference.evaluate(query.query, query.filters)
        if expected.count > 1_000 { continue }
        if !query.query.excluded.isEmpty, reference.evaluate(query.query, query.filters, ignoringExclusions: true).count > 4_000 {
            continue
        }
        made += 1
        try checkQuery(
            store, reference, text: query.text, query: query.query, filters: query.filters, sort: query.sort, phase: phase,
            tally: &tally)
        if tally.failures > 15 { break }  // enough to diagnose
    }
    #expect(tally.failures == 0, "[\(phase)] \(tally.failures) of \(tally.queries) queries were not exact")
    // The corpus and generator are made so that most queries find something.
    #expect(tally.nonEmpty * 3 >= tally.queries, "[\(phase)] only \(tally.nonEmpty) of \(tally.queries) queries found anything")
    return tally
}

/// Pages through one query with a small limit and checks the pages add up to the full answer.
private func checkPaging(
    _ store: ChatLogStore, _ reference: ReferenceIndex, text: String, query: ReferenceQuery, filters: SearchFilters, phase: String
) throws {
    let expected = reference.evaluate(query, filters)
    for sort in [SearchSort.newest, .relevance] {
        let full = try store.search(text, filters: filters, limit: 1_000, sort: sort).hits.map(\.messageID.rawValue)
        var paged: [String] = []
        var offset = 0
        while true {
            let page = try store.search(text, filters: filters, limit: 97, offset: offset, sort: sort).hits
            paged += page.map(\.messageID.rawValue)
            if page.count < 97 { break }
            offset += 97
        }
        #expect(paged == full, "[\(phase)] \(text): pages differ from one big page (\(sort))")
        #expect(Set(paged) == expected && paged.count == expected.count, "[\(phase)] \(text): pages are not exact (\(sort))")
    }
}

// MARK: - Index internals (through @testable)

/// Documents that hold the blinded term of `token`, under every live index key.
private func indexedDocuments(_ store: ChatLogStore, _ token: String) throws -> [KeyID: Int] {
    let blinders = store.keyRing.current.blinders
    return try store.read { db in
        var counts: [KeyID: Int] = [:]
        for (id, blinder) in blinders {
            counts[id] = try Int.fetchOne(db, sql: "SELECT doc FROM message_terms_vocab WHERE term = ?", arguments: [blinder.term(for: token)]) ?? 0
        }
        return counts
    }
}

/// The blinded index holds, for each sampled token, exactly the reference's document frequency.
private func checkIndexCounts(_ store: ChatLogStore, _ reference: ReferenceIndex, tokens: [String], onlyActiveKey: Bool, phase: String)
    throws
{
    let active = store.keyRing.current.activeIndexKey.id
    var wrong = 0
    for token in tokens {
        let counts = try indexedDocuments(store, token)
        let total = counts.values.reduce(0, +)
        let expected = reference.documentFrequency(token)
        var ok = total == expected
        if onlyActiveKey { ok = ok && counts[active] == expected }
        if !ok {
            wrong += 1
            if wrong <= 5 { Issue.record("[\(phase)] token \(token.debugDescription): index has \(counts), reference \(expected)") }
        }
    }
    try store.writeImmediate { db in
        try db.execute(sql: "INSERT INTO message_terms (message_terms, rank) VALUES ('integrity-check', 0)")
    }
}

/// Counts the batches a rotation asks to start and lets only the first `batches` run.
private final class BatchBudget: Sendable {
    private let started = Atomic<Int>(0)
    let batches: Int
    init(_ batches: Int) { self.batches = batches }
    func next() -> Bool { started.add(1, ordering: .sequentiallyConsistent).newValue <= batches }
}

/// Starts an index-key rotation with a new key and stops it after `batches` batches of
/// `batchSize` rows: rows are then indexed under the old and the new key.
@discardableResult
private func interruptedIndexRotation(_ store: ChatLogStore, batches: Int, batchSize: Int = 500) throws -> RotationReport {
    let budget = BatchBudget(batches)
    let report = try store.rotateIndexKey(RotationOptions(newKey: true, batchSize: batchSize, shouldContinue: { budget.next() }))
    #expect(report.createsNewKey)
    #expect(report.rewritten <= batches * batchSize)
    return report
}

private func rowsNotUnderActiveKey(_ store: ChatLogStore) throws -> (messages: Int, subjects: Int) {
    let active = Int64(store.keyRing.current.activeIndexKey.id.rawValue)
    return try store.read { db in
        (try Int.fetchOne(db, sql: "SELECT count(*) FROM messages WHERE index_key_id <> ?", arguments: [active]) ?? -1,
            try Int.fetchOne(
                db, sql: "SELECT count(*) FROM conversations WHERE subject_key_id IS NOT NULL AND subject_key_id <> ?", arguments: [active])
                ?? -1)
    }
}

private func expectInvalidInput(_ body: () throws(ChatLogError) -> Void, _ comment: String) {
    do {
        try body()
        Issue.record("\(comment): accepted, expected invalidInput")
    } catch {
        guard case .invalidInput(let message) = error else {
            Issue.record("\(comment): \(error), expected invalidInput")
            return
        }
        #expect(message.count >= 10, "\(comment): message \(message.debugDescription) is not explanatory")
        for word in ["SQL", "sqlite", "fts", "FTS", "MATCH", "syntax"] {
            #expect(!message.contains(word), "\(comment): message \(message.debugDescription) leaks internals")
        }
    }
}

// MARK: - Tests

@Suite struct SearchTests {
    /// 20,000 generated messages in 200 conversations; hundreds of random queries must return
    /// exactly what the plaintext reference finds, before and after deletions, while rows are
    /// indexed under two index keys, after the interrupted rotation is finished, and after a
    /// full rotation.
    @Test func resultsAreExactOnAGeneratedCorpus() throws {
        try withSearchScratch { directory in
            let store = try makeSearchStore(in: directory)
            var rng = SeededRandom(seed: 0x5EA2_C4C0_2025)
            let corpus = Corpus(&rng)
            let reference = ReferenceIndex()
            let clock = ContinuousClock()
            var started = clock.now
            let conversations = try populate(store, reference, corpus, &rng, conversations: 200, messages: 20_000)
            print("[SearchTests] wrote 20,000 messages in 200 conversations in \(clock.now - started)")
            #expect(try store.counts().messages == 20_000)
            #expect(try store.counts().conversations == 200)
            let generator = QueryGenerator(corpus: corpus, reference: reference)

            started = clock.now
            var tally = try runGeneratedQueries(store, reference, generator, &rng, count: 320, phase: "initial")
            print("[SearchTests] \(tally.queries) queries (\(tally.nonEmpty) non-empty, \(tally.hits) hits) in \(clock.now - started)")

            // Paging, on answers of a few hundred messages.
            var paged = 0
            while paged < 4 {
                let query = generator.make(&rng)
                let count = reference.evaluate(query.query, query.filters).count
                guard (150...1_000).contains(count) else { continue }
                try checkPaging(store, reference, text: query.text, query: query.query, filters: query.filters, phase: "paging")
                paged += 1
            }

            // Some tokens to follow through the index.
            var sample: [String] = []
            for _ in 0..<300 { sample.append(reference.messages[rng.pick(reference.ids)]!.tokens.randomElement(using: &rng)!) }
            sample += Corpus.specials.flatMap(Tokenizer.tokens)
            try checkIndexCounts(store, reference, tokens: sample, onlyActiveKey: true, phase: "initial")

            // Delete 15 conversations (the biggest among them): their messages never come back.
            started = clock.now
            var deleted: [ConversationID] = [conversations[0], conversations[3]]
            while deleted.count < 15 {
                let candidate = rng.pick(reference.conversations)
                if !deleted.contains(candidate) { deleted.append(candidate) }
            }
            var deletedMessages = Set<String>()
            var deletedTokens = Set<String>()
            for id in deleted {
                let removed = reference.removeConversation(id)
                deletedMessages.formUnion(removed)
                #expect(try store.deleteConversation(id))
                #expect(try !store.deleteConversation(id))
            }
            print("[SearchTests] deleted 15 conversations (\(deletedMessages.count) messages) in \(clock.now - started)")
            #expect(try store.counts().messages == 20_000 - deletedMessages.count)
            for id in deleted {
                let hits = try store.search("the", filters: SearchFilters(conversation: id), limit: 10).hits
                #expect(hits.isEmpty)
            }
            // Words that only deleted messages had: gone from results and from the index.
            var onlyDeleted: [String] = []
            for token in sample + Corpus.specials.flatMap(Tokenizer.tokens) where reference.documentFrequency(token) == 0 {
                if deletedTokens.insert(token).inserted { onlyDeleted.append(token) }
            }
            for token in onlyDeleted {
                let results = try store.search(token, limit: 1_000)
                #expect(results.hits.isEmpty, "deleted word \(token) still found")
                #expect(try indexedDocuments(store, token).values.allSatisfy { $0 == 0 }, "deleted word \(token) still indexed")
            }
            try checkIndexCounts(store, reference, tokens: sample, onlyActiveKey: true, phase: "after delete")
            tally = try runGeneratedQueries(store, reference, generator, &rng, count: 100, phase: "after delete")
            #expect(tally.hits > 0)

            // Mid-rotation: a new index key is active and the rotation stopped after 3 batches of
            // 1,000 rows. New rows go under the new key, the rest stay under the old one; deletes
            // must handle both.
            let interrupted = try interruptedIndexRotation(store, batches: 3, batchSize: 1_000)
            #expect(interrupted.rewritten == 3_000)
            #expect(!interrupted.complete && interrupted.remaining > 10_000)
            var touched: [ConversationID] = []
            for _ in 0..<8 {
                let id = rng.pick(reference.conversations)
                var newMessages: [NewMessage] = []
                for _ in 0..<125 { newMessages.append(randomMessage(corpus, &rng, previous: newMessages.last?.createdAt)) }
                let messageIDs = try store.append(newMessages, to: id)
                for (messageID, message) in zip(messageIDs, newMessages) { reference.add(id: messageID, conversation: id, message) }
                touched.append(id)
            }
            for subject in ["alice", "Zoe\u{308}"] {
                let id = try store.createConversation(NewConversation(subject: subject))
                reference.addConversation(id, subject: subject)
                var newMessages: [NewMessage] = []
                for _ in 0..<40 { newMessages.append(randomMessage(corpus, &rng, previous: newMessages.last?.createdAt)) }
                for (messageID, message) in zip(try store.append(newMessages, to: id), newMessages) {
                    reference.add(id: messageID, conversation: id, message)
                }
            }
            // Delete one conversation with rows under both keys and one with old rows only.
            reference.removeConversation(touched[0])
            #expect(try store.deleteConversation(touched[0]))
            if let oldOnly = reference.conversations.first(where: { !touched.contains($0) }) {
                reference.removeConversation(oldOnly)
                #expect(try store.deleteConversation(oldOnly))
            }
            let pending = try rowsNotUnderActiveKey(store)
            #expect(pending.messages > 10_000)
            try checkIndexCounts(store, reference, tokens: sample, onlyActiveKey: false, phase: "two keys")
            _ = try runGeneratedQueries(store, reference, generator, &rng, count: 80, phase: "two index keys")

            // Finish the interrupted rotation.
            started = clock.now
            let finished = try store.rotateIndexKey(RotationOptions(batchSize: 700))
            print("[SearchTests] finished the interrupted rotation (\(finished.rewritten) rows) in \(clock.now - started)")
            #expect(!finished.createsNewKey && finished.complete)
            #expect(finished.rewritten == pending.messages + pending.subjects)
            let left = try rowsNotUnderActiveKey(store)
            #expect(left.messages == 0 && left.subjects == 0)
            try checkIndexCounts(store, reference, tokens: sample, onlyActiveKey: true, phase: "rotation finished")
            _ = try runGeneratedQueries(store, reference, generator, &rng, count: 80, phase: "rotation finished")

            // A full rotation to a third key.
            started = clock.now
            let rotated = try store.rotateIndexKey(RotationOptions(newKey: true, batchSize: 1_000))
            print("[SearchTests] full index-key rotation (\(rotated.rewritten) rows) in \(clock.now - started)")
            #expect(rotated.complete && rotated.rewritten >= reference.ids.count)
            try checkIndexCounts(store, reference, tokens: sample, onlyActiveKey: true, phase: "full rotation")
            _ = try runGeneratedQueries(store, reference, generator, &rng, count: 60, phase: "full rotation")

            // A reopened store answers the same.
            try store.close()
            let reopened = try ChatLogStore.open(at: directory + "/chat.db", key: .key(store.keyRing.master))
            _ = try runGeneratedQueries(reopened, reference, generator, &rng, count: 20, phase: "reopened")
        }
    }

    /// Searches running while another thread rotates the index key in small batches stay exact.
    @Test func searchesStayExactDuringARotation() throws {
        try withSearchScratch { directory in
            let store = try makeSearchStore(in: directory)
            var rng = SeededRandom(seed: 0xA11C_E5)
            let corpus = Corpus(&rng, asciiWords: 600)
            let reference = ReferenceIndex()
            try populate(store, reference, corpus, &rng, conversations: 20, messages: 3_000)
            let generator = QueryGenerator(corpus: corpus, reference: reference)
            var queries: [GeneratedQuery] = []
            while queries.count < 12 {
                let query = generator.make(&rng)
                let count = reference.evaluate(query.query, query.filters).count
                if (1...300).contains(count) { queries.append(query) }
            }

            final class Rotation: Sendable {
                let done = Atomic<Bool>(false)
                let moved = Atomic<Int>(0)
                let failure = Mutex<String?>(nil)
            }
            let rotation = Rotation()
            let thread = Thread {
                do {
                    let report = try store.rotateIndexKey(RotationOptions(newKey: true, batchSize: 20))
                    rotation.moved.store(report.rewritten, ordering: .sequentiallyConsistent)
                } catch {
                    rotation.failure.withLock { $0 = "\(error)" }
                }
                rotation.done.store(true, ordering: .sequentiallyConsistent)
            }
            thread.start()
            var tally = ExactnessTally()
            var duringRotation = 0
            var rounds = 0
            while !rotation.done.load(ordering: .sequentiallyConsistent) || rounds == 0 {
                for query in queries {
                    let running = !rotation.done.load(ordering: .sequentiallyConsistent)
                    try checkQuery(
                        store, reference, text: query.text, query: query.query, filters: query.filters, sort: query.sort,
                        phase: "during rotation", tally: &tally)
                    if running && !rotation.done.load(ordering: .sequentiallyConsistent) { duringRotation += 1 }
                }
                rounds += 1
            }
            print("[SearchTests] \(tally.queries) searches, \(duringRotation) of them while the rotation ran")
            #expect(rotation.failure.withLock { $0 } == nil)
            #expect(rotation.moved.load(ordering: .sequentiallyConsistent) >= 3_000)
            #expect(tally.failures == 0)
            let left = try rowsNotUnderActiveKey(store)
            #expect(left.messages == 0 && left.subjects == 0)
        }
    }

    /// Another handle (another process) rotates the index key: a handle opened before the
    /// rotation must still find everything, and the two can keep writing and deleting.
    @Test func aHandleOpenedBeforeAnotherRotatesStaysExact() throws {
        try withSearchScratch { directory in
            let key = MasterKey.generate()
            let first = try makeSearchStore(in: directory, key: key)
            let second = try ChatLogStore.open(at: directory + "/chat.db", key: .key(key))
            let a = try first.createConversation(NewConversation(subject: "alice"))
            let b = try first.createConversation(NewConversation(subject: "bob"))
            try first.append([NewMessage(role: .user, content: "the walrus sings"), NewMessage(role: .user, content: "walrus")], to: a)
            try first.append(NewMessage(role: .user, content: "the walrus dances"), to: b)
            #expect(try second.search("walrus").hits.count == 3)

            _ = try first.rotateIndexKey(RotationOptions(newKey: true))
            #expect(try first.search("walrus").hits.count == 3)
            #expect(try second.search("walrus").hits.count == 3, "a stale handle misses rows re-indexed by another handle")
            #expect(try second.search("walrus", filters: SearchFilters(subject: "alice")).hits.count == 2)
            #expect(try second.search("walrus dances", sort: .newest).hits.count == 1)

            // The stale handle writes; both see it.
            try second.append(NewMessage(role: .assistant, content: "a walrus again"), to: b)
            #expect(try first.search("walrus").hits.count == 4)
            #expect(try second.search("walrus").hits.count == 4)
            // The stale handle deletes rows indexed under a key it had not loaded.
            #expect(try second.deleteConversation(a))
            #expect(try first.search("walrus").hits.count == 2)
            #expect(try second.search("walrus").hits.count == 2)
            #expect(try first.search("sings").hits.isEmpty)
            #expect(try indexedDocuments(first, "sings").values.allSatisfy { $0 == 0 })
            #expect(try indexedDocuments(first, "walrus").values.reduce(0, +) == 2)
        }
    }

    @Test func conversationListingBySubjectFromAHandleOpenedBeforeARotation() throws {
        try withSearchScratch { directory in
            let key = MasterKey.generate()
            let first = try makeSearchStore(in: directory, key: key)
            let second = try ChatLogStore.open(at: directory + "/chat.db", key: .key(key))
            try first.createConversation(NewConversation(subject: "alice"))
            #expect(try second.conversations(ConversationQuery(subject: "alice")).conversations.count == 1)
            _ = try first.rotateIndexKey(RotationOptions(newKey: true))
            #expect(try first.conversations(ConversationQuery(subject: "alice")).conversations.count == 1)
            let listed = try second.conversations(ConversationQuery(subject: "alice")).conversations.count
            #expect(listed == 1)
        }
    }

    /// Query text is never syntax for SQL or FTS5: operators, quotes, SQL, control characters
    /// and NUL are literal words (compared with the grammar's reference), or `.invalidInput`.
    @Test func queryTextIsNeverInterpreted() throws {
        try withSearchScratch { directory in
            let store = try makeSearchStore(in: directory)
            var rng = SeededRandom(seed: 0xF75)
            let words = [
                "near", "and", "not", "or", "drop", "table", "messages", "select", "from", "where", "alpha", "beta", "star", "col",
                "match", "rowid", "delete", "null", "quote", "terms", "message", "x", "y", "z", "a", "b", "c", "café", "東京", "привет",
                "0", "1", "or", "NEAR", "AND", "NOT", "OR",
            ]
            let glue = [" ", " ", " ", "(", ")", "*", "^", ":", "'", ";", "--", "\"", "+", "{", "}", "/", ", ", "\n", "\u{0}"]
            let reference = ReferenceIndex()
            let id = try store.createConversation()
            reference.addConversation(id, subject: nil)
            var messages = [
                "'; DROP TABLE messages; --", "NEAR(a b)", "a NEAR b", "a* ^b col:c", "x AND y NOT z", "\"quoted\" text",
                "b' OR 'x'='x", "1=1", "message_terms rowid match", "a OR b", "c or a", "{a b}", "a\u{0}b",
            ]
            for _ in 0..<600 {
                messages.append((0..<(2 + rng.below(10))).map { _ in rng.pick(words) + rng.pick(glue) }.joined())
            }
            var newMessages: [NewMessage] = []
            for (index, content) in messages.enumerated() {
                newMessages.append(NewMessage(role: .user, content: content, createdAt: Date(timeIntervalSince1970: 1_700_000_000 + Double(index))))
            }
            for (messageID, message) in zip(try store.append(newMessages, to: id), newMessages) {
                reference.add(id: messageID, conversation: id, message)
            }

            let queries = [
                "near", "NEAR", "NEAR(a b)", "NEAR(a b, 3)", "a NEAR b", "NEAR/2 a", "a*", "*", "^a", "^", "col:a", ":", "a:b:c", "AND",
                "a AND b", "NOT", "a NOT b", "+a", "+", "a + b", "'; DROP TABLE messages; --", "\"; DROP TABLE messages; --",
                "DROP TABLE messages", "(a OR b)", "(a", "a)", "((", "\"a b\"", "\"a b", "a \"b", "\"", "\"\"", "\"\"\"", "a\"b\"c",
                "a\"\"b", "-\"a b\" c", "\"a\" \"b\"", "'a'", "a'b", "a\u{0}b", "\u{0}a", "a\u{1}b", "a\u{7F}", "a\tb\nc", "\u{202E}a\u{202C}",
                "a\u{200B}b", "x AND y NOT z", "{a b}", "message_terms", "messages", "rowid", "MATCH", "match a", "a OR b", "a OR b OR c",
                "a or b", "OR", "a OR", "OR a", "a OR OR b", "a OR -b", "-a b", "-a", "--a b", "- a", "a -", "a - b", "%", "_", "\\",
                "a\\b", "a%b", "'", "';", "--", "/*", "*/ a", "a;b", "null", "NULL", "0", "1=1", "' OR '1'='1", "b' OR 'x'='x",
                "café", "CAFE\u{301}", "東京", "\"東 京\"", "привет", "ПРИВЕТ OR café", "NEAR(\"a b\" c)", "a^b", "a*b", "a AND", "AND a",
                "NOT a", "a NOT", "\u{FEFF}a", "🙂a", "a🙂", String(repeating: "(", count: 100) + "a", "a" + String(repeating: ")", count: 100),
                "\"a OR b\"", "-OR a", "\"OR\"", "a \"OR\" b", "x -\"y z\"", "-\"\" a", "a \"\" b", "\"unbalanced quote", "a\"",
                "'\"'\"", "`a`", "$a", "@a", "#a", "?a", "a=b", "a<>b", "a||b", "a&&b", "~a", "!a", "a!", "[a]", "a.b", "a,b", "a/b",
                "\u{0}", "\u{0}\u{0}", "a\u{0}", "\u{1B}[31ma", "a\r\nb", "\u{85}a", "\u{2028}a\u{2029}", "\u{A0}a\u{A0}b",
            ]
            var valid = 0
            for query in queries {
                let expectation = referenceParse(query)
                do {
                    let results = try store.search(query, limit: 1_000, sort: .newest)
                    switch expectation {
                    case .invalid(let why):
                        Issue.record("\(query.debugDescription) was accepted; the grammar rejects it (\(why))")
                    case .query(let parsed):
                        valid += 1
                        let expected = reference.evaluate(parsed, SearchFilters())
                        let got = Set(results.hits.map(\.messageID.rawValue))
                        #expect(got == expected, "\(query.debugDescription): expected \(expected.count) hits, got \(got.count)")
                        for hit in results.hits { checkHit(hit, reference, wanted: parsed.positiveTokens, context: query.debugDescription) }
                    }
                } catch {
                    guard case .invalidInput(let message)? = error as? ChatLogError else {
                        Issue.record("\(query.debugDescription) threw \(error), not invalidInput")
                        continue
                    }
                    #expect(message.count >= 10)
                    if case .query = expectation {
                        Issue.record("\(query.debugDescription) was refused (\(message)); the grammar reads it as literal words")
                    }
                }
            }
            #expect(valid > 80)
            // Nothing was dropped or changed.
            #expect(try store.counts().messages == messages.count)
            #expect(try store.search("drop table", limit: 1_000).hits.count == reference.evaluate(
                ReferenceQuery(required: [[["drop"]], [["table"]]], excluded: []), SearchFilters()).count)
        }
    }

    @Test func unsearchableQueriesAreInvalidInputWithAClearMessage() throws {
        try withSearchScratch { directory in
            let store = try makeSearchStore(in: directory)
            let id = try store.createConversation()
            try store.append(NewMessage(role: .user, content: "alpha beta gamma"), to: id)
            let tenThousandWords = (0..<10_000).map { "word\($0)" }.joined(separator: " ")
            let tenThousandShortWords = String(repeating: "a ", count: 10_000)
            let sixtyFiveWords = (0..<65).map { "w\($0)" }.joined(separator: " ")
            let cases: [(String, String)] = [
                ("", "empty"), ("   ", "spaces"), ("\t\n\r", "whitespace"), ("?!.,;:", "punctuation"), ("\"\"", "empty quotes"),
                ("- - -", "dashes"), ("-\"\"", "excluded nothing"), ("🙂🙂", "emoji"), ("\u{0}", "NUL"), ("\u{0}\u{1}\u{2}", "controls"),
                ("(((", "parentheses"), ("* ^ : +", "operators"), (tenThousandWords, "10,000 words"),
                (tenThousandShortWords, "10,000 one-letter words"), (sixtyFiveWords, "65 words"), ("-alpha", "only an exclusion"),
                ("-alpha -beta", "only exclusions"), ("alpha OR", "dangling OR"), ("OR alpha", "leading OR"),
                ("alpha OR OR beta", "double OR"), ("alpha OR -beta", "excluded word in an OR"), ("OR", "bare OR"),
            ]
            for (query, name) in cases {
                expectInvalidInput({ () throws(ChatLogError) in _ = try store.search(query) }, name)
                expectInvalidInput({ () throws(ChatLogError) in _ = try store.search(query, sort: .newest) }, name + " (newest)")
            }
            // The empty query says so.
            do {
                _ = try store.search("")
            } catch {
                #expect("\(error)".contains("query"))
            }
            do {
                _ = try store.search(tenThousandWords)
            } catch {
                #expect("\(error)".contains("limit"))
            }
            expectInvalidInput({ () throws(ChatLogError) in _ = try store.search("alpha", limit: 0) }, "limit 0")
            expectInvalidInput({ () throws(ChatLogError) in _ = try store.search("alpha", limit: 1_001) }, "limit 1001")
            expectInvalidInput({ () throws(ChatLogError) in _ = try store.search("alpha", offset: -1) }, "negative offset")
            // 64 words are still a query.
            let sixtyFour = (0..<63).map { "w\($0)" }.joined(separator: " ") + " alpha"
            #expect(try store.search(sixtyFour).hits.isEmpty)
            #expect(try store.search("alpha").hits.count == 1)
        }
    }

    /// Distinctive words written through every sealed field never appear in the database file
    /// or its WAL, in any case or normal form.
    @Test func theFilesHoldNoPlaintextOfLoggedWords() throws {
        try withSearchScratch { directory in
            let store = try makeSearchStore(in: directory)
            let canaries = ["Quetzalcanary", "zyxwvcanaryword", "Ünïcödecanary", "КанарейкаТест", "金丝雀测试机器", "ΚΑΝΑΡΙΝΙΚΟΣ"]
            var rng = SeededRandom(seed: 0xCA7A)
            let corpus = Corpus(&rng, asciiWords: 300)
            let id = try store.createConversation(
                NewConversation(title: "title \(canaries[0])", subject: "subject-\(canaries[1])",
                    metadata: .object(["note": .string(canaries[2])])))
            var messages: [NewMessage] = []
            for _ in 0..<200 { messages.append(NewMessage(role: .user, content: corpus.content(&rng))) }
            for canary in canaries {
                for form in [canary, canary.lowercased(), canary.uppercased(), canary.decomposedStringWithCanonicalMapping] {
                    messages.append(NewMessage(
                        role: .assistant, content: "before \(form) after, \(corpus.content(&rng))", model: "plain-model-marker",
                        metadata: .object(["echo": .string(form)])))
                }
            }
            try store.append(messages, to: id)
            for canary in canaries {
                #expect(try store.search(canary).hits.count == 4, "\(canary) is not searchable")
            }

            let database = directory + "/chat.db"
            func files() throws -> [(String, Data)] {
                try [database, database + "-wal"].filter { FileManager.default.fileExists(atPath: $0) }.map {
                    ($0, try Data(contentsOf: URL(fileURLWithPath: $0)))
                }
            }
            var patterns: [String] = []
            for canary in canaries {
                patterns += [canary, canary.lowercased(), canary.uppercased(), canary.decomposedStringWithCanonicalMapping,
                    canary.lowercased().decomposedStringWithCanonicalMapping]
                patterns += Tokenizer.tokens(canary).filter { $0.utf8.count >= 6 }
            }
            func check(_ phase: String) throws {
                let contents = try files()
                #expect(contents.contains { $0.1.range(of: Data("plain-model-marker".utf8)) != nil },
                    "[\(phase)] the byte search does not see a plain column: it proves nothing")
                for (path, bytes) in contents {
                    for pattern in patterns {
                        #expect(bytes.range(of: Data(pattern.utf8)) == nil, "[\(phase)] \(pattern) in \(path)")
                    }
                }
            }
            let wal = ((try? FileManager.default.attributesOfItem(atPath: database + "-wal"))?[.size] as? NSNumber)?.intValue ?? 0
            #expect(wal > 0, "the writes should still be in the WAL")
            try check("with WAL")
            _ = try store.rotateIndexKey(RotationOptions(newKey: true))
            try store.checkpoint()
            try check("after rotation and checkpoint")
        }
    }

    @Test func snippetsShowAndHighlightTheMatchedWords() throws {
        try withSearchScratch { directory in
            let store = try makeSearchStore(in: directory)
            let id = try store.createConversation()
            let filler = String(repeating: "lorem ipsum dolor sit amet ", count: 12)
            let accentedFiller = String(repeating: "e\u{301}te\u{301} 👍🏽 東京 nai\u{308}ve ", count: 10)
            let contents = [
                "Needleword at the start " + filler,
                filler + "the Needleword in the middle " + filler,
                filler + "ends with NEEDLEWORD",
                accentedFiller + "needleword after multi-scalar characters " + accentedFiller,
                "Find the Café here, and the cafe\u{301} there",
                filler + "the quick brown fox " + filler,
                // The snippet window starts at a cluster that is a lone combining mark.
                "ab\n\u{301}" + String(repeating: "y", count: 38) + " needleword",
                "ab\n\u{301}" + String(repeating: "y", count: 38) + " needleword tail",
                "x\u{301}\u{302}\u{303} needleword " + String(repeating: "q\u{301}", count: 100),
            ]
            let ids = try store.append(contents.map { NewMessage(role: .user, content: $0) }, to: id)
            func check(_ query: String, _ words: [String], expectedCount: Int) throws {
                let hits = try store.search(query, limit: 100).hits
                #expect(hits.count == expectedCount, "\(query)")
                for hit in hits {
                    let snippet = hit.snippet
                    #expect(snippet.text.count <= 2 * Snippets.radius + 2, "\(query): snippet too long")
                    #expect(!snippet.highlights.isEmpty, "\(query): no highlight in \(snippet.text.debugDescription)")
                    for range in snippet.highlights {
                        let text = String(snippet.text.unicodeScalars[range])
                        #expect(words.contains(where: { Tokenizer.tokens(text) == [$0] }),
                            "\(query): highlight \(text.debugDescription) in \(snippet.text.debugDescription)")
                    }
                    let shown = Set(Tokenizer.tokens(snippet.text))
                    #expect(words.contains(where: shown.contains), "\(query): \(snippet.text.debugDescription)")
                }
            }
            try check("needleword", ["needleword"], expectedCount: 7)
            try check("NeedleWord -start", ["needleword"], expectedCount: 6)
            try check("cafe\u{301}", ["café"], expectedCount: 1)
            try check("\"quick brown\"", ["quick", "brown"], expectedCount: 1)
            try check("fox OR needleword", ["fox", "needleword"], expectedCount: 8)
            let hit = try store.search("cafe", limit: 10).hits
            #expect(hit.isEmpty)  // "cafe" is not "café"
            let cafe = try store.search("CAFÉ").hits.first
            #expect(cafe?.messageID == ids[4])
            // Both occurrences of the word in the window are highlighted.
            #expect(cafe?.snippet.highlights.count == 2)
        }
    }

    /// The subject filter (a blind index, NFKC-equal) works for search and conversation listings,
    /// under mixed index keys and after a rotation.
    @Test func subjectFilterFindsConversations() throws {
        try withSearchScratch { directory in
            let store = try makeSearchStore(in: directory)
            func make(_ subject: String?) throws -> ConversationID {
                let id = try store.createConversation(NewConversation(subject: subject))
                try store.append([NewMessage(role: .user, content: "invoice number \(subject ?? "none")"),
                    NewMessage(role: .assistant, content: "Your INVOICE is attached", model: "gpt-4o")], to: id)
                return id
            }
            let alice = try make("alice")
            let zoeComposed = try make("Zoë")
            let zoeDecomposed = try make("Zoe\u{308}")
            _ = try make(nil)
            let bob = try make("bob")

            func searched(_ subject: String) throws -> Set<ConversationID> {
                Set(try store.search("invoice", filters: SearchFilters(subject: subject), limit: 100).hits.map(\.conversationID))
            }
            func listed(_ subject: String) throws -> Set<ConversationID> {
                Set(try store.conversations(ConversationQuery(subject: subject)).conversations.map(\.id))
            }
            func checkAll(_ phase: String, extraAlice: [ConversationID] = []) throws {
                #expect(try searched("alice") == Set([alice] + extraAlice), "\(phase)")
                #expect(try listed("alice") == Set([alice] + extraAlice), "\(phase)")
                #expect(try searched("Zoë") == [zoeComposed, zoeDecomposed], "\(phase)")
                #expect(try searched("Zoe\u{308}") == [zoeComposed, zoeDecomposed], "\(phase)")
                #expect(try listed("Zoe\u{308}") == [zoeComposed, zoeDecomposed], "\(phase)")
                #expect(try searched("bob") == [bob], "\(phase)")
                #expect(try listed("bob") == [bob], "\(phase)")
                #expect(try searched("nobody").isEmpty, "\(phase)")
                #expect(try listed("nobody").isEmpty, "\(phase)")
                #expect(try searched("ali").isEmpty, "\(phase)")
                // Two hits per conversation, with other filters on top.
                #expect(try store.search("invoice", filters: SearchFilters(subject: "bob"), limit: 100).hits.count == 2)
                #expect(try store.search("invoice", filters: SearchFilters(role: .assistant, subject: "Zoë"), limit: 100).hits.count == 2)
                #expect(try store.search("attached", filters: SearchFilters(conversation: alice, subject: "bob")).hits.isEmpty)
            }
            try checkAll("one key")
            // Mixed: a new key is active, old subjects are still under the old one.
            try interruptedIndexRotation(store, batches: 0)
            let alice2 = try make("alice")
            try checkAll("two keys", extraAlice: [alice2])
            try interruptedIndexRotation(store, batches: 2, batchSize: 3)
            try checkAll("three keys", extraAlice: [alice2])
            #expect(try store.rotateIndexKey(RotationOptions(batchSize: 2)).complete)
            try checkAll("rotation finished", extraAlice: [alice2])
            _ = try store.rotateIndexKey(RotationOptions(newKey: true, batchSize: 1))
            try checkAll("second rotation", extraAlice: [alice2])
            #expect(try rowsNotUnderActiveKey(store).subjects == 0)
            #expect(try store.deleteConversation(alice))
            #expect(try searched("alice") == [alice2])
            #expect(try listed("alice") == [alice2])
        }
    }

    /// since is inclusive, until exclusive; open-ended and extreme dates neither crash nor
    /// lose messages.
    @Test func timeFiltersAreExactAtTheEdges() throws {
        try withSearchScratch { directory in
            let store = try makeSearchStore(in: directory)
            let id = try store.createConversation()
            let base: Int64 = 1_710_000_000_000
            func date(_ ms: Int64) -> Date { Date(timeIntervalSince1970: Double(ms) / 1000) }
            let messages = (0..<50).map { NewMessage(role: .user, content: "tick \($0)", createdAt: date(base + Int64($0) * 1000)) }
            let ids = try store.append(messages, to: id)
            func found(_ filters: SearchFilters, sort: SearchSort = .newest) throws -> [MessageID] {
                try store.search("tick", filters: filters, limit: 1_000, sort: sort).hits.map(\.messageID)
            }
            #expect(try found(SearchFilters()) == ids.reversed())
            #expect(try found(SearchFilters(since: messages[10].createdAt)) == Array(ids[10...].reversed()))
            #expect(try found(SearchFilters(until: messages[20].createdAt)) == Array(ids[..<20].reversed()))
            #expect(try found(SearchFilters(since: messages[10].createdAt, until: messages[20].createdAt)) == Array(ids[10..<20].reversed()))
            #expect(try found(SearchFilters(since: messages[20].createdAt, until: messages[10].createdAt)).isEmpty)
            #expect(try found(SearchFilters(since: messages[20].createdAt, until: messages[20].createdAt)).isEmpty)
            #expect(try found(SearchFilters(since: .distantPast, until: .distantFuture)) == ids.reversed())
            #expect(try found(SearchFilters(since: .distantPast)) == ids.reversed())
            #expect(try found(SearchFilters(until: .distantFuture)) == ids.reversed())
            #expect(try found(SearchFilters(since: .distantFuture)).isEmpty)
            #expect(try found(SearchFilters(until: .distantPast)).isEmpty)
            #expect(try found(SearchFilters(since: date(0))) == ids.reversed())
            #expect(try Set(found(SearchFilters(since: .distantPast, until: .distantFuture), sort: .relevance)) == Set(ids))

            // Far-out dates: an answer or invalidInput, never a trap.
            for (since, until) in [(Date(timeIntervalSince1970: 1e17), nil), (nil, Date(timeIntervalSince1970: 1e17)),
                (Date(timeIntervalSince1970: -1e17), nil), (nil, Date(timeIntervalSince1970: -1e17))] as [(Date?, Date?)]
            {
                do {
                    let hits = try found(SearchFilters(since: since, until: until))
                    let everything = (since.map { $0.timeIntervalSince1970 < 0 } ?? false) || (until.map { $0.timeIntervalSince1970 > 0 } ?? false)
                    #expect(hits == (everything ? ids.reversed() : []), "since \(String(describing: since)) until \(String(describing: until))")
                } catch {
                    guard case .invalidInput? = error as? ChatLogError else { Issue.record("\(error)"); continue }
                }
            }

            // A conversation dated absurdly is refused or stored, never a trap.
            for when in [Date(timeIntervalSince1970: 1e17), Date(timeIntervalSince1970: -1e17), Date(timeIntervalSince1970: .nan)] {
                do {
                    _ = try store.createConversation(NewConversation(createdAt: when))
                } catch {
                    guard case .invalidInput? = error as? ChatLogError else { Issue.record("\(error)"); continue }
                }
            }

            // A message dated far from now is refused, or found in its place in time.
            for (name, when) in [("year 4001", Date.distantFuture), ("1e17 s", Date(timeIntervalSince1970: 1e17)),
                ("year 1", Date.distantPast), ("1960", Date(timeIntervalSince1970: -315_619_200)),
                ("NaN", Date(timeIntervalSince1970: .nan))]
            {
                let oddConversation = try store.createConversation()
                do {
                    let odd = try store.append(NewMessage(role: .user, content: "tick odd \(name)", createdAt: when), to: oddConversation)
                    let hits = try found(SearchFilters())
                    #expect(hits.count == 51)
                    let expectedFirst = when.timeIntervalSince1970 > 0
                    #expect((expectedFirst ? hits.first : hits.last) == odd, "\(name): out of time order")
                    #expect(try found(SearchFilters(since: messages[0].createdAt)).contains(odd) == expectedFirst, "\(name)")
                    #expect(try found(SearchFilters(until: messages[0].createdAt)).contains(odd) == !expectedFirst, "\(name)")
                    #expect(try found(SearchFilters(since: .distantPast, until: .distantFuture)).count == 51, "\(name)")
                    #expect(try store.search("odd").hits.map(\.messageID) == [odd])
                } catch {
                    guard case .invalidInput? = error as? ChatLogError else { Issue.record("\(name): \(error)"); continue }
                }
                #expect(try store.deleteConversation(oddConversation))
                #expect(try found(SearchFilters()) == ids.reversed())
            }
        }
    }

    /// A deleted conversation's words are gone from the index itself, also when a new message
    /// reuses the deleted one's index row id (same millisecond).
    @Test func deletedMessagesNeverComeBack() throws {
        try withSearchScratch { directory in
            let store = try makeSearchStore(in: directory)
            let when = Date(timeIntervalSince1970: 1_720_000_000.123)
            let doomed = try store.createConversation(NewConversation(subject: "doomed"))
            let kept = try store.createConversation()
            try store.append((0..<5).map { NewMessage(role: .user, content: "oldsecret number \($0) shared", createdAt: when) }, to: doomed)
            try store.append(NewMessage(role: .user, content: "shared word", createdAt: when.addingTimeInterval(1)), to: kept)
            #expect(try store.search("oldsecret").hits.count == 5)
            #expect(try store.deleteConversation(doomed))
            #expect(try store.search("oldsecret").hits.isEmpty)
            #expect(try store.search("shared").hits.count == 1)
            #expect(try indexedDocuments(store, "oldsecret").values.allSatisfy { $0 == 0 })
            #expect(try indexedDocuments(store, "shared").values.reduce(0, +) == 1)
            // New messages in the same millisecond take the freed row ids.
            let fresh = try store.append((0..<5).map { NewMessage(role: .user, content: "newword \($0)", createdAt: when) }, to: kept)
            #expect(try store.search("oldsecret").hits.isEmpty)
            #expect(try store.search("number").hits.isEmpty)
            #expect(Set(try store.search("newword").hits.map(\.messageID)) == Set(fresh))
            #expect(try indexedDocuments(store, "oldsecret").values.allSatisfy { $0 == 0 })
            #expect(try store.search("invoice OR oldsecret OR newword", filters: SearchFilters(subject: "doomed")).hits.isEmpty)
            #expect(try store.conversations(ConversationQuery(subject: "doomed")).conversations.isEmpty)
            _ = try store.rotateIndexKey(RotationOptions(newKey: true))
            #expect(try store.search("oldsecret").hits.isEmpty)
            #expect(try store.search("newword").hits.count == 5)
            try store.writeImmediate { db in
                try db.execute(sql: "INSERT INTO message_terms (message_terms, rank) VALUES ('integrity-check', 0)")
            }
        }
    }
}
