import Foundation
import Testing

@testable import ChatLog

/// Master keys: parsing, placeholders, fingerprints, the wrong key, and where settings find a key
/// (docs/ARCHITECTURE.md §4).
@Suite struct KeyTests {
    // MARK: - Parsing

    @Test func base64KeyRoundTrips() throws {
        let test = TestKey()
        let parsed = try MasterKey(base64: test.base64)
        #expect(parsed == test.key)
        #expect(parsed.exportBase64() == test.base64)
        // Surrounding whitespace and a trailing newline (as in a file or .env) are tolerated.
        #expect(try MasterKey(base64: "  \(test.base64)\n") == test.key)
    }

    @Test func generatedKeysDiffer() {
        let a = MasterKey.generate()
        let b = MasterKey.generate()
        #expect(a != b)
        #expect(a.fingerprint != b.fingerprint)
        #expect(a == a)
    }

    @Test func fingerprintIsStableAndShaped() throws {
        let test = TestKey()
        let again = try MasterKey(base64: test.base64)
        #expect(test.key.fingerprint == again.fingerprint)
        let text = test.key.fingerprint.description
        #expect(text.count == 17)
        #expect(text.split(separator: ":").map(\.count) == [8, 8])
        #expect(text.allSatisfy { $0 == ":" || $0.isHexDigit })
    }

    @Test(arguments: [
        ("not base64 at all!", "garbage"),
        ("", "empty"),
        (Data(repeating: 7, count: 31).base64EncodedString(), "31 bytes"),
        (Data((0..<33).map { UInt8($0) }).base64EncodedString(), "33 bytes"),
        (Data((0..<64).map { UInt8($0) }).base64EncodedString(), "64 bytes"),
        (String(Data((0..<32).map { UInt8($0) }).base64EncodedString().dropLast()), "missing padding"),
        (Data((0..<32).map { UInt8($0) }).base64EncodedString().replacingOccurrences(of: "+", with: "-")
            .replacingOccurrences(of: "/", with: "_") + "$", "stray character"),
    ])
    func malformedKeysAreRefused(text: String, label: String) {
        let error = #expect(throws: ChatLogError.self, "\(label)") { try MasterKey(base64: text) }
        guard case .invalidKey(let why)? = error else {
            Issue.record("expected invalidKey for \(label), got \(String(describing: error))")
            return
        }
        #expect(why.contains("32 bytes"))
    }

    @Test func placeholderKeysAreRefused() {
        let cases: [(String, String)] = [
            (Data(repeating: 0, count: 32).base64EncodedString(), "the all-zero key"),
            (Data(repeating: 0x41, count: 32).base64EncodedString(), "a key of one repeated byte"),
            (Data(repeating: 0xFF, count: 32).base64EncodedString(), "a key of one repeated byte"),
            (MasterKey.readmeExampleBase64, "the README's example key"),
        ]
        for (text, reason) in cases {
            #expect(throws: ChatLogError.placeholderKey(reason)) { try MasterKey(base64: text) }
        }
        // The README example really is what the check compares against.
        #expect(Data(base64Encoded: MasterKey.readmeExampleBase64) == Data("chatlog-example-key-do-not-use!!".utf8))
    }

    @Test func placeholderKeyErrorSaysHowToFixIt() {
        let error = #expect(throws: ChatLogError.self) { try MasterKey(base64: Data(count: 32).base64EncodedString()) }
        #expect(error?.description.contains("chatlog key generate") == true)
        #expect(error?.category == .key)
    }

    @Test func shortPassphraseIsRefused() {
        #expect(throws: ChatLogError.self) { try Passphrase("short") }
        #expect(throws: Never.self) { try Passphrase("long enough") }
    }

    // MARK: - Wrong key

