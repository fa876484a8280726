import Foundation
import Testing

@Suite struct DemoCommandTests {
    @Test func showsTheTranscriptAndFindsNoSensitiveWordInTheFiles() throws {
        let sandbox = try Sandbox()
        // No key needed, and none taken from the environment.
        let result = try sandbox.chatlog(["demo"], env: sandbox.baseEnvironment)
        #expect(result.status == 0, "\(result)")
        let out = result.out
        // The transcript, read back with the key (between steps 3 and 4).
        let transcriptStart = try #require(out.range(of: "3. Logged"), "\(result)").upperBound
        let transcriptEnd = try #require(out.range(of: "4. Search"), "\(result)").lowerBound
        let transcript = out[transcriptStart..<transcriptEnd]
        for expected in ["Dosage question", "patient-4711", "metformin", "HbA1c", "user", "assistant", "gpt-4o-mini"] {
            #expect(transcript.contains(expected), "the transcript lacks \(expected): \(result)")
        }
        // The search of the raw files.
        let report = try #require(out.range(of: "Searching every file of the store"), "\(result)").upperBound
        let lines = out[report...].split(separator: "\n")
        // Search, stats and a rotation ran.
        #expect(out.contains("[March] [invoice]"), "\(result)")
        #expect(out.contains("Rotated the data key") && out.contains("retired"), "\(result)")
        for word in ["metformin", "HbA1c", "sk-live-51Hx", "patient-4711", "Dosage question", "4242"] {
            let line = lines.first { $0.trimmingCharacters(in: .whitespaces).hasPrefix(word) }
            #expect(line?.hasSuffix("not found") == true, "\(word): \(line ?? "no line")")
        }
        #expect(!out.contains("FOUND"), "\(result)")
        // Its temporary folder (under our TMPDIR) is gone.
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: sandbox.root.appendingPathComponent("tmp").path)
        #expect(leftovers.isEmpty, "demo left \(leftovers)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: sandbox.directory.path).isEmpty)
    }
}

@Suite struct HelpTests {
    @Test func rootHelpListsTheExitCodes() throws {
        let sandbox = try Sandbox()
        let result = try sandbox.chatlog(["--help"], env: sandbox.baseEnvironment)
        #expect(result.status == 0, "\(result)")
        let help = collapsingWhitespace(result.out)
        for entry in [
            "0 success", "1 other error", "4 integrity failure", "64 usage error", "65 invalid input",
            "66 store, conversation or key not found", "75 busy", "77 wrong, missing or refused master key",
        ] {
            #expect(help.contains(entry), "help lacks “\(entry)”: \(result.out)")
        }
        for command in ["init", "log", "list", "show", "key", "demo"] {
            #expect(help.contains(" \(command) "), "help lacks the \(command) command")
        }
    }

    @Test func unknownSubcommandIsAUsageError() throws {
        let sandbox = try Sandbox()
        let result = try sandbox.chatlog(["frobnicate"], env: sandbox.baseEnvironment)
        #expect(result.status == 64, "\(result)")
    }
}
