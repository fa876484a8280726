import ChatLogTestSupport
import Foundation
import Testing

@testable import ChatLog
@testable import ChatLogPostgres

extension PostgreSQLSuites {
    /// Migration postgres/0005: the row counts that relevance search (BM25's N) and `counts()`
    /// read instead of `count(*)`, kept by statement triggers as delta rows and folded now and then.
    @Suite("row counts on PostgreSQL")
    struct PostgresCountsTests {
        static func exchange(_ n: Int, conversation: ModelExchange.Target = .new(NewConversation())) -> ModelExchange {
            ModelExchange(
                conversation: conversation, prompt: [NewMessage(role: .user, content: "question \(n) about refunds")],
                completion: NewMessage(role: .assistant, content: "answer \(n)", promptTokens: 7, completionTokens: n % 5))
        }

        /// `stats` without a filter the way it was computed before migration 0008: a scan.
        static func statsByScan(_ database: PostgresDatabase) throws -> [StatsRow] {
            let line = try database.psql(
                """
                SELECT count(DISTINCT conversation_seq) || ',' || count(*) || ',' || coalesce(sum(prompt_tokens), 0) || ','
                       || coalesce(sum(completion_tokens), 0) FROM messages
                """)
            let numbers = line.split(separator: ",").map { Int($0)! }
            // A store without messages: one row of zeros (as `ChatLogStore.stats` answers on every backend).
            return [StatsRow(group: nil, conversations: numbers[0], messages: numbers[1], promptTokens: numbers[2], completionTokens: numbers[3])]
        }

        static func truth(_ database: PostgresDatabase) throws -> (conversations: Int, messages: Int) {
            (Int(try database.psql("SELECT count(*) FROM conversations"))!, Int(try database.psql("SELECT count(*) FROM messages"))!)
        }

        /// The fold the storage runs now and then (PostgresStorage.foldRowCounts), by hand.
        static func fold(_ database: PostgresDatabase) throws {
            try database.psql(PostgresStorage.foldSQL)
        }

        @Test("counts equal count(*) after concurrent writers in three processes' pools, appends, deletes, prune and repair — folded or not")
        func countsFollowEveryWrite() async throws {
            try await withPostgresLocation { location, database in
                let key = MasterKey.generate()
                let first = try await ChatLogStore.create(url: location, key: .key(key))
                defer { try? first.close() }
                let others = [try await ChatLogStore.open(url: location, key: .key(key)), try await ChatLogStore.open(url: location, key: .key(key))]
                defer { for store in others { try? store.close() } }
                let stores = [first] + others
                let logged = try await withThrowingTaskGroup(of: [LoggedExchange].self) { group in
                    for (index, store) in stores.enumerated() {
                        group.addTask {
                            var logged: [LoggedExchange] = []
                            for n in 0..<40 {
                                let exchange = try await store.logExchange(Self.exchange(index * 100 + n))
                                logged.append(exchange)
                                if n % 4 == 0 {
                                    logged.append(try await store.logExchange(Self.exchange(n, conversation: .existing(exchange.conversationID))))
                                }
                            }
                            return logged
                        }
                    }
                    var all: [LoggedExchange] = []
                    for try await part in group { all += part }
                    return all
                }
                #expect(try Self.truth(database) == (120, 300))
                var counts = try await first.counts()
                #expect(counts == (120, 300))

                // Deletes count down (a conversation's messages go by cascade).
                #expect(try await others[0].deleteConversation(logged[0].conversationID))
                #expect(try await others[1].deleteConversation(logged[5].conversationID))
                let afterDeletes = try Self.truth(database)
                counts = try await first.counts()
                #expect(counts == afterDeletes && afterDeletes.conversations == 118)

                // A message that cannot be opened is deleted by repair: one message fewer.
                let victim = logged[10].messageIDs[1].rawValue
                try database.psql("UPDATE messages SET content = (SELECT content FROM messages WHERE id <> '\(victim)' LIMIT 1) WHERE id = '\(victim)'")
                _ = try await first.repair()
                counts = try await first.counts()
                #expect(counts == (try Self.truth(database)) && counts.messages == afterDeletes.messages - 1)

                // Prune of everything older than now: nothing left, and the counts say so.
                _ = try await first.prune(olderThan: Date().addingTimeInterval(60))
                #expect(try Self.truth(database) == (0, 0))
                #expect(try await first.counts() == (0, 0))

                // The same numbers once every delta is folded into the total.
                _ = try await first.logExchange(Self.exchange(1))
                try Self.fold(database)
                #expect(try database.psql("SELECT count(*) FROM row_count_deltas") == "0")
                #expect(try await first.counts() == (1, 2))
            }
        }

