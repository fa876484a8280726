import ChatLog
import Foundation
import GRDB
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

// Process hygiene (hardening item 7): a running `chatlog` is not dumpable, has core dumps off,
// holds no key in /proc/<pid>/environ once it has read it (nor ever in its command line), and
// every file it creates is 0600, whatever the caller's umask.
//
// Whether a process is dumpable is not shown in /proc/<pid>/status; what shows it is that the
// kernel makes a non-dumpable process's /proc/<pid>/ files owned by root. Root's own processes
// cannot show the difference, so the child runs as nobody (uid 65534, through setpriv), next to a
// control process (`sleep`) that is dumpable and whose /proc files are owned by 65534.

private let nobody: uid_t = 65534

private func setprivURL() -> URL? {
    ["/usr/bin/setpriv", "/bin/setpriv"].first { FileManager.default.isExecutableFile(atPath: $0) }.map { URL(fileURLWithPath: $0) }
}

private func asNobody(_ command: [String]) -> [String] {
    ["--reuid=\(nobody)", "--regid=\(nobody)", "--clear-groups", "--"] + command
}

private func owner(_ path: String) -> uid_t? {
    var info = stat()
    guard stat(path, &info) == 0 else { return nil }
    return info.st_uid
}

private func procFile(_ pid: pid_t, _ name: String) -> Data {
    FileManager.default.contents(atPath: "/proc/\(pid)/\(name)") ?? Data()
}

/// The forms a base64 key could take in memory or output.
private func keyForms(_ key: String) -> [Data] {
    var forms = [Data(key.utf8)]
    if let bytes = Data(base64Encoded: key) {
        let hex = bytes.map { String(format: "%02x", $0) }.joined()
        forms += [Data(hex.utf8), Data(hex.uppercased().utf8), bytes]
    }
    return forms
}

/// "Max core file size" soft and hard limits from /proc/<pid>/limits.
private func coreLimits(_ pid: pid_t) -> [String] {
    let text = String(decoding: procFile(pid, "limits"), as: UTF8.self)
    guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("Max core file size") }) else { return [] }
    return line.dropFirst("Max core file size".count).split(separator: " ").prefix(2).map(String.init)
}

private func chown(recursive path: String, to uid: uid_t) throws {
    guard let enumerator = FileManager.default.enumerator(atPath: path) else { return }
    guard Glibc.chown(path, uid, gid_t(uid)) == 0 else { throw CLITestError("chown \(path) failed (errno \(errno))") }
    while let item = enumerator.nextObject() as? String {
        guard Glibc.chown(path + "/" + item, uid, gid_t(uid)) == 0 else { throw CLITestError("chown \(item) failed (errno \(errno))") }
    }
}

