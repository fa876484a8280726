import ChatLogTestSupport
import Foundation
import Testing

// The conveniences an operator expects from `llm logs`, `gh` and `git`: short ids, `show
// --latest`, `list -n`/`--model`, JSON paging, output that fits the terminal, colour choices,
// Markdown, tool calls in `show`.

/// A store with conversations of chosen ids (imported as OpenAI JSONL, which keeps free ids).
private func sandboxWithIDs(_ ids: [String], model: String = "gpt-4o") throws -> Sandbox {
    let sandbox = try Sandbox()
    try sandbox.initStore()
    let lines = ids.enumerated().map { index, id in
        """
        {"id": "\(id)", "title": "conversation \(index)", "created_at": "2026-11-0\(index + 1)T10:00:00.000Z", \
        "messages": [{"role": "user", "content": "question number \(index) about pandas"}, \
        {"role": "assistant", "content": "answer \(index)", "model": "\(index == 0 ? "other-model" : model)"}]}
        """
    }
    try sandbox.write(lines.joined(separator: "\n") + "\n", to: "in.jsonl", mode: 0o600)
    let imported = try sandbox.chatlog(["import", "--format", "openai-jsonl", "in.jsonl"])
    guard imported.status == 0 else { throw CLITestError("import failed: \(imported)") }
    return sandbox
}

@Suite struct ShortIDTests {
    static let unique = "11111111-0000-7000-8000-000000000001"
    static let twinA = "33333333-0000-7000-8000-00000000000a"
    static let twinB = "33333333-0000-7000-8000-00000000000b"

    @Test func aUniquePrefixWorksWhereverAnIDDoes() throws {
        let sandbox = try sandboxWithIDs([Self.unique, Self.twinA, Self.twinB])
        let show = try sandbox.chatlog(["show", "11111111", "--json"])
        #expect(show.status == 0, "\(show)")
        #expect(try jsonObject(show.stdout)["id"] as? String == Self.unique)
        let upper = try sandbox.chatlog(["show", "33333333-0000-7000-8000-00000000000A", "--json"])
        #expect(try jsonObject(upper.stdout)["id"] as? String == Self.twinA, "\(upper)")

        let search = try sandbox.chatlog(["search", "pandas", "--conversation", "11111111", "--json"])
        #expect(try jsonPage(search.stdout, "hits").compactMap { $0["conversation_id"] as? String } == [Self.unique], "\(search)")
        let export = try sandbox.chatlog(["export", "--conversation", "11111111-00"])
        #expect(export.status == 0 && export.out.split(separator: "\n").count == 1 && export.out.contains(Self.unique), "\(export)")
        let logged = try sandbox.log(["--conversation", "33333333-0000-7000-8000-00000000000b", "--text", "more"])
        #expect(logged.conversation_id == Self.twinB)
        let removed = try sandbox.chatlog(["rm", "11111111"])
        #expect(removed.status == 0, "\(removed)")
        #expect(try sandbox.list().map(\.id).contains(Self.unique) == false)
    }

    @Test func anAmbiguousPrefixFailsListingTheCandidates() throws {
        let sandbox = try sandboxWithIDs([Self.unique, Self.twinA, Self.twinB])
        for arguments in [["show", "33333333"], ["rm", "33333333-0000"], ["search", "pandas", "--conversation", "33333333"],
            ["export", "--conversation", "33333333"], ["log", "--conversation", "33333333", "--text", "x"]]
        {
            let result = try sandbox.chatlog(arguments)
            #expect(result.status == 65, "\(arguments): \(result)")
            #expect(result.err.contains(Self.twinA) && result.err.contains(Self.twinB), "\(arguments): \(result)")
            #expect(result.err.split(separator: "\n").count == 1, "\(result)")
        }
        #expect(try sandbox.list().count == 3, "nothing was removed")
        let missing = try sandbox.chatlog(["show", "44444444"])
        #expect(missing.status == 66, "\(missing)")
        let short = try sandbox.chatlog(["show", "3333333"])
        #expect(short.status == 64, "fewer than 8 characters: \(short)")
    }

