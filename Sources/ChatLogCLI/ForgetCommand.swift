import ArgumentParser
import ChatLog

struct ForgetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "forget",
        abstract: "Erase every conversation of one end user, in the store and in every earlier backup of it (crypto-shredding).",
        discussion: """
            Deletes the subject's conversations with their messages, search terms, thread digests and import records (and \
            their bytes in the files, as `rm` does), then destroys the subject's key in STORE.subject-keys (a PostgreSQL \
            store: in the database CHATLOG_SUBJECT_KEYS names): a backup made before, restored, no longer opens them (exit \
            4 naming the rows) while everything else in it opens. Backups of the subject keys themselves must expire for \
            the forget to be final (docs/OPERATIONS.md). Writes a receipt: \
            time, a keyed hash of the subject (never the subject), counts. --resume finishes a forget that was interrupted. \
            --receipts lists the receipts (with --subject: only that subject's, found by recomputing its keyed hash).
            """
    )

    @OptionGroup var store: StoreOptions
    @OptionGroup var output: OutputOptions

    @Option(name: .long, help: "The end user (exactly as logged: the conversations' subject).")
    var subject: String?

    @Option(name: .long, help: SubjectArgument.fileHelp)
    var subjectFile: String?

    @Flag(name: .long, help: "Only count what would be erased; change nothing.")
    var dryRun = false

    @Flag(name: .long, help: "Only finish forgets that were interrupted (no --subject).")
    var resume = false

    @Flag(name: .long, help: "List the receipts of finished forgets (with --subject: that subject's); change nothing.")
    var receipts = false

    func validate() throws {
        try SubjectArgument.validate(subject: subject, file: subjectFile)
        if receipts {
            if resume || dryRun { throw ValidationError("--receipts takes no --resume and no --dry-run.") }
            return
        }
        if resume {
            if subject != nil || subjectFile != nil || dryRun { throw ValidationError("--resume takes no --subject and no --dry-run.") }
            return
        }
        guard subject != nil || subjectFile != nil else { throw ValidationError("give --subject SUBJECT or --subject-file PATH (or --resume).") }
    }

    struct ResultJSON: Encodable {
        let forgotten: Bool
        let dry_run: Bool
        let conversations: Int
        let messages: Int
        let subject_keys: Int
        let conversations_without_subject_key: Int
        @JSONNullable var receipt: String?
        let resumed: Int
    }

    struct ReceiptJSON: Encodable {
        let forgotten_at: String
        let subject_hash: String
        let conversations: Int
        let messages: Int
        let subject_keys: Int
    }

    func listReceipts() async throws {
        let subject = try SubjectArgument.resolve(subject: subject, file: subjectFile)
        let opened = try await StoreAccess.openForReading(store)
        var list = try await opened.erasure.receipts()
        if let subject {
            let hash = try await opened.erasure.receiptHash(subject: subject)
            list = list.filter { $0.subjectHash == hash }
        }
        if output.json {
            try CLIOutput.json(
                list.map {
                    ReceiptJSON(
                        forgotten_at: CLIOutput.timestamp($0.forgottenAt), subject_hash: $0.subjectHash, conversations: $0.conversations,
                        messages: $0.messages, subject_keys: $0.subjectKeys)
                })
        } else {
            for receipt in list {
                CLIOutput.line(
                    "\(CLIOutput.timestamp(receipt.forgottenAt))  \(receipt.subjectHash)  \(receipt.conversations) conversations, \(receipt.messages) messages, \(receipt.subjectKeys) subject keys")
            }
            if list.isEmpty { CLIOutput.line(subject == nil ? "no receipts" : "no receipt for that subject") }
        }
        if subject != nil, list.isEmpty { throw ExitCode(ExitCodes.notFound) }
    }

    func run() async throws {
        try await reportingErrors {
            if receipts { return try await listReceipts() }
            let subject = try SubjectArgument.resolve(subject: subject, file: subjectFile)
            let opened = try await StoreAccess.open(store)
            if resume {
                let resumed = try await opened.erasure.resume()
                if output.json {
                    try CLIOutput.json(
                        ResultJSON(
                            forgotten: false, dry_run: false, conversations: 0, messages: 0, subject_keys: 0,
                            conversations_without_subject_key: 0, receipt: nil, resumed: resumed))
                } else {
                    CLIOutput.line(resumed == 0 ? "no interrupted forget; nothing changed" : "finished \(resumed) interrupted forget\(resumed == 1 ? "" : "s")")
                }
                return
            }
            let resumed = dryRun ? 0 : try await opened.erasure.pending()
            guard let report = try await opened.erasure.forget(subject: subject ?? "", dryRun: dryRun) else {
                if output.json {
                    try CLIOutput.json(
                        ResultJSON(
                            forgotten: false, dry_run: dryRun, conversations: 0, messages: 0, subject_keys: 0,
                            conversations_without_subject_key: 0, receipt: nil, resumed: resumed))
                } else {
                    CLIOutput.line("no conversation of that subject; nothing changed")
                }
                throw ExitCode(ExitCodes.notFound)
            }
            if output.json {
                try CLIOutput.json(
                    ResultJSON(
                        forgotten: !report.dryRun, dry_run: report.dryRun, conversations: report.conversations, messages: report.messages,
                        subject_keys: report.subjectKeys, conversations_without_subject_key: report.conversationsWithoutSubjectKey,
                        receipt: report.receiptHash, resumed: resumed))
                return
            }
            let counts =
                "\(report.conversations) conversation\(report.conversations == 1 ? "" : "s") (\(report.messages) message\(report.messages == 1 ? "" : "s"))"
                + " and \(report.subjectKeys) subject key\(report.subjectKeys == 1 ? "" : "s")"
            if report.dryRun {
                CLIOutput.line("would erase \(counts); nothing changed (dry run)")
            } else {
                if resumed > 0 { CLIOutput.line("finished \(resumed) interrupted forget\(resumed == 1 ? "" : "s") first") }
                CLIOutput.line("erased \(counts); receipt \(report.receiptHash ?? "")")
            }
            if report.conversationsWithoutSubjectKey > 0 {
                CLIOutput.note(
                    "\(report.conversationsWithoutSubjectKey) of them were logged before subject keys existed: \(report.dryRun ? "they will be" : "they are") gone from this store, but backups made before still open them")
            }
        }
    }
}
