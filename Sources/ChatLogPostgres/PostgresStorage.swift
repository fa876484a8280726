import ChatLog
import Foundation
import Logging
import NIOCore
import NIOSSL
import PostgresNIO
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The PostgreSQL backend of the storage seam (docs/ARCHITECTURE.md §10): a connection pool
/// (postgres-nio's `PostgresClient`) on one database, whose tables mirror the SQLite ones
/// (migrations/postgres/). It stores and returns sealed bytes; it never holds a key.
///
/// Writes run under `READ COMMITTED`. A write that sealed under some keys first reads the stored
/// check value and the active key rows `FOR SHARE` (so a concurrent `key rotate`/`rewrap`, which
/// updates those rows, waits for it, and it sees their change if the job committed first), then
/// appends under the conversation row's lock (`FOR UPDATE`): positions are gap-free and unique
/// with any number of writer processes on any number of hosts.
package final class PostgresStorage: ChatLogStorage {
    package let postgresLocation: PostgresLocation
    package var location: String { postgresLocation.description }
    let client: PostgresClient
    private let runner: Task<Void, Never>
    let logger: Logger
    /// A snapshot view's one connection, inside its REPEATABLE READ READ ONLY transaction
    /// (``withSnapshot(_:)``): every read runs there; writes are refused.
    let pinned: PostgresConnection?

    /// Advisory lock keys (two 32-bit halves): the store's class, then what it guards. Advisory
    /// locks are per database, as a store is.
    static let lockClass: Int32 = 0x6368_6174  // "chat"
    static let keyJobLock: Int32 = 1
    static let migrationLock: Int32 = 2
    /// Transaction-level: exclusive while the keys or the master key's check value change
    /// (`replaceKeys`), shared by each `chatlog_append` (migration 0012) before it reads them.
    static let keyChangeLock: Int32 = 4

    private init(location: PostgresLocation, client: PostgresClient, runner: Task<Void, Never>, logger: Logger, pinned: PostgresConnection? = nil) {
        postgresLocation = location
        self.client = client
        self.runner = runner
        self.logger = logger
        self.pinned = pinned
    }

    /// Connects (one probe connection first, so that a server that is down, a wrong password or a
    /// TLS failure is one clear error at once instead of a pool retrying in the background).
    /// `sessionSettings` are sent at startup when the server takes them (``keepaliveSettings``; tests
    /// pass others).
    package static func connect(
        _ location: PostgresLocation, maximumConnections: Int = 8, sessionSettings: [(String, String)] = keepaliveSettings
    ) async throws(ChatLogError) -> PostgresStorage {
        let logger = Logger(label: "chatlog.postgres", factory: { _ in SwiftLogNoOpLogHandler() })
        var configuration: PostgresClient.Configuration
        var probe: PostgresConnection.Configuration
        let tls = try tlsConfiguration(location)
        switch location.endpoint {
        case .tcp(let host, let port):
            let clientTLS: PostgresClient.Configuration.TLS
            let connectionTLS: PostgresConnection.Configuration.TLS
            do {
                switch (location.sslMode, tls) {
                case (.disable, _), (_, nil):
                    clientTLS = .disable
                    connectionTLS = .disable
                case (.allow, let tls?), (.prefer, let tls?):
                    clientTLS = .prefer(tls)
                    connectionTLS = .prefer(try NIOSSLContext(configuration: tls))
                case (_, let tls?):
                    clientTLS = .require(tls)
                    connectionTLS = .require(try NIOSSLContext(configuration: tls))
                }
            } catch {
                throw .storage("TLS for \(location) could not be set up (\(error)); check sslrootcert")
            }
            configuration = .init(host: host, port: port, username: location.user, password: location.password, database: location.database, tls: clientTLS)
            probe = .init(host: host, port: port, username: location.user, password: location.password, database: location.database, tls: connectionTLS)
            if location.sslMode == .verifyFull {
                configuration.options.tlsServerName = host
                probe.options.tlsServerName = host
            }
        case .socket(let folder, let port):
            // libpq never uses TLS on a Unix socket; neither does chatlog.
            let path = "\(folder)/.s.PGSQL.\(port)"
            configuration = .init(unixSocketPath: path, username: location.user, password: location.password, database: location.database)
            probe = .init(unixSocketPath: path, username: location.user, password: location.password, database: location.database)
        }
        let application = location.applicationName ?? defaultApplicationName()
        configuration.options.connectTimeout = .seconds(Int64(location.connectTimeout))
        probe.options.connectTimeout = .seconds(Int64(location.connectTimeout))
        configuration.options.maximumConnections = max(1, maximumConnections)
        // No timer per lease: postgres-nio arms a keep-alive timer (when `keepAliveBehavior` is set) and an
        // idle timer (for connections beyond `minimumConnections`) each time a connection goes back to the
        // pool, and cancels them when it is leased again — two child tasks and a clock sleep each, which cost
        // the writers a quarter of their CPU per append (docs/PERFORMANCE.md "… and no timers per lease"). One
        // connection stays open without either; the others still close after a minute idle. Idle connections
        // are not pinged (as with libpq): the server's TCP keepalives (`keepaliveSettings`) keep them alive, and
        // one the server closes is noticed by its socket and replaced by the pool.
        configuration.options.minimumConnections = 1
        configuration.options.keepAliveBehavior = nil
        var settings = sessionSettings
        while true {
            probe.options.additionalStartupParameters = [("application_name", application)] + settings
            do {
                let connection = try await PostgresConnection.connect(configuration: probe, id: 0, logger: logger)
                try? await connection.close()
                break
            } catch where !settings.isEmpty && rejectsSetting(error, settings.map(\.0)) {
                // A pooler (PgBouncer refuses startup parameters it does not know) or a server without them:
                // once more without; the sessions then get the server's own keepalive settings.
                settings = []
            } catch {
                throw PostgresErrors.map(error, location: location)
            }
        }
        configuration.options.additionalStartupParameters = [("application_name", application)] + settings
        let client = PostgresClient(configuration: configuration, backgroundLogger: logger)
        let runner = Task { await client.run() }
        return PostgresStorage(location: location, client: client, runner: runner, logger: logger)
    }

    /// The server's TCP keepalives for each pooled session (ignored on a Unix socket), asked for at
    /// startup: probes after a minute idle keep a NAT's or firewall's mapping of an idle connection
    /// alive, and a client that vanished is noticed about 90 s later — what postgres-nio's keep-alive
    /// query did, without its timer per lease (see `connect`).
    package static let keepaliveSettings: [(String, String)] = [
        ("tcp_keepalives_idle", "60"), ("tcp_keepalives_interval", "10"), ("tcp_keepalives_count", "3"),
    ]

    /// Whether the server (or a pooler in front of it) refused the connection because of one of
    /// `names`, sent as startup parameters: PostgreSQL's "unrecognized configuration parameter",
    /// PgBouncer's "unsupported startup parameter".
    static func rejectsSetting(_ error: any Error, _ names: [String]) -> Bool {
        guard let error = error as? PSQLError, let message = error.serverInfo?[.message] else { return false }
        return (message.contains("configuration parameter") || message.contains("startup parameter")) && names.contains { message.contains($0) }
    }

    /// "chatlog pid N on HOST": what another key job's error names as the lock's holder.
    static func defaultApplicationName() -> String {
        var name = [CChar](repeating: 0, count: 256)
        let host = gethostname(&name, name.count - 1) == 0 ? String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) : "?"
        return String("chatlog pid \(getpid()) on \(host)".prefix(63))
    }

    static func tlsConfiguration(_ location: PostgresLocation) throws(ChatLogError) -> TLSConfiguration? {
        guard case .tcp = location.endpoint, location.sslMode != .disable else { return nil }
        var tls = TLSConfiguration.makeClientConfiguration()
        switch location.sslMode {
        case .disable: return nil
        case .allow, .prefer, .require:
            // libpq: `require` with a root certificate file present verifies like verify-ca.
            if location.sslMode == .require, let root = location.sslRootCert, root != "system", FileManager.default.fileExists(atPath: root) {
                tls.trustRoots = .file(root)
                tls.certificateVerification = .noHostnameVerification
            } else {
                tls.certificateVerification = .none
            }
        case .verifyCA, .verifyFull:
            if let root = location.sslRootCert, root != "system" {
                guard FileManager.default.isReadableFile(atPath: root) else {
                    throw .invalidInput("sslmode=\(location.sslMode.rawValue) needs the CA certificate file sslrootcert=\(root), which cannot be read")
                }
                tls.trustRoots = .file(root)
            } else {
                tls.trustRoots = .default
            }
            tls.certificateVerification = location.sslMode == .verifyFull ? .fullVerification : .noHostnameVerification
        }
        return tls
    }

    /// Cancelling the client's run task closes its connections (postgres-nio's way). Waited for at
    /// most ``closeTimeout``, a safety net: the connections are closing by then, so the caller goes
    /// on. (It was added for the test suites' intermittent hang, whose cause turned out to be a
    /// statement written to a closed connection: see ``PostgresConnection/statement(_:logger:file:line:)``.)
    package func close() async {
        guard pinned == nil else { return }  // a snapshot view: its store's connections stay
        runner.cancel()
        let runner = runner
        await Self.bounded(Self.closeTimeout) { await runner.value }
    }

    /// How long ``close()`` waits for the connection pool to end.
    static let closeTimeout: Duration = .seconds(10)

    /// Runs `work` in a task of its own and returns when it has ended (true) or once `timeout` has
    /// passed (false; `onTimeout` runs first), whichever comes first: what the driver may never
    /// answer must not hold the caller. `work` is not cancelled.
    @discardableResult
    static func bounded(
        _ timeout: Duration, _ work: @escaping @Sendable () async -> Void, onTimeout: @escaping @Sendable () async -> Void = {}
    ) async -> Bool {
        let once = ResumeOnce()
        return await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            let timer = Task {
                try? await Task.sleep(for: timeout)
                if !Task.isCancelled, once.claim() {
                    await onTimeout()
                    continuation.resume(returning: false)
                }
            }
            Task {
                await work()
                if once.claim() {
                    timer.cancel()
                    continuation.resume(returning: true)
                }
            }
        }
    }

    // MARK: - Running statements

    /// Runs `body` in one transaction (READ COMMITTED) on one leased connection; errors become
    /// ``ChatLogError``s, except a ``StorageConflict``, which the caller handles.
    ///
    /// Not postgres-nio's `withTransaction`: PostgreSQL answers `COMMIT` of a transaction that a
    /// failed statement aborted with a successful "ROLLBACK", so an error that went unseen would be
    /// reported as a commit. Every statement's rows are read to the end (`run`, the decode
    /// loops), and `COMMIT`'s command tag is checked: "ROLLBACK" means the transaction had been
    /// aborted, and is reported as the failed statement's error (25P02). (Until 2026-12-06 a
    /// `SELECT 1` before `COMMIT` asked instead: one more round trip per transaction.)
    func transaction<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        var attempts = 0
        while true {
            do {
                return try await transactionOnce(body)
            } catch let lost as LostBeforeBegin where attempts < 2 {
                // A pooled connection the server had already closed (a restart): nothing was sent
                // on it, so the transaction starts again on another.
                attempts += 1
                _ = lost
            } catch let lost as LostBeforeBegin {
                throw PostgresErrors.map(lost.error, location: postgresLocation)
            }
        }
    }

    /// `COMMIT`, failing when the server answers that it rolled the transaction back instead (a
    /// statement in it failed, perhaps one whose error nobody read).
    static func commit(_ connection: PostgresConnection, logger: Logger) async throws {
        // The future-returning `query` gives the command tag; the async one does not.
        // Sent from the event loop only while the channel is open (see `statement`).
        let result = connection.eventLoop.flatSubmit { () -> EventLoopFuture<PostgresQueryResult> in
            do { try connection.requireOpen() } catch { return connection.eventLoop.makeFailedFuture(error) }
            return connection.query("COMMIT", logger: logger)
        }
        let tag = try await result.get().metadata.command
        guard tag == "COMMIT" else { throw AbortedTransaction() }
    }

    /// `COMMIT` was answered with `ROLLBACK`: the transaction had been aborted by a failed statement.
    struct AbortedTransaction: Error {}

    /// The connection was found closed at `BEGIN`: nothing of the transaction ran.
    struct LostBeforeBegin: Error { let error: any Error }

    private func transactionOnce<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        if pinned != nil { throw ChatLogError.invalidInput("a snapshot of a PostgreSQL store is read-only") }
        do {
            return try await client.withConnection { connection in
                do { try await connection.run("BEGIN", logger: logger) } catch where Self.sessionEnded(by: error, on: connection) {
                    await Self.discard(connection)
                    throw LostBeforeBegin(error: error)
                }
                do {
                    let value = try await body(connection)
                    try await Self.commit(connection, logger: logger)
                    if UInt8.random(in: 0..<Self.foldOneIn) == 0 { await foldRowCounts(connection) }
                    return value
                } catch {
                    // A session that ended (the server closed it, or sent FATAL: restart,
                    // pg_terminate_backend) has already rolled the transaction back. Sending
                    // ROLLBACK on a connection that is closing was seen to hang forever in
                    // postgres-nio 1.33 (the statement is never answered nor failed).
                    if Self.sessionEnded(by: error, on: connection) {
                        await Self.discard(connection)
                    } else {
                        await Self.rollback(connection, logger: logger)
                    }
                    throw error
                }
            }
        } catch let error as StorageConflict {
            throw error
        } catch let error as LostBeforeBegin {
            throw error
        } catch {
            // Migration 0007's trigger: a new conversation under a forgotten subject key.
            if let key = Self.forgottenSubjectKey(error) { throw StorageConflict.forgottenSubjectKey(key) }
            throw PostgresErrors.map(error, location: postgresLocation)
        }
    }

    /// Whether `error` ended the session that ran the transaction: then the server has rolled
    /// it back and the connection takes no more statements.
    static func sessionEnded(by error: any Error, on connection: PostgresConnection) -> Bool {
        if connection.isClosed { return true }
        guard let error = error as? PSQLError else { return false }
        switch error.code {
        case .serverClosedConnection, .uncleanShutdown, .connectionError, .clientClosedConnection:
            return true
        case .server:
            let severity = error.serverInfo?[.severity]
            return severity == "FATAL" || severity == "PANIC"
        default:
            return false
        }
    }

    /// A connection whose session ended, closed to the end before the pool gets it back: a
    /// connection still closing when it is leased again took the next statement and never answered
    /// it (postgres-nio 1.33; PostgresMidWorkFailureTests hung in about one run of three under load).
    static func discard(_ connection: PostgresConnection) async {
        try? await connection.close()
    }

    /// How long a ROLLBACK may take before the connection is given up.
    static let rollbackTimeout: Duration = .seconds(10)

    /// ROLLBACK, bounded: should the server or the driver never answer, the connection is closed
    /// after ``rollbackTimeout`` (the server rolls back a transaction whose session ends) and the
    /// caller goes on with its error instead of waiting forever.
    static func rollback(_ connection: PostgresConnection, logger: Logger) async {
        await bounded(rollbackTimeout, { _ = try? await connection.run("ROLLBACK", logger: logger) }, onTimeout: { try? await connection.close() })
    }

    func transactionMapped<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws(ChatLogError) -> T {
        do { return try await transaction(body) } catch let error as ChatLogError { throw error } catch {
            throw PostgresErrors.map(error, location: postgresLocation)
        }
    }

    /// A read outside any transaction (one statement). A read on a pooled connection that the
    /// server had closed (a restart, a terminated session) runs again on another: reading twice
    /// changes nothing.
    func read<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws(ChatLogError) -> T {
        if let pinned {
            do { return try await body(pinned) } catch let error as ChatLogError { throw error } catch {
                throw PostgresErrors.map(error, location: postgresLocation)
            }
        }
        var attempts = 0
        while true {
            do {
                return try await client.withConnection { connection in
                    do { return try await body(connection) } catch where Self.sessionEnded(by: error, on: connection) {
                        await Self.discard(connection)
                        throw LostBeforeBegin(error: error)
                    }
                }
            } catch let lost as LostBeforeBegin {
                attempts += 1
                if attempts < 3 { continue }
                throw PostgresErrors.map(lost.error, location: postgresLocation)
            } catch {
                throw PostgresErrors.map(error, location: postgresLocation)
            }
        }
    }

    // MARK: - Schema

    package func migrate() async throws(ChatLogError) {
        try await PostgresSchema.migrate(self)
    }

    package func requireCurrentSchema() async throws(ChatLogError) {
        let applied = try await PostgresSchema.version(self)
        let latest = PostgresSchema.latestVersion
        if applied > latest { throw .schemaTooNew(found: applied, supported: latest) }
        if applied < latest {
            throw .invalidInput(
                "\(location) has schema version \(applied) and needs an upgrade to \(latest), which a read-only command does not do; run a chatlog command that writes on it once (with a role that may create tables)")
        }
    }

    // MARK: - Meta and keys

    package func isInitialized() async throws(ChatLogError) -> Bool {
        try await meta("master_check") != nil
    }

    package func initialize(meta: [String: MetaValue], keys: [StoredKeyRow]) async throws(ChatLogError) {
        let location = location
        try await transactionMapped { connection in
            // One initializer at a time: the second waits, then finds the check value.
            try await connection.run("LOCK TABLE chatlog_meta IN EXCLUSIVE MODE", logger: self.logger)
            let existing = try await connection.statement("SELECT 1 FROM chatlog_meta WHERE name = 'master_check'", logger: self.logger)
            for try await _ in existing { throw ChatLogError.storeExists(path: location) }
            for (name, value) in meta.sorted(by: { $0.key < $1.key }) { try await Self.setMeta(name, value, connection, self.logger) }
            for key in keys { try await Self.insertKey(key, connection, self.logger) }
        }
    }

    static func setMeta(_ name: String, _ value: MetaValue, _ connection: PostgresConnection, _ logger: Logger) async throws {
        let (integer, text, blob) = metaColumns(value)
        try await connection.run(
            """
            INSERT INTO chatlog_meta (name, integer_value, text_value, blob_value) VALUES (\(name), \(integer), \(text), \(blob))
            ON CONFLICT (name) DO UPDATE SET integer_value = excluded.integer_value, text_value = excluded.text_value,
                blob_value = excluded.blob_value
            """, logger: logger)
    }

    static func insertKey(_ key: StoredKeyRow, _ connection: PostgresConnection, _ logger: Logger) async throws {
        try await connection.run(
            """
            INSERT INTO keys (id, kind, state, created_at, retired_at, wrapped, mac)
            VALUES (\(key.id), \(key.kind), \(key.state), \(key.createdAt), \(key.retiredAt), \(key.wrapped), \(key.mac))
            """, logger: logger)
    }

    package func meta(_ name: String) async throws(ChatLogError) -> MetaValue? {
        try await read { connection in
            let rows = try await connection.statement(
                "SELECT integer_value, text_value, blob_value FROM chatlog_meta WHERE name = \(name)", logger: self.logger)
            for try await (integer, text, blob) in rows.decode((Int64?, String?, Data?).self) {
                return Self.metaValue(integer, text, blob)
            }
            return nil
        }
    }

    package func keyRows() async throws(ChatLogError) -> [StoredKeyRow] {
        try await read { connection in
            let rows = try await connection.statement(
                "SELECT id, kind, state, created_at, retired_at, wrapped, mac FROM keys ORDER BY id", logger: self.logger)
            var keys: [StoredKeyRow] = []
            for try await (id, kind, state, created, retired, wrapped, mac) in rows.decode((Int64, String, String, Int64, Int64?, Data?, Data?).self) {
                keys.append(StoredKeyRow(id: id, kind: kind, state: state, createdAt: created, retiredAt: retired, wrapped: wrapped, mac: mac))
            }
            return keys
        }
    }

    // MARK: - Key-job lock

    /// A session-level advisory lock on one leased connection for the whole job: the server
    /// releases it when the job ends, or when its connection closes because the process died.
    package func withKeyJobLock<T: Sendable>(_ body: @Sendable () async throws(ChatLogError) -> T) async throws(ChatLogError) -> T {
        let location = postgresLocation
        let logger = logger
        let outcome: Result<T, ChatLogError>
        do {
            outcome = try await client.withConnection { connection in
                // A holder whose host dies (no FIN) is noticed by TCP keepalive, not after Linux's
                // default two hours: the lock comes free about a minute later. (No effect on a
                // Unix socket, where the kernel reports a dead peer at once.)
                try await connection.run(
                    "SELECT set_config('tcp_keepalives_idle', '30', false), set_config('tcp_keepalives_interval', '10', false), set_config('tcp_keepalives_count', '3', false)",
                    logger: logger)
                let taken = try await connection.statement(
                    "SELECT pg_try_advisory_lock(\(Self.lockClass), \(Self.keyJobLock))", logger: logger)
                var acquired = false
                for try await value in taken.decode(Bool.self) { acquired = value }
                guard acquired else {
                    let holder = try await Self.lockHolder(connection, logger)
                    return .failure(
                        ChatLogError.locked(
                            holder: nil, path: "(PostgreSQL advisory lock of \(location)" + (holder.map { ", held by \($0)" } ?? "") + ")"))
                }
                let result: Result<T, ChatLogError>
                do throws(ChatLogError) { result = .success(try await body()) } catch { result = .failure(error) }
                try await connection.run("SELECT pg_advisory_unlock(\(Self.lockClass), \(Self.keyJobLock))", logger: logger)
                return result
            }
        } catch {
            throw PostgresErrors.map(error, location: location)
        }
        return try outcome.get()
    }

    /// The same database reached by another name (a link to the server's socket folder, `localhost`
    /// for a socket, another user): a server process of `other`'s pool (its pid and start time, which
    /// no two processes share) is in this database's `pg_stat_activity`.
    package func isSameDatabase(as other: PostgresStorage) async throws(ChatLogError) -> Bool {
        let (theirs, logger) = (other.logger, logger)
        let process = try await other.read { connection in
            var found: (Int64, String)?
            for try await row in try await connection.statement(
                "SELECT pg_backend_pid()::bigint, backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()", logger: theirs
            ).decode((Int64, String).self) {
                found = row
            }
            return found.map { [String($0.0), $0.1] }
        }
        guard let process, process.count == 2, let pid = Int64(process[0]) else { return false }
        return try await read { connection in
            var same = false
            for try await _ in try await connection.statement(
                "SELECT 1 FROM pg_stat_activity WHERE pid = \(pid) AND backend_start::text = \(process[1]) AND datname = current_database()", logger: logger)
            {
                same = true
            }
            return same
        }
    }

    /// Who holds the key-job lock: the holder's application_name (chatlog sets "chatlog pid N on
    /// HOST"), its client address and server process id.
    static func lockHolder(_ connection: PostgresConnection, _ logger: Logger) async throws -> String? {
        let rows = try await connection.statement(
            """
            SELECT a.pid, coalesce(a.application_name, ''), coalesce(host(a.client_addr), 'local socket')
            FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
              AND l.classid::bigint = \(Int64(lockClass)) AND l.objid::bigint = \(Int64(keyJobLock)) AND l.objsubid = 2
            """, logger: logger)
        for try await (pid, application, address) in rows.decode((Int32, String, String).self) {
            let name = application.isEmpty ? "a client" : PostgresLocation.printable(application)
            return "\(name) from \(address), server process \(pid)"
        }
        return nil
    }

    // MARK: - Snapshot

    /// Runs `body` with a read-only view of the store as of one instant: one connection in a
    /// `REPEATABLE READ READ ONLY` transaction for the whole of `body` (what a backup reads while
    /// writers go on).
    package func withSnapshot<T: Sendable>(_ body: @Sendable (any ChatLogStorage) async throws(ChatLogError) -> T) async throws(ChatLogError) -> T {
        if pinned != nil { return try await body(self) }
        let (location, client, runner, logger) = (postgresLocation, client, runner, logger)
        let outcome: Result<T, ChatLogError>
        do {
            outcome = try await client.withConnection { connection in
                try await connection.run("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", logger: logger)
                let view = PostgresStorage(location: location, client: client, runner: runner, logger: logger, pinned: connection)
                let result: Result<T, ChatLogError>
                do throws(ChatLogError) { result = .success(try await body(view)) } catch { result = .failure(error) }
                if !connection.isClosed { await Self.rollback(connection, logger: logger) }
                return result
            }
        } catch {
            throw PostgresErrors.map(error, location: location)
        }
        return try outcome.get()
    }

    // MARK: - Writes

    package func insert(
        conversation: SealedConversationRow?, messages: [SealedMessageRow], into conversationID: String, guard writeGuard: WriteGuard
    ) async throws -> [Int64] {
        if !messages.isEmpty, messages.count <= Self.messagesPerStatement, pinned == nil {
            return try await insertInOneStatement(conversation: conversation, messages: messages, into: conversationID, guard: writeGuard)
        }
        let logger = logger
        return try await transaction { connection in
            try await Self.check(writeGuard, connection, logger)
            // The conversation, its messages and their terms in one statement — up to
            // `messagesPerStatement` messages (a statement takes at most 65,535 parameters, 14 per
            // message); the rest of a longer append follows in more statements of the same
            // transaction, each appending after the previous one's rows.
            var target: Target = conversation.map { .new($0) } ?? .existing(conversationID)
            var positions: [Int64] = []
            var rest = messages[...]
            repeat {
                let chunk = Array(rest.prefix(Self.messagesPerStatement))
                rest = rest.dropFirst(chunk.count)
                positions += try await Self.appendMessages(chunk, to: target, connection, logger)
                target = .existing(conversation?.id ?? conversationID)
            } while !rest.isEmpty
            return positions
        }
    }

    /// Messages per statement of ``appendMessages(_:to:_:_:)``: 14 parameters each, under
    /// PostgreSQL's 65,535 with the conversation's 9 and 2 more.
    static let messagesPerStatement = 4_000

    /// A conversation row's nine columns (id, created_at, updated_at, key_id, title, subject,
    /// subject_token, subject_key_id, metadata), in that order.
    static func bind(_ c: SealedConversationRow, _ binds: inout PostgresBindings) throws {
        binds.append(c.id)
        binds.append(c.createdAt)
        binds.append(c.updatedAt)
        binds.append(c.keyID)
        try binds.append(c.title)
        try binds.append(c.subject)
        try binds.append(c.subjectToken)
        binds.append(c.subjectKeyID)
        try binds.append(c.metadata)
    }

    /// A message row's columns after id, conversation and position (role, created_at, model,
    /// prompt_tokens, completion_tokens, latency_ms, finish_reason, key_id, content, metadata,
    /// index_key_id), in that order.
    static func bindColumns(_ m: SealedMessageRow, _ binds: inout PostgresBindings) throws {
        binds.append(m.role)
        binds.append(m.createdAt)
        binds.append(m.model)
        binds.append(m.promptTokens)
        binds.append(m.completionTokens)
        binds.append(m.latencyMilliseconds)
        binds.append(m.finishReason)
        binds.append(m.keyID)
        try binds.append(m.content)
        try binds.append(m.metadata)
        binds.append(m.indexKeyID)
    }

    /// Where ``appendMessages(_:to:_:_:)`` puts messages.
    enum Target {
        /// A conversation inserted by the same statement (positions from 0).
        case new(SealedConversationRow)
        /// An existing conversation by public id, locked `FOR UPDATE` (positions after its last).
        case existing(String)
        /// An existing conversation by seq, already locked by the caller.
        case locked(seq: Int64)
    }

    static let messageValueTypes = [
        "text", "bigint", "text", "bigint", "text", "bigint", "bigint", "bigint", "text", "bigint", "bytea", "bytea", "bigint", "bigint[]",
    ]

    /// A message's `terms` column (migration postgres/0010): its distinct terms' values as signed
    /// BIGINTs (docs/FORMAT.md §5.1), in ascending order; NULL when it has none.
    static func termColumn(_ terms: [UInt64]) -> [Int64]? {
        guard !terms.isEmpty else { return nil }
        return Array(Set(terms.map { Int64(bitPattern: $0) })).sorted()
    }

    /// Inside a write transaction: `messages` appended to `target` at the next positions with their
    /// terms, and the conversation's `updated_at` moved — one statement (data-modifying CTEs)
    /// after at most one locking read. Returns the positions.
    static func appendMessages(_ messages: [SealedMessageRow], to target: Target, _ connection: PostgresConnection, _ logger: Logger)
        async throws -> [Int64]
    {
        var binds = PostgresBindings()
        var conversationCTE = ""
        let seqExpression: String
        switch target {
        case .new(let conversation):
            let latest = messages.map(\.createdAt).max() ?? conversation.updatedAt
            let start = binds.count + 1
            var row = conversation
            row.updatedAt = max(conversation.updatedAt, latest)
            try Self.bind(row, &binds)
            conversationCTE = """
                c AS (INSERT INTO conversations (id, created_at, updated_at, key_id, title, subject, subject_token, subject_key_id, metadata)
                      VALUES (\((start..<(start + 9)).map { "$\($0)" }.joined(separator: ", "))) RETURNING seq, key_id, subject_key_id),
                """
            seqExpression = "(SELECT seq FROM c)"
            if messages.isEmpty {
                let rows = try await connection.statement(
                    PostgresQuery(
                        unsafeSQL: "WITH " + conversationCTE + Self.countingCTEs(conversations: "c", messages: nil) + " SELECT seq FROM c", binds: binds),
                    logger: logger)
                for try await _ in rows {}
                return []
            }
        case .existing(let id):
            // The lock first, in its own statement: the insert below then starts with a snapshot
            // that sees every message committed by the writer it waited for (a subquery of this
            // statement would not), so its next position is right.
            let rows = try await connection.statement("SELECT seq FROM conversations WHERE id = \(id) FOR UPDATE", logger: logger)
            var found: Int64?
            for try await value in rows.decode(Int64.self) { found = value }
            guard let seq = found else { throw ChatLogError.conversationNotFound(id) }
            guard !messages.isEmpty else { return [] }
            binds.append(seq)
            seqExpression = "$1::bigint"
        case .locked(let seq):
            guard !messages.isEmpty else { return [] }
            binds.append(seq)
            seqExpression = "$1::bigint"
        }
        var rows: [String] = []
        for (offset, message) in messages.enumerated() {
            let start = binds.count + 1
            binds.append(message.id)
            binds.append(Int64(offset))
            try Self.bindColumns(message, &binds)
            binds.append(Self.termColumn(message.terms))
            rows.append("(" + messageValueTypes.enumerated().map { "$\(start + $0.offset)::\($0.element)" }.joined(separator: ", ") + ")")
        }
        let latestParameter = binds.count + 1
        binds.append(messages.map(\.createdAt).max() ?? 0)
        let updateCTE: String
        if case .new = target {
            updateCTE = ""
        } else {
            updateCTE = ", u AS (UPDATE conversations SET updated_at = greatest(updated_at, $\(latestParameter)) WHERE seq = \(seqExpression))"
        }
        let sql = """
            WITH \(conversationCTE)
            v (id, step, role, created_at, model, prompt_tokens, completion_tokens, latency_ms, finish_reason, key_id, content, metadata,
               index_key_id, terms) AS (VALUES \(rows.joined(separator: ", "))),
            n AS (SELECT coalesce(max(position) + 1, 0) AS next FROM messages WHERE conversation_seq = \(seqExpression)),
            m AS (INSERT INTO messages (id, conversation_seq, position, role, created_at, model, prompt_tokens, completion_tokens, latency_ms,
                                        finish_reason, key_id, content, metadata, index_key_id, terms)
                  SELECT id, \(seqExpression), n.next + step, role, created_at, model, prompt_tokens, completion_tokens, latency_ms, finish_reason,
                         key_id, content, metadata, index_key_id, terms FROM v, n
                  RETURNING position, prompt_tokens, completion_tokens, key_id, index_key_id)\(updateCTE),
            \(Self.countingCTEs(conversations: conversationCTE.isEmpty ? nil : "c", messages: "m"))
            SELECT position FROM m ORDER BY position
            """
        let result = try await connection.statement(PostgresQuery(unsafeSQL: sql, binds: binds), logger: logger)
        var positions: [Int64] = []
        for try await value in result.decode(Int64.self) { positions.append(value) }
        guard positions.count == messages.count else {
            throw ChatLogError.storage("PostgreSQL inserted \(positions.count) of \(messages.count) messages")
        }
        return positions
    }

    /// Data-modifying CTEs that write migration 0011's delta rows (the row counts and token totals of
    /// migrations 5 and 8, the rows per key of migration 6) for what the named CTEs inserted:
    /// `conversations` returns key_id, subject_key_id; `messages` returns position, prompt_tokens,
    /// completion_tokens, key_id, index_key_id. Every path that inserts conversations or messages
    /// counts them so (the INSERT triggers that did were most of the cost of a logged message's
    /// bookkeeping; docs/PERFORMANCE.md "Where the server's time goes now").
    static func countingCTEs(conversations: String?, messages: String?) -> String {
        let newConversations = conversations.map { "(SELECT count(*) FROM \($0))" } ?? "0"
        let newMessages = messages.map { "(SELECT count(*) FROM \($0))" } ?? "0"
        let started = messages.map { "(SELECT count(*) FROM \($0) WHERE position = 0)" } ?? "0"
        let prompt = messages.map { "(SELECT coalesce(sum(prompt_tokens), 0) FROM \($0))" } ?? "0"
        let completion = messages.map { "(SELECT coalesce(sum(completion_tokens), 0) FROM \($0))" } ?? "0"
        var keys: [String] = []
        if let conversations { keys += ["SELECT key_id FROM \(conversations)", "SELECT subject_key_id FROM \(conversations)"] }
        if let messages { keys += ["SELECT key_id FROM \(messages)", "SELECT index_key_id FROM \(messages)"] }
        return """
            counted_rows AS (INSERT INTO row_count_deltas (conversations, messages, conversations_with_messages, prompt_tokens, completion_tokens)
                             SELECT \(newConversations), \(newMessages), \(started), \(prompt), \(completion) WHERE \(newConversations) + \(newMessages) > 0),
            counted_keys AS (INSERT INTO key_usage_deltas (key_id, row_count)
                             SELECT id, count(*) FROM (\(keys.joined(separator: " UNION ALL "))) AS used (id) WHERE id IS NOT NULL GROUP BY id)
            """
    }

    /// Inside a write transaction: the check value and the active keys are still those the rows
    /// were sealed for. `FOR SHARE`: a key job changing them waits for this transaction.
    static func check(_ writeGuard: WriteGuard, _ connection: PostgresConnection, _ logger: Logger) async throws {
        // One round trip: both reads lock their rows (locking clauses in CTEs).
        let rows = try await connection.statement(
            """
            WITH m AS (SELECT blob_value FROM chatlog_meta WHERE name = 'master_check' FOR SHARE),
                 k AS (SELECT kind, id FROM keys WHERE state = 'active' FOR SHARE)
            SELECT (SELECT blob_value FROM m), (SELECT id FROM k WHERE kind = 'data'), (SELECT id FROM k WHERE kind = 'index')
            """, logger: logger)
        var found: (Data?, Int64?, Int64?) = (nil, nil, nil)
        for try await row in rows.decode((Data?, Int64?, Int64?).self) { found = row }
        guard let stored = found.0, writeGuard.acceptedCheckValues.contains(stored) else { throw StorageConflict.masterKeyChanged }
        guard found.1 == writeGuard.activeDataKeyID, found.2 == writeGuard.activeIndexKeyID else { throw StorageConflict.staleKeys }
    }

    /// Messages go with their conversations (`ON DELETE CASCADE`) and terms with their rows (a column
    /// of `messages`, migration 0010): `terms` is never called.
    package func deleteConversations(_ ids: [String], terms: @escaping @Sendable (SealedMessageRow) -> [UInt64]?) async throws(ChatLogError)
        -> Int
    {
        guard !ids.isEmpty else { return 0 }
        let logger = logger
        return try await transactionMapped { connection in
            let rows = try await connection.statement(
                "DELETE FROM conversations WHERE id = ANY(\(ids)::text[]) RETURNING seq", logger: logger)
            var count = 0
            for try await _ in rows { count += 1 }
            return count
        }
    }

    // MARK: - Reads

    static let conversationColumns = "id, created_at, updated_at, key_id, title, subject, subject_token, subject_key_id, metadata"
    static let messageColumns = """
        m.seq, m.id, c.id AS conversation_id, m.position, m.role, m.created_at, m.model, m.prompt_tokens, m.completion_tokens, m.latency_ms,
        m.finish_reason, m.key_id, m.content, m.metadata, m.index_key_id
        """

    /// What a search reads of a candidate — `messageColumns` without the sealed metadata, token
    /// counts, latency, finish reason and index key (its hits carry none of them) — packed into one
    /// `bytea` per candidate: seq, created_at, position, key_id, conversation_seq (8 bytes each,
    /// big-endian), then message id, role and model (a 4-byte length, -1 for a NULL model, then
    /// UTF-8), then the sealed content (4-byte length, bytes). The conversation goes by seq (no
    /// join with `conversations` per candidate); the core asks for the ids it shows. Thousands of
    /// relevance candidates are read per query; one protocol row each cost more client CPU in
    /// postgres-nio's per-row work (message decoding, a cell array, a generic decode per cell) than
    /// opening and counting them (docs/PERFORMANCE.md, "Relevance on PostgreSQL: candidates packed").
    static let packedCandidate = """
        int8send(m.seq) || int8send(m.created_at) || int8send(m.position) || int8send(m.key_id)
        || int8send(m.conversation_seq) || int4send(octet_length(m.id)) || textsend(m.id)
        || int4send(octet_length(m.role)) || textsend(m.role)
        || int4send(coalesce(octet_length(m.model), -1)) || coalesce(textsend(m.model), ''::bytea)
        || int4send(octet_length(m.content)) || m.content
        """

    /// Candidates aggregated per protocol row: up to this many whose content is at most
    /// ``packedContentLimit`` bytes; a larger one travels alone (a row's aggregate stays far below
    /// PostgreSQL's 1 GB limit for values whatever the messages' sizes).
    static let packedGroupSize = 64
    static let packedContentLimit = 65_536

    static func conversationRow(_ row: PostgresRow) throws -> SealedConversationRow {
        let (id, created, updated, key, title, subject, token, subjectKey, metadata) = try row.decode(
            (String, Int64, Int64, Int64, Data?, Data?, Data?, Int64?, Data?).self)
        return SealedConversationRow(
            id: id, createdAt: created, updatedAt: updated, keyID: key, title: title, subject: subject, subjectToken: token,
            subjectKeyID: subjectKey, metadata: metadata)
    }

    /// A message row of `messageColumns` and its cursor. Cells by position, in `messageColumns`'
    /// order (a lookup by name compares every column's name: a quarter of a relevance search's
    /// client time over thousands of candidates).
    static func messageRow(_ row: PostgresRow) throws -> SearchCandidate {
        let cells = row.makeRandomAccess()
        let seq = try cells[0].decode(Int64.self)
        let createdAt = try cells[5].decode(Int64.self)
        let message = SealedMessageRow(
            id: try cells[1].decode(String.self), conversationID: try cells[2].decode(String.self),
            position: try cells[3].decode(Int64.self), role: try cells[4].decode(String.self), createdAt: createdAt,
            model: try cells[6].decode(String?.self), promptTokens: try cells[7].decode(Int64?.self),
            completionTokens: try cells[8].decode(Int64?.self), latencyMilliseconds: try cells[9].decode(Int64?.self),
            finishReason: try cells[10].decode(String?.self), keyID: try cells[11].decode(Int64.self),
            content: try cells[12].decode(Data.self), metadata: try cells[13].decode(Data?.self),
            indexKeyID: try cells[14].decode(Int64?.self), terms: [])
        return SearchCandidate(message: message, cursor: MessageCursor(createdAt: createdAt, order: seq))
    }

    /// The candidates of one aggregate of ``packedCandidate`` values, appended in the aggregate's
    /// order. A value cut short or a length out of range throws (never a partial candidate).
    static func unpackCandidates(_ packed: ByteBuffer, into candidates: inout [SearchCandidate]) throws(ChatLogError) {
        var buffer = packed
        func integer() throws(ChatLogError) -> Int64 {
            guard let value = buffer.readInteger(endianness: .big, as: Int64.self) else { throw damaged }
            return value
        }
        func length() throws(ChatLogError) -> Int? {
            guard let length = buffer.readInteger(endianness: .big, as: Int32.self) else { throw damaged }
            if length == -1 { return nil }
            guard length >= 0, Int(length) <= buffer.readableBytes else { throw damaged }
            return Int(length)
        }
        func text() throws(ChatLogError) -> String? {
            guard let count = try length() else { return nil }
            return buffer.readString(length: count)
        }
        func required() throws(ChatLogError) -> String {
            guard let value = try text() else { throw damaged }
            return value
        }
        while buffer.readableBytes > 0 {
            let seq = try integer()
            let createdAt = try integer()
            let position = try integer()
            let keyID = try integer()
            let conversationSeq = try integer()
            let id = try required()
            let role = try required()
            let model = try text()
            guard let size = try length(), let content = buffer.readData(length: size) else { throw damaged }
            let message = SealedMessageRow(
                id: id, conversationID: "", position: position, role: role, createdAt: createdAt, model: model,
                promptTokens: nil, completionTokens: nil, latencyMilliseconds: nil, finishReason: nil, keyID: keyID,
                content: content, metadata: nil, indexKeyID: nil, terms: [])
            candidates.append(
                SearchCandidate(message: message, cursor: MessageCursor(createdAt: createdAt, order: seq), conversationSeq: conversationSeq))
        }
    }

    private static let damaged = ChatLogError.storage("a page of search candidates from PostgreSQL is malformed")

    package func conversation(id: String) async throws(ChatLogError) -> SealedConversationRow? {
        try await read { connection in
            let rows = try await connection.statement(
                PostgresQuery(unsafeSQL: "SELECT \(Self.conversationColumns) FROM conversations WHERE id = $1", binds: Self.binds(id)),
                logger: self.logger)
            for try await row in rows { return try Self.conversationRow(row) }
            return nil
        }
    }

    package func messages(ofConversation id: String) async throws(ChatLogError) -> [SealedMessageRow] {
        try await read { connection in
            let rows = try await connection.statement(
                PostgresQuery(
                    unsafeSQL: """
                        SELECT \(Self.messageColumns) FROM messages m JOIN conversations c ON c.seq = m.conversation_seq
                        WHERE c.id = $1 ORDER BY m.position
                        """, binds: Self.binds(id)), logger: self.logger)
            var messages: [SealedMessageRow] = []
            for try await row in rows { messages.append(try Self.messageRow(row).message) }
            return messages
        }
    }

    static func binds(_ text: String) -> PostgresBindings {
        var binds = PostgresBindings()
        binds.append(text)
        return binds
    }

    static func binds(_ texts: [String]) -> PostgresBindings {
        var binds = PostgresBindings()
        binds.append(texts)
        return binds
    }

    // MARK: - Search

    /// One statement over `messages`: every required word is `terms && ARRAY[its values]` (a value
    /// per live index key), newest first after the cursor. The planner chooses between the GIN
    /// index `messages_by_term` (the words' lists intersected, then the page sorted: a rare word)
    /// and walking `messages_by_created` backwards with the words as a filter (a common word, whose
    /// newest page is found within a few rows) — from the words' element statistics.
    package func searchCandidates(required: [[UInt64]], after cursor: MessageCursor?, limit: Int) async throws(ChatLogError)
        -> [SearchCandidate]
    {
        guard !required.isEmpty, required.allSatisfy({ !$0.isEmpty }), limit > 0 else { return [] }
        var binds = PostgresBindings()
        var conditions: [String] = []
        for group in required {
            binds.append(Self.termColumn(group))  // the word's values, as a `terms` column holds them
            conditions.append("m.terms && $\(binds.count)::bigint[]")
        }
        if let cursor {
            binds.append(cursor.createdAt)
            binds.append(cursor.order)
            conditions.append("(m.created_at, m.seq) < ($\(binds.count - 1), $\(binds.count))")
        }
        binds.append(Int64(limit))
        let driving = """
            SELECT m.seq, m.created_at, m.position, m.key_id, m.conversation_seq, m.id, m.role, m.model, m.content FROM messages m
            WHERE \(conditions.joined(separator: " AND ")) ORDER BY m.created_at DESC, m.seq DESC LIMIT $\(binds.count)
            """
        // Candidates travel packed, many per protocol row (``packedCandidate``), in no particular
        // order (sorting on the server cost more than here); a large one travels alone. The page is
        // put in order here: (created_at, seq) is unique, so the order is the driving query's.
        let sql = """
            SELECT string_agg(\(Self.packedCandidate), ''::bytea)
            FROM (SELECT d.*, row_number() OVER () AS ord FROM (\(driving)) d) m
            GROUP BY CASE WHEN octet_length(m.content) > \(Self.packedContentLimit) THEN -m.ord ELSE m.ord / \(Self.packedGroupSize) END
            """
        let query = PostgresQuery(unsafeSQL: sql, binds: binds)
        return try await read { connection in
            let rows = try await connection.statement(query, logger: self.logger)
            var candidates: [SearchCandidate] = []
            candidates.reserveCapacity(min(limit, 1_000))
            for try await row in rows {
                for cell in row {
                    guard let packed = cell.bytes else { throw Self.damaged }
                    try Self.unpackCandidates(packed, into: &candidates)
                }
            }
            func newer(_ a: SearchCandidate, _ b: SearchCandidate) -> Bool {
                (a.cursor.createdAt, a.cursor.order) > (b.cursor.createdAt, b.cursor.order)
            }
            if !zip(candidates, candidates.dropFirst()).allSatisfy({ newer($0, $1) }) { candidates.sort(by: newer) }
            return candidates
        }
    }

    package func conversationIDs(seqs: [Int64]) async throws(ChatLogError) -> [Int64: String] {
        guard !seqs.isEmpty else { return [:] }
        return try await read { connection in
            let rows = try await connection.statement("SELECT seq, id FROM conversations WHERE seq = ANY(\(Array(Set(seqs))))", logger: self.logger)
            var ids: [Int64: String] = [:]
            for try await (seq, id) in rows.decode((Int64, String).self) { ids[seq] = id }
            return ids
        }
    }

    /// Exact counts from the GIN index (a bitmap of the term's messages, then their heap pages
    /// checked): cheap for a rare term, ~0.7 s for a term of 10 % of 1,000,000 messages
    /// (docs/PERFORMANCE.md, "The GIN layout measured again").
    package func documentFrequencies(_ terms: [UInt64]) async throws(ChatLogError) -> [UInt64: Int] {
        guard !terms.isEmpty else { return [:] }
        let values = Self.termColumn(terms) ?? []
        return try await read { connection in
            let rows = try await connection.statement(
                """
                SELECT t.term, (SELECT count(*) FROM messages WHERE terms @> ARRAY[t.term]) FROM unnest(\(values)::bigint[]) AS t (term)
                """, logger: self.logger)
            var counts: [UInt64: Int] = [:]
            for value in values { counts[UInt64(bitPattern: value)] = 0 }
            for try await (term, count) in rows.decode((Int64, Int64).self) { counts[UInt64(bitPattern: term)] = Int(count) }
            return counts
        }
    }

    /// From migration 0005's counts: the folded total plus the deltas not folded yet, in one
    /// statement (one snapshot). `count(*)` read every row: ~20–25 ms at 300,000 messages.
    package func counts() async throws(ChatLogError) -> StorageCounts {
        let (counts, deltas) = try await read { connection in
            let rows = try await connection.statement(
                """
                SELECT r.conversations + coalesce(d.conversations, 0), r.messages + coalesce(d.messages, 0), d.rows
                FROM row_counts r,
                     (SELECT sum(conversations)::bigint AS conversations, sum(messages)::bigint AS messages, count(*) AS rows
                      FROM row_count_deltas) d
                """, logger: self.logger)
            for try await (conversations, messages, deltas) in rows.decode((Int64, Int64, Int64).self) {
                return (StorageCounts(conversations: Int(conversations), messages: Int(messages)), deltas)
            }
            throw ChatLogError.notAChatLogStore(path: self.location, reason: "its row counts are missing (table row_counts is empty)")
        }
        // Writers fold now and then; a store written by processes that each committed only a few
        // times may still hold many deltas: fold them here (best effort: a read-only role cannot).
        if deltas > Self.foldReadThreshold, pinned == nil {
            try? await client.withConnection { connection in await foldRowCounts(connection) }
        }
        return counts
    }

    /// `stats` without a filter, from migration 0008's totals (the folded row plus the unfolded
    /// deltas, one snapshot) instead of a scan of `messages`: the same row the scan gives — none for
    /// a store without messages.
    func totals() async throws(ChatLogError) -> [StatsRow] {
        try await read { connection in
            let rows = try await connection.statement(
                """
                SELECT r.conversations_with_messages + coalesce(d.conversations, 0), r.messages + coalesce(d.messages, 0),
                       r.prompt_tokens + coalesce(d.prompt, 0), r.completion_tokens + coalesce(d.completion, 0)
                FROM row_counts r,
                     (SELECT sum(conversations_with_messages)::bigint AS conversations, sum(messages)::bigint AS messages,
                             sum(prompt_tokens)::bigint AS prompt, sum(completion_tokens)::bigint AS completion
                      FROM row_count_deltas) d
                """, logger: self.logger)
            for try await (conversations, messages, prompt, completion) in rows.decode((Int64, Int64, Int64, Int64).self) {
                guard messages > 0 else { return [] }
                return [
                    StatsRow(
                        group: nil, conversations: Int(conversations), messages: Int(messages), promptTokens: Int(prompt),
                        completionTokens: Int(completion))
                ]
            }
            throw ChatLogError.notAChatLogStore(path: self.location, reason: "its row counts are missing (table row_counts is empty)")
        }
    }

    /// One write transaction in `foldOneIn` folds the delta rows into the total after its commit.
    static let foldOneIn: UInt8 = 32
    /// A reader that sees more delta rows than this folds them.
    static let foldReadThreshold: Int64 = 2_000

    /// The fold statement of `foldRowCounts` (also run by hand in PostgresCountsTests).
    static let foldSQL = """
                WITH moved AS (
                         DELETE FROM row_count_deltas
                         RETURNING conversations, messages, conversations_with_messages, prompt_tokens, completion_tokens,
                                   data_key_id, data_key_rows, index_key_id, index_key_rows),
                     counted AS (
                         UPDATE row_counts SET conversations = conversations + (SELECT coalesce(sum(conversations), 0) FROM moved),
                                               messages = messages + (SELECT coalesce(sum(messages), 0) FROM moved),
                                               conversations_with_messages = conversations_with_messages
                                                   + (SELECT coalesce(sum(conversations_with_messages), 0) FROM moved),
                                               prompt_tokens = prompt_tokens + (SELECT coalesce(sum(prompt_tokens), 0) FROM moved),
                                               completion_tokens = completion_tokens + (SELECT coalesce(sum(completion_tokens), 0) FROM moved)
                         WHERE id = 1),
                     keys_moved AS (DELETE FROM key_usage_deltas RETURNING key_id, row_count),
                     keys_counted (key_id, row_count) AS (
                         SELECT key_id, row_count FROM keys_moved
                         UNION ALL SELECT data_key_id, data_key_rows FROM moved WHERE data_key_id IS NOT NULL
                         UNION ALL SELECT index_key_id, index_key_rows FROM moved WHERE index_key_id IS NOT NULL)
                INSERT INTO key_usage (key_id, row_count) SELECT key_id, sum(row_count) FROM keys_counted GROUP BY key_id
                ON CONFLICT (key_id) DO UPDATE SET row_count = key_usage.row_count + excluded.row_count
                """

    /// Moves every committed delta row of migrations 0005 and 0006 into `row_counts` and
    /// `key_usage`, in one statement of its own (no other lock held: it can only wait for another
    /// fold). A failure changes nothing and is left to the next fold.
    func foldRowCounts(_ connection: PostgresConnection) async {
        do {
            try await connection.run(PostgresQuery(unsafeSQL: Self.foldSQL), logger: logger)
        } catch {
            logger.debug("row counts not folded: \(String(reflecting: type(of: error)))")
        }
    }
}

