/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Unit tests for sockdiag: real TCP connections over loopback, looked up
 * in the running kernel over netlink inet_diag. A plain connection has no
 * ULP; a closed one is not found and reads as "". Where the kernel has the
 * "tls" ULP (not on every build host: see tests/vm/), the ULP is attached
 * to a live connection and dummy TLS 1.3 AES-GCM-256 TX keys are
 * installed, and the kernel's report must say exactly that. Without the
 * ULP or without CAP_NET_ADMIN those checks are skipped with the reason.
 */

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <linux/tls.h>

#include "sockdiag.h"
#include "util/macro.h"

#include "tap.h"

#ifndef SOL_TLS
#define SOL_TLS 282     /* include/linux/socket.h */
#endif
#ifndef TCP_ULP
#define TCP_ULP 31
#endif

/* A connected pair over loopback: *a is the client end, *b the server's. */
static int tcp_pair(int family, int *ret_a, int *ret_b) {
        _cleanup_close_ int l = -EBADF, a = -EBADF, b = -EBADF;
        struct sockaddr_storage ss = {};
        socklen_t len;

        if (family == AF_INET) {
                struct sockaddr_in *in = (struct sockaddr_in *) &ss;

                in->sin_family = AF_INET;
                in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
                len = sizeof *in;
        } else {
                struct sockaddr_in6 *in6 = (struct sockaddr_in6 *) &ss;

                in6->sin6_family = AF_INET6;
                in6->sin6_addr = in6addr_loopback;
                len = sizeof *in6;
        }
        l = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (l < 0 || bind(l, (struct sockaddr *) &ss, len) < 0 || listen(l, 4) < 0)
                return -errno;
        if (getsockname(l, (struct sockaddr *) &ss, &len) < 0)
                return -errno;
        a = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (a < 0 || connect(a, (struct sockaddr *) &ss, len) < 0)
                return -errno;
        b = accept4(l, NULL, NULL, SOCK_CLOEXEC);
        if (b < 0)
                return -errno;
        *ret_a = TAKE_FD(a);
        *ret_b = TAKE_FD(b);
        return 0;
}

static void test_plain(int family, const char *name) {
        _cleanup_close_ int a = -EBADF, b = -EBADF;
        _cleanup_free_ char *ta = NULL, *tb = NULL;
        int r;

        r = tcp_pair(family, &a, &b);
        if (r < 0) {
                char why[128];

                snprintf(why, sizeof why, "no %s loopback here: %s", name, strerror(-r));
                tap_skip("plain TCP has no ULP", why);
                return;
        }
        r = sockdiag_ulp_fd(a, &ta);
        is_int(r, 1, "%s client end: the kernel finds the socket", name);
        is_str(ta, "", "%s client end: no ULP", name);
        r = sockdiag_ulp_fd(b, &tb);
        is_int(r, 1, "%s server end: the kernel finds the socket", name);
        is_str(tb, "", "%s server end: no ULP", name);
}

static void test_gone(void) {
        _cleanup_close_ int a = -EBADF, b = -EBADF;
        struct sockaddr_storage local, peer;
        socklen_t llen = sizeof local, plen = sizeof peer;
        SockDiag *d = NULL;
        char *t = NULL;
        int r;

        if (tcp_pair(AF_INET, &a, &b) < 0 ||
            getsockname(a, (struct sockaddr *) &local, &llen) < 0 ||
            getpeername(a, (struct sockaddr *) &peer, &plen) < 0) {
                tap_skip("closed socket reads as nothing", "no IPv4 loopback");
                return;
        }
        r = sockdiag_new(&d);
        is_int(r, 0, "sockdiag_new");
        if (r < 0)
                return;

        /* Swapped ends: the server's socket, found from the other side. */
        r = sockdiag_ulp(d, (struct sockaddr *) &peer, (struct sockaddr *) &local, &t);
        is_int(r, 1, "lookup by the peer's 4-tuple finds the server end");
        is_str(t, "", "and finds no ULP");
        t = mfree(t);

        /* An RST close (SO_LINGER 0) leaves no TIME_WAIT entry for a. */
        struct linger lg = { .l_onoff = 1, .l_linger = 0 };
        (void) setsockopt(a, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        a = safe_close(a);
        b = safe_close(b);
        r = sockdiag_ulp(d, (struct sockaddr *) &local, (struct sockaddr *) &peer, &t);
        is_int(r, 0, "a closed connection is not found, and not an error");
        is_str(t, "", "and reads as no ULP");
        t = mfree(t);

        /* One handle serves many lookups: a hit after the miss. */
        if (tcp_pair(AF_INET, &a, &b) >= 0 &&
            getsockname(a, (struct sockaddr *) &local, &llen) >= 0 &&
            getpeername(a, (struct sockaddr *) &peer, &plen) >= 0) {
                r = sockdiag_ulp(d, (struct sockaddr *) &local, (struct sockaddr *) &peer, &t);
                is_int(r, 1, "the handle is reusable after a miss");
                t = mfree(t);
        } else
                tap_skip("the handle is reusable after a miss", "no second connection");

        struct sockaddr_in6 v6 = { .sin6_family = AF_INET6 };
        r = sockdiag_ulp(d, (struct sockaddr *) &local, (struct sockaddr *) &v6, &t);
        is_int(r, -EAFNOSUPPORT, "mixed address families are refused");
        ok(!t, "nothing returned on error");
        sockdiag_free(d);
}

static void test_invalid(void) {
        _cleanup_close_ int u = -EBADF;
        int sv[2] = { -EBADF, -EBADF };
        char *t = NULL;

        is_int(sockdiag_ulp_fd(-1, &t), -EINVAL, "negative fd refused");
        is_int(sockdiag_new(NULL), -EINVAL, "sockdiag_new(NULL) refused");
        u = open("/dev/null", O_RDONLY | O_CLOEXEC);
        is_int(sockdiag_ulp_fd(u, &t), -ENOTSOCK, "not a socket");
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0) {
                is_int(sockdiag_ulp_fd(sv[0], &t), -EAFNOSUPPORT, "AF_UNIX socket refused");
                safe_close(sv[0]);
                safe_close(sv[1]);
        } else
                tap_skip("AF_UNIX socket refused", "no socketpair");
        ok(!t, "no text on any error");
}

