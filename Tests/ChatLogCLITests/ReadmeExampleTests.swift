import Foundation
import Testing

/// The README's library example, type-checked against the library as built: it cannot drift
/// from the API, and it must compile without a single warning (an `await` that picks a
/// synchronous overload warns, and blocks a thread at run time).
@Suite struct ReadmeExampleTests {
    static var packageRoot: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }

    /// The first ```swift block after "## Using the library".
    static func example() throws -> String {
        let readme = try String(contentsOf: packageRoot.appendingPathComponent("README.md"), encoding: .utf8)
        guard let section = readme.range(of: "## Using the library"),
            let open = readme.range(of: "```swift\n", range: section.upperBound..<readme.endIndex),
            let close = readme.range(of: "\n```", range: open.upperBound..<readme.endIndex)
        else { throw CLITestError("README.md has no ```swift block under \"## Using the library\"") }
        return String(readme[open.upperBound..<close.lowerBound])
    }

    @Test func theLibraryExampleCompilesWithoutWarnings() throws {
        let example = try Self.example()
        #expect(example.contains("@main"), "the example is an @main type, so that its awaits pick the async forms")
        // The modules `swift build` made for this test bundle, and the C module maps they need.
        let products = try ChatLogBinary.url().deletingLastPathComponent()
        let scratch = products.deletingLastPathComponent().deletingLastPathComponent()
        let moduleMaps = [
            Self.packageRoot.appendingPathComponent("Sources/CSodium/module.modulemap"),
            scratch.appendingPathComponent("checkouts/GRDB.swift/Sources/GRDBSQLite/module.modulemap"),
            scratch.appendingPathComponent("checkouts/swift-system/Sources/CSystem/include/module.modulemap"),
            // SwiftPM writes the module map of a C target with an include/ folder into the build folder.
            products.appendingPathComponent("CSQLiteConfig.build/module.modulemap"),
        ]
        for map in moduleMaps where !FileManager.default.fileExists(atPath: map.path) {
            Issue.record("module map not found: \(map.path)")
            return
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("chatlog-readme-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let source = directory.appendingPathComponent("App.swift")
        try Data(example.utf8).write(to: source)
        let arguments =
            ["swiftc", "-typecheck", "-parse-as-library", "-swift-version", "6", "-I", products.appendingPathComponent("Modules").path]
            + moduleMaps.flatMap { ["-Xcc", "-fmodule-map-file=\($0.path)"] } + [source.path]
        let result = try run(
            arguments, env: ProcessInfo.processInfo.environment, stdin: nil, cwd: directory,
            executable: URL(fileURLWithPath: "/usr/bin/env"), timeout: 300)
        #expect(result.status == 0, "\(result)")
        #expect(!result.err.contains("warning:") && !result.out.contains("warning:"), "\(result)")
    }
}
