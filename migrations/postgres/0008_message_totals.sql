-- chatlog PostgreSQL schema, migration 8: `stats` without a scan (docs/ARCHITECTURE.md §10,
-- docs/PERFORMANCE.md "1,000,000 messages on PostgreSQL").
--
-- `chatlog stats` (no filter) summed every message's token counts and counted the conversations that
-- have a message: a scan of `messages`, 0.40 s at 1,000,000 messages. Migration 5's delta rows now carry
-- those numbers too, written by the same statement-level triggers and folded the same way (SQLite keeps
-- the same totals: migrations/0007_counters.sql). Written so that running it again changes nothing but
-- recomputing the totals from the rows.
--
-- A conversation starts having messages when its message at position 0 is inserted: positions are
-- gap-free from 0, and an append to a conversation with no message left starts at 0 again. It stops when
-- a statement deletes its last message (checked after the statement; chatlog's deletes of single
-- messages lock their conversations first, as appends do, so the two cannot pass each other).
ALTER TABLE row_counts
    ADD COLUMN IF NOT EXISTS conversations_with_messages BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS prompt_tokens BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS completion_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE row_count_deltas
    ADD COLUMN IF NOT EXISTS conversations_with_messages BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS prompt_tokens BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS completion_tokens BIGINT NOT NULL DEFAULT 0;

-- The totals of the rows there are now; deltas written before this migration carry no totals (0), so
-- nothing is counted twice.
UPDATE row_count_deltas SET conversations_with_messages = 0, prompt_tokens = 0, completion_tokens = 0;
UPDATE row_counts SET
    conversations_with_messages = (SELECT count(DISTINCT conversation_seq) FROM messages),
    prompt_tokens = (SELECT coalesce(sum(prompt_tokens), 0) FROM messages),
    completion_tokens = (SELECT coalesce(sum(completion_tokens), 0) FROM messages)
WHERE id = 1;

CREATE OR REPLACE FUNCTION chatlog_count_rows() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed BIGINT;
    started BIGINT := 0;
    prompt BIGINT := 0;
    completion BIGINT := 0;
BEGIN
    IF TG_TABLE_NAME = 'conversations' THEN
        IF TG_OP = 'INSERT' THEN
            SELECT count(*) INTO changed FROM inserted_rows;
        ELSE
            SELECT -count(*) INTO changed FROM deleted_rows;
        END IF;
        IF changed <> 0 THEN
            INSERT INTO row_count_deltas (conversations, messages) VALUES (changed, 0);
        END IF;
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        SELECT count(*), count(*) FILTER (WHERE position = 0), coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0)
        INTO changed, started, prompt, completion FROM inserted_rows;
    ELSE
        SELECT -count(*), -coalesce(sum(prompt_tokens), 0), -coalesce(sum(completion_tokens), 0)
        INTO changed, prompt, completion FROM deleted_rows;
        SELECT -count(*) INTO started FROM (SELECT DISTINCT conversation_seq FROM deleted_rows) d
        WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.conversation_seq = d.conversation_seq);
    END IF;
    IF changed <> 0 THEN
        INSERT INTO row_count_deltas (conversations, messages, conversations_with_messages, prompt_tokens, completion_tokens)
        VALUES (0, changed, started, prompt, completion);
    END IF;
    RETURN NULL;
END
$$;
