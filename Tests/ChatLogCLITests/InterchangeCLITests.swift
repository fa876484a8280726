import ChatLog
import ChatLogTestSupport
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// `chatlog import`, `export`, `stats`, `rm`, `prune`, `verify` and `backup`, end to end: the
/// built executable in a sandbox, judged by its exit code, output and the files it leaves.
@Suite struct InterchangeCLITests {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")
    static func fixture(_ path: String) -> String { fixtures.appendingPathComponent(path).path }
    static let badFixtures: [(file: String, line: Int, problem: String)] = [
        ("truncated.jsonl", 3, "not valid JSON"),
        ("not-json.jsonl", 2, "not valid JSON"),
        ("messages-is-string.jsonl", 1, "\"messages\" must be an array"),
        ("role-is-number.jsonl", 2, "messages[0].role must be a string"),
        ("missing-messages.jsonl", 2, "missing \"messages\""),
        ("invalid-utf8.jsonl", 2, "not valid UTF-8"),
    ]

    // MARK: - export | import

    @Test func exportPipedIntoImportRoundTripsExactly() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let corpus = GeneratedCorpus(seed: 7, conversations: 50)
        try corpus.write(to: sandbox.path("corpus.jsonl"))
        let seeded = try sandbox.chatlog(["import", "--format", "openai-jsonl", "--json", "corpus.jsonl"])
        #expect(seeded.status == 0, "\(seeded)")
        #expect(try jsonObject(seeded.stdout)["conversations"] as? Int == 50)
        // One conversation written by `chatlog log`: NUL bytes in the content (from stdin) and
        // metadata that is a JSON array, not an object.
        let logged = try sandbox.log(
            ["--title", "logged", "--metadata", "[\"x\", {\"y\": null}, 1.5]"], stdin: Data("nul\u{0}inside\u{0}".utf8))

        let first = try sandbox.chatlog(["export"])
        #expect(first.status == 0, "\(first)")
        let lines = first.stdout.split(separator: 0x0A)
        #expect(lines.count == 51)
        // The export holds exactly what was imported (every field, times to the millisecond).
        let exported = try Dictionary(
            uniqueKeysWithValues: lines.map { line -> (String, JSONValue) in
                let value = try JSONDecoder().decode(JSONValue.self, from: Data(line))
                guard case .object(let object) = value, case .string(let id)? = object["id"] else { throw CLITestError("no id in \(value)") }
                return (id, value)
            })
        for conversation in corpus.conversations {
            #expect(exported[conversation.id] == conversation.json, "conversation \(conversation.id) changed on import")
        }
        guard case .object(let loggedLine)? = exported[logged.conversation_id], case .array(let messages)? = loggedLine["messages"],
            case .object(let message)? = messages.first
        else { throw CLITestError("the logged conversation is not in the export") }
        #expect(message["content"] == .string("nul\u{0}inside\u{0}"))
        #expect(message["metadata"] == .array([.string("x"), .object(["y": .null]), .number(1.5)]))

        // Through a real pipe into another store.
        try sandbox.initStore(db: "copy.db")
        let piped = try sandbox.shell("\"$0\" export | \"$0\" import --db copy.db --format openai-jsonl --json -")
        #expect(piped.status == 0, "\(piped)")
        let report = try jsonObject(piped.stdout)
        #expect(report["conversations"] as? Int == 51)
        #expect(report["messages"] as? Int == corpus.messageCount + 1)
        #expect(report["duplicates"] as? Int == 0)
        #expect((report["skipped"] as? [Any])?.isEmpty == true)

        // The copy exports byte for byte the same, and shows the same transcripts and list.
        let second = try sandbox.chatlog(["export", "--db", "copy.db"])
        #expect(second.status == 0, "\(second)")
        #expect(second.stdout == first.stdout, "the second export differs")
        #expect(try sandbox.list(["--limit", "100"]) == sandbox.list(["--db", "copy.db", "--limit", "100"]))
        for id in [logged.conversation_id, corpus.conversations[0].id, corpus.conversations[49].id] {
            let original = try sandbox.chatlog(["show", id, "--json"])
            let copy = try sandbox.chatlog(["show", id, "--json", "--db", "copy.db"])
            #expect(original.status == 0 && copy.status == 0)
            #expect(original.stdout == copy.stdout, "show \(id) differs")
        }

