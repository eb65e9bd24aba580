/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Strict parsers for configuration values and protocol addresses.
 *
 * Every parser rejects empty input, leading/trailing white space, signs,
 * trailing garbage and out-of-range values. Numbers are decimal only.
 * No function here logs or allocates, except hostport_parse() which returns
 * the host as a new string.
 *
 * Returns: 0 on success, -EINVAL on syntax errors, -ERANGE on overflow or a
 * value out of the documented range, -ENOMEM on allocation failure.
 * Out-params are written only on success.
 */

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <net/if.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "macro.h"
#include "parse.h"

/* RFC 1035 2.3.4: labels are 63 octets at most. */
#define DNS_LABEL_MAX 63
/* RFC 1035 2.3.4 limits a name to 255 octets on the wire, which is 253
 * characters in dotted text form without the trailing dot. */
#define DNS_NAME_TEXT_MAX 253
/* RFC 5321 4.5.3.1.1: local part 64 octets. */
#define SMTP_LOCAL_PART_MAX 64
/* RFC 5321 4.5.3.1.2: domain 255 octets (this includes address literals). */
#define SMTP_DOMAIN_MAX 255
/* RFC 5321 4.5.3.1.3: path 256 octets including the angle brackets, so a
 * mailbox is at most 254. */
#define SMTP_MAILBOX_MAX (256 - 2)
/* Longest address text we hand to inet_pton(), with room for a scope id. */
#define ADDR_TEXT_MAX (INET6_ADDRSTRLEN + IF_NAMESIZE + 1)

static bool ascii_isdigit(char c) {
        return c >= '0' && c <= '9';
}

