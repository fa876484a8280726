-- chatlog PostgreSQL schema, migration 9: a logged exchange in one statement (docs/ARCHITECTURE.md §10,
-- docs/PERFORMANCE.md "Logging on PostgreSQL in one statement").
--
-- A write of a few messages was five round trips — BEGIN, the key check, the conversation's lock, the
-- insert, COMMIT — and most of a writer's CPU was the driver's work per statement. `chatlog_append` does
-- the same steps in the same order inside the server, called as one statement that commits by itself:
--   1. the master key's check value and the active keys, FOR SHARE (a key job changing them waits);
--      refused with SQLSTATE CLG01 (the master key changed) or CLG02 (the writer's keys are not the
--      active ones any more) — the writer re-seals, as after the check of a transaction;
--   2. the conversation: inserted (p_new_id set), or locked FOR UPDATE by public id (SQLSTATE CLN01 when there
--      is none); its next position is read AFTER the lock by a statement of its own, so it sees every
--      message of the writer it waited for (READ COMMITTED: a fresh snapshot per statement of a
--      function) and positions stay gap-free and unique with any number of writers;
--   3. the messages at the next positions, their term rows, the conversation's updated_at.
-- The messages travel as one array per column (and the terms as (message ordinal, term) pairs), so the
-- statement's text is the same for any number of messages and each connection prepares it once.
-- Written so that running it again changes nothing.
DROP FUNCTION IF EXISTS chatlog_append(TEXT, TEXT, BIGINT, BIGINT, BIGINT, BYTEA, BYTEA, BYTEA, BIGINT, BYTEA, TEXT[], TEXT[], BIGINT[],
    TEXT[], BIGINT[], BIGINT[], BIGINT[], TEXT[], BIGINT[], BYTEA[], BYTEA[], BIGINT[], BIGINT[], BIGINT[], BYTEA[], BIGINT, BIGINT);

-- Returns the messages' positions, in the order given. p_new_id NULL: append to p_conversation_id;
-- otherwise a new conversation with the p_new_* columns.
CREATE FUNCTION chatlog_append(
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
    m AS (INSERT INTO messages (id, conversation_seq, position, role, created_at, model, prompt_tokens, completion_tokens, latency_ms,
                                finish_reason, key_id, content, metadata, index_key_id)
          SELECT v.id, v_seq, v_next + v.ordinal - 1, v.role, v.created_at, v.model, v.prompt_tokens, v.completion_tokens, v.latency_ms,
                 v.finish_reason, v.key_id, v.content, v.metadata, v.index_key_id FROM v
          RETURNING seq, id, created_at, position),
    t AS (INSERT INTO message_terms (message_seq, term, created_at)
          SELECT DISTINCT m.seq, x.term, m.created_at FROM unnest(p_term_messages, p_terms) AS x (ordinal, term)
          JOIN v ON v.ordinal = x.ordinal JOIN m ON m.id = v.id)
    SELECT m.position FROM m ORDER BY m.position;
END
$$;
