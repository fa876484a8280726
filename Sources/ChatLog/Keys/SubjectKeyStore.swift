import Foundation
import Synchronization

// The subject-key seam (docs/ARCHITECTURE.md §10, "Erasure per subject"): where the per-subject
// keys live. `SubjectKeyFile` (Keys/SubjectKeys.swift) is the SQLite implementation, the file
// next to a SQLite store; `SealedSubjectKeys` keeps the same rows in a store behind
// ``SubjectKeyRows`` (PostgreSQL: a database of its own, CHATLOG_SUBJECT_KEYS). What crosses
// ``SubjectKeyRows`` is already wrapped or hashed: the core wraps, unwraps and hashes
// (``SubjectKeyCrypto``), the backend stores bytes and ids.

/// Why a subject-key store has no key of an id.
package enum SubjectKeyAbsence: Sendable, Equatable {
    /// Destroyed by `forget`.
    case forgotten
    /// Outside the ids the store gave out: the value's header was altered.
    case neverIssued
    /// No store, or one from before the key was made.
    case unknown
}

/// What the store asks of its subject keys, whatever holds them.
protocol SubjectKeyStore: Sendable {
    /// The key of `subject`; created when `create` and there is none (its own transaction, before
    /// the store's). nil when there is none and `create` is false.
    func key(forSubject subject: String, create: Bool) async throws(ChatLogError) -> (id: KeyID, key: SubjectKey)?
    /// The keys of many subjects at once.
    func keys(forSubjects subjects: Set<String>, create: Bool) async throws(ChatLogError) -> [String: (id: KeyID, key: SubjectKey)]
    /// The key a sealed value's header names: nil when the store has no such key.
    func key(id: KeyID) async throws(ChatLogError) -> SubjectKey?
    func absence(of id: KeyID) async throws(ChatLogError) -> SubjectKeyAbsence
    /// Destroys the keys (one transaction) and lists them as forgotten. Idempotent.
    func destroy(_ ids: [KeyID]) async throws(ChatLogError)
    /// Drops keys this process holds in memory (another process forgot them).
    func evict(_ ids: [KeyID])
    func forgottenIDs() async throws(ChatLogError) -> Set<KeyID>
    func counts() async throws(ChatLogError) -> (live: Int, forgotten: Int)
    /// The keyed hash of `subject` that names its forget receipt; nil when there is no store and
    /// `create` is false.
    func receiptHash(_ subject: String, create: Bool) async throws(ChatLogError) -> Data?
    /// Master-key rewrap, kill-safe across two stores (docs/FORMAT.md §3.2): step 1 before the
    /// store's commit, step 3 after it; `abandonRewrap` when the store's step failed.
    func prepareRewrap(to new: MasterKey) async throws(ChatLogError)
    func finishRewrap(old: MasterKey, new: MasterKey) async throws(ChatLogError)
    func abandonRewrap() async
    func close() async throws(ChatLogError)
}

/// The file's methods are synchronous (GRDB); these run them as they are. (Each body is a
/// synchronous closure, so that it calls the synchronous method, not this one.)
extension SubjectKeyFile: SubjectKeyStore {
    private func sync<T>(_ body: () throws(ChatLogError) -> T) throws(ChatLogError) -> T { try body() }

    func key(forSubject subject: String, create: Bool) async throws(ChatLogError) -> (id: KeyID, key: SubjectKey)? {
        try sync { () throws(ChatLogError) in try key(forSubject: subject, create: create) }
    }

    func keys(forSubjects subjects: Set<String>, create: Bool) async throws(ChatLogError) -> [String: (id: KeyID, key: SubjectKey)] {
        try sync { () throws(ChatLogError) in try keys(forSubjects: subjects, create: create) }
    }

