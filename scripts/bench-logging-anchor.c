/*
 * The C anchor of issue 12's logging target (docs/PERFORMANCE.md, "Library logging"): the per-message
 * work of chatlog's indexed write path with nothing else, in C, on the same messages.
 *
 *   per message: derive a per-field subkey (BLAKE2b, as chatlog does), pad and seal the content with
 *   crypto_secretbox (random nonce), split it into ASCII words (lower-cased), SipHash-128 each distinct
 *   word, write the 8-character base32 terms space-separated, and insert them into a contentless
 *   `detail=none` FTS5 table; 1,000 messages per transaction, WAL, synchronous NORMAL (what GRDB sets for chatlog and the
 *   baselines), secure_delete.
 *   With --row it also inserts the sealed content into a table with chatlog's message columns and
 *   secondary indexes (what a real store has to write besides the index). The FTS5 row id is the
 *   message's seq, as in chatlog since its migration 0011 (before: created_at_ms * 2^20). With --tuned the FTS5 table
 *   gets the settings of chatlog's migration 0008 (automerge 8, hashsize 8 MiB; FTS5's defaults: 4, 1 MiB).
 *
 * Input: the corpus file `chatlog-bench --write-corpus FILE` writes (each message: a 4-byte
 * little-endian length, then its UTF-8 bytes). Built and run by scripts/bench-logging.
 *
 *   bench-logging-anchor CORPUS DB [--row] [--tuned] [PER_TRANSACTION]   prints: messages wall_s cpu_s msg/s
 *   (PER_TRANSACTION: messages per transaction, default 1,000)
 */
#include <sodium.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static void die(const char *what, sqlite3 *db) {
    fprintf(stderr, "bench-logging-anchor: %s: %s\n", what, db ? sqlite3_errmsg(db) : "failed");
    exit(1);
}

static void exec(sqlite3 *db, const char *sql) {
    if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK) die(sql, db);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double cpu(void) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return (double)usage.ru_utime.tv_sec + (double)usage.ru_utime.tv_usec / 1e6 + (double)usage.ru_stime.tv_sec +
           (double)usage.ru_stime.tv_usec / 1e6;
}

/* Open-addressing set of 64-bit term values, emptied per message by a generation counter. */
#define SET_SIZE 4096
static uint64_t set_values[SET_SIZE];
static uint32_t set_generation_of[SET_SIZE];
static uint32_t set_generation = 0;

static int set_insert(uint64_t value) {
    size_t slot = (size_t)((value * 0x9E3779B97F4A7C15ull) >> 52);
    while (set_generation_of[slot] == set_generation) {
        if (set_values[slot] == value) return 0;
        slot = (slot + 1) & (SET_SIZE - 1);
    }
    set_generation_of[slot] = set_generation;
    set_values[slot] = value;
    return 1;
}

