import Foundation
import GRDB
import Testing

@testable import ChatLog
@testable import ChatLogPostgres

/// A migrated, empty PostgreSQL store in a new database of the shared test cluster, closed and
/// dropped after `body`.
func withPostgresStorage<R>(
    maximumConnections: Int = 8, _ body: (PostgresStorage, PostgresTestServer, String) async throws -> R
) async throws -> R {
    let server = try await PostgresTestServer.shared()
    return try await server.withDatabase { database in
        let location = try PostgresLocation(url: server.url(database: database), environment: [:], home: nil)
        let storage = try await PostgresStorage.connect(location, maximumConnections: maximumConnections)
        do {
            try await storage.migrate()
            let result = try await body(storage, server, database)
            await storage.close()
            return result
        } catch {
            await storage.close()
            throw error
        }
    }
}

/// A new SQLite store (the reference backend) in its own temporary directory, removed after `body`.
func withSQLiteStore<R>(_ body: (ChatLogStore) async throws -> R) async throws -> R {
    try await withSQLiteLocation { path in
        let store = try ChatLogStore.create(at: path, key: .key(.generate()), options: ChatLogStore.Options(passphraseKDF: .interactive))
        defer { try? store.close() }
        return try await body(store)
    }
}

/// The SQLite store's `chatlog_meta` and `keys` rows exactly as stored (typed meta values, wrapped
/// keys and MACs): what a copy moves without opening anything.
func storedMetaAndKeys(_ store: ChatLogStore) throws -> (meta: [String: MetaValue], keys: [StoredKeyRow]) {
    try store.read { db in
        var meta: [String: MetaValue] = [:]
        for row in try Row.fetchAll(db, sql: "SELECT name, value FROM chatlog_meta") {
            let value: DatabaseValue = row["value"]
            switch value.storage {
            case .int64(let number): meta[row["name"]] = .integer(number)
            case .string(let text): meta[row["name"]] = .text(text)
            case .blob(let data): meta[row["name"]] = .blob(data)
            case .null, .double: throw PostgresTestServerError("unexpected meta value type")
            }
        }
        let keys = try Row.fetchAll(db, sql: "SELECT id, kind, state, created_at, retired_at, wrapped, mac FROM keys ORDER BY id").map { row in
            StoredKeyRow(
                id: row["id"], kind: row["kind"], state: row["state"], createdAt: row["created_at"], retiredAt: row["retired_at"],
                wrapped: row["wrapped"], mac: row["mac"])
        }
        return (meta, keys)
    }
}

/// The guard a writer holding `store`'s keys passes.
func writeGuard(_ store: ChatLogStore) -> WriteGuard {
    let keys = store.keyRing.current
    let master = store.keyRing.master
    return WriteGuard(
        acceptedCheckValues: [Data(master.checkValueV2), Data(master.checkValue)], activeDataKeyID: Int64(keys.activeDataKey.id.rawValue),
        activeIndexKeyID: Int64(keys.activeIndexKey.id.rawValue))
}

/// Opens a sealed text with the store's keys (the core's opener; the backend never does).
func openText(_ store: ChatLogStore, _ sealed: Data, table: String, column: String, rowID: String) throws -> String {
    try store.read { db in try store.openText(sealed, FieldContext(table: table, column: column, rowID: rowID), db: db) }
}

/// A deterministic generator (SplitMix64) so a failing random test can be replayed from its seed.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

// MARK: - Both backends from one source

/// The backends the shared storage suites run against (`@Test(arguments: Backend.allCases)`).
enum Backend: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case sqlite, postgres
    var testDescription: String { rawValue }
}

/// A migrated, empty store of one backend, with what a test needs beside the seam: raw SQL for
/// checks (the same SQL on both where the tables agree), a second independent handle, and the
/// number of (term, message) pairs its search index holds.
struct StorageHarness: Sendable {
    let backend: Backend
    let storage: any ChatLogStorage
    /// SQLite: the file; PostgreSQL: the URL.
    let location: String
    let server: PostgresTestServer?
    let database: String?

    /// Runs SQL outside chatlog (another process would) and returns the first column of the
    /// first row as text ("" for none).
    @discardableResult
    func sql(_ text: String) throws -> String {
        switch backend {
        case .postgres: return try server!.psql(text, database: database!)
        case .sqlite:
            var configuration = Configuration()
            configuration.busyMode = .timeout(10)
            let queue = try DatabaseQueue(path: location, configuration: configuration)
            defer { try? queue.close() }
            return try queue.write { db in
                guard let row = try Row.fetchOne(db, sql: text) else { return "" }
                let value: DatabaseValue = row[0]
                return value.isNull ? "" : value.description.trimmingCharacters(in: CharacterSet(charactersIn: "\""))
            }
        }
    }

    /// Another handle on the same store, as another process would open it.
    func reopen() async throws -> any ChatLogStorage {
        switch backend {
        case .sqlite: return try SQLiteStorage.open(path: location)
        case .postgres: return try await PostgresStorage.connect(try PostgresLocation(url: location, environment: [:], home: nil), maximumConnections: 2)
        }
    }

    /// (term, message) pairs in the search index, and those of messages that no longer exist.
    func termPairs() throws -> (all: Int, orphaned: Int) {
        switch backend {
        case .postgres:
            // A message's terms are a column of its row (migration postgres/0010): none can outlive it.
            return (Int(try sql("SELECT coalesce(sum(cardinality(terms)), 0) FROM messages"))!, 0)
        case .sqlite:
            return (
                Int(try sql("SELECT count(*) FROM message_terms_instance"))!,
                Int(try sql("SELECT count(*) FROM message_terms_instance WHERE doc NOT IN (SELECT seq FROM messages)"))!
            )
        }
    }
}

/// A new, migrated store of `backend`, closed (and for PostgreSQL dropped) after `body`.
func withStorage<R>(_ backend: Backend, _ body: (StorageHarness) async throws -> R) async throws -> R {
    switch backend {
    case .postgres:
        return try await withPostgresStorage { storage, server, database in
            try await body(StorageHarness(backend: .postgres, storage: storage, location: server.url(database: database), server: server, database: database))
        }
    case .sqlite:
        var template = Array((NSTemporaryDirectory() + "/chatlog-storage-XXXXXX").utf8CString)
        guard let created = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw PostgresTestServerError("mkdtemp failed")
        }
        let directory = String(cString: created)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let storage = try SQLiteStorage.open(path: directory + "/store.db")
        do {
            try await storage.migrate()
            let result = try await body(StorageHarness(backend: .sqlite, storage: storage, location: storage.path, server: nil, database: nil))
            await storage.close()
            return result
        } catch {
            await storage.close()
            throw error
        }
    }
}

/// Every PostgreSQL suite is nested here (one name to filter or skip them by); they run in
/// parallel. A hang that once made them run one at a time was the driver's (docs/TESTING.md).
@Suite enum PostgreSQLSuites {}
