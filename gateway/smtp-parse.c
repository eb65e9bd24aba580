/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * SMTP wire parsing: command lines, command arguments, the end of DATA and
 * server replies. Pure functions over caller buffers: no I/O, no logging,
 * no allocation, so every entry point is a fuzz target.
 *
 * It does not decide policy (which HELO names or senders are acceptable),
 * does not undo dot-stuffing (stored data stays in wire form) and does not
 * support SMTPUTF8 (RFC 6531): non-ASCII paths are syntax errors.
 *
 * Returns: negative errno for malformed input as documented per function in
 * smtp-parse.h; 0/1 for "need more"/"done". Out-params are written only on
 * success, except *ret_consume which is always meaningful when documented.
 */

#include <errno.h>
#include <string.h>
#include <strings.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "smtp-parse.h"
#include "util/macro.h"
#include "util/parse.h"

/* RFC 5321 4.5.3.1.4: a command line is 512 octets including CRLF. Used
 * when a reader was set up without an explicit limit. */
#define SMTP_COMMAND_LINE_MAX 512
/* Longest verb we know ("STARTTLS"); anything longer is not a verb. */
#define SMTP_VERB_LEN_MAX 8
/* RFC 3463 2: class "." 1*3digit "." 1*3digit, at most "5.999.999". */
#define ENHANCED_CODE_MAX 9
_Static_assert(ENHANCED_CODE_MAX < sizeof(((SmtpReply *) NULL)->enhanced), "enhanced code must fit SmtpReply");

static const char * const verb_table[_SMTP_VERB_MAX] = {
        [SMTP_HELO]     = "HELO",
        [SMTP_EHLO]     = "EHLO",
        [SMTP_MAIL]     = "MAIL",
        [SMTP_RCPT]     = "RCPT",
        [SMTP_DATA]     = "DATA",
        [SMTP_RSET]     = "RSET",
        [SMTP_NOOP]     = "NOOP",
        [SMTP_QUIT]     = "QUIT",
        [SMTP_HELP]     = "HELP",
        [SMTP_VRFY]     = "VRFY",
        [SMTP_EXPN]     = "EXPN",
        [SMTP_STARTTLS] = "STARTTLS",
        [SMTP_BDAT]     = "BDAT",
        [SMTP_AUTH]     = "AUTH",
};

const char *smtp_verb_to_string(SmtpVerb v) {
        if (v < 0 || v >= _SMTP_VERB_MAX)
                return NULL;
        return verb_table[v];
}

static bool ascii_isdigit(char c) {
        return c >= '0' && c <= '9';
}

