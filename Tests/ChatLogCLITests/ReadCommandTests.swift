import Foundation
import Testing

@Suite struct ShowCommandTests {
    @Test func jsonHasTheConversationAndItsMessagesOldestFirst() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let first = try sandbox.log(["--title", "Billing", "--subject", "user-42", "--text", "I was charged twice."])
        let second = try sandbox.log([
            "--conversation", first.conversation_id, "--role", "assistant", "--model", "gpt-4o-mini",
            "--prompt-tokens", "12", "--completion-tokens", "9", "--text", "Sorry about that.",
        ])
        let third = try sandbox.log(["--conversation", first.conversation_id], stdin: Data("Thanks!".utf8))

        let result = try sandbox.chatlog(["show", first.conversation_id, "--json"])
        #expect(result.status == 0, "\(result)")
        let object = try jsonObject(result.stdout)
        #expect(Set(object.keys).isSuperset(of: ["id", "title", "subject", "created_at", "messages"]), "\(object.keys)")
        let messageObjects = try #require(object["messages"] as? [[String: Any]])
        for message in messageObjects {
            #expect(
                Set(message.keys).isSuperset(of: [
                    "id", "role", "content", "model", "created_at", "prompt_tokens", "completion_tokens",
                ]), "\(message.keys)")
        }

        let transcript = try JSONDecoder().decode(TranscriptJSON.self, from: result.stdout)
        #expect(transcript.id == first.conversation_id)
        #expect(transcript.title == "Billing")
        #expect(transcript.subject == "user-42")
        #expect(isTimestamp(transcript.created_at), "\(transcript.created_at)")
        #expect(transcript.messages.map(\.id) == [first.message_id, second.message_id, third.message_id])
        #expect(transcript.messages.map(\.role) == ["user", "assistant", "user"])
        #expect(transcript.messages.map(\.content) == ["I was charged twice.", "Sorry about that.", "Thanks!"])
        #expect(transcript.messages.map(\.model) == [nil, "gpt-4o-mini", nil])
        #expect(transcript.messages.map(\.prompt_tokens) == [nil, 12, nil])
        #expect(transcript.messages.map(\.completion_tokens) == [nil, 9, nil])
        #expect(transcript.messages.allSatisfy { isTimestamp($0.created_at) })
        let times = transcript.messages.map(\.created_at)
        #expect(times == times.sorted(), "messages are not oldest first")
    }

    @Test func absentFieldsArePrintedAsNull() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let logged = try sandbox.log(["--text", "no title, no subject, no model"])
        let object = try jsonObject(try sandbox.chatlog(["show", logged.conversation_id, "--json"]).stdout)
        #expect(object["title"] is NSNull, "title missing or not null: \(object)")
        #expect(object["subject"] is NSNull, "subject missing or not null: \(object)")
        let message = try #require((object["messages"] as? [[String: Any]])?.first)
        for key in ["model", "prompt_tokens", "completion_tokens"] {
            #expect(message[key] is NSNull, "\(key) missing or not null: \(message)")
        }
    }

    @Test func humanOutputShowsTheTranscript() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let logged = try sandbox.log(["--title", "Billing", "--text", "I was charged twice."])
        _ = try sandbox.log(["--conversation", logged.conversation_id, "--role", "assistant", "--text", "Sorry."])
        let result = try sandbox.chatlog(["show", logged.conversation_id])
        #expect(result.status == 0, "\(result)")
        let out = result.out
        #expect(out.contains("Billing") && out.contains(logged.conversation_id))
        let question = try #require(out.range(of: "I was charged twice."))
        let answer = try #require(out.range(of: "Sorry."))
        #expect(question.lowerBound < answer.lowerBound)
    }

    @Test func unknownIdIsNotFound() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        _ = try sandbox.log(["--text", "something"])
        let result = try sandbox.chatlog(["show", "01a21a65-5b7c-77d3-9bea-9ac56f67bb0b", "--json"])
        #expect(result.status == 66, "\(result)")
        #expect(result.err.contains("01a21a65-5b7c-77d3-9bea-9ac56f67bb0b"))
        #expect(result.stdout.isEmpty)
    }

    // A prefix of 8 characters or more is a short id now (not found: 66, see ShortIDTests); shorter
    // or longer text, or a wrong separator, is still a usage error.
    @Test(arguments: ["42", "not-a-uuid", "01a21a6", "01a21a65-5b7c-77d3-9bea-9ac56f67bb0bb", "01a21a65x5b7c-77d3-9bea-9ac56f67bb0b"])
    func malformedIdIsAUsageError(id: String) throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let result = try sandbox.chatlog(["show", id])
        #expect(result.status == 64, "\(result)")
        #expect(result.stdout.isEmpty)
    }
}

