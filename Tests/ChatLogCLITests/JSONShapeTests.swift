import Foundation
import Testing

/// `init` on an existing store checks the key; `--json` values are typed (numbers, booleans,
/// `null` for absent values, never their text in quotes), one shape per field (README).
@Suite struct JSONShapeTests {
    @Test func initOnAnExistingStoreWithTheWrongKeyIsExit77() throws {
        let sandbox = try Sandbox()
        let fingerprint = try sandbox.initStore()
        let wrong = sandbox.environment.merging(["CHATLOG_MASTER_KEY": sandbox.makeKey()]) { $1 }
        for arguments in [["init"], ["init", "--json"]] {
            let result = try sandbox.chatlog(arguments, env: wrong)
            #expect(result.status == 77, "\(arguments): \(result)")
            #expect(result.err.contains("wrong master key"), "\(result)")
            #expect(result.stdout.isEmpty, "\(result)")
        }
        let status = try JSONDecoder().decode(KeyStatusJSON.self, from: try sandbox.chatlog(["key", "status", "--json"]).stdout)
        #expect(status.master_key_fingerprint == fingerprint)
        // With the right key: exit 0, and it says which key opens it.
        let again = try sandbox.chatlog(["init"])
        #expect(again.status == 0, "\(again)")
        #expect(again.out.contains("already exists") && again.out.contains(fingerprint), "\(again)")
    }

    /// `"key" : value` pairs of pretty-printed JSON whose value is quoted text.
    private func quotedLiterals(_ text: String) -> [String] {
        text.matches(of: /"([a-z_]+)" : "(true|false|null|-?[0-9]+(\.[0-9]+)?)"/).map { String($0.output.0) }
    }

    @Test func initJSONHasABooleanAndEveryJSONOutputIsTyped() throws {
        let sandbox = try Sandbox()
        let created = try sandbox.chatlog(["init", "--json"])
        #expect(created.status == 0, "\(created)")
        #expect(created.out.contains("\"created\" : true"), "\(created)")
        let existing = try sandbox.chatlog(["init", "--json"])
        #expect(existing.out.contains("\"created\" : false"), "\(existing)")
        #expect(existing.out.contains("\"master_key_fingerprint\" : \""), "\(existing)")
        let logged = try sandbox.log(["--title", "t", "--text", "hello", "--model", "m", "--prompt-tokens", "3"])
        try sandbox.write("{\"messages\": [{\"role\": \"user\", \"content\": \"imported\"}]}\n", to: "in.jsonl", mode: 0o600)

        var outputs: [String: String] = [:]
        for arguments in [
            ["init", "--json"], ["key", "status", "--json"], ["stats", "--json"], ["stats", "--by", "model", "--json"],
            ["import", "--format", "openai-jsonl", "in.jsonl", "--json"], ["key", "rotate", "--dry-run", "--json"],
            ["key", "rotate", "--new", "--json"], ["key", "retire", "--json"], ["backup", "b.db", "--json"], ["verify", "--json"],
            ["list", "--json"], ["show", logged.conversation_id, "--json"], ["search", "hello", "--json"],
            ["prune", "--older-than", "3650d", "--dry-run", "--json"],
        ] {
            let result = try sandbox.chatlog(arguments)
            #expect(result.status == 0, "\(arguments): \(result)")
            #expect(quotedLiterals(result.out).isEmpty, "\(arguments) prints typed values as text: \(quotedLiterals(result.out))")
            outputs[arguments.joined(separator: " ")] = result.out
        }
        // Absent values are null, not missing.
        #expect(outputs["stats --json"]?.contains("\"group\" : null") == true, "\(outputs["stats --json"] ?? "")")
        #expect(outputs["key status --json"]?.contains("\"retired_at\" : null") == true)
        #expect(outputs["key rotate --dry-run --json"]?.contains("\"new_key_id\" : null") == true)
        #expect(outputs["key rotate --dry-run --json"]?.contains("\"dry_run\" : true") == true)
        #expect(outputs["verify --json"]?.contains("\"ok\" : true") == true)
        #expect(outputs["verify --json"]?.contains("\"repairs\" : null") == true, "\(outputs["verify --json"] ?? "")")
        let removed = try sandbox.chatlog(["rm", logged.conversation_id, "--json"])
        #expect(removed.status == 0, "\(removed)")
        #expect(removed.out.contains("\"deleted\" : 1") && removed.out.contains("\"deleted_messages\" : null"), "\(removed)")
        #expect(removed.out.contains("\"messages_not_found\" : null") && quotedLiterals(removed.out).isEmpty, "\(removed)")
        let imported = outputs["import --format openai-jsonl in.jsonl --json"] ?? ""
        #expect(imported.contains("\"conversations\" : 1"), "\(imported)")
    }

    /// `key retire` keeps an index key a proxy token still needs, and says so (text and JSON).
    @Test func retireSaysWhichKeyItKeptForAProxyToken() throws {
        let sandbox = try Sandbox()
        _ = try sandbox.initStore()
        let created = try sandbox.chatlog(["token", "create", "batch-app"])
        #expect(created.status == 0, "\(created)")
        let rotated = try sandbox.chatlog(["key", "rotate", "--index", "--new"])
        #expect(rotated.status == 0, "\(rotated)")
        let retired = try sandbox.chatlog(["key", "retire"])
        #expect(retired.status == 0, "\(retired)")
        #expect(retired.out.contains("no unused decrypt-only key to retire"), "\(retired)")
        #expect(retired.out.contains("kept key") && retired.out.contains("batch-app") && retired.out.contains("revoke"), "\(retired)")
        let json = try sandbox.chatlog(["key", "retire", "--json"])
        #expect(json.out.contains("\"kept_for_proxy_tokens\"") && json.out.contains("\"batch-app\"") && json.out.contains("\"retired\" : ["), "\(json)")
        // Revoked, the token needs nothing: the key goes.
        #expect(try sandbox.chatlog(["token", "revoke", "batch-app"]).status == 0)
        let after = try sandbox.chatlog(["key", "retire"])
        #expect(after.out.contains("retired key") && !after.out.contains("kept key"), "\(after)")
    }
}
