import GRDB

/// Every error chatlog's library throws. Descriptions are one line, name places (table, column,
/// row id, file path, key id, fingerprints) and never carry plaintext, ciphertext or key bytes.
public enum ChatLogError: Error, Sendable, Equatable, CustomStringConvertible {
    // Keys
    /// No master key was found; the text says how to provide one.
    case missingKey(String)
    /// A master key was given but is malformed (length, encoding).
    case invalidKey(String)
    /// A placeholder key (all zeros, the README example, …) was refused.
    case placeholderKey(String)
    /// The key opens nothing in this store. `source` says where the key came from.
    case wrongKey(expected: KeyFingerprint, given: KeyFingerprint, source: String)
    /// The passphrase does not derive this store's master key. No fingerprint of the derived key
    /// is shown: it would let whoever reads the message test guesses offline.
    case wrongPassphrase(expected: KeyFingerprint, source: String)
    /// `CHATLOG_MASTER_KEY_FILE` (or a similar file) was refused before reading it.
    case keyFileRejected(path: String, reason: String)
    /// The subject-key file (`STORE.subject-keys`) cannot be used: another store's, another
    /// master key's, not such a file.
    case subjectKeyFile(path: String, reason: String)
    /// The subject-key store of a store on another backend (PostgreSQL: the database named by
    /// `CHATLOG_SUBJECT_KEYS`) cannot be used: not named, the data's own database, another store's.
    case subjectKeyStore(location: String, reason: String)
    /// The passphrase could not be read or derived.
    case passphrase(String)

    // Integrity
    /// A sealed value did not open: tampered, truncated, or moved from another place.
    case integrity(IntegrityFailure)

    // Store and input
    case storeNotFound(path: String)
    /// The store path names a directory (`--db /var/lib/app` instead of `/var/lib/app/chat.db`).
    case storeIsADirectory(path: String)
    case storeExists(path: String)
    case notAChatLogStore(path: String, reason: String)
    case schemaTooNew(found: Int, supported: Int)
    case conversationNotFound(String)
    case invalidInput(String)
    /// A lock or busy database outlasted the timeout.
    case busy(String)
    /// Another key-maintenance job (rotate, rewrap, retire) holds the store's key lock.
    case locked(holder: Int32?, path: String)
    /// A key cannot be retired while rows still use it.
    case keyInUse(KeyID, rows: Int)
    /// An index key still checks proxy tokens that were not presented since it was replaced:
    /// retiring it would lock their apps out.
    case keyChecksProxyTokens(KeyID, names: [String])
    /// No data or index key has this id.
    case keyNotFound(KeyID)
    /// The active key cannot be retired.
    case keyIsActive(KeyID)
    /// The key was retired before.
    case keyAlreadyRetired(KeyID)
    /// `key rewrap` was given the current master key as the new one.
    case sameMasterKey
    /// A key operation that does not apply (retiring the active key, an unknown key id, …).
    case keyOperation(String)
    /// SQLite or the file system failed; the text is SQLite's message without bound values.
    case storage(String)
    /// What was asked (`what`) is built for SQLite stores only so far; the store at `location` (a
    /// URL without its password) is on another backend.
    case notOnThisBackend(location: String, what: String)

