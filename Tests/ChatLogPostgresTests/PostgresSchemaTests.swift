import Foundation
import Synchronization
import Testing
import _ConnectionPoolModule

@testable import ChatLog
@testable import ChatLogPostgres

extension PostgreSQLSuites {
    /// migrations/postgres/ applied to a real server: the tables the SQLite schema has, once even
    /// when several processes open a new store together, and a newer schema refused.
    @Suite("PostgreSQL schema")
    struct PostgresSchemaTests {
        /// SQL that takes a store back to before migration 0007 (erasure), for the tests that take it
        /// further back (its version row deleted with theirs).
        static let undoMigration7 = """
            DROP FUNCTION chatlog_refuse_forgotten_subject_key CASCADE;
            ALTER TABLE conversations DROP COLUMN erasure_key_id;
            DROP TABLE forgotten_subject_keys, forget_pending, forget_receipts;
            """

        /// Back to the schema before migration 10: the terms as rows of `message_terms` (as migrations 1 and 4 left it),
        /// and the version rows of the migrations after 10 removed (they run again after 10: the last one's `chatlog_append`
        /// is the one that stays, and 11 drops again the INSERT triggers an earlier migration that runs again makes).
        static let undoMigration10 = """
            DELETE FROM chatlog_migrations WHERE version > 10;
            CREATE TABLE message_terms (message_seq BIGINT NOT NULL, term BIGINT NOT NULL, created_at BIGINT NOT NULL, PRIMARY KEY (message_seq, term));
            CREATE INDEX message_terms_by_term ON message_terms (term, created_at, message_seq);
            INSERT INTO message_terms SELECT m.seq, t, m.created_at FROM messages m, unnest(m.terms) AS t;
            DROP INDEX messages_by_term;
            ALTER TABLE messages DROP COLUMN terms;
            DELETE FROM chatlog_migrations WHERE version = 10;
            """

        @Test("migration 10 moves a store's term rows into each message's `terms` column: the same terms, the GIN index built, the table gone; searches and verify as before")
        func migrationTenMovesTerms() async throws {
            try await withPostgresLocation { location, database in
                let key = MasterKey.generate()
                var expected: [String: String] = [:]
                do {
                    let store = try await ChatLogStore.create(url: location, key: .key(key))
                    defer { try? store.close() }
                    for n in 0..<6 {
                        _ = try await store.logExchange(
                            ModelExchange(
                                conversation: .new(NewConversation(title: "t\(n)")), prompt: [NewMessage(role: .user, content: "question\(n) about refunds")],
                                completion: NewMessage(role: .assistant, content: n == 5 ? "?!" : "answer\(n) shared words")))
                    }
                    let rows = try database.psql("SELECT id || '=' || coalesce(array_to_string(terms, ','), '') FROM messages ORDER BY seq")
                    for line in rows.split(separator: "\n") {
                        let parts = line.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                        expected[String(parts[0])] = String(parts[1])
                    }
                }
                #expect(expected.count == 12 && expected.values.filter(\.isEmpty).count == 1)
                try database.psql(Self.undoMigration10)
                #expect(try database.psql("SELECT count(*) FROM message_terms") != "0")
                let reopened = try await ChatLogStore.open(url: location, key: .key(key))
                defer { try? reopened.close() }
                #expect(try database.psql("SELECT max(version) FROM chatlog_migrations") == "\(PostgresSchema.latestVersion)")
                #expect(try database.psql("SELECT to_regclass('message_terms') IS NULL") == "t")
                #expect(try database.psql("SELECT count(*) FROM pg_indexes WHERE indexname = 'messages_by_term' AND indexdef LIKE '%USING gin%'") == "1")
                var migrated: [String: String] = [:]
                for line in try database.psql("SELECT id || '=' || coalesce(array_to_string(terms, ','), '') FROM messages ORDER BY seq").split(separator: "\n") {
                    let parts = line.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                    migrated[String(parts[0])] = String(parts[1])
                }
                #expect(migrated == expected)
                #expect(try await reopened.search("refunds").hits.count == 6)
                #expect(try await reopened.search("answer3 shared").hits.count == 1)
                #expect(try await reopened.verify().ok)
                // Written after the migration: the same path.
                _ = try await reopened.logExchange(
                    ModelExchange(conversation: .new(NewConversation(title: "after")), prompt: [NewMessage(role: .user, content: "refunds again")],
                                  completion: NewMessage(role: .assistant, content: "ok")))
                #expect(try await reopened.search("refunds", limit: 50).hits.count == 7)
            }
        }

