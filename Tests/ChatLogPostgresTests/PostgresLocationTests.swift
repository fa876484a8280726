import Foundation
import Testing

@testable import ChatLog
@testable import ChatLogPostgres

#if canImport(Glibc)
    import Glibc
#endif

extension PostgreSQLSuites {
    /// `postgres://` locations with libpq's conventions: defaults from PG… variables, socket folders,
    /// the password file and its 0600 rule, sslmode; no password ever in a description or error.
    @Suite("PostgreSQL locations")
    struct PostgresLocationTests {
        @Test("URL forms: TCP, IPv6, socket folder in the host part or as host=, defaults from the environment")
        func forms() throws {
            let tcp = try PostgresLocation(url: "postgresql://app@db.example:6543/logs?sslmode=verify-full&sslrootcert=/etc/ca.pem", environment: [:], home: nil)
            #expect(tcp.endpoint == .tcp(host: "db.example", port: 6543))
            #expect(tcp.user == "app")
            #expect(tcp.database == "logs")
            #expect(tcp.sslMode == .verifyFull)
            #expect(tcp.sslRootCert == "/etc/ca.pem")
            #expect(tcp.description == "postgresql://app@db.example:6543/logs")

            let v6 = try PostgresLocation(url: "postgres://u@[::1]:5433/d", environment: [:], home: nil)
            #expect(v6.endpoint == .tcp(host: "::1", port: 5433))
            #expect(v6.description == "postgresql://u@[::1]:5433/d")

            let encoded = try PostgresLocation(url: "postgresql://u@%2Frun%2Fpostgresql/d", environment: [:], home: nil)
            #expect(encoded.endpoint == .socket(folder: "/run/postgresql", port: 5432))
            let query = try PostgresLocation(url: "postgresql:///d?host=/tmp/x&port=7000&user=me", environment: [:], home: nil)
            #expect(query.endpoint == .socket(folder: "/tmp/x", port: 7000))
            #expect(query.user == "me")

            let defaults = try PostgresLocation(
                url: "postgresql://", environment: ["PGHOST": "h", "PGPORT": "7777", "PGUSER": "pu", "PGDATABASE": "pd", "PGSSLMODE": "require"], home: nil)
            #expect(defaults.endpoint == .tcp(host: "h", port: 7777))
            #expect(defaults.user == "pu")
            #expect(defaults.database == "pd")
            #expect(defaults.sslMode == .require)
            let noDatabase = try PostgresLocation(url: "postgresql://someone@h", environment: [:], home: nil)
            #expect(noDatabase.database == "someone")
            #expect(noDatabase.sslMode == .prefer)
            #expect(try PostgresLocation(url: "postgresql://u@/d", environment: [:], home: nil).endpoint == .socket(folder: "/var/run/postgresql", port: 5432))
            #expect(PostgresLocation.isPostgresURL("POSTGRES://x"))
            #expect(!PostgresLocation.isPostgresURL("chat.db"))
            #expect(!PostgresLocation.isPostgresURL("./postgres://x"))
        }

        @Test("bad locations: one specific line each")
        func refusals() {
            let cases: [(String, String)] = [
                ("postgresql://u@h:0/d", "port"),
                ("postgresql://u@h:99999/d", "port"),
                ("postgresql://u@h:x/d", "port"),
                ("postgresql://u@h/d?sslmode=sometimes", "sslmode"),
                ("postgresql://u@h/d?password=secret", "PGPASSWORD"),
                ("postgresql://u@h/d?options=-c%20x", "not supported"),
                ("postgresql://u@h1,h2/d", "several hosts"),
                ("postgresql://u@h/d?sslmode=require&sslmode=disable", "twice"),
                ("postgresql://u@h/d#frag", "fragment"),
                ("postgresql://u@h/%zz", "%-escape"),
            ]
            for (url, fragment) in cases {
                do {
                    _ = try PostgresLocation(url: url, environment: [:], home: nil)
                    Issue.record("\(url) was accepted")
                } catch {
                    #expect(error.description.contains(fragment), "\(url): \(error)")
                    #expect(!error.description.contains("\n"))
                    #expect(!error.description.contains("secret"))
                }
            }
        }

        @Test("password sources: URL, then PGPASSWORD, then the password file; never shown")
        func passwords() throws {
            let fromURL = try PostgresLocation(url: "postgresql://u:s3cr%40t@h/d", environment: ["PGPASSWORD": "other"], home: nil)
            #expect(fromURL.password == "s3cr@t")
            #expect(fromURL.passwordSource == "the URL")
            #expect(!fromURL.description.contains("s3cr"))
            #expect(!String(describing: fromURL).contains("s3cr"))
            let fromEnvironment = try PostgresLocation(url: "postgresql://u@h/d", environment: ["PGPASSWORD": "pw1"], home: nil)
            #expect(fromEnvironment.password == "pw1")
            #expect(fromEnvironment.passwordSource == "PGPASSWORD")
        }

        @Test("the password file: first matching line, wildcards and escapes; refused unless the user's own and 0600")
        func passwordFile() throws {
            let directory = NSTemporaryDirectory() + "/chatlog-pgpass-\(UUID().uuidString)"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let file = directory + "/.pgpass"
            let lines = [
                "# comment",
                "other:5432:d:u:wrong-host",
                "h:5432:d:u:pa\\:ss\\\\word",
                "*:*:*:u:fallback",
                "localhost:5432:*:sock:via-socket",
            ]
            #expect(FileManager.default.createFile(atPath: file, contents: Data(lines.joined(separator: "\n").utf8), attributes: [.posixPermissions: 0o600]))
            let tcp = try PostgresLocation(url: "postgresql://u@h/d", environment: ["PGPASSFILE": file], home: nil)
            #expect(tcp.password == "pa:ss\\word")
            #expect(tcp.passwordSource == file)
            let other = try PostgresLocation(url: "postgresql://u@elsewhere:1234/x", environment: ["PGPASSFILE": file], home: nil)
            #expect(other.password == "fallback")
            let socket = try PostgresLocation(url: "postgresql://sock@/d?host=/tmp/s", environment: [:], home: directory)
            #expect(socket.password == "via-socket")
            let none = try PostgresLocation(url: "postgresql://nobody-here@h/d", environment: ["PGPASSFILE": file], home: nil)
            #expect(none.password == nil)

            chmod(file, 0o644)
            do {
                _ = try PostgresLocation(url: "postgresql://u@h/d", environment: ["PGPASSFILE": file], home: nil)
                Issue.record("a 0644 password file was used")
            } catch {
                #expect(error.description.contains("chmod 600"))
                #expect(error.description.contains(file))
                #expect(!error.description.contains("pa:ss"))
            }
            // PGPASSWORD wins before the file is even looked at.
            #expect(try PostgresLocation(url: "postgresql://u@h/d", environment: ["PGPASSFILE": file, "PGPASSWORD": "x"], home: nil).password == "x")
        }
    }
}
