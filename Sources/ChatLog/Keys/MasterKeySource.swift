import Configuration
import Foundation
import SystemPackage

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
/// Master key, first match wins (DESIGN §4): `CHATLOG_MASTER_KEY` (base64),
/// `CHATLOG_MASTER_KEY_FILE`, `CHATLOG_PASSPHRASE_FILE`, then an interactive prompt when one is
/// given. Never a command-line value.
public struct ChatLogSettings: Sendable {
    public static let masterKeyVariable = "CHATLOG_MASTER_KEY"
    public static let masterKeyFileVariable = "CHATLOG_MASTER_KEY_FILE"
    public static let passphraseFileVariable = "CHATLOG_PASSPHRASE_FILE"
    public static let databaseVariable = "CHATLOG_DB"

    private let environment: ConfigReader
    private let dotEnv: ConfigReader?
    private let dotEnvPath: String?

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
        return ChatLogSettings(environment: environment, dotEnv: dotEnv, dotEnvPath: dotEnvPath)
    }

    /// Looks a variable up: the environment first, then `.env`. Returns the value and where it was.
    private func lookup(_ variable: String, secret: Bool = false) -> (value: String, origin: String)? {
        let key = ConfigKey(variable.lowercased().replacingOccurrences(of: "_", with: "."))
        if let value = environment.string(forKey: key, isSecret: secret), !value.isEmpty {
            return (value, "\(variable) (environment)")
        }
        if let dotEnv, let value = dotEnv.string(forKey: key, isSecret: secret), !value.isEmpty {
            return (value, "\(variable) (\(dotEnvPath ?? ".env"))")
        }
        return nil
    }

    /// `CHATLOG_DB`, if set.
    public var databasePath: String? { lookup(Self.databaseVariable)?.value }

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
        if let (value, origin) = lookup(variable, secret: true) {
            if origin.hasSuffix("(\(dotEnvPath ?? ".env"))"), let dotEnvPath, let mode = PrivateFiles.mode(of: dotEnvPath),
                mode & 0o077 != 0
            {
                throw .keyFileRejected(
                    path: dotEnvPath,
                    reason: "it holds \(variable) and its mode \(PrivateFiles.octal(mode)) lets other users read it; run `chmod 600 \(dotEnvPath)`")
            }
            return .key(try MasterKey(base64: value), origin: origin)
        }
        if let (path, _) = lookup(fileVariable) {
            let contents = try PrivateFiles.readSecretFile(at: path)
            return .key(try MasterKey(keyFileContents: contents, path: path), origin: "key file \(path)")
        }
        if let (path, _) = lookup(passphraseFileVariable) {
            let contents = try PrivateFiles.readSecretFile(at: path)
            return .passphrase(try Passphrase(fileContents: contents), origin: "passphrase file \(path)")
        }
        if let prompt {
            return .passphrase(try prompt(), origin: "passphrase prompt")
        }
        throw .missingKey(
            "set \(variable) to a base64 key (make one with `chatlog key generate`), in the environment or in ./.env, "
                + "or set \(fileVariable) to a 0600 file holding it, or \(passphraseFileVariable) to a 0600 passphrase file")
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
        let decoded: SecureBytes? = contents.withUnsafeBytes { bytes in
            let text = String(decoding: bytes, as: UTF8.self)
            return Sodium.decodeBase64Key(Substring(text), expectedLength: MasterKey.byteCount)
        }
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