    func key(id: KeyID) async throws(ChatLogError) -> SubjectKey? { try sync { () throws(ChatLogError) in try key(id: id) } }
    func absence(of id: KeyID) async throws(ChatLogError) -> SubjectKeyAbsence { try sync { () throws(ChatLogError) in try absence(of: id) } }
    func destroy(_ ids: [KeyID]) async throws(ChatLogError) { try sync { () throws(ChatLogError) in try destroy(ids) } }
    func forgottenIDs() async throws(ChatLogError) -> Set<KeyID> { try sync { () throws(ChatLogError) in try forgottenIDs() } }
    func counts() async throws(ChatLogError) -> (live: Int, forgotten: Int) { try sync { () throws(ChatLogError) in try counts() } }
    func receiptHash(_ subject: String, create: Bool) async throws(ChatLogError) -> Data? {
        try sync { () throws(ChatLogError) in try receiptHash(subject, create: create) }
    }
    func prepareRewrap(to new: MasterKey) async throws(ChatLogError) { try sync { () throws(ChatLogError) in try prepareRewrap(to: new) } }
    func finishRewrap(old: MasterKey, new: MasterKey) async throws(ChatLogError) {
        try sync { () throws(ChatLogError) in try finishRewrap(old: old, new: new) }
    }
    func abandonRewrap() async {
        let synchronous: () -> Void = abandonRewrap
        synchronous()
    }
    func close() async throws(ChatLogError) { try sync { () throws(ChatLogError) in try close() } }
}

// MARK: - Rows behind the seam

/// A row of `subject_keys` as stored (docs/FORMAT.md §3.2): id, keyed hash of the subject, the
/// key wrapped under the master key and bound to store, id and hash.
package struct StoredSubjectKey: Sendable, Hashable {
    package var id: Int64
    package var subjectHash: Data
    package var wrapped: Data

    package init(id: Int64, subjectHash: Data, wrapped: Data) {
        self.id = id
        self.subjectHash = subjectHash
        self.wrapped = wrapped
    }
}

/// A backend holding the rows of a subject-key store: meta values (`store_id`, `master_check`,
/// `hash_key`, and `*_next` during a rewrap), keys, forgotten ids. Never a key in the clear.
package protocol SubjectKeyRows: Sendable {
    /// Where it is (for messages; never a password).
    var location: String { get }
    /// The meta values; when the store holds none and `create`, its schema and `initial()` are
    /// written first (one creator wins: the others read its values). nil when there is none and
    /// `create` is false.
    func open(create: Bool, initial: @Sendable () -> [String: Data]) async throws(ChatLogError) -> [String: Data]?
    /// The rows of these subject hashes (those that exist).
    func keys(hashes: [Data]) async throws(ChatLogError) -> [StoredSubjectKey]
    func key(id: Int64) async throws(ChatLogError) -> StoredSubjectKey?
    /// A key for each hash that has none: `wrap(id, hash)` gives the row's wrapped key for an id
    /// the backend chose. Hashes that got a row meanwhile (another writer, another host) keep it:
    /// one key per subject. Nothing is made unless the stored master check value is
    /// `masterCheck` (a process holding a master key that a rewrap replaced makes no key that the
    /// new one cannot open). Returns the rows of all `hashes`.
    func create(hashes: [Data], masterCheck: Data, wrap: @Sendable (Int64, Data) -> Data) async throws(ChatLogError) -> [StoredSubjectKey]
    func absence(of id: Int64) async throws(ChatLogError) -> SubjectKeyAbsence
    /// Deletes the keys and lists their ids as forgotten, in one transaction. Idempotent.
    func destroy(_ ids: [Int64]) async throws(ChatLogError)
    func forgottenIDs() async throws(ChatLogError) -> [Int64]
    func counts() async throws(ChatLogError) -> (live: Int, forgotten: Int)
    /// Rewrap step 1: `rewrap(row)` for every key (only those without one yet when
    /// `onlyMissing`) into `wrapped_next`, and `meta` (`hash_key_next`, `master_check_next`), in
    /// one transaction.
    func prepareRewrap(onlyMissing: Bool, meta: [String: Data], rewrap: @Sendable (StoredSubjectKey) throws(ChatLogError) -> Data)
        async throws(ChatLogError)
    /// Rewrap step 3: the `*_next` values become current (nothing when there are none).
    func finishRewrap() async throws(ChatLogError)
    /// Drops an unfinished step 1.
    func abandonRewrap() async throws(ChatLogError)
    func close() async
}

