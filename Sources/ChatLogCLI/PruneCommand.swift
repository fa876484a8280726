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
    @Flag(name: .long, help: "Allow --older-than below one day (deletes conversations active today).")
    var force = false

    func validate() throws {
        guard let age = Duration.parse(olderThan) else { throw ValidationError("--older-than must be a duration such as 12h, 30d or 52w.") }
        // A slip such as 0d or 1h deletes (nearly) the whole store: say so unless confirmed.
        if age < 86_400, !force, !dryRun {
            throw ValidationError("--older-than \(olderThan) is below one day and deletes conversations active today; add --force to do it.")
        }
    }

    func run() async throws {
        try await reportingErrors {
            let opened = try await StoreAccess.open(store)
            let cutoff = Date().addingTimeInterval(-Duration.parse(olderThan)!)
            let result = try await opened.prune(olderThan: cutoff, dryRun: dryRun)
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
