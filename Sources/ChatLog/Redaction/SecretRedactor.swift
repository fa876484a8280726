/// The kinds of secret a ``SecretRedactor`` finds. The raw value is what replaces a secret
/// (`[REDACTED:openai_key]`) and the key of its count in a message's metadata.
public enum SecretKind: String, CaseIterable, Sendable, Hashable, Codable, Comparable {
    case openAIKey = "openai_key"
    case anthropicKey = "anthropic_key"
    case awsAccessKeyID = "aws_access_key_id"
    case awsSecretKey = "aws_secret_key"
    case githubToken = "github_token"
    case gitlabToken = "gitlab_token"
    case slackToken = "slack_token"
    case slackWebhook = "slack_webhook"
    case stripeKey = "stripe_key"
    case googleAPIKey = "google_api_key"
    case jwt
    case privateKey = "private_key"
    case password
    case secret
    case token
    case apiKey = "api_key"
    case urlPassword = "url_password"
    case bearerToken = "bearer_token"

    public static func < (lhs: SecretKind, rhs: SecretKind) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// Finds secrets in text (API keys and tokens of known formats, JWTs, PEM private keys, the values
/// of `password=`-style assignments, passwords in URLs) and replaces each with
/// `[REDACTED:kind]`. Only kinds and counts are kept, never a secret byte.
///
/// The scanner is hand-written over the UTF-8 bytes: one pass, every look-ahead bounded, no
/// backtracking, so its time is linear in the input even on hostile text. Every pattern starts
/// and ends on ASCII bytes, so a replacement never splits a Unicode scalar. Redacting redacted
/// text changes nothing. The list of kinds and the measured false-positive rate are in
/// docs/SECURITY.md ("Secret redaction").
///
/// ```swift
/// let result = SecretRedactor().redact("export OPENAI_API_KEY=sk-proj-…")
/// result.text    // "export OPENAI_API_KEY=[REDACTED:openai_key]"
/// result.counts  // [.openAIKey: 1]
/// ```
public struct SecretRedactor: Sendable {
    /// What ``redact(_:)`` returns: the text with secrets replaced, and how many of each kind.
    public struct Result: Sendable, Equatable {
        public let text: String
        public let counts: [SecretKind: Int]
        /// The number of secrets replaced.
        public var total: Int { counts.values.reduce(0, +) }
    }

    /// The kinds this redactor replaces.
    public let kinds: Set<SecretKind>

    public init(kinds: Set<SecretKind> = Set(SecretKind.allCases)) {
        self.kinds = kinds
    }

    /// Replaces every secret in `text`. Returns `text` itself when there is none.
    public func redact(_ text: String) -> Result {
        var text = text
        let matches = text.withUTF8 { bytes in Scanner(bytes: bytes, kinds: kinds).run() }
        guard !matches.isEmpty else { return Result(text: text, counts: [:]) }
        var counts: [SecretKind: Int] = [:]
        let output = text.withUTF8 { bytes in
            var output = [UInt8]()
            output.reserveCapacity(bytes.count)
            var position = 0
            for match in matches {
                output.append(contentsOf: bytes[position..<match.start])
                output.append(contentsOf: "[REDACTED:\(match.kind.rawValue)]".utf8)
                counts[match.kind, default: 0] += 1
                position = match.end
            }
            output.append(contentsOf: bytes[position...])
            return output
        }
        // Matches start and end on ASCII bytes of valid UTF-8, so the result is valid UTF-8.
        return Result(text: String(decoding: output, as: UTF8.self), counts: counts)
    }
}

/// One secret found: the byte range it covers and its kind.
struct SecretMatch: Equatable {
    let start: Int
    let end: Int
    let kind: SecretKind
}

// MARK: - The scanner

/// Byte classes, one table lookup each.
private enum ByteClass {
    static let alnum: UInt8 = 1
    static let word: UInt8 = 2  // [A-Za-z0-9_-]
    static let identifier: UInt8 = 4  // [A-Za-z0-9_.-]
    static let base64: UInt8 = 8  // [A-Za-z0-9+/]
    static let trigger: UInt8 = 16  // may start a pattern
    static let valueEnd: UInt8 = 64  // ends an unquoted value

