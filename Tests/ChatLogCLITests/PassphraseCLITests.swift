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
