import Foundation
import Testing

/// Passphrase stores from the command line: tampered Argon2id limits exit 4 before anything is
/// derived, and a wrong passphrase says so without a fingerprint of the key it derives.
@Suite struct PassphraseCLITests {
    let passphrase = "correct horse battery staple"

    private func passphraseStore(_ sandbox: Sandbox) throws -> [String: String] {
        try sandbox.write(passphrase + "\n", to: "pass.txt", mode: 0o600)
        let env = sandbox.baseEnvironment.merging(["CHATLOG_PASSPHRASE_FILE": sandbox.path("pass.txt")]) { $1 }
        let created = try sandbox.chatlog(["init"], env: env)
        guard created.status == 0 else { throw CLITestError("init failed: \(created)") }
        return env
    }

    @Test func tamperedLimitsExit4NamingTheRow() throws {
        let sandbox = try Sandbox()
        let env = try passphraseStore(sandbox)
        for (row, value) in [
            ("kdf_opslimit", "1"), ("kdf_opslimit", "-1"), ("kdf_opslimit", "4294967295"), ("kdf_opslimit", "'3'"),
            ("kdf_memlimit", "8192"), ("kdf_memlimit", "1099511627776"), ("kdf_memlimit", "268435456.0"),
        ] {
            let saved = try sandbox.sqlite("chatlog.db", "SELECT quote(value) FROM chatlog_meta WHERE name = '\(row)'")
            try sandbox.sqlite("chatlog.db", "UPDATE chatlog_meta SET value = \(value) WHERE name = '\(row)'")
            let result = try sandbox.chatlog(["list"], env: env)
            #expect(result.status == 4, "\(row) = \(value): \(result)")
            #expect(result.err.contains(row), "\(result)")
            #expect(!result.err.contains("given"), "\(result)")
            try sandbox.sqlite("chatlog.db", "UPDATE chatlog_meta SET value = \(saved) WHERE name = '\(row)'")
        }
        #expect(try sandbox.chatlog(["list"], env: env).status == 0)
    }

    @Test func wrongPassphraseSaysSoWithoutTheDerivedKeysFingerprint() throws {
        let sandbox = try Sandbox()
        let env = try passphraseStore(sandbox)
        let expected = try JSONDecoder().decode(KeyStatusJSON.self, from: sandbox.chatlog(["key", "status", "--json"], env: env).stdout)
            .master_key_fingerprint
        try sandbox.write("incorrect horse battery\n", to: "pass.txt", mode: 0o600)
        let result = try sandbox.chatlog(["list"], env: env)
        #expect(result.status == 77, "\(result)")
        #expect(result.err.contains("wrong passphrase"), "\(result)")
        #expect(!result.err.contains("wrong master key"), "\(result)")
        #expect(result.err.contains(sandbox.path("pass.txt")), "the source must be named: \(result)")
        #expect(result.err.contains(expected), "\(result)")
        // Exactly one fingerprint (the store's) appears.
        let fingerprints = result.err.matches(of: /[0-9a-f]{8}:[0-9a-f]{8}/).map { String($0.output) }
        #expect(fingerprints == [expected], "\(result)")
    }
}

