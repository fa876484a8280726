import Dispatch
import Foundation

@testable import ChatLog

#if canImport(Glibc)
    import Glibc
#endif

/// Shared pieces of the libFuzzer targets (Fuzz/README.md).

/// The fuzz input as an array (libFuzzer may pass a null pointer with count 0).
public func fuzzBytes(_ start: UnsafePointer<UInt8>?, _ count: Int) -> [UInt8] {
    guard let start, count > 0 else { return [] }
    return Array(UnsafeBufferPointer(start: start, count: count))
}

/// An invariant broke: print why and abort, which libFuzzer reports as a crash (and saves the input).
public func fuzzFailure(_ message: @autoclosure () -> String, file: StaticString = #fileID, line: UInt = #line) -> Never {
    FileHandle.standardError.write(Data("FUZZ INVARIANT BROKEN (\(file):\(line)): \(message())\n".utf8))
    abort()
}

public func require(
    _ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String, file: StaticString = #fileID, line: UInt = #line
) {
    if !condition() { fuzzFailure(message(), file: file, line: line) }
}

/// Reads a fuzz input piece by piece; past the end it yields zeros and empty pieces, so every
/// input is usable.
public struct FuzzReader {
    public private(set) var bytes: ArraySlice<UInt8>

    public init(_ bytes: [UInt8]) { self.bytes = bytes[...] }

    public var isEmpty: Bool { bytes.isEmpty }

    public mutating func byte() -> UInt8 { bytes.popFirst() ?? 0 }

    public mutating func uint16() -> UInt16 { UInt16(byte()) << 8 | UInt16(byte()) }

    public mutating func uint32() -> UInt32 { UInt32(uint16()) << 16 | UInt32(uint16()) }

    public mutating func take(_ count: Int) -> [UInt8] {
        let piece = Array(bytes.prefix(count))
        bytes = bytes.dropFirst(count)
        return piece
    }

    /// A length byte, then that many bytes as (lossily decoded) text.
    public mutating func shortString() -> String {
        let length = Int(byte())
        return String(decoding: take(length), as: UTF8.self)
    }

    public mutating func rest() -> [UInt8] {
        defer { bytes = [] }
        return Array(bytes)
    }
}

/// A private scratch directory for this process, in $CHATLOG_FUZZ_SCRATCH (scripts/fuzz sets it),
/// else /dev/shm when there is one (the targets write a file per input).
public let scratchDirectory: String = {
    let base =
        ProcessInfo.processInfo.environment["CHATLOG_FUZZ_SCRATCH"]
        ?? (FileManager.default.isWritableFile(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory())
    var template = Array((base + "/chatlog-fuzz-XXXXXX").utf8CString)
    guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
        fuzzFailure("mkdtemp failed in \(base)")
    }
    let path = String(cString: made)
    // Removed at exit (libFuzzer exits through exit() at the end of a run).
    atexit { try? FileManager.default.removeItem(atPath: scratchDirectory) }
    return path
}()

/// Writes `bytes` to `name` in the scratch directory with `mode`, replacing what was there, and
/// returns the path.
@discardableResult
public func writeScratchFile(_ name: String, _ bytes: [UInt8], mode: mode_t = 0o600) -> String {
    let path = scratchDirectory + "/" + name
    unlink(path)
    let descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
    require(descriptor >= 0, "cannot create \(path) (errno \(errno))")
    var written = 0
    bytes.withUnsafeBytes { raw in
        while written < raw.count {
            let count = write(descriptor, raw.baseAddress! + written, raw.count - written)
            require(count > 0, "cannot write \(path) (errno \(errno))")
            written += count
        }
    }
    fchmod(descriptor, mode)  // not subject to the umask
    close(descriptor)
    return path
}

public func removeScratchFile(_ name: String) {
    unlink(scratchDirectory + "/" + name)
}

/// Written by the task before it signals, read after the wait.
private final class BlockingBox<T>: @unchecked Sendable {
    var value: T?
}

/// Runs async work to completion from the (synchronous) fuzz callback.
public func runBlocking<T: Sendable>(_ body: @escaping @Sendable () async -> T) -> T {
    let box = BlockingBox<T>()
    let done = DispatchSemaphore(value: 0)
    Task.detached {
        box.value = await body()
        done.signal()
    }
    done.wait()
    return box.value!
}

/// What an exporter does with every date it prints: must not trap for any date a reader produced.
public func checkPrintable(_ date: Date?) {
    guard let date else { return }
    _ = Timestamps.format(date)
    _ = date.unixMilliseconds
}

/// Checks an imported conversation the way an export of it would touch it.
public func checkImported(_ imported: ImportedConversation) {
    checkPrintable(imported.conversation.createdAt)
    _ = try? imported.conversation.metadata?.encoded()
    for message in imported.messages {
        checkPrintable(message.createdAt)
        _ = try? message.metadata?.encoded()
        require(String(validating: Array(message.content.utf8), as: UTF8.self) != nil, "content is not valid UTF-8")
    }
}

// MARK: - Entry point

@_silgen_name("LLVMFuzzerRunDriver")
private func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt

/// Hands the process to libFuzzer. SwiftPM links an executable target with
/// `--defsym main=<Target>_main` (so that tests can link it), and a fuzz target has no main of
/// its own (-parse-as-library; libFuzzer's is shadowed by that defsym): each target defines
/// `<Target>_main` with @_cdecl and calls this.
public func runFuzzer(
    _ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt {
    var count = argc
    var arguments = argv
    return LLVMFuzzerRunDriver(&count, &arguments, callback)
}
