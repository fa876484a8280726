import ArgumentParser
import ChatLog
import Foundation

struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show which store and key this command line resolves to: path, key source, file sizes, counts."
    )

    @OptionGroup var store: StoreOptions
    @OptionGroup var output: OutputOptions

    struct FilesJSON: Encodable {
        let db: Int
        @JSONNullable var wal: Int?
        @JSONNullable var shm: Int?
    }

    struct StatusJSON: Encodable {
        let path: String
        let key_source: String
        let master_key_fingerprint: String
        /// Null for a PostgreSQL store (no files).
        @JSONNullable var files: FilesJSON?
        let conversations: Int
        let messages: Int
    }

    func run() async throws {
        try await reportingErrors {
            let settings = try await StoreAccess.settings()
            let path = try store.path(settings)
            let opened = try await StoreAccess.openForReading(store)
            let onFile = opened.storage == nil
            let absolute = onFile ? URL(fileURLWithPath: path).standardizedFileURL.path : opened.path
            let fingerprint = try await opened.keyStatus().masterKeyFingerprint
            let counts = try await opened.counts()
            func size(_ file: String) -> Int? {
                (try? FileManager.default.attributesOfItem(atPath: file)[.size] as? NSNumber)?.intValue
            }
            let files = onFile ? FilesJSON(db: size(path) ?? 0, wal: size(path + "-wal"), shm: size(path + "-shm")) : nil
            if output.json {
                try CLIOutput.json(
                    StatusJSON(
                        path: absolute, key_source: opened.masterKeyOrigin, master_key_fingerprint: fingerprint.description, files: files,
                        conversations: counts.conversations, messages: counts.messages))
                return
            }
            let sizes = [("", files?.db), ("-wal", files?.wal), ("-shm", files?.shm)].compactMap { suffix, bytes in
                bytes.map { "\(suffix.isEmpty ? "db" : String(suffix.dropFirst())) \(Self.bytes($0))" }
            }
            CLIOutput.line(Table.render(
                header: ["store", CLIOutput.terminalSafe(absolute)],
                rows: [
                    ["key", "\(CLIOutput.terminalSafe(opened.masterKeyOrigin)), fingerprint \(fingerprint)"],
                    ["files", files == nil ? "none (PostgreSQL)" : sizes.joined(separator: ", ")],
                    ["contents", "\(counts.conversations) conversations, \(counts.messages) messages"],
                ]))
        }
    }

    /// 1234567 → "1.2 MB".
    static func bytes(_ count: Int) -> String {
        let units = ["bytes", "kB", "MB", "GB", "TB"]
        var value = Double(count)
        var unit = 0
        while value >= 1000, unit < units.count - 1 {
            value /= 1000
            unit += 1
        }
        return unit == 0 ? "\(count) bytes" : String(format: "%.1f %@", value, units[unit])
    }
}