        static func usageByScan(_ database: PostgresDatabase) throws -> [Int64: Int] {
            let text = try database.psql(
                """
                SELECT string_agg(id || ':' || n, ',' ORDER BY id) FROM (SELECT id, count(*) AS n FROM (
                    SELECT key_id AS id FROM conversations
                    UNION ALL SELECT subject_key_id FROM conversations WHERE subject_key_id IS NOT NULL
                    UNION ALL SELECT key_id FROM messages
                    UNION ALL SELECT index_key_id FROM messages WHERE index_key_id IS NOT NULL) used GROUP BY id) counted
                """)
            var usage: [Int64: Int] = [:]
            for pair in text.split(separator: ",") {
                let parts = pair.split(separator: ":")
                usage[Int64(parts[0])!] = Int(parts[1])!
            }
            return usage
        }

        static func usageByStatus(_ store: ChatLogStore) async throws -> [Int64: Int] {
            var usage: [Int64: Int] = [:]
            for key in try await store.keyStatus().keys where key.rowCount > 0 { usage[Int64(key.id.rawValue)] = key.rowCount }
            return usage
        }

        @Test("rows per key (migration 0006) equal a scan after logging, appends, data- and index-key rotation in batches, retirement, deletes and prune; a store of schema 5 gets them from its rows")
        func keyUsageFollowsEveryWrite() async throws {
            try await withPostgresLocation { location, database in
                let key = MasterKey.generate()
                let store = try await ChatLogStore.create(url: location, key: .key(key))
                defer { try? store.close() }
                var logged: [LoggedExchange] = []
                for n in 0..<30 {
                    logged.append(try await store.logExchange(Self.exchange(n)))
                    if n % 3 == 0 { _ = try await store.logExchange(Self.exchange(n, conversation: .existing(logged[n].conversationID))) }
                }
                func check(_ step: String) async throws {
                    let scanned = try Self.usageByScan(database)
                    #expect(try await Self.usageByStatus(store) == scanned, "\(step)")
                }
                try await check("logged")
                _ = try await store.rotateDataKey(RotationOptions(newKey: true, batchSize: 7))
                try await check("data key rotated")
                _ = try await store.rotateIndexKey(RotationOptions(newKey: true, batchSize: 11))
                try await check("index key rotated")
                _ = try await store.retireUnusedKeys()
                try await check("retired")
                #expect(try await store.deleteConversation(logged[0].conversationID))
                try await check("deleted")
                // Back to schema 5 with the totals lost: migration 6 counts them from the rows.
                try database.psql(
                    """
                    \(PostgresSchemaTests.undoMigration10)
                    \(PostgresSchemaTests.undoMigration7)
                    DROP TABLE key_usage, key_usage_deltas;
                    ALTER TABLE row_count_deltas DROP COLUMN data_key_id, DROP COLUMN data_key_rows, DROP COLUMN index_key_id,
                        DROP COLUMN index_key_rows;
                    DROP FUNCTION chatlog_count_key_usage CASCADE;
                    DROP FUNCTION chatlog_count_conversation_key_change CASCADE;
                    DELETE FROM chatlog_migrations WHERE version IN (6, 7, 8, 9)
                    """)
                let reopened = try await ChatLogStore.open(url: location, key: .key(key))
                defer { try? reopened.close() }
                #expect(try await Self.usageByStatus(reopened) == (try Self.usageByScan(database)))
                _ = try await reopened.prune(olderThan: Date().addingTimeInterval(60))
                try Self.fold(database)
                #expect(try await Self.usageByStatus(reopened).isEmpty)
                #expect(try Self.usageByScan(database).isEmpty)
            }
        }

