import ChatLog
import NIOCore
import Testing

@testable import ChatLogServer

/// Splits `text` into chunks at the given byte offsets.
func chunks(_ text: String, at cuts: [Int]) -> [[UInt8]] {
    let bytes = Array(text.utf8)
    var result: [[UInt8]] = []
    var start = 0
    for cut in cuts.sorted() where cut > start && cut < bytes.count {
        result.append(Array(bytes[start..<cut]))
        start = cut
    }
    result.append(Array(bytes[start...]))
    return result
}

@Suite struct ServerSentEventParserTests {
    @Test func parsesEventsWithEveryLineEndingAndSplit() {
        let stream = "event: a\ndata: one\r\ndata: two\r\n\r\n: comment\n\ndata: {\"x\":1}\r\revent: b\ndata:no-space\n\n"
        let expected: [(String?, String)] = [("a", "one\ntwo"), (nil, "{\"x\":1}"), ("b", "no-space")]
        for cut in 0...stream.utf8.count {
            var parser = ServerSentEventParser()
            var events: [ServerSentEventParser.Event] = []
            for chunk in chunks(stream, at: [cut]) { events += parser.feed(chunk) }
            #expect(events.map(\.event) == expected.map(\.0), "cut at \(cut)")
            #expect(events.map(\.data) == expected.map(\.1), "cut at \(cut)")
            // Offsets cover exactly the event's bytes.
            let bytes = Array(stream.utf8)
            #expect(String(decoding: bytes[events[0].start..<events[0].end], as: UTF8.self) == "event: a\ndata: one\r\ndata: two\r\n\r\n")
            #expect(String(decoding: bytes[events[2].start..<events[2].end], as: UTF8.self) == "event: b\ndata:no-space\n\n")
        }
    }

    @Test func anEventWithoutItsBlankLineIsNotDispatched() {
        var parser = ServerSentEventParser()
        #expect(parser.feed(Array("data: partial\n".utf8)).isEmpty)
        #expect(parser.feed(Array("\n".utf8)).map(\.data) == ["partial"])
    }
}

@Suite struct RequestCaptureTests {
    @Test func chatMessagesWithToolCallsAndParts() throws {
        let body = """
            {"model":"gpt-4o","user":"u-1","messages":[
              {"role":"developer","content":"Be brief."},
              {"role":"user","content":[{"type":"text","text":"What is "},{"type":"text","text":"2+2?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]},
              {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"add","arguments":"{\\"a\\":2}"}}]},
              {"role":"tool","tool_call_id":"call_1","content":"4"}],
             "stream":true,"stream_options":{"include_usage":true}}
            """
        let captured = CapturedRequest(api: .chatCompletions, body: Array(body.utf8))
        #expect(captured.parsed && captured.stream && captured.includeUsage)
        #expect(captured.model == "gpt-4o" && captured.subject == "u-1")
        #expect(captured.messages.map(\.message.role) == [.system, .user, .assistant, .tool])
        #expect(captured.messages[1].message.content == "What is 2+2?")
        // The image is recorded by type only, never its data.
        #expect(captured.messages[1].message.metadata == .object(["content_parts": .array([.object(["type": .string("image_url")])])]))
        #expect(captured.messages[2].message.metadata?["tool_calls"]?.array?.first?["name"]?.string == "add")
        #expect(captured.messages[3].message.metadata?["tool_call_id"]?.string == "call_1")
    }

    @Test func anthropicSystemToolUseAndToolResults() {
        let body = """
            {"model":"claude","metadata":{"user_id":"sub-9"},"system":[{"type":"text","text":"sys"}],"messages":[
              {"role":"user","content":"hi"},
              {"role":"assistant","content":[{"type":"text","text":"let me look"},{"type":"tool_use","id":"toolu_1","name":"get","input":{"q":1}}]},
              {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"found"}]}]}
            """
        let captured = CapturedRequest(api: .anthropicMessages, body: Array(body.utf8))
        #expect(captured.subject == "sub-9")
        #expect(captured.messages.map(\.message.role) == [.system, .user, .assistant, .tool])
        #expect(captured.messages.map(\.message.content) == ["sys", "hi", "let me look", "found"])
        #expect(captured.messages[2].message.metadata?["tool_calls"]?.array?.first?["arguments"]?.string == "{\"q\":1}")
    }

