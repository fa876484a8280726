import AsyncHTTPClient
import ChatLog
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle
import Synchronization
import Testing

@testable import ChatLogServer

#if canImport(Glibc)
    import Glibc
#endif

/// The response path's cheaper parts: the upstream reader's hand-over (everything that arrived
/// together in one piece, backpressure, errors after data), JSON answers read ahead and written with
/// their head, and the buffered access log.
@Suite struct ResponsePathTests {
    struct Failure: Error {}

    static func body(_ text: String) -> UpstreamPart { .body(ByteBuffer(string: text)) }

    static func describe(_ parts: [UpstreamPart]) -> [String] {
        parts.map { part in
            switch part {
            case .head(let status, _): return "head \(status.code)"
            case .body(let buffer): return "body " + String(buffer: buffer)
            case .end: return "end"
            }
        }
    }

    /// Waits (without a clock) until the reader has a call waiting on it.
    static func waitUntilWaiting(_ reader: UpstreamReader) async {
        while !reader.hasWaiter { await Task.yield() }
    }

    @Test func partsThatArriveInOneReadAreHandedOverTogether() async throws {
        let reader = UpstreamReader(readLimit: 1 << 20)
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        async let taken = reader.next()
        await Self.waitUntilWaiting(reader)
        // Head, body and end delivered in one event-loop turn, as AsyncHTTPClient does for a short answer.
        try await loop.submit {
            _ = reader.deliver(.head(.ok, ["content-type": "application/json"]), bytes: 0, on: loop)
            _ = reader.deliver(Self.body("{\"a\":"), bytes: 5, on: loop)
            _ = reader.deliver(Self.body("1}"), bytes: 2, on: loop)
            _ = reader.deliver(.end, bytes: 0, on: loop)
        }.get()
        #expect(Self.describe(try await taken) == ["head 200", "body {\"a\":", "body 1}", "end"])
        // After the end: the end again, never a hang.
        #expect(Self.describe(try await reader.next()) == ["end"])
    }

    @Test func theUpstreamReadWaitsWhileTooMuchIsBuffered() async throws {
        let reader = UpstreamReader(readLimit: 8)
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let released = Mutex(false)
        let small = try await loop.submit { reader.deliver(Self.body("1234"), bytes: 4, on: loop) }.get()
        try await small.get()  // under the limit: read on at once
        try await loop.submit {
            reader.deliver(Self.body("56789"), bytes: 5, on: loop).whenSuccess { released.withLock { $0 = true } }
        }.get()
        // Nobody has taken the 9 bytes: the upstream read stays paused.
        try await loop.submit {}.get()
        #expect(released.withLock { $0 } == false)
        #expect(Self.describe(try await reader.next()) == ["body 1234", "body 56789"])
        try await loop.submit {}.get()
        #expect(released.withLock { $0 } == true)
    }

    @Test func anErrorComesAfterThePartsThatArrivedBeforeIt() async throws {
        let reader = UpstreamReader(readLimit: 1 << 20)
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        try await loop.submit {
            _ = reader.deliver(.head(.ok, [:]), bytes: 0, on: loop)
            _ = reader.deliver(Self.body("partial"), bytes: 7, on: loop)
            reader.fail(Failure())
        }.get()
        #expect(Self.describe(try await reader.next()) == ["head 200", "body partial"])
        await #expect(throws: Failure.self) { try await reader.next() }
        await #expect(throws: Failure.self) { try await reader.next() }
        #expect(!reader.wasCancelled)
    }

    @Test func cancellingAWaitingReaderEndsTheWaitAndSaysTheClientLeft() async throws {
        let reader = UpstreamReader(readLimit: 1 << 20)
        let waiting = Task { try await reader.next() }
        await Self.waitUntilWaiting(reader)
        reader.cancel()
        await #expect(throws: CancellationError.self) { try await waiting.value }
        #expect(reader.wasCancelled)

        // The call's own task cancelled (shutdown): the wait ends too, but the client did not leave.
        let other = UpstreamReader(readLimit: 1 << 20)
        let task = Task { try await other.next() }
        await Self.waitUntilWaiting(other)
        task.cancel()
        await #expect(throws: CancellationError.self) { try await task.value }
        #expect(!other.wasCancelled)
    }