        @Test("stats without a filter (migration 0008's totals) equals a scan after writers, appends, single-message deletes racing appends, a conversation emptied and refilled, deletes, prune and folds")
        func totalsFollowEveryWrite() async throws {
            try await withPostgresLocation { location, database in
                let key = MasterKey.generate()
                let store = try await ChatLogStore.create(url: location, key: .key(key))
                defer { try? store.close() }
                let other = try await ChatLogStore.open(url: location, key: .key(key))
                defer { try? other.close() }
                let storage = try #require(store.storage)
                let zero = [StatsRow(group: nil, conversations: 0, messages: 0, promptTokens: 0, completionTokens: 0)]
                #expect(try await store.stats() == zero && (try Self.statsByScan(database)) == zero)
                func check(_ step: Comment) async throws {
                    #expect(try await store.stats() == (try Self.statsByScan(database)), step)
                }
                var logged: [LoggedExchange] = []
                for n in 0..<12 { logged.append(try await store.logExchange(Self.exchange(n))) }
                for n in 0..<4 { logged.append(try await other.logExchange(Self.exchange(n, conversation: .existing(logged[n].conversationID)))) }
                try await check("logged and appended")
                // A conversation's every message deleted (it no longer counts), then a new message in it (it counts again).
                let emptied = logged[1]
                let its = try await storage.messages(ofConversation: emptied.conversationID.rawValue).map(\.id)
                #expect(try await storage.deleteMessages(its) == its.count)
                try await check("a conversation emptied")
                _ = try await store.logExchange(Self.exchange(50, conversation: .existing(emptied.conversationID)))
                try await check("the emptied conversation refilled")
                // The first message of another deleted: the conversation still has messages.
                #expect(try await storage.deleteMessages([logged[2].messageIDs[0].rawValue]) == 1)
                try await check("a first message deleted")
                // Deleting a conversation's last messages while another handle appends to it, ten times.
                for round in 0..<10 {
                    let target = try await store.logExchange(Self.exchange(100 + round))
                    async let appended = other.logExchange(Self.exchange(200 + round, conversation: .existing(target.conversationID)))
                    let deleted = try await storage.deleteMessages(target.messageIDs.map(\.rawValue))
                    _ = try await appended
                    #expect(deleted == 2)
                    try await check("delete racing an append, round \(round)")
                }
                try Self.fold(database)
                try await check("folded")
                #expect(try await other.deleteConversation(logged[3].conversationID))
                try await check("a conversation deleted")
                _ = try await store.prune(olderThan: Date().addingTimeInterval(60))
                try await check("pruned")
                #expect(try await store.stats() == zero)
            }
        }

        /// A psql session of its own that has begun a transaction and taken migration 0012's key-change
        /// lock with `function` (exclusive or shared); `COMMIT` on its stdin releases it.
        /// A new store with one exchange logged, while another session (psql) holds the key-change
        /// lock through `function` inside an open transaction, seen granted with `held` (a pg_locks
        /// condition); `body` gets the store, the database and what ends that transaction (COMMIT).
        static func withKeyChangeLockHeld(
            _ function: String, _ held: String, _ body: (ChatLogStore, PostgresDatabase, _ release: () -> Void) async throws -> Void
        ) async throws {
            try await withPostgresLocation { location, database in
                let store = try await ChatLogStore.create(url: location, key: .key(MasterKey.generate()))
                defer { try? store.close() }
                _ = try await store.logExchange(Self.exchange(0))
                let server = database.server
                let holder = try ChildProcess(
                    server.binaries + "/psql",
                    ["-X", "-q", "-h", server.socketDirectory, "-p", String(server.port), "-U", server.superuser, "-d", database.name],
                    stdin: .pipe)
                defer { holder.stop() }
                holder.writeStdin(Data("BEGIN;\nSELECT \(function)(\(PostgresStorage.lockClass), \(PostgresStorage.keyChangeLock));\n".utf8))
                #expect(try await eventually { try await database.psqlOffPool(Self.keyChangeLockCount + held) == "1" })
                try await body(store, database) {
                    holder.writeStdin(Data("COMMIT;\n".utf8))
                    holder.closeStdin()
                }
            }
        }