    // Written once here and only read after: safe to share between threads.
    nonisolated(unsafe) static let table: UnsafePointer<UInt8> = {
        let table = UnsafeMutablePointer<UInt8>.allocate(capacity: 256)
        table.initialize(repeating: 0, count: 256)
        for byte in UInt8(ascii: "0")...UInt8(ascii: "9") { table[Int(byte)] |= alnum | word | identifier | base64 }
        for byte in UInt8(ascii: "a")...UInt8(ascii: "z") { table[Int(byte)] |= alnum | word | identifier | base64 }
        for byte in UInt8(ascii: "A")...UInt8(ascii: "Z") { table[Int(byte)] |= alnum | word | identifier | base64 }
        for byte in "_-".utf8 { table[Int(byte)] |= word | identifier }
        table[Int(UInt8(ascii: "."))] |= identifier
        for byte in "+/".utf8 { table[Int(byte)] |= base64 }
        for byte in "sregAxhB-=:".utf8 { table[Int(byte)] |= trigger }
        // White space, controls, quotes, separators of lists, URL queries and markup.
        for byte in 0...0x20 { table[byte] |= valueEnd }
        table[0x7F] |= valueEnd
        for byte in "\"'`,;&#<>)]}|".utf8 { table[Int(byte)] |= valueEnd }
        return UnsafePointer(table)
    }()
}

private struct Scanner {
    let bytes: UnsafeBufferPointer<UInt8>
    let kinds: Set<SecretKind>
    let classes: UnsafePointer<UInt8>
    let count: Int

    init(bytes: UnsafeBufferPointer<UInt8>, kinds: Set<SecretKind>) {
        self.bytes = bytes
        self.kinds = kinds
        self.count = bytes.count
        self.classes = ByteClass.table
    }

    /// The longest token looked at; anything longer is not a key of a known format.
    static let maximumToken = 16 << 10
    /// The longest assignment value (quoted or not).
    static let maximumValue = 512
    /// The longest key name before `=` or `:`.
    static let maximumName = 64
    /// How far from an AWS access key id its secret key is looked for.
    static let awsWindow = 256

    @inline(__always) func has(_ index: Int, _ flag: UInt8) -> Bool {
        index >= 0 && index < count && classes[Int(bytes[index])] & flag != 0
    }

    @inline(__always) func byte(_ index: Int) -> UInt8 { index < count ? bytes[index] : 0 }

    /// Whether the ASCII `literal` is at `index`.
    @inline(__always) func matches(_ literal: StaticString, at index: Int) -> Bool {
        let length = literal.utf8CodeUnitCount
        guard index >= 0, index + length <= count else { return false }
        let pointer = literal.utf8Start
        for offset in 0..<length where bytes[index + offset] != pointer[offset] { return false }
        return true
    }

    /// Whether the text at `index` is an earlier redaction (so redacting twice changes nothing).
    func isRedaction(at index: Int) -> Bool { matches("[REDACTED:", at: index) }

    /// The end of the run of bytes with `flag` starting at `index`, looking at most `limit` bytes.
    @inline(__always) func runEnd(from index: Int, _ flag: UInt8, limit: Int = maximumToken) -> Int {
        var end = index
        let stop = min(count, index + limit)
        while end < stop, classes[Int(bytes[end])] & flag != 0 { end += 1 }
        return end
    }

    func run() -> [SecretMatch] {
        var found: [SecretMatch] = []
        var index = 0
        while index < count {
            let byte = bytes[index]
            guard classes[Int(byte)] & ByteClass.trigger != 0, let match = match(at: index, byte), kinds.contains(match.kind) else {
                index += 1
                continue
            }
            // An assignment's value may start before the current index's pattern ends; keep order.
            if let last = found.last, match.start < last.end {
                index += 1
                continue
            }
            found.append(match)
            index = max(match.end, index + 1)
        }
        if kinds.contains(.awsSecretKey), found.contains(where: { $0.kind == .awsAccessKeyID }) {
            found = addingAWSSecrets(to: found)
        }
        return found
    }

