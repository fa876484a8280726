-- Key rows are authenticated under the master key (docs/FORMAT.md, "Key-row MAC"): a keyed
-- BLAKE2b-256 over id, kind, state, created_at, retired_at and wrapped, so changing a key's state
-- (or any of those columns) without the master key is an integrity failure at open.
-- A migration cannot compute the MAC (it has no key): stores migrated from an earlier schema get
-- their MACs at their first keyed open, in one transaction that also replaces the v1 master-key
-- check value by the v2 one (the marker that a store's key rows are authenticated).
ALTER TABLE keys ADD COLUMN mac BLOB;
