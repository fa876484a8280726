import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

// docs/PROXY.md's client snippets, run as written against `chatlog serve` and the fake upstream: the
// Python ones with the official SDKs (OPENAI_BASE_URL / ANTHROPIC_BASE_URL and the keys from the
// environment, as the doc says), the curl ones with the documented address replaced by the server's.

@Suite("docs/PROXY.md snippets work")
struct ProxyDocsTests {
    /// The fenced block after `<!-- tested: name -->` in docs/PROXY.md.
    static func documentedBlock(_ name: String) throws -> String {
        let text = try String(contentsOf: ProxyHarness.repository.appendingPathComponent("docs/PROXY.md"), encoding: .utf8)
        guard let marker = text.range(of: "<!-- tested: \(name) -->"),
            let open = text.range(of: "```", range: marker.upperBound..<text.endIndex),
            let firstLine = text.range(of: "\n", range: open.upperBound..<text.endIndex),
            let close = text.range(of: "\n```", range: firstLine.upperBound..<text.endIndex)
        else { throw CLITestError("docs/PROXY.md has no block marked \(name)") }
        return String(text[firstLine.upperBound..<close.lowerBound])
    }

    /// The address the doc uses for the proxy.
    static let documentedAddress = "http://127.0.0.1:8080"

    @Test("the Python snippets (openai, anthropic) print the answers and the calls are logged")
    func pythonSnippets() async throws {
        let world = try await ProxyWorld()
        let python = try ProxyHarness.venvPython(env: world.sandbox.baseEnvironment, cwd: world.sandbox.directory)
        let env = world.sandbox.baseEnvironment.merging([
            "OPENAI_BASE_URL": world.server.openAIBase, "OPENAI_API_KEY": world.openAIKey,
            "ANTHROPIC_BASE_URL": world.server.baseURL, "ANTHROPIC_API_KEY": world.anthropicKey,
        ]) { $1 }
        var outputs: [Data] = []
        for name in ["proxy-python-openai", "proxy-python-anthropic"] {
            let script = world.sandbox.url(name + ".py")
            try Data(try Self.documentedBlock(name).utf8).write(to: script)
            let result = try run([script.path], env: env, stdin: nil, cwd: world.sandbox.directory, executable: python, timeout: 120)
            #expect(result.status == 0, "\(name): \(result)")
            outputs += [result.stdout, result.stderr]
            if name == "proxy-python-openai" {
                let lines = result.out.split(separator: "\n").map(String.init)
                #expect(lines.first == "Echo: Say hello", "\(result)")
                #expect(lines.count == 3 && lines[1].hasPrefix("logged as ") && isUUID(String(lines[1].dropFirst(10))), "\(result)")
                #expect(lines.last == "Echo: Count to three")
            } else {
                #expect(result.out == "Echo: Say hello\n", "\(result)")
            }
        }
        try await world.finish()
        #expect(leakedCredentials([world.openAIKey, world.anthropicKey], sandbox: world.sandbox, outputs: outputs).isEmpty)
        let logged = try world.sandbox.list().map { try showJSON($0.id, sandbox: world.sandbox) }
        let prompts = logged.compactMap { messagesOf($0).first?["content"] as? String }.sorted()
        #expect(prompts == ["Count to three", "Say hello", "Say hello"])
    }

    @Test("the curl snippets get answers from both APIs through the proxy")
    func curlSnippets() async throws {
        let world = try await ProxyWorld()
        let script = try Self.documentedBlock("proxy-curl").replacingOccurrences(
            of: Self.documentedAddress, with: world.server.baseURL)
        let env = world.sandbox.baseEnvironment.merging([
            "OPENAI_API_KEY": world.openAIKey, "ANTHROPIC_API_KEY": world.anthropicKey,
        ]) { $1 }
        let result = try run(
            ["-c", "set -e\n" + script], env: env, stdin: nil, cwd: world.sandbox.directory,
            executable: try ProxyHarness.tool("sh"), timeout: 60)
        #expect(result.status == 0, "\(result)")
        #expect(result.out.contains(#""content": "Echo: Say hello""#), "the chat completion: \(result)")
        #expect(result.out.contains(#""text":"Echo: Say hello""#), "the Anthropic message: \(result)")
        try await world.finish()
        #expect(try world.sandbox.list().count == 2)
    }