    /// The pattern starting (or, for assignments and URLs, anchored) at `index`.
    func match(at index: Int, _ byte: UInt8) -> SecretMatch? {
        switch byte {
        case UInt8(ascii: "="), UInt8(ascii: ":"): return assignment(at: index) ?? urlPassword(at: index)
        case UInt8(ascii: "-"): return privateKey(at: index)
        case UInt8(ascii: "h"): return slackWebhook(at: index)
        default:
            // The other patterns are tokens: they start after a non-token byte.
            guard !has(index - 1, ByteClass.word) else { return nil }
            return token(at: index)
        }
    }

    // MARK: Tokens of known formats

    /// A token of a known format starting at `index` (preceded by a non-token byte).
    func token(at index: Int) -> SecretMatch? {
        switch bytes[index] {
        case UInt8(ascii: "s"):
            if matches("sk-ant-", at: index) { return keyBody(index, prefix: 7, kind: .anthropicKey, minimum: 32) }
            if matches("sk-", at: index) { return openAIKey(at: index) }
            if matches("sk_live_", at: index) || matches("sk_test_", at: index) {
                return keyBody(index, prefix: 8, kind: .stripeKey, minimum: 16, flag: ByteClass.alnum)
            }
        case UInt8(ascii: "r"):
            if matches("rk_live_", at: index) || matches("rk_test_", at: index) {
                return keyBody(index, prefix: 8, kind: .stripeKey, minimum: 16, flag: ByteClass.alnum)
            }
        case UInt8(ascii: "A"):
            if matches("AKIA", at: index) || matches("ASIA", at: index) { return awsAccessKeyID(at: index) }
            if matches("AIza", at: index) {
                let end = runEnd(from: index + 4, ByteClass.word)
                return end - index == 39 ? SecretMatch(start: index, end: end, kind: .googleAPIKey) : nil
            }
        case UInt8(ascii: "g"):
            if matches("github_pat_", at: index) {
                return keyBody(index, prefix: 11, kind: .githubToken, minimum: 22, flag: ByteClass.word)
            }
            if matches("glpat-", at: index) { return keyBody(index, prefix: 6, kind: .gitlabToken, minimum: 20) }
            if matches("gh", at: index), byte(index + 3) == UInt8(ascii: "_"), "pousr".utf8.contains(byte(index + 2)) {
                return keyBody(index, prefix: 4, kind: .githubToken, minimum: 30, flag: ByteClass.alnum)
            }
        case UInt8(ascii: "x"):
            if matches("xox", at: index), "abprs".utf8.contains(byte(index + 3)), byte(index + 4) == UInt8(ascii: "-") {
                return keyBody(index, prefix: 5, kind: .slackToken, minimum: 10)
            }
        case UInt8(ascii: "e"):
            if matches("eyJ", at: index) { return jwt(at: index) }
        case UInt8(ascii: "B"):
            if matches("Bearer ", at: index) { return bearerToken(at: index + 7) }
        default: break
        }
        return nil
    }

    /// `prefix` bytes, then a body of at least `minimum` bytes of `flag` class holding a digit and
    /// a letter (real keys are random; words and identifiers after `sk-` are not keys).
    func keyBody(_ index: Int, prefix: Int, kind: SecretKind, minimum: Int, flag: UInt8 = ByteClass.word) -> SecretMatch? {
        let start = index + prefix
        let end = runEnd(from: start, flag)
        // A key followed by more identifier bytes of another class ("sk_live_abc.def") is not one.
        guard end - start >= minimum, end - index < Self.maximumToken, !has(end, ByteClass.word) else { return nil }
        var digits = 0
        var letters = 0
        for offset in start..<end {
            let byte = bytes[offset]
            if byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") { digits += 1 } else if classes[Int(byte)] & ByteClass.alnum != 0 { letters += 1 }
        }
        guard digits > 0, letters > 0 else { return nil }
        return SecretMatch(start: index, end: end, kind: kind)
    }

