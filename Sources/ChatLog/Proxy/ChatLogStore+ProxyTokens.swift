import Foundation
import GRDB

/// A proxy token as `chatlog token list` shows it (never the token itself: only a keyed hash of
/// it is stored).
public struct ProxyToken: Sendable, Hashable {
    public let name: String
    public let createdAt: Date
    public let revokedAt: Date?

    package init(name: String, createdAt: Date, revokedAt: Date?) {
        self.name = name
        self.createdAt = createdAt
        self.revokedAt = revokedAt
    }
}

extension ChatLogStore {
    /// The prefix of every proxy token (so that secret scanners and the redactor can tell one).
    public static let proxyTokenPrefix = "clp_"
    static let proxyTokenTag = "chatlog/v1/proxy-token"

    /// Creates a token for the app `name` and returns it; it is shown once and cannot be recovered.
    public func createProxyToken(name: String) async throws(ChatLogError) -> String {
        guard !name.isEmpty, name.utf8.count <= 64,
            name.unicodeScalars.allSatisfy({ CharacterSet.alphanumerics.contains($0) || "-_.".unicodeScalars.contains($0) })
        else {
            throw .invalidInput("a token name is 1 to 64 letters, digits, '-', '_' or '.'")
        }
        let secret = Sodium.randomBytes(32)
        let token = Self.proxyTokenPrefix + Data(secret).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
        let keys = keyRing.current
        let hash = Self.proxyTokenHash(token, key: keys.activeIndexKey.key)
        let keyID = Int64(keys.activeIndexKey.id.rawValue)
        if let storage {
            guard try await storage.createProxyToken(name: name, hash: hash, indexKeyID: keyID, createdAt: Date().unixMilliseconds) else {
                throw .invalidInput("a token named \(name) exists already (revoke it first, or choose another name)")
            }
            return token
        }
        let created = try await writeImmediate { db -> Bool in
            guard try Bool.fetchOne(db, sql: "SELECT 1 FROM proxy_tokens WHERE name = ?", arguments: [name]) == nil else { return false }
            try db.execute(
                sql: "INSERT INTO proxy_tokens (name, token_hash, index_key_id, created_at) VALUES (?, ?, ?, ?)",
                arguments: [name, hash, keyID, Date().unixMilliseconds])
            return true
        }
        guard created else { throw .invalidInput("a token named \(name) exists already (revoke it first, or choose another name)") }
        return token
    }

    /// The tokens, oldest first, revoked ones included.
    public func proxyTokens() async throws(ChatLogError) -> [ProxyToken] {
        if let storage { return try await storage.proxyTokens() }
        return try await read { db in
            try Row.fetchAll(db, sql: "SELECT name, created_at, revoked_at FROM proxy_tokens ORDER BY created_at, name").map { row in
                ProxyToken(
                    name: row["name"], createdAt: Date(unixMilliseconds: row["created_at"]),
                    revokedAt: (row["revoked_at"] as Int64?).map { Date(unixMilliseconds: $0) })
            }
        }
    }

    /// Revokes the token named `name`; false when there is no such token still valid.
    @discardableResult
    public func revokeProxyToken(name: String) async throws(ChatLogError) -> Bool {
        if let storage { return try await storage.revokeProxyToken(name: name, at: Date().unixMilliseconds) }
        return try await writeImmediate { db in
            try db.execute(
                sql: "UPDATE proxy_tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                arguments: [Date().unixMilliseconds, name])
            return db.changesCount > 0
        }
    }

    /// The name of the valid (not revoked) token `token`, or nil. Checked under every index key
    /// the store holds; a token found under an older index key is re-hashed under the active one,
    /// so tokens in use survive an index-key rotation and the old key's retirement.
    public func proxyTokenName(_ token: String) async throws(ChatLogError) -> String? {
        guard token.hasPrefix(Self.proxyTokenPrefix), token.utf8.count < 200 else { return nil }
        let keys = keyRing.current
        let hashes = keys.indexKeys.values.map { Self.proxyTokenHash(token, key: $0) }
        if let storage {
            guard let found = try await storage.proxyToken(hashes: hashes) else { return nil }
            let active = keys.activeIndexKey
            if found.indexKeyID != Int64(active.id.rawValue) {
                try await storage.rehashProxyToken(name: found.name, hash: Self.proxyTokenHash(token, key: active.key), indexKeyID: Int64(active.id.rawValue))
            }
            return found.name
        }
        let found = try await read { db in
            try Row.fetchOne(
                db,
                sql: "SELECT name, index_key_id FROM proxy_tokens WHERE revoked_at IS NULL AND token_hash IN (\(hashes.map { _ in "?" }.joined(separator: ",")))",
                arguments: StatementArguments(hashes)
            ).map { (name: $0["name"] as String, keyID: $0["index_key_id"] as Int64) }
        }
        guard let found else { return nil }
        let active = keys.activeIndexKey
        if found.keyID != Int64(active.id.rawValue) {
            let hash = Self.proxyTokenHash(token, key: active.key)
            let keyID = Int64(active.id.rawValue)
            try await writeImmediate { db in
                try db.execute(
                    sql: "UPDATE proxy_tokens SET token_hash = ?, index_key_id = ? WHERE name = ? AND revoked_at IS NULL",
                    arguments: [hash, keyID, found.name])
            }
        }
        return found.name
    }

    static func proxyTokenHash(_ token: String, key: IndexKey) -> Data {
        ThreadChainer.hash(key, KeyDerivation.lengthPrefixed([proxyTokenTag, token]))
    }
}
