/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * Kernel TLS: whether the kernel can take record encryption (the "tls" ULP),
 * what the kernel says it is doing (/proc/net/tls_stat). OpenSSL installs
 * the keys itself (SSL_OP_ENABLE_KTLS); this module only detects and
 * reports. The only file with SOL_TLS / TCP_ULP.
 */

#include <stdbool.h>
#include <stdint.h>

/* The kernel offers the tls ULP (module loaded or loadable): tested once by
 * attaching it to a connected loopback TCP socket. */
bool ktls_available(void);

typedef struct KtlsStats {
        uint64_t tx_sw, rx_sw;          /* TlsTxSw, TlsRxSw: sessions installed */
        uint64_t curr_tx_sw, curr_rx_sw;/* TlsCurrTxSw, TlsCurrRxSw */
        uint64_t decrypt_errors;        /* TlsDecryptError */
} KtlsStats;

/* -ENOENT when the kernel has no kTLS. */
int ktls_read_stats(KtlsStats *ret);
