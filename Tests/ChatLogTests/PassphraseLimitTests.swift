import Foundation
import GRDB
import Testing

@testable import ChatLog

/// The Argon2id parameters live in `chatlog_meta`, writable by whoever can write the file. Limits
/// outside the documented range (docs/SECURITY.md) and values of the wrong SQLite type are refused
/// as an integrity failure naming the row, before anything is derived: a cheap derivation would be
/// an offline guessing oracle, a huge one a hang, a negative one a trap.
@Suite struct PassphraseLimitTests {
    struct Tampering: Sendable, CustomTestStringConvertible {
        let row: String
        /// An SQL expression for the new value.
        let value: String
        var testDescription: String { "\(row) = \(value)" }
    }

    static let tamperings: [Tampering] = [
        Tampering(row: "kdf_opslimit", value: "-1"),
        Tampering(row: "kdf_opslimit", value: "0"),
        Tampering(row: "kdf_opslimit", value: "1"),  // below INTERACTIVE (2)
        Tampering(row: "kdf_opslimit", value: "33"),
        Tampering(row: "kdf_opslimit", value: "4294967295"),
        Tampering(row: "kdf_opslimit", value: "-9223372036854775808"),
        Tampering(row: "kdf_opslimit", value: "'3'"),
        Tampering(row: "kdf_opslimit", value: "x'03'"),
        Tampering(row: "kdf_opslimit", value: "3.0"),
        Tampering(row: "kdf_memlimit", value: "-1"),
        Tampering(row: "kdf_memlimit", value: "0"),
        Tampering(row: "kdf_memlimit", value: "8192"),  // libsodium's minimum, far below INTERACTIVE
        Tampering(row: "kdf_memlimit", value: "67108863"),  // one byte below INTERACTIVE (64 MiB)
        Tampering(row: "kdf_memlimit", value: "4294967297"),  // above 4 GiB
        Tampering(row: "kdf_memlimit", value: "9223372036854775807"),
        Tampering(row: "kdf_memlimit", value: "'67108864'"),
        Tampering(row: "kdf_memlimit", value: "x'04000000'"),
        Tampering(row: "kdf_memlimit", value: "67108864.0"),
        Tampering(row: "kdf_salt", value: "x'00'"),
        Tampering(row: "kdf_salt", value: "'c0c1c2c3c4c5c6c7'"),
        Tampering(row: "kdf_algorithm", value: "'argon2i13'"),
    ]

    @Test(arguments: tamperings)
    func tamperedParametersAreAnIntegrityFailureBeforeDeriving(_ tampering: Tampering) async throws {
        try await withTemporaryDirectory { directory in
            let passphrase = try Passphrase("correct horse battery staple")
            try ChatLogStore.create(at: directory.databasePath, key: .passphrase(passphrase), options: fastOptions).close()
            let queue = try DatabaseQueue(path: directory.databasePath)
            try queue.write { db in
                try db.execute(sql: "UPDATE chatlog_meta SET value = \(tampering.value) WHERE name = ?", arguments: [tampering.row])
            }
            try queue.close()
            // A wrong passphrase too: no "given" fingerprint may come out either way.
            for given in [passphrase, try Passphrase("incorrect horse battery")] {
                let error = #expect(throws: ChatLogError.self) {
                    try ChatLogStore.open(at: directory.databasePath, key: .passphrase(given))
                }
                guard case .integrity(let failure)? = error else {
                    Issue.record("expected an integrity failure, got \(String(describing: error))")
                    return
                }
                #expect(failure.table == "chatlog_meta")
                #expect(failure.rowID == tampering.row)
                guard case .invalidValue = failure.reason else {
                    Issue.record("expected invalidValue, got \(failure.reason)")
                    return
                }
            }
        }
    }

    @Test func limitsAtTheEdgesOfTheRangeAreAccepted() async throws {
        try await withTemporaryDirectory { directory in
            let passphrase = try Passphrase("correct horse battery staple")
            try ChatLogStore.create(at: directory.databasePath, key: .passphrase(passphrase), options: fastOptions).close()
            // INTERACTIVE is the lower edge; the store was made with it and opens.
            try ChatLogStore.open(at: directory.databasePath, key: .passphrase(passphrase)).close()
            #expect(PassphraseKDF.acceptedOpsLimits.lowerBound == PassphraseKDF.interactive.opsLimit)
            #expect(PassphraseKDF.acceptedMemLimits.lowerBound == PassphraseKDF.interactive.memLimit)
            #expect(PassphraseKDF.acceptedMemLimits.contains(PassphraseKDF.moderate.memLimit))
            #expect(PassphraseKDF.acceptedOpsLimits.contains(PassphraseKDF.moderate.opsLimit))
        }
    }

    @Test func creatingWithLimitsBelowTheRangeIsRefused() async throws {
        try await withTemporaryDirectory { directory in
            let weak = PassphraseKDF(opsLimit: 1, memLimit: 8192, salt: [])
            let error = #expect(throws: ChatLogError.self) {
                try ChatLogStore.create(
                    at: directory.databasePath, key: .passphrase(try Passphrase("correct horse battery staple")),
                    options: ChatLogStore.Options(passphraseKDF: weak))
            }
            guard case .invalidInput? = error else {
                Issue.record("expected invalidInput, got \(String(describing: error))")
                return
            }
        }
    }
}