        /// The key-change lock's rows in pg_locks of this database (pg_locks lists the whole
        /// cluster's, where other tests' stores take the same lock), to be completed with a
        /// condition (granted, mode).
        static let keyChangeLockCount = """
            SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = \(PostgresStorage.lockClass)
            AND objid = \(PostgresStorage.keyChangeLock) AND objsubid = 2
            AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND
            """

        @Test("an append that names keys other than the active ones (chatlog_append's general case, migration 0012) counts them in key_usage_deltas: rows per key equal a scan before and after a fold")
        func appendUnderOtherKeysIsCounted() async throws {
            try await withPostgresLocation { location, database in
                let store = try await ChatLogStore.create(url: location, key: .key(MasterKey.generate()))
                defer { try? store.close() }
                _ = try await store.logExchange(Self.exchange(0))
                _ = try await store.rotateDataKey(RotationOptions(newKey: true))
                let other = try database.psql("SELECT min(id) FROM keys WHERE kind = 'data' AND state <> 'active'")
                try database.psql(Self.appendUnder(other))
                #expect(try database.psql("SELECT count(*) FROM key_usage_deltas WHERE key_id = \(other) AND row_count = 1") == "1")
                #expect(try await Self.usageByStatus(store) == (try Self.usageByScan(database)))
                #expect(try Self.usageByScan(database)[Int64(other)!] == 1)
                #expect(try await store.stats() == (try Self.statsByScan(database)))
                try Self.fold(database)
                #expect(try await Self.usageByStatus(store) == (try Self.usageByScan(database)))
            }
        }

        /// `chatlog_append` itself (its general case), with one message under `secondKey` for its data key
        /// and one without terms: only the guard's values must be right (the stored check value, the
        /// active keys).
        static func appendUnder(_ secondKey: String) -> String {
            """
            SELECT * FROM chatlog_append(
                NULL, 'c-other', 1, 1, (SELECT id FROM keys WHERE state = 'active' AND kind = 'data'), NULL, NULL, NULL, NULL, NULL,
                ARRAY['m-1', 'm-2'], ARRAY['user', 'assistant'], ARRAY[1, 2]::bigint[], ARRAY[NULL, NULL]::text[],
                ARRAY[3, NULL]::bigint[], ARRAY[NULL, 4]::bigint[], ARRAY[NULL, NULL]::bigint[], ARRAY[NULL, NULL]::text[],
                ARRAY[(SELECT id FROM keys WHERE state = 'active' AND kind = 'data'), \(secondKey)]::bigint[], ARRAY['\\x01', '\\x02']::bytea[],
                ARRAY[NULL, NULL]::bytea[], ARRAY[(SELECT id FROM keys WHERE state = 'active' AND kind = 'index'), NULL]::bigint[],
                ARRAY[1]::bigint[], ARRAY[42]::bigint[],
                ARRAY[(SELECT blob_value FROM chatlog_meta WHERE name = 'master_check')],
                (SELECT id FROM keys WHERE state = 'active' AND kind = 'data'), (SELECT id FROM keys WHERE state = 'active' AND kind = 'index'))
            """
        }

