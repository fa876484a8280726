import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

// `chatlog serve` checked from outside, with the clients apps use: the official `openai` and
// `anthropic` Python SDKs and curl, against the fake upstream of Tests/ProxyHarness over HTTPS with a
// test CA. What the client gets is compared byte for byte with what it gets directly from the
// upstream; what is logged is read back with `chatlog show --json`; credentials are looked for in every
// file and every output.

/// A store, a fake upstream and `chatlog serve` in front of it, for one test.
final class ProxyWorld: @unchecked Sendable {
    // @unchecked Sendable: set once in init; the Sandbox is used from one test at a time.
    let sandbox: Sandbox
    let upstream: FakeUpstream
    let server: ProxyServer
    /// The passthrough credentials the clients send: never in a file or an output.
    let openAIKey = "sk-proj-" + randomAlphanumerics(40)
    let anthropicKey = "sk-ant-api03-" + randomAlphanumerics(40)

    init(serve extra: [String] = [], environment: [String: String] = [:], upstreamKeys: (openAI: [String], anthropic: [String])? = nil)
        async throws
    {
        sandbox = try Sandbox()
        sandbox.addSecret(openAIKey)
        sandbox.addSecret(anthropicKey)
        try sandbox.initStore()
        upstream = try await FakeUpstream(
            sandbox: sandbox, openAIKeys: upstreamKeys?.openAI ?? [], anthropicKeys: upstreamKeys?.anthropic ?? [])
        server = try await ProxyServer(sandbox: sandbox, upstream: upstream, extra: extra, environment: environment)
    }

    /// SDK call settings through the proxy, with the passthrough keys.
    var openAI: [String: Any] { ["sdk": "openai", "base_url": server.openAIBase, "api_key": openAIKey] }
    var anthropic: [String: Any] { ["sdk": "anthropic", "base_url": server.baseURL, "api_key": anthropicKey] }

    func sdk(_ calls: [[String: Any]]) throws -> [[String: Any]] { try sdkCalls(calls, sandbox: sandbox) }

    /// Stops the server (SIGTERM: it drains its queue) and checks that no credential reached any file
    /// of the store or the working directory, nor anything the server printed. Returns its output.
    @discardableResult
    func finish(credentials extra: [String] = [], sourceLocation: SourceLocation = #_sourceLocation) async throws -> CommandResult {
        let result = try await server.stop()
        #expect(result.status == 0, "chatlog serve did not exit 0 on SIGTERM: \(result)", sourceLocation: sourceLocation)
        // Sealed values hide from a byte scan: the export (every message, its metadata, the conversations')
        // shows what was sealed.
        let export = try sandbox.chatlog(["export"], sourceLocation: sourceLocation)
        #expect(export.status == 0, "\(export)", sourceLocation: sourceLocation)
        let leaks = leakedCredentials(
            [openAIKey, anthropicKey] + extra, sandbox: sandbox, outputs: [result.stdout, result.stderr, export.stdout])
        #expect(leaks.isEmpty, "credentials found in a file or the server's output: \(leaks.count)", sourceLocation: sourceLocation)
        return result
    }

    /// Conversation ids in `chatlog list`, newest first.
    func conversationIDs() throws -> [String] { try sandbox.list(["--limit", "1000"]).map(\.id) }
}

func randomAlphanumerics(_ count: Int) -> String {
    let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
    var generator = SystemRandomNumberGenerator()
    return String((0..<count).map { _ in alphabet[Int.random(in: 0..<alphabet.count, using: &generator)] })
}

func user(_ text: String) -> [[String: Any]] { [["role": "user", "content": text]] }

@Suite("chatlog serve with real clients")
struct ProxyClientTests {
    /// Headers the proxy adds on purpose (the issue's contract).
    static let added: Set<String> = ["x-chatlog-conversation", "x-accel-buffering"]