        @Test("the migrations create the mirrored tables and record their version; a second run changes nothing")
        func migrationsApply() async throws {
            try await withPostgresStorage { storage, server, database in
                #expect(try await PostgresSchema.version(storage) == PostgresSchema.latestVersion)
                #expect(PostgresSchema.latestVersion >= 1)
                let tables = try server.psql(
                    "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'", database: database)
                #expect(
                    tables
                        == "chatlog_meta,chatlog_migrations,conversations,forget_pending,forget_receipts,forgotten_subject_keys,imports,key_usage,key_usage_deltas,keys,messages,proxy_threads,proxy_tokens,row_count_deltas,row_counts"
                )
                try await storage.migrate()
                #expect(try server.psql("SELECT count(*) FROM chatlog_migrations", database: database) == String(PostgresSchema.migrations.count))
            }
        }

        @Test("every sealed column of the SQLite schema exists on PostgreSQL under the same table and column name")
        func sealedColumnsMirrored() async throws {
            try await withPostgresStorage { _, server, database in
                let sealed = [
                    ("conversations", "title"), ("conversations", "subject"), ("conversations", "metadata"), ("messages", "content"),
                    ("messages", "metadata"), ("keys", "wrapped"),
                ]
                for (table, column) in sealed {
                    let type = try server.psql(
                        "SELECT data_type FROM information_schema.columns WHERE table_name = '\(table)' AND column_name = '\(column)'", database: database)
                    #expect(type == "bytea", "\(table).\(column)")
                }
            }
        }

        @Test("four storages migrating one new database at once apply each migration once")
        func concurrentMigrations() async throws {
            let server = try await PostgresTestServer.shared()
            try await server.withDatabase { database in
                let url = server.url(database: database)
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for _ in 0..<4 {
                        group.addTask {
                            let storage = try await PostgresStorage.connect(try PostgresLocation(url: url, environment: [:], home: nil))
                            do { try await storage.migrate() } catch {
                                await storage.close()
                                throw error
                            }
                            await storage.close()
                        }
                    }
                    try await group.waitForAll()
                }
                #expect(try server.psql("SELECT count(*) FROM chatlog_migrations", database: database) == String(PostgresSchema.migrations.count))
            }
        }

        @Test("a database migrated by a newer chatlog is refused")
        func newerSchemaRefused() async throws {
            try await withPostgresStorage { storage, server, database in
                try server.psql("INSERT INTO chatlog_migrations (version, name) VALUES (9999, 'future')", database: database)
                await #expect(throws: ChatLogError.schemaTooNew(found: 9999, supported: PostgresSchema.latestVersion)) {
                    try await storage.migrate()
                }
            }
        }

        @Test("the statement splitter keeps quotes, dollar quotes and comments intact")
        func statementSplitter() {
            let sql = """
                -- a comment; with a semicolon
                CREATE TABLE a (x TEXT DEFAULT 'semi;colon', "we;ird" INT);
                /* block; comment */ INSERT INTO a VALUES ('it''s;', 1);
                CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;
                ;
                SELECT $$;$$
                """
            #expect(
                PostgresSchema.statements(sql) == [
                    "CREATE TABLE a (x TEXT DEFAULT 'semi;colon', \"we;ird\" INT)",
                    "INSERT INTO a VALUES ('it''s;', 1)",
                    "CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql",
                    "SELECT $$;$$",
                ])
        }
    }
}

