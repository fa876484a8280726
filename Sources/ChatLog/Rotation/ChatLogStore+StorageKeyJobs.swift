import Foundation

// Key jobs on a store behind the storage seam (PostgreSQL; docs/ARCHITECTURE.md §10, "Key jobs
// on PostgreSQL"): data- and index-key rotation, retirement, master-key rewrap. The protocol is
// the SQLite one (docs/ARCHITECTURE.md §5): under the store's key-job lock (the backend's: an
// advisory lock on PostgreSQL), a new key made active in one transaction that every writer's
// guard sees, then batches that the core re-seals or re-blinds and the backend applies as
// compare-and-swap updates after checking that the keys they were made under are still active.
// "key id ≠ active" stays the checkpoint: a job killed at any instant loses nothing and the next
// run goes on. What differs: no WAL checkpoint and no FTS5 merge (the term table forgets a
// message's old terms in the batch that replaces them); `--vacuum` is the backend's.

extension ChatLogStore {
    func storageRotate(_ kind: KeyStatus.Entry.Kind, _ options: RotationOptions, _ storage: any ChatLogStorage) async throws(ChatLogError)
        -> RotationReport
    {
        guard (1...100_000).contains(options.batchSize) else { throw .invalidInput("the batch size must be between 1 and 100000") }
        return try await storage.withKeyJobLock { () async throws(ChatLogError) -> RotationReport in
            try await self.storageRotateLocked(kind, options, storage)
        }
    }

    private func storageRotateLocked(_ kind: KeyStatus.Entry.Kind, _ options: RotationOptions, _ storage: any ChatLogStorage)
        async throws(ChatLogError) -> RotationReport
    {
        let started = ContinuousClock.now
        let deadline = options.maxDuration.map { started + .milliseconds(Int64($0 * 1000)) }

        // 1. A new active key, if asked or if the active one is too old.
        try await reloadKeys(storage)
        let activeID = keyRing.current.activeKey(kind)
        var wantsNewKey = options.newKey
        if let age = options.ifOlderThan {
            let createdAt = try await storage.keyRows().first { $0.id == Int64(activeID.rawValue) }?.createdAt ?? 0
            wantsNewKey = wantsNewKey || Date().timeIntervalSince(Date(unixMilliseconds: createdAt)) > age
        }
        if options.dryRun {
            var rows = try await storageRowsByKey(kind, excluding: activeID, storage)
            if wantsNewKey { rows[activeID, default: 0] += try await storage.keyUsage()[Int64(activeID.rawValue)] ?? 0 }
            return RotationReport(
                kind: kind, createsNewKey: wantsNewKey, newKeyID: nil, activeKeyID: activeID, rewritten: 0,
                remaining: rows.values.reduce(0, +), damaged: [], rowsByKey: rows, dryRun: true)
        }
        var newKeyID: KeyID?
        if wantsNewKey {
            let id = try await storageAddActiveKey(kind, storage)
            try await reloadKeys(storage)
            guard keyRing.current.activeKey(kind) == id else {
                throw .integrity(
                    IntegrityFailure(
                        table: "keys", column: "state", rowID: "\(kind.rawValue):\(id)", reason: .invalidValue("is not active right after it was made active")))
            }
            newKeyID = id
        }
        let target = newKeyID ?? activeID
        let startRows = try await storageRowsByKey(kind, excluding: target, storage)
        var remaining = startRows.values.reduce(0, +)

        // 2. Batches until nothing is left, the deadline passes or the caller cancels.
        var rewritten = 0
        var skipped = StorageSkippedRows()
        var cursor = RotationCursor.start
        while remaining > 0 {
            if let deadline, ContinuousClock.now >= deadline { break }
            if let shouldContinue = options.shouldContinue, !shouldContinue() { break }
            if Task.isCancelled { break }
            let done = try await storageRotateBatch(kind, limit: options.batchSize, skipping: &skipped, cursor: &cursor, storage)
            if done.examined == 0 { break }
            rewritten += done.rewritten
            remaining = max(0, remaining - done.examined)
            options.progress?(RotationProgress(kind: kind, done: rewritten, remaining: remaining))
        }
        let left = try await storageRowsByKey(kind, excluding: keyRing.current.activeKey(kind), storage).values.reduce(0, +)
        return RotationReport(
            kind: kind, createsNewKey: newKeyID != nil, newKeyID: newKeyID, activeKeyID: keyRing.current.activeKey(kind),
            rewritten: rewritten, remaining: max(0, left - skipped.failures.count), damaged: skipped.failures, rowsByKey: startRows,
            dryRun: false)
    }

