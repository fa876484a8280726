import ArgumentParser
import ChatLog
import Foundation

struct ExportCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Export conversations as OpenAI chat JSONL (with chatlog's fields), streaming, oldest first.",
        discussion: "`chatlog export | chatlog import --format openai-jsonl -` into another store round-trips exactly. Output files are created 0600."
    )

    @OptionGroup var store: StoreOptions

    @Option(name: .long, help: "Only this conversation (its id, or a unique prefix of at least 8 characters).")
    var conversation: String?
    @Option(name: .long, help: "Only the conversations of this end user (an access request; exact subject).")
    var subject: String?
    @Option(name: .long, help: SubjectArgument.fileHelp)
    var subjectFile: String?
    @Option(name: .long, help: "Only conversations created at or after this time (RFC 3339 date, or a duration like 30d).")
    var since: String?
    @Option(name: .long, help: "Only conversations created before this time.")
    var until: String?
    @Option(name: .long, help: "Write to this new file (mode 0600) instead of stdout.")
    var output: String?
    @Flag(name: .long, help: "Replace --output if it exists (never through a symbolic link).")
    var force = false
    @Flag(name: .long, help: "Leave out conversations with a value that does not open, list them on stderr, exit 4 at the end.")
    var skipDamaged = false

    func validate() throws {
        if force, output == nil { throw ValidationError("--force only applies to --output (stdout is never replaced).") }
        if let conversation { try ConversationArgument.validate(conversation, "--conversation") }
        try SubjectArgument.validate(subject: subject, file: subjectFile)
        for (name, value) in [("--since", since), ("--until", until)] {
            if let value, TimeArgument.parse(value) == nil {
                throw ValidationError("\(name) must be a date (2026-11-27 or RFC 3339) or a duration (30m, 12h, 7d, 4w).")
            }
        }
    }

    func run() async throws {
        try await reportingErrors {
            let subject = try SubjectArgument.resolve(subject: subject, file: subjectFile)
            let opened = try await StoreAccess.openForReading(store)
            let conversationID: ConversationID?
            if let conversation { conversationID = try await ConversationArgument.resolve(conversation, in: opened) } else { conversationID = nil }
            let sink: ExportSink = try output.map { (path) throws(ChatLogError) in try ExportSink(path: path, force: force, store: opened.path) } ?? ExportSink()
            let filter = ExportFilter(
                conversation: conversationID, since: since.flatMap { TimeArgument.parse($0) },
                until: until.flatMap { TimeArgument.parse($0) }, subject: subject)
            var skipped: [IntegrityFailure] = []
            let totals: (conversations: Int, messages: Int)
            do {
                totals = try await opened.exportOpenAIJSONL(
                    filter, skippingDamaged: skipDamaged ? { skipped.append($0) } : nil, write: { try sink.write($0) })
                try sink.close()
            } catch ChatLogError.integrity(let failure) {
                sink.discard()
                // Say how far it got: what a script already received on stdout, or that the
                // output file was not written.
                CLIOutput.error(ChatLogError.integrity(failure).description)
                CLIOutput.note(
                    "export stopped at a damaged conversation after \(sink.conversations) conversations"
                        + (output.map { "; nothing was written to \($0)" } ?? " written to stdout")
                        + "; --skip-damaged exports the others")
                throw ExitCode(ExitCodes.integrityFailure)
            } catch {
                sink.discard()
                throw error
            }
            for failure in skipped { CLIOutput.note("skipped a damaged conversation: \(failure)") }
            if output != nil || !skipped.isEmpty {
                CLIOutput.note(
                    "exported \(totals.conversations) conversations (\(totals.messages) messages)" + (output.map { " to \($0)" } ?? "")
                        + (skipped.isEmpty ? "" : "; skipped \(skipped.count) damaged conversations"))
            }
            if !skipped.isEmpty { throw ExitCode(ExitCodes.integrityFailure) }
        }
    }
}

/// Where an export goes: stdout, or a new 0600 file written through a temporary name in the same
/// folder and renamed at the end (a failed export leaves no half file behind).
final class ExportSink {
    /// nil: stdout, written through `CLIOutput.standardOutput` (a closed pipe or a full disk ends
    /// the process there, see CLIOutput).
    private let handle: FileHandle?
    private let temporary: String?
    private let destination: String?

    init() {
        handle = nil
        temporary = nil
        destination = nil
    }

    /// `store`: the store's path; a file written beside it takes its owner when run as root.
    init(path: String, force: Bool, store: String) throws(ChatLogError) {
        var info = stat()
        if lstat(path, &info) == 0 {
            if (info.st_mode & S_IFMT) == S_IFLNK { throw .invalidInput("\(path) is a symbolic link; refusing to write through it") }
            if !force { throw .invalidInput("\(path) exists; use --force to replace it") }
        }
        let temporary = path + ".partial-\(getpid())"
        try PrivateFiles.createPrivateFile(at: temporary, contents: [UInt8](), nextToStore: store)
        guard let handle = FileHandle(forWritingAtPath: temporary) else { throw .storage("cannot open \(temporary) for writing") }
        self.handle = handle
        self.temporary = temporary
        destination = path
    }

    /// Conversations (lines) written so far.
    private(set) var conversations = 0

    func write(_ data: Data) throws {
        if let handle { try handle.write(contentsOf: data) } else { CLIOutput.standardOutput(data) }
        conversations += 1
    }

    func close() throws(ChatLogError) {
        guard let handle, let temporary, let destination else { return }
        do {
            try handle.synchronize()
            try handle.close()
        } catch {
            throw .storage("cannot finish writing \(destination) (disk full?)")
        }
        guard rename(temporary, destination) == 0 else { throw .storage("cannot rename the export to \(destination)") }
    }

    func discard() {
        guard let temporary else { return }
        try? handle?.close()
        unlink(temporary)
    }
}
