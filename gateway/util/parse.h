/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * Strict parsers for numbers, sizes, durations, addresses and names.
 * All reject empty input, trailing garbage, overflow and out-of-range values
 * with -EINVAL/-ERANGE; none logs; out-params are set only on success.
 */

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <netinet/in.h>

int parse_uint64(const char *s, uint64_t *ret);
int parse_uint32(const char *s, uint32_t *ret);
int parse_port(const char *s, uint16_t *ret);                /* 1..65535 */
/* "1048576", "512K", "10M", "1G" (binary multiples). */
int parse_size(const char *s, uint64_t *ret);
/* "30" (seconds), "250ms", "30s", "5m", "2h", "5d"; result in usec. */
int parse_duration(const char *s, uint64_t *ret_usec);
int parse_bool(const char *s, bool *ret);                    /* yes/no/true/false/on/off/1/0 */

typedef struct Cidr {
        int family;                     /* AF_INET or AF_INET6 */
        union {
                struct in_addr in;
                struct in6_addr in6;
        } addr;
        unsigned prefixlen;
} Cidr;

/* "10.0.0.0/8", "192.0.2.1" (/32 implied), "2001:db8::/32", "::1". Host bits
 * beyond the prefix must be zero. */
int cidr_parse(const char *s, Cidr *ret);
/* Matches v4-mapped IPv6 clients against IPv4 ranges too. */
bool cidr_match(const Cidr *c, const struct sockaddr *sa);
/* Formats a Cidr back to text ("10.0.0.0/8"); buf >= CIDR_STRLEN. */
#define CIDR_STRLEN (INET6_ADDRSTRLEN + 5)
const char *cidr_to_string(const Cidr *c, char *buf, size_t len);

/* Numeric IPv4/IPv6 literal (no names) into a sockaddr with port. */
int sockaddr_parse(const char *address, uint16_t port, struct sockaddr_storage *ret, socklen_t *ret_len);
/* "HOST:PORT", "[V6]:PORT", "HOST" (default_port). Host is returned
 * newly allocated, unbracketed. */
int hostport_parse(const char *s, uint16_t default_port, char **ret_host, uint16_t *ret_port);
/* Address text without port, v4-mapped shown as IPv4; buf >= INET6_ADDRSTRLEN. */
const char *sockaddr_to_string(const struct sockaddr *sa, char *buf, size_t len);
uint16_t sockaddr_port(const struct sockaddr *sa);

/* RFC 1035/5321 host name: labels of [A-Za-z0-9-], 1..63 octets, total
 * <= 253, no leading/trailing hyphen; a trailing dot is not allowed. */
bool domain_is_valid(const char *s);
/* RFC 5321 4.1.2 Mailbox with limits of 4.5.3.1 (local part 64, domain 255,
 * path 256): dot-string or quoted-string local part @ domain or address
 * literal. Empty string is not a mailbox. */
bool mailbox_is_valid(const char *s, size_t len);
/* Domain part of a mailbox (after the last '@'), or NULL. */
const char *mailbox_domain(const char *mailbox);

/* Escapes client-supplied text for logs: printable ASCII kept, others as
 * \xNN, truncated to max_out-1 bytes with "..." appended when cut. */
const char *log_escape(const char *s, size_t len, char *out, size_t max_out);
