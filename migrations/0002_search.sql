-- Encrypted search (docs/SECURITY.md, "Search index"). Each message's distinct words are blinded
-- with a keyed PRF under an index key (Search/TokenBlinder.swift) and stored as the text of a
-- contentless FTS5 table: only opaque terms and row ids, no positions, no plaintext.

-- The FTS5 row id of a message: created_at (Unix ms) * 2^20 + a counter, so that FTS5's own
-- rowid order is time order and "newest first" streams straight out of the index.
ALTER TABLE messages ADD COLUMN search_rowid INTEGER;
-- The index key whose terms index this message (NULL: not indexed yet).
ALTER TABLE messages ADD COLUMN index_key_id INTEGER REFERENCES keys (id);
CREATE UNIQUE INDEX messages_by_search_rowid ON messages (search_rowid);
CREATE INDEX messages_by_index_key ON messages (index_key_id);

CREATE VIRTUAL TABLE message_terms USING fts5 (
    terms,
    content = '',
    columnsize = 0,
    detail = none,
    tokenize = 'ascii'
);

-- Document frequency per blinded term, for ranking (BM25 idf).
CREATE VIRTUAL TABLE message_terms_vocab USING fts5vocab (message_terms, row);
