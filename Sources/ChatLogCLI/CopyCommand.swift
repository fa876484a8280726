import ArgumentParser
import ChatLog
import ChatLogPostgres
import Foundation

struct CopyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "copy",
        abstract: "Copy the store (--db) to another backend or file without decrypting anything, then verify the copy.",
        discussion: """
            DEST is a postgres:// URL (password from PGPASSWORD or ~/.pgpass, never in the URL here) or a SQLite file. \
            It must be empty, or hold an interrupted copy of this store: run the same command again to resume. \
            Stop the store's writers first. The per-subject keys go with the store, as bytes: into DEST.subject-keys (0600) for a \
            file; for PostgreSQL into the database --subject-keys-to names (a database of its own, never DEST's; required when the \
            store has subject keys). Forgotten key ids, interrupted forgets and forget receipts, import records, proxy tokens and \
            thread digests are copied and compared too. Restoring a backup of a PostgreSQL store: --subject-keys-to the key database \
            it was made from (its keys are there).
            """
    )

    @OptionGroup var store: StoreOptions
    @OptionGroup var output: OutputOptions

    @Option(name: .long, help: ArgumentHelp("Where to copy to: a postgres:// URL or a file path.", valueName: "DEST"))
    var to: String

    @Option(
        name: .customLong("subject-keys-to"),
        help: ArgumentHelp(
            "For a postgres:// DEST: the URL of the database that gets the subject keys (a database of their own; no password in it).",
            valueName: "URL"))
    var subjectKeysTo: String?

    struct ReportJSON: Encodable {
        let destination: String
        let conversations: Int
        let messages: Int
        let already_copied: Int
        let term_pairs: Int
        let verified_conversations: Int
        let verified_messages: Int
        let side_rows: Int
        let subject_keys: Int
        let forgotten_subject_keys: Int
        let forget_receipts: Int
        let pending_forgets: Int
        let not_copied: [String: Int]
    }

    func run() async throws {
        try await reportingErrors {
            // The same rule as --db: a password in argv would be in the process list.
            try StoreOptions.refusePassword(to, option: "--to")
            if let subjectKeysTo { try StoreOptions.refusePassword(subjectKeysTo, option: "--subject-keys-to") }
            let opened = try await StoreAccess.openForReading(store)
            let progress = ProgressReporter(label: "copy", unit: "conversations")
            let report = try await opened.copy(to: to, subjectKeys: subjectKeysTo) { progress.update(done: $0, remaining: nil) }
            progress.finish()
            let destination = PostgresLocation.isPostgresURL(to) ? (try PostgresLocation(url: to).description) : to
            if output.json {
                try CLIOutput.json(
                    ReportJSON(
                        destination: destination, conversations: report.conversations, messages: report.messages,
                        already_copied: report.alreadyCopied, term_pairs: report.termPairs, verified_conversations: report.verifiedConversations,
                        verified_messages: report.verifiedMessages, side_rows: report.sideRows, subject_keys: report.subjectKeys,
                        forgotten_subject_keys: report.forgottenSubjectKeys, forget_receipts: report.forgetReceipts, pending_forgets: report.pendingForgets,
                        not_copied: report.notCopied))
                return
            }
            CLIOutput.line(
                "copied \(report.conversations) conversations (\(report.messages) messages) to \(CLIOutput.terminalSafe(destination))"
                    + (report.alreadyCopied > 0 ? "; \(report.alreadyCopied) were there from an earlier run" : ""))
            CLIOutput.line(
                "verified \(report.verifiedConversations) conversations and \(report.verifiedMessages) messages, byte for byte"
                    + (report.sideRows > 0 ? "; \(report.sideRows) import records, proxy tokens and thread digests copied" : ""))
            if report.subjectKeys + report.forgottenSubjectKeys + report.forgetReceipts + report.pendingForgets > 0 {
                CLIOutput.line(
                    "subject keys: \(report.subjectKeys) copied, \(report.forgottenSubjectKeys) forgotten ids listed; "
                        + "\(report.forgetReceipts) forget receipts and \(report.pendingForgets) interrupted forgets copied, all compared")
            }
            if !report.notCopied.isEmpty {
                CLIOutput.note(
                    "not copied (still only in the source): "
                        + report.notCopied.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: ", "))
            }
        }
    }
}
