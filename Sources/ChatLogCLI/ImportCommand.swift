import ArgumentParser
import ChatLog
import Foundation

struct ImportCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Import conversations from openai-jsonl, an llm logs.db, or a ChatGPT conversations.json.",
        discussion: "Idempotent: importing the same file twice adds nothing. Bad records are reported with their line or id."
    )

    @OptionGroup var store: StoreOptions
    @OptionGroup var output: OutputOptions

    @Option(name: .long, help: "openai-jsonl, llm or chatgpt.")
    var format: ImportFormat
    @Option(name: .long, help: "fail (default: stop at the first bad record; its batch is not written) or skip.")
    var onError: ImportErrorPolicy = .fail
    @Option(name: .long, help: "Conversations per transaction.")
    var batchSize: Int = 200
    @Option(name: .long, help: RedactMode.help)
    var redact: RedactMode = .none
    @Argument(help: "The file to import ('-' for standard input, openai-jsonl only).")
    var file: String

    func validate() throws {
        guard (1...10_000).contains(batchSize) else { throw ValidationError("--batch-size must be between 1 and 10000.") }
        if file == "-", format != .openAIJSONL { throw ValidationError("only openai-jsonl can be read from standard input.") }
    }

    func run() async throws {
        try await reportingErrors {
            let path = file == "-" ? "/dev/stdin" : file
            guard FileManager.default.fileExists(atPath: path) else { throw ChatLogError.invalidInput("no file at \(file)") }
            let opened = try await StoreAccess.open(store)
            let progress = ProgressReporter(label: "import", unit: "conversations")
            let records: any Sequence<Result<ImportedConversation, ImportIssue>>
            switch format {
            case .llm: records = try LLMLogs.records(path: path)
            case .chatGPT: records = try ChatGPTExport.records(path: path)
            case .openAIJSONL: records = try OpenAIJSONL.records(path: path)
            }
            // The total for the bar: the readers that load everything know it; a JSONL file's is its lines.
            // Only a regular file can be read twice: counting a FIFO's or a pipe's lines (`<(…)`) would
            // consume the input the import is about to read.
            let regular = (try? FileManager.default.attributesOfItem(atPath: path)[.type] as? FileAttributeType) == .typeRegular
            let total = (records as? any Collection)?.count ?? (file == "-" || !regular ? nil : ProgressReporter.nonEmptyLines(path))
            var redacted = AnySequence(records)
            if let redactor = redact.redactor { redacted = AnySequence(redacted.lazy.map { $0.map { redactor.redact($0) } }) }
            let report = try await opened.importConversations(
                format: format.rawValue, records: redacted, onError: onError, batchSize: batchSize,
                progress: { progress.update(done: $0.conversations + $0.duplicates + $0.skipped.count, total: total) })
            progress.finish()
            for issue in report.skipped { CLIOutput.note("skipped \(issue)") }
            if output.json {
                struct ReportJSON: Encodable {
                    let conversations: Int
                    let messages: Int
                    let duplicates: Int
                    let skipped: [String]
                }
                try CLIOutput.json(
                    ReportJSON(
                        conversations: report.conversations, messages: report.messages, duplicates: report.duplicates,
                        skipped: report.skipped.map(\.description)))
            } else {
                CLIOutput.line(
                    "imported \(report.conversations) conversations (\(report.messages) messages); "
                        + "\(report.duplicates) already imported; \(report.skipped.count) skipped")
            }
        }
    }
}

/// `--format` of `import`; the raw values are part of each import's idempotency key.
enum ImportFormat: String, CaseIterable, ExpressibleByArgument {
    case openAIJSONL = "openai-jsonl"
    case llm
    case chatGPT = "chatgpt"
}

extension ImportErrorPolicy: ExpressibleByArgument {}