    /// Rows per key of `kind` other than `excluding`, counted by the backend.
    private func storageRowsByKey(_ kind: KeyStatus.Entry.Kind, excluding: KeyID, _ storage: any ChatLogStorage) async throws(ChatLogError)
        -> [KeyID: Int]
    {
        let usage = try await storage.keyUsage()
        var rows: [KeyID: Int] = [:]
        for key in try await storage.keyRows() where key.kind == kind.rawValue && key.id != Int64(excluding.rawValue) {
            guard let count = usage[key.id], count > 0 else { continue }
            rows[try KeyID.stored(key.id, table: "keys", column: "id", rowID: String(key.id))] = count
        }
        return rows
    }

    /// A new key of `kind`, active, the one active before it decrypt-only: both rows authenticated
    /// under the master key and written in one transaction that also checks nothing changed the
    /// key rows since they were read and verified. Ids are never reused (max + 1: retired rows stay).
    private func storageAddActiveKey(_ kind: KeyStatus.Entry.Kind, _ storage: any ChatLogStorage) async throws(ChatLogError) -> KeyID {
        let master = keyRing.master
        let rows = try await storage.keyRows()
        try KeyRowAuthentication.verify(rows.map(KeyRowAuthentication.KeyRow.init), master: master)
        let next = (rows.map(\.id).max() ?? 0) + 1
        guard let raw = UInt32(exactly: next), raw != UInt32.max else {
            throw .integrity(IntegrityFailure(table: "keys", column: "id", rowID: String(next - 1), reason: .invalidKeyID(next - 1)))
        }
        let id = KeyID(rawValue: raw)
        var changed = rows.filter { $0.kind == kind.rawValue && $0.state == "active" }.map { row in
            var row = row
            row.state = "decrypt-only"
            return row
        }
        changed.append(
            StoredKeyRow(
                id: next, kind: kind.rawValue, state: "active", createdAt: Date().unixMilliseconds, retiredAt: nil,
                wrapped: KeyRing.wrap(SecureBytes.random(count: 32), kind: kind, id: id, master: master), mac: nil))
        try await storageReplaceKeys(changed, expected: rows, meta: [:], storage)
        return id
    }

    /// Writes key rows (each authenticated under the master key this handle holds, or `master`)
    /// through the backend's checked transaction; a conflict means another process changed the
    /// key rows or the master key although this job holds the key-job lock: nothing was written.
    @discardableResult
    private func storageReplaceKeys(
        _ rows: [StoredKeyRow], expected: [StoredKeyRow], meta: [String: MetaValue?], expectedMeta: [String: MetaValue?] = [:],
        master: MasterKey? = nil, _ storage: any ChatLogStorage
    ) async throws(ChatLogError) -> Bool {
        let macKey = master ?? keyRing.master
        let authenticated = rows.map { row in
            var row = row
            row.mac = KeyRowAuthentication.KeyRow(row).mac(macKey)
            return row
        }
        do {
            try await storage.replaceKeys(
                authenticated, expected: expected, checkValues: [Data(keyRing.master.checkValueV2)], meta: meta, expectedMeta: expectedMeta)
            return true
        } catch StorageConflict.staleKeys {
            if !expectedMeta.isEmpty { return false }  // a meta value changed: the caller reads again
            throw .keyOperation("the key rows changed while this job ran (a process that does not take the key-job lock?); nothing was written, run it again")
        } catch StorageConflict.masterKeyChanged {
            try await reloadKeys(storage)  // throws the wrong-key error
            throw .keyOperation("the master key changed while this job ran; nothing was written, run it again")
        } catch let error as ChatLogError {
            throw error
        } catch {
            throw .wrap(error)
        }
    }

    /// Rows a rotation run skipped because a sealed value did not open, by public id, and why.
    struct StorageSkippedRows: Sendable {
        var ids: Set<String> = []
        var failures: [IntegrityFailure] = []