/// Subject keys in a store behind ``SubjectKeyRows``: the same hashing, wrapping, cache and
/// meaning as the file (``SubjectKeyFile``), async.
final class SealedSubjectKeys: SubjectKeyStore {
    let rows: any SubjectKeyRows
    let storeID: String
    let readOnly: Bool
    private let keyRing: KeyRing
    private let hashKey = Mutex<SecureBytes?>(nil)
    private let cache = Mutex(SubjectKeyCache())
    /// Why keys named by values just read are absent (for the error that opening them gives).
    private let absences = Mutex<[KeyID: SubjectKeyAbsence]>([:])

    init(rows: any SubjectKeyRows, storeID: String, readOnly: Bool, keyRing: KeyRing) {
        self.rows = rows
        self.storeID = storeID
        self.readOnly = readOnly
        self.keyRing = keyRing
    }

    private var crypto: SubjectKeyCrypto { SubjectKeyCrypto(storeID: storeID, place: rows.location) }

    private func failure(_ reason: String) -> ChatLogError { .subjectKeyStore(location: rows.location, reason: reason) }

    /// The hash key (checking store id and master key at the first use); nil when the store has
    /// none and `create` is false.
    private func open(create: Bool) async throws(ChatLogError) -> SecureBytes? {
        if let key = hashKey.withLock({ $0 }) { return key }
        if create, readOnly { throw .invalidInput("the store is open read-only; a conversation with a subject needs a subject key") }
        let master = keyRing.master
        let storeID = storeID
        let crypto = crypto
        guard
            let meta = try await rows.open(
                create: create,
                initial: {
                    [
                        "store_id": Data(storeID.utf8), "master_check": Data(master.checkValueV2),
                        "hash_key": crypto.wrapHashKey(SecureBytes.random(count: 32), master: master),
                    ]
                })
        else { return nil }
        guard meta["store_id"] == Data(storeID.utf8) else {
            throw failure("it belongs to another store (give this store's own subject-key database)")
        }
        if !readOnly, meta["hash_key_next"] != nil, let next = meta["master_check_next"], KeyRowAuthentication.equal(next, master.checkValueV2) {
            // A rewrap was killed after the store committed the new master key.
            try await rows.finishRewrap()
            return try await open(create: create)
        }
        guard let check = meta["master_check"], KeyRowAuthentication.equal(check, master.checkValueV2) else {
            throw failure(
                "it is not wrapped under this master key (was the store's master key changed without it? restore the subject-key database that matches the store)")
        }
        let key = try crypto.unwrapHashKey(meta["hash_key"] ?? Data(), master: master)
        return hashKey.withLock { held in
            if held == nil { held = key }
            return held
        }
    }

    private func unwrap(_ row: StoredSubjectKey) throws(ChatLogError) -> (id: KeyID, key: SubjectKey) {
        let id = try KeyID.stored(row.id, table: "subject_keys", column: "id", rowID: String(row.id))
        return (id, try crypto.unwrap(row.wrapped, id: id, hash: row.subjectHash, master: keyRing.master))
    }

    func key(forSubject subject: String, create: Bool) async throws(ChatLogError) -> (id: KeyID, key: SubjectKey)? {
        try await keys(forSubjects: [subject], create: create)[subject]
    }

