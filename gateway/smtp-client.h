/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * Outbound SMTP: one delivery connection (DCID) that carries one or more
 * messages for one destination domain.
 *
 * Tries the targets in order until one gives a 220 greeting; then EHLO
 * (HELO if EHLO is refused), per message MAIL FROM (with SIZE= when
 * offered), RCPT TO for each recipient, DATA, the spooled body sent
 * unchanged (sendfile(2) from the spool fd; with kernel TLS later
 * SSL_sendfile), ".", and QUIT at the end. With PIPELINING offered, MAIL,
 * all RCPTs and DATA go in one write (RFC 2920). Each recipient ends with a
 * status: DELIVERED, DEFERRED (4xx, timeouts, connection failures) or
 * FAILED (5xx), plus the reply text. Logs DCID events through log.h.
 * Runs on the caller's sd-event loop; never blocks.
 *
 * A job that ends cleanly leaves its connection idle in a process-wide
 * cache for a short time instead of QUIT; a later job for the same domain,
 * HELO name, TLS mode and SSL_CTX with the same target takes it (RSET,
 * then MAIL; no new connect, EHLO or handshake). Idle connections are
 * closed on expiry and when the loop that cached them is freed.
 */

#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>

#include <systemd/sd-event.h>

#include <openssl/ssl.h>

#include "config.h"
#include "resolver.h"

typedef enum DeliveryStatus {
        DELIVERY_PENDING,
        DELIVERY_DELIVERED,
        DELIVERY_DEFERRED,
        DELIVERY_FAILED,
        _DELIVERY_STATUS_MAX,
} DeliveryStatus;

typedef struct DeliveryRcpt {
        uint32_t rid;
        char *address;
        DeliveryStatus status;          /* out */
        char *reply;                    /* out: "550 5.1.1 no such user" or our reason */
} DeliveryRcpt;

typedef struct DeliveryMessage {
        uint64_t mid;
        char *sender;                   /* "" = <> */
        int data_fd;                    /* owned by the job, closed by delivery_job_free */
        uint64_t data_offset;
        uint64_t data_size;
        DeliveryRcpt *rcpts;
        size_t n_rcpts;
} DeliveryMessage;

/* What a probe (DeliveryJob.probe) found on the last target it tried. */
typedef struct DeliveryProbe {
        char *host;                     /* MX/route host name ("" for a literal) */
        char address[INET6_ADDRSTRLEN];
        uint16_t port;
        bool starttls;                  /* STARTTLS advertised in the EHLO reply */
        bool tls;                       /* the handshake completed */
        char *protocol;                 /* "TLSv1.3" */
        char *cipher;
        bool verified;                  /* chain verified (ca_file or system store) */
        char *verify_error;             /* X509 reason when not verified */
        bool name_match;                /* RFC 6125 match of the domain or the MX host */
        char **names;                   /* the peer certificate's DNS SANs (or CN) */
        char **chain;                   /* subjects as sent by the peer, leaf first */
        char *error;                    /* NULL when the probe reached QUIT as planned */
} DeliveryProbe;

typedef struct DeliveryJob {
        uint64_t dcid;
        char *domain;
        char *helo_name;                /* our host name for EHLO */
        char *maildir;                  /* set: local delivery into this directory
                                         * (local_deliver() per recipient), no SMTP */
        ResolvedTarget *targets;        /* in order */
        size_t n_targets;
        DeliveryMessage *messages;
        size_t n_messages;
        /* Messages one connection may carry in all, across the jobs
         * that reuse it (the destination's max_messages_per_connection);
         * 0: no limit. */
        uint32_t connection_message_limit;
        uint64_t connect_timeout;       /* usec */
        uint64_t command_timeout;       /* usec, RFC 5321 4.5.3.2 */
        uint64_t data_timeout;          /* usec for the reply to "." */
        void *userdata;                 /* the queue's */

        /* STARTTLS (RFC 3207) under the destination's policy; see below. */
        TlsOutbound tls_mode;
        SSL_CTX *tls_ctx;               /* a reference owned by the job; NULL with TLS_OUT_NONE */
        /* out: why the TLS policy could not be met on the last target
         * tried (NULL when it was), one of the DELIVERY_TLS_* texts, and the
         * details (peer reply or OpenSSL reason). */
        const char *tls_failure;
        char *tls_failure_details;
        /* out: what the last TLS session was (for the queue's log/stats). */
        bool tls_used, ktls_tx, ktls_rx, sendfile_used;

        /* Probe (TlsVerify): no messages (n_messages 0) and no MAIL. The
         * client connects as a delivery would (targets in order while the
         * connection or greeting fails), EHLO, STARTTLS when advertised
         * and tls_mode is not none (the caller turns none into
         * preferred-verify), handshake with the chain and name always
         * checked and recorded, EHLO again, QUIT. A failure after the
         * greeting ends the probe on that target (error says what) rather
         * than trying the next one. Results in probe_result; ktls_tx/rx
         * above as usual. probe_done, when set, is how the worker hands
         * the finished job back on the main loop instead of the queue
         * (it owns the job from then on). */
        bool probe;
        DeliveryProbe probe_result;     /* out */
        void (*probe_done)(struct DeliveryJob *job);
} DeliveryJob;

/* Why a TLS policy was not met (the appliance's reasons). */
#define DELIVERY_TLS_NO_ESMTP        "the peer does not speak ESMTP (EHLO rejected)"
#define DELIVERY_TLS_NOT_OFFERED     "STARTTLS not advertised"
#define DELIVERY_TLS_REFUSED         "STARTTLS answered with an error"
#define DELIVERY_TLS_HANDSHAKE       "TLS handshake failed"
#define DELIVERY_TLS_UNTRUSTED       "certificate not trusted"
#define DELIVERY_TLS_NAME_MISMATCH   "certificate name mismatch"

/*
 * Outbound TLS semantics (the appliance's):
 *  none              never STARTTLS.
 *  preferred         STARTTLS when offered; if STARTTLS is not offered or
 *                    is answered with an error (before a 220), go on in
 *                    clear text. After the 220 any failure ends the
 *                    attempt (recipients deferred): never a fallback.
 *  required          STARTTLS must succeed; else deferred + tls_failure.
 *  preferred-verify  as preferred, and the chain (ca_file or system store)
 *                    and name (the destination domain or the MX host
 *                    connected to; SNI always sent) are checked; an
 *                    unverified session still delivers and is logged.
 *  required-verify   delivers only over a verified session; else
 *                    deferred + tls_failure (untrusted / name mismatch).
 * A required* failure tries the next target like any connection failure.
 */

void delivery_job_free(DeliveryJob *j);

typedef void (*smtp_client_done_fn_t)(DeliveryJob *job, void *userdata);

/* Starts the delivery; done() runs on the same loop when every recipient
 * has a final status for this attempt. The job stays owned by the caller. */
int smtp_client_start(sd_event *e, DeliveryJob *job, smtp_client_done_fn_t done, void *userdata);

/* How long an idle connection is kept for the next job (usec; the default
 * is 2 s, 0 turns the cache off: every job ends with QUIT). Applies to
 * connections cached from then on. */
void smtp_client_set_cache_time_limit(uint64_t usec);
