-- chatlog PostgreSQL schema, migration 6: rows per key without a scan (docs/ARCHITECTURE.md §10), as SQLite's
-- migration 0007 keeps them: `chatlog key status` (from cron) and every key rotation read how many rows use
-- each key, which was four scans of `messages` and `conversations` (messages.key_id, messages.index_key_id,
-- conversations.key_id, conversations.subject_key_id).
--
-- Same shape as migration 5's row counts: statement triggers append delta rows (never an update of a shared
-- row), `key_usage` holds the folded totals, a reader adds the unfolded deltas in the same statement, and the
-- writers' occasional fold (ChatLogPostgres) moves them. An UPDATE counts the new rows' keys up and the old
-- rows' down, and appends only what changed: bumping a conversation's `updated_at` appends nothing.
CREATE TABLE key_usage (
    key_id    BIGINT PRIMARY KEY,
    row_count BIGINT NOT NULL
);
INSERT INTO key_usage (key_id, row_count)
SELECT id, count(*) FROM (
    SELECT key_id AS id FROM conversations
    UNION ALL SELECT subject_key_id FROM conversations WHERE subject_key_id IS NOT NULL
    UNION ALL SELECT key_id FROM messages
    UNION ALL SELECT index_key_id FROM messages WHERE index_key_id IS NOT NULL
) used GROUP BY id;

CREATE TABLE key_usage_deltas (
    key_id    BIGINT NOT NULL,
    row_count BIGINT NOT NULL
);

CREATE FUNCTION chatlog_count_key_usage() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'messages' THEN
        IF TG_OP = 'INSERT' THEN
            INSERT INTO key_usage_deltas (key_id, row_count)
            SELECT id, count(*) FROM (
                SELECT key_id AS id FROM new_rows UNION ALL SELECT index_key_id FROM new_rows WHERE index_key_id IS NOT NULL
            ) used GROUP BY id;
        ELSIF TG_OP = 'DELETE' THEN
            INSERT INTO key_usage_deltas (key_id, row_count)
            SELECT id, -count(*) FROM (
                SELECT key_id AS id FROM old_rows UNION ALL SELECT index_key_id FROM old_rows WHERE index_key_id IS NOT NULL
            ) used GROUP BY id;
        ELSE
            INSERT INTO key_usage_deltas (key_id, row_count)
            SELECT id, sum(change) FROM (
                SELECT key_id AS id, 1 AS change FROM new_rows
                UNION ALL SELECT index_key_id, 1 FROM new_rows WHERE index_key_id IS NOT NULL
                UNION ALL SELECT key_id, -1 FROM old_rows
                UNION ALL SELECT index_key_id, -1 FROM old_rows WHERE index_key_id IS NOT NULL
            ) used GROUP BY id HAVING sum(change) <> 0;
        END IF;
    ELSE
        IF TG_OP = 'INSERT' THEN
            INSERT INTO key_usage_deltas (key_id, row_count)
            SELECT id, count(*) FROM (
                SELECT key_id AS id FROM new_rows UNION ALL SELECT subject_key_id FROM new_rows WHERE subject_key_id IS NOT NULL
            ) used GROUP BY id;
        ELSIF TG_OP = 'DELETE' THEN
            INSERT INTO key_usage_deltas (key_id, row_count)
            SELECT id, -count(*) FROM (
                SELECT key_id AS id FROM old_rows UNION ALL SELECT subject_key_id FROM old_rows WHERE subject_key_id IS NOT NULL
            ) used GROUP BY id;
        ELSE
            INSERT INTO key_usage_deltas (key_id, row_count)
            SELECT id, sum(change) FROM (
                SELECT key_id AS id, 1 AS change FROM new_rows
                UNION ALL SELECT subject_key_id, 1 FROM new_rows WHERE subject_key_id IS NOT NULL
                UNION ALL SELECT key_id, -1 FROM old_rows
                UNION ALL SELECT subject_key_id, -1 FROM old_rows WHERE subject_key_id IS NOT NULL
            ) used GROUP BY id HAVING sum(change) <> 0;
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER messages_key_usage_inserts AFTER INSERT ON messages REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION chatlog_count_key_usage();
CREATE TRIGGER messages_key_usage_deletes AFTER DELETE ON messages REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION chatlog_count_key_usage();
CREATE TRIGGER messages_key_usage_updates AFTER UPDATE ON messages REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION chatlog_count_key_usage();
CREATE TRIGGER conversations_key_usage_inserts AFTER INSERT ON conversations REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION chatlog_count_key_usage();
CREATE TRIGGER conversations_key_usage_deletes AFTER DELETE ON conversations REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION chatlog_count_key_usage();
CREATE TRIGGER conversations_key_usage_updates AFTER UPDATE ON conversations REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION chatlog_count_key_usage();