    @Test func humanOutputShowsShortIDsAndJSONFullOnes() throws {
        let sandbox = try sandboxWithIDs([Self.unique, Self.twinA, Self.twinB])
        let list = try sandbox.chatlog(["list"])
        #expect(list.status == 0, "\(list)")
        let firstColumn = list.out.split(separator: "\n").dropFirst().compactMap { $0.split(separator: " ").first.map(String.init) }
        #expect(firstColumn.contains("11111111"), "\(list)")
        // The twins differ only in their last character: their short ids are the whole id.
        #expect(firstColumn.contains(Self.twinA) && firstColumn.contains(Self.twinB), "\(list)")
        #expect(!list.out.contains(Self.unique), "\(list)")
        #expect(try sandbox.list().map(\.id).contains(Self.unique))

        let search = try sandbox.chatlog(["search", "pandas", "--conversation", Self.unique])
        #expect(search.out.contains("conversation 11111111 ") && !search.out.contains(Self.unique), "\(search)")
    }
}

@Suite struct ListAndShowConvenienceTests {
    @Test func showLatestAndWithoutAnID() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let empty = try sandbox.chatlog(["show", "--latest"])
        #expect(empty.status == 66, "\(empty)")
        _ = try sandbox.log(["--title", "older", "--text", "one"])
        let newest = try sandbox.log(["--title", "newer", "--text", "two"])
        let latest = try sandbox.chatlog(["show", "--latest", "--json"])
        #expect(latest.status == 0, "\(latest)")
        #expect(try jsonObject(latest.stdout)["id"] as? String == newest.conversation_id)
        // Not on a terminal, `show` without an id is a usage error (a script must say what it wants).
        let bare = try sandbox.chatlog(["show"])
        #expect(bare.status == 64 && bare.err.contains("--latest"), "\(bare)")
        let both = try sandbox.chatlog(["show", "--latest", newest.conversation_id])
        #expect(both.status == 64, "\(both)")
    }

    @Test func listNAllAndModel() throws {
        let ids = (0..<7).map { String(format: "5555%04x-0000-7000-8000-000000000000", $0) }
        let sandbox = try sandboxWithIDs(ids)
        let two = try sandbox.chatlog(["list", "-n", "2", "--json"])
        let page = try JSONDecoder().decode(ListPageJSON.self, from: two.stdout)
        #expect(page.conversations.count == 2)
        let cursor = try #require(page.next_cursor)
        let rest = try JSONDecoder().decode(ListPageJSON.self, from: try sandbox.chatlog(["list", "-n", "10", "--cursor", cursor, "--json"]).stdout)
        #expect(rest.conversations.count == 5 && rest.next_cursor == nil)
        #expect(Set(page.conversations.map(\.id) + rest.conversations.map(\.id)) == Set(ids))

        let all = try sandbox.chatlog(["list", "-n", "0", "--json"])
        let everything = try JSONDecoder().decode(ListPageJSON.self, from: all.stdout)
        #expect(everything.conversations.map(\.id) == ids.reversed() && everything.next_cursor == nil, "\(all)")
        let allHuman = try sandbox.chatlog(["list", "-n", "0"])
        #expect(allHuman.out.split(separator: "\n").count == 1 + ids.count && !allHuman.out.contains("more:"), "\(allHuman)")

        let byModel = try JSONDecoder().decode(ListPageJSON.self, from: try sandbox.chatlog(["list", "--model", "other-model", "--json"]).stdout)
        #expect(byModel.conversations.map(\.id) == [ids[0]])
    }

    @Test func searchPagesSayHowManyMatchedAndWhetherMoreFollow() throws {
        let ids = (0..<5).map { String(format: "6666%04x-0000-7000-8000-000000000000", $0) }
        let sandbox = try sandboxWithIDs(ids)
        for sort in ["relevance", "newest"] {
            var seen: [String] = []
            var offset = 0
            var pages = 0
            while true {
                let result = try sandbox.chatlog(["search", "pandas", "-n", "2", "--offset", String(offset), "--sort", sort, "--json"])
                #expect(result.status == 0, "\(result)")
                let object = try jsonObject(result.stdout)
                let hits = try jsonPage(result.stdout, "hits")
                seen += hits.compactMap { $0["conversation_id"] as? String }
                for hit in hits { #expect(hit.keys.contains("model") && hit.keys.contains("score"), "one shape: \(hit.keys)") }
                if sort == "relevance" { #expect(object["matched"] as? Int == 5, "\(result)") }
                pages += 1
                guard object["more"] as? Bool == true, let next = object["next_offset"] as? Int else {
                    #expect(object["next_offset"] is NSNull, "\(result)")
                    break
                }
                offset = next
            }
            #expect(pages == 3 && Set(seen) == Set(ids), "\(sort): \(seen)")
        }
        let human = try sandbox.chatlog(["search", "pandas", "-n", "2"])
        #expect(human.out.contains("5 matches; showing 1–2; more: --offset 2"), "\(human)")
    }
}

@Suite struct TerminalOutputTests {
    @Test func linesFitTheWidth() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let long = String(repeating: "Zażółć gęślą jaźń 東京都 ", count: 8)
        _ = try sandbox.log(["--title", long, "--subject", long, "--model", "a-model-with-a-long-name", "--text", long + " pandas " + long])
        var env = sandbox.environment
        env["COLUMNS"] = "60"
        for arguments in [["list"], ["search", "pandas"]] {
            let result = try sandbox.chatlog(arguments, env: env)
            #expect(result.status == 0, "\(result)")
            for line in result.out.split(separator: "\n") {
                #expect(displayWidth(String(line)) <= 60, "\(arguments): \(line.debugDescription)")
            }
        }
    }

    @Test func colourFollowsTheChoiceNoColorAndTerm() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let logged = try sandbox.log(["--title", "Colour", "--text", "find the pandas here"])
        let escape = "\u{1B}["
        let always = try sandbox.chatlog(["show", logged.conversation_id, "--color", "always"])
        #expect(always.out.contains(escape), "\(always)")
        let search = try sandbox.chatlog(["search", "pandas", "--color", "always"])
        #expect(search.out.contains("\u{1B}[1mpandas\u{1B}[0m"), "\(search)")
        for (arguments, extra) in [
            (["show", logged.conversation_id, "--color", "never"], [:]), (["show", logged.conversation_id], [:]),
            (["search", "pandas", "--color", "auto"], ["NO_COLOR": "1"]), (["search", "pandas"], ["TERM": "dumb"]),
        ] as [([String], [String: String])] {
            let result = try sandbox.chatlog(arguments, env: sandbox.environment.merging(extra) { $1 })
            #expect(result.status == 0 && !result.out.contains(escape), "\(arguments) \(extra): \(result)")
        }
        let wrong = try sandbox.chatlog(["list", "--color", "sometimes"])
        #expect(wrong.status == 64, "\(wrong)")
    }

    @Test func showDisplaysToolCallsMetadataAndMarkdown() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let record = """
            {"id": "77777777-0000-7000-8000-000000000001", "title": "Weather", "messages": [\
            {"role": "user", "content": "Weather in Paris?"}, \
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", \
            "function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}}]}, \
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C, cloudy"}, \
            {"role": "assistant", "content": "It is 18 C and cloudy.", "metadata": {"source": "weather-api"}}]}
            """
        try sandbox.write(record + "\n", to: "tools.jsonl", mode: 0o600)
        let imported = try sandbox.chatlog(["import", "--format", "openai-jsonl", "tools.jsonl"])
        #expect(imported.status == 0, "\(imported)")
        let show = try sandbox.chatlog(["show", "77777777"])
        #expect(show.status == 0, "\(show)")
        #expect(show.out.contains("tool call get_weather({\"city\": \"Paris\"})") && show.out.contains("call_1"), "\(show)")
        #expect(show.out.contains("result of tool call call_1"), "\(show)")
        #expect(show.out.contains("weather-api"), "\(show)")
        let markdown = try sandbox.chatlog(["show", "77777777", "--markdown"])
        #expect(markdown.status == 0, "\(markdown)")
        #expect(markdown.out.hasPrefix("# Weather\n"), "\(markdown)")
        #expect(markdown.out.contains("\n## user\n") && markdown.out.contains("\n## tool\n"), "\(markdown)")
        #expect(markdown.out.contains("get_weather"), "\(markdown)")
    }
}

