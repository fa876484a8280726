import Logging
import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// Log lines on their way to a file descriptor (the proxy's standard error): appended to a buffer
/// under a lock and written in one `write(2)` per flush — on `LogFlushService`'s timer (off the event
/// loops, so a slow disk does not hold a call up), when a line of level warning or above arrives
/// (with everything before it), when the buffer is full (a backstop: 256 KiB is most of a second of
/// access-log lines at 2,000 calls/s), and at shutdown. Swift-log's `StreamLogHandler` wrote and flushed every access-log line with its own
/// system call and formatted its time with `localtime` each time, a sizeable part of a call's CPU
/// (docs/PERFORMANCE.md, "The response path's CPU per call").
public final class LogBuffer: Sendable {
    private struct State {
        var pending: [UInt8] = []
        /// The second `stamp` is for, and the formatted time of that second.
        var second = -1
        var stamp = ""
    }

    /// Standard error of the process.
    public static let standardError = LogBuffer(fileDescriptor: 2)

    private let state = Mutex(State())
    /// Serialises writes, so that flushes from several threads keep the lines' order.
    private let output = Mutex(())
    let fileDescriptor: Int32
    let capacity: Int

    public init(fileDescriptor: Int32, capacity: Int = 256 << 10) {
        self.fileDescriptor = fileDescriptor
        self.capacity = capacity
    }

    /// Appends one line (formatted by `line`, which gets the current time as text); writes the buffer
    /// out when it is full or `flushNow`.
    func append(flushNow: Bool, _ line: (String) -> String) {
        let full = state.withLock { state -> Bool in
            var now = time(nil)
            let second = Int(now)
            if second != state.second {
                state.second = second
                state.stamp = Self.timestamp(&now)
            }
            state.pending.append(contentsOf: line(state.stamp).utf8)
            return state.pending.count >= capacity
        }
        if full || flushNow { flush() }
    }

    /// Writes out every line appended so far.
    public func flush() {
        output.withLock { _ in
            let bytes = state.withLock { state -> [UInt8] in
                defer { state.pending.removeAll(keepingCapacity: true) }
                return state.pending
            }
            bytes.withUnsafeBytes { buffer in
                var offset = 0
                while offset < buffer.count {
                    let written = write(fileDescriptor, buffer.baseAddress! + offset, buffer.count - offset)
                    if written > 0 {
                        offset += written
                    } else if written < 0, errno == EINTR {
                        continue
                    } else {
                        // The log's reader is gone (a closed pipe): the lines cannot be delivered.
                        return
                    }
                }
            }
        }
    }

    /// The time as `StreamLogHandler` writes it: local time, `%Y-%m-%dT%H:%M:%S%z`.
    static func timestamp(_ now: inout time_t) -> String {
        var parts = tm()
        guard localtime_r(&now, &parts) != nil else { return "<unknown>" }
        var buffer = [CChar](repeating: 0, count: 64)
        let count = strftime(&buffer, buffer.count, "%Y-%m-%dT%H:%M:%S%z", &parts)
        return String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// A swift-log handler that writes the lines `StreamLogHandler` would, through a `LogBuffer`.
public struct BufferedLogHandler: LogHandler {
    private let label: String
    private let buffer: LogBuffer
    public var logLevel: Logger.Level = .info
    public var metadataProvider: Logger.MetadataProvider?
    public var metadata = Logger.Metadata()

    public init(label: String, buffer: LogBuffer, metadataProvider: Logger.MetadataProvider? = LoggingSystem.metadataProvider) {
        self.label = label
        self.buffer = buffer
        self.metadataProvider = metadataProvider
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get(), !provided.isEmpty { merged.merge(provided) { $1 } }
        if let explicit = event.metadata, !explicit.isEmpty { merged.merge(explicit) { $1 } }
        if let error = event.error {
            merged["error.message"] = "\(error)"
            merged["error.type"] = "\(String(reflecting: type(of: error)))"
        }
        var text = ""
        for (key, value) in merged.sorted(by: { $0.key < $1.key }) {
            text += " " + key + "=" + "\(value)"
        }
        let label = self.label
        let level = event.level
        let source = event.source
        let message = event.message
        buffer.append(flushNow: level >= .warning) { stamp in
            "\(stamp) \(level)\(label.isEmpty ? "" : " ")\(label):\(text) [\(source)] \(message)\n"
        }
    }
}

/// Writes a `LogBuffer` out every `interval`, and once more when the service group shuts down (it is
/// the first service of the group, so it stops last).
struct LogFlushService: Service {
    let buffer: LogBuffer
    let interval: Duration

    func run() async throws {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
            buffer.flush()
        }
        buffer.flush()
    }
}