extension PostgresStorage {
    package func conversations(_ filter: ConversationFilter, after cursor: MessageCursor?, limit: Int) async throws(ChatLogError)
        -> [ListedConversation]
    {
        var binds = PostgresBindings()
        var clauses = ["TRUE"]
        if let since = filter.since {
            binds.append(since)
            clauses.append("c.created_at >= $\(binds.count)")
        }
        if let until = filter.until {
            binds.append(until)
            clauses.append("c.created_at < $\(binds.count)")
        }
        if let tokens = filter.subjectTokens {
            var placeholders: [String] = []
            for token in tokens {
                do { try binds.append(token) } catch { throw .storage("a subject token could not be sent to PostgreSQL (\(error))") }
                placeholders.append("$\(binds.count)")
            }
            clauses.append(tokens.isEmpty ? "FALSE" : "c.subject_token IN (\(placeholders.joined(separator: ", ")))")
        }
        if let model = filter.model {
            binds.append(model)
            clauses.append("EXISTS (SELECT 1 FROM messages m WHERE m.conversation_seq = c.seq AND m.model = $\(binds.count))")
        }
        let (after, direction) = filter.oldestFirst ? (">", "") : ("<", " DESC")
        if let cursor {
            binds.append(cursor.createdAt)
            binds.append(cursor.order)
            clauses.append("(c.created_at, c.seq) \(after) ($\(binds.count - 1), $\(binds.count))")
        }
        binds.append(Int64(max(0, limit)))
        let columns = Self.conversationColumns.split(separator: ",").map { "c." + $0.trimmingCharacters(in: .whitespaces) }.joined(separator: ", ")
        let query = PostgresQuery(
            unsafeSQL: """
                SELECT \(columns), c.seq, (SELECT count(*) FROM messages m WHERE m.conversation_seq = c.seq)
                FROM conversations c WHERE \(clauses.joined(separator: " AND "))
                ORDER BY c.created_at\(direction), c.seq\(direction) LIMIT $\(binds.count)
                """, binds: binds)
        return try await read { connection in
            let rows = try await connection.statement(query, logger: self.logger)
            var listed: [ListedConversation] = []
            for try await row in rows {
                let (id, created, updated, key, title, subject, token, subjectKey, metadata, seq, count) = try row.decode(
                    (String, Int64, Int64, Int64, Data?, Data?, Data?, Int64?, Data?, Int64, Int64).self)
                listed.append(
                    ListedConversation(
                        row: SealedConversationRow(
                            id: id, createdAt: created, updatedAt: updated, keyID: key, title: title, subject: subject, subjectToken: token,
                            subjectKeyID: subjectKey, metadata: metadata),
                        messageCount: Int(count), cursor: MessageCursor(createdAt: created, order: seq)))
            }
            return listed
        }
    }

