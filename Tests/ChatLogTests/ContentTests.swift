import Foundation
import Testing

@testable import ChatLog

/// Message content is stored exactly: never cut at a NUL, never "repaired", refused when invalid.
@Suite struct ContentTests {
    @Test(arguments: [
        ([0xFF], "invalid byte"),
        ([0x61, 0xC3], "truncated sequence at the end"),
        ([0xE2, 0x82, 0x61], "truncated sequence in the middle"),
        ([0xC0, 0x80], "overlong NUL"),
        ([0xED, 0xA0, 0x80], "UTF-16 surrogate"),
        ([0xF4, 0x90, 0x80, 0x80], "beyond U+10FFFF"),
        ([0x68, 0x69, 0x80], "stray continuation byte"),
    ] as [([UInt8], String)])
    func invalidUTF8IsRefusedNotRepaired(bytes: [UInt8], label: String) {
        let error = #expect(throws: ChatLogError.self, "\(label)") { try NewMessage(role: .user, utf8Content: bytes) }
        guard case .invalidInput(let why)? = error else {
            Issue.record("\(label): expected invalidInput, got \(String(describing: error))")
            return
        }
        #expect(why.contains("UTF-8"))
    }

    @Test func validUTF8BytesAreTakenAsIs() throws {
        let text = "naïve 🌍 \u{0} e\u{301}"  // includes NUL and a combining accent (not normalised)
        let message = try NewMessage(role: .assistant, utf8Content: Array(text.utf8))
        #expect(Array(message.content.utf8) == Array(text.utf8))
        #expect(message.role == .assistant)
    }

    @Test func nulBytesRoundTrip() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let id = try store.createConversation(NewConversation(title: "a\0b", subject: "\0"))
            let contents = ["\0", "before\0after", "\0\0\0trailing\0", "e\u{301} vs \u{e9}"]
            for content in contents { try store.append(NewMessage(role: .user, content: content), to: id) }
            let transcript = try store.transcript(id)
            #expect(transcript.messages.map { Array($0.content.utf8) } == contents.map { Array($0.utf8) })
            #expect(transcript.conversation.title.map { Array($0.utf8) } == Array("a\0b".utf8))
            #expect(transcript.conversation.subject == "\0")
        }
    }

    @Test func emptyContentWorks() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let id = try store.createConversation(NewConversation(title: ""))
            try store.append(NewMessage(role: .user, content: ""), to: id)
            try store.append(try NewMessage(role: .user, utf8Content: [UInt8]()), to: id)
            let transcript = try store.transcript(id)
            #expect(transcript.messages.map(\.content) == ["", ""])
            #expect(transcript.conversation.title == "")
        }
    }

    @Test func tenMegabyteMessageRoundTrips() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let id = try store.createConversation()
            // Every byte value a UTF-8 text can hold, NULs included, in a 10 MB message.
            let pattern = "line \0 with naïve 🌍 text and\ttabs\n"
            let repeats = 10_000_000 / pattern.utf8.count + 1
            let content = String(repeating: pattern, count: repeats)
            #expect(content.utf8.count >= 10_000_000)
            let messageID = try store.append(NewMessage(role: .assistant, content: content), to: id)
            let read = try store.transcript(id).messages
            #expect(read.count == 1)
            #expect(read.first?.id == messageID)
            // Compare the bytes (not just String equality, which is canonical-equivalence based).
            #expect(read.first.map { $0.content.utf8.elementsEqual(content.utf8) } == true)
        }
    }

    @Test func contentOverTheLimitIsRefused() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let id = try store.createConversation()
            let content = String(repeating: "a", count: ChatLogStore.maximumContentBytes + 1)
            #expect {
                try store.append(NewMessage(role: .user, content: content), to: id)
            } throws: { error in
                guard case ChatLogError.invalidInput(let why) = error else { return false }
                return why.contains("limit")
            }
            #expect(throws: ChatLogError.self) {
                try store.logExchange(
                    ModelExchange(
                        conversation: .new(NewConversation()), prompt: [], completion: NewMessage(role: .assistant, content: content)))
            }
            #expect(try counts(store) == [1, 0])
        }
    }

    @Test func nonCanonicalUnicodeIsStoredAsGiven() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let id = try store.createConversation()
            let decomposed = "e\u{301}"
            let precomposed = "\u{e9}"
            try store.append(NewMessage(role: .user, content: decomposed), to: id)
            try store.append(NewMessage(role: .user, content: precomposed), to: id)
            let read = try store.transcript(id).messages.map { Array($0.content.utf8) }
            #expect(read == [Array(decomposed.utf8), Array(precomposed.utf8)])
        }
    }
}