    @Test("curl gets the same status, headers and body bytes through the proxy as directly, for every API and error")
    func byteIdenticalDelivery() async throws {
        let world = try await ProxyWorld()
        let openAIHeaders = ["Authorization": "Bearer " + world.openAIKey, "Content-Type": "application/json"]
        let anthropicHeaders = [
            "x-api-key": world.anthropicKey, "anthropic-version": "2023-06-01", "Content-Type": "application/json",
        ]
        struct Case {
            let name: String
            let path: String
            let method: String
            let body: String?
            let script: [String: Any]?
            let logged: Bool
        }
        let cases: [Case] = [
            Case(
                name: "chat", path: "/v1/chat/completions", method: "POST",
                body: #"{"model":"gpt-4.1-mini","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Say hello"}]}"#,
                script: nil, logged: true),
            Case(
                name: "chat stream", path: "/v1/chat/completions", method: "POST",
                body: #"{"model":"gpt-4.1-mini","stream":true,"messages":[{"role":"user","content":"Count to ten slowly"}]}"#,
                script: ["delay_ms": 5], logged: true),
            Case(
                name: "chat stream with usage", path: "/v1/chat/completions", method: "POST",
                body:
                    #"{"model":"gpt-4.1-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Usage too"}]}"#,
                script: nil, logged: true),
            Case(
                name: "chat stream tool calls", path: "/v1/chat/completions", method: "POST",
                body:
                    #"{"model":"gpt-4.1-mini","stream":true,"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}],"messages":[{"role":"user","content":"Weather in Paris and Oslo?"}]}"#,
                script: [
                    "tool_calls": [
                        ["name": "get_weather", "arguments": ["location": "Paris"]],
                        ["name": "get_weather", "arguments": ["location": "Oslo"]],
                    ]
                ], logged: true),
            Case(
                name: "responses", path: "/v1/responses", method: "POST",
                body: #"{"model":"gpt-4.1-mini","instructions":"Be brief.","input":"Name a colour"}"#, script: nil, logged: true),
            Case(
                name: "responses stream", path: "/v1/responses", method: "POST",
                body: #"{"model":"gpt-4.1-mini","stream":true,"input":[{"role":"user","content":"Name a fruit"}]}"#, script: nil,
                logged: true),
            Case(
                name: "messages", path: "/v1/messages", method: "POST",
                body: #"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"Weather in Rome?"}]}"#,
                script: ["text": "Let me look.", "tool_calls": [["name": "get_weather", "arguments": ["location": "Rome"]]]],
                logged: true),
            Case(
                name: "messages stream", path: "/v1/messages", method: "POST",
                body:
                    #"{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"system":"Be brief.","messages":[{"role":"user","content":"Weather in Bern?"}]}"#,
                script: ["text": "Checking.", "tool_calls": [["name": "get_weather", "arguments": ["location": "Bern"]]]],
                logged: true),
            Case(
                name: "chat 429", path: "/v1/chat/completions", method: "POST",
                body: #"{"model":"gpt-4.1-mini","messages":[{"role":"user","content":"Too many"}]}"#, script: ["status": 429],
                logged: true),
            Case(
                name: "messages 500", path: "/v1/messages", method: "POST",
                body: #"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"Broken"}]}"#,
                script: ["status": 500], logged: true),
            Case(
                name: "messages stream error event", path: "/v1/messages", method: "POST",
                body:
                    #"{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"one two three four five"}]}"#,
                script: ["error_event_after": 5], logged: true),
            Case(name: "models", path: "/v1/models", method: "GET", body: nil, script: nil, logged: false),
            Case(
                name: "embeddings", path: "/v1/embeddings", method: "POST",
                body: #"{"model":"text-embedding-3-small","input":"hello"}"#, script: nil, logged: false),
        ]
        var loggedIDs: Set<String> = []
        for item in cases {
            let headers = item.path == "/v1/messages" ? anthropicHeaders : openAIHeaders
            if let script = item.script {
                try world.upstream.script([script.merging(["path": item.path]) { $1 }, script.merging(["path": item.path]) { $1 }])
            }
            let before = try world.upstream.requests().count
            let direct = try curlExchange(
                world.upstream.anthropicBase + item.path, method: item.method, body: item.body.map { Data($0.utf8) },
                headers: headers, caPath: world.upstream.caPath, sandbox: world.sandbox)
            let proxied = try curlExchange(
                world.server.baseURL + item.path, method: item.method, body: item.body.map { Data($0.utf8) }, headers: headers,
                sandbox: world.sandbox)
            #expect(direct.status != 0 && direct.curlStatus == 0, "\(item.name) direct: \(direct)")
            #expect(proxied.status == direct.status, "\(item.name): status \(proxied.status), directly \(direct.status)")
            #expect(proxied.body == direct.body, "\(item.name): body differs\n--- proxy:\n\(proxied.text)\n--- direct:\n\(direct.text)")
            // Every end-to-end header, `Date` included (upstream's, not the proxy's), same-name ones in order.
            let mine = proxied.endToEnd(except: Self.added)
            let theirs = direct.endToEnd()
            #expect(
                mine == theirs,
                "\(item.name): headers differ\n--- proxy:\n\(mine.joined(separator: "\n"))\n--- direct:\n\(theirs.joined(separator: "\n"))")
            if item.logged {
                let id = proxied.header("x-chatlog-conversation")
                #expect(id.map(isUUID) == true, "\(item.name): X-Chatlog-Conversation \(id ?? "missing")")
                if let id { loggedIDs.insert(id) }
            } else {
                #expect(proxied.header("x-chatlog-conversation") == nil, "\(item.name) is passed through unlogged")
            }
            // Upstream received the same request both times, credentials unchanged.
            let received = try world.upstream.requests().dropFirst(before)
            #expect(received.count == 2, "\(item.name): upstream saw \(received.count) requests")
            if received.count == 2 {
                let (first, second) = (received[received.startIndex], received[received.startIndex + 1])
                #expect(second["method"] as? String == item.method && second["path"] as? String == item.path)
                let credential = item.path == "/v1/messages" ? "x-api-key" : "authorization"
                #expect(headerValue(second, credential) == headerValue(first, credential), "\(item.name): credential changed")
                #expect(
                    requestBodyMatches(proxied: second["body"] as? String, direct: first["body"] as? String),
                    "\(item.name): upstream got another body\n\(second["body"] ?? "")\n\(first["body"] ?? "")")
            }
        }
        #expect(loggedIDs.count == cases.filter(\.logged).count, "one conversation per distinct call")
        try await world.finish()
        #expect(Set(try world.conversationIDs()) == loggedIDs, "the passthrough calls logged nothing")
    }

