import Foundation
import Testing

/// Where the CLI finds the master key, and how it refuses a missing, wrong or placeholder key.
/// Every output here is also checked for the keys involved (see `Sandbox`).
@Suite struct MasterKeyTests {
    @Test func missingKeyExits77AndSaysHowToSetOne() throws {
        let sandbox = try Sandbox()
        let result = try sandbox.chatlog(["init"], env: sandbox.baseEnvironment)
        #expect(result.status == 77, "\(result)")
        #expect(result.err.contains("CHATLOG_MASTER_KEY"), "\(result)")
        #expect(result.err.contains("chatlog key generate"), "\(result)")
        #expect(!sandbox.exists("chatlog.db"), "init without a key created a file")

        try sandbox.initStore()
        for arguments in [["list"], ["log", "--text", "x"], ["key", "status"]] {
            let refused = try sandbox.chatlog(arguments, env: sandbox.baseEnvironment)
            #expect(refused.status == 77, "\(arguments): \(refused)")
            #expect(refused.err.contains("CHATLOG_MASTER_KEY"))
        }
        #expect(try sandbox.list().isEmpty)
    }

    @Test func wrongKeyExits77NamingBothFingerprints() throws {
        let sandbox = try Sandbox()
        let expected = try sandbox.initStore()
        _ = try sandbox.log(["--text", "kept"])
        let wrong = sandbox.makeKey()
        let wrongEnv = sandbox.baseEnvironment.merging(["CHATLOG_MASTER_KEY": wrong]) { $1 }
        // The wrong key's fingerprint, from a store of its own.
        let other = try sandbox.chatlog(["init", "--json", "--db", "other.db"], env: wrongEnv)
        let given = try #require(try jsonObject(other.stdout)["master_key_fingerprint"] as? String)
        #expect(given != expected)

        let before = try sandbox.sqlite("chatlog.db", ".dump")
        for arguments in [["list"], ["log", "--text", "x"], ["show", "01a21a65-5b7c-77d3-9bea-9ac56f67bb0b"], ["key", "status"]] {
            let result = try sandbox.chatlog(arguments, env: wrongEnv)
            #expect(result.status == 77, "\(arguments): \(result)")
            #expect(result.err.contains(expected), "expected fingerprint missing: \(result)")
            #expect(result.err.contains(given), "given fingerprint missing: \(result)")
            #expect(result.stdout.isEmpty)
        }
        // Compared logically: opening a store (GRDB's DatabasePool) rewrites file pages even when
        // nothing is stored.
        #expect(try sandbox.sqlite("chatlog.db", ".dump") == before, "a wrong key changed the store")
        #expect(try sandbox.list().map(\.message_count) == [1])
    }

    @Test(arguments: [exampleKeyFromREADME, allZeroKey])
    func placeholderKeysAreRefused(placeholder: String) throws {
        let sandbox = try Sandbox()
        sandbox.addSecret(placeholder)
        let env = sandbox.baseEnvironment.merging(["CHATLOG_MASTER_KEY": placeholder]) { $1 }
        let result = try sandbox.chatlog(["init"], env: env)
        #expect(result.status == 77, "\(result)")
        #expect(!sandbox.exists("chatlog.db"))

        try sandbox.initStore()
        let list = try sandbox.chatlog(["list"], env: env)
        #expect(list.status == 77, "\(list)")

        // The same key in a 0600 key file is refused too.
        try sandbox.write(placeholder + "\n", to: "placeholder.key", mode: 0o600)
        let fileEnv = sandbox.baseEnvironment.merging(["CHATLOG_MASTER_KEY_FILE": "placeholder.key"]) { $1 }
        #expect(try sandbox.chatlog(["list"], env: fileEnv).status == 77)
    }

    @Test func malformedKeyIsRefused() throws {
        let sandbox = try Sandbox()
        let short = Data(repeating: 7, count: 16).base64EncodedString()
        for bad in ["not base64 at all!", short, sandbox.key + "AAAA"] {
            let env = sandbox.baseEnvironment.merging(["CHATLOG_MASTER_KEY": bad]) { $1 }
            let result = try sandbox.chatlog(["init"], env: env)
            #expect(result.status == 77, "\(result)")
            #expect(!result.err.contains(bad), "the refused key was echoed")
        }
        #expect(!sandbox.exists("chatlog.db"))
    }

    @Test func keyFromDotEnvInTheWorkingDirectoryWorks() throws {
        let sandbox = try Sandbox()
        try sandbox.write("# chatlog\nCHATLOG_MASTER_KEY=\(sandbox.key)\n", to: ".env", mode: 0o600)
        let env = sandbox.baseEnvironment
        let created = try sandbox.chatlog(["init"], env: env)
        #expect(created.status == 0, "\(created)")
        let logged = try sandbox.chatlog(["log", "--text", "via .env"], env: env)
        #expect(logged.status == 0, "\(logged)")
        let status = try sandbox.chatlog(["key", "status", "--json"], env: env)
        #expect(status.status == 0, "\(status)")
        let source = try JSONDecoder().decode(KeyStatusJSON.self, from: status.stdout).master_key_source
        #expect(source.contains(".env"), "\(source)")
        // The same store opens with the key from the environment: it is the same key.
        #expect(try sandbox.list().map(\.message_count) == [1])
    }

    @Test func environmentWinsOverDotEnv() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        try sandbox.write("CHATLOG_MASTER_KEY=\(sandbox.makeKey())\n", to: ".env", mode: 0o600)
        #expect(try sandbox.chatlog(["list"]).status == 0)
        #expect(try sandbox.chatlog(["list"], env: sandbox.baseEnvironment).status == 77)
    }

    @Test func dotEnvReadableByOthersIsRefused() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        try sandbox.write("CHATLOG_MASTER_KEY=\(sandbox.key)\n", to: ".env", mode: 0o644)
        let result = try sandbox.chatlog(["list"], env: sandbox.baseEnvironment)
        #expect(result.status == 77, "\(result)")
        #expect(result.err.contains("0644"), "\(result)")
    }

    @Test func keyFileWithLooseModeIsRefusedNamingTheMode() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        try sandbox.write(sandbox.key + "\n", to: "master.key", mode: 0o600)
        let env = sandbox.baseEnvironment.merging(["CHATLOG_MASTER_KEY_FILE": sandbox.path("master.key")]) { $1 }
        let accepted = try sandbox.chatlog(["list", "--json"], env: env)
        #expect(accepted.status == 0, "a 0600 key file must work: \(accepted)")

        for mode: mode_t in [0o644, 0o640, 0o604] {
            #expect(chmod(sandbox.path("master.key"), mode) == 0)
            let result = try sandbox.chatlog(["list"], env: env)
            #expect(result.status == 77, "mode \(String(mode, radix: 8)): \(result)")
            #expect(result.err.contains("0" + String(mode, radix: 8)), "\(result)")
            #expect(result.err.contains("master.key"), "\(result)")
        }
        #expect(chmod(sandbox.path("master.key"), 0o400) == 0)
        #expect(try sandbox.chatlog(["list"], env: env).status == 0, "a 0400 key file must work")
    }

    @Test func keyFileThatIsASymlinkIsRefused() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        try sandbox.write(sandbox.key + "\n", to: "master.key", mode: 0o600)
        try FileManager.default.createSymbolicLink(atPath: sandbox.path("link.key"), withDestinationPath: "master.key")
        let env = sandbox.baseEnvironment.merging(["CHATLOG_MASTER_KEY_FILE": "link.key"]) { $1 }
        let result = try sandbox.chatlog(["list"], env: env)
        #expect(result.status == 77, "\(result)")
    }
}
