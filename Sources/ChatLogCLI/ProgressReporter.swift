import Foundation

/// Progress on stderr. On a terminal: a bar with the total (or a running count when the total is
/// unknown) redrawn in place. Otherwise (cron, systemd, a pipe): a plain line every few seconds
/// and one at the end, so a log shows the job moving without filling up.
final class ProgressReporter: @unchecked Sendable {
    // @unchecked Sendable: all state is behind `lock`; updates come from the thread running the
    // job, `finish` after it.
    private let lock = NSLock()
    private let label: String
    private let unit: String
    private let isTerminal: Bool
    /// Seconds between plain lines; `CHATLOG_PROGRESS_SECONDS` overrides the default of 5.
    private let interval: TimeInterval
    private var lastLine: Date?
    private var last: (done: Int, total: Int?)?
    private var drew = false

    /// Seconds between plain progress lines when stderr is not a terminal.
    static let defaultInterval: TimeInterval = 5

    init(label: String, unit: String, environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.label = label
        self.unit = unit
        isTerminal = isatty(2) == 1 && environment["TERM"] != "dumb"
        interval = environment["CHATLOG_PROGRESS_SECONDS"].flatMap(TimeInterval.init).map { max(0, $0) } ?? Self.defaultInterval
    }

    /// `remaining` nil: the total is not known.
    func update(done: Int, remaining: Int?) {
        update(done: done, total: remaining.map { done + $0 })
    }

    func update(done: Int, total: Int?) {
        lock.lock()
        defer { lock.unlock() }
        last = (done, total)
        if isTerminal {
            CLIOutput.standardError("\r" + Self.bar(label: label, unit: unit, done: done, total: total) + "\u{1B}[K")
            drew = true
            return
        }
        let now = Date()
        if let lastLine, now.timeIntervalSince(lastLine) < interval { return }
        if lastLine == nil, interval > 0 {
            // The first line after one interval, not at once: short jobs print only their last line.
            lastLine = now
            return
        }
        lastLine = now
        CLIOutput.standardError("chatlog: \(Self.plain(label: label, unit: unit, done: done, total: total))\n")
    }

    /// Ends the bar's line on a terminal; elsewhere prints where the job ended. `done`: the final
    /// count, when the job reports progress only now and then.
    func finish(done: Int? = nil) {
        lock.lock()
        let previous = last
        lock.unlock()
        if let done, let previous, previous.done != done { update(done: done, total: previous.total) }
        lock.lock()
        defer { lock.unlock() }
        if drew {
            CLIOutput.standardError("\n")
        } else if let last, !isTerminal {
            CLIOutput.standardError("chatlog: \(Self.plain(label: label, unit: unit, done: last.done, total: last.total))\n")
        }
    }

    /// Lines holding something other than spaces in the file at `path` (an import's total
    /// records), read in chunks; nil when it cannot be read.
    static func nonEmptyLines(_ path: String) -> Int? {
        guard let handle = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? handle.close() }
        var count = 0
        var content = false
        while let chunk = try? handle.read(upToCount: 1 << 20), !chunk.isEmpty {
            for byte in chunk {
                if byte == 0x0A {
                    if content { count += 1 }
                    content = false
                } else if byte != 0x20, byte != 0x09, byte != 0x0D {
                    content = true
                }
            }
        }
        return count + (content ? 1 : 0)
    }

    static func bar(label: String, unit: String, done: Int, total: Int?) -> String {
        guard let total else { return "\(label): \(done) \(unit)" }
        let fraction = min(1, Double(done) / Double(max(1, total)))
        let width = 30
        let filled = Int(fraction * Double(width))
        let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
        return "\(label) [\(bar)] \(Int(fraction * 100))% \(done)/\(total) \(unit)"
    }

    static func plain(label: String, unit: String, done: Int, total: Int?) -> String {
        guard let total else { return "\(label): \(done) \(unit)" }
        let percent = total > 0 ? min(100, done * 100 / total) : 100
        return "\(label): \(done) of \(total) \(unit) (\(percent)%)"
    }
}
