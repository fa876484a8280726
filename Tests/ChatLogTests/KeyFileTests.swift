import Foundation
import GRDB
import Testing

@testable import ChatLog

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// `CHATLOG_MASTER_KEY_FILE` and `CHATLOG_PASSPHRASE_FILE`: refused like ssh refuses a loose
/// private key (docs/ARCHITECTURE.md §4), each refusal with its own reason.
@Suite struct KeyFileTests {
    enum Variable: String, CaseIterable, Sendable, CustomTestStringConvertible {
        case keyFile = "CHATLOG_MASTER_KEY_FILE"
        case passphraseFile = "CHATLOG_PASSPHRASE_FILE"
        var testDescription: String { rawValue }

        /// Valid contents for this kind of file.
        var goodContents: [UInt8] {
            switch self {
            case .keyFile: Array((TestKey().base64 + "\n").utf8)
            case .passphraseFile: Array("correct horse battery staple\n".utf8)
            }
        }
    }

    func source(_ variable: Variable, path: String) async throws -> MasterKeySource {
        let settings = try await ChatLogSettings.load(processEnvironment: [variable.rawValue: path], dotEnvPath: nil)
        return try settings.masterKeySource()
    }

    /// Expects the file at `path` to be refused with a reason containing `fragment`.
    func expectRejected(_ variable: Variable, path: String, reasonContains fragment: String) async throws {
        let settings = try await ChatLogSettings.load(processEnvironment: [variable.rawValue: path], dotEnvPath: nil)
        let error = #expect(throws: ChatLogError.self) { try settings.masterKeySource() }
        guard case .keyFileRejected(let rejected, let reason)? = error else {
            Issue.record("expected keyFileRejected for \(variable.rawValue), got \(String(describing: error))")
            return
        }
        #expect(rejected == path)
        #expect(reason.contains(fragment), "reason was: \(reason)")
    }

    // MARK: - Refused files (both variables)

    @Test(arguments: Variable.allCases)
    func looseModeIsRefused(variable: Variable) async throws {
        try await withTemporaryDirectory { directory in
            for mode: mode_t in [0o644, 0o640, 0o604, 0o660, 0o700 | 0o004] {
                let path = directory.file("secret-\(String(mode, radix: 8))")
                try writeFile(path, variable.goodContents, mode: mode)
                try await expectRejected(variable, path: path, reasonContains: "mode 0\(String(mode, radix: 8))")
            }
        }
    }

    @Test(arguments: Variable.allCases)
    func symlinkIsRefused(variable: Variable) async throws {
        try await withTemporaryDirectory { directory in
            let target = directory.file("real")
            try writeFile(target, variable.goodContents, mode: 0o600)
            let link = directory.file("link")
            #expect(symlink(target, link) == 0)
            try await expectRejected(variable, path: link, reasonContains: "symbolic link")
            // The target itself is fine: the link is what was refused.
            _ = try await source(variable, path: target)
        }
    }

    @Test(.enabled(if: isRoot, "changing a file's owner needs root"), arguments: Variable.allCases)
    func fileOwnedBySomeoneElseIsRefused(variable: Variable) async throws {
        try await withTemporaryDirectory { directory in
            let path = directory.file("foreign")
            try writeFile(path, variable.goodContents, mode: 0o600)
            #expect(chown(path, 65534, 65534) == 0)
            try await expectRejected(variable, path: path, reasonContains: "owned by uid 65534")
        }
    }

    @Test(arguments: Variable.allCases)
    func directoryIsRefused(variable: Variable) async throws {
        try await withTemporaryDirectory { directory in
            let path = directory.file("dir")
            #expect(mkdir(path, 0o700) == 0)
            try await expectRejected(variable, path: path, reasonContains: "not a regular file")
        }
    }

    @Test(arguments: Variable.allCases)
    func missingAndEmptyFilesAreRefused(variable: Variable) async throws {
        try await withTemporaryDirectory { directory in
            try await expectRejected(variable, path: directory.file("absent"), reasonContains: "cannot read it")
            let empty = directory.file("empty")
            try writeFile(empty, [UInt8](), mode: 0o600)
            try await expectRejected(variable, path: empty, reasonContains: "empty")
        }
    }

    @Test(arguments: Variable.allCases)
    func oversizedFileIsRefused(variable: Variable) async throws {
        try await withTemporaryDirectory { directory in
            let path = directory.file("big")
            try writeFile(path, [UInt8](repeating: 0x61, count: 5000), mode: 0o600)
            try await expectRejected(variable, path: path, reasonContains: "5000 bytes")
        }
    }

    // MARK: - Key files

    @Test func keyFileOfWrongLengthIsRefused() async throws {
        try await withTemporaryDirectory { directory in
            let short = directory.file("short")
            try writeFile(short, [UInt8](repeating: 0x5A, count: 16), mode: 0o600)
            try await expectRejected(.keyFile, path: short, reasonContains: "holds 16 bytes")
            let longBase64 = directory.file("long-base64")
            try writeFile(longBase64, text: Data((0..<48).map { UInt8($0) }).base64EncodedString() + "\n", mode: 0o600)
            try await expectRejected(.keyFile, path: longBase64, reasonContains: "holds 65 bytes")
            let raw33 = directory.file("raw33")
            try writeFile(raw33, (0..<33).map { UInt8($0 * 7 % 256) }, mode: 0o600)
            try await expectRejected(.keyFile, path: raw33, reasonContains: "holds 33 bytes")
        }
    }