    @Test("the systemd unit passes systemd-analyze verify, and its ExecStart and Environment lines serve and drain")
    func systemdUnit() async throws {
        let sandbox = try Sandbox()
        let chatlog = try ChatLogBinary.url().path
        let unit = try Self.documentedBlock("proxy-systemd").replacingOccurrences(of: "/usr/local/bin/chatlog", with: chatlog)
        let file = sandbox.url("chatlog-serve.service")
        try Data((unit + "\n").utf8).write(to: file)
        let verify = try run(
            ["verify", file.path], env: sandbox.baseEnvironment, stdin: nil, cwd: sandbox.directory,
            executable: try ProxyHarness.tool("systemd-analyze"), timeout: 60)
        // Unknown keys are only warnings (exit 0): stderr must be empty too.
        #expect(verify.status == 0 && verify.err.isEmpty && verify.out.isEmpty, "\(verify)")

        var settings: [(String, String)] = []
        for line in unit.split(separator: "\n") where !line.hasPrefix("#") {
            guard let equals = line.firstIndex(of: "=") else { continue }
            settings.append((String(line[..<equals]), String(line[line.index(after: equals)...])))
        }
        func values(_ name: String) -> [String] { settings.filter { $0.0 == name }.map(\.1) }
        #expect(values("UMask") == ["0077"] && values("NoNewPrivileges") == ["yes"] && values("ProtectSystem") == ["strict"])
        #expect(values("KillSignal") == ["SIGTERM"])
        // LoadCredential=master.key:… → %d/master.key; the store and the key live in the sandbox.
        let credentials = sandbox.root.appendingPathComponent("credentials")
        try FileManager.default.createDirectory(at: credentials, withIntermediateDirectories: true)
        let keyFile = credentials.appendingPathComponent("master.key")
        try Data(sandbox.key.utf8).write(to: keyFile)
        #expect(chmod(keyFile.path, 0o400) == 0)
        var environment = sandbox.baseEnvironment
        for assignment in values("Environment") {
            let parts = assignment.replacingOccurrences(of: "%d", with: credentials.path).split(separator: "=", maxSplits: 1).map(String.init)
            environment[parts[0]] = parts[1].replacingOccurrences(of: "/var/lib/app", with: sandbox.directory.path)
        }
        #expect(environment["CHATLOG_DB"] == sandbox.path("chat.db"))
        let initialized = try run(["init"], env: environment, stdin: nil, cwd: sandbox.directory)
        #expect(initialized.status == 0, "\(initialized)")
        // ExecStart, on a free port instead of 8080.
        var command = try #require(values("ExecStart").first).split(separator: " ").map(String.init)
        #expect(command.first == chatlog)
        command.removeFirst()
        let listen = try #require(command.firstIndex(of: "--listen"))
        command[listen + 1] = "127.0.0.1:0"
        let server = try BackgroundProcess(command, env: environment, cwd: sandbox.directory, scratch: sandbox.root.appendingPathComponent("tmp"))
        try await waitFor("the service listens", timeout: 60) {
            if server.hasExited { throw CLITestError("chatlog serve exited: \(server.errorSoFar)") }
            return server.outputSoFar.contains("listening on http://127.0.0.1:")
        }
        let port = try #require(server.outputSoFar.firstMatch(of: /127\.0\.0\.1:([0-9]+)/).flatMap { Int($0.1) })
        let health = try curlExchange("http://127.0.0.1:\(port)/healthz", method: "GET", sandbox: sandbox)
        #expect(health.status == 200, "\(health)")
        server.signal(SIGTERM)
        let stopped = try await server.finish(timeout: TimeInterval(Int(values("TimeoutStopSec").first ?? "60") ?? 60))
        #expect(stopped.status == 0, "\(stopped)")
    }
}
