/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Unit tests for util/parse.c: every parser with accepted values, edge
 * values and the rejections (empty, garbage, overflow, range), and that
 * out-params stay untouched on failure.
 */

#include <arpa/inet.h>
#include <errno.h>
#include <string.h>

#include "macro.h"
#include "parse.h"
#include "tap.h"

static void test_uint(void) {
        uint64_t u64 = 42;
        uint32_t u32 = 42;
        uint16_t port = 42;

        is_int(parse_uint64("0", &u64), 0, "uint64 0");
        is_int(u64, 0, "uint64 0 value");
        is_int(parse_uint64("18446744073709551615", &u64), 0, "uint64 max");
        ok(u64 == UINT64_MAX, "uint64 max value");
        u64 = 7;
        is_int(parse_uint64("18446744073709551616", &u64), -ERANGE, "uint64 overflow");
        is_int(parse_uint64("99999999999999999999999", &u64), -ERANGE, "uint64 big overflow");
        is_int(parse_uint64("", &u64), -EINVAL, "uint64 empty");
        is_int(parse_uint64(NULL, &u64), -EINVAL, "uint64 NULL");
        is_int(parse_uint64("-1", &u64), -EINVAL, "uint64 negative");
        is_int(parse_uint64("+1", &u64), -EINVAL, "uint64 plus sign");
        is_int(parse_uint64(" 1", &u64), -EINVAL, "uint64 leading space");
        is_int(parse_uint64("1 ", &u64), -EINVAL, "uint64 trailing space");
        is_int(parse_uint64("12abc", &u64), -EINVAL, "uint64 trailing garbage");
        is_int(parse_uint64("0x10", &u64), -EINVAL, "uint64 hex");
        is_int(u64, 7, "uint64 untouched on failure");

        is_int(parse_uint32("4294967295", &u32), 0, "uint32 max");
        ok(u32 == UINT32_MAX, "uint32 max value");
        u32 = 5;
        is_int(parse_uint32("4294967296", &u32), -ERANGE, "uint32 overflow");
        is_int(parse_uint32("1.5", &u32), -EINVAL, "uint32 fraction");
        is_int(u32, 5, "uint32 untouched on failure");

        is_int(parse_port("25", &port), 0, "port 25");
        is_int(port, 25, "port 25 value");
        is_int(parse_port("65535", &port), 0, "port 65535");
        is_int(port, 65535, "port 65535 value");
        is_int(parse_port("0", &port), -ERANGE, "port 0 refused");
        is_int(parse_port("65536", &port), -ERANGE, "port 65536 refused");
        is_int(parse_port("smtp", &port), -EINVAL, "port name refused");
        is_int(port, 65535, "port untouched on failure");
}

static void test_size(void) {
        uint64_t v = 1;

        is_int(parse_size("1048576", &v), 0, "size plain");
        ok(v == 1048576, "size plain value");
        is_int(parse_size("512K", &v), 0, "size K");
        ok(v == 512 * 1024, "size K value");
        is_int(parse_size("10M", &v), 0, "size M");
        ok(v == 10 * 1024 * 1024, "size M value");
        is_int(parse_size("1G", &v), 0, "size G");
        ok(v == UINT64_C(1) << 30, "size G value");
        is_int(parse_size("2k", &v), 0, "size lower-case k");
        ok(v == 2048, "size k value");
        v = 9;
        is_int(parse_size("", &v), -EINVAL, "size empty");
        is_int(parse_size("K", &v), -EINVAL, "size suffix only");
        is_int(parse_size("10KB", &v), -EINVAL, "size KB refused");
        is_int(parse_size("10T", &v), -EINVAL, "size unknown suffix");
        is_int(parse_size("10 M", &v), -EINVAL, "size space before suffix");
        is_int(parse_size("-1M", &v), -EINVAL, "size negative");
        is_int(parse_size("17179869184G", &v), -ERANGE, "size overflow by suffix");
        is_int(v, 9, "size untouched on failure");
}

