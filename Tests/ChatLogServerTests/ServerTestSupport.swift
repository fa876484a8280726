import AsyncHTTPClient
import ChatLog
import Foundation
import HTTPTypes
import HummingbirdCore
import Logging
import NIOCore
import NIOPosix
import NIOHTTP1
import ServiceLifecycle
import Synchronization
import Testing

@testable import ChatLogServer

#if canImport(Glibc)
    import Glibc
#endif

/// What the fake upstream answers: status, headers, and body parts written one by one (with an
/// optional pause before each), or a cut (the connection closed mid-body).
struct FakeReply: Sendable {
    var status = 200
    var headers: [(String, String)] = [("content-type", "application/json")]
    var parts: [String] = []
    var pause: Duration = .zero
    /// Silence after the first part (a model thinking).
    var stall: Duration = .zero
    var cutAfter: Int?

    static func json(_ body: String, status: Int = 200, requestID: String = "req_test") -> FakeReply {
        FakeReply(status: status, headers: [("content-type", "application/json"), ("x-request-id", requestID), ("request-id", requestID)], parts: [body])
    }

    static func sse(_ events: [String], pause: Duration = .zero, cutAfter: Int? = nil) -> FakeReply {
        FakeReply(
            status: 200, headers: [("content-type", "text/event-stream; charset=utf-8"), ("x-request-id", "req_stream")], parts: events,
            pause: pause, cutAfter: cutAfter)
    }
}

/// A tiny in-process upstream (plain HTTP on loopback) that records what it received.
final class FakeUpstream: Sendable {
    struct Received: Sendable {
        var path: String
        var headers: [String: String]
        var body: String
    }

    private let replies = Mutex<[FakeReply]>([])
    private let received = Mutex<[Received]>([])
    let port = Mutex(0)

    func enqueue(_ reply: FakeReply) { replies.withLock { $0.append(reply) } }
    func removeReplies() { replies.withLock { $0.removeAll() } }
    var requests: [Received] { received.withLock { $0 } }

    /// The fake upstream as a service (HummingbirdCore's server directly, so that the headers it
    /// sends, `Date` included, are exactly the reply's).
    func service() throws -> any Service {
        try HTTPServerBuilder.http1().buildServer(
            configuration: ServerConfiguration(address: .hostname("127.0.0.1", port: 0)), eventLoopGroup: MultiThreadedEventLoopGroup.singleton,
            logger: Logger(label: "fake-upstream", factory: { _ in SwiftLogNoOpLogHandler() }),
            responder: { (request, responseWriter: consuming ResponseWriter, _) in
                let body = try await request.body.collect(upTo: 1 << 24)
                var headers: [String: String] = [:]
                for field in request.headers { headers[field.name.canonicalName] = field.value }
                self.received.withLock { $0.append(Received(path: request.uri.path, headers: headers, body: String(buffer: body))) }
                let reply = self.replies.withLock { $0.isEmpty ? FakeReply.json("{}") : $0.removeFirst() }
                var fields = HTTPFields()
                for (name, value) in reply.headers { fields.append(HTTPField(name: HTTPField.Name(name)!, value: value)) }
                let response = Response(
                    status: .init(code: reply.status), headers: fields,
                    body: ResponseBody { writer in
                        for (index, part) in reply.parts.enumerated() {
                            if reply.pause > .zero { try await Task.sleep(for: reply.pause) }
                            if index == 1, reply.stall > .zero { try await Task.sleep(for: reply.stall) }
                            if let cut = reply.cutAfter, index >= cut { throw CancellationError() }
                            try await writer.write(ByteBuffer(string: part))
                        }
                        try await writer.finish(nil)
                    })
                try await responseWriter.write(response: response.head, body: response.body)
            },
            onServerRunning: { channel in self.port.withLock { $0 = channel.localAddress?.port ?? 0 } })
    }
}

/// A proxy in front of a fake upstream, on a fresh store; both run until the body returns, then
/// the proxy shuts down gracefully (draining its recorder).
struct ProxyFixture: Sendable {
    let upstream: FakeUpstream
    let store: ChatLogStore
    let proxyPort: Int
    let client: HTTPClient

    var base: String { "\(scheme)://127.0.0.1:\(proxyPort)" }
    var scheme = "http"

