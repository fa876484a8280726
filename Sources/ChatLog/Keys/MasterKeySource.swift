import Configuration
import Foundation
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// Where the master key comes from: the key itself, or a passphrase that Argon2id turns into it
/// with the salt stored in the database.
public struct MasterKeySource: Sendable {
    enum Material: Sendable {
        case key(MasterKey)
        case passphrase(Passphrase)
    }

    let material: Material
    /// Where it was found (for `key status` and error messages); never the key itself.
    public let origin: String

    public static func key(_ key: MasterKey, origin: String = "given by the application") -> MasterKeySource {
        MasterKeySource(material: .key(key), origin: origin)
    }

    public static func passphrase(_ passphrase: Passphrase, origin: String = "given by the application") -> MasterKeySource {
        MasterKeySource(material: .passphrase(passphrase), origin: origin)
    }
}

/// chatlog's settings, read from the process environment and then from a `.env` file (the
/// environment wins), through apple/swift-configuration. Secret values are marked secret there,
/// so the library's own debug output redacts them.
///
/// Master key: a source named in the environment (`CHATLOG_MASTER_KEY` (base64),
/// `CHATLOG_MASTER_KEY_FILE`, `CHATLOG_PASSPHRASE_FILE`, in that order) wins over any source in
/// `.env` (same order), then an interactive prompt when one is given. Never a command-line value.
/// Every key error names the source it came from (docs/SECURITY.md, "Master key sources").
public struct ChatLogSettings: Sendable {
    public static let masterKeyVariable = "CHATLOG_MASTER_KEY"
    public static let masterKeyFileVariable = "CHATLOG_MASTER_KEY_FILE"
    public static let passphraseFileVariable = "CHATLOG_PASSPHRASE_FILE"
    public static let databaseVariable = "CHATLOG_DB"
    /// The subject-key database of a PostgreSQL store (a postgres:// URL; docs/OPERATIONS.md).
    public static let subjectKeysVariable = "CHATLOG_SUBJECT_KEYS"

    private let environment: ConfigReader
    private let dotEnv: ConfigReader?
    private let dotEnvPath: String?
    /// ".env in /absolute/dir", for messages.
    private let dotEnvPlace: String

    /// Reads `processEnvironment` and, when present, the `.env` file at `dotEnvPath`.
    public static func load(
        processEnvironment: [String: String] = ProcessInfo.processInfo.environment,
        dotEnvPath: String? = ".env"
    ) async throws(ChatLogError) -> ChatLogSettings {
        let secrets = SecretsSpecifier<String, String>.specific([masterKeyVariable, "CHATLOG_NEW_MASTER_KEY"])
        let environment = ConfigReader(
            provider: EnvironmentVariablesProvider(environmentVariables: processEnvironment, secretsSpecifier: secrets))
        var dotEnv: ConfigReader?
        if let dotEnvPath, PrivateFiles.fileExists(dotEnvPath) {
            do {
                dotEnv = ConfigReader(
                    provider: try await EnvironmentVariablesProvider(
                        environmentFilePath: FilePath(dotEnvPath), allowMissing: true, secretsSpecifier: secrets))
            } catch {
                throw .invalidInput("cannot read \(dotEnvPath)")
            }
        }
        var place = dotEnvPath ?? ".env"
        if let dotEnvPath {
            let absolute = dotEnvPath.hasPrefix("/") ? dotEnvPath : FileManager.default.currentDirectoryPath + "/" + dotEnvPath
            let directory = URL(fileURLWithPath: absolute).standardizedFileURL.deletingLastPathComponent().path
            place = URL(fileURLWithPath: absolute).lastPathComponent == ".env" ? ".env in \(directory)" : absolute
        }
        return ChatLogSettings(environment: environment, dotEnv: dotEnv, dotEnvPath: dotEnvPath, dotEnvPlace: place)
    }

