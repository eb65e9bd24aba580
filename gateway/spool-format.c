/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The spool's envelope header (see spool.c for where messages are stored).
 *
 * Every message starts with a text envelope header followed by the message
 * data:
 *
 *      tlsgw-spool 1
 *      mid 7
 *      icid 5
 *      arrival 1700000000000000
 *      listener inbound
 *      client-ip 192.0.2.1
 *      helo mx.example.org
 *      sender a@example.org
 *      rcpt "john smith"@example.net
 *      size 00000000000000004711
 *      <empty line>
 *      <data>
 *
 * Values are escaped (%XX for '%', control octets and DEL), so no value can
 * hold CR, LF or NUL and every header line is non-empty: the first "\n\n"
 * ends the header. Lines for NULL fields (listener, client-ip, helo) are
 * left out. The size field holds dashes until the message is sealed at
 * commit.
 *
 *
 * Parsing refuses anything it did not write: unknown or repeated keys, a
 * different version line, malformed escapes. Never logs; negative errno.
 */

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "spool-internal.h"
#include "util/macro.h"
#include "util/parse.h"

/* ---- envelopes ---- */

void envelope_done(Envelope *e) {
        if (!e)
                return;
        free(e->sender);
        strv_free(e->rcpts);
        free(e->listener);
        free(e->client_ip);
        free(e->helo);
        *e = (Envelope) {};
}

static int strdup_or_null(const char *s, char **ret) {
        char *c = NULL;

        if (s) {
                c = strdup(s);
                if (!c)
                        return -ENOMEM;
        }
        *ret = c;
        return 0;
}

int envelope_copy(const Envelope *src, Envelope *dst) {
        _cleanup_(envelope_done) Envelope e = {
                .mid = src->mid,
                .icid = src->icid,
                .arrival_usec = src->arrival_usec,
        };
        size_t n = src->rcpts ? src->n_rcpts : 0;

        if (strdup_or_null(src->sender ? src->sender : "", &e.sender) < 0 ||
            strdup_or_null(src->listener, &e.listener) < 0 ||
            strdup_or_null(src->client_ip, &e.client_ip) < 0 ||
            strdup_or_null(src->helo, &e.helo) < 0)
                return -ENOMEM;

        e.rcpts = calloc(n + 1, sizeof(char *));
        if (!e.rcpts)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                e.rcpts[i] = strdup(src->rcpts[i]);
                if (!e.rcpts[i])
                        return -ENOMEM;
                e.n_rcpts = i + 1;
        }

        *dst = e;
        e = (Envelope) {};
        return 0;
}

void spool_message_free(SpoolMessage *m) {
        if (!m)
                return;
        envelope_done(&m->env);
        free(m->rcpt_state);
        free(m);
}

void spool_message_freep(SpoolMessage **m) {
        spool_message_free(*m);
}

/* ---- header encoding ---- */

static bool must_escape(unsigned char c) {
        return c == '%' || c < 0x20 || c == 0x7f;
}

static void put_escaped(FILE *f, const char *key, const char *value) {
        static const char hex[] = "0123456789ABCDEF";

        fputs(key, f);
        fputc(' ', f);
        for (const unsigned char *p = (const unsigned char *) value; *p; p++) {
                if (must_escape(*p)) {
                        fputc('%', f);
                        fputc(hex[*p >> 4], f);
                        fputc(hex[*p & 15], f);
                } else
                        fputc(*p, f);
        }
        fputc('\n', f);
}

static int unhex(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        return -1;
}

/* Decodes value[0..len) into a new string; refuses malformed escapes and
 * an escaped NUL, which put_escaped() never writes. */