    /// Byte order (`COLLATE "C"`), as on SQLite: a database's default collation may ignore the
    /// hyphens of the ids.
    package func ids(_ table: IDTable, _ range: IDRange, limit: Int) async throws(ChatLogError) -> [String] {
        var binds = PostgresBindings()
        let condition: String
        let order: String
        switch range {
        case .startingWith(let prefix):
            binds.append(prefix)
            binds.append(prefix + "~")
            condition = "id COLLATE \"C\" >= $1 AND id COLLATE \"C\" < $2"
            order = "id COLLATE \"C\""
        case .before(let id):
            binds.append(id)
            condition = "id COLLATE \"C\" < $1"
            order = "id COLLATE \"C\" DESC"
        case .after(let id):
            binds.append(id)
            condition = "id COLLATE \"C\" > $1"
            order = "id COLLATE \"C\""
        }
        binds.append(Int64(max(0, limit)))
        let query = PostgresQuery(
            unsafeSQL: "SELECT id FROM \(table.rawValue) WHERE \(condition) ORDER BY \(order) LIMIT $\(binds.count)", binds: binds)
        return try await read { connection in
            let rows = try await connection.statement(query, logger: self.logger)
            var ids: [String] = []
            for try await id in rows.decode(String.self) { ids.append(id) }
            return ids
        }
    }

