-- chatlog PostgreSQL schema, migration 13: the key-id columns without foreign keys (docs/ARCHITECTURE.md §10,
-- docs/PERFORMANCE.md "The key-id columns without foreign keys (migration 0013)").
--
-- messages.key_id, messages.index_key_id, conversations.key_id and conversations.subject_key_id referenced
-- keys (id). Each inserted row ran a check that locks the referenced key row FOR KEY SHARE — every append's rows
-- name the same two active keys, so with several writers every transaction added itself to a MultiXact on those
-- two rows (the tuple rewritten, WAL), plus one executor start per row and key. Measured (scripts/bench-postgres,
-- 100,000 and 400,000 messages): about 0.03 ms of server CPU per message, an eighth of the append's.
-- What the foreign keys guaranteed, kept without them:
-- 1. A key row is never deleted: retiring a key keeps its row (state 'retired', material gone), and no chatlog
--    command deletes one; the trigger below refuses a DELETE, so no row can lose the key it names.
-- 2. A row names a key of the store: `chatlog_append`'s usual case names only the active keys, which its guard
--    has just read from `keys`; its general case (other keys, a subject key) checks each named key once per
--    append (below); the other writers (import, copy, rotation, the proxy's transactions) seal under keys they
--    read from `keys`. `chatlog verify` reports a row whose key the store lacks (it cannot be opened).
-- Written so that running it again changes nothing.
ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_key_id_fkey, DROP CONSTRAINT IF EXISTS messages_index_key_id_fkey;
ALTER TABLE conversations DROP CONSTRAINT IF EXISTS conversations_key_id_fkey,
    DROP CONSTRAINT IF EXISTS conversations_subject_key_id_fkey;

CREATE OR REPLACE FUNCTION chatlog_refuse_key_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'chatlog: key rows are never deleted (sealed rows name them; retiring a key keeps its row)'
        USING ERRCODE = 'restrict_violation';
END
$$;
DROP TRIGGER IF EXISTS keys_never_deleted ON keys;
CREATE TRIGGER keys_never_deleted BEFORE DELETE OR TRUNCATE ON keys
    FOR EACH STATEMENT EXECUTE FUNCTION chatlog_refuse_key_delete();

-- chatlog_append (migration 12) with the same parameters and steps; its general case checks the keys it names.
CREATE OR REPLACE FUNCTION chatlog_append(
    p_conversation_id TEXT,
    p_new_id TEXT, p_new_created_at BIGINT, p_new_updated_at BIGINT, p_new_key_id BIGINT, p_new_title BYTEA, p_new_subject BYTEA,
    p_new_subject_token BYTEA, p_new_subject_key_id BIGINT, p_new_metadata BYTEA,
    p_ids TEXT[], p_roles TEXT[], p_created_at BIGINT[], p_models TEXT[], p_prompt_tokens BIGINT[], p_completion_tokens BIGINT[],
    p_latency_ms BIGINT[], p_finish_reasons TEXT[], p_key_ids BIGINT[], p_contents BYTEA[], p_metadata BYTEA[], p_index_key_ids BIGINT[],
    p_term_messages BIGINT[], p_terms BIGINT[],
    p_checks BYTEA[], p_data_key BIGINT, p_index_key BIGINT
) RETURNS SETOF BIGINT LANGUAGE plpgsql AS $$
DECLARE
    v_check BYTEA;
    v_data_key BIGINT;
    v_index_key BIGINT;
    v_seq BIGINT;
    v_next BIGINT;
    v_prompt BIGINT := 0;
    v_completion BIGINT := 0;
    v_tokens BIGINT;
    v_missing BIGINT;
BEGIN
    -- Key changes (ChatLogPostgres's replaceKeys) take this lock exclusively: an append waits for one to commit,
    -- and one waits for every append in flight. Taken before the read below, whose snapshot then sees the change.
    PERFORM pg_advisory_xact_lock_shared(1667785076, 4);
    SELECT (SELECT blob_value FROM chatlog_meta WHERE name = 'master_check'),
           (SELECT id FROM keys WHERE state = 'active' AND kind = 'data'),
           (SELECT id FROM keys WHERE state = 'active' AND kind = 'index')
    INTO v_check, v_data_key, v_index_key;
    IF v_check IS NULL OR NOT (v_check = ANY (p_checks)) THEN
        RAISE EXCEPTION 'chatlog: the master key changed' USING ERRCODE = 'CLG01';
    END IF;
    IF v_data_key IS DISTINCT FROM p_data_key OR v_index_key IS DISTINCT FROM p_index_key THEN
        RAISE EXCEPTION 'chatlog: the active keys changed' USING ERRCODE = 'CLG02';
    END IF;
    IF p_new_id IS NOT NULL THEN
        INSERT INTO conversations (id, created_at, updated_at, key_id, title, subject, subject_token, subject_key_id, metadata)
        VALUES (p_new_id, p_new_created_at, greatest(p_new_updated_at, (SELECT max(c) FROM unnest(p_created_at) AS c)), p_new_key_id,
                p_new_title, p_new_subject, p_new_subject_token, p_new_subject_key_id, p_new_metadata)
        RETURNING seq INTO v_seq;
        v_next := 0;
    ELSE
        -- The row lock that orders appends to one conversation, taken by the update of updated_at.
        UPDATE conversations SET updated_at = greatest(updated_at, (SELECT max(c) FROM unnest(p_created_at) AS c))
        WHERE id = p_conversation_id RETURNING seq INTO v_seq;
        IF v_seq IS NULL THEN
            RAISE EXCEPTION 'chatlog: no such conversation' USING ERRCODE = 'CLN01';
        END IF;
        -- A statement of its own, after the lock: its snapshot sees every append committed before.
        SELECT coalesce(max(position) + 1, 0) INTO v_next FROM messages WHERE conversation_seq = v_seq;
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
    -- What migrations 5 and 6's INSERT triggers counted: the usual case (every row under the active keys) in one row.
    FOREACH v_tokens IN ARRAY p_prompt_tokens LOOP v_prompt := v_prompt + coalesce(v_tokens, 0); END LOOP;
    FOREACH v_tokens IN ARRAY p_completion_tokens LOOP v_completion := v_completion + coalesce(v_tokens, 0); END LOOP;
    IF (p_new_id IS NULL OR (p_new_key_id = p_data_key AND p_new_subject_key_id IS NULL)) AND p_data_key = ALL (p_key_ids)
       AND p_index_key = ALL (array_remove(p_index_key_ids, NULL)) THEN
        INSERT INTO row_count_deltas (conversations, messages, conversations_with_messages, prompt_tokens, completion_tokens,
                                      data_key_id, data_key_rows, index_key_id, index_key_rows)
        VALUES (CASE WHEN p_new_id IS NULL THEN 0 ELSE 1 END, cardinality(p_ids),
                CASE WHEN v_next = 0 AND cardinality(p_ids) > 0 THEN 1 ELSE 0 END,
                v_prompt, v_completion,
                p_data_key, cardinality(p_ids) + CASE WHEN p_new_id IS NULL THEN 0 ELSE 1 END,
                p_index_key, cardinality(array_remove(p_index_key_ids, NULL)));
    ELSE
        -- What the foreign keys to `keys` checked row by row, once: every key the append names is a key of this store.
        SELECT k INTO v_missing FROM unnest(p_key_ids || p_index_key_ids || p_new_key_id || p_new_subject_key_id) AS k
        WHERE k IS NOT NULL AND NOT EXISTS (SELECT 1 FROM keys WHERE id = k) LIMIT 1;
        IF v_missing IS NOT NULL THEN
            RAISE EXCEPTION 'chatlog: key % is not a key of this store', v_missing USING ERRCODE = 'foreign_key_violation';
        END IF;
        INSERT INTO row_count_deltas (conversations, messages, conversations_with_messages, prompt_tokens, completion_tokens)
        VALUES (CASE WHEN p_new_id IS NULL THEN 0 ELSE 1 END, cardinality(p_ids),
                CASE WHEN v_next = 0 AND cardinality(p_ids) > 0 THEN 1 ELSE 0 END,
                coalesce((SELECT sum(t) FROM unnest(p_prompt_tokens) AS t), 0), coalesce((SELECT sum(t) FROM unnest(p_completion_tokens) AS t), 0));
        INSERT INTO key_usage_deltas (key_id, row_count)
        SELECT id, count(*) FROM (
            SELECT unnest(p_key_ids) AS id UNION ALL SELECT unnest(p_index_key_ids)
            UNION ALL SELECT p_new_key_id WHERE p_new_id IS NOT NULL UNION ALL SELECT p_new_subject_key_id WHERE p_new_id IS NOT NULL
        ) used WHERE id IS NOT NULL GROUP BY id;
    END IF;
END
$$;
