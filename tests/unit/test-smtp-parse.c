/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Unit tests for the SMTP command line reader, command parser and reply
 * parser in smtp-parse.c: accepted forms, each error class, resumption
 * across 1-byte chunks through a real Buf, over-long lines, multi-line
 * replies and EHLO extensions.
 */

#include <errno.h>
#include <string.h>

#include "smtp-parse.h"
#include "util/buf.h"
#include "util/macro.h"
#include "tap.h"

static int cmd(const char *line, SmtpCommand *c) {
        return smtp_command_parse(line, strlen(line), c);
}

static bool view_is(SmtpView v, const char *s) {
        return v.len == strlen(s) && memcmp(v.p, s, v.len) == 0;
}

static void test_verbs(void) {
        static const struct {
                const char *line;
                SmtpVerb verb;
        } good[] = {
                { "HELO client.example",        SMTP_HELO },
                { "ehlo client.example",        SMTP_EHLO },
                { "EhLo [192.0.2.1]",           SMTP_EHLO },
                { "MAIL FROM:<a@example.com>",  SMTP_MAIL },
                { "rcpt to:<b@example.com>",    SMTP_RCPT },
                { "DATA",                       SMTP_DATA },
                { "data",                       SMTP_DATA },
                { "RSET",                       SMTP_RSET },
                { "NOOP",                       SMTP_NOOP },
                { "NOOP anything goes",         SMTP_NOOP },
                { "QUIT",                       SMTP_QUIT },
                { "HELP",                       SMTP_HELP },
                { "HELP MAIL",                  SMTP_HELP },
                { "VRFY",                       SMTP_VRFY },
                { "VRFY someone",               SMTP_VRFY },
                { "EXPN list",                  SMTP_EXPN },
                { "STARTTLS",                   SMTP_STARTTLS },
                { "starttls",                   SMTP_STARTTLS },
                { "BDAT 1000",                  SMTP_BDAT },
                { "BDAT 0 LAST",                SMTP_BDAT },
                { "AUTH PLAIN",                 SMTP_AUTH },
                { "QUIT ",                      SMTP_QUIT },
        };
        static const char * const unknown[] = {
                "", " ", "FOO", "MAILX FROM:<a@b.c>", "HEL", "STARTTLSX", " HELO x",
                "GET / HTTP/1.1", "\x01HELO x", "HELO\tx",
        };
        SmtpCommand c;

        for (size_t i = 0; i < ELEMENTSOF(good); i++) {
                c = (SmtpCommand) { .verb = _SMTP_VERB_INVALID };
                int r = cmd(good[i].line, &c);
                ok(r == 0 && c.verb == good[i].verb, "\"%s\" parses as %s (r=%d)",
                   good[i].line, smtp_verb_to_string(good[i].verb), r);
        }
        for (size_t i = 0; i < ELEMENTSOF(unknown); i++)
                is_int(cmd(unknown[i], &c), -EBADMSG, "unknown verb #%zu refused", i);

        c = (SmtpCommand) {};
        is_int(cmd("HELO  client.example  ", &c), 0, "HELO with extra spaces");
        ok(view_is(c.arg, "client.example"), "HELO arg trimmed");

        is_str(smtp_verb_to_string(SMTP_STARTTLS), "STARTTLS", "verb_to_string");
        ok(smtp_verb_to_string(_SMTP_VERB_MAX) == NULL, "verb_to_string out of range");
        ok(smtp_verb_to_string(_SMTP_VERB_INVALID) == NULL, "verb_to_string invalid");
}

