extension SecretRedactor {
    /// The key of a message's metadata object that holds the kinds and counts of the secrets
    /// redacted from it: `{"chatlog.redacted": {"openai_key": 1}}`. Documented in docs/FORMAT.md.
    public static let metadataKey = "chatlog.redacted"
    /// Where metadata that was not a JSON object goes when the counts are added to it.
    public static let wrappedMetadataKey = "chatlog.metadata"

    /// The message with secrets replaced in its content and in the strings of its metadata; the
    /// kinds and counts are added to its metadata under ``metadataKey``. A message with no secret
    /// is returned unchanged.
    public func redact(_ message: NewMessage) -> NewMessage {
        var message = message
        var counts: [SecretKind: Int] = [:]
        let content = redact(message.content)
        if content.total > 0 {
            message.content = content.text
            counts.merge(content.counts, uniquingKeysWith: +)
        }
        if let metadata = message.metadata {
            message.metadata = redact(metadata, counts: &counts)
        }
        guard !counts.isEmpty else { return message }
        var object: [String: JSONValue]
        switch message.metadata {
        case .object(let existing)?: object = existing
        case nil, .null?: object = [:]
        case let other?: object = [Self.wrappedMetadataKey: other]
        }
        var recorded: [String: JSONValue] = [:]
        if case .object(let earlier)? = object[Self.metadataKey] { recorded = earlier }
        for (kind, count) in counts {
            var total = count
            if case .integer(let earlier)? = recorded[kind.rawValue] { total += Int(earlier) }
            recorded[kind.rawValue] = .integer(Int64(total))
        }
        object[Self.metadataKey] = .object(recorded)
        message.metadata = .object(object)
        return message
    }

    private func redact(_ value: JSONValue, counts: inout [SecretKind: Int]) -> JSONValue {
        switch value {
        case .string(let text):
            let result = redact(text)
            guard result.total > 0 else { return value }
            counts.merge(result.counts, uniquingKeysWith: +)
            return .string(result.text)
        case .array(let items):
            return .array(items.map { redact($0, counts: &counts) })
        case .object(let members):
            var result: [String: JSONValue] = [:]
            result.reserveCapacity(members.count)
            // Earlier counts are kept as they are (they hold no secret).
            for (key, member) in members { result[key] = key == Self.metadataKey ? member : redact(member, counts: &counts) }
            return .object(result)
        case .null, .bool, .integer, .number:
            return value
        }
    }
}

extension SecretRedactor {
    /// An imported conversation with each message redacted as by ``redact(_:)-(NewMessage)``.
    public func redact(_ imported: ImportedConversation) -> ImportedConversation {
        var imported = imported
        imported.messages = imported.messages.map { redact($0) }
        return imported
    }
}