static void test_duration(void) {
        uint64_t v = 1;

        is_int(parse_duration("30", &v), 0, "duration plain seconds");
        ok(v == 30 * USEC_PER_SEC, "duration plain value");
        is_int(parse_duration("250ms", &v), 0, "duration ms");
        ok(v == 250 * USEC_PER_MSEC, "duration ms value");
        is_int(parse_duration("30s", &v), 0, "duration s");
        ok(v == 30 * USEC_PER_SEC, "duration s value");
        is_int(parse_duration("5m", &v), 0, "duration m");
        ok(v == 300 * USEC_PER_SEC, "duration m value");
        is_int(parse_duration("2h", &v), 0, "duration h");
        ok(v == 7200 * USEC_PER_SEC, "duration h value");
        is_int(parse_duration("5d", &v), 0, "duration d");
        ok(v == 5 * 86400 * USEC_PER_SEC, "duration d value");
        is_int(parse_duration("0", &v), 0, "duration zero");
        ok(v == 0, "duration zero value");
        v = 3;
        is_int(parse_duration("", &v), -EINVAL, "duration empty");
        is_int(parse_duration("s", &v), -EINVAL, "duration suffix only");
        is_int(parse_duration("5x", &v), -EINVAL, "duration unknown suffix");
        is_int(parse_duration("5 s", &v), -EINVAL, "duration with space");
        is_int(parse_duration("5sec", &v), -EINVAL, "duration long suffix");
        is_int(parse_duration("1.5s", &v), -EINVAL, "duration fraction");
        is_int(parse_duration("5S", &v), -EINVAL, "duration upper-case suffix");
        is_int(parse_duration("-5s", &v), -EINVAL, "duration negative");
        is_int(parse_duration("999999999999999999d", &v), -ERANGE, "duration overflow");
        is_int(v, 3, "duration untouched on failure");
}

static void test_bool(void) {
        static const char * const yes[] = { "yes", "true", "on", "1", "YES", "True" };
        static const char * const no[] = { "no", "false", "off", "0", "NO", "Off" };
        static const char * const bad[] = { "", "y", "2", "yes ", "enable", "nope" };
        bool b;

        for (size_t i = 0; i < ELEMENTSOF(yes); i++) {
                b = false;
                ok(parse_bool(yes[i], &b) == 0 && b, "bool \"%s\" is true", yes[i]);
        }
        for (size_t i = 0; i < ELEMENTSOF(no); i++) {
                b = true;
                ok(parse_bool(no[i], &b) == 0 && !b, "bool \"%s\" is false", no[i]);
        }
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                b = true;
                ok(parse_bool(bad[i], &b) == -EINVAL && b, "bool \"%s\" refused", bad[i]);
        }
        is_int(parse_bool(NULL, &b), -EINVAL, "bool NULL refused");
}

static void make_sin(struct sockaddr_in *sin, const char *a) {
        *sin = (struct sockaddr_in) { .sin_family = AF_INET };
        (void) inet_pton(AF_INET, a, &sin->sin_addr);
}

static void make_sin6(struct sockaddr_in6 *sin6, const char *a) {
        *sin6 = (struct sockaddr_in6) { .sin6_family = AF_INET6 };
        (void) inet_pton(AF_INET6, a, &sin6->sin6_addr);
}

