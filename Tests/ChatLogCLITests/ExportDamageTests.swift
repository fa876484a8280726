import Foundation
import Testing

/// `export` over a store with a damaged conversation: without `--skip-damaged` it stops with
/// exit 4 saying how many conversations it wrote; with it, it writes every other conversation,
/// lists what it skipped (table, column, row) on stderr and exits 4 at the end.
@Suite struct ExportDamageTests {
    /// Three conversations, the second one's message holding the first one's ciphertext, and a
    /// fourth whose id was replaced by something that is not a UUID.
    private func damagedStore(_ sandbox: Sandbox) throws -> (ids: [String], damagedMessage: String, badSeq: String) {
        try sandbox.initStore()
        let logged = try (1...4).map { try sandbox.log(["--title", "c\($0)", "--text", "message \($0)"]) }
        try sandbox.sqlite(
            "chatlog.db",
            "UPDATE messages SET content = (SELECT content FROM messages WHERE id = '\(logged[0].message_id)') WHERE id = '\(logged[1].message_id)'")
        let seq = try sandbox.sqlite("chatlog.db", "SELECT seq FROM conversations WHERE id = '\(logged[3].conversation_id)'")
        try sandbox.sqlite("chatlog.db", "UPDATE conversations SET id = 'not-a-uuid' WHERE seq = \(seq)")
        return (logged.map(\.conversation_id), logged[1].message_id, seq)
    }

    private func exportedIDs(_ data: Data) throws -> [String] {
        try String(decoding: data, as: UTF8.self).split(separator: "\n").map { line in
            try jsonObject(Data(line.utf8))["id"] as? String ?? ""
        }
    }

    @Test func withoutTheFlagExportStopsAndSaysHowManyItWrote() throws {
        let sandbox = try Sandbox()
        let store = try damagedStore(sandbox)
        let result = try sandbox.chatlog(["export"])
        #expect(result.status == 4, "\(result)")
        #expect(try exportedIDs(result.stdout) == [store.ids[0]])
        #expect(result.err.contains("messages.content of row \(store.damagedMessage)"), "\(result)")
        #expect(result.err.contains("after 1 conversations written to stdout"), "\(result)")

        let file = try sandbox.chatlog(["export", "--output", "out.jsonl"])
        #expect(file.status == 4, "\(file)")
        #expect(file.err.contains("nothing was written to out.jsonl"), "\(file)")
        #expect(!sandbox.exists("out.jsonl"))
    }

    @Test func skipDamagedWritesTheRestListsTheSkippedAndExits4() throws {
        let sandbox = try Sandbox()
        let store = try damagedStore(sandbox)
        let result = try sandbox.chatlog(["export", "--skip-damaged"])
        #expect(result.status == 4, "\(result)")
        #expect(try exportedIDs(result.stdout) == [store.ids[0], store.ids[2]])
        #expect(result.err.contains("skipped a damaged conversation: messages.content of row \(store.damagedMessage)"), "\(result)")
        #expect(result.err.contains("skipped a damaged conversation: conversations.id of row seq \(store.badSeq) is not a UUID"), "\(result)")
        #expect(result.err.contains("exported 2 conversations (2 messages); skipped 2 damaged conversations"), "\(result)")
        #expect(!result.err.contains("message 2") && !result.out.contains("message 2"))

        let file = try sandbox.chatlog(["export", "--skip-damaged", "--output", "out.jsonl"])
        #expect(file.status == 4, "\(file)")
        #expect(try exportedIDs(try Data(contentsOf: sandbox.url("out.jsonl"))) == [store.ids[0], store.ids[2]])
        #expect(sandbox.fileMode("out.jsonl") == 0o600)

        // A store without damage: the flag changes nothing, exit 0.
        let clean = try Sandbox()
        try clean.initStore()
        _ = try clean.log(["--text", "fine"])
        let fine = try clean.chatlog(["export", "--skip-damaged"])
        #expect(fine.status == 0, "\(fine)")
        #expect(fine.stderr.isEmpty, "\(fine)")
    }
}
