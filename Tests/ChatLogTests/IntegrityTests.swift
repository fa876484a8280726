import Foundation
import GRDB
import Testing

@testable import ChatLog

/// Tampering with the file (docs/ARCHITECTURE.md §3): a sealed value that was moved, altered, truncated or names
/// an unknown key fails with `ChatLogError.integrity` naming table, column and row — never wrong
/// plaintext, never a crash.
@Suite struct IntegrityTests {
    /// A store with one conversation (every sealed field set) and two messages, and a second
    /// conversation that no test touches.
    struct Fixture {
        let store: ChatLogStore
        let path: String
        let conversation: ConversationID
        let first: MessageID
        let second: MessageID
        let untouched: ConversationID

        init(_ directory: TemporaryDirectory) throws {
            store = try makeStore(in: directory)
            path = directory.databasePath
            conversation = try store.createConversation(
                NewConversation(title: "a title", subject: "user-1", metadata: .object(["k": .string("v")])))
            first = try store.append(NewMessage(role: .user, content: "hi", metadata: .object(["n": .integer(1)])), to: conversation)
            second = try store.append(NewMessage(role: .assistant, content: "hello there", metadata: .array([])), to: conversation)
            untouched = try store.createConversation(NewConversation(title: "other"))
            try store.append(NewMessage(role: .user, content: "unrelated"), to: untouched)
        }

        func expectUntouchedStillReads() throws {
            #expect(try store.transcript(untouched).messages.map(\.content) == ["unrelated"])
        }
    }

    // MARK: - Moved values

