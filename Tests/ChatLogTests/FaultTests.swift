import ChatLogTestSupport
import Foundation
import GRDB
import Testing

@testable import ChatLog

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

// Faults under the library (hardening item 2): a full disk, a read-only file, file system and
// directory, a directory that vanishes while a store is open, the WAL deleted under a reader, and
// a database locked past the busy timeout. Each must end in a clear `ChatLogError` (never a
// crash, never a hang), with everything committed before the fault intact and the store opening
// and verifying cleanly once the fault is gone.
//
// Root ignores file modes, so the read-only cases use what does stop root: `chattr +i` (an
// immutable file or directory) and a tmpfs remounted read-only. A real full disk is a small
// tmpfs. Tests that need them say so and skip that part when `mount`/`chattr` are not permitted.

// MARK: - Helpers

/// Runs a system tool; true when it exits 0.
@discardableResult
private func tool(_ path: String, _ arguments: [String]) -> Bool {
    guard FileManager.default.isExecutableFile(atPath: path) else { return false }
    return (try? ChildProcess(path, arguments).wait(timeout: 120))?.succeeded ?? false
}

private func mountPath() -> String? { ["/usr/bin/mount", "/bin/mount"].first { FileManager.default.isExecutableFile(atPath: $0) } }
private func umountPath() -> String? { ["/usr/bin/umount", "/bin/umount"].first { FileManager.default.isExecutableFile(atPath: $0) } }
private func chattrPath() -> String? { ["/usr/bin/chattr", "/bin/chattr"].first { FileManager.default.isExecutableFile(atPath: $0) } }

/// A tmpfs of `kilobytes` mounted on a new directory in `directory`, or nil when mounting is not
/// permitted here. Unmounted by `unmount()`.
private struct Tmpfs {
    let path: String

    static func mount(in directory: TemporaryDirectory, kilobytes: Int) -> Tmpfs? {
        guard let mount = mountPath() else { return nil }
        let path = directory.file("tmpfs")
        guard mkdir(path, 0o700) == 0 else { return nil }
        guard tool(mount, ["-t", "tmpfs", "-o", "size=\(kilobytes)k,mode=0700", "tmpfs", path]) else {
            rmdir(path)
            return nil
        }
        return Tmpfs(path: path)
    }

    func file(_ name: String) -> String { path + "/" + name }

    func remount(readOnly: Bool) -> Bool {
        guard let mount = mountPath() else { return false }
        return tool(mount, ["-o", "remount,\(readOnly ? "ro" : "rw")", path])
    }

    func unmount() {
        if let umount = umountPath() { tool(umount, ["-l", path]) }
        rmdir(path)
    }
}

/// `chattr +i` / `-i`: what makes a file or directory read-only for root too.
private func setImmutable(_ path: String, _ on: Bool) -> Bool {
    guard let chattr = chattrPath() else { return false }
    return tool(chattr, [on ? "+i" : "-i", path])
}

private func isStorage(_ error: any Error, containing text: String? = nil) -> Bool {
    guard case .storage(let message)? = error as? ChatLogError else { return false }
    return text.map { message.contains($0) } ?? true
}

/// Opens the store afresh, runs `verify`, and returns the contents of `conversation`.
private func reopenAndVerify(_ path: String, key: MasterKey, _ conversation: ConversationID) throws -> [String] {
    let store = try ChatLogStore.open(at: path, key: .key(key))
    defer { try? store.close() }
    let report = try store.verify()
    #expect(report.ok, "verify after the fault: \(report.issues.prefix(3))")
    return try store.transcript(conversation).messages.map(\.content)
}

private func integrityCheck(_ path: String) throws -> String {
    try withRawDatabase(path) { db in try String.fetchAll(db, sql: "PRAGMA integrity_check").joined(separator: "; ") }
}

// MARK: - Disk full

