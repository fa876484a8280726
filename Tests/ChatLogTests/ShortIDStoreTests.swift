import Foundation
import Testing

@testable import ChatLog

/// Short ids in the library: prefix resolution and the shortest unique prefixes.
@Suite struct ShortIDStoreTests {
    @Test func prefixesResolveAndShortestPrefixesAreUnique() async throws {
        try await withTemporaryDirectory { directory in
            let store = try makeStore(in: directory)
            let ids = [
                "0193a1b2-0000-7000-8000-000000000001", "0193a1b2-0000-7000-8000-000000000002", "0193a1b3-0000-7000-8000-000000000001",
                "aaaaaaaa-bbbb-7000-8000-000000000001",
            ]
            for id in ids { _ = try await store.createConversation(NewConversation(id: ConversationID(id)!)) }

            #expect(try await store.conversationID(matching: "aaaaaaaa").rawValue == ids[3])
            #expect(try await store.conversationID(matching: "0193A1B3").rawValue == ids[2])
            #expect(try await store.conversationID(matching: "0193a1b2-0000-7000-8000-000000000002").rawValue == ids[1])
            await #expect(throws: ChatLogError.invalidInput(
                "the id prefix 0193a1b2 matches several conversations: \(ids[0]), \(ids[1])")) {
                try await store.conversationID(matching: "0193a1b2")
            }
            await #expect(throws: ChatLogError.conversationNotFound("bbbbbbbb")) { try await store.conversationID(matching: "bbbbbbbb") }
            for bad in ["0193a1b", "0193a1b2x", "0193a1b2-0000-7000-8000-0000000000011", "zzzzzzzz", "0193a1b2_0000"] {
                await #expect(throws: ChatLogError.self, "\(bad)") { try await store.conversationID(matching: bad) }
            }

            let short = try await store.shortIDs(ids)
            #expect(short[ids[3]] == "aaaaaaaa")
            #expect(short[ids[2]] == "0193a1b3")
            #expect(short[ids[0]] == ids[0] && short[ids[1]] == ids[1])
            for (id, prefix) in short {
                #expect(id.hasPrefix(prefix) && !prefix.hasSuffix("-"))
                #expect(try await store.conversationID(matching: prefix).rawValue == id)
            }
            try store.close()
        }
    }

    @Test func aShortIDNeverEndsAtAHyphen() {
        #expect(ShortIDs.shortest("0193a1b2-0000-7000-8000-000000000001", neighbours: ["0193a1b2-1000-7000-8000-000000000001"]) == "0193a1b2-0")
        #expect(ShortIDs.shortest("0193a1b2-0000-7000-8000-000000000001", neighbours: ["0193a1b3-0000-7000-8000-000000000001"]) == "0193a1b2")
        #expect(ShortIDs.shortest("0193a1b2-0000-7000-8000-000000000001", neighbours: []) == "0193a1b2")
    }
}
