// chatlog-test-driver: a small executable the test suite starts as separate processes, so that
// tests can exercise several writers on one file at once (docs/ARCHITECTURE.md §7: every write BEGIN IMMEDIATE
// with a busy timeout, so concurrent processes queue instead of failing).
//
//     chatlog-test-driver append --db PATH --conversation ID --count N [--batch B] [--role ROLE] [--label TEXT]
//
// appends N messages with content "<label> message <i>" (label defaults to "driver <pid>"), B per
// transaction.
//
//     chatlog-test-driver append-loop --db PATH --conversation ID --stop-file PATH [--seconds S] [--label TEXT]
//
// appends one message at a time, content "<label> message <i>", until the stop file exists (or S
// seconds have passed, default 120). After each commit it writes "committed <i> <message id>" on
// stdout, unbuffered, so a test knows exactly which appends were committed even if the driver is
// killed. Ends with "total <n>".
//
//     chatlog-test-driver delete --db PATH --conversations ID,ID,... [--pause-ms N]
//
// deletes the conversations one by one (one transaction each), writing "deleted <id> <true|false>"
// after each.
//
//     chatlog-test-driver hold-lock --db PATH
//
// takes the store's key lock (as `chatlog key rotate`, `rewrap` and `retire` do), writes
// "holding <pid>" on stdout and keeps the lock until it is killed. Needs no key.
//
//     chatlog-test-driver hold-read --db PATH --ready-file PATH [--seconds S]
//
// opens the database file with plain SQLite (no key), starts a read transaction and reads, creates
// the ready file, and keeps the transaction (its snapshot of the WAL) for S seconds (default 3).
//
//     chatlog-test-driver exchange-loop --db PATH --stop-file PATH [--seconds S] [--label TEXT]
//
// logs model exchanges (two prompt messages and a completion, one transaction each) until the
// stop file exists (or S seconds, default 120): even exchanges start a new conversation, odd ones
// go to the conversation the previous one started. Contents are "<label> exchange <i> part <k>".
// After each commit it writes "committed <i> <conversation id> <id>,<id>,<id>" unbuffered; ends
// with "total <n>".
//
//     chatlog-test-driver search-loop --db PATH --words W,W,... --stop-file PATH [--seconds S]
//         [--exclude WORD] [--exact CONVERSATION:WORD:COUNT,...]
//
// searches each word in turn (newest first, limit 200) until the stop file exists (or S seconds,
// default 120), and checks every hit after decryption: its tokens contain the word (and not the
// --exclude word, searched as "W -EXCLUDE" every other round). With --exact, also searches WORD
// in CONVERSATION (limit 1000) and requires exactly COUNT hits (conversations nobody writes to).
// Writes "round <n> hits <h>" after each round; exits 2 on the first mismatch ("mismatch …" on
// stderr) and 1 on any error; ends with "searches <n> hits <h>".
//
//     chatlog-test-driver measure --rusage-file PATH -- EXECUTABLE [ARGUMENT ...]
//
// runs EXECUTABLE with the arguments (inheriting stdin, stdout, stderr and the environment), waits
// for it, writes "maxrss_kib <n>" (its peak resident set size, from getrusage(RUSAGE_CHILDREN): the
// driver has no other child) to PATH, and exits with the child's exit status (128 + signal if it
// was killed). Tests use it to bound the memory a command uses.
//
//     chatlog-test-driver after-open --db PATH --ready-file PATH --go-file PATH --then log|rotate|retire [--key ID]
//
// opens the store with the key from the environment, creates the ready file, waits (at most 60 s)
// until the go file exists, then does one write with the master key it opened with: `log` logs a
// message in a new conversation, `rotate` makes a new data key active and re-seals, `retire`
// retires key ID. Prints "done" on success. Tests use it to run a write after another process
// changed the master key (`chatlog key rewrap`) between the open and the write.
//
//     chatlog-test-driver forget --db PATH|URL --subject S --kill-after STEP
//
// runs `forget` of subject S (a PostgreSQL store's subject keys from CHATLOG_SUBJECT_KEYS) and kills itself with SIGKILL right after STEP (one of the
// ForgetStep raw values: rows-deleted, store-checkpointed, keys-destroyed, receipt-written), so
// tests can check that the next `chatlog forget` finishes an interrupted one.
//
//     chatlog-test-driver migrate --db PATH --kill-after-progress N
//
// opens the store (which applies the schema migrations it lacks) with a SQLite progress handler
// on its connections that SIGKILLs the process at its Nth call (every 1,000 virtual-machine
// steps), so tests can kill a migration part-way and check that the next open finishes it.
// Prints "not killed after C" (C progress calls) when the open finished first.
//
// The master key comes from the environment (CHATLOG_MASTER_KEY and friends, through
// ChatLogSettings), never from the command line. On success it prints the number of messages it
// appended and exits 0; on failure it prints one line on stderr and exits non-zero.

