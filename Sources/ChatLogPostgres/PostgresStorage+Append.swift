import ChatLog
import Foundation
import Logging
import NIOCore
import PostgresNIO

// A write of up to 4,000 messages in one prepared statement that commits by itself: migration
// postgres/0009's `chatlog_append` (docs/ARCHITECTURE.md §10, "Data flow of one logExchange").

extension PostgresStorage {
    /// ``insert(conversation:messages:into:guard:)`` in one statement that commits by itself:
    /// `chatlog_append` does the key check, the conversation's insert or lock, the messages, their
    /// terms and `updated_at` inside the server, in the order of the transaction of several
    /// statements — one round trip instead of five (BEGIN, check, lock, insert, COMMIT), and a
    /// statement each connection prepares once.
    ///
    /// A connection that ended under the statement leaves it undecided (the server may have
    /// committed before the answer was lost): the store is asked whether the messages are there —
    /// their positions are the answer — and if not the statement runs once more on another
    /// connection; a second run that finds its own ids already written reads back their positions.
    func insertInOneStatement(
        conversation: SealedConversationRow?, messages: [SealedMessageRow], into conversationID: String, guard writeGuard: WriteGuard
    ) async throws -> [Int64] {
        let statement = try AppendStatement(conversation: conversation, messages: messages, into: conversationID, guard: writeGuard)
        let (client, logger, location) = (client, logger, postgresLocation)
        let target = conversation?.id ?? conversationID
        var mayHaveRun = false
        while true {
            do {
                return try await client.withConnection { connection in
                    // On the connection's event loop: the statement is written and its answer read
                    // there, without a hop to Swift's pool and back at each step.
                    try await withTaskExecutorPreference(EventLoopTaskExecutor(connection.eventLoop)) {
                        do {
                            var positions: [Int64] = []
                            try connection.requireOpen()  // on the event loop: see PostgresConnection.statement
                            for try await position in try await connection.execute(statement, logger: logger) { positions.append(position) }
                            guard positions.count == messages.count else {
                                throw ChatLogError.storage("PostgreSQL inserted \(positions.count) of \(messages.count) messages")
                            }
                            if UInt8.random(in: 0..<Self.foldOneIn) == 0 { await self.foldRowCounts(connection) }
                            return positions
                        } catch where Self.sessionEnded(by: error, on: connection) {
                            await Self.discard(connection)
                            throw LostUnderStatement(error: error)
                        }
                    }
                }
            } catch let lost as LostUnderStatement {
                // Undecided: the store itself says whether the statement committed before it runs again.
                let written: [Int64]?
                do { written = try await writtenPositions(of: messages, in: target) } catch {
                    throw ChatLogError.storage(
                        "the PostgreSQL server at \(location) ended the session under a write and cannot be reached to tell whether its \(messages.count) messages were written; look for them with `chatlog show` once it is back"
                    )
                }
                if let written { return written }
                guard !mayHaveRun else { throw PostgresErrors.map(lost.error, location: location) }
                // Not written: once more. (A server process that had not yet noticed the lost client
                // could still commit it: the second run then meets its ids, handled below.)
                mayHaveRun = true
            } catch {
                if let conflict = Self.appendConflict(error, conversationID: conversationID) { throw conflict }
                if let key = Self.forgottenSubjectKey(error) { throw StorageConflict.forgottenSubjectKey(key) }
                if mayHaveRun, Self.isUniqueViolation(error, constraint: "messages_id_key") || Self.isUniqueViolation(error, constraint: "conversations_id_key"),
                    let positions = try await writtenPositions(of: messages, in: target)
                {
                    return positions
                }
                if let error = error as? ChatLogError { throw error }
                throw PostgresErrors.map(error, location: location)
            }
        }
    }

    /// The connection ended under a statement that commits by itself: it may or may not have run.
    struct LostUnderStatement: Error { let error: any Error }

    /// `SELECT * FROM chatlog_append(…)`: the conversation's columns (NULL when appending), one array
    /// per message column, the terms as (message ordinal, term) pairs, the guard. The same text for
    /// any number of messages, so each connection prepares it once (postgres-nio names it).
    struct AppendStatement: PostgresPreparedStatement {
        static let name = "chatlog_append_0009"
        static let sql = "SELECT * FROM chatlog_append(" + (1...27).map { "$\($0)" }.joined(separator: ", ") + ")"
        static let bindingDataTypes: [PostgresDataType] = [
            .text,  // the conversation appended to
            .text, .int8, .int8, .int8, .bytea, .bytea, .bytea, .int8, .bytea,  // a new conversation's columns
            .textArray, .textArray, .int8Array, .textArray, .int8Array, .int8Array, .int8Array, .textArray, .int8Array, .byteaArray,
            .byteaArray, .int8Array,  // the messages' columns
            .int8Array, .int8Array,  // terms: message ordinal, value
            .byteaArray, .int8, .int8,  // the guard
        ]
        typealias Row = Int64

        let bindings: PostgresBindings