    func keys(forSubjects subjects: Set<String>, create: Bool) async throws(ChatLogError) -> [String: (id: KeyID, key: SubjectKey)] {
        guard !subjects.isEmpty, let hashKey = try await open(create: create) else { return [:] }
        var found: [String: (id: KeyID, key: SubjectKey)] = [:]
        var missing: [Data: String] = [:]
        cache.withLock { cache in
            for subject in subjects {
                let hash = SubjectKeyCrypto.subjectHash(subject, hashKey: hashKey)
                if let hit = cache.bySubject[hash] { found[subject] = hit } else { missing[hash] = subject }
            }
        }
        guard !missing.isEmpty else { return found }
        var stored = try await rows.keys(hashes: Array(missing.keys))
        let absent = Set(missing.keys).subtracting(stored.map(\.subjectHash))
        if create, !absent.isEmpty {
            let crypto = crypto
            let master = keyRing.master
            stored += try await rows.create(hashes: Array(absent), masterCheck: Data(master.checkValueV2)) { id, hash in
                crypto.wrap(SecureBytes.random(count: SubjectKey.byteCount), id: KeyID(rawValue: UInt32(truncatingIfNeeded: id)), hash: hash, master: master)
            }
        }
        for row in stored {
            guard let subject = missing[row.subjectHash], found[subject] == nil else { continue }
            let key = try unwrap(row)
            found[subject] = key
            cache.withLock { $0.insert(key.id, key.key, hash: row.subjectHash) }
        }
        return found
    }

    func key(id: KeyID) async throws(ChatLogError) -> SubjectKey? {
        if let hit = cache.withLock({ $0.byID[id] }) { return hit }
        guard try await open(create: false) != nil, let row = try await rows.key(id: Int64(id.rawValue)) else { return nil }
        let key = try unwrap(row)
        guard key.id == id else { return nil }
        cache.withLock { $0.insert(id, key.key, hash: nil) }
        return key.key
    }

    /// A key this process holds already (opening values needs no round trip once
    /// ``ChatLogStore/ensureSubjectKeys(for:)`` has loaded them).
    func cachedKey(id: KeyID) -> SubjectKey? { cache.withLock { $0.byID[id] } }

    func noteAbsence(_ id: KeyID, _ absence: SubjectKeyAbsence) {
        absences.withLock { noted in
            if noted.count >= SubjectKeyFile.cacheCapacity { noted.removeAll() }
            noted[id] = absence
        }
    }

    func notedAbsence(_ id: KeyID) -> SubjectKeyAbsence? { absences.withLock { $0[id] } }

    func absence(of id: KeyID) async throws(ChatLogError) -> SubjectKeyAbsence {
        guard try await open(create: false) != nil else { return .unknown }
        return try await rows.absence(of: Int64(id.rawValue))
    }

    func destroy(_ ids: [KeyID]) async throws(ChatLogError) {
        guard !ids.isEmpty, try await open(create: false) != nil else { return }
        try await rows.destroy(ids.map { Int64($0.rawValue) })
        evict(ids)
    }

    func evict(_ ids: [KeyID]) { cache.withLock { $0.evict(ids) } }

    func forgottenIDs() async throws(ChatLogError) -> Set<KeyID> {
        guard try await open(create: false) != nil else { return [] }
        return Set(try await rows.forgottenIDs().compactMap { UInt32(exactly: $0).map(KeyID.init) })
    }

    func counts() async throws(ChatLogError) -> (live: Int, forgotten: Int) {
        guard try await open(create: false) != nil else { return (0, 0) }
        return try await rows.counts()
    }

    func receiptHash(_ subject: String, create: Bool) async throws(ChatLogError) -> Data? {
        guard let hashKey = try await open(create: create) else { return nil }
        return SubjectKeyCrypto.hash(subject, tag: SubjectKeyFile.receiptTag, hashKey: hashKey)
    }

    func prepareRewrap(to new: MasterKey) async throws(ChatLogError) {
        guard let hashKey = try await open(create: false) else { return }
        let crypto = crypto
        let old = keyRing.master
        try await rows.prepareRewrap(
            onlyMissing: false,
            meta: ["hash_key_next": crypto.wrapHashKey(hashKey, master: new), "master_check_next": Data(new.checkValueV2)]
        ) { (row) throws(ChatLogError) in try crypto.rewrap(row, from: old, to: new) }
    }

    func finishRewrap(old: MasterKey, new: MasterKey) async throws(ChatLogError) {
        // Keys another process created between step 1 and the store's commit have no `wrapped_next`.
        let crypto = crypto
        try await rows.prepareRewrap(onlyMissing: true, meta: [:]) { (row) throws(ChatLogError) in try crypto.rewrap(row, from: old, to: new) }
        try await rows.finishRewrap()
    }

