import AsyncHTTPClient
import ChatLog
import Foundation
import HTTPTypes
import HummingbirdCore
import HummingbirdTLS
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import ServiceLifecycle
import UnixSignals

/// `chatlog serve`: the logging proxy. Builds the upstream client, the recorder and the HTTP
/// server, runs them in one service group and shuts down in order on SIGTERM/SIGINT: the server
/// stops accepting and lets in-flight calls finish (bounded), then the recorder drains its queue.
public struct ProxyServer: Sendable {
    public let configuration: ProxyConfiguration
    public let store: ChatLogStore
    public let logger: Logger
    /// Where `logger`'s lines wait (a `BufferedLogHandler`'s buffer): written out every 100 ms and at shutdown.
    public let logBuffer: LogBuffer?

    public init(configuration: ProxyConfiguration, store: ChatLogStore, logger: Logger, logBuffer: LogBuffer? = nil) {
        self.configuration = configuration
        self.store = store
        self.logger = logger
        self.logBuffer = logBuffer
    }

    /// Runs until SIGTERM or SIGINT, then drains. `onListening` gets the bound address ("host:port").
    public func run(onListening: @escaping @Sendable (String) -> Void = { _ in }) async throws {
        try await serviceGroup(signals: [.sigterm, .sigint], onListening: onListening).run()
    }

    /// The service group `run` runs; tests run it themselves and call `triggerGracefulShutdown()`.
    public func serviceGroup(
        signals: [UnixSignal] = [], onListening: @escaping @Sendable (String) -> Void = { _ in }
    ) throws -> ServiceGroup {
        try configuration.validate()
        var tls = TLSConfiguration.makeClientConfiguration()
        if let ca = configuration.upstreamCAFile {
            do {
                tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(ca))
            } catch {
                throw ChatLogError.invalidInput("the --upstream-ca file \(ca) holds no readable PEM certificate")
            }
        }
        var clientConfiguration = HTTPClient.Configuration(
            tlsConfiguration: tls, redirectConfiguration: .disallow,
            timeout: .init(connect: .init(configuration.connectTimeout), read: .init(configuration.idleTimeout)),
            connectionPool: .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: configuration.upstreamConnections),
            decompression: .disabled)
        clientConfiguration.httpVersion = .automatic
        // No tracing spans: the default no-op tracer still made a span per call and parsed the
        // URL with Foundation for its attributes (a few % of a call's CPU, docs/PERFORMANCE.md).
        clientConfiguration.tracing.tracer = nil
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: clientConfiguration)
        let metrics = ProxyMetrics(queueCapacity: configuration.queueCapacity)
        let recorder = Recorder(
            store: store, capacity: configuration.queueCapacity, batchSize: configuration.batchSize, metrics: metrics, logger: logger,
            writerNice: configuration.writerNice, redactor: configuration.redactSecrets ? SecretRedactor() : nil,
            linger: configuration.writerLinger, settle: configuration.writerSettle, lingerInFlight: configuration.writerLingerInFlight,
            quietSettle: configuration.writerQuietSettle)
        let responder = ProxyResponder(
            state: ProxyState(configuration: configuration, store: store, client: client, recorder: recorder, metrics: metrics, logger: logger))

        let watch = responder.state.connections
        let executors = responder.state.executors
        let host = configuration.host
        let listening = onListening
        // HummingbirdCore's HTTP/1 channel (TLS around it with --tls-cert), each connection's task on
        // the connection's event loop (EventLoopExecutor.swift), so are the calls it answers.
        let http1 = HTTP1Channel(
            responder: { (request, responseWriter: consuming ResponseWriter, channel) in
                let response = await responder.respond(to: request, channel: channel)
                try await responseWriter.write(response: response.head, body: response.body)
            },
            configuration: .init(additionalChannelHandlers: [HangUpHandler(watch: watch)]))
        let serverConfiguration = ServerConfiguration(address: .hostname(host, port: configuration.port), serverName: nil, backlog: 1024)
        let onServerRunning: @Sendable (any Channel) async -> Void = { channel in
            let port = channel.localAddress?.port ?? 0
            listening("\(host.contains(":") ? "[\(host)]" : host):\(port)")
        }
        let httpServer: any Service
        if let certificate = configuration.tlsCertificateFile, let key = configuration.tlsKeyFile {
            let chain: [NIOSSLCertificate]
            let privateKey: NIOSSLPrivateKey
            do {
                chain = try NIOSSLCertificate.fromPEMFile(certificate)
                privateKey = try NIOSSLPrivateKey(file: key, format: .pem)
            } catch {
                throw ChatLogError.invalidInput("cannot read the TLS certificate or key (--tls-cert, --tls-key)")
            }
            let tls = try TLSChannel(
                http1, tlsConfiguration: .makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(privateKey)))
            httpServer = EventLoopChildChannel(base: tls, executors: executors).server(
                configuration: serverConfiguration, onServerRunning: onServerRunning, eventLoopGroup: MultiThreadedEventLoopGroup.singleton,
                logger: logger)
        } else {
            httpServer = EventLoopChildChannel(base: http1, executors: executors).server(
                configuration: serverConfiguration, onServerRunning: onServerRunning, eventLoopGroup: MultiThreadedEventLoopGroup.singleton,
                logger: logger)
        }
        // Shut down in reverse order: the HTTP server first (its in-flight calls finish and are
        // queued), then the recorder (drains), then the upstream client.
        // The log's buffer first: it is flushed last, after the recorder has drained.
        let logFlush: [ServiceGroupConfiguration.ServiceConfiguration] =
            logBuffer.map { [.init(service: LogFlushService(buffer: $0, interval: .milliseconds(100)))] } ?? []
        var groupConfiguration = ServiceGroupConfiguration(
            services: logFlush + [
                .init(
                    service: HeapTrimService(
                        metrics: metrics, policy: HeapTrimPolicy(minimumPeak: configuration.heapTrimMinimumPeak),
                        interval: configuration.heapTrimInterval)),
                .init(service: HTTPClientService(client: client)),
                .init(service: RecorderService(recorder: recorder)),
                .init(service: httpServer),
            ],
            gracefulShutdownSignals: signals,
            logger: logger)
        // In-flight calls get this long; then they are cancelled (and logged as such) while the
        // recorder, which ignores cancellation, still drains everything queued.
        groupConfiguration.maximumGracefulShutdownDuration = configuration.shutdownTimeout
        return ServiceGroup(configuration: groupConfiguration)
    }
}

/// Shuts the upstream client down last.
struct HTTPClientService: Service {
    let client: HTTPClient

    func run() async throws {
        try? await gracefulShutdown()
        try await client.shutdown()
    }
}
