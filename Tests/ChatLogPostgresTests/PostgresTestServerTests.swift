import Foundation
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

extension PostgreSQLSuites {
    /// The throwaway cluster itself: it answers, it does not run as root, and it goes away — when
    /// stopped, and when the process it watches dies without stopping it.
    @Suite("PostgreSQL test cluster")
    struct PostgresTestServerTests {
        @Test("the shared cluster answers on its own socket, as an unprivileged user when run as root")
        func sharedClusterAnswers() async throws {
            let server = try await PostgresTestServer.shared()
            #expect(try server.psql("SELECT 1") == "1")
            #expect(FileManager.default.fileExists(atPath: server.socketPath))
            #expect(try server.psql("SHOW listen_addresses") == "")
            let pid = try #require(server.postmasterPID)
            let owner = try processOwner(pid)
            if geteuid() == 0 { #expect(owner != 0) } else { #expect(owner == geteuid()) }
        }

        @Test("each test gets its own database, dropped afterwards")
        func databasePerTest() async throws {
            let server = try await PostgresTestServer.shared()
            let name = try await server.withDatabase { name in
                try server.psql("CREATE TABLE probe (x int); INSERT INTO probe VALUES (7)", database: name)
                #expect(try server.psql("SELECT x FROM probe", database: name) == "7")
                return name
            }
            #expect(try server.psql("SELECT count(*) FROM pg_database WHERE datname = '\(name)'") == "0")
        }

        @Test("stop() ends the server and removes its folder")
        func stopEndsServer() async throws {
            let server = try await PostgresTestServer.startOffPool()
            let pid = try #require(server.postmasterPID)
            #expect(isAlive(pid))
            try await PostgresTestServer.offPool { server.stop() }
            #expect(!FileManager.default.fileExists(atPath: server.directory))
            #expect(try await waitUntil { !isAlive(pid) })
        }

        @Test("the watchdog stops the server when the watched process is killed")
        func watchdogStopsServer() async throws {
            let watched = try PostgresTestServer.spawn("/bin/sleep", ["600"], output: "/dev/null")
            let server = try await PostgresTestServer.startOffPool(watching: watched)
            let pid = try #require(server.postmasterPID)
            #expect(try await server.psqlOffPool("SELECT 1") == "1")
            kill(watched, SIGKILL)
            var status: Int32 = 0
            _ = waitpid(watched, &status, 0)
            #expect(try await waitUntil { !isAlive(pid) && !FileManager.default.fileExists(atPath: server.directory) })
            // The watchdog shell has ended too (its work done); reap it, so no exited child of
            // this process is left behind.
            let watchdog = server.watchdogPID.withLock { $0 }
            #expect(watchdog > 0)
            #expect(try await waitUntil { waitpid(watchdog, &status, WNOHANG) == watchdog })
        }
    }
}

/// The real user id of a process (`Uid:` in /proc/PID/status).
func processOwner(_ pid: pid_t) throws -> uid_t {
    let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
    for line in status.split(separator: "\n") where line.hasPrefix("Uid:") {
        if let field = line.split(whereSeparator: { $0 == "\t" || $0 == " " }).dropFirst().first, let uid = uid_t(field) { return uid }
    }
    throw PostgresTestServerError("no Uid line for process \(pid)")
}

/// Whether a process exists and is not a zombie (a container's init may not reap the
/// daemonised postmaster at once).
func isAlive(_ pid: pid_t) -> Bool {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return false }
    for line in status.split(separator: "\n") where line.hasPrefix("State:") { return !line.contains("Z") && !line.contains("X") }
    return false
}

/// Polls `condition` every 50 ms for up to `seconds` (a bound on waiting, not a time asserted),
/// sleeping without holding a thread: what it waits for may need the cooperative pool (two
/// threads on a two-core machine), which a blocking wait would starve.
func waitUntil(seconds: Double = 30, _ condition: () throws -> Bool) async throws -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if try condition() { return true }
        try await Task.sleep(for: .milliseconds(50))
    }
    return try condition()
}

/// ``waitUntil(seconds:_:)`` for a condition that awaits (a query run off the cooperative pool).
func eventually(seconds: Double = 60, _ condition: () async throws -> Bool) async throws -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if try await condition() { return true }
        try await Task.sleep(for: .milliseconds(50))
    }
    return try await condition()
}

/// `body`'s result, or a thrown error once `seconds` have passed, so that a hang fails the test
/// instead of stopping the whole run (the body keeps running, unstructured, if it never returns).
func finishing<T: Sendable>(within seconds: Double, _ what: String, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    let once = FirstOnly()
    return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
        let timer = Task {
            try? await Task.sleep(for: .seconds(seconds))
            if !Task.isCancelled, once.claim() {
                continuation.resume(throwing: PostgresTestServerError("\(what) did not finish within \(Int(seconds)) s (hung)"))
            }
        }
        Task {
            let result: Result<T, any Error>
            do { result = .success(try await body()) } catch { result = .failure(error) }
            if once.claim() {
                timer.cancel()
                continuation.resume(with: result)
            }
        }
    }
}

/// True for the first caller of ``claim()`` only.
final class FirstOnly: Sendable {
    private let claimed = Mutex(false)

    func claim() -> Bool {
        claimed.withLock { done in
            defer { done = true }
            return !done
        }
    }
}
