import AsyncHTTPClient
import NIOCore
import NIOHTTP1
import Synchronization

/// What the upstream sends, in order: its head, body chunks, then the end.
enum UpstreamPart: Sendable {
    case head(HTTPResponseStatus, HTTPHeaders)
    case body(ByteBuffer)
    case end

    var bodyBytes: Int {
        if case .body(let buffer) = self { return buffer.readableBytes }
        return 0
    }

    var isEnd: Bool {
        if case .end = self { return true }
        return false
    }
}

/// One upstream call, read by the call's own task. AsyncHTTPClient delivers the response on an
/// event loop (this is its delegate); the parts wait here until the call's task takes them, all
/// that have arrived at once — a short JSON answer (head, body, end) is one hand-over, not one
/// per part through a task of its own (docs/PERFORMANCE.md, "The response path's CPU per call").
/// While more than `readLimit` bytes wait, the upstream is not read further, so a slow client
/// slows the upstream read and nothing piles up. Cancelling it — the client hung up, or the
/// call's task was cancelled — cancels the upstream call even while the upstream is silent (a
/// model thinking for minutes is not left generating, and billing, for nobody).
final class UpstreamReader: HTTPClientResponseDelegate, Sendable {
    typealias Response = Void

    private struct State {
        var parts: [UpstreamPart] = []
        var bufferedBytes = 0
        /// Set once: the end arrived (`.end` is queued) or the call failed; later errors are ignored.
        var done = false
        var error: (any Error)?
        var waiter: CheckedContinuation<[UpstreamPart], any Error>?
        /// A hand-over to the waiter is scheduled on the event loop.
        var handOverScheduled = false
        /// The upstream read waits for this while too much is buffered.
        var readPromise: EventLoopPromise<Void>?
        var task: HTTPClient.Task<Void>?
        var headDeadline: Scheduled<Void>?
        var cancelled = false
    }

    private let state = Mutex(State())
    let readLimit: Int

    /// Starts the call. `headDeadline`: the head must arrive by then (body chunks have the client's
    /// read timeout, `--idle-timeout`, between them instead).
    /// Starts the call. `eventLoop` (one of the client's), when given, gets these callbacks, and the
    /// connection pool prefers a connection of it. (Requiring one, `.delegateAndChannel`, made the pool
    /// open new upstream connections — TLS handshakes — for calls whose loop had none idle.)
    init(client: HTTPClient, request: HTTPClient.Request, on eventLoop: (any EventLoop)?, headDeadline: NIODeadline, readLimit: Int = 64 << 10) {
        self.readLimit = readLimit
        let task = client.execute(
            request: request, delegate: self, eventLoop: eventLoop.map { .delegate(on: $0) } ?? .indifferent, deadline: nil)
        let deadline = task.eventLoop.scheduleTask(deadline: headDeadline) { [weak task] () -> Void in
            guard let task else { return }
            task.fail(reason: HTTPClientError.deadlineExceeded)
        }
        let cancelled = state.withLock { state -> Bool in
            state.task = task
            if state.done { deadline.cancel() } else { state.headDeadline = deadline }
            return state.cancelled
        }
        if cancelled { task.cancel() }
    }

    /// For tests: a reader that AsyncHTTPClient does not drive.
    init(readLimit: Int) {
        self.readLimit = readLimit
    }

    // MARK: The call's side

