import Foundation
import Testing

@Suite struct InitCommandTests {
    @Test func createsAPrivateStore() throws {
        let sandbox = try Sandbox()
        let result = try sandbox.chatlog(["init"])
        #expect(result.status == 0, "\(result)")
        #expect(result.out.contains("created"), "\(result)")
        #expect(sandbox.fileMode("chatlog.db") == 0o600)
        for suffix in ["-wal", "-shm"] where sandbox.exists("chatlog.db" + suffix) {
            #expect(sandbox.fileMode("chatlog.db" + suffix) == 0o600, "chatlog.db\(suffix) is not 0600")
        }
        #expect(try sandbox.list().isEmpty)
    }

    @Test func secondRunSaysTheStoreExistsAndChangesNothing() throws {
        let sandbox = try Sandbox()
        let fingerprint = try sandbox.initStore()
        let before = sandbox.storeFiles()
        let result = try sandbox.chatlog(["init"])
        #expect(result.status == 0, "\(result)")
        #expect(result.out.contains("already exists"), "\(result)")
        let after = sandbox.storeFiles()
        // The -shm file is SQLite's shared-memory index, rewritten by any reader.
        #expect(after["chatlog.db"] == before["chatlog.db"], "init changed the database file")
        #expect(after["chatlog.db-wal"] == before["chatlog.db-wal"], "init changed the WAL")

        // Still the same store, same key.
        let status = try JSONDecoder().decode(KeyStatusJSON.self, from: try sandbox.chatlog(["key", "status", "--json"]).stdout)
        #expect(status.master_key_fingerprint == fingerprint)
        #expect(status.keys.count == 2)
    }

    @Test func takesThePathFromDbOrCHATLOG_DB() throws {
        let sandbox = try Sandbox()
        #expect(try sandbox.chatlog(["init", "--db", "explicit.db"]).status == 0)
        #expect(sandbox.exists("explicit.db"))
        let env = sandbox.environment.merging(["CHATLOG_DB": "from-env.db"]) { $1 }
        #expect(try sandbox.chatlog(["init"], env: env).status == 0)
        #expect(sandbox.exists("from-env.db"))
        #expect(!sandbox.exists("chatlog.db"))
        #expect(sandbox.fileMode("from-env.db") == 0o600)
    }
}
