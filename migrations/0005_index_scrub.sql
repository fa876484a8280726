-- Scrubbing the blinded-term index (docs/SECURITY.md, "Search index").
-- A contentless FTS5 table forgets a row only through a 'delete' command, which writes a
-- tombstone (the row's terms and row id again) into a new segment; the old segment keeps the
-- terms until a merge that produces the oldest segment drops both. chatlog forces that merge
-- ('optimize') after every rm, prune and index-key rotation. While a deletion has been committed
-- but not yet merged away, chatlog_meta holds the row 'search_scrub_pending'; `key retire` of
-- an index key refuses while it is there, and the next rm, prune, `key rotate --index` or
-- `verify --repair` finishes the merge. Stores written before this migration may hold such
-- tombstones already, so a store with messages starts with the mark set.
INSERT INTO chatlog_meta (name, value) SELECT 'search_scrub_pending', 1 WHERE EXISTS (SELECT 1 FROM messages);

-- Every (term, row id) pair of the index, in term order: `verify` streams it once to compare
-- the index with the terms recomputed from the messages, and deletion looks up the terms of a
-- message whose content cannot be opened.
CREATE VIRTUAL TABLE message_terms_instance USING fts5vocab (message_terms, instance);
