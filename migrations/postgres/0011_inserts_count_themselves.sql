-- chatlog PostgreSQL schema, migration 11: inserts count their own rows (docs/ARCHITECTURE.md §10, "Row counts",
-- docs/PERFORMANCE.md "Where the server's time goes now").
--
-- Migrations 5 and 6 kept the row counts, token totals and rows per key with statement-level triggers. Their
-- INSERT triggers were 23 % of the server's CPU while chatlog logs (transition tables, a plpgsql call and its
-- statements per insert). Every path that inserts conversations or messages — `chatlog_append` below, and in
-- ChatLogPostgres the append statement, the proxy's group commit, copy and import — now writes the same delta rows
-- itself in the statement or transaction that inserts; the DELETE and UPDATE triggers stay (rare paths).
-- Written so that running it again changes nothing.
DROP TRIGGER IF EXISTS conversations_count_inserts ON conversations;
DROP TRIGGER IF EXISTS messages_count_inserts ON messages;
DROP TRIGGER IF EXISTS conversations_key_usage_inserts ON conversations;
DROP TRIGGER IF EXISTS messages_key_usage_inserts ON messages;

-- chatlog_append (migrations 0009, 0010) with the same parameters and steps, then its delta rows.
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
    -- What migrations 5 and 6's INSERT triggers counted (docs/ARCHITECTURE.md §10, "Row counts").
    INSERT INTO row_count_deltas (conversations, messages, conversations_with_messages, prompt_tokens, completion_tokens)
    VALUES (CASE WHEN p_new_id IS NULL THEN 0 ELSE 1 END, cardinality(p_ids),
            CASE WHEN v_next = 0 AND cardinality(p_ids) > 0 THEN 1 ELSE 0 END,
            coalesce((SELECT sum(t) FROM unnest(p_prompt_tokens) AS t), 0), coalesce((SELECT sum(t) FROM unnest(p_completion_tokens) AS t), 0));
    INSERT INTO key_usage_deltas (key_id, row_count)
    SELECT id, count(*) FROM (
        SELECT unnest(p_key_ids) AS id UNION ALL SELECT unnest(p_index_key_ids)
        UNION ALL SELECT p_new_key_id WHERE p_new_id IS NOT NULL UNION ALL SELECT p_new_subject_key_id WHERE p_new_id IS NOT NULL
    ) used WHERE id IS NOT NULL GROUP BY id;
END
$$;