    @Test("the SDKs' calls are logged as they saw them: messages, completion, tool calls, model, usage, subject, request id")
    func sdkCallsAreLogged() async throws {
        let world = try await ProxyWorld()
        // Entries are taken in order by the calls to their path: the first chat call answers by default.
        try world.upstream.script([
            ["path": "/v1/chat/completions"],
            ["path": "/v1/chat/completions", "tool_calls": [["name": "get_weather", "arguments": ["location": "Lisbon"]]]],
            ["path": "/v1/messages", "text": "Let me check.", "tool_calls": [["name": "get_weather", "arguments": ["location": "Rome"]]]],
        ])
        let results = try world.sdk([
            world.openAI.merging([
                "messages": [["role": "system", "content": "You plan trips."], ["role": "user", "content": "Plan a day in Lisbon"]],
                "user": "user-42", "model": "gpt-4.1-mini",
            ]) { $1 },
            world.openAI.merging([
                "messages": user("Weather in Lisbon?"), "tools": [FakeUpstreamTests.weatherTool], "stream": true,
            ]) { $1 },
            world.openAI.merging([
                "api": "responses", "input": "Name three rivers", "instructions": "Answer in a list.", "user": "user-from-body",
                "headers": ["X-Chatlog-Subject": "subject-from-header"],
            ]) { $1 },
            world.anthropic.merging([
                "messages": user("Weather in Rome?"), "tools": [FakeUpstreamTests.anthropicWeatherTool], "stream": true,
                "system": "Be helpful.", "metadata": ["user_id": "subject-7"],
            ]) { $1 },
        ])
        for (index, result) in results.enumerated() { #expect(result["ok"] as? Bool == true, "call \(index): \(result)") }
        try await world.finish()
        func logged(_ result: [String: Any]) throws -> (conversation: [String: Any], messages: [[String: Any]]) {
            let headers = result["headers"] as? [String: String] ?? [:]
            guard let id = headers["x-chatlog-conversation"] else { throw CLITestError("no X-Chatlog-Conversation: \(result)") }
            let transcript = try showJSON(id, sandbox: world.sandbox)
            return (transcript, messagesOf(transcript))
        }
        func upstreamRequestID(_ result: [String: Any]) -> String? {
            let headers = result["headers"] as? [String: String] ?? [:]
            return headers["x-request-id"] ?? headers["request-id"]
        }
        func text(_ object: Any) -> String {
            String(decoding: (try? JSONSerialization.data(withJSONObject: object)) ?? Data(), as: UTF8.self)
        }

        // Chat, not streamed: system and user message, then the completion with model and usage.
        let chat = try logged(results[0])
        #expect(chat.messages.map { $0["role"] as? String } == ["system", "user", "assistant"])
        #expect(chat.messages.map { $0["content"] as? String } == ["You plan trips.", "Plan a day in Lisbon", "Echo: Plan a day in Lisbon"])
        let chatUsage = results[0]["usage"] as? [String: Any]
        #expect(chat.messages.last?["model"] as? String == "gpt-4.1-mini")
        #expect(chat.messages.last?["prompt_tokens"] as? Int == chatUsage?["prompt_tokens"] as? Int)
        #expect(chat.messages.last?["completion_tokens"] as? Int == chatUsage?["completion_tokens"] as? Int)
        #expect(chat.messages.last?["finish_reason"] as? String == "stop")
        #expect(chat.conversation["subject"] as? String == "user-42")
        if let requestID = upstreamRequestID(results[0]) {
            #expect(text(chat.conversation).contains(requestID), "upstream request id \(requestID) logged")
        } else {
            Issue.record("no upstream request id in the response headers")
        }

        // Chat, streamed, a tool call: the call (name and arguments) in the assistant message's metadata.
        let tools = try logged(results[1])
        #expect(tools.messages.map { $0["role"] as? String } == ["user", "assistant"])
        #expect(tools.messages.last?["finish_reason"] as? String == "tool_calls")
        let toolMetadata = text(tools.messages.last?["metadata"] ?? NSNull())
        #expect(toolMetadata.contains("get_weather") && toolMetadata.contains("Lisbon"), "tool call logged: \(toolMetadata)")
        #expect(text(tools.conversation).contains(upstreamRequestID(results[1]) ?? "-"))
        let streamMetadata = tools.messages.last?["metadata"] as? [String: Any] ?? [:]
        #expect(streamMetadata["ttft_ms"] is Int, "time to first token of a stream: \(streamMetadata)")
        #expect(tools.messages.last?["latency_ms"] is Int)

        // Responses: instructions and input, then the output text.
        let responses = try logged(results[2])
        #expect(responses.messages.last?["role"] as? String == "assistant")
        #expect(responses.messages.last?["content"] as? String == "Echo: Name three rivers")
        #expect(responses.messages.contains { $0["content"] as? String == "Name three rivers" && $0["role"] as? String == "user" })
        #expect(responses.messages.last?["finish_reason"] as? String == "completed")
        #expect(responses.conversation["subject"] as? String == "subject-from-header", "X-Chatlog-Subject wins over `user`")
        let forwarded = try world.upstream.requests().flatMap { ($0["headers"] as? [[String]] ?? []).compactMap(\.first) }
        #expect(!forwarded.contains { $0.lowercased().hasPrefix("x-chatlog") }, "X-Chatlog-* headers are not sent upstream")
        let responsesUsage = results[2]["usage"] as? [String: Any]
        #expect(responses.messages.last?["prompt_tokens"] as? Int == responsesUsage?["input_tokens"] as? Int)
        #expect(responses.messages.last?["completion_tokens"] as? Int == responsesUsage?["output_tokens"] as? Int)

        // Anthropic, streamed: system, user, then text and tool_use; subject from metadata.user_id.
        let messages = try logged(results[3])
        #expect(messages.messages.first?["role"] as? String == "system")
        #expect(messages.messages.last?["content"] as? String == "Let me check.")
        #expect(messages.messages.last?["finish_reason"] as? String == "tool_use")
        #expect(messages.messages.last?["model"] as? String == "claude-sonnet-4-5")
        let anthropicUsage = results[3]["usage"] as? [String: Any]
        #expect(messages.messages.last?["completion_tokens"] as? Int == anthropicUsage?["output_tokens"] as? Int)
        let anthropicMetadata = text(messages.messages.last?["metadata"] ?? NSNull())
        #expect(anthropicMetadata.contains("get_weather") && anthropicMetadata.contains("Rome"), "\(anthropicMetadata)")
        #expect(messages.conversation["subject"] as? String == "subject-7")
        #expect(text(messages.conversation).contains(upstreamRequestID(results[3]) ?? "-"))
    }

    @Test("a conversation resent turn after turn is one logged conversation with only the new messages appended")
    func threadingAcrossTurns() async throws {
        let world = try await ProxyWorld()
        let results = try world.sdk([
            world.openAI.merging(["messages": user("First question")]) { $1 },
            world.openAI.merging(["messages": user("Second question"), "continue": true, "stream": true]) { $1 },
            world.openAI.merging(["messages": user("Third question"), "continue": true]) { $1 },
            world.anthropic.merging(["messages": user("Bonjour"), "system": "French only."]) { $1 },
            world.anthropic.merging(["messages": user("Encore"), "continue": true, "stream": true, "system": "French only."]) { $1 },
            world.openAI.merging(["api": "responses", "input": "Start here"]) { $1 },
            world.openAI.merging(["api": "responses", "input": "Go on", "chain": true, "stream": true]) { $1 },
            world.openAI.merging(["api": "responses", "input": "And finish", "chain": true]) { $1 },
            world.openAI.merging(["messages": user("Unrelated question")]) { $1 },
        ])
        for (index, result) in results.enumerated() { #expect(result["ok"] as? Bool == true, "call \(index): \(result)") }
        let ids = results.map { ($0["headers"] as? [String: String])?["x-chatlog-conversation"] ?? "missing \($0)" }
        #expect(Set(ids[0...2]).count == 1, "chat turns: \(ids[0...2])")
        #expect(Set(ids[3...4]).count == 1, "anthropic turns: \(ids[3...4])")
        #expect(Set(ids[5...7]).count == 1, "responses turns: \(ids[5...7])")
        #expect(Set([ids[0], ids[3], ids[5], ids[8]]).count == 4, "separate conversations: \(ids)")

        // Forcing: an unrelated call with X-Chatlog-Conversation goes into that conversation.
        let forced = try world.sdk([
            world.openAI.merging(["messages": user("Filed by hand"), "headers": ["X-Chatlog-Conversation": ids[8]]]) { $1 }
        ])
        #expect((forced[0]["headers"] as? [String: String])?["x-chatlog-conversation"] == ids[8])
        try await world.finish()

        let chat = messagesOf(try showJSON(ids[0], sandbox: world.sandbox))
        #expect(
            chat.map { $0["content"] as? String } == [
                "First question", "Echo: First question", "Second question", "Echo: Second question", "Third question",
                "Echo: Third question",
            ])
        let anthropic = messagesOf(try showJSON(ids[3], sandbox: world.sandbox))
        #expect(
            anthropic.map { $0["content"] as? String } == ["French only.", "Bonjour", "Echo: Bonjour", "Encore", "Echo: Encore"],
            "the system prompt once, then each turn's new messages")
        let responses = messagesOf(try showJSON(ids[5], sandbox: world.sandbox))
        #expect(
            responses.map { $0["content"] as? String } == [
                "Start here", "Echo: Start here", "Go on", "Echo: Go on", "And finish", "Echo: And finish",
            ])
        let unrelated = messagesOf(try showJSON(ids[8], sandbox: world.sandbox))
        #expect(
            unrelated.map { $0["content"] as? String } == [
                "Unrelated question", "Echo: Unrelated question", "Filed by hand", "Echo: Filed by hand",
            ])
        #expect(try world.conversationIDs().count == 4)
    }

    @Test("secrets pasted into a prompt reach upstream unchanged and are logged redacted, in no byte of the store")
    func pastedSecretsAreRedacted() async throws {
        let world = try await ProxyWorld()
        let pastedOpenAI = "sk-proj-" + randomAlphanumerics(48)
        let pastedAWS = "AKIA" + String(randomAlphanumerics(16).uppercased().map { $0.isLetter || $0.isNumber ? $0 : "Q" })
        let pastedGitHub = "ghp_" + randomAlphanumerics(36)
        let prompt = "My key is \(pastedOpenAI) and AWS \(pastedAWS), token \(pastedGitHub). Why does it fail?"
        let results = try world.sdk([
            world.openAI.merging(["messages": user(prompt)]) { $1 },
            world.anthropic.merging(["messages": user(prompt), "stream": true]) { $1 },
        ])
        for result in results { #expect(result["ok"] as? Bool == true, "\(result)") }
        // Upstream got the prompt as sent (and echoed it back to the client unchanged).
        let bodies = try world.upstream.requests().compactMap { $0["body"] as? String }
        #expect(bodies.count == 2 && bodies.allSatisfy { $0.contains(pastedOpenAI) && $0.contains(pastedAWS) && $0.contains(pastedGitHub) })
        #expect(results.allSatisfy { ($0["text"] as? String) == "Echo: " + prompt })
        try await world.finish(credentials: [pastedOpenAI, pastedAWS, pastedGitHub])
        for result in results {
            let id = (result["headers"] as? [String: String])?["x-chatlog-conversation"] ?? ""
            let messages = messagesOf(try showJSON(id, sandbox: world.sandbox))
            let expected =
                "My key is [REDACTED:openai_key] and AWS [REDACTED:aws_access_key_id], token [REDACTED:github_token]. Why does it fail?"
            #expect(messages.map { $0["content"] as? String } == [expected, "Echo: " + expected])
            let counts = String(
                decoding: (try? JSONSerialization.data(withJSONObject: messages.first?["metadata"] ?? NSNull())) ?? Data(), as: UTF8.self)
            #expect(counts.contains("openai_key") && counts.contains("github_token"), "kinds in the metadata: \(counts)")
        }
    }

    @Test("events pass on while the upstream still streams (nothing buffered); a hang-up during upstream silence is noticed")
    func streamsAreNotBuffered() async throws {
        let world = try await ProxyWorld()
        // Upstream sends the role chunk and three words, then holds the stream open and sends nothing more.
        try world.upstream.script([["path": "/v1/chat/completions", "hang_after": 4]])
        let result = try readEvents(world, prompt: "one two three four five six", count: 4)
        #expect(result.status == 0, "the first four events did not come through while upstream held the stream: \(result)")
        let events = (try jsonObject(result.stdout))["events"] as? [String] ?? []
        #expect(events.count == 4)
        #expect(events.last?.contains(#""content":" two""#) == true, "\(events)")
        // The client hung up while the upstream was silent: noticed without a write, the call logged with what it got.
        try await waitFor("the cut-off call is logged", timeout: 60) { (try? world.conversationIDs().count) == 1 }
        try await world.finish()
        let messages = messagesOf(try showJSON(try world.conversationIDs()[0], sandbox: world.sandbox))
        #expect(messages.last?["content"] as? String == "Echo: one two", "the partial completion")
        #expect(messages.last?["finish_reason"] as? String == "client_disconnected")
    }

    @Test("a client that hangs up mid-stream is logged client_disconnected with the part that was sent")
    func aClientThatHangsUpIsLogged() async throws {
        let world = try await ProxyWorld()
        let words = (1...30).map { "w\($0)" }.joined(separator: " ")
        try world.upstream.script([["path": "/v1/chat/completions", "delay_ms": 100]])
        let result = try readEvents(world, prompt: words, count: 4)
        #expect(result.status == 0, "\(result)")
        try await waitFor("the cut-off call is logged", timeout: 60) { (try? world.conversationIDs().count) == 1 }
        try await world.finish()
        let messages = messagesOf(try showJSON(try world.conversationIDs()[0], sandbox: world.sandbox))
        let content = messages.last?["content"] as? String ?? ""
        #expect(messages.last?["role"] as? String == "assistant")
        // What the client got ("Echo: w1 w2"), and perhaps an event or two the proxy sent before it saw the hang-up.
        #expect(content.hasPrefix("Echo: w1 w2") && ("Echo: " + words).hasPrefix(content) && content.count < 6 + words.count, "\(content)")
        #expect(messages.last?["finish_reason"] as? String == "client_disconnected")
    }

    @Test("failed and cut-off calls are logged with their status and what happened")
    func failuresAreLogged() async throws {
        let world = try await ProxyWorld()
        try world.upstream.script([
            ["path": "/v1/chat/completions", "status": 429],
            ["path": "/v1/messages", "status": 500],
            ["path": "/v1/messages", "error_event_after": 6],
            ["path": "/v1/chat/completions", "disconnect_after": 4],
        ])
        let results = try world.sdk([
            world.openAI.merging(["messages": user("Rate limited")]) { $1 },
            world.anthropic.merging(["messages": user("Server error")]) { $1 },
            world.anthropic.merging(["messages": user("alpha beta gamma delta epsilon"), "stream": true]) { $1 },
            world.openAI.merging(["messages": user("red green blue yellow"), "stream": true]) { $1 },
        ])
        #expect(results[0]["status"] as? Int == 429)
        #expect(results[1]["status"] as? Int == 500)
        #expect((results[2]["message"] as? String)?.contains("overloaded_error") == true, "\(results[2])")
        #expect(results[3]["ok"] as? Bool == false, "the cut stream fails in the client too: \(results[3])")
        try await waitFor("four calls logged", timeout: 60) { (try? world.conversationIDs().count) == 4 }
        try await world.finish()
        var byPrompt: [String: [[String: Any]]] = [:]
        for id in try world.conversationIDs() {
            let messages = messagesOf(try showJSON(id, sandbox: world.sandbox))
            if let first = messages.first?["content"] as? String { byPrompt[first] = messages }
        }
        func completion(_ prompt: String) -> [String: Any]? { byPrompt[prompt]?.last }
        func metadata(_ message: [String: Any]?) -> [String: Any] { message?["metadata"] as? [String: Any] ?? [:] }
        func metadataText(_ message: [String: Any]?) -> String {
            String(decoding: (try? JSONSerialization.data(withJSONObject: message?["metadata"] ?? NSNull())) ?? Data(), as: UTF8.self)
        }
        #expect(byPrompt.count == 4, "\(byPrompt.keys)")
        let expected = [
            "Rate limited": "upstream_error", "Server error": "upstream_error", "alpha beta gamma delta epsilon": "upstream_error",
            "red green blue yellow": "upstream_disconnected",
        ]
        for (prompt, reason) in expected {
            let message = completion(prompt)
            #expect(message?["role"] as? String == "assistant", "\(prompt): \(message ?? [:])")
            #expect(message?["finish_reason"] as? String == reason, "\(prompt): \(message ?? [:])")
        }
        #expect(metadata(completion("Rate limited"))["status"] as? Int == 429)
        #expect(metadata(completion("Server error"))["status"] as? Int == 500)
        #expect(metadataText(completion("Rate limited")).contains("rate_limit_exceeded"), "the upstream error object")
        // The Anthropic stream had message_start, block start, ping and three words before the error event.
        #expect(completion("alpha beta gamma delta epsilon")?["content"] as? String == "Echo: alpha beta")
        // The chat stream was cut after the role chunk and three words.
        #expect(completion("red green blue yellow")?["content"] as? String == "Echo: red green")
    }
}

