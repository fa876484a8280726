import CProcessHygiene
import ChatLog
import Foundation
import Synchronization
import Logging
import ServiceLifecycle

/// Writes logged exchanges off the response path: a bounded queue drained by one thread that
/// commits many records per transaction (group commit). A full queue drops the record (counted,
/// logged, never blocking a response) unless the caller waits (`--durable`). A failing store is
/// retried with backoff; both show in `/metrics` and `/healthz`.
final class Recorder: @unchecked Sendable {
    struct Pending {
        var record: ProxyRecord
        var completion: CheckedContinuation<Bool, Never>?
        /// When it was queued (`DispatchTime` uptime, ns).
        var queuedAt: UInt64 = 0
    }

    let store: ChatLogStore
    let capacity: Int
    let batchSize: Int
    let metrics: ProxyMetrics
    let logger: Logger
    /// The writer thread's nice value (Linux: per thread). Above 0 the event loops that answer
    /// calls win the CPU whenever both want it; the writer still gets every idle cycle, and
    /// `--durable` calls wait for it (docs/PERFORMANCE.md, issue 13).
    let writerNice: Int32
    /// Applied to each record's messages on the writer thread before sealing (`--redact secrets`):
    /// what is logged is redacted, the response path does not pay for it.
    let redactor: SecretRedactor?
    /// How long the writer lets records gather while calls are still finishing: with at least
    /// `lingerInFlight` calls in flight it writes once no record has come for `settle`, or the oldest
    /// has waited `linger`, or a batch is full, or a `--durable` call waits (never delayed), or the
    /// recorder closes. So a burst of answers is relayed before its records are sealed and written on
    /// the same cores; with fewer calls in flight there is no burst to wait for, and it does not linger
    /// (docs/PERFORMANCE.md, "The writer lets a burst pass").
    ///
    /// With fewer calls in flight, a writer that was idle starts `quietSettle` after the first record
    /// came (at most `linger`): the answer whose record woke it is still being relayed on the event
    /// loop, and sealing and committing beside it made a lone call ~0.5 ms slower (docs/PERFORMANCE.md,
    /// "A peer proxy in the same run, and the writer waits for the answer to go out").
    let linger: Duration
    let lingerInFlight: Int
    /// `linger` and the settle times in nanoseconds (`DispatchTime`'s unit).
    private let lingerNanoseconds: UInt64
    private let settleNanoseconds: UInt64
    private let quietSettleNanoseconds: UInt64
    private let condition = NSCondition()
    // Guarded by `condition`:
    private var queue: [Pending] = []
    private var head = 0
    private var closing = false
    private var finished = false
    private var drainWaiters: [CheckedContinuation<Void, Never>] = []
    /// `--durable` records waiting for room in a full queue.
    private var roomWaiters: [Pending] = []
    /// `--durable` records queued and not yet written: the writer does not linger while there are any.
    private var durableQueued = 0
    /// When the newest record was queued (ns).
    private var lastQueuedAt: UInt64 = 0
    /// The writer waits for records to gather: a new one does not wake it (its timer does) unless it
    /// must not wait any more.
    private var lingering = false
    /// The writer found the queue empty and slept (or has not written yet): the records now queued
    /// came while it was idle.
    private var wokeFromIdle = true
    /// Thread digests and new conversations submitted but not yet committed, so that the next
    /// call of a conversation finds it even before its previous exchange is written.
    private var pendingDigests: [Data: (conversation: ConversationID, length: Int)] = [:]
    private var pendingConversations: [ConversationID: Int] = [:]
    private var thread: Thread?
    /// The writer thread's kernel id once it runs (guarded by `condition`).
    private var writerThreadID: Int32?
    /// A batch is being written (by the writer or the backlog writer; one at a time).
    private var writing = false
    /// With a niced writer: a second thread at the process's own priority writes while the queue is
    /// deeper than `backlogDepth` (down to half of it), so that a backlog is not left to a thread that
    /// the machine's other work starves (an unprivileged thread cannot lower its nice value again).
    let backlogDepth: Int
    private let backlogBell = DispatchSemaphore(value: 0)
    private var backlogRung = false
    /// The backlog writer's last batch failed: it is not woken again until a batch is written (the
    /// writer's retries, with backoff, handle a failing store).
    private var backlogPaused = false
    private var backlogThreadID: Int32?
    /// Batches the backlog writer wrote.
    private var backlogBatches = 0

