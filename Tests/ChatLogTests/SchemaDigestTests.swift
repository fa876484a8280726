import Foundation
import GRDB
import Testing

@testable import ChatLog

/// The fast path of `Schema.refuseUnknownObjects`: a store whose `sqlite_master` digest equals
/// the known digest of the migrations' schema is accepted without applying the migrations in
/// memory; anything else takes the slow path, which names the object.
@Suite struct SchemaDigestTests {
    @Test("the known digest is the digest of the schema the embedded migrations create (update Schema.expectedDigest when adding a migration)")
    func knownDigestMatchesTheMigrations() throws {
        let computed = Schema.digest(of: try Schema.expectedObjects.get())
        #expect(computed == Schema.expectedDigest, "Schema.expectedDigest should be \(computed)")
    }

    @Test("a changed definition, an extra object, a missing one and a renamed one each change the digest")
    func everyDifferenceChangesTheDigest() throws {
        let expected = try Schema.expectedObjects.get()
        let base = Schema.digest(of: expected)
        let one = try #require(expected.first { $0.type == "trigger" })
        var changed = expected
        changed.remove(one)
        #expect(Schema.digest(of: changed) != base)
        changed.insert(Schema.SchemaObject(type: one.type, name: one.name, table: one.table, sql: (one.sql ?? "") + " "))
        #expect(Schema.digest(of: changed) != base)
        var extra = expected
        extra.insert(Schema.SchemaObject(type: "trigger", name: "planted", table: "keys", sql: "CREATE TRIGGER planted AFTER INSERT ON keys BEGIN SELECT 1; END"))
        #expect(Schema.digest(of: extra) != base)
        var renamed = expected
        renamed.remove(one)
        renamed.insert(Schema.SchemaObject(type: one.type, name: one.name + "x", table: one.table, sql: one.sql))
        #expect(Schema.digest(of: renamed) != base)
        // Two fields cannot trade bytes: lengths are part of the encoding.
        let a: Set = [Schema.SchemaObject(type: "table", name: "ab", table: "c", sql: nil)]
        let b: Set = [Schema.SchemaObject(type: "table", name: "a", table: "bc", sql: nil)]
        #expect(Schema.digest(of: a) != Schema.digest(of: b))
    }

    @Test("a store written by this chatlog takes the fast path: its schema digest is the known one")
    func aNewStoreHasTheKnownDigest() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("schema-digest-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("store.db").path
        let store = try ChatLogStore.create(at: path, key: .key(MasterKey.generate()))
        _ = try store.logExchange(
            ModelExchange(
                conversation: .new(NewConversation()), prompt: [NewMessage(role: .user, content: "hello")],
                completion: NewMessage(role: .assistant, content: "hi")))
        try store.close()
        let queue = try DatabaseQueue(path: path)
        defer { try? queue.close() }
        #expect(Schema.digest(of: try queue.read(Schema.objects)) == Schema.expectedDigest)
    }
}
