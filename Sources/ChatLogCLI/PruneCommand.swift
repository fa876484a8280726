import ArgumentParser
import ChatLog
import Foundation

struct PruneCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prune",
        abstract: "Delete conversations with no activity for longer than --older-than (for cron retention)."
    )

    @OptionGroup var store: StoreOptions
    @OptionGroup var output: OutputOptions

    @Option(name: .long, help: "Age of the last message, e.g. 90d.")
    var olderThan: String
    @Flag(name: .long, help: "Only count what would be deleted.")
    var dryRun = false

    func validate() throws {
        if Duration.parse(olderThan) == nil { throw ValidationError("--older-than must be a duration such as 12h, 30d or 52w.") }
    }

    func run() async throws {
        try await reportingErrors {
            let opened = try await StoreAccess.open(store)
            let cutoff = Date().addingTimeInterval(-Duration.parse(olderThan)!)
            let result = try opened.prune(olderThan: cutoff, dryRun: dryRun)
            if output.json {
                try CLIOutput.json(["conversations": result.conversations, "messages": result.messages])
            } else {
                CLIOutput.line(
                    "\(dryRun ? "would delete" : "deleted") \(result.conversations) conversations (\(result.messages) messages) "
                        + "with no activity since \(Timestamps.format(cutoff))")
            }
        }
    }
}
