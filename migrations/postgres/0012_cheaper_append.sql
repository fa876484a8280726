-- chatlog PostgreSQL schema, migration 12: a cheaper append (docs/ARCHITECTURE.md §10, docs/PERFORMANCE.md
-- "A cheaper append (migration 0012)").
--
-- Measured against a plaintext peer (scripts/bench-postgres), each part of `chatlog_append` (migration 11) was
-- taken out in turn; what cost most, and what replaces it:
-- 1. The guard locked three rows FOR SHARE (the master key's check value, both active keys): a tuple lock writes
--    the row and WAL, and with several writers a MultiXact. Now an append holds a shared transaction-level
--    advisory lock (class "chat" = 1667785076, key 4), and the one transaction that changes keys or the check value
--    (ChatLogPostgres's `replaceKeys`) takes it exclusively before anything else: it waits for every append in
--    flight, and appends after it read the new keys (the lock is taken in a statement before the read, whose
--    snapshot is then taken after the change committed) and are refused as before (CLG01, CLG02).
-- 2. The row-count and key-usage deltas were two inserts with aggregates. The usual append (every row under the
--    active keys) now writes one row of `row_count_deltas`, which carries its two keys' row counts in four new
--    columns; the fold and the key-usage reads count them (other appends write key_usage_deltas as before).
-- 3. Fewer statements: the guard in one read, the conversation's row lock taken by its UPDATE of `updated_at`.
-- 4. The key-usage trigger of conversations (migration 6) fired on every UPDATE, so on each append's update of
--    `updated_at`, materializing both transition tables to find no key changed. It is now a row trigger that
--    only an UPDATE naming `key_id` or `subject_key_id` fires, for rows whose key changed (rotation, erasure).
-- 5. Fewer indexes per row: `messages_by_key`, `messages_by_index_key`, `conversations_by_key` and
--    `conversations_by_subject_key` served only `key retire`'s exact count (now four scans, once per retire;
--    rotation walks the primary key since migration 9's time); and the ids take the "C" collation, so the
--    unique index on `id` serves the byte-order listings that `*_by_id_bytes` served (equality on ids is the
--    same: both collations are deterministic). The id indexes are rebuilt (no table rewrite).
-- Written so that running it again changes nothing.
ALTER TABLE row_count_deltas ADD COLUMN IF NOT EXISTS data_key_id BIGINT, ADD COLUMN IF NOT EXISTS data_key_rows BIGINT,
    ADD COLUMN IF NOT EXISTS index_key_id BIGINT, ADD COLUMN IF NOT EXISTS index_key_rows BIGINT;

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

-- conversations: the key-usage UPDATE trigger only for updates that name a key column, row by row.
CREATE OR REPLACE FUNCTION chatlog_count_conversation_key_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO key_usage_deltas (key_id, row_count)
    SELECT id, sum(change) FROM (
        VALUES (NEW.key_id, 1), (NEW.subject_key_id, 1), (OLD.key_id, -1), (OLD.subject_key_id, -1)
    ) AS used (id, change) WHERE id IS NOT NULL GROUP BY id HAVING sum(change) <> 0;
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS conversations_key_usage_updates ON conversations;
CREATE TRIGGER conversations_key_usage_updates AFTER UPDATE OF key_id, subject_key_id ON conversations
    FOR EACH ROW WHEN (OLD.key_id IS DISTINCT FROM NEW.key_id OR OLD.subject_key_id IS DISTINCT FROM NEW.subject_key_id)
    EXECUTE FUNCTION chatlog_count_conversation_key_change();

DROP INDEX IF EXISTS messages_by_key;
DROP INDEX IF EXISTS messages_by_index_key;
DROP INDEX IF EXISTS conversations_by_key;
DROP INDEX IF EXISTS conversations_by_subject_key;
DROP INDEX IF EXISTS messages_by_id_bytes;
DROP INDEX IF EXISTS conversations_by_id_bytes;
ALTER TABLE messages ALTER COLUMN id TYPE TEXT COLLATE "C";
ALTER TABLE conversations ALTER COLUMN id TYPE TEXT COLLATE "C";
