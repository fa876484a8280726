import CProcessHygiene
import ServiceLifecycle

/// Returns free heap memory to the system when a burst of calls has ended. Each open call holds
/// buffers, TLS state and tasks (about 90 KB per open stream); when they are freed glibc keeps most
/// of the pages in its arenas, so the process's resident memory stayed near its peak after 1,000
/// streams closed and crept up round after round. `malloc_trim(0)` releases those pages; it is
/// called only after a burst — at least `minimumPeak` calls in flight at once, now down to a
/// quarter or less — checked every `interval` (5 s) (docs/PERFORMANCE.md, issue 13).
struct HeapTrimPolicy: Sendable {
    var minimumPeak = 64

    /// Whether to trim, given the calls in flight now and the most at once since the last check.
    func shouldTrim(now: Int, peak: Int) -> Bool {
        peak >= minimumPeak && now * 4 <= peak
    }
}

/// Runs the policy every `interval` in the service group.
struct HeapTrimService: Service {
    let metrics: ProxyMetrics
    var policy = HeapTrimPolicy()
    var interval: Duration = .seconds(5)

    func run() async throws {
        try? await cancelWhenGracefulShutdown {
            var peak = 0
            while !Task.isCancelled {
                try await Task.sleep(for: interval)
                let observed = metrics.takePeakInFlight()
                // A burst may span several checks: its peak is kept until it ends.
                peak = max(peak, observed.peak)
                if policy.shouldTrim(now: observed.now, peak: peak) {
                    _ = chatlog_release_free_heap()
                    metrics.recordHeapTrim()
                    peak = observed.now
                }
            }
        }
    }
}