@Suite struct ListCommandTests {
    @Test func jsonListsConversationsNewestFirst() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let oldest = try sandbox.log(["--title", "first", "--subject", "alice", "--text", "1"])
        _ = try sandbox.log(["--conversation", oldest.conversation_id, "--text", "1b"])
        let middle = try sandbox.log(["--title", "second", "--text", "2"])
        let newest = try sandbox.log(["--title", "third", "--subject", "bob", "--text", "3"])

        let result = try sandbox.chatlog(["list", "--json"])
        #expect(result.status == 0, "\(result)")
        for object in try jsonPage(result.stdout, "conversations") {
            #expect(
                Set(object.keys).isSuperset(of: ["id", "title", "subject", "created_at", "updated_at", "message_count"]),
                "\(object.keys)")
        }
        let conversations = try JSONDecoder().decode(ListPageJSON.self, from: result.stdout).conversations
        #expect(conversations.map(\.id) == [newest.conversation_id, middle.conversation_id, oldest.conversation_id])
        #expect(conversations.map(\.title) == ["third", "second", "first"])
        #expect(conversations.map(\.subject) == ["bob", nil, "alice"])
        #expect(conversations.map(\.message_count) == [1, 1, 2])
        #expect(conversations.allSatisfy { isTimestamp($0.created_at) && isTimestamp($0.updated_at) })
        let created = conversations.map(\.created_at)
        #expect(created == created.sorted(by: >), "not newest first: \(created)")
    }

    @Test func limitKeepsTheNewest() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        var ids: [String] = []
        for index in 0..<4 { ids.append(try sandbox.log(["--text", "message \(index)"]).conversation_id) }
        #expect(try sandbox.list(["--limit", "2"]).map(\.id) == [ids[3], ids[2]])
        #expect(try sandbox.list(["--limit", "1"]).map(\.id) == [ids[3]])
        #expect(try sandbox.list(["--limit", "10"]).count == 4)
        // 0 means all (ListAndShowConvenienceTests).
        for bad in ["-1", "10001", "many"] {
            #expect(try sandbox.chatlog(["list", "--limit", bad]).status == 64, "--limit \(bad)")
        }
    }

    @Test func subjectFilters() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let alice1 = try sandbox.log(["--subject", "alice", "--text", "a1"])
        _ = try sandbox.log(["--subject", "bob", "--text", "b1"])
        _ = try sandbox.log(["--text", "nobody"])
        let alice2 = try sandbox.log(["--subject", "alice", "--text", "a2"])
        #expect(try sandbox.list(["--subject", "alice"]).map(\.id) == [alice2.conversation_id, alice1.conversation_id])
        #expect(try sandbox.list(["--subject", "bob"]).map(\.subject) == ["bob"])
        #expect(try sandbox.list(["--subject", "Alice"]).isEmpty, "subjects match exactly")
        #expect(try sandbox.list(["--subject", "carol"]).isEmpty)
        #expect(try sandbox.list().count == 4)
    }

    @Test func humanOutputOfAnEmptyStore() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        let result = try sandbox.chatlog(["list"])
        #expect(result.status == 0, "\(result)")
        #expect(result.out == "no conversations\n")
        let json = try sandbox.chatlog(["list", "--json"])
        #expect(json.status == 0, "\(json)")
        #expect(try jsonPage(json.stdout, "conversations").isEmpty, "\(json)")
    }
}
