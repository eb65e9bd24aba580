/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Unit tests for the DATA scanner in smtp-parse.c.
 *
 * A straightforward reference model (search the whole message for CRLF "."
 * CRLF, the first CRLF being the one that ended the DATA command) is
 * compared with the resumable scanner fed in every possible chunking of
 * short messages, in every fixed chunk size and in random chunkings of
 * longer ones. The SMTP smuggling sequences of CVE-2023-51764 must never
 * end a message and must be flagged.
 *
 * Note: a message whose last line lacks its CRLF before the final "." does
 * not exist on the wire. The CRLF in front of "." is part of the
 * terminator (RFC 5321 4.1.1.4), so "text.\r\n" is just more text; the
 * test "dot without CRLF before it" shows it.
 */

#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "smtp-parse.h"
#include "util/macro.h"
#include "tap.h"

#define MSG_MAX 4096

typedef struct Result {
        int found;                      /* 1 if the terminator was seen */
        char stored[MSG_MAX];
        size_t n_stored;
        size_t rest_off;                /* input offset just after the terminator */
        bool bare_lf, bare_cr;
        uint64_t bytes;
        char error[128];                /* set when an invariant broke */
} Result;

static void model(const char *m, size_t len, Result *ret) {
        *ret = (Result) {};

        for (size_t t = 0; t + 3 <= len; t++) {
                bool bol = t == 0 || (t >= 2 && m[t - 2] == '\r' && m[t - 1] == '\n');

                if (bol && memcmp(m + t, ".\r\n", 3) == 0) {
                        ret->found = 1;
                        ret->n_stored = t;
                        ret->rest_off = t + 3;
                        break;
                }
        }
        if (!ret->found)
                /* Without a terminator everything except a held-back
                 * trailing "." or ".\r" at a line start is stored. */
                ret->n_stored = len;

        memcpy(ret->stored, m, ret->n_stored);
        for (size_t i = 0; i < ret->n_stored; i++) {
                if (m[i] == '\n' && (i == 0 || m[i - 1] != '\r'))
                        ret->bare_lf = true;
                if (m[i] == '\r' && i + 1 < ret->n_stored && m[i + 1] != '\n')
                        ret->bare_cr = true;
        }
        ret->bytes = ret->n_stored;
}

/* Feeds m in pieces whose sizes come from cuts[] (a bit set of positions
 * after which a chunk ends), like a session appending reads to its input
 * buffer and consuming what the scanner reports. */
static void drive(const char *m, size_t len, const uint8_t *cut, Result *ret) {
        char pending[MSG_MAX];
        size_t n_pending = 0, fed = 0;
        DataScanner s;

        *ret = (Result) {};
        data_scanner_init(&s);

        while (fed < len) {
                /* Next chunk: up to and including the next cut position. */
                size_t end = fed;
                do
                        end++;
                while (end < len && !cut[end - 1]);

                memcpy(pending + n_pending, m + fed, end - fed);
                n_pending += end - fed;
                fed = end;

                size_t store = SIZE_MAX, consume = SIZE_MAX;
                int r = data_scan(&s, pending, n_pending, &store, &consume);

                if (r != 0 && r != 1) {
                        snprintf(ret->error, sizeof(ret->error), "returned %d", r);
                        return;
                }
                if (store > consume || consume > n_pending) {
                        snprintf(ret->error, sizeof(ret->error), "store %zu consume %zu n %zu", store, consume, n_pending);
                        return;
                }
                if (r == 0 && (store != consume || n_pending - consume > 2)) {
                        snprintf(ret->error, sizeof(ret->error), "need-more with store %zu consume %zu n %zu",
                                 store, consume, n_pending);
                        return;
                }
                if (r == 1 && (consume != store + 3 || memcmp(pending + store, ".\r\n", 3) != 0)) {
                        snprintf(ret->error, sizeof(ret->error), "terminator not \".\\r\\n\" at %zu", store);
                        return;
                }

                memcpy(ret->stored + ret->n_stored, pending, store);
                ret->n_stored += store;
                memmove(pending, pending + consume, n_pending - consume);
                n_pending -= consume;

                if (r == 1) {
                        ret->found = 1;
                        /* What is left (pending plus unfed input) starts
                         * right after the terminator. */
                        ret->rest_off = fed - n_pending;
                        break;
                }
        }
        if (!ret->found && n_pending > 0) {
                /* Held back at the end of input: must be "." or ".\r" at a
                 * line start; count them as stored for the comparison. */
                if (!(n_pending == 1 && pending[0] == '.') &&
                    !(n_pending == 2 && memcmp(pending, ".\r", 2) == 0)) {
                        snprintf(ret->error, sizeof(ret->error), "held back %zu unexpected bytes", n_pending);
                        return;
                }
                memcpy(ret->stored + ret->n_stored, pending, n_pending);
                ret->n_stored += n_pending;
                /* A held ".\r" has not yet been judged; the model judges a
                 * final CR as not bare either (nothing follows it yet). */
        }
        ret->bare_lf = s.bare_lf;
        ret->bare_cr = s.bare_cr;
        ret->bytes = s.bytes + (ret->found ? 0 : n_pending);
}