    init(
        store: ChatLogStore, capacity: Int, batchSize: Int, metrics: ProxyMetrics, logger: Logger, writerNice: Int32 = 0,
        redactor: SecretRedactor? = nil, linger: Duration = .zero, settle: Duration = .zero, lingerInFlight: Int = 0,
        quietSettle: Duration = .zero
    ) {
        self.store = store
        self.capacity = capacity
        self.batchSize = batchSize
        self.metrics = metrics
        self.logger = logger
        self.writerNice = writerNice
        self.redactor = redactor
        self.linger = linger
        self.lingerInFlight = lingerInFlight
        func nanoseconds(_ duration: Duration) -> UInt64 {
            let (seconds, attoseconds) = duration.components
            return UInt64(max(0, seconds)) * 1_000_000_000 + UInt64(max(0, attoseconds) / 1_000_000_000)
        }
        self.lingerNanoseconds = nanoseconds(linger)
        self.settleNanoseconds = nanoseconds(min(settle, linger))
        self.quietSettleNanoseconds = nanoseconds(min(quietSettle, linger))
        self.backlogDepth = max(batchSize, capacity / 8)
    }

    func start() {
        let thread = Thread { [self] in run() }
        thread.name = "chatlog-recorder"
        self.thread = thread
        thread.start()
        if writerNice > 0 {
            let backlog = Thread { [self] in runBacklog() }
            backlog.name = "chatlog-backlog"
            backlog.start()
        }
    }

    var depth: Int {
        condition.lock()
        defer { condition.unlock() }
        return queue.count - head
    }

    /// Queues a record; false (and counted as dropped) when the queue is full or closed.
    @discardableResult
    func submit(_ record: ProxyRecord) -> Bool {
        condition.lock()
        let (queued, wake) = enqueue(Pending(record: record, completion: nil))
        condition.unlock()
        // Signalled after the lock is released: the woken writer does not block at once on the lock
        // the caller (an event loop) still holds, which took a second wake-up and system call.
        if wake { condition.signal() }
        return queued
    }