/* CAP_NET_ADMIN (bit 12, linux/capability.h) in the effective set, read
 * from /proc so the test needs no libcap. */
#define TEST_CAP_NET_ADMIN 12

static bool have_net_admin(void) {
        _cleanup_fclose_ FILE *f = fopen("/proc/self/status", "re");
        char line[256];
        uint64_t eff;

        if (!f)
                return false;
        while (fgets(line, sizeof line, f))
                if (sscanf(line, "CapEff: %" SCNx64, &eff) == 1)
                        return eff & (UINT64_C(1) << TEST_CAP_NET_ADMIN);
        return false;
}

static void test_tls_ulp(void) {
        _cleanup_close_ int a = -EBADF, b = -EBADF;
        _cleanup_free_ char *t1 = NULL, *t2 = NULL, *t3 = NULL;
        struct tls12_crypto_info_aes_gcm_256 ci = {};
        char why[160];
        int r;

        if (!have_net_admin()) {
                tap_skip("kernel reports the tls ULP", "needs CAP_NET_ADMIN (the kernel hides ULP info otherwise)");
                return;
        }
        r = tcp_pair(AF_INET, &a, &b);
        if (r < 0) {
                tap_skip("kernel reports the tls ULP", "no IPv4 loopback");
                return;
        }
        if (setsockopt(a, IPPROTO_TCP, TCP_ULP, "tls", sizeof "tls") < 0) {
                snprintf(why, sizeof why, "the kernel has no tls ULP (%s); run the vm suite", strerror(errno));
                tap_skip("kernel reports the tls ULP", why);
                return;
        }
        r = sockdiag_ulp_fd(a, &t1);
        is_int(r, 1, "lookup of a socket with the tls ULP");
        is_str(t1, "tls tx:none rx:none", "ULP attached, no keys yet");

        /* Dummy keys: nothing is sent, the kernel only records them. */
        ci.info.version = TLS_1_3_VERSION;
        ci.info.cipher_type = TLS_CIPHER_AES_GCM_256;
        memset(ci.key, 0x42, sizeof ci.key);
        if (setsockopt(a, SOL_TLS, TLS_TX, &ci, sizeof ci) < 0) {
                snprintf(why, sizeof why, "TLS 1.3 AES-GCM-256 TX keys refused: %s", strerror(errno));
                tap_skip("kernel reports TX keys", why);
        } else {
                r = sockdiag_ulp_fd(a, &t2);
                is_int(r, 1, "lookup after TX keys");
                is_str(t2, "tls 1.3 aes-gcm-256 tx:sw rx:none", "kernel encrypts TX in software");
        }
        r = sockdiag_ulp_fd(b, &t3);
        is_int(r, 1, "lookup of the other end");
        is_str(t3, "", "the other end has no ULP");
}

int main(void) {
        test_invalid();
        test_plain(AF_INET, "IPv4");
        test_plain(AF_INET6, "IPv6");
        test_gone();
        test_tls_ulp();
        return tap_done();
}