    package func messageTerms(ofConversation id: String) async throws(ChatLogError) -> [String: [UInt64]] {
        try await read { connection in
            let rows = try await connection.statement(
                PostgresQuery(
                    unsafeSQL: """
                        SELECT m.id, m.terms FROM messages m JOIN conversations c ON c.seq = m.conversation_seq WHERE c.id = $1
                        """, binds: Self.binds(id)), logger: self.logger)
            var terms: [String: [UInt64]] = [:]
            for try await (message, values) in rows.decode((String, [Int64]?).self) {
                terms[message] = (values ?? []).map { UInt64(bitPattern: $0) }
            }
            return terms
        }
    }

    package func termPairCount() async throws(ChatLogError) -> Int {
        try await read { connection in
            let rows = try await connection.statement("SELECT coalesce(sum(cardinality(terms)), 0)::bigint FROM messages", logger: self.logger)
            for try await count in rows.decode(Int64.self) { return Int(count) }
            return 0
        }
    }

    package func stats(by grouping: StatsGrouping?, since: Int64?, until: Int64?) async throws(ChatLogError) -> [StatsRow] {
        if grouping == nil, since == nil, until == nil { return try await totals() }
        var binds = PostgresBindings()
        var clauses = ["TRUE"]
        if let since {
            binds.append(since)
            clauses.append("created_at >= $\(binds.count)")
        }
        if let until {
            binds.append(until)
            clauses.append("created_at < $\(binds.count)")
        }
        let group: String
        switch grouping {
        case nil: group = "NULL::text"
        case .model: group = "model"
        case .role: group = "role"
        case .day: group = "to_char(to_timestamp(created_at / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
        }
        // Conversations are those with messages in the range (an empty conversation counts nowhere), as on SQLite.
        let sql = """
            SELECT \(group) AS grp, count(DISTINCT conversation_seq), count(*), coalesce(sum(prompt_tokens), 0)::bigint,
                   coalesce(sum(completion_tokens), 0)::bigint
            FROM messages WHERE \(clauses.joined(separator: " AND ")) GROUP BY grp ORDER BY (\(group)) COLLATE "C" NULLS FIRST
            """
        let query = PostgresQuery(unsafeSQL: sql, binds: binds)
        return try await read { connection in
            let rows = try await connection.statement(query, logger: self.logger)
            var stats: [StatsRow] = []
            for try await (group, conversations, messages, prompt, completion) in rows.decode((String?, Int64, Int64, Int64, Int64).self) {
                stats.append(
                    StatsRow(
                        group: group, conversations: Int(conversations), messages: Int(messages), promptTokens: Int(prompt),
                        completionTokens: Int(completion)))
            }
            return stats
        }
    }