    @Test func responsesInputItems() {
        let body = """
            {"model":"gpt-5","instructions":"be nice","previous_response_id":"resp_1","input":[
              {"role":"user","content":[{"type":"input_text","text":"hello"}]},
              {"type":"function_call","call_id":"c1","name":"f","arguments":"{}"},
              {"type":"function_call_output","call_id":"c1","output":"42"},
              {"type":"reasoning","id":"rs_1","summary":[]}]}
            """
        let captured = CapturedRequest(api: .responses, body: Array(body.utf8))
        #expect(captured.previousResponseID == "resp_1")
        #expect(captured.messages.map(\.message.role) == [.system, .user, .assistant, .tool])
        #expect(captured.messages.map(\.message.content) == ["be nice", "hello", "", "42"])
    }

    @Test func notJSONIsCapturedAsNothing() {
        let captured = CapturedRequest(api: .chatCompletions, body: Array("not json".utf8))
        #expect(!captured.parsed && captured.messages.isEmpty)
    }
}

@Suite struct CompletionCaptureTests {
    func stream(_ api: ProxyAPI, _ text: String, splitEvery: Int = 7) -> (CapturedCompletion, CompletionCapture) {
        var capture = CompletionCapture(api: api, streaming: true, captureLimit: 1 << 20)
        let bytes = Array(text.utf8)
        var index = 0
        while index < bytes.count {
            capture.feed(bytes[index..<min(index + splitEvery, bytes.count)])
            index += splitEvery
        }
        let result = capture.finish()
        return (result, capture)
    }

    @Test func chatNonStreamingWithUsageDetailsAndToolCalls() {
        let body = """
            {
              "id": "chatcmpl-1", "model": "gpt-4o-2024", "choices": [{"index": 0, "finish_reason": "tool_calls",
                "message": {"role": "assistant", "content": "calling", "refusal": null,
                  "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{\\"x\\":1}"}}]}}],
              "usage": {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 4},
                "completion_tokens_details": {"reasoning_tokens": 2}}
            }
            """
        var capture = CompletionCapture(api: .chatCompletions, streaming: false, captureLimit: 1 << 20)
        capture.feed(Array(body.utf8))
        let result = capture.finish()
        #expect(result.text == "calling" && result.finishReason == "tool_calls" && result.model == "gpt-4o-2024")
        #expect(result.promptTokens == 10 && result.completionTokens == 5 && result.cachedTokens == 4 && result.reasoningTokens == 2)
        #expect(result.toolCalls == [.object(["id": .string("call_9"), "type": .string("function"), "name": .string("f"), "arguments": .string("{\"x\":1}")])])
        #expect(capture.sawTerminalEvent)
    }

    @Test func chatStreamAccumulatesTextToolCallsAndUsage() {
        let text = """
            data: {"id":"c1","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}

            data: {"id":"c1","model":"m","choices":[{"index":0,"delta":{"content":"Hel"}}]}

            data: {"id":"c1","model":"m","choices":[{"index":0,"delta":{"content":"lo"}}]}

            data: {"id":"c1","model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":"{\\"a"}}]}}]}

            data: {"id":"c1","model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\\":1}"}}]}}]}

            data: {"id":"c1","model":"m","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}

            data: {"id":"c1","model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}

            data: [DONE]


            """
        for split in [1, 5, 64, 10_000] {
            let (result, capture) = stream(.chatCompletions, text, splitEvery: split)
            #expect(result.text == "Hello" && result.finishReason == "tool_calls")
            #expect(result.toolCalls.first?["arguments"]?.string == "{\"a\":1}")
            #expect(result.promptTokens == 3 && result.completionTokens == 4)
            #expect(capture.sawTerminalEvent && capture.sawFirstToken)
        }
    }

