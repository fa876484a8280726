import ChatLog

extension ChatLogStore {
    /// Opens the store at `location`: a file path is a SQLite store (``open(at:key:options:)``);
    /// a `postgres://` or `postgresql://` URL a PostgreSQL one (``PostgresLocation`` for the
    /// URL's conventions; docs/ARCHITECTURE.md §10 for what works there so far). The password
    /// never needs to be in the URL: `PGPASSWORD` or `~/.pgpass` (0600) are read as libpq does.
    /// `subjectKeys`: for a PostgreSQL store, the URL of the database of its per-subject keys
    /// (`CHATLOG_SUBJECT_KEYS`; a database of its own, never the data's: docs/OPERATIONS.md);
    /// without it a conversation with a subject is refused. Ignored for a SQLite store (its keys
    /// are in the file next to it).
    public static func open(
        url location: String, key source: MasterKeySource, options: Options = Options(), subjectKeys: String? = nil
    ) async throws(ChatLogError)
        -> ChatLogStore
    {
        guard PostgresLocation.isPostgresURL(location) else { return try open(at: location, key: source, options: options) }
        return try await onPostgres(location, subjectKeys: subjectKeys) { (storage, keys) async throws(ChatLogError) in
            try await open(storage: storage, key: source, options: options, subjectKeys: keys)
        }
    }

    /// Creates a store at `location` (a path or a PostgreSQL URL, as for ``open(url:key:options:)``).
    /// Throws ``ChatLogError/storeExists(path:)`` when one is there already.
    public static func create(
        url location: String, key source: MasterKeySource, options: Options = Options(), subjectKeys: String? = nil
    ) async throws(ChatLogError)
        -> ChatLogStore
    {
        guard PostgresLocation.isPostgresURL(location) else { return try create(at: location, key: source, options: options) }
        return try await onPostgres(location, subjectKeys: subjectKeys) { (storage, keys) async throws(ChatLogError) in
            try await create(storage: storage, key: source, options: options, subjectKeys: keys)
        }
    }

    /// Connects to `location` (and to the subject-key database `subjectKeys`, refused when it is
    /// the data's own) and runs `body`; the connections are released when it fails.
    private static func onPostgres(
        _ location: String, subjectKeys: String?, _ body: (PostgresStorage, PostgresSubjectKeys?) async throws(ChatLogError) -> ChatLogStore
    ) async throws(ChatLogError) -> ChatLogStore {
        let data = try PostgresLocation(url: location)
        var keysLocation: PostgresLocation?
        if let subjectKeys {
            guard PostgresLocation.isPostgresURL(subjectKeys) else {
                throw .subjectKeyStore(
                    location: data.description, reason: "CHATLOG_SUBJECT_KEYS must be a postgres:// or postgresql:// URL of a database of its own")
            }
            keysLocation = try PostgresLocation(url: subjectKeys)
        }
        let storage = try await PostgresStorage.connect(data)
        var keys: PostgresSubjectKeys?
        do {
            if let keysLocation { keys = try await PostgresSubjectKeys.connect(keysLocation, data: data) }
            return try await body(storage, keys)
        } catch {
            await storage.close()
            await keys?.close()
            throw error
        }
    }
}

extension ChatLogStore {
    /// Copies this store to `location` — a PostgreSQL URL or a SQLite file path, new or holding an
    /// interrupted copy of this store — without opening any sealed value, then verifies the copy
    /// (docs/OPERATIONS.md, "Moving a store: chatlog copy"). The subject keys go with it: to
    /// `location.subject-keys` for a file; for PostgreSQL to `subjectKeys`, the URL of a database
    /// of their own (refused: the destination's own database, one holding a store, the source's
    /// subject-key database, another store's keys). A copy of a store with subject keys into
    /// PostgreSQL without `subjectKeys` is refused before anything is written.
    public func copy(to location: String, subjectKeys: String? = nil, progress: (@Sendable (Int) -> Void)? = nil) async throws(ChatLogError)
        -> CopyReport
    {
        guard PostgresLocation.isPostgresURL(location) else {
            if subjectKeys != nil {
                throw .invalidInput(
                    "a subject-key database is for a PostgreSQL destination; a copy into a file puts the subject keys next to it (\(location)\(SubjectKeyFileCopy.suffix))")
            }
            return try await copy(toFile: location, progress: progress)
        }
        let data = try PostgresLocation(url: location)
        var keysLocation: PostgresLocation?
        if let subjectKeys {
            guard PostgresLocation.isPostgresURL(subjectKeys) else {
                throw .invalidInput("the destination's subject-key database must be a postgres:// or postgresql:// URL of a database of its own")
            }
            keysLocation = try PostgresLocation(url: subjectKeys)
        }
        let destination = try await PostgresStorage.connect(data)
        do throws(ChatLogError) {
            if destination.location == path { throw ChatLogError.invalidInput("the destination is this store") }
            // The same database by another name: caught by the server, not by the name.
            if let source = storage as? PostgresStorage, try await destination.isSameDatabase(as: source) {
                throw ChatLogError.invalidInput("the destination is this store (its database by another name)")
            }
        } catch {
            await destination.close()
            throw error
        }
        var keys: PostgresSubjectKeys?
        do {
            if let keysLocation { keys = try await PostgresSubjectKeys.connect(keysLocation, data: data, setting: "--subject-keys-to") }
        } catch {
            await destination.close()
            throw error
        }
        do {
            let report = try await copyAndClose(to: destination, subjectKeys: keys, progress: progress)
            await keys?.close()
            return report
        } catch {
            await keys?.close()
            throw error
        }
    }
}
