import Foundation

/// Reads a file line by line in 1 MiB chunks, with flat memory: a line longer than
/// `maximumLineLength` is reported (with its number) and skipped, never loaded whole.
struct LineReader: Sequence, IteratorProtocol {
    enum Line {
        case text(number: Int, bytes: [UInt8])
        case tooLong(number: Int, length: Int)
    }

    private let handle: FileHandle
    private let maximumLineLength: Int
    private var buffer: [UInt8] = []
    private var start = 0
    /// `buffer[start..<scanned]` holds no newline: each byte is searched once, not once per chunk
    /// (a long line read in 1 MiB chunks would otherwise be rescanned from its start every time).
    private var scanned = 0
    private var number = 0
    private var atEnd = false
    private var overlong: Int?

    init(handle: FileHandle, maximumLineLength: Int) {
        self.handle = handle
        self.maximumLineLength = maximumLineLength
    }

    mutating func next() -> Line? {
        while true {
            if let newline = buffer[Swift.max(start, scanned)...].firstIndex(of: 0x0A) {
                let line = Array(buffer[start..<newline])
                start = newline + 1
                scanned = start
                number += 1
                if let length = overlong {
                    overlong = nil
                    return .tooLong(number: number, length: length + line.count)
                }
                return .text(number: number, bytes: line.last == 0x0D ? Array(line.dropLast()) : line)
            }
            if atEnd {
                guard start < buffer.count || overlong != nil else { return nil }
                let line = Array(buffer[start...])
                start = buffer.count
                number += 1
                if let length = overlong {
                    overlong = nil
                    return .tooLong(number: number, length: length + line.count)
                }
                return .text(number: number, bytes: line)
            }
            // Compact, then read more; drop what cannot fit a line.
            buffer.removeSubrange(0..<start)
            start = 0
            scanned = buffer.count
            if buffer.count > maximumLineLength {
                overlong = (overlong ?? 0) + buffer.count
                buffer.removeAll(keepingCapacity: true)
                scanned = 0
            }
            let chunk = (try? handle.read(upToCount: 1 << 20)) ?? nil
            if let chunk, !chunk.isEmpty { buffer.append(contentsOf: chunk) } else { atEnd = true }
        }
    }
}