import ChatLog
import ChatLogPostgres
import Foundation
import GRDB
import GRDBSQLite
import Synchronization

enum DriverExit: Int32 {
    case usage = 64  // EX_USAGE
    case failure = 1
}

struct UsageError: Error, CustomStringConvertible {
    let description: String
}

func fail(_ message: String, _ code: DriverExit) -> Never {
    FileHandle.standardError.write(Data("chatlog-test-driver: \(message)\n".utf8))
    exit(code.rawValue)
}

/// `--name value` pairs after the subcommand.
func parseOptions(_ arguments: ArraySlice<String>) throws(UsageError) -> [String: String] {
    var options: [String: String] = [:]
    var remaining = arguments
    while let name = remaining.popFirst() {
        guard name.hasPrefix("--"), let value = remaining.popFirst() else {
            throw UsageError(description: "expected --option value pairs, got \(name)")
        }
        options[String(name.dropFirst(2))] = value
    }
    return options
}

func positiveInteger(_ options: [String: String], _ name: String, default fallback: Int? = nil) throws(UsageError) -> Int {
    guard let text = options[name] else {
        if let fallback { return fallback }
        throw UsageError(description: "--\(name) is required")
    }
    guard let value = Int(text), value > 0 else { throw UsageError(description: "--\(name) must be a positive integer") }
    return value
}

func append(_ options: [String: String]) async throws -> Int {
    guard let path = options["db"] else { throw UsageError(description: "--db is required") }
    guard let rawID = options["conversation"], let conversation = ConversationID(rawID) else {
        throw UsageError(description: "--conversation must be a conversation id (UUID)")
    }
    let count = try positiveInteger(options, "count")
    let batch = try positiveInteger(options, "batch", default: 1)
    let role = try options["role"].map { (text) throws(UsageError) -> Role in
        guard let role = Role(rawValue: text) else { throw UsageError(description: "unknown --role \(text)") }
        return role
    } ?? .user
    let label = options["label"] ?? "driver \(ProcessInfo.processInfo.processIdentifier)"

    let settings = try await ChatLogSettings.load(dotEnvPath: nil)
    let store = try ChatLogStore.open(at: path, key: try settings.masterKeySource())
    var written = 0
    while written < count {
        let size = min(batch, count - written)
        let messages = (written..<(written + size)).map { NewMessage(role: role, content: "\(label) message \($0)") }
        try await store.append(messages, to: conversation)
        written += size
    }
    try store.close()
    return written
}

