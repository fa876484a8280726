-- Per-subject erasure by crypto-shredding (`chatlog forget --subject`, docs/ARCHITECTURE.md §10,
-- docs/FORMAT.md, docs/SECURITY.md). The subject keys themselves are NOT in this file: they are in
-- the subject-key file next to it (STORE.subject-keys), which ordinary backups do not carry.

-- The subject key (id in the subject-key file, from 0x80000000) under which this conversation and
-- its messages are sealed (sealed-value version 2); NULL for a conversation without a subject, or
-- one written before this migration.
ALTER TABLE conversations ADD COLUMN erasure_key_id INTEGER;
CREATE INDEX conversations_by_erasure_key ON conversations (erasure_key_id) WHERE erasure_key_id IS NOT NULL;

-- Subject keys whose rows `forget` deleted: no row is ever written under them again (a writer
-- that still holds such a key in memory is refused in its transaction).
CREATE TABLE forgotten_subject_keys (
    key_id       INTEGER PRIMARY KEY,
    forgotten_at INTEGER NOT NULL
);

-- A forget whose rows are deleted but whose subject keys may not yet be destroyed in the
-- subject-key file (a kill between the two files): the next `forget` or `verify --repair`
-- finishes it. key_ids is a JSON array; counts are those of the deleted rows.
CREATE TABLE forget_pending (
    id            INTEGER PRIMARY KEY,
    key_ids       TEXT    NOT NULL,
    subject_hash  BLOB    NOT NULL,
    started_at    INTEGER NOT NULL,
    conversations INTEGER NOT NULL,
    messages      INTEGER NOT NULL
);

-- Receipts of finished forgets: when, a keyed hash of the subject (under a key only the master
-- key opens; it names nobody without it) and what was deleted.
CREATE TABLE forget_receipts (
    id            INTEGER PRIMARY KEY,
    forgotten_at  INTEGER NOT NULL,
    subject_hash  BLOB    NOT NULL,
    conversations INTEGER NOT NULL,
    messages      INTEGER NOT NULL,
    subject_keys  INTEGER NOT NULL
);
