/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Non-delivery reports: a multipart/report (RFC 6522) with
 * report-type=delivery-status (RFC 3464) made of a human-readable
 * text/plain part, the machine-readable message/delivery-status part and
 * the original header section as text/rfc822-headers.
 *
 * The result is in SMTP wire form so the spool can store it as received
 * mail: CRLF line ends, lines starting with "." dot-stuffed (RFC 5321
 * 4.5.2), no line over 998 octets (RFC 5322 2.1.1), and 7bit only, so it
 * passes any hop without 8BITMIME: diagnostics and addresses are escaped
 * (\xNN), 8-bit octets of the original headers become "?".
 *
 * Does not: decide whether a DSN is owed (never for <>), spool it, or log.
 * Returns 0 or a negative errno.
 */

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "dsn.h"
#include "util/buf.h"
#include "util/macro.h"
#include "util/parse.h"

/* RFC 5322 2.1.1: a line is at most 998 octets plus CRLF. */
#define DSN_LINE_MAX 998
/* RFC 5322 2.1.1: lines SHOULD stay within 78 octets; fields are folded
 * at white space to honour it where the text allows. */
#define DSN_FOLD_AT 78
/* Escaped diagnostic text kept per recipient; an SMTP reply line is at
 * most 512 octets (RFC 5321 4.5.3.1.5), escaping may quadruple it. */
#define DSN_DIAGNOSTIC_MAX 1024
/* Escaped address; a path is at most 256 octets (RFC 5321 4.5.3.1.3). */
#define DSN_ADDRESS_MAX 1024
/* Original header section returned in part 3. RFC 3462 only asks for the
 * headers; a cap keeps a hostile message from making the DSN huge. */
#define DSN_HEADERS_MAX (256 * 1024)
/* The whole DSN: headers copy plus generous room for the recipients. */
#define DSN_SIZE_MAX (DSN_HEADERS_MAX + 4 * 1024 * 1024)
/* RFC 3463 status: class "." subject "." detail, 1-3 digits each. */
#define DSN_STATUS_MAX 11

/* Appends one line in wire form: dot-stuffed, CRLF, at most DSN_LINE_MAX
 * octets of text (longer lines are cut; callers fold before that). */
static int put_line(Buf *b, const char *p, size_t len) {
        int r;

        if (len > 0 && p[0] == '.') {
                r = buf_append(b, ".", 1);
                if (r < 0)
                        return r;
                len = MIN(len, (size_t) DSN_LINE_MAX - 1);
        } else
                len = MIN(len, (size_t) DSN_LINE_MAX);

        r = buf_append(b, p, len);
        if (r < 0)
                return r;
        return buf_append(b, "\r\n", 2);
}

static int put_str(Buf *b, const char *s) {
        return put_line(b, s, strlen(s));
}

static int put_fmt(Buf *b, const char *fmt, ...) _printf_(2, 3);
static int put_fmt(Buf *b, const char *fmt, ...) {
        _cleanup_free_ char *s = NULL;
        va_list ap;
        int n;

        va_start(ap, fmt);
        n = vasprintf(&s, fmt, ap);
        va_end(ap);
        if (n < 0) {
                s = NULL;
                return -ENOMEM;
        }
        return put_line(b, s, (size_t) n);
}

/* "Name: value" folded at spaces into continuation lines (RFC 5322
 * 2.2.3). A word longer than a line is cut at DSN_LINE_MAX. */
static int put_field(Buf *b, const char *name, const char *value) {
        _cleanup_free_ char *line = NULL;
        size_t len, cap = DSN_LINE_MAX + 1;
        const char *p = value;
        int r;

        line = malloc(cap);
        if (!line)
                return -ENOMEM;
        len = (size_t) snprintf(line, cap, "%s:", name);

        while (*p) {
                const char *w = p;
                size_t sp = 0, wl;

                while (w[sp] == ' ')
                        sp++;
                w += sp;
                wl = strcspn(w, " ");
                if (wl == 0)
                        break;          /* trailing spaces */

                if (len + 1 + wl > DSN_FOLD_AT && len > 1 + strlen(name)) {
                        r = put_line(b, line, len);
                        if (r < 0)
                                return r;
                        len = 0;        /* continuation: the space below starts it */
                }
                line[len++] = ' ';
                size_t take = MIN(wl, cap - 1 - len);
                memcpy(line + len, w, take);
                len += take;
                p = w + wl;
        }
        return put_line(b, line, len);
}

/* RFC 5322 3.3 date-time in UTC; the names are spelled out here so the
 * result does not depend on the process locale. */
