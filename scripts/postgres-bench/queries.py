#!/usr/bin/env python3
"""scripts/postgres-bench/queries.py: the search-layout comparison of docs/PERFORMANCE.md.
Median EXPLAIN ANALYZE execution time (ms) and shared buffers touched, per layout and query shape."""
import json, os, statistics, subprocess, sys

# The server (socket folder or host) and user that scripts/postgres-bench/load.sql was run against.
HOST = os.environ.get("PGHOST", "/var/run/postgresql")
USER = os.environ.get("PGUSER", "postgres")

def psql(sql):
    return subprocess.run(["psql", "-X", "-At", "-h", HOST, "-U", USER, "-d", "postgres", "-c", sql],
                          check=True, capture_output=True, text=True).stdout.strip()

def measure(sql, runs=7):
    times, buffers = [], []
    for _ in range(runs):
        plan = json.loads(psql("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql))[0]
        times.append(plan["Execution Time"])
        top = plan["Plan"]
        buffers.append(top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0))
    return statistics.median(times), statistics.median(buffers)

# Terms by document frequency: the one nearest each target.
def term_near(df):
    return int(psql(f"SELECT term FROM (SELECT term, count(*) c FROM src GROUP BY term) t ORDER BY abs(c - {df}) LIMIT 1"))

def df(term):
    return int(psql(f"SELECT count(*) FROM inv WHERE term = {term}"))

def hexterm(t):
    return format(t & 0xFFFFFFFFFFFFFFFF, "016x")

targets = {"very common": 400000, "common": 50000, "medium (<10k)": 5000, "rare": 100}
terms = {name: term_near(target) for name, target in targets.items()}
print("| term | df |")
print("|---|---:|")
for name, t in terms.items():
    print(f"| {name} | {df(t):,} |")
print()
rows = []
for name, t in terms.items():
    rows.append((f"newest 20, one word ({name})", {
        "inverted table": f"SELECT message_seq FROM inv WHERE term = {t} ORDER BY created_at DESC, message_seq DESC LIMIT 20",
        "GIN bigint[]": f"SELECT seq FROM arr WHERE terms @> ARRAY[{t}]::bigint[] ORDER BY created_at DESC LIMIT 20",
        "GIN tsvector": f"SELECT seq FROM tsv WHERE terms @@ '{hexterm(t)}'::tsquery ORDER BY created_at DESC LIMIT 20",
    }))
a, b = terms["common"], terms["medium (<10k)"]
rows.append(("newest 20, two words (common AND medium)", {
    "inverted table": f"SELECT t.message_seq FROM inv t WHERE t.term = {b} AND EXISTS (SELECT 1 FROM inv u WHERE u.message_seq = t.message_seq AND u.term = {a}) ORDER BY t.created_at DESC, t.message_seq DESC LIMIT 20",
    "GIN bigint[]": f"SELECT seq FROM arr WHERE terms @> ARRAY[{a},{b}]::bigint[] ORDER BY created_at DESC LIMIT 20",
    "GIN tsvector": f"SELECT seq FROM tsv WHERE terms @@ '{hexterm(a)} & {hexterm(b)}'::tsquery ORDER BY created_at DESC LIMIT 20",
}))
a, b = terms["very common"], terms["common"]
rows.append(("newest 20, two words (very common AND common)", {
    "inverted table": f"SELECT t.message_seq FROM inv t WHERE t.term = {b} AND EXISTS (SELECT 1 FROM inv u WHERE u.message_seq = t.message_seq AND u.term = {a}) ORDER BY t.created_at DESC, t.message_seq DESC LIMIT 20",
    "GIN bigint[]": f"SELECT seq FROM arr WHERE terms @> ARRAY[{a},{b}]::bigint[] ORDER BY created_at DESC LIMIT 20",
    "GIN tsvector": f"SELECT seq FROM tsv WHERE terms @@ '{hexterm(a)} & {hexterm(b)}'::tsquery ORDER BY created_at DESC LIMIT 20",
}))
m = terms["medium (<10k)"]
rows.append(("every match of a medium word (relevance candidates)", {
    "inverted table": f"SELECT message_seq FROM inv WHERE term = {m}",
    "GIN bigint[]": f"SELECT seq FROM arr WHERE terms @> ARRAY[{m}]::bigint[]",
    "GIN tsvector": f"SELECT seq FROM tsv WHERE terms @@ '{hexterm(m)}'::tsquery",
}))
c = terms["common"]
rows.append(("document frequency of a common word", {
    "inverted table": f"SELECT count(*) FROM inv WHERE term = {c}",
    "GIN bigint[]": f"SELECT count(*) FROM arr WHERE terms @> ARRAY[{c}]::bigint[]",
    "GIN tsvector": f"SELECT count(*) FROM tsv WHERE terms @@ '{hexterm(c)}'::tsquery",
}))
layouts = ["inverted table", "GIN bigint[]", "GIN tsvector"]
print("| query | " + " | ".join(layouts) + " |")
print("|---|" + "---:|" * len(layouts))
for label, queries in rows:
    cells = []
    for layout in layouts:
        ms, buf = measure(queries[layout])
        cells.append(f"{ms:.2f} ms ({int(buf):,} buf)")
    print(f"| {label} | " + " | ".join(cells) + " |")
    sys.stdout.flush()