static bool ascii_isalpha(char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* Parses leading decimal digits of s (at least one); returns the position
 * after them in *ret_end. No sign, no white space. */
static int parse_digits(const char *s, uint64_t *ret, const char **ret_end) {
        uint64_t v = 0;
        const char *p = s;

        if (!s || !ascii_isdigit(*s))
                return -EINVAL;

        for (; ascii_isdigit(*p); p++) {
                unsigned d = (unsigned) (*p - '0');

                if (v > (UINT64_MAX - d) / 10)
                        return -ERANGE;
                v = v * 10 + d;
        }

        *ret = v;
        *ret_end = p;
        return 0;
}

int parse_uint64(const char *s, uint64_t *ret) {
        const char *end;
        uint64_t v;
        int r;

        r = parse_digits(s, &v, &end);
        if (r < 0)
                return r;
        if (*end != '\0')
                return -EINVAL;

        *ret = v;
        return 0;
}

int parse_uint32(const char *s, uint32_t *ret) {
        uint64_t v;
        int r;

        r = parse_uint64(s, &v);
        if (r < 0)
                return r;
        if (v > UINT32_MAX)
                return -ERANGE;

        *ret = (uint32_t) v;
        return 0;
}

int parse_port(const char *s, uint16_t *ret) {
        uint64_t v;
        int r;

        r = parse_uint64(s, &v);
        if (r < 0)
                return r;
        /* Port 0 means "any" to the kernel, never a valid configured port. */
        if (v < 1 || v > UINT16_MAX)
                return -ERANGE;

        *ret = (uint16_t) v;
        return 0;
}

static int mul_overflow_u64(uint64_t a, uint64_t b, uint64_t *ret) {
        if (b != 0 && a > UINT64_MAX / b)
                return -ERANGE;
        *ret = a * b;
        return 0;
}

int parse_size(const char *s, uint64_t *ret) {
        static const struct {
                char suffix;
                uint64_t factor;
        } table[] = {
                { 'K', UINT64_C(1) << 10 },
                { 'M', UINT64_C(1) << 20 },
                { 'G', UINT64_C(1) << 30 },
        };
        const char *end;
        uint64_t v, factor = 1;
        int r;

        r = parse_digits(s, &v, &end);
        if (r < 0)
                return r;

        if (*end != '\0') {
                bool found = false;

                /* Exactly one suffix character; "10KB" or "10 K" is refused. */
                if (end[1] != '\0')
                        return -EINVAL;
                for (size_t i = 0; i < ELEMENTSOF(table); i++)
                        if (*end == table[i].suffix || *end == table[i].suffix + ('a' - 'A')) {
                                factor = table[i].factor;
                                found = true;
                                break;
                        }
                if (!found)
                        return -EINVAL;
        }

        r = mul_overflow_u64(v, factor, &v);
        if (r < 0)
                return r;

        *ret = v;
        return 0;
}

int parse_duration(const char *s, uint64_t *ret_usec) {
        static const struct {
                const char *suffix;
                uint64_t usec;
        } table[] = {
                { "ms", USEC_PER_MSEC },
                { "s",  USEC_PER_SEC },
                { "m",  60 * USEC_PER_SEC },
                { "h",  3600 * USEC_PER_SEC },
                { "d",  86400 * USEC_PER_SEC },
        };
        const char *end;
        uint64_t v, factor = USEC_PER_SEC;
        int r;

        r = parse_digits(s, &v, &end);
        if (r < 0)
                return r;

        if (*end != '\0') {
                bool found = false;

                for (size_t i = 0; i < ELEMENTSOF(table); i++)
                        if (streq(end, table[i].suffix)) {
                                factor = table[i].usec;
                                found = true;
                                break;
                        }
                if (!found)
                        return -EINVAL;
        }

        r = mul_overflow_u64(v, factor, &v);
        if (r < 0)
                return r;
        /* USEC_INFINITY is reserved as "no timeout"; a finite value must
         * not collide with it. */
        if (v == USEC_INFINITY)
                return -ERANGE;

        *ret_usec = v;
        return 0;
}

int parse_bool(const char *s, bool *ret) {
        static const char * const yes[] = { "yes", "true", "on", "1" };
        static const char * const no[] = { "no", "false", "off", "0" };

        if (isempty(s))
                return -EINVAL;

        for (size_t i = 0; i < ELEMENTSOF(yes); i++)
                if (strcaseeq(s, yes[i])) {
                        *ret = true;
                        return 0;
                }
        for (size_t i = 0; i < ELEMENTSOF(no); i++)
                if (strcaseeq(s, no[i])) {
                        *ret = false;
                        return 0;
                }

        return -EINVAL;
}

/* Copies s[0..len) into buf as a C string; -EINVAL when it does not fit or
 * contains a NUL. */
static int copy_token(const char *s, size_t len, char *buf, size_t size) {
        if (len == 0 || len >= size || memchr(s, '\0', len))
                return -EINVAL;
        memcpy(buf, s, len);
        buf[len] = '\0';
        return 0;
}

/* True when no bit beyond the first prefixlen bits of addr is set. */
static bool host_bits_zero(const uint8_t *addr, size_t addr_len, unsigned prefixlen) {
        for (size_t i = 0; i < addr_len; i++) {
                unsigned bit0 = (unsigned) i * 8;
                uint8_t mask;

                if (bit0 + 8 <= prefixlen)
                        continue;
                mask = bit0 >= prefixlen ? 0xff : (uint8_t) (0xff >> (prefixlen - bit0));
                if (addr[i] & mask)
                        return false;
        }
        return true;
}

static bool prefix_equal(const uint8_t *a, const uint8_t *b, unsigned prefixlen) {
        size_t full = prefixlen / 8;
        unsigned rest = prefixlen % 8;

        if (memcmp(a, b, full) != 0)
                return false;
        if (rest == 0)
                return true;

        uint8_t mask = (uint8_t) (0xff << (8 - rest));
        return (a[full] & mask) == (b[full] & mask);
}

int cidr_parse(const char *s, Cidr *ret) {
        char addr[INET6_ADDRSTRLEN];
        const char *slash;
        size_t addr_len;
        uint32_t prefixlen;
        Cidr c = {};
        int r;

        if (isempty(s))
                return -EINVAL;

        slash = strchr(s, '/');
        addr_len = slash ? (size_t) (slash - s) : strlen(s);
        r = copy_token(s, addr_len, addr, sizeof(addr));
        if (r < 0)
                return r;

        /* inet_pton(AF_INET) only takes the four-part dotted-decimal form,
         * so "10.1" or "0x0a000001" are refused here, as they should be. */
        if (inet_pton(AF_INET, addr, &c.addr.in) == 1) {
                c.family = AF_INET;
                c.prefixlen = 32;
        } else if (inet_pton(AF_INET6, addr, &c.addr.in6) == 1) {
                c.family = AF_INET6;
                c.prefixlen = 128;
        } else
                return -EINVAL;

        if (slash) {
                r = parse_uint32(slash + 1, &prefixlen);
                if (r < 0)
                        return -EINVAL;
                if (prefixlen > c.prefixlen)
                        return -ERANGE;
                c.prefixlen = prefixlen;
        }

        /* "10.1.2.3/8" is almost always a typo for a host or for
         * "10.0.0.0/8"; refuse it rather than guess. */
        if (c.family == AF_INET) {
                if (!host_bits_zero((const uint8_t *) &c.addr.in, sizeof(c.addr.in), c.prefixlen))
                        return -EINVAL;
        } else if (!host_bits_zero(c.addr.in6.s6_addr, sizeof(c.addr.in6.s6_addr), c.prefixlen))
                return -EINVAL;

        *ret = c;
        return 0;
}

bool cidr_match(const Cidr *c, const struct sockaddr *sa) {
        if (!c || !sa)
                return false;

        if (sa->sa_family == AF_INET) {
                const struct sockaddr_in *sin = (const struct sockaddr_in *) sa;

                if (c->family != AF_INET)
                        return false;
                return prefix_equal((const uint8_t *) &sin->sin_addr, (const uint8_t *) &c->addr.in, c->prefixlen);
        }

        if (sa->sa_family == AF_INET6) {
                const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *) sa;

                if (c->family == AF_INET6)
                        return prefix_equal(sin6->sin6_addr.s6_addr, c->addr.in6.s6_addr, c->prefixlen);
                /* A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d
                 * (RFC 4291 2.5.5.2); they must hit IPv4 rules. */
                if (c->family == AF_INET && IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr))
                        return prefix_equal(sin6->sin6_addr.s6_addr + 12, (const uint8_t *) &c->addr.in, c->prefixlen);
        }

        return false;
}

