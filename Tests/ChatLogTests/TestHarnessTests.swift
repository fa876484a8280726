import ChatLogTestSupport
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The test process's own machinery (ChatLogTestSupport): the child processes every suite starts.
@Suite struct TestHarnessTests {
    @Test func exitCodesSignalsAndOutputsAreReported() throws {
        let result = try ChildProcess.run("/bin/sh", ["-c", "cat; echo to-stderr >&2; exit 3"], input: Data("from stdin".utf8), timeout: 60)
        #expect(result.exit.status == 3 && result.exit.signal == nil && !result.exit.succeeded)
        #expect(String(decoding: result.stdout, as: UTF8.self) == "from stdin")
        #expect(String(decoding: result.stderr, as: UTF8.self) == "to-stderr\n")
        let killed = try ChildProcess("/bin/sleep", ["3600"])
        killed.signal(SIGTERM)
        let exit = try killed.wait(timeout: 60)
        #expect(exit.signal == SIGTERM && exit.status == 128 + SIGTERM)
        // Reaped: a later signal goes nowhere, and waiting again gives the same answer.
        killed.signal(SIGKILL)
        #expect(try killed.wait() == exit)
    }

    @Test func aChildInheritsNoDescriptorButItsStandardOnes() throws {
        // A descriptor of this process without close-on-exec, as Foundation leaves its sockets.
        let leaky = open("/dev/null", O_RDONLY)
        #expect(leaky > 2)
        defer { close(leaky) }
        let result = try ChildProcess.run("/bin/sh", ["-c", "ls /proc/$$/fd"], timeout: 60)
        let descriptors = String(decoding: result.stdout, as: UTF8.self).split(separator: "\n").compactMap { Int32($0) }
        // ls itself opens one to read the directory; the shell's own are 0, 1 and 2.
        #expect(!descriptors.contains(leaky), "\(descriptors)")
        #expect(descriptors.filter { $0 > 2 }.count <= 1, "\(descriptors)")
    }

    @Test func aTimeoutKillsTheChildAndSaysWhatItWasDoing() throws {
        let child = try ChildProcess("/bin/sleep", ["3600"])
        do {
            try child.wait(timeout: 0.3)
            Issue.record("an hour's sleep finished within 0.3 s")
        } catch let error as ChildProcessError {
            #expect(error.description.contains("did not finish within"), "\(error)")
            #expect(error.description.contains("state S"), "\(error)")
        }
        #expect(child.hasExited && child.poll()?.signal == SIGKILL)
    }

    @Test func stoppingAProcessGroupStopsTheChildrenItStarted() async throws {
        let pidFile = NSTemporaryDirectory() + "/chatlog-group-\(UUID().uuidString)"
        defer { unlink(pidFile) }
        // Long sleeps: under the whole parallel suite this test's own waits can stretch to minutes.
        let parent = try ChildProcess("/bin/sh", ["-c", "sleep 3600 & echo $! > \(pidFile); wait"], newProcessGroup: true)
        var grandchild: pid_t = 0
        for _ in 0..<3_000 where grandchild == 0 {
            grandchild = pid_t((try? String(contentsOfFile: pidFile, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 0
            if grandchild == 0 { try await Task.sleep(for: .milliseconds(10)) }
        }
        #expect(grandchild > 0 && kill(grandchild, 0) == 0)
        parent.stop()
        // The grandchild was killed too (reaped by init, or a zombie of no one for a moment).
        var gone = false
        for _ in 0..<3_000 where !gone {
            let state = (try? String(contentsOfFile: "/proc/\(grandchild)/stat", encoding: .utf8))?.split(separator: ")").last?.split(separator: " ").first
            gone = state == nil || state == "Z"
            if !gone { try await Task.sleep(for: .milliseconds(10)) }
        }
        #expect(gone, "the grandchild \(grandchild) survived its group's SIGKILL")
    }

    @Test func pipesCarryInputAndOutputWhileTheChildRuns() async throws {
        let child = try ChildProcess("/bin/cat", [], stdin: .pipe, stdout: .pipe)
        child.writeStdin(Data("first line\n".utf8))
        var seen = Data()
        while !String(decoding: seen, as: UTF8.self).contains("first line\n") { seen.append(child.readOutput()) }
        child.writeStdin(Data("second".utf8))
        child.closeStdin()
        seen.append(child.readAllOutput())
        #expect(String(decoding: seen, as: UTF8.self) == "first line\nsecond")
        #expect(try await child.exit(timeout: 60).succeeded)
    }
    @Test func blockingWorkOnItsOwnThreadIsListedWhileItWaits() async throws {
        struct Failure: Error {}
        let release = DispatchSemaphore(value: 0)
        let started = DispatchSemaphore(value: 0)
        let waiting = Task {
            try await onOwnThread("harness probe wait") { () throws -> Int in
                started.signal()
                release.wait()
                return 42
            }
        }
        started.wait()
        // The body runs on a thread of its own: the report names the wait, its stage and its test.
        let report = OwnThreadWaits.report(olderThan: .zero)
        #expect(report.contains("harness probe wait") && report.contains("blocking body running"), "\(report)")
        #expect(report.contains("blockingWorkOnItsOwnThreadIsListedWhileItWaits"), "\(report)")
        release.signal()
        #expect(try await waiting.value == 42)
        #expect(!OwnThreadWaits.report(olderThan: .zero).contains("harness probe wait"))
        await #expect(throws: Failure.self) { try await onOwnThread { () throws -> Int in throw Failure() } }
    }
}