    private func value(_ reader: ConfigReader, _ variable: String, secret: Bool = false) -> String? {
        let key = ConfigKey(variable.lowercased().replacingOccurrences(of: "_", with: "."))
        guard let value = reader.string(forKey: key, isSecret: secret), !value.isEmpty else { return nil }
        return value
    }

    /// The readers to look in, in order, with where each is for messages (nil: the environment).
    private var places: [(reader: ConfigReader, dotEnv: Bool)] {
        [(environment, false)] + (dotEnv.map { [($0, true)] } ?? [])
    }

    /// `.env` may set the key or the database only if nobody else can read or change it: owned
    /// by this user, mode 0600 or stricter. Returns why not, or nil.
    private func looseDotEnv(lets why: String) -> String? {
        guard let dotEnvPath else { return nil }
        var info = stat()
        guard stat(dotEnvPath, &info) == 0 else { return nil }
        let mode = info.st_mode & 0o777
        if mode & 0o077 != 0 {
            return "its mode \(PrivateFiles.octal(mode)) lets other users \(why); run `chmod 600 \(dotEnvPath)`"
        }
        if info.st_uid != geteuid() { return "it is owned by uid \(info.st_uid), not by you (uid \(geteuid()))" }
        return nil
    }

    /// `CHATLOG_DB`, if set: the environment first, then `.env` — and a `.env` that other users
    /// could read or change may not redirect a command to another database.
    public var databasePath: String? {
        get throws(ChatLogError) { try location(Self.databaseVariable) }
    }

    /// `CHATLOG_SUBJECT_KEYS`, if set: the environment first, then `.env` (which, as for
    /// `CHATLOG_DB`, must be private to this user to redirect the keys elsewhere).
    public var subjectKeysLocation: String? {
        get throws(ChatLogError) { try location(Self.subjectKeysVariable) }
    }

    /// A setting naming where data or keys are: the environment first, then a `.env` private to
    /// this user.
    private func location(_ variable: String) throws(ChatLogError) -> String? {
        if let location = value(environment, variable) { return location }
        guard let dotEnv, let location = value(dotEnv, variable) else { return nil }
        if let reason = looseDotEnv(lets: "change it") {
            throw .invalidInput("refusing \(variable) from \(dotEnvPlace): \(reason)")
        }
        return location
    }

    /// A secret setting other than the master key (`chatlog serve`'s `OPENAI_API_KEY`,
    /// `ANTHROPIC_API_KEY`): the environment first, then `.env`, which must then be private to
    /// this user as for the master key. Nil when unset or empty.
    public func secret(_ variable: String) throws(ChatLogError) -> String? {
        if let value = value(environment, variable, secret: true) { return value }
        guard let dotEnv, let value = value(dotEnv, variable, secret: true) else { return nil }
        if let reason = looseDotEnv(lets: "read it") {
            throw .keyFileRejected(path: dotEnvPlace, reason: "it holds \(variable) and \(reason)")
        }
        return value
    }

    /// Finds the master key. `prompt` is asked only when no variable names a key or passphrase;
    /// pass nil (the default) for unattended use, so a missing key fails instead of hanging.
    public func masterKeySource(prompt: (@Sendable () throws(ChatLogError) -> Passphrase)? = nil) throws(ChatLogError)
        -> MasterKeySource
    {
        try masterKeySource(variable: Self.masterKeyVariable, fileVariable: Self.masterKeyFileVariable,
            passphraseFileVariable: Self.passphraseFileVariable, prompt: prompt)
    }

    /// The new master key for `chatlog key rewrap`: `CHATLOG_NEW_MASTER_KEY`, `CHATLOG_NEW_MASTER_KEY_FILE`
    /// or `CHATLOG_NEW_PASSPHRASE_FILE`.
    public func newMasterKeySource(prompt: (@Sendable () throws(ChatLogError) -> Passphrase)? = nil) throws(ChatLogError)
        -> MasterKeySource
    {
        try masterKeySource(variable: "CHATLOG_NEW_MASTER_KEY", fileVariable: "CHATLOG_NEW_MASTER_KEY_FILE",
            passphraseFileVariable: "CHATLOG_NEW_PASSPHRASE_FILE", prompt: prompt)
    }

