import Testing

@testable import ChatLog

/// The blinded-term vectors of docs/FORMAT.md §5.1, computed independently with PyNaCl.
@Suite struct SearchTermVectorTests {
    static let indexKey = IndexKey(storage: (32..<64).map { UInt8($0) }.withUnsafeBytes { SecureBytes(copying: $0) })

    @Test(arguments: [("metformin", "55jx45kq"), ("café", "6o2excnu"), ("東", "nlsqfbcx")])
    func termMatchesFormatDocument(token: String, term: String) {
        let blinder = TokenBlinder(indexKey: Self.indexKey, keyID: KeyID(rawValue: 2))
        #expect(blinder.term(for: token) == term)
    }

    @Test func documentHoldsDistinctTermsOfNormalisedWords() {
        let blinder = TokenBlinder(indexKey: Self.indexKey, keyID: KeyID(rawValue: 2))
        // "Metformin" and "METFORMIN" normalise to one token; "CAFÉ" to "café".
        #expect(blinder.document(for: "Metformin, METFORMIN and CAFÉ!") == "55jx45kq \(blinder.term(for: "and")) 6o2excnu")
    }
}
