/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Fuzz target for the command side of smtp-parse.c: splits the input into
 * lines with SmtpLineReader, once in one piece and once byte by byte with a
 * bounded pending buffer, checks that both give the same events, and parses
 * every line with smtp_command_parse(). Aborts when an invariant breaks:
 * consume within the input, progress, views inside the line, argument caps.
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtp-parse.h"
#include "util/macro.h"

/* A small limit so that over-long lines are reached by short inputs. */
#define FUZZ_LINE_MAX 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define check(cond)                                                             \
        do {                                                                    \
                if (!(cond)) {                                                  \
                        fprintf(stderr, "%s:%d: invariant failed: %s\n",        \
                                __FILE__, __LINE__, #cond);                     \
                        abort();                                                \
                }                                                               \
        } while (0)

static bool view_inside(SmtpView v, const char *p, size_t n) {
        return v.p >= p && v.len <= n && (size_t) (v.p - p) <= n - v.len;
}

static void check_command(const char *line, size_t len) {
        SmtpCommand c;
        int r;

        r = smtp_command_parse(line, len, &c);
        check(r == 0 || r == -EBADMSG || r == -EINVAL || r == -ENAMETOOLONG || r == -E2BIG);
        if (r < 0)
                return;

        check(c.verb >= 0 && c.verb < _SMTP_VERB_MAX);
        check(smtp_verb_to_string(c.verb));
        check(view_inside(c.arg, line, len));
        check(c.n_params <= SMTP_PARAMS_MAX);

        if (c.verb == SMTP_MAIL || c.verb == SMTP_RCPT) {
                check(view_inside(c.path, line, len));
                check(c.path.len + 2 <= SMTP_PATH_MAX);
                check(c.verb == SMTP_MAIL || c.path.len > 0);
                for (size_t i = 0; i < c.n_params; i++) {
                        check(c.params[i].key.len > 0);
                        check(view_inside(c.params[i].key, line, len));
                        check(view_inside(c.params[i].value, line, len));
                        check(!memchr(c.params[i].key.p, ' ', c.params[i].key.len));
                }
        } else
                check(c.n_params == 0);

        if (c.verb == SMTP_DATA || c.verb == SMTP_QUIT || c.verb == SMTP_RSET || c.verb == SMTP_STARTTLS)
                check(c.arg.len == 0);
        if (c.verb == SMTP_HELO || c.verb == SMTP_EHLO)
                check(c.arg.len > 0);
}

/* Events are folded into a hash so the two runs can be compared. */
static uint64_t fold(uint64_t h, const void *p, size_t n) {
        const uint8_t *b = p;
        for (size_t i = 0; i < n; i++)
                h = (h ^ b[i]) * UINT64_C(0x100000001b3);
        return h;
}

static uint64_t fold_event(uint64_t h, int r, SmtpView line, bool bare_lf) {
        h = fold(h, &r, sizeof(r));
        if (r == 1) {
                h = fold(h, &line.len, sizeof(line.len));
                h = fold(h, line.p, line.len);
                h = fold(h, &bare_lf, sizeof(bare_lf));
        }
        return h;
}

/* Whole input at once: repeated calls on the unconsumed tail. */
static uint64_t run_whole(const char *p, size_t n, unsigned *ret_events) {
        SmtpLineReader rd = { .max_line = FUZZ_LINE_MAX };
        uint64_t h = UINT64_C(0xcbf29ce484222325);
        unsigned events = 0;
        size_t off = 0;

        for (;;) {
                SmtpView line = {};
                size_t consume = SIZE_MAX;
                bool bare_lf = false;
                int r;

                r = smtp_line_next(&rd, p + off, n - off, &line, &consume, &bare_lf);
                check(r == 1 || r == 0 || r == -E2BIG);
                check(consume <= n - off);
                if (r == 1) {
                        check(consume > 0);
                        check(view_inside(line, p + off, consume));
                        check(line.len + (bare_lf ? 1 : 2) == consume);
                        check(consume <= FUZZ_LINE_MAX);
                        check_command(line.p, line.len);
                }
                if (r == -E2BIG)
                        check(consume > 0);
                if (r != 0) {
                        h = fold_event(h, r, line, bare_lf);
                        events++;
                }
                off += consume;
                if (r == 0) {
                        /* Need more: what is left holds no complete line
                         * and is shorter than the limit (or skipped). */
                        check(rd.skipping ? off == n : n - off < FUZZ_LINE_MAX);
                        check(!memchr(p + off, '\n', n - off));
                        break;
                }
        }

        *ret_events = events;
        return h;
}

/* Byte by byte through a pending buffer bounded by the line limit, as a
 * session with a fixed input buffer would do. */
static uint64_t run_bytewise(const char *p, size_t n, unsigned *ret_events) {
        SmtpLineReader rd = { .max_line = FUZZ_LINE_MAX };
        uint64_t h = UINT64_C(0xcbf29ce484222325);
        char pending[FUZZ_LINE_MAX + 1];
        size_t n_pending = 0;
        unsigned events = 0;

        for (size_t fed = 0; fed < n; fed++) {
                check(n_pending < sizeof(pending));
                pending[n_pending++] = p[fed];

                for (;;) {
                        SmtpView line = {};
                        size_t consume = SIZE_MAX;
                        bool bare_lf = false;
                        int r;

                        r = smtp_line_next(&rd, pending, n_pending, &line, &consume, &bare_lf);
                        check(consume <= n_pending);
                        if (r != 0) {
                                h = fold_event(h, r, line, bare_lf);
                                events++;
                        }
                        memmove(pending, pending + consume, n_pending - consume);
                        n_pending -= consume;
                        if (r == 0)
                                break;
                }
        }

        *ret_events = events;
        return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        const char *p = (const char *) data;
        unsigned e1, e2;
        uint64_t h1, h2;

        /* The input as a single command line, whatever it contains. */
        check_command(p, size);

        h1 = run_whole(p, size, &e1);
        h2 = run_bytewise(p, size, &e2);
        check(e1 == e2);
        check(h1 == h2);

        return 0;
}
