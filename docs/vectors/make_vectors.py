#!/usr/bin/env python3
"""Generates docs/vectors/sealed-v1.json: test vectors for chatlog's sealed-value format, version 1.

This is an independent implementation of docs/FORMAT.md using only PyNaCl (libsodium bindings) and
Python's hashlib/unicodedata. It does not run or read the Swift code. Every input is fixed, so the
output is deterministic: running the script again must reproduce the committed JSON byte for byte.

    pip install pynacl
    python3 docs/vectors/make_vectors.py          # writes docs/vectors/sealed-v1.json
    python3 docs/vectors/make_vectors.py --check  # exits 1 if the committed file differs
"""

import hashlib
import json
import struct
import sys
import unicodedata
from pathlib import Path

import nacl
import nacl.bindings as sodium
import nacl.exceptions
import nacl.secret

VERSION = 1
NONCE_BYTES = 24
MAC_BYTES = 16
HEADER_BYTES = 1 + 4 + NONCE_BYTES  # 29
DEFAULT_PADDING_BLOCK = 32

FIELD_TAG = "chatlog/v1/field"
MASTER_CHECK_TAG = "chatlog/v1/master-check"
MASTER_CHECK_V2_TAG = "chatlog/v2/master-check"
KEY_ROW_TAG = "chatlog/v1/key-row"
SUBJECT_TAG = "chatlog/v1/subject"


# --- The format, written from docs/FORMAT.md ------------------------------------------------------


def lp(part: str) -> bytes:
    """u32 big-endian byte length, then the UTF-8 bytes."""
    data = part.encode("utf-8")
    return struct.pack(">I", len(data)) + data


def subkey(data_key: bytes, table: str, column: str, row_id: str) -> bytes:
    message = lp(FIELD_TAG) + lp(table) + lp(column) + lp(row_id)
    return hashlib.blake2b(message, key=data_key, digest_size=32).digest()


