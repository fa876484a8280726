import Foundation
import Testing

/// What the CLI does with a store file that was tampered with, is not a store, or is missing,
/// and what the file holds after logging.
@Suite struct StoreFileTests {
    /// Two messages in one conversation, with plaintext the tests look for in the output.
    private func storeWithTwoMessages(_ sandbox: Sandbox) throws -> (conversation: String, first: String, second: String) {
        try sandbox.initStore()
        let first = try sandbox.log([
            "--title", "Title-Plaintext", "--subject", "Subject-Plaintext", "--text", "First-Plaintext",
        ])
        let second = try sandbox.log(["--conversation", first.conversation_id, "--text", "Second-Plaintext"])
        return (first.conversation_id, first.message_id, second.message_id)
    }

    private let plaintexts = ["Title-Plaintext", "Subject-Plaintext", "First-Plaintext", "Second-Plaintext"]

    private func expectIntegrityFailure(_ result: CommandResult, row: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(result.status == 4, "\(result)", sourceLocation: sourceLocation)
        #expect(result.err.contains("messages"), "table not named: \(result)", sourceLocation: sourceLocation)
        #expect(result.err.contains("content"), "column not named: \(result)", sourceLocation: sourceLocation)
        #expect(result.err.contains(row), "row id not named: \(result)", sourceLocation: sourceLocation)
        for plaintext in plaintexts {
            #expect(!result.out.contains(plaintext), "plaintext on stdout", sourceLocation: sourceLocation)
            #expect(!result.err.contains(plaintext), "plaintext on stderr", sourceLocation: sourceLocation)
        }
    }

    @Test func flippedByteInSealedContentIsAnIntegrityFailure() throws {
        let sandbox = try Sandbox()
        let store = try storeWithTwoMessages(sandbox)
        let hex = try sandbox.sqlite("chatlog.db", "SELECT hex(content) FROM messages WHERE id = '\(store.second)'")
        #expect(hex.count > 100, "content is not a sealed blob: \(hex)")
        // Flip the lowest bit of the last byte (ciphertext, covered by the MAC).
        var digits = Array(hex)
        let last = try #require(Int(String(digits[digits.count - 1]), radix: 16))
        digits[digits.count - 1] = Character(String(last ^ 1, radix: 16).uppercased())
        try sandbox.sqlite(
            "chatlog.db", "UPDATE messages SET content = X'\(String(digits))' WHERE id = '\(store.second)'")

        expectIntegrityFailure(try sandbox.chatlog(["show", store.conversation, "--json"]), row: store.second)
        expectIntegrityFailure(try sandbox.chatlog(["show", store.conversation]), row: store.second)
    }

    @Test func sealedContentCopiedFromAnotherRowIsAnIntegrityFailure() throws {
        let sandbox = try Sandbox()
        let store = try storeWithTwoMessages(sandbox)
        try sandbox.sqlite(
            "chatlog.db",
            "UPDATE messages SET content = (SELECT content FROM messages WHERE id = '\(store.first)') WHERE id = '\(store.second)'")
        expectIntegrityFailure(try sandbox.chatlog(["show", store.conversation, "--json"]), row: store.second)
    }

    @Test func truncatedSealedContentIsAnIntegrityFailure() throws {
        let sandbox = try Sandbox()
        let store = try storeWithTwoMessages(sandbox)
        try sandbox.sqlite("chatlog.db", "UPDATE messages SET content = X'0100000001AB' WHERE id = '\(store.first)'")
        expectIntegrityFailure(try sandbox.chatlog(["show", store.conversation, "--json"]), row: store.first)
    }

    @Test func aFileThatIsNotSQLiteIsInvalidInputAndStaysUnchanged() throws {
        let sandbox = try Sandbox()
        let garbage = String(repeating: "this is not a database, just text\n", count: 200)
        try sandbox.write(garbage, to: "notes.txt", mode: 0o600)
        let commands = [["list"], ["show", "01a21a65-5b7c-77d3-9bea-9ac56f67bb0b"], ["log", "--text", "x"], ["key", "status"], ["init"]]
        for arguments in commands {
            let result = try sandbox.chatlog(arguments + ["--db", "notes.txt"])
            #expect(result.status == 65, "\(arguments): \(result)")
            #expect(result.err.contains("notes.txt"), "\(result)")
        }
        #expect(try String(contentsOf: sandbox.url("notes.txt"), encoding: .utf8) == garbage)
        #expect(!sandbox.exists("notes.txt-wal"))
    }

    @Test func anotherProgramsSQLiteDatabaseIsInvalidInputAndStaysUnchanged() throws {
        let sandbox = try Sandbox()
        try sandbox.sqlite("foreign.db", "CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('hello');")
        let before = sandbox.storeFiles("foreign.db")
        for arguments in [["list"], ["init"]] {
            let result = try sandbox.chatlog(arguments + ["--db", "foreign.db"])
            #expect(result.status == 65, "\(arguments): \(result)")
        }
        #expect(sandbox.storeFiles("foreign.db") == before)
    }

    @Test func aMissingStoreIsNotFoundAndIsNotCreated() throws {
        let sandbox = try Sandbox()
        for arguments in [["list"], ["show", "01a21a65-5b7c-77d3-9bea-9ac56f67bb0b"], ["log", "--text", "x"], ["key", "status"]] {
            let result = try sandbox.chatlog(arguments + ["--db", "missing.db"])
            #expect(result.status == 66, "\(arguments): \(result)")
            #expect(result.err.contains("missing.db") && result.err.contains("chatlog init"), "\(result)")
        }
        // Reported before any key is needed.
        let keyless = try sandbox.chatlog(["list", "--db", "missing.db"], env: sandbox.baseEnvironment)
        #expect(keyless.status == 66, "\(keyless)")
        #expect(!sandbox.exists("missing.db"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: sandbox.directory.path).isEmpty)
    }

    @Test func loggedCanaryIsNotInTheStoreFiles() throws {
        let sandbox = try Sandbox()
        let canary = "CANARY-\(UUID().uuidString)"
        try sandbox.initStore()
        let logged = try sandbox.log([
            "--title", "title \(canary)", "--subject", "subject \(canary)", "--text", "text \(canary)",
            "--metadata", #"{"note": "\#(canary)"}"#, "--model", "model-name",
        ])
        _ = try sandbox.log(["--conversation", logged.conversation_id], stdin: Data("stdin \(canary)\n".utf8))
        // The store really holds it.
        #expect(try sandbox.show(logged.conversation_id).messages.map(\.content) == ["text \(canary)", "stdin \(canary)\n"])

        let files = try FileManager.default.contentsOfDirectory(atPath: sandbox.directory.path)
            .filter { $0.hasPrefix("chatlog.db") }
        #expect(files.contains("chatlog.db"))
        let needles = [canary, String(canary.reversed()), canary.lowercased()].map { Data($0.utf8) }
            + [Data(canary.utf16.flatMap { [UInt8($0 & 0xFF), UInt8($0 >> 8)] })]
        for file in files {
            let bytes = try Data(contentsOf: sandbox.url(file))
            for needle in needles {
                #expect(bytes.range(of: needle) == nil, "the canary is readable in \(file)")
            }
            // The plain columns really are plain: the check would see plaintext if there were any.
            if file == "chatlog.db" { #expect(bytes.range(of: Data("model-name".utf8)) != nil) }
        }
    }
}
