#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into Fuzz/corpus/<target>/ from the project's
own vectors and fixtures (docs/vectors/sealed-v1.json, Tests/Fixtures). Run from anywhere:

    python3 Fuzz/make_corpus.py

The output is committed; rerun after the fixtures change. Needs only the standard library."""

import base64
import json
import os
import shutil
import sqlite3
import struct
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "Fuzz", "corpus")
FIXTURES = "/tmp/chatlog-fuzz-fixtures"  # made by FuzzDotEnv at start


def target(name):
    path = os.path.join(CORPUS, name)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def write(directory, name, data):
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


def sealed_value():
    out = target("FuzzSealedValue")
    vectors = json.load(open(os.path.join(ROOT, "docs", "vectors", "sealed-v1.json")))
    for vector in vectors["sealed"]:
        sealed = bytes.fromhex(vector["sealed_hex"])
        write(out, "open-" + vector["name"], b"\x00" + sealed)
        write(out, "open-truncated-" + vector["name"], b"\x00" + sealed[:29])
    first = bytes.fromhex(vectors["sealed"][0]["sealed_hex"])
    write(out, "open-version-2", b"\x00\x02" + first[1:])
    write(out, "open-header-only", b"\x00" + first[:46])
    for vector in vectors["wrapped_keys"]:
        kind = b"\x00" if vector["kind"] == "data" else b"\x01"
        wrapped = bytes.fromhex(vector["sealed_hex"])
        write(out, "unwrap-" + vector["name"], b"\x02" + kind + struct.pack(">I", vector["id"]) + wrapped)
        write(out, "unwrap-wrong-id-" + vector["name"], b"\x02" + kind + struct.pack(">I", vector["id"] + 1) + wrapped)

    def round_trip(name, table, column, row, block, nonce, flip, mask, cut, plaintext):
        def short(text):
            data = text.encode("utf-8")
            return bytes([len(data)]) + data
        nonce = (nonce + b"\x00" * 24)[:24]
        write(out, "seal-" + name,
              b"\x01" + short(table) + short(column) + short(row) + bytes([block - 1]) + nonce
              + struct.pack(">H", flip) + bytes([mask, cut]) + plaintext)

    round_trip("empty", "messages", "content", "0193a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b", 32, b"n" * 24, 0, 1, 0, b"")
    round_trip("text", "messages", "content", "m1", 32, b"chatlog-vector-nonce-001", 40, 0x80, 1,
               "Grüße, 世界 — the quick brown fox".encode())
    round_trip("exact-block", "conversations", "title", "c1", 16, b"\x01" * 24, 3, 0xFF, 5, b"0123456789abcdef")
    round_trip("block-1", "keys", "wrapped", "data:1", 1, b"", 2, 4, 0, b"\x80\x00\x00")
    round_trip("big-block", "messages", "metadata", "", 256, b"\xff" * 24, 999, 2, 200, b'{"a":1}')


def key_file():
    out = target("FuzzKeyFile")
    raw = bytes(range(0x61, 0x61 + 32))
    b64 = base64.b64encode(raw)
    write(out, "base64-newline", b64 + b"\n")
    write(out, "base64-crlf", b64 + b"\r\n")
    write(out, "base64-spaces", b"  " + b64 + b" \t\n")
    write(out, "base64-no-padding", b64.rstrip(b"="))
    write(out, "base64-urlsafe", base64.urlsafe_b64encode(bytes(range(0xE0, 0x100))) + b"\n")
    write(out, "base64-two-lines", b64 + b"\n" + b64 + b"\n")
    write(out, "raw-32", raw)
    write(out, "raw-32-newlines", b"\n" * 32)
    write(out, "raw-31", raw[:31])
    write(out, "all-zero-base64", base64.b64encode(bytes(32)) + b"\n")
    write(out, "readme-example", b"Y2hhdGxvZy1leGFtcGxlLWtleS1kby1ub3QtdXNlISE=\n")
    write(out, "passphrase", b"correct horse battery staple\n")
    write(out, "passphrase-crlf", b"correct horse battery staple\r\nsecond line\r\n")
    write(out, "passphrase-short", b"short\n")
    write(out, "passphrase-exactly-8", b"12345678")
    write(out, "passphrase-utf8", "pässwört 🔑 sécret\n".encode())
    write(out, "binary", bytes(range(256)))
    write(out, "empty", b"")


def dot_env():
    out = target("FuzzDotEnv")
    b64 = base64.b64encode(bytes(range(0x61, 0x61 + 32))).decode()
    cases = {
        "master-key": f"CHATLOG_MASTER_KEY={b64}\n",
        "master-key-quoted": f'CHATLOG_MASTER_KEY="{b64}"\n',
        "master-key-single-quoted": f"CHATLOG_MASTER_KEY='{b64}'\n",
        "master-key-export": f"export CHATLOG_MASTER_KEY={b64}\n",
        "master-key-comment": f"# chatlog\nCHATLOG_MASTER_KEY={b64} # the key\n\n",
        "master-key-bad": "CHATLOG_MASTER_KEY=not-a-key-at-all-but-long-enough\n",
        "master-key-placeholder": "CHATLOG_MASTER_KEY=Y2hhdGxvZy1leGFtcGxlLWtleS1kby1ub3QtdXNlISE=\n",
        "master-key-empty": "CHATLOG_MASTER_KEY=\nCHATLOG_DB=/tmp/chat.db\n",
        "new-master-key": f"CHATLOG_NEW_MASTER_KEY={b64}\nCHATLOG_MASTER_KEY_FILE={FIXTURES}/key.raw\n",
        "key-file-b64": f"CHATLOG_MASTER_KEY_FILE={FIXTURES}/key.b64\n",
        "key-file-raw": f"CHATLOG_MASTER_KEY_FILE={FIXTURES}/key.raw\n",
        "key-file-loose": f"CHATLOG_MASTER_KEY_FILE={FIXTURES}/loose.key\n",
        "key-file-link": f"CHATLOG_MASTER_KEY_FILE={FIXTURES}/link.key\n",
        "key-file-empty": f"CHATLOG_MASTER_KEY_FILE={FIXTURES}/empty\n",
        "key-file-big": f"CHATLOG_MASTER_KEY_FILE={FIXTURES}/big\n",
        "key-file-missing": f"CHATLOG_MASTER_KEY_FILE={FIXTURES}/missing\n",
        "key-file-directory": f"CHATLOG_MASTER_KEY_FILE={FIXTURES}\n",
        "passphrase-file": f"CHATLOG_PASSPHRASE_FILE={FIXTURES}/passphrase\n",
        "passphrase-file-short": f"CHATLOG_PASSPHRASE_FILE={FIXTURES}/short-passphrase\n",
        "new-passphrase-file": f"CHATLOG_NEW_PASSPHRASE_FILE={FIXTURES}/passphrase\nCHATLOG_NEW_MASTER_KEY_FILE={FIXTURES}/key.b64\n",
        "all": f"CHATLOG_DB=chat.db\nCHATLOG_MASTER_KEY={b64}\nCHATLOG_MASTER_KEY_FILE={FIXTURES}/key.b64\n"
               f"CHATLOG_PASSPHRASE_FILE={FIXTURES}/passphrase\n",
        "lowercase-and-dots": f"chatlog.master.key={b64}\nchatlog_master_key={b64}\n",
        "multiline-quoted": f'CHATLOG_MASTER_KEY="{b64[:20]}\n{b64[20:]}"\n',
        "no-equals": "CHATLOG_MASTER_KEY\n=value\n==\n",
        "crlf": f"CHATLOG_MASTER_KEY={b64}\r\nCHATLOG_DB=x\r\n",
        "empty": "",
    }
    for name, text in cases.items():
        write(out, name, text)


def search_query():
    out = target("FuzzSearchQuery")
    queries = [
        "refund", "refund -paypal \"charged twice\"", "a OR b c", "OR", "a OR", "OR a", "a OR OR b", "a OR -b", "-a",
        "-", "--a b", "\"unclosed phrase", "\"\"", "\" \"", "e-mail", "東京タワー", "ΟΔΟΣ", "İstanbul", "ﬁle ½ x²",
        "cafe\u0301", "ｶﾞｷﾞ", "\u0301\u0301a", "🙂 ‍ ️ a", "\u202Eevil\u202C", "a\u200Bb", "NEAR(a b, 2)", "a* ^b col:c",
        "'; DROP TABLE messages; --", "a AND b NOT c", "\"a\" \"b\"  OR  \"c d\"", "x" * 5000,
        " ".join(f"w{i}" for i in range(70)), " ".join(f"\"p{i} q{i}\"" for i in range(60)),
    ]
    for index, query in enumerate(queries):
        write(out, f"query-{index:02}", query)
    texts = [
        ("refund -paypal \"charged twice\"", "I was charged twice; please refund (not via PayPal)."),
        ("grüße köln", "Grüße aus Köln!"),
        ("\"東京 タ\"", "東京タワーへ行きました"),
        ("οδος", "ΟΔΟΣ"),
        ("file", "ﬁle"),
        ("\"e mail\" OR email", "send an e-mail"),
        ("a -b", "a b a"),
        ("ガ", "ｶﾞ"),
        ("\"x y\" -z", "x y z"),
    ]
    for index, (query, text) in enumerate(texts):
        write(out, f"match-{index:02}", query.encode() + b"\x00" + text.encode())


def openai_jsonl():
    out = target("FuzzOpenAIJSONL")
    fixtures = os.path.join(ROOT, "Tests", "Fixtures", "openai")
    sample = open(os.path.join(fixtures, "sample.jsonl"), "rb").read()
    write(out, "sample.jsonl", sample)
    for index, line in enumerate(sample.splitlines()):
        write(out, f"sample-line-{index:02}", line)
    for name in sorted(os.listdir(os.path.join(fixtures, "bad"))):
        write(out, "bad-" + name, open(os.path.join(fixtures, "bad", name), "rb").read())
    write(out, "extras", json.dumps({
        "id": "c1", "title": "t", "subject": "s", "model": "gpt", "created_at": "2026-11-27T10:04:05.123Z",
        "metadata": {"k": [1, 2.5, None, True]},
        "messages": [
            {"role": "user", "content": None, "created_at": "2026-11-27T10:04:05+02:00", "metadata": "x"},
            {"role": "assistant", "content": "hi", "usage": {"prompt_tokens": 3, "completion_tokens": 4},
             "latency_ms": 12, "finish_reason": "stop", "tool_calls": [{"id": "t"}], "id": "m1", "model": None},
            {"role": "tool", "content": [{"type": "text", "text": "a"}, "b", {"type": "image_url"}], "tool_call_id": "t",
             "created_at": "2026-11-27"},
        ]}))
    write(out, "crlf-and-blank", b'{"messages": []}\r\n\r\n   \n{"messages": [{"role": "user", "content": "x"}]}')


def chatgpt():
    out = target("FuzzChatGPT")
    path = os.path.join(ROOT, "Tests", "Fixtures", "chatgpt", "conversations.json")
    data = open(path, "rb").read()
    write(out, "conversations.json", data)
    conversations = json.loads(data)
    for index, conversation in enumerate(conversations):
        write(out, f"conversation-{index}.json", json.dumps([conversation], ensure_ascii=False))
    write(out, "bom", b"\xef\xbb\xbf" + json.dumps([conversations[-1]]).encode())
    write(out, "zip", b"PK\x03\x04" + b"\x00" * 26)
    write(out, "object", b'{"mapping": {}}')
    write(out, "no-current-node", json.dumps([{
        "id": "c", "title": None, "create_time": 1718207114.258, "update_time": 1718207120,
        "mapping": {
            "r": {"id": "r", "message": None, "parent": None, "children": ["a"]},
            "a": {"id": "a", "parent": "r", "children": [], "message": {
                "author": {"role": "user", "name": "n"}, "create_time": 1718207115,
                "content": {"content_type": "text", "parts": ["hi", None, {"content_type": "audio_transcription", "text": "t"}]},
                "metadata": {}, "recipient": "all"}},
        }}]))


def llm_logs():
    out = target("FuzzLLMLogs")
    fixtures = os.path.join(ROOT, "Tests", "Fixtures", "llm")
    for name in sorted(os.listdir(fixtures)):
        if not name.endswith(".db"):
            continue
        source = os.path.join(fixtures, name)
        stem = name[:-3]
        # The real file, unchanged (named .sqlite: the repository ignores *.db).
        shutil.copyfile(source, os.path.join(out, stem + ".sqlite"))
        # A small copy: full-text tables dropped, a few rows kept, 512-byte pages, so that the
        # fuzzer also has inputs it can mutate quickly.
        with tempfile.TemporaryDirectory() as scratch:
            copy = os.path.join(scratch, "mini.db")
            shutil.copyfile(source, copy)
            db = sqlite3.connect(copy)
            tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for table in tables:
                if "_fts" in table or table.startswith("turn_search"):
                    try:
                        db.execute(f'DROP TABLE IF EXISTS "{table}"')
                    except sqlite3.DatabaseError:
                        pass
            for trigger in [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")]:
                db.execute(f'DROP TRIGGER "{trigger}"')
            if "responses" in tables:
                db.execute("DELETE FROM responses WHERE rowid NOT IN (SELECT rowid FROM responses ORDER BY rowid LIMIT 3)")
            db.commit()
            db.execute("PRAGMA page_size = 512")
            db.execute("VACUUM")
            db.close()
            shutil.copyfile(copy, os.path.join(out, stem + "-mini.sqlite"))
    write(out, "header-only", b"SQLite format 3\x00")
    write(out, "not-sqlite", b"SQLite format 2\x00" + b"\x00" * 84)


if __name__ == "__main__":
    sealed_value()
    key_file()
    dot_env()
    search_query()
    openai_jsonl()
    chatgpt()
    llm_logs()
    for name in sorted(os.listdir(CORPUS)):
        files = os.listdir(os.path.join(CORPUS, name))
        size = sum(os.path.getsize(os.path.join(CORPUS, name, f)) for f in files)
        print(f"{name}: {len(files)} files, {size} bytes")
