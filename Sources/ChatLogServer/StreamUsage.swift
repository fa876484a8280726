import ChatLog
import NIOCore

/// OpenAI chat streams report usage only when asked (`stream_options.include_usage`). When the
/// client did not ask, the proxy asks for it and then removes what the client would not have
/// seen: the extra usage chunk (`choices: []` with `usage`), and the `"usage":null` member the
/// other chunks then carry (docs/ARCHITECTURE.md §10).
enum UsageInjection {
    /// The body with `"stream_options":{"include_usage":true}` added as the first member, or nil
    /// when the body already has `stream_options` (left alone) or is not a JSON object.
    static func inject(_ body: [UInt8]) -> [UInt8]? {
        guard let json = JSONValue.parse(body), let object = json.object, object["stream_options"] == nil, !object.isEmpty else { return nil }
        guard let brace = body.firstIndex(of: UInt8(ascii: "{")) else { return nil }
        var result = Array(body[...brace])
        result += Array(#""stream_options":{"include_usage":true},"#.utf8)
        result += body[(brace + 1)...]
        return result
    }
}

/// Removes, event by event, what the injected `include_usage` added. Bytes of an event pass
/// once the event is complete (a client cannot act on half an event, so this adds no delay to
/// what it sees); bytes between events pass unchanged.
struct UsageStripper {
    private var pending = ByteBuffer()
    /// Stream offset of `pending`'s first byte.
    private var pendingOffset = 0

    /// Bytes still pending at the end of the stream (an unfinished last event), passed as they were.
    var remainder: ByteBuffer? { pending }

    mutating func filter(_ chunk: ByteBuffer, events: [ServerSentEventParser.Event]) -> ByteBuffer {
        pending.writeImmutableBuffer(chunk)
        guard let lastEnd = events.last?.end else { return ByteBuffer() }
        var out = ByteBuffer()
        var cursor = pendingOffset
        let bytes = Array(pending.readableBytesView)
        for event in events {
            let eventStart = max(event.start, cursor)
            if eventStart > cursor { out.writeBytes(bytes[(cursor - pendingOffset)..<(eventStart - pendingOffset)]) }
            let eventBytes = Array(bytes[(eventStart - pendingOffset)..<(event.end - pendingOffset)])
            if !Self.isUsageChunk(event) { out.writeBytes(Self.removingNullUsage(eventBytes)) }
            cursor = event.end
        }
        pending.moveReaderIndex(forwardBy: lastEnd - pendingOffset)
        pending.discardReadBytes()
        pendingOffset = lastEnd
        return out
    }

    static func isUsageChunk(_ event: ServerSentEventParser.Event) -> Bool {
        guard event.data != "[DONE]", let json = JSONValue.parse(event.data[...]) else { return false }
        guard let usage = json["usage"], !usage.isNull, let choices = json["choices"]?.array else { return false }
        return choices.isEmpty
    }

    static let patterns: [[UInt8]] = [#","usage":null"#, #", "usage": null"#, #","usage": null"#, #""usage":null,"#, #""usage": null, "#]
        .map { Array($0.utf8) }

    /// The event's bytes without its `"usage":null` member (as serialized by OpenAI and by
    /// Python's json.dumps).
    static func removingNullUsage(_ bytes: [UInt8]) -> [UInt8] {
        for pattern in patterns {
            if let range = firstRange(of: pattern, in: bytes) {
                var result = bytes
                result.removeSubrange(range)
                return result
            }
        }
        return bytes
    }

    static func firstRange(of pattern: [UInt8], in bytes: [UInt8]) -> Range<Int>? {
        guard bytes.count >= pattern.count, let first = pattern.first else { return nil }
        var index = 0
        while index <= bytes.count - pattern.count {
            if bytes[index] == first, bytes[index..<(index + pattern.count)].elementsEqual(pattern) { return index..<(index + pattern.count) }
            index += 1
        }
        return nil
    }
}
