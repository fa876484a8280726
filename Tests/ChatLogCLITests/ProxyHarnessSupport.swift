import Foundation
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

// What the proxy suites (ProxyClientTests) run around `chatlog serve`: the fake upstream of
// Tests/ProxyHarness/fake_upstream.py (HTTPS with a test CA, scripted through a control port), the
// official Python SDKs (Tests/ProxyHarness/clients.py in the venv ensure-venv makes), curl, and
// `chatlog serve` itself — each its own process, so they share nothing with the server.

enum ProxyHarness {
    /// The repository's root (this file is Tests/ChatLogCLITests/ProxyHarnessSupport.swift).
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static let harness = repository.appendingPathComponent("Tests/ProxyHarness")

    static func tool(_ name: String) throws -> URL {
        for directory in ["/usr/bin", "/usr/local/bin", "/bin"] {
            let path = directory + "/" + name
            if FileManager.default.isExecutableFile(atPath: path) { return URL(fileURLWithPath: path) }
        }
        throw CLITestError("the proxy tests need \(name) (scripts/with-deps installs it)")
    }

    /// The venv's python with `openai` and `anthropic` (made once by ensure-venv; later calls wait for it).
    static func venvPython(env: [String: String], cwd: URL) throws -> URL {
        let result = try run(
            [harness.appendingPathComponent("ensure-venv").path], env: env, stdin: nil, cwd: cwd,
            executable: try tool("bash"), timeout: 600)
        guard result.status == 0 else { throw CLITestError("ensure-venv failed: \(result)") }
        return URL(fileURLWithPath: result.out.trimmingCharacters(in: .whitespacesAndNewlines))
    }
}

/// One HTTP exchange as curl saw it: status, response headers in order (names lower-cased), body bytes.
struct HTTPExchange: CustomStringConvertible {
    let status: Int
    let headers: [(name: String, value: String)]
    let body: Data
    let curlStatus: Int32

    func header(_ name: String) -> String? { headers.first { $0.name == name.lowercased() }?.value }
    var text: String { String(decoding: body, as: UTF8.self) }

    /// Hop-by-hop headers (RFC 9110 §7.6.1) and message framing, which a proxy may change.
    static let hopByHop: Set<String> = [
        "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
        "proxy-authenticate", "proxy-authorization", "content-length",
    ]

    /// The end-to-end headers, stably sorted by name (the order of same-name headers kept), without
    /// `except` (what the proxy adds on purpose).
    func endToEnd(except: Set<String> = []) -> [String] {
        headers.enumerated()
            .filter { !Self.hopByHop.contains($0.element.name) && !except.contains($0.element.name) }
            .sorted { ($0.element.name, $0.offset) < ($1.element.name, $1.offset) }
            .map { "\($0.element.name): \($0.element.value)" }
    }

    var description: String {
        "HTTP \(status) (curl \(curlStatus))\n" + headers.map { "\($0.name): \($0.value)" }.joined(separator: "\n")
            + "\n\n" + text
    }
}

/// The fake upstream in its own process (system python3, standard library only).
final class FakeUpstream: @unchecked Sendable {
    // @unchecked Sendable: every property is set once in init.
    let process: BackgroundProcess
    let httpsPort: Int
    let controlPort: Int
    let caPath: String
    private let scratch: URL
    private let env: [String: String]

    /// Starts it with its certificates under `sandbox`; `openAIKeys`/`anthropicKeys`, when given, are the
    /// only keys it accepts (401 otherwise, in each API's error format).
    init(sandbox: Sandbox, openAIKeys: [String] = [], anthropicKeys: [String] = []) async throws {
        scratch = sandbox.root.appendingPathComponent("fake")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        env = sandbox.baseEnvironment
        let ready = scratch.appendingPathComponent("ready.json")
        var arguments = [
            ProxyHarness.harness.appendingPathComponent("fake_upstream.py").path, "--cert-dir",
            scratch.appendingPathComponent("certs").path, "--ready-file", ready.path,
        ]
        for key in openAIKeys { arguments += ["--openai-key", key] }
        for key in anthropicKeys { arguments += ["--anthropic-key", key] }
        let process = try BackgroundProcess(
            arguments, env: env, cwd: scratch, scratch: scratch, executable: try ProxyHarness.tool("python3"))
        self.process = process
        try await waitFor("the fake upstream listens", timeout: 60) {
            if process.hasExited { throw CLITestError("the fake upstream exited: \(process.errorSoFar)") }
            return FileManager.default.fileExists(atPath: ready.path)
        }
        let info = try jsonObject(try Data(contentsOf: ready))
        guard let https = info["https_port"] as? Int, let control = info["control_port"] as? Int,
            let ca = info["ca"] as? String
        else { throw CLITestError("bad ready file from the fake upstream") }
        httpsPort = https
        controlPort = control
        caPath = ca
    }

