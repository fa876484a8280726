import ChatLog
import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Where a PostgreSQL store is and how to reach it, read from a `postgres://` or `postgresql://`
/// URL with libpq's conventions (docs/OPERATIONS.md, "PostgreSQL"):
///
///     postgresql://[user[:password]@][host][:port][/database][?param=value&…]
///
/// - host: a name or address (TCP), a socket folder (`?host=/run/postgresql`, or percent-encoded
///   in the host part), else `PGHOST`, else the socket folder `/var/run/postgresql`;
/// - port `PGPORT` else 5432; user `PGUSER` else the login name; database `PGDATABASE` else the user;
/// - password: the URL's, else `PGPASSWORD`, else the first matching line of `PGPASSFILE` or
///   `~/.pgpass`, which must be the user's own and 0600 (refused otherwise, naming the file);
/// - `sslmode` (`PGSSLMODE`): disable, allow, prefer (default), require, verify-ca, verify-full;
///   `sslrootcert` (`PGSSLROOTCERT`, default `~/.postgresql/root.crt`, `system` for the system's).
///
/// The password is never part of ``description`` or of any error.
public struct PostgresLocation: Sendable, Equatable, CustomStringConvertible {
    public enum SSLMode: String, Sendable, CaseIterable {
        case disable, allow, prefer, require
        case verifyCA = "verify-ca"
        case verifyFull = "verify-full"
    }

    public enum Endpoint: Sendable, Equatable {
        case tcp(host: String, port: Int)
        /// The socket file `<folder>/.s.PGSQL.<port>`.
        case socket(folder: String, port: Int)
    }

    public var endpoint: Endpoint
    public var user: String
    public var database: String
    public var sslMode: SSLMode
    /// CA certificates for verify-ca / verify-full (a PEM file), or "system".
    public var sslRootCert: String?
    public var applicationName: String?
    /// Seconds; libpq's `connect_timeout`.
    public var connectTimeout: Int
    /// Where the password came from, for messages ("the URL", "PGPASSWORD", a file): never it.
    public internal(set) var passwordSource: String?
    var password: String?

    /// Whether `text` is a PostgreSQL store location rather than a file path.
    public static func isPostgresURL(_ text: String) -> Bool {
        let lower = text.prefix(13).lowercased()
        return lower.hasPrefix("postgres://") || lower.hasPrefix("postgresql://")
    }

    public var description: String {
        let place: String
        switch endpoint {
        case .tcp(let host, let port): place = (host.contains(":") ? "[\(host)]" : host) + ":\(port)"
        case .socket(let folder, let port): place = "\(folder)/.s.PGSQL.\(port)"
        }
        return "postgresql://\(user)@\(place)/\(database)"
    }

