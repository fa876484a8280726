-- chatlog schema, version 1. The source of truth for the schema: this file is compiled into the
-- library at build time and applied in its own IMMEDIATE transaction (see Storage/Schema.swift).
-- Every BLOB column named "sealed" below holds a sealed value (docs/FORMAT.md): opaque without
-- the master key, and bound to its table, column and the row's public id.
-- Times are Unix milliseconds (UTC). docs/SECURITY.md says what each plain column reveals.

-- Store-wide facts: store id, master-key check value, passphrase KDF parameters.
CREATE TABLE chatlog_meta (
    name  TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL
) WITHOUT ROWID;

-- Data keys and index keys, each wrapped (sealed) under the master key. A key id is written into
-- every sealed value's header, so ids are never reused (AUTOINCREMENT).
CREATE TABLE keys (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT    NOT NULL CHECK (kind IN ('data', 'index')),
    state       TEXT    NOT NULL CHECK (state IN ('active', 'decrypt-only', 'retired')),
    created_at  INTEGER NOT NULL,
    retired_at  INTEGER,
    wrapped     BLOB,   -- sealed key material; NULL once retired (material destroyed)
    CHECK ((state = 'retired') = (wrapped IS NULL))
);
CREATE UNIQUE INDEX keys_one_active_per_kind ON keys (kind) WHERE state = 'active';

CREATE TABLE conversations (
    seq            INTEGER PRIMARY KEY,          -- internal; stable across VACUUM (explicit alias)
    id             TEXT    NOT NULL UNIQUE,      -- public UUIDv7; sealed values are bound to it
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    key_id         INTEGER NOT NULL REFERENCES keys (id),  -- data key of this row's sealed values
    title          BLOB,                         -- sealed
    subject        BLOB,                         -- sealed
    subject_token  BLOB,                         -- keyed blind index of the subject (equality)
    subject_key_id INTEGER REFERENCES keys (id), -- index key of subject_token
    metadata       BLOB                          -- sealed JSON
);
CREATE INDEX conversations_by_created ON conversations (created_at);
CREATE INDEX conversations_by_updated ON conversations (updated_at);
CREATE INDEX conversations_by_key ON conversations (key_id);
CREATE INDEX conversations_by_subject ON conversations (subject_token) WHERE subject_token IS NOT NULL;

CREATE TABLE messages (
    seq               INTEGER PRIMARY KEY,       -- internal; stable across VACUUM (explicit alias)
    id                TEXT    NOT NULL UNIQUE,   -- public UUIDv7; sealed values are bound to it
    conversation_seq  INTEGER NOT NULL REFERENCES conversations (seq) ON DELETE CASCADE,
    position          INTEGER NOT NULL,          -- 0-based order within the conversation
    role              TEXT    NOT NULL CHECK (role IN ('system', 'user', 'assistant', 'tool')),
    created_at        INTEGER NOT NULL,
    model             TEXT,
    prompt_tokens     INTEGER,
    completion_tokens INTEGER,
    latency_ms        INTEGER,
    finish_reason     TEXT,
    key_id            INTEGER NOT NULL REFERENCES keys (id),  -- data key of this row's sealed values
    content           BLOB    NOT NULL,          -- sealed
    metadata          BLOB,                      -- sealed JSON
    UNIQUE (conversation_seq, position)
);
CREATE INDEX messages_by_created ON messages (created_at);
CREATE INDEX messages_by_key ON messages (key_id);