static void test_cidr(void) {
        char buf[CIDR_STRLEN];
        struct sockaddr_in sin;
        struct sockaddr_in6 sin6;
        Cidr c;

        is_int(cidr_parse("10.0.0.0/8", &c), 0, "cidr v4");
        is_int(c.family, AF_INET, "cidr v4 family");
        is_int(c.prefixlen, 8, "cidr v4 prefix");
        is_str(cidr_to_string(&c, buf, sizeof(buf)), "10.0.0.0/8", "cidr v4 to string");

        make_sin(&sin, "10.200.1.2");
        ok(cidr_match(&c, (struct sockaddr *) &sin), "10.200.1.2 in 10/8");
        make_sin(&sin, "11.0.0.1");
        ok(!cidr_match(&c, (struct sockaddr *) &sin), "11.0.0.1 not in 10/8");
        make_sin6(&sin6, "::ffff:10.1.2.3");
        ok(cidr_match(&c, (struct sockaddr *) &sin6), "v4-mapped ::ffff:10.1.2.3 in 10/8");
        make_sin6(&sin6, "::ffff:192.0.2.1");
        ok(!cidr_match(&c, (struct sockaddr *) &sin6), "v4-mapped ::ffff:192.0.2.1 not in 10/8");
        make_sin6(&sin6, "::a01:203");
        ok(!cidr_match(&c, (struct sockaddr *) &sin6), "v4-compatible ::10.1.2.3 not in 10/8");

        is_int(cidr_parse("192.0.2.1", &c), 0, "cidr host v4");
        is_int(c.prefixlen, 32, "cidr host v4 is /32");
        make_sin(&sin, "192.0.2.1");
        ok(cidr_match(&c, (struct sockaddr *) &sin), "host match");
        make_sin(&sin, "192.0.2.2");
        ok(!cidr_match(&c, (struct sockaddr *) &sin), "host mismatch");

        is_int(cidr_parse("192.0.2.128/25", &c), 0, "cidr /25");
        make_sin(&sin, "192.0.2.200");
        ok(cidr_match(&c, (struct sockaddr *) &sin), "192.0.2.200 in /25");
        make_sin(&sin, "192.0.2.127");
        ok(!cidr_match(&c, (struct sockaddr *) &sin), "192.0.2.127 not in .128/25");

        is_int(cidr_parse("0.0.0.0/0", &c), 0, "cidr v4 any");
        make_sin(&sin, "203.0.113.9");
        ok(cidr_match(&c, (struct sockaddr *) &sin), "any v4 matches");
        make_sin6(&sin6, "2001:db8::1");
        ok(!cidr_match(&c, (struct sockaddr *) &sin6), "any v4 does not match native v6");

        is_int(cidr_parse("2001:db8::/32", &c), 0, "cidr v6");
        is_int(c.family, AF_INET6, "cidr v6 family");
        is_str(cidr_to_string(&c, buf, sizeof(buf)), "2001:db8::/32", "cidr v6 to string");
        make_sin6(&sin6, "2001:db8:ffff::1");
        ok(cidr_match(&c, (struct sockaddr *) &sin6), "v6 in /32");
        make_sin6(&sin6, "2001:db9::1");
        ok(!cidr_match(&c, (struct sockaddr *) &sin6), "v6 not in /32");
        make_sin(&sin, "10.0.0.1");
        ok(!cidr_match(&c, (struct sockaddr *) &sin), "v4 never matches v6 cidr");

        is_int(cidr_parse("::1", &c), 0, "cidr v6 host");
        is_int(c.prefixlen, 128, "cidr v6 host is /128");
        is_str(cidr_to_string(&c, buf, sizeof(buf)), "::1/128", "::1 to string");
        ok(cidr_to_string(&c, buf, 4) == NULL, "to_string with short buffer fails");
        ok(!cidr_match(&c, NULL), "NULL sockaddr does not match");

        c.prefixlen = 99;
        is_int(cidr_parse("10.1.2.3/8", &c), -EINVAL, "host bits set refused");
        is_int(cidr_parse("2001:db8::1/32", &c), -EINVAL, "v6 host bits set refused");
        is_int(cidr_parse("10.0.0.0/33", &c), -ERANGE, "v4 prefix > 32");
        is_int(cidr_parse("::/129", &c), -ERANGE, "v6 prefix > 128");
        is_int(cidr_parse("10.0.0.0/", &c), -EINVAL, "empty prefix");
        is_int(cidr_parse("10.0.0.0/8x", &c), -EINVAL, "prefix garbage");
        is_int(cidr_parse("10.0.0.0/-1", &c), -EINVAL, "negative prefix");
        is_int(cidr_parse("10.1/16", &c), -EINVAL, "short v4 form refused");
        is_int(cidr_parse("example.com/8", &c), -EINVAL, "name refused");
        is_int(cidr_parse("", &c), -EINVAL, "empty refused");
        is_int(cidr_parse("/8", &c), -EINVAL, "missing address");
        is_int(c.prefixlen, 99, "cidr untouched on failure");
}