    @Test(arguments: [mode_t(0o600), mode_t(0o400)])
    func base64KeyFileIsAccepted(mode: mode_t) async throws {
        try await withTemporaryDirectory { directory in
            let test = TestKey()
            let path = directory.file("master.key")
            try writeFile(path, text: test.base64 + "\n", mode: mode)
            let source = try await source(.keyFile, path: path)
            #expect(try key(of: source) == test.key)
            #expect(source.origin == "CHATLOG_MASTER_KEY_FILE \(path)")
            // And it opens a store made with that key.
            let store = try ChatLogStore.create(at: directory.databasePath, key: source)
            await #expect(try store.keyStatus().masterKeyFingerprint == test.key.fingerprint)
        }
    }

    @Test func rawKeyFileIsAccepted() async throws {
        try await withTemporaryDirectory { directory in
            let test = TestKey()
            let path = directory.file("master.bin")
            try writeFile(path, test.bytes, mode: 0o600)
            #expect(try key(of: await source(.keyFile, path: path)) == test.key)
        }
    }

    @Test func placeholderKeyFileIsRefused() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory.file("zero.key")
            try writeFile(path, [UInt8](repeating: 0, count: 32), mode: 0o600)
            let settings = try await ChatLogSettings.load(processEnvironment: ["CHATLOG_MASTER_KEY_FILE": path], dotEnvPath: nil)
            #expect(throws: ChatLogError.placeholderKey("the all-zero key from CHATLOG_MASTER_KEY_FILE \(path)")) { try settings.masterKeySource() }
        }
    }

    @Test func privateFilesAreCreated0600AndNeverOverwritten() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory.file("new.key")
            try PrivateFiles.createPrivateFile(at: path, contents: Array("abc".utf8))
            #expect(fileMode(path) == 0o600)
            #expect(PrivateFiles.mode(of: path) == 0o600)
            #expect(try fileBytes(path) == Array("abc".utf8))
            #expect(throws: ChatLogError.self) { try PrivateFiles.createPrivateFile(at: path, contents: Array("xyz".utf8)) }
            #expect(try fileBytes(path) == Array("abc".utf8))
            // Never through a symlink either.
            let link = directory.file("link.key")
            #expect(symlink(directory.file("elsewhere"), link) == 0)
            #expect(throws: ChatLogError.self) { try PrivateFiles.createPrivateFile(at: link, contents: Array("x".utf8)) }
            #expect(!FileManager.default.fileExists(atPath: directory.file("elsewhere")))
        }
    }

    // MARK: - Passphrase files

    @Test(arguments: [mode_t(0o600), mode_t(0o400)])
    func passphraseStoreReopensWithTheSamePassphraseOnly(mode: mode_t) async throws {
        try await withTemporaryDirectory { directory in
            let path = directory.file("passphrase")
            try writeFile(path, text: "correct horse battery staple\nignored second line\n", mode: mode)
            let source = try await source(.passphraseFile, path: path)
            #expect(source.origin == "CHATLOG_PASSPHRASE_FILE \(path)")
            let store = try ChatLogStore.create(at: directory.databasePath, key: source, options: fastOptions)
            let id = try await store.createConversation(NewConversation(title: "from a passphrase"))
            let fingerprint = try await store.keyStatus().masterKeyFingerprint
            try store.close()

            // Same passphrase file again: opens.
            try ChatLogStore.open(at: directory.databasePath, key: await self.source(.passphraseFile, path: path)).close()

            // Same passphrase, given directly: opens, and reads what was written.
            let reopened = try ChatLogStore.open(
                at: directory.databasePath, key: .passphrase(try Passphrase("correct horse battery staple")))
            #expect(try await reopened.conversation(id).title == "from a passphrase")
            try reopened.close()

            // Another passphrase: "wrong passphrase", naming the store's key but never the
            // fingerprint of the key the wrong passphrase derives (an offline guessing oracle).
            let wrong = try Passphrase("incorrect horse battery")
            let error = #expect(throws: ChatLogError.self) {
                try ChatLogStore.open(at: directory.databasePath, key: .passphrase(wrong))
            }
            guard case .wrongPassphrase(let expected, _)? = error else {
                Issue.record("expected wrongPassphrase, got \(String(describing: error))")
                return
            }
            #expect(expected == fingerprint)
            let queue = try DatabaseQueue(path: directory.databasePath)
            let kdf = try await queue.read { db in try PassphraseKDF.stored(db) }
            try queue.close()
            let derived = try #require(kdf).deriveMasterKey(from: wrong)
            let text = String(describing: error)
            #expect(!text.contains(derived.fingerprint.description))
            #expect(text.contains("wrong passphrase"))
        }
    }

    @Test func shortPassphraseFileIsRefused() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory.file("passphrase")
            try writeFile(path, text: "short\nthe rest of the file is not the passphrase\n", mode: 0o600)
            let settings = try await ChatLogSettings.load(processEnvironment: ["CHATLOG_PASSPHRASE_FILE": path], dotEnvPath: nil)
            #expect {
                try settings.masterKeySource()
            } throws: { error in
                guard case ChatLogError.passphrase(let why) = error else { return false }
                return why.contains("fewer than 8 bytes")
            }
        }
    }

    @Test func passphraseOnAKeyStoreIsExplained() async throws {
        try await withTemporaryDirectory { directory in
            try makeStore(in: directory).close()
            #expect {
                try ChatLogStore.open(at: directory.databasePath, key: .passphrase(try Passphrase("a passphrase here")))
            } throws: { error in
                guard case ChatLogError.passphrase(let why) = error else { return false }
                return why.contains("CHATLOG_MASTER_KEY")
            }
        }
    }
}
