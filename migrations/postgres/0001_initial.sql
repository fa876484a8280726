-- chatlog schema for PostgreSQL, version 1: the SQLite schema of migrations/0001…0007 as one
-- migration (docs/ARCHITECTURE.md §10, "PostgreSQL backend"). Compiled into ChatLogPostgres at
-- build time and applied in its own transaction under an advisory lock (PostgresSchema.swift),
-- recorded in chatlog_migrations.
--
-- The sealed columns hold exactly the bytes SQLite holds (docs/FORMAT.md): every sealed value is
-- bound to its table name, column name and the row's public id, never to anything of this
-- backend, so a value copies verbatim between the two. Table and column names are therefore the
-- SQLite ones. Times are Unix milliseconds (UTC), as there.

-- Store-wide facts. SQLite keeps each value with its own type (text, integer or blob); so does
-- this table, in one of three columns.
CREATE TABLE chatlog_meta (
    name          TEXT PRIMARY KEY,
    integer_value BIGINT,
    text_value    TEXT,
    blob_value    BYTEA,
    CHECK (num_nonnulls(integer_value, text_value, blob_value) = 1)
);

-- Data keys and index keys, wrapped under the master key and authenticated by `mac`
-- (docs/FORMAT.md, "Key-row MAC"). Key ids are chosen by chatlog (never reused), not by a
-- sequence: the id is inside every sealed value's header.
CREATE TABLE keys (
    id          BIGINT PRIMARY KEY CHECK (id BETWEEN 1 AND 4294967294),
    kind        TEXT   NOT NULL CHECK (kind IN ('data', 'index')),
    state       TEXT   NOT NULL CHECK (state IN ('active', 'decrypt-only', 'retired')),
    created_at  BIGINT NOT NULL,
    retired_at  BIGINT,
    wrapped     BYTEA,
    mac         BYTEA,
    CHECK ((state = 'retired') = (wrapped IS NULL))
);
CREATE UNIQUE INDEX keys_one_active_per_kind ON keys (kind) WHERE state = 'active';

CREATE TABLE conversations (
    seq            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- internal
    id             TEXT   NOT NULL UNIQUE,      -- public UUIDv7; sealed values are bound to it
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    key_id         BIGINT NOT NULL REFERENCES keys (id),
    title          BYTEA,                       -- sealed
    subject        BYTEA,                       -- sealed
    subject_token  BYTEA,                       -- keyed blind index of the subject (equality)
    subject_key_id BIGINT REFERENCES keys (id),
    metadata       BYTEA                        -- sealed JSON
);
CREATE INDEX conversations_by_created ON conversations (created_at);
CREATE INDEX conversations_by_updated ON conversations (updated_at, seq);
CREATE INDEX conversations_by_key ON conversations (key_id);
CREATE INDEX conversations_by_subject ON conversations (subject_token) WHERE subject_token IS NOT NULL;
CREATE INDEX conversations_by_subject_key ON conversations (subject_key_id);

CREATE TABLE messages (
    seq               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- internal
    id                TEXT   NOT NULL UNIQUE,   -- public UUIDv7; sealed values are bound to it
    conversation_seq  BIGINT NOT NULL REFERENCES conversations (seq) ON DELETE CASCADE,
    position          BIGINT NOT NULL,          -- 0-based, gap-free within the conversation
    role              TEXT   NOT NULL CHECK (role IN ('system', 'user', 'assistant', 'tool')),
    created_at        BIGINT NOT NULL,
    model             TEXT,
    prompt_tokens     BIGINT,
    completion_tokens BIGINT,
    latency_ms        BIGINT,
    finish_reason     TEXT,
    key_id            BIGINT NOT NULL REFERENCES keys (id),
    content           BYTEA  NOT NULL,          -- sealed
    metadata          BYTEA,                    -- sealed JSON
    index_key_id      BIGINT REFERENCES keys (id),  -- the index key whose terms index this message
    UNIQUE (conversation_seq, position)
);
CREATE INDEX messages_by_created ON messages (created_at, seq);
CREATE INDEX messages_by_key ON messages (key_id);
CREATE INDEX messages_by_index_key ON messages (index_key_id);

-- The blinded-term index (docs/FORMAT.md §5.1): one row per distinct term of a message, the term's
-- 64-bit value (its top bits; see TokenBlinder) as a signed BIGINT. No positions, no plaintext.
-- (term, created_at, message_seq) streams one term's messages newest first; the primary key
-- (message_seq, term) answers "does this message hold that term" and deletes a message's terms,
-- which go with the message (ON DELETE CASCADE) — no re-blinding on delete, unlike FTS5.
CREATE TABLE message_terms (
    message_seq BIGINT NOT NULL REFERENCES messages (seq) ON DELETE CASCADE,
    term        BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,                -- the message's, for newest-first order
    PRIMARY KEY (message_seq, term)
);
CREATE INDEX message_terms_by_term ON message_terms (term, created_at, message_seq);

-- Import bookkeeping: keyed hashes of (format, source id), never the source id itself.
CREATE TABLE imports (
    source_hash      BYTEA  PRIMARY KEY,
    conversation_seq BIGINT NOT NULL REFERENCES conversations (seq) ON DELETE CASCADE,
    imported_at      BIGINT NOT NULL
);
CREATE INDEX imports_by_conversation ON imports (conversation_seq);
