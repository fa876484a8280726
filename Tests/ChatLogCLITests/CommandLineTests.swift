import Foundation
import Testing

/// The command line itself: a directory as `--db`, one-line usage errors (exit 64), refused
/// repetitions, `--version`, and `--db` before the subcommand.
@Suite struct CommandLineTests {
    private let someID = "01a21a65-5b7c-77d3-9bea-9ac56f67bb0b"

    @Test func aDirectoryAsTheStoreIsExit66SayingSo() throws {
        let sandbox = try Sandbox()
        try FileManager.default.createDirectory(at: sandbox.url("stores"), withIntermediateDirectories: true)
        for arguments in [
            ["init"], ["list"], ["show", someID], ["search", "x"], ["stats"], ["key", "status"], ["verify"], ["export"],
            ["log", "--text", "x"], ["backup", "b.db"], ["key", "rotate"], ["rm", someID], ["prune", "--older-than", "30d"],
            ["import", "--format", "openai-jsonl", "-"],
        ] {
            let result = try sandbox.chatlog(arguments + ["--db", "stores"], stdin: Data())
            #expect(result.status == 66, "\(arguments): \(result)")
            #expect(result.err == "chatlog: error: stores is a directory; give the path of the store file in it (e.g. stores/chatlog.db)\n", "\(arguments): \(result)")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: sandbox.path("stores")).isEmpty)
    }

    @Test(arguments: [
        (["list", "--limit", "-1"], "--limit must be between"),
        (["search", "x", "--limit", "-5"], "--limit must be between 1 and 1000"),
        (["list", "--limit"], "Missing value for '--limit <limit>'"),
        (["frobnicate"], "Unexpected argument 'frobnicate'"),
        (["backup"], "Missing expected argument '<file>'"),
        (["list", "--bogus"], "Unknown option '--bogus'"),
        (["list", "--db", "a.db", "--db", "b.db"], "--db is given more than once"),
        (["log", "--text", "a", "--text=b"], "--text is given more than once"),
        (["--db", "a.db", "list", "--db", "b.db"], "--db is given more than once"),
        (["export", "--force"], "--force only applies to --output"),
        (["list", "-n", "5", "--limit", "50"], "--limit is given more than once"),
        (["serve", "--writer-nice", "20"], "--writer-nice must be between 0 and 19"),
        (["serve", "--writer-nice=-1"], "--writer-nice must be between 0 and 19"),
        (["serve", "--writer-linger-ms", "10001"], "--writer-linger-ms must be between 0 and 10000"),
        (["serve", "--writer-linger-ms=-1"], "--writer-linger-ms must be between 0 and 10000"),
    ])
    func usageErrorsAreOneLineAndExit64(arguments: [String], message: String) throws {
        let sandbox = try Sandbox()
        let result = try sandbox.chatlog(arguments)
        #expect(result.status == 64, "\(result)")
        #expect(result.stdout.isEmpty, "\(result)")
        let lines = result.err.split(separator: "\n")
        #expect(lines.count == 1, "not one line: \(result)")
        #expect(result.err.hasPrefix("chatlog: error: \(message)"), "\(result)")
        #expect(!result.err.contains("Usage") && !result.err.contains("USAGE") && !result.err.contains("Help:"), "\(result)")
        #expect(!sandbox.exists("a.db") && !sandbox.exists("b.db"))
    }

    /// `rm --message` takes a list: giving it twice is not a repeated option.
    @Test func aListOptionMayBeGivenMoreThanOnce() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let result = try sandbox.chatlog([
            "rm", "--message", "01a24877-a708-7a24-a2d5-992e3f83d236", "--message", "01a24877-a708-7a24-a2d5-992e3f83d237",
        ])
        #expect(result.status == 66, "two unknown messages are not found, not a usage error: \(result)")
        #expect(!result.err.contains("more than once"), "\(result)")
    }

    @Test func helpStaysCompleteAndVersionIsOneLine() throws {
        let sandbox = try Sandbox()
        for arguments in [["--help"], ["list", "--help"], ["help", "key", "rotate"]] {
            let result = try sandbox.chatlog(arguments, env: sandbox.baseEnvironment)
            #expect(result.status == 0, "\(arguments): \(result)")
            #expect(result.out.contains("USAGE:") && result.out.contains("OPTIONS:"), "\(arguments): \(result)")
            #expect(result.stderr.isEmpty)
        }
        let version = try sandbox.chatlog(["--version"], env: sandbox.baseEnvironment)
        #expect(version.status == 0, "\(version)")
        #expect(version.out.wholeMatch(of: /chatlog [0-9]+\.[0-9]+\.[0-9]+ \(store schema [0-9]+\)\n/) != nil, "\(version)")
    }

    @Test func dbIsAcceptedBeforeTheSubcommand() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore(db: "x.db")
        let logged = try sandbox.log(["--db", "x.db", "--text", "dash and more"])
        for arguments in [["--db", "x.db", "list", "--json"], ["--db=x.db", "key", "status", "--json"], ["--db", "x.db", "show", logged.conversation_id]] {
            let result = try sandbox.chatlog(arguments)
            #expect(result.status == 0, "\(arguments): \(result)")
        }
        let list = try sandbox.chatlog(["--db", "x.db", "list", "--json"])
        #expect(((try jsonObject(list.stdout)["conversations"] as? [[String: Any]])?.first?["id"] as? String) == logged.conversation_id, "\(list)")
        // A query after `--` stays a query.
        let search = try sandbox.chatlog(["--db", "x.db", "search", "--json", "--", "-nothing dash"])
        #expect(search.status == 0, "\(search)")
        #expect((try jsonObject(search.stdout)["hits"] as? [Any])?.count == 1, "\(search)")
        #expect(!sandbox.exists("chatlog.db"), "the default store was created")
    }
}