@Suite struct HygieneTests {
    /// A `chatlog key rotate` at work (batch size 1 over 3,000 rows) and a `chatlog log` waiting
    /// on stdin, both as uid 65534.
    @Test func aRunningChatlogIsNotDumpableHasNoCoreDumpsAndHidesTheKey() async throws {
        guard geteuid() == 0, let setpriv = setprivURL() else {
            print("process hygiene: skipped, needs root and setpriv to run chatlog as another user")
            return
        }
        let sandbox = try Sandbox()
        let chatlog = try ChatLogBinary.url().path
        let store = try ChatLogStore.create(at: sandbox.path("chatlog.db"), key: .key(try MasterKey(base64: sandbox.key)))
        let conversation = try await store.createConversation(NewConversation(title: "hygiene"))
        try await store.append((0..<3_000).map { NewMessage(role: .user, content: "hygiene \($0)") }, to: conversation)
        try store.close()
        try chown(recursive: sandbox.root.path, to: nobody)

        // The control: a dumpable process of the same user.
        let control = try BackgroundProcess(
            asNobody(["/bin/sleep", "30"]), env: sandbox.baseEnvironment, cwd: sandbox.directory, scratch: sandbox.root, executable: setpriv)
        // Once it runs sleep: setpriv itself is not dumpable between its setresuid and the exec.
        try await waitFor("the control runs sleep as nobody") {
            String(decoding: procFile(control.pid, "cmdline"), as: UTF8.self).hasPrefix("/bin/sleep")
                && String(decoding: procFile(control.pid, "status"), as: UTF8.self).contains("Uid:\t\(nobody)")
        }
        let controlOwner = owner("/proc/\(control.pid)/environ")
        control.signal(SIGKILL)
        _ = try await control.finish()
        #expect(controlOwner == nobody, "the method: a dumpable process's /proc files belong to its user")

        // 1. key rotate, once it has opened the store and taken the key lock. Keep it at work while
        // it is inspected: hold the write lock, so that its next batch waits (its busy timeout is far
        // longer than the checks). On a loaded machine the 3,000 single-row batches can all commit
        // between the lock file appearing and the blocker's BEGIN: such a run finished cleanly, so
        // start another (each `--new` makes one more key) rather than inspect a process that is gone.
        let lock = sandbox.path("chatlog.db.keys.lock")
        var blockerConfiguration = Configuration()
        blockerConfiguration.busyMode = .timeout(60)
        blockerConfiguration.allowsUnsafeTransactions = true  // the transaction spans two accesses
        let blocker = try DatabaseQueue(path: sandbox.path("chatlog.db"), configuration: blockerConfiguration)
        var attempt = 0
        var rotate: BackgroundProcess
        while true {
            attempt += 1
            rotate = try BackgroundProcess(
                asNobody([chatlog, "key", "rotate", "--new", "--batch-size", "1", "--db", "chatlog.db"]), env: sandbox.environment,
                cwd: sandbox.directory, scratch: sandbox.root, executable: setpriv)
            let running = rotate
            // The write lock is taken on the polling thread the moment the key lock appears (a resume
            // on the cooperative pool in between let a loaded CI run finish all batches first).
            try await waitFor("the rotation takes the key lock") {
                if running.hasExited { throw CLITestError("the rotation exited: \(running.errorSoFar)") }
                guard (try? String(contentsOfFile: lock, encoding: .utf8)) == "\(running.pid)\n" else { return false }
                try blocker.inDatabase { db in try db.execute(sql: "BEGIN IMMEDIATE") }
                return true
            }
            guard rotate.hasExited else { break }
            let finished = try await rotate.finish()
            try blocker.inDatabase { db in try db.execute(sql: "ROLLBACK") }
            #expect(finished.status == 0, "the rotation failed: \(finished.err)")
            guard finished.status == 0, attempt < 5 else {
                Issue.record("the rotation finished before it could be inspected, \(attempt) times")
                return
            }
        }
        let rotateStatus = String(decoding: procFile(rotate.pid, "status"), as: UTF8.self)
        #expect(rotateStatus.contains("Uid:\t\(nobody)"), "\(rotateStatus)")
        let rotateOwner = owner("/proc/\(rotate.pid)/environ")
        let rotateEnviron = procFile(rotate.pid, "environ")
        let rotateCmdline = procFile(rotate.pid, "cmdline")
        let rotateCore = coreLimits(rotate.pid)
        var modes: [String: String] = [:]
        for name in ["chatlog.db", "chatlog.db-wal", "chatlog.db-shm", "chatlog.db.keys.lock"] {
            modes[name] = sandbox.fileMode(name).map { String($0, radix: 8) } ?? "missing"
        }
        let stillRunning = !rotate.hasExited
        rotate.signal(SIGKILL)
        _ = try await rotate.finish()
        try blocker.inDatabase { db in try db.execute(sql: "ROLLBACK") }
        try blocker.close()
        #expect(stillRunning, "the rotation was still at work during the checks")
        #expect(rotateOwner == 0, "not dumpable: its /proc files belong to root, not to uid \(String(describing: rotateOwner))")
        #expect(rotateCore == ["0", "0"], "core dumps disabled: \(rotateCore)")
        let environLeaks = keyForms(sandbox.key).filter { rotateEnviron.range(of: $0) != nil }.count
        #expect(environLeaks == 0, "/proc/<pid>/environ still holds the master key after it was read")
        #expect(keyForms(sandbox.key).allSatisfy { rotateCmdline.range(of: $0) == nil })
        #expect(modes.values.allSatisfy { $0 == "600" }, "\(modes)")

        // 2. log, blocked reading its message from stdin (it reads the key only after that).
        let log = try BackgroundProcess(
            asNobody([chatlog, "log", "--conversation", conversation.rawValue]), env: sandbox.environment, cwd: sandbox.directory,
            scratch: sandbox.root, executable: setpriv, keepStdinOpen: true)
        try await waitFor("chatlog log waits on stdin") {
            if log.hasExited { throw CLITestError("chatlog log exited: \(log.errorSoFar)") }
            return log.isReadingStdin
        }
        let logOwner = owner("/proc/\(log.pid)/environ")
        let logCore = coreLimits(log.pid)
        let logCmdline = procFile(log.pid, "cmdline")
        let logEnvironHoldsKey = keyForms(sandbox.key).contains { procFile(log.pid, "environ").range(of: $0) != nil }
        log.writeStdin(Data("written while watched".utf8))
        log.closeStdin()
        let logged = try await log.finish()
        #expect(logged.status == 0, "\(logged)")
        #expect(logOwner == 0, "not dumpable while waiting on stdin")
        #expect(logCore == ["0", "0"], "\(logCore)")
        #expect(keyForms(sandbox.key).allSatisfy { logCmdline.range(of: $0) == nil })
        print(
            "process hygiene: control process /proc owner \(controlOwner.map(String.init) ?? "?"); key rotate at work: /proc owner "
                + "\(rotateOwner.map(String.init) ?? "?") (not dumpable), core limit \(rotateCore), master key in environ: "
                + "\(environLeaks == 0 ? "no" : "YES"), in cmdline: no, files \(modes.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }); "
                + "chatlog log waiting on stdin: /proc owner \(logOwner.map(String.init) ?? "?"), core limit \(logCore), "
                + "key in environ before it is read: \(logEnvironHoldsKey ? "yes (read after stdin)" : "no")")
    }

