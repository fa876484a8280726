import Foundation

/// Progress on stderr: a bar (or a running count when the total is unknown) redrawn in place on
/// a terminal; otherwise a plain line about every 10 % or every 10,000 items, so that cron mail
/// stays readable.
final class ProgressReporter: @unchecked Sendable {
    // @unchecked Sendable: all state is behind `lock`; updates come from the thread running the
    // job, `finish` after it.
    private let lock = NSLock()
    private let label: String
    private let unit: String
    private let isTerminal = isatty(2) == 1
    private var lastStep = -1
    private var drew = false

    init(label: String, unit: String) {
        self.label = label
        self.unit = unit
    }

    func update(done: Int, remaining: Int?) {
        lock.lock()
        defer { lock.unlock() }
        guard let remaining else {
            if isTerminal {
                FileHandle.standardError.write(Data("\r\(label): \(done) \(unit)".utf8))
                drew = true
            } else if done / 10_000 != lastStep {
                lastStep = done / 10_000
                FileHandle.standardError.write(Data("chatlog: \(label): \(done) \(unit)\n".utf8))
            }
            return
        }
        let total = max(1, done + remaining)
        let fraction = Double(done) / Double(total)
        if isTerminal {
            let width = 30
            let filled = Int(fraction * Double(width))
            let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
            FileHandle.standardError.write(Data("\r\(label) [\(bar)] \(Int(fraction * 100))% \(done)/\(total) \(unit)".utf8))
            drew = true
        } else if Int(fraction * 10) != lastStep {
            lastStep = Int(fraction * 10)
            FileHandle.standardError.write(Data("chatlog: \(label): \(done) of \(total) \(unit) done\n".utf8))
        }
    }

    func finish() {
        lock.lock()
        defer { lock.unlock() }
        if drew { FileHandle.standardError.write(Data("\n".utf8)) }
    }
}
