import ChatLogTestSupport
import Foundation
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

// A throwaway PostgreSQL cluster for the PostgreSQL suites (docs/TESTING.md, "PostgreSQL"):
// `initdb` into a new temporary folder, a server listening only on a Unix socket in that folder
// (no TCP port, so parallel test runs and a system cluster on 5432 never meet), trust
// authentication for its own socket, durability off (a test cluster is thrown away). Run as
// root (CI on a fresh Debian machine), the cluster belongs to an unprivileged user — PostgreSQL
// refuses to run as root — and every server command runs as that user through `runuser`.
//
// One cluster per test process, started by the first test that asks for it. It is stopped when
// the process exits (an `atexit` handler), and a watchdog process started with it stops it and
// removes the folder within a second if the test process dies any other way (a crash, SIGKILL):
// no stray postgres processes, whatever the tests did.

struct PostgresTestServerError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The result of a helper program run to completion.
struct ToolResult: Sendable {
    let status: Int32
    let output: String

    var succeeded: Bool { status == 0 }
}

final class PostgresTestServer: Sendable {
    /// The cluster's folder (data directory `data/`, socket, log `server.log`).
    let directory: String
    /// Where the server's binaries are (initdb, pg_ctl, postgres).
    let binaries: String
    /// The unprivileged user the cluster runs as when the tests run as root; nil otherwise.
    let runAs: String?
    /// The database superuser created by initdb.
    let superuser = "chatlog"
    /// The port of the socket name, and of TCP when ``tls`` is set.
    let port: Int
    /// For a TLS cluster: it also listens on 127.0.0.1:``port``, requires TLS and a SCRAM password
    /// there, with a certificate for DNS name `localhost` only, signed by ``caPath``.
    let tls: Bool
    /// A role with a password, for password and TLS tests (TCP only; the socket trusts everyone).
    let passwordUser = "app"
    let password = "correct horse battery staple"

    var caPath: String { directory + "/certs/ca.crt" }
    /// A CA that signed nothing of this server's.
    var otherCAPath: String { directory + "/certs/other-ca.crt" }

    var dataDirectory: String { directory + "/data" }
    /// The folder holding the server's socket (`host` for libpq, `unixSocketPath` minus the name).
    var socketDirectory: String { directory }
    var socketPath: String { "\(directory)/.s.PGSQL.\(port)" }
    var logPath: String { directory + "/server.log" }
    /// The watchdog shell's pid (0 before it starts). It is this process's child: it exits only
    /// when the watched process has ended, which for the shared cluster is this one.
    let watchdogPID = Mutex<pid_t>(0)

    /// The shared cluster of this test process, started on first use by whichever test comes first;
    /// the others wait for that start without holding a thread.
    static func shared() async throws -> PostgresTestServer {
        let task = sharedStart.withLock { state in
            if let state { return state }
            let task = Task { try await startOffPool() }
            state = task
            return task
        }
        let server = try await task.value
        stopAtExit(server)
        return server
    }

    private static let sharedStart = Mutex<Task<PostgresTestServer, any Error>?>(nil)

    /// ``start(watching:tls:)`` on a thread of its own: initdb and pg_ctl block for seconds, and
    /// blocking the cooperative pool (two threads on a two-core machine) while other tests wait
    /// for this start hung the whole run.
    static func startOffPool(watching watched: pid_t = getpid(), tls: Bool = false) async throws -> PostgresTestServer {
        return try await onOwnThread("starting a test cluster") { try PostgresTestServer.start(watching: watched, tls: tls) }
    }

    /// Clusters to stop when the process exits (an `atexit` handler cannot capture).
    private static let toStop = Mutex<[PostgresTestServer]>([])
    private static let exitHandler: Void = { atexit { PostgresTestServer.stopAll() } }()

    static func stopAtExit(_ server: PostgresTestServer) {
        _ = exitHandler
        toStop.withLock { servers in
            if !servers.contains(where: { $0 === server }) { servers.append(server) }
        }
    }

    private static func stopAll() {
        for server in toStop.withLock({ $0 }) { server.stop() }
    }

    private init(directory: String, binaries: String, runAs: String?, port: Int, tls: Bool) {
        self.directory = directory
        self.binaries = binaries
        self.runAs = runAs
        self.port = port
        self.tls = tls
    }

