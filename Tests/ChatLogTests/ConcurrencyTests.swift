import Dispatch
import Foundation
import Testing

@testable import ChatLog

/// Many writers on one store: threads, tasks, separate connections and separate processes. Every
/// write is one `BEGIN IMMEDIATE` transaction, so writers queue and nothing is lost.
@Suite struct ConcurrencyTests {
    @Test func concurrentTasksAppendEveryMessage() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let shared = try await store.createConversation(NewConversation(title: "shared"))
            let tasks = 8
            let perTask = 60
            try await withThrowingTaskGroup(of: Void.self) { group in
                for task in 0..<tasks {
                    group.addTask {
                        for index in 0..<perTask {
                            try await store.append(NewMessage(role: .user, content: "task \(task) message \(index)"), to: shared)
                        }
                    }
                }
                try await group.waitForAll()
            }
            let transcript = try await store.transcript(shared)
            #expect(transcript.messages.count == tasks * perTask)
            #expect(transcript.messages.map(\.position) == Array(0..<(tasks * perTask)))
            #expect(Set(transcript.messages.map(\.content)).count == tasks * perTask)
            // Each task's own messages stay in the order it wrote them.
            for task in 0..<tasks {
                let own = transcript.messages.map(\.content).filter { $0.hasPrefix("task \(task) ") }
                #expect(own == (0..<perTask).map { "task \(task) message \($0)" })
            }
            #expect(try counts(store) == [1, tasks * perTask])
        }
    }

    @Test func concurrentThreadsWriteAndReadThroughTheSyncAPI() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let threads = 8
            let perThread = 40
            let failures = ErrorCollector()
            DispatchQueue.concurrentPerform(iterations: threads) { thread in
                do {
                    let own = try store.createConversation(NewConversation(title: "thread \(thread)"))
                    for index in 0..<perThread {
                        try store.logExchange(
                            ModelExchange(
                                conversation: .existing(own), prompt: [NewMessage(role: .user, content: "q\(index)")],
                                completion: NewMessage(role: .assistant, content: "a\(index)")))
                        // Readers run alongside the writers and always see whole exchanges.
                        let transcript = try store.transcript(own)
                        if transcript.messages.count != 2 * (index + 1) { failures.add("thread \(thread) saw a partial exchange") }
                    }
                } catch {
                    failures.add("thread \(thread): \(error)")
                }
            }
            #expect(failures.messages.isEmpty, "\(failures.messages)")
            #expect(try counts(store) == [threads, threads * perThread * 2])
            for conversation in try store.conversations(ConversationQuery(limit: 100)).conversations {
                #expect(conversation.messageCount == perThread * 2)
                let positions = try store.transcript(conversation.id).messages.map(\.position)
                #expect(positions == Array(0..<(perThread * 2)))
            }
        }
    }

    @Test func twoStoresOnOneFileDoNotLoseWrites() async throws {
        try await withTemporaryDirectory { directory in
            let key = MasterKey.generate()
            let first = try makeStore(in: directory, key: key)
            let second = try ChatLogStore.open(at: directory.databasePath, key: .key(key))
            let id = try await first.createConversation()
            try await withThrowingTaskGroup(of: Void.self) { group in
                for store in [first, second] {
                    group.addTask {
                        for index in 0..<100 { try await store.append(NewMessage(role: .user, content: "\(index)"), to: id) }
                    }
                }
                try await group.waitForAll()
            }
            #expect(try await first.transcript(id).messages.map(\.position) == Array(0..<200))
            #expect(try counts(second) == [1, 200])
        }
    }

    /// Four processes append to one file at the same time; none fails busy, none loses a message.
    @Test(.timeLimit(.minutes(3)))
    func fourProcessesAppendWithoutLoss() async throws {
        try await withTemporaryDirectory { directory in
            let driver = try testDriverPath()
            let key = MasterKey.generate()
            let store = try makeStore(in: directory, key: key)
            let id = try await store.createConversation(NewConversation(title: "multi-process"))
            try store.close()

            let processes = 4
            let perProcess = 2000
            var environment = ["CHATLOG_MASTER_KEY": key.exportBase64()]
            if let path = ProcessInfo.processInfo.environment["PATH"] { environment["PATH"] = path }
            let running = try (0..<processes).map { index in
                try RunningProcess(
                    executable: driver,
                    arguments: [
                        "append", "--db", directory.databasePath, "--conversation", id.rawValue, "--count", String(perProcess),
                        "--label", "process \(index)",
                    ],
                    environment: environment, directory: directory.path)
            }
            let results = try await withThrowingTaskGroup(of: (Int, ProcessResult).self) { group in
                for (index, process) in running.enumerated() {
                    group.addTask { (index, try await process.waitAsync()) }
                }
                var results: [Int: ProcessResult] = [:]
                for try await (index, result) in group { results[index] = result }
                return results
            }
            for index in 0..<processes {
                let result = try #require(results[index])
                #expect(result.status == 0, "process \(index) exited \(result.status): \(result.standardError)")
                #expect(result.standardError.isEmpty, "process \(index) stderr: \(result.standardError)")
                #expect(result.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines) == String(perProcess))
            }

            let reopened = try ChatLogStore.open(at: directory.databasePath, key: .key(key))
            let messages = try await reopened.transcript(id).messages
            #expect(messages.count == processes * perProcess)
            #expect(messages.map(\.position) == Array(0..<(processes * perProcess)))
            // The writers really overlapped: their messages interleave in the conversation.
            let writers = messages.map { $0.content.split(separator: " ")[1] }
            let switches = zip(writers, writers.dropFirst()).filter { $0 != $1 }.count
            // (Writers one after another would give exactly `processes - 1` switches.)
            #expect(switches > processes, "the processes did not overlap (\(switches) switches)")
            for index in 0..<processes {
                let own = messages.map(\.content).filter { $0.hasPrefix("process \(index) ") }
                #expect(own == (0..<perProcess).map { "process \(index) message \($0)" }, "process \(index)")
            }
        }
    }

    @Test func driverAppendsInBatchesAndReportsErrors() async throws {
        try await withTemporaryDirectory { directory in
            let driver = try testDriverPath()
            let key = MasterKey.generate()
            let store = try makeStore(in: directory, key: key)
            let id = try await store.createConversation()
            let batched = try await RunningProcess(
                executable: driver,
                arguments: [
                    "append", "--db", directory.databasePath, "--conversation", id.rawValue, "--count", "20", "--batch", "7",
                    "--role", "assistant", "--label", "batched",
                ],
                environment: ["CHATLOG_MASTER_KEY": key.exportBase64()], directory: directory.path
            ).waitAsync()
            #expect(batched.status == 0, "\(batched.standardError)")
            #expect(batched.standardOutput == "20\n")
            let messages = try await store.transcript(id).messages
            #expect(messages.map(\.content) == (0..<20).map { "batched message \($0)" })
            #expect(messages.allSatisfy { $0.role == .assistant })
            try store.close()

            let usage = try await RunningProcess(
                executable: driver, arguments: ["append", "--db", directory.databasePath, "--count", "0"],
                environment: ["CHATLOG_MASTER_KEY": key.exportBase64()], directory: directory.path
            ).waitAsync()
            #expect(usage.status == 64)
            let missing = "0190d5a4-1111-7000-8000-000000000001"
            let wrongKey = try await RunningProcess(
                executable: driver, arguments: ["append", "--db", directory.databasePath, "--conversation", missing, "--count", "1"],
                environment: ["CHATLOG_MASTER_KEY": MasterKey.generate().exportBase64()], directory: directory.path
            ).waitAsync()
            #expect(wrongKey.status != 0)
            #expect(wrongKey.standardError.contains("wrong master key"))
            let notFound = try await RunningProcess(
                executable: driver, arguments: ["append", "--db", directory.databasePath, "--conversation", missing, "--count", "1"],
                environment: ["CHATLOG_MASTER_KEY": key.exportBase64()], directory: directory.path
            ).waitAsync()
            #expect(notFound.status != 0)
            #expect(notFound.standardError.contains(missing))
            let noKey = try await RunningProcess(
                executable: driver, arguments: ["append", "--db", directory.databasePath, "--conversation", missing, "--count", "1"],
                environment: [:], directory: directory.path
            ).waitAsync()
            #expect(noKey.status != 0)
            #expect(noKey.standardError.contains("CHATLOG_MASTER_KEY"))
        }
    }
}

/// Collects failures from threads that cannot call `#expect` safely in order.
final class ErrorCollector: @unchecked Sendable {
    // @unchecked Sendable: `storage` is only touched under `lock`.
    private let lock = NSLock()
    private var storage: [String] = []

    func add(_ message: String) { lock.withLock { storage.append(message) } }
    var messages: [String] { lock.withLock { storage } }
}
