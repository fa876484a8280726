import ArgumentParser
import ChatLog
import ChatLogServer
import Foundation
import Logging

struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run the logging proxy: an OpenAI- and Anthropic-compatible endpoint that logs every call sealed.",
        discussion: """
            Point the SDKs at it: OPENAI_BASE_URL=http://HOST:PORT/v1, ANTHROPIC_BASE_URL=http://HOST:PORT. \
            POST /v1/chat/completions, /v1/responses and /v1/messages are forwarded and logged; other /v1/* requests \
            are forwarded unlogged; GET /healthz and /metrics report on the proxy. Clients' credentials pass through \
            unless OPENAI_API_KEY or ANTHROPIC_API_KEY is set (environment or ./.env): then clients present a proxy \
            token (chatlog token create NAME) and the proxy sends the real key. SIGTERM stops accepting, lets calls \
            in flight finish (--shutdown-timeout), writes everything queued and exits 0. See docs/PROXY.md.
            """
    )

    @OptionGroup var store: StoreOptions

    @Option(name: .long, help: "Address to listen on, HOST:PORT (port 0: any free port, printed at start).")
    var listen = "127.0.0.1:8080"
    @Option(name: .long, help: "OpenAI-compatible upstream base URL (https, or http to localhost).")
    var openaiUpstream = "https://api.openai.com/v1"
    @Option(name: .long, help: "Anthropic upstream base URL (https, or http to localhost).")
    var anthropicUpstream = "https://api.anthropic.com"
    @Option(name: .long, help: "PEM file of CA certificates to verify upstreams with, instead of the system's.")
    var upstreamCa: String?
    @Option(name: .long, help: "PEM certificate chain to serve TLS with (needed to listen on a non-loopback address).")
    var tlsCert: String?
    @Option(name: .long, help: "PEM private key for --tls-cert.")
    var tlsKey: String?
    @Flag(name: .long, help: "Allow plain HTTP on a non-loopback address (traffic and credentials in clear on the network).")
    var insecureListen = false
    @Option(name: .long, help: "secrets (default: replace API keys, tokens, passwords and private keys in what is logged) or none.")
    var redact: RedactMode = .secrets
    @Flag(name: .long, help: "Hold each call's final event until its exchange is committed to the store.")
    var durable = false
    @Flag(name: .long, help: "Do not ask OpenAI chat streams for usage when the client did not (usage then goes unlogged).")
    var noStreamUsage = false
    @Option(name: .long, help: "Largest request body accepted, in MiB.")
    var maxBodyMib = 32
    @Option(name: .long, help: "Seconds to connect to an upstream.")
    var connectTimeout = 10
    @Option(name: .long, help: "Seconds to wait for the upstream's next byte (its first one included).")
    var idleTimeout = 300
    @Option(name: .long, help: "Seconds a call may take in all (long generations are not cut at 60 s).")
    var requestTimeout = 1800
    @Option(name: .long, help: "Seconds SIGTERM waits for calls in flight before cancelling them.")
    var shutdownTimeout = 30
    @Option(name: .long, help: "Exchanges the recorder queue holds; when full, exchanges are dropped (counted in /metrics) unless --durable.")
    var queueCapacity = 10_000
    @Option(name: .long, help: "Most exchanges written per transaction.")
    var batchSize = 512
    @Option(name: .long, help: "Most connections to each upstream.")
    var upstreamConnections = 1024
    @Option(name: .long, help: "Nice value (0-19) of the thread that writes the log: above 0, answering calls comes first when both want the CPU.")
    var writerNice = 10
    @Option(
        name: .long,
        help: "Longest the writer lets exchanges gather while calls keep finishing, in ms (0-10000; 0: write at once). Never delays --durable calls.")
    var writerLingerMs = 50

    func validate() throws {
        for (name, value) in [
            ("--max-body-mib", maxBodyMib), ("--connect-timeout", connectTimeout), ("--idle-timeout", idleTimeout),
            ("--request-timeout", requestTimeout), ("--queue-capacity", queueCapacity), ("--batch-size", batchSize),
            ("--upstream-connections", upstreamConnections),
        ] where value <= 0 {
            throw ValidationError("\(name) must be positive.")
        }
        if shutdownTimeout < 0 { throw ValidationError("--shutdown-timeout must not be negative.") }
        if !(0...19).contains(writerNice) { throw ValidationError("--writer-nice must be between 0 and 19.") }
        if !(0...10_000).contains(writerLingerMs) { throw ValidationError("--writer-linger-ms must be between 0 and 10000.") }
        if maxBodyMib > 1024 { throw ValidationError("--max-body-mib is at most 1024.") }
        _ = try Self.parseListen(listen)
    }

    static func parseListen(_ text: String) throws -> (host: String, port: Int) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else {
            throw ValidationError("--listen must be HOST:PORT (e.g. 127.0.0.1:8080).")
        }
        var host = String(text[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { throw ValidationError("--listen must be HOST:PORT (e.g. 127.0.0.1:8080).") }
        return (host, port)
    }

    func run() async throws {
        try await reportingErrors {
            let settings = try await StoreAccess.settings()
            var configuration = ProxyConfiguration()
            let (host, port) = try Self.parseListen(listen)
            configuration.host = host
            configuration.port = port
            configuration.openAIUpstream = openaiUpstream
            configuration.anthropicUpstream = anthropicUpstream
            configuration.upstreamCAFile = upstreamCa
            configuration.tlsCertificateFile = tlsCert
            configuration.tlsKeyFile = tlsKey
            configuration.insecureListen = insecureListen
            configuration.redactSecrets = redact == .secrets
            configuration.durable = durable
            configuration.injectStreamUsage = !noStreamUsage
            configuration.maxRequestBodyBytes = maxBodyMib << 20
            configuration.connectTimeout = .seconds(connectTimeout)
            configuration.idleTimeout = .seconds(idleTimeout)
            configuration.requestTimeout = .seconds(requestTimeout)
            configuration.shutdownTimeout = .seconds(shutdownTimeout)
            configuration.queueCapacity = queueCapacity
            configuration.batchSize = batchSize
            configuration.upstreamConnections = upstreamConnections
            configuration.writerNice = Int32(writerNice)
            configuration.writerLinger = .milliseconds(writerLingerMs)
            configuration.openAIKey = try settings.secret("OPENAI_API_KEY")
            configuration.anthropicKey = try settings.secret("ANTHROPIC_API_KEY")
            ProcessHygiene.scrubEnvironment(["OPENAI_API_KEY", "ANTHROPIC_API_KEY"])
            // Transport rules before asking for a key or opening the store.
            try configuration.validate()
            let opened = try await StoreAccess.open(store)
            ProcessHygiene.raiseOpenFileLimit()
            if opened.storage != nil, try settings.subjectKeysLocation == nil {
                // A call's subject is sealed under its subject key: refused at the start rather than
                // at the first call that has one.
                try? opened.close()
                throw ChatLogError.subjectKeyStore(
                    location: opened.path,
                    reason:
                        "`chatlog serve` logs calls' subjects, which need a subject-key database of their own: set CHATLOG_SUBJECT_KEYS to its postgres:// URL (docs/OPERATIONS.md)")
            }

            // Access-log lines go out through a buffer (one write per 100 ms or 256 KiB, warnings at
            // once), flushed at shutdown: docs/PROXY.md, "Operations".
            let logBuffer = LogBuffer.standardError
            LoggingSystem.bootstrap { label in
                var handler = BufferedLogHandler(label: label, buffer: logBuffer)
                handler.logLevel = .info
                return handler
            }
            let logger = Logger(label: "chatlog.serve")
            let scheme = configuration.tlsCertificateFile == nil ? "http" : "https"
            let keys = [configuration.openAIKey == nil ? nil : "openai", configuration.anthropicKey == nil ? nil : "anthropic"].compactMap { $0 }
            defer { logBuffer.flush() }
            try await ProxyServer(configuration: configuration, store: opened, logger: logger, logBuffer: logBuffer).run { address in
                CLIOutput.line("chatlog serve: listening on \(scheme)://\(address)")
                CLIOutput.line(
                    keys.isEmpty
                        ? "chatlog serve: credentials pass through to the upstreams"
                        : "chatlog serve: server-held keys for \(keys.joined(separator: ", ")); clients present proxy tokens")
            }
            logBuffer.flush()
            CLIOutput.note("serve: stopped; every accepted exchange was written")
        }
    }
}