@Suite("chatlog serve: server-held keys and proxy tokens")
struct ProxyTokenTests {
    @Test("apps present proxy tokens; the real keys go upstream, the token's name is logged, nothing leaks")
    func serverHeldKeys() async throws {
        let realOpenAI = "sk-proj-" + randomAlphanumerics(48)
        let realAnthropic = "sk-ant-api03-" + randomAlphanumerics(48)
        let world = try await ProxyWorld(
            environment: ["OPENAI_API_KEY": realOpenAI, "ANTHROPIC_API_KEY": realAnthropic],
            upstreamKeys: ([realOpenAI], [realAnthropic]))
        world.sandbox.addSecret(realOpenAI)
        world.sandbox.addSecret(realAnthropic)
        // Made while the server runs: it must see tokens created after it started.
        let created = try world.sandbox.chatlog(["token", "create", "billing-app"])
        #expect(created.status == 0, "\(created)")
        let token = try #require(
            created.out.split(whereSeparator: { $0.isWhitespace }).map(String.init).last { $0.count >= 20 },
            "no token in \(created)")
        let listed = try world.sandbox.chatlog(["token", "list"])
        #expect(listed.status == 0 && listed.out.contains("billing-app") && !listed.out.contains(token), "\(listed)")

        let before = try world.upstream.requests().count
        let results = try world.sdk([
            world.openAI.merging(["api_key": token, "messages": user("Billed call")]) { $1 },
            world.anthropic.merging(["api_key": token, "messages": user("Billed Claude call"), "stream": true]) { $1 },
            world.openAI.merging(["api_key": "not-a-token-" + randomAlphanumerics(24), "messages": user("Intruder")]) { $1 },
            world.openAI.merging(["api_key": realOpenAI, "messages": user("The real key is not a token")]) { $1 },
        ])
        #expect(results[0]["ok"] as? Bool == true, "\(results[0])")
        #expect(results[1]["ok"] as? Bool == true, "\(results[1])")
        #expect(results[2]["status"] as? Int == 401, "an unknown token: \(results[2])")
        #expect(results[3]["status"] as? Int == 401, "the provider's key is not a proxy token: \(results[3])")
        // curl with x-api-key, as the Anthropic docs show it.
        let curl = try curlExchange(
            world.server.baseURL + "/v1/messages",
            body: Data(#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"Billed by curl"}]}"#.utf8),
            headers: ["x-api-key": token, "anthropic-version": "2023-06-01", "Content-Type": "application/json"], sandbox: world.sandbox)
        #expect(curl.status == 200, "\(curl)")

        let received = try world.upstream.requests().dropFirst(before)
        #expect(received.count == 3, "the refused calls never went upstream: \(received.count) requests")
        for request in received {
            let path = request["path"] as? String ?? ""
            let credential = path == "/v1/messages" ? (headerValue(request, "x-api-key") ?? headerValue(request, "authorization")) : headerValue(request, "authorization")
            let real = path == "/v1/messages" ? realAnthropic : realOpenAI
            #expect(credential == real || credential == "Bearer " + real, "\(path): upstream got another credential")
            let headers = (request["headers"] as? [[String]] ?? []).flatMap { $0 }.joined(separator: "\n")
            #expect(!headers.contains(token), "the token went upstream")
        }

        // Revoked while running: refused from then on.
        let revoked = try world.sandbox.chatlog(["token", "revoke", "billing-app"])
        #expect(revoked.status == 0, "\(revoked)")
        let after = try world.sdk([world.openAI.merging(["api_key": token, "messages": user("After revocation")]) { $1 }])
        #expect(after[0]["status"] as? Int == 401, "\(after[0])")

        try await world.finish(credentials: [realOpenAI, realAnthropic, token])
        for result in results.prefix(2) {
            let id = (result["headers"] as? [String: String])?["x-chatlog-conversation"] ?? ""
            let last = messagesOf(try showJSON(id, sandbox: world.sandbox)).last
            #expect((last?["metadata"] as? [String: Any])?["app"] as? String == "billing-app", "\(last ?? [:])")
        }
        let outputs = try [world.sandbox.chatlog(["list"]), world.sandbox.chatlog(["export"])].flatMap { [$0.stdout, $0.stderr] }
        #expect(leakedCredentials([token], sandbox: world.sandbox, outputs: outputs + [listed.stdout, revoked.stdout]).isEmpty)
    }
}

