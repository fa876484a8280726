import GRDB

/// One schema migration, compiled in from `migrations/NNNN_name.sql` by the EmbedMigrations
/// build plugin (the generated list is `embeddedMigrations`). `package`: the PostgreSQL backend
/// embeds `migrations/postgres/` with the same plugin.
package struct EmbeddedMigration: Sendable {
    package let version: Int
    package let name: String
    package let sql: String

    package init(version: Int, name: String, sql: String) {
        self.version = version
        self.name = name
        self.sql = sql
    }

    package var identifier: String {
        let digits = String(version)
        return String(repeating: "0", count: max(0, 4 - digits.count)) + digits + "_" + name
    }
}

/// Applies the embedded migrations in order, each in its own IMMEDIATE transaction, recorded by
/// GRDB's `DatabaseMigrator` (table `grdb_migrations`).
enum Schema {
    static var migrations: [EmbeddedMigration] { embeddedMigrations }
    static var latestVersion: Int { migrations.last?.version ?? 0 }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        for migration in migrations {
            let sql = migration.sql
            migrator.registerMigration(migration.identifier) { db in
                try db.execute(sql: sql)
            }
        }
        return migrator
    }

    /// The highest migration version recorded in the file (0 for none).
    static func appliedVersion(_ db: Database) throws -> Int {
        let identifiers = try migrator.appliedIdentifiers(db)
        return identifiers.compactMap { Int($0.prefix(4)) }.max() ?? 0
    }

    /// For a read-only open: the file must be at exactly this binary's schema (an upgrade writes).
    static func requireCurrent(_ reader: DatabasePool, path: String) throws(ChatLogError) {
        let applied: (superseded: Bool, version: Int)
        do {
            let migrator = self.migrator
            applied = try reader.read { db in (try migrator.hasBeenSuperseded(db), try appliedVersion(db)) }
        } catch {
            throw ChatLogError.wrap(error)
        }
        if applied.superseded { throw .schemaTooNew(found: applied.version, supported: latestVersion) }
        if applied.version < latestVersion {
            throw .invalidInput(
                "\(path) has schema version \(applied.version) and needs an upgrade to \(latestVersion), which a read-only open cannot do; run a chatlog command that writes on it once with write access")
        }
    }

    /// Refuses a file migrated by a newer chatlog, then applies what is missing.
    static func migrate(_ writer: DatabasePool) throws(ChatLogError) {
        do {
            let migrator = self.migrator
            let superseded = try writer.read { db in
                (try migrator.hasBeenSuperseded(db), try appliedVersion(db))
            }
            if superseded.0 {
                throw ChatLogError.schemaTooNew(found: superseded.1, supported: latestVersion)
            }
            try migrator.migrate(writer)
        } catch {
            throw ChatLogError.wrap(error)
        }
    }

    /// One schema object as `sqlite_master` lists it.
    struct SchemaObject: Hashable, Sendable {
        let type: String
        let name: String
        let table: String
        let sql: String?
    }

    /// The schema chatlog's migrations create: the embedded migrations applied to an in-memory
    /// database once per process. Deriving it (instead of a hand-kept list) lets every migration,
    /// whoever adds it, define what is allowed.
    static let expectedObjects: Result<Set<SchemaObject>, ChatLogError> = {
        do {
            let queue = try DatabaseQueue()
            try migrator.migrate(queue)
            return .success(try queue.read(objects))
        } catch {
            return .failure(ChatLogError.wrap(error))
        }
    }()

    /// The digest (``digest(of:)``) of ``expectedObjects``: the schema migrations 0001–0011 create.
    /// SchemaDigestTests recomputes it from the embedded migrations, so a new migration fails that
    /// test until this constant is updated (the test prints the new value). Were it stale, every
    /// open would only take the slow path (the in-memory migrations), never accept another schema.
    static let expectedDigest = "3f06de1223310e1320458e6e800ce104a8e761a850d39d83471ddab9d0581f59"

    /// A BLAKE2b-256 digest of schema objects, in name order, each field length-prefixed (no
    /// separator a definition could contain can make two different sets encode alike).
    static func digest(of objects: Set<SchemaObject>) -> String {
        var encoded: [UInt8] = []
        func append(_ field: String?) {
            guard let field else {
                encoded += Array("-".utf8)
                return
            }
            let bytes = Array(field.utf8)
            encoded += Array("\(bytes.count):".utf8) + bytes
        }
        for object in objects.sorted(by: { ($0.name, $0.type, $0.table) < ($1.name, $1.type, $1.table) }) {
            append(object.type)
            append(object.name)
            append(object.table)
            append(object.sql)
        }
        let key = Array("chatlog schema digest, version 1".utf8)  // 32 bytes: domain separation
        var output = [UInt8](repeating: 0, count: 32)
        key.withUnsafeBytes { key in
            encoded.withUnsafeBytes { message in
                output.withUnsafeMutableBytes { output in Sodium.keyedHash(key: key, message: message, into: output) }
            }
        }
        let digits = Array("0123456789abcdef".utf8)
        return String(decoding: output.flatMap { [digits[Int($0 >> 4)], digits[Int($0 & 15)]] }, as: UTF8.self)
    }

    /// `sqlite_stat1`…`sqlite_stat4` are SQLite's own planner statistics (an operator's `ANALYZE`
    /// or `PRAGMA optimize` makes them); they hold no data and change no behaviour but plans.
    static func objects(_ db: Database) throws -> Set<SchemaObject> {
        Set(
            try Row.fetchAll(db, sql: "SELECT type, name, tbl_name, sql FROM main.sqlite_master WHERE name NOT LIKE 'sqlite\\_stat%' ESCAPE '\\'").map { row in
                SchemaObject(type: row["type"], name: row["name"], table: row["tbl_name"], sql: row["sql"])
            })
    }

    /// Refuses a store holding a trigger, view, table or index that chatlog's migrations did not
    /// create, or one whose definition differs (a planted `AFTER INSERT ON keys` trigger could
    /// re-pin an old key). An integrity failure naming the object; checked at every open, after
    /// migrating, before anything is read with the key.
    static func refuseUnknownObjects(_ db: Database) throws {
        let found = try objects(db)
        // The common case, answered without applying the migrations in memory (~6 ms per process
        // since migration 0011): the store holds exactly the schema whose digest is known.
        if digest(of: found) == expectedDigest { return }
        let expected = try expectedObjects.get()
        let expectedNames = Dictionary(expected.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        for object in found.subtracting(expected).sorted(by: { $0.name < $1.name }) {
            let reason =
                expectedNames[object.name] == nil
                ? "was not created by chatlog's migrations (remove it, or restore a backup)"
                : "differs from the definition chatlog's migrations create (restore a backup)"
            throw ChatLogError.integrity(
                IntegrityFailure(table: "sqlite_master", column: object.type, rowID: object.name, reason: .invalidValue(reason)))
        }
        for object in expected.subtracting(found).sorted(by: { $0.name < $1.name }) where !found.contains(where: { $0.name == object.name }) {
            throw ChatLogError.integrity(
                IntegrityFailure(
                    table: "sqlite_master", column: object.type, rowID: object.name,
                    reason: .invalidValue("is missing: chatlog's migrations create it (restore a backup)")))
        }
    }
}
