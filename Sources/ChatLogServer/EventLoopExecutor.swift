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
