import ChatLog
import Foundation

/// Where a call's exchange goes: the conversation, and which of the request's messages are new.
struct Threading: Sendable {
    var conversation: ConversationID
    /// Index of the first request message not yet logged.
    var start: Int
    var chain: ThreadDigests
    var chainer: ThreadChainer
}

struct ThreadingError: Error {
    let message: String
}

extension ProxyCall {
    /// `X-Chatlog-Conversation` wins; then `previous_response_id`; then the longest logged prefix
    /// of the message sequence (keyed digests); else a new conversation. A failing store never
    /// fails the call: it starts a new conversation.
    func resolve(_ captured: CapturedRequest, scope: String) async throws -> Threading {
        let chainer = state.store.threadChainer()
        let chain = chainer.chain(scope: scope, items: captured.messages.map(\.canonical))
        var match = await longestPrefix(captured, chain: chain)

        if let forced = request.headers[ProxyResponder.conversationHeader] {
            guard let id = ConversationID(forced.trimmingCharacters(in: .whitespaces)) else {
                throw ThreadingError(message: "X-Chatlog-Conversation is not a conversation id (a UUID)")
            }
            if match?.conversation != id { match = nil }
            return Threading(conversation: id, start: match?.length ?? 0, chain: chain, chainer: chainer)
        }
        if let previous = captured.previousResponseID {
            let digests = chainer.response(previous)
            if let found = await lookup(digests, lengths: [1]) {
                // With previous_response_id the input holds only the new items; instructions are
                // sent again with every call and were logged with the first.
                let start = captured.messages.first?.message.role == .system && captured.messages.count > 1 ? 1 : 0
                return Threading(conversation: found.conversation, start: start, chain: chain, chainer: chainer)
            }
        }
        if let match { return Threading(conversation: match.conversation, start: match.length, chain: chain, chainer: chainer) }
        return Threading(conversation: .generate(), start: 0, chain: chain, chainer: chainer)
    }

    /// Only prefixes that end with an assistant message can end a logged exchange.
    private func longestPrefix(_ captured: CapturedRequest, chain: ThreadDigests) async -> (length: Int, conversation: ConversationID)? {
        let lengths = captured.messages.indices.filter { captured.messages[$0].message.role == .assistant }.map { $0 + 1 }
        guard !lengths.isEmpty else { return nil }
        return await lookup(chain, lengths: lengths)
    }

    private func lookup(_ digests: ThreadDigests, lengths: [Int]) async -> (length: Int, conversation: ConversationID)? {
        let candidates = digests.candidates(lengths: lengths)
        // Pending first: a record committed after this check is found in the store below.
        let pending = state.recorder.pendingThread(candidates)
        let stored: (length: Int, conversation: ConversationID)?
        do {
            stored = try await state.store.findThread(digests, lengths: lengths)
        } catch {
            state.logger.warning("thread lookup failed; starting a new conversation", metadata: ["error": "\(error.description)"])
            stored = nil
        }
        switch (pending, stored) {
        case (let p?, let s?): return p.length >= s.length ? p : s
        case (let p?, nil): return p
        case (nil, let s?): return s
        case (nil, nil): return nil
        }
    }
}