@Suite struct DiskFullTests {
    /// `PRAGMA max_page_count` on the store's own writer connection (it is a per-connection
    /// limit: set through another connection it would cap only that one): SQLite then fails a
    /// transaction that needs one more page with SQLITE_FULL, as a full disk does.
    @Test func aWriteThatDoesNotFitFailsAsDiskFullAndLosesNothingCommitted() async throws {
        try await withTemporaryDirectory { directory in
            let key = MasterKey.generate()
            let store = try ChatLogStore.create(at: directory.databasePath, key: .key(key))
            let conversation = try store.createConversation(NewConversation(title: "filling"))
            var committed: [String] = []
            for index in 0..<20 {
                let content = "before \(index) " + String(repeating: "x", count: 500)
                try store.append(NewMessage(role: .user, content: content), to: conversation)
                committed.append(content)
            }
            let pages = try store.pool.writeWithoutTransaction { db in try Int.fetchOne(db, sql: "PRAGMA page_count") ?? 0 }
            try store.pool.writeWithoutTransaction { db in try db.execute(sql: "PRAGMA max_page_count = \(pages + 6)") }

            var failure: (any Error)?
            for index in 0..<2_000 {
                let content = "filling \(index) " + String(repeating: "y", count: 1_500)
                do {
                    try store.append([NewMessage(role: .user, content: content), NewMessage(role: .assistant, content: content)], to: conversation)
                    committed += [content, content]
                } catch {
                    failure = error
                    break
                }
            }
            let error = try #require(failure, "the capped store never filled up")
            #expect(isStorage(error, containing: "disk full"), "\(error)")
            // Reads go on; the failed transaction left nothing; so does a second attempt.
            #expect(try store.transcript(conversation).messages.map(\.content) == committed)
            #expect(throws: ChatLogError.self) {
                try store.append(NewMessage(role: .user, content: String(repeating: "z", count: 20_000)), to: conversation)
            }
            #expect(try store.verify().ok)
            // Room again: writes go on.
            try store.pool.writeWithoutTransaction { db in try db.execute(sql: "PRAGMA max_page_count = 1073741823") }
            try store.append(NewMessage(role: .user, content: "after"), to: conversation)
            committed.append("after")
            try store.close()
            #expect(try integrityCheck(directory.databasePath) == "ok")
            #expect(try reopenAndVerify(directory.databasePath, key: key, conversation) == committed)
            print("disk full (max_page_count): the write failed with \"\(error)\"; \(committed.count) committed messages intact, verify ok")
        }
    }

    /// A real full file system: a 1 MiB tmpfs (root only; skipped where mounting is not
    /// permitted). Appends until one fails, then frees space and goes on.
    @Test func aFullFileSystemFailsAsDiskFullAndTheStoreRecovers() async throws {
        try await withTemporaryDirectory { directory in
            guard let tmpfs = Tmpfs.mount(in: directory, kilobytes: 1024) else {
                print("disk full (tmpfs): skipped, mounting a tmpfs is not permitted here")
                return
            }
            defer { tmpfs.unmount() }
            let key = MasterKey.generate()
            let path = tmpfs.file("chat.db")
            let store = try ChatLogStore.create(at: path, key: .key(key))
            let conversation = try store.createConversation(NewConversation(title: "filling"))
            // Room to free later: enough for a checkpoint to copy the WAL into the database file.
            try Data(count: 512 * 1024).write(to: URL(fileURLWithPath: tmpfs.file("ballast")))
            var committed: [String] = []
            var failure: (any Error)?
            for index in 0..<5_000 {
                let content = "filling \(index) " + String(repeating: "w", count: 900)
                do {
                    try store.append(NewMessage(role: .user, content: content), to: conversation)
                    committed.append(content)
                } catch {
                    failure = error
                    break
                }
            }
            let error = try #require(failure, "the tmpfs never filled up")
            #expect(isStorage(error, containing: "disk full"), "\(error)")
            let readBack = try? store.transcript(conversation).messages.map(\.content)
            #expect(readBack == committed, "reads after the failure show exactly the committed messages")
            var checkpointWhileFull = "ok"
            do { try store.checkpoint() } catch { checkpointWhileFull = "\(error)" }

            try FileManager.default.removeItem(atPath: tmpfs.file("ballast"))
            try store.append(NewMessage(role: .user, content: "after"), to: conversation)
            committed.append("after")
            try store.checkpoint()
            try store.close()
            #expect(try integrityCheck(path) == "ok")
            #expect(try reopenAndVerify(path, key: key, conversation) == committed)
            print(
                "disk full (tmpfs 1 MiB): the append after \(committed.count - 1) messages failed with \"\(error)\"; "
                    + "a checkpoint while full: \(checkpointWhileFull); after freeing space, writes and the checkpoint went on, verify ok")
        }
    }
}

// MARK: - Read-only file, file system and directory