static bool ascii_isalnum(char c) {
        return ascii_isdigit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

bool smtp_view_eq(SmtpView v, const char *s) {
        size_t l;

        if (!s)
                return false;
        l = strlen(s);
        return v.len == l && (l == 0 || strncasecmp(v.p, s, l) == 0);
}

/* ---- command lines ---------------------------------------------------- */

int smtp_line_next(SmtpLineReader *r, const char *p, size_t n,
                   SmtpView *ret_line, size_t *ret_consume, bool *ret_bare_lf) {
        size_t max_line = r->max_line > 0 ? r->max_line : SMTP_COMMAND_LINE_MAX;
        const char *lf;

        if (!r->skipping) {
                /* The terminator counts against the limit, so the LF must be
                 * within the first max_line octets. */
                lf = memchr(p, '\n', MIN(n, max_line));
                if (lf) {
                        size_t i = (size_t) (lf - p);
                        bool bare = !(i > 0 && p[i - 1] == '\r');

                        *ret_line = (SmtpView) { .p = p, .len = bare ? i : i - 1 };
                        *ret_consume = i + 1;
                        if (ret_bare_lf)
                                *ret_bare_lf = bare;
                        return 1;
                }
                if (n < max_line) {
                        *ret_consume = 0;
                        return 0;
                }

                /* RFC 5321 4.5.3.1.4 exceeded: drop the line up to its LF
                 * and answer once, when it ends, so the session stays in
                 * step with the client. */
                r->skipping = true;
                p += max_line;
                n -= max_line;
                lf = memchr(p, '\n', n);
                if (!lf) {
                        *ret_consume = max_line + n;
                        return 0;
                }
                r->skipping = false;
                *ret_consume = max_line + (size_t) (lf - p) + 1;
                return -E2BIG;
        }

        lf = memchr(p, '\n', n);
        if (!lf) {
                *ret_consume = n;
                return 0;
        }
        r->skipping = false;
        *ret_consume = (size_t) (lf - p) + 1;
        return -E2BIG;
}

/* ---- commands ---------------------------------------------------------- */

static bool is_wsp(char c) {
        return c == ' ' || c == '\t';
}

/* RFC 5321 4.1.2 esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-") */
static bool esmtp_keyword_is_valid(const char *s, size_t len) {
        if (len == 0 || !ascii_isalnum(s[0]))
                return false;
        for (size_t i = 1; i < len; i++)
                if (!ascii_isalnum(s[i]) && s[i] != '-')
                        return false;
        return true;
}

/* RFC 5321 4.1.2 esmtp-value = 1*(%d33-60 / %d62-126) */
static bool esmtp_value_is_valid(const char *s, size_t len) {
        if (len == 0)
                return false;
        for (size_t i = 0; i < len; i++) {
                unsigned char c = (unsigned char) s[i];

                if (c < 33 || c > 126 || c == '=')
                        return false;
        }
        return true;
}

/* RFC 5321 4.1.2 A-d-l = At-domain *( "," At-domain ), At-domain = "@"
 * Domain. Source routes must be accepted and ignored (RFC 5321 C). */
static bool adl_is_valid(const char *s, size_t len) {
        char domain[256];
        size_t i = 0;

        for (;;) {
                size_t start;

                if (i >= len || s[i] != '@')
                        return false;
                start = ++i;
                while (i < len && s[i] != ',')
                        i++;
                if (i - start == 0 || i - start >= sizeof(domain))
                        return false;
                memcpy(domain, s + start, i - start);
                domain[i - start] = '\0';
                if (!domain_is_valid(domain))
                        return false;
                if (i == len)
                        return true;
                i++; /* ',' */
        }
}

/* Finds the '>' closing a path that starts with '<' at s[0], skipping
 * quoted strings of the local part (they may contain '>'). Returns its
 * index, or 0 if there is none. */
static size_t path_close(const char *s, size_t len) {
        bool quoted = false;

        for (size_t i = 1; i < len; i++) {
                if (quoted) {
                        if (s[i] == '\\')
                                i++;
                        else if (s[i] == '"')
                                quoted = false;
                } else if (s[i] == '"')
                        quoted = true;
                else if (s[i] == '>')
                        return i;
        }
        return 0;
}

static int parse_path_and_params(const char *s, size_t len, bool is_mail, SmtpCommand *c) {
        size_t close, i;
        const char *mb;
        size_t mb_len;

        /* RFC 5321 4.1.2 requires no space after the colon; a single one is
         * sent by enough clients that refusing it would only break mail. */
        if (len > 0 && s[0] == ' ') {
                s++;
                len--;
        }

        if (len == 0 || s[0] != '<')
                return len > SMTP_PATH_MAX ? -ENAMETOOLONG : -EINVAL;

        close = path_close(s, len);
        if (close == 0)
                /* Unterminated: too long already if the missing '>' would
                 * push it over the limit. */
                return len + 1 > SMTP_PATH_MAX ? -ENAMETOOLONG : -EINVAL;
        if (close + 1 > SMTP_PATH_MAX)
                return -ENAMETOOLONG;

        mb = s + 1;
        mb_len = close - 1;

        if (mb_len > 0 && mb[0] == '@') {
                const char *colon = memchr(mb, ':', mb_len);

                if (!colon || !adl_is_valid(mb, (size_t) (colon - mb)))
                        return -EINVAL;
                mb_len -= (size_t) (colon - mb) + 1;
                mb = colon + 1;
                /* A source route in front of the null path is meaningless. */
                if (mb_len == 0)
                        return -EINVAL;
        }

        if (mb_len == 0) {
                /* RFC 5321 4.5.5: the null reverse-path is for MAIL only. */
                if (!is_mail)
                        return -EINVAL;
        } else if (!mailbox_is_valid(mb, mb_len)) {
                /* RFC 5321 4.1.1.3: "Postmaster" without a domain must be
                 * accepted as a recipient, case-insensitively. */
                if (is_mail || !(mb_len == 10 && strncasecmp(mb, "postmaster", 10) == 0))
                        return -EINVAL;
        }

        c->path = (SmtpView) { .p = mb_len > 0 ? mb : s + 1, .len = mb_len };

        /* Parameters: SP-separated keyword[=value]. Runs of spaces are
         * tolerated, anything glued to the '>' is not. */
        i = close + 1;
        if (i < len && s[i] != ' ')
                return -EINVAL;

        while (i < len) {
                size_t start, eq, end;

                while (i < len && s[i] == ' ')
                        i++;
                if (i >= len)
                        break;

                start = i;
                while (i < len && s[i] != ' ')
                        i++;
                end = i;

                const char *e = memchr(s + start, '=', end - start);
                eq = e ? (size_t) (e - s) : end;

                if (!esmtp_keyword_is_valid(s + start, eq - start))
                        return -EINVAL;
                if (e && !esmtp_value_is_valid(s + eq + 1, end - eq - 1))
                        return -EINVAL;
                if (c->n_params >= SMTP_PARAMS_MAX)
                        return -E2BIG;

                c->params[c->n_params++] = (SmtpParam) {
                        .key = { .p = s + start, .len = eq - start },
                        .value = e ? (SmtpView) { .p = s + eq + 1, .len = end - eq - 1 }
                                   : (SmtpView) { .p = s + end, .len = 0 },
                };
        }

        return 0;
}

/* RFC 3030 2: bdat-cmd = "BDAT" SP chunk-size [ SP end-marker ] */
static bool bdat_arg_is_valid(const char *s, size_t len) {
        size_t i = 0;

        while (i < len && ascii_isdigit(s[i]))
                i++;
        if (i == 0)
                return false;
        if (i == len)
                return true;
        return len - i == 5 && strncasecmp(s + i, " LAST", 5) == 0;
}

int smtp_command_parse(const char *line, size_t len, SmtpCommand *ret) {
        SmtpCommand c = { .verb = _SMTP_VERB_INVALID };
        size_t vlen = 0, a, b;

        while (vlen < len && line[vlen] != ' ')
                vlen++;

        if (vlen > 0 && vlen <= SMTP_VERB_LEN_MAX)
                for (SmtpVerb v = 0; v < _SMTP_VERB_MAX; v++)
                        if (strlen(verb_table[v]) == vlen && strncasecmp(line, verb_table[v], vlen) == 0) {
                                c.verb = v;
                                break;
                        }
        if (c.verb < 0)
                return -EBADMSG;

        /* Commands are printable US-ASCII plus SP/HT (RFC 5321 4.1.1, 2.4);
         * NUL and other controls are refused before anything looks at the
         * arguments. Bytes >= 0x80 are left to the per-verb checks. */
        for (size_t i = vlen; i < len; i++) {
                unsigned char ch = (unsigned char) line[i];

                if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
                        return -EINVAL;
        }

        a = vlen < len ? vlen + 1 : len;
        b = len;
        while (a < b && is_wsp(line[a]))
                a++;
        while (b > a && is_wsp(line[b - 1]))
                b--;
        c.arg = (SmtpView) { .p = line + a, .len = b - a };

        switch (c.verb) {

        case SMTP_HELO:
        case SMTP_EHLO:
        case SMTP_AUTH:
                /* RFC 5321 4.1.1.1: the domain is required. */
                if (c.arg.len == 0)
                        return -EINVAL;
                break;

        case SMTP_DATA:
        case SMTP_RSET:
        case SMTP_QUIT:
        case SMTP_STARTTLS:
                /* RFC 5321 4.1.1.4/4.1.1.5/4.1.1.10, RFC 3207 4. */
                if (c.arg.len > 0)
                        return -EINVAL;
                break;

        case SMTP_NOOP:
        case SMTP_HELP:
        case SMTP_VRFY:
        case SMTP_EXPN:
                break;

        case SMTP_BDAT:
                if (!bdat_arg_is_valid(c.arg.p, c.arg.len))
                        return -EINVAL;
                break;

        case SMTP_MAIL:
        case SMTP_RCPT: {
                const char *prefix = c.verb == SMTP_MAIL ? "FROM:" : "TO:";
                size_t plen = strlen(prefix);
                int r;

                if (c.arg.len < plen || strncasecmp(c.arg.p, prefix, plen) != 0)
                        return -EINVAL;
                r = parse_path_and_params(c.arg.p + plen, c.arg.len - plen, c.verb == SMTP_MAIL, &c);
                if (r < 0)
                        return r;
                break;
        }

        default:
                return -EBADMSG;
        }

        *ret = c;
        return 0;
}

/* ---- DATA --------------------------------------------------------------- */

enum {
        DATA_BOL,       /* after CRLF (or right after the DATA command) */
        DATA_TEXT,      /* inside a line */
        DATA_CR,        /* after a CR inside a line */
        DATA_DOT,       /* "." at the beginning of a line, held back */
        DATA_DOT_CR,    /* ".\r" at the beginning of a line, held back */
};

void data_scanner_init(DataScanner *s) {
        /* The CRLF ending the DATA command precedes the first octet, so the
         * message starts at the beginning of a line: ".\r\n" right away is
         * an empty message (RFC 5321 4.1.1.4). */
        *s = (DataScanner) { .state = DATA_BOL };
}

/* Only CRLF "." CRLF ends the data (RFC 5321 4.1.1.4). A bare LF or bare CR
 * never starts a line, so "\n.\n", "\r.\r", "\n.\r\n", "\r\n.\n" and
 * "\r.\r\n" are plain text here and flagged instead; a peer that saw one of
 * them as the end would otherwise take the rest as new commands (SMTP
 * smuggling). A message cannot lack the CRLF before the final dot: that
 * CRLF is part of the terminator by definition, and we store it. */
#if defined(__SSE2__)
/* Octets compared per step: one SSE2 register. */
#define DATA_BLOCK 16

/* Skips whole blocks of ordinary text from p[i], 16 octets per step: a
 * block is ordinary when each of its CRs is followed by an LF inside it,
 * each LF follows a CR, no "." starts a line, and it does not end in CR or
 * LF (what follows that is in the next block). The caller is in DATA_TEXT,
 * so the octet before p[i] is not a CR, and it stays in DATA_TEXT after
 * the skip. Anything else is left to the state machine. Base64 bodies in
 * 76-octet lines (most bulk mail) are scanned here almost entirely. */
static size_t data_skip_text(const char *p, size_t i, size_t n) {
        const __m128i cr = _mm_set1_epi8('\r'), lf = _mm_set1_epi8('\n'), dot = _mm_set1_epi8('.');

        while (n - i >= DATA_BLOCK) {
                __m128i v = _mm_loadu_si128((const __m128i *) (const void *) (p + i));
                unsigned m_cr = (unsigned) _mm_movemask_epi8(_mm_cmpeq_epi8(v, cr));
                unsigned m_lf = (unsigned) _mm_movemask_epi8(_mm_cmpeq_epi8(v, lf));
                unsigned m_dot = (unsigned) _mm_movemask_epi8(_mm_cmpeq_epi8(v, dot));
                unsigned last = 1U << (DATA_BLOCK - 1);

                if (((m_cr << 1) & 0xffffU) != m_lf || ((m_cr | m_lf) & last) || (m_dot & (m_lf << 1)))
                        break;
                i += DATA_BLOCK;
        }
        return i;
}
#else
static size_t data_skip_text(const char *p, size_t i, size_t n) {
        return i;
}
#endif

int data_scan(DataScanner *s, const char *p, size_t n, size_t *ret_store, size_t *ret_consume) {
        unsigned state = s->state;
        size_t i = 0;

        while (i < n) {
                char c = p[i];

                switch (state) {

                case DATA_TEXT: {
                        /* Fast path: whole blocks of ordinary text first,
                         * then to the next CR or LF with memchr (vectorised
                         * in libc): the end of the line, then any CR before
                         * it. Bulk DATA spends most of its scanning time
                         * here. */
                        const char *q, *end = p + n, *lf, *cr, *stop;

                        i = data_skip_text(p, i, n);
                        if (i >= n)
                                break;
                        q = p + i;
                        lf = memchr(q, '\n', (size_t) (end - q));
                        cr = memchr(q, '\r', (size_t) ((lf ?: end) - q));
                        stop = cr ?: lf;
                        if (!stop) {
                                i = n;
                                break;
                        }
                        i = (size_t) (stop - p);
                        if (*stop == '\r')
                                state = DATA_CR;
                        else
                                s->bare_lf = true;
                        i++;
                        break;
                }

                case DATA_BOL:
                        if (c == '.')
                                state = DATA_DOT;
                        else if (c == '\r')
                                state = DATA_CR;
                        else {
                                if (c == '\n')
                                        s->bare_lf = true;
                                state = DATA_TEXT;
                        }
                        i++;
                        break;

                case DATA_CR:
                        if (c == '\n') {
                                state = DATA_BOL;
                                i++;
                                break;
                        }
                        s->bare_cr = true;
                        if (c == '\r')
                                i++;    /* a new CR, stay in DATA_CR */
                        else
                                state = DATA_TEXT;      /* re-read c as text */
                        break;

                case DATA_DOT:
                        if (c == '\r') {
                                state = DATA_DOT_CR;
                                i++;
                        } else if (c == '\n') {
                                s->bare_lf = true;
                                state = DATA_TEXT;
                                i++;
                        } else if (c == '.') {
                                /* Dot-stuffed line (RFC 5321 4.5.2). */
                                state = DATA_TEXT;
                                i++;
                        } else
                                state = DATA_TEXT;
                        break;

                case DATA_DOT_CR:
                        if (c == '\n') {
                                size_t store = i - 2;   /* before ".\r" */

                                s->bytes += store;
                                s->state = DATA_BOL;
                                *ret_store = store;
                                *ret_consume = i + 1;
                                return 1;
                        }
                        s->bare_cr = true;
                        if (c == '\r') {
                                state = DATA_CR;
                                i++;
                        } else
                                state = DATA_TEXT;
                        break;

                default:
                        /* Not reachable with a scanner from data_scanner_init(). */
                        state = DATA_TEXT;
                        break;
                }
        }

        /* Hold back a line-initial "." or ".\r" and rescan it from the
         * beginning-of-line state next time, when we know what follows. */
        size_t held = state == DATA_DOT ? 1 : state == DATA_DOT_CR ? 2 : 0;
        if (held > 0)
                state = DATA_BOL;

        s->state = state;
        s->bytes += n - held;
        *ret_store = *ret_consume = n - held;
        return 0;
}

/* ---- replies ------------------------------------------------------------ */

/* Length of an RFC 3463 enhanced status code at the head of s whose class
 * matches the reply's first digit (RFC 2034), or 0. A code followed by
 * anything but SP or the end of the line is text, not a code. */
static size_t enhanced_code_span(const char *s, size_t len, char reply_class) {
        size_t i = 2;

        /* RFC 3463 2: class = "2" / "4" / "5". */
        if (len < 5 || s[0] != reply_class || s[0] == '3' || s[1] != '.')
                return 0;
        for (unsigned part = 0; part < 2; part++) {
                size_t start = i;

                while (i < len && ascii_isdigit(s[i]) && i - start < 3)
                        i++;
                if (i == start)
                        return 0;
                if (part == 0) {
                        if (i >= len || s[i] != '.')
                                return 0;
                        i++;
                }
        }
        if (i < len && s[i] != ' ')
                return 0;
        return i;
}

int smtp_reply_parse(const char *p, size_t n, SmtpReply *ret, size_t *ret_consume) {
        size_t lim = MIN(n, (size_t) SMTP_REPLY_MAX), pos = 0, first_len = 0;
        int code = -1;

        while (pos < lim) {
                const char *lf = memchr(p + pos, '\n', lim - pos);
                const char *l = p + pos;
                size_t line_len, end;
                int this_code;

                if (!lf)
                        break;

                /* Lines end in CRLF; a bare LF is tolerated from peers. */
                end = (size_t) (lf - p);
                line_len = end - pos;
                if (line_len > 0 && p[end - 1] == '\r')
                        line_len--;
                if (pos == 0)
                        first_len = line_len;

                /* RFC 5321 4.2: Reply-code [ ("-" / SP) textstring ] CRLF,
                 * codes 2yz..5yz, the same code on every line (4.2.1). */
                if (line_len < 3 || l[0] < '2' || l[0] > '5' || !ascii_isdigit(l[1]) || !ascii_isdigit(l[2]))
                        return -EBADMSG;
                if (line_len > 3 && l[3] != '-' && l[3] != ' ')
                        return -EBADMSG;

                this_code = (l[0] - '0') * 100 + (l[1] - '0') * 10 + (l[2] - '0');
                if (code >= 0 && this_code != code)
                        return -EBADMSG;
                code = this_code;

                if (line_len > 3 && l[3] == '-') {
                        pos = end + 1;
                        continue;
                }

                /* Final line. The text runs from after the first "NNN-" or
                 * "NNN " to the end of this line. */
                size_t tstart = MIN((size_t) 4, first_len);
                SmtpReply rep = {
                        .code = code,
                        .text = { .p = p + tstart, .len = (size_t) (l + line_len - p) - tstart },
                };

                size_t ec = enhanced_code_span(p + tstart, first_len - tstart, p[0]);
                if (ec > 0) {
                        memcpy(rep.enhanced, p + tstart, ec);
                        rep.enhanced[ec] = '\0';
                }

                *ret = rep;
                *ret_consume = end + 1;
                return 1;
        }

        /* A reply that has not ended within SMTP_REPLY_MAX never will. */
        if (n >= SMTP_REPLY_MAX)
                return -E2BIG;
        return 0;
}

bool smtp_reply_has_extension(const SmtpReply *r, const char *keyword, SmtpView *ret_arg) {
        const char *p, *end;
        size_t klen;

        if (!r || !keyword || !r->text.p)
                return false;

        klen = strlen(keyword);
        p = r->text.p;
        end = r->text.p + r->text.len;

        /* The first line is the greeting (RFC 5321 4.1.1.1 ehlo-ok-rsp);
         * each further line is one ehlo-line after its "250-"/"250 ". */
        for (;;) {
                const char *lf = memchr(p, '\n', (size_t) (end - p));
                const char *line, *line_end, *kw_end;

                if (!lf)
                        return false;
                line = lf + 1;
                lf = memchr(line, '\n', (size_t) (end - line));
                line_end = lf ? lf : end;
                if (line_end > line && line_end[-1] == '\r')
                        line_end--;
                p = line;

                if (line_end - line < 4)
                        continue;
                line += 4;

                kw_end = line;
                while (kw_end < line_end && *kw_end != ' ')
                        kw_end++;
                if ((size_t) (kw_end - line) != klen || strncasecmp(line, keyword, klen) != 0)
                        continue;

                if (ret_arg) {
                        const char *a = kw_end, *b = line_end;

                        while (a < b && *a == ' ')
                                a++;
                        while (b > a && b[-1] == ' ')
                                b--;
                        *ret_arg = (SmtpView) { .p = a, .len = (size_t) (b - a) };
                }
                return true;
        }
}
