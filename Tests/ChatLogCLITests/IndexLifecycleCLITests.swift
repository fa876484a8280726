import Foundation
import Testing

/// The search index's life cycle through the CLI (docs/SECURITY.md, "Search index";
/// docs/OPERATIONS.md, "Damaged rows"): deleted and re-keyed terms leave the files, damaged rows
/// can be deleted, `verify` finds stale index entries and `verify --repair` fixes them.
@Suite struct IndexLifecycleCLITests {
    /// A conversation of two messages holding a unique secret word, and another conversation.
    struct Store {
        let doomed: String
        let first: String
        let second: String
        let other: String
    }

    static let secret = "quokkaflux zymurgist obelisklantern"

    func makeStore(_ sandbox: Sandbox) throws -> Store {
        try sandbox.initStore()
        let first = try sandbox.log(["--title", "doomed", "--text", "the secret is \(Self.secret)"])
        let second = try sandbox.log(["--conversation", first.conversation_id, "--text", "noted \(Self.secret) and kayaks"])
        let other = try sandbox.log(["--title", "kept", "--text", "ordinary words about kayaks"])
        return Store(doomed: first.conversation_id, first: first.message_id, second: second.message_id, other: other.conversation_id)
    }

    /// The blinded terms and search row ids the index holds for `messages`, read with sqlite3.
    func indexed(_ sandbox: Sandbox, messages: [String]) throws -> (terms: [String], rows: [String]) {
        let list = messages.map { "'\($0)'" }.joined(separator: ",")
        let rows = try sandbox.sqlite("chatlog.db", "SELECT seq FROM messages WHERE id IN (\(list))").split(separator: "\n").map(String.init)
        let terms = try sandbox.sqlite(
            "chatlog.db", "SELECT DISTINCT term FROM message_terms_instance WHERE doc IN (\(rows.joined(separator: ",")))"
        ).split(separator: "\n").map(String.init)
        return (terms, rows)
    }

    /// Terms (their last six characters: FTS5 stores a term after the prefix it shares with the
    /// previous one) found in the raw bytes of `files`, and rows of the instance view.
    func leftovers(_ sandbox: Sandbox, terms: [String], rows: [String], files: [String] = ["chatlog.db", "chatlog.db-wal"]) throws -> [String] {
        var found: [String] = []
        for file in files {
            guard let data = FileManager.default.contents(atPath: sandbox.path(file)) else { continue }
            for term in terms where data.range(of: Data(term.utf8.suffix(6))) != nil { found.append("\(file): \(term)") }
        }
        for term in terms {
            let count = try sandbox.sqlite("chatlog.db", "SELECT count(*) FROM message_terms_instance WHERE term = '\(term)'")
            if count != "0" { found.append("instance view: \(term) × \(count)") }
        }
        if !rows.isEmpty {
            let count = try sandbox.sqlite("chatlog.db", "SELECT count(*) FROM message_terms_instance WHERE doc IN (\(rows.joined(separator: ",")))")
            if count != "0" { found.append("instance view: \(count) pairs of deleted rows") }
        }
        return found
    }

    /// Moves the second message's ciphertext into the first: the first can no longer be opened.
    func damageFirst(_ sandbox: Sandbox, _ store: Store) throws {
        try sandbox.sqlite(
            "chatlog.db", "UPDATE messages SET content = (SELECT content FROM messages WHERE id = '\(store.second)') WHERE id = '\(store.first)'")
    }