    /// Every file the CLI creates — store, WAL, shared memory, key lock, export, backup, key file
    /// — is 0600 even when the caller's umask is 000.
    @Test func everyFileTheCLICreatesIs0600WhateverTheUmask() async throws {
        let sandbox = try Sandbox()
        let script = """
            umask 000
            set -e
            "$0" init
            "$0" log --title hygiene --text "one message" > /dev/null
            "$0" export --output export.jsonl
            "$0" backup backup.db > /dev/null
            "$0" key generate --output new.key
            "$0" key rotate --new > /dev/null
            "$0" init --db imported.db > /dev/null
            "$0" import --format openai-jsonl export.jsonl --db imported.db > /dev/null
            """
        let result = try sandbox.shell(script)
        #expect(result.status == 0, "\(result)")
        let files = try FileManager.default.contentsOfDirectory(atPath: sandbox.directory.path).sorted()
        var modes: [String: UInt32] = [:]
        for file in files { modes[file] = sandbox.fileMode(file) }
        let loose = modes.filter { $0.value & 0o077 != 0 }
        #expect(loose.isEmpty, "files readable by others: \(loose.mapValues { String($0, radix: 8) })")
        for expected in ["chatlog.db", "export.jsonl", "backup.db", "new.key", "chatlog.db.keys.lock", "imported.db"] {
            #expect(files.contains(expected), "\(expected) was not created: \(files)")
        }
        print(
            "file modes with umask 000: " + modes.sorted { $0.key < $1.key }.map { "\($0.key) \(String($0.value, radix: 8))" }.joined(separator: ", "))
    }
}
