import FuzzSupport
import Foundation

@testable import ChatLog

#if canImport(Glibc)
    import Glibc
#endif

/// The `.env` reader and the master-key lookup (Keys/MasterKeySource.swift): the input is
/// written as a `.env` file (mode 0600, then again 0644), loaded with an empty process
/// environment through `ChatLogSettings.load`, and asked for `databasePath`,
/// `masterKeySource()` and `newMasterKeySource()`. Key and passphrase files that a `.env` may
/// name live in /tmp/chatlog-fuzz-fixtures (made at start; the seeds use them).
///
/// Invariants: only ChatLogError comes out; the settings never print a secret; no error repeats
/// the master key value the `.env` holds.

private let fixtures = "/tmp/chatlog-fuzz-fixtures"

private let madeFixtures: Bool = {
    mkdir(fixtures, 0o700)
    func make(_ name: String, _ bytes: [UInt8], mode: mode_t) {
        let temporary = "\(fixtures)/.\(name).\(getpid())"
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
        guard descriptor >= 0 else { return }
        bytes.withUnsafeBytes { _ = write(descriptor, $0.baseAddress, $0.count) }
        fchmod(descriptor, mode)
        close(descriptor)
        rename(temporary, "\(fixtures)/\(name)")
    }
    let raw: [UInt8] = (0..<32).map { UInt8(0x61 + $0 % 26) }
    make("key.b64", Array((Data(raw).base64EncodedString() + "\n").utf8), mode: 0o600)
    make("key.raw", raw, mode: 0o600)
    make("passphrase", Array("correct horse battery staple\n".utf8), mode: 0o600)
    make("short-passphrase", Array("short\n".utf8), mode: 0o600)
    make("loose.key", Array((Data(raw).base64EncodedString() + "\n").utf8), mode: 0o644)
    make("empty", [], mode: 0o600)
    make("big", [UInt8](repeating: 0x41, count: 5000), mode: 0o600)
    unlink("\(fixtures)/link.key")
    symlink("\(fixtures)/key.b64", "\(fixtures)/link.key")
    return true
}()

/// The entry point SwiftPM links as main (see `runFuzzer`).
@_cdecl("FuzzDotEnv_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, fuzzInput)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzInput(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    precondition(madeFixtures)
    let input = fuzzBytes(start, count)
    let secrets = secretValues(input)
    for mode: mode_t in [0o600, 0o644] {
        let path = writeScratchFile(".env", input, mode: mode)
        let loaded = runBlocking { () -> Result<ChatLogSettings, ChatLogError> in
            do throws(ChatLogError) {
                return .success(try await ChatLogSettings.load(processEnvironment: [:], dotEnvPath: path))
            } catch {
                return .failure(error)
            }
        }
        let settings: ChatLogSettings
        switch loaded {
        case .success(let value): settings = value
        case .failure(let error):
            checkError(error, secrets)
            continue
        }
        let printed = [String(describing: settings), String(reflecting: settings), dumped(settings)]
        for text in printed {
            for secret in secrets { require(!text.contains(secret), "the settings print a secret: \(text)") }
        }
        do {
            _ = try settings.databasePath
        } catch {
            checkError(error, secrets)
        }
        // (Not an array of typed-throws closures: that crashes swift-frontend 6.3.1 in IRGen.)
        for newKey in [false, true] {
            do {
                let source = try newKey ? settings.newMasterKeySource() : settings.masterKeySource()
                for secret in secrets { require(!source.origin.contains(secret), "the key origin shows a secret: \(source.origin)") }
                if case .key(let key) = source.material { require(key.storage.count == MasterKey.byteCount, "a short key") }
            } catch {
                checkError(error, secrets)
            }
        }
    }
    removeScratchFile(".env")
    return 0
}

private func dumped(_ value: some Any) -> String {
    var text = ""
    dump(value, to: &text)
    return text
}

private func checkError(_ error: ChatLogError, _ secrets: [String]) {
    let text = error.description
    for secret in secrets { require(!text.contains(secret), "an error shows a secret: \(text)") }
}

/// The values of CHATLOG_MASTER_KEY and CHATLOG_NEW_MASTER_KEY lines, roughly as a `.env` gives
/// them (long enough that finding one in a message is no coincidence).
private func secretValues(_ input: [UInt8]) -> [String] {
    var values: [String] = []
    let text = String(decoding: input, as: UTF8.self)
    for line in text.split(whereSeparator: \.isNewline) {
        var line = line.drop { $0 == " " || $0 == "\t" }
        if line.hasPrefix("export ") { line = line.dropFirst(7) }
        for name in ["CHATLOG_MASTER_KEY=", "CHATLOG_NEW_MASTER_KEY="] where line.hasPrefix(name) {
            let value = line.dropFirst(name.count).trimmingCharacters(in: CharacterSet(charactersIn: " \t\"'"))
            if value.count >= 16 { values.append(value) }
        }
    }
    // A value that also appears elsewhere in the file (say inside a key file's path, which
    // messages do name) is not one a message could only have taken from the secret.
    return values.filter { text.components(separatedBy: $0).count == 2 }
}