    // MARK: JSON answers read ahead

    static let answer = #"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-test","choices":[{"index":0,"message":{"role":"assistant","content":"Paris."},"finish_reason":"stop"}]}"#

    /// The answer in three chunks, without a length (chunked).
    static func chunkedAnswer() -> FakeReply {
        let text = Array(answer)
        let thirds = [String(text[..<40]), String(text[40..<90]), String(text[90...])]
        return FakeReply(status: 200, headers: [("content-type", "application/json"), ("x-request-id", "req_1")], parts: thirds)
    }

    @Test func aChunkedJSONAnswerReachesTheClientWholeWithItsLength() async throws {
        try await ProxyFixture.with { fixture in
            fixture.upstream.enqueue(Self.chunkedAnswer())
            let response = try await fixture.post(
                "/v1/chat/completions", ProxyServerTests.chatRequest(#"{"role":"user","content":"Capital of France?"}"#))
            #expect(response.status == 200 && response.body == Self.answer)
            // Read ahead and written with the head: the length is known.
            #expect(response.headers.first(name: "content-length") == String(Self.answer.utf8.count))
            #expect(response.headers.first(name: "transfer-encoding") == nil)
            try await fixture.waitForMessages(2)
            let conversation = try #require(response.headers.first(name: "x-chatlog-conversation").flatMap(ConversationID.init))
            let messages = try await fixture.store.transcript(conversation).messages
            #expect(messages.map(\.content) == ["Capital of France?", "Paris."])
            #expect(messages.last?.finishReason == "stop")
        }
    }

    @Test func aJSONAnswerOverTheReadAheadLimitIsRelayedAsItComes() async throws {
        try await ProxyFixture.with({ $0.readAheadBytes = 16 }) { fixture in
            // The parts come apart (a pause before each), so the first is over the limit alone.
            var reply = Self.chunkedAnswer()
            reply.pause = .milliseconds(20)
            fixture.upstream.enqueue(reply)
            let response = try await fixture.post(
                "/v1/chat/completions", ProxyServerTests.chatRequest(#"{"role":"user","content":"Capital of France?"}"#))
            #expect(response.status == 200 && response.body == Self.answer)
            // Relayed: the upstream sent no length, so neither does the proxy.
            #expect(response.headers.first(name: "content-length") == nil)
            try await fixture.waitForMessages(2)
            let conversation = try #require(response.headers.first(name: "x-chatlog-conversation").flatMap(ConversationID.init))
            #expect(try await fixture.store.transcript(conversation).messages.last?.content == "Paris.")
        }
    }

    @Test func aJSONAnswerCutOffBeforeItsEndIsCutOffForTheClientToo() async throws {
        try await ProxyFixture.with { fixture in
            var reply = Self.chunkedAnswer()
            reply.cutAfter = 2
            fixture.upstream.enqueue(reply)
            // The client's read fails (a short body without an error would pass for a whole answer).
            await #expect(throws: (any Error).self) {
                _ = try await fixture.post("/v1/chat/completions", ProxyServerTests.chatRequest(#"{"role":"user","content":"Capital of France?"}"#))
            }
            try await fixture.waitForMessages(2)
        }
    }

    // MARK: The buffered access log

    /// A log buffer writing into a temporary file; returns what the file holds.
    final class LogFile: Sendable {
        let path: String
        let descriptor: Int32

        init(_ directory: String) {
            path = directory + "/log.txt"
            descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        }

        var text: String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }
        var lines: [String] { text.split(separator: "\n", omittingEmptySubsequences: false).dropLast().map(String.init) }

        deinit { close(descriptor) }
    }

    @Test func linesWaitInTheBufferAndGoOutWholeAndInOrder() async throws {
        try await withServerTemporaryDirectory { directory in
            let file = LogFile(directory)
            let buffer = LogBuffer(fileDescriptor: file.descriptor)
            let logger = Logger(label: "chatlog.serve", factory: { label in BufferedLogHandler(label: label, buffer: buffer, metadataProvider: nil) })
            logger.info("call", metadata: ["route": "/v1/chat/completions", "status": "200", "method": "POST"])
            // Buffered: nothing written yet.
            #expect(file.text.isEmpty)
            buffer.flush()
            let line = try #require(file.lines.first)
            // The line StreamLogHandler wrote: local time, level, label, sorted metadata, source, message.
            #expect(
                line.wholeMatch(of: /\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} info chatlog\.serve: method=POST route=\/v1\/chat\/completions status=200 \[ChatLogServerTests\] call/)
                    != nil, "\(line)")

            // Many tasks at once: every line whole, each task's lines in its order.
            try await withThrowingTaskGroup(of: Void.self) { group in
                for task in 0..<8 {
                    group.addTask {
                        for index in 0..<500 { logger.info("call", metadata: ["task": "\(task)", "index": "\(index)"]) }
                    }
                }
                try await group.waitForAll()
            }
            buffer.flush()
            let lines = file.lines.dropFirst()
            #expect(lines.count == 8 * 500)
            var next = [Int](repeating: 0, count: 8)
            for line in lines {
                guard let match = line.firstMatch(of: /: index=(\d+) task=(\d+) \[ChatLogServerTests\] call$/), let index = Int(match.1),
                    let task = Int(match.2)
                else {
                    Issue.record("a broken line: \(line)")
                    break
                }
                #expect(index == next[task])
                next[task] = index + 1
            }
            #expect(next == [Int](repeating: 500, count: 8))
        }
    }

    @Test func aWarningGoesOutAtOnceWithTheLinesBeforeIt() async throws {
        try await withServerTemporaryDirectory { directory in
            let file = LogFile(directory)
            let buffer = LogBuffer(fileDescriptor: file.descriptor)
            let logger = Logger(label: "chatlog.serve", factory: { label in BufferedLogHandler(label: label, buffer: buffer, metadataProvider: nil) })
            logger.info("call", metadata: ["status": "200"])
            logger.warning("upstream call failed", metadata: ["reason": "timeout"])
            #expect(file.lines.count == 2)
            #expect(file.lines.first?.hasSuffix("call") == true && file.lines.last?.hasSuffix("upstream call failed") == true)
        }
    }

    @Test func aFullBufferIsWrittenWithoutWaitingForTheTimer() async throws {
        try await withServerTemporaryDirectory { directory in
            let file = LogFile(directory)
            let buffer = LogBuffer(fileDescriptor: file.descriptor, capacity: 1024)
            let logger = Logger(label: "chatlog.serve", factory: { label in BufferedLogHandler(label: label, buffer: buffer, metadataProvider: nil) })
            for index in 0..<100 { logger.info("call", metadata: ["index": "\(index)"]) }
            // 100 lines of ~80 bytes: several buffers' worth went out without a flush, in whole lines.
            #expect(file.lines.count >= 1024 / 90)
            #expect(file.text.hasSuffix("\n"))
            buffer.flush()
            #expect(file.lines.count == 100)
        }
    }

    @Test func theFlushServiceWritesOnItsTimerAndAtShutdown() async throws {
        try await withServerTemporaryDirectory { directory in
            for interval in [Duration.milliseconds(20), .seconds(3600)] {
                let file = LogFile(directory)
                let buffer = LogBuffer(fileDescriptor: file.descriptor)
                let logger = Logger(label: "chatlog.serve", factory: { label in BufferedLogHandler(label: label, buffer: buffer, metadataProvider: nil) })
                let group = ServiceGroup(
                    configuration: .init(
                        services: [LogFlushService(buffer: buffer, interval: interval)],
                        logger: Logger(label: "t", factory: { _ in SwiftLogNoOpLogHandler() })))
                try await withThrowingTaskGroup(of: Void.self) { tasks in
                    tasks.addTask { try await group.run() }
                    if interval < .seconds(1) {
                        logger.info("first")
                        // On the timer (no clock asserted: waits until it has happened).
                        while file.lines.isEmpty { try await Task.sleep(for: .milliseconds(5)) }
                    }
                    // Lines logged just before shutdown are written when the service stops (with the
                    // hour-long timer, only then).
                    for index in 0..<50 { logger.info("late", metadata: ["index": "\(index)"]) }
                    await group.triggerGracefulShutdown()
                    try await tasks.waitForAll()
                }
                #expect(file.lines.count == (interval < .seconds(1) ? 51 : 50))
                #expect(file.lines.last?.contains("index=49") == true)
            }
        }
    }
}
