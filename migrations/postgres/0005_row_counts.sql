-- chatlog PostgreSQL schema, migration 5: exact row counts without count(*) (docs/ARCHITECTURE.md §10,
-- docs/PERFORMANCE.md "PostgreSQL backend").
--
-- Relevance search needs the number of messages (BM25's N) on every query, and count(*) reads the whole
-- table: ~20–25 ms at 300,000 messages, growing with the store. The counts are kept in step with every write
-- instead, by statement-level triggers, so every path (logging, the proxy, import, copy, prune, rm, repair,
-- forget) is counted without code of its own.
--
-- Writers never update a shared row (several writer processes would queue on it, and a writer that holds
-- conversation locks while it waits for a counter row could deadlock with another): each statement that
-- inserts or deletes rows appends one delta row. `row_counts` holds the folded total; a reader adds the
-- deltas not folded yet in the same statement (one snapshot: a fold is seen entirely or not at all). Folding
-- (ChatLogPostgres: a writer folds after every few hundred of its own commits, in a statement of its own)
-- moves the deltas into the total: DELETE … RETURNING and the UPDATE in one statement, so two folds at once
-- each move the rows they deleted and the second waits for the first's row lock.
CREATE TABLE row_counts (
    id            SMALLINT PRIMARY KEY CHECK (id = 1),
    conversations BIGINT NOT NULL,
    messages      BIGINT NOT NULL
);
INSERT INTO row_counts (id, conversations, messages)
SELECT 1, (SELECT count(*) FROM conversations), (SELECT count(*) FROM messages);

CREATE TABLE row_count_deltas (
    conversations BIGINT NOT NULL,
    messages      BIGINT NOT NULL
);

-- One function for both tables' triggers: TG_TABLE_NAME says which count the statement changed.
CREATE FUNCTION chatlog_count_rows() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed BIGINT;
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT count(*) INTO changed FROM inserted_rows;
    ELSE
        SELECT -count(*) INTO changed FROM deleted_rows;
    END IF;
    IF changed <> 0 THEN
        IF TG_TABLE_NAME = 'conversations' THEN
            INSERT INTO row_count_deltas (conversations, messages) VALUES (changed, 0);
        ELSE
            INSERT INTO row_count_deltas (conversations, messages) VALUES (0, changed);
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER conversations_count_inserts AFTER INSERT ON conversations REFERENCING NEW TABLE AS inserted_rows
    FOR EACH STATEMENT EXECUTE FUNCTION chatlog_count_rows();
CREATE TRIGGER conversations_count_deletes AFTER DELETE ON conversations REFERENCING OLD TABLE AS deleted_rows
    FOR EACH STATEMENT EXECUTE FUNCTION chatlog_count_rows();
CREATE TRIGGER messages_count_inserts AFTER INSERT ON messages REFERENCING NEW TABLE AS inserted_rows
    FOR EACH STATEMENT EXECUTE FUNCTION chatlog_count_rows();
CREATE TRIGGER messages_count_deletes AFTER DELETE ON messages REFERENCING OLD TABLE AS deleted_rows
    FOR EACH STATEMENT EXECUTE FUNCTION chatlog_count_rows();