    func abandonRewrap() async { try? await rows.abandonRewrap() }

    func close() async throws(ChatLogError) { await rows.close() }
}

/// The subject keys of a store on a backend whose subject-key store was not named
/// (PostgreSQL without CHATLOG_SUBJECT_KEYS): nothing is there, and what needs a key says how
/// to give one.
struct MissingSubjectKeys: SubjectKeyStore {
    let location: String

    var reason: String {
        "conversations with a subject need a subject-key database of their own: set CHATLOG_SUBJECT_KEYS to its postgres:// URL (docs/OPERATIONS.md)"
    }

    var error: ChatLogError { .subjectKeyStore(location: location, reason: reason) }

    func key(forSubject subject: String, create: Bool) async throws(ChatLogError) -> (id: KeyID, key: SubjectKey)? {
        if create { throw error }
        return nil
    }

    func keys(forSubjects subjects: Set<String>, create: Bool) async throws(ChatLogError) -> [String: (id: KeyID, key: SubjectKey)] {
        if create, !subjects.isEmpty { throw error }
        return [:]
    }

    func key(id: KeyID) async throws(ChatLogError) -> SubjectKey? { throw error }
    func absence(of id: KeyID) async throws(ChatLogError) -> SubjectKeyAbsence { .unknown }
    func destroy(_ ids: [KeyID]) async throws(ChatLogError) { if !ids.isEmpty { throw error } }
    func evict(_ ids: [KeyID]) {}
    func forgottenIDs() async throws(ChatLogError) -> Set<KeyID> { [] }
    func counts() async throws(ChatLogError) -> (live: Int, forgotten: Int) { (0, 0) }
    func receiptHash(_ subject: String, create: Bool) async throws(ChatLogError) -> Data? {
        if create { throw error }
        return nil
    }
    func prepareRewrap(to new: MasterKey) async throws(ChatLogError) {}
    func finishRewrap(old: MasterKey, new: MasterKey) async throws(ChatLogError) {}
    func abandonRewrap() async {}
    func close() async throws(ChatLogError) {}
}

// MARK: - Shared by every subject-key store

/// Subject keys kept unwrapped in memory, by subject hash and by id (``SubjectKeyFile/cacheCapacity``).
struct SubjectKeyCache {
    var bySubject: [Data: (id: KeyID, key: SubjectKey)] = [:]
    var byID: [KeyID: SubjectKey] = [:]

    mutating func insert(_ id: KeyID, _ key: SubjectKey, hash: Data?) {
        if byID.count >= SubjectKeyFile.cacheCapacity {
            byID.removeAll(keepingCapacity: true)
            bySubject.removeAll(keepingCapacity: true)
        }
        byID[id] = key
        if let hash { bySubject[hash] = (id, key) }
    }

    mutating func evict(_ ids: [KeyID]) {
        for id in ids { byID[id] = nil }
        bySubject = bySubject.filter { !ids.contains($0.value.id) }
    }
}

/// Wrapping, unwrapping and hashing of subject keys (docs/FORMAT.md §3.2), the same for every
/// store of them. `place` names the store in integrity errors (a path or a location).
struct SubjectKeyCrypto: Sendable {
    let storeID: String
    let place: String

    /// `STORE_ID/KEY_ID/HEX(subject hash)`, built byte by byte (on every key unwrap: string
    /// interpolation and `String(format:)` per byte each cost more than the unwrap itself).
    func rowContext(id: KeyID, hash: Data) -> FieldContext {
        var output = [UInt8]()
        output.reserveCapacity(storeID.utf8.count + 12 + hash.count * 2)
        output += storeID.utf8
        output.append(UInt8(ascii: "/"))
        output += String(id.rawValue).utf8
        output.append(UInt8(ascii: "/"))
        Self.appendHex(hash, to: &output)
        return FieldContext(table: "subject_keys", column: "wrapped", rowID: String(decoding: output, as: UTF8.self))
    }

