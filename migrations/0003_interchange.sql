-- Import bookkeeping: what came from where, so that importing the same file twice adds nothing.
-- The source of a conversation (format and its id in that format) is never stored, only a keyed
-- hash of it (BLAKE2b-128 under the import key, which is wrapped by the master key in
-- chatlog_meta): a thief of the file cannot test "did this store import ChatGPT conversation X".
CREATE TABLE imports (
    source_hash      BLOB    PRIMARY KEY NOT NULL,
    conversation_seq INTEGER NOT NULL REFERENCES conversations (seq) ON DELETE CASCADE,
    imported_at      INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX imports_by_conversation ON imports (conversation_seq);
