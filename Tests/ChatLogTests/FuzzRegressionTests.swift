import Foundation
import Testing

@testable import ChatLog

/// Inputs that crashed chatlog's readers, kept in Fuzz/regressions/<fuzz target>/ (Fuzz/README.md)
/// and replayed here on every test run: each must now give the documented error or import issue.
@Suite struct FuzzRegressionTests {
    static let regressions = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent()  // Tests/ChatLogTests
        .deletingLastPathComponent()  // Tests
        .deletingLastPathComponent()  // package root
        .appendingPathComponent("Fuzz/regressions")

    static func path(_ target: String, _ file: String) -> String {
        regressions.appendingPathComponent(target).appendingPathComponent(file).path
    }

    /// Every stored input, as "<target>/<file>".
    static let allInputs: [String] = {
        let manager = FileManager.default
        let targets = (try? manager.contentsOfDirectory(atPath: regressions.path)) ?? []
        return targets.sorted().flatMap { target in
            ((try? manager.contentsOfDirectory(atPath: regressions.appendingPathComponent(target).path)) ?? [])
                .filter { !$0.hasPrefix(".") }.sorted().map { "\(target)/\($0)" }
        }
    }()

    // MARK: - llm logs.db: a value of another type than llm writes

    // GRDB's `row[column]` traps (`try!`) when a value cannot be decoded as the type asked for;
    // LLMLogs read every column that way, so a logs.db holding, say, a non-UTF-8 blob in a TEXT
    // column or text in an INTEGER column (damage, or a hand-made file) killed `chatlog import
    // --format llm`, printing the row's values (the conversation's text) in the crash message.

    @Test(
        "A wrong-typed value inside one conversation fails that conversation only",
        arguments: [
            ("classic-prompt-not-utf8.sqlite", "conversation ", "a value in column prompt is not text"),
            ("parts-position-text.sqlite", "thread ", "a value in column position is not an integer"),
            ("threads-name-not-utf8.sqlite", "thread ", "a value in column name is not text"),
        ])
    func wrongTypeInAConversation(file: String, location: String, problem: String) throws {
        let results = try LLMLogs.records(path: Self.path("FuzzLLMLogs", file))
        let failures = results.compactMap { result -> ImportIssue? in
            if case .failure(let issue) = result { return issue }
            return nil
        }
        // The damaged row fails what it belongs to (a message can be on several threads' chains).
        #expect(!failures.isEmpty)
        #expect(failures.allSatisfy { $0.location.hasPrefix(location) && $0.problem == problem }, "\(failures)")
        // The rest of the file still imports.
        #expect(results.count > failures.count)
        // The message names the column, never the value (it could be conversation text).
        #expect(failures.allSatisfy { !$0.description.contains("Capital") })
    }

    @Test(
        "A wrong-typed value the whole file depends on refuses the file",
        arguments: [
            ("threads-datetime-blob.sqlite", "a value in column datetime_utc is not text"),
            ("turns-tokens-text.sqlite", "a value in column input_tokens is not an integer"),
        ])
    func wrongTypeOutsideAConversation(file: String, problem: String) throws {
        let path = Self.path("FuzzLLMLogs", file)
        #expect(throws: ChatLogError.invalidInput("cannot read \(path) as an llm logs.db: \(problem)")) {
            try LLMLogs.records(path: path)
        }
    }

    // MARK: - Replay of every stored input

    /// Runs each stored input through the reader its fuzz target drives (as the target does) and
    /// requires the documented outcome: a result, or `ChatLogError`/`ImportIssue`.
    @Test("Every stored fuzz input replays without a crash", arguments: allInputs)
    func replay(_ input: String) async throws {
        let target = String(input.prefix { $0 != "/" })
        let bytes = try [UInt8](Data(contentsOf: Self.regressions.appendingPathComponent(input)))
        try await withTemporaryDirectory { directory in
            let file = directory.file("input")
            try Data(bytes).write(to: URL(fileURLWithPath: file))
            switch target {
            case "FuzzLLMLogs":
                do throws(ChatLogError) {
                    let results = try LLMLogs.records(path: file)
                    for case .success(let imported) in results { _ = imported.messages.count }
                } catch {
                    guard case .invalidInput = error else { Issue.record("unexpected \(error)"); return }
                }
            case "FuzzChatGPT":
                do throws(ChatLogError) {
                    _ = try ChatGPTExport.records(path: file)
                } catch {
                    guard case .invalidInput = error else { Issue.record("unexpected \(error)"); return }
                }
            case "FuzzOpenAIJSONL":
                _ = try? OpenAIJSONL.parse(bytes, location: "line 1")
                for _ in try OpenAIJSONL.records(path: file) {}
            case "FuzzSearchQuery":
                let split = bytes.firstIndex(of: 0) ?? bytes.count
                let text = String(decoding: bytes[min(split + 1, bytes.count)...], as: UTF8.self)
                do throws(ChatLogError) {
                    let query = try SearchQuery(parsing: String(decoding: bytes[..<split], as: UTF8.self))
                    let matcher = QueryMatcher(query)
                    let tokens = Tokenizer.tokens(text)
                    #expect(matcher.matches(matcher.scan(text)) == query.matches(tokens: tokens, set: Set(tokens)))
                } catch {
                    guard case .invalidInput = error else { Issue.record("unexpected \(error)"); return }
                }
            case "FuzzKeyFile":
                _ = try? MasterKey(base64: String(decoding: bytes, as: UTF8.self))
                if !bytes.isEmpty {
                    let contents = bytes.withUnsafeBytes { SecureBytes(copying: $0) }
                    _ = try? MasterKey(keyFileContents: contents, path: file)
                    _ = try? Passphrase(fileContents: contents)
                }
            case "FuzzDotEnv":
                let settings = try await ChatLogSettings.load(processEnvironment: [:], dotEnvPath: file)
                _ = try? settings.masterKeySource()
            case "FuzzSealedValue":
                let rest = Array(bytes.dropFirst())
                _ = try? SealedValue.keyID(of: rest)
                let key = SecureBytes(count: 32)
                _ = rest.withUnsafeBytes { try? SealedValue.open($0, key: key, context: FieldContext(table: "t", column: "c", rowID: "r")) }
            default:
                Issue.record("no replay for fuzz target \(target)")
            }
        }
    }

    // MARK: - Key files: base64 with a byte outside the alphabet

    /// libsodium's base64 decoder took a byte ≥ 0x80 in the middle of a key file's base64 for a
    /// valid character, so 44 base64 characters with 0xFC among them became a key (FuzzKeyFile).
    @Test func aKeyFileWithAByteOutsideTheBase64AlphabetIsRefused() throws {
        let bytes = try Data(contentsOf: URL(fileURLWithPath: Self.path("FuzzKeyFile", "base64-with-high-byte.key")))
        #expect(bytes.contains(0xFC) && bytes.count != MasterKey.byteCount)
        let contents = bytes.withUnsafeBytes { SecureBytes(copying: $0) }
        #expect(throws: ChatLogError.self) { try MasterKey(keyFileContents: contents, path: "key") }
        // The same text with a base64 character in place of the stray byte is a key: only the byte is refused.
        let clean = Data(bytes.map { $0 == 0xFC ? UInt8(ascii: "A") : $0 })
        let cleanContents = clean.withUnsafeBytes { SecureBytes(copying: $0) }
        #expect(throws: Never.self) { try MasterKey(keyFileContents: cleanContents, path: "key") }
        #expect(throws: ChatLogError.self) { try MasterKey(base64: String(decoding: bytes, as: UTF8.self)) }
    }
}