extension PostgreSQLSuites {
    /// Errors a user can cause, each one line naming the place, never a password.
    @Suite("PostgreSQL connection errors")
    struct PostgresConnectionErrorTests {
        @Test("no server on the socket: one line saying it cannot connect")
        func serverDown() async throws {
            let folder = NSTemporaryDirectory() + "/chatlog-nopg-\(UUID().uuidString)"
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: folder) }
            let location = try PostgresLocation(url: "postgresql://u@/d?host=\(folder)", environment: ["PGPASSWORD": "hunter2"], home: nil)
            do {
                _ = try await PostgresStorage.connect(location)
                Issue.record("connected to nothing")
            } catch {
                #expect(error.description.contains("cannot connect to the PostgreSQL server at postgresql://u@\(folder)/.s.PGSQL.5432/d"), "\(error)")
                #expect(!error.description.contains("\n"))
                #expect(!error.description.contains("hunter2"))
            }
        }

        /// chatlog asks for the server's TCP keepalives as startup parameters (its pool sends no keep-alive
        /// query); PgBouncer refuses startup parameters it does not know. A server that refuses one
        /// (PostgreSQL refuses an unknown name the same way) is connected to without them.
        @Test("startup settings the server refuses are left out, those it takes are in every pooled session")
        func startupSettingsRefused() async throws {
            let server = try await PostgresTestServer.shared()
            try await server.withDatabase { database in
                let location = try PostgresLocation(url: server.url(database: database), environment: [:], home: nil)
                let refused = try await PostgresStorage.connect(location, sessionSettings: [("statement_timeout", "4321"), ("tcp_keepalives_bogus", "1")])
                let fallback = try await refused.client.query("SELECT current_setting('statement_timeout')")
                for try await value in fallback.decode(String.self) { #expect(value == "0", "the refused set was half applied: \(value)") }
                await refused.close()
                let taken = try await PostgresStorage.connect(location, sessionSettings: [("statement_timeout", "4321")])
                for _ in 0..<3 {
                    let rows = try await taken.client.query("SELECT current_setting('statement_timeout')")
                    for try await value in rows.decode(String.self) { #expect(value == "4321ms") }
                }
                await taken.close()
            }
        }

        @Test("a database that does not exist: named, with what to do")
        func missingDatabase() async throws {
            let server = try await PostgresTestServer.shared()
            let location = try PostgresLocation(url: server.url(database: "no_such_db"), environment: [:], home: nil)
            do {
                _ = try await PostgresStorage.connect(location)
                Issue.record("connected to a missing database")
            } catch {
                #expect(error.description.contains("has no database no_such_db"), "\(error)")
            }
        }

        /// postgres-nio's pool keeps a statement waiting while it retries connecting (up to a
        /// minute, its circuit breaker) and passes its own error type on as it is: each was
        /// reported as "PostgreSQL at …: ConnectionPoolError" before.
        @Test("the database goes away after connecting: a statement waiting for a connection ends in one line when the storage closes; the pool giving up after a minute says it cannot connect")
        func databaseGoneAfterConnecting() async throws {
            let server = try await PostgresTestServer.shared()
            let name = "t_gone_\(UInt32.random(in: 0...UInt32.max))"
            try await server.psqlOffPool("CREATE DATABASE \(name)")
            let location = try PostgresLocation(url: server.url(database: name), environment: [:], home: nil)
            let storage = try await PostgresStorage.connect(location)
            try await server.psqlOffPool("DROP DATABASE \(name) WITH (FORCE)")
            let read = Task { () -> ChatLogError? in
                do throws(ChatLogError) { _ = try await storage.meta("store_id"); return nil } catch { return error }
            }
            try await Task.sleep(for: .milliseconds(300))
            await storage.close()
            let error = try #require(await finishing(within: 60, "the waiting statement") { await read.value })
            #expect(error.description == "storage error: the connection to PostgreSQL at \(location) was closed by chatlog", "\(error)")
            let tripped = PostgresErrors.map(ConnectionPoolError.connectionCreationCircuitBreakerTripped, location: location)
            #expect(tripped.description.contains("cannot connect to the PostgreSQL server at \(location): no new connection could be opened for a minute"), "\(tripped)")
            #expect(!tripped.description.contains("\n"))
        }

        @Test("a role that does not exist is refused with the user named")
        func unknownRole() async throws {
            let server = try await PostgresTestServer.shared()
            let location = try PostgresLocation(url: server.url(database: "postgres", user: "ghost"), environment: [:], home: nil)
            do {
                _ = try await PostgresStorage.connect(location)
                Issue.record("connected as a missing role")
            } catch {
                #expect(error.description.contains("ghost"), "\(error)")
                #expect(!error.description.contains("\n"))
            }
        }
    }
}

extension PostgreSQLSuites {
    /// Failures in the middle of work: one line each, with nothing of the transaction left behind.
    @Suite("PostgreSQL failures mid-work")
    struct PostgresMidWorkFailureTests {
        @Test("a bounded wait (the storage's close and ROLLBACK) returns when its work ends, or after its timeout when the work never does")
        func boundedWaitsEnd() async {
            #expect(await PostgresStorage.bounded(.seconds(30)) {})
            let timedOut = Mutex(false)
            let ended = await PostgresStorage.bounded(.milliseconds(50), { try? await Task.sleep(for: .seconds(30)) }, onTimeout: { timedOut.withLock { $0 = true } })
            #expect(!ended && timedOut.withLock { $0 })
        }

