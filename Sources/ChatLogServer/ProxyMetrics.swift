import Foundation
import Synchronization

/// The proxy's counters, served as Prometheus text at `/metrics` and summarised at `/healthz`.
/// No label holds user data: routes are the fixed logged routes, statuses are numbers.
final class ProxyMetrics: Sendable {
    private struct State {
        var queueDepth = 0
        var queueCapacity = 0
        var dropped = 0
        var storeFailures = 0
        var storeFailing = false
        var rejected = 0
        var committed = 0
        var batches = 0
        var inFlight = 0
        /// Most calls in flight at once since `takePeakInFlight`.
        var peakInFlight = 0
        var heapTrims = 0
        var calls: [String: Int] = [:]
        var unauthorized = 0
        var upstreamErrors = 0
    }

    private let state = Mutex(State())

    init(queueCapacity: Int) {
        state.withLock { $0.queueCapacity = queueCapacity }
    }

    func setQueueDepth(_ depth: Int) { state.withLock { $0.queueDepth = depth } }
    func recordDropped() { state.withLock { $0.dropped += 1 } }
    func recordStoreFailure() {
        state.withLock {
            $0.storeFailures += 1
            $0.storeFailing = true
        }
    }
    func storeRecovered() { state.withLock { $0.storeFailing = false } }
    func recordRejected() { state.withLock { $0.rejected += 1 } }
    func recordCommitted(_ count: Int, batch: Bool) {
        state.withLock {
            $0.committed += count
            if batch { $0.batches += 1 }
        }
    }
    func callStarted() {
        state.withLock {
            $0.inFlight += 1
            $0.peakInFlight = max($0.peakInFlight, $0.inFlight)
        }
    }
    /// Calls being proxied now.
    var inFlight: Int { state.withLock { $0.inFlight } }
    /// Calls in flight now, and the most at once since the last call (the peak then restarts from now).
    func takePeakInFlight() -> (now: Int, peak: Int) {
        state.withLock {
            let result = ($0.inFlight, $0.peakInFlight)
            $0.peakInFlight = $0.inFlight
            return result
        }
    }
    func recordHeapTrim() { state.withLock { $0.heapTrims += 1 } }
    func callEnded(route: String, status: Int) {
        state.withLock {
            $0.inFlight -= 1
            $0.calls["route=\"\(route)\",status=\"\(status)\"", default: 0] += 1
        }
    }
    func recordUnauthorized() { state.withLock { $0.unauthorized += 1 } }
    func recordUpstreamError() { state.withLock { $0.upstreamErrors += 1 } }

    struct Health: Sendable {
        var healthy: Bool
        var storeFailing: Bool
        var queueDepth: Int
        var queueCapacity: Int
        var dropped: Int
        var storeFailures: Int
        var committed: Int
    }

    var health: Health {
        state.withLock {
            Health(
                healthy: !$0.storeFailing && $0.queueDepth < $0.queueCapacity, storeFailing: $0.storeFailing,
                queueDepth: $0.queueDepth, queueCapacity: $0.queueCapacity, dropped: $0.dropped,
                storeFailures: $0.storeFailures, committed: $0.committed)
        }
    }

    /// Prometheus text exposition format 0.0.4.
    func prometheusText() -> String {
        let snapshot = state.withLock { $0 }
        var out = ""
        func metric(_ name: String, _ type: String, _ help: String, _ samples: [(String, Int)]) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
            for (labels, value) in samples { out += labels.isEmpty ? "\(name) \(value)\n" : "\(name){\(labels)} \(value)\n" }
        }
        metric("chatlog_proxy_queue_depth", "gauge", "Exchanges waiting to be written.", [("", snapshot.queueDepth)])
        metric("chatlog_proxy_queue_capacity", "gauge", "Size of the recorder queue.", [("", snapshot.queueCapacity)])
        metric("chatlog_proxy_dropped_total", "counter", "Exchanges not logged because the queue was full.", [("", snapshot.dropped)])
        metric("chatlog_proxy_store_failures_total", "counter", "Failed store transactions (retried).", [("", snapshot.storeFailures)])
        metric("chatlog_proxy_store_failing", "gauge", "1 while the last store write failed.", [("", snapshot.storeFailing ? 1 : 0)])
        metric("chatlog_proxy_rejected_total", "counter", "Exchanges the store refused (invalid values).", [("", snapshot.rejected)])
        metric("chatlog_proxy_logged_total", "counter", "Exchanges committed to the store.", [("", snapshot.committed)])
        metric("chatlog_proxy_commits_total", "counter", "Store transactions (each holds many exchanges under load).", [("", snapshot.batches)])
        metric("chatlog_proxy_in_flight", "gauge", "Calls being proxied now.", [("", snapshot.inFlight)])
        metric(
            "chatlog_proxy_heap_trims_total", "counter", "Times free heap memory was returned to the system after a burst of calls ended.",
            [("", snapshot.heapTrims)])
        metric("chatlog_proxy_unauthorized_total", "counter", "Calls refused for a missing or unknown proxy token.", [("", snapshot.unauthorized)])
        metric("chatlog_proxy_upstream_errors_total", "counter", "Calls whose upstream could not be reached or broke off.", [("", snapshot.upstreamErrors)])
        metric("chatlog_proxy_calls_total", "counter", "Calls by route and HTTP status.", snapshot.calls.sorted { $0.key < $1.key }.map { ($0.key, $0.value) })
        return out
    }
}
