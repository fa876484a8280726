import Foundation
import Testing

@Suite struct LogCommandTests {
    @Test func jsonOutputIsExactlyTheTwoIds() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let result = try sandbox.chatlog(["log", "--json", "--text", "hello", "--title", "Greeting"])
        #expect(result.status == 0, "\(result)")
        let object = try jsonObject(result.stdout)
        #expect(Set(object.keys) == ["conversation_id", "message_id"])
        let conversation = try #require(object["conversation_id"] as? String)
        let message = try #require(object["message_id"] as? String)
        #expect(isUUID(conversation) && isUUID(message), "\(result)")
        #expect(conversation != message)
        #expect(result.stderr.isEmpty, "\(result)")

        let transcript = try sandbox.show(conversation)
        #expect(transcript.messages.map(\.id) == [message])
        #expect(transcript.messages.first?.content == "hello")
    }

    @Test func humanOutputNamesBothIds() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let result = try sandbox.chatlog(["log", "--text", "hello"])
        #expect(result.status == 0, "\(result)")
        let conversations = try sandbox.list()
        let transcript = try sandbox.show(try #require(conversations.first).id)
        let messageID = try #require(transcript.messages.first?.id)
        #expect(result.out == "conversation \(transcript.id)\nmessage \(messageID)\n")
    }

    @Test func readsTheContentFromStdin() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let logged = try sandbox.log([], stdin: Data("from stdin".utf8))
        let transcript = try sandbox.show(logged.conversation_id)
        #expect(transcript.messages.map(\.content) == ["from stdin"])
        #expect(transcript.messages.map(\.role) == ["user"])
    }

    @Test func appendsToTheSameConversation() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let first = try sandbox.log(["--text", "question", "--title", "Thread"])
        let second = try sandbox.log(["--conversation", first.conversation_id, "--text", "answer", "--role", "assistant"])
        let third = try sandbox.log(["--conversation", first.conversation_id.uppercased()], stdin: Data("follow-up".utf8))
        #expect(second.conversation_id == first.conversation_id)
        #expect(third.conversation_id == first.conversation_id)
        #expect(Set([first.message_id, second.message_id, third.message_id]).count == 3)
        let conversations = try sandbox.list()
        #expect(conversations.count == 1)
        #expect(conversations.first?.message_count == 3)
        #expect(try sandbox.show(first.conversation_id).messages.map(\.content) == ["question", "answer", "follow-up"])
    }

    @Test func appendingToAnUnknownConversationIsNotFound() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let result = try sandbox.chatlog(["log", "--conversation", "01a21a65-5b7c-77d3-9bea-9ac56f67bb0b", "--text", "x"])
        #expect(result.status == 66, "\(result)")
        #expect(try sandbox.list().isEmpty)
    }

    @Test(arguments: [
        ["--conversation", "01a21a65-5b7c-77d3-9bea-9ac56f67bb0b", "--title", "T", "--text", "x"],
        ["--conversation", "01a21a65-5b7c-77d3-9bea-9ac56f67bb0b", "--subject", "S", "--text", "x"],
        ["--role", "wizard", "--text", "x"],
        ["--role", "User", "--text", "x"],
        ["--conversation", "not-a-uuid", "--text", "x"],
        ["--prompt-tokens", "-1", "--text", "x"],
        ["--bogus-flag", "--text", "x"],
    ])
    func usageErrorsExit64AndLogNothing(arguments: [String]) throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let result = try sandbox.chatlog(["log"] + arguments)
        #expect(result.status == 64, "\(result)")
        #expect(!result.stderr.isEmpty)
        #expect(result.stdout.isEmpty, "\(result)")
        #expect(try sandbox.list().isEmpty)
    }

    @Test func invalidUTF8OnStdinExits65AndLogsNothing() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let result = try sandbox.chatlog(["log", "--title", "T"], stdin: Data([0x61, 0xFF, 0x62, 0x0A]))
        #expect(result.status == 65, "\(result)")
        #expect(result.err.contains("not valid UTF-8"), "\(result)")
        #expect(result.err.hasPrefix("chatlog: error: "))
        #expect(result.stdout.isEmpty)
        #expect(try sandbox.list().isEmpty)
        // Overlong and surrogate encodings are invalid UTF-8 too.
        for bytes: [UInt8] in [[0xC0, 0xAF], [0xED, 0xA0, 0x80]] {
            #expect(try sandbox.chatlog(["log"], stdin: Data(bytes)).status == 65)
        }
        #expect(try sandbox.list().isEmpty)
    }

    @Test func invalidUTF8InAnArgumentExits65AndLogsNothing() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        // Process takes Swift Strings, which cannot hold invalid UTF-8: let the shell build the byte.
        let text = try sandbox.shell(#"exec "$0" log --text "$(printf 'a\377b')""#)
        #expect(text.status == 65, "\(text)")
        #expect(text.err.contains("not valid UTF-8"), "\(text)")
        let title = try sandbox.shell(#"exec "$0" log --text ok --title "$(printf '\300\257')""#)
        #expect(title.status == 65, "\(title)")
        #expect(try sandbox.list().isEmpty)
        // The same command with valid bytes works (the shell route itself is sound).
        let valid = try sandbox.shell(#"exec "$0" log --text "$(printf 'caf\303\251')""#)
        #expect(valid.status == 0, "\(valid)")
        let conversation = try #require(try sandbox.list().first)
        #expect(try sandbox.show(conversation.id).messages.first?.content == "café")
    }

    @Test func invalidMetadataJSONExits65() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let result = try sandbox.chatlog(["log", "--text", "x", "--metadata", "{not json"])
        #expect(result.status == 65, "\(result)")
        #expect(try sandbox.list().isEmpty)
    }

    @Test func stdinContentRoundTripsExactlyThroughShowJSON() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let content =
            "line one\nline two\r\n\u{0}after a NUL\u{0}\u{0}\n\ttab, é and e\u{301}, 中文, 🙂👩‍💻, "
            + "\u{1B}[31mred\u{1B}[0m, \u{7F}\u{202E}\n\n"
        let bytes = Data(content.utf8)
        let logged = try sandbox.log(["--title", "Multi\nline"], stdin: bytes)
        let textual = try sandbox.log(["--conversation", logged.conversation_id, "--text", "é vs e\u{301}: 🙂"])

        let result = try sandbox.chatlog(["show", logged.conversation_id, "--json"])
        #expect(result.status == 0, "\(result)")
        let transcript = try JSONDecoder().decode(TranscriptJSON.self, from: result.stdout)
        #expect(transcript.messages.map(\.id) == [logged.message_id, textual.message_id])
        // Compare bytes: Swift's String == treats é and e + U+0301 as equal.
        #expect(transcript.messages.first.map { Data($0.content.utf8) } == bytes)
        #expect(transcript.messages.last.map { Array($0.content.utf8) } == Array("é vs e\u{301}: 🙂".utf8))
        #expect(transcript.title.map { Array($0.utf8) } == Array("Multi\nline".utf8))
    }

    @Test func humanShowEscapesControlCharacters() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let logged = try sandbox.log(["--title", "\u{1B}]0;pwned\u{7}"], stdin: Data("a\u{1B}[2Jb\u{0}c\nsecond line".utf8))
        let result = try sandbox.chatlog(["show", logged.conversation_id])
        #expect(result.status == 0, "\(result)")
        #expect(!result.stdout.contains(0x1B), "an escape character reached the terminal")
        #expect(!result.stdout.contains(0x07))
        #expect(!result.stdout.contains(0x00))
        #expect(result.out.contains("a\\u{1b}[2Jb\\u{0}c"), "\(result)")
        #expect(result.out.contains("second line"))
    }
}
