extension AsyncStream.Continuation {
    /// Sends the input `make` builds around a reply callback, and waits for the reply: for a loop
    /// that serves requests from a stream. Replies `ended` at once when the stream has finished,
    /// since a loop that has stopped would never take the input and its caller would wait forever.
    public func request<Reply: Sendable>(
        orWhenEnded ended: Reply, _ make: (@escaping @Sendable (Reply) -> Void) -> Element
    ) async -> Reply {
        await withCheckedContinuation { reply in
            if case .terminated = yield(make { reply.resume(returning: $0) }) {
                reply.resume(returning: ended)
            }
        }
    }
}