    /// `sk-proj-`, `sk-svcacct-`, `sk-admin-` and a long base64url body, or the older `sk-` and 32
    /// or more letters and digits. The older form mixes upper and lower case and digits, which
    /// words joined by dashes (`sk-ecdsa-sha2-nistp256`) do not; behind one of the newer, unmistakable
    /// prefixes two of the three are enough (a random body of 48 letters and digits has no digit
    /// about once in 5,000 keys, and such a key was once left in clear), while lower-case words
    /// joined by dashes still are not a key.
    func openAIKey(at index: Int) -> SecretMatch? {
        let prefixed = matches("sk-proj-", at: index) || matches("sk-svcacct-", at: index) || matches("sk-admin-", at: index)
        let start = index + 3
        let end = runEnd(from: start, prefixed ? ByteClass.word : ByteClass.alnum)
        guard end - start >= (prefixed ? 40 : 32), end - index < Self.maximumToken, !has(end, ByteClass.word),
            characterClasses(start, end) >= (prefixed ? 2 : 3)
        else { return nil }
        return SecretMatch(start: index, end: end, kind: .openAIKey)
    }

    /// `Bearer ` and an opaque token (RFC 6750 characters) of at least 20 characters mixing letters
    /// and digits. A token of a known format after it is reported as that kind.
    func bearerToken(at start: Int) -> SecretMatch? {
        // (`Bearer Bearer …` must not recurse: a token of a known format never starts with `B`.)
        guard start < count, !isRedaction(at: start), bytes[start] == UInt8(ascii: "B") || token(at: start) == nil else { return nil }
        var end = start
        var digits = false
        var letters = false
        while end < count, end - start < Self.maximumToken {
            let byte = bytes[end]
            if byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") {
                digits = true
            } else if classes[Int(byte)] & ByteClass.alnum != 0 {
                letters = true
            } else if !"-._~+/".utf8.contains(byte) {
                break
            }
            end += 1
        }
        while end < count, bytes[end] == UInt8(ascii: "=") { end += 1 }
        guard end - start >= 20, digits, letters else { return nil }
        return SecretMatch(start: start, end: end, kind: .bearerToken)
    }

    /// `AKIA` or `ASIA` and 16 upper-case letters or digits.
    func awsAccessKeyID(at index: Int) -> SecretMatch? {
        var end = index + 4
        while end < count, end - index < 20, bytes[end] >= UInt8(ascii: "A") && bytes[end] <= UInt8(ascii: "Z") || bytes[end] >= UInt8(ascii: "0") && bytes[end] <= UInt8(ascii: "9") {
            end += 1
        }
        guard end - index == 20, !has(end, ByteClass.alnum) else { return nil }
        return SecretMatch(start: index, end: end, kind: .awsAccessKeyID)
    }

    /// A JWT: `eyJ` header, payload and signature in base64url separated by dots, the header
    /// decoding to a JSON object with an `"alg"` member.
    func jwt(at index: Int) -> SecretMatch? {
        let headerEnd = runEnd(from: index, ByteClass.word)
        guard byte(headerEnd) == UInt8(ascii: "."), headerEnd - index >= 10 else { return nil }
        let payloadEnd = runEnd(from: headerEnd + 1, ByteClass.word)
        guard byte(payloadEnd) == UInt8(ascii: "."), payloadEnd - headerEnd > 4 else { return nil }
        let end = runEnd(from: payloadEnd + 1, ByteClass.word)
        guard end - index < Self.maximumToken,
            Base64URL.headerHasAlgorithm(UnsafeBufferPointer(rebasing: bytes[index..<headerEnd]))
        else { return nil }
        return SecretMatch(start: index, end: end, kind: .jwt)
    }

    // MARK: Blocks and URLs