static void test_args(void) {
        static const char * const einval[] = {
                "HELO", "HELO ", "EHLO", "EHLO   ",
                "DATA x", "RSET now", "QUIT bye", "STARTTLS x",
                "AUTH", "BDAT", "BDAT x", "BDAT 10 FIRST", "BDAT -1",
                "HELO a\rb", "NOOP a\0b", "VRFY a\x7f",
        };
        SmtpCommand c;

        for (size_t i = 0; i < ELEMENTSOF(einval); i++) {
                /* strlen() stops at the NUL of "NOOP a\0b"; pass its
                 * real length so the NUL reaches the parser. */
                size_t len = strcmp(einval[i], "NOOP a") == 0 ? 8 : strlen(einval[i]);
                is_int(smtp_command_parse(einval[i], len, &c), -EINVAL, "argument error #%zu refused", i);
        }
}

static void test_mail_rcpt(void) {
        SmtpCommand c, saved;
        char line[600];

        is_int(cmd("MAIL FROM:<alice@example.com>", &c), 0, "MAIL FROM");
        ok(view_is(c.path, "alice@example.com"), "MAIL path without brackets");
        is_int(c.n_params, 0, "MAIL no params");

        is_int(cmd("mail from:<alice@example.com> SIZE=1024 BODY=8BITMIME SMTPUTF8", &c), 0, "MAIL with params");
        is_int(c.n_params, 3, "three params");
        ok(view_is(c.params[0].key, "SIZE") && view_is(c.params[0].value, "1024"), "SIZE=1024");
        ok(view_is(c.params[1].key, "BODY") && view_is(c.params[1].value, "8BITMIME"), "BODY=8BITMIME");
        ok(view_is(c.params[2].key, "SMTPUTF8") && c.params[2].value.len == 0, "keyword without value");
        ok(smtp_view_eq(c.params[0].key, "size"), "view_eq case-insensitive");
        ok(!smtp_view_eq(c.params[0].key, "SIZ"), "view_eq length-sensitive");
        ok(!smtp_view_eq(c.params[0].key, NULL), "view_eq NULL");

        is_int(cmd("MAIL FROM:<alice@example.com>   SIZE=1  ", &c), 0, "runs of spaces between params");
        is_int(c.n_params, 1, "one param after trimming");

        is_int(cmd("MAIL FROM:<>", &c), 0, "null reverse-path");
        is_int(c.path.len, 0, "null path is empty");
        is_int(cmd("MAIL FROM:<> SIZE=0", &c), 0, "null reverse-path with param");
        is_int(cmd("MAIL FROM: <alice@example.com>", &c), 0, "single space after colon tolerated");
        is_int(cmd("MAIL FROM:<\"john doe\"@example.com>", &c), 0, "quoted local part");
        ok(view_is(c.path, "\"john doe\"@example.com"), "quoted local part kept");
        is_int(cmd("MAIL FROM:<\"a>b\"@example.com>", &c), 0, "quoted '>' in local part");
        ok(view_is(c.path, "\"a>b\"@example.com"), "path ends at the real '>'");
        is_int(cmd("MAIL FROM:<@relay1.example,@relay2.example:alice@example.com>", &c), 0, "source route ignored");
        ok(view_is(c.path, "alice@example.com"), "source route stripped");
        is_int(cmd("MAIL FROM:<user@[192.0.2.1]>", &c), 0, "address literal");

        is_int(cmd("RCPT TO:<bob@example.net>", &c), 0, "RCPT TO");
        ok(view_is(c.path, "bob@example.net"), "RCPT path");
        is_int(cmd("RCPT TO:<postmaster>", &c), 0, "RCPT postmaster without domain");
        ok(view_is(c.path, "postmaster"), "postmaster path");
        is_int(cmd("RCPT TO:<PostMaster>", &c), 0, "postmaster case-insensitive");
        is_int(cmd("RCPT TO:<bob@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.net", &c), 0, "RCPT DSN params");
        is_int(c.n_params, 2, "RCPT two params");
        ok(view_is(c.params[1].value, "rfc822;bob@example.net"), "ORCPT value");

        saved = c;
        static const char * const einval[] = {
                "MAIL", "MAIL FROM", "MAIL FROM:", "MAIL FROM:alice@example.com",
                "MAIL TO:<alice@example.com>", "MAIL FROM:  <alice@example.com>",
                "MAIL FROM:<alice@example.com", "MAIL FROM:<alice@example.com>SIZE=1",
                "MAIL FROM:<alice>", "MAIL FROM:<postmaster>", "MAIL FROM:<alice@>",
                "MAIL FROM:<alice@exa mple.com>", "MAIL FROM:<al ice@example.com>",
                "MAIL FROM:<ali\xc3\xa9@example.com>",
                "MAIL FROM:<a@example.com> SIZE=", "MAIL FROM:<a@example.com> =1",
                "MAIL FROM:<a@example.com> -X=1", "MAIL FROM:<a@example.com> S_ZE=1",
                "MAIL FROM:<a@example.com> SIZE=1=2", "MAIL FROM:<a@example.com> X=\x80",
                "MAIL FROM:<@relay.example>", "MAIL FROM:<@bad_relay:a@example.com>",
                "MAIL FROM:<@relay.example,a@example.com>",
                "RCPT TO:<>", "RCPT FROM:<b@example.net>", "RCPT TO:b@example.net",
                "RCPT TO:<postmaster@>", "RCPT TO:<postmasterx>", "RCPT TO:postmaster",
        };
        for (size_t i = 0; i < ELEMENTSOF(einval); i++)
                is_int(cmd(einval[i], &c), -EINVAL, "MAIL/RCPT syntax error #%zu: %s", i, einval[i]);
        ok(memcmp(&c, &saved, sizeof(c)) == 0, "result untouched on failure");
        is_int(cmd("RCPT TO:<b@example.net> NOTIFY", &c), 0, "keyword-only param accepted");

        /* Path limit: 256 octets with brackets (RFC 5321 4.5.3.1.3). A
         * 254-octet mailbox is the longest. */
        {
                char mbox[300];
                size_t k;

                strcpy(mbox, "u@");
                for (k = 2; k < 254; k++)
                        mbox[k] = (k - 2) % 50 == 49 ? '.' : 'd';
                mbox[k] = '\0';
                snprintf(line, sizeof(line), "MAIL FROM:<%s>", mbox);
                is_int(cmd(line, &c), 0, "256-octet path accepted");
                is_int(c.path.len, 254, "254-octet mailbox");
                mbox[k] = 'd';
                mbox[k + 1] = '\0';
                snprintf(line, sizeof(line), "MAIL FROM:<%s>", mbox);
                is_int(cmd(line, &c), -ENAMETOOLONG, "257-octet path refused");
                snprintf(line, sizeof(line), "RCPT TO:<%s", mbox);
                is_int(cmd(line, &c), -ENAMETOOLONG, "long unterminated path is too long");
                snprintf(line, sizeof(line), "RCPT TO:<%s> SIZE=1", mbox);
                is_int(cmd(line, &c), -ENAMETOOLONG, "long path with params refused");
        }

        /* Parameter cap. */
        {
                size_t off = (size_t) snprintf(line, sizeof(line), "MAIL FROM:<a@example.com>");
                for (unsigned k = 0; k < SMTP_PARAMS_MAX; k++)
                        off += (size_t) snprintf(line + off, sizeof(line) - off, " X%u=%u", k, k);
                is_int(cmd(line, &c), 0, "SMTP_PARAMS_MAX params accepted");
                is_int(c.n_params, SMTP_PARAMS_MAX, "all params returned");
                ok(view_is(c.params[SMTP_PARAMS_MAX - 1].key, "X7"), "last param key");
                snprintf(line + off, sizeof(line) - off, " EXTRA");
                is_int(cmd(line, &c), -E2BIG, "SMTP_PARAMS_MAX+1 params refused");
        }

        /* Views point into the line. */
        {
                const char *l = "RCPT TO:<bob@example.net> NOTIFY=NEVER";
                is_int(cmd(l, &c), 0, "views parse");
                ok(c.path.p >= l && c.path.p + c.path.len <= l + strlen(l), "path view inside line");
                ok(c.params[0].value.p + c.params[0].value.len == l + strlen(l), "value view ends the line");
        }
}

