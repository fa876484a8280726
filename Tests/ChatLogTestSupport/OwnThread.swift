import Foundation
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

// Blocking work for async tests, on a thread of its own — and a list of those waits that outlive 20 s,
// written to /tmp/chatlog-test-waits-PID every 5 s, which scripts/test-watchdog prints when a run is stuck
// (docs/TESTING.md, "The intermittent hang").
//
// Swift's cooperative pool has as many threads as cores (two here) and other suites share them, so a test
// that blocks (waitpid, a semaphore, polling a child) runs the blocking part elsewhere and awaits it. Not on
// Dispatch's global queues either (bodies block for minutes), and not with Foundation's `Thread`, whose
// start() ignores a failing pthread_create: the body would never run and the test would wait forever.
// Here a failing pthread_create is retried, then thrown. Each wait's stage is recorded — the thread not yet
// running, its body running, or the body done and the task resumed but not yet continued — so a stuck run
// tells whether a test waits on its blocking work, on a thread that never ran, or on Swift's executor.

/// Runs `body` on a new thread and returns its result without holding a thread of Swift's
/// cooperative pool. `label` names the wait in the stuck-run report.
public func onOwnThread<T: Sendable>(
    _ label: String = #function, file: String = #fileID, line: Int = #line, _ body: @escaping @Sendable () throws -> T
) async throws -> T {
    let id = OwnThreadWaits.register("\(label) (\(file):\(line))")
    defer { OwnThreadWaits.finish(id) }
    return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
        do {
            try startThread {
                OwnThreadWaits.mark(id, .running)
                let result = Result { try body() }
                OwnThreadWaits.mark(id, .resumed)
                continuation.resume(with: result)
            }
        } catch {
            continuation.resume(throwing: error)
        }
    }
}

/// ``onOwnThread(_:file:line:_:)`` for a body that cannot throw; a thread that cannot be started
/// (pthread_create failing for seconds) stops the test process rather than hang it.
public func onOwnThread<T: Sendable>(
    _ label: String = #function, file: String = #fileID, line: Int = #line, _ body: @escaping @Sendable () -> T
) async -> T {
    do {
        return try await onOwnThread(label, file: file, line: line) { () throws -> T in body() }
    } catch {
        fatalError("\(error)")
    }
}

public struct ThreadStartError: Error, CustomStringConvertible {
    public let description: String
}

/// Starts a detached thread running `work`: pthread_create, retried for up to ~2 s while it fails
/// with EAGAIN (a passing shortage of threads or memory), otherwise thrown.
public func startThread(_ work: @escaping @Sendable () -> Void) throws {
    final class Work {
        let run: @Sendable () -> Void
        init(_ run: @escaping @Sendable () -> Void) { self.run = run }
    }
    let box = Unmanaged.passRetained(Work(work)).toOpaque()
    var attempts = 0
    while true {
        var thread = pthread_t()
        let result = pthread_create(
            &thread, nil,
            { raw in
                Unmanaged<Work>.fromOpaque(raw!).takeRetainedValue().run()
                return nil
            }, box)
        if result == 0 {
            pthread_detach(thread)
            return
        }
        attempts += 1
        guard result == EAGAIN, attempts < 200 else {
            Unmanaged<Work>.fromOpaque(box).release()
            throw ThreadStartError(description: "pthread_create failed after \(attempts) attempts: \(String(cString: strerror(result)))")
        }
        usleep(10_000)
    }
}

/// The waits of ``onOwnThread(_:file:line:_:)`` in progress, and the report of the long ones.
public enum OwnThreadWaits {
    public enum Stage: String, Sendable {
        case starting = "thread not yet running"
        case running = "blocking body running"
        case resumed = "body done and the task resumed, but the task has not continued"
    }

    struct Entry {
        let label: String
        let test: String
        let since: ContinuousClock.Instant
        var stage: Stage
        var stageSince: ContinuousClock.Instant
    }

    private static let entries = Mutex<[Int: Entry]>([:])
    private static let counter = Atomic<Int>(0)
    /// Where the report goes; scripts/test-watchdog reads it.
    public static var reportPath: String { "/tmp/chatlog-test-waits-\(getpid())" }

    static func register(_ label: String) -> Int {
        _ = reporter
        let id = counter.add(1, ordering: .relaxed).newValue
        let test = Test.current.map { $0.displayName ?? $0.name } ?? "(no test)"
        let now = ContinuousClock.now
        entries.withLock { $0[id] = Entry(label: label, test: test, since: now, stage: .starting, stageSince: now) }
        return id
    }

    static func mark(_ id: Int, _ stage: Stage) {
        let now = ContinuousClock.now
        entries.withLock { entries in
            entries[id]?.stage = stage
            entries[id]?.stageSince = now
        }
    }

    static func finish(_ id: Int) {
        _ = entries.withLock { $0.removeValue(forKey: id) }
    }

    /// The waits older than `age` (20 s), one per line, oldest first.
    public static func report(olderThan age: Duration = .seconds(20)) -> String {
        let now = ContinuousClock.now
        let long = entries.withLock { entries in entries.values.filter { now - $0.since >= age } }.sorted { $0.since < $1.since }
        guard !long.isEmpty else { return "no wait on an own thread older than \(age.components.seconds) s\n" }
        return long.map { entry in
            let age = (now - entry.since).components.seconds
            let inStage = (now - entry.stageSince).components.seconds
            return "\(age) s: \(entry.label) — \(entry.stage.rawValue) (for \(inStage) s) — test: \(entry.test.prefix(160))\n"
        }.joined()
    }

    /// A thread that rewrites the report every 5 s (atomically: a temporary file renamed), so
    /// that it can be read from outside a stuck process; removed when the process exits.
    private static let reporter: Void = {
        atexit { unlink(OwnThreadWaits.reportPath) }
        try? startThread {
            while true {
                sleep(5)
                let path = OwnThreadWaits.reportPath
                let temporary = path + ".new"
                if (try? Data(OwnThreadWaits.report().utf8).write(to: URL(fileURLWithPath: temporary))) != nil {
                    rename(temporary, path)
                }
            }
        }
    }()
}