        // Idempotent: the same pipe again adds nothing.
        let again = try sandbox.shell("\"$0\" export | \"$0\" import --db copy.db --format openai-jsonl --json -")
        #expect(again.status == 0, "\(again)")
        let againReport = try jsonObject(again.stdout)
        #expect(againReport["conversations"] as? Int == 0)
        #expect(againReport["messages"] as? Int == 0)
        #expect(againReport["duplicates"] as? Int == 51)
        #expect(try sandbox.chatlog(["export", "--db", "copy.db"]).stdout == first.stdout)
    }

    @Test func fixturesOfEveryFormatImportOnceAndThenAreDuplicates() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        for (format, file, conversations) in [
            ("openai-jsonl", "openai/sample.jsonl", 5), ("llm", "llm/logs.db", 11), ("chatgpt", "chatgpt/conversations.json", 4),
        ] {
            let copy = sandbox.path((file as NSString).lastPathComponent)
            try FileManager.default.copyItem(atPath: Self.fixture(file), toPath: copy)
            let first = try sandbox.chatlog(["import", "--format", format, "--batch-size", "3", "--json", copy])
            #expect(first.status == 0, "\(first)")
            #expect(try jsonObject(first.stdout)["conversations"] as? Int == conversations, "\(format)")
            let second = try sandbox.chatlog(["import", "--format", format, copy])
            #expect(second.status == 0, "\(second)")
            #expect(second.out.contains("imported 0 conversations (0 messages); \(conversations) already imported; 0 skipped"), "\(second)")
        }
        #expect(try sandbox.list(["--limit", "100"]).count == 20)
    }

    // MARK: - Bad input

    @Test func badFixturesAreRefusedByDefaultWithTheirLineAndChangeNothing() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        #expect(try sandbox.chatlog(["import", "--format", "openai-jsonl", Self.fixture("openai/sample.jsonl")]).status == 0)
        let before = try Self.snapshot(sandbox)
        for bad in Self.badFixtures {
            let result = try sandbox.chatlog(["import", "--format", "openai-jsonl", Self.fixture("openai/bad/" + bad.file)])
            #expect(result.status == 65, "\(bad.file): \(result)")
            #expect(result.err.contains("line \(bad.line): \(bad.problem)"), "\(bad.file): \(result)")
            #expect(result.err.hasPrefix("chatlog: error: "), "\(bad.file): \(result)")
            #expect(result.stdout.isEmpty, "\(bad.file): \(result)")
            #expect(try Self.snapshot(sandbox) == before, "\(bad.file) changed the store")
        }
    }

    @Test func onErrorSkipImportsTheGoodLinesAndReportsTheBadOnes() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let result = try sandbox.chatlog(
            ["import", "--format", "openai-jsonl", "--on-error", "skip", "--json", Self.fixture("openai/bad/invalid-utf8.jsonl")])
        #expect(result.status == 0, "\(result)")
        let report = try jsonObject(result.stdout)
        #expect(report["conversations"] as? Int == 1)
        let skipped = try #require(report["skipped"] as? [String])
        #expect(skipped.count == 2)
        #expect(skipped.first?.hasPrefix("line 2: not valid UTF-8") == true, "\(skipped)")
        #expect(skipped.last?.hasPrefix("line 3: not valid UTF-8") == true, "\(skipped)")
        #expect(result.err.contains("chatlog: skipped line 2: not valid UTF-8"), "\(result)")
        #expect(result.err.contains("chatlog: skipped line 3: not valid UTF-8"), "\(result)")

        let text = try sandbox.chatlog(["import", "--format", "openai-jsonl", "--on-error", "skip", Self.fixture("openai/bad/not-json.jsonl")])
        #expect(text.status == 0, "\(text)")
        #expect(text.err.contains("chatlog: skipped line 2: not valid JSON"), "\(text)")
        // The filler line is the one line 1 of invalid-utf8.jsonl already imported.
        #expect(text.out.contains("imported 0 conversations (0 messages); 2 already imported; 1 skipped"), "\(text)")
        #expect(try sandbox.list().count == 1)
    }

    @Test func malformedJSONLinesAreRefusedWithTheirLine() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        #expect(try sandbox.chatlog(["import", "--format", "openai-jsonl", Self.fixture("openai/sample.jsonl")]).status == 0)
        let before = try Self.snapshot(sandbox)
        let good = "{\"messages\": [{\"role\": \"user\", \"content\": \"fine\"}]}"
        let cases: [(line: String, problem: String)] = [
            ("this is { not json", "not valid JSON"),
            ("{\"messages\": [{\"role\": \"user\", \"content\": \"x\", \"usage\": {\"prompt_tokens\": \"many\"}}]}",
                "\"messages[0].usage.prompt_tokens\" must be a non-negative integer"),
            ("{\"messages\": [{\"role\": \"user\", \"content\": true}]}", "messages[0].content must be a string, an array of parts or null"),
            ("{\"messages\": [], \"created_at\": \"last tuesday\"}", "\"created_at\" must be an RFC 3339 time"),
            ("{\"id\": \"0190718a-3c5e-7b2d-9f41-6a8e2d4c1b99\", \"title\": \"no messages\"}", "missing \"messages\""),
        ]
        for (index, bad) in cases.enumerated() {
            let name = "bad-\(index).jsonl"
            try Data((good + "\n" + good.replacingOccurrences(of: "fine", with: "also fine") + "\n" + bad.line + "\n").utf8)
                .write(to: sandbox.url(name))
            let result = try sandbox.chatlog(["import", "--format", "openai-jsonl", name])
            #expect(result.status == 65, "\(bad.problem): \(result)")
            #expect(result.err.contains("line 3: \(bad.problem)"), "\(result)")
            #expect(try Self.snapshot(sandbox) == before, "\(bad.problem): the store changed")
        }
    }

    /// A 50 MiB line: a clear error naming the line and its length, with bounded memory (the
    /// driver's `measure` reports the command's peak resident set size).
    @Test func fiftyMegabyteLineIsRefusedWithoutLoadingIt() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let before = try Self.snapshot(sandbox)
        let length = 50 << 20
        try Self.writeHugeLineFile(
            sandbox.path("huge.jsonl"), length: length, before: ["{\"messages\": [{\"role\": \"user\", \"content\": \"first\"}]}"],
            after: ["{\"messages\": [{\"role\": \"user\", \"content\": \"third\"}]}"])
        let driver = try ChatLogBinary.url().deletingLastPathComponent().appendingPathComponent("chatlog-test-driver")
        for policy in ["fail", "skip"] {
            let rss = sandbox.path("rss-\(policy).txt")
            let result = try run(
                ["measure", "--rusage-file", rss, "--", try ChatLogBinary.url().path, "import", "--format", "openai-jsonl",
                    "--on-error", policy, "huge.jsonl"],
                env: sandbox.environment, stdin: nil, cwd: sandbox.directory, executable: driver, timeout: 120)
            let message = "line 2: the line is \(length) bytes; the limit is 32 MiB"
            if policy == "fail" {
                #expect(result.status == 65, "\(result)")
                #expect(result.err.contains(message), "\(result)")
                #expect(try Self.snapshot(sandbox) == before)
            } else {
                #expect(result.status == 0, "\(result)")
                #expect(result.err.contains("chatlog: skipped " + message), "\(result)")
                #expect(result.out.contains("imported 2 conversations"), "\(result)")
            }
            let report = try String(contentsOfFile: rss, encoding: .utf8)
            let kib = try #require(Int(report.trimmingCharacters(in: .whitespacesAndNewlines).replacingOccurrences(of: "maxrss_kib ", with: "")))
            // About 100 MiB here (a 32 MiB read buffer and the runtime): a parse of the line would need
            // several copies of its 50 MiB.
            #expect(kib < 160 * 1024, "peak RSS \(kib) KiB")
        }
    }

    @Test func nonSQLiteFileAsLLMIsRefused() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let before = try Self.snapshot(sandbox)
        try Data("this is a text file, not an llm logs.db\n".utf8).write(to: sandbox.url("notes.db"))
        let result = try sandbox.chatlog(["import", "--format", "llm", "notes.db"])
        #expect(result.status == 65, "\(result)")
        #expect(result.err.contains("notes.db is not a SQLite database"), "\(result)")
        #expect(try Self.snapshot(sandbox) == before)
    }

    @Test func llmDatabaseFromANewerLLMIsRefused() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let before = try Self.snapshot(sandbox)
        try FileManager.default.copyItem(atPath: Self.fixture("llm/logs.db"), toPath: sandbox.path("logs.db"))
        try sandbox.sqlite(
            "logs.db", "INSERT INTO _llm_migrations (name, applied_at) VALUES ('m099_from_the_future', '2027-01-01 00:00:00.000000')")
        let bytes = try Data(contentsOf: sandbox.url("logs.db"))
        let result = try sandbox.chatlog(["import", "--format", "llm", "logs.db"])
        #expect(result.status == 65, "\(result)")
        #expect(result.err.contains("unknown llm logs.db version: migration m099_from_the_future"), "\(result)")
        #expect(try Self.snapshot(sandbox) == before)
        // The llm file is only read.
        #expect(try Data(contentsOf: sandbox.url("logs.db")) == bytes)
        #expect(!sandbox.exists("logs.db-wal") && !sandbox.exists("logs.db-journal"))
    }

    @Test func jsonObjectAsChatGPTExportIsRefused() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let before = try Self.snapshot(sandbox)
        try Data("{\"conversations\": [{\"id\": \"x\", \"mapping\": {}}]}".utf8).write(to: sandbox.url("conversations.json"))
        let result = try sandbox.chatlog(["import", "--format", "chatgpt", "conversations.json"])
        #expect(result.status == 65, "\(result)")
        #expect(
            result.err.contains("conversations.json is not a ChatGPT export: expected a JSON array of conversations, found an object"),
            "\(result)")
        #expect(try Self.snapshot(sandbox) == before)
    }

    // MARK: - rm and prune delete for real

    @Test func rmRemovesTheSealedBytesFromTheFiles() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        var ids: [String] = []
        for index in 0..<4 {
            let first = try sandbox.log(["--title", "title \(index)", "--subject", "person-\(index)", "--text", "question numbat\(index)"])
            _ = try sandbox.log([
                "--conversation", first.conversation_id, "--role", "assistant", "--metadata", "{\"n\": \(index)}", "--text",
                "answer numbat\(index)",
            ])
            ids.append(first.conversation_id)
        }
        let victims = [ids[0], ids[2]]
        let sealed = try Self.sealedValues(sandbox, of: victims)
        #expect(sealed.count == 2 * (2 + 2 + 1))
        let filesBefore = sandbox.storeFiles()
        for value in sealed { #expect(filesBefore.values.contains { $0.range(of: value) != nil }, "the check below could not fail") }

        let removed = try sandbox.chatlog(["rm", "--json"] + victims)
        #expect(removed.status == 0, "\(removed)")
        #expect(try jsonObject(removed.stdout)["deleted"] as? Int == 2)
        Self.expectGone(sealed, from: sandbox)
        for index in [0, 2] { #expect(try Self.searchCount(sandbox, "numbat\(index)") == 0) }
        for index in [1, 3] { #expect(try Self.searchCount(sandbox, "numbat\(index)") == 2) }
        #expect(try sandbox.list().map(\.id).sorted() == [ids[1], ids[3]].sorted())

        // An unknown id is reported (exit 66) while the others are deleted.
        let partly = try sandbox.chatlog(["rm", ids[1], victims[0]])
        #expect(partly.status == 66, "\(partly)")
        #expect(partly.out.contains("deleted 1 conversation; 1 not found"), "\(partly)")
        #expect(try sandbox.chatlog(["verify"]).status == 0)
    }

    @Test func pruneRemovesOldConversationsForRealAndDryRunChangesNothing() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        var lines: [String] = []
        for index in 0..<6 {
            // Even: last activity in 2020. Odd: no times given, so "now".
            let time = index % 2 == 0 ? ", \"created_at\": \"2020-03-0\(index + 1)T10:00:00.000Z\"" : ""
            lines.append(
                "{\"id\": \"0190718a-3c5e-7b2d-9f41-6a8e2d4c1b1\(index)\", \"title\": \"t\(index)\"\(time), \"messages\": ["
                    + "{\"role\": \"user\", \"content\": \"hello bilby\(index)\"\(time)}, "
                    + "{\"role\": \"assistant\", \"content\": \"hi bilby\(index)\"\(time)}]}")
        }
        try Data((lines.joined(separator: "\n") + "\n").utf8).write(to: sandbox.url("mixed.jsonl"))
        #expect(try sandbox.chatlog(["import", "--format", "openai-jsonl", "mixed.jsonl"]).status == 0)
        let old = [0, 2, 4].map { "0190718a-3c5e-7b2d-9f41-6a8e2d4c1b1\($0)" }
        let sealed = try Self.sealedValues(sandbox, of: old)

        let before = try Self.snapshot(sandbox)
        // Every row of every table (FTS5's own included), as the sqlite3 shell dumps them. (Not the
        // file's bytes: opening a store for any command rewrites header counters.)
        let rowsBefore = try sandbox.sqlite("chatlog.db", ".dump")
        let dry = try sandbox.chatlog(["prune", "--older-than", "30d", "--dry-run", "--json"])
        #expect(dry.status == 0, "\(dry)")
        #expect(try jsonObject(dry.stdout)["conversations"] as? Int == 3)
        #expect(try jsonObject(dry.stdout)["messages"] as? Int == 6)
        #expect(try Self.snapshot(sandbox) == before)
        #expect(try sandbox.sqlite("chatlog.db", ".dump") == rowsBefore, "--dry-run changed rows")
        #expect(try sandbox.list().count == 6)

        let pruned = try sandbox.chatlog(["prune", "--older-than", "30d", "--json"])
        #expect(pruned.status == 0, "\(pruned)")
        #expect(try jsonObject(pruned.stdout)["conversations"] as? Int == 3)
        #expect(try jsonObject(pruned.stdout)["messages"] as? Int == 6)
        Self.expectGone(sealed, from: sandbox)
        for index in [0, 2, 4] { #expect(try Self.searchCount(sandbox, "bilby\(index)") == 0) }
        for index in [1, 3, 5] { #expect(try Self.searchCount(sandbox, "bilby\(index)") == 2) }
        #expect(try sandbox.list().count == 3)
        #expect(try sandbox.chatlog(["verify"]).status == 0)
    }

    // MARK: - Export files

    @Test func exportFilesArePrivateNeverOverwrittenAndNeverThroughALink() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        #expect(try sandbox.chatlog(["import", "--format", "openai-jsonl", Self.fixture("openai/sample.jsonl")]).status == 0)
        let expected = try sandbox.chatlog(["export"]).stdout
        #expect(!expected.isEmpty)

        let written = try sandbox.chatlog(["export", "--output", "out.jsonl"])
        #expect(written.status == 0, "\(written)")
        #expect(sandbox.fileMode("out.jsonl") == 0o600)
        #expect(try Data(contentsOf: sandbox.url("out.jsonl")) == expected)

        // An existing file stays as it is without --force; --force replaces it with a 0600 file.
        try sandbox.write("keep me\n", to: "existing.jsonl", mode: 0o644)
        let refused = try sandbox.chatlog(["export", "--output", "existing.jsonl"])
        #expect(refused.status == 65, "\(refused)")
        #expect(refused.err.contains("existing.jsonl exists; use --force to replace it"), "\(refused)")
        #expect(try String(contentsOf: sandbox.url("existing.jsonl"), encoding: .utf8) == "keep me\n")
        let again = try sandbox.chatlog(["export", "--output", "out.jsonl"])
        #expect(again.status == 65, "\(again)")
        let forced = try sandbox.chatlog(["export", "--output", "existing.jsonl", "--force"])
        #expect(forced.status == 0, "\(forced)")
        #expect(try Data(contentsOf: sandbox.url("existing.jsonl")) == expected)
        #expect(sandbox.fileMode("existing.jsonl") == 0o600)

        // A symbolic link is refused, with or without --force, whether it points at a file or nowhere.
        try sandbox.write("the link's target\n", to: "target.txt", mode: 0o644)
        #expect(symlink("target.txt", sandbox.path("link.jsonl")) == 0)
        #expect(symlink("nowhere.txt", sandbox.path("dangling.jsonl")) == 0)
        for (link, force) in [("link.jsonl", false), ("link.jsonl", true), ("dangling.jsonl", true)] {
            let result = try sandbox.chatlog(["export", "--output", link] + (force ? ["--force"] : []))
            #expect(result.status == 65, "\(link) \(force): \(result)")
            #expect(result.err.contains("is a symbolic link"), "\(result)")
        }
        #expect(try String(contentsOf: sandbox.url("target.txt"), encoding: .utf8) == "the link's target\n")
        #expect(!sandbox.exists("nowhere.txt"))
        var info = stat()
        #expect(lstat(sandbox.path("link.jsonl"), &info) == 0 && (info.st_mode & S_IFMT) == S_IFLNK)
        // No temporary file is left behind.
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: sandbox.directory.path).filter { $0.contains(".partial") }
        #expect(leftovers.isEmpty, "\(leftovers)")
    }

    // MARK: - Verify

    @Test func verifyPassesOnAHealthyStoreAndNamesAFlippedByte() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        #expect(try sandbox.chatlog(["import", "--format", "openai-jsonl", Self.fixture("openai/sample.jsonl")]).status == 0)
        let healthy = try sandbox.chatlog(["verify"])
        #expect(healthy.status == 0, "\(healthy)")
        #expect(healthy.out.contains("checked 5 conversations, 15 messages"), "\(healthy)")
        #expect(healthy.out.contains("all well"), "\(healthy)")
        let healthyJSON = try jsonObject(try sandbox.chatlog(["verify", "--json"]).stdout)
        #expect(healthyJSON["ok"] as? Bool == true)
        #expect(healthyJSON["failure_count"] as? Int == 0)

        let id = try sandbox.sqlite("chatlog.db", "SELECT id FROM messages ORDER BY seq LIMIT 1 OFFSET 4")
        var hex = Array(try sandbox.sqlite("chatlog.db", "SELECT hex(content) FROM messages WHERE id = '\(id)'"))
        // Flip a bit of the last byte (in the MAC-protected ciphertext).
        let last = hex.count - 1
        hex[last] = hex[last] == "0" ? "1" : "0"
        try sandbox.sqlite("chatlog.db", "UPDATE messages SET content = X'\(String(hex))' WHERE id = '\(id)'")

        let broken = try sandbox.chatlog(["verify"])
        #expect(broken.status == 4, "\(broken)")
        #expect(broken.out.contains("FAIL messages.content of row \(id)"), "\(broken)")
        let json = try sandbox.chatlog(["verify", "--json"])
        #expect(json.status == 4, "\(json)")
        let report = try jsonObject(json.stdout)
        #expect(report["ok"] as? Bool == false)
        let failures = try #require(report["failures"] as? [[String: Any]])
        #expect(
            failures.contains { $0["table"] as? String == "messages" && $0["column"] as? String == "content" && $0["row"] as? String == id },
            "\(failures)")
    }

    @Test func verifyFindsAnIndexEntryNoMessageHolds() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        #expect(try sandbox.chatlog(["import", "--format", "openai-jsonl", Self.fixture("openai/sample.jsonl")]).status == 0)
        try sandbox.sqlite(
            "chatlog.db", "INSERT INTO message_terms (rowid, terms) VALUES ((SELECT max(seq) + 1000 FROM messages), 'aaaaaaaa')")
        let result = try sandbox.chatlog(["verify", "--json"])
        #expect(result.status == 4, "\(result)")
        let failures = try #require(try jsonObject(result.stdout)["failures"] as? [[String: Any]])
        #expect(failures.contains { $0["table"] as? String == "message_terms" && $0["row"] as? String == "-" }, "\(failures)")
    }

    // MARK: - Backup while writers run

    @Test func backupWhileFourWriterProcessesRun() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let driver = try ChatLogBinary.url().deletingLastPathComponent().appendingPathComponent("chatlog-test-driver")
        let writers = 4
        var conversations: [String] = []
        for writer in 0..<writers { conversations.append(try sandbox.log(["--title", "writer \(writer)", "--text", "start w\(writer)"]).conversation_id) }
        let stopFile = sandbox.path("stop")
        var processes: [(process: ChildProcess, output: String)] = []
        defer {
            // Never leave a writer behind, whatever happened.
            _ = FileManager.default.createFile(atPath: stopFile, contents: nil)
            for (process, _) in processes { process.signal(SIGTERM) }
        }
        for writer in 0..<writers {
            let output = sandbox.path("writer-\(writer).out")
            let process = try ChildProcess(
                driver.path,
                [
                    "append-loop", "--db", sandbox.path("chatlog.db"), "--conversation", conversations[writer], "--stop-file", stopFile,
                    "--seconds", "90", "--label", "w\(writer)",
                ], environment: sandbox.environment, directory: sandbox.directory.path, stdout: .file(output), stderr: .file(output + ".err"))
            processes.append((process, output))
        }
        func committed(_ writer: Int) -> Int {
            let text = (try? String(contentsOfFile: processes[writer].output, encoding: .utf8)) ?? ""
            return text.split(separator: "\n").filter { $0.hasPrefix("committed ") }.count
        }
        // Wait until every writer is going (a give-up bound, not a timing assertion).
        let deadline = Date().addingTimeInterval(60)
        while (0..<writers).contains(where: { committed($0) < 10 }), Date() < deadline { usleep(20_000) }
        let before = (0..<writers).map(committed)
        #expect(before.allSatisfy { $0 >= 10 }, "writers did not get going: \(before)")

        let backup = try sandbox.chatlog(["backup", "backup.db"])
        #expect(backup.status == 0, "\(backup)")

        _ = FileManager.default.createFile(atPath: stopFile, contents: nil)
        for (writer, (process, output)) in processes.enumerated() {
            let exit = try process.wait(timeout: 120)
            #expect(exit.succeeded, "writer \(writer) \(exit): \((try? String(contentsOfFile: output + ".err", encoding: .utf8)) ?? "")")
        }
        let totals = (0..<writers).map(committed)

        #expect(sandbox.fileMode("backup.db") == 0o600)
        let verified = try sandbox.chatlog(["verify", "--db", "backup.db", "--json"])
        #expect(verified.status == 0, "\(verified)")
        #expect(try jsonObject(verified.stdout)["ok"] as? Bool == true)
        for writer in 0..<writers {
            let transcript = try sandbox.show(conversations[writer])  // the live store: every append
            #expect(transcript.messages.count == 1 + totals[writer])
            let copy = try sandbox.chatlog(["show", conversations[writer], "--json", "--db", "backup.db"])
            #expect(copy.status == 0, "\(copy)")
            let contents = try JSONDecoder().decode(TranscriptJSON.self, from: copy.stdout).messages.map(\.content)
            let appended = Array(contents.dropFirst())
            #expect(contents.first == "start w\(writer)")
            #expect(appended.count >= before[writer], "writer \(writer): \(appended.count) in the backup, \(before[writer]) committed before it")
            #expect(appended.count <= totals[writer])
            #expect(appended == (0..<appended.count).map { "w\(writer) message \($0)" })
        }

        // A second backup to the same path is refused and changes nothing.
        let bytes = try Data(contentsOf: sandbox.url("backup.db"))
        let second = try sandbox.chatlog(["backup", "backup.db"])
        #expect(second.status == 65, "\(second)")
        #expect(second.err.contains("already exists"), "\(second)")
        #expect(try Data(contentsOf: sandbox.url("backup.db")) == bytes)
    }

    // MARK: - Stats

    @Test func statsMatchTheImportedData() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let corpus = GeneratedCorpus(seed: 11, conversations: 40)
        try corpus.write(to: sandbox.path("corpus.jsonl"))
        #expect(try sandbox.chatlog(["import", "--format", "openai-jsonl", "corpus.jsonl"]).status == 0)

        func expected(_ key: (GeneratedCorpus.Message) -> String?) -> [StatsJSON] {
            var rows: [String?: (Set<String>, Int, Int, Int)] = [:]
            for conversation in corpus.conversations {
                for message in conversation.messages {
                    var row = rows[key(message), default: ([], 0, 0, 0)]
                    row.0.insert(conversation.id)
                    row.1 += 1
                    row.2 += message.promptTokens ?? 0
                    row.3 += message.completionTokens ?? 0
                    rows[key(message)] = row
                }
            }
            return rows.map {
                StatsJSON(group: $0.key, conversations: $0.value.0.count, messages: $0.value.1, prompt_tokens: $0.value.2, completion_tokens: $0.value.3)
            }.sorted { ($0.group ?? "") < ($1.group ?? "") }
        }

        let total = try sandbox.chatlog(["stats", "--json"])
        #expect(total.status == 0, "\(total)")
        let rows = try jsonArray(total.stdout)
        #expect(rows.count == 1)
        #expect(Set(rows[0].keys) == ["group", "conversations", "messages", "prompt_tokens", "completion_tokens"], "\(rows)")
        #expect(rows[0]["group"] is NSNull)
        #expect(try JSONDecoder().decode([StatsJSON].self, from: total.stdout) == expected { _ in nil })
        #expect(rows[0]["messages"] as? Int == corpus.messageCount)

        for (by, key) in [
            ("model", { (message: GeneratedCorpus.Message) in message.model }), ("role", { $0.role }),
            ("day", { String($0.createdAt.prefix(10)) }),
        ] as [(String, (GeneratedCorpus.Message) -> String?)] {
            let result = try sandbox.chatlog(["stats", "--by", by, "--json"])
            #expect(result.status == 0, "\(result)")
            for row in try jsonArray(result.stdout) {
                #expect(Set(row.keys) == ["group", "conversations", "messages", "prompt_tokens", "completion_tokens"], "\(row)")
            }
            let decoded = try JSONDecoder().decode([StatsJSON].self, from: result.stdout)
            #expect(decoded == expected(key), "--by \(by)")
        }
        // Messages without a model form the null group.
        let byModel = try jsonArray(try sandbox.chatlog(["stats", "--by", "model", "--json"]).stdout)
        #expect(byModel.contains { $0["group"] is NSNull })

        let human = try sandbox.chatlog(["stats", "--by", "role"])
        #expect(human.status == 0)
        #expect(human.out.contains("ROLE") && human.out.contains("MESSAGES"), "\(human)")
    }

    // MARK: - Helpers

    struct StatsJSON: Codable, Equatable {
        let group: String?
        let conversations: Int
        let messages: Int
        let prompt_tokens: Int
        let completion_tokens: Int
    }

    /// What a refused import must not change: the whole export and the stats.
    struct Snapshot: Equatable {
        let export: Data
        let stats: Data
    }

    static func snapshot(_ sandbox: Sandbox) throws -> Snapshot {
        let export = try sandbox.chatlog(["export"])
        let stats = try sandbox.chatlog(["stats", "--json"])
        guard export.status == 0, stats.status == 0 else { throw CLITestError("snapshot failed: \(export)\n\(stats)") }
        return Snapshot(export: export.stdout, stats: stats.stdout)
    }

    static func searchCount(_ sandbox: Sandbox, _ query: String) throws -> Int {
        let result = try sandbox.chatlog(["search", query, "--json"])
        guard result.status == 0 else { throw CLITestError("search failed: \(result)") }
        return try jsonPage(result.stdout, "hits").count
    }

    /// The sealed values (raw bytes, read with the sqlite3 shell) of the conversations and their messages.
    static func sealedValues(_ sandbox: Sandbox, of ids: [String]) throws -> [Data] {
        let list = ids.map { "'\($0)'" }.joined(separator: ", ")
        let output = try sandbox.sqlite(
            "chatlog.db",
            """
            SELECT hex(title) FROM conversations WHERE id IN (\(list)) AND title IS NOT NULL
            UNION ALL SELECT hex(subject) FROM conversations WHERE id IN (\(list)) AND subject IS NOT NULL
            UNION ALL SELECT hex(metadata) FROM conversations WHERE id IN (\(list)) AND metadata IS NOT NULL
            UNION ALL SELECT hex(content) FROM messages WHERE conversation_seq IN (SELECT seq FROM conversations WHERE id IN (\(list)))
            UNION ALL SELECT hex(metadata) FROM messages
                WHERE metadata IS NOT NULL AND conversation_seq IN (SELECT seq FROM conversations WHERE id IN (\(list)));
            """)
        return try output.split(separator: "\n").map { line in
            var bytes: [UInt8] = []
            var index = line.startIndex
            while index < line.endIndex {
                let next = line.index(index, offsetBy: 2)
                guard let byte = UInt8(line[index..<next], radix: 16) else { throw CLITestError("not hex: \(line)") }
                bytes.append(byte)
                index = next
            }
            return Data(bytes)
        }
    }

    /// No sealed value, nor its nonce (bytes 5..<29), nor its MAC and ciphertext (29...), is
    /// left in the store's files.
    static func expectGone(_ sealed: [Data], from sandbox: Sandbox, sourceLocation: SourceLocation = #_sourceLocation) {
        let files = sandbox.storeFiles()
        #expect(files["chatlog.db"] != nil, sourceLocation: sourceLocation)
        for (name, bytes) in files {
            for value in sealed {
                #expect(bytes.range(of: value) == nil, "a deleted sealed value is still in \(name)", sourceLocation: sourceLocation)
                #expect(bytes.range(of: value.subdata(in: 5..<29)) == nil, "a deleted nonce is still in \(name)", sourceLocation: sourceLocation)
                #expect(bytes.range(of: value.subdata(in: 29..<value.count)) == nil, "a deleted ciphertext is still in \(name)", sourceLocation: sourceLocation)
            }
        }
    }

    static func writeHugeLineFile(_ path: String, length: Int, before: [String], after: [String]) throws {
        guard FileManager.default.createFile(atPath: path, contents: nil) else { throw CLITestError("cannot create \(path)") }
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        defer { try? handle.close() }
        try handle.write(contentsOf: Data(before.map { $0 + "\n" }.joined().utf8))
        let head = Data("{\"messages\": [{\"role\": \"user\", \"content\": \"".utf8)
        let tail = Data("\"}]}".utf8)
        try handle.write(contentsOf: head)
        var remaining = length - head.count - tail.count
        let chunk = Data(repeating: UInt8(ascii: "z"), count: 1 << 20)
        while remaining > 0 {
            let size = min(remaining, chunk.count)
            try handle.write(contentsOf: chunk.prefix(size))
            remaining -= size
        }
        try handle.write(contentsOf: tail + Data("\n".utf8))
        try handle.write(contentsOf: Data(after.map { $0 + "\n" }.joined().utf8))
    }
}

