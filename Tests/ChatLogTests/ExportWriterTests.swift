import Foundation
import Testing

@testable import ChatLog

/// The export's hand-written JSON line is byte for byte what `JSONEncoder` with
/// `[.sortedKeys, .withoutEscapingSlashes]` made of the same record (the format before it,
/// which `export | import` round trips rely on), for random transcripts with every optional field
/// present or absent and every kind of character in the strings.
@Suite struct ExportWriterTests {
    static func randomText(_ rng: inout SeededRandom) -> String {
        var text = ""
        for _ in 0..<rng.below(40) {
            switch rng.below(6) {
            case 0: text.unicodeScalars.append(Unicode.Scalar(UInt8(rng.below(0x20))))
            case 1: text += rng.pick(["\"", "\\", "/", "\u{7F}", "\u{2028}", "\u{2029}", "é", "日本", "😀", "\u{FEFF}", "<", "&"])
            default: text.unicodeScalars.append(Unicode.Scalar(UInt8(0x20 + rng.below(0x5F))))
            }
        }
        return text
    }

    static func randomValue(_ rng: inout SeededRandom, depth: Int = 0) -> JSONValue {
        switch depth > 2 ? rng.below(5) : rng.below(7) {
        case 0: return .null
        case 1: return .bool(rng.chance(50))
        case 2: return .integer(Int64(bitPattern: rng.next()) >> rng.below(60))
        case 3: return .number(Double(rng.below(1_000_000)) / 7 * (rng.chance(50) ? 1 : -1e10))
        case 4: return .string(randomText(&rng))
        case 5: return .array((0..<rng.below(4)).map { _ in randomValue(&rng, depth: depth + 1) })
        default:
            return .object(Dictionary((0..<rng.below(5)).map { _ in (randomText(&rng), randomValue(&rng, depth: depth + 1)) }, uniquingKeysWith: { a, _ in a }))
        }
    }

    @Test func linesEqualJSONEncoderOutput() throws {
        var rng = SeededRandom(seed: 0xE4)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        for round in 0..<2_000 {
            func maybe<T>(_ value: T) -> T? { rng.chance(50) ? value : nil }
            let conversationID = ConversationID(trusted: UUID().uuidString.lowercased())
            let messages = (0..<rng.below(5)).map { position -> Message in
                var metadata: JSONValue? = rng.chance(40) ? Self.randomValue(&rng) : nil
                if rng.chance(20) {
                    metadata = .object(["tool_calls": Self.randomValue(&rng), "tool_call_id": .string(Self.randomText(&rng)), "name": .string("n")])
                }
                return Message(
                    id: MessageID(trusted: UUID().uuidString.lowercased()), conversationID: conversationID, position: position,
                    role: rng.pick(Role.allCases), createdAt: Date(unixMilliseconds: Int64(rng.below(1 << 42))),
                    model: maybe(Self.randomText(&rng)), promptTokens: maybe(rng.below(100_000)), completionTokens: maybe(rng.below(100_000)),
                    latencyMilliseconds: maybe(rng.below(10_000)), finishReason: maybe(Self.randomText(&rng)), content: Self.randomText(&rng),
                    metadata: metadata)
            }
            let conversation = Conversation(
                id: conversationID, createdAt: Date(unixMilliseconds: Int64(rng.below(1 << 42))), updatedAt: Date(),
                title: maybe(Self.randomText(&rng)), subject: maybe(Self.randomText(&rng)), metadata: rng.chance(30) ? Self.randomValue(&rng) : nil,
                messageCount: messages.count)
            let record = ExportRecord(Transcript(conversation: conversation, messages: messages))
            let expected = try encoder.encode(record) + Data([0x0A])
            let line = try record.jsonLine(metadataEncoder: encoder)
            #expect(line == expected, "round \(round): \(String(decoding: line, as: UTF8.self))\n\(String(decoding: expected, as: UTF8.self))")
            if line != expected { break }
        }
    }
}