const char *cidr_to_string(const Cidr *c, char *buf, size_t len) {
        char addr[INET6_ADDRSTRLEN];
        int k;

        if (!c || !buf || (c->family != AF_INET && c->family != AF_INET6))
                return NULL;
        if (!inet_ntop(c->family, &c->addr, addr, sizeof(addr)))
                return NULL;

        k = snprintf(buf, len, "%s/%u", addr, c->prefixlen);
        if (k < 0 || (size_t) k >= len)
                return NULL;
        return buf;
}

int sockaddr_parse(const char *address, uint16_t port, struct sockaddr_storage *ret, socklen_t *ret_len) {
        char text[ADDR_TEXT_MAX];
        struct sockaddr_storage ss = {};
        const char *pct;
        uint32_t scope = 0;
        int r;

        if (isempty(address))
                return -EINVAL;

        r = copy_token(address, strlen(address), text, sizeof(text));
        if (r < 0)
                return r;

        {
                struct sockaddr_in *sin = (struct sockaddr_in *) &ss;

                if (inet_pton(AF_INET, text, &sin->sin_addr) == 1) {
                        sin->sin_family = AF_INET;
                        sin->sin_port = htons(port);
                        *ret = ss;
                        *ret_len = sizeof(struct sockaddr_in);
                        return 0;
                }
        }

        /* IPv6 link-local addresses need a zone: "fe80::1%eth0" or "%2"
         * (RFC 4007 11.2). */
        pct = strchr(text, '%');
        if (pct) {
                const char *zone = pct + 1;

                if (*zone == '\0')
                        return -EINVAL;
                if (parse_uint32(zone, &scope) < 0) {
                        scope = if_nametoindex(zone);
                        if (scope == 0)
                                return -EINVAL;
                }
                text[pct - text] = '\0';
        }

        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *) &ss;
        if (inet_pton(AF_INET6, text, &sin6->sin6_addr) != 1)
                return -EINVAL;
        if (pct && !IN6_IS_ADDR_LINKLOCAL(&sin6->sin6_addr) && !IN6_IS_ADDR_MC_LINKLOCAL(&sin6->sin6_addr))
                return -EINVAL;

        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        sin6->sin6_scope_id = scope;
        *ret = ss;
        *ret_len = sizeof(struct sockaddr_in6);
        return 0;
}

static bool ip_literal_is_valid(const char *s) {
        struct in6_addr a6;
        struct in_addr a4;

        return inet_pton(AF_INET, s, &a4) == 1 || inet_pton(AF_INET6, s, &a6) == 1;
}

