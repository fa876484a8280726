import Foundation
import Testing

@testable import ChatLog

/// Nothing sensitive reaches the files in clear, and no key reaches text output.
@Suite struct FileLeakTests {
    static let canary = "CANARY-7f3e9b1c-do-not-leak"

    /// The store's files that exist now, with their bytes.
    func storeFiles(_ path: String) throws -> [(String, [UInt8])] {
        try [path, path + "-wal", path + "-shm"].filter { FileManager.default.fileExists(atPath: $0) }.map { ($0, try fileBytes($0)) }
    }

    @Test func canaryNeverAppearsInTheFiles() async throws {
        try await withTemporaryDirectory { directory in
            let canary = Self.canary
            let path = directory.databasePath
            let store = try makeStore(in: directory)
            let metadata: JSONValue = .object([canary: .string(canary), "nested": .array([.string("x \(canary) y")])])
            let id = try store.createConversation(NewConversation(title: canary, subject: canary, metadata: metadata))
            try store.logExchange(
                ModelExchange(
                    conversation: .existing(id),
                    prompt: [NewMessage(role: .user, content: "please repeat \(canary)", metadata: metadata)],
                    // A long message spills into overflow pages.
                    completion: NewMessage(
                        role: .assistant, content: String(repeating: canary + " ", count: 2000), model: "PLAIN-MODEL-NAME",
                        metadata: metadata)))
            try store.append(NewMessage(role: .tool, content: canary), to: id)
            // A deleted conversation's sealed values must not be left in clear either.
            let deleted = try store.createConversation(NewConversation(title: canary))
            try store.append(NewMessage(role: .user, content: canary), to: deleted)
            try store.deleteConversation(deleted)
            #expect(try store.transcript(id).messages.count == 3)

            // While open: the WAL holds the recent pages.
            let openFiles = try storeFiles(path)
            #expect(openFiles.map(\.0).contains(path + "-wal"), "the WAL should exist while the store is open")
            #expect(openFiles.contains { $0.0 == path + "-wal" && !$0.1.isEmpty })
            for (file, bytes) in openFiles {
                #expect(!contains(bytes, Array(canary.utf8)), "canary found in \(file) while open")
                #expect(!contains(bytes, Array(canary.lowercased().utf8)), "lowercased canary found in \(file)")
            }
            // Control: a plain column (the model name) is visible, so the scan can see text.
            #expect(openFiles.contains { contains($0.1, Array("PLAIN-MODEL-NAME".utf8)) })

            try store.close()
            let closedFiles = try storeFiles(path)
            #expect(closedFiles.map(\.0).contains(path))
            for (file, bytes) in closedFiles {
                #expect(!contains(bytes, Array(canary.utf8)), "canary found in \(file) after close")
            }
            #expect(closedFiles.contains { contains($0.1, Array("PLAIN-MODEL-NAME".utf8)) })
        }
    }

