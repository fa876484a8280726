import ChatLog
import NIOCore
import NIOSSL
import PostgresNIO
import _ConnectionPoolModule

/// PostgreSQL and connection errors as one-line ``ChatLogError``s (docs/OPERATIONS.md,
/// "PostgreSQL"). Only the server's message and SQLSTATE are kept: never its DETAIL (which can
/// quote row values), a query's bound values, or a password.
enum PostgresErrors {
    static func map(_ error: any Error, location: PostgresLocation) -> ChatLogError {
        if let error = error as? ChatLogError { return error }
        if let error = error as? PSQLError { return map(error, location: location) }
        if error is PostgresStorage.AbortedTransaction { return abortedTransaction(location) }
        if let error = error as? ConnectionPoolError { return map(error, location: location) }
        if error is PostgresConnection.Closed {
            return .storage("the PostgreSQL server at \(location) closed the connection (restarted or terminated the session); nothing was written by the failed command")
        }
        if error is NIOSSLError || error is BoringSSLError {
            return .storage("TLS with the PostgreSQL server at \(location) failed (\(tlsReason(error))); check sslmode and sslrootcert")
        }
        if let error = error as? IOError {
            return .storage("cannot connect to the PostgreSQL server at \(location) (\(error.description))")
        }
        if error is ChannelError {
            return .storage("the connection to the PostgreSQL server at \(location) failed (\(error))")
        }
        return .storage("PostgreSQL at \(location): \(type(of: error))")
    }

    /// The pool's own errors, which `PostgresClient.withConnection` passes on unconverted.
    static func map(_ error: ConnectionPoolError, location: PostgresLocation) -> ChatLogError {
        switch error {
        case .connectionCreationCircuitBreakerTripped:
            // The pool retried for a minute (postgres-nio's circuit breaker) without one new connection.
            return .storage(
                "cannot connect to the PostgreSQL server at \(location): no new connection could be opened for a minute (the server is down or refuses connections, or the database is gone); nothing was written by the failed command")
        case .requestCancelled:
            return .busy("PostgreSQL at \(location): the command was cancelled while it waited for a connection")
        default:
            return .storage("the connection to PostgreSQL at \(location) was closed by chatlog")
        }
    }

    static func abortedTransaction(_ location: PostgresLocation) -> ChatLogError {
        .storage("PostgreSQL at \(location): a statement of the transaction failed, so nothing of it was written")
    }

    static func map(_ error: PSQLError, location: PostgresLocation) -> ChatLogError {
        switch error.code {
        case .server:
            let state = error.serverInfo?[.sqlState] ?? "?????"
            let message = error.serverInfo?[.message].map { PostgresLocation.printable($0) } ?? "no message"
            switch state {
            case "28P01", "28000":
                let source = location.passwordSource.map { " (password from \($0))" } ?? " (no password given: set PGPASSWORD or ~/.pgpass)"
                return .storage("the PostgreSQL server at \(location) refused user \(location.user)\(source): \(message)")
            case "3D000": return .storage("the PostgreSQL server at \(location) has no database \(location.database): create it first")
            case "42501": return .storage("PostgreSQL at \(location): permission denied (\(message)); the user needs the privileges docs/OPERATIONS.md lists")
            case "57014": return .busy("PostgreSQL at \(location) cancelled a statement (statement_timeout or a cancel request)")
            case "55P03", "40P01", "40001":
                return .busy("PostgreSQL at \(location): \(message) (SQLSTATE \(state)); try again")
            case "57P01", "57P02", "57P03":
                return .storage(
                    "the PostgreSQL server at \(location) ended the session (SQLSTATE \(state): shutdown, restart or an administrator's command); nothing was written by the failed command")
            case "25P02": return abortedTransaction(location)
            case "53300": return .busy("PostgreSQL at \(location) has no connection slot left: \(message); try again or raise the limit")
            default: return .storage("PostgreSQL at \(location): \(message) (SQLSTATE \(state))")
            }
        case .sslUnsupported:
            return .storage("the PostgreSQL server at \(location) does not offer TLS, which sslmode=\(location.sslMode.rawValue) requires")
        case .failedToAddSSLHandler:
            return .storage("TLS with the PostgreSQL server at \(location) could not be set up; check sslrootcert")
        case .authMechanismRequiresPassword:
            return .storage("the PostgreSQL server at \(location) asks user \(location.user) for a password: set PGPASSWORD or ~/.pgpass (never on the command line)")
        case .unsupportedAuthMechanism, .saslError:
            return .storage("authenticating user \(location.user) with the PostgreSQL server at \(location) failed (\(error.code))")
        case .serverClosedConnection, .uncleanShutdown:
            return .storage("the PostgreSQL server at \(location) closed the connection (restarted or terminated the session); nothing was written by the failed command")
        case .connectionError:
            if let underlying = error.underlying {
                if underlying is NIOSSLError || underlying is BoringSSLError {
                    return .storage("TLS with the PostgreSQL server at \(location) failed (\(tlsReason(underlying))); check sslmode and sslrootcert")
                }
                if let io = underlying as? IOError {
                    return .storage("cannot connect to the PostgreSQL server at \(location) (\(io.description))")
                }
                if underlying is ChannelError {
                    return .storage("cannot connect to the PostgreSQL server at \(location) (\(underlying))")
                }
            }
            return .storage("cannot connect to the PostgreSQL server at \(location)")
        case .poolClosed, .clientClosedConnection:
            return .storage("the connection to PostgreSQL at \(location) was closed by chatlog")
        case .queryCancelled:
            return .busy("PostgreSQL at \(location) cancelled a statement")
        default:
            return .storage("PostgreSQL at \(location): \(error.code)")
        }
    }

    private static func tlsReason(_ error: any Error) -> String {
        if let error = error as? NIOSSLError {
            switch error {
            case .handshakeFailed: return "handshake failed: the server's certificate is not trusted by sslrootcert, or does not name the host"
            default: return "\(error)"
            }
        }
        if error is BoringSSLError { return "the server's certificate was not accepted" }
        return "\(error)"
    }
}