    /// Parses `url` (see the type's description) with `environment` for the `PG…` defaults and
    /// `home` for `~/.pgpass` and `~/.postgresql/root.crt`.
    public init(
        url: String, environment: [String: String] = ProcessInfo.processInfo.environment,
        home: String? = ProcessInfo.processInfo.environment["HOME"]
    ) throws(ChatLogError) {
        guard Self.isPostgresURL(url) else {
            throw .invalidInput("a PostgreSQL store location starts with postgres:// or postgresql://")
        }
        let afterScheme = url[url.index(after: url.firstIndex(of: ":")!)...].dropFirst(2)
        var rest = Substring(afterScheme)
        var queryText: Substring = ""
        if let question = rest.firstIndex(of: "?") {
            queryText = rest[rest.index(after: question)...]
            rest = rest[..<question]
        }
        if rest.contains("#") { throw .invalidInput("the PostgreSQL URL has a fragment (#…), which means nothing to it") }
        var authority = rest
        var path: Substring = ""
        if let slash = rest.firstIndex(of: "/") {
            authority = rest[..<slash]
            path = rest[rest.index(after: slash)...]
        }
        var userInfo: Substring?
        if let at = authority.lastIndex(of: "@") {
            userInfo = authority[..<at]
            authority = authority[authority.index(after: at)...]
        }
        var urlUser: String?
        var urlPassword: String?
        if let userInfo {
            if let colon = userInfo.firstIndex(of: ":") {
                urlUser = try Self.decode(userInfo[..<colon], "user name")
                urlPassword = try Self.decode(userInfo[userInfo.index(after: colon)...], "password")
            } else {
                urlUser = try Self.decode(userInfo, "user name")
            }
        }
        if authority.contains(",") { throw .invalidInput("several hosts in one PostgreSQL URL are not supported; give one") }
        var urlHost: String?
        var urlPort: String?
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { throw .invalidInput("the PostgreSQL URL's IPv6 host lacks its closing ]") }
            urlHost = String(authority[authority.index(after: authority.startIndex)..<close])
            let after = authority[authority.index(after: close)...]
            if after.hasPrefix(":") { urlPort = String(after.dropFirst()) } else if !after.isEmpty {
                throw .invalidInput("the PostgreSQL URL has text after its IPv6 host")
            }
        } else if let colon = authority.lastIndex(of: ":") {
            urlHost = try Self.decode(authority[..<colon], "host")
            urlPort = String(authority[authority.index(after: colon)...])
        } else if !authority.isEmpty {
            urlHost = try Self.decode(authority, "host")
        }
        var parameters: [String: String] = [:]
        for pair in queryText.split(separator: "&", omittingEmptySubsequences: true) {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let name = try Self.decode(parts[0], "parameter name")
            let value = parts.count > 1 ? try Self.decode(parts[1], "value of \(name)") : ""
            guard Self.knownParameters.contains(name) else {
                throw .invalidInput(
                    "the PostgreSQL URL parameter \"\(Self.printable(name))\" is not supported (supported: \(Self.knownParameters.sorted().joined(separator: ", ")))")
            }
            guard parameters[name] == nil else { throw .invalidInput("the PostgreSQL URL gives \(name) twice") }
            parameters[name] = value
        }
        func setting(_ parameter: String, _ fromURL: String?, _ variable: String) -> String? {
            if let value = parameters[parameter], !value.isEmpty { return value }
            if let fromURL, !fromURL.isEmpty { return fromURL }
            if let value = environment[variable], !value.isEmpty { return value }
            return nil
        }
        let host = setting("host", urlHost, "PGHOST") ?? "/var/run/postgresql"
        let portText = setting("port", urlPort, "PGPORT") ?? "5432"
        guard let port = Int(portText), (1...65535).contains(port) else {
            throw .invalidInput("the PostgreSQL port \"\(Self.printable(portText))\" is not a number from 1 to 65535")
        }
        endpoint = host.hasPrefix("/") ? .socket(folder: host, port: port) : .tcp(host: host, port: port)
        guard let user = setting("user", urlUser, "PGUSER") ?? Self.loginName() else {
            throw .invalidInput("no PostgreSQL user: give one in the URL (postgresql://USER@host/db) or PGUSER")
        }
        self.user = user
        let urlDatabase = path.isEmpty ? nil : try Self.decode(path, "database name")
        database = setting("dbname", urlDatabase, "PGDATABASE") ?? user
        let modeText = setting("sslmode", nil, "PGSSLMODE") ?? "prefer"
        guard let mode = SSLMode(rawValue: modeText) else {
            throw .invalidInput(
                "sslmode \"\(Self.printable(modeText))\" is not one of \(SSLMode.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        sslMode = mode
        sslRootCert = setting("sslrootcert", nil, "PGSSLROOTCERT") ?? home.map { $0 + "/.postgresql/root.crt" }
        applicationName = setting("application_name", nil, "PGAPPNAME")
        let timeoutText = setting("connect_timeout", nil, "PGCONNECT_TIMEOUT") ?? "10"
        guard let timeout = Int(timeoutText), timeout >= 0 else {
            throw .invalidInput("connect_timeout \"\(Self.printable(timeoutText))\" is not a number of seconds")
        }
        connectTimeout = timeout == 0 ? 10 : max(timeout, 2)
        if parameters["password"] != nil {
            throw .invalidInput("a password as a URL parameter is not accepted; use PGPASSWORD, ~/.pgpass, or the URL from the environment")
        }
        if let urlPassword {
            password = urlPassword
            passwordSource = "the URL"
        } else if let variable = environment["PGPASSWORD"] {
            password = variable
            passwordSource = "PGPASSWORD"
        } else {
            let file = environment["PGPASSFILE"].flatMap { $0.isEmpty ? nil : $0 } ?? home.map { $0 + "/.pgpass" }
            if let file, let found = try Self.passwordFromFile(file, endpoint: endpoint, database: database, user: user) {
                password = found
                passwordSource = file
            }
        }
    }

    static let knownParameters: Set<String> = [
        "host", "port", "dbname", "user", "password", "sslmode", "sslrootcert", "application_name", "connect_timeout",
    ]

    /// libpq's password file: `host:port:database:user:password` lines, `*` matching anything,
    /// `\:` and `\\` escaped; the first matching line wins. A socket connection matches the host
    /// `localhost` (or its folder). The file must be a regular file of this user's with no group or
    /// other permissions; it is refused, naming it, otherwise (libpq ignores it with a warning,
    /// which leaves a user guessing why the password was not used).
    static func passwordFromFile(_ path: String, endpoint: Endpoint, database: String, user: String) throws(ChatLogError) -> String? {
        var info = stat()
        guard lstat(path, &info) == 0 else { return nil }
        guard (info.st_mode & S_IFMT) == S_IFREG else { throw .invalidInput("the password file \(path) is not a regular file") }
        guard info.st_uid == geteuid() else { throw .invalidInput("the password file \(path) belongs to another user") }
        guard info.st_mode & 0o077 == 0 else {
            throw .invalidInput(
                "the password file \(path) has group or other permissions (mode \(String(info.st_mode & 0o777, radix: 8))); chmod 600 it")
        }
        guard let data = FileManager.default.contents(atPath: path) else { throw .invalidInput("the password file \(path) cannot be read") }
        let hosts: [String]
        let port: Int
        switch endpoint {
        case .tcp(let host, let tcpPort):
            hosts = [host]
            port = tcpPort
        case .socket(let folder, let socketPort):
            hosts = ["localhost", folder]
            port = socketPort
        }
        for line in String(decoding: data, as: UTF8.self).split(whereSeparator: { $0 == "\n" || $0 == "\r\n" }) {
            if line.hasPrefix("#") { continue }
            let fields = splitPassFileLine(Substring(line))
            guard fields.count == 5 else { continue }
            func matches(_ field: String, _ values: [String]) -> Bool { field == "*" || values.contains(field) }
            if matches(fields[0], hosts), matches(fields[1], [String(port)]), matches(fields[2], [database]), matches(fields[3], [user]) {
                return fields[4]
            }
        }
        return nil
    }

    private static func splitPassFileLine(_ line: Substring) -> [String] {
        var fields: [String] = []
        var current = ""
        var escaped = false
        for character in line {
            if escaped {
                current.append(character)
                escaped = false
            } else if character == "\\" {
                escaped = true
            } else if character == ":", fields.count < 4 {
                fields.append(current)
                current = ""
            } else {
                current.append(character)
            }
        }
        fields.append(current)
        return fields
    }

    private static func decode(_ text: Substring, _ what: String) throws(ChatLogError) -> String {
        guard let decoded = String(text).removingPercentEncoding else {
            throw .invalidInput("the PostgreSQL URL's \(what) has a malformed %-escape")
        }
        return decoded
    }

    /// A user-given setting shown in an error: printable ASCII only, at most 64 characters.
    static func printable(_ text: String) -> String {
        let cleaned = String(text.unicodeScalars.prefix(64).map { $0.isASCII && $0.value >= 0x20 && $0.value < 0x7F ? Character($0) : "?" })
        return text.unicodeScalars.count > 64 ? cleaned + "…" : cleaned
    }

    private static func loginName() -> String? {
        guard let entry = getpwuid(geteuid()), let name = entry.pointee.pw_name else { return nil }
        return String(cString: name)
    }
}
