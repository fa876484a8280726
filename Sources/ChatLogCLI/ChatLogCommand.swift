import ArgumentParser
import ChatLog

struct ChatLogCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chatlog",
        abstract: "Encrypted, searchable log of conversations with chat models.",
        discussion: """
            Every sensitive field is sealed with libsodium before it reaches SQLite. The master key comes from \
            CHATLOG_MASTER_KEY (base64; environment or ./.env), CHATLOG_MASTER_KEY_FILE (a 0600 file), \
            CHATLOG_PASSPHRASE_FILE, or a passphrase prompt on a terminal — never from the command line.

            \(ExitCodes.help)
            """,
        version: "chatlog \(ChatLogVersion.current) (store schema \(ChatLogVersion.schema))",
        subcommands: [
            InitCommand.self, LogCommand.self, ImportCommand.self, ExportCommand.self, ListCommand.self, ShowCommand.self,
            SearchCommand.self, StatsCommand.self, RemoveCommand.self, ForgetCommand.self, PruneCommand.self, VerifyCommand.self, BackupCommand.self,
            CopyCommand.self, KeyCommand.self, DemoCommand.self, StatusCommand.self, ServeCommand.self, TokenCommand.self,
        ]
    )
}

struct KeyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "key",
        abstract: "Manage the master key and the data and index keys.",
        subcommands: [KeyGenerateCommand.self, KeyStatusCommand.self, KeyRotateCommand.self, KeyRewrapCommand.self, KeyRetireCommand.self]
    )
}
