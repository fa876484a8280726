// chatlog-pg-bench: the chatlog side of scripts/bench-postgres (issue 14's performance criteria),
// one process per role, so that the script can run four writers at once and time each alone.
// The store is CHATLOG_DB (a PostgreSQL URL) and the key CHATLOG_MASTER_KEY, from the environment
// as for the CLI; nothing secret is ever an argument.
//
//   chatlog-pg-bench writer FILE
//       FILE: JSON lines, one conversation each: [[user, assistant], …], one array per exchange.
//       Opens the store, prints "ready", waits for one line on stdin, then logs every exchange
//       with logExchange (the first creates the conversation; one transaction each, as an app
//       logs) and prints {"exchanges", "messages", "start", "end"} (Unix seconds).
//   chatlog-pg-bench search FILE --sort newest|relevance [--warm 2] [--repeat 5]
//       FILE: JSON lines {"query": "…"}. Runs each query --warm times untimed, then --repeat
//       times timed (search(…, limit: 20, sort:), with the page's decryption and snippets) and
//       prints one JSON line per query: {"query", "median_ms", "hits", "examined", "matched"}.
import ChatLog
import ChatLogPostgres
import Foundation

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("chatlog-pg-bench: \(message)\n".utf8))
    exit(1)
}

func emit(_ object: [String: Any]) {
    guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { fail("cannot encode output") }
    FileHandle.standardOutput.write(data + Data("\n".utf8))
}

func jsonLines(_ path: String) -> [Any] {
    guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { fail("cannot read \(path)") }
    return text.split(separator: "\n").map { line in
        guard let value = try? JSONSerialization.jsonObject(with: Data(line.utf8)) else { fail("bad JSON line in \(path)") }
        return value
    }
}

func openStore() async -> ChatLogStore {
    do {
        let settings = try await ChatLogSettings.load(dotEnvPath: nil)
        guard let location = ProcessInfo.processInfo.environment[ChatLogSettings.databaseVariable] else { fail("CHATLOG_DB is not set") }
        return try await ChatLogStore.open(url: location, key: try settings.masterKeySource())
    } catch {
        fail("cannot open the store: \(error)")
    }
}

func writer(_ path: String) async {
    let conversations = jsonLines(path).map { line -> [(String, String)] in
        guard let exchanges = line as? [[String]] else { fail("a line of \(path) is not [[user, assistant], …]") }
        return exchanges.map { pair in
            guard pair.count == 2 else { fail("an exchange of \(path) is not [user, assistant]") }
            return (pair[0], pair[1])
        }
    }
    let store = await openStore()
    FileHandle.standardOutput.write(Data("ready\n".utf8))
    _ = readLine()
    let start = Date()
    var exchanges = 0
    do {
        for conversation in conversations {
            var target = ModelExchange.Target.new(NewConversation())
            for (user, assistant) in conversation {
                let logged = try await store.logExchange(
                    ModelExchange(
                        conversation: target, prompt: [NewMessage(role: .user, content: user)],
                        completion: NewMessage(
                            role: .assistant, content: assistant, model: "gpt-4o-mini", promptTokens: 150, completionTokens: 380,
                            latencyMilliseconds: 900, finishReason: "stop")))
                target = .existing(logged.conversationID)
                exchanges += 1
            }
        }
    } catch {
        fail("logExchange failed: \(error)")
    }
    let end = Date()
    try? store.close()
    emit(["exchanges": exchanges, "messages": 2 * exchanges, "start": start.timeIntervalSince1970, "end": end.timeIntervalSince1970])
}

func search(_ path: String, sort: SearchSort, warm: Int, repeats: Int) async {
    let queries = jsonLines(path).map { line -> String in
        guard let object = line as? [String: Any], let query = object["query"] as? String else { fail("a line of \(path) has no query") }
        return query
    }
    let store = await openStore()
    let clock = ContinuousClock()
    do {
        for query in queries {
            var results: SearchResults?
            for _ in 0..<warm { results = try await store.search(query, limit: 20, sort: sort) }
            var times: [Double] = []
            for _ in 0..<repeats {
                let started = clock.now
                results = try await store.search(query, limit: 20, sort: sort)
                let elapsed = clock.now - started
                times.append(Double(elapsed.components.seconds) * 1e3 + Double(elapsed.components.attoseconds) / 1e15)
            }
            times.sort()
            var line: [String: Any] = [
                "query": query, "median_ms": times[times.count / 2], "hits": results?.hits.count ?? 0, "examined": results?.examined ?? 0,
            ]
            if let matched = results?.matched { line["matched"] = matched }
            emit(line)
        }
    } catch {
        fail("search failed: \(error)")
    }
    try? store.close()
}

var arguments = Array(CommandLine.arguments.dropFirst())
let usage = "usage: chatlog-pg-bench writer FILE | search FILE --sort newest|relevance [--warm N] [--repeat N]"
guard arguments.count >= 2 else { fail(usage) }
switch arguments.removeFirst() {
case "writer":
    await writer(arguments[0])
case "search":
    let file = arguments.removeFirst()
    var sort = SearchSort.newest
    var warm = 2
    var repeats = 5
    while !arguments.isEmpty {
        let name = arguments.removeFirst()
        guard !arguments.isEmpty else { fail(usage) }
        let value = arguments.removeFirst()
        switch name {
        case "--sort": sort = SearchSort(rawValue: value) ?? { fail(usage) }()
        case "--warm": warm = Int(value) ?? warm
        case "--repeat": repeats = max(1, Int(value) ?? repeats)
        default: fail(usage)
        }
    }
    await search(file, sort: sort, warm: warm, repeats: repeats)
default:
    fail(usage)
}
