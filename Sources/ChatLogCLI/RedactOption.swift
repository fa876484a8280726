import ArgumentParser
import ChatLog

/// `--redact` of `log` and `import`: whether secrets are replaced before sealing.
enum RedactMode: String, CaseIterable, ExpressibleByArgument {
    case secrets
    case none

    /// The redactor to apply, or nil for `none`.
    var redactor: SecretRedactor? { self == .secrets ? SecretRedactor() : nil }

    static let help: ArgumentHelp = "secrets (replace API keys, tokens, passwords and private keys with [REDACTED:kind]) or none (default)."
}