    @Test func keyBytesNeverAppearInTheFiles() async throws {
        try await withTemporaryDirectory { directory in
            let test = TestKey()
            let store = try ChatLogStore.create(at: directory.databasePath, key: .key(test.key))
            try store.createConversation(NewConversation(title: "t"))
            let dataKey = store.keyRing.current.activeDataKey.key
            let indexKey = store.keyRing.current.activeIndexKey.key
            var needles = [test.bytes, Array(test.base64.utf8)]
            needles.append(dataKey.withUnsafeBytes { Array($0) })
            needles.append(indexKey.withUnsafeBytes { Array($0) })
            for (file, bytes) in try storeFiles(directory.databasePath) {
                for needle in needles { #expect(!contains(bytes, needle), "key material found in \(file)") }
            }
            try store.close()
            for (file, bytes) in try storeFiles(directory.databasePath) {
                for needle in needles { #expect(!contains(bytes, needle), "key material found in \(file) after close") }
            }
        }
    }
}

/// Keys print as `<redacted>` everywhere (STYLE: swift-crypto), and errors carry no key.
@Suite struct KeyLeakTests {
    /// Every way Swift turns a value into text.
    func renderings(_ value: Any) -> [String] {
        var printed = ""
        print(value, to: &printed)
        var debugPrinted = ""
        debugPrint(value, to: &debugPrinted)
        var dumped = ""
        dump(value, to: &dumped)
        var dumpedDeep = ""
        dump([value, Optional(value) as Any], to: &dumpedDeep, maxDepth: .max)
        return [
            printed, debugPrinted, dumped, dumpedDeep, String(describing: value), String(reflecting: value), "\(value)",
            String(describing: [value]), String(describing: Optional(value)),
            String(describing: Mirror(reflecting: value).children.map { "\($0.label ?? ""): \($0.value)" }),
        ]
    }

    func needles(_ bytes: [UInt8]) -> [String] {
        [base64(bytes), hex(bytes), hex(bytes).uppercased(), base64(bytes.prefix(12)), hex(bytes.prefix(8))]
    }

    func expectNoLeak(_ value: Any, of bytes: [UInt8], _ label: String) {
        for text in renderings(value) {
            for needle in needles(bytes) {
                #expect(!text.contains(needle), "\(label) leaked in: \(text)")
            }
        }
    }

    @Test func masterKeyIsRedacted() {
        let test = TestKey()
        expectNoLeak(test.key, of: test.bytes, "MasterKey")
        #expect(String(describing: test.key) == "MasterKey(<redacted>)")
        #expect(String(reflecting: test.key) == "MasterKey(<redacted>)")
        #expect(Mirror(reflecting: test.key).children.isEmpty)
    }

    @Test func passphraseIsRedacted() throws {
        let text = "my very secret passphrase 1234"
        let passphrase = try Passphrase(text)
        expectNoLeak(passphrase, of: Array(text.utf8), "Passphrase")
        for rendering in renderings(passphrase) {
            #expect(!rendering.contains(text))
            #expect(!rendering.contains("secret passphrase"))
        }
    }

    @Test func dataAndIndexKeysAreRedacted() {
        let dataKey = DataKey.generate()
        let indexKey = IndexKey.generate()
        expectNoLeak(dataKey, of: dataKey.withUnsafeBytes { Array($0) }, "DataKey")
        expectNoLeak(indexKey, of: indexKey.withUnsafeBytes { Array($0) }, "IndexKey")
        #expect(String(describing: dataKey) == "DataKey(<redacted>)")
        #expect(String(describing: indexKey) == "IndexKey(<redacted>)")
    }

    @Test func masterKeySourcesAreRedacted() throws {
        let test = TestKey()
        expectNoLeak(MasterKeySource.key(test.key), of: test.bytes, "MasterKeySource.key")
        let text = "another secret passphrase 5678"
        let source = MasterKeySource.passphrase(try Passphrase(text), origin: "test")
        expectNoLeak(source, of: Array(text.utf8), "MasterKeySource.passphrase")
        for rendering in renderings(source) { #expect(!rendering.contains(text)) }
    }

    @Test func openStoreAndKeyRingAreRedacted() async throws {
        try await withTemporaryDirectory { directory in
            let test = TestKey()
            let store = try ChatLogStore.create(at: directory.databasePath, key: .key(test.key))
            let loaded = store.keyRing.current
            let dataBytes = loaded.activeDataKey.key.withUnsafeBytes { Array($0) }
            let indexBytes = loaded.activeIndexKey.key.withUnsafeBytes { Array($0) }
            for (value, label) in [(store as Any, "ChatLogStore"), (store.keyRing as Any, "KeyRing"), (loaded as Any, "KeyRing.Loaded")] {
                expectNoLeak(value, of: test.bytes, "\(label): master key")
                expectNoLeak(value, of: dataBytes, "\(label): data key")
                expectNoLeak(value, of: indexBytes, "\(label): index key")
            }
        }
    }

    @Test func settingsDoNotPrintTheKey() async throws {
        try await withTemporaryDirectory { directory in
            let fromEnvironment = TestKey()
            let fromFile = TestKey()
            let path = directory.file(".env")
            try writeFile(path, text: "CHATLOG_NEW_MASTER_KEY=\(fromFile.base64)\n", mode: 0o600)
            let settings = try await ChatLogSettings.load(
                processEnvironment: ["CHATLOG_MASTER_KEY": fromEnvironment.base64], dotEnvPath: path)
            expectNoLeak(settings, of: fromEnvironment.bytes, "ChatLogSettings (environment)")
            expectNoLeak(settings, of: fromFile.bytes, "ChatLogSettings (.env)")
            let source = try settings.masterKeySource()
            expectNoLeak(source, of: fromEnvironment.bytes, "MasterKeySource from settings")
        }
    }

    @Test func errorsCarryNoKey() async throws {
        try await withTemporaryDirectory { directory in
            let test = TestKey()
            var errors: [ChatLogError] = []
            func collect(_ body: () throws -> Void) {
                do { try body() } catch let error as ChatLogError { errors.append(error) } catch { Issue.record("unexpected \(error)") }
            }
            // Malformed variants of the real key's text.
            collect { _ = try MasterKey(base64: test.base64 + "AAAA") }
            collect { _ = try MasterKey(base64: String(test.base64.dropFirst(4))) }
            collect { _ = try MasterKey(base64: test.hexLower) }
            // A wrong key at open.
            try makeStore(in: directory).close()
            collect { _ = try ChatLogStore.open(at: directory.databasePath, key: .key(test.key)) }
            // Key files refused with the key inside.
            let loose = directory.file("loose.key")
            try writeFile(loose, text: test.base64, mode: 0o644)
            let hexFile = directory.file("hex.key")
            try writeFile(hexFile, text: test.hexLower, mode: 0o600)
            let dotEnv = directory.file(".env")
            try writeFile(dotEnv, text: "CHATLOG_MASTER_KEY=\(test.base64)\n", mode: 0o644)
            for (environment, dotEnvPath) in [
                (["CHATLOG_MASTER_KEY_FILE": loose], nil), (["CHATLOG_MASTER_KEY_FILE": hexFile], nil),
                (["CHATLOG_MASTER_KEY": test.base64 + "x"], nil), ([:], dotEnv),
            ] as [([String: String], String?)] {
                let settings = try await ChatLogSettings.load(processEnvironment: environment, dotEnvPath: dotEnvPath)
                collect { _ = try settings.masterKeySource() }
            }
            #expect(errors.count == 8)
            for error in errors {
                expectNoLeak(error, of: test.bytes, "ChatLogError \(error.category)")
                for text in renderings(error) {
                    #expect(!text.contains(test.hexLower))
                    #expect(!text.contains(String(test.base64.dropFirst(4))))
                }
            }
        }
    }
}
