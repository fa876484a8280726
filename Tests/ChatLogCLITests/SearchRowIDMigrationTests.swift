import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Migration 0011 (the index's row id becomes messages.seq; time_lag; docs/FORMAT.md): a store as
/// migrations 0001–0010 and the writers of that schema left it converts in place, answers every
/// search as a store written by this chatlog does, verifies clean and is smaller; a migration
/// killed part-way leaves the old store, which the next open converts.
@Suite(.serialized) struct SearchRowIDMigrationTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let words = ["harbour", "lantern", "kayak", "tide", "gull", "anchor", "rope", "sail", "keel", "mast", "buoy", "reef", "oar", "cove"]

    /// An openai-jsonl corpus in import order: recent conversations, then older history, then both
    /// interleaved; a few messages share a millisecond with another conversation's.
    static func corpus(conversations: Int, seed: UInt64) -> Data {
        var random = SeededRandom(seed: seed)
        let now: Int64 = 1_760_000_000_000
        var lines: [String] = []
        var shared: [Int64] = []
        for index in 0..<conversations {
            let recent = index < conversations / 3 || (index >= 2 * conversations / 3 && random.next() % 2 == 0)
            var time = recent ? now + Int64(index) * 600_000 : now - 86_400_000 * Int64(1 + random.next() % 400)
            var messages: [String] = []
            for turn in 0..<(2 + Int(random.next() % 7)) {
                if !shared.isEmpty, random.next() % 12 == 0 { time = shared[Int(random.next() % UInt64(shared.count))] }
                shared.append(time)
                let count = 3 + Int(random.next() % 10)
                let text = (0..<count).map { _ in words[Int(Double(words.count) * pow(Double(random.next() % 10_000) / 10_000, 2))] }
                    .joined(separator: " ")
                let date = ISO8601DateFormatter.string(
                    from: Date(timeIntervalSince1970: Double(time) / 1000), timeZone: TimeZone(identifier: "UTC")!,
                    formatOptions: [.withInternetDateTime, .withFractionalSeconds])
                messages.append("{\"role\":\"\(turn % 2 == 0 ? "user" : "assistant")\",\"content\":\"\(text)\",\"created_at\":\"\(date)\"}")
                time += Int64(1 + random.next() % 90_000)
            }
            lines.append("{\"title\":\"c\(index)\",\"messages\":[\(messages.joined(separator: ","))]}")
        }
        return Data((lines.joined(separator: "\n") + "\n").utf8)
    }

    /// `old` rebuilt from `new` (made by this chatlog) as migrations 0001–0010 and that schema's
    /// writers left it: the same rows, search_rowid = created_at·2^20 + n (n counting the messages
    /// of that millisecond in insertion order), the index's row ids = search_rowid, no time_lag.
    static func makeOld(_ sandbox: Sandbox, from new: String, to old: String) throws {
        var sql = ""
        let files = try FileManager.default.contentsOfDirectory(atPath: repository.appendingPathComponent("migrations").path)
            .filter { $0.hasSuffix(".sql") && $0 < "0011" }.sorted()
        #expect(files.count == 10 && files.first == "0001_initial.sql", "\(files)")
        for file in files { sql += try String(contentsOf: repository.appendingPathComponent("migrations/" + file), encoding: .utf8) + "\n" }
        sql += try sandbox.sqlite(new, "SELECT sql FROM sqlite_master WHERE name = 'grdb_migrations'") + ";\n"
        sql += "ATTACH '\(sandbox.path(new))' AS new;\n"
        sql += "INSERT INTO grdb_migrations SELECT identifier FROM new.grdb_migrations WHERE identifier < '0011';\n"
        let columns = "seq, id, conversation_seq, position, role, created_at, model, prompt_tokens, completion_tokens, latency_ms, finish_reason, key_id, content, metadata, index_key_id"
        sql += """
            INSERT INTO messages (\(columns), search_rowid)
            SELECT \(columns), created_at * 1048576 + row_number() OVER (PARTITION BY created_at ORDER BY seq) - 1 FROM new.messages ORDER BY seq;
            INSERT INTO message_terms (rowid, terms)
            SELECT m.search_rowid, group_concat(v.term, ' ') FROM new.message_terms_instance v JOIN main.messages m ON m.seq = v.doc
            GROUP BY m.search_rowid ORDER BY m.search_rowid;

            """
        let tables = try sandbox.sqlite(
            new,
            """
            SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%' AND name NOT LIKE 'message_terms%'
            AND name NOT IN ('messages', 'grdb_migrations', 'message_totals', 'key_usage') ORDER BY name
            """
        ).split(separator: "\n").map(String.init) + ["message_totals", "key_usage"]
        for table in tables { sql += "INSERT OR REPLACE INTO main.\(table) SELECT * FROM new.\(table);\n" }
        let script = sandbox.path("make-old.sql")
        try Data(sql.utf8).write(to: URL(fileURLWithPath: script))
        _ = try sandbox.sqlite(old, ".read '\(script)'")
    }

    /// Newest and relevance answers (ids, in order, with scores) for every word and a few pairs,
    /// with and without a time window, at two page sizes.
    static func answers(_ sandbox: Sandbox, _ db: String) throws -> [String] {
        var out: [String] = []
        let queries = words + ["harbour lantern", "tide -gull", "\"rope sail\""]
        for query in queries {
            for extra in [["--sort", "newest", "--limit", "40"], ["--sort", "relevance", "--limit", "40"], ["--sort", "newest", "--limit", "3", "--offset", "2"],
                ["--sort", "newest", "--since", "2024-06-01", "--until", "2025-10-01"], ["--sort", "newest", "--role", "assistant", "--limit", "7"]]
            {
                let result = try sandbox.chatlog(["--db", db, "search", "--json"] + extra + ["--", query])
                guard result.status == 0 else { throw CLITestError("search failed: \(result)") }
                let hits = try jsonPage(result.stdout, "hits").map { hit in
                    "\(hit["message_id"] as? String ?? "?")/\(hit["score"].map { String(describing: $0) } ?? "-")"
                }
                out.append("\(query) \(extra): \(hits.joined(separator: " "))")
            }
        }
        return out
    }

    static func usedBytes(_ sandbox: Sandbox, _ db: String) throws -> Int {
        Int(try sandbox.sqlite(db, "SELECT (p.page_count - f.freelist_count) * s.page_size FROM pragma_page_count p, pragma_freelist_count f, pragma_page_size s"))!
    }

    /// Bytes of the search index's pages (`dbstat`).
    static func indexBytes(_ sandbox: Sandbox, _ db: String) throws -> Int {
        Int(try sandbox.sqlite(db, "SELECT sum(pgsize) FROM dbstat WHERE name LIKE 'message_terms%' OR name = 'messages_by_search_rowid'"))!
    }

    static func makeStores(_ sandbox: Sandbox, conversations: Int) throws {
        try sandbox.initStore(db: "new.db")
        try Data(corpus(conversations: conversations, seed: 0x0011)).write(to: sandbox.url("corpus.jsonl"))
        let imported = try sandbox.chatlog(["--db", "new.db", "import", "--format", "openai-jsonl", "corpus.jsonl"])
        try #require(imported.status == 0, "\(imported)")
        try makeOld(sandbox, from: "new.db", to: "old.db")
        try #require(try sandbox.sqlite("old.db", "SELECT count(*) FROM pragma_table_info('messages') WHERE name = 'search_rowid'") == "1")
    }

    @Test func aStoreOfTheOldSchemaConvertsAndAnswersAsBefore() throws {
        let sandbox = try Sandbox()
        try Self.makeStores(sandbox, conversations: 400)
        let expected = try Self.answers(sandbox, "new.db")
        #expect(expected.contains { $0.contains("/") }, "the queries find something")
        let before = try Self.usedBytes(sandbox, "old.db")
        let indexBefore = try Self.indexBytes(sandbox, "old.db")

        // The first open converts; the store verifies clean.
        let verified = try sandbox.chatlog(["--db", "old.db", "verify", "--json"])
        #expect(verified.status == 0, "\(verified)")
        #expect(try sandbox.sqlite("old.db", "SELECT count(*) FROM pragma_table_info('messages') WHERE name IN ('search_rowid', 'time_lag')") == "1")
        #expect(try sandbox.sqlite("old.db", "SELECT count(*) FROM sqlite_master WHERE name = 'messages_by_search_rowid'") == "0")
        // The same rows, lags and (term, row id) pairs as the store this chatlog wrote.
        for query in [
            "SELECT seq, time_lag FROM messages ORDER BY seq", "SELECT term, doc FROM message_terms_instance ORDER BY term, doc",
            "SELECT k, v FROM message_terms_config ORDER BY k",
        ] {
            #expect(try sandbox.sqlite("old.db", query) == (try sandbox.sqlite("new.db", query)), "\(query)")
        }
        #expect(try sandbox.sqlite("old.db", "SELECT count(*) FROM messages WHERE time_lag > 0") != "0", "older history was imported late")
        #expect(try Self.answers(sandbox, "old.db") == expected)
        // Smaller: the index's row-id deltas fall from 5–6-byte varints to 1–2 bytes, and the
        // search_rowid column and its unique index are gone.
        let after = try Self.usedBytes(sandbox, "old.db")
        let indexAfter = try Self.indexBytes(sandbox, "old.db")
        #expect(indexAfter < indexBefore / 2 && after < before, "converted: \(after) bytes in use, \(indexAfter) in the index; before: \(before), \(indexBefore)")
        // Logging and searching go on as usual.
        let logged = try sandbox.log(["--db", "old.db", "--text", "a new kayak and a new lantern"])
        let found = try sandbox.chatlog(["--db", "old.db", "search", "--json", "--sort", "newest", "--limit", "1", "kayak lantern"])
        #expect(try jsonPage(found.stdout, "hits").first?["message_id"] as? String == logged.message_id, "\(found)")
        #expect(try sandbox.chatlog(["--db", "old.db", "verify"]).status == 0)
    }

    /// The open is killed (SIGKILL from a SQLite progress handler, chatlog-test-driver `migrate`)
    /// at points spread over the migration; each time the file is still the old store, and the
    /// next `chatlog verify` converts it and finds it clean, with the same answers.
    @Test func aKilledMigrationLeavesTheOldStoreAndTheNextOpenConverts() throws {
        let sandbox = try Sandbox()
        try Self.makeStores(sandbox, conversations: 300)
        let expected = try Self.answers(sandbox, "new.db")
        let driver = try Hardening.driverURL()
        func migrate(_ db: String, killAfter: Int) throws -> CommandResult {
            try run(
                ["migrate", "--db", sandbox.path(db), "--kill-after-progress", String(killAfter)], env: sandbox.environment, stdin: nil,
                cwd: sandbox.directory, executable: driver, timeout: 300)
        }
        func progress(_ result: CommandResult) throws -> Int {
            guard result.status == 0, let count = result.out.split(separator: " ").last.flatMap({ Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) })
            else { throw CLITestError("migrate did not finish: \(result)") }
            return count
        }
        // Progress-handler calls of a whole open with the migration, and of an open without one.
        try StoreFiles.copy(sandbox.path("old.db"), to: sandbox.path("count.db"))
        let whole = try progress(try migrate("count.db", killAfter: Int.max))
        let baseline = try progress(try migrate("count.db", killAfter: Int.max))
        try #require(whole > baseline + 20, "the migration is long enough to be killed part-way: \(whole) vs \(baseline)")

        let trials = 8
        for trial in 1...trials {
            let name = "trial-\(trial).db"
            try StoreFiles.copy(sandbox.path("old.db"), to: sandbox.path(name))
            let at = baseline + (whole - baseline) * trial / (trials + 1)
            let killed = try migrate(name, killAfter: at)
            #expect(killed.status == 128 + SIGKILL, "trial \(trial) at \(at) of \(whole): \(killed)")
            // The old store, whole: the old column, no 0011 in the migration table, its index intact.
            #expect(try sandbox.sqlite(name, "SELECT count(*) FROM pragma_table_info('messages') WHERE name = 'search_rowid'") == "1", "trial \(trial)")
            #expect(try sandbox.sqlite(name, "SELECT count(*) FROM grdb_migrations WHERE identifier >= '0011'") == "0", "trial \(trial)")
            #expect(try sandbox.sqlite(name, "PRAGMA integrity_check") == "ok", "trial \(trial)")
            let verified = try sandbox.chatlog(["--db", name, "verify"])
            #expect(verified.status == 0, "trial \(trial): \(verified)")
            #expect(try sandbox.sqlite(name, "SELECT count(*) FROM pragma_table_info('messages') WHERE name = 'search_rowid'") == "0", "trial \(trial)")
            if trial == 1 || trial == trials { #expect(try Self.answers(sandbox, name) == expected, "trial \(trial)") }
            StoreFiles.remove(sandbox.path(name))
        }
    }
}

