// Measures SecretRedactor: throughput on a corpus and which redactions fire (false positives on
// ordinary text). Built by scripts/bench-redaction with `swiftc -O` together with
// Sources/ChatLog/Redaction/SecretRedactor.swift. Usage: bench-redaction FILE... (or a list on stdin).
import Foundation

let arguments = Array(CommandLine.arguments.dropFirst())
var verbose = false
var files: [String] = []
for argument in arguments {
    if argument == "-v" { verbose = true } else { files.append(argument) }
}
if files.isEmpty {
    while let line = readLine() { files.append(line) }
}
var texts: [String] = []
var names: [String] = []
var bytes = 0
for file in files {
    guard let data = FileManager.default.contents(atPath: file), let text = String(data: data, encoding: .utf8) else { continue }
    texts.append(text)
    names.append(file)
    bytes += data.count
}
let redactor = SecretRedactor()
var counts: [SecretKind: Int] = [:]
var firing: [String] = []
for (index, text) in texts.enumerated() {
    let result = redactor.redact(text)
    counts.merge(result.counts, uniquingKeysWith: +)
    if verbose, result.total > 0 {
        // The redacted lines, so a reader sees what fired without the values.
        for line in result.text.split(separator: "\n") where line.contains("[REDACTED:") { firing.append("\(names[index]): \(line.prefix(160))") }
    }
}
// Throughput: the corpus as chat-sized messages (4 KiB pieces), three rounds, the best.
var pieces: [String] = []
for text in texts {
    var rest = Substring(text)
    while !rest.isEmpty {
        let piece = rest.prefix(4096)
        pieces.append(String(piece))
        rest = rest.dropFirst(piece.count)
    }
}
// The machine is shared: CPU time of this thread (what the redactor costs) and wall time (what it took).
func now(_ clock: clockid_t) -> Double {
    var time = timespec()
    clock_gettime(clock, &time)
    return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
}
var best = Double.infinity
var bestWall = Double.infinity
for _ in 0..<3 {
    let start = now(CLOCK_THREAD_CPUTIME_ID)
    let startWall = now(CLOCK_MONOTONIC)
    var total = 0
    for piece in pieces { total &+= redactor.redact(piece).total }
    best = min(best, now(CLOCK_THREAD_CPUTIME_ID) - start)
    bestWall = min(bestWall, now(CLOCK_MONOTONIC) - startWall)
    precondition(total >= 0)
}
let megabytes = Double(bytes) / 1_048_576
print(String(format: "corpus: %d files, %.1f MiB; %d pieces of <= 4 KiB", texts.count, megabytes, pieces.count))
print(String(format: "throughput: %.0f MiB/s of CPU time, %.0f MiB/s wall (best of 3)", megabytes / best, megabytes / bestWall))
let total = counts.values.reduce(0, +)
print(String(format: "redactions: %d (%.2f per MiB)", total, Double(total) / megabytes))
for (kind, count) in counts.sorted(by: { $0.value > $1.value }) { print("  \(kind.rawValue): \(count)") }
for line in firing { print(line) }
