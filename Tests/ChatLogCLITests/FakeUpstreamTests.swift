import Foundation
import Testing

// The fake upstream itself (Tests/ProxyHarness/fake_upstream.py), checked with the official SDKs
// talking to it directly: every shape it sends parses under the SDKs' strict response validation
// (so a new SDK version that expects a field the fake lacks fails here, not as a proxy defect), and
// the same request answers the same bytes (the premise of ProxyClientTests' byte comparisons).

@Suite("Fake upstream: the SDKs accept what it sends", .serialized)
struct FakeUpstreamTests {
    static var weatherTool: [String: Any] {
        [
            "type": "function",
            "function": ["name": "get_weather", "parameters": ["type": "object", "properties": ["location": ["type": "string"]]]],
        ]
    }
    static var responsesWeatherTool: [String: Any] {
        ["type": "function", "name": "get_weather", "parameters": ["type": "object", "properties": ["location": ["type": "string"]]]]
    }
    static var anthropicWeatherTool: [String: Any] {
        ["name": "get_weather", "input_schema": ["type": "object", "properties": ["location": ["type": "string"]]]]
    }

    @Test("chat completions, Responses and messages, streamed and not, text, tools and refusals")
    func everyShapeParsesStrictly() async throws {
        let sandbox = try Sandbox()
        let upstream = try await FakeUpstream(sandbox: sandbox, openAIKeys: ["sk-fake-openai"], anthropicKeys: ["sk-ant-fake"])
        // Entries are taken in order by the calls to their path; an entry with only a path answers as by default.
        let chat = ["path": "/v1/chat/completions"]
        try upstream.script([
            chat, chat, chat,
            ["path": "/v1/chat/completions", "tool_calls": [["name": "get_weather", "arguments": ["location": "Paris"]]]],
            [
                "path": "/v1/chat/completions",
                "tool_calls": [
                    ["name": "get_weather", "arguments": ["location": "Paris"]], ["name": "get_time", "arguments": ["tz": "CET"]],
                ],
            ],
            ["path": "/v1/chat/completions", "refusal": "I can't help with that."],
            ["path": "/v1/responses"], ["path": "/v1/responses"],
            ["path": "/v1/responses", "tool_calls": [["name": "get_weather", "arguments": ["location": "Oslo"]]]],
            ["path": "/v1/messages"],
            ["path": "/v1/messages", "text": "Let me check.", "tool_calls": [["name": "get_weather", "arguments": ["location": "Rome"]]]],
        ])
        let openAI: [String: Any] = ["sdk": "openai", "base_url": upstream.openAIBase, "api_key": "sk-fake-openai"]
        let anthropic: [String: Any] = ["sdk": "anthropic", "base_url": upstream.anthropicBase, "api_key": "sk-ant-fake"]
        func user(_ text: String) -> [[String: Any]] { [["role": "user", "content": text]] }
        let calls: [[String: Any]] = [
            openAI.merging(["messages": user("Hello there")]) { $1 },
            openAI.merging(["messages": user("Stream it"), "stream": true]) { $1 },
            openAI.merging(["messages": user("With usage"), "stream": true, "stream_options": ["include_usage": true]]) { $1 },
            openAI.merging(["messages": user("Weather?"), "tools": [Self.weatherTool]]) { $1 },
            openAI.merging(["messages": user("Weather and time?"), "tools": [Self.weatherTool], "stream": true]) { $1 },
            openAI.merging(["messages": user("Something bad"), "stream": true]) { $1 },
            openAI.merging(["api": "responses", "input": "What is up"]) { $1 },
            openAI.merging(["api": "responses", "input": "Next", "chain": true, "stream": true]) { $1 },
            openAI.merging(["api": "responses", "input": "Weather in Oslo?", "tools": [Self.responsesWeatherTool], "stream": true]) { $1 },
            anthropic.merging(["messages": user("Hi Claude"), "system": "Be brief."]) { $1 },
            anthropic.merging(["messages": user("Weather in Rome?"), "tools": [Self.anthropicWeatherTool], "stream": true]) { $1 },
        ]
        let results = try sdkCalls(calls, sandbox: sandbox, caPath: upstream.caPath)
        for (index, result) in results.enumerated() {
            #expect(result["ok"] as? Bool == true, "call \(index): \(result)")
        }
        #expect(results[0]["text"] as? String == "Echo: Hello there")
        #expect(results[1]["text"] as? String == "Echo: Stream it")
        #expect(results[1]["usage"] is NSNull)
        let usage = results[2]["usage"] as? [String: Any]
        #expect(usage?["completion_tokens"] as? Int == 3)
        #expect((results[3]["tool_calls"] as? [[String: Any]])?.first?["arguments"] as? String == #"{"location":"Paris"}"#)
        #expect((results[4]["tool_calls"] as? [[String: Any]])?.map { $0["name"] as? String } == ["get_weather", "get_time"])
        #expect(results[4]["finish_reason"] as? String == "tool_calls")
        #expect(results[5]["refusal"] as? String == "I can't help with that.")
        #expect(results[6]["text"] as? String == "Echo: What is up")
        #expect(results[7]["text"] as? String == "Echo: Next")
        #expect((results[8]["tool_calls"] as? [[String: Any]])?.first?["name"] as? String == "get_weather")
        #expect(results[9]["text"] as? String == "Echo: Hi Claude")
        #expect(results[9]["finish_reason"] as? String == "end_turn")
        #expect(results[10]["text"] as? String == "Let me check.")
        #expect(results[10]["finish_reason"] as? String == "tool_use")
        #expect((results[10]["tool_calls"] as? [[String: Any]])?.first?["arguments"] as? String == #"{"location":"Rome"}"#)
        // The Responses call chained to an unknown id is refused the way the API refuses it.
        let unknown = try sdkCalls(
            [openAI.merging(["api": "responses", "input": "x", "previous_response_id": "resp_unknown"]) { $1 }], sandbox: sandbox,
            caPath: upstream.caPath)
        #expect(unknown[0]["status"] as? Int == 400, "\(unknown)")
    }

