import CSQLiteConfig
import Foundation
import GRDB
import Synchronization

/// An encrypted conversation log on one SQLite file.
///
/// Safe to share between threads (it is `Sendable`) and between processes on the same file:
/// writes are `BEGIN IMMEDIATE` transactions in WAL mode with a busy timeout, so concurrent
/// writers queue instead of failing.
///
/// ```swift
/// let settings = try await ChatLogSettings.load()
/// let store = try ChatLogStore.open(at: "chat.db", key: try settings.masterKeySource())
/// let logged = try store.logExchange(ModelExchange(
///     conversation: .new(NewConversation(title: "Support", subject: "user-42")),
///     prompt: [NewMessage(role: .user, content: "My card was charged twice")],
///     completion: NewMessage(role: .assistant, content: "Sorry about that…", model: "gpt-4o",
///                            promptTokens: 12, completionTokens: 40, latencyMilliseconds: 850)))
/// let transcript = try store.transcript(logged.conversationID)
/// ```
public final class ChatLogStore: Sendable {
    public struct Options: Sendable {
        /// How long a write waits for another writer (thread or process) before failing busy.
        public var busyTimeout: TimeInterval
        /// Plaintext is padded to a multiple of this many bytes before sealing (lengths leak only
        /// to this granularity).
        public var paddingBlock: Int
        /// Argon2id limits used when a store is created from a passphrase.
        public var passphraseKDF: PassphraseKDF
        /// Open without ever writing (`SQLITE_OPEN_READONLY`): for readers of a 0444 file, a
        /// read-only directory or mount, a backup. When the file has no `-wal` and this process
        /// cannot write the file or its directory, it is opened `immutable=1`, so SQLite creates
        /// no `-wal` or `-shm` either. Writes throw; a store whose schema needs an upgrade is
        /// refused.
        public var readOnly: Bool
        /// When set, every message written (append, logExchange, import) has its secrets
        /// replaced before sealing and indexing; the kinds and counts go in its sealed metadata
        /// under ``SecretRedactor/metadataKey``. Off by default.
        public var redactor: SecretRedactor?
        /// Seal conversations with a subject under that subject's key (so `forget` reaches old
        /// backups). Off only to measure logging as it was before subject keys (chatlog-bench).
        @_spi(Benchmarks) public var sealsUnderSubjectKeys = true
        /// Run on every new SQLite connection (the raw `sqlite3 *`) after chatlog's own settings,
        /// before anything else: chatlog-test-driver installs a progress handler that SIGKILLs
        /// the process in the middle of a schema migration. Not for anything else.
        package var connectionHook: (@Sendable (OpaquePointer) -> Void)?

        public init(
            busyTimeout: TimeInterval = 30, paddingBlock: Int = 32, passphraseKDF: PassphraseKDF = .moderate, readOnly: Bool = false,
            redactor: SecretRedactor? = nil
        ) {
            self.busyTimeout = busyTimeout
            self.paddingBlock = paddingBlock
            self.passphraseKDF = passphraseKDF
            self.readOnly = readOnly
            self.redactor = redactor
        }
    }

    public let path: String
    public let options: Options
    /// Where the master key came from (never the key).
    public let masterKeyOrigin: String
    /// Where the rows are: a SQLite file the store runs SQL on itself, or a backend behind the
    /// storage seam (PostgreSQL: docs/ARCHITECTURE.md §10, "Storage backends").
    enum Backend: Sendable {
        case sqlite(DatabasePool)
        case storage(any ChatLogStorage)
    }

    let backend: Backend
    let keyRing: KeyRing
    /// The per-subject keys (`STORE.subject-keys`), opened on first use.
    let subjectKeys: SubjectKeyFile
    /// Where the per-subject keys are, whatever the backend: the file above for a SQLite store;
    /// for a store behind the storage seam, its own subject-key store (PostgreSQL:
    /// CHATLOG_SUBJECT_KEYS), or one that says it was not named.
    let subjectKeyStore: any SubjectKeyStore
    /// Behind the storage seam: which subject key (or none) conversations this handle appended to
    /// are sealed under — it never changes for a conversation — so that a continued exchange does
    /// not read the conversation's row first. Bounded (emptied when full).
    let conversationSubjectKeys = Mutex<[String: KeyID?]>([:])