        @Test("the key-id columns have no foreign keys since migration 0013: an append naming a key the store lacks is refused whole, a key row cannot be deleted, and verify reports a row naming an index key the store lacks")
        func keyIDsWithoutForeignKeys() async throws {
            try await withPostgresLocation { location, database in
                let store = try await ChatLogStore.create(url: location, key: .key(MasterKey.generate()))
                defer { try? store.close() }
                let logged = try await store.logExchange(Self.exchange(0))
                let before = try await store.stats()
                // chatlog_append's general case checks each key it names, once.
                do {
                    try database.psql(Self.appendUnder("4000000"))
                    Issue.record("an append under key 4000000 was written")
                } catch {
                    #expect("\(error)".contains("key 4000000 is not a key of this store"), "\(error)")
                }
                #expect(try database.psql("SELECT count(*) FROM conversations WHERE id = 'c-other'") == "0")
                #expect(try await store.stats() == before)
                // Key rows stay: neither DELETE nor TRUNCATE.
                let keys = try database.psql("SELECT count(*) FROM keys")
                for statement in ["DELETE FROM keys", "DELETE FROM keys WHERE kind = 'index'", "TRUNCATE keys CASCADE"] {
                    do {
                        try database.psql(statement)
                        Issue.record("\(statement) was allowed")
                    } catch {
                        #expect("\(error)".contains("key rows are never deleted"), "\(error)")
                    }
                }
                #expect(try database.psql("SELECT count(*) FROM keys") == keys)
                // A damaged index key id the constraint would have refused: verify names the row and column.
                try database.psql("UPDATE messages SET index_key_id = 4000000 WHERE id = '\(logged.messageIDs[0].rawValue)'")
                let report = try await store.verify()
                #expect(
                    report.issues.contains { $0.table == "messages" && $0.column == "index_key_id" && $0.rowID == logged.messageIDs[0].rawValue },
                    "\(report.issues)")
            }
        }