        /// Runs `body` for one row; an integrity failure records the row as damaged and returns nil.
        mutating func attempt<T>(_ id: String, _ body: () throws(ChatLogError) -> T) throws(ChatLogError) -> T? {
            do {
                return try body()
            } catch .integrity(let failure) {
                ids.insert(id)
                failures.append(failure)
                return nil
            }
        }
    }

    /// One batch: rows under older keys read, re-sealed or re-blinded here, and written back by the
    /// backend in one transaction with compare-and-swap updates after its key check; on stale keys
    /// (cannot happen under the lock unless a key row was changed behind it) the ring is reloaded
    /// and the batch made again.
    private func storageRotateBatch(
        _ kind: KeyStatus.Entry.Kind, limit: Int, skipping skipped: inout StorageSkippedRows, cursor: inout RotationCursor,
        _ storage: any ChatLogStorage
    ) async throws(ChatLogError) -> (examined: Int, rewritten: Int) {
        for _ in 0..<10 {
            let keys = keyRing.current
            let active = Int64(keys.activeKey(kind).rawValue)
            let (messages, conversations, next) = try await storage.rowsToRotate(
                kind, otherThan: active, skipping: skipped.ids, after: cursor, limit: limit)
            let damagedBefore = skipped.failures.count
            // Rows sealed under a subject key are re-sealed under the same one: loaded first.
            try await ensureSubjectKeys(for: messages.map(\.content) + conversations.map(\.subject))
            let rewrites =
                kind == .data
                ? try resealRewrites(keys: keys, messages, conversations, skipping: &skipped)
                : try reblindRewrites(keys: keys, messages, conversations, skipping: &skipped)
            let newlyDamaged = skipped.failures.count - damagedBefore
            if rewrites.isEmpty {
                cursor = next
                return (newlyDamaged, 0)
            }
            let writeGuard = WriteGuard(
                acceptedCheckValues: [Data(keyRing.master.checkValueV2)], activeDataKeyID: Int64(keys.activeDataKey.id.rawValue),
                activeIndexKeyID: Int64(keys.activeIndexKey.id.rawValue))
            do {
                let written = try await storage.rewrite(rewrites, guard: writeGuard)
                cursor = next
                return (rewrites.count + newlyDamaged, written)
            } catch StorageConflict.staleKeys {
                try await reloadKeys(storage)
            } catch StorageConflict.masterKeyChanged {
                try await reloadKeys(storage)  // throws the wrong-key error unless it was changed back
            } catch let error as ChatLogError {
                throw error
            } catch {
                throw .wrap(error)
            }
        }
        throw .busy("the active keys kept changing during a rotation batch; run it again")
    }

    private func resealRewrites(
        keys: KeyRing.Loaded, _ messages: [SealedMessageRow], _ conversations: [SealedConversationRow], skipping skipped: inout StorageSkippedRows
    ) throws(ChatLogError) -> [RowRewrite] {
        let sealer = sealer(keys)
        let active = Int64(keys.activeDataKey.id.rawValue)
        var rewrites: [RowRewrite] = []
        for old in messages {
            let id = old.id
            func context(_ column: String) -> FieldContext { FieldContext(table: "messages", column: column, rowID: id) }
            let opened = try skipped.attempt(id) { () throws(ChatLogError) in
                let content = try openSealed(old.content, context("content"), db: nil)
                let metadata = try old.metadata.map { (sealed) throws(ChatLogError) in try openSealed(sealed, context("metadata"), db: nil) }
                return (content, metadata, try subjectOf(old.content, context("content")))
            }
            guard let (content, metadata, subject) = opened else { continue }
            let sealer = sealer.under(subject)
            var new = old
            new.keyID = active
            new.content = content.withUnsafeBytes { sealer.seal($0, table: "messages", column: "content", rowID: id) }
            new.metadata = metadata.map { bytes in bytes.withUnsafeBytes { sealer.seal($0, table: "messages", column: "metadata", rowID: id) } }
            rewrites.append(.message(old: old, new: new))
        }
        for old in conversations {
            let id = old.id
            func context(_ column: String) -> FieldContext { FieldContext(table: "conversations", column: column, rowID: id) }
            let columns: [(String, Data?)] = [("title", old.title), ("subject", old.subject), ("metadata", old.metadata)]
            let opened = try skipped.attempt(id) { () throws(ChatLogError) in
                var plains: [[UInt8]?] = []
                for (column, sealed) in columns {
                    plains.append(try sealed.map { (sealed) throws(ChatLogError) in try openSealed(sealed, context(column), db: nil) })
                }
                let first = columns.first { $0.1 != nil }
                return (plains, try first.flatMap { (column, sealed) throws(ChatLogError) in try subjectOf(sealed!, context(column)) })
            }
            guard let (plains, subject) = opened else { continue }
            let sealer = sealer.under(subject)
            let values = zip(columns, plains).map { column, plain in
                plain.map { bytes in bytes.withUnsafeBytes { sealer.seal($0, table: "conversations", column: column.0, rowID: id) } }
            }
            var new = old
            new.keyID = active
            new.title = values[0]
            new.subject = values[1]
            new.metadata = values[2]
            rewrites.append(.conversation(old: old, new: new))
        }
        return rewrites
    }