        init(conversation: SealedConversationRow?, messages: [SealedMessageRow], into conversationID: String, guard writeGuard: WriteGuard) throws {
            var binds = PostgresBindings(capacity: 27)
            binds.append(conversationID)
            if let conversation {
                var row = conversation
                row.updatedAt = max(conversation.updatedAt, messages.map(\.createdAt).max() ?? conversation.updatedAt)
                try PostgresStorage.bind(row, &binds)
            } else {
                for _ in 0..<9 { binds.appendNull() }
            }
            binds.append(NullableArray(messages.map { Optional($0.id) }))
            binds.append(NullableArray(messages.map { Optional($0.role) }))
            binds.append(NullableArray(messages.map { Optional($0.createdAt) }))
            binds.append(NullableArray(messages.map(\.model)))
            binds.append(NullableArray(messages.map(\.promptTokens)))
            binds.append(NullableArray(messages.map(\.completionTokens)))
            binds.append(NullableArray(messages.map(\.latencyMilliseconds)))
            binds.append(NullableArray(messages.map(\.finishReason)))
            binds.append(NullableArray(messages.map { Optional($0.keyID) }))
            binds.append(NullableArray(messages.map { Optional($0.content) }))
            binds.append(NullableArray(messages.map(\.metadata)))
            binds.append(NullableArray(messages.map(\.indexKeyID)))
            var owners: [Int64] = []
            var terms: [Int64] = []
            for (offset, message) in messages.enumerated() {
                for term in message.terms {
                    owners.append(Int64(offset + 1))
                    terms.append(Int64(bitPattern: term))
                }
            }
            binds.append(owners)
            binds.append(terms)
            binds.append(NullableArray(writeGuard.acceptedCheckValues.map { Optional($0) }))
            binds.append(writeGuard.activeDataKeyID)
            binds.append(writeGuard.activeIndexKeyID)
            bindings = binds
        }

        func makeBindings() throws -> PostgresBindings { bindings }

        func decodeRow(_ row: PostgresRow) throws -> Int64 { try row.decode(Int64.self) }
    }

    /// `chatlog_append`'s refusals (migration 0009): the master key changed (CLG01), the writer's
    /// keys are not the active ones (CLG02), no such conversation (CLN01).
    static func appendConflict(_ error: any Error, conversationID: String) -> (any Error)? {
        guard let error = error as? PSQLError, error.code == .server else { return nil }
        switch error.serverInfo?[.sqlState] {
        case "CLG01": return StorageConflict.masterKeyChanged
        case "CLG02": return StorageConflict.staleKeys
        case "CLN01": return ChatLogError.conversationNotFound(conversationID)
        default: return nil
        }
    }

    static func isUniqueViolation(_ error: any Error, constraint: String) -> Bool {
        guard let error = error as? PSQLError, error.code == .server else { return false }
        return error.serverInfo?[.sqlState] == "23505" && error.serverInfo?[.constraintName] == constraint
    }

    /// The positions of `messages` when every one of them is already in conversation
    /// `conversationID` (a run whose answer was lost had committed them); nil otherwise.
    func writtenPositions(of messages: [SealedMessageRow], in conversationID: String) async throws(ChatLogError) -> [Int64]? {
        let ids = messages.map(\.id)
        let logger = logger
        let found = try await read { connection in
            let rows = try await connection.statement(
                """
                SELECT m.id, m.position FROM messages m JOIN conversations c ON c.seq = m.conversation_seq
                WHERE m.id = ANY(\(ids)::text[]) AND c.id = \(conversationID)
                """, logger: logger)
            var found: [String: Int64] = [:]
            for try await (id, position) in rows.decode((String, Int64).self) { found[id] = position }
            return found
        }
        let positions = ids.compactMap { found[$0] }
        return positions.count == ids.count ? positions : nil
    }
}

/// A one-dimensional PostgreSQL array whose elements may be NULL, in the binary array format
/// (postgres-nio's own arrays have no NULL elements): dimensions, has-NULLs flag, element type,
/// length and lower bound, then each element as its length (-1: NULL) and bytes.
struct NullableArray<Element: NullableArrayElement>: PostgresNonThrowingEncodable {
    let elements: [Element?]

    init(_ elements: [Element?]) { self.elements = elements }

    static var psqlType: PostgresDataType { Element.arrayType }
    static var psqlFormat: PostgresFormat { .binary }

    func encode<JSONEncoder: PostgresJSONEncoder>(into buffer: inout ByteBuffer, context: PostgresEncodingContext<JSONEncoder>) {
        buffer.writeInteger(Int32(elements.isEmpty ? 0 : 1))
        buffer.writeInteger(Int32(elements.contains { $0 == nil } ? 1 : 0))
        buffer.writeInteger(Element.elementType.rawValue)
        guard !elements.isEmpty else { return }
        buffer.writeInteger(Int32(elements.count))
        buffer.writeInteger(Int32(1))
        for element in elements {
            guard let element else {
                buffer.writeInteger(Int32(-1))
                continue
            }
            let lengthAt = buffer.writerIndex
            buffer.writeInteger(Int32(0))
            let written = element.write(into: &buffer)
            buffer.setInteger(Int32(written), at: lengthAt)
        }
    }
}

/// What a ``NullableArray`` holds: its element and array types, and the element's binary form.
protocol NullableArrayElement: Sendable {
    static var elementType: PostgresDataType { get }
    static var arrayType: PostgresDataType { get }
    /// Writes the element's bytes (no length) and returns how many.
    func write(into buffer: inout ByteBuffer) -> Int
}

extension String: NullableArrayElement {
    static var elementType: PostgresDataType { .text }
    static var arrayType: PostgresDataType { .textArray }
    func write(into buffer: inout ByteBuffer) -> Int { buffer.writeString(self) }
}

extension Int64: NullableArrayElement {
    static var elementType: PostgresDataType { .int8 }
    static var arrayType: PostgresDataType { .int8Array }
    func write(into buffer: inout ByteBuffer) -> Int { buffer.writeInteger(self) }
}

extension Data: NullableArrayElement {
    static var elementType: PostgresDataType { .bytea }
    static var arrayType: PostgresDataType { .byteaArray }
    func write(into buffer: inout ByteBuffer) -> Int { buffer.writeBytes(self) }
}

/// Runs a task's jobs on a NIO event loop (a task executor preference).
final class EventLoopTaskExecutor: TaskExecutor {
    let eventLoop: any EventLoop

    init(_ eventLoop: any EventLoop) { self.eventLoop = eventLoop }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        eventLoop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
