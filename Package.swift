// swift-tools-version: 6.2
import Foundation
import PackageDescription

let strict: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "chatlog",
    products: [
        .library(name: "ChatLog", targets: ["ChatLog"]),
        // The PostgreSQL backend: its own library, so that apps storing in SQLite do not build
        // postgres-nio (docs/ARCHITECTURE.md §10).
        .library(name: "ChatLogPostgres", targets: ["ChatLogPostgres"]),
        .executable(name: "chatlog", targets: ["ChatLogCLI"]),
        .executable(name: "chatlog-bench", targets: ["ChatLogBenchmarks"]),
        .executable(name: "chatlog-test-driver", targets: ["ChatLogTestDriver"]),
        .executable(name: "chatlog-pg-bench", targets: ["ChatLogPostgresBench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/groue/GRDB.swift", exact: "7.10.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-configuration", from: "1.4.0"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
        // The logging proxy (`chatlog serve`, target ChatLogServer) only; ChatLog does not depend on them.
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-async-algorithms", from: "1.1.4"),
    ],
    targets: [
        // libsodium from the system (Debian: libsodium-dev), found through pkg-config.
        .systemLibrary(
            name: "CSodium",
            pkgConfig: "libsodium",
            providers: [.apt(["libsodium-dev"])]
        ),
        // Build-time tool: turns migrations/*.sql into a Swift source file compiled into ChatLog,
        // so the schema travels inside the binary (no resource bundle to lose when it is copied).
        .executableTarget(
            name: "EmbedMigrationsTool",
            swiftSettings: strict
        ),
        .plugin(
            name: "EmbedMigrations",
            capability: .buildTool(),
            dependencies: ["EmbedMigrationsTool"]
        ),
        .target(
            name: "ChatLog",
            dependencies: [
                "CSodium",
                "CSQLiteConfig",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Configuration", package: "swift-configuration"),
            ],
            swiftSettings: strict,
            plugins: ["EmbedMigrations"]
        ),
        // The PostgreSQL backend behind the storage seam (Storage/): sealed rows only, never a key.
        // Its schema is migrations/postgres/NNNN_name.sql, embedded by the same plugin.
        .target(
            name: "ChatLogPostgres",
            dependencies: [
                "ChatLog",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                // ConnectionPoolError, which PostgresClient.withConnection throws as it is.
                .product(name: "_ConnectionPoolModule", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict,
            plugins: ["EmbedMigrations"]
        ),
        // sqlite3_db_config (variadic, so it needs C): SQLite's defensive mode on every connection.
        .target(name: "CSQLiteConfig", linkerSettings: [.linkedLibrary("sqlite3")]),
        // prctl/setrlimit for the CLI's process hygiene (prctl is variadic, so it needs C).
        .target(name: "CProcessHygiene"),
        // The logging proxy behind `chatlog serve` (docs/ARCHITECTURE.md §10): Hummingbird server,
        // AsyncHTTPClient upstream, a recorder service that group-commits exchanges into the store.
        .target(
            name: "ChatLogServer",
            dependencies: [
                "ChatLog",
                "CProcessHygiene",
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "AsyncAlgorithms", package: "swift-async-algorithms"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "ChatLogCLI",
            dependencies: [
                "ChatLog",
                "ChatLogPostgres",
                "ChatLogServer",
                "CProcessHygiene",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "ChatLogBenchmarks",
            dependencies: [
                "ChatLog",
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            swiftSettings: strict
        ),
        // The chatlog side of scripts/bench-postgres (PostgreSQL writers and searches, one process
        // each); its own target so that chatlog-bench does not build postgres-nio.
        .executableTarget(
            name: "ChatLogPostgresBench",
            dependencies: ["ChatLog", "ChatLogPostgres"],
            swiftSettings: strict
        ),
        // Small executable the tests start as separate processes (multi-process writers, kills).
        .executableTarget(
            name: "ChatLogTestDriver",
            dependencies: ["ChatLog", "ChatLogPostgres", .product(name: "GRDB", package: "GRDB.swift")],
            swiftSettings: strict
        ),
        // Child processes for the test suites (posix_spawn and waitpid, not Foundation's Process).
        .target(name: "ChatLogTestSupport", path: "Tests/ChatLogTestSupport", swiftSettings: strict),
        .testTarget(
            name: "ChatLogTests",
            dependencies: [
                "ChatLog",
                "ChatLogTestSupport",
                "CSodium",
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            swiftSettings: strict
        ),
        // Runs against a throwaway PostgreSQL cluster the tests start themselves
        // (PostgresTestServer.swift; scripts/with-deps installs the server).
        .testTarget(
            name: "ChatLogPostgresTests",
            dependencies: [
                "ChatLog",
                "ChatLogTestSupport",
                "ChatLogPostgres",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "ChatLogCLITests",
            dependencies: ["ChatLog", "ChatLogTestSupport"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "ChatLogServerTests",
            dependencies: [
                "ChatLog", "ChatLogServer", "ChatLogTestSupport",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: strict
        ),
    ]
)

// libFuzzer targets (Fuzz/, scripts/fuzz): only with CHATLOG_FUZZ=1, so that a normal `swift build`
// or `swift test` never sees them. scripts/fuzz builds them with AddressSanitizer and fuzzer
// coverage into their own scratch path; each defines LLVMFuzzerTestOneInput (libFuzzer provides
// main, hence -parse-as-library) and uses internals through `@testable import ChatLog`.
if ProcessInfo.processInfo.environment["CHATLOG_FUZZ"] == "1" {
    let fuzzTargets = [
        "FuzzSealedValue", "FuzzKeyFile", "FuzzDotEnv", "FuzzSearchQuery", "FuzzOpenAIJSONL", "FuzzChatGPT", "FuzzLLMLogs",
    ]
    package.targets.append(
        .target(
            name: "FuzzSupport", dependencies: ["ChatLog"], path: "Fuzz/FuzzSupport",
            swiftSettings: strict))
    for name in fuzzTargets {
        package.targets.append(
            .executableTarget(
                name: name,
                dependencies: ["ChatLog", "FuzzSupport", "CSodium", .product(name: "GRDB", package: "GRDB.swift")],
                path: "Fuzz/\(name)",
                swiftSettings: strict + [.unsafeFlags(["-parse-as-library"])],
                // libFuzzer (and its main) is linked into these executables only: scripts/fuzz
                // instruments every module with `-Xfrontend -sanitize=fuzzer` instead of
                // `-sanitize=fuzzer`, which would also link libFuzzer's main into the
                // EmbedMigrationsTool build tool and fail there (duplicate main).
                linkerSettings: [.unsafeFlags(["-sanitize=fuzzer,address"])]))
        package.products.append(.executable(name: name, targets: [name]))
    }
}