        @Test("an append waits while a key change holds the key-change lock (migration 0012), then commits under the keys it finds")
        func appendWaitsForAKeyChange() async throws {
            // As `replaceKeys` holds it: exclusively.
            try await Self.withKeyChangeLockHeld("pg_advisory_xact_lock", " granted") { store, database, release in
                let append = Task { try await store.logExchange(Self.exchange(1)) }
                #expect(
                    try await eventually { try await database.psqlOffPool(Self.keyChangeLockCount + " NOT granted") == "1" },
                    "the append does not wait for the lock")
                #expect(try database.psql("SELECT count(*) FROM messages") == "2")
                release()
                _ = try await append.value
                #expect(try database.psql("SELECT count(*) FROM messages") == "4")
                #expect(try await Self.usageByStatus(store) == (try Self.usageByScan(database)))
            }
        }

        @Test("a key change waits while an append holds the key-change lock shared (migration 0012), then commits; the next append is sealed under the new key")
        func aKeyChangeWaitsForAnAppendInFlight() async throws {
            // As `chatlog_append` holds it: shared.
            try await Self.withKeyChangeLockHeld("pg_advisory_xact_lock_shared", " granted AND mode = 'ShareLock'") { store, database, release in
                let before = try database.psql("SELECT id FROM keys WHERE state = 'active' AND kind = 'data'")
                let rotation = Task { try await store.rotateDataKey(RotationOptions(newKey: true)) }
                #expect(
                    try await eventually { try await database.psqlOffPool(Self.keyChangeLockCount + " NOT granted AND mode = 'ExclusiveLock'") == "1" },
                    "the key change does not wait for the lock")
                #expect(try database.psql("SELECT id FROM keys WHERE state = 'active' AND kind = 'data'") == before)
                release()
                _ = try await rotation.value
                let after = try database.psql("SELECT id FROM keys WHERE state = 'active' AND kind = 'data'")
                #expect(after != before)
                let logged = try await store.logExchange(Self.exchange(1))
                #expect(try database.psql("SELECT DISTINCT key_id FROM messages WHERE id IN ('\(logged.messageIDs.map(\.rawValue).joined(separator: "', '"))')") == after)
            }
        }

        @Test("a reader that finds many unfolded deltas folds them; the numbers do not change")
        func readerFolds() async throws {
            try await withPostgresLocation { location, database in
                let store = try await ChatLogStore.create(url: location, key: .key(MasterKey.generate()))
                defer { try? store.close() }
                for n in 0..<3 { _ = try await store.logExchange(Self.exchange(n)) }
                // Deltas that add up to nothing, as many as short-lived writers would leave.
                try database.psql("INSERT INTO row_count_deltas SELECT 1, -1 FROM generate_series(1, 1500); INSERT INTO row_count_deltas SELECT -1, 1 FROM generate_series(1, 1500)")
                #expect(try await store.counts() == (3, 6))
                #expect(try database.psql("SELECT count(*) FROM row_count_deltas") == "0")
                #expect(try database.psql("SELECT conversations || ',' || messages FROM row_counts") == "3,6")
                #expect(try await store.counts() == (3, 6))
            }
        }

        @Test("a store written before migration 0005 gets its counts from its rows; copy into PostgreSQL is counted")
        func migrationAndCopy() async throws {
            try await withPostgresLocation { location, database in
                let key = MasterKey.generate()
                do {
                    let store = try await ChatLogStore.create(url: location, key: .key(key))
                    defer { try? store.close() }
                    for n in 0..<7 { _ = try await store.logExchange(Self.exchange(n)) }
                }
                // Back to schema 4, as a store of the previous release.
                try database.psql(
                    """
                    \(PostgresSchemaTests.undoMigration10)
                    \(PostgresSchemaTests.undoMigration7)
                    DROP TABLE row_counts, row_count_deltas, key_usage, key_usage_deltas;
                    DROP FUNCTION chatlog_count_rows, chatlog_count_key_usage CASCADE;
                    DROP FUNCTION chatlog_count_conversation_key_change CASCADE;
                    DELETE FROM chatlog_migrations WHERE version IN (5, 6, 7, 8, 9)
                    """)
                // A read-only open applies no migration: it says what to do instead of failing on a
                // table it lacks (`chatlog key status` on an upgraded binary).
                var readOnly = ChatLogStore.Options()
                readOnly.readOnly = true
                await #expect(throws: ChatLogError.invalidInput(
                    "\(try PostgresLocation(url: location).description) has schema version 4 and needs an upgrade to \(PostgresSchema.latestVersion), which a read-only command does not do; run a chatlog command that writes on it once (with a role that may create tables)")) {
                    try await ChatLogStore.open(url: location, key: .key(key), options: readOnly)
                }
                let reopened = try await ChatLogStore.open(url: location, key: .key(key))
                defer { try? reopened.close() }
                #expect(try await reopened.counts() == (7, 14))
                let reader = try await ChatLogStore.open(url: location, key: .key(key), options: readOnly)
                defer { try? reader.close() }
                #expect(try await reader.counts() == (7, 14))
                #expect(try database.psql("SELECT count(*) FROM chatlog_migrations WHERE version IN (5, 6, 8)") == "3")
                #expect(try await reopened.stats() == (try Self.statsByScan(database)))
            }
            // copy's multi-row inserts into a new PostgreSQL store.
            try await withSQLiteLocation { path in
                let key = MasterKey.generate()
                let source = try ChatLogStore.create(at: path, key: .key(key))
                defer { try? source.close() }
                for n in 0..<9 { _ = try await source.logExchange(Self.exchange(n)) }
                try await withPostgresLocation { url, database in
                    _ = try await source.copy(to: url)
                    let remote = try await ChatLogStore.open(url: url, key: .key(key))
                    defer { try? remote.close() }
                    #expect(try await remote.counts() == (9, 18))
                    let stats = try await remote.stats()
                    #expect(stats == (try Self.statsByScan(database)) && stats.first?.promptTokens == 9 * 7)
                    #expect(try Self.truth(database) == (9, 18))
                }
            }
        }
    }
}
