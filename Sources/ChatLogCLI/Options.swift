import ArgumentParser
import ChatLog
import ChatLogPostgres
import Foundation

/// `--db`, shared by every command that opens a store.
struct StoreOptions: ParsableArguments {
    @Option(
        name: .long,
        help: "Database file, or a postgres:// URL without its password (default: $CHATLOG_DB, else ./chatlog.db).")
    var db: String?

    /// The store's location: a file path, or a PostgreSQL URL. A password in a URL given with
    /// `--db` would be visible in the process list: refused (PGPASSWORD, ~/.pgpass, or the URL
    /// in CHATLOG_DB instead).
    func path(_ settings: ChatLogSettings) throws(ChatLogError) -> String {
        if let db {
            try Self.refusePassword(db, option: "--db")
            return db
        }
        return try settings.databasePath ?? "chatlog.db"
    }

    /// A store location given on the command line (`--db`, `copy --to`) must not hold a password.
    static func refusePassword(_ location: String, option: String) throws(ChatLogError) {
        if PostgresLocation.isPostgresURL(location), try PostgresLocation(url: location).passwordSource == "the URL" {
            throw .invalidInput(
                "\(option) must not carry a password (the process list shows it): use PGPASSWORD, ~/.pgpass (0600), or put the URL in CHATLOG_DB")
        }
    }
}

struct OutputOptions: ParsableArguments {
    @Flag(name: .long, help: "Print JSON instead of text.")
    var json = false
}

/// Opening a store from the CLI: settings from the environment and ./.env, the master key from
/// them (or a passphrase prompt on a terminal), then the environment is scrubbed.
enum StoreAccess {
    static func settings() async throws(ChatLogError) -> ChatLogSettings {
        try await ChatLogSettings.load()
    }

    static func keySource(_ settings: ChatLogSettings, confirmPassphrase: Bool = false) throws(ChatLogError) -> MasterKeySource {
        let prompt: (@Sendable () throws(ChatLogError) -> Passphrase)? =
            TerminalPrompt.isAvailable
            ? { @Sendable () throws(ChatLogError) -> Passphrase in try TerminalPrompt.passphrase(confirm: confirmPassphrase) } : nil
        let source = try settings.masterKeySource(prompt: prompt)
        ProcessHygiene.scrubEnvironment()
        return source
    }

    static func open(_ options: StoreOptions, readOnly: Bool = false) async throws(ChatLogError) -> ChatLogStore {
        let settings = try await settings()
        let path = try options.path(settings)
        if PostgresLocation.isPostgresURL(path) {
            var storeOptions = ChatLogStore.Options()
            storeOptions.readOnly = readOnly
            return try await ChatLogStore.open(
                url: path, key: try keySource(settings), options: storeOptions, subjectKeys: try settings.subjectKeysLocation)
        }
        // A missing store is reported before asking for a key or passphrase.
        if !ChatLogStore.exists(at: path) { throw .storeNotFound(path: path) }
        var storeOptions = ChatLogStore.Options()
        storeOptions.readOnly = readOnly && !ChatLogStore.isWritable(at: path)
        var attempt = 1
        while true {
            let source = try keySource(settings)
            do throws(ChatLogError) {
                return try ChatLogStore.open(at: path, key: source, options: storeOptions)
            } catch {
                // A passphrase (prompted or from a file) that derives another key is a wrong
                // passphrase; at the prompt, two more tries.
                // (The library says "wrong passphrase", never with the derived key's fingerprint.)
                guard case .wrongPassphrase = error, source.origin == "passphrase prompt", attempt < TerminalPrompt.tries else {
                    throw error
                }
                TerminalPrompt.say("wrong passphrase, try again")
                attempt += 1
                continue
            }
        }
    }

    /// For commands that only read (list, show, search, verify, export, stats, key status): a
    /// store this user cannot write (a 0444 file, a read-only directory or mount, a restored
    /// backup) is opened read-only and leaves no `-wal`/`-shm` behind. A writable store is opened
    /// as usual: a read-only SQLite connection cannot remove the `-wal` and `-shm` it creates in
    /// a writable directory (the last read-write connection does, on close), and a store written
    /// by an older chatlog is upgraded on the way.
    static func openForReading(_ options: StoreOptions) async throws(ChatLogError) -> ChatLogStore {
        try await open(options, readOnly: true)
    }
}