/// One line on stdout, written at once (print() is block-buffered when stdout is a file).
func emit(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

func openStore(_ options: [String: String]) async throws -> ChatLogStore {
    guard let path = options["db"] else { throw UsageError(description: "--db is required") }
    let settings = try await ChatLogSettings.load(dotEnvPath: nil)
    return try ChatLogStore.open(at: path, key: try settings.masterKeySource())
}

func forgetAndDie(_ options: [String: String]) async throws {
    guard let subject = options["subject"], let step = options["kill-after"].flatMap(ForgetStep.init(rawValue:)) else {
        throw UsageError(description: "--subject and --kill-after STEP are required")
    }
    guard let location = options["db"] else { throw UsageError(description: "--db is required") }
    let settings = try await ChatLogSettings.load(dotEnvPath: nil)
    let store = try await ChatLogStore.open(url: location, key: try settings.masterKeySource(), subjectKeys: try settings.subjectKeysLocation)
    _ = try await store.erasure.forget(subject: subject) { done in
        if done == step { kill(getpid(), SIGKILL) }
    }
    emit("not killed")
}

/// The progress handler's count and limit (a C callback captures nothing).
let progressCalls = Atomic<Int>(0)
let progressLimit = Atomic<Int>(Int.max)

func migrateAndDie(_ options: [String: String]) async throws {
    guard let path = options["db"] else { throw UsageError(description: "--db is required") }
    progressLimit.store(try positiveInteger(options, "kill-after-progress"), ordering: .relaxed)
    var storeOptions = ChatLogStore.Options()
    storeOptions.connectionHook = { connection in
        sqlite3_progress_handler(connection, 1_000, { _ in
            if progressCalls.add(1, ordering: .relaxed).newValue >= progressLimit.load(ordering: .relaxed) { kill(getpid(), SIGKILL) }
            return 0
        }, nil)
    }
    let settings = try await ChatLogSettings.load(dotEnvPath: nil)
    let store = try ChatLogStore.open(at: path, key: try settings.masterKeySource(), options: storeOptions)
    try store.close()
    emit("not killed after \(progressCalls.load(ordering: .relaxed))")
}

func afterOpen(_ options: [String: String]) async throws {
    guard let ready = options["ready-file"], let go = options["go-file"], let then = options["then"] else {
        throw UsageError(description: "--ready-file, --go-file and --then are required")
    }
    let store = try await openStore(options)
    _ = FileManager.default.createFile(atPath: ready, contents: nil)
    // Generous: the test runs a whole `key rewrap` process before it writes the go file, and a
    // sanitized run of the full suite on two cores took longer than a minute for that.
    let deadline = Date().addingTimeInterval(600)
    while !FileManager.default.fileExists(atPath: go) {
        guard Date() < deadline else { throw UsageError(description: "the go file never appeared") }
        usleep(20_000)
    }
    switch then {
    case "log":
        _ = try await store.logExchange(
            ModelExchange(conversation: .new(NewConversation(title: "after open")), prompt: [], completion: NewMessage(role: .user, content: "after open")))
    case "rotate":
        _ = try await store.rotateDataKey(RotationOptions(newKey: true))
    case "retire":
        let id = try positiveInteger(options, "key")
        _ = try await store.retireKey(KeyID(rawValue: UInt32(id)))
    default:
        throw UsageError(description: "--then must be log, rotate or retire")
    }
    try store.close()
    emit("done")
}

func appendLoop(_ options: [String: String]) async throws -> Int {
    guard let rawID = options["conversation"], let conversation = ConversationID(rawID) else {
        throw UsageError(description: "--conversation must be a conversation id (UUID)")
    }
    guard let stopFile = options["stop-file"] else { throw UsageError(description: "--stop-file is required") }
    let seconds = try positiveInteger(options, "seconds", default: 120)
    let label = options["label"] ?? "driver \(ProcessInfo.processInfo.processIdentifier)"
    let store = try await openStore(options)
    let deadline = ContinuousClock.now + .seconds(seconds)
    var written = 0
    while !FileManager.default.fileExists(atPath: stopFile), ContinuousClock.now < deadline {
        let id = try await store.append(NewMessage(role: .user, content: "\(label) message \(written)"), to: conversation)
        emit("committed \(written) \(id)")
        written += 1
    }
    try store.close()
    emit("total \(written)")
    return written
}

func deleteConversations(_ options: [String: String]) async throws {
    guard let list = options["conversations"] else { throw UsageError(description: "--conversations is required") }
    var ids: [ConversationID] = []
    for text in list.split(separator: ",") {
        guard let id = ConversationID(String(text)) else { throw UsageError(description: "not a conversation id: \(text)") }
        ids.append(id)
    }
    let pause = options["pause-ms"].flatMap { Int($0) } ?? 0
    let store = try await openStore(options)
    for id in ids {
        let deleted = try await store.deleteConversation(id)
        emit("deleted \(id) \(deleted)")
        if pause > 0 { try await Task.sleep(for: .milliseconds(pause)) }
    }
    try store.close()
}

func exchangeLoop(_ options: [String: String]) async throws -> Int {
    guard let stopFile = options["stop-file"] else { throw UsageError(description: "--stop-file is required") }
    let seconds = try positiveInteger(options, "seconds", default: 120)
    let label = options["label"] ?? "driver \(ProcessInfo.processInfo.processIdentifier)"
    let store = try await openStore(options)
    let deadline = ContinuousClock.now + .seconds(seconds)
    var written = 0
    var current: ConversationID?
    while !FileManager.default.fileExists(atPath: stopFile), ContinuousClock.now < deadline {
        let target: ModelExchange.Target =
            written % 2 == 1 && current != nil ? .existing(current!) : .new(NewConversation(title: "\(label) conversation \(written)"))
        let parts = (0..<3).map { "\(label) exchange \(written) part \($0)" }
        let logged = try await store.logExchange(
            ModelExchange(
                conversation: target,
                prompt: [NewMessage(role: .system, content: parts[0]), NewMessage(role: .user, content: parts[1])],
                completion: NewMessage(role: .assistant, content: parts[2], model: "driver-model", promptTokens: 3, completionTokens: 4)))
        current = logged.conversationID
        emit("committed \(written) \(logged.conversationID) \(logged.messageIDs.map(\.rawValue).joined(separator: ","))")
        written += 1
    }
    try store.close()
    emit("total \(written)")
    return written
}

struct SearchMismatch: Error, CustomStringConvertible {
    let description: String
}

func searchLoop(_ options: [String: String]) async throws {
    guard let stopFile = options["stop-file"] else { throw UsageError(description: "--stop-file is required") }
    let words = (options["words"] ?? "").split(separator: ",").map { String($0) }
    guard !words.isEmpty else { throw UsageError(description: "--words is required") }
    let seconds = try positiveInteger(options, "seconds", default: 120)
    let excluded = options["exclude"]
    var exact: [(ConversationID, String, Int)] = []
    for item in (options["exact"] ?? "").split(separator: ",") {
        let fields = item.split(separator: ":").map(String.init)
        guard fields.count == 3, let id = ConversationID(fields[0]), let count = Int(fields[2]) else {
            throw UsageError(description: "--exact takes CONVERSATION:WORD:COUNT items")
        }
        exact.append((id, fields[1], count))
    }
    let store = try await openStore(options)
    let deadline = ContinuousClock.now + .seconds(seconds)
    var rounds = 0
    var searches = 0
    var hits = 0
    while !FileManager.default.fileExists(atPath: stopFile), ContinuousClock.now < deadline {
        for word in words {
            let exclude = rounds % 2 == 1 ? excluded.flatMap { $0 == word ? nil : $0 } : nil
            let query = exclude.map { "\(word) -\($0)" } ?? word
            let results = try await store.search(query, limit: 200, sort: .newest)
            searches += 1
            for hit in results.hits {
                let tokens = Tokenizer.tokens(hit.content)
                guard tokens.contains(word) else {
                    throw SearchMismatch(description: "mismatch: a hit for \(query) (message \(hit.messageID)) does not contain \(word)")
                }
                if let exclude, tokens.contains(exclude) {
                    throw SearchMismatch(description: "mismatch: a hit for \(query) (message \(hit.messageID)) contains \(exclude)")
                }
                let snippet = hit.snippet.text.replacingOccurrences(of: "…", with: "")
                guard hit.content.contains(snippet) else {
                    throw SearchMismatch(description: "mismatch: the snippet of message \(hit.messageID) is not part of its content")
                }
            }
            hits += results.hits.count
        }
        for (conversation, word, count) in exact {
            let results = try await store.search(word, filters: SearchFilters(conversation: conversation), limit: 1000, sort: .newest)
            searches += 1
            guard results.hits.count == count, results.hits.allSatisfy({ Tokenizer.tokens($0.content).contains(word) }) else {
                throw SearchMismatch(
                    description: "mismatch: \(word) in conversation \(conversation) gave \(results.hits.count) hits, expected \(count)")
            }
            hits += count
        }
        rounds += 1
        emit("round \(rounds) hits \(hits)")
    }
    try store.close()
    emit("searches \(searches) hits \(hits)")
}

func holdLock(_ options: [String: String]) throws {
    guard let path = options["db"] else { throw UsageError(description: "--db is required") }
    let lock = try RotationLock.acquire(forDatabase: path)
    emit("holding \(ProcessInfo.processInfo.processIdentifier)")
    withExtendedLifetime(lock) {
        while true { sleep(3600) }
    }
}

func holdRead(_ options: [String: String]) throws {
    guard let path = options["db"], let ready = options["ready-file"] else {
        throw UsageError(description: "--db and --ready-file are required")
    }
    let seconds = try positiveInteger(options, "seconds", default: 3)
    var configuration = Configuration()
    configuration.readonly = true
    configuration.busyMode = .timeout(30)
    let queue = try DatabaseQueue(path: path, configuration: configuration)
    try queue.read { db in
        _ = try Int.fetchOne(db, sql: "SELECT count(*) FROM messages")
        _ = FileManager.default.createFile(atPath: ready, contents: nil)
        Thread.sleep(forTimeInterval: Double(seconds))
    }
    try queue.close()
    emit("released")
}

func measure(_ arguments: ArraySlice<String>) throws -> Int32 {
    guard arguments.count >= 4, arguments[arguments.startIndex] == "--rusage-file",
        arguments[arguments.startIndex + 2] == "--"
    else { throw UsageError(description: "usage: measure --rusage-file PATH -- EXECUTABLE [ARGUMENT ...]") }
    let reportPath = arguments[arguments.startIndex + 1]
    let command = arguments.dropFirst(3)
    let process = Process()
    process.executableURL = URL(fileURLWithPath: command.first!)
    process.arguments = Array(command.dropFirst())
    try process.run()
    process.waitUntilExit()
    var usage = rusage()
    guard getrusage(__rusage_who_t(RUSAGE_CHILDREN.rawValue), &usage) == 0 else { throw UsageError(description: "getrusage failed (errno \(errno))") }
    try Data("maxrss_kib \(usage.ru_maxrss)\n".utf8).write(to: URL(fileURLWithPath: reportPath))
    return process.terminationReason == .exit ? process.terminationStatus : 128 + process.terminationStatus
}

let arguments = CommandLine.arguments.dropFirst()
if arguments.first == "measure" {
    do {
        exit(try measure(arguments.dropFirst()))
    } catch let error as UsageError {
        fail(error.description, .usage)
    } catch {
        fail(String(describing: error), .failure)
    }
}
guard let command = arguments.first else {
    fail(
        "usage: chatlog-test-driver append|append-loop|exchange-loop|search-loop|delete|hold-lock|hold-read|after-open|forget|migrate|measure --db PATH … (see the comment at the top of main.swift)",
        .usage)
}
do {
    let options = try parseOptions(arguments.dropFirst())
    switch command {
    case "append":
        print(try await append(options))
    case "append-loop":
        _ = try await appendLoop(options)
    case "delete":
        try await deleteConversations(options)
    case "hold-lock":
        try holdLock(options)
    case "hold-read":
        try holdRead(options)
    case "exchange-loop":
        _ = try await exchangeLoop(options)
    case "search-loop":
        try await searchLoop(options)
    case "after-open":
        try await afterOpen(options)
    case "forget":
        try await forgetAndDie(options)
    case "migrate":
        try await migrateAndDie(options)
    default:
        throw UsageError(description: "unknown command \(command)")
    }
} catch let error as UsageError {
    fail(error.description, .usage)
} catch let error as SearchMismatch {
    FileHandle.standardError.write(Data("chatlog-test-driver: \(error.description)\n".utf8))
    exit(2)
} catch {
    fail(String(describing: error), .failure)
}