@Suite struct ReadOnlyTests {
    /// An immutable database file (`chattr +i`: stops root too, unlike mode 0400): the store
    /// opens for reading, a write fails with a storage error naming the read-only database, and
    /// nothing changes.
    @Test func anImmutableDatabaseFileRefusesWritesClearly() async throws {
        try await withTemporaryDirectory { directory in
            let key = MasterKey.generate()
            let path = directory.databasePath
            let setup = try ChatLogStore.create(at: path, key: .key(key))
            let conversation = try setup.createConversation(NewConversation(title: "kept"))
            try setup.append(NewMessage(role: .user, content: "committed before"), to: conversation)
            try setup.close()
            guard setImmutable(path, true) else {
                print("read-only database file: skipped, chattr +i is not available or not permitted here")
                return
            }
            defer { _ = setImmutable(path, false) }
            let before = try fileBytes(path)
            var outcome = ""
            do {
                let store = try ChatLogStore.open(at: path, key: .key(key))
                #expect(try store.transcript(conversation).messages.map(\.content) == ["committed before"])
                do {
                    try store.append(NewMessage(role: .user, content: "refused"), to: conversation)
                    Issue.record("a write to an immutable file succeeded")
                } catch {
                    #expect(isStorage(error, containing: "read-only"), "\(error)")
                    outcome = "opened for reading; the write failed with \"\(error)\""
                }
                try store.close()
            } catch {
                #expect(isStorage(error), "\(error)")
                outcome = "open failed with \"\(error)\""
            }
            #expect(try fileBytes(path) == before, "the immutable file changed")
            #expect(setImmutable(path, false))
            #expect(try reopenAndVerify(path, key: key, conversation) == ["committed before"])
            print("read-only database file (chattr +i): \(outcome); verify ok after chattr -i")
        }
    }

    /// A store on a tmpfs remounted read-only: open or write fails with a storage error; after the
    /// remount read-write everything is there.
    @Test func aReadOnlyFileSystemRefusesClearly() async throws {
        try await withTemporaryDirectory { directory in
            guard let tmpfs = Tmpfs.mount(in: directory, kilobytes: 4096) else {
                print("read-only file system: skipped, mounting a tmpfs is not permitted here")
                return
            }
            defer { tmpfs.unmount() }
            let key = MasterKey.generate()
            let path = tmpfs.file("chat.db")
            let setup = try ChatLogStore.create(at: path, key: .key(key))
            let conversation = try setup.createConversation(NewConversation(title: "kept"))
            try setup.append(NewMessage(role: .user, content: "committed before"), to: conversation)
            try setup.close()
            try #require(tmpfs.remount(readOnly: true), "remount ro")
            var outcome = ""
            do {
                let store = try ChatLogStore.open(at: path, key: .key(key))
                let read = try? store.transcript(conversation).messages.map(\.content)
                #expect(read == nil || read == ["committed before"])
                do {
                    try store.append(NewMessage(role: .user, content: "refused"), to: conversation)
                    Issue.record("a write on a read-only file system succeeded")
                } catch {
                    #expect(isStorage(error), "\(error)")
                    outcome = "opened (reads \(read == nil ? "failed" : "worked")); the write failed with \"\(error)\""
                }
                try? store.close()
            } catch {
                #expect(isStorage(error), "\(error)")
                outcome = "open failed with \"\(error)\""
            }
            #expect(tmpfs.remount(readOnly: false))
            #expect(try reopenAndVerify(path, key: key, conversation) == ["committed before"])
            print("read-only file system (tmpfs remounted ro): \(outcome); verify ok after remounting rw")
        }
    }

    /// An immutable directory (no file can be created in it, not even by root) holding a closed
    /// store: SQLite cannot create the -wal and -shm files.
    @Test func aReadOnlyDirectoryRefusesClearly() async throws {
        try await withTemporaryDirectory { directory in
            let key = MasterKey.generate()
            let folder = directory.file("store")
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: false)
            let path = folder + "/chat.db"
            let setup = try ChatLogStore.create(at: path, key: .key(key))
            let conversation = try setup.createConversation(NewConversation(title: "kept"))
            try setup.append(NewMessage(role: .user, content: "committed before"), to: conversation)
            // Everything into the database file, then no -wal or -shm left for SQLite to reuse
            // (an immutable directory still lets existing files be written).
            try setup.checkpoint()
            try setup.close()
            for suffix in ["-wal", "-shm"] where FileManager.default.fileExists(atPath: path + suffix) {
                #expect(try suffix == "-shm" || fileBytes(path + suffix).isEmpty, "the WAL is empty after a checkpoint")
                try FileManager.default.removeItem(atPath: path + suffix)
            }
            guard setImmutable(folder, true) else {
                print("read-only directory: skipped, chattr +i is not available or not permitted here")
                return
            }
            defer { _ = setImmutable(folder, false) }
            var outcome = ""
            do {
                let store = try ChatLogStore.open(at: path, key: .key(key))
                do {
                    try store.append(NewMessage(role: .user, content: "refused"), to: conversation)
                    let files = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
                    Issue.record("a write in an immutable directory succeeded; files: \(files)")
                } catch {
                    #expect(isStorage(error), "\(error)")
                    outcome = "opened; the write failed with \"\(error)\""
                }
                try? store.close()
            } catch {
                #expect(isStorage(error), "\(error)")
                outcome = "open failed with \"\(error)\""
            }
            // The backup refuses too (it creates a file in the directory).
            #expect(setImmutable(folder, false))
            #expect(try reopenAndVerify(path, key: key, conversation) == ["committed before"])
            print("read-only directory (chattr +i): \(outcome); verify ok afterwards")
        }
    }
}