    public var description: String {
        switch self {
        case .missingKey(let how): "no master key: \(how)"
        case .invalidKey(let why): "invalid master key: \(why)"
        case .placeholderKey(let which): "refusing \(which) as master key: generate a real one with `chatlog key generate`"
        case .wrongKey(let expected, let given, let source):
            "wrong master key from \(source): this store expects key \(expected), the key given is \(given)"
        case .wrongPassphrase(let expected, let source):
            "wrong passphrase (\(source)): it does not derive this store's master key \(expected)"
        case .keyFileRejected(let path, let reason): "refusing key file \(path): \(reason)"
        case .subjectKeyFile(let path, let reason): "subject-key file \(path): \(reason)"
        case .subjectKeyStore(let location, let reason): "subject-key store of \(location): \(reason)"
        case .passphrase(let why): "passphrase: \(why)"
        case .integrity(let failure): "integrity failure: \(failure)"
        case .storeNotFound(let path): "no chatlog store at \(path) (create one with `chatlog init`)"
        case .storeIsADirectory(let path): "\(path) is a directory; give the path of the store file in it (e.g. \(path)/chatlog.db)"
        case .storeExists(let path): "a chatlog store already exists at \(path)"
        case .notAChatLogStore(let path, let reason): "\(path) is not a chatlog store: \(reason)"
        case .schemaTooNew(let found, let supported):
            "the store's schema version \(found) is newer than this chatlog understands (up to \(supported)); upgrade chatlog"
        case .conversationNotFound(let id): "no conversation with id \(id)"
        case .invalidInput(let why): "invalid input: \(why)"
        case .busy(let why): "busy: \(why)"
        case .locked(let holder, let path):
            "another key job holds the lock \(path)" + (holder.map { " (process \($0))" } ?? "") + "; try again when it has finished"
        case .keyInUse(let id, let rows): "key \(id) is still used by \(rows) rows; finish `chatlog key rotate` first"
        case .keyChecksProxyTokens(let id, let names):
            "key \(id) still checks \(names.count) proxy token\(names.count == 1 ? "" : "s") not used since the index key changed (\(names.prefix(5).map(Self.quotedName).joined(separator: ", "))\(names.count > 5 ? ", …" : "")): "
                + "retiring it would lock their apps out; make one call with each through `chatlog serve` (it moves the token to the active key) or revoke it (`chatlog token revoke NAME`), then retire"
        case .keyNotFound(let id): "no key with id \(id) (see `chatlog key status`)"
        case .keyIsActive(let id): "key \(id) is active; rotate to a new key before retiring it"
        case .keyAlreadyRetired(let id): "key \(id) is already retired"
        case .notOnThisBackend(let location, let what):
            "\(what) does not work on a PostgreSQL store yet (\(location)); init, log, import, list, show, search, export, stats, verify, rm, prune, status, key, backup, copy, token and serve do"
        case .sameMasterKey: "the new master key is the same as the current one; set CHATLOG_NEW_MASTER_KEY (or _FILE) to a new key"
        case .keyOperation(let why): why
        case .storage(let why): "storage error: \(why)"
        }
    }

    /// Broad classes for callers that map errors to exit codes or HTTP statuses.
    public enum Category: Sendable {
        case key, integrity, invalidInput, notFound, busy, usage, other
    }

    public var category: Category {
        switch self {
        case .missingKey, .invalidKey, .placeholderKey, .wrongKey, .wrongPassphrase, .keyFileRejected, .subjectKeyFile, .subjectKeyStore, .passphrase: .key
        case .integrity: .integrity
        case .invalidInput, .schemaTooNew, .notAChatLogStore, .storeExists, .keyInUse, .keyChecksProxyTokens, .keyIsActive, .keyAlreadyRetired: .invalidInput
        case .storeNotFound, .storeIsADirectory, .conversationNotFound, .keyNotFound: .notFound
        case .busy, .locked: .busy
        case .sameMasterKey, .notOnThisBackend: .usage
        case .storage, .keyOperation: .other
        }
    }

    /// Wraps GRDB's errors. `DatabaseError.description` leaves bound values out unless
    /// `publicStatementArguments` is set (chatlog never sets it), so the SQL and SQLite's
    /// message are safe to show; we keep only SQLite's message and code.
    /// A token name as an error shows it: printable ASCII only (the name is read from the file,
    /// which someone may have changed), quoted.
    static func quotedName(_ name: String) -> String {
        "'" + String(String.UnicodeScalarView(name.unicodeScalars.prefix(64).map { $0.value >= 0x20 && $0.value < 0x7F && $0 != "'" ? $0 : "?" })) + "'"
    }