@Suite("chatlog serve: logging off the response path, and --durable")
struct ProxyDurabilityTests {
    /// Holds SQLite's write lock on the store (sqlite3 in another process, `BEGIN IMMEDIATE`) until `release()`.
    final class StoreLock: Sendable {
        let process: BackgroundProcess
        init(_ world: ProxyWorld) async throws {
            let sqlite3 = try ProxyHarness.tool("sqlite3")
            process = try BackgroundProcess(
                [world.sandbox.path("chatlog.db")], env: world.sandbox.baseEnvironment, cwd: world.sandbox.directory,
                scratch: world.sandbox.root.appendingPathComponent("tmp"), executable: sqlite3, keepStdinOpen: true)
            let child = process
            child.writeStdin(Data("BEGIN IMMEDIATE;\nSELECT 'locked';\n".utf8))
            try await waitFor("sqlite3 holds the write lock", timeout: 30) { child.outputSoFar.contains("locked") }
        }
        func release() async throws {
            process.writeStdin(Data("COMMIT;\n".utf8))
            process.closeStdin()
            _ = try await process.finish(timeout: 30)
        }
    }

    /// A streamed chat call by curl in the background, its body going to a file as it arrives.
    static func startStream(_ world: ProxyWorld, prompt: String) throws -> (BackgroundProcess, URL) {
        let output = world.sandbox.url("stream-\(UUID().uuidString).txt")
        let body = #"{"model":"gpt-4.1-mini","stream":true,"messages":[{"role":"user","content":"\#(prompt)"}]}"#
        let process = try BackgroundProcess(
            [
                "-sS", "-N", "-o", output.path, "--max-time", "60", world.server.openAIBase + "/chat/completions",
                "-H", "Content-Type: application/json", "-H", "Authorization: Bearer " + world.openAIKey, "-d", body,
            ], env: world.sandbox.baseEnvironment, cwd: world.sandbox.directory,
            scratch: world.sandbox.root.appendingPathComponent("tmp"), executable: try ProxyHarness.tool("curl"))
        return (process, output)
    }

