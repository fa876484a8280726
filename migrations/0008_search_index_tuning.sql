-- Merge and flush settings of the blinded-term index (FTS5 configuration rows in
-- message_terms_config; no table, column or index changes). docs/PERFORMANCE.md, "Library logging".
--
-- automerge 8 (FTS5's default is 4): a level's segments are merged once 8 of them exist, not 4,
-- so each term entry is rewritten on fewer levels while messages are logged. A search reads a few
-- more segments (newest-first queries stay well under a millisecond at 1,000,000 messages).
-- hashsize 8 MiB (default 1 MiB): the terms of a 1,000-message transaction (~1.5 MB of pending
-- index data) are flushed as one segment at commit instead of two or three mid-transaction.
-- Memory: at most 8 MiB more for the writer during a large transaction.
INSERT INTO message_terms (message_terms, rank) VALUES ('automerge', 8);
INSERT INTO message_terms (message_terms, rank) VALUES ('hashsize', 8388608);
