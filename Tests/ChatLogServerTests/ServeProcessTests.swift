import AsyncHTTPClient
import ChatLog
import ChatLogTestSupport
import Foundation
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization
import Testing

@testable import ChatLogServer

#if canImport(Glibc)
    import Glibc
#endif

/// The built `chatlog` executable, next to this test bundle.
func chatlogBinary() throws -> URL {
    var directory = URL(fileURLWithPath: CommandLine.arguments.first ?? ".").deletingLastPathComponent().standardizedFileURL
    for _ in 0..<4 {
        let candidate = directory.appendingPathComponent("chatlog")
        if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
        directory = directory.deletingLastPathComponent()
    }
    if let executable = Bundle.main.executableURL?.deletingLastPathComponent().appendingPathComponent("chatlog"),
        FileManager.default.isExecutableFile(atPath: executable.path)
    {
        return executable
    }
    throw CancellationError()
}

final class Tally: Sendable {
    private let value = Mutex(0)
    func add() { value.withLock { $0 += 1 } }
    var count: Int { value.withLock { $0 } }
}

/// Starting and stopping `chatlog serve` as a process.
enum ServeProcess {
    struct Serve {
        let process: ChildProcess
        let port: Int
        let stdout: String
        let stderr: String
    }

    static func start(_ directory: String, key: String, upstreamPort: Int, extra: [String] = []) async throws -> Serve {
        let stdout = directory + "/serve-\(UUID().uuidString).out"
        let stderr = stdout + ".err"
        let process = try ChildProcess(
            try chatlogBinary().path,
            [
                "serve", "--db", directory + "/chat.db", "--listen", "127.0.0.1:0", "--openai-upstream", "http://127.0.0.1:\(upstreamPort)/v1",
                "--anthropic-upstream", "http://127.0.0.1:\(upstreamPort)",
            ] + extra, environment: ["CHATLOG_MASTER_KEY": key, "PATH": "/usr/bin:/bin"], directory: directory, stdout: .file(stdout),
            stderr: .file(stderr))
        for _ in 0..<1000 {
            let text = (try? String(contentsOfFile: stdout, encoding: .utf8)) ?? ""
            if let range = text.range(of: #"listening on http://127\.0\.0\.1:[0-9]+"#, options: .regularExpression) {
                let port = Int(text[range].split(separator: ":").last!)!
                return Serve(process: process, port: port, stdout: stdout, stderr: stderr)
            }
            if process.hasExited { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        process.stop()
        let errors = (try? String(contentsOfFile: stderr, encoding: .utf8)) ?? ""
        Issue.record("chatlog serve did not start: \(errors)")
        throw CancellationError()
    }

    static func waitForExit(_ process: ChildProcess) async throws -> Int32 {
        try await process.exit(timeout: 120).status
    }
}

/// `chatlog serve` as a process: SIGTERM under load lets in-flight calls finish, writes every
/// accepted exchange and exits 0; a restart on the same store serves on.
@Suite struct ServeProcessTests {

    @Test func sigtermUnderLoadFinishesInFlightCallsWritesEverythingAndExitsZero() async throws {
        try await withServerTemporaryDirectory { directory in
            let key = MasterKey.generate().exportBase64()
            _ = try ChatLogStore.create(at: directory + "/chat.db", key: .key(try MasterKey(base64: key)))
            let upstream = FakeUpstream()
            let calls = 60
            // Slow streams (about 0.5 s each), so SIGTERM arrives while all are in flight.
            let events = (0..<10).map { "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"w\($0) \"}}]}\n\n" } + ["data: [DONE]\n\n"]
            for _ in 0..<calls { upstream.enqueue(.sse(events, pause: .milliseconds(50))) }
            let group = ServiceGroup(
                configuration: .init(services: [try upstream.service()], logger: Logger(label: "t", factory: { _ in SwiftLogNoOpLogHandler() })))
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await group.run() }
                while upstream.port.withLock({ $0 }) == 0 { try await Task.sleep(for: .milliseconds(5)) }
                let upstreamPort = upstream.port.withLock { $0 }
                let serve = try await ServeProcess.start(directory, key: key, upstreamPort: upstreamPort)
                let client = HTTPClient(eventLoopGroupProvider: .singleton)
                let port = serve.port
                let answered = Tally()
                let refused = Tally()
                try await withThrowingTaskGroup(of: Void.self) { requests in
                    for index in 0..<calls {
                        requests.addTask {
                            var request = HTTPClientRequest(url: "http://127.0.0.1:\(port)/v1/chat/completions")
                            request.method = .POST
                            request.body = .bytes(
                                ByteBuffer(string: #"{"model":"m","stream":true,"messages":[{"role":"user","content":"call \#(index)"}]}"#))
                            do {
                                let response = try await client.execute(request, timeout: .seconds(180))
                                let body = String(buffer: try await response.body.collect(upTo: 1 << 20))
                                #expect(body.hasSuffix("data: [DONE]\n\n"), "an in-flight call was cut at shutdown")
                                answered.add()
                            } catch {
                                print("ServeProcessTests: call \(index) failed without an answer: \(error)")
                                refused.add()
                            }
                        }
                    }
                    // SIGTERM once every call has reached the upstream (all in flight).
                    // (On a machine loaded by the whole parallel suite a few connections can fail before
                    // the proxy reads them; those count as refused, not as accepted.)
                    for _ in 0..<12000 where upstream.requests.count + refused.count < calls {
                        try await Task.sleep(for: .milliseconds(10))
                    }
                    #expect(upstream.requests.count + refused.count == calls)
                    serve.process.signal(SIGTERM)
                    try await requests.waitForAll()
                }
                let status = try await ServeProcess.waitForExit(serve.process)
                let errors = (try? String(contentsOfFile: serve.stderr, encoding: .utf8)) ?? ""
                #expect(status == 0, "exit \(status): \(errors)")
                // Every call reached the upstream before SIGTERM, so every one was accepted and must be
                // answered in full.
                #expect(answered.count == upstream.requests.count && answered.count + refused.count == calls)
                #expect(errors.contains("every accepted exchange was written"))
                // The buffered access log: a whole line for every answered call, all written before the
                // final note (flushed at shutdown, none lost).
                let lines = errors.split(separator: "\n")
                let calls = lines.indices.filter { lines[$0].hasSuffix("[ChatLogServer] call") && lines[$0].contains("status=200") }
                #expect(calls.count == answered.count, "\(calls.count) access-log lines for \(answered.count) answered calls")
                let stopped = lines.firstIndex { $0.contains("every accepted exchange was written") }
                #expect(calls.allSatisfy { $0 < (stopped ?? -1) })
                // Every answered call is in the store.
                let store = try ChatLogStore.open(at: directory + "/chat.db", key: .key(try MasterKey(base64: key)))
                await #expect(try store.counts() == (conversations: answered.count, messages: 2 * answered.count))

                // A restart on the same store serves and logs on.
                upstream.removeReplies()
                upstream.enqueue(.json(#"{"id":"x","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"again"},"finish_reason":"stop"}]}"#))
                let again = try await ServeProcess.start(directory, key: key, upstreamPort: upstreamPort)
                var request = HTTPClientRequest(url: "http://127.0.0.1:\(again.port)/v1/chat/completions")
                request.method = .POST
                request.body = .bytes(ByteBuffer(string: #"{"model":"m","messages":[{"role":"user","content":"after restart"}]}"#))
                let response = try await client.execute(request, timeout: .seconds(120))
                #expect(String(buffer: try await response.body.collect(upTo: 1 << 20)).contains("again"))
                again.process.signal(SIGTERM)
                #expect(try await ServeProcess.waitForExit(again.process) == 0)
                let againErrors = (try? String(contentsOfFile: again.stderr, encoding: .utf8)) ?? ""
                #expect(againErrors.split(separator: "\n").filter { $0.hasSuffix("[ChatLogServer] call") }.count == 1)
                await #expect(try store.counts().messages == 2 * answered.count + 2)
                // Neither the access log nor stdout holds content.
                let logs = [serve.stdout, serve.stderr, again.stdout, again.stderr].map { (try? String(contentsOfFile: $0, encoding: .utf8)) ?? "" }.joined()
                #expect(!logs.contains("call 1") && !logs.contains("after restart") && !logs.contains(key))
                try await client.shutdown()
                await group.triggerGracefulShutdown()
                try await tasks.waitForAll()
            }
        }
    }
}