int hostport_parse(const char *s, uint16_t default_port, char **ret_host, uint16_t *ret_port) {
        char host[DNS_NAME_TEXT_MAX + 1];
        const char *port_text = NULL, *colon;
        uint16_t port = default_port;
        size_t host_len;
        bool bracketed = false;
        char *copy;
        int r;

        if (isempty(s))
                return -EINVAL;

        if (s[0] == '[') {
                const char *close = strchr(s, ']');

                if (!close)
                        return -EINVAL;
                bracketed = true;
                r = copy_token(s + 1, (size_t) (close - s - 1), host, sizeof(host));
                if (r < 0)
                        return r;
                if (close[1] == ':')
                        port_text = close + 2;
                else if (close[1] != '\0')
                        return -EINVAL;
        } else {
                colon = strchr(s, ':');
                if (colon && strchr(colon + 1, ':')) {
                        /* Several colons without brackets: only a bare IPv6
                         * address without a port makes sense. */
                        host_len = strlen(s);
                } else {
                        host_len = colon ? (size_t) (colon - s) : strlen(s);
                        if (colon)
                                port_text = colon + 1;
                }
                r = copy_token(s, host_len, host, sizeof(host));
                if (r < 0)
                        return r;
        }

        if (port_text) {
                r = parse_port(port_text, &port);
                if (r < 0)
                        return r;
        }

        if (bracketed) {
                struct in6_addr a6;

                if (inet_pton(AF_INET6, host, &a6) != 1)
                        return -EINVAL;
        } else if (!ip_literal_is_valid(host) && !domain_is_valid(host))
                return -EINVAL;

        copy = strdup(host);
        if (!copy)
                return -ENOMEM;

        *ret_host = copy;
        if (ret_port)
                *ret_port = port;
        return 0;
}

const char *sockaddr_to_string(const struct sockaddr *sa, char *buf, size_t len) {
        if (!sa || !buf)
                return NULL;

        if (sa->sa_family == AF_INET) {
                const struct sockaddr_in *sin = (const struct sockaddr_in *) sa;

                return inet_ntop(AF_INET, &sin->sin_addr, buf, (socklen_t) MIN(len, (size_t) INT_MAX));
        }

        if (sa->sa_family == AF_INET6) {
                const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *) sa;

                if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr))
                        return inet_ntop(AF_INET, sin6->sin6_addr.s6_addr + 12, buf, (socklen_t) MIN(len, (size_t) INT_MAX));
                return inet_ntop(AF_INET6, &sin6->sin6_addr, buf, (socklen_t) MIN(len, (size_t) INT_MAX));
        }

        return NULL;
}

uint16_t sockaddr_port(const struct sockaddr *sa) {
        if (!sa)
                return 0;
        if (sa->sa_family == AF_INET)
                return ntohs(((const struct sockaddr_in *) sa)->sin_port);
        if (sa->sa_family == AF_INET6)
                return ntohs(((const struct sockaddr_in6 *) sa)->sin6_port);
        return 0;
}

static bool domain_is_valid_n(const char *s, size_t len) {
        size_t label = 0;

        if (len == 0 || len > DNS_NAME_TEXT_MAX)
                return false;

        for (size_t i = 0; i < len; i++) {
                char c = s[i];

                if (c == '.') {
                        /* Empty label (leading dot, "..", trailing dot) or a
                         * label ending in a hyphen (RFC 1035 2.3.1). */
                        if (label == 0 || s[i - 1] == '-')
                                return false;
                        label = 0;
                        continue;
                }

                if (!ascii_isalpha(c) && !ascii_isdigit(c) && c != '-')
                        return false;
                if (c == '-' && label == 0)
                        return false;
                if (++label > DNS_LABEL_MAX)
                        return false;
        }

        return label > 0 && s[len - 1] != '-';
}

bool domain_is_valid(const char *s) {
        if (!s)
                return false;
        return domain_is_valid_n(s, strlen(s));
}

/* RFC 5322 3.2.3 atext, as used by RFC 5321 4.1.2 Atom. */
static bool is_atext(char c) {
        return ascii_isalpha(c) || ascii_isdigit(c) || (c && strchr("!#$%&'*+-/=?^_`{|}~", c));
}