/* Feeds `input` into a Buf `chunk` bytes at a time and collects the lines
 * (joined by '|') and the number of -E2BIG reports. */
static void run_reader(const char *input, size_t input_len, size_t chunk, size_t max_line,
                       char *out, size_t out_size, unsigned *ret_e2big, unsigned *ret_bare) {
        SmtpLineReader rd = { .max_line = max_line };
        Buf b;
        size_t fed = 0, o = 0;
        unsigned e2big = 0, bare = 0;

        buf_init(&b, 4096);
        out[0] = '\0';
        for (;;) {
                SmtpView line;
                size_t consume = 0;
                bool bare_lf = false;
                int r;

                r = smtp_line_next(&rd, buf_peek(&b), buf_len(&b), &line, &consume, &bare_lf);
                if (consume > buf_len(&b)) {
                        /* Would be a parser bug; make it visible. */
                        snprintf(out, out_size, "CONSUME-OVERRUN");
                        break;
                }
                buf_consume(&b, consume);
                if (r == 1) {
                        o += (size_t) snprintf(out + o, out_size - o, "%.*s|", (int) line.len, line.p);
                        if (bare_lf)
                                bare++;
                        continue;
                }
                if (r == -E2BIG) {
                        e2big++;
                        o += (size_t) snprintf(out + o, out_size - o, "<E2BIG>|");
                        continue;
                }
                if (fed >= input_len)
                        break;
                size_t k = MIN(chunk, input_len - fed);
                if (buf_append(&b, input + fed, k) < 0) {
                        snprintf(out, out_size, "BUF-FULL");
                        break;
                }
                fed += k;
        }
        buf_done(&b);
        *ret_e2big = e2big;
        *ret_bare = bare;
}

