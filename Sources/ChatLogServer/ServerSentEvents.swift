/// An incremental `text/event-stream` parser (the WHATWG rules the SDKs follow): lines end in
/// LF, CR LF or CR; `event:` and `data:` fields; a blank line dispatches the event. Bytes are
/// fed as they arrive; `feed` returns the events completed by them, with the byte range each
/// took in the stream (so the forwarder can hold back or drop an event's exact bytes).
struct ServerSentEventParser {
    struct Event: Equatable {
        var event: String?
        var data: String
        /// Offsets in the whole stream: from the first byte of the event's first line to just
        /// after the blank line that ended it.
        var start: Int
        var end: Int
    }

    private var line: [UInt8] = []
    private var eventName: String?
    private var data: [UInt8] = []
    private var hasData = false
    private var eventStart: Int?
    private var lastWasCR = false
    /// Bytes consumed so far.
    private(set) var offset = 0

    mutating func feed(_ bytes: some Sequence<UInt8>) -> [Event] {
        var events: [Event] = []
        for byte in bytes {
            defer { offset += 1 }
            if lastWasCR {
                // A CR ends its line; a LF right after it belongs to the same line ending.
                lastWasCR = false
                if byte == 0x0A {
                    if let event = endLine(at: offset + 1) { events.append(event) }
                    continue
                }
                if let event = endLine(at: offset) { events.append(event) }
            }
            if byte == 0x0D {
                lastWasCR = true
                continue
            }
            if byte == 0x0A {
                if let event = endLine(at: offset + 1) { events.append(event) }
                continue
            }
            if eventStart == nil { eventStart = offset }
            line.append(byte)
        }
        return events
    }

    private mutating func endLine(at end: Int) -> Event? {
        defer { line.removeAll(keepingCapacity: true) }
        if line.isEmpty {
            defer {
                eventName = nil
                data.removeAll(keepingCapacity: true)
                hasData = false
                eventStart = nil
            }
            guard hasData || eventName != nil else { return nil }
            return Event(event: eventName, data: String(decoding: data, as: UTF8.self), start: eventStart ?? end, end: end)
        }
        if line.first == UInt8(ascii: ":") { return nil }
        let colon = line.firstIndex(of: UInt8(ascii: ":")) ?? line.endIndex
        let field = line[..<colon]
        var value = colon < line.endIndex ? line[(colon + 1)...] : []
        if value.first == UInt8(ascii: " ") { value = value.dropFirst() }
        switch String(decoding: field, as: UTF8.self) {
        case "event": eventName = String(decoding: value, as: UTF8.self)
        case "data":
            if hasData { data.append(0x0A) }
            data += value
            hasData = true
        default: break
        }
        return nil
    }
}
