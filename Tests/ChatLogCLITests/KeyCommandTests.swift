import Foundation
import Testing

@Suite struct KeyGenerateCommandTests {
    @Test func printsA32ByteBase64KeyEachTimeNew() throws {
        let sandbox = try Sandbox()
        let first = try sandbox.chatlog(["key", "generate"], env: sandbox.baseEnvironment)
        let second = try sandbox.chatlog(["key", "generate"], env: sandbox.baseEnvironment)
        #expect(first.status == 0, "\(first)")
        let key = first.out.trimmingCharacters(in: .newlines)
        #expect(first.out == key + "\n", "one line on stdout")
        #expect(Data(base64Encoded: key)?.count == 32, "not a base64 32-byte key: \(first.out)")
        #expect(key.count == 44)
        #expect(second.out != first.out, "two generated keys are equal")
    }

    @Test func writesANew0600FileAndPrintsNoSecret() throws {
        let sandbox = try Sandbox()
        let result = try sandbox.chatlog(["key", "generate", "--output", "master.key"], env: sandbox.baseEnvironment)
        #expect(result.status == 0, "\(result)")
        #expect(result.stdout.isEmpty, "stdout must stay empty with --output: \(result)")
        #expect(sandbox.fileMode("master.key") == 0o600)
        let contents = try String(contentsOf: sandbox.url("master.key"), encoding: .utf8)
        let key = contents.trimmingCharacters(in: .newlines)
        #expect(Data(base64Encoded: key)?.count == 32, "the file holds no base64 32-byte key")
        // Checks this run's stdout and stderr (and every later output) for the key.
        sandbox.addSecret(key)

        // The file works as CHATLOG_MASTER_KEY_FILE.
        let env = sandbox.baseEnvironment.merging(["CHATLOG_MASTER_KEY_FILE": "master.key"]) { $1 }
        #expect(try sandbox.chatlog(["init"], env: env).status == 0)
        #expect(try sandbox.chatlog(["list"], env: env).status == 0)
    }

    @Test func neverOverwritesAFile() throws {
        let sandbox = try Sandbox()
        try sandbox.write("precious\n", to: "master.key", mode: 0o600)
        let result = try sandbox.chatlog(["key", "generate", "--output", "master.key"], env: sandbox.baseEnvironment)
        #expect(result.status != 0, "\(result)")
        #expect(result.err.contains("already exists"), "\(result)")
        #expect(result.stdout.isEmpty)
        #expect(try String(contentsOf: sandbox.url("master.key"), encoding: .utf8) == "precious\n")
        #expect(sandbox.fileMode("master.key") == 0o600)
    }
}

@Suite struct KeyStatusCommandTests {
    @Test func reportsTheFingerprintAndOneActiveKeyOfEachKindWithItsRows() throws {
        let sandbox = try Sandbox()
        let fingerprint = try sandbox.initStore()
        // 3 conversations (2 with a subject) and 5 messages.
        let first = try sandbox.log(["--text", "one", "--subject", "alice"])
        _ = try sandbox.log(["--conversation", first.conversation_id, "--text", "two"])
        _ = try sandbox.log(["--conversation", first.conversation_id, "--text", "three", "--role", "assistant"])
        _ = try sandbox.log(["--text", "four", "--subject", "bob", "--title", "t"])
        _ = try sandbox.log(["--text", "five"])

        let result = try sandbox.chatlog(["key", "status", "--json"])
        #expect(result.status == 0, "\(result)")
        let status = try JSONDecoder().decode(KeyStatusJSON.self, from: result.stdout)
        for key in try #require(try jsonObject(result.stdout)["keys"] as? [[String: Any]]) {
            #expect(Set(key.keys) == ["id", "kind", "state", "created_at", "retired_at", "rows"], "\(key.keys)")
            #expect(key["retired_at"] is NSNull)
        }
        #expect(status.master_key_fingerprint == fingerprint)
        #expect(status.master_key_source.contains("CHATLOG_MASTER_KEY"))
        let data = status.keys.filter { $0.kind == "data" && $0.state == "active" }
        let index = status.keys.filter { $0.kind == "index" && $0.state == "active" }
        #expect(data.count == 1 && index.count == 1, "\(status.keys)")
        #expect(status.keys.count == 2)
        // Data key: every conversation row and every message row. Index key: every message's
        // search terms and the two subjects.
        #expect(data.first?.rows == 3 + 5)
        #expect(index.first?.rows == 5 + 2)
        #expect(status.keys.allSatisfy { isTimestamp($0.created_at) })
        #expect(Set(status.keys.map(\.id)).count == 2)

        let human = try sandbox.chatlog(["key", "status"])
        #expect(human.status == 0, "\(human)")
        #expect(human.out.contains(fingerprint))
    }
}
