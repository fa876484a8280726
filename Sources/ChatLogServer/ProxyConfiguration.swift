import ChatLog
import Foundation

/// Everything `chatlog serve` is told (docs/PROXY.md lists the flags).
public struct ProxyConfiguration: Sendable {
    public var host = "127.0.0.1"
    public var port = 8080
    public var openAIUpstream = "https://api.openai.com/v1"
    public var anthropicUpstream = "https://api.anthropic.com"
    /// PEM file of CA certificates to verify upstreams against, instead of the system roots.
    public var upstreamCAFile: String?
    public var tlsCertificateFile: String?
    public var tlsKeyFile: String?
    /// Listening on a non-loopback address without TLS, explicitly allowed.
    public var insecureListen = false
    /// Hold each call's final event until its exchange is committed.
    public var durable = false
    /// Redact secrets from what is logged (never from what is forwarded).
    public var redactSecrets = true
    /// Ask OpenAI chat streams for usage when the client did not, and strip it again.
    public var injectStreamUsage = true
    public var maxRequestBodyBytes = 32 << 20
    /// Response bytes kept for logging a non-streaming body (the client always gets all of them).
    public var maxCaptureBytes = 32 << 20
    public var connectTimeout: Duration = .seconds(10)
    /// Longest wait for the upstream's next byte (response head included).
    public var idleTimeout: Duration = .seconds(300)
    /// Longest a call may take from request to last byte; long generations are not cut at 60 s.
    public var requestTimeout: Duration = .seconds(1800)
    /// How long SIGTERM waits for in-flight calls before cancelling them.
    public var shutdownTimeout: Duration = .seconds(30)
    public var queueCapacity = 10_000
    public var batchSize = 512
    public var upstreamConnections = 1024
    /// Nice value of the recorder's writer thread (0–19): above 0 the threads answering calls
    /// win the CPU from it when both want it (Linux; elsewhere ignored).
    public var writerNice: Int32 = 10
    /// How long the writer lets exchanges gather while calls keep finishing (at most; 0: it writes as
    /// soon as there is something to write). It writes once none has come for `writerSettle`, a batch
    /// is full, a `--durable` call waits or the proxy stops; with fewer than `writerLingerInFlight`
    /// calls in flight, `writerQuietSettle` after the first record came (Recorder.swift).
    public var writerLinger: Duration = .milliseconds(50)
    var writerSettle: Duration = .milliseconds(2)
    /// With fewer calls in flight: how long after the first record a writer that was idle starts, so
    /// that the answer whose record woke it goes out first.
    var writerQuietSettle: Duration = .milliseconds(1)
    /// The writer lingers only while this many calls or more are in flight (fewer: no burst to let pass).
    var writerLingerInFlight = 4
    /// How often the heap trimmer looks, and the burst of calls in flight it waits for (HeapTrimmer.swift).
    /// A JSON (non-streaming) answer up to this size is read whole before it goes to the client, in
    /// one write with its head; a larger one is relayed as it comes.
    var readAheadBytes = 256 << 10
    var heapTrimInterval: Duration = .seconds(5)
    var heapTrimMinimumPeak = 64
    /// Server-held upstream keys: when set, clients must present a proxy token instead.
    public var openAIKey: String?
    public var anthropicKey: String?

    public init() {}