    @Test("with the store locked, calls still complete; the exchanges are written once it frees")
    func aLockedStoreDoesNotHoldResponses() async throws {
        let world = try await ProxyWorld()
        let lock = try await StoreLock(world)
        let results = try world.sdk([
            world.openAI.merging(["messages": user("While the store is locked")]) { $1 },
            world.anthropic.merging(["messages": user("Streamed while locked"), "stream": true]) { $1 },
        ])
        #expect(results.allSatisfy { $0["ok"] as? Bool == true }, "\(results)")
        let (curl, output) = try Self.startStream(world, prompt: "one two three")
        let finished = try await curl.finish(timeout: 60)
        #expect(finished.status == 0, "\(finished)")
        #expect(String(decoding: (try? Data(contentsOf: output)) ?? Data(), as: UTF8.self).hasSuffix("data: [DONE]\n\n"))
        try await lock.release()
        try await waitFor("the three exchanges are written", timeout: 60) { (try? world.conversationIDs().count) == 3 }
        try await world.finish()
    }

    @Test("a full queue drops exchanges, never calls: visible in /healthz, /metrics and the log")
    func aFullQueueIsVisible() async throws {
        let world = try await ProxyWorld(serve: ["--queue-capacity", "2", "--batch-size", "1"])
        let lock = try await StoreLock(world)
        let calls = 6
        for index in 0..<calls {
            let answer = try curlExchange(
                world.server.openAIBase + "/chat/completions",
                body: Data(#"{"model":"gpt-4.1-mini","messages":[{"role":"user","content":"Queued call \#(index)"}]}"#.utf8),
                headers: ["Authorization": "Bearer " + world.openAIKey, "Content-Type": "application/json"], sandbox: world.sandbox)
            #expect(answer.status == 200 && answer.text.contains("Echo: Queued call \(index)"), "call \(index): \(answer)")
        }
        @Sendable func metric(_ name: String) throws -> Int? {
            let text = try curlExchange(world.server.baseURL + "/metrics", method: "GET", sandbox: world.sandbox).text
            return text.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Int($0.split(separator: " ").last ?? "") }
        }
        let degraded = try curlExchange(world.server.baseURL + "/healthz", method: "GET", sandbox: world.sandbox)
        #expect(degraded.status == 503 && degraded.text.contains("degraded"), "\(degraded)")
        let dropped = try #require(try metric("chatlog_proxy_dropped_total"))
        #expect(dropped >= 1 && dropped <= calls - 2, "dropped \(dropped)")
        try await lock.release()
        try await waitFor("the queued exchanges are written", timeout: 60) {
            (try? metric("chatlog_proxy_logged_total")) == calls - dropped
        }
        let healthy = try curlExchange(world.server.baseURL + "/healthz", method: "GET", sandbox: world.sandbox)
        #expect(healthy.status == 200, "\(healthy)")
        let stopped = try await world.finish()
        #expect(try world.conversationIDs().count == calls - dropped)
        #expect(stopped.err.contains("recorder queue is full"), "the log says why exchanges were not logged")
    }

