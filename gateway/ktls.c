/* SPDX-License-Identifier: GPL-2.0-or-later */

/*
 * Kernel TLS detection and counters.
 *
 * Detection attaches the "tls" upper layer protocol to a connected loopback
 * TCP socket once per process: that is the only reliable test, since the
 * ULP may be built in, a loadable module, or absent, and OpenSSL falls back
 * to userspace records silently when it is absent. Installing keys is
 * OpenSSL's job (SSL_OP_ENABLE_KTLS), not ours.
 *
 * Never logs. ktls_read_stats() returns negative errno (-ENOENT without
 * kTLS in the kernel).
 */

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "ktls.h"
#include "util/macro.h"
#include "util/parse.h"

#ifndef TCP_ULP
#define TCP_ULP 31
#endif

#define KTLS_STAT_PATH "/proc/net/tls_stat"
/* Lines of /proc/net/tls_stat are "Name<whitespace>value", well under this. */
#define KTLS_STAT_LINE_MAX 256

static bool ktls_is_available;
static pthread_once_t ktls_once = PTHREAD_ONCE_INIT;

/* TCP_ULP only attaches to an ESTABLISHED socket, hence the listener. */
static bool ktls_probe(void) {
        _cleanup_close_ int lfd = -EBADF, cfd = -EBADF, afd = -EBADF;
        struct sockaddr_in sa = {
                .sin_family = AF_INET,
                .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
        };
        socklen_t salen = sizeof(sa);

        lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (lfd < 0)
                return false;
        if (bind(lfd, (struct sockaddr *) &sa, sizeof(sa)) < 0 ||
            listen(lfd, 1) < 0 ||
            getsockname(lfd, (struct sockaddr *) &sa, &salen) < 0)
                return false;

        cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (cfd < 0)
                return false;
        if (connect(cfd, (struct sockaddr *) &sa, salen) < 0)
                return false;
        afd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (afd < 0)
                return false;

        /* ENOENT: no such ULP (not built, module not loadable). Any other
         * failure also means we cannot use it. */
        return setsockopt(cfd, IPPROTO_TCP, TCP_ULP, "tls", sizeof("tls")) == 0;
}

static void ktls_detect(void) {
        ktls_is_available = ktls_probe();
}

bool ktls_available(void) {
        (void) pthread_once(&ktls_once, ktls_detect);
        return ktls_is_available;
}

int ktls_read_stats(KtlsStats *ret) {
        _cleanup_fclose_ FILE *f = NULL;
        char line[KTLS_STAT_LINE_MAX];
        KtlsStats s = {};
        unsigned found = 0;

        if (!ret)
                return -EINVAL;

        f = fopen(KTLS_STAT_PATH, "re");
        if (!f)
                return errno == ENOENT ? -ENOENT : negative_errno();

        while (fgets(line, sizeof(line), f)) {
                static const struct {
                        const char *name;
                        size_t offset;
                } fields[] = {
                        { "TlsTxSw",         offsetof(KtlsStats, tx_sw)          },
                        { "TlsRxSw",         offsetof(KtlsStats, rx_sw)          },
                        { "TlsCurrTxSw",     offsetof(KtlsStats, curr_tx_sw)     },
                        { "TlsCurrRxSw",     offsetof(KtlsStats, curr_rx_sw)     },
                        { "TlsDecryptError", offsetof(KtlsStats, decrypt_errors) },
                };
                char *name, *value, *save = NULL;
                uint64_t v;

                name = strtok_r(line, " \t\n", &save);
                value = name ? strtok_r(NULL, " \t\n", &save) : NULL;
                if (!value)
                        continue;

                for (size_t i = 0; i < ELEMENTSOF(fields); i++) {
                        if (!streq(name, fields[i].name))
                                continue;
                        if (parse_uint64(value, &v) < 0)
                                return -EBADMSG;
                        memcpy((char *) &s + fields[i].offset, &v, sizeof(v));
                        found++;
                        break;
                }
        }
        if (ferror(f))
                return -EIO;
        /* The file exists only with the tls module; an empty one is not it. */
        if (found == 0)
                return -EBADMSG;

        *ret = s;
        return 0;
}
