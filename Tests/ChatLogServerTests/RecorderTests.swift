import ChatLog
import Foundation
import GRDB
import Logging
import Testing

@testable import ChatLogServer

/// The recorder on its own: bounded queue, group commit, a failing store, drain.
@Suite struct RecorderTests {
    static let quiet = Logger(label: "recorder", factory: { _ in SwiftLogNoOpLogHandler() })

    func record(_ text: String, conversation: ConversationID = .generate()) -> ProxyRecord {
        var new = NewConversation()
        new.id = conversation
        return ProxyRecord(conversation: new, messages: [NewMessage(role: .user, content: text)], digests: [])
    }

    @Test func aFullQueueDropsCountsAndNeverBlocks() async throws {
        try await withServerTemporaryDirectory { directory in
            let store = try ChatLogStore.create(at: directory + "/chat.db", key: .key(.generate()))
            let metrics = ProxyMetrics(queueCapacity: 3)
            let recorder = Recorder(store: store, capacity: 3, batchSize: 10, metrics: metrics, logger: Self.quiet)
            // Not started yet: nothing drains, so the fourth and fifth do not fit.
            let accepted = (0..<5).map { recorder.submit(record("m\($0)")) }
            #expect(accepted == [true, true, true, false, false])
            #expect(metrics.health.dropped == 2 && metrics.health.queueDepth == 3 && !metrics.health.healthy)
            #expect(metrics.prometheusText().contains("chatlog_proxy_dropped_total 2"))
            recorder.start()
            await recorder.drain()
            await #expect(try store.counts().messages == 3)
            #expect(metrics.health.committed == 3 && metrics.health.queueDepth == 0)
        }
    }

