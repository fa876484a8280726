-- The blinded-term index's row id becomes the message's own row id, messages.seq
-- (docs/ARCHITECTURE.md §10, "The search index's row id is the message's seq"; docs/FORMAT.md).
-- Row ids that grow by one per message make the index's doclists (varint deltas of row ids)
-- about a fifth of their size with created_at·2^20 row ids, and drop the search_rowid column and
-- its unique index. Newest-first order comes from time_lag instead (Search/ChatLogStore+Search.swift):
--
-- time_lag = (largest created_at of any message in the store when this one was inserted, itself
-- included) - created_at. 0 for a message logged in time order (SQLite stores a 0 in no bytes);
-- > 0 for older history imported later. Every message with a smaller seq has
-- created_at <= created_at + time_lag, so a newest-first scan in seq order can stop once that bound
-- falls below its page. Writers keep it (ChatLogStore+Writing.swift); deletes never break it.
--
-- One transaction (like every migration): a kill leaves the old store intact and the next open
-- converts it again from the start. Cost: docs/PERFORMANCE.md, "Migration 0011".
ALTER TABLE messages ADD COLUMN time_lag INTEGER NOT NULL DEFAULT 0;
UPDATE messages SET time_lag = running.max_created_at - messages.created_at
FROM (SELECT seq, max(created_at) OVER (ORDER BY seq) AS max_created_at FROM messages) AS running
WHERE running.seq = messages.seq AND running.max_created_at > messages.created_at;

-- The new index, with 0002's definition and 0008's settings, filled in seq order (FTS5 appends
-- rising row ids without flushing) from the old one's live (term, row id) pairs: stale entries
-- of rows no message has, and deleted terms not yet merged away, are not carried over.
CREATE VIRTUAL TABLE message_terms_by_seq USING fts5 (
    terms,
    content = '',
    columnsize = 0,
    detail = none,
    tokenize = 'ascii'
);
INSERT INTO message_terms_by_seq (message_terms_by_seq, rank) VALUES ('automerge', 8);
INSERT INTO message_terms_by_seq (message_terms_by_seq, rank) VALUES ('hashsize', 8388608);
INSERT INTO message_terms_by_seq (rowid, terms)
SELECT m.seq, group_concat(v.term, ' ')
FROM message_terms_instance AS v JOIN messages AS m ON m.search_rowid = v.doc
WHERE m.index_key_id IS NOT NULL
GROUP BY m.seq
ORDER BY m.seq;
-- One segment: the old index is gone with its tombstones (the scrub is done); the pending mark,
-- if any, can go too.
INSERT INTO message_terms_by_seq (message_terms_by_seq) VALUES ('optimize');
DELETE FROM chatlog_meta WHERE name = 'search_scrub_pending';

DROP TABLE message_terms_vocab;
DROP TABLE message_terms_instance;
DROP TABLE message_terms;
ALTER TABLE message_terms_by_seq RENAME TO message_terms;
CREATE VIRTUAL TABLE message_terms_vocab USING fts5vocab (message_terms, row);
CREATE VIRTUAL TABLE message_terms_instance USING fts5vocab (message_terms, instance);

DROP INDEX messages_by_search_rowid;
ALTER TABLE messages DROP COLUMN search_rowid;
