-- Index-key rotation finds conversations whose subject token is under an older index key with
-- "subject_key_id < ? OR subject_key_id > ?" (KeyRotation.otherThan). Without an index on the
-- column every batch would scan the whole conversations table.
CREATE INDEX conversations_by_subject_key ON conversations (subject_key_id);