    /// `-----BEGIN … PRIVATE KEY-----` to the matching END line (or the end of the text, when
    /// the block is cut off: what is there is still a secret).
    func privateKey(at index: Int) -> SecretMatch? {
        guard matches("-----BEGIN ", at: index) else { return nil }
        var cursor = index + 11
        let stop = min(count, cursor + 64)
        while cursor < stop, bytes[cursor] >= UInt8(ascii: "A") && bytes[cursor] <= UInt8(ascii: "Z") || bytes[cursor] == UInt8(ascii: " ") {
            cursor += 1
        }
        guard matches("-----", at: cursor) else { return nil }
        let label = UnsafeBufferPointer(rebasing: bytes[(index + 11)..<cursor])
        guard Self.endsWith(label, "PRIVATE KEY") || Self.endsWith(label, "PRIVATE KEY BLOCK") else { return nil }
        var search = cursor + 5
        while search < count {
            if bytes[search] == UInt8(ascii: "-"), matches("-----END ", at: search) {
                var end = search + 9
                while end < count, end < search + 9 + 64, bytes[end] != UInt8(ascii: "\n"), !matches("-----", at: end) { end += 1 }
                if matches("-----", at: end) { end += 5 }
                return SecretMatch(start: index, end: end, kind: .privateKey)
            }
            search += 1
        }
        return SecretMatch(start: index, end: count, kind: .privateKey)
    }

    static func endsWith(_ bytes: UnsafeBufferPointer<UInt8>, _ literal: StaticString) -> Bool {
        let length = literal.utf8CodeUnitCount
        guard bytes.count >= length else { return false }
        let pointer = literal.utf8Start
        for offset in 0..<length where bytes[bytes.count - length + offset] != pointer[offset] { return false }
        return true
    }

    /// `hooks.slack.com/services/…`: the path after `services/` is the webhook's secret.
    func slackWebhook(at index: Int) -> SecretMatch? {
        guard matches("hooks.slack.com/services/", at: index) else { return nil }
        let start = index + 25
        var end = start
        while end < count, end - start < 256, has(end, ByteClass.word) || bytes[end] == UInt8(ascii: "/") { end += 1 }
        guard end - start >= 8, !isRedaction(at: start) else { return nil }
        return SecretMatch(start: start, end: end, kind: .slackWebhook)
    }

    /// `scheme://user:password@host`: the password.
    func urlPassword(at index: Int) -> SecretMatch? {
        guard bytes[index] == UInt8(ascii: ":"), matches("://", at: index), has(index - 1, ByteClass.alnum) else { return nil }
        var cursor = index + 3
        let userStart = cursor
        while cursor < count, cursor - userStart < 128, !Self.endsUserInfo(bytes[cursor]), bytes[cursor] != UInt8(ascii: ":") { cursor += 1 }
        guard cursor > userStart, byte(cursor) == UInt8(ascii: ":") else { return nil }
        cursor += 1
        let passwordStart = cursor
        while cursor < count, cursor - passwordStart < 256, !Self.endsUserInfo(bytes[cursor]) { cursor += 1 }
        guard cursor > passwordStart, byte(cursor) == UInt8(ascii: "@"), has(cursor + 1, ByteClass.alnum) || byte(cursor + 1) == UInt8(ascii: "[")
        else { return nil }
        let value = UnsafeBufferPointer(rebasing: bytes[passwordStart..<cursor])
        guard !Self.isPlaceholder(value) else { return nil }
        return SecretMatch(start: passwordStart, end: cursor, kind: .urlPassword)
    }

