import HummingbirdCore
import Logging
import NIOCore

/// Runs a task's jobs on a NIO event loop: a proxied call runs on its client connection's event
/// loop, where its upstream connection and the parts AsyncHTTPClient delivers are too, so a call
/// does not move between NIO's threads and Swift's cooperative pool at each step (each move a
/// thread wake-up; docs/PERFORMANCE.md, "The response path's CPU per call").
final class EventLoopExecutor: TaskExecutor {
    let eventLoop: any EventLoop

    init(_ eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        eventLoop.execute {
            job.runSynchronously(on: self.asUnownedTaskExecutor())
        }
    }
}

/// One executor per event loop of a group.
struct EventLoopExecutors: Sendable {
    private let executors: [ObjectIdentifier: EventLoopExecutor]

    init(_ group: any EventLoopGroup) {
        var executors: [ObjectIdentifier: EventLoopExecutor] = [:]
        for loop in group.makeIterator() { executors[ObjectIdentifier(loop)] = EventLoopExecutor(loop) }
        self.executors = executors
    }

    /// The executor of `loop`; nil for a loop of another group.
    func executor(for loop: any EventLoop) -> EventLoopExecutor? {
        executors[ObjectIdentifier(loop)]
    }
}

/// A server connection whose task runs on the connection's event loop: HummingbirdCore reads each
/// request and runs the responder in the connection's task, on Swift's cooperative pool unless told
/// otherwise; here every step of a keep-alive connection stays on its loop.
struct EventLoopChildChannel<Base: ServerChildChannel>: ServerChildChannel {
    typealias Value = Base.Value
    let base: Base
    let executors: EventLoopExecutors

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        base.setup(channel: channel, logger: logger)
    }

    func handle(value: Value, logger: Logger) async {
        await withTaskExecutorPreference(executors.executor(for: value.channel.eventLoop)) {
            await base.handle(value: value, logger: logger)
        }
    }
}