    @Test func manyRecordsGoInFewTransactions() async throws {
        try await withServerTemporaryDirectory { directory in
            let store = try ChatLogStore.create(at: directory + "/chat.db", key: .key(.generate()))
            let metrics = ProxyMetrics(queueCapacity: 10_000)
            let recorder = Recorder(store: store, capacity: 10_000, batchSize: 512, metrics: metrics, logger: Self.quiet)
            for index in 0..<2_000 { #expect(recorder.submit(record("m\(index)"))) }
            recorder.start()
            await recorder.drain()
            await #expect(try store.counts().messages == 2_000)
            // 2,000 queued before the writer started: at most ⌈2000/512⌉ = 4 transactions.
            let commits = metrics.prometheusText().split(separator: "\n").first { $0.hasPrefix("chatlog_proxy_commits_total ") }
            #expect(commits == "chatlog_proxy_commits_total 4")
        }
    }

    /// A store whose inserts into messages fail until `fail_inserts` is dropped through the
    /// returned connection. The recorder retries its failing batch all the time, so that
    /// connection waits for the lock (a loaded machine showed "database is locked" without a
    /// busy timeout).
    static func failingStore(in directory: String) async throws -> (ChatLogStore, DatabaseQueue) {
        let path = directory + "/chat.db"
        let store = try ChatLogStore.create(at: path, key: .key(.generate()))
        var configuration = Configuration()
        configuration.busyMode = .timeout(60)
        let saboteur = try DatabaseQueue(path: path, configuration: configuration)
        try await saboteur.write { db in
            try db.execute(sql: "CREATE TRIGGER fail_inserts BEFORE INSERT ON messages BEGIN SELECT RAISE(ABORT, 'disk says no'); END")
        }
        return (store, saboteur)
    }

    @Test func aFailingStoreIsVisibleAndNothingQueuedIsLost() async throws {
        try await withServerTemporaryDirectory { directory in
            let (store, saboteur) = try await Self.failingStore(in: directory)
            let metrics = ProxyMetrics(queueCapacity: 100)
            let recorder = Recorder(store: store, capacity: 100, batchSize: 10, metrics: metrics, logger: Self.quiet)
            recorder.start()
            for index in 0..<5 { #expect(recorder.submit(record("m\(index)"))) }
            for _ in 0..<6000 where metrics.health.storeFailures < 2 { try await Task.sleep(for: .milliseconds(10)) }
            let failing = metrics.health
            #expect(failing.storeFailing && !failing.healthy && failing.storeFailures >= 2)
            #expect(metrics.prometheusText().contains("chatlog_proxy_store_failing 1"))
            try await saboteur.write { db in try db.execute(sql: "DROP TRIGGER fail_inserts") }
            await recorder.drain()
            await #expect(try store.counts().messages == 5)
            #expect(metrics.health.healthy && !metrics.health.storeFailing)
        }
    }

    @Test func durableSubmitWaitsForTheCommit() async throws {
        try await withServerTemporaryDirectory { directory in
            let store = try ChatLogStore.create(at: directory + "/chat.db", key: .key(.generate()))
            let recorder = Recorder(store: store, capacity: 10, batchSize: 10, metrics: ProxyMetrics(queueCapacity: 10), logger: Self.quiet)
            recorder.start()
            for turn in 1...3 {
                #expect(await recorder.submitAndWait(record("m\(turn)")))
                await #expect(try store.counts().messages == turn)
            }
            await recorder.drain()
        }
    }

    @Test func durableSubmitsWaitForRoomInAFullQueueInsteadOfDropping() async throws {
        try await withServerTemporaryDirectory { directory in
            let store = try ChatLogStore.create(at: directory + "/chat.db", key: .key(.generate()))
            let metrics = ProxyMetrics(queueCapacity: 1)
            let recorder = Recorder(store: store, capacity: 1, batchSize: 1, metrics: metrics, logger: Self.quiet)
            try await withThrowingTaskGroup(of: Bool.self) { group in
                for index in 0..<4 { group.addTask { await recorder.submitAndWait(record("d\(index)")) } }
                try await Task.sleep(for: .milliseconds(100))
                // Nothing drains yet: one queued, three waiting, none dropped.
                #expect(metrics.health.queueDepth == 1 && metrics.health.dropped == 0)
                recorder.start()
                var results: [Bool] = []
                for try await result in group { results.append(result) }
                #expect(results == [true, true, true, true])
            }
            await recorder.drain()
            await #expect(try store.counts().messages == 4 && metrics.health.dropped == 0)
        }
    }

    /// The writer thread runs at the nice value it was given and under its own name, so that the
    /// threads answering calls win the CPU from it; the rest of the process keeps its own
    /// (Linux: nice values and names are per thread).
    @Test(arguments: [Int32(0), 10, 19]) func theWriterThreadRunsAtItsNiceValue(nice: Int32) async throws {
        /// Field 19 of /proc/…/stat (after the parenthesised name, which may hold spaces).
        func niceValue(_ path: String) throws -> Int32? {
            let stat = try String(contentsOfFile: path, encoding: .utf8)
            guard let close = stat.lastIndex(of: ")") else { return nil }
            return Int32(stat[stat.index(after: close)...].split(separator: " ")[16])
        }
        try await withServerTemporaryDirectory { directory in
            let store = try ChatLogStore.create(at: directory + "/chat.db", key: .key(.generate()))
            let recorder = Recorder(
                store: store, capacity: 10, batchSize: 10, metrics: ProxyMetrics(queueCapacity: 10), logger: Self.quiet, writerNice: nice)
            let base = try #require(try niceValue("/proc/self/stat"))
            recorder.start()
            #expect(await recorder.submitAndWait(record("m")))
            let id = try #require(recorder.writerThread)
            #expect(try niceValue("/proc/self/task/\(id)/stat") == max(base, nice))
            #expect(try String(contentsOfFile: "/proc/self/task/\(id)/comm", encoding: .utf8) == "chatlog-writer\n")
            // The process's main thread (its id is the process id: what a process-wide setpriority
            // would change) keeps its value. (libdispatch gives its own worker threads nice values
            // by quality of service, so those are not compared.)
            #expect(try niceValue("/proc/self/task/\(getpid())/stat") == base)
            await recorder.drain()
        }
    }

    /// Redaction (`--redact secrets`) happens on the writer thread, before sealing: what is stored is
    /// redacted with its kinds counted in the message's metadata; without a redactor it is stored as sent.
    @Test func theWriterRedactsSecretsBeforeSealing() async throws {
        try await withServerTemporaryDirectory { directory in
            let secret = "my key is sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCD ok"
            for redacting in [true, false] {
                let store = try ChatLogStore.create(at: directory + "/chat-\(redacting).db", key: .key(.generate()))
                let recorder = Recorder(
                    store: store, capacity: 10, batchSize: 10, metrics: ProxyMetrics(queueCapacity: 10), logger: Self.quiet,
                    redactor: redacting ? SecretRedactor() : nil)
                recorder.start()
                let id = ConversationID.generate()
                #expect(await recorder.submitAndWait(record(secret, conversation: id)))
                await recorder.drain()
                let message = try #require(try await store.transcript(id).messages.first)
                if redacting {
                    #expect(!message.content.contains("sk-proj-") && message.content.contains("[REDACTED:"))
                    #expect(message.metadata?[SecretRedactor.metadataKey] != nil, "the redacted kinds are counted in the message's metadata")
                } else {
                    #expect(message.content == secret)
                }
            }
        }
    }

    /// With a niced writer, a queue `backlogDepth` deep is written by a second thread at the
    /// process's own priority until it is down to half of that; without one there is no such thread.
    @Test func aBacklogIsWrittenByTheBacklogWriterAtTheProcesssPriority() async throws {
        try await withServerTemporaryDirectory { directory in
            for nice: Int32 in [19, 0] {
                let store = try ChatLogStore.create(at: directory + "/chat-\(nice).db", key: .key(.generate()))
                let recorder = Recorder(
                    store: store, capacity: 100, batchSize: 10, metrics: ProxyMetrics(queueCapacity: 100), logger: Self.quiet, writerNice: nice)
                #expect(recorder.backlogDepth == 12)
                for index in 0..<100 { #expect(recorder.submit(record("m\(index)"))) }
                recorder.start()
                // Checked while both threads still run (they end with the drain).
                for _ in 0..<6000 {
                    if try await store.counts().messages == 100, nice == 0 || recorder.batchesWrittenByBacklogWriter == 10 { break }
                    try await Task.sleep(for: .milliseconds(10))
                }
                await #expect(try store.counts().messages == 100)
                if nice > 0 {
                    // 100 queued ≥ 12: the backlog writer writes batches of 10 while 6 or more wait: all ten.
                    #expect(recorder.batchesWrittenByBacklogWriter == 10)
                    let id = try #require(recorder.backlogThread)
                    let stat = try String(contentsOfFile: "/proc/self/task/\(id)/stat", encoding: .utf8)
                    let main = try String(contentsOfFile: "/proc/self/stat", encoding: .utf8)
                    func nice(_ text: String) -> Substring { text[text.index(after: text.lastIndex(of: ")")!)...].split(separator: " ")[16] }
                    #expect(nice(stat) == nice(main))
                    #expect(try String(contentsOfFile: "/proc/self/task/\(id)/comm", encoding: .utf8) == "chatlog-backlog\n")
                } else {
                    #expect(recorder.backlogThread == nil && recorder.batchesWrittenByBacklogWriter == 0)
                }
                await recorder.drain()
            }
        }
    }

    /// A failing store with a niced writer: the backlog writer tries once and then leaves the
    /// retries (with backoff) to the writer, instead of one failing attempt per queued call; once
    /// the store recovers everything queued is written.
    @Test func aFailingStoreIsNotHammeredByTheBacklogWriter() async throws {
        try await withServerTemporaryDirectory { directory in
            let (store, saboteur) = try await Self.failingStore(in: directory)
            let metrics = ProxyMetrics(queueCapacity: 100)
            let recorder = Recorder(store: store, capacity: 100, batchSize: 10, metrics: metrics, logger: Self.quiet, writerNice: 10)
            let started = ContinuousClock.now
            recorder.start()
            // 60 calls, one every 5 ms, all past the backlog depth (12) while the store fails.
            for index in 0..<60 {
                #expect(recorder.submit(record("m\(index)")))
                try await Task.sleep(for: .milliseconds(5))
            }
            let failures = metrics.health.storeFailures
            let elapsed = ContinuousClock.now - started
            // At most what the writer's backoff (0.1 s doubling to 5 s) allows in the time that passed
            // — a handful normally, more only on a machine so loaded that the 5 ms sleeps stretched —
            // plus the backlog writer's single try: not one attempt per queued call.
            var allowed = 0
            var time = 0.0
            while time <= Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18 {
                allowed += 1
                time += min(5, 0.05 * Double(1 << min(allowed, 7)))
            }
            #expect(failures >= 1 && failures <= allowed + 1, "\(failures) failed attempts in \(elapsed), at most \(allowed + 1) allowed")
            try await saboteur.write { db in try db.execute(sql: "DROP TRIGGER fail_inserts") }
            await recorder.drain()
            await #expect(try store.counts().messages == 60)
        }
    }

    /// Polls until `committed` records are committed (at most a minute; the caller checks).
    static func waitUntil(_ metrics: ProxyMetrics, committed: Int) async throws {
        for _ in 0..<6000 where metrics.health.committed < committed { try await Task.sleep(for: .milliseconds(10)) }
    }

    /// The writer lets records gather while calls keep finishing (`linger`, `settle`), so that a burst
    /// of answers is relayed before its records are written on the same cores. Nothing waits on it
    /// that must not: a `--durable` call, a full batch and the drain are written at once; a record
    /// alone is written once no other has come for `settle`, and at once while fewer than
    /// `lingerInFlight` calls are in flight. (A linger of an hour stands for "never" here: a test that
    /// depended on it expiring would wait for its bounded poll, then fail.)
    @Test(.timeLimit(.minutes(5))) func theWriterLingersOnlyWhileNothingWaits() async throws {
        try await withServerTemporaryDirectory { directory in
            func make(_ name: String, batchSize: Int = 10, settle: Duration = .seconds(3600), lingerInFlight: Int = 0) throws
                -> (ChatLogStore, ProxyMetrics, Recorder)
            {
                try Self.lingeringRecorder(directory, name, batchSize: batchSize, settle: settle, lingerInFlight: lingerInFlight)
            }

            // A lone record waits while nothing else asks for a write, and the drain writes it.
            let (lone, loneMetrics, loneRecorder) = try make("lone")
            #expect(loneRecorder.submit(record("lone")))
            try await Task.sleep(for: .milliseconds(200))
            #expect(loneMetrics.health.committed == 0 && loneMetrics.health.queueDepth == 1)
            await loneRecorder.drain()
            await #expect(try lone.counts().messages == 1)

            // A durable call behind a lingering record: both written at once (waited for up to a minute,
            // then the drain releases the call either way).
            let (durable, durableMetrics, durableRecorder) = try make("durable")
            #expect(durableRecorder.submit(record("first")))
            let durableCall = Task { await durableRecorder.submitAndWait(record("durable")) }
            try await Self.waitUntil(durableMetrics, committed: 2)
            #expect(durableMetrics.health.committed == 2, "a durable call was held back by the linger")
            await durableRecorder.drain()
            #expect(await durableCall.value)
            await #expect(try durable.counts().messages == 2)

            // A full batch is written at once; the rest of the next one waits.
            let (batch, batchMetrics, batchRecorder) = try make("batch", batchSize: 3)
            for index in 0..<4 { #expect(batchRecorder.submit(record("b\(index)"))) }
            try await Self.waitUntil(batchMetrics, committed: 3)
            try await Task.sleep(for: .milliseconds(100))
            #expect(batchMetrics.health.committed == 3 && batchMetrics.health.queueDepth == 1)
            await batchRecorder.drain()
            await #expect(try batch.counts().messages == 4)

            // Quiet for `settle`: written without a drain.
            let (settled, settledMetrics, settledRecorder) = try make("settle", settle: .milliseconds(50))
            #expect(settledRecorder.submit(record("settled")))
            try await Self.waitUntil(settledMetrics, committed: 1)
            #expect(settledMetrics.health.committed == 1)
            await #expect(try settled.counts().messages == 1)
            await settledRecorder.drain()

            // Lingering only while 3 or more calls are in flight: with 2 a record is written at once,
            // with 3 it waits (for the drain here).
            let (gated, gatedMetrics, gatedRecorder) = try make("gated", lingerInFlight: 3)
            for _ in 0..<2 { gatedMetrics.callStarted() }
            #expect(gatedRecorder.submit(record("few calls")))
            try await Self.waitUntil(gatedMetrics, committed: 1)
            #expect(gatedMetrics.health.committed == 1)
            gatedMetrics.callStarted()
            #expect(gatedRecorder.submit(record("a burst")))
            try await Task.sleep(for: .milliseconds(200))
            #expect(gatedMetrics.health.committed == 1 && gatedMetrics.health.queueDepth == 1)
            await gatedRecorder.drain()
            await #expect(try gated.counts().messages == 2)
        }
    }

    /// A started recorder on a new store `name` in `directory` that lingers an hour (so only what a
    /// test sets — a full batch, the settle, the quiet settle, a durable call, the drain — writes).
    static func lingeringRecorder(
        _ directory: String, _ name: String, capacity: Int = 100, batchSize: Int, settle: Duration = .seconds(3600),
        lingerInFlight: Int, quietSettle: Duration = .zero
    ) throws -> (ChatLogStore, ProxyMetrics, Recorder) {
        let store = try ChatLogStore.create(at: directory + "/\(name).db", key: .key(.generate()))
        let metrics = ProxyMetrics(queueCapacity: capacity)
        let recorder = Recorder(
            store: store, capacity: capacity, batchSize: batchSize, metrics: metrics, logger: quiet, writerNice: 10,
            linger: .seconds(3600), settle: settle, lingerInFlight: lingerInFlight, quietSettle: quietSettle)
        recorder.start()
        return (store, metrics, recorder)
    }

    /// With few calls in flight, a writer that was idle starts `quietSettle` after the first record
    /// came, so that the answer whose record woke it goes out before the sealing and the commit take
    /// the CPU. Bounded from the first record: calls finishing one after another do not hold it off;
    /// a `--durable` call is not held back; the drain writes at once.
    @Test(.timeLimit(.minutes(5))) func anIdleWriterLetsTheAnswerGoFirst() async throws {
        try await withServerTemporaryDirectory { directory in
            // Batches larger than any test fills: only the settle (or a durable call, or the drain) writes.
            func make(_ name: String, quiet: Duration) throws -> (ChatLogStore, ProxyMetrics, Recorder) {
                try Self.lingeringRecorder(directory, name, capacity: 1000, batchSize: 1000, lingerInFlight: 4, quietSettle: quiet)
            }

            // A record to an idle writer waits; a durable call behind it does not (both written long
            // before the 30 s are up).
            let (held, heldMetrics, heldRecorder) = try make("held", quiet: .seconds(30))
            #expect(heldRecorder.submit(record("first")))
            try await Task.sleep(for: .milliseconds(300))
            #expect(heldMetrics.health.committed == 0 && heldMetrics.health.queueDepth == 1)
            let durableCall = Task { await heldRecorder.submitAndWait(record("durable")) }
            for _ in 0..<2000 where heldMetrics.health.committed < 2 { try await Task.sleep(for: .milliseconds(10)) }
            #expect(heldMetrics.health.committed == 2, "a durable call was held back by the quiet settle")
            #expect(await durableCall.value)
            await heldRecorder.drain()
            await #expect(try held.counts().messages == 2)

            // Written without a drain once the settle is over.
            let (lone, loneMetrics, loneRecorder) = try make("lone", quiet: .milliseconds(200))
            #expect(loneRecorder.submit(record("lone")))
            try await Self.waitUntil(loneMetrics, committed: 1)
            #expect(loneMetrics.health.committed == 1)
            await #expect(try lone.counts().messages == 1)

            // Records every 50 ms, each within the 1 s settle of the last: the first batch is written
            // while they keep coming (counted from the first record, not the last).
            let (steady, steadyMetrics, steadyRecorder) = try make("steady", quiet: .seconds(1))
            var submitted = 0
            while steadyMetrics.health.committed == 0, submitted < 400 {
                #expect(steadyRecorder.submit(record("steady \(submitted)")))
                submitted += 1
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(steadyMetrics.health.committed > 0, "a steady trickle of records held the idle writer off")
            await steadyRecorder.drain()
            await #expect(try steady.counts().messages == submitted)
            await loneRecorder.drain()

            // The drain does not wait for the settle.
            let (drained, _, drainedRecorder) = try make("drained", quiet: .seconds(3600))
            #expect(drainedRecorder.submit(record("drained")))
            await drainedRecorder.drain()
            await #expect(try drained.counts().messages == 1)
        }
    }
}
