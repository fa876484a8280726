import AsyncHTTPClient
import ChatLog
import Foundation
import HTTPTypes
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1

/// One proxied call: reads the request, resolves the conversation, forwards upstream, streams
/// the response back unchanged while capturing it, then queues the exchange for logging.
struct ProxyCall: Sendable {
    let state: ProxyState
    /// nil: a `/v1/*` route passed through unlogged.
    let api: ProxyAPI?
    let provider: Provider
    let request: Request
    /// The client's connection: its closing cancels the upstream call.
    let channel: any Channel
    let started = ContinuousClock.now

    init(state: ProxyState, api: ProxyAPI, request: Request, channel: any Channel) {
        self.state = state
        self.api = api
        self.provider = api.provider
        self.request = request
        self.channel = channel
    }

    init(state: ProxyState, api: ProxyAPI?, provider: Provider, request: Request, channel: any Channel) {
        self.state = state
        self.api = api
        self.provider = provider
        self.request = request
        self.channel = channel
    }

    var route: String { api.map { "/v1/" + ($0 == .chatCompletions ? "chat/completions" : $0.rawValue) } ?? "passthrough" }

    static let hopByHop: Set<String> = [
        "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
        "transfer-encoding", "upgrade",
    ]
    static let notForwarded: Set<String> = hopByHop.union(["host", "content-length", "x-chatlog-conversation", "x-chatlog-subject"])

    /// The header names a message's `Connection` field lists: hop-by-hop too, so not forwarded
    /// (RFC 9110 §7.6.1), lowercased.
    static func nominatedByConnection(_ values: some Sequence<String>) -> Set<String> {
        var names = Set<String>()
        for value in values {
            for token in value.split(separator: ",") {
                // Optional whitespace is spaces and tabs (RFC 9110 §5.6.3); trimmed without
                // Foundation, which bridged every token through NSString (per call: upstreams
                // send `Connection: keep-alive`).
                var name = token
                while let first = name.first, first == " " || first == "\t" { name.removeFirst() }
                while let last = name.last, last == " " || last == "\t" { name.removeLast() }
                if !name.isEmpty { names.insert(name.lowercased()) }
            }
        }
        return names
    }

    func run() async -> Response {
        state.metrics.callStarted()
        let response = await proxy()
        return response
    }