    /// Queues a record and waits until it is committed (true) or failed (false). When the queue is
    /// full it waits for room (suspended, not blocking a thread) instead of dropping.
    func submitAndWait(_ record: ProxyRecord) async -> Bool {
        await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            condition.lock()
            if queue.count - head >= capacity, !finished {
                roomWaiters.append(Pending(record: record, completion: continuation))
                condition.unlock()
                return
            }
            let (queued, wake) = enqueue(Pending(record: record, completion: continuation))
            condition.unlock()
            if wake { condition.signal() }
            if !queued { continuation.resume(returning: false) }
        }
    }

    /// Under the lock. `wake`: the caller signals the writer once it has released the lock.
    private func enqueue(_ pending: Pending) -> (queued: Bool, wake: Bool) {
        guard !finished, queue.count - head < capacity else {
            metrics.recordDropped()
            logger.warning("exchange not logged: the recorder queue is full", metadata: ["queue_capacity": "\(capacity)"])
            return (false, false)
        }
        var pending = pending
        if linger > .zero {
            pending.queuedAt = DispatchTime.now().uptimeNanoseconds
            lastQueuedAt = pending.queuedAt
        }
        if pending.completion != nil { durableQueued += 1 }
        queue.append(pending)
        if let id = pending.record.conversation.id {
            pendingConversations[id, default: 0] += 1
            for (index, digest) in pending.record.digests.enumerated() {
                pendingDigests[digest.bytes] = (id, index)
            }
        }
        metrics.setQueueDepth(queue.count - head)
        if writerNice > 0, !backlogRung, !backlogPaused, queue.count - head >= backlogDepth {
            backlogRung = true
            backlogBell.signal()
        }
        return (true, !lingering || pending.completion != nil || queue.count - head >= batchSize)
    }

    /// The longest prefix among `candidates` (digest → prefix length) that a record still in the
    /// queue will write.
    func pendingThread(_ candidates: [(Data, Int)]) -> (length: Int, conversation: ConversationID)? {
        condition.lock()
        defer { condition.unlock() }
        var best: (length: Int, conversation: ConversationID)?
        for (digest, length) in candidates {
            if let hit = pendingDigests[digest], length > (best?.length ?? 0) { best = (length, hit.conversation) }
        }
        return best
    }

    func isPendingConversation(_ id: ConversationID) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        return pendingConversations[id] != nil
    }

    /// Stops accepting (after what is queued) and waits until everything queued is written.
    func drain() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            condition.lock()
            closing = true
            if finished {
                condition.unlock()
                continuation.resume()
                return
            }
            drainWaiters.append(continuation)
            condition.broadcast()
            condition.unlock()
        }
    }

    // MARK: The writer thread

    /// The writer thread's kernel thread id (for `/proc/self/task/ID`), once it has started.
    var writerThread: Int32? {
        condition.lock()
        defer { condition.unlock() }
        return writerThreadID
    }

    /// The backlog writer's kernel thread id, once it has started (only with a niced writer).
    var backlogThread: Int32? {
        condition.lock()
        defer { condition.unlock() }
        return backlogThreadID
    }

    /// Batches the backlog writer has written.
    var batchesWrittenByBacklogWriter: Int {
        condition.lock()
        defer { condition.unlock() }
        return backlogBatches
    }

    /// Names the calling thread and raises its nice value to `nice` or the process's own, whichever is
    /// higher (per thread on Linux; a thread starts with its creator's, which may be a dispatch
    /// worker's). Returns the thread's id.
    private func configureThread(name: String, nice: Int32) -> Int32? {
        _ = chatlog_name_current_thread(name)
        let target = max(nice, chatlog_process_nice())
        if chatlog_set_current_thread_nice(target) != 0 {
            logger.notice("cannot set the priority of a recorder thread", metadata: ["thread": "\(name)", "nice": "\(target)"])
        }
        let id = chatlog_current_thread_id()
        return id > 0 ? id : nil
    }

    private func run() {
        let id = configureThread(name: "chatlog-writer", nice: writerNice)
        condition.lock()
        writerThreadID = id
        condition.unlock()
        var failures = 0
        while true {
            condition.lock()
            // While the backlog writer is on, it writes every batch (this thread would only slow it).
            while (queue.count - head == 0 && !closing) || writing || backlogRung {
                if queue.count - head == 0 { wokeFromIdle = true }
                condition.wait()
            }
            if lingers() {
                condition.unlock()
                continue
            }
            if queue.count - head == 0 {
                // Closing, and everything is written.
                finished = true
                let waiters = drainWaiters
                drainWaiters = []
                condition.broadcast()
                condition.unlock()
                backlogBell.signal()
                for waiter in waiters { waiter.resume() }
                return
            }
            let (batch, isClosing) = takeBatch()
            wokeFromIdle = false
            condition.unlock()
            if !write(batch, isClosing: isClosing, failures: &failures) {
                Thread.sleep(forTimeInterval: min(5, 0.05 * Double(1 << min(failures, 7))))
            }
        }
    }

    /// Under the lock: waits (the lock released) while records should gather, until the next moment
    /// they might not; true when it waited, so that the caller looks at the queue again.
    private func lingers() -> Bool {
        guard linger > .zero, !closing, durableQueued == 0, queue.count - head > 0, queue.count - head < batchSize else { return false }
        let until: UInt64
        if lingerInFlight == 0 || metrics.inFlight >= lingerInFlight {
            until = min(queue[head].queuedAt &+ lingerNanoseconds, lastQueuedAt &+ settleNanoseconds)
        } else if wokeFromIdle, quietSettleNanoseconds > 0 {
            // Bounded from the first record, not the last: calls that keep finishing one after another
            // must not hold the writer off for `linger` (one large batch then slowed the calls around it).
            until = queue[head].queuedAt &+ quietSettleNanoseconds
        } else {
            return false
        }
        let now = DispatchTime.now().uptimeNanoseconds
        guard until > now else { return false }
        lingering = true
        _ = condition.wait(until: Date(timeIntervalSinceNow: Double(until - now) / 1e9))
        lingering = false
        return true
    }

    /// The backlog writer: sleeps until the queue is `backlogDepth` deep, then writes batches until
    /// it is down to half of that; a failing store is left to the writer's retries.
    private func runBacklog() {
        let id = configureThread(name: "chatlog-backlog", nice: 0)
        condition.lock()
        backlogThreadID = id
        condition.unlock()
        while true {
            backlogBell.wait()
            condition.lock()
            while !finished, queue.count - head >= max(1, backlogDepth / 2) {
                if writing {
                    condition.wait()
                    continue
                }
                let (batch, isClosing) = takeBatch()
                condition.unlock()
                var failures = 0
                let written = write(batch, isClosing: isClosing, failures: &failures)
                condition.lock()
                guard written else {
                    backlogPaused = true
                    break
                }
                backlogBatches += 1
            }
            backlogRung = false
            let done = finished
            condition.broadcast()
            condition.unlock()
            if done { return }
        }
    }

    /// Under the lock: the next batch, now being written.
    private func takeBatch() -> (batch: [Pending], isClosing: Bool) {
        writing = true
        let end = min(queue.count, head + batchSize)
        return (Array(queue[head..<end]), closing)
    }

    /// Writes a batch taken by `takeBatch` and finishes it; false when the store failed (the batch
    /// stays queued, to be retried).
    private func write(_ batch: [Pending], isClosing: Bool, failures: inout Int) -> Bool {
        let outcome: [Result<LoggedExchange, ChatLogError>]
        do {
            let records = batch.map { pending in
                var record = pending.record
                if let redactor { record.messages = record.messages.map { redactor.redact($0) } }
                return record
            }
            if store.storage == nil {
                outcome = try store.logProxyRecords(records)
            } else {
                let store = store
                outcome = try Self.waiting { () async throws(ChatLogError) in try await store.logProxyRecords(records) }
            }
        } catch {
            failures += 1
            metrics.recordStoreFailure()
            logger.error(
                "store write failed; retrying", metadata: ["error": "\(error.description)", "records": "\(batch.count)", "attempt": "\(failures)"])
            // Closing: a few more tries, then the records are reported lost.
            if isClosing && failures >= 5 {
                finish(batch, committed: Array(repeating: false, count: batch.count), count: batch.count)
                logger.critical("exchanges lost at shutdown: the store kept failing", metadata: ["records": "\(batch.count)"])
                failures = 0
                return true
            }
            condition.lock()
            writing = false
            condition.broadcast()
            condition.unlock()
            return false
        }
        if failures > 0 { logger.notice("store writes recovered", metadata: ["attempts": "\(failures)"]) }
        failures = 0
        metrics.storeRecovered()
        var committed: [Bool] = []
        for result in outcome {
            switch result {
            case .success: committed.append(true)
            case .failure(let error):
                committed.append(false)
                metrics.recordRejected()
                logger.error("exchange not logged: the store refused it", metadata: ["error": "\(error.description)"])
            }
        }
        metrics.recordCommitted(committed.filter { $0 }.count, batch: true)
        finish(batch, committed: committed, count: batch.count)
        return true
    }

    /// Runs an async store call from the writer thread and waits for it (a PostgreSQL store has no
    /// synchronous API; this thread is the recorder's own, never one of the cooperative pool's).
    private static func waiting<T: Sendable>(_ body: @escaping @Sendable () async throws(ChatLogError) -> T) throws(ChatLogError) -> T {
        let done = DispatchSemaphore(value: 0)
        let box = Mutex<Result<T, ChatLogError>?>(nil)
        Task {
            let result: Result<T, ChatLogError>
            do throws(ChatLogError) { result = .success(try await body()) } catch { result = .failure(error) }
            box.withLock { $0 = result }
            done.signal()
        }
        done.wait()
        guard let result = box.withLock({ $0 }) else { throw .busy("the store call did not finish") }
        return try result.get()
    }

    private func finish(_ batch: [Pending], committed: [Bool], count: Int) {
        condition.lock()
        writing = false
        backlogPaused = false
        durableQueued -= batch.prefix(count).filter { $0.completion != nil }.count
        head += count
        if head > 4096, head * 2 > queue.count {
            queue.removeFirst(head)
            head = 0
        }
        while !roomWaiters.isEmpty, queue.count - head < capacity {
            _ = enqueue(roomWaiters.removeFirst())
        }
        for pending in batch {
            guard let id = pending.record.conversation.id else { continue }
            if let remaining = pendingConversations[id], remaining > 1 {
                pendingConversations[id] = remaining - 1
            } else {
                pendingConversations[id] = nil
            }
            for digest in pending.record.digests where pendingDigests[digest.bytes]?.conversation == id {
                pendingDigests[digest.bytes] = nil
            }
        }
        metrics.setQueueDepth(queue.count - head)
        condition.broadcast()
        condition.unlock()
        for (pending, ok) in zip(batch, committed) { pending.completion?.resume(returning: ok) }
    }
}

/// Runs the recorder inside the service group: on graceful shutdown (after the HTTP server has
/// stopped and its in-flight calls finished) it drains the queue, then returns.
struct RecorderService: Service {
    let recorder: Recorder

    func run() async throws {
        recorder.start()
        try? await gracefulShutdown()
        await recorder.drain()
    }
}
