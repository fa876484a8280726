-- The logging proxy (`chatlog serve`, docs/ARCHITECTURE.md §10, docs/FORMAT.md).

-- Conversation threading: a keyed digest (BLAKE2b under an index key, so a thief of the file learns
-- nothing from it) of a message sequence that ends a logged exchange, or of a Responses API
-- response id, pointing at the conversation it continues. Deleting the conversation deletes them.
CREATE TABLE proxy_threads (
    digest           BLOB PRIMARY KEY,
    conversation_seq INTEGER NOT NULL REFERENCES conversations (seq) ON DELETE CASCADE,
    index_key_id     INTEGER NOT NULL,
    created_at       INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX proxy_threads_conversation ON proxy_threads (conversation_seq);

-- Proxy tokens (`chatlog token create|list|revoke`): only a keyed hash of each token is stored;
-- the name is the app logged with each exchange made with it.
CREATE TABLE proxy_tokens (
    name         TEXT PRIMARY KEY,
    token_hash   BLOB NOT NULL UNIQUE,
    index_key_id INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    revoked_at   INTEGER
);