    deinit { process.signal(SIGTERM) }

    var openAIBase: String { "https://127.0.0.1:\(httpsPort)/v1" }
    var anthropicBase: String { "https://127.0.0.1:\(httpsPort)" }

    /// Queues what the next calls answer (see fake_upstream.py's docstring for the keys).
    func script(_ entries: [[String: Any]]) throws {
        let data = try JSONSerialization.data(withJSONObject: entries)
        _ = try control("POST", "/script", body: data)
    }

    /// Every API request the fake received so far: method, path, headers, body (text).
    func requests() throws -> [[String: Any]] {
        try jsonArray(try control("GET", "/requests", body: nil))
    }

    func reset() throws { _ = try control("POST", "/reset", body: nil) }

    private func control(_ method: String, _ path: String, body: Data?) throws -> Data {
        var arguments = ["-sS", "--fail", "-X", method, "http://127.0.0.1:\(controlPort)\(path)"]
        if body != nil { arguments += ["--data-binary", "@-", "-H", "content-type: application/json"] }
        let result = try run(arguments, env: env, stdin: body, cwd: scratch, executable: try ProxyHarness.tool("curl"))
        guard result.status == 0 else { throw CLITestError("fake upstream control \(method) \(path) failed: \(result)") }
        return result.stdout
    }
}

/// `chatlog serve` on a free loopback port in front of a fake upstream.
final class ProxyServer: @unchecked Sendable {
    // @unchecked Sendable: every property is set once in init.
    let process: BackgroundProcess
    let port: Int
    let arguments: [String]

    var baseURL: String { "http://127.0.0.1:\(port)" }
    var openAIBase: String { baseURL + "/v1" }

    /// Starts `chatlog serve --listen 127.0.0.1:0` in `sandbox` (its store, its key) with `extra` arguments
    /// and `environment` added to the sandbox's; reads the port from its first stdout line
    /// (`chatlog serve: listening on http://127.0.0.1:PORT`) and waits until GET /healthz answers 200.
    init(
        sandbox: Sandbox, upstream: FakeUpstream, extra: [String] = [], environment: [String: String] = [:]
    ) async throws {
        arguments =
            [
                "serve", "--db", sandbox.path("chatlog.db"), "--listen", "127.0.0.1:0",
                "--openai-upstream", upstream.openAIBase, "--anthropic-upstream", upstream.anthropicBase,
                "--upstream-ca", upstream.caPath,
            ] + extra
        let process = try BackgroundProcess(
            arguments, env: sandbox.environment.merging(environment) { $1 }, cwd: sandbox.directory,
            scratch: sandbox.root.appendingPathComponent("tmp"))
        self.process = process
        let found = Mutex<Int?>(nil)
        try await waitFor("chatlog serve prints its port", timeout: 60) {
            if process.hasExited { throw CLITestError("chatlog serve exited:\n\(process.errorSoFar)") }
            let match = process.outputSoFar.firstMatch(of: /listening on http:\/\/127\.0\.0\.1:([0-9]+)/)
            found.withLock { $0 = match.flatMap { Int($0.1) } }
            return found.withLock { $0 } != nil
        }
        port = found.withLock { $0 } ?? 0
        let health = "http://127.0.0.1:\(port)/healthz"
        let (env, cwd) = (sandbox.baseEnvironment, sandbox.directory)
        try await waitFor("chatlog serve answers /healthz", timeout: 60) {
            if process.hasExited { throw CLITestError("chatlog serve exited:\n\(process.errorSoFar)") }
            let probe = try run(
                ["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", health], env: env,
                stdin: nil, cwd: cwd, executable: try ProxyHarness.tool("curl"))
            return probe.out == "200"
        }
    }

    deinit { process.signal(SIGKILL) }

    /// SIGTERM, then the exit status and everything it printed.
    func stop() async throws -> CommandResult {
        process.signal(SIGTERM)
        return try await process.finish(timeout: 60)
    }
}

