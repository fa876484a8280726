import ArgumentParser
import ChatLog
import Foundation

struct TokenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token",
        abstract: "Manage the proxy tokens clients of `chatlog serve` present when the proxy holds the upstream keys.",
        subcommands: [TokenCreateCommand.self, TokenListCommand.self, TokenRevokeCommand.self]
    )
}

struct TokenCreateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "Create a token for an app and print it once (only a keyed hash of it is stored).",
        discussion: "The app's name is logged with every exchange made with the token."
    )

    @OptionGroup var store: StoreOptions
    @OptionGroup var output: OutputOptions
    @Argument(help: "The app's name: 1 to 64 letters, digits, '-', '_' or '.'.")
    var name: String

    func run() async throws {
        try await reportingErrors {
            let opened = try await StoreAccess.open(store)
            let token = try await opened.createProxyToken(name: name)
            if output.json {
                try CLIOutput.json(["name": name, "token": token])
            } else {
                CLIOutput.line(token)
                if CLIOutput.stdoutIsTerminal { CLIOutput.note("token for \(name) printed once; it cannot be shown again") }
            }
        }
    }
}

struct TokenListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the proxy tokens (names and dates, never the tokens).")

    @OptionGroup var store: StoreOptions
    @OptionGroup var output: OutputOptions

    func run() async throws {
        try await reportingErrors {
            let opened = try await StoreAccess.openForReading(store)
            let tokens = try await opened.proxyTokens()
            if output.json {
                try CLIOutput.json(
                    tokens.map { token in
                        TokenJSON(name: token.name, createdAt: Timestamps.format(token.createdAt), revokedAt: token.revokedAt.map { Timestamps.format($0) })
                    })
            } else {
                for token in tokens {
                    let state = token.revokedAt.map { "revoked " + Timestamps.format($0) } ?? "valid"
                    CLIOutput.line("\(token.name)\tcreated \(Timestamps.format(token.createdAt))\t\(state)")
                }
            }
        }
    }
}

/// `token list --json`: `revoked_at` is `null` for a valid token.
struct TokenJSON: Encodable {
    let name: String
    let createdAt: String
    @JSONNullable var revokedAt: String?

    init(name: String, createdAt: String, revokedAt: String?) {
        self.name = name
        self.createdAt = createdAt
        self.revokedAt = revokedAt
    }

    enum CodingKeys: String, CodingKey {
        case name
        case createdAt = "created_at"
        case revokedAt = "revoked_at"
    }
}

struct TokenRevokeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "revoke", abstract: "Revoke a proxy token; the proxy refuses it from then on.")

    @OptionGroup var store: StoreOptions
    @Argument(help: "The token's name.")
    var name: String

    func run() async throws {
        try await reportingErrors {
            let opened = try await StoreAccess.open(store)
            guard try await opened.revokeProxyToken(name: name) else {
                throw ChatLogError.invalidInput("no valid token named \(name)")
            }
            CLIOutput.line("revoked \(name)")
        }
    }
}