    /// Checks the transport rules (https upstreams except loopback, TLS for non-loopback listening).
    public func validate() throws(ChatLogError) {
        for (name, url) in [("--openai-upstream", openAIUpstream), ("--anthropic-upstream", anthropicUpstream)] {
            guard let parsed = URL(string: url), let scheme = parsed.scheme?.lowercased(), let host = parsed.host, !host.isEmpty,
                parsed.query == nil, parsed.fragment == nil, parsed.user == nil
            else {
                throw .invalidInput("\(name) must be an absolute http(s) URL without query, fragment or credentials")
            }
            switch scheme {
            case "https": break
            case "http":
                guard Self.isLoopback(host) else {
                    throw .invalidInput("\(name) uses plain http to a non-loopback host; upstreams must be https (http only for localhost)")
                }
            default: throw .invalidInput("\(name) must be an http(s) URL")
            }
        }
        if (tlsCertificateFile == nil) != (tlsKeyFile == nil) { throw .invalidInput("--tls-cert and --tls-key go together") }
        if tlsCertificateFile == nil, !insecureListen, !Self.isLoopback(host) {
            throw .invalidInput(
                "listening on \(host) (not loopback) needs --tls-cert and --tls-key, or --insecure-listen to accept plain HTTP from the network")
        }
        if let upstreamCAFile, !FileManager.default.isReadableFile(atPath: upstreamCAFile) {
            throw .invalidInput("cannot read the --upstream-ca file \(upstreamCAFile)")
        }
        guard (0...65535).contains(port) else { throw .invalidInput("the port must be between 0 and 65535") }
        guard maxRequestBodyBytes > 0, queueCapacity > 0, batchSize > 0, upstreamConnections > 0 else {
            throw .invalidInput("limits must be positive")
        }
        guard (0...19).contains(writerNice) else { throw .invalidInput("the writer's nice value must be between 0 and 19") }
        guard writerLinger >= .zero, writerLinger <= .seconds(10) else {
            throw .invalidInput("the writer's linger must be between 0 and 10,000 ms")
        }
    }

    static func isLoopback(_ host: String) -> Bool {
        let bare = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        return bare == "localhost" || bare == "::1" || bare.hasPrefix("127.") || bare.lowercased().hasSuffix(".localhost")
    }
}

/// `print`, `String(describing:)`, `String(reflecting:)` and `dump` show whether server-held keys are
/// set, never the keys (they are plain Strings: the environment gives them as text).
extension ProxyConfiguration: CustomReflectable {
    public var customMirror: Mirror {
        let hidden = "<redacted>"
        var children: [(String?, Any)] = Mirror(reflecting: PlainFields(self)).children.map { ($0.label, $0.value) }
        children.append(("openAIKey", openAIKey == nil ? "nil" : hidden))
        children.append(("anthropicKey", anthropicKey == nil ? "nil" : hidden))
        return Mirror(self, children: children, displayStyle: .struct)
    }

    /// The configuration without its keys, reflected field by field.
    private struct PlainFields {
        let host: String, port: Int, openAIUpstream: String, anthropicUpstream: String
        let upstreamCAFile: String?, tlsCertificateFile: String?, tlsKeyFile: String?
        let insecureListen: Bool, durable: Bool, redactSecrets: Bool, injectStreamUsage: Bool
        let maxRequestBodyBytes: Int, maxCaptureBytes: Int
        let connectTimeout: Duration, idleTimeout: Duration, requestTimeout: Duration, shutdownTimeout: Duration
        let queueCapacity: Int, batchSize: Int, upstreamConnections: Int

        init(_ c: ProxyConfiguration) {
            (host, port, openAIUpstream, anthropicUpstream) = (c.host, c.port, c.openAIUpstream, c.anthropicUpstream)
            (upstreamCAFile, tlsCertificateFile, tlsKeyFile) = (c.upstreamCAFile, c.tlsCertificateFile, c.tlsKeyFile)
            (insecureListen, durable, redactSecrets, injectStreamUsage) = (c.insecureListen, c.durable, c.redactSecrets, c.injectStreamUsage)
            (maxRequestBodyBytes, maxCaptureBytes) = (c.maxRequestBodyBytes, c.maxCaptureBytes)
            (connectTimeout, idleTimeout, requestTimeout, shutdownTimeout) = (c.connectTimeout, c.idleTimeout, c.requestTimeout, c.shutdownTimeout)
            (queueCapacity, batchSize, upstreamConnections) = (c.queueCapacity, c.batchSize, c.upstreamConnections)
        }
    }
}