    @Test func anthropicStreamWithPingToolUseAndUsage() {
        let text = """
            event: message_start
            data: {"type":"message_start","message":{"id":"msg_1","model":"claude-x","usage":{"input_tokens":12,"cache_read_input_tokens":8,"output_tokens":1}}}

            event: ping
            data: {"type": "ping"}

            event: content_block_start
            data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

            event: content_block_delta
            data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi "}}

            event: content_block_delta
            data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"there"}}

            event: content_block_start
            data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"get","input":{}}}

            event: content_block_delta
            data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\\"q\\":"}}

            event: content_block_delta
            data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"1}"}}

            event: message_delta
            data: {"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":20}}

            event: message_stop
            data: {"type":"message_stop"}


            """
        let (result, capture) = stream(.anthropicMessages, text)
        #expect(result.text == "Hi there" && result.finishReason == "tool_use" && result.responseID == "msg_1")
        #expect(result.promptTokens == 12 && result.completionTokens == 20 && result.cachedTokens == 8)
        #expect(result.toolCalls.first?["arguments"]?.string == "{\"q\":1}")
        #expect(result.canonical == CapturedRequest.canonical(role: .assistant, text: "Hi there", ids: ["toolu_1"]))
        #expect(capture.sawTerminalEvent)
    }

    @Test func anthropicErrorEventAndCutOffStreamKeepPartialText() {
        let cut = """
            event: message_start
            data: {"type":"message_start","message":{"id":"msg_2","model":"c","usage":{"input_tokens":1,"output_tokens":1}}}

            event: content_block_delta
            data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"part"}}


            """
        let (partial, partialCapture) = stream(.anthropicMessages, cut)
        #expect(partial.text == "part" && !partialCapture.sawTerminalEvent)
        let failed = cut + "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n"
        let (result, capture) = stream(.anthropicMessages, failed)
        #expect(result.finishReason == "upstream_error" && result.error?["type"]?.string == "overloaded_error" && capture.sawTerminalEvent)
    }

    @Test func responsesStreamReadsTheCompletedResponse() {
        let text = """
            event: response.created
            data: {"type":"response.created","response":{"id":"resp_7","model":"gpt-5","status":"in_progress","output":[]}}

            event: response.output_text.delta
            data: {"type":"response.output_text.delta","delta":"Yes"}

            event: response.completed
            data: {"type":"response.completed","response":{"id":"resp_7","model":"gpt-5","status":"completed","output":[{"type":"reasoning","summary":[{"type":"summary_text","text":"thought"}]},{"type":"message","role":"assistant","content":[{"type":"output_text","text":"Yes."}]},{"type":"function_call","call_id":"fc_1","name":"f","arguments":"{}"}],"usage":{"input_tokens":5,"output_tokens":6,"input_tokens_details":{"cached_tokens":1},"output_tokens_details":{"reasoning_tokens":3}}}}


            """
        let (result, capture) = stream(.responses, text)
        #expect(result.text == "Yes." && result.finishReason == "completed" && result.responseID == "resp_7")
        #expect(result.promptTokens == 5 && result.completionTokens == 6 && result.cachedTokens == 1 && result.reasoningTokens == 3)
        #expect(result.reasoning == "thought" && result.toolCalls.first?["id"]?.string == "fc_1")
        #expect(capture.sawTerminalEvent)
    }
}

@Suite struct StreamUsageTests {
    static let withoutUsage = """
        data: {"id":"c","choices":[{"index":0,"delta":{"content":"A"}}],"obfuscation":"xy"}

        data: {"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"obfuscation":"z"}

        data: [DONE]


        """
    static let withUsage = """
        data: {"id":"c","choices":[{"index":0,"delta":{"content":"A"}}],"usage":null,"obfuscation":"xy"}

        data: {"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null,"obfuscation":"z"}

        data: {"id":"c","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2},"obfuscation":"q"}

        data: [DONE]


        """

