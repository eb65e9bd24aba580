/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Fuzz target for the DATA scanner: the input is scanned in one piece, byte
 * by byte and in chunks whose sizes come from the input itself; all three
 * must store the same octets, find the same end and raise the same flags,
 * and agree with a plain search for CRLF "." CRLF. Aborts when an invariant
 * breaks (store <= consume <= n, progress, at most two held-back octets).
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtp-parse.h"
#include "util/macro.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define check(cond)                                                             \
        do {                                                                    \
                if (!(cond)) {                                                  \
                        fprintf(stderr, "%s:%d: invariant failed: %s\n",        \
                                __FILE__, __LINE__, #cond);                     \
                        abort();                                                \
                }                                                               \
        } while (0)

typedef struct Outcome {
        int found;
        size_t stored;          /* octets stored (held-back tail included) */
        uint64_t hash;          /* of the stored octets */
        size_t end;             /* input offset after the terminator */
        bool bare_lf, bare_cr;
} Outcome;

static uint64_t fold(uint64_t h, const char *p, size_t n) {
        for (size_t i = 0; i < n; i++)
                h = (h ^ (uint8_t) p[i]) * UINT64_C(0x100000001b3);
        return h;
}

/* chunk(i) gives the size of the i-th piece (>= 1). */
static void run(const char *p, size_t n, size_t (*chunk)(const char *, size_t, size_t), Outcome *ret) {
        DataScanner s;
        size_t start = 0, fed = 0;      /* pending = p[start..fed) */
        Outcome o = { .hash = UINT64_C(0xcbf29ce484222325) };

        data_scanner_init(&s);

        for (size_t i = 0; fed < n; i++) {
                size_t k = chunk(p, n, i);
                size_t store = SIZE_MAX, consume = SIZE_MAX, len;
                int r;

                check(k >= 1);
                fed += MIN(k, n - fed);
                len = fed - start;

                r = data_scan(&s, p + start, len, &store, &consume);
                check(r == 0 || r == 1);
                check(store <= consume && consume <= len);
                if (r == 0) {
                        check(store == consume);
                        /* Progress: at most ".\r" is left over. */
                        check(len - consume <= 2);
                } else {
                        check(consume == store + 3);
                        check(memcmp(p + start + store, ".\r\n", 3) == 0);
                }

                o.hash = fold(o.hash, p + start, store);
                o.stored += store;
                start += consume;
                check(s.bytes == o.stored);

                if (r == 1) {
                        o.found = 1;
                        o.end = start;
                        break;
                }
        }
        if (!o.found) {
                o.hash = fold(o.hash, p + start, n - start);
                o.stored += n - start;
        }
        o.bare_lf = s.bare_lf;
        o.bare_cr = s.bare_cr;
        *ret = o;
}

static size_t chunk_whole(const char *p, size_t n, size_t i) {
        return n > 0 ? n : 1;
}

static size_t chunk_byte(const char *p, size_t n, size_t i) {
        return 1;
}

/* Piece sizes 1..8 taken from the input bytes themselves. */
static size_t chunk_input(const char *p, size_t n, size_t i) {
        return n > 0 ? 1 + ((uint8_t) p[(i * 7) % n] & 7) : 1;
}

static void model(const char *p, size_t n, Outcome *ret) {
        Outcome o = { .hash = UINT64_C(0xcbf29ce484222325), .stored = n };

        /* The DATA command's CRLF precedes the first octet. */
        for (size_t t = 0; t + 3 <= n; t++)
                if ((t == 0 || (t >= 2 && p[t - 2] == '\r' && p[t - 1] == '\n')) &&
                    memcmp(p + t, ".\r\n", 3) == 0) {
                        o.found = 1;
                        o.stored = t;
                        o.end = t + 3;
                        break;
                }

        o.hash = fold(o.hash, p, o.stored);
        for (size_t i = 0; i < o.stored; i++) {
                if (p[i] == '\n' && (i == 0 || p[i - 1] != '\r'))
                        o.bare_lf = true;
                if (p[i] == '\r' && i + 1 < o.stored && p[i + 1] != '\n')
                        o.bare_cr = true;
        }
        *ret = o;
}

static bool outcome_eq(const Outcome *a, const Outcome *b) {
        return a->found == b->found && a->stored == b->stored && a->hash == b->hash &&
                a->end == b->end && a->bare_lf == b->bare_lf && a->bare_cr == b->bare_cr;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        const char *p = (const char *) data;
        Outcome whole, bytes, pieces, expected;

        if (size == 0)
                return 0;

        run(p, size, chunk_whole, &whole);
        run(p, size, chunk_byte, &bytes);
        run(p, size, chunk_input, &pieces);
        model(p, size, &expected);

        check(outcome_eq(&whole, &expected));
        check(outcome_eq(&bytes, &expected));
        check(outcome_eq(&pieces, &expected));

        /* Stored data ends at a line end: the CRLF before "." is kept. */
        if (whole.found && whole.stored > 0)
                check(whole.stored >= 2 && p[whole.stored - 2] == '\r' && p[whole.stored - 1] == '\n');

        return 0;
}
