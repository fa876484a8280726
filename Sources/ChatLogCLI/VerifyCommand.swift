import ArgumentParser
import ChatLog

struct VerifyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Open every sealed value and check the search index; exit 4 listing each failure.",
        discussion: """
            Reads only (without --repair). Each failure names table, column and row id; no content is printed. \
            --repair first deletes messages whose content cannot be opened, clears other damaged values, fixes \
            stale or missing index entries and merges deleted terms out of the index, printing each action; then verifies.
            """
    )

    @OptionGroup var store: StoreOptions
    @OptionGroup var output: OutputOptions

    @Flag(name: .long, help: "Delete or clear damaged rows and fix the search index first (prints what it did).")
    var repair = false

    struct IssueJSON: Encodable {
        let table: String
        let column: String
        let row: String
        let problem: String
    }

    struct ReportJSON: Encodable {
        let ok: Bool
        let conversations: Int
        let messages: Int
        let sealed_values: Int
        let failure_count: Int
        let unmerged_deletions: Bool
        let failures: [IssueJSON]
        /// null without --repair.
        @JSONNullable var repairs: [IssueJSON]?
    }

    func run() async throws {
        try await reportingErrors {
            // Verifying only reads (a read-only store too); repairing writes.
            let opened = repair ? try await StoreAccess.open(store) : try await StoreAccess.openForReading(store)
            let repairs = repair ? try await opened.repair() : []
            if !output.json { for action in repairs { CLIOutput.line("REPAIRED " + CLIOutput.terminalSafeField(action.description)) } }
            let progress = ProgressReporter(label: "verify", unit: "messages")
            let total = try await opened.counts().messages
            let report = try await opened.verify(progress: { progress.update(done: $0, total: total) })
            progress.finish(done: report.messages)
            if output.json {
                try CLIOutput.json(
                    ReportJSON(
                        ok: report.ok, conversations: report.conversations, messages: report.messages, sealed_values: report.sealedValues,
                        failure_count: report.issueCount, unmerged_deletions: report.unmergedDeletions,
                        failures: report.issues.map { IssueJSON(table: $0.table, column: $0.column, row: $0.rowID, problem: $0.problem) },
                        repairs: repair ? repairs.map { IssueJSON(table: $0.table, column: $0.column, row: $0.rowID, problem: $0.action) } : nil))
            } else {
                for issue in report.issues { CLIOutput.line("FAIL " + CLIOutput.terminalSafeField(issue.description)) }
                if report.issueCount > report.issues.count {
                    CLIOutput.line("… and \(report.issueCount - report.issues.count) more failures")
                }
                if report.unmergedDeletions {
                    CLIOutput.line(
                        "NOTE message_terms.(segments): deleted terms are still in the search index's segments, not merged away yet "
                            + "(`chatlog verify --repair` merges them)")
                }
                CLIOutput.line(
                    "checked \(report.conversations) conversations, \(report.messages) messages, \(report.sealedValues) sealed values: "
                        + (report.ok ? "all well" : "\(report.issueCount) failures"))
            }
            if !report.ok { throw ExitCode(ExitCodes.integrityFailure) }
        }
    }
}