    package func conversationCopies(_ ids: [String], withTerms: Bool) async throws(ChatLogError) -> [String: ConversationCopy] {
        guard !ids.isEmpty else { return [:] }
        let columns = Self.conversationColumns.split(separator: ",").map { "c." + $0.trimmingCharacters(in: .whitespaces) }.joined(separator: ", ")
        return try await read { connection in
            var copies: [String: ConversationCopy] = [:]
            let conversations = try await connection.statement(
                PostgresQuery(unsafeSQL: "SELECT \(columns) FROM conversations c WHERE c.id = ANY($1::text[])", binds: Self.binds(ids)),
                logger: self.logger)
            for try await row in conversations {
                let conversation = try Self.conversationRow(row)
                copies[conversation.id] = ConversationCopy(conversation: conversation, messages: [])
            }
            var messageIndex: [String: (conversation: String, index: Int)] = [:]
            let messages = try await connection.statement(
                PostgresQuery(
                    unsafeSQL: """
                        SELECT \(Self.messageColumns) FROM messages m JOIN conversations c ON c.seq = m.conversation_seq
                        WHERE c.id = ANY($1::text[]) ORDER BY m.conversation_seq, m.position
                        """, binds: Self.binds(ids)), logger: self.logger)
            for try await row in messages {
                let message = try Self.messageRow(row).message
                messageIndex[message.id] = (message.conversationID, copies[message.conversationID]?.messages.count ?? 0)
                copies[message.conversationID]?.messages.append(message)
            }
            guard withTerms else { return copies }
            let terms = try await connection.statement(
                PostgresQuery(
                    unsafeSQL: """
                        SELECT m.id, m.terms FROM messages m JOIN conversations c ON c.seq = m.conversation_seq
                        WHERE c.id = ANY($1::text[]) AND m.terms IS NOT NULL
                        """, binds: Self.binds(ids)), logger: self.logger)
            for try await (message, values) in terms.decode((String, [Int64]).self) {
                guard let place = messageIndex[message] else { continue }
                copies[place.conversation]?.messages[place.index].terms = values.map { UInt64(bitPattern: $0) }
            }
            return copies
        }
    }

