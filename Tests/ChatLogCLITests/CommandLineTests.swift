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
}
