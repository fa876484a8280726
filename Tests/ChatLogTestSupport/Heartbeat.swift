import CTestHeartbeat

// The intermittent hang of full test runs (docs/TESTING.md, "The intermittent hang"): the test
// process at 0 % CPU, every test task suspended, no Dispatch worker thread. On Linux, Swift's
// global executor hands jobs to libdispatch's cooperative root queues; in these hangs jobs were
// queued there and no worker was ever started to run them. Proved on a hung run (2026-12-07,
// `gdb -p PID -batch -ex 'call (void)dispatch_async_f((void*)dispatch_get_global_queue(0x15, 4), 0, (void*)free)'`):
// that one extra enqueue started a worker, and every pending test went on and passed within
// seconds. So the test process enqueues an empty task at each priority every 250 ms (a thread
// started by CTestHeartbeat's constructor): a lost wake-up now costs at most a quarter second
// instead of the whole run.

/// One empty task per priority: each enqueue pokes that priority's cooperative queue, which
/// starts a worker when jobs are waiting without one.
@_cdecl("chatlog_test_heartbeat_tick")
public func chatlogTestHeartbeatTick() {
    for priority in [TaskPriority.high, .medium, .low, .background] {
        Task.detached(priority: priority) {}
    }
}