    static func wrap(_ error: any Error) -> ChatLogError {
        if let error = error as? ChatLogError { return error }
        // GRDB's typed row access: a NULL (or unreadable value) where the schema says NOT NULL,
        // which only a damaged file holds. Its description would show row values: not used.
        if error is RowDecodingError {
            return .storage("the database file is damaged: a required value is missing or unreadable (run `chatlog verify`)")
        }
        if let error = error as? DatabaseError {
            switch error.resultCode {
            case .SQLITE_BUSY, .SQLITE_LOCKED:
                return .busy("the database stayed locked past the busy timeout (\(error.message ?? "locked"))")
            case .SQLITE_NOTADB:
                return .storage("file is not a database (SQLITE_NOTADB)")
            case .SQLITE_FULL:
                return .storage("disk full (SQLITE_FULL); nothing from the failed transaction was written")
            case .SQLITE_READONLY:
                return .storage("the database is read-only (\(error.message ?? "SQLITE_READONLY"))")
            default:
                return .storage("\(error.message ?? "SQLite error") (code \(error.extendedResultCode.rawValue))")
            }
        }
        return .storage(String(describing: type(of: error)))
    }
}

/// Where a sealed value failed to open, and why. Never holds the value itself.
public struct IntegrityFailure: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Reason: Sendable, Equatable {
        /// The MAC did not verify: the bytes were changed, or the value was sealed for another
        /// row, column or store.
        case authenticationFailed
        case truncated(length: Int)
        case unsupportedVersion(UInt8)
        case unknownKey(KeyID)
        case retiredKey(KeyID)
        /// The value is sealed under the key of a subject that was forgotten (`chatlog forget`):
        /// it can never be opened again (an old backup restored after the forget).
        case forgottenSubjectKey(KeyID)
        /// The value names a subject key the subject-key file does not have (missing or another
        /// store's file).
        case unknownSubjectKey(KeyID)
        case badPadding
        case invalidUTF8
        case invalidJSON
        /// A key-id column holds a number no key id can be (outside 0…2^32−1): damage.
        case invalidKeyID(Int64)
        /// An id column holds something other than a UUID (its value is not repeated).
        case invalidID
        /// A plain value that is outside what chatlog writes there (the text says how, never
        /// the value itself when it could be user data).
        case invalidValue(String)
    }

    public let table: String
    public let column: String
    public let rowID: String
    public let reason: Reason

    public init(table: String, column: String, rowID: String, reason: Reason) {
        self.table = table
        self.column = column
        self.rowID = rowID
        self.reason = reason
    }

    public var description: String {
        let place = "\(table).\(column) of row \(rowID)"
        switch reason {
        case .authenticationFailed:
            return "\(place) does not open: its bytes were altered, or it was copied from another row, column or store"
        case .truncated(let length): return "\(place) is truncated (\(length) bytes)"
        case .unsupportedVersion(let version): return "\(place) has unknown format version \(version)"
        case .unknownKey(let id): return "\(place) names key \(id), which this store does not have"
        case .retiredKey(let id): return "\(place) names key \(id), which was retired (its material destroyed)"
        case .forgottenSubjectKey(let id):
            return "\(place) is sealed under the key of a forgotten subject (subject key \(id), destroyed by `chatlog forget`); it can never be opened"
        case .unknownSubjectKey(let id):
            return "\(place) names subject key \(id), which the subject-key file does not have (is STORE.subject-keys missing, or another store's?)"
        case .badPadding: return "\(place) has invalid padding"
        case .invalidUTF8: return "\(place) is not valid UTF-8 after opening"
        case .invalidJSON: return "\(place) is not valid JSON after opening"
        case .invalidKeyID(let value): return "\(place) holds \(value), which is not a key id"
        case .invalidID: return "\(place) is not a UUID"
        case .invalidValue(let why): return "\(place) \(why)"
        }
    }
}
