import GRDB

/// One schema migration, compiled in from `migrations/NNNN_name.sql` by the EmbedMigrations
/// build plugin (the generated list is `embeddedMigrations`).
struct EmbeddedMigration: Sendable {
    let version: Int
    let name: String
    let sql: String

    var identifier: String {
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
}
