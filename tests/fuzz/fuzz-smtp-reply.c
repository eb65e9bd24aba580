/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Fuzz target for smtp_reply_parse() and smtp_reply_has_extension(): parses
 * replies off the head of the input until it runs dry, and checks that
 * views lie inside the consumed reply, codes are in range, every proper
 * prefix of a reply is "incomplete", and the same reply parses the same
 * when it is all the input there is. Aborts when an invariant breaks.
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

static bool view_inside(SmtpView v, const char *p, size_t n) {
        return v.p >= p && v.len <= n && (size_t) (v.p - p) <= n - v.len;
}

static void check_reply(const SmtpReply *r, const char *p, size_t consume) {
        static const char * const keywords[] = {
                "PIPELINING", "SIZE", "STARTTLS", "8BITMIME", "SMTPUTF8", "AUTH", "DSN", "X",
        };
        size_t elen;

        check(r->code >= 200 && r->code <= 599);
        check(view_inside(r->text, p, consume));
        elen = strnlen(r->enhanced, sizeof(r->enhanced));
        check(elen < sizeof(r->enhanced));
        if (elen > 0) {
                check(elen >= 5);
                check(r->enhanced[0] == p[0]);
                check(r->enhanced[1] == '.');
        }

        for (size_t i = 0; i < ELEMENTSOF(keywords); i++) {
                SmtpView arg = { .p = NULL, .len = SIZE_MAX };

                if (smtp_reply_has_extension(r, keywords[i], &arg))
                        check(view_inside(arg, r->text.p, r->text.len));
                else
                        check(arg.p == NULL && arg.len == SIZE_MAX);
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        const char *p = (const char *) data;
        size_t off = 0;

        for (;;) {
                SmtpReply r = {}, r2 = {};
                size_t consume = SIZE_MAX, consume2 = SIZE_MAX;
                int k;

                k = smtp_reply_parse(p + off, size - off, &r, &consume);
                check(k == 1 || k == 0 || k == -EBADMSG || k == -E2BIG);
                if (k == -E2BIG)
                        check(size - off >= SMTP_REPLY_MAX);
                if (k != 1)
                        break;

                check(consume > 0 && consume <= size - off && consume <= SMTP_REPLY_MAX);
                check(p[off + consume - 1] == '\n');
                check_reply(&r, p + off, consume);

                /* The reply alone parses identically... */
                check(smtp_reply_parse(p + off, consume, &r2, &consume2) == 1);
                check(consume2 == consume && r2.code == r.code);
                check(r2.text.p == r.text.p && r2.text.len == r.text.len);
                check(strcmp(r2.enhanced, r.enhanced) == 0);

                /* ...and no proper prefix of it is complete or an error
                 * (a few cut points keep this linear). */
                for (size_t cut = consume - 1; ; cut /= 2) {
                        size_t c3 = SIZE_MAX;
                        SmtpReply r3;
                        int k3 = smtp_reply_parse(p + off, cut, &r3, &c3);

                        check(k3 == 0);
                        if (cut == 0)
                                break;
                }

                off += consume;
        }

        return 0;
}
