import FuzzSupport
import Foundation

@testable import ChatLog

/// The ChatGPT export reader (Interchange/ChatGPTExport.swift): the input is written as
/// `conversations.json` and read with `records(path:)`, the reader's only entry that takes the
/// file's bytes. Invariants: the file either throws `ChatLogError.invalidInput` or gives one
/// result per array element, each a conversation (keyed by its id, or by a hash of its content
/// when it has none) or an `ImportIssue` naming it, and whatever it
/// read can be exported (dates printed, metadata encoded).
/// The entry point SwiftPM links as main (see `runFuzzer`).
@_cdecl("FuzzChatGPT_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, fuzzInput)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzInput(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let input = fuzzBytes(start, count)
    let path = writeScratchFile("conversations.json", input)
    do {
        let results = try ChatGPTExport.records(path: path)
        for result in results {
            switch result {
            case .success(let imported):
                checkImported(imported)
                // A conversation's own id, or (an export without ids) a hash of its content.
                let byID = imported.sourceID.hasPrefix("chatgpt:") && imported.sourceID.count > 8
                let byContent =
                    imported.sourceID.hasPrefix("chatgpt-content:") && imported.sourceID.count > "chatgpt-content:".count
                require(byID || byContent, "source id \(imported.sourceID)")
            case .failure(let issue):
                require(issue.location.hasPrefix("conversation "), "the issue names \(issue.location)")
            }
        }
    } catch {
        guard case .invalidInput = error else { fuzzFailure("records(path:) threw \(error)") }
    }
    return 0
}
