-- chatlog PostgreSQL schema, migration 3: the logging proxy's tables (`chatlog serve`, `chatlog token`),
-- mirroring migrations/0009_proxy.sql (docs/ARCHITECTURE.md §10, docs/FORMAT.md).

-- Conversation threading: a keyed digest (BLAKE2b under an index key) of a message sequence that ends
-- a logged exchange, or of a Responses API response id, pointing at the conversation it continues.
-- Deleting the conversation deletes them; retiring the index key deletes those made under it.
CREATE TABLE proxy_threads (
    digest           BYTEA  PRIMARY KEY,
    conversation_seq BIGINT NOT NULL REFERENCES conversations (seq) ON DELETE CASCADE,
    index_key_id     BIGINT NOT NULL,
    created_at       BIGINT NOT NULL
);
CREATE INDEX proxy_threads_conversation ON proxy_threads (conversation_seq);
CREATE INDEX proxy_threads_index_key ON proxy_threads (index_key_id);

-- Proxy tokens: only a keyed hash of each token (under an index key) is stored; the name is the app
-- logged with each exchange made with it.
CREATE TABLE proxy_tokens (
    name         TEXT   PRIMARY KEY,
    token_hash   BYTEA  NOT NULL UNIQUE,
    index_key_id BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    revoked_at   BIGINT
);
