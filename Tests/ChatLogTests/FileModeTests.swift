import Foundation
import Testing

@testable import ChatLog

/// DB, WAL and SHM files are private to their owner (docs/ARCHITECTURE.md §7).
@Suite struct FileModeTests {
    @Test func storeFilesAre0600() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory.databasePath
            let key = MasterKey.generate()
            let store = try makeStore(in: directory, key: key)
            let id = try store.createConversation(NewConversation(title: "t"))
            try store.append(NewMessage(role: .user, content: "m"), to: id)
            for file in [path, path + "-wal", path + "-shm"] {
                #expect(FileManager.default.fileExists(atPath: file), "\(file) should exist while open")
                #expect(fileMode(file) == 0o600, "\(file) has mode \(String(fileMode(file) ?? 0, radix: 8))")
            }
            try store.close()
            #expect(fileMode(path) == 0o600)

            // Reopening recreates the WAL and SHM files, with the same mode.
            let reopened = try ChatLogStore.open(at: path, key: .key(key))
            try reopened.append(NewMessage(role: .user, content: "again"), to: id)
            for file in [path, path + "-wal", path + "-shm"] {
                #expect(fileMode(file) == 0o600, "\(file) after reopening")
            }
        }
    }
}