    private func masterKeySource(
        variable: String, fileVariable: String, passphraseFileVariable: String,
        prompt: (@Sendable () throws(ChatLogError) -> Passphrase)?
    ) throws(ChatLogError) -> MasterKeySource {
        for (reader, isDotEnv) in places {
            let suffix = isDotEnv ? " (\(dotEnvPlace))" : ""
            if let base64 = value(reader, variable, secret: true) {
                if isDotEnv, let reason = looseDotEnv(lets: "read it") {
                    throw .keyFileRejected(path: dotEnvPlace, reason: "it holds \(variable) and \(reason)")
                }
                let origin = "\(variable)" + (isDotEnv ? suffix : " (environment)")
                return .key(try Self.naming(origin) { () throws(ChatLogError) in try MasterKey(base64: base64) }, origin: origin)
            }
            if let path = value(reader, fileVariable) {
                let origin = "\(fileVariable) \(path)" + suffix
                let contents = try PrivateFiles.readSecretFile(at: path)
                return .key(
                    try Self.naming(origin) { () throws(ChatLogError) in try MasterKey(keyFileContents: contents, path: path) }, origin: origin)
            }
            if let path = value(reader, passphraseFileVariable) {
                let origin = "\(passphraseFileVariable) \(path)" + suffix
                let contents = try PrivateFiles.readSecretFile(at: path)
                return .passphrase(try Self.naming(origin) { () throws(ChatLogError) in try Passphrase(fileContents: contents) }, origin: origin)
            }
        }
        if let prompt {
            return .passphrase(try prompt(), origin: "passphrase prompt")
        }
        throw .missingKey(
            "set \(variable) to a base64 key (make one with `chatlog key generate`), in the environment or in ./.env, "
                + "or set \(fileVariable) to a 0600 file holding it, or \(passphraseFileVariable) to a 0600 passphrase file")
    }

    /// Runs `body` and adds `origin` to the key errors it throws, so each names its source.
    private static func naming<T>(_ origin: String, _ body: () throws(ChatLogError) -> T) throws(ChatLogError) -> T {
        do {
            return try body()
        } catch {
            switch error {
            case .invalidKey(let why): throw .invalidKey("\(why) (from \(origin))")
            case .placeholderKey(let which): throw .placeholderKey("\(which) from \(origin)")
            case .passphrase(let why): throw .passphrase("\(why) (from \(origin))")
            default: throw error
            }
        }
    }
}

/// The readers hold every variable's value, the master key included; swift-configuration redacts
/// secrets in its own descriptions, but `dump()` walks the stored properties and would print them.
extension ChatLogSettings: CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    public var description: String { "ChatLogSettings(<redacted>)" }
    public var debugDescription: String { description }
    public var customMirror: Mirror { Mirror(self, children: [], displayStyle: .struct) }
}

extension MasterKey {
    /// A key file holds the key in base64 (one line), or its 32 raw bytes.
    init(keyFileContents contents: SecureBytes, path: String) throws(ChatLogError) {
        // Decoded from the file's bytes in place: no String (which cannot be wiped) holds the key.
        let decoded = contents.withUnsafeBytes { Sodium.decodeBase64Key(bytes: $0, expectedLength: MasterKey.byteCount) }
        if let decoded {
            try self.init(storage: decoded)
        } else if contents.count == MasterKey.byteCount {
            try self.init(storage: contents)
        } else {
            throw .keyFileRejected(
                path: path,
                reason: "it holds \(contents.count) bytes that are not a 32-byte key in base64 (44 characters) or raw")
        }
    }
}
