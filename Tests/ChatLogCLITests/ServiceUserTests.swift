import ChatLogTestSupport
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A store owned by a service user, with jobs run as root now and then: the files chatlog
/// creates next to the store stay the service user's, and docs/OPERATIONS.md's recipes for a
/// service user (setup, rewrap, the systemd unit) work as written — run here with their paths
/// moved into a temporary directory. Needs root (to create the user and switch to it).
@Suite(.serialized, .enabled(if: geteuid() == 0, "needs root: creates the user chatlog-app and runs steps as it with runuser"))
struct ServiceUserTests {
    static let user = "chatlog-app"

    /// One test's directories: `<root>/var/lib/app`, `<root>/etc/chatlog`, and stub programs.
    final class World {
        let sandbox: Sandbox
        let root: String
        var store: String { root + "/var/lib/app/chat.db" }
        var keyFile: String { root + "/etc/chatlog/master.key" }
        var binDirectory: String { try! ChatLogBinary.url().deletingLastPathComponent().path }

        init() throws {
            sandbox = try Sandbox()
            root = sandbox.root.path
            // The service user must be able to reach the directories below.
            chmod(root, 0o755)
        }

        /// `block` with the documented paths moved under `root` and `chatlog` the built binary.
        func localized(_ block: String) throws -> String {
            block.replacingOccurrences(of: "/usr/local/bin/chatlog", with: try ChatLogBinary.url().path)
                .replacingOccurrences(of: "/var/lib/app", with: root + "/var/lib/app")
                .replacingOccurrences(of: "/etc/chatlog", with: root + "/etc/chatlog")
        }

