import AsyncHTTPClient
import ChatLog
import Foundation
import NIOCore
import Testing

@testable import ChatLogServer

/// The proxy in process, in front of a fake upstream: bytes through unchanged, what is logged,
/// threading, tokens, failures, health and metrics.
@Suite(.serialized) struct ProxyServerTests {
    static let chatBody = """
        {
          "id": "chatcmpl-abc",
          "object": "chat.completion",
          "model": "gpt-test",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "Four."}, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 9, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 3}}
        }

        """

    static func chatRequest(_ messages: String, extra: String = "") -> String {
        #"{"model":"gpt-test","messages":["# + messages + "]" + extra + "}"
    }

    func lastMessages(_ store: ChatLogStore, _ id: ConversationID) async throws -> [Message] {
        try await store.transcript(id).messages
    }

    @Test func anUpstreamRequestIDCannotForgeTheAccessLog() async throws {
        let log = CapturedLog()
        try await ProxyFixture.with(logger: log.logger) { fixture in
            // obs-text is legal in a header value: a hostile upstream can send bidi controls.
            fixture.upstream.enqueue(.json(Self.chatBody, requestID: "req_\u{202E}evil\u{202C}_1"))
            let response = try await fixture.post("/v1/chat/completions", Self.chatRequest(#"{"role":"user","content":"hi"}"#))
            #expect(response.status == 200 && response.body == Self.chatBody)
            try await fixture.waitForMessages(2)
        }
        let calls = log.lines.withLock { $0 }.filter { $0.hasPrefix("call ") }
        #expect(calls.count == 1)
        #expect(calls.allSatisfy { $0.contains("upstream_request_id=req_evil_1") })
        #expect(calls.allSatisfy { line in line.unicodeScalars.allSatisfy { $0.value >= 0x20 && $0.value < 0x7F } })
    }

    @Test func nonStreamingChatPassesThroughAndIsLogged() async throws {
        try await ProxyFixture.with { fixture in
            fixture.upstream.enqueue(.json(Self.chatBody))
            let response = try await fixture.post(
                "/v1/chat/completions", Self.chatRequest(#"{"role":"user","content":"2+2? my key is sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCD"}"#),
                headers: [("authorization", "Bearer sk-client-secret-1"), ("x-chatlog-subject", "alice")])
            #expect(response.status == 200 && response.body == Self.chatBody)
            let conversation = try #require(response.headers.first(name: "x-chatlog-conversation").flatMap(ConversationID.init))
            // Upstream got the client's credentials, untouched, and the request body unchanged.
            let sent = try #require(fixture.upstream.requests.first)
            #expect(sent.path == "/v1/chat/completions" && sent.headers["authorization"] == "Bearer sk-client-secret-1")
            #expect(sent.body.contains("sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCD") && sent.headers["x-chatlog-subject"] == nil)
            try await fixture.waitForMessages(2)
            let transcript = try await fixture.store.transcript(conversation)
            #expect(transcript.conversation.subject == "alice")
            #expect(transcript.messages.map(\.role) == [.user, .assistant])
            // Logged redacted; the credential header is never logged.
            #expect(transcript.messages[0].content.contains("[REDACTED:") && !transcript.messages[0].content.contains("sk-proj-"))
            let reply = transcript.messages[1]
            #expect(reply.content == "Four." && reply.model == "gpt-test" && reply.finishReason == "stop")
            #expect(reply.promptTokens == 9 && reply.completionTokens == 2 && reply.latencyMilliseconds != nil)
            #expect(reply.metadata?["status"] == .integer(200) && reply.metadata?["request_id"]?.string == "req_test")
            #expect(reply.metadata?["cached_tokens"] == .integer(3) && reply.metadata?["response_id"]?.string == "chatcmpl-abc")
            let everything = "\(transcript)"
            #expect(!everything.contains("sk-client-secret-1"))
        }
    }

    /// Issue 15: the proxy's conversations of a subject (header or the body's `user`) are that end
    /// user's, sealed under its key: `forget` erases them and the next call gets a fresh key.
    @Test func aSubjectsProxiedCallsAreForgottenTogether() async throws {
        try await ProxyFixture.with { fixture in
            for _ in 0..<3 { fixture.upstream.enqueue(.json(Self.chatBody)) }
            let alice = try await fixture.post(
                "/v1/chat/completions", Self.chatRequest(#"{"role":"user","content":"hello from alice"}"#),
                headers: [("x-chatlog-subject", "alice")])
            let byUser = try await fixture.post(
                "/v1/chat/completions", Self.chatRequest(#"{"role":"user","content":"alice again"}"#, extra: #","user":"alice""#))
            let bob = try await fixture.post(
                "/v1/chat/completions", Self.chatRequest(#"{"role":"user","content":"hello from bob"}"#), headers: [("x-chatlog-subject", "bob")])
            try await fixture.waitForMessages(6)
            let ids = [alice, byUser, bob].compactMap { $0.headers.first(name: "x-chatlog-conversation").flatMap(ConversationID.init) }
            #expect(ids.count == 3)
            #expect(Set(try fixture.store.conversationIDs(subject: "alice")) == Set(ids.prefix(2)))
            #expect(try fixture.store.subjectKeyCounts() == (2, 0))
            let report = try #require(try fixture.store.forget(subject: "alice"))
            #expect(report.conversations == 2 && report.messages == 4 && report.subjectKeys == 1)
            #expect(try fixture.store.conversationIDs(subject: "alice").isEmpty)
            #expect(try await fixture.store.transcript(ids[2]).messages.count == 2)
            // The running proxy logs alice's next call under a new key.
            fixture.upstream.enqueue(.json(Self.chatBody))
            let back = try await fixture.post(
                "/v1/chat/completions", Self.chatRequest(#"{"role":"user","content":"back again"}"#), headers: [("x-chatlog-subject", "alice")])
            try await fixture.waitForMessages(4)
            let again = try #require(back.headers.first(name: "x-chatlog-conversation").flatMap(ConversationID.init))
            #expect(try await fixture.store.transcript(again).conversation.subject == "alice")
            #expect(try fixture.store.subjectKeyCounts() == (2, 1))
        }
    }

    @Test func streamsPassThroughByteForByteWithoutIncludeUsage() async throws {
        let events = [
            "data: {\"id\":\"c\",\"model\":\"gpt-test\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}],\"usage\":null}\n\n",
            "data: {\"id\":\"c\",\"model\":\"gpt-test\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
            "data: {\"id\":\"c\",\"model\":\"gpt-test\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\n",
            "data: [DONE]\n\n",
        ]
        let clientSees = events[0].replacingOccurrences(of: ",\"usage\":null", with: "")
            + events[1].replacingOccurrences(of: ",\"usage\":null", with: "") + events[3]
        try await ProxyFixture.with { fixture in
            fixture.upstream.enqueue(.sse(events, pause: .milliseconds(20)))
            let response = try await fixture.post("/v1/chat/completions", Self.chatRequest(#"{"role":"user","content":"hi"}"#, extra: #","stream":true"#))
            #expect(response.status == 200 && response.body == clientSees)
            #expect(response.headers.first(name: "x-accel-buffering") == "no")
            // The proxy asked for usage upstream.
            #expect(fixture.upstream.requests.first?.body.contains(#""stream_options":{"include_usage":true}"#) == true)
            try await fixture.waitForMessages(2)
            let id = try #require(response.headers.first(name: "x-chatlog-conversation").flatMap(ConversationID.init))
            let reply = try await lastMessages(fixture.store, id)[1]
            #expect(reply.content == "Hello" && reply.promptTokens == 5 && reply.completionTokens == 2 && reply.finishReason == "stop")
            #expect(reply.metadata?["ttft_ms"]?.int != nil && reply.metadata?["usage_requested_by_proxy"] == .bool(true))
        }
    }

    @Test func aStreamThatAskedForUsageIsLeftExactlyAsItCame() async throws {
        let events = [
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"A\"},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
            "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n", "data: [DONE]\n\n",
        ]
        try await ProxyFixture.with { fixture in
            fixture.upstream.enqueue(.sse(events))
            let response = try await fixture.post(
                "/v1/chat/completions",
                Self.chatRequest(#"{"role":"user","content":"hi"}"#, extra: #","stream":true,"stream_options":{"include_usage":true}"#))
            #expect(response.body == events.joined())
            #expect(fixture.upstream.requests.first?.body == Self.chatRequest(#"{"role":"user","content":"hi"}"#, extra: #","stream":true,"stream_options":{"include_usage":true}"#))
        }
    }

    @Test func aSecondTurnIsAppendedToTheSameConversationWithOnlyItsNewMessages() async throws {
        try await ProxyFixture.with { fixture in
            fixture.upstream.enqueue(.json(Self.chatBody))
            fixture.upstream.enqueue(.json(Self.chatBody.replacingOccurrences(of: "Four.", with: "Six.")))
            let first = try await fixture.post("/v1/chat/completions", Self.chatRequest(#"{"role":"system","content":"s"},{"role":"user","content":"2+2?"}"#))
            let second = try await fixture.post(
                "/v1/chat/completions",
                Self.chatRequest(#"{"role":"system","content":"s"},{"role":"user","content":"2+2?"},{"role":"assistant","content":"Four."},{"role":"user","content":"3+3?"}"#))
            let id = first.headers.first(name: "x-chatlog-conversation")
            #expect(id != nil && second.headers.first(name: "x-chatlog-conversation") == id)
            try await fixture.waitForMessages(5)
            let messages = try await lastMessages(fixture.store, try #require(id.flatMap(ConversationID.init)))
            #expect(messages.map(\.content) == ["s", "2+2?", "Four.", "3+3?", "Six."])
            // A different history starts a new conversation.
            fixture.upstream.enqueue(.json(Self.chatBody))
            let third = try await fixture.post(
                "/v1/chat/completions", Self.chatRequest(#"{"role":"user","content":"2+2?"},{"role":"assistant","content":"Five."},{"role":"user","content":"?"}"#))
            #expect(third.headers.first(name: "x-chatlog-conversation") != id)
        }
    }

    @Test func theConversationHeaderForcesAConversation() async throws {
        try await ProxyFixture.with { fixture in
            let forced = ConversationID.generate()
            fixture.upstream.enqueue(.json(Self.chatBody))
            let response = try await fixture.post(
                "/v1/chat/completions", Self.chatRequest(#"{"role":"user","content":"q"}"#), headers: [("X-Chatlog-Conversation", forced.rawValue)])
            #expect(response.headers.first(name: "x-chatlog-conversation") == forced.rawValue)
            try await fixture.waitForMessages(2)
            #expect(try await lastMessages(fixture.store, forced).count == 2)
            let bad = try await fixture.post("/v1/chat/completions", Self.chatRequest(#"{"role":"user","content":"q"}"#), headers: [("X-Chatlog-Conversation", "nope")])
            #expect(bad.status == 400 && fixture.upstream.requests.count == 1)
        }
    }

    @Test func responsesAPIFollowsPreviousResponseID() async throws {
        let reply = #"{"id":"resp_1","model":"gpt-5","status":"completed","output":[{"type":"message","role":"assistant","content":[{"type":"output_text","text":"One."}]}],"usage":{"input_tokens":3,"output_tokens":1}}"#
        try await ProxyFixture.with { fixture in
            fixture.upstream.enqueue(.json(reply))
            fixture.upstream.enqueue(.json(reply.replacingOccurrences(of: "resp_1", with: "resp_2").replacingOccurrences(of: "One.", with: "Two.")))
            let first = try await fixture.post("/v1/responses", #"{"model":"gpt-5","input":"count"}"#)
            let second = try await fixture.post("/v1/responses", #"{"model":"gpt-5","input":"again","previous_response_id":"resp_1"}"#)
            #expect(fixture.upstream.requests.first?.path == "/v1/responses")
            let id = try #require(first.headers.first(name: "x-chatlog-conversation").flatMap(ConversationID.init))
            #expect(second.headers.first(name: "x-chatlog-conversation") == id.rawValue)
            try await fixture.waitForMessages(4)
            #expect(try await lastMessages(fixture.store, id).map(\.content) == ["count", "One.", "again", "Two."])
        }
    }

    @Test func anthropicStreamWithErrorEventIsLoggedAsUpstreamError() async throws {
        let events = [
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-t\",\"usage\":{\"input_tokens\":4,\"output_tokens\":1}}}\n\n",
            "event: ping\ndata: {\"type\": \"ping\"}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Par\"}}\n\n",
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        ]
        try await ProxyFixture.with { fixture in
            fixture.upstream.enqueue(.sse(events))
            let response = try await fixture.post(
                "/v1/messages", #"{"model":"claude-t","max_tokens":10,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
                headers: [("x-api-key", "sk-ant-client"), ("anthropic-version", "2023-06-01")])
            #expect(response.body == events.joined())
            #expect(fixture.upstream.requests.first?.headers["x-api-key"] == "sk-ant-client")
            try await fixture.waitForMessages(2)
            let id = try #require(response.headers.first(name: "x-chatlog-conversation").flatMap(ConversationID.init))
            let reply = try await lastMessages(fixture.store, id)[1]
            #expect(reply.content == "Par" && reply.finishReason == "upstream_error" && reply.model == "claude-t")
            #expect(reply.metadata?["error"]?["type"]?.string == "overloaded_error")
        }
    }

    @Test func upstreamErrorsAndCutOffStreamsAreLoggedWithWhatHappened() async throws {
        try await ProxyFixture.with { fixture in
            fixture.upstream.enqueue(.json(#"{"error":{"message":"Rate limit","type":"rate_limit_error"}}"#, status: 429))
            let limited = try await fixture.post("/v1/chat/completions", Self.chatRequest(#"{"role":"user","content":"a"}"#))
            #expect(limited.status == 429 && limited.body.contains("Rate limit"))
            fixture.upstream.enqueue(
                .sse(["data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"half\"}}]}\n\n", "data: never\n\n"], cutAfter: 1))
            await #expect(throws: (any Error).self) {
                _ = try await fixture.post("/v1/chat/completions", Self.chatRequest(#"{"role":"user","content":"b"}"#, extra: #","stream":true"#))
            }
            try await fixture.waitForMessages(4)
            let page = try await fixture.store.conversations(ConversationQuery(limit: 10))
            var reasons: [String?] = []
            for conversation in page.conversations { reasons.append(try await lastMessages(fixture.store, conversation.id).last?.finishReason) }
            #expect(Set(reasons) == ["upstream_error", "upstream_disconnected"])
        }
    }

    @Test func anUnreachableUpstreamIsA502AndLogged() async throws {
        try await ProxyFixture.with({ $0.openAIUpstream = "http://127.0.0.1:1/v1"; $0.connectTimeout = .seconds(1) }) { fixture in
            let response = try await fixture.post("/v1/chat/completions", Self.chatRequest(#"{"role":"user","content":"x"}"#))
            #expect(response.status == 502 && response.body.contains("chatlog_proxy_error"))
            try await fixture.waitForMessages(2)
        }
    }

    @Test func serverHeldKeysRequireAProxyTokenAndLogItsName() async throws {
        try await ProxyFixture.with({ $0.openAIKey = "sk-real-upstream-key" }) { fixture in
            let token = try await fixture.store.createProxyToken(name: "checkout")
            let refused = try await fixture.post("/v1/chat/completions", Self.chatRequest(#"{"role":"user","content":"x"}"#), headers: [("authorization", "Bearer sk-guess")])
            #expect(refused.status == 401 && fixture.upstream.requests.isEmpty)
            fixture.upstream.enqueue(.json(Self.chatBody))
            let accepted = try await fixture.post("/v1/chat/completions", Self.chatRequest(#"{"role":"user","content":"x"}"#), headers: [("authorization", "Bearer " + token)])
            #expect(accepted.status == 200)
            #expect(fixture.upstream.requests.first?.headers["authorization"] == "Bearer sk-real-upstream-key")
            try await fixture.waitForMessages(2)
            let id = try #require(accepted.headers.first(name: "x-chatlog-conversation").flatMap(ConversationID.init))
            #expect(try await lastMessages(fixture.store, id)[1].metadata?["app"]?.string == "checkout")
            try await fixture.store.revokeProxyToken(name: "checkout")
            let revoked = try await fixture.post("/v1/chat/completions", Self.chatRequest(#"{"role":"user","content":"x"}"#), headers: [("authorization", "Bearer " + token)])
            #expect(revoked.status == 401)
        }
    }

    @Test func durableModeCommitsBeforeTheLastByte() async throws {
        try await ProxyFixture.with({ $0.durable = true }) { fixture in
            for _ in 0..<5 { fixture.upstream.enqueue(.json(Self.chatBody)) }
            for turn in 1...5 {
                let response = try await fixture.post("/v1/chat/completions", Self.chatRequest(#"{"role":"user","content":"q\#(turn)"}"#))
                #expect(response.body == Self.chatBody)
                // No waiting: the exchange is in the store when the client has the whole body.
                await #expect(try fixture.store.counts().messages == 2 * turn)
            }
        }
    }

    @Test func otherRoutesPassThroughUnloggedAndHealthAndMetricsAnswer() async throws {
        try await ProxyFixture.with { fixture in
            fixture.upstream.enqueue(.json(#"{"input_tokens":3}"#))
            let counted = try await fixture.post(
                "/v1/messages/count_tokens", #"{"model":"c","messages":[]}"#, headers: [("anthropic-version", "2023-06-01")])
            #expect(counted.body == #"{"input_tokens":3}"# && fixture.upstream.requests.first?.path == "/v1/messages/count_tokens")
            let health = try await fixture.get("/healthz")
            #expect(health.status == 200 && health.body.contains("\"status\":\"ok\""))
            let metrics = try await fixture.get("/metrics")
            #expect(metrics.body.contains("chatlog_proxy_queue_depth 0") && metrics.body.contains("chatlog_proxy_dropped_total 0"))
            #expect(metrics.body.contains(#"chatlog_proxy_calls_total{route="passthrough",status="200"} 1"#))
            await #expect(try fixture.store.counts().messages == 0)
            #expect(try await fixture.get("/other").status == 404)
        }
    }

    static let slowEvents = (0..<20).map { "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"w\($0) \"}}]}\n\n" }
        + ["data: [DONE]\n\n"]

    func finishReasons(_ store: ChatLogStore) async throws -> [String?] {
        var reasons: [String?] = []
        for conversation in try await store.conversations(ConversationQuery(limit: 50)).conversations {
            reasons.append(try await lastMessages(store, conversation.id).last?.finishReason)
        }
        return reasons
    }

    @Test func aClientThatHangsUpMidStreamIsLoggedWithThePartialAnswer() async throws {
        try await ProxyFixture.with { fixture in
            fixture.upstream.enqueue(.sse(Self.slowEvents, pause: .milliseconds(50)))
            let client = fixture.client
            let url = fixture.base + "/v1/chat/completions"
            let reading = Task {
                var request = HTTPClientRequest(url: url)
                request.method = .POST
                request.body = .bytes(ByteBuffer(string: Self.chatRequest(#"{"role":"user","content":"long"}"#, extra: #","stream":true"#)))
                let response = try await client.execute(request, timeout: .seconds(120))
                for try await _ in response.body { return }
            }
            try await reading.value
            try await fixture.waitForMessages(2)
            let id = try #require(try await fixture.store.conversations(ConversationQuery(limit: 1)).conversations.first?.id)
            let reply = try await lastMessages(fixture.store, id)[1]
            #expect(reply.finishReason == "client_disconnected")
            #expect(reply.content.hasPrefix("w0 ") && !reply.content.contains("w19"))
        }
    }

    @Test func aStalledUpstreamAndAnOverlongCallAreLoggedAsTimeouts() async throws {
        try await ProxyFixture.with({
            $0.idleTimeout = .milliseconds(500)
            $0.requestTimeout = .seconds(1)
        }) { fixture in
            // Stalls longer than the idle timeout before its first event.
            fixture.upstream.enqueue(.sse(Self.slowEvents, pause: .seconds(2)))
            // Keeps sending, but takes longer than the request timeout in all.
            fixture.upstream.enqueue(.sse(Self.slowEvents, pause: .milliseconds(200)))
            for _ in 0..<2 {
                await #expect(throws: (any Error).self) {
                    let response = try await fixture.post("/v1/chat/completions", Self.chatRequest(#"{"role":"user","content":"slow"}"#, extra: #","stream":true"#))
                    if !response.body.hasSuffix("[DONE]\n\n") { throw CancellationError() }
                }
            }
            try await fixture.waitForMessages(4)
            #expect(try await finishReasons(fixture.store) == ["timeout", "timeout"])
        }
    }

    @Test func aBodyOverTheLimitIsRefusedAndNotForwarded() async throws {
        try await ProxyFixture.with({ $0.maxRequestBodyBytes = 1_000 }) { fixture in
            let big = Self.chatRequest(#"{"role":"user","content":""# + String(repeating: "x", count: 2_000) + #""}"#)
            let response = try await fixture.post("/v1/chat/completions", big)
            #expect(response.status == 413 && response.body.contains("chatlog_proxy_error") && !response.body.contains("xxxx"))
            #expect(fixture.upstream.requests.isEmpty)
        }
    }

    @Test func theUpstreamsDateAndOtherHeadersReachTheClientUnchanged() async throws {
        try await ProxyFixture.with { fixture in
            var reply = FakeReply.json(Self.chatBody)
            reply.headers += [("date", "Sat, 06 Dec 2025 00:03:19 GMT"), ("set-cookie", "a=1"), ("set-cookie", "b=2"), ("openai-processing-ms", "12")]
            fixture.upstream.enqueue(reply)
            let response = try await fixture.post("/v1/chat/completions", Self.chatRequest(#"{"role":"user","content":"q"}"#))
            #expect(response.headers["date"] == ["Sat, 06 Dec 2025 00:03:19 GMT"])
            #expect(response.headers["set-cookie"] == ["a=1", "b=2"] && response.headers.first(name: "openai-processing-ms") == "12")
        }
    }

    /// RFC 9110 §7.6.1: headers a `Connection` field lists are for this hop only, both ways.
    @Test func headersTheConnectionFieldListsStopAtTheProxy() async throws {
        try await ProxyFixture.with { fixture in
            var reply = FakeReply.json(Self.chatBody)
            reply.headers += [("connection", "X-Upstream-Hop"), ("x-upstream-hop", "v"), ("x-upstream-kept", "w")]
            fixture.upstream.enqueue(reply)
            let response = try await fixture.post(
                "/v1/chat/completions", Self.chatRequest(#"{"role":"user","content":"q"}"#),
                headers: [("connection", "keep-alive, X-Hop-One ,x-hop-two"), ("x-hop-one", "1"), ("X-Hop-Two", "2"), ("x-kept", "3")])
            #expect(response.status == 200)
            let sent = try #require(fixture.upstream.requests.first)
            #expect(sent.headers["x-hop-one"] == nil && sent.headers["x-hop-two"] == nil && sent.headers["x-kept"] == "3")
            #expect(response.headers["x-upstream-hop"].isEmpty && response.headers.first(name: "x-upstream-kept") == "w")
        }
    }

    @Test func aClientThatHangsUpWhileTheUpstreamIsSilentCancelsTheUpstreamCall() async throws {
        try await ProxyFixture.with { fixture in
            var reply = FakeReply.sse(Self.slowEvents)
            reply.stall = .seconds(8)
            fixture.upstream.enqueue(reply)
            let client = fixture.client
            let url = fixture.base + "/v1/chat/completions"
            let reading = Task {
                var request = HTTPClientRequest(url: url)
                request.method = .POST
                request.body = .bytes(ByteBuffer(string: Self.chatRequest(#"{"role":"user","content":"think"}"#, extra: #","stream":true"#)))
                let response = try await client.execute(request, timeout: .seconds(120))
                for try await _ in response.body { return }
            }
            try await reading.value
            // Logged long before the upstream would speak again (8 s).
            try await fixture.waitForMessages(2)
            let id = try #require(try await fixture.store.conversations(ConversationQuery(limit: 1)).conversations.first?.id)
            let reply2 = try await lastMessages(fixture.store, id)[1]
            #expect(reply2.finishReason == "client_disconnected" && reply2.content == "w0 ")
        }
    }

    /// After a burst of concurrent calls ends, the proxy returns its free heap to the system
    /// (glibc keeps freed pages otherwise: resident memory stayed near its peak, docs/PERFORMANCE.md);
    /// while idle, or with fewer calls than the burst threshold, it does not.
    @Test func freeHeapIsReturnedAfterABurstOfCallsEnds() async throws {
        func trims(_ fixture: ProxyFixture) async throws -> Int? {
            let text = try await fixture.get("/metrics").body
            return text.split(separator: "\n").first { $0.hasPrefix("chatlog_proxy_heap_trims_total ") }.flatMap { Int($0.split(separator: " ")[1]) }
        }
        try await ProxyFixture.with({
            $0.heapTrimInterval = .milliseconds(100)
            $0.heapTrimMinimumPeak = 8
        }) { fixture in
            let events = (0..<5).map { "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"w\($0) \"}}]}\n\n" } + ["data: [DONE]\n\n"]
            // Fewer than the threshold at once: no trim.
            for _ in 0..<4 { fixture.upstream.enqueue(.sse(events, pause: .milliseconds(100))) }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<4 {
                    group.addTask { _ = try await fixture.post("/v1/chat/completions", Self.chatRequest(#"{"role":"user","content":"small \#(index)"}"#, extra: #","stream":true"#)) }
                }
                try await group.waitForAll()
            }
            try await Task.sleep(for: .milliseconds(500))
            #expect(try await trims(fixture) == 0)
            // A burst of 16 slow streams at once, then none: trimmed once it has ended.
            for _ in 0..<16 { fixture.upstream.enqueue(.sse(events, pause: .milliseconds(150))) }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<16 {
                    group.addTask {
                        let response = try await fixture.post(
                            "/v1/chat/completions", Self.chatRequest(#"{"role":"user","content":"burst \#(index)"}"#, extra: #","stream":true"#))
                        #expect(response.body.hasSuffix("data: [DONE]\n\n"))
                    }
                }
                try await group.waitForAll()
            }
            var count = 0
            for _ in 0..<300 where count == 0 {
                count = try await trims(fixture) ?? 0
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(count >= 1)
        }
    }

    @Test func theHeapTrimPolicyWaitsForTheEndOfABurst() {
        let policy = HeapTrimPolicy(minimumPeak: 64)
        #expect(policy.shouldTrim(now: 0, peak: 64) && policy.shouldTrim(now: 250, peak: 1000))
        #expect(!policy.shouldTrim(now: 0, peak: 63))  // no burst
        #expect(!policy.shouldTrim(now: 251, peak: 1000))  // still busy
        #expect(!policy.shouldTrim(now: 0, peak: 0))
    }
}

