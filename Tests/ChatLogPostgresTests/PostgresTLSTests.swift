import Foundation
import PostgresNIO
import Testing

@testable import ChatLog
@testable import ChatLogPostgres

extension PostgreSQLSuites {
    /// sslmode and passwords against a local server with its own CA: TCP on 127.0.0.1 only with TLS
    /// and a SCRAM password; the certificate names `localhost` only (PostgresTestServer `tls`).
    @Suite("PostgreSQL TLS and passwords")
    struct PostgresTLSTests {
        /// One TLS cluster for all the cases, started and stopped by the one test (no shared static:
        /// a blocking once-initializer in several tests at once starved the two-thread cooperative
        /// pool, and the whole run hung).
        @Test("sslmode and passwords against a local CA: verify-full, verify-ca, require, prefer; failures; passwords")
        func tlsAndPasswords() async throws {
            let server = try await PostgresTestServer.startOffPool(tls: true)
            defer { server.stop() }
            try await verifyFull(server)
            try await verifyCAAndRequire(server)
            try await tlsFailures(server)
            try await passwords(server)
        }

        /// Connects as the password user over TCP and says whether the session is encrypted.
        func sessionUsesTLS(_ url: String, environment: [String: String]) async throws -> Bool {
            try await sessionValues(url, environment: environment, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", as: Bool.self).first ?? false
        }

        /// The server's TCP keepalive settings of a pooled session over TCP (count, idle, interval): set by
        /// chatlog at startup, since idle connections get no keep-alive query (PostgresStorage.connect).
        func sessionKeepalives(_ url: String, environment: [String: String]) async throws -> [String] {
            try await sessionValues(
                url, environment: environment,
                "SELECT setting FROM pg_settings WHERE name IN ('tcp_keepalives_idle', 'tcp_keepalives_interval', 'tcp_keepalives_count') ORDER BY name",
                as: String.self)
        }

        /// `sql`'s single column, read on a pooled session of a storage connected to `url`.
        func sessionValues<T: PostgresDecodable & Sendable>(
            _ url: String, environment: [String: String], _ sql: String, as type: T.Type
        ) async throws -> [T] {
            let storage = try await PostgresStorage.connect(try PostgresLocation(url: url, environment: environment, home: nil), maximumConnections: 1)
            defer { Task { await storage.close() } }
            var values: [T] = []
            for try await value in try await storage.client.query(PostgresQuery(unsafeSQL: sql)).decode(T.self) { values.append(value) }
            return values
        }

        func connectionError(_ url: String, environment: [String: String]) async -> ChatLogError? {
            do {
                let storage = try await PostgresStorage.connect(try PostgresLocation(url: url, environment: environment, home: nil), maximumConnections: 1)
                await storage.close()
                return nil
            } catch {
                return error
            }
        }

        func verifyFull(_ server: PostgresTestServer) async throws {
            let url = "postgresql://\(server.passwordUser)@localhost:\(server.port)/postgres?sslmode=verify-full&sslrootcert=\(server.caPath)"
            #expect(try await sessionUsesTLS(url, environment: ["PGPASSWORD": server.password]))
            // count, idle, interval (by name)
            #expect(try await sessionKeepalives(url, environment: ["PGPASSWORD": server.password]) == ["3", "60", "10"])
        }

        func verifyCAAndRequire(_ server: PostgresTestServer) async throws {
            let environment = ["PGPASSWORD": server.password]
            #expect(
                try await sessionUsesTLS(
                    "postgresql://\(server.passwordUser)@127.0.0.1:\(server.port)/postgres?sslmode=verify-ca&sslrootcert=\(server.caPath)",
                    environment: environment))
            #expect(
                try await sessionUsesTLS(
                    "postgresql://\(server.passwordUser)@127.0.0.1:\(server.port)/postgres?sslmode=require&sslrootcert=/nonexistent", environment: environment))
            // prefer (the default) takes TLS when the server offers it.
            #expect(try await sessionUsesTLS("postgresql://\(server.passwordUser)@localhost:\(server.port)/postgres", environment: environment))
        }

        func tlsFailures(_ server: PostgresTestServer) async throws {
            let environment = ["PGPASSWORD": server.password]
            let cases = [
                // Another CA: the chain does not verify.
                "postgresql://\(server.passwordUser)@localhost:\(server.port)/postgres?sslmode=verify-full&sslrootcert=\(server.otherCAPath)",
                // The right CA, but 127.0.0.1 is not a name the certificate holds.
                "postgresql://\(server.passwordUser)@127.0.0.1:\(server.port)/postgres?sslmode=verify-full&sslrootcert=\(server.caPath)",
            ]
            for url in cases {
                let error = await connectionError(url, environment: environment)
                let text = error?.description ?? "connected"
                #expect(text.contains("TLS with the PostgreSQL server at postgresql://app@"), "\(url): \(text)")
                #expect(text.contains("sslrootcert"), "\(url): \(text)")
                #expect(!text.contains("\n"))
                #expect(!text.contains(server.password))
            }
            let missing = await connectionError(
                "postgresql://\(server.passwordUser)@localhost:\(server.port)/postgres?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
                environment: environment)
            #expect(missing?.description.contains("needs the CA certificate file sslrootcert=/nonexistent/ca.pem") == true, "\(String(describing: missing))")
            // The server refuses unencrypted TCP: sslmode=disable is one line from the server.
            let plain = await connectionError("postgresql://\(server.passwordUser)@localhost:\(server.port)/postgres?sslmode=disable", environment: environment)
            #expect(plain?.description.contains("refused user app") == true, "\(String(describing: plain))")
        }

        func passwords(_ server: PostgresTestServer) async throws {
            let url = "postgresql://\(server.passwordUser)@localhost:\(server.port)/postgres?sslmode=verify-full&sslrootcert=\(server.caPath)"
            let wrong = await connectionError(url, environment: ["PGPASSWORD": "not-the-password"])
            let text = wrong?.description ?? "connected"
            #expect(text.contains("refused user app (password from PGPASSWORD)"), "\(text)")
            #expect(!text.contains("not-the-password"))
            #expect(!text.contains("\n"))

            let directory = NSTemporaryDirectory() + "/chatlog-pgpass-\(UUID().uuidString)"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let file = directory + "/pgpass"
            #expect(
                FileManager.default.createFile(
                    atPath: file, contents: Data("localhost:\(server.port):*:\(server.passwordUser):\(server.password)\n".utf8),
                    attributes: [.posixPermissions: 0o600]))
            #expect(try await sessionUsesTLS(url, environment: ["PGPASSFILE": file]))

            let none = await connectionError(url, environment: [:])
            #expect(none?.description.contains("set PGPASSWORD or ~/.pgpass") == true, "\(String(describing: none))")
        }
    }
}
