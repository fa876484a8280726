/// A parsed search query. Grammar (whitespace separates clauses; all clauses must match):
///
///     query   = clause { clause }
///     clause  = atom { "OR" atom } | "-" atom
///     atom    = word | '"' words '"'
///
/// A word that tokenizes to several tokens ("e-mail", "東京") is a phrase. `OR` binds two
/// positive atoms; an excluded atom (`-word`, `-"a phrase"`) cannot take part in an OR. Nothing
/// in the query is ever passed to SQL or FTS5 as syntax: atoms become blinded terms.
public struct SearchQuery: Sendable, Hashable, CustomStringConvertible {
    /// One word or phrase, as normalised tokens (a single word is a one-token phrase).
    public struct Atom: Sendable, Hashable {
        public let tokens: [String]
    }

    /// Positive clauses: each is an OR of atoms; all must match.
    public let required: [[Atom]]
    /// Atoms that must not occur.
    public let excluded: [Atom]

    public static let maximumAtoms = 64
    public static let maximumDistinctTokens = 100
    public static let maximumLength = 4096

    public var description: String {
        func show(_ atom: Atom) -> String { atom.tokens.count == 1 ? atom.tokens[0] : "\"" + atom.tokens.joined(separator: " ") + "\"" }
        return (required.map { $0.map(show).joined(separator: " OR ") } + excluded.map { "-" + show($0) }).joined(separator: " ")
    }

    public init(parsing text: String) throws(ChatLogError) {
        guard text.utf8.count <= Self.maximumLength else {
            throw .invalidInput("the query is \(text.utf8.count) bytes; the limit is \(Self.maximumLength)")
        }
        enum Piece { case atom(Atom, excluded: Bool), or }
        var pieces: [Piece] = []
        var atomCount = 0

        let scalars = Array(text.unicodeScalars)
        var index = 0
        func isSpace(_ scalar: Unicode.Scalar) -> Bool { scalar.properties.isWhitespace || scalar.value < 0x20 || scalar.value == 0x7F }
        while index < scalars.count {
            if isSpace(scalars[index]) { index += 1; continue }
            var excluded = false
            if scalars[index] == "-" , index + 1 < scalars.count, !isSpace(scalars[index + 1]) {
                excluded = true
                index += 1
            }
            var raw = ""
            var quoted = false
            if scalars[index] == "\"" {
                quoted = true
                index += 1
                while index < scalars.count, scalars[index] != "\"" { raw.unicodeScalars.append(scalars[index]); index += 1 }
                index += 1  // closing quote (an unclosed quote runs to the end)
            } else {
                while index < scalars.count, !isSpace(scalars[index]), scalars[index] != "\"" {
                    raw.unicodeScalars.append(scalars[index])
                    index += 1
                }
            }
            if !quoted, !excluded, raw == "OR" {
                pieces.append(.or)
                continue
            }
            let tokens = Tokenizer.tokens(raw)
            if tokens.isEmpty { continue }  // punctuation only: nothing to search for
            atomCount += 1
            guard atomCount <= Self.maximumAtoms else {
                throw .invalidInput("the query has more than \(Self.maximumAtoms) words or phrases; narrow it down")
            }
            pieces.append(.atom(Atom(tokens: tokens), excluded: excluded))
        }

        var required: [[Atom]] = []
        var excludedAtoms: [Atom] = []
        var pendingOr = false
        for piece in pieces {
            switch piece {
            case .or:
                guard !required.isEmpty, !pendingOr else { throw .invalidInput("OR needs a word or phrase on each side") }
                pendingOr = true
            case .atom(let atom, let excluded):
                if excluded {
                    guard !pendingOr else { throw .invalidInput("an excluded word (-word) cannot be part of an OR") }
                    excludedAtoms.append(atom)
                } else if pendingOr {
                    required[required.count - 1].append(atom)
                    pendingOr = false
                } else {
                    required.append([atom])
                }
            }
        }
        if pendingOr { throw .invalidInput("OR needs a word or phrase on each side") }
        let distinct = Set(pieces.flatMap { piece -> [String] in
            if case .atom(let atom, _) = piece { return atom.tokens }
            return []
        })
        guard distinct.count <= Self.maximumDistinctTokens else {
            throw .invalidInput("the query has \(distinct.count) distinct words; the limit is \(Self.maximumDistinctTokens)")
        }
        guard !required.isEmpty else {
            throw .invalidInput(
                excludedAtoms.isEmpty
                    ? "the query has no words to search for (only spaces or punctuation)"
                    : "the query only excludes words; add at least one word to search for")
        }
        self.required = required
        self.excluded = excludedAtoms
    }

    /// Whether a message whose tokens are `tokens` (in order) satisfies the query.
    func matches(tokens: [String], set: Set<String>) -> Bool {
        for clause in required where !clause.contains(where: { Self.contains($0, tokens: tokens, set: set) }) {
            return false
        }
        return !excluded.contains { Self.contains($0, tokens: tokens, set: set) }
    }

    static func contains(_ atom: Atom, tokens: [String], set: Set<String>) -> Bool {
        guard atom.tokens.allSatisfy(set.contains) else { return false }
        if atom.tokens.count == 1 { return true }
        return phraseStart(atom.tokens, in: tokens) != nil
    }

    static func phraseStart(_ phrase: [String], in tokens: [String]) -> Int? {
        guard phrase.count <= tokens.count else { return nil }
        outer: for start in 0...(tokens.count - phrase.count) where tokens[start] == phrase[0] {
            for offset in 1..<phrase.count where tokens[start + offset] != phrase[offset] { continue outer }
            return start
        }
        return nil
    }
}