/// Terminal columns of a line (wide CJK characters take two).
private func displayWidth(_ text: String) -> Int {
    text.reduce(0) { width, character in
        let value = character.unicodeScalars.first?.value ?? 0
        return width + ((0x2E80...0x9FFF).contains(value) || (0xFF00...0xFF60).contains(value) ? 2 : 1)
    }
}

@Suite struct StatusCommandTests {
    @Test func statusNamesTheStoreKeySourceSizesAndCounts() throws {
        let sandbox = try Sandbox()
        let missing = try sandbox.chatlog(["status"])
        #expect(missing.status == 66 && missing.err.contains("chatlog.db"), "\(missing)")
        try sandbox.initStore()
        _ = try sandbox.log(["--text", "one"])
        _ = try sandbox.log(["--text", "two"])
        let result = try sandbox.chatlog(["status", "--json"])
        #expect(result.status == 0, "\(result)")
        let object = try jsonObject(result.stdout)
        let path = try #require(object["path"] as? String)
        #expect(path.hasPrefix("/") && path.hasSuffix("/chatlog.db"), "\(result)")
        #expect((object["key_source"] as? String)?.contains("CHATLOG_MASTER_KEY") == true, "\(result)")
        #expect(object["conversations"] as? Int == 2 && object["messages"] as? Int == 2, "\(result)")
        let files = try #require(object["files"] as? [String: Any])
        #expect((files["db"] as? Int ?? 0) > 0, "\(result)")
        let human = try sandbox.chatlog(["status"])
        #expect(human.out.contains(path) && human.out.contains("2 conversations, 2 messages"), "\(human)")
    }
}

