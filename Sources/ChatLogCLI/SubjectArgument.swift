import ArgumentParser
import ChatLog
import Foundation

/// The subject (end user) of an access or erasure request: `--subject S`, or `--subject-file PATH`
/// (`-` for standard input) so that the person's identifier is not in the process list while the
/// command runs. The file holds the subject alone (one trailing newline is ignored).
enum SubjectArgument {
    static let fileHelp = ArgumentHelp(
        "Read the subject from this file ('-' for standard input) instead: it stays out of the process list.",
        valueName: "path")

    static func validate(subject: String?, file: String?) throws {
        if subject != nil, file != nil { throw ValidationError("give --subject or --subject-file, not both.") }
        if subject?.isEmpty == true { throw ValidationError("--subject must not be empty.") }
        if file?.isEmpty == true { throw ValidationError("--subject-file must name a file, or '-' for standard input.") }
    }

    /// The subject given, read from the file when `--subject-file` was used; nil when neither was.
    static func resolve(subject: String?, file: String?) throws(ChatLogError) -> String? {
        guard let file else { return subject }
        let limit = 65_536
        let place = file == "-" ? "standard input" : CLIOutput.terminalSafeField(file)
        // The throwing read: Foundation's readData(ofLength:) traps on a read error (a directory).
        guard let handle = file == "-" ? FileHandle.standardInput : FileHandle(forReadingAtPath: file),
            let data = try? handle.read(upToCount: limit + 1) ?? Data()
        else {
            throw .invalidInput("--subject-file \(place) cannot be read")
        }
        if file != "-" { try? handle.close() }
        guard data.count <= limit else { throw .invalidInput("--subject-file holds more than \(limit) bytes; it should hold one subject") }
        guard var text = String(data: data, encoding: .utf8) else { throw .invalidInput("--subject-file is not valid UTF-8") }
        if text.hasSuffix("\r\n") {
            text.removeLast(2)
        } else if text.hasSuffix("\n") {
            text.removeLast()
        }
        guard !text.isEmpty else { throw .invalidInput("--subject-file is empty; it should hold the subject") }
        guard !text.contains(where: { $0 == "\n" || $0 == "\r" }) else {
            throw .invalidInput("--subject-file holds more than one line; it should hold one subject")
        }
        return text
    }
}