    func post(_ path: String, _ body: String, headers: [(String, String)] = []) async throws -> (status: Int, headers: HTTPHeaders, body: String) {
        var request = HTTPClientRequest(url: base + path)
        request.method = .POST
        request.headers.add(name: "content-type", value: "application/json")
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        request.body = .bytes(ByteBuffer(string: body))
        let response = try await client.execute(request, timeout: .seconds(120))
        let bytes = try await response.body.collect(upTo: 1 << 24)
        return (Int(response.status.code), response.headers, String(buffer: bytes))
    }

    func get(_ path: String) async throws -> (status: Int, body: String) {
        let response = try await client.execute(HTTPClientRequest(url: base + path), timeout: .seconds(120))
        return (Int(response.status.code), String(buffer: try await response.body.collect(upTo: 1 << 20)))
    }

    /// Waits until the store holds `messages` messages (the recorder writes off the response path).
    func waitForMessages(_ messages: Int) async throws {
        // Generous: the whole test suite runs in parallel on two cores.
        for _ in 0..<3000 {
            if try await store.counts().messages >= messages { return }
            try await Task.sleep(for: .milliseconds(10))
        }
        Issue.record("the store never reached \(messages) messages (has \(try await store.counts().messages))")
    }

    static func with(
        _ adjust: (inout ProxyConfiguration) -> Void = { _ in }, client clientConfiguration: HTTPClient.Configuration = .init(),
        logger: Logger = Logger(label: "proxy", factory: { _ in SwiftLogNoOpLogHandler() }),
        _ body: (ProxyFixture) async throws -> Void
    ) async throws {
        try await withServerTemporaryDirectory { directory in
            let store = try ChatLogStore.create(at: directory + "/chat.db", key: .key(.generate()))
            let upstream = FakeUpstream()
            let upstreamGroup = ServiceGroup(
                configuration: .init(services: [try upstream.service()], logger: Logger(label: "t", factory: { _ in SwiftLogNoOpLogHandler() })))
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await upstreamGroup.run() }
                while upstream.port.withLock({ $0 }) == 0 { try await Task.sleep(for: .milliseconds(5)) }
                var configuration = ProxyConfiguration()
                configuration.port = 0
                let upstreamPort = upstream.port.withLock { $0 }
                configuration.openAIUpstream = "http://127.0.0.1:\(upstreamPort)/v1"
                configuration.anthropicUpstream = "http://127.0.0.1:\(upstreamPort)"
                adjust(&configuration)
                let bound = Mutex(0)
                let proxy = try ProxyServer(
                    configuration: configuration, store: store, logger: logger
                ).serviceGroup { address in
                    bound.withLock { $0 = Int(address.split(separator: ":").last!)! }
                }
                tasks.addTask { try await proxy.run() }
                while bound.withLock({ $0 }) == 0 { try await Task.sleep(for: .milliseconds(5)) }
                let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: clientConfiguration)
                do {
                    try await body(
                        ProxyFixture(
                            upstream: upstream, store: store, proxyPort: bound.withLock { $0 }, client: client,
                            scheme: configuration.tlsCertificateFile == nil ? "http" : "https"))
                } catch {
                    try? await client.shutdown()
                    await proxy.triggerGracefulShutdown()
                    await upstreamGroup.triggerGracefulShutdown()
                    throw error
                }
                try await client.shutdown()
                await proxy.triggerGracefulShutdown()
                await upstreamGroup.triggerGracefulShutdown()
                try await tasks.waitForAll()
            }
        }
    }
}

func withServerTemporaryDirectory<R>(_ body: (String) async throws -> R) async throws -> R {
    var template = Array((NSTemporaryDirectory() + "/chatlog-server-tests-XXXXXX").utf8CString)
    guard let created = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
        throw CancellationError()
    }
    let path = String(cString: created)
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try await body(path)
}

/// Keeps every log line the proxy writes (message and metadata), for tests of what reaches the log.
final class CapturedLog: Sendable {
    let lines = Mutex<[String]>([])

    var logger: Logger {
        var logger = Logger(label: "proxy", factory: { _ in Handler(log: self) })
        logger.logLevel = .trace
        return logger
    }

    struct Handler: LogHandler {
        let log: CapturedLog
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            let all = metadata.merging(event.metadata ?? [:]) { $1 }
            let text = "\(event.message) " + all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            log.lines.withLock { $0.append(text) }
        }
    }
}