    @Test func contentCopiedToAnotherRowFails() async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try Fixture(directory)
            try withRawDatabase(fixture.path) { db in
                try db.execute(
                    sql: "UPDATE messages SET content = (SELECT content FROM messages WHERE id = ?) WHERE id = ?",
                    arguments: [fixture.first.rawValue, fixture.second.rawValue])
            }
            #expect(throws: integrity("messages", "content", fixture.second.rawValue, .authenticationFailed)) {
                try fixture.store.transcript(fixture.conversation)
            }
            try fixture.expectUntouchedStillReads()
        }
    }

    @Test func contentCopiedToAnotherColumnFails() async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try Fixture(directory)
            try withRawDatabase(fixture.path) { db in
                try db.execute(sql: "UPDATE messages SET metadata = content WHERE id = ?", arguments: [fixture.first.rawValue])
            }
            #expect(throws: integrity("messages", "metadata", fixture.first.rawValue, .authenticationFailed)) {
                try fixture.store.transcript(fixture.conversation)
            }
        }
    }

    @Test func titleCopiedToSubjectFails() async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try Fixture(directory)
            try withRawDatabase(fixture.path) { db in
                try db.execute(sql: "UPDATE conversations SET subject = title WHERE id = ?", arguments: [fixture.conversation.rawValue])
            }
            let expected = integrity("conversations", "subject", fixture.conversation.rawValue, .authenticationFailed)
            #expect(throws: expected) { try fixture.store.conversation(fixture.conversation) }
            #expect(throws: expected) { try fixture.store.transcript(fixture.conversation) }
            #expect(throws: expected) { try fixture.store.conversations() }
            try fixture.expectUntouchedStillReads()
        }
    }

    @Test func valueCopiedBetweenTablesFails() async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try Fixture(directory)
            try withRawDatabase(fixture.path) { db in
                try db.execute(
                    sql: "UPDATE messages SET content = (SELECT title FROM conversations WHERE id = ?) WHERE id = ?",
                    arguments: [fixture.conversation.rawValue, fixture.first.rawValue])
            }
            #expect(throws: integrity("messages", "content", fixture.first.rawValue, .authenticationFailed)) {
                try fixture.store.transcript(fixture.conversation)
            }
        }
    }

    @Test func titlesSwappedBetweenConversationsFail() async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try Fixture(directory)
            try withRawDatabase(fixture.path) { db in
                try db.execute(
                    sql: "UPDATE conversations SET title = (SELECT title FROM conversations WHERE id = ?) WHERE id = ?",
                    arguments: [fixture.untouched.rawValue, fixture.conversation.rawValue])
            }
            #expect(throws: integrity("conversations", "title", fixture.conversation.rawValue, .authenticationFailed)) {
                try fixture.store.conversation(fixture.conversation)
            }
        }
    }

    @Test func valueCopiedFromAnotherStoreFails() async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try Fixture(directory)
            // Another store has a data key with the same id (1) but other material.
            let otherPath = directory.file("other.db")
            let other = try ChatLogStore.create(at: otherPath, key: .key(.generate()))
            let otherConversation = try other.createConversation()
            let otherMessage = try other.append(NewMessage(role: .user, content: "from elsewhere"), to: otherConversation)
            try other.close()
            let foreign = try rawBlob(otherPath, table: "messages", column: "content", id: otherMessage.rawValue)
            #expect(try SealedValue.keyID(of: foreign) == KeyID(rawValue: 1))
            try setRawBlob(fixture.path, table: "messages", column: "content", id: fixture.first.rawValue, to: foreign)
            #expect(throws: integrity("messages", "content", fixture.first.rawValue, .authenticationFailed)) {
                try fixture.store.transcript(fixture.conversation)
            }
        }
    }

    // MARK: - Altered values

    @Test func everyFlippedBitOfAShortValueIsCaught() async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try Fixture(directory)
            let id = fixture.first.rawValue
            let original = try rawBlob(fixture.path, table: "messages", column: "content", id: id)
            // The fixture's conversation has a subject: version 2, with the subject key id in bytes 5…8.
            #expect(original.count == SealedValue.subjectOverhead + 32)
            #expect(original.first == SealedValue.subjectVersion)
            for position in 0..<original.count {
                var tampered = [UInt8](original)
                tampered[position] ^= UInt8(1 << (position % 8))
                try setRawBlob(fixture.path, table: "messages", column: "content", id: id, to: Data(tampered))
                let reason: IntegrityFailure.Reason
                switch position {
                case 0: reason = .unsupportedVersion(tampered[0])
                case 1...4:
                    reason = .unknownKey(KeyID(rawValue: tampered[1...4].reduce(UInt32(0)) { ($0 << 8) | UInt32($1) }))
                // A subject key id the subject-key file never gave out: altered, not "forgotten".
                default: reason = .authenticationFailed
                }
                #expect(throws: integrity("messages", "content", id, reason), "bit flipped in byte \(position)") {
                    try fixture.store.transcript(fixture.conversation)
                }
            }
            // Restored, it opens again: the failures above came from the flipped bits alone.
            try setRawBlob(fixture.path, table: "messages", column: "content", id: id, to: original)
            #expect(try fixture.store.transcript(fixture.conversation).messages.map(\.content) == ["hi", "hello there"])
        }
    }

    @Test func flippedBitInMetadataIsCaught() async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try Fixture(directory)
            let id = fixture.conversation.rawValue
            var metadata = [UInt8](try rawBlob(fixture.path, table: "conversations", column: "metadata", id: id))
            metadata[metadata.count - 1] ^= 0x80
            try setRawBlob(fixture.path, table: "conversations", column: "metadata", id: id, to: Data(metadata))
            #expect(throws: integrity("conversations", "metadata", id, .authenticationFailed)) {
                try fixture.store.conversation(fixture.conversation)
            }
        }
    }

    @Test func truncatedValuesAreCaught() async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try Fixture(directory)
            let id = fixture.second.rawValue
            let original = try rawBlob(fixture.path, table: "messages", column: "content", id: id)
            let cases: [(Int, IntegrityFailure.Reason)] = [
                (0, .truncated(length: 0)),
                (5, .truncated(length: 5)),
                (SealedValue.overhead, .truncated(length: SealedValue.overhead)),
                // A version-2 value (the fixture's conversation has a subject) has 4 more header bytes.
                (SealedValue.subjectOverhead, .truncated(length: SealedValue.subjectOverhead)),
                // Long enough for a header and a MAC, but the MAC no longer covers the bytes.
                (SealedValue.subjectOverhead + 1, .authenticationFailed),
                (original.count - 1, .authenticationFailed),
                (original.count - 16, .authenticationFailed),
            ]
            for (length, reason) in cases {
                try setRawBlob(fixture.path, table: "messages", column: "content", id: id, to: original.prefix(length))
                #expect(throws: integrity("messages", "content", id, reason), "truncated to \(length) bytes") {
                    try fixture.store.transcript(fixture.conversation)
                }
            }
            // Extended with garbage: also refused.
            try setRawBlob(fixture.path, table: "messages", column: "content", id: id, to: original + Data([0, 1, 2]))
            #expect(throws: integrity("messages", "content", id, .authenticationFailed)) {
                try fixture.store.transcript(fixture.conversation)
            }
        }
    }

    @Test(arguments: [UInt32(999), 0, 2, UInt32.max])
    func unknownKeyIDIsNamed(keyID: UInt32) async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try Fixture(directory)
            let id = fixture.first.rawValue
            var sealed = [UInt8](try rawBlob(fixture.path, table: "messages", column: "content", id: id))
            sealed.replaceSubrange(1...4, with: [UInt8(keyID >> 24), UInt8((keyID >> 16) & 0xFF), UInt8((keyID >> 8) & 0xFF), UInt8(keyID & 0xFF)])
            try setRawBlob(fixture.path, table: "messages", column: "content", id: id, to: Data(sealed))
            // Key 0 is the master key and key 2 the index key: neither is a data key, so neither opens a field.
            let error = #expect(throws: integrity("messages", "content", id, .unknownKey(KeyID(rawValue: keyID)))) {
                try fixture.store.transcript(fixture.conversation)
            }
            #expect(error?.description.contains(id) == true)
            #expect(error?.description.contains("key \(keyID)") == true)
        }
    }

    /// Key ids are 32-bit. A damaged key-id column holding any other number used to trap on the
    /// conversion (the corruption suite found `chatlog verify` dying on one); now verify reports
    /// it, and reads that need the key fail with an integrity error naming the place.
    @Test(arguments: [Int64(-1), Int64(1) << 40, Int64.min, Int64(UInt32.max) + 1])
    func keyIDColumnsOutsideThirtyTwoBitsAreReportedNotTrapped(value: Int64) async throws {
        try await withTemporaryDirectory { directory in
            let key = MasterKey.generate()
            let store = try makeStore(in: directory, key: key)
            let conversation = try store.createConversation(NewConversation(title: "t", subject: "s"))
            let message = try store.append(NewMessage(role: .user, content: "find this"), to: conversation)
            try withRawDatabaseNoForeignKeys(directory.databasePath) { db in
                try db.execute(sql: "UPDATE messages SET index_key_id = ? WHERE id = ?", arguments: [value, message.rawValue])
                try db.execute(sql: "UPDATE conversations SET subject_key_id = ? WHERE id = ?", arguments: [value, conversation.rawValue])
            }
            let report = try store.verify()
            #expect(report.issues.contains { $0.table == "messages" && $0.column == "index_key_id" && $0.rowID == message.rawValue })
            #expect(report.issues.contains { $0.table == "conversations" && $0.column == "subject_key_id" && $0.rowID == conversation.rawValue })
            #expect(throws: ChatLogError.self) { try store.rotateIndexKey(RotationOptions(newKey: true)) }
            // Deleting needs no intact key id: the message's terms are read from the index itself.
            #expect(try store.deleteConversation(conversation))
            #expect(try store.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM message_terms_instance") } == 0)
            try store.close()

            // A damaged id in the keys table itself: the store refuses to open, naming it.
            try withRawDatabaseNoForeignKeys(directory.databasePath) { db in
                try db.execute(sql: "UPDATE keys SET id = ? WHERE kind = 'data'", arguments: [value])
            }
            #expect(throws: integrity("keys", "id", String(value), .invalidKeyID(value))) {
                try ChatLogStore.open(at: directory.databasePath, key: .key(key))
            }
        }
    }

    /// Plain time columns are not authenticated (SECURITY.md); a damaged one can hold any 64-bit
    /// number. Reading and printing it must not trap.
    @Test(arguments: [Int64.max, Int64.min, Int64.max - 1, -1])
    func extremeTimesPrintWithoutTrapping(value: Int64) async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try Fixture(directory)
            try withRawDatabase(fixture.path) { db in
                try db.execute(sql: "UPDATE messages SET created_at = ? WHERE id = ?", arguments: [value, fixture.first.rawValue])
                try db.execute(sql: "UPDATE conversations SET created_at = ?, updated_at = ? WHERE id = ?", arguments: [value, value, fixture.conversation.rawValue])
            }
            let transcript = try fixture.store.transcript(fixture.conversation)
            for message in transcript.messages { #expect(!Timestamps.format(message.createdAt).isEmpty) }
            #expect(!Timestamps.format(transcript.conversation.createdAt).isEmpty)
            #expect(!Timestamps.format(Date(unixMilliseconds: value)).isEmpty)
        }
    }

    @Test func valuesOfAnotherTypeFailWithoutCrashing() async throws {
        try await withTemporaryDirectory { directory in
            let fixture = try Fixture(directory)
            try withRawDatabase(fixture.path) { db in
                try db.execute(sql: "UPDATE conversations SET title = 42 WHERE id = ?", arguments: [fixture.conversation.rawValue])
            }
            // Numbers and text read as their text bytes: far too short to be a sealed value.
            #expect(throws: integrity("conversations", "title", fixture.conversation.rawValue, .truncated(length: 2))) {
                try fixture.store.conversation(fixture.conversation)
            }
            #expect(throws: integrity("conversations", "title", fixture.conversation.rawValue, .truncated(length: 2))) {
                try fixture.store.conversations()
            }
            try withRawDatabase(fixture.path) { db in
                try db.execute(sql: "UPDATE conversations SET title = NULL WHERE id = ?", arguments: [fixture.conversation.rawValue])
                try db.execute(sql: "UPDATE messages SET content = 'plain text' WHERE id = ?", arguments: [fixture.first.rawValue])
            }
            #expect(try fixture.store.conversation(fixture.conversation).title == nil)
            #expect(throws: integrity("messages", "content", fixture.first.rawValue, .truncated(length: 10))) {
                try fixture.store.transcript(fixture.conversation)
            }
            try withRawDatabase(fixture.path) { db in
                try db.execute(sql: "DELETE FROM messages WHERE id = ?", arguments: [fixture.first.rawValue])
                try db.execute(sql: "UPDATE messages SET metadata = 1.5 WHERE id = ?", arguments: [fixture.second.rawValue])
            }
            #expect(throws: integrity("messages", "metadata", fixture.second.rawValue, .truncated(length: 3))) {
                try fixture.store.transcript(fixture.conversation)
            }
        }
    }

    @Test func wrappedKeyOfAnotherTypeFailsAtOpen() async throws {
        try await withTemporaryDirectory { directory in
            let key = MasterKey.generate()
            try makeStore(in: directory, key: key).close()
            try withRawDatabase(directory.databasePath) { db in
                try db.execute(sql: "UPDATE keys SET wrapped = 7 WHERE kind = 'data'")
            }
            // The key row's MAC (docs/FORMAT.md, "Key-row MAC") covers `wrapped`: it fails first.
            #expect(throws: integrity("keys", "mac", "data:1", .authenticationFailed)) {
                try ChatLogStore.open(at: directory.databasePath, key: .key(key))
            }
        }
    }

    @Test func integrityErrorDescriptionNamesThePlace() {
        let error = integrity("messages", "content", "0190d5a4-0000-7000-8000-00000000abcd", .authenticationFailed)
        #expect(error.description.contains("messages.content"))
        #expect(error.description.contains("0190d5a4-0000-7000-8000-00000000abcd"))
        #expect(error.category == .integrity)
    }

    // MARK: - Wrapped keys

    @Test func tamperedWrappedDataKeyFailsAtOpen() async throws {
        try await withTemporaryDirectory { directory in
            let key = MasterKey.generate()
            let store = try makeStore(in: directory, key: key)
            try store.close()
            try withRawDatabase(directory.databasePath) { db in
                try db.execute(sql: "UPDATE keys SET wrapped = (SELECT wrapped FROM keys WHERE kind = 'index') WHERE kind = 'data'")
            }
            #expect(throws: integrity("keys", "mac", "data:1", .authenticationFailed)) {
                try ChatLogStore.open(at: directory.databasePath, key: .key(key))
            }
        }
    }

    @Test func flippedBitInWrappedIndexKeyFailsAtOpen() async throws {
        try await withTemporaryDirectory { directory in
            let key = MasterKey.generate()
            try makeStore(in: directory, key: key).close()
            let wrapped = try withRawDatabase(directory.databasePath) { db in
                try Data.fetchOne(db, sql: "SELECT wrapped FROM keys WHERE kind = 'index'")!
            }
            var tampered = [UInt8](wrapped)
            tampered[40] ^= 0x04
            try withRawDatabase(directory.databasePath) { db in
                try db.execute(sql: "UPDATE keys SET wrapped = ? WHERE kind = 'index'", arguments: [Data(tampered)])
            }
            #expect(throws: integrity("keys", "mac", "index:2", .authenticationFailed)) {
                try ChatLogStore.open(at: directory.databasePath, key: .key(key))
            }
        }
    }
}

/// A raw connection that does not enforce foreign keys: damage does not respect them.
private func withRawDatabaseNoForeignKeys(_ path: String, _ body: (Database) throws -> Void) throws {
    var configuration = Configuration()
    configuration.busyMode = .timeout(10)
    configuration.foreignKeysEnabled = false
    let queue = try DatabaseQueue(path: path, configuration: configuration)
    defer { try? queue.close() }
    try queue.write(body)
}
