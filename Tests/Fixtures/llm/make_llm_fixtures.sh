#!/bin/bash
# The exact steps that produced the llm fixtures in this folder (run once, by hand, on 2026-11-27 by the machine's
# clock, with Python 3.11.7 and sqlite3 3.40.1). Re-running makes equivalent files, not identical ones: ids, hashes
# of tool-call ids and all times change, so the *.expected.json files must be regenerated with reference_reader.py.
# Needs PyPI only; llm-echo's "echo" model needs no network. Work happens under /tmp/fx, never in the repo.
set -euo pipefail
FIX=$(cd "$(dirname "$0")" && pwd)
mkdir -p /tmp/fx && cd /tmp/fx

# --- virtualenvs ---------------------------------------------------------------------------------------------
python3 -m venv /tmp/llmvenv && /tmp/llmvenv/bin/pip install -q llm llm-echo          # got llm 0.36, llm-echo 0.5
python3 -m venv /tmp/llm031  && /tmp/llm031/bin/pip install -q 'llm==0.31.1' 'llm-echo==0.3' httpx
python3 -m venv /tmp/llm018  && /tmp/llm018/bin/pip install -q 'llm==0.18' 'llm-echo==0.1' httpx
# (httpx: old llm imports it, but today's openai package no longer pulls it in.)

# --- inputs: a 1x1 PNG and a text file used as a fragment -----------------------------------------------------
python3 - <<'PY'
import zlib, struct
def chunk(t, d): return struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d) & 0xffffffff)
png = b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 1, 1, 8, 2, 0, 0, 0)) \
    + chunk(b'IDAT', zlib.compress(b'\x00\xff\x00\x00')) + chunk(b'IEND', b'')
open('/tmp/fx/pixel.png', 'wb').write(png)
PY
printf 'Meeting notes, 3 March:\n- ship the importer\n- write fixtures\n' > notes.txt

# --- logs.db: llm 0.36 + llm-echo 0.5 (message store) ----------------------------------------------------------
export LLM_USER_PATH=/tmp/fx/llm-home
rm -rf "$LLM_USER_PATH"; mkdir -p "$LLM_USER_PATH"
L=/tmp/llmvenv/bin/llm
$L -m echo 'Capital of France?'
$L -m echo 'Name three prime numbers.'
$L -m echo -s 'Answer in Spanish.' 'What colour is the sky?'
$L -m echo 'Let us plan a trip.'
$L -c 'Two days in Kyoto.'
$L -c 'And a third day?'
$L -m echo 'Café crème, naïve façade — 東京で寿司を食べる 🍣🎉'
$L -m echo $'Line one\nLine two\n\n  indented line four'
$L -m echo -o example_bool true -o thinking true 'Think about this.'
$L -m echo -T llm_version '{"prompt": "Which llm version?", "tool_calls": [{"name": "llm_version"}]}'
$L -m echo -a - 'Describe this image.' < pixel.png
$L -m echo -f notes.txt 'Summarise these notes.'
$L -m echo 'Capital of France?'

# --- logs-classic.db: llm 0.31.1 + llm-echo 0.3 (last release before the message store) -----------------------
export LLM_USER_PATH=/tmp/fx/llm-classic-home
rm -rf "$LLM_USER_PATH"; mkdir -p "$LLM_USER_PATH"
L=/tmp/llm031/bin/llm
$L -m echo 'Capital of France?'
$L -m echo 'Name three prime numbers.'
$L -m echo -s 'Answer in Spanish.' 'What colour is the sky?'
$L -m echo 'Let us plan a trip.'
$L -c 'Two days in Kyoto.'
$L -c 'And a third day?'
$L -m echo 'Café crème, naïve façade — 東京で寿司を食べる 🍣🎉'
$L -m echo $'Line one\nLine two\n\n  indented line four'
$L -m echo -o example_bool true 'Use the option.'
$L -m echo -T llm_version '{"prompt": "Which llm version?", "tool_calls": [{"name": "llm_version"}]}'
$L -m echo -a - 'Describe this image.' < pixel.png
$L -m echo -f notes.txt 'Summarise these notes.'

# --- logs-classic-0.18.db: llm 0.18 + llm-echo 0.1 (no token/schema/fragment/tool columns yet) ----------------
export LLM_USER_PATH=/tmp/fx/llm-018-home
rm -rf "$LLM_USER_PATH"; mkdir -p "$LLM_USER_PATH"
L=/tmp/llm018/bin/llm
$L -m echo 'Capital of France?'
$L -m echo -s 'Answer in Spanish.' 'What colour is the sky?'
$L -m echo 'Let us plan a trip.'
$L -c 'Two days in Kyoto.'
$L -m echo 'Café crème, naïve façade — 東京で寿司を食べる 🍣🎉'

# --- logs-upgraded.db: a copy of logs-classic.db, then used by llm 0.36 ----------------------------------------
export LLM_USER_PATH=/tmp/fx/llm-upgraded-home
rm -rf "$LLM_USER_PATH"; mkdir -p "$LLM_USER_PATH"
cp /tmp/fx/llm-classic-home/logs.db "$LLM_USER_PATH/logs.db"
L=/tmp/llmvenv/bin/llm
CID=$(sqlite3 "$LLM_USER_PATH/logs.db" "select id from conversations where name = 'Let us plan a trip.'")
$L --cid "$CID" 'And a fourth day, after the upgrade?'
$L -m echo 'First prompt after the upgrade.'

# --- llm's own view of each file (`llm logs --json`), run on throw-away copies: llm >= 0.32 would migrate a
#     classic file in place, so each file is read by the llm version that wrote it -----------------------------
for pair in "llm-home:/tmp/llmvenv:logs" "llm-classic-home:/tmp/llm031:logs-classic" \
            "llm-018-home:/tmp/llm018:logs-classic-0.18" "llm-upgraded-home:/tmp/llmvenv:logs-upgraded"; do
  IFS=: read -r home venv name <<<"$pair"
  rm -rf "/tmp/fx/view-$home"; cp -r "/tmp/fx/$home" "/tmp/fx/view-$home"
  LLM_USER_PATH="/tmp/fx/view-$home" "$venv/bin/llm" logs -n 0 --json > "$FIX/$name.llm-logs.json"
done

# --- into the repo: every file is in rollback-journal mode (no -wal/-shm), so a plain copy is self-contained ----
for pair in llm-home:logs llm-classic-home:logs-classic llm-018-home:logs-classic-0.18 llm-upgraded-home:logs-upgraded; do
  IFS=: read -r home name <<<"$pair"
  test "$(sqlite3 "file:/tmp/fx/$home/logs.db?mode=ro" 'pragma integrity_check')" = ok
  test ! -e "/tmp/fx/$home/logs.db-wal"
  cp "/tmp/fx/$home/logs.db" "$FIX/$name.db"
  python3 "$FIX/reference_reader.py" "$FIX/$name.db" > "$FIX/$name.expected.json"
done
