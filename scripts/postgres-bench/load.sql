-- scripts/postgres-bench/load.sql: the three search-index layouts of docs/PERFORMANCE.md ("PostgreSQL search
-- storage"), 1,000,000 messages of synthetic term sets. Then run queries.py against the same server.
\timing on
-- 1,000,000 messages, each with 1-24 (avg ~12) distinct terms drawn from a Zipf(1)-like vocabulary
-- of 200,000 term values (64-bit, from md5 of the rank). created_at increases with seq.
DROP TABLE IF EXISTS src;
CREATE UNLOGGED TABLE src AS
SELECT DISTINCT m AS message_seq,
       ('x' || substr(md5(floor(exp(random() * ln(200000)))::text), 1, 16))::bit(64)::bigint AS term
FROM generate_series(1, 1000000) m, LATERAL generate_series(1, 1 + (random() * 23)::int + (m * 0)) k;
SELECT count(*) AS pairs, count(DISTINCT term) AS vocabulary FROM src;

-- (1) inverted table, as migrations/postgres/0001
DROP TABLE IF EXISTS inv;
CREATE TABLE inv (message_seq bigint NOT NULL, term bigint NOT NULL, created_at bigint NOT NULL, PRIMARY KEY (message_seq, term));
INSERT INTO inv SELECT message_seq, term, 1700000000000 + message_seq * 100 FROM src ORDER BY message_seq, term;
CREATE INDEX inv_by_term ON inv (term, created_at, message_seq);

-- (2) bigint[] per message with a GIN index, and a btree on created_at for newest-first
DROP TABLE IF EXISTS arr;
CREATE TABLE arr (seq bigint PRIMARY KEY, created_at bigint NOT NULL, terms bigint[] NOT NULL);
INSERT INTO arr SELECT message_seq, 1700000000000 + message_seq * 100, array_agg(term) FROM src GROUP BY message_seq ORDER BY message_seq;
CREATE INDEX arr_gin ON arr USING gin (terms);
CREATE INDEX arr_by_created ON arr (created_at);

-- (3) tsvector of the base32-ish encoded terms (hex here: same length class), GIN
DROP TABLE IF EXISTS tsv;
CREATE TABLE tsv (seq bigint PRIMARY KEY, created_at bigint NOT NULL, terms tsvector NOT NULL);
INSERT INTO tsv SELECT message_seq, 1700000000000 + message_seq * 100,
    array_to_tsvector(array_agg(lpad(to_hex(term), 16, '0'))) FROM src GROUP BY message_seq ORDER BY message_seq;
CREATE INDEX tsv_gin ON tsv USING gin (terms);
CREATE INDEX tsv_by_created ON tsv (created_at);
VACUUM ANALYZE inv; VACUUM ANALYZE arr; VACUUM ANALYZE tsv;
SELECT relname, pg_size_pretty(pg_total_relation_size(oid)) AS total, pg_total_relation_size(oid) AS bytes
FROM pg_class WHERE relname IN ('inv', 'arr', 'tsv') ORDER BY relname;
