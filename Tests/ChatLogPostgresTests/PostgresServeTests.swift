import ChatLogTestSupport
import Foundation
import Testing

@testable import ChatLog
@testable import ChatLogPostgres

#if canImport(Glibc)
    import Glibc
#endif

extension PostgreSQLSuites.PostgresCLITests {
    /// Tests/ProxyHarness: the fake upstream (system python3) and the official SDKs (a venv from PyPI).
    static let harness = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("ProxyHarness")

    /// A started process whose output goes to files, stopped with SIGTERM.
    final class Background: Sendable {
        let process: ChildProcess
        let out: String
        let err: String

        init(_ executable: String, _ arguments: [String], env: [String: String], cwd: String) throws {
            out = cwd + "/bg-\(UUID().uuidString).out"
            err = out + ".err"
            process = try ChildProcess(executable, arguments, environment: env, directory: cwd, stdout: .file(out), stderr: .file(err))
        }

        var output: String { (try? String(contentsOfFile: out, encoding: .utf8)) ?? "" }
        var errors: String { (try? String(contentsOfFile: err, encoding: .utf8)) ?? "" }

        /// SIGTERM, then SIGKILL after 60 s; the exit status.
        func stop() async throws -> Int32 {
            process.signal(SIGTERM)
            for _ in 0..<6_000 where !process.hasExited { try await Task.sleep(for: .milliseconds(10)) }
            return process.stop().status
        }
    }

    @Test("chatlog serve on a PostgreSQL store: the official SDKs through the proxy with a proxy token; exchanges threaded, subjects and the app logged, SIGTERM writes everything; token revoke")
    func serveOnPostgres() async throws {
        try await withPostgresLocation { url, database in
            let home = NSTemporaryDirectory() + "/chatlog-pgserve-" + UUID().uuidString
            try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: home) }
            let key = MasterKey.generate()
            let base = ["HOME": home, "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"]
            var env = base
            env["CHATLOG_MASTER_KEY"] = key.exportBase64()
            env["CHATLOG_DB"] = url
            // The subjects' keys in a database of their own (CHATLOG_SUBJECT_KEYS).
            let server = try await PostgresTestServer.shared()
            let keysDatabase = "chatlog_keys_\(UInt32.random(in: 0...UInt32.max))"
            try await server.psqlOffPool("CREATE DATABASE \(keysDatabase)")
            defer { _ = try? server.psql("DROP DATABASE \(keysDatabase) WITH (FORCE)") }
            let keysURL = server.url(database: keysDatabase)
            env["CHATLOG_SUBJECT_KEYS"] = keysURL
            let store = try await ChatLogStore.create(url: url, key: .key(key))
            try store.close()