    /// An error answered by the proxy itself (never with user data), in the provider's error shape.
    static func errorResponse(status: HTTPResponse.Status, _ message: String, provider: Provider = .openAI) -> Response {
        let escaped = message.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
        let body =
            provider == .anthropic
            ? "{\"type\":\"error\",\"error\":{\"type\":\"chatlog_proxy_error\",\"message\":\"\(escaped)\"}}"
            : "{\"error\":{\"message\":\"\(escaped)\",\"type\":\"chatlog_proxy_error\",\"code\":\(status.code)}}"
        return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: body)))
    }

    private func fail(_ status: HTTPResponse.Status, _ message: String) -> Response {
        state.metrics.callEnded(route: route, status: status.code)
        accessLog(status: status.code, outcome: "refused", conversation: nil, upstreamRequestID: nil)
        return Self.errorResponse(status: status, message, provider: provider)
    }

    private func proxy() async -> Response {
        let body: ByteBuffer
        do {
            body = try await request.body.collect(upTo: state.configuration.maxRequestBodyBytes)
        } catch {
            return fail(.contentTooLarge, "request body larger than the proxy's limit of \(state.configuration.maxRequestBodyBytes) bytes (--max-body)")
        }

        // Headers upstream: the client's, minus hop-by-hop ones and the proxy's own.
        var headers = HTTPHeaders()
        let nominated = Self.nominatedByConnection(request.headers[values: .connection])
        for field in request.headers where !Self.notForwarded.contains(field.name.canonicalName) && !nominated.contains(field.name.canonicalName) {
            if api != nil, field.name.canonicalName == "accept-encoding" { continue }
            headers.add(name: field.name.rawName, value: field.value)
        }
        // Logged routes read the body, so ask upstream for it uncompressed.
        if api != nil { headers.replaceOrAdd(name: "accept-encoding", value: "identity") }

        var app: String?
        if let key = state.serverKey(provider) {
            guard let token = presentedToken() else {
                state.metrics.recordUnauthorized()
                return fail(.unauthorized, "this proxy holds the upstream key: present a proxy token (chatlog token create NAME) as the API key")
            }
            let name: String?
            do { name = try await state.store.proxyTokenName(token) } catch {
                return fail(.serviceUnavailable, "the proxy cannot check tokens: its store is failing")
            }
            guard let name else {
                state.metrics.recordUnauthorized()
                return fail(.unauthorized, "unknown or revoked proxy token")
            }
            app = name
            headers.remove(name: "authorization")
            headers.remove(name: "x-api-key")
            if provider == .openAI { headers.add(name: "Authorization", value: "Bearer " + key) } else { headers.add(name: "x-api-key", value: key) }
        }

        guard let api else {
            return await passthrough(body: body, headers: headers)
        }

        let bytes = Array(body.readableBytesView)
        let captured = CapturedRequest(api: api, body: bytes)
        let subject = request.headers[ProxyResponder.subjectHeader] ?? captured.subject
        let scope = [provider.rawValue, app ?? "", subject ?? ""].joined(separator: "\u{0}")
        let thread: Threading
        do {
            thread = try await resolve(captured, scope: scope)
        } catch let error as ThreadingError {
            return fail(.badRequest, error.message)
        } catch {
            return fail(.badRequest, "cannot resolve the conversation")
        }

        var upstreamBody = body
        var stripUsage = false
        if api == .chatCompletions, captured.stream, !captured.includeUsage, state.configuration.injectStreamUsage,
            let injected = UsageInjection.inject(bytes)
        {
            upstreamBody = ByteBuffer(bytes: injected)
            stripUsage = true
        }

        let context = CallContext(
            api: api, captured: captured, thread: thread, scope: scope, subject: subject, app: app, started: started,
            stripUsage: stripUsage)

        let reader: UpstreamReader
        do {
            let upstreamRequest = try state.upstreamRequest(
                provider, path: request.uri.path, query: request.uri.query ?? "", headers: headers, body: upstreamBody)
            // On the client connection's event loop, where this call runs.
            let loop = state.executors.executor(for: channel.eventLoop)?.eventLoop
            reader = UpstreamReader(
                client: state.client, request: upstreamRequest, on: loop, headDeadline: .now() + .init(state.configuration.idleTimeout))
        } catch {
            state.metrics.recordUpstreamError()
            await record(context, status: 502, requestID: nil, completion: CapturedCompletion(), finishReason: "upstream_unreachable", firstToken: nil, streaming: false)
            return fail(.badGateway, "the upstream could not be reached")
        }
        guard state.connections.register(reader, on: channel) else {
            reader.cancel()
            await record(context, status: 499, requestID: nil, completion: CapturedCompletion(), finishReason: "client_disconnected", firstToken: nil, streaming: false)
            return fail(.init(code: 499), "client closed the connection")
        }
        let head: (status: HTTPResponseStatus, headers: HTTPHeaders)
        var parts: [UpstreamPart]
        do {
            parts = try await reader.next()
            guard case .head(let status, let headers)? = parts.first else { throw CancellationError() }
            head = (status, headers)
            parts.removeFirst()
        } catch {
            state.connections.unregister(reader, on: channel)
            if reader.wasCancelled {
                await record(
                    context, status: 499, requestID: nil, completion: CapturedCompletion(), finishReason: "client_disconnected", firstToken: nil,
                    streaming: false)
                return fail(.init(code: 499), "client closed the connection")
            }
            let timedOut = Self.isTimeout(error)
            state.metrics.recordUpstreamError()
            let reason = timedOut ? "timeout" : "upstream_unreachable"
            await record(context, status: 502, requestID: nil, completion: CapturedCompletion(), finishReason: reason, firstToken: nil, streaming: false)
            state.logger.warning("upstream call failed", metadata: ["route": "\(route)", "reason": "\(reason)"])
            return fail(.badGateway, timedOut ? "the upstream did not answer in time" : "the upstream could not be reached")
        }

        var (fields, contentLength) = Self.clientHeaders(head.headers)
        let streaming = (head.headers.first(name: "content-type") ?? "").lowercased().hasPrefix("text/event-stream")
        if streaming {
            fields[HTTPField.Name("X-Accel-Buffering")!] = "no"
            // The usage chunk the client did not ask for is removed: the length changes.
            if stripUsage { contentLength = nil }
        }
        fields[ProxyResponder.conversationHeader] = thread.conversation.rawValue
        let requestID = head.headers.first(name: provider == .openAI ? "x-request-id" : "request-id")
        let status = Int(head.status.code)
        let call = self
        let channel = self.channel

        if !streaming {
            // A JSON body: read ahead. When it ends within the read-ahead limit (an ordinary answer
            // does), it is captured and queued for logging before anything goes out, then written
            // with the head in one piece: one hand-over to the connection's event loop instead of
            // one per part. (Its last byte waited for the queueing all along, and a client cannot use
            // a JSON body before its end.) Larger bodies are relayed as they come.
            var bytes = parts.reduce(0) { $0 + $1.bodyBytes }
            while !parts.contains(where: \.isEnd), bytes <= state.configuration.readAheadBytes {
                guard let more = try? await reader.next() else { break }
                bytes += more.reduce(0) { $0 + $1.bodyBytes }
                parts += more
            }
            if parts.contains(where: \.isEnd) {
                let collected = CollectedBody()
                var writer: any ResponseBodyWriter = collected
                do {
                    try await relay(reader, into: &writer, pending: parts, context: context, status: status, requestID: requestID, streaming: false)
                    state.connections.unregister(reader, on: channel)
                    return Response(status: HTTPResponse.Status(code: status), headers: fields, body: .init(byteBuffer: collected.buffer))
                } catch {
                    // Not answered in full (--durable and not committed, or the call's time ran out):
                    // the client gets the head and what was relayed, then the connection ends, as when
                    // relaying as it comes.
                    let relayed = collected.buffer
                    return Response(
                        status: HTTPResponse.Status(code: status), headers: fields,
                        body: ResponseBody(contentLength: contentLength) { writer in
                            defer {
                                reader.cancel()
                                call.state.connections.unregister(reader, on: channel)
                            }
                            if relayed.readableBytes > 0 { try await writer.write(relayed) }
                            throw error
                        })
                }
            }
        }

        let pending = parts
        let responseBody = ResponseBody(contentLength: contentLength) { writer in
            defer {
                reader.cancel()
                call.state.connections.unregister(reader, on: channel)
            }
            try await call.relay(reader, into: &writer, pending: pending, context: context, status: status, requestID: requestID, streaming: streaming)
        }
        return Response(status: HTTPResponse.Status(code: status), headers: fields, body: responseBody)
    }

    /// The upstream's response headers as the client gets them: all but the hop-by-hop ones (and
    /// those its `Connection` field lists), in order, repeated ones (`set-cookie`) kept;
    /// `Content-Length` apart (the body carries it).
    static func clientHeaders(_ headers: HTTPHeaders) -> (HTTPFields, contentLength: Int?) {
        var fields = HTTPFields()
        var contentLength: Int?
        let nominated = nominatedByConnection(headers["connection"])
        fields.reserveCapacity(headers.count + 2)
        for (name, value) in headers {
            // The field name lowercases once (its canonical name), not once more here.
            guard let fieldName = HTTPField.Name(name) else { continue }
            let lower = fieldName.canonicalName
            if hopByHop.contains(lower) || nominated.contains(lower) { continue }
            if lower == "content-length" {
                contentLength = Int(value)
                continue
            }
            fields.append(HTTPField(name: fieldName, value: value))
        }
        return (fields, contentLength)
    }

    /// AsyncHTTPClient's timeouts: no byte for `--idle-timeout`, or the head's deadline.
    static func isTimeout(_ error: any Error) -> Bool {
        guard let error = error as? HTTPClientError else { return false }
        return error == .readTimeout || error == .deadlineExceeded || error == .connectTimeout || error == .writeTimeout
    }

    /// The token the client presented in place of an API key: `Authorization: Bearer …` or `x-api-key`.
    private func presentedToken() -> String? {
        if let key = request.headers[HTTPField.Name("x-api-key")!], !key.isEmpty { return key }
        if let authorization = request.headers[.authorization], authorization.lowercased().hasPrefix("bearer ") {
            return String(authorization.dropFirst(7)).trimmingCharacters(in: .whitespaces)
        }
        return nil
    }

    // MARK: Passthrough (unlogged /v1/* routes)

    private func passthrough(body: ByteBuffer, headers: HTTPHeaders) async -> Response {
        var upstreamRequest = HTTPClientRequest(url: state.upstreamURL(provider, path: request.uri.path, query: request.uri.query ?? ""))
        upstreamRequest.method = HTTPMethod(rawValue: request.method.rawValue)
        upstreamRequest.headers = headers
        if body.readableBytes > 0 || request.method != .get { upstreamRequest.body = .bytes(body) }
        let upstream: HTTPClientResponse
        do {
            upstream = try await state.client.execute(upstreamRequest, deadline: .now() + .init(state.configuration.idleTimeout))
        } catch {
            state.metrics.recordUpstreamError()
            return fail(.badGateway, "the upstream could not be reached")
        }
        let (fields, contentLength) = Self.clientHeaders(upstream.headers)
        let status = Int(upstream.status.code)
        let metrics = state.metrics
        let route = self.route
        let call = self
        return Response(
            status: HTTPResponse.Status(code: status), headers: fields,
            body: ResponseBody(contentLength: contentLength) { writer in
                defer { metrics.callEnded(route: route, status: status) }
                var outcome = "complete"
                do {
                    for try await chunk in upstream.body { try await writer.write(chunk) }
                    try await writer.finish(nil)
                } catch {
                    outcome = "broken"
                    call.accessLog(status: status, outcome: outcome, conversation: nil, upstreamRequestID: nil)
                    throw error
                }
                call.accessLog(status: status, outcome: outcome, conversation: nil, upstreamRequestID: nil)
            })
    }

    // MARK: Relaying and capturing a logged response

    enum Outcome: String {
        case complete
        case clientDisconnected = "client_disconnected"
        case upstreamDisconnected = "upstream_disconnected"
        case timeout
    }

    func relay(
        _ reader: UpstreamReader, into writer: inout any ResponseBodyWriter, pending: [UpstreamPart], context: CallContext, status: Int,
        requestID: String?, streaming: Bool
    ) async throws {
        let configuration = state.configuration
        var capture = CompletionCapture(api: context.api, streaming: streaming, captureLimit: configuration.maxCaptureBytes)
        var usageFilter = context.stripUsage && streaming ? UsageStripper() : nil
        var firstToken: ContinuousClock.Instant?
        var outcome = Outcome.complete
        let durable = configuration.durable
        // Bytes held back until the exchange is queued (--durable: committed): from the last byte
        // of the final event on, or the last byte of a JSON body. So a client that sends its next
        // call as soon as it has this answer finds this exchange (threading), and with --durable
        // never has an answer that was not logged. The upstream's end follows at once, so this
        // adds no measurable delay.
        var held = ByteBuffer()
        var holding = false
        var streamOffset = 0
        // The parts the reader hands over (all that arrived together), one at a time.
        var parts = pending[...]
        while true {
            if parts.isEmpty {
                do {
                    parts = try await reader.next()[...]
                } catch {
                    outcome = reader.wasCancelled ? .clientDisconnected : Self.isTimeout(error) ? .timeout : .upstreamDisconnected
                    break
                }
            }
            guard case .body(let chunk) = parts.removeFirst() else { break }
            let chunkStart = streamOffset
            streamOffset += chunk.readableBytes
            let events = capture.feed(chunk.readableBytesView)
            if firstToken == nil, capture.sawFirstToken { firstToken = .now }
            var out = chunk
            if var filter = usageFilter {
                out = filter.filter(chunk, events: events)
                usageFilter = filter
            }
            do {
                if holding {
                    held.writeImmutableBuffer(out)
                    out = ByteBuffer()
                } else if streaming, let terminalEnd = capture.terminalEventEnd {
                    // Everything up to the final event's last byte goes now; that byte waits.
                    let cut = usageFilter == nil ? max(0, min(out.readableBytes, terminalEnd - 1 - chunkStart)) : max(0, out.readableBytes - 1)
                    held = out.getSlice(at: out.readerIndex + cut, length: out.readableBytes - cut) ?? ByteBuffer()
                    out = out.getSlice(at: out.readerIndex, length: cut) ?? ByteBuffer()
                    holding = true
                } else if !streaming {
                    // A JSON body: each chunk's last byte waits for the next chunk (or the commit).
                    var combined = held
                    combined.writeImmutableBuffer(out)
                    let keep = combined.readableBytes > 0 ? 1 : 0
                    held = combined.getSlice(at: combined.readerIndex + combined.readableBytes - keep, length: keep) ?? ByteBuffer()
                    out = combined.getSlice(at: combined.readerIndex, length: combined.readableBytes - keep) ?? ByteBuffer()
                }
            }
            if started.duration(to: .now) > configuration.requestTimeout {
                outcome = .timeout
                break
            }
            if out.readableBytes > 0 {
                do { try await writer.write(out) } catch {
                    outcome = .clientDisconnected
                    reader.cancel()
                    break
                }
            }
        }
        if outcome == .complete, let remainder = usageFilter?.remainder, remainder.readableBytes > 0 {
            held.writeImmutableBuffer(remainder)
        }
        let completion = capture.finish()
        if outcome == .complete, streaming, !capture.sawTerminalEvent, completion.finishReason == nil, status < 400 {
            // The upstream closed the stream before its final event and before any finish
            // reason (some OpenAI-compatible servers end without `[DONE]`): cut off.
            outcome = .upstreamDisconnected
        }
        var finishReason: String?
        switch outcome {
        case .complete: finishReason = completion.finishReason ?? (status >= 400 ? "upstream_error" : nil)
        case .clientDisconnected, .upstreamDisconnected, .timeout: finishReason = outcome.rawValue
        }
        if status >= 400 { finishReason = "upstream_error" }
        if outcome == .upstreamDisconnected || outcome == .timeout { state.metrics.recordUpstreamError() }
        let committed = await record(
            context, status: status, requestID: requestID, completion: completion, finishReason: finishReason, firstToken: firstToken,
            streaming: streaming, truncated: capture.truncated, outcome: outcome, wait: durable)
        state.metrics.callEnded(route: route, status: status)
        accessLog(status: status, outcome: outcome.rawValue, conversation: context.thread.conversation, upstreamRequestID: requestID)
        switch outcome {
        case .complete:
            guard committed || !durable else {
                // --durable: the call was not logged, so it is not answered in full. (Without
                // --durable, a full queue drops the record and the answer goes out all the same.)
                throw ProxyAbort()
            }
            if held.readableBytes > 0 { try await writer.write(held) }
            try await writer.finish(nil)
        case .clientDisconnected:
            throw ProxyAbort()
        case .upstreamDisconnected, .timeout:
            // The client sees the stream end the way the upstream's did: abruptly.
            if held.readableBytes > 0 { try? await writer.write(held) }
            throw ProxyAbort()
        }
    }

    struct ProxyAbort: Error {}

    /// The body writer of a JSON answer read ahead: keeps what the relay writes, for one write with the head.
    final class CollectedBody: ResponseBodyWriter {
        var buffer = ByteBuffer()

        func write(_ part: ByteBuffer) async throws {
            if buffer.readableBytes == 0 { buffer = part } else { buffer.writeImmutableBuffer(part) }
        }

        func finish(_ trailingHeaders: HTTPFields?) async throws {}
    }

    /// Builds the record and queues it (or, with `wait`, waits for its commit). Returns whether
    /// it was queued (or committed).
    @discardableResult
    func record(
        _ context: CallContext, status: Int, requestID: String?, completion: CapturedCompletion, finishReason: String?,
        firstToken: ContinuousClock.Instant?, streaming: Bool, truncated: Bool = false, outcome: Outcome = .complete, wait: Bool = false
    ) async -> Bool {
        let end = ContinuousClock.now
        let latency = Self.milliseconds(started.duration(to: end))
        var metadata: [String: JSONValue] = ["api": .string(context.api.rawValue), "status": .integer(Int64(status)), "stream": .bool(context.captured.stream)]
        metadata.set("request_id", requestID)
        metadata.set("response_id", completion.responseID)
        metadata.set("app", context.app)
        metadata.set("usage", completion.usage)
        metadata.set("cached_tokens", completion.cachedTokens)
        metadata.set("cache_creation_tokens", completion.cacheCreationTokens)
        metadata.set("reasoning_tokens", completion.reasoningTokens)
        metadata.set("refusal", completion.refusal)
        metadata.set("reasoning", completion.reasoning)
        metadata.set("error", completion.error)
        if let firstToken { metadata["ttft_ms"] = .integer(Int64(Self.milliseconds(started.duration(to: firstToken)))) }
        if !completion.toolCalls.isEmpty { metadata["tool_calls"] = .array(completion.toolCalls) }
        if !completion.otherItems.isEmpty { metadata["output_items"] = .array(completion.otherItems) }
        if !completion.otherChoices.isEmpty { metadata["other_choices"] = .array(completion.otherChoices) }
        if truncated { metadata["truncated"] = .bool(true) }
        if context.stripUsage { metadata["usage_requested_by_proxy"] = .bool(true) }
        if let previous = context.captured.previousResponseID { metadata["previous_response_id"] = .string(previous) }

        let now = Date()
        var messages = context.captured.messages[min(context.thread.start, context.captured.messages.count)...].map { captured in
            var message = captured.message
            message.createdAt = now
            return message
        }
        let completionMessage = NewMessage(
            role: .assistant, content: completion.text.isEmpty ? (completion.refusal ?? "") : completion.text,
            model: completion.model ?? context.captured.model, promptTokens: completion.promptTokens,
            completionTokens: completion.completionTokens, latencyMilliseconds: latency,
            finishReason: finishReason.map { String($0.prefix(200)) }, metadata: .object(metadata), createdAt: now)
        messages.append(completionMessage)
        // Secrets are redacted by the recorder's writer thread, off the response path.

        var digests: [ThreadDigest] = []
        let succeeded = (200..<300).contains(status) && outcome == .complete && completion.error == nil
        if succeeded {
            let chainer = context.thread.chainer
            let extended = chainer.extend(context.thread.chain, scope: context.scope, with: [completion.canonical])
            if let digest = extended.active(length: extended.count) { digests.append(digest) }
            if context.api == .responses, let id = completion.responseID, let digest = chainer.response(id).active(length: 1) {
                digests.append(digest)
            }
        }
        var conversation = NewConversation(subject: context.subject, metadata: .object(["source": .string("chatlog serve"), "api": .string(context.api.rawValue)]))
        conversation.id = context.thread.conversation
        conversation.createdAt = now
        if let app = context.app { conversation.metadata = .object(["source": .string("chatlog serve"), "api": .string(context.api.rawValue), "app": .string(app)]) }
        let record = ProxyRecord(conversation: conversation, messages: messages, digests: digests)
        if wait { return await state.recorder.submitAndWait(record) }
        return state.recorder.submit(record)
    }

    static func milliseconds(_ duration: Duration) -> Int {
        let (seconds, attoseconds) = duration.components
        return max(0, Int(seconds) * 1000 + Int(attoseconds / 1_000_000_000_000_000))
    }

    /// One structured line per call: no content, no credentials, no subject.
    func accessLog(status: Int, outcome: String, conversation: ConversationID?, upstreamRequestID: String?) {
        var metadata: Logger.Metadata = [
            "route": "\(route)", "method": "\(request.method.rawValue)", "status": "\(status)", "outcome": "\(outcome)",
            "duration_ms": "\(Self.milliseconds(started.duration(to: .now)))",
        ]
        if let conversation { metadata["conversation"] = "\(conversation.rawValue)" }
        if let upstreamRequestID {
            // The upstream chooses this header: keep visible ASCII only, so it cannot forge log lines.
            let visible = upstreamRequestID.utf8.count <= 128 && upstreamRequestID.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F }
            if visible {
                metadata["upstream_request_id"] = "\(upstreamRequestID)"
            } else {
                let printable = upstreamRequestID.unicodeScalars.filter { $0.value > 0x20 && $0.value < 0x7F }
                metadata["upstream_request_id"] = "\(String(String.UnicodeScalarView(printable.prefix(128))))"
            }
        }
        state.logger.info("call", metadata: metadata)
    }
}

/// What the response side needs of the request.
struct CallContext: Sendable {
    let api: ProxyAPI
    let captured: CapturedRequest
    let thread: Threading
    let scope: String
    let subject: String?
    let app: String?
    let started: ContinuousClock.Instant
    let stripUsage: Bool
}