    @Test func strippingGivesTheBytesTheClientWouldHaveSeenAtEverySplit() {
        let bytes = Array(Self.withUsage.utf8)
        for cut in stride(from: 0, through: bytes.count, by: 3) {
            var capture = CompletionCapture(api: .chatCompletions, streaming: true, captureLimit: 1 << 20)
            var stripper = UsageStripper()
            var out: [UInt8] = []
            for chunk in chunks(Self.withUsage, at: [cut, cut + 40]) {
                let events = capture.feed(chunk)
                out += Array(stripper.filter(ByteBuffer(bytes: chunk), events: events).readableBytesView)
            }
            if let remainder = stripper.remainder { out += Array(remainder.readableBytesView) }
            #expect(String(decoding: out, as: UTF8.self) == Self.withoutUsage, "cut at \(cut)")
            #expect(capture.finish().promptTokens == 1)
        }
    }

    @Test func injectionAddsIncludeUsageOnlyWhenStreamOptionsAreAbsent() throws {
        let injected = try #require(UsageInjection.inject(Array(#"{"model":"m","stream":true}"#.utf8)))
        #expect(String(decoding: injected, as: UTF8.self) == #"{"stream_options":{"include_usage":true},"model":"m","stream":true}"#)
        #expect(UsageInjection.inject(Array(#"{"stream_options":{},"stream":true}"#.utf8)) == nil)
        #expect(UsageInjection.inject(Array("[1]".utf8)) == nil)
    }
}

/// Threading rests on a completion and the same message sent back having one canonical form.
@Suite struct CanonicalFormTests {
    func completion(_ api: ProxyAPI, _ body: String) -> CapturedCompletion {
        var capture = CompletionCapture(api: api, streaming: false, captureLimit: 1 << 20)
        capture.feed(Array(body.utf8))
        return capture.finish()
    }

    @Test func responsesOutputItemsSentBackAsInputMatchTheCompletion() {
        let reply = completion(
            .responses,
            #"{"id":"r","status":"completed","output":[{"type":"reasoning","id":"rs","summary":[]},{"type":"message","role":"assistant","content":[{"type":"output_text","text":"Checking."}]},{"type":"function_call","call_id":"fc_1","name":"f","arguments":"{}"},{"type":"web_search_call","id":"ws_1"}]}"#)
        let next = CapturedRequest(
            api: .responses,
            body: Array(
                #"{"input":[{"role":"user","content":"q"},{"type":"reasoning","id":"rs","summary":[]},{"type":"message","role":"assistant","content":[{"type":"output_text","text":"Checking."}]},{"type":"function_call","call_id":"fc_1","name":"f","arguments":"{}"},{"type":"function_call_output","call_id":"fc_1","output":"done"}]}"#
                    .utf8))
        #expect(next.messages.map(\.message.role) == [.user, .assistant, .tool])
        #expect(next.messages[1].canonical == reply.canonical)
    }

    @Test func chatAndAnthropicRepliesSentBackMatchTheCompletion() {
        let chat = completion(
            .chatCompletions,
            #"{"choices":[{"index":0,"message":{"role":"assistant","content":null,"refusal":"No.","tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{}"}}]}}]}"#)
        let chatNext = CapturedRequest(
            api: .chatCompletions,
            body: Array(#"{"messages":[{"role":"assistant","content":null,"refusal":"No.","tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{}"}}]}]}"#.utf8))
        #expect(chatNext.messages[0].canonical == chat.canonical)
        let anthropic = completion(
            .anthropicMessages,
            #"{"id":"m","content":[{"type":"thinking","thinking":"hmm","signature":"s"},{"type":"text","text":"A"},{"type":"text","text":"B"},{"type":"tool_use","id":"tu_1","name":"g","input":{"x":1}}],"stop_reason":"tool_use"}"#)
        let anthropicNext = CapturedRequest(
            api: .anthropicMessages,
            body: Array(#"{"messages":[{"role":"assistant","content":[{"type":"thinking","thinking":"hmm","signature":"s"},{"type":"text","text":"A"},{"type":"text","text":"B"},{"type":"tool_use","id":"tu_1","name":"g","input":{"x":1}}]}]}"#.utf8))
        #expect(anthropicNext.messages[0].canonical == anthropic.canonical)
        #expect(anthropic.reasoning == "hmm")
    }
}
