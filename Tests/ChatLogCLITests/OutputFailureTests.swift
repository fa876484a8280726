import ChatLogTestSupport
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// stdout that cannot be written: a full device is one error line and exit 1; a reader that
/// went away (`chatlog export | head -1`) ends the process quietly by SIGPIPE, like `cat`.
/// Never a trap (exit 132) or a backtrace.
@Suite struct OutputFailureTests {
    /// A store with one conversation, a JSONL file to import and the commands to try: every
    /// command that prints on stdout, in human and JSON form.
    private func prepare(_ sandbox: Sandbox) throws -> [[String]] {
        try sandbox.initStore()
        let logged = try sandbox.log(["--title", "t", "--text", "hello there"])
        try sandbox.write(
            "{\"messages\": [{\"role\": \"user\", \"content\": \"imported\"}]}\n", to: "in.jsonl", mode: 0o600)
        let id = logged.conversation_id
        var commands: [[String]] = [
            ["list"], ["show", id], ["search", "hello"], ["stats"], ["key", "status"], ["verify"], ["init"],
            ["export"], ["export", "--conversation", id], ["key", "generate"],
        ]
        commands += [
            ["list", "--json"], ["show", id, "--json"], ["search", "hello", "--json"], ["stats", "--json"], ["key", "status", "--json"],
            ["verify", "--json"], ["init", "--json"], ["key", "rotate", "--json"], ["key", "rotate"], ["key", "retire", "--json"],
            ["prune", "--older-than", "3650d", "--json"], ["import", "--format", "openai-jsonl", "in.jsonl", "--json"],
            ["import", "--format", "openai-jsonl", "in.jsonl"], ["log", "--conversation", id, "--text", "x", "--json"],
            ["log", "--conversation", id, "--text", "x"],
        ]
        return commands
    }

    /// stderr lines other than progress and notes (`chatlog: import: 1 conversations`): errors,
    /// and anything that is not chatlog's (a trap's message and backtrace).
    private func diagnostics(_ result: CommandResult) -> [String] {
        result.err.split(separator: "\n").map(String.init).filter { $0.hasPrefix("chatlog: error: ") || !$0.hasPrefix("chatlog: ") }
    }

    private func quoted(_ arguments: [String]) -> String {
        arguments.map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }.joined(separator: " ")
    }

    @Test func aFullDeviceIsOneErrorLineAndExit1ForEveryCommand() throws {
        let sandbox = try Sandbox()
        for arguments in try prepare(sandbox) {
            let result = try sandbox.shell("\"$0\" \(quoted(arguments)) > /dev/full")
            #expect(result.status == 1, "\(arguments): \(result)")
            #expect(
                diagnostics(result) == ["chatlog: error: cannot write to standard output (No space left on device)"],
                "\(arguments): \(result)")
        }
        let backup = try sandbox.shell("\"$0\" backup b.db --json > /dev/full")
        #expect(backup.status == 1, "\(backup)")
        #expect(diagnostics(backup) == ["chatlog: error: cannot write to standard output (No space left on device)"], "\(backup)")
    }

    @Test func aClosedPipeEndsQuietlyBySIGPIPEForEveryCommand() throws {
        let sandbox = try Sandbox()
        // Also when started with SIGPIPE ignored (a parent that ignores it passes that on: some
        // daemons, shells with `trap '' PIPE`): writes then fail with EPIPE, which trapped before.
        let commands = try prepare(sandbox)
        for ignoringSIGPIPE in [false, true] {
            for arguments in commands + [["backup", "b\(ignoringSIGPIPE).db"]] {
                let result = try runWithClosedStdout(arguments, sandbox: sandbox, ignoringSIGPIPE: ignoringSIGPIPE)
                #expect(result.status == 128 + SIGPIPE, "\(arguments), SIGPIPE ignored: \(ignoringSIGPIPE): \(result)")
                #expect(diagnostics(result).isEmpty, "\(arguments), SIGPIPE ignored: \(ignoringSIGPIPE): \(result)")
            }
        }
    }

    @Test func exportIntoHeadEndsQuietly() throws {
        let sandbox = try Sandbox()
        try sandbox.initStore()
        // More than a pipe buffer (64 KiB) of export, so that the writes outlive `head`.
        let text = String(repeating: "word ", count: 2_000)
        let lines = (0..<100).map { "{\"title\": \"c\($0)\", \"messages\": [{\"role\": \"user\", \"content\": \"\(text)\"}]}\n" }
        try sandbox.write(lines.joined(), to: "many.jsonl", mode: 0o600)
        let imported = try sandbox.chatlog(["import", "--format", "openai-jsonl", "many.jsonl"])
        #expect(imported.status == 0, "\(imported)")
        let result = try sandbox.shell("\"$0\" export | head -c 10 > /dev/null")
        #expect(result.err.isEmpty, "\(result)")
        let list = try sandbox.shell("\"$0\" list --limit 100 | head -1")
        #expect(list.err.isEmpty, "\(list)")
        #expect(list.out.split(separator: "\n").count == 1, "\(list)")
    }

    /// Runs chatlog with stdout on a pipe whose reading end is already closed: every write fails
    /// with EPIPE, whatever the timing.
    private func runWithClosedStdout(_ arguments: [String], sandbox: Sandbox, ignoringSIGPIPE: Bool) throws -> CommandResult {
        var ends: [Int32] = [-1, -1]
        guard pipe(&ends) == 0 else { throw CLITestError("pipe failed (errno \(errno))") }
        close(ends[0])
        defer { close(ends[1]) }
        let errorURL = sandbox.root.appendingPathComponent("tmp/stderr-\(UUID().uuidString)")
        let executable: String
        var commandLine = arguments
        if ignoringSIGPIPE {
            executable = "/bin/sh"
            commandLine = ["-c", "trap '' PIPE; exec \"$0\" \"$@\"", try ChatLogBinary.url().path] + arguments
        } else {
            executable = try ChatLogBinary.url().path
        }
        let process = try ChildProcess(
            executable, commandLine, environment: sandbox.environment, directory: sandbox.directory.path, stdout: .descriptor(ends[1]),
            stderr: .file(errorURL.path))
        let exit = try process.wait(timeout: 120)
        return CommandResult(status: exit.status, stdout: Data(), stderr: try Data(contentsOf: errorURL))
    }
}
