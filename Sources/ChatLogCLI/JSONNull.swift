/// An optional field of `--json` output that is printed as `null` when absent. Synthesized
/// `Encodable` skips nil optionals, so documented keys (`title`, `model`, …) would vanish from
/// some objects; scripts reading `obj["model"]` should find every key the README lists.
@propertyWrapper
struct JSONNullable<Value: Encodable>: Encodable {
    var wrappedValue: Value?

    init(wrappedValue: Value?) { self.wrappedValue = wrappedValue }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        if let wrappedValue { try container.encode(wrappedValue) } else { try container.encodeNil() }
    }
}