    /// Every part that has arrived (at least one), in order. Throws the call's error once the
    /// parts before it are taken, and again on every later call; `CancellationError` when cancelled.
    func next() async throws -> [UpstreamPart] {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<[UpstreamPart], any Error>) in
                let (result, promise) = state.withLock { state -> (Result<[UpstreamPart], any Error>?, EventLoopPromise<Void>?) in
                    if !state.parts.isEmpty {
                        let parts = state.parts
                        state.parts = []
                        state.bufferedBytes = 0
                        defer { state.readPromise = nil }
                        return (.success(parts), state.readPromise)
                    }
                    if let error = state.error { return (.failure(error), nil) }
                    if state.done { return (.success([.end]), nil) }
                    state.waiter = continuation
                    return (nil, nil)
                }
                promise?.succeed()
                if let result { continuation.resume(with: result) }
            }
        } onCancel: {
            self.cancel(reason: CancellationError())
        }
    }

    /// Stops reading and cancels the upstream call (the client hung up).
    func cancel() {
        cancel(reason: CancellationError(), clientGone: true)
    }

    private func cancel(reason: any Error, clientGone: Bool = false) {
        let task = state.withLock { state -> HTTPClient.Task<Void>? in
            if clientGone { state.cancelled = true }
            return state.task
        }
        fail(reason)
        task?.cancel()
    }

    /// Whether `cancel()` was called: the client hung up.
    var wasCancelled: Bool { state.withLock { $0.cancelled } }

    /// Whether a call waits in `next()` (for tests).
    var hasWaiter: Bool { state.withLock { $0.waiter != nil } }

    // MARK: AsyncHTTPClient's side (on the call's event loop)

    func didReceiveHead(task: HTTPClient.Task<Void>, _ head: HTTPResponseHead) -> EventLoopFuture<Void> {
        state.withLock { state in
            state.headDeadline?.cancel()
            state.headDeadline = nil
        }
        return deliver(.head(head.status, head.headers), bytes: 0, on: task.eventLoop)
    }

    func didReceiveBodyPart(task: HTTPClient.Task<Void>, _ buffer: ByteBuffer) -> EventLoopFuture<Void> {
        deliver(.body(buffer), bytes: buffer.readableBytes, on: task.eventLoop)
    }

    func didFinishRequest(task: HTTPClient.Task<Void>) throws {
        _ = deliver(.end, bytes: 0, on: task.eventLoop)
    }

    func didReceiveError(task: HTTPClient.Task<Void>, _ error: any Error) {
        fail(error)
    }

    /// Queues a part; the waiting call gets it (with whatever else arrives in the same read) once
    /// the event loop has finished this read. The future holds the upstream read while too much waits.
    func deliver(_ part: UpstreamPart, bytes: Int, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        let (scheduleHandOver, readFuture) = state.withLock { state -> (Bool, EventLoopFuture<Void>?) in
            guard !state.done else { return (false, nil) }
            state.parts.append(part)
            state.bufferedBytes += bytes
            if case .end = part { state.done = true }
            var schedule = false
            if state.waiter != nil, !state.handOverScheduled {
                state.handOverScheduled = true
                schedule = true
            }
            var future: EventLoopFuture<Void>?
            if state.bufferedBytes >= readLimit, !state.done {
                let promise = state.readPromise ?? eventLoop.makePromise()
                state.readPromise = promise
                future = promise.futureResult
            }
            return (schedule, future)
        }
        if scheduleHandOver { eventLoop.execute { self.handOver() } }
        return readFuture ?? eventLoop.makeSucceededVoidFuture()
    }

    /// Gives the waiting call everything queued.
    private func handOver() {
        let (waiter, parts, promise) = state.withLock { state -> (CheckedContinuation<[UpstreamPart], any Error>?, [UpstreamPart], EventLoopPromise<Void>?) in
            state.handOverScheduled = false
            guard let waiter = state.waiter, !state.parts.isEmpty else { return (nil, [], nil) }
            state.waiter = nil
            let parts = state.parts
            state.parts = []
            state.bufferedBytes = 0
            defer { state.readPromise = nil }
            return (waiter, parts, state.readPromise)
        }
        promise?.succeed()
        waiter?.resume(returning: parts)
    }

    /// The call failed (or was cancelled): parts already queued are still handed over first.
    func fail(_ error: any Error) {
        let (waiter, parts, promise, deadline) = state.withLock {
            state -> (CheckedContinuation<[UpstreamPart], any Error>?, [UpstreamPart], EventLoopPromise<Void>?, Scheduled<Void>?) in
            guard !state.done else { return (nil, [], nil, nil) }
            state.done = true
            state.error = error
            let deadline = state.headDeadline
            state.headDeadline = nil
            let promise = state.readPromise
            state.readPromise = nil
            // A waiting call gets what is queued (a hand-over was scheduled), else the error now.
            let waiter = state.waiter
            state.waiter = nil
            let parts = waiter == nil ? [] : state.parts
            if waiter != nil {
                state.parts = []
                state.bufferedBytes = 0
            }
            return (waiter, parts, promise, deadline)
        }
        deadline?.cancel()
        promise?.fail(error)
        if parts.isEmpty { waiter?.resume(throwing: error) } else { waiter?.resume(returning: parts) }
    }
}

/// Which upstream call each client connection is waiting on, so that a client hanging up cancels
/// it. HummingbirdCore allows half-closed connections, so the connection's close future does not
/// fire when a client closes its side; `HangUpHandler` in each connection's pipeline reports the
/// end of its input instead.
final class ConnectionWatch: Sendable {
    private struct Entry {
        var current: UpstreamReader?
        var inputClosed = false
    }

    private let entries = Mutex<[ObjectIdentifier: Entry]>([:])

    /// Makes `reader` the call to cancel when `channel`'s client hangs up. False when it has already.
    func register(_ reader: UpstreamReader, on channel: any Channel) -> Bool {
        let id = ObjectIdentifier(channel)
        return entries.withLock { entries in
            if entries[id]?.inputClosed == true { return false }
            entries[id, default: Entry()].current = reader
            return true
        }
    }

    /// The call on `channel` is over.
    func unregister(_ reader: UpstreamReader, on channel: any Channel) {
        let id = ObjectIdentifier(channel)
        entries.withLock { entries in
            guard entries[id]?.current === reader else { return }
            if entries[id]?.inputClosed == true { entries[id]?.current = nil } else { entries[id] = nil }
        }
    }

    /// The client closed its side (or the whole connection).
    func inputClosed(_ id: ObjectIdentifier, connectionGone: Bool) {
        let reader = entries.withLock { entries -> UpstreamReader? in
            let current = entries[id]?.current
            if connectionGone { entries[id] = nil } else { entries[id, default: Entry()].inputClosed = true }
            return current
        }
        reader?.cancel()
    }
}

/// In each client connection's pipeline: tells the watch when the client hangs up.
final class HangUpHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    let watch: ConnectionWatch

    init(watch: ConnectionWatch) { self.watch = watch }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            watch.inputClosed(ObjectIdentifier(context.channel), connectionGone: false)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        watch.inputClosed(ObjectIdentifier(context.channel), connectionGone: true)
        context.fireChannelInactive()
    }
}