// MARK: - The directory vanishes, the WAL is deleted

@Suite struct VanishingFileTests {
    /// The store's directory is renamed while the store is open: writes either go on into the
    /// moved files or fail clearly; nothing acknowledged is lost (the files are in the new place).
    @Test func theDirectoryRenamedUnderAnOpenStore() async throws {
        try await withTemporaryDirectory { directory in
            let key = MasterKey.generate()
            let folder = directory.file("before")
            let moved = directory.file("after")
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: false)
            let store = try ChatLogStore.create(at: folder + "/chat.db", key: .key(key))
            let conversation = try store.createConversation(NewConversation(title: "moving"))
            var acknowledged: [String] = []
            for index in 0..<5 {
                try store.append(NewMessage(role: .user, content: "before \(index)"), to: conversation)
                acknowledged.append("before \(index)")
            }
            #expect(rename(folder, moved) == 0)
            var errors: [String] = []
            for index in 0..<5 {
                do {
                    try store.append(NewMessage(role: .user, content: "after \(index)"), to: conversation)
                    acknowledged.append("after \(index)")
                } catch {
                    #expect(isStorage(error), "\(error)")
                    errors.append("\(error)")
                }
                do {
                    _ = try store.transcript(conversation)
                } catch {
                    #expect(isStorage(error), "\(error)")
                    errors.append("\(error)")
                }
            }
            try? store.close()
            #expect(try reopenAndVerify(moved + "/chat.db", key: key, conversation) == acknowledged)
            print(
                "directory renamed under an open store: \(acknowledged.count - 5) of 5 writes after the rename acknowledged, "
                    + "errors \(Set(errors).sorted()); every acknowledged message is in the moved store, verify ok")
        }
    }

    /// The store's directory is deleted while the store is open: no crash, no hang; each call
    /// succeeds (into unlinked files, as POSIX allows) or fails with a storage error.
    @Test func theDirectoryRemovedUnderAnOpenStore() async throws {
        try await withTemporaryDirectory { directory in
            let key = MasterKey.generate()
            let folder = directory.file("doomed")
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: false)
            let store = try ChatLogStore.create(at: folder + "/chat.db", key: .key(key))
            let conversation = try store.createConversation(NewConversation(title: "doomed"))
            try store.append(NewMessage(role: .user, content: "before"), to: conversation)
            try FileManager.default.removeItem(atPath: folder)
            var succeeded = 0
            var errors: Set<String> = []
            for index in 0..<5 {
                do {
                    try store.append(NewMessage(role: .user, content: "after \(index)"), to: conversation)
                    succeeded += 1
                } catch {
                    #expect(isStorage(error), "\(error)")
                    errors.insert("\(error)")
                }
                do {
                    _ = try store.search("after")
                } catch {
                    #expect(isStorage(error), "\(error)")
                    errors.insert("\(error)")
                }
            }
            do { try store.checkpoint() } catch { errors.insert("checkpoint: \(error)") }
            try? store.close()
            #expect(throws: ChatLogError.storeNotFound(path: folder + "/chat.db")) {
                try ChatLogStore.open(at: folder + "/chat.db", key: .key(key))
            }
            print("directory removed under an open store: \(succeeded) of 5 writes went into the unlinked files; errors \(errors.sorted())")
        }
    }

    /// The -wal file is deleted while one store writes and another reads, then a third store
    /// opens the file. No crash; every error is a ChatLogError; once everything is closed the
    /// store opens, SQLite's integrity check passes and `verify` is clean. Commits that lived
    /// only in the deleted WAL may be gone (deleting a live WAL is destroying data); the
    /// checkpointed ones are not.
    @Test func theWALDeletedUnderAReader() async throws {
        try await withTemporaryDirectory { directory in
            let key = MasterKey.generate()
            let path = directory.databasePath
            let writer = try ChatLogStore.create(at: path, key: .key(key))
            let conversation = try writer.createConversation(NewConversation(title: "wal"))
            let checkpointed = (0..<10).map { "checkpointed \($0)" }
            try writer.append(checkpointed.map { NewMessage(role: .user, content: $0) }, to: conversation)
            try writer.checkpoint()
            let inWAL = (0..<10).map { "in the wal \($0)" }
            try writer.append(inWAL.map { NewMessage(role: .user, content: $0) }, to: conversation)
            let reader = try ChatLogStore.open(at: path, key: .key(key))
            #expect(try reader.transcript(conversation).messages.count == 20)
            #expect(FileManager.default.fileExists(atPath: path + "-wal"))
            try FileManager.default.removeItem(atPath: path + "-wal")

            var errors: Set<String> = []
            var acknowledged: [String] = []
            func attempt(_ label: String, _ body: () throws -> Void) {
                do { try body() } catch let error as ChatLogError { errors.insert("\(label): \(error)") } catch {
                    Issue.record("\(label): not a ChatLogError: \(error)")
                }
            }
            attempt("reader") { _ = try reader.transcript(conversation) }
            attempt("writer") {
                try writer.append(NewMessage(role: .user, content: "after deletion"), to: conversation)
                acknowledged.append("after deletion")
            }
            attempt("reader search") { _ = try reader.search("wal") }
            attempt("third store") {
                let third = try ChatLogStore.open(at: path, key: .key(key))
                defer { try? third.close() }
                _ = try third.transcript(conversation)
                try third.append(NewMessage(role: .user, content: "from the third"), to: conversation)
                acknowledged.append("from the third")
            }
            try? reader.close()
            try? writer.close()

            let integrity = try integrityCheck(path)
            #expect(integrity == "ok")
            let store = try ChatLogStore.open(at: path, key: .key(key))
            defer { try? store.close() }
            let report = try store.verify()
            #expect(report.ok, "\(report.issues.prefix(3))")
            let contents = try store.transcript(conversation).messages.map(\.content)
            #expect(Array(contents.prefix(10)) == checkpointed, "checkpointed messages")
            let keptFromWAL = inWAL.filter(contents.contains).count
            let keptAfter = acknowledged.filter(contents.contains).count
            #expect(Set(contents).isSubset(of: Set(checkpointed + inWAL + acknowledged)))
            print(
                "WAL deleted under a reader: errors \(errors.sorted()); afterwards integrity \(integrity), verify "
                    + "\(report.ok ? "ok" : "FAILED"); kept \(keptFromWAL) of \(inWAL.count) commits that were only in the deleted WAL, "
                    + "\(keptAfter) of \(acknowledged.count) acknowledged after the deletion")
        }
    }
}