static void test_line_reader(void) {
        static const char input[] =
                "EHLO a.example\r\n"
                "MAIL FROM:<x@a.example>\r\n"
                "\r\n"
                "NOOP bare\n"
                "QUIT\r\n"
                "partial";
        const char *expect = "EHLO a.example|MAIL FROM:<x@a.example>||NOOP bare|QUIT|";
        char out[1024];
        unsigned e2big, bare;

        for (size_t chunk = 1; chunk <= sizeof(input); chunk++) {
                run_reader(input, sizeof(input) - 1, chunk, 512, out, sizeof(out), &e2big, &bare);
                if (strcmp(out, expect) != 0 || e2big != 0 || bare != 1) {
                        ok(false, "line reader chunk=%zu: got \"%s\" e2big=%u bare=%u", chunk, out, e2big, bare);
                        return;
                }
        }
        ok(true, "line reader gives identical lines for every chunk size 1..%zu", sizeof(input));

        /* max_line 16 counts the CRLF: 14 octets + CRLF fit, 15 do not. */
        static const char lim[] =
                "12345678901234\r\n"
                "123456789012345\r\n"
                "QUIT\r\n"
                "1234567890123456789012345678901234567890\n"
                "NOOP\r\n"
                "123456789012345\n";
        const char *lim_expect = "12345678901234|<E2BIG>|QUIT|<E2BIG>|NOOP|123456789012345|";

        for (size_t chunk = 1; chunk <= sizeof(lim); chunk++) {
                run_reader(lim, sizeof(lim) - 1, chunk, 16, out, sizeof(out), &e2big, &bare);
                if (strcmp(out, lim_expect) != 0 || e2big != 2) {
                        ok(false, "over-long chunk=%zu: got \"%s\" e2big=%u", chunk, out, e2big);
                        return;
                }
        }
        ok(true, "over-long lines reported once each and skipped to LF, every chunk size");

        /* A huge line arriving in large pieces: junk is consumed, not
         * buffered, so a bounded Buf never fills up. */
        {
                static char big[20000];
                memset(big, 'x', sizeof(big));
                memcpy(big + sizeof(big) - 8, "\r\nQUIT\r\n", 8);
                run_reader(big, sizeof(big), 1000, 512, out, sizeof(out), &e2big, &bare);
                is_str(out, "<E2BIG>|QUIT|", "20000-octet line skipped within a 4096-octet buffer");
                is_int(e2big, 1, "reported once");
        }

        /* Direct calls: need-more and the default limit. */
        {
                SmtpLineReader rd = {};
                SmtpView line;
                size_t consume = 99;
                bool bare_lf = true;

                is_int(smtp_line_next(&rd, "HELO x", 6, &line, &consume, NULL), 0, "no LF: need more");
                is_int(consume, 0, "nothing consumed while waiting");
                is_int(smtp_line_next(&rd, "HELO x\r\nQUIT\r\n", 14, &line, &consume, &bare_lf), 1, "line found");
                is_int(consume, 8, "consume covers CRLF");
                ok(!bare_lf, "CRLF is not bare");
                ok(view_is(line, "HELO x"), "line without CRLF");

                char l512[600];
                memset(l512, 'a', sizeof(l512));
                memcpy(l512 + 510, "\r\n", 2);
                is_int(smtp_line_next(&rd, l512, 512, &line, &consume, NULL), 1, "512 octets with CRLF fit the default limit");
                memcpy(l512 + 510, "a\r\n", 3);
                is_int(smtp_line_next(&rd, l512, 513, &line, &consume, NULL), -E2BIG, "513 octets exceed the default limit");
                is_int(consume, 513, "whole over-long line consumed");
                ok(!rd.skipping, "reader left skipping state");
        }
}

