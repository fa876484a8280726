import AsyncHTTPClient
import ChatLog
import Foundation
import HTTPTypes
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// What every call shares.
final class ProxyState: Sendable {
    let configuration: ProxyConfiguration
    let store: ChatLogStore
    let client: HTTPClient
    let recorder: Recorder
    let metrics: ProxyMetrics
    let logger: Logger
    let connections = ConnectionWatch()
    /// The server's and the upstream client's event loops (both NIO's singleton group).
    let executors = EventLoopExecutors(MultiThreadedEventLoopGroup.singleton)
    /// Upstream requests of the logged routes by URL, made once: AsyncHTTPClient parses a request's
    /// URL (with Foundation) when it is made, which was a sizeable part of a call's CPU.
    private let requestTemplates = Mutex<[String: HTTPClient.Request]>([:])

    init(configuration: ProxyConfiguration, store: ChatLogStore, client: HTTPClient, recorder: Recorder, metrics: ProxyMetrics, logger: Logger) {
        self.configuration = configuration
        self.store = store
        self.client = client
        self.recorder = recorder
        self.metrics = metrics
        self.logger = logger
    }

    func serverKey(_ provider: Provider) -> String? {
        provider == .openAI ? configuration.openAIKey : configuration.anthropicKey
    }

    /// The POST of a logged route to the upstream, with these headers and body.
    func upstreamRequest(_ provider: Provider, path: String, query: String, headers: HTTPHeaders, body: ByteBuffer) throws -> HTTPClient.Request {
        let url = upstreamURL(provider, path: path, query: query)
        var request: HTTPClient.Request
        if let template = requestTemplates.withLock({ $0[url] }) {
            request = template
        } else {
            request = try HTTPClient.Request(url: url, method: .POST)
            // Only query-less URLs are kept: the three logged routes per upstream, a bounded set.
            if query.isEmpty { requestTemplates.withLock { $0[url] = request } }
        }
        request.headers = headers
        request.body = .byteBuffer(body)
        return request
    }

    func upstreamURL(_ provider: Provider, path: String, query: String) -> String {
        var base = provider == .openAI ? configuration.openAIUpstream : configuration.anthropicUpstream
        while base.hasSuffix("/") { base.removeLast() }
        // OpenAI's base URL ends in /v1 (as the SDKs' OPENAI_BASE_URL does); Anthropic's does not.
        let rest = provider == .openAI && path.hasPrefix("/v1/") ? String(path.dropFirst(3)) : path
        return base + rest + (query.isEmpty ? "" : "?" + query)
    }
}

/// Routes: the three logged APIs, other `/v1/*` passed through unlogged, `/healthz`, `/metrics`.
/// Run by HummingbirdCore's server directly (not Hummingbird's `Application`, which replaces the
/// upstream's `Date` header with its own).
struct ProxyResponder: Sendable {
    let state: ProxyState

    static let conversationHeader = HTTPField.Name("X-Chatlog-Conversation")!
    static let subjectHeader = HTTPField.Name("X-Chatlog-Subject")!

    func respond(to request: Request, channel: any Channel) async -> Response {
        let path = request.uri.path
        switch (request.method, path) {
        case (.get, "/healthz"): return health()
        case (.get, "/metrics"):
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(string: state.metrics.prometheusText())))
        case (.post, "/v1/chat/completions"): return await ProxyCall(state: state, api: .chatCompletions, request: request, channel: channel).run()
        case (.post, "/v1/responses"): return await ProxyCall(state: state, api: .responses, request: request, channel: channel).run()
        case (.post, "/v1/messages"): return await ProxyCall(state: state, api: .anthropicMessages, request: request, channel: channel).run()
        default:
            guard path.hasPrefix("/v1/") else {
                return ProxyCall.errorResponse(status: .notFound, "no such route; the proxy serves /v1/* (OpenAI and Anthropic APIs), /healthz and /metrics")
            }
            // Anthropic clients always send `anthropic-version` (and usually `x-api-key`).
            let anthropic = request.headers[HTTPField.Name("anthropic-version")!] != nil || request.headers[HTTPField.Name("x-api-key")!] != nil
            return await ProxyCall(state: state, api: nil, provider: anthropic ? .anthropic : .openAI, request: request, channel: channel).run()
        }
    }

    func health() -> Response {
        let health = state.metrics.health
        let body =
            "{\"status\":\"\(health.healthy ? "ok" : "degraded")\",\"store_failing\":\(health.storeFailing),\"queue_depth\":\(health.queueDepth),"
            + "\"queue_capacity\":\(health.queueCapacity),\"dropped\":\(health.dropped),\"store_failures\":\(health.storeFailures),\"logged\":\(health.committed)}\n"
        return Response(
            status: health.healthy ? .ok : .serviceUnavailable, headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(string: body)))
    }
}