@Suite struct ProgressLineTests {
    @Test func importPrintsPlainLinesWithATotalWhenNotATerminal() throws {
        let ids = (0..<6).map { String(format: "8888%04x-0000-7000-8000-000000000000", $0) }
        let sandbox = try sandboxWithIDs([])
        let lines = ids.map { #"{"id": "\#($0)", "messages": [{"role": "user", "content": "hello"}]}"# }
        try sandbox.write(lines.joined(separator: "\n") + "\n\n", to: "six.jsonl", mode: 0o600)
        // Every update printed (no wait between lines), each with the total.
        let eager = try sandbox.chatlog(
            ["import", "--format", "openai-jsonl", "--batch-size", "2", "six.jsonl"],
            env: sandbox.environment.merging(["CHATLOG_PROGRESS_SECONDS": "0"]) { $1 })
        #expect(eager.status == 0, "\(eager)")
        let progress = eager.err.split(separator: "\n").filter { $0.hasPrefix("chatlog: import: ") }
        #expect(progress.first == "chatlog: import: 2 of 6 conversations (33%)", "\(eager)")
        #expect(progress.last == "chatlog: import: 6 of 6 conversations (100%)", "\(eager)")
        #expect(progress.count >= 3, "\(eager)")
        // With an interval longer than the job, it prints only where it ended (set explicitly: with
        // the default 5 s a loaded machine could print one more line).
        let quiet = try sandbox.chatlog(
            ["import", "--format", "openai-jsonl", "--batch-size", "2", "six.jsonl"],
            env: sandbox.environment.merging(["CHATLOG_PROGRESS_SECONDS": "3600"]) { $1 })
        #expect(quiet.err.split(separator: "\n").filter { $0.hasPrefix("chatlog: import: ") } == ["chatlog: import: 6 of 6 conversations (100%)"], "\(quiet)")
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/script")))
    func importShowsABarWithTheTotalOnATerminal() throws {
        let sandbox = try sandboxWithIDs([])
        let lines = (0..<6).map { #"{"messages": [{"role": "user", "content": "hello \#($0)"}]}"# }
        try sandbox.write(lines.joined(separator: "\n") + "\n", to: "six.jsonl", mode: 0o600)
        let shown = try runOnTerminal(
            "\(try ChatLogBinary.url().path) import --format openai-jsonl --batch-size 2 six.jsonl", answers: [],
            env: sandbox.environment.merging(["TERM": "xterm"]) { $1 }, cwd: sandbox.directory)
        #expect(shown.status == 0, "\(shown.screen)")
        #expect(shown.screen.contains("import [###") && shown.screen.contains("] 100% 6/6 conversations"), "\(shown.screen)")
    }

    @Test func keyRotateSaysWhatItWillDoFirst() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        _ = try sandbox.log(["--text", "something"])
        let result = try sandbox.chatlog(["key", "rotate", "--new", "--batch-size", "100"])
        #expect(result.status == 0, "\(result)")
        let first = result.err.split(separator: "\n").first.map(String.init) ?? ""
        #expect(first.hasPrefix("chatlog: key rotate: will make a new data key active, then re-seal"), "\(result)")
        #expect(first.contains("100 rows per transaction"), "\(result)")
    }
}

/// Runs `command` with a pseudo-terminal as its controlling terminal (util-linux `script`),
/// typing the next of `answers` each time a passphrase prompt appears. Returns the exit status
/// and everything the terminal showed.
private func runOnTerminal(_ command: String, answers: [String], env: [String: String], cwd: URL) throws -> (status: Int32, screen: String) {
    let process = try ChildProcess(
        "/usr/bin/script", ["-q", "-e", "-f", "-c", command, "/dev/null"], environment: env, directory: cwd.path, stdin: .pipe,
        stdout: .pipe, stderr: .sameAsOutput)
    let watchdog = DispatchWorkItem { process.signal(SIGTERM) }
    DispatchQueue.global().asyncAfter(deadline: .now() + 180, execute: watchdog)
    defer { watchdog.cancel() }
    var screen = Data()
    var answered = 0
    while true {
        let chunk = process.readOutput()
        if chunk.isEmpty { break }
        screen.append(chunk)
        let prompts = String(decoding: screen, as: UTF8.self).components(separatedBy: "Passphrase").count - 1
        while answered < prompts, answered < answers.count {
            process.writeStdin(Data((answers[answered] + "\n").utf8))
            answered += 1
        }
    }
    let exit = try process.wait(timeout: 180)
    return (exit.status, String(decoding: screen, as: UTF8.self))
}

@Suite struct PassphrasePromptTests {
    /// A store made with CHATLOG_PASSPHRASE_FILE; the environment for commands without any key.
    private func passphraseStore() throws -> (Sandbox, [String: String]) {
        let sandbox = try Sandbox()
        try sandbox.write("right passphrase\n", to: "passphrase", mode: 0o600)
        let created = try sandbox.chatlog(
            ["init"], env: sandbox.baseEnvironment.merging(["CHATLOG_PASSPHRASE_FILE": sandbox.path("passphrase")]) { $1 })
        guard created.status == 0 else { throw CLITestError("init failed: \(created)") }
        return (sandbox, sandbox.baseEnvironment.merging(["TERM": "dumb"]) { $1 })
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/script")))
    func promptsOnTheTerminalWhenStdinIsAPipeWithThreeTries() throws {
        let (sandbox, env) = try passphraseStore()
        let binary = try ChatLogBinary.url().path
        let good = try runOnTerminal(
            "true | \(binary) list", answers: ["short", "wrong passphrase", "right passphrase"], env: env, cwd: sandbox.directory)
        #expect(good.status == 0, "\(good.screen)")
        #expect(good.screen.contains("Passphrase (at least 8 bytes): "), "\(good.screen)")
        #expect(good.screen.contains("too short") && good.screen.contains("wrong passphrase, try again"), "\(good.screen)")
        #expect(good.screen.contains("no conversations"), "\(good.screen)")
        #expect(!good.screen.contains("right passphrase"), "the passphrase is not echoed: \(good.screen)")

        let bad = try runOnTerminal(
            "true | \(binary) list", answers: ["wrong one 1", "wrong one 2", "wrong one 3"], env: env, cwd: sandbox.directory)
        #expect(bad.status == 77, "\(bad.screen)")
        #expect(bad.screen.contains("chatlog: error: wrong passphrase (passphrase prompt)"), "\(bad.screen)")
        #expect(bad.screen.components(separatedBy: "Passphrase").count - 1 == 3, "\(bad.screen)")
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/script")))
    func showWithoutAnIDOnATerminalShowsTheLatest() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        _ = try sandbox.log(["--title", "older one", "--text", "one"])
        _ = try sandbox.log(["--title", "newest one", "--text", "two"])
        let shown = try runOnTerminal(
            "\(try ChatLogBinary.url().path) show", answers: [], env: sandbox.environment.merging(["TERM": "dumb"]) { $1 },
            cwd: sandbox.directory)
        #expect(shown.status == 0 && shown.screen.contains("newest one") && !shown.screen.contains("older one"), "\(shown.screen)")
    }

    @Test func aWrongPassphraseFileSaysWrongPassphrase() throws {
        let (sandbox, env) = try passphraseStore()
        try sandbox.write("not the passphrase\n", to: "other", mode: 0o600)
        let result = try sandbox.chatlog(["list"], env: env.merging(["CHATLOG_PASSPHRASE_FILE": sandbox.path("other")]) { $1 })
        #expect(result.status == 77, "\(result)")
        #expect(result.err.contains("wrong passphrase (CHATLOG_PASSPHRASE_FILE") && !result.err.contains("wrong master key"), "\(result)")
    }
}

@Suite struct CompletionAndHelpTests {
    @Test(arguments: ["bash", "zsh", "fish"])
    func completionScriptsOfferTheValuesOfEnumeratedOptions(shell: String) throws {
        let sandbox = try Sandbox()
        let result = try sandbox.chatlog(["--generate-completion-script", shell])
        #expect(result.status == 0, "\(result)")
        for values in [["relevance", "newest"], ["model", "day", "role"], ["openai-jsonl", "llm", "chatgpt"],
            ["system", "user", "assistant", "tool"], ["auto", "always", "never"], ["fail", "skip"]]
        {
            // How each shell's script lists an option's values.
            let quoted = values.map { "'\($0)'" }
            let listed = [
                "bash": quoted.joined(separator: "$'\\n'"), "zsh": "(" + quoted.joined(separator: " ") + ")",
                "fish": "'" + values.joined(separator: " ") + "'",
            ][shell]!
            #expect(result.out.contains(listed), "\(shell): \(listed) missing")
        }
    }

    @Test func searchHelpSaysLowercaseOrIsAWordAndAccentsAreNotFolded() throws {
        let sandbox = try Sandbox()
        let help = collapsingWhitespace(try sandbox.chatlog(["search", "--help"]).out)
        #expect(help.contains("a lowercase \"or\" is a word"), "\(help)")
        #expect(help.contains("\"réfund\" does not find \"refund\""), "\(help)")
    }

    @Test func enumeratedOptionsRefuseOtherValues() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        for arguments in [["stats", "--by", "week"], ["import", "--format", "csv", "x"], ["search", "x", "--sort", "oldest"],
            ["log", "--role", "robot", "--text", "x"], ["import", "--format", "llm", "--on-error", "ignore", "x"]]
        {
            let result = try sandbox.chatlog(arguments)
            #expect(result.status == 64, "\(arguments): \(result)")
        }
    }
}

@Suite struct ChatGPTWithoutIDsCLITests {
    @Test func aConverterExportWithoutIDsImportsOnce() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let data = try Data(contentsOf: URL(fileURLWithPath: InterchangeCLITests.fixture("chatgpt/conversations.json")))
        var items = try #require(try JSONSerialization.jsonObject(with: data) as? [[String: Any]])
        for index in items.indices {
            items[index]["id"] = nil
            items[index]["conversation_id"] = nil
            if index == 0 { items[index]["current_node"] = nil }
        }
        try sandbox.write(
            String(decoding: try JSONSerialization.data(withJSONObject: items), as: UTF8.self), to: "conversations.json", mode: 0o600)
        let first = try sandbox.chatlog(["import", "--format", "chatgpt", "conversations.json", "--json"])
        #expect(first.status == 0, "\(first)")
        #expect(try jsonObject(first.stdout)["conversations"] as? Int == items.count, "\(first)")
        let second = try sandbox.chatlog(["import", "--format", "chatgpt", "conversations.json", "--json"])
        #expect(try jsonObject(second.stdout)["conversations"] as? Int == 0, "\(second)")
        #expect(try jsonObject(second.stdout)["duplicates"] as? Int == items.count, "\(second)")
    }
}