static int reply(const char *s, SmtpReply *r, size_t *consume) {
        return smtp_reply_parse(s, strlen(s), r, consume);
}

static void test_replies(void) {
        SmtpReply r;
        size_t consume = 0;
        char buf[SMTP_REPLY_MAX + 100];

        is_int(reply("250 OK\r\n", &r, &consume), 1, "single-line reply");
        is_int(r.code, 250, "code 250");
        ok(view_is(r.text, "OK"), "text");
        is_str(r.enhanced, "", "no enhanced code");
        is_int(consume, 8, "consume");

        is_int(reply("250 2.1.0 Sender ok\r\nNEXT", &r, &consume), 1, "enhanced code reply");
        is_str(r.enhanced, "2.1.0", "enhanced 2.1.0");
        is_int(consume, 21, "consume stops at the first reply");

        is_int(reply("550 5.7.1 Relaying denied\n", &r, &consume), 1, "bare LF reply");
        is_int(r.code, 550, "code 550");
        is_str(r.enhanced, "5.7.1", "enhanced 5.7.1");
        ok(view_is(r.text, "5.7.1 Relaying denied"), "text without LF");

        is_int(reply("451 4.123.456\r\n", &r, &consume), 1, "enhanced code alone");
        is_str(r.enhanced, "4.123.456", "three-digit sub-codes");
        is_int(reply("250 5.1.1 odd\r\n", &r, &consume), 1, "class mismatch parses");
        is_str(r.enhanced, "", "class mismatch not taken as enhanced code");
        is_int(reply("250 2.1.0000 x\r\n", &r, &consume), 1, "4-digit detail");
        is_str(r.enhanced, "", "4-digit detail not an enhanced code");
        is_int(reply("250 2.1.0x\r\n", &r, &consume), 1, "glued text");
        is_str(r.enhanced, "", "glued text not an enhanced code");
        is_int(reply("250\r\n", &r, &consume), 1, "code without text");
        is_int(r.text.len, 0, "empty text");
        is_int(reply("354 \r\n", &r, &consume), 1, "code with empty text");
        is_int(reply("354 3.0.0 go ahead\r\n", &r, &consume), 1, "354 reply");
        is_str(r.enhanced, "", "class 3 is not an enhanced status class");

        static const char ehlo[] =
                "250-mx.example.net Hello client\r\n"
                "250-PIPELINING\r\n"
                "250-SIZE 10240000\r\n"
                "250-8BITMIME\n"
                "250-STARTTLS\r\n"
                "250-AUTH PLAIN LOGIN  \r\n"
                "250 ENHANCEDSTATUSCODES\r\n"
                "220 next";
        SmtpView arg = {};

        is_int(reply(ehlo, &r, &consume), 1, "multi-line EHLO reply");
        is_int(r.code, 250, "EHLO code");
        is_int(consume, sizeof(ehlo) - 1 - strlen("220 next"), "consume covers whole reply");
        ok(r.text.p == ehlo + 4, "text starts after first code");
        ok(r.text.p + r.text.len == ehlo + consume - 2, "text ends before final CRLF");
        ok(smtp_reply_has_extension(&r, "PIPELINING", NULL), "PIPELINING");
        ok(smtp_reply_has_extension(&r, "starttls", &arg) && arg.len == 0, "starttls case-insensitive, no arg");
        ok(smtp_reply_has_extension(&r, "SIZE", &arg) && view_is(arg, "10240000"), "SIZE argument");
        ok(smtp_reply_has_extension(&r, "AUTH", &arg) && view_is(arg, "PLAIN LOGIN"), "AUTH argument trimmed");
        ok(smtp_reply_has_extension(&r, "8BITMIME", NULL), "extension after bare-LF line");
        ok(smtp_reply_has_extension(&r, "ENHANCEDSTATUSCODES", NULL), "extension on the final line");
        ok(!smtp_reply_has_extension(&r, "SMTPUTF8", NULL), "absent extension");
        ok(!smtp_reply_has_extension(&r, "mx.example.net", NULL), "greeting is not an extension");
        ok(!smtp_reply_has_extension(&r, "PIPE", NULL), "prefix is not a match");

        is_int(reply("250 mx.example.net\r\n", &r, &consume), 1, "HELO-style single line");
        ok(!smtp_reply_has_extension(&r, "STARTTLS", NULL), "single line has no extensions");

        /* Every proper prefix is incomplete, never an error. */
        {
                bool all = true;
                for (size_t k = 0; k < strlen(ehlo) - strlen("220 next"); k++) {
                        size_t c2 = 12345;
                        if (smtp_reply_parse(ehlo, k, &r, &c2) != 0)
                                all = false;
                }
                ok(all, "every prefix of a multi-line reply needs more input");
        }

        static const char * const bad[] = {
                "250-first\r\n251 second\r\n",
                "OK\r\n",
                "25\r\n",
                "2500 x\r\n",
                "250x\r\n",
                "150 old\r\n",
                "650 x\r\n",
                "25a ok\r\n",
                "\r\n",
                "250-ok\r\n\r\n",
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                size_t c2 = 0;
                is_int(smtp_reply_parse(bad[i], strlen(bad[i]), &r, &c2), -EBADMSG, "malformed reply #%zu", i);
        }

        consume = 77;
        is_int(reply("250-partial\r\n250", &r, &consume), 0, "incomplete multi-line reply");
        is_int(reply("", &r, &consume), 0, "empty input needs more");

        /* A continuation flood longer than SMTP_REPLY_MAX. */
        {
                size_t o = 0;
                while (o + 20 < sizeof(buf))
                        o += (size_t) snprintf(buf + o, sizeof(buf) - o, "250-XXXXXXXXXXXXXXX\r\n");
                is_int(smtp_reply_parse(buf, o, &r, &consume), -E2BIG, "over-long reply refused");
                is_int(smtp_reply_parse(buf, SMTP_REPLY_MAX - 10, &r, &consume), 0, "below the limit: need more");
        }
        is_int(consume, 77, "consume untouched on failure");
}

int main(void) {
        test_verbs();
        test_args();
        test_mail_rcpt();
        test_line_reader();
        test_replies();
        return tap_done();
}
