-- chatlog PostgreSQL schema, migration 4: the term table without its foreign key (docs/ARCHITECTURE.md §10,
-- docs/PERFORMANCE.md "PostgreSQL backend").
--
-- Measured: the foreign key's per-row check (a SELECT … FOR KEY SHARE on messages for every term row) was
-- about two thirds of the cost of writing a message's ~28 term rows, and the term rows most of a logged
-- message's server time. A message's term rows are instead deleted with it by a statement-level trigger: one
-- DELETE per statement that deletes messages (also those that cascade from deleting conversations), joined
-- on the deleted rows. Every insert of term rows names a message written in the same transaction or joins
-- on messages, so no term row can point at a message that does not exist; `chatlog verify` counts any that
-- do and `verify --repair` deletes them.
ALTER TABLE message_terms DROP CONSTRAINT IF EXISTS message_terms_message_seq_fkey;

CREATE FUNCTION chatlog_delete_message_terms() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM message_terms t USING deleted_messages d WHERE t.message_seq = d.seq;
    RETURN NULL;
END
$$;

CREATE TRIGGER messages_delete_terms AFTER DELETE ON messages REFERENCING OLD TABLE AS deleted_messages
    FOR EACH STATEMENT EXECUTE FUNCTION chatlog_delete_message_terms();