// MARK: - Busy

@Suite struct BusyTests {
    /// Another connection holds the write lock (an EXCLUSIVE transaction) past the store's busy
    /// timeout: the write fails with `ChatLogError.busy` after about the timeout, reads go on, and
    /// once the lock is released the store writes and verifies.
    @Test func aLockHeldPastTheBusyTimeoutFailsBusy() async throws {
        try await withTemporaryDirectory { directory in
            let key = MasterKey.generate()
            let path = directory.databasePath
            let store = try ChatLogStore.create(at: path, key: .key(key), options: ChatLogStore.Options(busyTimeout: 0.3))
            let conversation = try store.createConversation(NewConversation(title: "busy"))
            try store.append(NewMessage(role: .user, content: "before"), to: conversation)

            var configuration = Configuration()
            configuration.busyMode = .timeout(5)
            configuration.allowsUnsafeTransactions = true
            let holder = try DatabaseQueue(path: path, configuration: configuration)
            try holder.inDatabase { db in try db.execute(sql: "BEGIN EXCLUSIVE") }

            let started = ContinuousClock.now
            let error = #expect(throws: ChatLogError.self) {
                try store.append(NewMessage(role: .user, content: "refused"), to: conversation)
            }
            if case .busy(let message)? = error {
                #expect(message.contains("busy timeout"), "\(message)")
            } else {
                Issue.record("expected ChatLogError.busy, got \(String(describing: error))")
            }
            let waited = ContinuousClock.now - started
            #expect(waited >= .milliseconds(250), "gave up after \(waited), before the busy timeout")
            #expect(waited < .seconds(20), "waited \(waited)")
            #expect(try store.transcript(conversation).messages.map(\.content) == ["before"], "reads go on under the lock")

            try holder.inDatabase { db in try db.execute(sql: "ROLLBACK") }
            try holder.close()
            try store.append(NewMessage(role: .user, content: "after"), to: conversation)
            #expect(try store.verify().ok)
            try store.close()
            #expect(try reopenAndVerify(path, key: key, conversation) == ["before", "after"])
            print("busy: a write under another connection's EXCLUSIVE transaction failed with ChatLogError.busy after \(waited) (timeout 0.3 s)")
        }
    }
}