static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz234567";

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: bench-logging-anchor CORPUS DB [--row] [--tuned] [PER_TRANSACTION]\n");
        return 64;
    }
    int with_row = 0, tuned = 0;
    long per_transaction = 1000;
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--row") == 0) with_row = 1;
        else if (strcmp(argv[i], "--tuned") == 0) tuned = 1;
        else per_transaction = atol(argv[i]);
    }
    if (per_transaction < 1) die("PER_TRANSACTION must be at least 1", NULL);
    if (sodium_init() < 0) die("sodium_init", NULL);

    FILE *file = fopen(argv[1], "rb");
    if (!file) die("cannot open the corpus", NULL);
    fseek(file, 0, SEEK_END);
    long size = ftell(file);
    fseek(file, 0, SEEK_SET);
    unsigned char *corpus = malloc((size_t)size);
    if (!corpus || fread(corpus, 1, (size_t)size, file) != (size_t)size) die("cannot read the corpus", NULL);
    fclose(file);

    sqlite3 *db;
    if (sqlite3_open(argv[2], &db) != SQLITE_OK) die("open", db);
    exec(db, "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA secure_delete = ON;");
    exec(db, "CREATE VIRTUAL TABLE message_terms USING fts5 (terms, content = '', columnsize = 0, detail = none, tokenize = 'ascii')");
    if (tuned) {
        exec(db, "INSERT INTO message_terms (message_terms, rank) VALUES ('automerge', 8);"
                 "INSERT INTO message_terms (message_terms, rank) VALUES ('hashsize', 8388608);");
    }
    if (with_row) {
        exec(db, "CREATE TABLE messages (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, conversation_seq INTEGER NOT NULL,"
                 " position INTEGER NOT NULL, role TEXT NOT NULL, created_at INTEGER NOT NULL, key_id INTEGER NOT NULL,"
                 " content BLOB NOT NULL, index_key_id INTEGER, time_lag INTEGER NOT NULL DEFAULT 0,"
                 " UNIQUE (conversation_seq, position));"
                 "CREATE INDEX messages_by_created ON messages (created_at);"
                 "CREATE INDEX messages_by_key ON messages (key_id);"
                 "CREATE INDEX messages_by_index_key ON messages (index_key_id);");
    }
    sqlite3_stmt *insert_terms, *insert_row = NULL;
    if (sqlite3_prepare_v2(db, "INSERT INTO message_terms (rowid, terms) VALUES (?, ?)", -1, &insert_terms, NULL) != SQLITE_OK)
        die("prepare", db);
    if (with_row &&
        sqlite3_prepare_v2(db,
                           "INSERT INTO messages (id, conversation_seq, position, role, created_at, key_id, content,"
                           " index_key_id, time_lag) VALUES (?, ?, ?, 'user', ?, 1, ?, 2, 0)",
                           -1, &insert_row, NULL) != SQLITE_OK)
        die("prepare", db);

    unsigned char data_key[32], sip_key[crypto_shorthash_siphashx24_KEYBYTES];
    randombytes_buf(data_key, sizeof data_key);
    randombytes_buf(sip_key, sizeof sip_key);
    size_t capacity = 1 << 16;
    unsigned char *sealed = malloc(capacity);
    char *document = malloc(capacity);
    unsigned char word[256];
    long messages = 0;
    double start = now(), start_cpu = cpu();
    long offset = 0;
    int64_t created_at = 1780000000000LL;
    exec(db, "BEGIN IMMEDIATE");
    while (offset + 4 <= size) {
        uint32_t length = (uint32_t)corpus[offset] | ((uint32_t)corpus[offset + 1] << 8) |
                          ((uint32_t)corpus[offset + 2] << 16) | ((uint32_t)corpus[offset + 3] << 24);
        if ((long)length > size - offset - 4) die("the corpus ends inside a message", NULL);
        const unsigned char *text = corpus + offset + 4;
        offset += 4 + (long)length;
        size_t padded = (length / 32 + 1) * 32, total = 5 + 24 + 16 + padded;
        /* A document holds at most 9 bytes per 2 bytes of text ("a b " → two terms). */
        if (total > capacity || (size_t)length * 5 + 16 > capacity) {
            capacity = total > (size_t)length * 5 + 16 ? total : (size_t)length * 5 + 16;
            sealed = realloc(sealed, capacity);
            document = realloc(document, capacity);
        }
        /* Seal: header, random nonce, a per-field subkey, padded plaintext encrypted in place. */
        sealed[0] = 1;
        sealed[1] = sealed[2] = sealed[3] = 0;
        sealed[4] = 1;
        randombytes_buf(sealed + 5, 24);
        unsigned char *message = sealed + 45;
        memcpy(message, text, length);
        size_t padded_length;
        sodium_pad(&padded_length, message, length, 32, padded);
        unsigned char subkey[32];
        char context[64];
        int context_length = snprintf(context, sizeof context, "messages/content/%ld", messages);
        crypto_generichash(subkey, 32, (const unsigned char *)context, (size_t)context_length, data_key, 32);
        crypto_secretbox_easy(sealed + 29, message, padded_length, sealed + 5, subkey);
        sodium_memzero(subkey, sizeof subkey);

        /* Blind: each distinct ASCII word, lower-cased, SipHash-128, top 40 bits as 8 base32 digits. */
        set_generation++;
        size_t out = 0, word_length = 0;
        for (uint32_t i = 0; i <= length; i++) {
            unsigned char byte = i < length ? text[i] : ' ';
            int is_word = (byte >= '0' && byte <= '9') || (byte >= 'a' && byte <= 'z') || (byte >= 'A' && byte <= 'Z');
            if (is_word && word_length < sizeof word) {
                word[word_length++] = (byte >= 'A' && byte <= 'Z') ? byte | 0x20 : byte;
            } else if (!is_word && word_length > 0) {
                unsigned char hash[16];
                crypto_shorthash_siphashx24(hash, word, word_length, sip_key);
                uint64_t high = 0;
                for (int k = 0; k < 8; k++) high = (high << 8) | hash[k];
                high &= ~0ull << 24;
                if (set_insert(high)) {
                    if (out > 0) document[out++] = ' ';
                    for (int k = 0; k < 8; k++) document[out++] = alphabet[(high >> (59 - 5 * k)) & 31];
                }
                word_length = 0;
            }
        }
        /* The index's row id is the message's seq (chatlog's migration 0011). */
        int64_t rowid = messages + 1;
        if (with_row) {
            char id[40];
            snprintf(id, sizeof id, "0197%04lx-0000-7000-8000-%012lx", messages & 0xffff, messages);
            sqlite3_bind_text(insert_row, 1, id, -1, SQLITE_TRANSIENT);
            sqlite3_bind_int64(insert_row, 2, messages / 1000 + 1);
            sqlite3_bind_int64(insert_row, 3, messages % 1000);
            sqlite3_bind_int64(insert_row, 4, created_at + messages * 60);
            sqlite3_bind_blob(insert_row, 5, sealed, (int)(45 + padded_length), SQLITE_STATIC);
            if (sqlite3_step(insert_row) != SQLITE_DONE) die("insert row", db);
            sqlite3_reset(insert_row);
            rowid = sqlite3_last_insert_rowid(db);
        }
        sqlite3_bind_int64(insert_terms, 1, rowid);
        sqlite3_bind_text(insert_terms, 2, document, (int)out, SQLITE_STATIC);
        if (sqlite3_step(insert_terms) != SQLITE_DONE) die("insert terms", db);
        sqlite3_reset(insert_terms);
        messages++;
        if (messages % per_transaction == 0) exec(db, "COMMIT; BEGIN IMMEDIATE");
    }
    exec(db, "COMMIT");
    double elapsed = now() - start, used = cpu() - start_cpu;
    printf("%ld %.3f %.3f %.0f\n", messages, elapsed, used, (double)messages / elapsed);
    sqlite3_finalize(insert_terms);
    if (insert_row) sqlite3_finalize(insert_row);
    sqlite3_close(db);
    return 0;
}