        /// Five sessions ended in a row: sending ROLLBACK on the closing connection hung the
        /// caller forever in about four runs of five (postgres-nio 1.33); a hang fails here after
        /// 60 s instead of stopping the test run.
        @Test("the server ends the session mid-transaction (restart, pg_terminate_backend): one line, nothing written, no hang")
        func sessionTerminated() async throws {
            try await withPostgresStorage { storage, server, database in
                try server.psql("CREATE TABLE probe (x int)", database: database)
                for trial in 0..<5 {
                    let victim = "victim-\(trial)-\(UUID().uuidString.prefix(8))"
                    let work = Task {
                        try await storage.transaction { connection in
                            try await connection.run("INSERT INTO probe VALUES (1)", logger: storage.logger)
                            try await connection.run("SELECT set_config('application_name', '\(unescaped: victim)', false), pg_sleep(30)", logger: storage.logger)
                        }
                    }
                    let found = try await waitUntil {
                        (try? server.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = '\(victim)' AND state = 'active'")) == "1"
                    }
                    try #require(found)
                    try server.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '\(victim)'")
                    let outcome = try await finishing(within: 60, "the transaction whose session ended") { await work.result }
                    let failure: (any Error)? = if case .failure(let error) = outcome { error } else { nil }
                    let text = (failure as? ChatLogError)?.description ?? "\(String(describing: failure))"
                    #expect(text.contains("PostgreSQL"), "\(text)")
                    #expect(text.contains("ended the session") || text.contains("closed the connection"), "\(text)")
                    #expect(!text.contains("\n"))
                    #expect(try server.psql("SELECT count(*) FROM probe", database: database) == "0")
                    // The pool replaces the dead connection: the next statement works.
                    let counts = try await finishing(within: 60, "the next statement") { try await storage.counts() }
                    #expect(counts == StorageCounts(conversations: 0, messages: 0))
                }
            }
        }

        /// The pool keeps one connection open without keep-alive or idle timers (one armed and cancelled
        /// per lease cost the writers a quarter of their CPU): when the server ends it while idle, the pool
        /// opens another by itself, and the store goes on with nothing lost.
        @Test("an idle store keeps one connection; when the server ends it, the pool opens another before any statement asks, and appends and reads go on")
        func idleConnectionReplaced() async throws {
            try await withPostgresLocation { location, database in
                let store = try await ChatLogStore.create(url: location, key: .key(MasterKey.generate()))
                defer { try? store.close() }
                let first = try await store.logExchange(
                    ModelExchange(conversation: .new(NewConversation()), prompt: [NewMessage(role: .user, content: "first question")],
                                  completion: NewMessage(role: .assistant, content: "first answer")))
                let sessions = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'chatlog pid %'"
                let ended = try database.psql(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'chatlog pid %' AND state = 'idle'")
                try #require(!ended.isEmpty, "no idle session of the store")
                for pid in ended.split(separator: "\n") { try database.psql("SELECT pg_terminate_backend(\(pid))") }
                // A new session with no statement from the store: the pool's minimum connection.
                let reopened = try await eventually(seconds: 30) {
                    let live = try await database.psqlOffPool(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'chatlog pid %'")
                    return !live.isEmpty && live.split(separator: "\n").allSatisfy { !ended.split(separator: "\n").contains($0) }
                }
                #expect(reopened, "the pool did not open a connection after the server ended its idle one")
                let second = try await finishing(within: 60, "an append after the idle session ended") {
                    try await store.logExchange(
                        ModelExchange(conversation: .existing(first.conversationID), prompt: [NewMessage(role: .user, content: "second question")],
                                      completion: NewMessage(role: .assistant, content: "second answer")))
                }
                #expect(second.conversationID == first.conversationID)
                #expect(try await store.search("question", limit: 10).hits.count == 2)
                #expect(Int(try database.psql(sessions)) ?? 0 >= 1)
            }
        }

        /// postgres-nio 1.33.2 leaves a statement written to a channel that has already closed
        /// waiting forever: before `PostgresConnection.statement` checked the channel on its event
        /// loop, 2 to 3 transactions in 300 hung here (of some 20 sessions ended), and the test
        /// suites hung now and then when one test ended another's sessions.
        @Test("the server ends sessions between statements (pg_terminate_backend at random moments): every transaction commits or fails in one line, none is left half-written, none hangs")
        func sessionsEndedBetweenStatements() async throws {
            try await withPostgresStorage { storage, server, database in
                try server.psql("CREATE TABLE probe (t int, x int)", database: database)
                // Sessions in a transaction only: ending new ones while they start up would keep the pool
                // failing to connect on a loaded machine (it retries for a minute), which is not the point.
                let stop = Mutex(false)
                let ender = Task.detached { () -> Int in
                    var ended = 0
                    while !stop.withLock({ $0 }) {
                        let count = try? await server.psqlOffPool(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '\(database)' AND pid <> pg_backend_pid() AND state IN ('active', 'idle in transaction')")
                        ended += count.flatMap { Int($0) } ?? 0
                        try? await Task.sleep(for: .milliseconds(Int.random(in: 1...30)))
                    }
                    return ended
                }
                var committed: [Int: Int] = [:]
                var failures = 0
                for trial in 0..<300 {
                    let rows = Int.random(in: 1...4)
                    let work = Task { () -> ChatLogError? in
                        do throws(ChatLogError) {
                            try await storage.transactionMapped { connection in
                                for _ in 0..<rows {
                                    try await connection.run("INSERT INTO probe VALUES (\(trial), 1)", logger: storage.logger)
                                }
                            }
                            return nil
                        } catch { return error }
                    }
                    let outcome = try await finishing(within: 60, "transaction \(trial) while sessions end") { await work.value }
                    if let error = outcome {
                        failures += 1
                        #expect(error.description.contains("PostgreSQL server at") && !error.description.contains("\n"), "\(error)")
                    } else {
                        committed[trial] = rows
                    }
                }
                stop.withLock { $0 = true }
                let ended = await ender.value
                #expect(ended > 0 && failures > 0, "no session was ended under a transaction (\(ended) ended)")
                // Each transaction is there whole or not at all.
                let stored = try server.psql("SELECT coalesce(string_agg(t || ':' || n, ',' ORDER BY t), '') FROM (SELECT t, count(*) n FROM probe GROUP BY t) s", database: database)
                #expect(stored == committed.sorted { $0.key < $1.key }.map { "\($0.key):\($0.value)" }.joined(separator: ","))
            }
        }

        @Test("a statement timeout: busy, one line, the transaction rolled back")
        func statementTimeout() async throws {
            try await withPostgresStorage { storage, server, database in
                try server.psql("CREATE TABLE probe (x int)", database: database)
                var failure: (any Error)?
                do {
                    try await storage.transaction { connection in
                        try await connection.run("INSERT INTO probe VALUES (1)", logger: storage.logger)
                        try await connection.run("SET LOCAL statement_timeout = 50", logger: storage.logger)
                        try await connection.run("SELECT pg_sleep(5)", logger: storage.logger)
                    }
                } catch { failure = error }
                let error = try #require(failure as? ChatLogError)
                #expect(error.category == .busy, "\(error)")
                #expect(error.description.contains("statement_timeout"), "\(error)")
                #expect(try server.psql("SELECT count(*) FROM probe", database: database) == "0")
            }
        }

        @Test("a failed statement whose rows nobody read: the transaction reports the failure, never a commit")
        func unseenFailureIsNotACommit() async throws {
            try await withPostgresStorage { storage, server, database in
                try server.psql("CREATE TABLE probe (x int)", database: database)
                var failure: (any Error)?
                do {
                    try await storage.transaction { connection in
                        try await connection.run("INSERT INTO probe VALUES (1)", logger: storage.logger)
                        try await connection.run("SET LOCAL statement_timeout = 50", logger: storage.logger)
                        // The row description comes before the timeout; the error after it is unread.
                        _ = try await connection.query("SELECT pg_sleep(5)", logger: storage.logger)
                    }
                } catch { failure = error }
                let error = try #require(failure as? ChatLogError)
                #expect(error.description.contains("nothing of it was written") || error.description.contains("statement_timeout"), "\(error)")
                #expect(try server.psql("SELECT count(*) FROM probe", database: database) == "0")
            }
        }

        @Test("no connection slot left for the role: busy, one line")
        func connectionLimit() async throws {
            let server = try await PostgresTestServer.shared()
            try await server.withDatabase { database in
                let role = "limited_\(UInt32.random(in: 0...UInt32.max))"
                try server.psql("CREATE ROLE \(role) LOGIN CONNECTION LIMIT 0")
                defer { _ = try? server.psql("DROP ROLE \(role)") }
                var failure: (any Error)?
                do {
                    _ = try await PostgresStorage.connect(try PostgresLocation(url: server.url(database: database, user: role), environment: [:], home: nil))
                } catch { failure = error }
                let error = try #require(failure as? ChatLogError)
                #expect(error.category == .busy, "\(error)")
                #expect(error.description.contains("too many connections"), "\(error)")
                #expect(!error.description.contains("\n"))
            }
        }
    }
}