def pad(plaintext: bytes, block: int) -> bytes:
    """ISO/IEC 7816-4 padding as sodium_pad does it: always at least one byte (0x80), then zeros up
    to the next multiple of `block`."""
    padded_length = (len(plaintext) // block + 1) * block
    padded = plaintext + b"\x80" + b"\x00" * (padded_length - len(plaintext) - 1)
    # Cross-check against libsodium's own sodium_pad.
    assert padded == sodium.sodium_pad(plaintext, block), "pad() disagrees with sodium_pad"
    return padded


def unpad(padded: bytes) -> bytes:
    """Strip trailing zeros, then exactly one 0x80. The block size is not needed."""
    stripped = padded.rstrip(b"\x00")
    if not stripped or stripped[-1] != 0x80:
        raise ValueError("bad padding")
    return stripped[:-1]


def seal(key: bytes, key_id: int, table: str, column: str, row_id: str, nonce: bytes,
         plaintext: bytes, block: int = DEFAULT_PADDING_BLOCK) -> bytes:
    assert len(key) == 32 and len(nonce) == NONCE_BYTES and 0 <= key_id <= 0xFFFFFFFF
    boxed = sodium.crypto_secretbox_easy(pad(plaintext, block), nonce, subkey(key, table, column, row_id))
    assert len(boxed) >= MAC_BYTES  # boxed = MAC (16) ‖ ciphertext
    return bytes([VERSION]) + struct.pack(">I", key_id) + nonce + boxed


def open_sealed(key: bytes, table: str, column: str, row_id: str, sealed: bytes) -> bytes:
    if len(sealed) < HEADER_BYTES + MAC_BYTES + 1:
        raise ValueError("truncated")
    if sealed[0] != VERSION:
        raise ValueError(f"unsupported version {sealed[0]}")
    nonce = sealed[5:HEADER_BYTES]
    padded = sodium.crypto_secretbox_open_easy(sealed[HEADER_BYTES:], nonce, subkey(key, table, column, row_id))
    return unpad(padded)


def check_value(master_key: bytes) -> bytes:
    return hashlib.blake2b(MASTER_CHECK_TAG.encode(), key=master_key, digest_size=32).digest()


def check_value_v2(master_key: bytes) -> bytes:
    return hashlib.blake2b(MASTER_CHECK_V2_TAG.encode(), key=master_key, digest_size=32).digest()


def lp_bytes(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def key_row_mac(master_key: bytes, key_id: int, kind: str, state: str, created_at: int,
                retired_at, wrapped) -> bytes:
    message = (lp(KEY_ROW_TAG) + lp(str(key_id)) + lp(kind) + lp(state) + lp(str(created_at))
               + lp("" if retired_at is None else str(retired_at)) + lp_bytes(wrapped or b""))
    return hashlib.blake2b(message, key=master_key, digest_size=32).digest()


def fingerprint(check: bytes) -> str:
    h = check[:8].hex()
    return h[:8] + ":" + h[8:]


def subject_token(index_key: bytes, subject: str) -> bytes:
    normalized = unicodedata.normalize("NFKC", subject)
    return hashlib.blake2b(lp(SUBJECT_TAG) + lp(normalized), key=index_key, digest_size=16).digest()


# --- Fixed inputs ---------------------------------------------------------------------------------

MASTER_KEY = bytes(range(0x40, 0x60))  # 404142…5f
DATA_KEYS = {  # key id → material
    1: bytes(range(0x00, 0x20)),  # 000102…1f
    3: bytes(range(0x20, 0x40)),  # 202122…3f
    0x01020304: bytes(range(0x80, 0xA0)),  # 808182…9f; an id that exercises all four header bytes
}
INDEX_KEYS = {2: bytes(range(0x60, 0x80))}  # 606162…7f


def nonce(n: int) -> bytes:
    value = f"chatlog-vector-nonce-{n:03d}".encode()
    assert len(value) == NONCE_BYTES
    return value


SEALED_CASES = [
    dict(name="empty-plaintext",
         description="Empty plaintext: padded to one full block (0x80 then 31 zeros).",
         key_id=1, table="messages", column="content", row_id="0193a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b",
         nonce=nonce(1), plaintext="".encode()),
    dict(name="non-ascii-utf8",
         description="Non-ASCII UTF-8 (2-, 3- and 4-byte sequences); sealed as its exact UTF-8 bytes, not normalised.",
         key_id=3, table="conversations", column="title", row_id="0193a1b2-c3d4-7e5f-8a6b-000000000001",
         nonce=nonce(2), plaintext="Grüße — 你好, мир 👋".encode()),
    dict(name="longer-than-a-block",
         description="69 bytes: padded to 96 (three blocks). Key id 0x01020304 shows the big-endian header.",
         key_id=0x01020304, table="messages", column="content", row_id="0193a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2c",
         nonce=nonce(3),
         plaintext="The quick brown fox jumps over the lazy dog. Sphinx of black quartz!!".encode()),
    dict(name="exactly-one-block",
         description="Exactly 32 bytes: padding always adds at least one byte, so this takes two blocks (64).",
         key_id=1, table="messages", column="metadata", row_id="0193a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b",
         nonce=nonce(4), plaintext='{"temperature":0.7,"top_p":0.95}'.encode()),
    dict(name="padding-block-16",
         description="A store opened with Options(paddingBlock: 16): 2 bytes pad to 16. Opening needs no block size.",
         key_id=3, table="conversations", column="subject", row_id="0193a1b2-c3d4-7e5f-8a6b-000000000001",
         nonce=nonce(5), plaintext=b"hi", padding_block=16),
]

WRAPPED_CASES = [
    dict(name="wrapped-data-key-1", kind="data", id=1, material=DATA_KEYS[1], nonce=nonce(101)),
    dict(name="wrapped-index-key-2", kind="index", id=2, material=INDEX_KEYS[2], nonce=nonce(102)),
]

SUBJECT_CASES = [
    # U+FB01 (ﬁ ligature), fullwidth letters and a decomposed é (e + U+0301) all change under NFKC.
    dict(name="subject-nfkc", subject="Ｃａｆｅ\u0301 ﬁnances", index_key_id=2),
    dict(name="subject-ascii", subject="weekly report", index_key_id=2),
]

PASSPHRASE_CASES = [
    # libsodium's minimum limits (PassphraseKDF.testingOnly): cheap enough for a unit test.
    dict(name="argon2id-min-limits", passphrase="correct horse battery staple",
         salt=bytes(range(0xC0, 0xD0)),
         opslimit=sodium.crypto_pwhash_argon2id_OPSLIMIT_MIN,
         memlimit=sodium.crypto_pwhash_argon2id_MEMLIMIT_MIN),
]


# --- Generation -----------------------------------------------------------------------------------


def wrong_contexts(table, column, row_id):
    return [(table + "x", column, row_id), (table, column + "x", row_id), (table, column, row_id + "x"),
            # The length prefixes stop boundary-shifting: "ab"|"c" ≠ "a"|"bc".
            (table + column[:1], column[1:], row_id)]


def build() -> dict:
    sealed_vectors = []
    for case in SEALED_CASES:
        block = case.get("padding_block", DEFAULT_PADDING_BLOCK)
        key = DATA_KEYS[case["key_id"]]
        ctx = (case["table"], case["column"], case["row_id"])
        stored = seal(key, case["key_id"], *ctx, case["nonce"], case["plaintext"], block)
        # Cross-check with PyNaCl's high-level SecretBox, which returns nonce ‖ MAC ‖ ciphertext.
        box = nacl.secret.SecretBox(subkey(key, *ctx))
        assert stored[5:] == bytes(box.encrypt(pad(case["plaintext"], block), case["nonce"]))
        # Cross-check the subkey with libsodium's own BLAKE2b (crypto_generichash).
        message = lp(FIELD_TAG) + lp(case["table"]) + lp(case["column"]) + lp(case["row_id"])
        assert sodium.crypto_generichash_blake2b_salt_personal(message, digest_size=32, key=key) == subkey(key, *ctx)
        assert open_sealed(key, *ctx, stored) == case["plaintext"]
        for wrong in wrong_contexts(*ctx):
            try:
                open_sealed(key, *wrong, stored)
                raise AssertionError(f"{case['name']} opened in the wrong context {wrong}")
            except nacl.exceptions.CryptoError:
                pass
        vector = dict(
            name=case["name"], description=case["description"],
            key_hex=key.hex(), key_id=case["key_id"],
            table=case["table"], column=case["column"], row_id=case["row_id"],
            nonce_hex=case["nonce"].hex(), padding_block=block,
            plaintext_hex=case["plaintext"].hex(),
            plaintext_utf8=case["plaintext"].decode("utf-8"),
            subkey_hex=subkey(key, *ctx).hex(),
            padded_length=len(pad(case["plaintext"], block)),
            sealed_hex=stored.hex(),
        )
        sealed_vectors.append(vector)

    wrapped_vectors = []
    for case in WRAPPED_CASES:
        row_id = f"{case['kind']}:{case['id']}"
        stored = seal(MASTER_KEY, 0, "keys", "wrapped", row_id, case["nonce"], case["material"])
        assert open_sealed(MASTER_KEY, "keys", "wrapped", row_id, stored) == case["material"]
        assert len(stored) == 1 + 4 + 24 + 16 + 64
        wrapped_vectors.append(dict(
            name=case["name"], master_key_hex=MASTER_KEY.hex(), kind=case["kind"], id=case["id"],
            key_id=0, table="keys", column="wrapped", row_id=row_id,
            nonce_hex=case["nonce"].hex(), key_material_hex=case["material"].hex(),
            subkey_hex=subkey(MASTER_KEY, "keys", "wrapped", row_id).hex(),
            sealed_hex=stored.hex(),
        ))

    check = check_value(MASTER_KEY)
    master_check = [dict(name="master-check", master_key_hex=MASTER_KEY.hex(),
                         check_value_hex=check.hex(), check_value_v2_hex=check_value_v2(MASTER_KEY).hex(),
                         fingerprint=fingerprint(check))]

    key_row_vectors = []
    first = wrapped_vectors[0]
    for name, state, retired_at, wrapped in [
        ("key-row-active", "active", None, bytes.fromhex(first["sealed_hex"])),
        ("key-row-retired", "retired", 1767225600000, None),
    ]:
        key_row_vectors.append(dict(
            name=name, master_key_hex=MASTER_KEY.hex(), id=first["id"], kind=first["kind"], state=state,
            created_at=1764547200000, retired_at=retired_at,
            wrapped_hex=None if wrapped is None else wrapped.hex(),
            mac_hex=key_row_mac(MASTER_KEY, first["id"], first["kind"], state, 1764547200000, retired_at, wrapped).hex(),
        ))

    subject_vectors = []
    for case in SUBJECT_CASES:
        key = INDEX_KEYS[case["index_key_id"]]
        normalized = unicodedata.normalize("NFKC", case["subject"])
        subject_vectors.append(dict(
            name=case["name"], index_key_hex=key.hex(), index_key_id=case["index_key_id"],
            subject_utf8=case["subject"], subject_hex=case["subject"].encode().hex(),
            normalized_hex=normalized.encode().hex(),
            token_hex=subject_token(key, case["subject"]).hex(),
        ))

    passphrase_vectors = []
    for case in PASSPHRASE_CASES:
        derived = sodium.crypto_pwhash_alg(
            32, case["passphrase"].encode(), case["salt"], case["opslimit"], case["memlimit"],
            sodium.crypto_pwhash_ALG_ARGON2ID13)
        derived_check = check_value(derived)
        passphrase_vectors.append(dict(
            name=case["name"], passphrase_utf8=case["passphrase"], algorithm="argon2id13",
            salt_hex=case["salt"].hex(), opslimit=case["opslimit"], memlimit=case["memlimit"],
            master_key_hex=derived.hex(), check_value_hex=derived_check.hex(),
            fingerprint=fingerprint(derived_check),
        ))

    return {
        "format": "chatlog sealed value",
        "version": VERSION,
        "spec": "docs/FORMAT.md",
        "generator": f"docs/vectors/make_vectors.py (PyNaCl {nacl.__version__}, hashlib)",
        "sealed": sealed_vectors,
        "wrapped_keys": wrapped_vectors,
        "master_check": master_check,
        "key_rows": key_row_vectors,
        "subject_index": subject_vectors,
        "passphrase_kdf": passphrase_vectors,
    }


def main() -> int:
    output = Path(__file__).resolve().parent / "sealed-v1.json"
    document = build()
    # The generator line names the PyNaCl version; leave it out of the comparison in --check.
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    if "--check" in sys.argv:
        committed = json.loads(output.read_text(encoding="utf-8"))
        committed.pop("generator", None)
        document.pop("generator", None)
        if committed != document:
            print(f"{output} is out of date", file=sys.stderr)
            return 1
        print(f"{output} matches")
        return 0
    output.write_text(text, encoding="utf-8")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