    @Test("--durable holds the final event until the exchange is committed")
    func durableHoldsTheFinalEvent() async throws {
        let world = try await ProxyWorld(serve: ["--durable"])
        let lock = try await StoreLock(world)
        let (curl, output) = try Self.startStream(world, prompt: "one two three")
        @Sendable func received() -> String { String(decoding: (try? Data(contentsOf: output)) ?? Data(), as: UTF8.self) }
        // Everything up to the finish chunk arrives; [DONE] waits for the commit the lock prevents.
        try await waitFor("the stream's content arrives", timeout: 60) { received().contains(#""finish_reason":"stop""#) }
        try await sleepOnDispatchThread(1.5)
        // The final event is not complete (an SSE event ends with its blank line): no client has seen it.
        #expect(!received().hasSuffix("data: [DONE]\n\n"), "[DONE] was delivered before the exchange was committed")
        #expect(try world.conversationIDs().isEmpty)
        #expect(!curl.hasExited)
        try await lock.release()
        let finished = try await curl.finish(timeout: 60)
        #expect(finished.status == 0, "\(finished)")
        #expect(received().hasSuffix("data: [DONE]\n\n"))
        // Committed before the client got its last byte: no wait needed.
        #expect(try world.conversationIDs().count == 1)
        // Not streamed: the body's last byte waits the same way, and the row is there when the call returns.
        let results = try world.sdk([world.openAI.merging(["messages": user("Durable, not streamed")]) { $1 }])
        #expect(results.first?["ok"] as? Bool == true, "\(results)")
        #expect(try world.conversationIDs().count == 2)
        try await world.finish()
    }
}

/// Tests/ProxyHarness/read_events.py through the proxy: a chat stream with `prompt`, read until `count`
/// events have arrived, then the connection is closed (a client going away).
func readEvents(_ world: ProxyWorld, prompt: String, count: Int) throws -> CommandResult {
    let body = world.sandbox.url("stream-request-\(UUID().uuidString).json")
    let request: [String: Any] = ["model": "gpt-4.1-mini", "stream": true, "messages": user(prompt)]
    try JSONSerialization.data(withJSONObject: request).write(to: body)
    return try run(
        [
            ProxyHarness.harness.appendingPathComponent("read_events.py").path, world.server.openAIBase + "/chat/completions",
            body.path, String(count), "--header", "Authorization: Bearer " + world.openAIKey,
        ], env: world.sandbox.baseEnvironment, stdin: nil, cwd: world.sandbox.directory,
        executable: try ProxyHarness.tool("python3"), timeout: 60)
}

/// The value of request header `name` (any case) in a fake upstream request record.
func headerValue(_ record: [String: Any], _ name: String) -> String? {
    (record["headers"] as? [[String]])?.first { $0.first?.lowercased() == name }?.last
}

/// Whether the proxy sent upstream the body the client sent — the same bytes, or, for a chat stream that
/// did not ask for usage, the same JSON with `stream_options.include_usage` added (the issue's one exception).
func requestBodyMatches(proxied: String?, direct: String?) -> Bool {
    guard let proxied, let direct else { return proxied == direct }
    if proxied == direct { return true }
    guard var sent = (try? JSONSerialization.jsonObject(with: Data(proxied.utf8))) as? [String: Any],
        let original = (try? JSONSerialization.jsonObject(with: Data(direct.utf8))) as? [String: Any],
        original["stream_options"] == nil, (sent["stream_options"] as? [String: Any])?["include_usage"] as? Bool == true
    else { return false }
    sent["stream_options"] = nil
    let canonical = { (object: [String: Any]) in try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) }
    return canonical(sent) != nil && canonical(sent) == canonical(original)
}