/* Length of a valid local part at the head of s[0..len), or 0 if none. */
static size_t local_part_span(const char *s, size_t len) {
        size_t i = 0;

        if (len == 0)
                return 0;

        if (s[0] == '"') {
                /* Quoted-string = DQUOTE *QcontentSMTP DQUOTE */
                for (i = 1; i < len; i++) {
                        unsigned char c = (unsigned char) s[i];

                        if (c == '"')
                                return i + 1;
                        if (c == '\\') {
                                /* quoted-pairSMTP = %d92 %d32-126 */
                                if (i + 1 >= len)
                                        return 0;
                                c = (unsigned char) s[++i];
                                if (c < 32 || c > 126)
                                        return 0;
                                continue;
                        }
                        /* qtextSMTP = %d32-33 / %d35-91 / %d93-126 */
                        if (c < 32 || c > 126)
                                return 0;
                }
                return 0;
        }

        /* Dot-string = Atom *("." Atom) */
        for (;;) {
                size_t start = i;

                while (i < len && is_atext(s[i]))
                        i++;
                if (i == start)
                        return 0;
                if (i < len && s[i] == '.') {
                        i++;
                        continue;
                }
                return i;
        }
}

/* address-literal = "[" ( IPv4-address-literal / IPv6-address-literal ) "]"
 * (RFC 5321 4.1.3). General-address-literal tags other than IPv6 are not
 * registered for anything we can route to, so they are refused. */
static bool address_literal_is_valid(const char *s, size_t len) {
        char text[INET6_ADDRSTRLEN];
        struct in6_addr a6;
        struct in_addr a4;
        const char *body;
        size_t body_len;

        if (len < 3 || s[0] != '[' || s[len - 1] != ']')
                return false;
        body = s + 1;
        body_len = len - 2;

        if (body_len > 5 && strncasecmp(body, "IPv6:", 5) == 0) {
                if (copy_token(body + 5, body_len - 5, text, sizeof(text)) < 0)
                        return false;
                return inet_pton(AF_INET6, text, &a6) == 1;
        }

        if (copy_token(body, body_len, text, sizeof(text)) < 0)
                return false;
        return inet_pton(AF_INET, text, &a4) == 1;
}

bool mailbox_is_valid(const char *s, size_t len) {
        size_t local_len;

        if (!s || len == 0 || len > SMTP_MAILBOX_MAX)
                return false;

        local_len = local_part_span(s, len);
        if (local_len == 0 || local_len > SMTP_LOCAL_PART_MAX)
                return false;
        if (local_len >= len || s[local_len] != '@')
                return false;

        const char *domain = s + local_len + 1;
        size_t domain_len = len - local_len - 1;

        if (domain_len == 0 || domain_len > SMTP_DOMAIN_MAX)
                return false;
        if (domain[0] == '[')
                return address_literal_is_valid(domain, domain_len);
        return domain_is_valid_n(domain, domain_len);
}

const char *mailbox_domain(const char *mailbox) {
        const char *at;

        if (!mailbox)
                return NULL;
        at = strrchr(mailbox, '@');
        return at ? at + 1 : NULL;
}

const char *log_escape(const char *s, size_t len, char *out, size_t max_out) {
        static const char hex[] = "0123456789abcdef";
        size_t total = 0, limit, pos = 0;
        bool cut;

        if (!out || max_out == 0)
                return out;
        if (!s)
                len = 0;

        for (size_t i = 0; i < len; i++) {
                unsigned char c = (unsigned char) s[i];
                total += (c >= 0x20 && c < 0x7f) ? 1 : 4;
        }

        cut = total > max_out - 1;
        /* Leave room for "..." when cutting; escapes are never split. */
        limit = cut ? (max_out - 1 > 3 ? max_out - 1 - 3 : 0) : max_out - 1;

        for (size_t i = 0; i < len; i++) {
                unsigned char c = (unsigned char) s[i];

                if (c >= 0x20 && c < 0x7f) {
                        if (pos + 1 > limit)
                                break;
                        out[pos++] = (char) c;
                } else {
                        if (pos + 4 > limit)
                                break;
                        out[pos++] = '\\';
                        out[pos++] = 'x';
                        out[pos++] = hex[c >> 4];
                        out[pos++] = hex[c & 0xf];
                }
        }

        if (cut)
                for (size_t k = 0; k < 3 && pos < max_out - 1; k++)
                        out[pos++] = '.';

        out[pos] = '\0';
        return out;
}
