#!/usr/bin/env python3
"""Generates docs/vectors/sealed-v2.json: test vectors for sealed-value version 2 (docs/FORMAT.md §2.6,
values of a conversation with a subject, sealed under the data key and the subject key).

Independent of the Swift code: PyNaCl and hashlib only (and make_vectors.py's version-1 helpers, which
are themselves written from docs/FORMAT.md). Deterministic: running it again reproduces the JSON.

    python3 docs/vectors/make_vectors_v2.py          # writes docs/vectors/sealed-v2.json
    python3 docs/vectors/make_vectors_v2.py --check  # exits 1 if the committed file differs
"""

import hashlib
import json
import struct
import sys
from pathlib import Path

import nacl.bindings as sodium

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_vectors import lp, pad, subkey, unpad  # noqa: E402  (version-1 pieces, FORMAT.md §2.2–2.3)

VERSION = 2
NONCE_BYTES = 24
HEADER_BYTES = 1 + 4 + 4 + NONCE_BYTES  # 33
SUBJECT_FIELD_TAG = "chatlog/v2/subject-field"


def lp_bytes(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def subkey_v2(data_key: bytes, subject_key: bytes, table: str, column: str, row_id: str) -> bytes:
    first = subkey(data_key, table, column, row_id)
    return hashlib.blake2b(lp(SUBJECT_FIELD_TAG) + lp_bytes(first), key=subject_key, digest_size=32).digest()


def seal_v2(data_key, data_key_id, subject_key, subject_key_id, table, column, row_id, nonce, plaintext, block=32):
    boxed = sodium.crypto_secretbox_easy(pad(plaintext, block), nonce, subkey_v2(data_key, subject_key, table, column, row_id))
    return bytes([VERSION]) + struct.pack(">I", data_key_id) + struct.pack(">I", subject_key_id) + nonce + boxed


def open_v2(data_key, subject_key, table, column, row_id, sealed):
    assert sealed[0] == VERSION and len(sealed) >= HEADER_BYTES + 16 + 1
    nonce = sealed[9:HEADER_BYTES]
    padded = sodium.crypto_secretbox_open_easy(sealed[HEADER_BYTES:], nonce, subkey_v2(data_key, subject_key, table, column, row_id))
    return unpad(padded)


def build() -> dict:
    data_key = bytes(range(0x40, 0x60))
    vectors = []
    for name, subject_key, subject_key_id, table, column, row_id, text, block in [
        ("subject-message", bytes(range(0x80, 0xA0)), 0x80000000, "messages", "content",
         "01936f0e-7c2a-7d4e-9a1b-2c3d4e5f6a7b", "my card was charged twice", 32),
        ("subject-title-block-16", bytes(range(0xA0, 0xC0)), 0x80000007, "conversations", "title",
         "01936f0e-7c2a-7d4e-9a1b-000000000001", "Réclamation — commande 42", 16),
    ]:
        nonce = hashlib.blake2b(name.encode(), digest_size=24).digest()
        plaintext = text.encode("utf-8")
        sealed = seal_v2(data_key, 3, subject_key, subject_key_id, table, column, row_id, nonce, plaintext, block)
        assert open_v2(data_key, subject_key, table, column, row_id, sealed) == plaintext
        vectors.append({
            "name": name, "data_key_hex": data_key.hex(), "data_key_id": 3, "subject_key_hex": subject_key.hex(),
            "subject_key_id": subject_key_id, "table": table, "column": column, "row_id": row_id,
            "nonce_hex": nonce.hex(), "padding_block": block, "plaintext_utf8": text, "sealed_hex": sealed.hex(),
        })
    return {"version": VERSION, "sealed": vectors}


def main() -> int:
    path = Path(__file__).resolve().parent / "sealed-v2.json"
    text = json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
    if "--check" in sys.argv[1:]:
        return 0 if path.read_text(encoding="utf-8") == text else 1
    path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
