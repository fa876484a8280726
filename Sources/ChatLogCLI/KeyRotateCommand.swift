import ArgumentParser
import ChatLog
import Foundation

struct KeyRotateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rotate",
        abstract: "Rotate the data key (or with --index the index key) and re-encrypt rows in batches.",
        discussion: """
            Safe to run from cron or a systemd timer: a second run exits 75 while one holds the lock; a run killed \
            at any instant loses nothing and the next run continues. Exit 0 when no row remains under an older key, \
            3 when rows remain (--max-duration reached): run it again.
            """
    )

    @OptionGroup var store: StoreOptions
    @OptionGroup var output: OutputOptions

    @Flag(name: .long, help: "Make a new key active first.")
    var new = false
    @Option(name: .long, help: "Make a new key active first if the active one is older than this (e.g. 90d).")
    var ifOlderThan: String?
    @Option(name: .long, help: "Rows per transaction.")
    var batchSize: Int = 500
    @Option(name: .long, help: "Stop starting new batches after this long (e.g. 10m); exit 3 if rows remain.")
    var maxDuration: String?
    @Flag(name: .long, help: "Say what would be done (keys, row counts) and change nothing.")
    var dryRun = false
    @Flag(name: .long, help: "Rotate the index key (search terms, subject tokens) instead of the data key.")
    var index = false
    @Flag(name: .long, help: "Rewrite the database file afterwards so that no freed page keeps old ciphertext.")
    var vacuum = false

    func validate() throws {
        guard (1...100_000).contains(batchSize) else { throw ValidationError("--batch-size must be between 1 and 100000.") }
        for (name, value) in [("--if-older-than", ifOlderThan), ("--max-duration", maxDuration)] {
            if let value, Duration.parse(value) == nil {
                throw ValidationError("\(name) must be a duration such as 90s, 10m, 12h, 90d or 4w.")
            }
        }
    }

    struct ReportJSON: Encodable {
        let kind: String
        let dry_run: Bool
        let new_key: Bool
        @JSONNullable var new_key_id: UInt32?
        let active_key_id: UInt32
        let rewritten: Int
        let remaining: Int
        let complete: Bool
        let rows_by_key: [String: Int]
        let damaged: [DamagedJSON]
    }

    struct DamagedJSON: Encodable {
        let table: String
        let column: String
        let row: String
    }

    /// What a run does, said before its progress bar.
    var plan: String {
        let kind = index ? "index" : "data"
        let what = index ? "search terms and subject tokens" : "sealed values"
        var steps = new ? "make a new \(kind) key active, then " : (ifOlderThan.map { "make a new \(kind) key active if the active one is older than \($0), then " } ?? "")
        steps += "re-\(index ? "blind" : "seal") the \(what) still under older \(kind) keys, \(batchSize) rows per transaction"
        if let maxDuration { steps += ", starting no batch after \(maxDuration)" }
        return "key rotate: will \(steps); safe to interrupt (the next run resumes)"
    }

    func run() async throws {
        try await reportingErrors {
            let opened = try await StoreAccess.open(store)
            let progress = ProgressReporter(label: index ? "index key rotation" : "data key rotation", unit: "rows")
            if !dryRun { CLIOutput.note(plan) }
            let options = RotationOptions(
                newKey: new, ifOlderThan: ifOlderThan.flatMap(Duration.parse), batchSize: batchSize,
                maxDuration: maxDuration.flatMap(Duration.parse), dryRun: dryRun,
                progress: { progress.update(done: $0.done, remaining: $0.remaining) })
            let report = index ? try await opened.rotateIndexKey(options) : try await opened.rotateDataKey(options)
            progress.finish()
            if vacuum, !dryRun, report.complete { try await opened.vacuum() }
            if output.json {
                try CLIOutput.json(
                    ReportJSON(
                        kind: report.kind.rawValue, dry_run: report.dryRun, new_key: report.createsNewKey,
                        new_key_id: report.newKeyID?.rawValue, active_key_id: report.activeKeyID.rawValue, rewritten: report.rewritten,
                        remaining: report.remaining, complete: report.complete,
                        rows_by_key: Dictionary(uniqueKeysWithValues: report.rowsByKey.map { (String($0.key.rawValue), $0.value) }),
                        damaged: report.damaged.map { DamagedJSON(table: $0.table, column: $0.column, row: $0.rowID) }))
            } else if report.dryRun {
                CLIOutput.line(
                    report.createsNewKey
                        ? "would make a new \(report.kind.rawValue) key active (current: key \(report.activeKeyID))"
                        : "would keep \(report.kind.rawValue) key \(report.activeKeyID) active")
                for (key, rows) in report.rowsByKey.sorted(by: { $0.key < $1.key }) {
                    CLIOutput.line("would move \(rows) rows from key \(key)")
                }
                if report.rowsByKey.isEmpty { CLIOutput.line("no rows to move") }
            } else {
                if let id = report.newKeyID { CLIOutput.line("new active \(report.kind.rawValue) key \(id)") }
                CLIOutput.line(
                    "moved \(report.rewritten) rows to key \(report.activeKeyID); "
                        + (report.complete ? "none remain under older keys" : "\(report.remaining) remain (run again)"))
            }
            // Damaged rows were skipped (each stays under its old key): name each, then exit 4
            // with the counts once the rest is done.
            for failure in report.damaged { CLIOutput.error("skipped damaged row: integrity failure: \(failure)") }
            if !report.damaged.isEmpty {
                CLIOutput.error(
                    "moved \(report.rewritten) rows; skipped \(report.damaged.count) damaged rows (left under their old keys); "
                        + "\(report.remaining) others remain")
                throw ExitCode(ExitCodes.integrityFailure)
            }
            if !report.complete, !report.dryRun { throw ExitCode(ExitCodes.rotationIncomplete) }
        }
    }
}

extension Duration {
    /// "90s", "10m", "12h", "90d", "4w" → seconds.
    static func parse(_ text: String) -> TimeInterval? {
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800]
        guard let unit = text.last, let seconds = units[unit], let count = Double(text.dropLast()), count >= 0, count.isFinite
        else { return nil }
        return count * seconds
    }
}

