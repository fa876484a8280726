-- chatlog PostgreSQL schema, migration 10: a message's blinded terms in a GIN-indexed column of its row
-- (docs/ARCHITECTURE.md §10, docs/PERFORMANCE.md "Logging on PostgreSQL: what each part of the write costs").
--
-- The inverted table `message_terms` (one row per distinct term of a message, two B-trees) was 40 % of the
-- server's work per logged message (~28 rows and ~56 index entries each) and, at 1,000,000 messages, 4.2 GB.
-- The same terms (docs/FORMAT.md §5.1: each distinct term's 64-bit value as a signed BIGINT, no positions, no
-- plaintext) now sit in `messages.terms`, indexed by GIN (pending-list inserts: a logged message adds one
-- index entry list to the pending list, merged in bulk): ~4× cheaper to write, 46× smaller, and a message's
-- terms go with its row — a deleted message leaves nothing behind once VACUUM has cleaned the index (no
-- trigger, no orphan row possible). NULL: a message without terms.
--
-- Runs in one transaction. The UPDATE rewrites every message row once: on a large store run
-- `VACUUM (FULL, ANALYZE) messages` afterwards (docs/OPERATIONS.md) to give the old row versions back.
ALTER TABLE messages ADD COLUMN IF NOT EXISTS terms BIGINT[];

DO $$
BEGIN
    IF to_regclass('message_terms') IS NOT NULL THEN
        UPDATE messages m SET terms = t.terms
        FROM (SELECT message_seq, array_agg(term ORDER BY term) AS terms FROM message_terms GROUP BY message_seq) t
        WHERE m.seq = t.message_seq;
    END IF;
END
$$;

DROP TRIGGER IF EXISTS messages_delete_terms ON messages;
DROP FUNCTION IF EXISTS chatlog_delete_message_terms();
DROP TABLE IF EXISTS message_terms;

CREATE INDEX IF NOT EXISTS messages_by_term ON messages USING gin (terms);

-- chatlog_append (migration 0009) with the same parameters and steps; step 3 writes each message's
-- distinct terms into its row instead of term rows.
CREATE OR REPLACE FUNCTION chatlog_append(
    p_conversation_id TEXT,
    p_new_id TEXT, p_new_created_at BIGINT, p_new_updated_at BIGINT, p_new_key_id BIGINT, p_new_title BYTEA, p_new_subject BYTEA,
    p_new_subject_token BYTEA, p_new_subject_key_id BIGINT, p_new_metadata BYTEA,
    p_ids TEXT[], p_roles TEXT[], p_created_at BIGINT[], p_models TEXT[], p_prompt_tokens BIGINT[], p_completion_tokens BIGINT[],
    p_latency_ms BIGINT[], p_finish_reasons TEXT[], p_key_ids BIGINT[], p_contents BYTEA[], p_metadata BYTEA[], p_index_key_ids BIGINT[],
    p_term_messages BIGINT[], p_terms BIGINT[],   -- each term with its message's 1-based ordinal (docs/FORMAT.md §5.1)
    p_checks BYTEA[], p_data_key BIGINT, p_index_key BIGINT
) RETURNS SETOF BIGINT LANGUAGE plpgsql AS $$
DECLARE
    v_check BYTEA;
    v_data_key BIGINT;
    v_index_key BIGINT;
    v_seq BIGINT;
    v_next BIGINT;
    v_latest BIGINT;
BEGIN
    SELECT blob_value INTO v_check FROM chatlog_meta WHERE name = 'master_check' FOR SHARE;
    IF v_check IS NULL OR NOT (v_check = ANY (p_checks)) THEN
        RAISE EXCEPTION 'chatlog: the master key changed' USING ERRCODE = 'CLG01';
    END IF;
    SELECT id INTO v_data_key FROM keys WHERE state = 'active' AND kind = 'data' FOR SHARE;
    SELECT id INTO v_index_key FROM keys WHERE state = 'active' AND kind = 'index' FOR SHARE;
    IF v_data_key IS DISTINCT FROM p_data_key OR v_index_key IS DISTINCT FROM p_index_key THEN
        RAISE EXCEPTION 'chatlog: the active keys changed' USING ERRCODE = 'CLG02';
    END IF;
    SELECT max(c) INTO v_latest FROM unnest(p_created_at) AS c;
    IF p_new_id IS NOT NULL THEN
        INSERT INTO conversations (id, created_at, updated_at, key_id, title, subject, subject_token, subject_key_id, metadata)
        VALUES (p_new_id, p_new_created_at, greatest(p_new_updated_at, v_latest), p_new_key_id, p_new_title, p_new_subject,
                p_new_subject_token, p_new_subject_key_id, p_new_metadata)
        RETURNING seq INTO v_seq;
        v_next := 0;
    ELSE
        SELECT seq INTO v_seq FROM conversations WHERE id = p_conversation_id FOR UPDATE;
        IF v_seq IS NULL THEN
            RAISE EXCEPTION 'chatlog: no such conversation' USING ERRCODE = 'CLN01';
        END IF;
        SELECT coalesce(max(position) + 1, 0) INTO v_next FROM messages WHERE conversation_seq = v_seq;
        UPDATE conversations SET updated_at = v_latest WHERE seq = v_seq AND updated_at < v_latest;
    END IF;
    RETURN QUERY
    WITH v AS (SELECT * FROM unnest(p_ids, p_roles, p_created_at, p_models, p_prompt_tokens, p_completion_tokens, p_latency_ms,
                                    p_finish_reasons, p_key_ids, p_contents, p_metadata, p_index_key_ids) WITH ORDINALITY
                   AS x (id, role, created_at, model, prompt_tokens, completion_tokens, latency_ms, finish_reason, key_id, content,
                         metadata, index_key_id, ordinal)),
    t AS (SELECT x.ordinal, array_agg(DISTINCT x.term) AS terms FROM unnest(p_term_messages, p_terms) AS x (ordinal, term)
          GROUP BY x.ordinal),
    m AS (INSERT INTO messages (id, conversation_seq, position, role, created_at, model, prompt_tokens, completion_tokens, latency_ms,
                                finish_reason, key_id, content, metadata, index_key_id, terms)
          SELECT v.id, v_seq, v_next + v.ordinal - 1, v.role, v.created_at, v.model, v.prompt_tokens, v.completion_tokens, v.latency_ms,
                 v.finish_reason, v.key_id, v.content, v.metadata, v.index_key_id, t.terms FROM v LEFT JOIN t ON t.ordinal = v.ordinal
          RETURNING position)
    SELECT m.position FROM m ORDER BY m.position;
END
$$;
