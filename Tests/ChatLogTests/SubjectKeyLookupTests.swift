import Foundation
import GRDB
import Testing

@testable import ChatLog

/// The subject-key look-ups of the logging path (docs/PERFORMANCE.md, "Erasure per subject"):
/// the file's bytes stay as docs/FORMAT.md §3.2 defines them, a group commit finds every key of
/// many subjects in statements of 100, and checks them all against the forgotten list.
@Suite struct SubjectKeyLookupTests {
    /// One exchange of `subject` in a new conversation, titled after its index.
    static func record(_ index: Int, subject: String) -> ProxyRecord {
        ProxyRecord(
            conversation: NewConversation(title: "t\(index)", subject: subject, id: .generate()),
            messages: [NewMessage(role: .user, content: "question \(index)"), NewMessage(role: .assistant, content: "answer \(index)")],
            digests: [])
    }

    static func erasureKeys(_ path: String) throws -> [String: Int64] {
        let queue = try DatabaseQueue(path: path)
        defer { try? queue.close() }
        return try queue.read { db in
            Dictionary(
                uniqueKeysWithValues: try Row.fetchAll(db, sql: "SELECT id, erasure_key_id FROM conversations WHERE erasure_key_id IS NOT NULL")
                    .map { ($0[0] as String, $0[1] as Int64) })
        }
    }

    static func blake2b(_ key: [UInt8], _ message: [UInt8]) -> [UInt8] {
        var output = [UInt8](repeating: 0, count: 32)
        key.withUnsafeBytes { key in message.withUnsafeBytes { message in output.withUnsafeMutableBytes { Sodium.keyedHash(key: key, message: message, into: $0) } } }
        return output
    }

    static func lp(_ text: String) -> [UInt8] {
        let count = UInt32(text.utf8.count)
        return [UInt8(count >> 24), UInt8((count >> 16) & 0xFF), UInt8((count >> 8) & 0xFF), UInt8(count & 0xFF)] + Array(text.utf8)
    }

    /// Recomputed here from docs/FORMAT.md §3.2 with the master key: each row's subject hash
    /// (NFKC of the subject, ASCII or not) and the context its key is wrapped for.
    @Test func theSubjectKeyFileHoldsTheDocumentedHashesAndWrappings() async throws {
        try await withTemporaryDirectory { directory in
            let master = TestKey()
            let store = try makeStore(in: directory, key: master.key)
            let subjects = ["alice", "user 42 <a@b.example>", "Ｃａｆｅ́ ﬁnances", "ÅNGSTRÖM"]
            for subject in subjects { try store.createConversation(NewConversation(subject: subject)) }
            try store.close()
            let queue = try DatabaseQueue(path: directory.databasePath + ".subject-keys")
            defer { try? queue.close() }
            let masterKey = master.bytes.withUnsafeBytes { SecureBytes(copying: $0) }
            func open(_ sealed: Data, _ context: FieldContext) -> [UInt8]? {
                sealed.withUnsafeBytes { try? SealedValue.open($0, key: masterKey, context: context) }
            }
            try queue.read { db in
                let storeID = try #require(try String.fetchOne(db, sql: "SELECT CAST(value AS TEXT) FROM meta WHERE name = 'store_id'"))
                let wrappedHashKey = try #require(try Data.fetchOne(db, sql: "SELECT value FROM meta WHERE name = 'hash_key'"))
                let hashKey = try #require(open(wrappedHashKey, FieldContext(table: "meta", column: "hash_key", rowID: storeID)))
                let rows = try Row.fetchAll(db, sql: "SELECT id, subject_hash, wrapped FROM subject_keys ORDER BY id")
                #expect(rows.count == subjects.count)
                for (subject, row) in zip(subjects, rows) {
                    let id: Int64 = row[0]
                    let hash: Data = row[1]
                    #expect(id >= 0x8000_0000)
                    let expected = Self.blake2b(
                        hashKey, Self.lp("chatlog/v1/subject-key-hash") + Self.lp(subject.precomposedStringWithCompatibilityMapping))
                    #expect(Array(hash) == expected, "subject hash of \(subject)")
                    let rowID = "\(storeID)/\(id)/" + hash.map { String(format: "%02x", $0) }.joined()
                    #expect(open(row[2], FieldContext(table: "subject_keys", column: "wrapped", rowID: rowID))?.count == 32)
                }
            }
        }
    }

