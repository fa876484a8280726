-- chatlog PostgreSQL schema, migration 2: what listings and short ids need (docs/ARCHITECTURE.md §10).
--
-- Short ids (`chatlog show 0193a5f2`) look ids up by prefix and list each id's neighbours in byte
-- order, as SQLite compares text; the unique index on `id` follows the database's collation, which
-- may ignore the hyphens of a UUID. These indexes are in byte order ("C").
CREATE INDEX conversations_by_id_bytes ON conversations (id COLLATE "C");
CREATE INDEX messages_by_id_bytes ON messages (id COLLATE "C");

-- `chatlog list` pages newest first by (created_at, seq).
DROP INDEX conversations_by_created;
CREATE INDEX conversations_by_created ON conversations (created_at, seq);
