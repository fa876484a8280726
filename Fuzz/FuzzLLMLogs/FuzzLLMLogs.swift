import FuzzSupport
import Foundation

@testable import ChatLog

/// The llm logs.db reader (Interchange/LLMLogs.swift): the input is written as a SQLite file
/// and read with `records(path:)` (read-only). Seeded with the real fixtures
/// (Tests/Fixtures/llm/*.db), so the fuzzer mutates real llm databases. Invariants: only
/// `ChatLogError` (whole file) or `ImportIssue` (one conversation) come out, and whatever it read
/// can be exported (dates printed, metadata encoded).
/// The entry point SwiftPM links as main (see `runFuzzer`).
@_cdecl("FuzzLLMLogs_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, fuzzInput)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzInput(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let input = fuzzBytes(start, count)
    for suffix in ["-wal", "-shm", "-journal"] { removeScratchFile("logs.db" + suffix) }
    let path = writeScratchFile("logs.db", input)
    do {
        for result in try LLMLogs.records(path: path) {
            switch result {
            case .success(let imported):
                checkImported(imported)
                require(imported.sourceID.hasPrefix("thread:") || imported.sourceID.hasPrefix("conversation:"), "source id \(imported.sourceID)")
            case .failure(let issue):
                require(
                    issue.location.hasPrefix("thread ") || issue.location.hasPrefix("conversation "), "the issue names \(issue.location)")
            }
        }
    } catch {
        switch error {
        case .invalidInput, .storage, .busy: break
        default: fuzzFailure("records(path:) threw \(error)")
        }
    }
    return 0
}