    /// Starts a new cluster in a new temporary folder, stopped by a watchdog once the process
    /// `watching` (default: this one) has ended.
    static func start(watching watched: pid_t = getpid(), tls: Bool = false) throws -> PostgresTestServer {
        let binaries = try findBinaries()
        let runAs = geteuid() == 0 ? try unprivilegedUser() : nil
        var template = Array("/tmp/chatlog-pg-XXXXXX".utf8CString)
        guard let created = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw PostgresTestServerError("mkdtemp failed (errno \(errno))")
        }
        let directory = String(cString: created)
        let server = PostgresTestServer(directory: directory, binaries: binaries, runAs: runAs, port: tls ? try freePort() : 5432, tls: tls)
        do {
            if let runAs {
                guard let user = getpwnam(runAs) else { throw PostgresTestServerError("no user \(runAs)") }
                guard chown(directory, user.pointee.pw_uid, user.pointee.pw_gid) == 0 else {
                    throw PostgresTestServerError("chown \(directory) to \(runAs) failed (errno \(errno))")
                }
            }
            try server.initialize()
            if tls { try server.prepareTLS() }
            try server.startServer(watching: watched)
            if tls {
                try server.psql("CREATE ROLE \(server.passwordUser) LOGIN PASSWORD '\(server.password)'")
                try server.psql("GRANT ALL ON SCHEMA public TO \(server.passwordUser)")
            }
        } catch {
            server.stop()
            throw error
        }
        return server
    }

    private func initialize() throws {
        let result = try runServerTool(
            "initdb",
            ["-D", dataDirectory, "-U", superuser, "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"])
        guard result.succeeded else { throw PostgresTestServerError("initdb failed (exit \(result.status)): \(result.output)") }
    }

    private func startServer(watching watched: pid_t) throws {
        // The watchdog first: it outlives a test process that dies before the atexit handler
        // runs. It polls the test process and stops the cluster once that is gone.
        try startWatchdog(watching: watched)
        var options = [
            tls ? "-c listen_addresses=127.0.0.1" : "-c listen_addresses=''",
            "-k \(socketDirectory)",
            "-p \(port)",
            "-c fsync=off",
            "-c synchronous_commit=off",
            "-c full_page_writes=off",
            "-c max_connections=200",
            "-c shared_buffers=64MB",
        ]
        if tls {
            options += [
                "-c ssl=on", "-c ssl_cert_file=\(directory)/certs/server.crt", "-c ssl_key_file=\(directory)/certs/server.key",
                "-c password_encryption=scram-sha-256",
            ]
        }
        let optionText = options.joined(separator: " ")
        let result = try runServerTool("pg_ctl", ["start", "-D", dataDirectory, "-l", logPath, "-w", "-t", "60", "-o", optionText])
        guard result.succeeded else {
            let log = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
            throw PostgresTestServerError("pg_ctl start failed (exit \(result.status)): \(result.output)\n\(log)")
        }
    }

    /// A CA, a server certificate for DNS name `localhost` (not 127.0.0.1) signed by it, another CA,
    /// and pg_hba.conf: the socket trusted, TCP only with TLS and a SCRAM password.
    private func prepareTLS() throws {
        let certs = directory + "/certs"
        let script = """
            set -e
            mkdir -p '\(certs)' && cd '\(certs)'
            key="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
            openssl req -x509 $key -keyout ca.key -out ca.crt -days 2 -subj '/CN=chatlog test CA' 2>/dev/null
            openssl req -x509 $key -keyout other-ca.key -out other-ca.crt -days 2 -subj '/CN=another CA' 2>/dev/null
            openssl req $key -keyout server.key -out server.csr -subj '/CN=localhost' 2>/dev/null
            printf 'subjectAltName=DNS:localhost\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > server.ext
            openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile server.ext 2>/dev/null
            chmod 0600 server.key
            chmod 0755 .
            chmod 0644 ca.crt other-ca.crt server.crt
            \(runAs.map { "chown -R \($0) ." } ?? "")
            printf 'local all all trust\\nhostssl all all 127.0.0.1/32 scram-sha-256\\nhostnossl all all 127.0.0.1/32 reject\\n' > '\(dataDirectory)/pg_hba.conf'
            """
        let result = try Self.run("/bin/sh", ["-c", script])
        guard result.succeeded else { throw PostgresTestServerError("making the test certificates failed: \(result.output)") }
    }

    /// A TCP port nobody listens on now (the kernel's choice for port 0).
    static func freePort() throws -> Int {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw PostgresTestServerError("socket failed") }
        defer { close(descriptor) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard bound == 0 else { throw PostgresTestServerError("bind failed") }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) } }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    /// A detached shell (its own session, so a signal to the test's process group does not reach
    /// it) that waits for this process to end, then stops the server and removes the folder.
    private func startWatchdog(watching watched: pid_t) throws {
        let pgCtl = commandLine("pg_ctl", ["stop", "-D", dataDirectory, "-m", "immediate", "-w", "-t", "30"])
            .map(Self.shellQuoted).joined(separator: " ")
        let script = """
            while kill -0 \(watched) 2>/dev/null; do sleep 1; done
            if [ -f \(Self.shellQuoted(dataDirectory + "/postmaster.pid")) ]; then \(pgCtl) >/dev/null 2>&1; fi
            rm -rf \(Self.shellQuoted(directory))
            """
        // Its own session (POSIX_SPAWN_SETSID): a signal to the test's process group does not reach it.
        let pid = try Self.spawn("/bin/sh", ["-c", script], output: "/dev/null", newSession: true)
        watchdogPID.withLock { $0 = pid }
    }

    /// Stops the server at once (no checkpoint: the cluster is thrown away) and removes its folder.
    func stop() {
        if FileManager.default.fileExists(atPath: dataDirectory + "/postmaster.pid") {
            _ = try? runServerTool("pg_ctl", ["stop", "-D", dataDirectory, "-m", "immediate", "-w", "-t", "30"])
        }
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// The PID of the running postmaster (first line of postmaster.pid), or nil.
    var postmasterPID: pid_t? {
        guard let text = try? String(contentsOfFile: dataDirectory + "/postmaster.pid", encoding: .utf8),
            let line = text.split(separator: "\n").first
        else { return nil }
        return pid_t(line.trimmingCharacters(in: .whitespaces))
    }

    // MARK: - Databases

    /// A new empty database with a unique name; dropped (with its connections) after `body`.
    func withDatabase<R>(_ body: (String) async throws -> R) async throws -> R {
        let name = "t_" + UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "")
        try await psqlOffPool("CREATE DATABASE \(name)")
        do {
            let result = try await body(name)
            _ = try? await psqlOffPool("DROP DATABASE \(name) WITH (FORCE)")
            return result
        } catch {
            _ = try? await psqlOffPool("DROP DATABASE \(name) WITH (FORCE)")
            throw error
        }
    }

    /// `psql` on a thread of its own, never blocking one of Swift's cooperative threads (two on this
    /// machine). DROP DATABASE waits until every server process has absorbed a signal barrier; one
    /// blocked writing rows to a test whose task waits for a cooperative thread never does — and
    /// with both threads blocked in such DROPs, nothing ran again (seen: the whole test process
    /// idle for minutes, two `DROP DATABASE … WITH (FORCE)` waiting, a server process in ClientWrite).
    @discardableResult
    func psqlOffPool(_ sql: String, database: String = "postgres") async throws -> String {
        try await Self.offPool("psql \(sql.prefix(60))") { try self.psql(sql, database: database) }
    }

    /// Runs blocking work (waitpid, a semaphore) on a new thread and awaits its result.
    static func offPool<T: Sendable>(
        _ label: String = #function, file: String = #fileID, line: Int = #line, _ body: @escaping @Sendable () throws -> T
    ) async throws -> T {
        try await onOwnThread(label, file: file, line: line, body)
    }

    /// A `postgresql://` URL for `database` over this cluster's socket (libpq's `host=` for a
    /// socket folder).
    func url(database: String, user: String? = nil) -> String {
        "postgresql://\(user ?? superuser)@/\(database)?host=\(socketDirectory)"
    }

    /// Runs SQL through `psql` as the superuser (database `postgres` unless given); throws with
    /// psql's message when it fails. Returns psql's unaligned, tuples-only output.
    @discardableResult
    func psql(_ sql: String, database: String = "postgres") throws -> String {
        let result = try Self.run(
            binaries + "/psql",
            ["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", socketDirectory, "-p", String(port), "-U", superuser, "-d", database, "-c", sql])
        guard result.succeeded else { throw PostgresTestServerError("psql failed (exit \(result.status)): \(result.output)") }
        return result.output.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    // MARK: - Running tools

    /// `tool` from the server's binaries with `arguments`, as the cluster's user.
    private func commandLine(_ tool: String, _ arguments: [String]) -> [String] {
        let command = [binaries + "/" + tool] + arguments
        guard let runAs else { return command }
        return ["/usr/sbin/runuser", "-u", runAs, "--"] + command
    }

    private func runServerTool(_ tool: String, _ arguments: [String]) throws -> ToolResult {
        let command = commandLine(tool, arguments)
        // The cluster's user must be able to enter the working directory.
        return try Self.run(command[0], Array(command.dropFirst()), workingDirectory: directory)
    }

    /// Runs a program to completion; stdout and stderr together in `output`. posix_spawn and
    /// waitpid (ChatLogTestSupport), not Foundation's Process, whose exit monitoring was seen
    /// never to report children that had exited (zombies left, waitUntilExit hanging).
    static func run(_ executable: String, _ arguments: [String], workingDirectory: String = "/") throws -> ToolResult {
        let outputPath = "/tmp/chatlog-pg-tool-\(UUID().uuidString)"
        defer { unlink(outputPath) }
        let pid = try spawn(executable, arguments, output: outputPath, workingDirectory: workingDirectory)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            guard errno == EINTR else { throw PostgresTestServerError("waitpid(\(pid)) failed (errno \(errno))") }
        }
        let output = (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
        return ToolResult(status: ChildExit(raw: status).status, output: output)
    }

    /// Starts `executable` with stdin from /dev/null, stdout and stderr to the file `output`, no
    /// other descriptor of this process, and the environment without PG… variables. The caller
    /// reaps it.
    static func spawn(
        _ executable: String, _ arguments: [String], output: String, workingDirectory: String = "/", newSession: Bool = false
    ) throws -> pid_t {
        let input = open("/dev/null", O_RDONLY | O_CLOEXEC)
        let written = open(output, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        defer { for descriptor in [input, written] where descriptor >= 0 { close(descriptor) } }
        guard input >= 0, written >= 0 else { throw PostgresTestServerError("cannot open \(output) (errno \(errno))") }
        var environment = ProcessInfo.processInfo.environment
        for name in environment.keys where name.hasPrefix("PG") { environment[name] = nil }
        environment["LC_ALL"] = "C"
        do {
            return try spawnChild(
                executable, arguments, environment: environment, directory: workingDirectory, stdin: input, stdout: written, stderr: written,
                newSession: newSession)
        } catch {
            throw PostgresTestServerError("\(error)")
        }
    }

    static func shellQuoted(_ text: String) -> String {
        "'" + text.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }

    /// The folder holding initdb, pg_ctl and postgres: `CHATLOG_PG_BINDIR`, else the newest
    /// Debian `/usr/lib/postgresql/N/bin`, else the folder of `initdb` on PATH.
    static func findBinaries() throws -> String {
        let fileManager = FileManager.default
        if let explicit = ProcessInfo.processInfo.environment["CHATLOG_PG_BINDIR"], !explicit.isEmpty {
            guard fileManager.isExecutableFile(atPath: explicit + "/initdb") else {
                throw PostgresTestServerError("CHATLOG_PG_BINDIR=\(explicit) holds no initdb")
            }
            return explicit
        }
        let debian = "/usr/lib/postgresql"
        let versions = ((try? fileManager.contentsOfDirectory(atPath: debian)) ?? []).compactMap(Int.init).sorted(by: >)
        for version in versions where fileManager.isExecutableFile(atPath: "\(debian)/\(version)/bin/initdb") {
            return "\(debian)/\(version)/bin"
        }
        for folder in (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":") {
            let candidate = URL(fileURLWithPath: String(folder)).appendingPathComponent("initdb").resolvingSymlinksInPath()
            if fileManager.isExecutableFile(atPath: candidate.path) { return candidate.deletingLastPathComponent().path }
        }
        throw PostgresTestServerError(
            "no PostgreSQL server found (initdb): run the tests through scripts/with-deps, which installs Debian's postgresql, or set CHATLOG_PG_BINDIR")
    }

    /// Run as root, the cluster needs an unprivileged owner: `CHATLOG_PG_USER`, else Debian's
    /// `postgres` (created by the postgresql package), else `nobody`.
    static func unprivilegedUser() throws -> String {
        var candidates = ["postgres", "nobody"]
        if let explicit = ProcessInfo.processInfo.environment["CHATLOG_PG_USER"], !explicit.isEmpty { candidates = [explicit] }
        for name in candidates {
            if let entry = getpwnam(name), entry.pointee.pw_uid != 0 { return name }
        }
        throw PostgresTestServerError("running as root and no unprivileged user to own the test cluster (tried \(candidates.joined(separator: ", ")))")
    }
}
