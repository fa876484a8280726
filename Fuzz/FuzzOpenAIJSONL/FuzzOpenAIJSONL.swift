import FuzzSupport
import Foundation

@testable import ChatLog

/// The OpenAI JSONL reader (Interchange/OpenAIJSONL.swift): the input is parsed as one line with
/// `parse(_:location:)`, then written to a file and read whole with `records(path:)` (the line
/// reader included). Invariants: only `ImportIssue` (per line) or `ChatLogError` (the file) come
/// out, an issue names its line, the line count agrees, and what a reader produced can be
/// exported (dates printed, metadata encoded).
/// The entry point SwiftPM links as main (see `runFuzzer`).
@_cdecl("FuzzOpenAIJSONL_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, fuzzInput)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzInput(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let input = fuzzBytes(start, count)
    do {
        let imported = try OpenAIJSONL.parse(input, location: "line 1")
        checkImported(imported)
        require(!imported.sourceID.isEmpty, "an empty source id")
    } catch {
        require(error.location == "line 1", "the issue names \(error.location)")
    }

    let path = writeScratchFile("input.jsonl", input)
    let lines = input.split(separator: 0x0A, omittingEmptySubsequences: false)
    let expectedLines = input.last == 0x0A ? lines.count - 1 : lines.count
    var seen = 0
    do {
        for record in try OpenAIJSONL.records(path: path) {
            seen += 1
            switch record {
            case .success(let imported): checkImported(imported)
            case .failure(let issue): require(issue.location.hasPrefix("line "), "the issue names \(issue.location)")
            }
        }
    } catch {
        fuzzFailure("records(path:) refused a readable file: \(error)")
    }
    require(seen <= max(expectedLines, 0), "\(seen) records from \(expectedLines) lines")
    return 0
}