    /// The SQLite connections; for a store on another backend, the specific error that what was
    /// asked does not work there yet (every SQLite-only path goes through here or ``read(_:)``).
    var pool: DatabasePool {
        get throws(ChatLogError) {
            switch backend {
            case .sqlite(let pool): return pool
            case .storage(let storage): throw .notOnThisBackend(location: storage.location, what: "this")
            }
        }
    }

    /// The key-job lock of a SQLite store (a file next to it); on another backend, the specific
    /// error (its key jobs are not built yet).
    func keyJobLock() throws(ChatLogError) -> RotationLock {
        if case .storage(let storage) = backend { throw .notOnThisBackend(location: storage.location, what: "this") }
        return try RotationLock.acquire(forDatabase: path)
    }

    /// The backend behind the storage seam; nil for a SQLite store.
    package var storage: (any ChatLogStorage)? {
        if case .storage(let storage) = backend { return storage }
        return nil
    }

    init(
        path: String, options: Options, origin: String, backend: Backend, keyRing: KeyRing, storeID: String,
        subjectKeyRows: (any SubjectKeyRows)? = nil
    ) {
        self.path = path
        self.options = options
        self.masterKeyOrigin = origin
        self.backend = backend
        self.keyRing = keyRing
        self.subjectKeys = SubjectKeyFile(
            storePath: path, storeID: storeID, readOnly: options.readOnly, busyTimeout: options.busyTimeout, keyRing: keyRing,
            backendLocation: { if case .storage(let storage) = backend { storage.location } else { nil } }())
        switch backend {
        case .sqlite: subjectKeyStore = subjectKeys
        case .storage(let storage):
            subjectKeyStore =
                subjectKeyRows.map { SealedSubjectKeys(rows: $0, storeID: storeID, readOnly: options.readOnly, keyRing: keyRing) }
                ?? MissingSubjectKeys(location: storage.location)
        }
    }

    // MARK: - Create and open

    /// Whether a file exists at `path` (it may still not be a chatlog store).
    public static func exists(at path: String) -> Bool { PrivateFiles.fileExists(path) }

    /// Creates a new store (file mode 0600): schema, master-key check value, a data key and an
    /// index key. Throws ``ChatLogError/storeExists(path:)`` if `path` already holds one.
    public static func create(at path: String, key source: MasterKeySource, options: Options = Options()) throws(ChatLogError)
        -> ChatLogStore
    {
        if PrivateFiles.isDirectory(path) { throw .storeIsADirectory(path: path) }
        if case .passphrase = source.material, let (name, reason) = options.passphraseKDF.limitsProblem {
            throw .invalidInput("the passphrase KDF's \(name) \(reason)")
        }
        if let size = PrivateFiles.fileSize(path) {
            if size > 0, try probe(path) == .initialized { throw .storeExists(path: path) }
            // A file made beforehand (touch, an interrupted init) gets the mode chatlog would give
            // it; SQLite copies it to the -wal and -shm files.
            try PrivateFiles.restrictToOwner(path)
        } else {
            try PrivateFiles.createEmptyPrivateFile(at: path)
        }
        let pool = try openPool(path, options: options)
        try Schema.migrate(pool)
        let master: MasterKey
        do {
            master = try pool.writeWithoutTransaction { db in
                try db.inTransaction(.immediate) {
                    if try Row.fetchOne(db, sql: "SELECT 1 FROM chatlog_meta WHERE name = 'master_check'") != nil {
                        throw ChatLogError.storeExists(path: path)
                    }
                    let master: MasterKey
                    switch source.material {
                    case .key(let key):
                        master = key
                        try setMeta(db, "key_kind", "key")
                    case .passphrase(let passphrase):
                        let kdf = options.passphraseKDF.withFreshSalt()
                        master = try kdf.deriveMasterKey(from: passphrase)
                        try setMeta(db, "key_kind", "passphrase")
                        try setMeta(db, "kdf_algorithm", "argon2id13")
                        try setMeta(db, "kdf_salt", Data(kdf.salt))
                        try setMeta(db, "kdf_opslimit", Int64(kdf.opsLimit))
                        try setMeta(db, "kdf_memlimit", Int64(kdf.memLimit))
                    }
                    try setMeta(db, "store_id", UUIDv7.make())
                    try setMeta(db, "created_at", Date().unixMilliseconds)
                    try KeyRowAuthentication.storeCheckValue(master, db: db)
                    try KeyRing.addActiveKey(kind: .data, master: master, db: db)
                    try KeyRing.addActiveKey(kind: .index, master: master, db: db)
                    return .commit
                }
                return try deriveMaster(db, source: source)
            }
        } catch {
            throw ChatLogError.wrap(error)
        }
        return try finishOpening(path: path, options: options, source: source, pool: pool, master: master)
    }