    /// Lower-case hex.
    static func hex(_ bytes: Data) -> String {
        var output = [UInt8]()
        output.reserveCapacity(bytes.count * 2)
        appendHex(bytes, to: &output)
        return String(decoding: output, as: UTF8.self)
    }

    private static func appendHex(_ bytes: Data, to output: inout [UInt8]) {
        let digits: StaticString = "0123456789abcdef"
        digits.withUTF8Buffer { digits in
            for byte in bytes {
                output.append(digits[Int(byte >> 4)])
                output.append(digits[Int(byte & 0x0F)])
            }
        }
    }

    func wrap(_ material: SecureBytes, id: KeyID, hash: Data, master: MasterKey) -> Data {
        Data(material.withUnsafeBytes { SealedValue.seal($0, keyID: .master, key: master.storage, context: rowContext(id: id, hash: hash)) })
    }

    func unwrap(_ wrapped: Data, id: KeyID, hash: Data, master: MasterKey) throws(ChatLogError) -> SubjectKey {
        SubjectKey(storage: try unwrapBytes(wrapped, context: rowContext(id: id, hash: hash), master: master))
    }

    /// A stored key wrapped again under `new` (for a rewrap's `wrapped_next`).
    func rewrap(_ row: StoredSubjectKey, from old: MasterKey, to new: MasterKey) throws(ChatLogError) -> Data {
        let id = try KeyID.stored(row.id, table: "subject_keys", column: "id", rowID: String(row.id))
        let material = try unwrap(row.wrapped, id: id, hash: row.subjectHash, master: old)
        return wrap(material.storage, id: id, hash: row.subjectHash, master: new)
    }

    func wrapHashKey(_ material: SecureBytes, master: MasterKey) -> Data {
        Data(material.withUnsafeBytes { SealedValue.seal($0, keyID: .master, key: master.storage, context: hashKeyContext) })
    }

    func unwrapHashKey(_ wrapped: Data, master: MasterKey) throws(ChatLogError) -> SecureBytes {
        try unwrapBytes(wrapped, context: hashKeyContext, master: master)
    }

    private var hashKeyContext: FieldContext { FieldContext(table: "meta", column: "hash_key", rowID: storeID) }

    /// Integrity errors name the store, the table and the key id (never the subject hash).
    private func unwrapBytes(_ wrapped: Data, context: FieldContext, master: MasterKey) throws(ChatLogError) -> SecureBytes {
        // Worked out only for an error (splitting the row id on every unwrap cost more than the unwrap).
        var spot: String { context.table == "meta" ? "hash_key" : String(context.rowID.split(separator: "/").dropFirst().first ?? "") }
        let opened = wrapped.withUnsafeBytes { bytes in
            Result { () throws(SealedValue.Failure) in try SealedValue.open(bytes, key: master.storage, context: context) }
        }
        switch opened {
        case .success(var plain):
            defer { plain.withUnsafeMutableBytes { Sodium.memzero($0) } }
            guard plain.count == 32, (try? SealedValue.keyID(of: wrapped)) == .master else {
                throw .integrity(
                    IntegrityFailure(table: place + ":" + context.table, column: context.column, rowID: spot, reason: .truncated(length: plain.count)))
            }
            return plain.withUnsafeBytes { SecureBytes(copying: $0) }
        case .failure(let error):
            throw .integrity(IntegrityFailure(table: place + ":" + context.table, column: context.column, rowID: spot, reason: error.integrityReason))
        }
    }

    static func subjectHash(_ subject: String, hashKey: SecureBytes) -> Data {
        hash(subject, tag: SubjectKeyFile.hashTag, hashKey: hashKey)
    }

    static func hash(_ subject: String, tag: String, hashKey: SecureBytes) -> Data {
        let message = KeyDerivation.lengthPrefixed([tag, KeyDerivation.compatibilityNormalized(subject)])
        var output = Data(count: 32)
        hashKey.withUnsafeBytes { key in
            message.withUnsafeBytes { input in output.withUnsafeMutableBytes { Sodium.keyedHash(key: key, message: input, into: $0) } }
        }
        return output
    }
}