static void format_date(uint64_t usec, char *buf, size_t len) {
        static const char *const days[] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
        static const char *const months[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                              "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
        time_t t = (time_t) (usec / USEC_PER_SEC);
        struct tm tm;

        if (!gmtime_r(&t, &tm)) {
                t = 0;
                (void) gmtime_r(&t, &tm);
        }
        (void) snprintf(buf, len, "%s, %02d %s %04d %02d:%02d:%02d +0000",
                        days[tm.tm_wday % 7], tm.tm_mday, months[tm.tm_mon % 12],
                        tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

static bool status_is_valid(const char *s) {
        /* RFC 3463 2: class "." subject "." detail; failed means class 5
         * (4 when the queue lifetime ran out on a temporary error, which
         * RFC 3464 2.3.4 also reports as failed). */
        size_t i = 0;

        if (!s || strlen(s) > DSN_STATUS_MAX || (s[0] != '4' && s[0] != '5') || s[1] != '.')
                return false;
        s += 2;
        for (int part = 0; part < 2; part++) {
                for (i = 0; s[i] >= '0' && s[i] <= '9'; i++)
                        ;
                if (i < 1 || i > 3)
                        return false;
                s += i;
                if (part == 0) {
                        if (*s != '.')
                                return false;
                        s++;
                }
        }
        return *s == '\0';
}

static bool has_line_break(const char *s) {
        return strpbrk(s, "\r\n") != NULL;
}

/* The original header section: unstuffed, cut at its end (the empty
 * line), each line re-emitted through put_line() so stuffing, CRLF and the
 * line limit hold whatever the caller passed. */
static int put_headers(Buf *b, const char *h, size_t len) {
        _cleanup_free_ char *line = NULL;
        size_t i = 0;
        int r;

        len = MIN(len, (size_t) DSN_HEADERS_MAX);
        line = malloc(DSN_LINE_MAX + 1);
        if (!line)
                return -ENOMEM;

        while (i < len) {
                size_t end = i, ll = 0;

                while (end < len && h[end] != '\n')
                        end++;
                size_t stop = end;
                if (stop > i && h[stop - 1] == '\r')
                        stop--;
                if (stop == i)
                        break;                  /* end of the header section */

                size_t from = i;
                if (h[from] == '.')
                        from++;                 /* wire form: undo the stuffing */
                for (size_t k = from; k < stop && ll < DSN_LINE_MAX; k++) {
                        unsigned char c = (unsigned char) h[k];
                        line[ll++] = (c >= 0x80 || c == '\0' || c == '\r') ? '?' : (char) c;
                }
                r = put_line(b, line, ll);
                if (r < 0)
                        return r;
                i = end < len ? end + 1 : end;
        }
        return 0;
}

int dsn_build(const DsnInfo *info, uint64_t now_usec, char **ret, size_t *ret_len) {
        char date[64], arrival[64], boundary[96], sender[DSN_ADDRESS_MAX];
        _cleanup_(buf_done) Buf b = {};
        int r;

        if (!info || !ret || !ret_len)
                return -EINVAL;
        if (isempty(info->reporting_mta) || isempty(info->sender) || !info->rcpts || info->n_rcpts == 0)
                return -EINVAL;
        /* Both go into header fields verbatim. */
        if (has_line_break(info->reporting_mta) || has_line_break(info->sender))
                return -EINVAL;
        for (size_t i = 0; i < info->n_rcpts; i++)
                if (isempty(info->rcpts[i].address))
                        return -EINVAL;

        buf_init(&b, DSN_SIZE_MAX);
        format_date(now_usec, date, sizeof(date));
        format_date(info->arrival_usec, arrival, sizeof(arrival));
        (void) log_escape(info->sender, strlen(info->sender), sender, sizeof(sender));

        /* RFC 2046 5.1.1: the boundary must not occur in the body; the only
         * text we do not write ourselves is the original header section. */
        for (unsigned attempt = 0;; attempt++) {
                (void) snprintf(boundary, sizeof(boundary), "=_tlsgw.%" PRIu64 ".%" PRIu64 ".%u",
                                info->mid, now_usec, attempt);
                if (!info->headers || !memmem(info->headers, info->headers_len, boundary, strlen(boundary)))
                        break;
        }

        r = put_fmt(&b, "Date: %s", date);
        if (r >= 0)
                r = put_fmt(&b, "From: Mail Delivery System <MAILER-DAEMON@%s>", info->reporting_mta);
        if (r >= 0)
                r = put_fmt(&b, "To: <%s>", sender);
        if (r >= 0)
                r = put_str(&b, "Subject: Undelivered Mail Returned to Sender");
        if (r >= 0)
                r = put_fmt(&b, "Message-ID: <dsn.%" PRIu64 ".%" PRIu64 "@%s>",
                            info->mid, now_usec, info->reporting_mta);
        if (r >= 0)     /* RFC 3834 5: no automatic reply to this one */
                r = put_str(&b, "Auto-Submitted: auto-replied");
        if (r >= 0)
                r = put_str(&b, "MIME-Version: 1.0");
        if (r >= 0)
                r = put_str(&b, "Content-Type: multipart/report; report-type=delivery-status;");
        if (r >= 0)
                r = put_fmt(&b, "\tboundary=\"%s\"", boundary);
        if (r >= 0)
                r = put_str(&b, "Content-Transfer-Encoding: 7bit");
        if (r >= 0)
                r = put_str(&b, "");
        if (r >= 0)
                r = put_str(&b, "This is a MIME-encapsulated message.");
        if (r < 0)
                return r;

        /* Part 1: for people (RFC 6522 3). */
        r = put_fmt(&b, "--%s", boundary);
        if (r >= 0)
                r = put_str(&b, "Content-Type: text/plain; charset=us-ascii");
        if (r >= 0)
                r = put_str(&b, "Content-Description: Notification");
        if (r >= 0)
                r = put_str(&b, "");
        if (r >= 0)
                r = put_fmt(&b, "This is the mail system at host %s.", info->reporting_mta);
        if (r >= 0)
                r = put_str(&b, "");
        if (r >= 0)
                r = put_str(&b, "Your message could not be delivered to one or more recipients.");
        if (r >= 0)
                r = put_str(&b, "It has been returned with the reasons below.");
        if (r >= 0)
                r = put_str(&b, "");
        if (r >= 0)
                r = put_fmt(&b, "Queue ID: %" PRIu64 ", received %s", info->mid, arrival);
        if (r >= 0)
                r = put_str(&b, "");
        if (r < 0)
                return r;
        for (size_t i = 0; i < info->n_rcpts; i++) {
                const DsnRecipient *d = info->rcpts + i;
                char addr[DSN_ADDRESS_MAX], diag[DSN_DIAGNOSTIC_MAX];

                (void) log_escape(d->address, strlen(d->address), addr, sizeof(addr));
                if (d->diagnostic)
                        (void) log_escape(d->diagnostic, strlen(d->diagnostic), diag, sizeof(diag));
                if (!isempty(d->remote_mta) && !has_line_break(d->remote_mta))
                        r = put_fmt(&b, "<%s>: host %s said: %s", addr, d->remote_mta,
                                    d->diagnostic ? diag : "delivery failed");
                else
                        r = put_fmt(&b, "<%s>: %s", addr, d->diagnostic ? diag : "delivery failed");
                if (r >= 0)
                        r = put_str(&b, "");
                if (r < 0)
                        return r;
        }

        /* Part 2: RFC 3464 2.2 per-message fields, then 2.3 per-recipient
         * groups, each preceded by an empty line. */
        r = put_fmt(&b, "--%s", boundary);
        if (r >= 0)
                r = put_str(&b, "Content-Type: message/delivery-status");
        if (r >= 0)
                r = put_str(&b, "Content-Description: Delivery report");
        if (r >= 0)
                r = put_str(&b, "");
        if (r >= 0)
                r = put_fmt(&b, "Reporting-MTA: dns; %s", info->reporting_mta);
        if (r >= 0)     /* RFC 3464 2.4: extension fields start with X- */
                r = put_fmt(&b, "X-Tlsgw-Queue-ID: %" PRIu64, info->mid);
        if (r >= 0)
                r = put_fmt(&b, "Arrival-Date: %s", arrival);
        if (r < 0)
                return r;

        for (size_t i = 0; i < info->n_rcpts; i++) {
                const DsnRecipient *d = info->rcpts + i;
                char addr[DSN_ADDRESS_MAX], diag[DSN_DIAGNOSTIC_MAX];
                _cleanup_free_ char *v = NULL;

                (void) log_escape(d->address, strlen(d->address), addr, sizeof(addr));
                r = put_str(&b, "");
                if (r >= 0)
                        r = put_fmt(&b, "Final-Recipient: rfc822; %s", addr);
                if (r >= 0)
                        r = put_str(&b, "Action: failed");
                if (r >= 0)
                        r = put_fmt(&b, "Status: %s", status_is_valid(d->status) ? d->status : "5.0.0");
                if (r >= 0 && !isempty(d->remote_mta) && !has_line_break(d->remote_mta))
                        r = put_fmt(&b, "Remote-MTA: dns; %s", d->remote_mta);
                if (r >= 0 && !isempty(d->diagnostic)) {
                        (void) log_escape(d->diagnostic, strlen(d->diagnostic), diag, sizeof(diag));
                        if (asprintf(&v, "smtp; %s", diag) < 0) {
                                v = NULL;
                                return -ENOMEM;
                        }
                        r = put_field(&b, "Diagnostic-Code", v);
                }
                if (r >= 0)
                        r = put_fmt(&b, "Last-Attempt-Date: %s", date);
                if (r < 0)
                        return r;
        }

        /* Part 3: the original headers (RFC 6522 3 allows headers only). */
        r = put_str(&b, "");
        if (r >= 0)
                r = put_fmt(&b, "--%s", boundary);
        if (r >= 0)
                r = put_str(&b, "Content-Type: text/rfc822-headers");
        if (r >= 0)
                r = put_str(&b, "Content-Description: Undelivered Message Headers");
        if (r >= 0)
                r = put_str(&b, "");
        if (r >= 0 && info->headers)
                r = put_headers(&b, info->headers, info->headers_len);
        if (r >= 0)
                r = put_str(&b, "");
        if (r >= 0)
                r = put_fmt(&b, "--%s--", boundary);
        if (r < 0)
                return r;

        /* Hand over a NUL-terminated copy of exactly the wire bytes. */
        size_t len = buf_len(&b);
        char *out = malloc(len + 1);
        if (!out)
                return -ENOMEM;
        memcpy(out, buf_peek(&b), len);
        out[len] = '\0';
        *ret = out;
        *ret_len = len;
        return 0;
}