    /// Multi-row INSERTs (a few statements for hundreds of conversations): one round trip per
    /// statement instead of several per conversation.
    package func insertCopies(_ copies: [ConversationCopy], guard writeGuard: WriteGuard) async throws {
        guard !copies.isEmpty else { return }
        let logger = logger
        try await transaction { connection in
            try await Self.check(writeGuard, connection, logger)
            _ = try await Self.insertCopyRows(copies, connection, logger)
        }
    }

    /// The rows of ``insertCopies(_:guard:)`` (inside its transaction); returns each
    /// conversation's seq by id.
    static func insertCopyRows(_ copies: [ConversationCopy], _ connection: PostgresConnection, _ logger: Logger) async throws -> [String: Int64] {
        var seqs: [String: Int64] = [:]
        try await Self.insertRows(
            copies, into: "conversations (id, created_at, updated_at, key_id, title, subject, subject_token, subject_key_id, metadata)",
            columns: 9, suffix: "RETURNING id, seq", connection, logger
        ) { binds, copy in
            try Self.bind(copy.conversation, &binds)
        } returning: { rows in
            for try await (id, seq) in rows.decode((String, Int64).self) { seqs[id] = seq }
        }
        let messages = copies.flatMap { copy in
            copy.messages.enumerated().map { (seq: seqs[copy.conversation.id] ?? 0, position: Int64($0.offset), message: $0.element) }
        }
        try await Self.insertRows(
            messages,
            into: """
                messages (id, conversation_seq, position, role, created_at, model, prompt_tokens, completion_tokens, latency_ms,
                          finish_reason, key_id, content, metadata, index_key_id, terms)
                """, columns: 15, connection, logger
        ) { binds, entry in
            binds.append(entry.message.id)
            binds.append(entry.seq)
            binds.append(entry.position)
            try Self.bindColumns(entry.message, &binds)
            binds.append(Self.termColumn(entry.message.terms))
        }
        var inserted = PostgresBindings()
        inserted.append(Array(seqs.values))
        try await connection.run(
            PostgresQuery(
                unsafeSQL: """
                    WITH c AS (SELECT key_id, subject_key_id FROM conversations WHERE seq = ANY($1::bigint[])),
                         m AS (SELECT position, prompt_tokens, completion_tokens, key_id, index_key_id FROM messages WHERE conversation_seq = ANY($1::bigint[])),
                    \(Self.countingCTEs(conversations: "c", messages: "m"))
                    SELECT 1
                    """, binds: inserted), logger: logger)
        return seqs
    }