    /// Opens an existing store, checking the master key against the stored check value.
    public static func open(at path: String, key source: MasterKeySource, options: Options = Options()) throws(ChatLogError)
        -> ChatLogStore
    {
        guard PrivateFiles.fileExists(path) else { throw .storeNotFound(path: path) }
        if PrivateFiles.isDirectory(path) { throw .storeIsADirectory(path: path) }
        switch try probe(path) {
        case .initialized: break
        case .empty, .uninitialized:
            throw .notAChatLogStore(path: path, reason: "it was never fully initialised; run `chatlog init` on it")
        }
        let pool = try openPool(path, options: options)
        if options.readOnly { try Schema.requireCurrent(pool, path: path) } else { try Schema.migrate(pool) }
        let master: MasterKey
        do {
            try pool.read { db in try Schema.refuseUnknownObjects(db) }
            master = try pool.read { db in try deriveMaster(db, source: source) }
        } catch {
            throw ChatLogError.wrap(error)
        }
        return try finishOpening(path: path, options: options, source: source, pool: pool, master: master)
    }

    private static func finishOpening(
        path: String, options: Options, source: MasterKeySource, pool: DatabasePool, master: MasterKey
    ) throws(ChatLogError) -> ChatLogStore {
        let keyRing: KeyRing
        let storeID: String
        do {
            // A read-only open reads a store from an earlier schema unconverted (docs/FORMAT.md §3.1).
            if !options.readOnly { try KeyRowAuthentication.convertIfNeeded(pool, master: master) }
            keyRing = try pool.read { db in try KeyRing(master: master, origin: KeyRing.Origin(source), db: db) }
            storeID = try pool.read { db in try String.fetchOne(db, sql: "SELECT CAST(value AS TEXT) FROM chatlog_meta WHERE name = 'store_id'") } ?? ""
        } catch {
            if case .notAChatLogStore(_, let reason) = error as? ChatLogError {
                throw .notAChatLogStore(path: path, reason: reason)
            }
            throw ChatLogError.wrap(error)
        }
        let store = ChatLogStore(path: path, options: options, origin: source.origin, backend: .sqlite(pool), keyRing: keyRing, storeID: storeID)
        // Messages written before the search index existed (schema 1) are indexed once, here.
        let unindexed = try store.read { db in
            try Row.fetchOne(db, sql: "SELECT 1 FROM messages WHERE index_key_id IS NULL LIMIT 1") != nil
        }
        if unindexed, !options.readOnly { _ = try SearchIndex.indexMissing(store: store) }
        return store
    }

    /// Turns the source into the master key (running Argon2id with the stored salt for a
    /// passphrase) and checks it against the stored check value.
    private static func deriveMaster(_ db: Database, source: MasterKeySource) throws -> MasterKey {
        let master: MasterKey
        switch source.material {
        case .key(let key):
            master = key
        case .passphrase(let passphrase):
            // The stored limits are checked before anything is derived (docs/SECURITY.md).
            guard let kdf = try PassphraseKDF.stored(db) else {
                throw ChatLogError.passphrase("this store was created with a master key, not a passphrase; set CHATLOG_MASTER_KEY or CHATLOG_MASTER_KEY_FILE")
            }
            master = try kdf.deriveMasterKey(from: passphrase)
        }
        guard let stored = try Data.fetchOne(db, sql: "SELECT value FROM chatlog_meta WHERE name = 'master_check'") else {
            throw ChatLogError.notAChatLogStore(path: "", reason: "it has no master-key check value")
        }
        guard KeyRing.matches(stored, master) else {
            throw KeyRing.Origin(source).mismatch(expected: try KeyRowAuthentication.expectedFingerprint(db), given: master)
        }
        return master
    }