/// curl with a request, saving headers and body apart so that body bytes are exact.
func curlExchange(
    _ url: String, method: String = "POST", body: Data? = nil, headers: [String: String] = [:], caPath: String? = nil,
    maxTime: Double = 60, sandbox: Sandbox
) throws -> HTTPExchange {
    let io = sandbox.root.appendingPathComponent("tmp/curl-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: io, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: io) }
    let headerFile = io.appendingPathComponent("headers")
    let bodyFile = io.appendingPathComponent("body")
    let requestFile = io.appendingPathComponent("request")
    var arguments = [
        "-sS", "-N", "-X", method, "-D", headerFile.path, "-o", bodyFile.path, "--max-time", String(maxTime), url,
        // curl adds none of these unless told; the SDKs' own requests are in the SDK tests.
        "-H", "Accept:", "-H", "User-Agent: chatlog-proxy-tests",
    ]
    if let caPath { arguments += ["--cacert", caPath] }
    for (name, value) in headers.sorted(by: { $0.key < $1.key }) { arguments += ["-H", "\(name): \(value)"] }
    if let body {
        try body.write(to: requestFile)
        arguments += ["--data-binary", "@" + requestFile.path]
    }
    let result = try run(
        arguments, env: sandbox.baseEnvironment, stdin: nil, cwd: sandbox.directory, executable: try ProxyHarness.tool("curl"),
        timeout: maxTime + 30)
    let head = String(decoding: (try? Data(contentsOf: headerFile)) ?? Data(), as: UTF8.self)
    // With a 1xx answer first there are several header blocks: the last one counts.
    let block = head.components(separatedBy: "\r\n\r\n").filter { !$0.isEmpty }.last ?? ""
    var lines = block.components(separatedBy: "\r\n")
    let statusLine = lines.isEmpty ? "" : lines.removeFirst()
    let status = Int(statusLine.split(separator: " ").dropFirst().first ?? "") ?? 0
    let parsed = lines.compactMap { line -> (name: String, value: String)? in
        guard let colon = line.firstIndex(of: ":") else { return nil }
        return (
            String(line[..<colon]).lowercased(),
            String(line[line.index(after: colon)...]).trimmingCharacters(in: .whitespaces)
        )
    }
    return HTTPExchange(
        status: status, headers: parsed, body: (try? Data(contentsOf: bodyFile)) ?? Data(), curlStatus: result.status)
}

/// Runs Tests/ProxyHarness/clients.py with `calls` (the official SDKs) and returns one result per call.
func sdkCalls(_ calls: [[String: Any]], sandbox: Sandbox, caPath: String? = nil) throws -> [[String: Any]] {
    let python = try ProxyHarness.venvPython(env: sandbox.baseEnvironment, cwd: sandbox.directory)
    var env = sandbox.baseEnvironment
    if let caPath { env["SSL_CERT_FILE"] = caPath }
    let input = try JSONSerialization.data(withJSONObject: calls)
    let result = try run(
        [ProxyHarness.harness.appendingPathComponent("clients.py").path, "-"], env: env, stdin: input, cwd: sandbox.directory,
        executable: python, timeout: 300)
    guard result.status == 0 else { throw CLITestError("clients.py failed: \(result)") }
    let lines = result.out.split(separator: "\n").map { Data($0.utf8) }
    guard lines.count == calls.count else { throw CLITestError("clients.py answered \(lines.count) of \(calls.count) calls: \(result)") }
    return try lines.map { try jsonObject($0) }
}

/// `chatlog show ID --json` as a JSON object (messages keep every field, metadata included).
func showJSON(_ id: String, sandbox: Sandbox, sourceLocation: SourceLocation = #_sourceLocation) throws -> [String: Any] {
    let result = try sandbox.chatlog(["show", id, "--json"], sourceLocation: sourceLocation)
    guard result.status == 0 else { throw CLITestError("chatlog show failed: \(result)") }
    return try jsonObject(result.stdout)
}

func messagesOf(_ transcript: [String: Any]) -> [[String: Any]] { transcript["messages"] as? [[String: Any]] ?? [] }

/// Whether any of `needles` occurs in a file of the sandbox's store, in `extra` files, or in `outputs`.
func leakedCredentials(_ needles: [String], sandbox: Sandbox, outputs: [Data] = []) -> [String] {
    var found: [String] = []
    var blobs = Array(sandbox.storeFiles().values) + outputs
    let enumerator = FileManager.default.enumerator(atPath: sandbox.directory.path)
    while let name = enumerator?.nextObject() as? String {
        if let data = FileManager.default.contents(atPath: sandbox.path(name)) { blobs.append(data) }
    }
    for needle in needles where !needle.isEmpty {
        if blobs.contains(where: { $0.range(of: Data(needle.utf8)) != nil }) { found.append(needle) }
    }
    return found
}