    @Test func wrongMasterKeyNamesBothFingerprints() async throws {
        try await withTemporaryDirectory { directory in
            let right = MasterKey.generate()
            let wrong = MasterKey.generate()
            let store = try makeStore(in: directory, key: right)
            try store.createConversation(NewConversation(title: "t"))
            try store.close()
            #expect(throws: ChatLogError.wrongKey(expected: right.fingerprint, given: wrong.fingerprint, source: "given by the application")) {
                try ChatLogStore.open(at: directory.databasePath, key: .key(wrong))
            }
            // The right key still opens it afterwards: the failed open changed nothing.
            let reopened = try ChatLogStore.open(at: directory.databasePath, key: .key(right))
            #expect(try reopened.counts().conversations == 1)
        }
    }

    @Test func wrongKeyMessageCarriesFingerprintsOnly() {
        let right = TestKey()
        let wrong = TestKey()
        let text = ChatLogError.wrongKey(expected: right.key.fingerprint, given: wrong.key.fingerprint, source: "CHATLOG_MASTER_KEY").description
        #expect(text.contains(right.key.fingerprint.description))
        #expect(text.contains(wrong.key.fingerprint.description))
        for test in [right, wrong] {
            #expect(!text.contains(test.base64))
            #expect(!text.contains(test.hexLower))
        }
    }

    // MARK: - Settings: environment and .env

    @Test func missingKeyExplainsWhatToSet() async throws {
        try await withTemporaryDirectory { directory in
            let settings = try await ChatLogSettings.load(processEnvironment: [:], dotEnvPath: directory.file(".env"))
            let error = #expect(throws: ChatLogError.self) { try settings.masterKeySource() }
            guard case .missingKey(let how)? = error else {
                Issue.record("expected missingKey, got \(String(describing: error))")
                return
            }
            #expect(how.contains("CHATLOG_MASTER_KEY"))
            #expect(error?.description.contains("CHATLOG_MASTER_KEY") == true)
        }
    }

    @Test func emptyVariableCountsAsMissing() async throws {
        let settings = try await ChatLogSettings.load(processEnvironment: ["CHATLOG_MASTER_KEY": ""], dotEnvPath: nil)
        #expect {
            try settings.masterKeySource()
        } throws: { error in
            guard case ChatLogError.missingKey = error else { return false }
            return true
        }
    }

    @Test func keyFromEnvironment() async throws {
        let test = TestKey()
        let settings = try await ChatLogSettings.load(processEnvironment: ["CHATLOG_MASTER_KEY": test.base64], dotEnvPath: nil)
        let source = try settings.masterKeySource()
        #expect(try key(of: source) == test.key)
        #expect(source.origin == "CHATLOG_MASTER_KEY (environment)")
    }

    @Test func malformedKeyInEnvironmentIsRefused() async throws {
        let settings = try await ChatLogSettings.load(
            processEnvironment: ["CHATLOG_MASTER_KEY": "dG9vIHNob3J0"], dotEnvPath: nil)
        #expect {
            try settings.masterKeySource()
        } throws: { error in
            guard case ChatLogError.invalidKey = error else { return false }
            return true
        }
        let placeholder = try await ChatLogSettings.load(
            processEnvironment: ["CHATLOG_MASTER_KEY": MasterKey.readmeExampleBase64], dotEnvPath: nil)
        #expect(throws: ChatLogError.placeholderKey("the README's example key from CHATLOG_MASTER_KEY (environment)")) {
            try placeholder.masterKeySource()
        }
    }

    @Test func keyFromDotEnvFile() async throws {
        try await withTemporaryDirectory { directory in
            let test = TestKey()
            let path = directory.file(".env")
            try writeFile(path, text: "# chatlog settings\nCHATLOG_DB=/var/lib/chat.db\nCHATLOG_MASTER_KEY=\(test.base64)\n", mode: 0o600)
            let settings = try await ChatLogSettings.load(processEnvironment: [:], dotEnvPath: path)
            let source = try settings.masterKeySource()
            #expect(try key(of: source) == test.key)
            #expect(source.origin == "CHATLOG_MASTER_KEY (.env in \(URL(fileURLWithPath: directory.path).standardizedFileURL.path))")
            #expect(try settings.databasePath == "/var/lib/chat.db")
        }
    }

    @Test func environmentWinsOverDotEnv() async throws {
        try await withTemporaryDirectory { directory in
            let fromEnvironment = TestKey()
            let fromFile = TestKey()
            let path = directory.file(".env")
            try writeFile(path, text: "CHATLOG_MASTER_KEY=\(fromFile.base64)\nCHATLOG_DB=from-file.db\n", mode: 0o600)
            let settings = try await ChatLogSettings.load(
                processEnvironment: ["CHATLOG_MASTER_KEY": fromEnvironment.base64, "CHATLOG_DB": "from-env.db"], dotEnvPath: path)
            let source = try settings.masterKeySource()
            #expect(try key(of: source) == fromEnvironment.key)
            #expect(source.origin == "CHATLOG_MASTER_KEY (environment)")
            #expect(try settings.databasePath == "from-env.db")
        }
    }

    @Test func worldReadableDotEnvHoldingTheKeyIsRefused() async throws {
        try await withTemporaryDirectory { directory in
            let test = TestKey()
            let path = directory.file(".env")
            try writeFile(path, text: "CHATLOG_MASTER_KEY=\(test.base64)\n", mode: 0o644)
            let settings = try await ChatLogSettings.load(processEnvironment: [:], dotEnvPath: path)
            let error = #expect(throws: ChatLogError.self) { try settings.masterKeySource() }
            guard case .keyFileRejected(let rejected, let reason)? = error else {
                Issue.record("expected keyFileRejected, got \(String(describing: error))")
                return
            }
            #expect(rejected == ".env in \(URL(fileURLWithPath: directory.path).standardizedFileURL.path)")
            #expect(reason.contains("0644"))
            #expect(error?.description.contains(test.base64) == false)
        }
    }

    /// A `.env` others can write must not redirect a command to another database.
    @Test func dotEnvThatIsNot0600MayNotSetTheDatabase() async throws {
        try await withTemporaryDirectory { directory in
            let test = TestKey()
            let path = directory.file(".env")
            try writeFile(path, text: "CHATLOG_DB=chat.db\n", mode: 0o644)
            let settings = try await ChatLogSettings.load(processEnvironment: ["CHATLOG_MASTER_KEY": test.base64], dotEnvPath: path)
            let error = #expect(throws: ChatLogError.self) { try settings.databasePath }
            #expect(error?.description.contains("CHATLOG_DB") == true)
            #expect(error?.description.contains("0644") == true)
            #expect(try key(of: settings.masterKeySource()) == test.key)
            // The environment's CHATLOG_DB is used without looking at the loose .env.
            let overridden = try await ChatLogSettings.load(
                processEnvironment: ["CHATLOG_MASTER_KEY": test.base64, "CHATLOG_DB": "mine.db"], dotEnvPath: path)
            #expect(try overridden.databasePath == "mine.db")
        }
    }

    /// Any key source in the environment wins over every source in `.env` (a cron job in $HOME
    /// with a stray `.env` holding another key uses its CHATLOG_MASTER_KEY_FILE).
    @Test(arguments: ["CHATLOG_MASTER_KEY_FILE", "CHATLOG_PASSPHRASE_FILE"])
    func anEnvironmentKeyFileWinsOverAKeyInDotEnv(_ variable: String) async throws {
        try await withTemporaryDirectory { directory in
            let stray = TestKey()
            try writeFile(directory.file(".env"), text: "CHATLOG_MASTER_KEY=\(stray.base64)\n", mode: 0o600)
            let file = directory.file("secret")
            let wanted = TestKey()
            try writeFile(file, text: variable == "CHATLOG_MASTER_KEY_FILE" ? wanted.base64 + "\n" : "correct horse battery\n", mode: 0o600)
            let settings = try await ChatLogSettings.load(processEnvironment: [variable: file], dotEnvPath: directory.file(".env"))
            let source = try settings.masterKeySource()
            #expect(source.origin == "\(variable) \(file)")
            if variable == "CHATLOG_MASTER_KEY_FILE" { #expect(try key(of: source) == wanted.key) }
        }
    }

    @Test func masterKeyVariableWinsOverKeyFile() async throws {
        try await withTemporaryDirectory { directory in
            let fromEnvironment = TestKey()
            let fromFile = TestKey()
            let path = directory.file("master.key")
            try writeFile(path, text: fromFile.base64 + "\n", mode: 0o600)
            let settings = try await ChatLogSettings.load(
                processEnvironment: ["CHATLOG_MASTER_KEY": fromEnvironment.base64, "CHATLOG_MASTER_KEY_FILE": path], dotEnvPath: nil)
            #expect(try key(of: settings.masterKeySource()) == fromEnvironment.key)
        }
    }

    @Test func promptIsUsedOnlyWhenNothingElseIsSet() async throws {
        let empty = try await ChatLogSettings.load(processEnvironment: [:], dotEnvPath: nil)
        let prompted = try empty.masterKeySource(prompt: { () throws(ChatLogError) in try Passphrase("typed at the prompt") })
        #expect(prompted.origin == "passphrase prompt")
        let test = TestKey()
        let withKey = try await ChatLogSettings.load(processEnvironment: ["CHATLOG_MASTER_KEY": test.base64], dotEnvPath: nil)
        let source = try withKey.masterKeySource(prompt: { () throws(ChatLogError) in
            Issue.record("prompted although a key was set")
            return try Passphrase("typed at the prompt")
        })
        #expect(try key(of: source) == test.key)
    }
}

/// The key a source holds, failing the test when it holds a passphrase instead.
func key(of source: MasterKeySource) throws -> MasterKey {
    guard case .key(let key) = source.material else { throw TestSupportError("source \(source.origin) holds a passphrase") }
    return key
}