    static func setMeta(_ db: Database, _ name: String, _ value: some DatabaseValueConvertible) throws {
        try db.execute(
            sql: "INSERT INTO chatlog_meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            arguments: [name, value])
    }

    /// Whether this process can write the store file and its directory (where SQLite creates the
    /// `-wal` and `-shm` files). When not, open it with ``Options/readOnly``.
    public static func isWritable(at path: String) -> Bool {
        access(path, W_OK) == 0 && access(PrivateFiles.parentDirectory(path), W_OK) == 0
    }

    /// What SQLite is given to open `path`: the path, or for a read-only open of a file that has
    /// no `-wal` and that this process cannot write (nor its directory), a `file:` URI with
    /// `immutable=1`. Without it SQLite would need to create `-shm` (and fail in a read-only
    /// directory, or leave it behind). Nobody can be writing such a file through this path, so
    /// nothing is missed by not locking it.
    static func sqlitePath(_ path: String, readOnly: Bool) -> String {
        guard readOnly, !PrivateFiles.fileExists(path + "-wal"), !isWritable(at: path) else { return path }
        var encoded = "file:"
        for byte in path.utf8 {
            switch byte {
            case UInt8(ascii: "%"), UInt8(ascii: "?"), UInt8(ascii: "#"): encoded += String(format: "%%%02X", byte)
            default: encoded.unicodeScalars.append(Unicode.Scalar(byte))
            }
        }
        return encoded + "?immutable=1"
    }

    private static var readOnlyProbeConfiguration: Configuration {
        var configuration = Configuration()
        configuration.readonly = true
        configuration.busyMode = .timeout(5)
        return configuration
    }

    private enum ProbeResult { case empty, uninitialized, initialized }

    /// For a file about to be written as a store (a copy's destination): whether it holds an
    /// initialised chatlog store; ``ChatLogError/notAChatLogStore(path:reason:)`` for a file of
    /// another program, which must never be touched.
    package static func holdsInitializedStore(_ path: String) throws(ChatLogError) -> Bool {
        try probe(path) == .initialized
    }

    /// Looks at a file read-only before chatlog touches it, so that opening a foreign SQLite
    /// database (or a random file) changes nothing in it.
    private static func probe(_ path: String) throws(ChatLogError) -> ProbeResult {
        if PrivateFiles.fileSize(path) == 0 { return .empty }
        do {
            let queue = try DatabaseQueue(path: sqlitePath(path, readOnly: true), configuration: readOnlyProbeConfiguration)
            defer { try? queue.close() }
            return try queue.read { db in
                let tables = try String.fetchSet(db, sql: "SELECT name FROM sqlite_master WHERE type = 'table'")
                if tables.contains("chatlog_meta") {
                    let initialized = try Row.fetchOne(db, sql: "SELECT 1 FROM chatlog_meta WHERE name = 'master_check'") != nil
                    return initialized ? .initialized : .uninitialized
                }
                if tables.isEmpty || tables == ["grdb_migrations"] { return .uninitialized }
                throw ChatLogError.notAChatLogStore(path: path, reason: "it is a SQLite database of another program")
            }
        } catch let error as ChatLogError {
            throw error
        } catch let error as DatabaseError where error.resultCode == .SQLITE_NOTADB {
            throw .notAChatLogStore(path: path, reason: "it is not a SQLite database")
        } catch {
            throw ChatLogError.wrap(error)
        }
    }

    static func openPool(_ path: String, options: Options) throws(ChatLogError) -> DatabasePool {
        guard (1...4096).contains(options.paddingBlock) else {
            throw .invalidInput("the padding block must be between 1 and 4096 bytes")
        }
        guard options.busyTimeout >= 0 else { throw .invalidInput("the busy timeout must not be negative") }
        var configuration = Configuration()
        configuration.readonly = options.readOnly
        configuration.busyMode = .timeout(options.busyTimeout)
        configuration.foreignKeysEnabled = true
        configuration.label = "chatlog"
        configuration.prepareDatabase { db in
            // The schema is not trusted (docs/SECURITY.md, "The schema"): no SQL function with side
            // effects runs from a trigger or view, and defensive mode forbids writable_schema and
            // direct writes to the search index's shadow tables.
            try db.execute(sql: "PRAGMA trusted_schema = OFF")
            guard chatlog_sqlite_enable_defensive(UnsafeMutableRawPointer(db.sqliteConnection)) == 1 else {
                throw ChatLogError.storage("SQLite refused defensive mode (SQLITE_DBCONFIG_DEFENSIVE)")
            }
            // Deleted and overwritten content is zeroed in the file, not left in free pages.
            try db.execute(sql: "PRAGMA secure_delete = ON")
            // Search opens candidates scattered over the file: map it instead of reading page by
            // page through read(2). Address space only; the kernel shares the pages.
            try db.execute(sql: "PRAGMA mmap_size = 4294967296")
            options.connectionHook?(db.sqliteConnection!)
        }
        do {
            return try DatabasePool(path: sqlitePath(path, readOnly: options.readOnly), configuration: configuration)
        } catch let error as DatabaseError where error.resultCode == .SQLITE_NOTADB {
            throw .notAChatLogStore(path: path, reason: "it is not a SQLite database")
        } catch {
            throw ChatLogError.wrap(error)
        }
    }

    /// Copies every committed page from the WAL into the database file and truncates the WAL
    /// to zero bytes, so old page images (including old ciphertext) no longer linger there.
    /// Waits for readers and writers of other processes up to the busy timeout.
    ///
    /// A truncating checkpoint holds the write lock while it waits for readers to leave the WAL,
    /// so other processes' writers wait behind it. With readers coming and going without pause
    /// (searches in several processes), one long wait would block every writer for the whole
    /// busy timeout and make them fail with SQLITE_BUSY. So each attempt waits at most
    /// `checkpointAttemptWait` for readers; between attempts the write lock is free for others.
    public func checkpoint() throws(ChatLogError) {
        let deadline = ContinuousClock.now + .milliseconds(Int64(options.busyTimeout * 1000))
        let attemptMilliseconds = Int(min(options.busyTimeout, Self.checkpointAttemptWait) * 1000)
        let busyMilliseconds = Int(options.busyTimeout * 1000)
        while true {
            do {
                try pool.writeWithoutTransaction { db in
                    try db.execute(sql: "PRAGMA busy_timeout = \(attemptMilliseconds)")
                    defer { try? db.execute(sql: "PRAGMA busy_timeout = \(busyMilliseconds)") }
                    _ = try db.checkpoint(.truncate)
                }
                return
            } catch let error as DatabaseError where error.resultCode == .SQLITE_BUSY && ContinuousClock.now < deadline {
                // Readers still in the WAL, or another connection running a checkpoint (which
                // answers SQLITE_BUSY at once): let others write, then try again.
                Thread.sleep(forTimeInterval: 0.02)
            } catch {
                throw ChatLogError.wrap(error)
            }
        }
    }

    /// How long one truncating-checkpoint attempt may hold the write lock waiting for readers.
    static let checkpointAttemptWait: TimeInterval = 0.2

    /// Closes the store's connections (also done on release).
    public func close() throws(ChatLogError) {
        switch backend {
        case .sqlite(let pool): do { try pool.close() } catch { throw ChatLogError.wrap(error) }
        case .storage(let storage):
            // Ends the backend's connection pool (its connections close in the background), and
            // the subject-key store's.
            let keys = subjectKeyStore
            Task {
                await storage.close()
                try? await keys.close()
            }
        }
        try subjectKeys.close()
    }

    // MARK: - Transactions

    /// Runs `body` in one `BEGIN IMMEDIATE` transaction: the write lock is taken up front, so a
    /// concurrent writer waits on the busy timeout instead of failing half-way. The transaction
    /// first checks that the stored check value still names this process's master key (another
    /// process may have run `key rewrap` since this store was opened): no write of a process
    /// holding a replaced master key commits.
    func writeImmediate<T>(_ body: (Database) throws -> T) throws(ChatLogError) -> T {
        do {
            return try pool.writeWithoutTransaction { db in
                var result: T?
                try db.inTransaction(.immediate) {
                    try keyRing.checkMaster(db)
                    result = try body(db)
                    return .commit
                }
                return result!
            }
        } catch {
            throw ChatLogError.wrap(error)
        }
    }

    func writeImmediate<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws(ChatLogError) -> T {
        do {
            return try await pool.writeWithoutTransaction { db in
                var result: T?
                try db.inTransaction(.immediate) {
                    try self.keyRing.checkMaster(db)
                    result = try body(db)
                    return .commit
                }
                return result!
            }
        } catch {
            throw ChatLogError.wrap(error)
        }
    }

    /// Seals outside the transaction under the keys this process believes active, then writes
    /// in one IMMEDIATE transaction that first checks those keys are still the active ones. If
    /// another process rotated meanwhile, the key ring is reloaded and the values sealed again,
    /// so no row is ever committed under a key that is no longer active (the rotation job's
    /// "nothing left under an old key" stays true once it has said so).
    func writeSealed<P, T>(
        _ prepare: (KeyRing.Loaded) throws(ChatLogError) -> P, body: (P, Database) throws -> T
    ) throws(ChatLogError) -> T {
        var refused: Set<KeyID> = []
        while true {
            let keys = keyRing.current
            let prepared = try prepare(keys)
            do {
                return try pool.writeWithoutTransaction { db in
                    var result: T?
                    try db.inTransaction(.immediate) {
                        try self.checkKeysForWrite(keys, db)
                        result = try body(prepared, db)
                        return .commit
                    }
                    return result!
                }
            } catch is StaleKeys {
                _ = try read { db in try self.keyRing.reload(db) }
            } catch let forgotten as ForgottenSubjectKey {
                try retryAfterForget(forgotten, &refused)
            } catch {
                throw ChatLogError.wrap(error)
            }
        }
    }

    func writeSealed<P: Sendable, T: Sendable>(
        _ prepare: (KeyRing.Loaded) throws(ChatLogError) -> P, body: @escaping @Sendable (P, Database) throws -> T
    ) async throws(ChatLogError) -> T {
        var refused: Set<KeyID> = []
        while true {
            let keys = keyRing.current
            let prepared = try prepare(keys)
            do {
                return try await pool.writeWithoutTransaction { db in
                    var result: T?
                    try db.inTransaction(.immediate) {
                        try self.checkKeysForWrite(keys, db)
                        result = try body(prepared, db)
                        return .commit
                    }
                    return result!
                }
            } catch is StaleKeys {
                _ = try await read { db in try self.keyRing.reload(db) }
            } catch let forgotten as ForgottenSubjectKey {
                try retryAfterForget(forgotten, &refused)
            } catch {
                throw ChatLogError.wrap(error)
            }
        }
    }

    /// A subject key this process held was forgotten meanwhile: drop it and seal again (the
    /// subject then gets a new key); refused a second time, a forget of it is still running.
    private func retryAfterForget(_ forgotten: ForgottenSubjectKey, _ refused: inout Set<KeyID>) throws(ChatLogError) {
        subjectKeys.evict([forgotten.id])
        guard refused.insert(forgotten.id).inserted else {
            throw .busy("a `chatlog forget` of this conversation's subject is in progress (or was interrupted: run `chatlog forget --resume`); try again")
        }
    }

    /// Thrown inside a write transaction (and so rolling it back) when the keys it sealed under
    /// are no longer active.
    struct StaleKeys: Error {}

    /// Inside a write transaction that seals under `keys`: the master key still matches the
    /// stored check value (else wrong key: another process ran `key rewrap`), and `keys` are still
    /// the active ones (else ``StaleKeys``: seal again under the new keys).
    func checkKeysForWrite(_ keys: KeyRing.Loaded, _ db: Database) throws {
        try keyRing.checkMaster(db)
        guard try Self.activeKeysUnchanged(keys, db) else { throw StaleKeys() }
    }

    static func activeKeysUnchanged(_ keys: KeyRing.Loaded, _ db: Database) throws -> Bool {
        let statement = try db.cachedStatement(sql: "SELECT kind, id FROM keys WHERE state = 'active'")
        for row in try Row.fetchAll(statement) {
            let stored: Int64 = try row.decode(forColumn: "id")
            let id = try KeyID.stored(stored, table: "keys", column: "id", rowID: String(stored))
            switch (try row.decode(String.self, forColumn: "kind")) {
            case "data": if id != keys.activeDataKey.id { return false }
            case "index": if id != keys.activeIndexKey.id { return false }
            default: break
            }
        }
        return true
    }

    func read<T>(_ body: (Database) throws -> T) throws(ChatLogError) -> T {
        do { return try pool.read(body) } catch { throw ChatLogError.wrap(error) }
    }

    func read<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws(ChatLogError) -> T {
        do { return try await pool.read(body) } catch { throw ChatLogError.wrap(error) }
    }
}
