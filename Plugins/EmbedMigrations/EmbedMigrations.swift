import Foundation
import PackagePlugin

/// Compiles every `migrations/NNNN_name.sql` file at the package root into the target, as a Swift
/// array of (version, name, sql). The schema then lives in the binary: a `chatlog` copied to another
/// machine needs no resource bundle beside it. The PostgreSQL backend's target gets
/// `migrations/postgres/NNNN_name.sql` instead (the top-level folder stays the source of truth for
/// both backends' schemas).
@main
struct EmbedMigrations: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: any Target) throws -> [Command] {
        var directory = context.package.directoryURL.appending(path: "migrations")
        var importArguments: [String] = []
        if target.name == "ChatLogPostgres" {
            directory = directory.appending(path: "postgres")
            importArguments = ["--import", "ChatLog"]
        }
        let files = try FileManager.default
            .contentsOfDirectory(at: directory, includingPropertiesForKeys: nil)
            .filter { $0.pathExtension == "sql" }
            .sorted { $0.lastPathComponent < $1.lastPathComponent }
        let output = context.pluginWorkDirectoryURL.appending(path: "EmbeddedMigrations.swift")
        return [
            .buildCommand(
                displayName: "Embedding \(files.count) schema migrations",
                executable: try context.tool(named: "EmbedMigrationsTool").url,
                arguments: importArguments + [output.path] + files.map(\.path),
                inputFiles: files,
                outputFiles: [output]
            )
        ]
    }
}