    private func reblindRewrites(
        keys: KeyRing.Loaded, _ messages: [SealedMessageRow], _ conversations: [SealedConversationRow], skipping skipped: inout StorageSkippedRows
    ) throws(ChatLogError) -> [RowRewrite] {
        let blinder = keys.activeBlinder
        let active = Int64(blinder.keyID.rawValue)
        var rewrites: [RowRewrite] = []
        for old in messages {
            guard let from = old.indexKeyID else { continue }
            let opened = try skipped.attempt(old.id) { () throws(ChatLogError) in
                try openText(old.content, FieldContext(table: "messages", column: "content", rowID: old.id))
            }
            guard let content = opened else { continue }
            var terms: [UInt64] = []
            blinder.forEachDistinctTerm(in: content) { terms.append($0) }
            rewrites.append(.messageTerms(id: old.id, from: from, to: active, terms: terms))
        }
        for old in conversations {
            guard let from = old.subjectKeyID, let sealed = old.subject else { continue }
            let opened = try skipped.attempt(old.id) { () throws(ChatLogError) in
                try openText(sealed, FieldContext(table: "conversations", column: "subject", rowID: old.id))
            }
            guard let subject = opened else { continue }
            rewrites.append(
                .subjectToken(id: old.id, from: from, to: active, token: SubjectIndex.token(for: subject, key: keys.activeIndexKey.key)))
        }
        return rewrites
    }

    // MARK: - Retire

    func storageRetire(_ ids: [KeyID]?, _ storage: any ChatLogStorage) async throws(ChatLogError) -> [KeyID] {
        try await storage.withKeyJobLock { () async throws(ChatLogError) -> [KeyID] in
            try await self.reloadKeys(storage)
            let rows = try await storage.keyRows()
            try KeyRowAuthentication.verify(rows.map(KeyRowAuthentication.KeyRow.init), master: self.keyRing.master)
            var chosen: [StoredKeyRow] = []
            // An index key still checking proxy tokens not presented since the rotation is kept.
            let tokens = try await storage.proxyTokenNamesByIndexKey()
            if let ids {
                for id in ids {
                    guard let row = rows.first(where: { $0.id == Int64(id.rawValue) }) else { throw .keyNotFound(id) }
                    switch row.state {
                    case "active": throw .keyIsActive(id)
                    case "retired": throw .keyAlreadyRetired(id)
                    default: chosen.append(row)
                    }
                    if row.kind == "index", let names = tokens[row.id] { throw .keyChecksProxyTokens(id, names: names) }
                }
            } else {
                let usage = try await storage.keyUsage()
                chosen = rows.filter { $0.state == "decrypt-only" && (usage[$0.id] ?? 0) == 0 && tokens[$0.id] == nil }
            }
            guard !chosen.isEmpty else { return [] }
            let now = Date().unixMilliseconds
            let retired = chosen.map { row in
                var row = row
                row.state = "retired"
                row.wrapped = nil
                row.retiredAt = now
                return row
            }
            // The backend counts each key's rows again inside the transaction (keyInUse).
            try await self.storageReplaceKeys(retired, expected: rows, meta: [:], storage)
            try await self.reloadKeys(storage)
            // The old row versions (with the wrapped key) are dead tuples until a vacuum.
            try await storage.vacuum(onlyKeys: true)
            return try retired.map { (row) throws(ChatLogError) in try KeyID.stored(row.id, table: "keys", column: "id", rowID: String(row.id)) }
        }
    }

