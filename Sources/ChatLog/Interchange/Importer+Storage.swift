import Foundation

// `import` on a store behind the storage seam (PostgreSQL; docs/ARCHITECTURE.md §10, "Import and
// prune through the seam"): the same batches, report, idempotency and errors as on SQLite. Each
// batch is sealed here under the keys believed active and written by the backend in one
// transaction that checks those keys (``ChatLogStorage/insertImported(_:guard:)``).

extension ChatLogStore {
    func storageImport(
        format: String, records: some Sequence<Result<ImportedConversation, ImportIssue>>, onError: ImportErrorPolicy, batchSize: Int,
        progress: (@Sendable (ImportReport) -> Void)?, _ storage: any ChatLogStorage
    ) async throws(ChatLogError) -> ImportReport {
        var report = ImportReport()
        var batches = try ImportBatches(format: format, records: records, onError: onError, batchSize: batchSize)
        var key: SecureBytes?
        while let batch = try batches.next(skipping: &report) {
            if key == nil { key = try await storageImportKey(storage) }
            try await storageImportBatch(format: format, batch, key: key!, onError: onError, into: &report, storage)
            progress?(report)
        }
        return report
    }

    /// The import key (``ImportKey``), created on first use: two importers starting at once store
    /// one of their two keys and both use that one; one racing a `key rewrap` stores nothing
    /// wrapped under the replaced master key (the write checks the check value, as a sealing write).
    func storageImportKey(_ storage: any ChatLogStorage) async throws(ChatLogError) -> SecureBytes {
        var stored = try await storage.meta(ImportKey.metaName)
        if stored == nil {
            let wrapped = MetaValue.blob(ImportKey.wrap(SecureBytes.random(count: 32), master: keyRing.master))
            stored = try await storageSealedWrite(storage, { _ in () }) { _, writeGuard in
                try await storage.setMetaIfAbsent(ImportKey.metaName, wrapped, checkValues: writeGuard.acceptedCheckValues)
            }
        }
        guard case .blob(let wrapped)? = stored else {
            throw .integrity(IntegrityFailure(table: "chatlog_meta", column: "value", rowID: ImportKey.metaName, reason: .invalidValue("is not a blob")))
        }
        return try ImportKey.unwrap(wrapped, master: keyRing.master)
    }

    private func storageImportBatch(
        format: String, _ batch: [ImportedConversation], key: SecureBytes, onError: ImportErrorPolicy, into report: inout ImportReport,
        _ storage: any ChatLogStorage
    ) async throws(ChatLogError) {
        let hashes = batch.map { ImportKey.sourceHash(key: key, format: format, sourceID: $0.sourceID) }
        let wanted = batch.compactMap(\.conversation.id?.rawValue) + batch.flatMap { $0.messages.compactMap(\.id?.rawValue) }
        var taken = wanted.isEmpty ? [] : try await storage.takenIDs(wanted)
        // Ids another importer took between the look-up and the write: without them, sealed again.
        for _ in 0..<10 {
            let items = Self.keepingFreeIDs(batch, taken: taken)
            // A subject's conversations are sealed under its key (made in the subject-key store first).
            let subjects = Set(items.compactMap(\.conversation.subject))
            let (outcome, messages) = try await storageSealedWrite(storage, subjects: subjects) { (keys, known) throws(ChatLogError) in
                try items.indices.map { (index) throws(ChatLogError) in
                    let conversation = try prepare(items[index].conversation, keys: keys, subjectKeys: known)
                    let prepared = try prepare(items[index].messages, keys: keys, subject: conversation.erasure)
                    var row = SealedConversationRow(conversation)
                    row.updatedAt = max(row.createdAt, prepared.map(\.createdAt).max() ?? row.createdAt)
                    let rows = prepared.enumerated().map { position, message in
                        var sealed = SealedMessageRow(message, conversationID: conversation.id)
                        sealed.position = Int64(position)
                        return sealed
                    }
                    return ImportedCopy(sourceHash: hashes[index], copy: ConversationCopy(conversation: row, messages: rows))
                }
            } write: { copies, writeGuard in
                let outcome = try await storage.insertImported(copies, guard: writeGuard)
                let inserted = Set(outcome.inserted)
                return (outcome, copies.reduce(0) { $0 + (inserted.contains($1.copy.conversation.id) ? $1.copy.messages.count : 0) })
            }
            guard outcome.taken.isEmpty else {
                taken.formUnion(outcome.taken)
                continue
            }
            report.conversations += outcome.inserted.count
            report.messages += messages
            report.duplicates += outcome.duplicates
            return
        }
        throw .busy("other imports kept taking the ids of this batch; try again")
    }
}