    @Test func rmRotateRetireAndBackupLeaveNoDeletedOrOldKeyTerm() throws {
        // The reproduction of the security review: rm, rotate the index key twice (the second
        // with --vacuum), retire both old keys, back up; no file may keep the deleted terms.
        let sandbox = try Sandbox()
        let store = try makeStore(sandbox)
        let deleted = try indexed(sandbox, messages: [store.first, store.second])
        let secretTerms = try indexed(sandbox, messages: [store.first]).terms
        #expect(secretTerms.count >= 5, "\(secretTerms)")
        let keptUnderFirstKey = try indexed(sandbox, messages: [try sandbox.show(store.other).messages[0].id]).terms

        #expect(try sandbox.chatlog(["rm", store.doomed]).status == 0)
        #expect(try leftovers(sandbox, terms: secretTerms, rows: deleted.rows) == [], "after rm")
        #expect(try sandbox.chatlog(["key", "rotate", "--index", "--new"]).status == 0)
        #expect(try leftovers(sandbox, terms: keptUnderFirstKey, rows: []) == [], "old-key terms after the rotation")
        #expect(try sandbox.chatlog(["key", "retire"]).status == 0)
        #expect(try sandbox.chatlog(["key", "rotate", "--index", "--new", "--vacuum"]).status == 0)
        #expect(try sandbox.chatlog(["key", "retire"]).status == 0)
        #expect(try sandbox.chatlog(["backup", "copy.db"]).status == 0)
        #expect(
            try leftovers(sandbox, terms: secretTerms + keptUnderFirstKey, rows: deleted.rows, files: ["chatlog.db", "chatlog.db-wal", "copy.db"]) == [])
        let verify = try sandbox.chatlog(["verify"])
        #expect(verify.status == 0, "\(verify)")
        #expect(try sandbox.chatlog(["search", "kayaks", "--json"]).out.contains(store.other))
    }

    @Test func retiringAnIndexKeyIsRefusedUntilDeletedTermsAreMerged() throws {
        let sandbox = try Sandbox()
        _ = try makeStore(sandbox)
        #expect(try sandbox.chatlog(["key", "rotate", "--index", "--new"]).status == 0)
        // What a rotation killed after its last batch, before its merge, leaves behind.
        try sandbox.sqlite("chatlog.db", "INSERT INTO chatlog_meta (name, value) VALUES ('search_scrub_pending', 1)")
        let verify = try sandbox.chatlog(["verify"])
        #expect(verify.status == 0 && verify.out.contains("NOTE message_terms.(segments)"), "a note, not a failure: \(verify)")
        #expect(try jsonObject(try sandbox.chatlog(["verify", "--json"]).stdout)["unmerged_deletions"] as? Bool == true)
        let refused = try sandbox.chatlog(["key", "retire"])
        #expect(refused.status != 0 && refused.err.contains("key rotate --index"), "\(refused)")
        #expect(try sandbox.chatlog(["key", "rotate", "--index"]).status == 0)
        #expect(try sandbox.chatlog(["key", "retire"]).status == 0)
        let after = try sandbox.chatlog(["verify"])
        #expect(after.status == 0 && !after.out.contains("NOTE"), "\(after)")
    }

    @Test func rmDeletesAConversationWithADamagedMessageAndLeavesNoTerms() throws {
        let sandbox = try Sandbox()
        let store = try makeStore(sandbox)
        let deleted = try indexed(sandbox, messages: [store.first, store.second])
        let secretTerms = try indexed(sandbox, messages: [store.first]).terms
        try damageFirst(sandbox, store)
        #expect(try sandbox.chatlog(["verify"]).status == 4)

        let rm = try sandbox.chatlog(["rm", store.doomed])
        #expect(rm.status == 0 && rm.out.contains("deleted 1 conversation"), "\(rm)")
        #expect(try sandbox.list().map(\.id) == [store.other])
        #expect(try leftovers(sandbox, terms: secretTerms, rows: deleted.rows) == [])
        let verify = try sandbox.chatlog(["verify"])
        #expect(verify.status == 0, "\(verify)")
    }

    @Test func pruneDeletesDamagedConversationsAndReportsCounts() throws {
        let sandbox = try Sandbox()
        let store = try makeStore(sandbox)
        let deleted = try indexed(sandbox, messages: [store.first, store.second])
        let secretTerms = try indexed(sandbox, messages: [store.first]).terms
        try damageFirst(sandbox, store)
        try sandbox.sqlite("chatlog.db", "UPDATE conversations SET updated_at = updated_at - 90 * 86400000 WHERE id = '\(store.doomed)'")

        let prune = try sandbox.chatlog(["prune", "--older-than", "30d", "--json"])
        #expect(prune.status == 0, "\(prune)")
        let counts = try jsonObject(prune.stdout)
        #expect(counts["conversations"] as? Int == 1 && counts["messages"] as? Int == 2, "\(prune)")
        #expect(try sandbox.list().map(\.id) == [store.other])
        #expect(try leftovers(sandbox, terms: secretTerms, rows: deleted.rows) == [])
        #expect(try sandbox.chatlog(["verify"]).status == 0)
    }

    @Test func rmByMessageIDDeletesOnlyThatMessage() throws {
        let sandbox = try Sandbox()
        let store = try makeStore(sandbox)
        let deleted = try indexed(sandbox, messages: [store.first])
        try damageFirst(sandbox, store)

        let rm = try sandbox.chatlog(["rm", "--message", store.first, "--json"])
        #expect(rm.status == 0, "\(rm)")
        #expect(try jsonObject(rm.stdout)["deleted_messages"] as? Int == 1, "\(rm)")
        #expect(try sandbox.show(store.doomed).messages.map(\.id) == [store.second])
        #expect(try leftovers(sandbox, terms: [], rows: deleted.rows) == [])
        #expect(try sandbox.chatlog(["verify"]).status == 0)
        let missing = try sandbox.chatlog(["rm", "--message", store.first])
        #expect(missing.status == 66 && missing.out.contains("1 not found"), "\(missing)")
        #expect(try sandbox.chatlog(["rm", "--message", "not-a-uuid"]).status == 64)
    }

    @Test func verifyRepairDeletesDamagedMessagesAndClearsDamagedValues() throws {
        let sandbox = try Sandbox()
        let store = try makeStore(sandbox)
        try damageFirst(sandbox, store)
        // A conversation title moved to another conversation.
        try sandbox.sqlite(
            "chatlog.db", "UPDATE conversations SET title = (SELECT title FROM conversations WHERE id = '\(store.doomed)') WHERE id = '\(store.other)'")
        let before = try sandbox.chatlog(["verify"])
        #expect(before.status == 4 && before.out.contains(store.first) && before.out.contains(store.other), "\(before)")
        #expect(try sandbox.chatlog(["verify"]).stdout == before.stdout, "verify without --repair changes nothing")

        let repair = try sandbox.chatlog(["verify", "--repair"])
        #expect(repair.status == 0, "\(repair)")
        #expect(repair.out.contains("REPAIRED messages.content of row \(store.first): cannot be opened: message deleted"), "\(repair)")
        #expect(repair.out.contains("REPAIRED conversations.title of row \(store.other): cannot be opened: value cleared"), "\(repair)")
        #expect(repair.out.contains("all well"), "\(repair)")
        #expect(try sandbox.show(store.doomed).messages.map(\.id) == [store.second])
        #expect(try sandbox.chatlog(["verify"]).status == 0)
    }

    @Test func verifyReportsStaleIndexEntriesAndRepairRemovesThem() throws {
        let sandbox = try Sandbox()
        let store = try makeStore(sandbox)
        let rows = try indexed(sandbox, messages: [store.first]).rows
        // A message deleted behind the index's back: its terms stay, at a row no message has.
        try sandbox.sqlite("chatlog.db", "DELETE FROM messages WHERE id = '\(store.first)'")
        let verify = try sandbox.chatlog(["verify"])
        #expect(verify.status == 4, "\(verify)")
        #expect(verify.out.contains("search row \(rows[0])") && verify.out.contains("stale: a deleted row"), "\(verify)")

        let repair = try sandbox.chatlog(["verify", "--repair"])
        #expect(repair.status == 0 && repair.out.contains("stale entries of a deleted row removed"), "\(repair)")
        #expect(try leftovers(sandbox, terms: [], rows: rows) == [])
    }

    @Test func pruneBelowOneDayNeedsForce() throws {
        let sandbox = try Sandbox()
        let store = try makeStore(sandbox)
        for age in ["0d", "12h", "0s"] {
            let refused = try sandbox.chatlog(["prune", "--older-than", age])
            #expect(refused.status == 64, "\(refused)")
            #expect(refused.err.contains("--force"), "\(refused)")
        }
        #expect(try sandbox.list().count == 2, "nothing deleted")
        #expect(try sandbox.chatlog(["prune", "--older-than", "0s", "--dry-run"]).status == 0)
        let forced = try sandbox.chatlog(["prune", "--older-than", "0s", "--force", "--json"])
        #expect(forced.status == 0, "\(forced)")
        #expect(try jsonObject(forced.stdout)["conversations"] as? Int == 2)
        _ = store
    }
}
