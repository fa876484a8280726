-- Per-subject erasure on PostgreSQL (`chatlog forget --subject`; docs/ARCHITECTURE.md §10,
-- "Erasure per subject"; docs/FORMAT.md). The same store-side tables and column as SQLite's
-- 0010_erasure.sql. The subject keys themselves are NOT in this database: they are in the
-- subject-key database named by CHATLOG_SUBJECT_KEYS, which a backup of this one does not carry.

-- The subject key (id in the subject-key database, from 0x80000000) under which a conversation
-- and its messages are sealed: read from its sealed subject's header (sealed-value version 2:
-- 0x02 ‖ data key id ‖ subject key id ‖ nonce ‖ MAC ‖ ciphertext, at least 50 bytes), so that no
-- writer sets it and no writer can set it wrong. NULL for a conversation without a subject key.
ALTER TABLE conversations ADD COLUMN erasure_key_id BIGINT GENERATED ALWAYS AS (
    CASE WHEN length(subject) >= 50 AND get_byte(subject, 0) = 2
        THEN (get_byte(subject, 5)::bigint << 24) | (get_byte(subject, 6)::bigint << 16)
            | (get_byte(subject, 7)::bigint << 8) | get_byte(subject, 8)::bigint
    END) STORED;
CREATE INDEX conversations_by_erasure_key ON conversations (erasure_key_id) WHERE erasure_key_id IS NOT NULL;

-- Subject keys whose rows `forget` deleted: no conversation is ever written under them again (a
-- writer that still holds such a key in memory is refused in its transaction, below).
CREATE TABLE forgotten_subject_keys (
    key_id       BIGINT PRIMARY KEY,
    forgotten_at BIGINT NOT NULL
);

-- A forget whose rows are deleted but whose subject keys may not yet be destroyed in the
-- subject-key database (a kill between the two databases): the next `forget`, `forget --resume`
-- or `verify --repair` finishes it. Counts are those of the deleted rows.
CREATE TABLE forget_pending (
    id            BIGSERIAL PRIMARY KEY,
    key_ids       BIGINT[] NOT NULL,
    subject_hash  BYTEA    NOT NULL,
    started_at    BIGINT   NOT NULL,
    conversations BIGINT   NOT NULL,
    messages      BIGINT   NOT NULL
);

-- Receipts of finished forgets: when, a keyed hash of the subject (under a key only the master
-- key opens; it names nobody without it) and what was deleted.
CREATE TABLE forget_receipts (
    id            BIGSERIAL PRIMARY KEY,
    forgotten_at  BIGINT NOT NULL,
    subject_hash  BYTEA  NOT NULL,
    conversations BIGINT NOT NULL,
    messages      BIGINT NOT NULL,
    subject_keys  BIGINT NOT NULL
);

-- A new conversation under a forgotten subject key is refused (SQLSTATE CLF01, which chatlog
-- turns into "seal again under a new key"). The transaction-level advisory lock, shared among
-- writers of one key, is held exclusively by a forget of that key from before it looks for the
-- key's conversations until it commits: a writer either commits before the forget looks (and
-- its conversation is deleted with the others) or checks the list after the forget committed
-- (and is refused) — under READ COMMITTED each statement of this function sees what committed
-- before it began. Key 0x6368617400000000 + id: the store's lock class ("chat") in the upper half.
CREATE FUNCTION chatlog_refuse_forgotten_subject_key() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(7163082358176874496 + NEW.erasure_key_id);
    IF EXISTS (SELECT 1 FROM forgotten_subject_keys WHERE key_id = NEW.erasure_key_id) THEN
        RAISE EXCEPTION 'chatlog: subject key % was forgotten', NEW.erasure_key_id USING ERRCODE = 'CLF01';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER conversations_refuse_forgotten_subject_key AFTER INSERT ON conversations
    FOR EACH ROW WHEN (NEW.erasure_key_id IS NOT NULL) EXECUTE FUNCTION chatlog_refuse_forgotten_subject_key();