    /// A bulk load into a store whose messages have no terms yet (a copy from SQLite, whose terms
    /// come a term range at a time, so ~28 passes over each message): the pairs are appended to a
    /// staging table without index, and ``endTermLoad()`` writes each message's row once and builds
    /// the GIN index once. A staging table left by an interrupted load is emptied and loaded again
    /// (a load is always a complete pass; nothing reached `messages` before its end).
    package func beginTermLoad() async throws(ChatLogError) -> Bool {
        let logger = logger
        return try await transactionMapped { connection in
            let state = try await connection.statement(
                "SELECT to_regclass('chatlog_term_load') IS NOT NULL, EXISTS (SELECT 1 FROM messages WHERE terms IS NOT NULL)", logger: logger)
            var (staging, hasTerms) = (false, true)
            for try await (table, terms) in state.decode((Bool, Bool).self) { (staging, hasTerms) = (table, terms) }
            if !staging && hasTerms { return false }  // terms there already: merged message by message
            try await connection.run("DROP TABLE IF EXISTS chatlog_term_load", logger: logger)
            try await connection.run("CREATE TABLE chatlog_term_load (message_seq BIGINT NOT NULL, term BIGINT NOT NULL)", logger: logger)
            try await connection.run("DROP INDEX IF EXISTS messages_by_term", logger: logger)
            return true
        }
    }

