/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * dsn_build(): the RFC 3464/6522 structure, the required fields, and the
 * wire-form rules (CRLF only, dot-stuffing, 998-octet lines, 7bit). When
 * python3 is available the (unstuffed) result is also parsed by its email
 * package to check the MIME tree independently.
 */

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "dsn.h"
#include "tap.h"
#include "util/macro.h"

static char workdir[] = "/tmp/test-dsn.XXXXXX";

static bool crlf_only(const char *p, size_t n) {
        for (size_t i = 0; i < n; i++) {
                if (p[i] == '\n' && (i == 0 || p[i - 1] != '\r'))
                        return false;
                if (p[i] == '\r' && (i + 1 >= n || p[i + 1] != '\n'))
                        return false;
        }
        return true;
}

static size_t longest_line(const char *p, size_t n) {
        size_t max = 0, cur = 0;
        for (size_t i = 0; i < n; i++) {
                if (p[i] == '\r' && i + 1 < n && p[i + 1] == '\n') {
                        max = MAX(max, cur);
                        cur = 0;
                        i++;
                } else
                        cur++;
        }
        return MAX(max, cur);
}

static bool seven_bit(const char *p, size_t n) {
        for (size_t i = 0; i < n; i++)
                if ((unsigned char) p[i] >= 0x80 || p[i] == '\0')
                        return false;
        return true;
}

/* Every line starting with "." must be stuffed: the only lines our DSN
 * has that start with a dot come from the dot-lines we planted. */
static bool has_line(const char *p, const char *line) {
        _cleanup_free_ char *needle = NULL;
        if (asprintf(&needle, "\r\n%s\r\n", line) < 0)
                abort();
        return strstr(p, needle) != NULL;
}

static size_t count(const char *p, const char *needle) {
        size_t n = 0;
        for (const char *q = p; (q = strstr(q, needle)); q++)
                n++;
        return n;
}

static int python_check(const char *path, size_t n_rcpts) {
        char cmd[4096];

        if (system("command -v python3 >/dev/null 2>&1") != 0)
                return 77;
        /* Undo the SMTP dot-stuffing, then parse as a mail reader would. */
        snprintf(cmd, sizeof(cmd),
                 "python3 - '%s' %zu <<'PYEOF'\n"
                 "import sys, email\n"
                 "raw = open(sys.argv[1], 'rb').read()\n"
                 "lines = [l[1:] if l.startswith(b'.') else l for l in raw.split(b'\\r\\n')]\n"
                 "m = email.message_from_bytes(b'\\r\\n'.join(lines))\n"
                 "assert not m.defects, m.defects\n"
                 "assert m.get_content_type() == 'multipart/report', m.get_content_type()\n"
                 "assert m.get_param('report-type') == 'delivery-status'\n"
                 "p = m.get_payload()\n"
                 "assert [x.get_content_type() for x in p] == ['text/plain', 'message/delivery-status', 'text/rfc822-headers'], p\n"
                 "groups = p[1].get_payload()\n"
                 "assert len(groups) == 1 + int(sys.argv[2]), len(groups)\n"
                 "assert groups[0]['Reporting-MTA'] == 'dns; mx.test', groups[0]['Reporting-MTA']\n"
                 "assert groups[1]['Final-Recipient'] == 'rfc822; bad@dst.test'\n"
                 "assert groups[1]['Status'] == '5.1.1'\n"
                 "assert m['Auto-Submitted'] == 'auto-replied'\n"
                 "assert '.hidden' in p[2].get_payload()\n"
                 "PYEOF", path, n_rcpts);
        int r = system(cmd);
        return r == 0 ? 0 : 1;
}