    /// Bytes that end the user-info part of a URL.
    static func endsUserInfo(_ byte: UInt8) -> Bool {
        byte <= 0x20 || byte == UInt8(ascii: "/") || byte == UInt8(ascii: "@") || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "'")
            || byte == UInt8(ascii: "<") || byte == UInt8(ascii: ">") || byte == UInt8(ascii: "`") || byte == 0x7F
    }

    // MARK: Assignments

    /// `name=value`, `name: value`, `"name": "value"` or `?name=value&` where the name ends in
    /// password, passwd, secret, token or api_key (and its spellings): the value.
    func assignment(at index: Int) -> SecretMatch? {
        // Not `==`, `=>`, `:=`-style comparisons or operators, nor `::`.
        let separator = bytes[index]
        let next = byte(index + 1)
        if next == UInt8(ascii: "=") || next == UInt8(ascii: ">") || next == UInt8(ascii: ":") { return nil }
        if separator == UInt8(ascii: "=") && index > 0
            && "=!<>:+-*/%&|^~".utf8.contains(bytes[index - 1])
        {
            return nil
        }
        if separator == UInt8(ascii: ":") && next == UInt8(ascii: "/") { return nil }
        // The name, read backwards: optional spaces, an optional closing quote, the identifier.
        var cursor = index - 1
        var spacedBefore = false
        while cursor >= 0, bytes[cursor] == UInt8(ascii: " ") || bytes[cursor] == UInt8(ascii: "\t") {
            cursor -= 1
            spacedBefore = true
        }
        var quotedName = false
        if cursor >= 0, bytes[cursor] == UInt8(ascii: "\"") || bytes[cursor] == UInt8(ascii: "'") {
            quotedName = true
            cursor -= 1
        }
        let nameEnd = cursor + 1
        while cursor >= 0, nameEnd - cursor <= Self.maximumName, classes[Int(bytes[cursor])] & ByteClass.identifier != 0 { cursor -= 1 }
        let nameStart = cursor + 1
        guard nameEnd > nameStart, nameEnd - nameStart <= Self.maximumName,
            let kind = Self.assignedKind(UnsafeBufferPointer(rebasing: bytes[nameStart..<nameEnd]))
        else { return nil }
        // The value, forwards.
        var start = index + 1
        var spacedAfter = false
        while start < count, bytes[start] == UInt8(ascii: " ") || bytes[start] == UInt8(ascii: "\t") {
            start += 1
            spacedAfter = true
        }
        guard start < count, !isRedaction(at: start) else { return nil }
        let first = bytes[start]
        if first == UInt8(ascii: "\"") || first == UInt8(ascii: "'") || first == UInt8(ascii: "`") {
            return quotedValue(start, quote: first, kind: kind)
        }
        // A bare value in code (`token = next()`, `password: String`) is an expression or a type;
        // in .env files, shell and URLs (`password=…` with no spaces) it is the value itself.
        let code = spacedBefore || spacedAfter || separator == UInt8(ascii: ":") || quotedName
        return bareValue(start, kind: kind, code: code)
    }

    func quotedValue(_ start: Int, quote: UInt8, kind: SecretKind) -> SecretMatch? {
        var end = start + 1
        while end < count, end - start <= Self.maximumValue {
            let byte = bytes[end]
            if byte == quote { break }
            if byte == UInt8(ascii: "\n") { return nil }
            if byte == UInt8(ascii: "\\") { end += 1 }
            end += 1
        }
        guard end < count, bytes[end] == quote, end > start + 1 else { return nil }
        let value = UnsafeBufferPointer(rebasing: bytes[(start + 1)..<end])
        guard !Self.isPlaceholder(value), !(kind == .token && Self.isNumber(value)), value.contains(where: { classes[Int($0)] & ByteClass.alnum != 0 })
        else { return nil }
        // A specific format inside (`"sk-…"`) is reported as that kind by the main scan.
        if token(at: start + 1) != nil || Self.isInterpolation(value) { return nil }
        return SecretMatch(start: start + 1, end: end, kind: kind)
    }

    func bareValue(_ start: Int, kind: SecretKind, code: Bool) -> SecretMatch? {
        var end = start
        while end < count, end - start <= Self.maximumValue, classes[Int(bytes[end])] & ByteClass.valueEnd == 0 { end += 1 }
        // Trailing punctuation belongs to the sentence or the statement.
        while end > start, ".,;:".utf8.contains(bytes[end - 1]) { end -= 1 }
        guard end > start, end - start <= Self.maximumValue else { return nil }
        let value = UnsafeBufferPointer(rebasing: bytes[start..<end])
        guard !Self.isPlaceholder(value), !(kind == .token && Self.isNumber(value)), !Self.isKeyword(value) else { return nil }
        if token(at: start) != nil || value.contains(UInt8(ascii: "(")) { return nil }
        var identifierLike = true
        var hasDigit = false
        for byte in value {
            if classes[Int(byte)] & ByteClass.identifier == 0 && byte != UInt8(ascii: "?") && byte != UInt8(ascii: ":") { identifierLike = false }
            if byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") { hasDigit = true }
        }
        if code {
            // In code, a bare word is a variable, a type or a call; a secret has a digit or a symbol.
            // A number is a setting (`HAVE_PASSWD: 1`); `a.b1` is a member.
            if identifierLike && (!hasDigit || value.contains(UInt8(ascii: ".")) || Self.isNumber(value)) { return nil }
            if value.contains(UInt8(ascii: "[")) { return nil }
            if kind == .token || kind == .secret, value.count < 8 { return nil }
        } else if identifierLike && !hasDigit {
            // `f(token=token)`, `password=self.password`: an argument or a property, not a value.
            if byte(end) == UInt8(ascii: ")") || byte(end) == UInt8(ascii: ",") || value.contains(UInt8(ascii: ".")) { return nil }
            // `token=EOF`: a short word is a value of the program, not a credential.
            if kind != .password, value.count < 6 { return nil }
        }
        return SecretMatch(start: start, end: end, kind: kind)
    }

    /// The kind an assignment to `name` redacts, if any.
    static func assignedKind(_ name: UnsafeBufferPointer<UInt8>) -> SecretKind? {
        // Lower-case the end of the name into a small buffer and compare suffixes.
        // Every name looked for ends in d, y, t or n: most names are refused here.
        guard let last = name.last, "dDyYtTnN".utf8.contains(last) else { return nil }
        // `isSecret`, `has_token`: flags about a secret, not one.
        for flag in ["is", "has"] where name.count > flag.utf8.count && name.starts(with: flag.utf8) {
            let next = name[flag.utf8.count]
            if next == UInt8(ascii: "_") || (next >= UInt8(ascii: "A") && next <= UInt8(ascii: "Z")) { return nil }
        }
        var lower = [UInt8](repeating: 0, count: min(name.count, 16))
        for offset in 0..<lower.count {
            let byte = name[name.count - lower.count + offset]
            lower[offset] = byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") ? byte | 0x20 : byte
        }
        func ends(_ suffix: String) -> Bool {
            let suffix = Array(suffix.utf8)
            guard lower.count >= suffix.count else { return false }
            if lower.count > suffix.count {
                // The suffix must be the whole name or follow a separator (`db_password`, not `bypassword`).
                let before = lower[lower.count - suffix.count - 1]
                guard before == UInt8(ascii: "_") || before == UInt8(ascii: "-") || before == UInt8(ascii: ".")
                    || (name[name.count - suffix.count] >= UInt8(ascii: "A") && name[name.count - suffix.count] <= UInt8(ascii: "Z"))
                else { return false }
            }
            return lower[(lower.count - suffix.count)...].elementsEqual(suffix)
        }
        if ends("password") || ends("passwd") { return .password }
        if ends("api_key") || ends("apikey") || ends("api-key") || ends("access_key") || ends("secret_key") { return .apiKey }
        if ends("secret") { return .secret }
        if ends("token") { return .token }
        return nil
    }

    /// Values that stand for a secret without being one: `$VAR`, `${VAR}`, `<your key>`,
    /// `{{ secret }}`, `%s`, `***`, `xxx`, `...`, `[REDACTED:…]`.
    static func isPlaceholder(_ value: UnsafeBufferPointer<UInt8>) -> Bool {
        guard let first = value.first else { return true }
        if "$<{%[(@\\".utf8.contains(first) { return true }
        if value.allSatisfy({ $0 == first }) && "*xX.-_#".utf8.contains(first) { return true }
        // The name itself as its value (`https://user:password@host`, `password=PASSWORD`).
        guard value.count <= 8 else { return false }
        let word = String(decoding: value, as: UTF8.self).lowercased()
        return ["pass", "password", "passwd", "secret", "token", "apikey", "api_key"].contains(word)
    }

    static func isNumber(_ value: UnsafeBufferPointer<UInt8>) -> Bool {
        value.allSatisfy { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
    }

    /// A template or interpolation (`"\(token)"`, `"#{secret}"`, `f"{password}"`).
    static func isInterpolation(_ value: UnsafeBufferPointer<UInt8>) -> Bool {
        value.count >= 2 && (value[0] == UInt8(ascii: "\\") && value[1] == UInt8(ascii: "(") || value[0] == UInt8(ascii: "#") && value[1] == UInt8(ascii: "{"))
    }

    /// Words that are code, not values.
    static func isKeyword(_ value: UnsafeBufferPointer<UInt8>) -> Bool {
        guard value.count <= 9 else { return false }
        let word = String(decoding: value, as: UTF8.self).lowercased()
        return ["null", "nil", "none", "true", "false", "undefined", "required", "optional", "string", "str", "bool", "int"].contains(word)
    }

    // MARK: AWS secret keys

    /// Adds 40-character base64 tokens within ``awsWindow`` bytes of an AWS access key id. Each
    /// byte is looked at once even when windows overlap.
    func addingAWSSecrets(to found: [SecretMatch]) -> [SecretMatch] {
        var added: [SecretMatch] = []
        var scanned = 0
        for id in found where id.kind == .awsAccessKeyID {
            var cursor = max(scanned, id.start - Self.awsWindow)
            let stop = min(count, id.end + Self.awsWindow)
            while cursor < stop {
                guard has(cursor, ByteClass.base64), !has(cursor - 1, ByteClass.base64) else {
                    cursor += 1
                    continue
                }
                let end = runEnd(from: cursor, ByteClass.base64, limit: 41)
                if end - cursor == 40, !has(end, ByteClass.base64), !has(end, ByteClass.word), isRandomLooking(cursor, end),
                    !Self.overlaps(found, cursor, end)
                {
                    added.append(SecretMatch(start: cursor, end: end, kind: .awsSecretKey))
                }
                cursor = runEnd(from: cursor, ByteClass.base64)
            }
            scanned = max(scanned, cursor)
        }
        return (found + added).sorted { $0.start < $1.start }
    }

    /// Whether `start..<end` overlaps a match of `sorted` (sorted by start, not overlapping).
    static func overlaps(_ sorted: [SecretMatch], _ start: Int, _ end: Int) -> Bool {
        var low = 0
        var high = sorted.count
        // The first match that ends after `start`.
        while low < high {
            let middle = (low + high) / 2
            if sorted[middle].end <= start { low = middle + 1 } else { high = middle }
        }
        return low < sorted.count && sorted[low].start < end
    }

    /// Mixed upper, lower and digits: a random key, not a word or a hex digest.
    func isRandomLooking(_ start: Int, _ end: Int) -> Bool { characterClasses(start, end) == 3 }

    /// How many of upper case, lower case and digits occur in `start..<end` (0…3).
    func characterClasses(_ start: Int, _ end: Int) -> Int {
        var upper = false
        var lower = false
        var digit = false
        for offset in start..<end {
            let byte = bytes[offset]
            if byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") { upper = true }
            if byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z") { lower = true }
            if byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") { digit = true }
        }
        return (upper ? 1 : 0) + (lower ? 1 : 0) + (digit ? 1 : 0)
    }
}