    package func endTermLoad() async throws(ChatLogError) {
        let logger = logger
        try await transactionMapped { connection in
            if try await Self.loadingTerms(connection, logger) {
                try await connection.run(
                    """
                    UPDATE messages m SET terms = l.terms
                    FROM (SELECT message_seq, array_agg(DISTINCT term ORDER BY term) AS terms FROM chatlog_term_load GROUP BY message_seq) l
                    WHERE m.seq = l.message_seq
                    """, logger: logger)
                try await connection.run("DROP TABLE chatlog_term_load", logger: logger)
            }
            try await connection.run("CREATE INDEX IF NOT EXISTS messages_by_term ON messages USING gin (terms)", logger: logger)
        }
    }

    package var addsTermsLater: Bool { true }

    /// One scan: a page after a cursor is a new bitmap scan of every match of the words (GIN cannot
    /// start in the middle of the order), so pages of 1,000 read a word of n matches ~n/2,000 times
    /// over (docs/PERFORMANCE.md, "Search at 1,000,000 with the GIN column").
    package var relevancePageSize: Int { ChatLogStore.relevanceCandidateCap + 1 }

    /// Whether a bulk term load is under way (its staging table exists).
    static func loadingTerms(_ connection: PostgresConnection, _ logger: Logger) async throws -> Bool {
        let state = try await connection.statement("SELECT to_regclass('chatlog_term_load') IS NOT NULL", logger: logger)
        var staging = false
        for try await table in state.decode(Bool.self) { staging = table }
        return staging
    }

    /// Into the staging table during a bulk load (``beginTermLoad()``); otherwise merged into each
    /// message's `terms`, a message that has them all left untouched.
    package func addTerms(_ pairs: [(messageID: String, term: UInt64)]) async throws(ChatLogError) {
        guard !pairs.isEmpty else { return }
        let ids = pairs.map(\.messageID)
        let terms = pairs.map { Int64(bitPattern: $0.term) }
        let logger = logger
        try await transactionMapped { connection in
            if try await Self.loadingTerms(connection, logger) {
                try await connection.run(
                    """
                    INSERT INTO chatlog_term_load (message_seq, term)
                    SELECT m.seq, p.term FROM unnest(\(ids)::text[], \(terms)::bigint[]) AS p (id, term) JOIN messages m ON m.id = p.id
                    """, logger: logger)
            } else {
                try await connection.run(
                    """
                    UPDATE messages m SET terms = (SELECT array_agg(DISTINCT t ORDER BY t) FROM unnest(coalesce(m.terms, '{}') || p.terms) AS t)
                    FROM (SELECT id, array_agg(term) AS terms FROM unnest(\(ids)::text[], \(terms)::bigint[]) AS x (id, term) GROUP BY id) p
                    WHERE m.id = p.id AND NOT coalesce(m.terms, '{}') @> p.terms
                    """, logger: logger)
            }
        }
    }

    /// `INSERT INTO <into> VALUES (…), (…) <suffix>` for `items`, 2,000 rows a statement (one round
    /// trip each; under PostgreSQL's 65,535 parameters). `bind` appends one item's `columns`
    /// values; `returning` reads what each statement returns.
    static func insertRows<Item>(
        _ items: [Item], into: String, columns: Int, suffix: String = "", _ connection: PostgresConnection, _ logger: Logger,
        bind: (inout PostgresBindings, Item) throws -> Void, returning: (PostgresRowSequence) async throws -> Void = { for try await _ in $0 {} }
    ) async throws {
        for start in stride(from: 0, to: items.count, by: 2_000) {
            var binds = PostgresBindings()
            var rows: [String] = []
            for item in items[start..<min(items.count, start + 2_000)] {
                let first = binds.count + 1
                try bind(&binds, item)
                assert(binds.count == first - 1 + columns, "a row bound \(binds.count - first + 1) values for \(columns) columns")
                rows.append("(" + (first..<(first + columns)).map { "$\($0)" }.joined(separator: ", ") + ")")
            }
            try await returning(
                try await connection.statement(
                    PostgresQuery(unsafeSQL: "INSERT INTO \(into) VALUES \(rows.joined(separator: ", ")) \(suffix)", binds: binds), logger: logger))
        }
    }

    /// Counted from the tables (PostgreSQL keeps no counter rows: docs/ARCHITECTURE.md §10).
    /// From migration 0006's key usage: the folded totals plus the deltas not folded yet — rows of
    /// `key_usage_deltas`, and the two keys an append counts in its `row_count_deltas` row (migration
    /// 0012) — in one statement (four scans of `messages` and `conversations` before).
    package func keyUsage() async throws(ChatLogError) -> [Int64: Int] {
        let (usage, deltas) = try await read { connection in
            let rows = try await connection.statement(
                """
                SELECT key_id, sum(row_count)::bigint, (SELECT count(*) FROM key_usage_deltas) + (SELECT count(*) FROM row_count_deltas)
                FROM (SELECT key_id, row_count FROM key_usage UNION ALL SELECT key_id, row_count FROM key_usage_deltas
                      UNION ALL SELECT data_key_id, data_key_rows FROM row_count_deltas WHERE data_key_id IS NOT NULL
                      UNION ALL SELECT index_key_id, index_key_rows FROM row_count_deltas WHERE index_key_id IS NOT NULL) used
                GROUP BY key_id HAVING sum(row_count) <> 0
                """, logger: self.logger)
            var usage: [Int64: Int] = [:]
            var deltas: Int64 = 0
            for try await (id, count, unfolded) in rows.decode((Int64, Int64, Int64).self) {
                usage[id] = Int(count)
                deltas = unfolded
            }
            return (usage, deltas)
        }
        if deltas > Self.foldReadThreshold, pinned == nil {
            try? await client.withConnection { connection in await foldRowCounts(connection) }
        }
        return usage
    }
}

extension PostgresConnection {
    /// The connection's channel had closed (the server ended the session: a restart,
    /// `pg_terminate_backend`, an idle timeout) before a statement was sent: nothing was sent.
    struct Closed: Error {}

    /// `query`, sent only on a connection whose channel is open. postgres-nio 1.33.2 hands a
    /// statement for a closed channel to a write that fails unseen, and the statement then waits
    /// forever: a session the server ended between two statements hung about one transaction in ten
    /// so ended (PostgresMidWorkFailureTests, "the server ends sessions between statements"). The check and the
    /// write run on the connection's event loop, which also handles the channel's close, so it
    /// cannot close in between; one that closes after the write fails the statement as usual.
    func statement(_ query: PostgresQuery, logger: Logger, file: String = #fileID, line: Int = #line) async throws -> PostgresRowSequence {
        try await withTaskExecutorPreference(EventLoopTaskExecutor(eventLoop)) {
            try requireOpen()
            return try await self.query(query, logger: logger, file: file, line: line)
        }
    }

    /// Throws ``Closed`` when the channel has closed. Called on the connection's event loop right
    /// before a statement is written (``statement(_:logger:file:line:)``, `COMMIT`, the append).
    func requireOpen() throws {
        guard !isClosed else { throw Closed() }
    }

    /// Runs a statement and reads its rows to the end, so that an error the server sends after
    /// the row description (a statement timeout, a cancel) is thrown here, not lost.
    func run(_ query: PostgresQuery, logger: Logger) async throws {
        let rows = try await statement(query, logger: logger)
        for try await _ in rows {}
    }
}

/// True for the first caller of ``claim()`` only: which of two racing tasks resumes a continuation.
private final class ResumeOnce: Sendable {
    private let claimed = Mutex(false)

    func claim() -> Bool {
        claimed.withLock { done in
            defer { done = true }
            return !done
        }
    }
}