static int unescape(const char *value, size_t len, char **ret) {
        _cleanup_free_ char *s = malloc(len + 1);
        size_t j = 0;

        if (!s)
                return -ENOMEM;
        for (size_t i = 0; i < len; i++) {
                unsigned char c = (unsigned char) value[i];

                if (c == '%') {
                        int hi, lo;

                        if (len - i < 3)
                                return -EBADMSG;
                        hi = unhex(value[i + 1]);
                        lo = unhex(value[i + 2]);
                        if (hi < 0 || lo < 0 || (hi | lo) == 0)
                                return -EBADMSG;
                        s[j++] = (char) (hi << 4 | lo);
                        i += 2;
                } else if (must_escape(c))
                        return -EBADMSG;
                else
                        s[j++] = (char) c;
        }
        s[j] = '\0';
        *ret = TAKE_PTR(s);
        return 0;
}

/* Builds the header of env; the size field holds dashes until sealed. */
int spool_header_build(const Envelope *env, char **ret, size_t *ret_len, size_t *ret_size_offset) {
        _cleanup_free_ char *buf = NULL;
        size_t len = 0;
        long size_offset;
        FILE *f;

        f = open_memstream(&buf, &len);
        if (!f)
                return -ENOMEM;

        fprintf(f, SPOOL_MAGIC "\n");
        fprintf(f, "mid %" PRIu64 "\n", env->mid);
        fprintf(f, "icid %" PRIu64 "\n", env->icid);
        fprintf(f, "arrival %" PRIu64 "\n", env->arrival_usec);
        if (env->listener)
                put_escaped(f, "listener", env->listener);
        if (env->client_ip)
                put_escaped(f, "client-ip", env->client_ip);
        if (env->helo)
                put_escaped(f, "helo", env->helo);
        put_escaped(f, "sender", env->sender ? env->sender : "");
        for (size_t i = 0; i < env->n_rcpts; i++)
                put_escaped(f, "rcpt", env->rcpts[i]);
        fputs("size ", f);
        size_offset = ftell(f);
        for (unsigned i = 0; i < SPOOL_SIZE_WIDTH; i++)
                fputc('-', f);
        fputs("\n\n", f);

        if (ferror(f) || size_offset < 0) {
                fclose(f);
                return -ENOMEM;
        }
        if (fclose(f) != 0)
                return -ENOMEM;
        if (len > SPOOL_HEADER_MAX)
                return -E2BIG;

        *ret = TAKE_PTR(buf);
        *ret_len = len;
        *ret_size_offset = (size_t) size_offset;
        return 0;
}

static int strv_push(char ***l, size_t *n, char *s) {
        char **nl = realloc(*l, (*n + 2) * sizeof(char *));

        if (!nl)
                return -ENOMEM;
        nl[*n] = s;
        nl[*n + 1] = NULL;
        *l = nl;
        (*n)++;
        return 0;
}

static int value_u64(const char *v, size_t len, uint64_t *ret) {
        char tmp[SPOOL_SIZE_WIDTH + 1];

        if (len == 0 || len > SPOOL_SIZE_WIDTH)
                return -EBADMSG;
        memcpy(tmp, v, len);
        tmp[len] = '\0';
        return parse_uint64(tmp, ret) < 0 ? -EBADMSG : 0;
}