/// Just enough base64url decoding to look at a JWT header.
private enum Base64URL {
    static func headerHasAlgorithm(_ encoded: UnsafeBufferPointer<UInt8>) -> Bool {
        // The header is small; a huge one is not a JWT header.
        guard encoded.count <= 2048 else { return false }
        var decoded: [UInt8] = []
        decoded.reserveCapacity(encoded.count * 3 / 4)
        var buffer: UInt32 = 0
        var bits = 0
        for byte in encoded {
            let value: UInt32
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): value = UInt32(byte - UInt8(ascii: "A"))
            case UInt8(ascii: "a")...UInt8(ascii: "z"): value = UInt32(byte - UInt8(ascii: "a")) + 26
            case UInt8(ascii: "0")...UInt8(ascii: "9"): value = UInt32(byte - UInt8(ascii: "0")) + 52
            case UInt8(ascii: "-"): value = 62
            case UInt8(ascii: "_"): value = 63
            default: return false
            }
            buffer = buffer << 6 | value
            bits += 6
            if bits >= 8 {
                bits -= 8
                decoded.append(UInt8(truncatingIfNeeded: buffer >> UInt32(bits)))
            }
        }
        guard decoded.first == UInt8(ascii: "{") else { return false }
        let needle = Array("\"alg\"".utf8)
        guard decoded.count >= needle.count else { return false }
        for start in 0...(decoded.count - needle.count) where decoded[start..<(start + needle.count)].elementsEqual(needle) { return true }
        return false
    }
}