        var environment: [String: String] {
            sandbox.baseEnvironment.merging(["PATH": "\(binDirectory):/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]) { $1 }
        }

        /// Runs a shell script as root (`sh -e`), in the sandbox's working directory.
        func sh(_ script: String, env: [String: String]? = nil) throws -> CommandResult {
            try run(["-ec", script], env: env ?? environment, stdin: nil, cwd: sandbox.directory, executable: URL(fileURLWithPath: "/bin/sh"))
        }

        /// chatlog as root with the store's key in CHATLOG_MASTER_KEY (root cannot use the service
        /// user's key file: it is not root's).
        func chatlogAsRoot(_ arguments: [String]) throws -> CommandResult {
            let key = try String(contentsOfFile: keyFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
            sandbox.addSecret(key)
            return try run(
                arguments, env: environment.merging(["CHATLOG_DB": store, "CHATLOG_MASTER_KEY": key]) { $1 }, stdin: nil,
                cwd: sandbox.directory)
        }

        /// chatlog as the service user with the key file.
        func chatlogAsUser(_ arguments: [String]) throws -> CommandResult {
            try run(
                ["-u", ServiceUserTests.user, "--", try ChatLogBinary.url().path] + arguments,
                env: environment.merging(["CHATLOG_DB": store, "CHATLOG_MASTER_KEY_FILE": keyFile]) { $1 }, stdin: nil,
                cwd: URL(fileURLWithPath: "/"), executable: URL(fileURLWithPath: "/usr/sbin/runuser"))
        }

        func owner(_ path: String) -> uid_t? {
            var info = stat()
            return lstat(path, &info) == 0 ? info.st_uid : nil
        }
    }

    /// The fenced block after `<!-- tested: name -->` in docs/OPERATIONS.md.
    static func documentedBlock(_ name: String) throws -> String {
        let docs = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("docs/OPERATIONS.md")
        let text = try String(contentsOf: docs, encoding: .utf8)
        guard let marker = text.range(of: "<!-- tested: \(name) -->"),
            let open = text.range(of: "```", range: marker.upperBound..<text.endIndex),
            let firstLine = text.range(of: "\n", range: open.upperBound..<text.endIndex),
            let close = text.range(of: "\n```", range: firstLine.upperBound..<text.endIndex)
        else { throw CLITestError("docs/OPERATIONS.md has no block marked \(name)") }
        return String(text[firstLine.upperBound..<close.lowerBound])
    }

    static var serviceUID: uid_t? { getpwnam(user).map { $0.pointee.pw_uid } }

    /// Runs the documented setup: its `useradd` line only when the user does not exist yet (it
    /// is a system-wide user this suite may have made before), every other line as written.
    private func setUp(_ world: World) throws {
        let block = try Self.documentedBlock("service-setup")
        let lines = block.split(separator: "\n").map(String.init)
        let script = lines.filter { !$0.hasPrefix("useradd ") || Self.serviceUID == nil }.joined(separator: "\n")
        let result = try world.sh(try world.localized(script))
        #expect(result.status == 0, "the documented setup failed: \(result)")
        let uid = try #require(Self.serviceUID)
        #expect(world.owner(world.keyFile) == uid)
        #expect(world.sandbox.fileMode(atPath: world.keyFile) == 0o600)
        #expect(world.owner(world.store) == uid)
    }

    @Test func filesMadeByARootJobNextToTheStoreBelongToTheStoreOwner() throws {
        let world = try World()
        try setUp(world)
        let uid = try #require(Self.serviceUID)
        _ = try world.chatlogAsUser(["log", "--text", "hello"])

        // A key job and others run once as root.
        for arguments in [["key", "rotate", "--new"], ["log", "--text", "as root"], ["backup", world.root + "/var/lib/app/backup.db"],
            ["export", "--output", world.root + "/var/lib/app/export.jsonl"], ["key", "retire"]]
        {
            let result = try world.chatlogAsRoot(arguments)
            #expect(result.status == 0, "\(arguments): \(result)")
        }
        for suffix in [".keys.lock", "-wal", "-shm"] where FileManager.default.fileExists(atPath: world.store + suffix) {
            #expect(world.owner(world.store + suffix) == uid, "chat.db\(suffix) is not the service user's")
        }
        #expect(world.owner(world.store + ".keys.lock") == uid)
        #expect(world.owner(world.root + "/var/lib/app/backup.db") == uid)
        #expect(world.owner(world.root + "/var/lib/app/export.jsonl") == uid)
        // Elsewhere, files stay root's.
        let elsewhere = world.sandbox.path("root-backup.db")
        #expect(try world.chatlogAsRoot(["backup", elsewhere]).status == 0)
        #expect(world.owner(elsewhere) == 0)

        // The service user's jobs still work.
        for arguments in [["key", "rotate", "--new"], ["key", "retire"], ["verify"], ["log", "--text", "after root"]] {
            let result = try world.chatlogAsUser(arguments)
            #expect(result.status == 0, "\(arguments) as \(Self.user): \(result)")
        }

        // A lock file left root-owned (by an older chatlog): the user's job says whose it is; the
        // next root job gives it back.
        #expect(chown(world.store + ".keys.lock", 0, 0) == 0)
        let refused = try world.chatlogAsUser(["key", "rotate"])
        #expect(refused.status == 1, "\(refused)")
        #expect(refused.err.contains("owned by uid 0"), "\(refused)")
        #expect(try world.chatlogAsRoot(["key", "rotate"]).status == 0)
        #expect(world.owner(world.store + ".keys.lock") == uid)
        #expect(try world.chatlogAsUser(["key", "rotate", "--new"]).status == 0)
    }

    @Test func theDocumentedRewrapWorksForTheServiceUser() throws {
        let world = try World()
        try setUp(world)
        let old = try String(contentsOfFile: world.keyFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        world.sandbox.addSecret(old)
        _ = try world.chatlogAsUser(["log", "--text", "before the rewrap"])

        let result = try world.sh(try world.localized(try Self.documentedBlock("rewrap")))
        #expect(result.status == 0, "the documented rewrap failed: \(result)")
        let new = try String(contentsOfFile: world.keyFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        world.sandbox.addSecret(new)
        #expect(new != old)
        #expect(world.owner(world.keyFile) == Self.serviceUID)
        #expect(world.sandbox.fileMode(atPath: world.keyFile) == 0o600)
        #expect(!FileManager.default.fileExists(atPath: world.keyFile + ".new"))
        let status = try world.chatlogAsUser(["search", "rewrap", "--json"])
        #expect(status.status == 0, "\(status)")
        #expect(status.out.contains("before the rewrap"))
        // The old key no longer opens the store.
        let stale = try run(
            ["list"], env: world.environment.merging(["CHATLOG_DB": world.store, "CHATLOG_MASTER_KEY": old]) { $1 }, stdin: nil,
            cwd: world.sandbox.directory)
        #expect(stale.status == 77, "\(stale)")
    }

    /// The unit's `User=`, `UMask=`, `Environment=`, `LoadCredential=` and `ExecStart=` as systemd
    /// would apply them (`%d` is the credentials directory, `$$` a literal `$`), without systemd:
    /// the job runs, and an exit other than 0 leaves a `logger` line.
    @Test func theDocumentedSystemdServiceRunsAndLogsANonZeroExit() throws {
        let world = try World()
        try setUp(world)
        let unit = try world.localized(try Self.documentedBlock("systemd-service"))
        var settings: [(String, String)] = []
        for line in unit.split(separator: "\n") where !line.hasPrefix("#") {
            guard let equals = line.firstIndex(of: "=") else { continue }
            settings.append((String(line[..<equals]), String(line[line.index(after: equals)...])))
        }
        func values(_ name: String) -> [String] { settings.filter { $0.0 == name }.map(\.1) }
        #expect(values("User") == [Self.user])
        #expect(values("UMask") == ["0077"])
        #expect(values("NoNewPrivileges") == ["yes"])
        #expect(values("ProtectSystem") == ["strict"])

        // LoadCredential=name:path → <credentials>/name, owned by User=, mode 0400.
        let credentials = world.root + "/run/credentials/chatlog-rotate.service"
        try FileManager.default.createDirectory(atPath: credentials, withIntermediateDirectories: true)
        let uid = try #require(Self.serviceUID)
        let gid = try #require(getpwnam(Self.user)).pointee.pw_gid
        for credential in values("LoadCredential") {
            let parts = credential.split(separator: ":", maxSplits: 1).map(String.init)
            let target = credentials + "/" + parts[0]
            try FileManager.default.copyItem(atPath: parts[1], toPath: target)
            #expect(chown(target, uid, gid) == 0 && chmod(target, 0o400) == 0)
        }
        #expect(chown(credentials, uid, gid) == 0 && chmod(credentials, 0o500) == 0)

        // A stand-in for logger(1) that records its arguments.
        let stubs = world.root + "/stubs"
        try FileManager.default.createDirectory(atPath: stubs, withIntermediateDirectories: true)
        let logged = world.root + "/logger.log"
        try Data("#!/bin/sh\necho \"$@\" >> \(logged)\n".utf8).write(to: URL(fileURLWithPath: stubs + "/logger"))
        chmod(stubs + "/logger", 0o755)
        #expect(FileManager.default.createFile(atPath: logged, contents: nil))
        #expect(chown(logged, uid, gid) == 0)

        var environment = world.environment
        environment["PATH"] = stubs + ":" + (environment["PATH"] ?? "")
        for assignment in values("Environment") {
            let parts = assignment.replacingOccurrences(of: "%d", with: credentials).split(separator: "=", maxSplits: 1).map(String.init)
            environment[parts[0]] = parts[1]
        }
        let execStart = try #require(values("ExecStart").first).replacingOccurrences(of: "$$", with: "$")
        func start() throws -> CommandResult {
            try run(
                ["-u", Self.user, "--", "/bin/sh", "-c", "umask \(values("UMask")[0]) && exec \(execStart)"], env: environment, stdin: nil,
                cwd: URL(fileURLWithPath: "/"), executable: URL(fileURLWithPath: "/usr/sbin/runuser"))
        }

        let first = try start()
        #expect(first.status == 0, "\(first)")
        #expect(try String(contentsOfFile: logged, encoding: .utf8).isEmpty)

        // Another key job holds the lock: exit 75, and a line in the log.
        // Its own process group, so that stopping it also stops the `sleep` it runs under the lock.
        let holder = try ChildProcess("/usr/bin/flock", [world.store + ".keys.lock", "sleep", "30"], newProcessGroup: true)
        defer { holder.stop() }
        var held = false
        for _ in 0..<200 where !held {
            held = try run(["-n", world.store + ".keys.lock", "true"], env: world.environment, stdin: nil, cwd: world.sandbox.directory,
                executable: URL(fileURLWithPath: "/usr/bin/flock")).status != 0
            if !held { usleep(20_000) }
        }
        #expect(held)
        let second = try start()
        #expect(second.status == 75, "\(second)")
        let log = try String(contentsOfFile: logged, encoding: .utf8)
        #expect(log.contains("-t chatlog-rotate"), "\(log)")
        #expect(log.contains("chatlog key rotate exited 75"), "\(log)")
    }
}