/// A store holding a schema object chatlog did not create, or a key row changed without the
/// master key, is refused with exit 4 naming it.
@Suite struct KeyTableCLITests {
    @Test func aPlantedTriggerIsRefusedNamingIt() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        _ = try sandbox.log(["--text", "under key 1"])
        try sandbox.sqlite(
            "chatlog.db",
            "CREATE TRIGGER repin AFTER INSERT ON keys WHEN NEW.kind = 'data' BEGIN "
                + "UPDATE keys SET state = 'decrypt-only' WHERE id = NEW.id; UPDATE keys SET state = 'active' WHERE id = 1; END")
        for arguments in [["list"], ["key", "rotate", "--new"], ["verify"]] {
            let result = try sandbox.chatlog(arguments)
            #expect(result.status == 4, "\(arguments): \(result)")
            #expect(result.err.contains("repin"), "\(result)")
        }
        #expect(try sandbox.sqlite("chatlog.db", "SELECT count(*) FROM keys") == "2", "the rotation made a key")
    }

    @Test func reactivatingARetiredKeyExits4() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        _ = try sandbox.log(["--text", "moves to key 3"])
        #expect(try sandbox.chatlog(["key", "rotate", "--new"]).status == 0)
        let wrapped = try sandbox.sqlite("chatlog.db", "SELECT hex(wrapped) FROM keys WHERE id = 1")
        #expect(try sandbox.chatlog(["key", "retire", "--key", "1"]).status == 0)
        // The review's attack: the retired key's wrapped blob restored and marked active.
        try sandbox.sqlite(
            "chatlog.db",
            "UPDATE keys SET state = 'decrypt-only' WHERE id = 3; "
                + "UPDATE keys SET state = 'active', wrapped = x'\(wrapped)', retired_at = NULL WHERE id = 1")
        for arguments in [["log", "--text", "must not be sealed under key 1"], ["verify"], ["key", "status"]] {
            let result = try sandbox.chatlog(arguments)
            #expect(result.status == 4, "\(arguments): \(result)")
            #expect(result.err.contains("keys"), "\(result)")
        }
        #expect(try sandbox.sqlite("chatlog.db", "SELECT count(*) FROM messages WHERE key_id = 1") == "0")
    }
}

/// Where the key comes from: a source in the environment wins over `./.env`, every key error
/// names the source it used, and a `.env` others could change may not redirect `CHATLOG_DB`.
@Suite struct KeySourceCLITests {
    @Test func environmentKeyFileWinsOverAStrayDotEnvAndErrorsNameTheSource() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        try sandbox.write(sandbox.key + "\n", to: "master.key", mode: 0o600)
        // A stray .env in the working directory (a cron job in $HOME) holding another key.
        try sandbox.write("CHATLOG_MASTER_KEY=\(sandbox.makeKey())\n", to: ".env", mode: 0o600)
        let env = sandbox.baseEnvironment.merging(["CHATLOG_MASTER_KEY_FILE": sandbox.path("master.key")]) { $1 }
        let listed = try sandbox.chatlog(["list"], env: env)
        #expect(listed.status == 0, "the key file from the environment must win: \(listed)")

        // Without the environment's key file, the .env key is used, and the error says so.
        let wrong = try sandbox.chatlog(["list"], env: sandbox.baseEnvironment)
        #expect(wrong.status == 77, "\(wrong)")
        #expect(wrong.err.contains("CHATLOG_MASTER_KEY (.env in "), "\(wrong)")
        #expect(wrong.err.contains(sandbox.directory.path) || wrong.err.contains(sandbox.directory.resolvingSymlinksInPath().path), "\(wrong)")

        // A wrong key file is named with its path.
        try sandbox.write(sandbox.makeKey() + "\n", to: "other.key", mode: 0o600)
        let fileEnv = sandbox.baseEnvironment.merging(["CHATLOG_MASTER_KEY_FILE": sandbox.path("other.key")]) { $1 }
        let wrongFile = try sandbox.chatlog(["list"], env: fileEnv)
        #expect(wrongFile.status == 77, "\(wrongFile)")
        #expect(wrongFile.err.contains("CHATLOG_MASTER_KEY_FILE \(sandbox.path("other.key"))"), "\(wrongFile)")
    }

    @Test func aLooseDotEnvCannotRedirectTheDatabase() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        try sandbox.initStore(db: "elsewhere.db")
        try sandbox.write("CHATLOG_DB=elsewhere.db\n", to: ".env", mode: 0o644)
        let result = try sandbox.chatlog(["log", "--text", "must not go elsewhere"])
        #expect(result.status != 0, "\(result)")
        #expect(result.err.contains("CHATLOG_DB"), "\(result)")
        #expect(try sandbox.sqlite("elsewhere.db", "SELECT count(*) FROM messages") == "0")
        // --db or the environment's CHATLOG_DB still work; a 0600 .env may set it.
        #expect(try sandbox.chatlog(["list", "--db", "chatlog.db"]).status == 0)
        #expect(chmod(sandbox.path(".env"), 0o600) == 0)
        #expect(try sandbox.chatlog(["log", "--text", "now it may"]).status == 0)
        #expect(try sandbox.sqlite("elsewhere.db", "SELECT count(*) FROM messages") == "1")
    }
}