            let fake = try Background(
                "/usr/bin/python3",
                [Self.harness.appendingPathComponent("fake_upstream.py").path, "--cert-dir", home + "/certs", "--ready-file", home + "/ready.json"],
                env: base, cwd: home)
            defer { fake.process.stop() }
            for _ in 0..<3_000 where !FileManager.default.fileExists(atPath: home + "/ready.json") {
                #expect(!fake.process.hasExited, "the fake upstream exited: \(fake.errors)")
                try await Task.sleep(for: .milliseconds(20))
            }
            let ready = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: home + "/ready.json"))) as? [String: Any])
            let upstream = try #require(ready["https_port"] as? Int)
            let ca = try #require(ready["ca"] as? String)

            let created = try ProcessOutput.run(chatlogBinary(), ["token", "create", "billing-app"], env: env, cwd: home)
            #expect(created.status == 0 && created.out.hasPrefix("clp_"), "\(created)")
            let token = created.out.trimmingCharacters(in: .whitespacesAndNewlines)

            var serveEnv = env
            serveEnv["OPENAI_API_KEY"] = "sk-upstream-" + UUID().uuidString
            serveEnv["ANTHROPIC_API_KEY"] = "sk-ant-upstream-" + UUID().uuidString
            let serve = try Background(
                try chatlogBinary().path,
                [
                    "serve", "--listen", "127.0.0.1:0", "--openai-upstream", "https://127.0.0.1:\(upstream)/v1",
                    "--anthropic-upstream", "https://127.0.0.1:\(upstream)", "--upstream-ca", ca,
                ], env: serveEnv, cwd: home)
            var port = 0
            for _ in 0..<3_000 {
                if let match = serve.output.firstMatch(of: /listening on http:\/\/127\.0\.0\.1:([0-9]+)/) { port = Int(match.1) ?? 0 }
                if port != 0 || serve.process.hasExited { break }
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(port != 0, "chatlog serve did not start: \(serve.errors)")
            guard port != 0 else { return }

            // The official SDKs, as an app: a chat, its continuation (the whole history resent), a
            // streamed chat, an Anthropic message; then a revoked token.
            let ensure = try ProcessOutput.run(
                URL(fileURLWithPath: "/bin/bash"), [Self.harness.appendingPathComponent("ensure-venv").path], env: base, cwd: home, timeout: 600)
            #expect(ensure.status == 0, "\(ensure)")
            let python = ensure.out.trimmingCharacters(in: .whitespacesAndNewlines)
            let openAI: [String: Any] = ["sdk": "openai", "api": "chat", "base_url": "http://127.0.0.1:\(port)/v1", "api_key": token, "model": "gpt-4o"]
            var calls: [[String: Any]] = []
            calls.append(openAI.merging(["messages": [["role": "user", "content": "my card was charged twice"]], "user": "user-42"]) { $1 })
            calls.append(openAI.merging(["continue": true, "messages": [["role": "user", "content": "and the refund?"]], "user": "user-42"]) { $1 })
            calls.append(openAI.merging(["stream": true, "messages": [["role": "user", "content": "stream me a haiku"]]]) { $1 })
            calls.append([
                "sdk": "anthropic", "base_url": "http://127.0.0.1:\(port)", "api_key": token, "model": "claude-sonnet-4-5", "max_tokens": 64,
                "messages": [["role": "user", "content": "hello claude"]],
            ])
            let input = String(decoding: try JSONSerialization.data(withJSONObject: calls), as: UTF8.self)
            let results = try ProcessOutput.run(
                URL(fileURLWithPath: python), [Self.harness.appendingPathComponent("clients.py").path, input], env: base, cwd: home, timeout: 300)
            #expect(results.status == 0, "\(results)")
            let answers = results.out.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
            #expect(answers.count == 4 && answers.allSatisfy { $0["ok"] as? Bool == true }, "\(results.out)")
            let conversations = answers.map { (($0["headers"] as? [String: Any])?["x-chatlog-conversation"] as? String) ?? "" }
            #expect(conversations[0] != "" && conversations[0] == conversations[1], "the continuation was not threaded: \(conversations)")
            #expect(Set(conversations).count == 3)

            let revoke = try ProcessOutput.run(chatlogBinary(), ["token", "revoke", "billing-app"], env: env, cwd: home)
            #expect(revoke.status == 0, "\(revoke)")
            let refused = try ProcessOutput.run(
                URL(fileURLWithPath: python), [Self.harness.appendingPathComponent("clients.py").path, String(decoding: try JSONSerialization.data(withJSONObject: [calls[2]]), as: UTF8.self)],
                env: base, cwd: home, timeout: 300)
            #expect(refused.out.contains("\"status\": 401"), "\(refused)")

            #expect(try await serve.stop() == 0, "\(serve.errors)")
            #expect(serve.errors.contains("every accepted exchange was written"), "\(serve.errors)")
            #expect(!serve.errors.contains(serveEnv["OPENAI_API_KEY"]!) && !serve.errors.contains(token))

            let reopened = try await ChatLogStore.open(url: url, key: .key(key), subjectKeys: keysURL)
            defer { try? reopened.close() }
            let first = try await reopened.transcript(try #require(ConversationID(conversations[0])))
            #expect(first.messages.map(\.role) == [.user, .assistant, .user, .assistant])
            #expect(first.messages.first?.content == "my card was charged twice")
            #expect(first.conversation.subject == "user-42")
            // Every subject's conversation is sealed under its subject key (version 2), none under the data key alone.
            #expect(try database.psql("SELECT count(*) FROM conversations WHERE subject IS NOT NULL AND erasure_key_id IS NULL") == "0")
            #expect(try database.psql("SELECT count(*) FROM conversations WHERE erasure_key_id IS NOT NULL") != "0")
            if case .object(let metadata)? = first.messages.last?.metadata { #expect(metadata["app"] == .string("billing-app")) } else {
                Issue.record("no metadata on the completion")
            }
            #expect(try await reopened.conversations(ConversationQuery(subject: "user-42")).conversations.map(\.id.rawValue) == [conversations[0]])
            #expect(try await reopened.search("refund").hits.count >= 1)
            #expect(try await reopened.counts() == (3, 8))
            // The proxy's inserts count their own rows (migration 0011): totals and rows per key equal scans.
            #expect(try await reopened.stats() == (try PostgreSQLSuites.PostgresCountsTests.statsByScan(database)))
            #expect(try await PostgreSQLSuites.PostgresCountsTests.usageByStatus(reopened) == (try PostgreSQLSuites.PostgresCountsTests.usageByScan(database)))
            #expect(try database.psql("SELECT count(*) FROM proxy_threads") != "0")
            #expect(try await reopened.verify().ok)
            let tokens = try await reopened.proxyTokens()
            #expect(tokens.map(\.name) == ["billing-app"] && tokens[0].revokedAt != nil)
        }
    }
}