    /// 150 subjects in one group (two look-up statements, the second padded), half of them
    /// with keys made beforehand, and NFKC-equal spellings of one subject: each subject's
    /// conversations under one key, the existing keys reused, every conversation opens.
    @Test func aGroupCommitFindsTheKeysOfManySubjects() async throws {
        try await withTemporaryDirectory { directory in
            let key = MasterKey.generate()
            let made = try makeStore(in: directory, key: key)
            let subjects = (0..<150).map { "user-\($0)" }
            try made.subjectKeys.createKeys(for: Array(subjects[..<75]))
            try made.close()
            let store = try ChatLogStore.open(at: directory.databasePath, key: .key(key))  // nothing cached
            var records = subjects.enumerated().map { Self.record($0.offset, subject: $0.element) }
            records += [Self.record(150, subject: "ﬁle"), Self.record(151, subject: "file"), Self.record(152, subject: "user-7")]
            let results = try store.logProxyRecords(records)
            let logged = try results.map { try $0.get().conversationID }
            #expect(try store.subjectKeyCounts() == (151, 0))
            let keys = try Self.erasureKeys(directory.databasePath)
            #expect(keys.count == records.count)
            let checker = try ChatLogStore.open(at: directory.databasePath, key: .key(key))
            for (record, id) in zip(records, logged) {
                let subject = try #require(record.conversation.subject)
                let expected = try #require(try checker.subjectKeys.key(forSubject: subject, create: false))
                #expect(keys[id.rawValue] == Int64(expected.id.rawValue), "key of \(subject)")
                #expect(try checker.conversation(id).title == record.conversation.title)
            }
            #expect(keys[logged[150].rawValue] == keys[logged[151].rawValue])
            #expect(keys[logged[152].rawValue] == keys[logged[7].rawValue])
            #expect(try checker.erasureIssues().isEmpty)
        }
    }

    /// A writer that still holds the keys of its subjects while another process forgets every
    /// fifth of them: its next group commit (6 keys: a look-up each; 150 keys: two statements
    /// against the forgotten list) is refused for each forgotten key and sealed again under new
    /// keys; nothing is written under a destroyed key.
    @Test(arguments: [6, 150]) func aGroupCommitRefusesEveryForgottenKeyOfItsSubjects(count: Int) async throws {
        try await withTemporaryDirectory { directory in
            let key = MasterKey.generate()
            let writer = try makeStore(in: directory, key: key)
            let subjects = (0..<count).map { "user-\($0)" }
            _ = try writer.logProxyRecords(subjects.enumerated().map { Self.record($0.offset, subject: $0.element) })
            let before = try Self.erasureKeys(directory.databasePath)
            let forgetter = try ChatLogStore.open(at: directory.databasePath, key: .key(key))
            let forgotten = stride(from: 3, to: count, by: 5).map { subjects[$0] }
            for subject in forgotten { #expect(try forgetter.forget(subject: subject)?.conversations == 1) }
            let records = subjects.enumerated().map { Self.record(200 + $0.offset, subject: $0.element) }
            let logged = try writer.logProxyRecords(records).map { try $0.get().conversationID }
            let after = try Self.erasureKeys(directory.databasePath)
            let destroyed = Set(before.values).subtracting(after.values)
            #expect(destroyed.count == forgotten.count)
            for id in logged { #expect(!destroyed.contains(try #require(after[id.rawValue]))) }
            #expect(try forgetter.subjectKeyCounts() == (count, forgotten.count))
            #expect(try forgetter.erasureIssues().isEmpty)
            for (record, id) in zip(records, logged) { #expect(try forgetter.conversation(id).title == record.conversation.title) }
        }
    }

    @Test func asciiSubjectsNormaliseToThemselves() {
        for text in ["", "alice", "user-42@example.com", "Tab\tand ~ DEL\u{7F}", String(decoding: (0..<128).map { UInt8($0) }, as: UTF8.self)] {
            #expect(KeyDerivation.compatibilityNormalized(text) == text.precomposedStringWithCompatibilityMapping)
            #expect(Array(KeyDerivation.compatibilityNormalized(text).utf8) == Array(text.utf8))
        }
        #expect(KeyDerivation.compatibilityNormalized("ﬁ Ｃａｆｅ́") == "fi Café")
    }
}