/// `key rotate` with a damaged row: the rest moves, the row is named, exit 4 with the counts.
@Suite struct DamagedRotationCLITests {
    @Test(arguments: [["key", "rotate", "--new"], ["key", "rotate", "--index", "--new"]])
    func rotationSkipsTheDamagedRowNamesItAndExits4(_ arguments: [String]) throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        for index in 0..<3 { _ = try sandbox.log(["--text", "message \(index)"]) }
        let ids = try sandbox.sqlite("chatlog.db", "SELECT id FROM messages ORDER BY seq").split(separator: "\n").map(String.init)
        try sandbox.sqlite(
            "chatlog.db", "UPDATE messages SET content = (SELECT content FROM messages WHERE id = '\(ids[0])') WHERE id = '\(ids[2])'")
        let result = try sandbox.chatlog(arguments + ["--json"])
        #expect(result.status == 4, "\(result)")
        #expect(result.err.contains("messages.content of row \(ids[2])"), "\(result)")
        #expect(result.err.contains("skipped 1 damaged rows"), "\(result)")
        let report = try jsonObject(result.stdout)
        let damaged = try #require(report["damaged"] as? [[String: String]])
        #expect(damaged == [["table": "messages", "column": "content", "row": ids[2]]])
        // Every other message moved to the new key.
        let column = arguments.contains("--index") ? "index_key_id" : "key_id"
        let moved = try sandbox.sqlite("chatlog.db", "SELECT count(*) FROM messages WHERE \(column) = 3")
        #expect(moved == "2", "\(result)")
    }
}

/// `key retire` and `key rewrap` refusals exit with the README's codes, not 1 ("storage error").
@Suite struct KeyJobExitCodeTests {
    @Test func retireAndRewrapRefusalsUseTheDocumentedCodes() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        _ = try sandbox.log(["--text", "under key 1"])
        let cases: [(arguments: [String], env: [String: String]?, status: Int32, text: String)] = [
            (["key", "retire", "--key", "1"], nil, 65, "key 1 is active"),
            (["key", "retire", "--key", "99"], nil, 66, "no key with id 99"),
            (["key", "rewrap"], sandbox.environment.merging(["CHATLOG_NEW_MASTER_KEY": sandbox.key]) { $1 }, 64, "same as the current one"),
        ]
        for (arguments, env, status, text) in cases {
            let result = try sandbox.chatlog(arguments, env: env)
            #expect(result.status == status, "\(arguments): \(result)")
            #expect(result.err.contains(text), "\(result)")
            #expect(!result.err.contains("storage error"), "\(result)")
        }
        // Key 1 in use: a new key made active, nothing moved (--max-duration 0s).
        let partial = try sandbox.chatlog(["key", "rotate", "--new", "--max-duration", "0s"])
        #expect(partial.status == 3, "\(partial)")
        let inUse = try sandbox.chatlog(["key", "retire", "--key", "1"])
        #expect(inUse.status == 65, "\(inUse)")
        #expect(inUse.err.contains("still used by"), "\(inUse)")
        #expect(try sandbox.chatlog(["key", "rotate"]).status == 0)
        #expect(try sandbox.chatlog(["key", "retire", "--key", "1"]).status == 0)
        let again = try sandbox.chatlog(["key", "retire", "--key", "1"])
        #expect(again.status == 65, "\(again)")
        #expect(again.err.contains("already retired"), "\(again)")
    }
}