static void test_sockaddr(void) {
        struct sockaddr_storage ss;
        socklen_t len = 0;
        char buf[INET6_ADDRSTRLEN];

        is_int(sockaddr_parse("192.0.2.1", 25, &ss, &len), 0, "sockaddr v4");
        is_int(ss.ss_family, AF_INET, "sockaddr v4 family");
        is_int(len, sizeof(struct sockaddr_in), "sockaddr v4 len");
        is_int(sockaddr_port((struct sockaddr *) &ss), 25, "sockaddr v4 port");
        is_str(sockaddr_to_string((struct sockaddr *) &ss, buf, sizeof(buf)), "192.0.2.1", "sockaddr v4 string");

        is_int(sockaddr_parse("2001:db8::25", 587, &ss, &len), 0, "sockaddr v6");
        is_int(ss.ss_family, AF_INET6, "sockaddr v6 family");
        is_int(len, sizeof(struct sockaddr_in6), "sockaddr v6 len");
        is_int(sockaddr_port((struct sockaddr *) &ss), 587, "sockaddr v6 port");
        is_str(sockaddr_to_string((struct sockaddr *) &ss, buf, sizeof(buf)), "2001:db8::25", "sockaddr v6 string");

        is_int(sockaddr_parse("::ffff:192.0.2.7", 25, &ss, &len), 0, "sockaddr v4-mapped");
        is_str(sockaddr_to_string((struct sockaddr *) &ss, buf, sizeof(buf)), "192.0.2.7", "v4-mapped shown as IPv4");

        is_int(sockaddr_parse("fe80::1%1", 25, &ss, &len), 0, "link-local with numeric zone");
        is_int(((struct sockaddr_in6 *) &ss)->sin6_scope_id, 1, "zone id kept");
        is_int(sockaddr_parse("fe80::1%lo", 25, &ss, &len), 0, "link-local with interface name");
        is_int(sockaddr_parse("2001:db8::1%1", 25, &ss, &len), -EINVAL, "zone on global address refused");

        len = 1234;
        is_int(sockaddr_parse("localhost", 25, &ss, &len), -EINVAL, "names refused");
        is_int(sockaddr_parse("127.1", 25, &ss, &len), -EINVAL, "short v4 refused");
        is_int(sockaddr_parse("", 25, &ss, &len), -EINVAL, "empty refused");
        is_int(sockaddr_parse("192.0.2.1 ", 25, &ss, &len), -EINVAL, "trailing space refused");
        is_int(len, 1234, "len untouched on failure");

        struct sockaddr_un_like { sa_family_t family; char path[20]; } un = { .family = AF_UNIX };
        ok(sockaddr_to_string((struct sockaddr *) &un, buf, sizeof(buf)) == NULL, "to_string of AF_UNIX is NULL");
        is_int(sockaddr_port((struct sockaddr *) &un), 0, "port of AF_UNIX is 0");
}

static void test_hostport(void) {
        char *host = NULL;
        uint16_t port = 0;

        is_int(hostport_parse("mx.example.com:2525", 25, &host, &port), 0, "host:port");
        is_str(host, "mx.example.com", "host:port host");
        is_int(port, 2525, "host:port port");
        free(host);
        host = NULL;

        is_int(hostport_parse("mx.example.com", 25, &host, &port), 0, "host only");
        is_str(host, "mx.example.com", "host only host");
        is_int(port, 25, "host only default port");
        free(host);
        host = NULL;

        is_int(hostport_parse("[2001:db8::1]:587", 25, &host, &port), 0, "[v6]:port");
        is_str(host, "2001:db8::1", "[v6]:port unbracketed host");
        is_int(port, 587, "[v6]:port port");
        free(host);
        host = NULL;

        is_int(hostport_parse("[::1]", 26, &host, &port), 0, "[v6] only");
        is_str(host, "::1", "[v6] host");
        is_int(port, 26, "[v6] default port");
        free(host);
        host = NULL;

        is_int(hostport_parse("2001:db8::2", 25, &host, &port), 0, "bare v6 without port");
        is_str(host, "2001:db8::2", "bare v6 host");
        free(host);
        host = NULL;

        is_int(hostport_parse("192.0.2.1:25", 1, &host, &port), 0, "v4:port");
        is_str(host, "192.0.2.1", "v4:port host");
        free(host);
        host = NULL;

        port = 77;
        is_int(hostport_parse("", 25, &host, &port), -EINVAL, "empty");
        is_int(hostport_parse("host:", 25, &host, &port), -EINVAL, "empty port");
        is_int(hostport_parse(":25", 25, &host, &port), -EINVAL, "empty host");
        is_int(hostport_parse("host:0", 25, &host, &port), -ERANGE, "port 0");
        is_int(hostport_parse("host:70000", 25, &host, &port), -ERANGE, "port too large");
        is_int(hostport_parse("host:smtp", 25, &host, &port), -EINVAL, "port name");
        is_int(hostport_parse("[2001:db8::1", 25, &host, &port), -EINVAL, "unclosed bracket");
        is_int(hostport_parse("[2001:db8::1]x", 25, &host, &port), -EINVAL, "garbage after bracket");
        is_int(hostport_parse("[example.com]:25", 25, &host, &port), -EINVAL, "name in brackets");
        is_int(hostport_parse("bad_host:25", 25, &host, &port), -EINVAL, "invalid host name");
        is_int(hostport_parse("a:b:c", 25, &host, &port), -EINVAL, "several colons, not v6");
        ok(host == NULL && port == 77, "outputs untouched on failure");
}