// MARK: - Generated conversations, written in the exact shape `chatlog export` writes

/// Conversations with every field chatlog exports, written as OpenAI JSONL lines whose JSON
/// equals what `chatlog export` prints for them once imported.
private struct GeneratedCorpus {
    struct Message {
        let id: String
        let role: String
        let content: String
        let createdAt: String
        let model: String?
        let promptTokens: Int?
        let completionTokens: Int?
        let latency: Int?
        let finishReason: String?
        let metadata: JSONValue?
    }

    struct Conversation {
        let id: String
        let title: String?
        let subject: String?
        let createdAt: String
        let metadata: JSONValue?
        let messages: [Message]

        /// The line `chatlog export` writes for this conversation, parsed.
        var json: JSONValue {
            var object: [String: JSONValue] = ["id": .string(id), "created_at": .string(createdAt)]
            if let title { object["title"] = .string(title) }
            if let subject { object["subject"] = .string(subject) }
            if let metadata { object["metadata"] = metadata }
            object["messages"] = .array(
                messages.map { message in
                    var fields: [String: JSONValue] = [
                        "id": .string(message.id), "role": .string(message.role), "content": .string(message.content),
                        "created_at": .string(message.createdAt),
                    ]
                    if let model = message.model { fields["model"] = .string(model) }
                    if message.promptTokens != nil || message.completionTokens != nil {
                        var usage: [String: JSONValue] = [:]
                        if let tokens = message.promptTokens { usage["prompt_tokens"] = .integer(Int64(tokens)) }
                        if let tokens = message.completionTokens { usage["completion_tokens"] = .integer(Int64(tokens)) }
                        fields["usage"] = .object(usage)
                    }
                    if let latency = message.latency { fields["latency_ms"] = .integer(Int64(latency)) }
                    if let reason = message.finishReason { fields["finish_reason"] = .string(reason) }
                    if let metadata = message.metadata {
                        fields["metadata"] = metadata
                        // OpenAI's own fields are repeated at the top level.
                        if case .object(let object) = metadata {
                            for key in ["tool_calls", "tool_call_id", "name"] { if let value = object[key] { fields[key] = value } }
                        }
                    }
                    return .object(fields)
                })
            return .object(object)
        }
    }

