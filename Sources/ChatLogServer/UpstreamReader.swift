import AsyncAlgorithms
import AsyncHTTPClient
import NIOCore
import NIOHTTP1
import Synchronization

/// What the upstream sends, in order: its head, then body chunks.
enum UpstreamPart: Sendable {
    case head(HTTPResponseStatus, HTTPHeaders)
    case body(ByteBuffer)
}

/// Reads one upstream response in a task of its own, handing each part over through a channel
/// that holds one part at a time (so a slow client slows the upstream read, nothing piles up).
/// Cancelling it — the client hung up — cancels the upstream call even while the upstream is
/// silent (a model thinking for minutes is not left generating, and billing, for nobody).
final class UpstreamReader: Sendable {
    let parts = AsyncThrowingChannel<UpstreamPart, any Error>()
    private let task = Mutex<Task<Void, Never>?>(nil)
    private let cancelled = Mutex(false)

    init(client: HTTPClient, request: HTTPClientRequest, deadline: NIODeadline) {
        let parts = self.parts
        let task = Task {
            do {
                let response = try await client.execute(request, deadline: deadline)
                await parts.send(.head(response.status, response.headers))
                for try await chunk in response.body {
                    await parts.send(.body(chunk))
                }
                parts.finish()
            } catch {
                parts.fail(error)
            }
        }
        self.task.withLock { $0 = task }
    }

    /// Stops reading and cancels the upstream call.
    func cancel() {
        cancelled.withLock { $0 = true }
        task.withLock { $0 }?.cancel()
        parts.fail(CancellationError())
    }

    var wasCancelled: Bool { cancelled.withLock { $0 } }
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