static bool same(const Result *a, const Result *b, char *why, size_t why_len) {
        if (a->error[0]) {
                snprintf(why, why_len, "%s", a->error);
                return false;
        }
        if (a->found != b->found || a->n_stored != b->n_stored ||
            memcmp(a->stored, b->stored, a->n_stored) != 0 ||
            (a->found && a->rest_off != b->rest_off) ||
            a->bare_lf != b->bare_lf || a->bare_cr != b->bare_cr || a->bytes != b->bytes) {
                snprintf(why, why_len, "found %d/%d stored %zu/%zu rest %zu/%zu lf %d/%d cr %d/%d bytes %llu/%llu",
                         a->found, b->found, a->n_stored, b->n_stored, a->rest_off, b->rest_off,
                         a->bare_lf, b->bare_lf, a->bare_cr, b->bare_cr,
                         (unsigned long long) a->bytes, (unsigned long long) b->bytes);
                return false;
        }
        return true;
}

static Result want, got;

/* All 2^(len-1) ways to cut a message (len <= 20). */
static void check_all_chunkings(const char *name, const char *m, size_t len) {
        uint8_t cut[MSG_MAX];
        char why[256];

        model(m, len, &want);
        for (uint32_t mask = 0; mask < (UINT32_C(1) << (len - 1)); mask++) {
                for (size_t i = 0; i + 1 < len; i++)
                        cut[i] = (mask >> i) & 1;
                cut[len - 1] = 1;
                drive(m, len, cut, &got);
                if (!same(&got, &want, why, sizeof(why))) {
                        ok(false, "%s: chunking mask %#x: %s", name, mask, why);
                        return;
                }
        }
        ok(true, "%s: all %u chunkings agree with the model", name, 1u << (len - 1));
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint64_t rng(void) {
        /* xorshift64: deterministic, so failures reproduce. */
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        return rng_state;
}

/* Every fixed chunk size 1..len plus random chunkings. */
static void check_chunkings(const char *name, const char *m, size_t len) {
        uint8_t cut[MSG_MAX];
        char why[256];

        model(m, len, &want);
        for (size_t step = 1; step <= len; step++) {
                for (size_t i = 0; i < len; i++)
                        cut[i] = (i + 1) % step == 0 || i + 1 == len;
                drive(m, len, cut, &got);
                if (!same(&got, &want, why, sizeof(why))) {
                        ok(false, "%s: chunk size %zu: %s", name, step, why);
                        return;
                }
        }
        for (unsigned round = 0; round < 300; round++) {
                for (size_t i = 0; i < len; i++)
                        cut[i] = rng() % 4 == 0 || i + 1 == len;
                drive(m, len, cut, &got);
                if (!same(&got, &want, why, sizeof(why))) {
                        ok(false, "%s: random chunking %u: %s", name, round, why);
                        return;
                }
        }
        ok(true, "%s: every chunk size and 300 random chunkings agree with the model", name);
}

static void scan_whole(const char *m, size_t len, Result *ret) {
        uint8_t cut[MSG_MAX] = {};
        cut[len - 1] = 1;
        drive(m, len, cut, ret);
}

#define S(x) x, sizeof(x) - 1

static void test_basic(void) {
        Result r;

        scan_whole(S(".\r\n"), &r);
        ok(r.found && r.n_stored == 0 && r.rest_off == 3 && r.bytes == 0, "empty message at the start");
        check_all_chunkings("empty message", S(".\r\nQUIT\r\n"));

        scan_whole(S("Subject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n"), &r);
        ok(r.found, "simple message ends");
        is_int(r.n_stored, strlen("Subject: hi\r\n\r\nbody\r\n"), "stored up to and incl. the last CRLF");
        is_int(r.rest_off, strlen("Subject: hi\r\n\r\nbody\r\n.\r\n"), "rest starts with the next command");
        ok(!r.bare_lf && !r.bare_cr, "clean message not flagged");

        scan_whole(S("..hidden\r\n...\r\n. \r\n.x\r\n.\r\n"), &r);
        ok(r.found && r.n_stored == strlen("..hidden\r\n...\r\n. \r\n.x\r\n"), "dot-stuffed lines stay stored in wire form");

        scan_whole(S("text.\r\nmore\r\n"), &r);
        ok(!r.found, "dot without CRLF before it does not end the message");

        scan_whole(S("a\r\n.\r\r\n.\r\n"), &r);
        ok(r.found && r.bare_cr && r.n_stored == strlen("a\r\n.\r\r\n"), "\".\\r\\r\\n\" is text with a bare CR");

        /* Direct API: the hold-back of a line-initial "." and ".\r". */
        {
                DataScanner s;
                size_t store = 99, consume = 99;

                data_scanner_init(&s);
                is_int(data_scan(&s, "abc\r\n.", 6, &store, &consume), 0, "trailing dot: need more");
                is_int(store, 5, "trailing line-initial dot held back");
                is_int(consume, 5, "consume equals store");
                is_int(data_scan(&s, ".\r", 2, &store, &consume), 0, "\".\\r\": need more");
                is_int(store, 0, "\".\\r\" held back");
                is_int(data_scan(&s, ".\r\n", 3, &store, &consume), 1, "terminator completes");
                is_int(store, 0, "nothing more stored");
                is_int(consume, 3, "terminator consumed");
                ok(s.bytes == 5, "bytes counts stored octets across calls");

                data_scanner_init(&s);
                is_int(data_scan(&s, "abc.", 4, &store, &consume), 0, "mid-line dot");
                is_int(store, 4, "mid-line dot is not held back");
                is_int(data_scan(&s, "", 0, &store, &consume), 0, "empty input");
                is_int(store, 0, "empty input stores nothing");
        }
}

static void test_smuggling(void) {
        static const struct {
                const char *name;
                const char *seq;
                bool lf, cr;
        } seqs[] = {
                { "\\n.\\n",     "\n.\n",     true,  false },
                { "\\r.\\r",     "\r.\r",     false, true  },
                { "\\n.\\r\\n",  "\n.\r\n",   true,  false },
                { "\\r\\n.\\n",  "\r\n.\n",   true,  false },
                { "\\r.\\r\\n",  "\r.\r\n",   false, true  },
        };
        char m[512], name[128];

        for (size_t i = 0; i < ELEMENTSOF(seqs); i++) {
                int len = snprintf(m, sizeof(m),
                                   "Subject: x\r\n\r\nhello%sMAIL FROM:<evil@example.com>\r\nRCPT TO:<v@example.net>\r\nDATA\r\n",
                                   seqs[i].seq);
                Result r;

                scan_whole(m, (size_t) len, &r);
                ok(!r.found, "%s does not end the message", seqs[i].name);
                ok(r.bare_lf == seqs[i].lf && r.bare_cr == seqs[i].cr, "%s flagged (lf=%d cr=%d)",
                   seqs[i].name, r.bare_lf, r.bare_cr);

                /* With a real terminator the whole smuggled part is data. */
                len += snprintf(m + len, sizeof(m) - (size_t) len, "x\r\n.\r\nQUIT\r\n");
                scan_whole(m, (size_t) len, &r);
                ok(r.found && r.n_stored == (size_t) len - strlen(".\r\nQUIT\r\n"),
                   "%s: only the real CRLF.CRLF ends the message", seqs[i].name);
                snprintf(name, sizeof(name), "smuggling %s", seqs[i].name);
                check_chunkings(name, m, (size_t) len);

                /* Short form for exhaustive chunking: "a<seq>b\r\n.\r\n". */
                len = snprintf(m, sizeof(m), "a%sb\r\n.\r\n", seqs[i].seq);
                snprintf(name, sizeof(name), "short smuggling %s", seqs[i].name);
                check_all_chunkings(name, m, (size_t) len);
        }

        /* At the very start (the DATA command's CRLF precedes it). */
        check_all_chunkings("leading \\n.\\n", S("\n.\nX\r\n.\r\n"));
        check_all_chunkings("leading .\\n", S(".\nX\r\n.\r\n"));
        check_all_chunkings("leading .\\r", S(".\rX\r\n.\r\n"));
}

static void test_chunkings(void) {
        static char big[3000];
        size_t o = 0;

        check_all_chunkings("dot-stuffed short", S("..\r\n.a\r\n\r\n.\r\nZ"));
        check_all_chunkings("CR runs", S("\r\r\n\r.\r\r\n.\r\n"));
        check_all_chunkings("no terminator", S("ab\r\n.\rc\r\n."));
        check_all_chunkings("held .\\r at end", S("ab\r\n..\r\n.\r"));

        check_chunkings("message with headers and dot-stuffing",
                        S("From: a@example.com\r\nTo: b@example.net\r\nSubject: dots\r\n\r\n"
                          "..leading dot\r\n.\r\r\n...\r\nend.\r\n \r\n.\r\nMAIL FROM:<next@example.com>\r\n"));

        /* A larger generated message: many short lines, many dots. */
        while (o + 16 < sizeof(big) - 8) {
                /* Every "." is followed by a non-CR, so only the final
                 * CRLF.CRLF ends it; no bare CR/LF either. */
                static const char * const pieces[] = { "..x", ".y", "x", "\r\n", "\r\n.z", "ab" };
                const char *pc = pieces[rng() % ELEMENTSOF(pieces)];
                size_t l = strlen(pc);
                memcpy(big + o, pc, l);
                o += l;
        }
        memcpy(big + o, "\r\n.\r\n", 5);
        o += 5;
        check_chunkings("generated message", big, o);
}

/* Random messages with long runs of ordinary text between CRs, LFs and
 * dots, so that the block scanner meets every alignment of CRLF, bare CR
 * or LF and line-initial "." against its 16-octet blocks. */
static void test_blocks(void) {
        static const char * const pieces[] = {
                "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ+/",
                "abcdefghijklmno", "x", "xy", "\r\n", "\r\n", "\r\n", "\r\n.", "\r", "\n", ".", "..",
        };
        static char m[800];
        unsigned bad = 0;

        for (unsigned k = 0; k < 120; k++) {
                size_t o = 0, target = 100 + rng() % 600;
                char name[64], why[256];

                while (o < target) {
                        const char *pc = pieces[rng() % ELEMENTSOF(pieces)];
                        size_t l = strlen(pc);

                        if (o + l + 5 > sizeof(m))
                                break;
                        memcpy(m + o, pc, l);
                        o += l;
                }
                if (k % 2 == 0) {
                        memcpy(m + o, "\r\n.\r\n", 5);
                        o += 5;
                }
                snprintf(name, sizeof name, "block message %u", k);
                model(m, o, &want);
                scan_whole(m, o, &got);
                if (!same(&got, &want, why, sizeof why)) {
                        printf("# %s: %s\n", name, why);
                        bad++;
                }
                check_chunkings(name, m, o);
        }
        is_int(bad, 0, "blocks: every whole-buffer scan agrees with the model");
}

int main(void) {
        test_basic();
        test_smuggling();
        test_chunkings();
        test_blocks();
        return tap_done();
}
