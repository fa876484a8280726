import ArgumentParser
import ChatLog
import Foundation

struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Log a short conversation into a new store in a temporary folder, show it, then show the raw file.",
        discussion: "Needs no setup: the demo makes its own key, which it never writes anywhere."
    )

    @Flag(name: .long, help: "Keep the temporary folder instead of removing it at the end.")
    var keep = false

    func run() async throws {
        try await reportingErrors {
            let folder = FileManager.default.temporaryDirectory.appendingPathComponent("chatlog-demo-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
            defer { if !keep { try? FileManager.default.removeItem(at: folder) } }
            let path = folder.appendingPathComponent("demo.db").path

            let key = MasterKey.generate()
            CLIOutput.line("1. A new master key (fingerprint \(key.fingerprint)); in real use it comes from CHATLOG_MASTER_KEY.")
            let store = try ChatLogStore.create(at: path, key: .key(key, origin: "demo"))
            CLIOutput.line("2. A new store: \(path)")

            let conversation = try await store.createConversation(
                NewConversation(title: "Dosage question", subject: "patient-4711", metadata: .object(["app": .string("clinic-helper")])))
            let secrets = ["metformin", "HbA1c", "sk-live-51Hx"]
            try await store.logExchange(ModelExchange(
                conversation: .existing(conversation),
                prompt: [
                    NewMessage(role: .system, content: "You are a careful assistant for a diabetes clinic."),
                    NewMessage(role: .user, content: "My HbA1c came back at 7.9. Should I raise my metformin to 1000 mg twice a day? My API key for the glucose app is sk-live-51HxDEMO."),
                ],
                completion: NewMessage(
                    role: .assistant,
                    content: "An HbA1c of 7.9% is above the usual 7% target, but only your prescriber should change a metformin dose. Please also revoke that API key: it was pasted into a chat.",
                    model: "gpt-4o-mini", promptTokens: 58, completionTokens: 41, latencyMilliseconds: 912, finishReason: "stop")))
            try await store.logExchange(ModelExchange(
                conversation: .new(NewConversation(title: "Refund", subject: "customer-311")),
                prompt: [NewMessage(role: .user, content: "I was charged twice for my March invoice, card ending 4242.")],
                completion: NewMessage(
                    role: .assistant, content: "Sorry about the double charge on the March invoice: I have asked billing to refund it.",
                    model: "gpt-4o", promptTokens: 31, completionTokens: 22, latencyMilliseconds: 640, finishReason: "stop")))
            CLIOutput.line("3. Logged two model exchanges. Read one back with the key:\n")
            TranscriptPrinter.print(try await store.transcript(conversation))

            CLIOutput.line("\n4. Search the sealed text (blinded index, every hit decrypted and checked): \"march invoice\"\n")
            for hit in try await store.search("march invoice", sort: .newest).hits {
                CLIOutput.line("   \(hit.role.rawValue): " + SearchCommand.highlighted(
                    hit.snippet, on: CLIOutput.stdoutIsTerminal ? "\u{1B}[1m" : "[", off: CLIOutput.stdoutIsTerminal ? "\u{1B}[0m" : "]"))
            }

            CLIOutput.line("\n5. Stats by model, from plain columns only (no key needed):\n")
            let byModel = try await store.stats(by: .model)
            CLIOutput.line(Table.render(
                header: ["MODEL", "MESSAGES", "PROMPT TOKENS", "COMPLETION TOKENS"],
                rows: byModel.map {
                    [$0.group ?? "-", String($0.messages), String($0.promptTokens), String($0.completionTokens)]
                }))

            let rotation = try await store.rotateDataKey(RotationOptions(newKey: true))
            CLIOutput.line("\n6. Rotated the data key: key \(rotation.activeKeyID) is active, \(rotation.rewritten) rows re-encrypted, "
                + "\(rotation.remaining) left under the old key, which can now be retired:")
            try await store.retireUnusedKeys()
            for key in try await store.keyStatus().keys {
                CLIOutput.line("   key \(key.id)  \(key.kind.rawValue)  \(key.state.rawValue)  \(key.rowCount) rows")
            }
            try store.checkpoint()
            try store.close()

            CLIOutput.line("\n7. The same bytes as a thief sees them (database file, after checkpoint):\n")
            let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
            // Sealed values start with version 1 and the 4-byte id of the active data key: show one.
            let active = UInt8(truncatingIfNeeded: rotation.activeKeyID.rawValue)
            let marker: [UInt8] = [0x01, 0x00, 0x00, 0x00, active]
            let start = Self.firstIndex(of: marker, in: bytes, from: 4096) ?? 0
            CLIOutput.line(HexDump.render(bytes, from: max(0, start - 32), count: 256))

            CLIOutput.line("\n8. Searching every file of the store for the sensitive words:")
            let files = try FileManager.default.contentsOfDirectory(atPath: folder.path).sorted()
            for word in secrets + ["patient-4711", "Dosage question", "4242"] {
                var found: [String] = []
                for file in files {
                    let content = [UInt8](try Data(contentsOf: folder.appendingPathComponent(file)))
                    if Self.firstIndex(of: Array(word.utf8), in: content, from: 0) != nil { found.append(file) }
                }
                CLIOutput.line("   \(word.padding(toLength: 16, withPad: " ", startingAt: 0)) \(found.isEmpty ? "not found" : "FOUND in \(found.joined(separator: ", "))")")
            }
            CLIOutput.line("\nModel names, roles, times and token counts stay plain (for stats without a key): docs/SECURITY.md.")
            CLIOutput.line(keep ? "Kept \(folder.path) (the key is gone: it was never written)." : "Removed \(folder.path).")
        }
    }

    static func firstIndex(of needle: [UInt8], in haystack: [UInt8], from start: Int) -> Int? {
        guard !needle.isEmpty, haystack.count >= needle.count, start <= haystack.count - needle.count else { return nil }
        var index = start
        while index <= haystack.count - needle.count {
            if haystack[index] == needle[0], Array(haystack[index..<(index + needle.count)]) == needle { return index }
            index += 1
        }
        return nil
    }
}

enum HexDump {
    static func render(_ bytes: [UInt8], from start: Int, count: Int) -> String {
        let digits = Array("0123456789abcdef")
        var lines: [String] = []
        var offset = start
        while offset < min(bytes.count, start + count) {
            let row = bytes[offset..<min(bytes.count, offset + 16)]
            var hex = ""
            for (index, byte) in row.enumerated() {
                hex.append(digits[Int(byte >> 4)])
                hex.append(digits[Int(byte & 0xF)])
                hex += index == 7 ? "  " : " "
            }
            let ascii = String(row.map { (0x20...0x7E).contains($0) ? Character(UnicodeScalar($0)) : "." })
            let address = String(offset, radix: 16)
            lines.append(String(repeating: "0", count: max(0, 8 - address.count)) + address + "  "
                + hex.padding(toLength: 49, withPad: " ", startingAt: 0) + " |" + ascii + "|")
            offset += 16
        }
        return lines.joined(separator: "\n")
    }
}