int main(void) {
        char longdiag[3000];
        /* Words, then one 900-octet word, then more than the kept length. */
        memset(longdiag, 0, sizeof(longdiag));
        strcpy(longdiag, "552 5.2.2 ");
        for (int i = 0; i < 20; i++)
                strcat(longdiag, "quota full ");
        strcat(longdiag, "averyveryverylongword");
        memset(longdiag + strlen(longdiag), 'w', 900);
        strcat(longdiag, " tail");
        memset(longdiag + strlen(longdiag), 'x', 1500);

        static const char headers[] =
                "Subject: hi\r\n"
                "..hidden: field starting with a dot\r\n"
                "X-8bit: caf\xc3\xa9\r\n"
                "\r\n"
                "body is not part of the header section\r\n";

        DsnRecipient rcpts[] = {
                { "bad@dst.test", "5.1.1", "550 5.1.1 <bad@dst.test>: no such user", "mx.dst.test" },
                { "full@dst.test", "5.2.2", longdiag, NULL },
                { "odd@dst.test", "bogus", "550 \xff\x01 weird\r\n.injected", NULL },
                { "none@dst.test", "5.4.7", NULL, NULL },
        };
        DsnInfo info = {
                .reporting_mta = "mx.test",
                .sender = "sender@src.test",
                .mid = 77,
                .arrival_usec = 1700000000ULL * USEC_PER_SEC,
                .rcpts = rcpts,
                .n_rcpts = ELEMENTSOF(rcpts),
                .headers = headers,
                .headers_len = strlen(headers),
        };
        _cleanup_free_ char *out = NULL;
        size_t len = 0;
        int r;

        r = dsn_build(&info, 1700000600ULL * USEC_PER_SEC, &out, &len);
        is_int(r, 0, "dsn_build succeeds");
        if (r < 0)
                return tap_done();
        ok(len == strlen(out), "NUL-terminated, no embedded NUL");

        ok(crlf_only(out, len), "CRLF line ends only");
        ok(len >= 2 && memcmp(out + len - 2, "\r\n", 2) == 0, "ends with CRLF");
        ok(longest_line(out, len) <= 998, "no line over 998 octets (longest %zu)", longest_line(out, len));
        ok(seven_bit(out, len), "7bit only");

        ok(strncmp(out, "Date: Tue, 14 Nov 2023 22:23:20 +0000\r\n", 39) == 0, "Date in RFC 5322 form");
        ok(has_line(out, "From: Mail Delivery System <MAILER-DAEMON@mx.test>"), "From");
        ok(has_line(out, "To: <sender@src.test>"), "To the original sender");
        ok(has_line(out, "Subject: Undelivered Mail Returned to Sender"), "Subject");
        ok(strstr(out, "\r\nMessage-ID: <") && strstr(out, "@mx.test>\r\n"), "Message-ID");
        ok(has_line(out, "Auto-Submitted: auto-replied"), "Auto-Submitted (RFC 3834)");
        ok(has_line(out, "MIME-Version: 1.0"), "MIME-Version");
        ok(strstr(out, "\r\nContent-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\""),
           "multipart/report with report-type");

        /* Boundary: taken from the header, used as 3 delimiters + close. */
        const char *b = strstr(out, "boundary=\"");
        char boundary[128] = "", delim[140], close_delim[140];
        if (b)
                sscanf(b + 10, "%127[^\"]", boundary);
        snprintf(delim, sizeof(delim), "\r\n--%s\r\n", boundary);
        snprintf(close_delim, sizeof(close_delim), "\r\n--%s--\r\n", boundary);
        ok(boundary[0] != '\0', "boundary \"%s\"", boundary);
        is_int(count(out, delim), 3, "three body parts");
        is_int(count(out, close_delim), 1, "one close delimiter");
        ok(strstr(out, close_delim) && strstr(out, close_delim) + strlen(close_delim) == out + len,
           "close delimiter ends the message");

        ok(strstr(out, "Content-Type: text/plain; charset=us-ascii\r\n"), "part 1 text/plain");
        ok(strstr(out, "Content-Type: message/delivery-status\r\n"), "part 2 message/delivery-status");
        ok(strstr(out, "Content-Type: text/rfc822-headers\r\n"), "part 3 text/rfc822-headers");
        ok(strstr(out, "<bad@dst.test>: host mx.dst.test said: 550 5.1.1 <bad@dst.test>: no such user\r\n"),
           "human part lists recipient and diagnostic");

        ok(has_line(out, "Reporting-MTA: dns; mx.test"), "Reporting-MTA");
        ok(has_line(out, "Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000"), "Arrival-Date");
        ok(strstr(out, "\r\n\r\nFinal-Recipient: rfc822; bad@dst.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
                       "Remote-MTA: dns; mx.dst.test\r\nDiagnostic-Code: smtp; 550 5.1.1 <bad@dst.test>: no such user\r\n"),
           "recipient group: fields in order");
        ok(has_line(out, "Final-Recipient: rfc822; none@dst.test") && has_line(out, "Status: 5.4.7"),
           "recipient without diagnostic");
        is_int(count(out, "Action: failed\r\n"), 4, "one group per recipient");
        is_int(count(out, "Remote-MTA:"), 1, "Remote-MTA only when known");
        ok(has_line(out, "Status: 5.0.0"), "invalid status replaced by 5.0.0");
        ok(strstr(out, "550 \\xff\\x01 weird\\x0d\\x0a.injected"), "control and 8-bit octets escaped");
        ok(!strstr(out, "\r\n.injected"), "no line injected through a diagnostic");
        ok(strstr(out, "Diagnostic-Code: smtp; 552 5.2.2 quota full quota full"), "long diagnostic kept");
        ok(strstr(out, "quota full\r\n quota full"), "long diagnostic folded at white space");
        ok(strstr(out, "\r\n averyveryverylongwordwwww"), "a 900-octet word gets its own line");
        ok(!strstr(out, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"),
           "diagnostic bounded");

        ok(has_line(out, "..hidden: field starting with a dot"), "header line starting with a dot stays stuffed");
        ok(has_line(out, "X-8bit: caf??"), "8-bit header octets replaced");
        ok(!strstr(out, "body is not part"), "only the header section is returned");

        /* Independent MIME check. */
        char path[256];
        if (!mkdtemp(workdir))
                abort();
        snprintf(path, sizeof(path), "%s/dsn.eml", workdir);
        FILE *f = fopen(path, "we");
        if (!f || fwrite(out, 1, len, f) != len)
                abort();
        fclose(f);
        r = python_check(path, ELEMENTSOF(rcpts));
        if (r == 77)
                tap_skip("python email package parses the DSN", "python3 not installed");
        else
                is_int(r, 0, "python email package parses the DSN as multipart/report");
        (void) unlink(path);
        (void) rmdir(workdir);

        /* Refusals. */
        char *o2 = NULL;
        size_t l2 = 0;
        DsnInfo bad = info;
        bad.sender = "";
        is_int(dsn_build(&bad, 0, &o2, &l2), -EINVAL, "null sender refused (no DSN to <>)");
        bad = info;
        bad.n_rcpts = 0;
        is_int(dsn_build(&bad, 0, &o2, &l2), -EINVAL, "no recipients refused");
        bad = info;
        bad.sender = "a@b\r\nBcc: x@y";
        is_int(dsn_build(&bad, 0, &o2, &l2), -EINVAL, "CR/LF in sender refused");
        ok(!o2 && l2 == 0, "outputs untouched on failure");

        /* No headers: part 3 is empty but present. */
        bad = info;
        bad.headers = NULL;
        bad.headers_len = 0;
        r = dsn_build(&bad, 0, &o2, &l2);
        is_int(r, 0, "no original headers");
        ok(o2 && strstr(o2, "Content-Type: text/rfc822-headers\r\n"), "part 3 still present");
        free(o2);

        return tap_done();
}
