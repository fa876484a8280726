import Foundation
import Testing

/// `log --redact` and `import --redact`: secrets replaced before sealing; `none` (the default) keeps today's behaviour.
@Suite struct RedactionCLITests {
    /// A made-up key of the real shape (mixed case, digits, long enough).
    static let secret = "sk-proj-" + String(repeating: "Zk4qW9xR2mT7", count: 5)

    func showJSON(_ sandbox: Sandbox, _ conversation: String) throws -> [[String: Any]] {
        let shown = try sandbox.chatlog(["show", "--json", conversation])
        #expect(shown.status == 0, "\(shown)")
        return try #require(try jsonObject(shown.stdout)["messages"] as? [[String: Any]])
    }

    func expectNoSecretInFiles(_ sandbox: Sandbox, sourceLocation: SourceLocation = #_sourceLocation) {
        for (file, bytes) in sandbox.storeFiles() {
            #expect(bytes.range(of: Data(Self.secret.utf8)) == nil, "secret in \(file)", sourceLocation: sourceLocation)
            #expect(bytes.range(of: Data(Self.secret.dropFirst(8).prefix(24).utf8)) == nil, "part of the secret in \(file)", sourceLocation: sourceLocation)
        }
    }

    @Test func logRedactsSecretsBeforeSealing() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        sandbox.addSecret(Self.secret)
        let logged = try sandbox.log(["--redact", "secrets"], stdin: Data("my key is \(Self.secret) and DB_PASSWORD=hunter22".utf8))
        let messages = try showJSON(sandbox, logged.conversation_id)
        #expect(messages.first?["content"] as? String == "my key is [REDACTED:openai_key] and DB_PASSWORD=[REDACTED:password]")
        let metadata = try #require(messages.first?["metadata"] as? [String: Any])
        #expect(metadata["chatlog.redacted"] as? [String: Int] == ["openai_key": 1, "password": 1])
        expectNoSecretInFiles(sandbox)
    }

    @Test func logKeepsTheTextByDefault() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let logged = try sandbox.log([], stdin: Data("my key is \(Self.secret)".utf8))
        let messages = try showJSON(sandbox, logged.conversation_id)
        #expect(messages.first?["content"] as? String == "my key is \(Self.secret)")
        let explicit = try sandbox.log(["--redact", "none"], stdin: Data("again \(Self.secret)".utf8))
        #expect(try showJSON(sandbox, explicit.conversation_id).first?["content"] as? String == "again \(Self.secret)")
    }

    @Test func importRedactsEveryMessage() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        sandbox.addSecret(Self.secret)
        let line = """
            {"messages": [{"role": "user", "content": "why does \(Self.secret) fail?"}, {"role": "assistant", "content": "Revoke it: it was pasted."}]}

            """
        try sandbox.write(line, to: "calls.jsonl", mode: 0o600)
        let imported = try sandbox.chatlog(["import", "--format", "openai-jsonl", "--redact", "secrets", "--json", "calls.jsonl"])
        #expect(imported.status == 0, "\(imported)")
        let conversation = try #require(try sandbox.list().first).id
        let messages = try showJSON(sandbox, conversation)
        #expect(messages.map { $0["content"] as? String } == ["why does [REDACTED:openai_key] fail?", "Revoke it: it was pasted."])
        expectNoSecretInFiles(sandbox)
    }

    @Test func anUnknownModeIsAUsageError() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let result = try sandbox.chatlog(["log", "--redact", "all", "--text", "x"])
        #expect(result.status == 64, "\(result)")
        #expect(result.stdout.isEmpty)
    }
}