    // MARK: - Rewrap

    func storageRewrap(to newSource: MasterKeySource, _ storage: any ChatLogStorage) async throws(ChatLogError) -> KeyFingerprint {
        try await storage.withKeyJobLock { () async throws(ChatLogError) -> KeyFingerprint in
            let (newMaster, kdf) = try self.newMasterKey(newSource)
            try await self.reloadKeys(storage)
            let oldMaster = self.keyRing.master
            guard !(newMaster == oldMaster) else { throw .sameMasterKey }
            // Subject keys (their own store): wrapped under the new key beside the old first; made
            // current once the store has committed (docs/FORMAT.md §3.2), as on SQLite. Without
            // them (CHATLOG_SUBJECT_KEYS unset) they would stay under the old key: refused.
            if let missing = self.subjectKeyStore as? MissingSubjectKeys, let erasure = storage as? any ErasureStorage,
                try await erasure.subjectKeyConversationCount() > 0
            {
                throw missing.error
            }
            try await self.subjectKeyStore.prepareRewrap(to: newMaster)
            let fingerprint: KeyFingerprint
            do throws(ChatLogError) {
                fingerprint = try await self.storageRewrapKeys(from: oldMaster, to: newMaster, kdf: kdf, newSource: newSource, storage)
            } catch {
                await self.subjectKeyStore.abandonRewrap()
                throw error
            }
            try await self.subjectKeyStore.finishRewrap(old: oldMaster, new: newMaster)
            return fingerprint
        }
    }

    private func storageRewrapKeys(
        from oldMaster: MasterKey, to newMaster: MasterKey, kdf: PassphraseKDF?, newSource: MasterKeySource, _ storage: any ChatLogStorage
    ) async throws(ChatLogError) -> KeyFingerprint {
        // An importer may create the import key (wrapped under the old master key) meanwhile:
        // the transaction checks it is still as read, else everything is read again.
        for _ in 0..<5 {
            let rows = try await storage.keyRows()
            try KeyRowAuthentication.verify(rows.map(KeyRowAuthentication.KeyRow.init), master: oldMaster)
            var rewrapped: [StoredKeyRow] = []
            for row in rows {
                var row = row
                if let wrapped = row.wrapped, let kind = KeyStatus.Entry.Kind(rawValue: row.kind) {
                    let id = try KeyID.stored(row.id, table: "keys", column: "id", rowID: String(row.id))
                    row.wrapped = KeyRing.wrap(try KeyRing.unwrap(wrapped, kind: kind, id: id, master: oldMaster), kind: kind, id: id, master: newMaster)
                }
                rewrapped.append(row)
            }
            var meta: [String: MetaValue?] = [
                "master_check": .blob(Data(newMaster.checkValueV2)), "master_fingerprint": .blob(Data(newMaster.checkValue.prefix(8))),
            ]
            let importKey = try await storage.meta(ImportKey.metaName)
            if case .blob(let wrapped)? = importKey {
                meta[ImportKey.metaName] = .blob(ImportKey.wrap(try ImportKey.unwrap(wrapped, master: oldMaster), master: newMaster))
            }
            if let kdf {
                meta["key_kind"] = .text("passphrase")
                meta["kdf_algorithm"] = .text("argon2id13")
                meta["kdf_salt"] = .blob(Data(kdf.salt))
                meta["kdf_opslimit"] = .integer(Int64(kdf.opsLimit))
                meta["kdf_memlimit"] = .integer(Int64(kdf.memLimit))
            } else {
                meta["key_kind"] = .text("key")
                for name in ["kdf_algorithm", "kdf_salt", "kdf_opslimit", "kdf_memlimit"] { meta[name] = .some(nil) }
            }
            guard
                try await self.storageReplaceKeys(
                    rewrapped, expected: rows, meta: meta, expectedMeta: [ImportKey.metaName: importKey], master: newMaster, storage)
            else { continue }
            self.keyRing.replaceMaster(newMaster, origin: KeyRing.Origin(newSource))
            return newMaster.fingerprint
        }
        throw .busy("the store's import key kept changing during the rewrap; run it again")
    }
}