static void test_domain(void) {
        char label63[64], label64[65], name254[255], name253[254];

        memset(label63, 'a', 63);
        label63[63] = '\0';
        memset(label64, 'a', 64);
        label64[64] = '\0';
        /* 253 = 63+1+63+1+63+1+61 */
        memset(name253, 'b', 253);
        name253[63] = name253[127] = name253[191] = '.';
        name253[253] = '\0';
        memset(name254, 'b', 254);
        name254[63] = name254[127] = name254[191] = '.';
        name254[254] = '\0';

        ok(domain_is_valid("example.com"), "example.com");
        ok(domain_is_valid("localhost"), "single label");
        ok(domain_is_valid("a-b.x1.EXAMPLE"), "hyphen, digits, upper case");
        ok(domain_is_valid("1.2.3.4"), "all-numeric labels");
        ok(domain_is_valid(label63), "63-octet label");
        ok(!domain_is_valid(label64), "64-octet label refused");
        ok(domain_is_valid(name253), "253-octet name");
        ok(!domain_is_valid(name254), "254-octet name refused");
        ok(!domain_is_valid(""), "empty refused");
        ok(!domain_is_valid(NULL), "NULL refused");
        ok(!domain_is_valid("example.com."), "trailing dot refused");
        ok(!domain_is_valid(".example.com"), "leading dot refused");
        ok(!domain_is_valid("a..b"), "empty label refused");
        ok(!domain_is_valid("-a.com"), "leading hyphen refused");
        ok(!domain_is_valid("a-.com"), "trailing hyphen refused");
        ok(!domain_is_valid("a.com-"), "final trailing hyphen refused");
        ok(!domain_is_valid("a_b.com"), "underscore refused");
        ok(!domain_is_valid("ex ample.com"), "space refused");
        ok(!domain_is_valid("b\xc3\xbc.de"), "non-ASCII refused");
}

static bool mb(const char *s) {
        return mailbox_is_valid(s, strlen(s));
}

