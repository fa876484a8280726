import Foundation
import Testing

/// Strings read from the store file reach the terminal only escaped: ids are checked as UUIDs
/// (a planted one is an integrity failure naming table and seq), and error, note and `verify`
/// lines go through the same escaping as message content, bidi controls included.
@Suite struct TerminalEscapingTests {
    /// An OSC title change, a bell, a screen clear and a fake success line.
    private static let plantedSQL = "char(27) || ']0;owned' || char(7) || char(27) || '[2J' || char(10) || 'verify: all well'"

    private let bidiBytes: [[UInt8]] = [
        Array("\u{202A}".utf8), Array("\u{202B}".utf8), Array("\u{202C}".utf8), Array("\u{202D}".utf8),
        Array("\u{202E}".utf8), Array("\u{2066}".utf8), Array("\u{2067}".utf8), Array("\u{2068}".utf8),
        Array("\u{2069}".utf8),
    ]

    private func expectNoTerminalControls(_ result: CommandResult, sourceLocation: SourceLocation = #_sourceLocation) {
        for (name, bytes) in [("stdout", result.stdout), ("stderr", result.stderr)] {
            #expect(!bytes.contains(0x1B), "an escape character reached \(name): \(result)", sourceLocation: sourceLocation)
            #expect(!bytes.contains(0x07), "a bell reached \(name): \(result)", sourceLocation: sourceLocation)
            for bidi in bidiBytes {
                #expect(bytes.range(of: Data(bidi)) == nil, "a bidi control reached \(name): \(result)", sourceLocation: sourceLocation)
            }
        }
        for line in (result.out + result.err).split(separator: "\n") {
            #expect(!line.hasPrefix("verify: all well"), "a planted line reached the output: \(result)", sourceLocation: sourceLocation)
        }
    }

    @Test func aPlantedConversationIdIsAnIntegrityFailureNamingTableAndSeq() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let logged = try sandbox.log(["--title", "planted", "--text", "hello there"])
        let seq = try sandbox.sqlite("chatlog.db", "SELECT seq FROM conversations WHERE id = '\(logged.conversation_id)'")
        try sandbox.sqlite("chatlog.db", "UPDATE conversations SET id = \(Self.plantedSQL) WHERE seq = \(seq)")

        for arguments in [["list"], ["list", "--json"], ["export"], ["search", "hello"], ["search", "hello", "--sort", "newest"]] {
            let result = try sandbox.chatlog(arguments)
            #expect(result.status == 4, "\(arguments): \(result)")
            #expect(result.err.contains("conversations.id of row seq \(seq) is not a UUID"), "\(arguments): \(result)")
            expectNoTerminalControls(result)
        }
        // verify reports the id itself, and the title that no longer opens under it, escaped.
        for arguments in [["verify"], ["verify", "--json"]] {
            let verify = try sandbox.chatlog(arguments)
            #expect(verify.status == 4, "\(verify)")
            #expect(verify.out.contains("of row seq \(seq)"), "\(verify)")
            expectNoTerminalControls(verify)
        }
        let verify = try sandbox.chatlog(["verify"])
        #expect(verify.out.contains("\\u{1b}]0;owned\\u{7}"), "the planted id is not shown escaped: \(verify)")
    }

    @Test func aPlantedMessageIdIsAnIntegrityFailureAndErrorsAreEscaped() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let logged = try sandbox.log(["--text", "hello there"])
        let seq = try sandbox.sqlite("chatlog.db", "SELECT seq FROM messages WHERE id = '\(logged.message_id)'")
        try sandbox.sqlite("chatlog.db", "UPDATE messages SET id = \(Self.plantedSQL) WHERE seq = \(seq)")

        for arguments in [["show", logged.conversation_id], ["show", logged.conversation_id, "--json"], ["export"]] {
            let result = try sandbox.chatlog(arguments)
            #expect(result.status == 4, "\(arguments): \(result)")
            #expect(result.err.contains("messages.id of row seq \(seq) is not a UUID"), "\(arguments): \(result)")
            expectNoTerminalControls(result)
        }
        // Search opens the content under the planted id first: the error names it, escaped, on one line.
        let search = try sandbox.chatlog(["search", "hello"])
        #expect(search.status == 4, "\(search)")
        expectNoTerminalControls(search)
        #expect(search.err.split(separator: "\n").count == 1, "\(search)")
        #expect(search.err.contains("\\u{1b}]0;owned\\u{7}\\u{1b}[2J\\u{a}verify: all well"), "\(search)")
    }

    @Test func bidiControlsAndControlCharactersFromTheFileAreEscapedInHumanOutput() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let text = "pay \u{202E}0001\u{202C} now \u{2066}x\u{2069} \u{2067}\u{2068}\u{202A}\u{202B}\u{202D}"
        let logged = try sandbox.log(["--title", "bill \u{202E}fdp.exe", "--subject", "s\u{2066}", "--text", text, "--model", "m"])
        // Plain columns are written by whoever holds the file: a model name and finish reason.
        try sandbox.sqlite(
            "chatlog.db",
            "UPDATE messages SET model = 'gpt' || char(8238) || \(Self.plantedSQL), finish_reason = char(8294) || 'stop' || char(27) || '[31m'")

        for arguments in [
            ["show", logged.conversation_id], ["list"], ["search", "pay"], ["search", "pay", "--sort", "newest"],
            ["stats", "--by", "model"],
        ] {
            let result = try sandbox.chatlog(arguments)
            #expect(result.status == 0, "\(arguments): \(result)")
            expectNoTerminalControls(result)
        }
        let show = try sandbox.chatlog(["show", logged.conversation_id])
        #expect(show.out.contains("pay \\u{202e}0001\\u{202c} now \\u{2066}x\\u{2069}"), "\(show)")
        #expect(show.out.contains("bill \\u{202e}fdp.exe"), "\(show)")
        // JSON stays exact.
        let json = try sandbox.show(logged.conversation_id)
        #expect(json.messages.first?.content == text)
    }
}