/* Parses a complete header h[0..len), which ends with "\n\n". */
int spool_header_parse(const char *h, size_t len, SpoolMessage **ret) {
        _cleanup_(spool_message_freep) SpoolMessage *m = NULL;
        bool have_mid = false, have_sender = false, have_size = false, first = true;
        const char *p = h, *end = h + len - 1;  /* stop before the empty line */
        int r;

        m = calloc(1, sizeof *m);
        if (!m)
                return -ENOMEM;

        while (p < end) {
                const char *eol = memchr(p, '\n', (size_t) (end - p));
                const char *sp, *v;
                size_t klen, vlen;

                if (!eol)
                        return -EBADMSG;
                if (first) {
                        if ((size_t) (eol - p) != strlen(SPOOL_MAGIC) ||
                            memcmp(p, SPOOL_MAGIC, strlen(SPOOL_MAGIC)) != 0)
                                return -EBADMSG;
                        first = false;
                        p = eol + 1;
                        continue;
                }

                sp = memchr(p, ' ', (size_t) (eol - p));
                if (!sp)
                        return -EBADMSG;
                klen = (size_t) (sp - p);
                v = sp + 1;
                vlen = (size_t) (eol - v);

#define KEY(k) (klen == strlen(k) && memcmp(p, k, klen) == 0)
                if (KEY("mid")) {
                        r = value_u64(v, vlen, &m->env.mid);
                        have_mid = true;
                } else if (KEY("icid"))
                        r = value_u64(v, vlen, &m->env.icid);
                else if (KEY("arrival"))
                        r = value_u64(v, vlen, &m->env.arrival_usec);
                else if (KEY("size")) {
                        if (vlen != SPOOL_SIZE_WIDTH)
                                return -EBADMSG;
                        r = value_u64(v, vlen, &m->data_size);
                        have_size = true;
                } else if (KEY("listener") && !m->env.listener)
                        r = unescape(v, vlen, &m->env.listener);
                else if (KEY("client-ip") && !m->env.client_ip)
                        r = unescape(v, vlen, &m->env.client_ip);
                else if (KEY("helo") && !m->env.helo)
                        r = unescape(v, vlen, &m->env.helo);
                else if (KEY("sender") && !m->env.sender) {
                        r = unescape(v, vlen, &m->env.sender);
                        have_sender = true;
                } else if (KEY("rcpt")) {
                        char *s;

                        r = unescape(v, vlen, &s);
                        if (r >= 0) {
                                r = strv_push(&m->env.rcpts, &m->env.n_rcpts, s);
                                if (r < 0)
                                        free(s);
                        }
                } else
                        /* Unknown or repeated keys mean a format we do not
                         * understand: better to refuse than to guess. */
                        return -EBADMSG;
#undef KEY
                if (r < 0)
                        return r;
                p = eol + 1;
        }

        if (first || !have_mid || !have_sender || !have_size || m->env.n_rcpts == 0)
                return -EBADMSG;

        m->rcpt_state = calloc(m->env.n_rcpts, sizeof(uint8_t));
        if (!m->rcpt_state)
                return -ENOMEM;
        m->data_offset = len;

        *ret = TAKE_PTR(m);
        return 0;
}

/* Reads and parses the header of an open message file and checks that the
 * file was sealed: size field == file size - header length. */
int spool_message_read(int fd, uint64_t mid, SpoolMessage **ret) {
        _cleanup_(spool_message_freep) SpoolMessage *m = NULL;
        _cleanup_free_ char *buf = NULL;
        size_t len = 0, cap = 0;
        const char *hend = NULL;
        struct stat st;
        int r;

        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EBADMSG;

        while (!hend) {
                ssize_t n;

                if (len >= SPOOL_HEADER_MAX)
                        return -EBADMSG;
                if (cap - len < SPOOL_READ_CHUNK) {
                        size_t nc = MAX(cap * 2, (size_t) SPOOL_READ_CHUNK);
                        char *nb = realloc(buf, nc);

                        if (!nb)
                                return -ENOMEM;
                        buf = nb;
                        cap = nc;
                }
                n = pread(fd, buf + len, SPOOL_READ_CHUNK, (off_t) len);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        return -EBADMSG;        /* EOF inside the header: torn */
                /* Search from one octet back so a "\n\n" split across reads
                 * is found. */
                size_t from = len > 0 ? len - 1 : 0;
                len += (size_t) n;
                hend = memmem(buf + from, len - from, "\n\n", 2);
        }

        r = spool_header_parse(buf, (size_t) (hend - buf) + 2, &m);
        if (r < 0)
                return r;
        if (m->env.mid != mid)
                return -EBADMSG;
        if ((uint64_t) st.st_size < m->data_offset ||
            (uint64_t) st.st_size - m->data_offset != m->data_size)
                return -EBADMSG;

        *ret = TAKE_PTR(m);
        return 0;
}
