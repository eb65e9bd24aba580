/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * The kernel's own view of a TCP socket's upper layer protocol (ULP), read
 * over netlink sock_diag (inet_diag) through libnl: for a socket with the
 * "tls" ULP attached, which TLS version and cipher the kernel holds keys
 * for and whether each direction is encrypted in software, by a NIC, or
 * not at all. This is what proves kernel TLS offload independently of
 * what OpenSSL believes it did.
 *
 * The socket is found by its 4-tuple, so the caller need not hold its fd
 * (a session on another thread may close it meanwhile: the lookup then
 * finds nothing and says so with an empty text). The kernel only reports
 * ULP details to a netlink socket opened with CAP_NET_ADMIN; without it
 * every socket reads as having no ULP.
 *
 * Text: "tls 1.3 aes-gcm-256 tx:sw rx:none", "tls tx:none rx:none" before
 * keys are installed, the bare ULP name for other ULPs (e.g. "mptcp"), ""
 * when there is no ULP or no such socket. Does not log; returns 1 (found),
 * 0 (no such socket) or negative errno.
 */

#include <sys/socket.h>

typedef struct SockDiag SockDiag;

/* One netlink socket for any number of lookups (one thread at a time). */
int sockdiag_new(SockDiag **ret);
SockDiag *sockdiag_free(SockDiag *d);

/* local/peer: AF_INET or AF_INET6 (v4-mapped allowed) with ports set.
 * *ret is a new string ("" when nothing is known). Returns 1 when the
 * kernel found the socket, 0 when there is no such socket (closed
 * meanwhile), negative errno on failure. */
int sockdiag_ulp(SockDiag *d, const struct sockaddr *local, const struct sockaddr *peer, char **ret);

/* Convenience for a connected TCP socket the caller holds; same returns. */
int sockdiag_ulp_fd(int fd, char **ret);