static void test_mailbox(void) {
        char local64[64 + 1 + 12], local65[65 + 1 + 12], big[300];

        ok(mb("user@example.com"), "plain mailbox");
        ok(mb("first.last+tag@sub.example.org"), "dot-string with plus");
        ok(mb("!#$%&'*+-/=?^_`{|}~@example.com"), "all atext specials");
        ok(mb("\"john doe\"@example.com"), "quoted-string with space");
        ok(mb("\"a\\\"b\\\\c\"@example.com"), "quoted-pair");
        ok(mb("\"a@b\"@example.com"), "quoted @ in local part");
        ok(mb("\"\"@example.com"), "empty quoted-string");
        ok(mb("user@[192.0.2.1]"), "IPv4 address literal");
        ok(mb("user@[IPv6:2001:db8::1]"), "IPv6 address literal");
        ok(mb("user@[ipv6:::1]"), "IPv6 tag case-insensitive");

        ok(!mb(""), "empty refused");
        ok(!mailbox_is_valid(NULL, 0), "NULL refused");
        ok(!mb("user"), "no domain refused");
        ok(!mb("postmaster"), "bare postmaster is not a mailbox");
        ok(!mb("@example.com"), "empty local part refused");
        ok(!mb("user@"), "empty domain refused");
        ok(!mb(".user@example.com"), "leading dot refused");
        ok(!mb("user.@example.com"), "trailing dot refused");
        ok(!mb("us..er@example.com"), "double dot refused");
        ok(!mb("us er@example.com"), "space in dot-string refused");
        ok(!mb("us(er@example.com"), "special in dot-string refused");
        ok(!mb("a@b@example.com"), "second @ refused");
        ok(!mb("\"unterminated@example.com"), "unterminated quote refused");
        ok(!mb("\"a\"b@example.com"), "text after quoted-string refused");
        ok(!mb("\"a\tb\"@example.com"), "control char in quoted-string refused");
        ok(!mb("\"a\\\x01\"@example.com"), "quoted-pair of control refused");
        ok(!mb("user@example.com."), "trailing dot in domain refused");
        ok(!mb("user@exa_mple.com"), "bad domain refused");
        ok(!mb("user@[192.0.2.256]"), "bad IPv4 literal refused");
        ok(!mb("user@[2001:db8::1]"), "IPv6 literal without tag refused");
        ok(!mb("user@[IPv6:192.0.2.1x]"), "bad IPv6 literal refused");
        ok(!mb("user@[x-tag:foo]"), "general address literal refused");
        ok(!mb("user@[192.0.2.1"), "unclosed literal refused");
        ok(!mb("us\xc3\xa9r@example.com"), "non-ASCII local part refused");
        ok(!mailbox_is_valid("user@exa\0mple.com", 17), "embedded NUL refused");
        ok(mailbox_is_valid("user@example.comXXX", 16), "length bounds the input");

        memset(local64, 'l', 64);
        memcpy(local64 + 64, "@example.com", 13);
        ok(mb(local64), "64-octet local part");
        memset(local65, 'l', 65);
        memcpy(local65 + 65, "@example.com", 13);
        ok(!mb(local65), "65-octet local part refused (RFC 5321 4.5.3.1.1)");

        /* 254 octets total is the longest mailbox (path 256 with <>). */
        memset(big, 0, sizeof(big));
        strcpy(big, "u@");
        for (size_t i = 2; i < 254; i++)
                big[i] = (i - 2) % 50 == 49 ? '.' : 'd';
        ok(mb(big), "254-octet mailbox");
        big[254] = 'd';
        ok(!mb(big), "255-octet mailbox refused (RFC 5321 4.5.3.1.3)");

        is_str(mailbox_domain("user@example.com"), "example.com", "mailbox_domain");
        is_str(mailbox_domain("\"a@b\"@example.net"), "example.net", "mailbox_domain after last @");
        ok(mailbox_domain("postmaster") == NULL, "mailbox_domain without @ is NULL");
        ok(mailbox_domain(NULL) == NULL, "mailbox_domain of NULL is NULL");
}

static void test_log_escape(void) {
        char out[64], small[8];

        is_str(log_escape("hello world", 11, out, sizeof(out)), "hello world", "printable kept");
        is_str(log_escape("a\r\nb\x7f\xff", 6, out, sizeof(out)), "a\\x0d\\x0ab\\x7f\\xff", "controls escaped");
        is_str(log_escape("a\0b", 3, out, sizeof(out)), "a\\x00b", "NUL escaped, length honoured");
        is_str(log_escape("", 0, out, sizeof(out)), "", "empty");
        is_str(log_escape("1234567", 7, small, sizeof(small)), "1234567", "exact fit not cut");
        is_str(log_escape("12345678", 8, small, sizeof(small)), "1234...", "cut with ellipsis");
        ok(strlen(small) == sizeof(small) - 1, "cut output fills max_out-1");
        is_str(log_escape("ab\n\n\n", 5, small, sizeof(small)), "ab...", "escape never split");
        is_str(log_escape("abcdef", 6, small, 3), "..", "tiny buffer");
        is_str(log_escape("abc", 3, small, 1), "", "max_out 1");
}

int main(void) {
        test_uint();
        test_size();
        test_duration();
        test_bool();
        test_cidr();
        test_sockaddr();
        test_hostport();
        test_domain();
        test_mailbox();
        test_log_escape();
        return tap_done();
}