    @Test("429, 500, an error event mid-stream and a dropped connection reach the SDKs as the real APIs' errors")
    func errorsParse() async throws {
        let sandbox = try Sandbox()
        let upstream = try await FakeUpstream(sandbox: sandbox)
        try upstream.script([
            ["path": "/v1/chat/completions", "status": 429],
            ["path": "/v1/messages", "status": 500],
            ["path": "/v1/messages", "error_event_after": 5],
            ["path": "/v1/chat/completions", "disconnect_after": 3],
        ])
        let openAI: [String: Any] = ["sdk": "openai", "base_url": upstream.openAIBase, "api_key": "sk-any"]
        let anthropic: [String: Any] = ["sdk": "anthropic", "base_url": upstream.anthropicBase, "api_key": "sk-ant-any"]
        let results = try sdkCalls(
            [
                openAI.merging(["messages": [["role": "user", "content": "x"]]]) { $1 },
                anthropic.merging(["messages": [["role": "user", "content": "x"]]]) { $1 },
                anthropic.merging(["messages": [["role": "user", "content": "one two three four five"]], "stream": true]) { $1 },
                openAI.merging(["messages": [["role": "user", "content": "one two three four five"]], "stream": true]) { $1 },
            ], sandbox: sandbox, caPath: upstream.caPath)
        #expect(results[0]["error"] as? String == "RateLimitError")
        #expect((results[0]["request_id"] as? String)?.hasPrefix("req_") == true)
        #expect(results[1]["error"] as? String == "InternalServerError")
        #expect((results[1]["request_id"] as? String)?.hasPrefix("req_011C") == true)
        #expect((results[2]["message"] as? String)?.contains("overloaded_error") == true, "\(results[2])")
        #expect(results[3]["error"] as? String == "APIConnectionError")
    }

    @Test("the same request answers the same bytes, and asking for usage changes nothing but the usage")
    func deterministicAnswers() async throws {
        let sandbox = try Sandbox()
        let upstream = try await FakeUpstream(sandbox: sandbox)
        let url = upstream.openAIBase + "/chat/completions"
        let headers = ["Authorization": "Bearer sk-any", "Content-Type": "application/json"]
        let plain = Data(#"{"model":"gpt-4.1-mini","stream":true,"messages":[{"role":"user","content":"Count to five"}]}"#.utf8)
        let withUsage = Data(
            #"{"model":"gpt-4.1-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Count to five"}]}"#
                .utf8)
        let first = try curlExchange(url, body: plain, headers: headers, caPath: upstream.caPath, sandbox: sandbox)
        let second = try curlExchange(url, body: plain, headers: headers, caPath: upstream.caPath, sandbox: sandbox)
        let usage = try curlExchange(url, body: withUsage, headers: headers, caPath: upstream.caPath, sandbox: sandbox)
        #expect(first.status == 200, "\(first)")
        #expect(first.body == second.body)
        #expect(first.endToEnd() == second.endToEnd())
        #expect(first.endToEnd() == usage.endToEnd())
        #expect(first.text.hasSuffix("data: [DONE]\n\n"))
        #expect(!first.text.contains("\"usage\""))
        // With include_usage: `"usage":null` in every chunk and one more chunk with empty choices.
        let events = usage.text.components(separatedBy: "\n\n").filter { !$0.isEmpty }
        #expect(events.dropLast(2).allSatisfy { $0.contains(#""usage":null"#) })
        #expect(events.dropLast().last?.contains(#""choices":[]"#) == true)
        #expect(events.count == first.text.components(separatedBy: "\n\n").filter { !$0.isEmpty }.count + 1)
    }
}