    let conversations: [Conversation]
    var messageCount: Int { conversations.reduce(0) { $0 + $1.messages.count } }

    init(seed: UInt64, conversations count: Int) {
        var state = seed
        func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        func pick<T>(_ values: [T]) -> T { values[Int(next() % UInt64(values.count))] }
        func uuid() -> String {
            var bytes = (0..<16).map { _ in UInt8(truncatingIfNeeded: next()) }
            bytes[6] = (bytes[6] & 0x0F) | 0x40
            bytes[8] = (bytes[8] & 0x3F) | 0x80
            let hex = bytes.map { String(format: "%02x", $0) }.joined()
            let parts = [hex.prefix(8), hex.dropFirst(8).prefix(4), hex.dropFirst(12).prefix(4), hex.dropFirst(16).prefix(4), hex.dropFirst(20)]
            return parts.joined(separator: "-")
        }
        func time() -> String {
            // Four days of November 2026, to the millisecond, and now and then an edge.
            let edges: [Int64] = [0, 999, -1, 1_719_826_202_750]
            let milliseconds = next() % 10 == 0 ? pick(edges) : 1_795_000_000_000 + Int64(next() % 345_600_000)
            return Timestamps.format(Date(timeIntervalSince1970: (Double(milliseconds) + 0.5) / 1000))
        }
        let texts = [
            "", "\u{0}", "plain", "Café crème — 東京で寿司を食べる 🍣", "nul\u{0}in\u{0}side", "two\nlines\r\n\ttab", "quote \" back \\ slash /",
            "\u{1B}[2Jescape", "👩🏽‍💻 🇫🇷 עברית", "\u{2028}\u{FEFF}",
        ]
        let metadata: [JSONValue?] = [
            nil, nil, nil, .object(["a": .object(["b": .array([.integer(1), .number(2.5), .bool(true), .null, .string("ü")])])]),
            .object([:]), .array([.string("x")]), .string("s"), .null,
            .object([
                "tool_calls": .array([.object(["id": .string("call_1"), "type": .string("function")])]), "tool_call_id": .string("call_0"),
                "name": .null,
            ]),
        ]
        var conversations: [Conversation] = []
        for index in 0..<count {
            var messages: [Message] = []
            for position in 0..<(index % 25 == 0 ? 0 : 1 + Int(next() % 4)) {
                messages.append(
                    Message(
                        id: uuid(), role: pick(["system", "user", "assistant", "tool"]),
                        content: pick(texts) + (next() % 2 == 0 ? " w\(index)x\(position)" : ""), createdAt: time(),
                        model: pick([nil, "gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet"]), promptTokens: next() % 3 == 0 ? nil : Int(next() % 5_000),
                        completionTokens: next() % 3 == 0 ? nil : Int(next() % 900), latency: next() % 2 == 0 ? nil : Int(next() % 60_000),
                        finishReason: pick([nil, "stop", "length"]), metadata: pick(metadata)))
            }
            conversations.append(
                Conversation(
                    id: uuid(), title: pick([nil, "", "Conversation \(index)", "Café ☕"]), subject: pick([nil, "user-\(index % 7)"]),
                    createdAt: time(), metadata: pick(metadata), messages: messages))
        }
        self.conversations = conversations
    }

    func write(to path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var data = Data()
        for conversation in conversations {
            data += try encoder.encode(conversation.json)
            data.append(0x0A)
        }
        try data.write(to: URL(fileURLWithPath: path))
    }
}
