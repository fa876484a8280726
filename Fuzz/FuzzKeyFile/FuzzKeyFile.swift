import FuzzSupport
import Foundation

@testable import ChatLog

/// Key files and passphrase files (Keys/MasterKeySource.swift, Keys/Passphrase.swift), and the
/// base64 key of CHATLOG_MASTER_KEY (`MasterKey(base64:)`). The whole input is the file: it is
/// written 0600 and read through `PrivateFiles.readSecretFile` as chatlog reads it, then parsed
/// as a key file and as a passphrase file; the input is also parsed directly as base64 text.
/// The entry point SwiftPM links as main (see `runFuzzer`).
@_cdecl("FuzzKeyFile_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, fuzzInput)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzInput(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let input = fuzzBytes(start, count)
    let text = String(decoding: input, as: UTF8.self)

    // CHATLOG_MASTER_KEY
    do {
        let key = try MasterKey(base64: text)
        checkKey(key)
        let fromSubstring = try MasterKey(base64: text.dropFirst(0))
        require(fromSubstring == key, "the same text as a Substring gives another key")
    } catch {
        switch error {
        case .invalidKey, .placeholderKey: break
        default: fuzzFailure("MasterKey(base64:) threw \(error)")
        }
    }

    // The file, read as chatlog reads a secret file.
    let path = writeScratchFile("key", input)
    let contents: SecureBytes
    do {
        contents = try PrivateFiles.readSecretFile(at: path)
        require(contents.count == input.count, "read \(contents.count) of \(input.count) bytes")
        contents.withUnsafeBytes { require(Array($0) == input, "read other bytes than were written") }
    } catch {
        guard case .keyFileRejected = error else { fuzzFailure("readSecretFile threw \(error)") }
        require(input.isEmpty || input.count > 4096, "readSecretFile refused a \(input.count)-byte 0600 file: \(error)")
        return 0
    }

    // CHATLOG_MASTER_KEY_FILE: base64 (one line) or 32 raw bytes.
    do {
        let key = try MasterKey(keyFileContents: contents, path: path)
        checkKey(key)
        let asText: MasterKey? = try? MasterKey(base64: text)
        if let asText {
            require(asText == key, "a key file that is base64 text does not give the key of that text")
        } else {
            require(input.count == MasterKey.byteCount, "a \(input.count)-byte key file that is not base64 was taken as a key")
            key.withUnsafeBytes { require(Array($0) == input, "a raw key file gives another key") }
        }
    } catch {
        switch error {
        case .keyFileRejected(let rejected, _): require(rejected == path, "the error names \(rejected), not the file")
        case .invalidKey, .placeholderKey: break
        default: fuzzFailure("MasterKey(keyFileContents:) threw \(error)")
        }
    }

    // CHATLOG_PASSPHRASE_FILE: everything up to the first newline.
    let line = input.prefix { $0 != 0x0A && $0 != 0x0D }
    do {
        let passphrase = try Passphrase(fileContents: contents)
        require(line.count >= Passphrase.minimumLength, "took a \(line.count)-byte passphrase")
        passphrase.storage.withUnsafeBytes { require(Array($0) == Array(line), "the passphrase is not the first line") }
        require(String(describing: passphrase) == "Passphrase(<redacted>)", "a passphrase prints")
    } catch {
        guard case .passphrase = error else { fuzzFailure("Passphrase(fileContents:) threw \(error)") }
        require(line.count < Passphrase.minimumLength, "refused a \(line.count)-byte first line: \(error)")
    }
    return 0
}

private func checkKey(_ key: MasterKey) {
    require(key.storage.count == MasterKey.byteCount, "a key of \(key.storage.count) bytes")
    require(String(describing: key) == "MasterKey(<redacted>)", "a key prints")
    // What `chatlog key generate` prints reads back as the same key.
    require((try? MasterKey(base64: key.exportBase64())) == key, "exportBase64 does not read back")
    _ = key.fingerprint
}
