import ChatLog
import NIOHTTP1
import Testing

@testable import ChatLogServer

/// The transport rules `chatlog serve` enforces before it starts.
@Suite struct ProxyConfigurationTests {
    func configuration(_ adjust: (inout ProxyConfiguration) -> Void) -> ProxyConfiguration {
        var configuration = ProxyConfiguration()
        adjust(&configuration)
        return configuration
    }

    @Test func upstreamsMustBeHTTPSExceptOnLoopback() throws {
        try configuration { _ in }.validate()
        for url in ["http://127.0.0.1:11434/v1", "http://localhost:8000/v1", "http://[::1]:9/v1", "https://api.example.com/v1"] {
            try configuration { $0.openAIUpstream = url }.validate()
        }
        for url in ["http://api.openai.com/v1", "http://10.0.0.5/v1", "ftp://x/", "https://user:pw@api.example.com", "not a url", "https://x/v1?q=1"] {
            #expect(throws: ChatLogError.self, "\(url)") { try configuration { $0.openAIUpstream = url }.validate() }
            #expect(throws: ChatLogError.self, "\(url)") { try configuration { $0.anthropicUpstream = url }.validate() }
        }
    }

    @Test func listeningBeyondLoopbackNeedsTLSOrAnExplicitFlag() throws {
        #expect(throws: ChatLogError.self) { try configuration { $0.host = "0.0.0.0" }.validate() }
        try configuration {
            $0.host = "0.0.0.0"
            $0.insecureListen = true
        }.validate()
        #expect(throws: ChatLogError.self) { try configuration { $0.tlsCertificateFile = "/etc/hostname" }.validate() }
        try configuration { $0.host = "::1" }.validate()
    }

    @Test func errorsNameTheFlagAndNoValueOfASecret() {
        do {
            try configuration { $0.openAIUpstream = "http://secret-host.example/v1?key=sk-abc" }.validate()
            Issue.record("accepted")
        } catch {
            #expect(error.description.contains("--openai-upstream") && !error.description.contains("sk-abc"))
        }
    }

    @Test func printingOrDumpingTheConfigurationNeverShowsAServerHeldKey() {
        let keys = ["sk-proj-held-key-0123456789abcdefghij", "sk-ant-api03-held-key-0123456789abcdef"]
        let held = configuration { $0.openAIKey = keys[0]; $0.anthropicKey = keys[1]; $0.port = 4321 }
        var dumped = ""
        dump(held, to: &dumped)
        for text in [String(describing: held), String(reflecting: held), "\(held)", dumped] {
            #expect(!keys.contains { text.contains($0) })
            #expect(text.contains("<redacted>") && text.contains("4321"))
        }
    }

    @Test func theWriterNiceValueIsBetween0And19() throws {
        #expect(ProxyConfiguration().writerNice == 10)
        for nice: Int32 in [0, 10, 19] { try configuration { $0.writerNice = nice }.validate() }
        for nice: Int32 in [-1, -20, 20] {
            #expect(throws: ChatLogError.self, "\(nice)") { try configuration { $0.writerNice = nice }.validate() }
        }
    }
}

/// What the client gets of the upstream's response headers.
@Suite struct ClientHeaderTests {
    @Test func hopByHopAndConnectionNominatedFieldsAreDroppedTheRestKeptInOrder() {
        let upstream = HTTPHeaders([
            ("Date", "Sun, 06 Dec 2026 12:00:00 GMT"), ("Connection", " keep-alive ,\tX-Hop-One,x-hop-two\t, "),
            ("Keep-Alive", "timeout=5"), ("Set-Cookie", "a=1"), ("Content-Length", "42"), ("X-Hop-One", "1"),
            ("Transfer-Encoding", "chunked"), ("x-request-id", "req_1"), ("X-HOP-TWO", "2"), ("Set-Cookie", "b=2"),
            ("x-hop-three", "kept: not nominated"),
        ])
        let (fields, contentLength) = ProxyCall.clientHeaders(upstream)
        #expect(contentLength == 42)
        #expect(fields.map { "\($0.name.rawName): \($0.value)" } == [
            "Date: Sun, 06 Dec 2026 12:00:00 GMT", "Set-Cookie: a=1", "x-request-id: req_1", "Set-Cookie: b=2",
            "x-hop-three: kept: not nominated",
        ])
        #expect(ProxyCall.nominatedByConnection(["close", " Foo ,\tBAR\t", " , "]) == ["close", "foo", "bar"])
        #expect(ProxyCall.clientHeaders(HTTPHeaders([("Content-Length", "x")])).contentLength == nil)
    }
}

