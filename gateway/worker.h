/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * Worker threads: one per core, each with its own sd-event loop, running
 * inbound SMTP sessions and outbound delivery jobs. Nothing is shared
 * between threads except through Mailboxes (closures run on the owner's
 * loop), the thread-safe Spool, the journal, reference-counted immutable
 * Config objects, and smtp-client's cache of idle delivery connections
 * (mutex-protected; an idle connection is on no loop, and each loop closes
 * what it cached when it is freed in worker_free()).
 *
 * Main -> worker: worker_add_session(), worker_add_job(), worker_drain(),
 * worker_abort(). Worker -> main (posted to manager->mailbox):
 * manager_session_closed(), manager_message_received(), manager_job_done(),
 * manager_worker_idle() once draining and empty.
 */

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <pthread.h>
#include <sys/socket.h>

#include <openssl/ssl.h>
#include <systemd/sd-event.h>

#include "config.h"
#include "resolver.h"
#include "smtp-client.h"
#include "spool.h"
#include "util/mailbox.h"

typedef struct Manager Manager;
typedef struct SmtpServer SmtpServer;

typedef struct Worker {
        unsigned index;
        pthread_t thread;
        bool started;
        sd_event *event;
        Mailbox *mailbox;
        Mailbox *manager_mailbox;       /* the main loop's */
        Manager *manager;               /* only ever passed back through manager_mailbox */
        Spool *spool;
        Resolver *resolver;             /* reverse DNS for this loop */

        SmtpServer *sessions;           /* linked list, this thread only */
        unsigned n_jobs;                /* this thread only */
        atomic_uint n_sessions;         /* read by the main thread for balancing */
        bool draining;                  /* this thread only */
        bool reported_idle;             /* main thread only */
} Worker;

/* What a new session needs, decided by the main thread at accept. */
typedef struct SessionSetup {
        int fd;
        uint64_t icid;
        Config *config;                 /* a reference for the session's life */
        const ListenerConfig *listener;
        const MailFlowPolicy *policy;
        const SenderGroup *sender_group;
        TlsInbound tls_mode;            /* policy override, else the listener's */
        SSL_CTX *tls_ctx;               /* a reference, NULL when TLS cannot be offered */
        char match[CIDR_STRLEN];        /* the sender group source that matched */
        char listener_addr[INET6_ADDRSTRLEN];
        struct sockaddr_storage peer;
        socklen_t peerlen;
} SessionSetup;

/* One inbound session as the Diagnostics interface shows it: plain
 * copies, made on the session's worker, so it can cross to the main
 * thread. Texts are truncated to their buffers. */
#define SESSION_INFO_NAME_MAX 64        /* listener names are short identifiers */
#define SESSION_INFO_PROTOCOL_MAX 16    /* "TLSv1.3" */
#define SESSION_INFO_CIPHER_MAX 64      /* OpenSSL/IANA suite names are < 50 */
#define SESSION_INFO_CN_MAX 65          /* RFC 5280 ub-common-name 64, + NUL */

typedef struct SessionInfo {
        uint64_t icid;
        char listener[SESSION_INFO_NAME_MAX];
        const char *state;              /* static: "lookup", "command", "mail", "data",
                                         * "commit", "starttls", "handshake", "closing" */
        char peer[INET6_ADDRSTRLEN];
        uint16_t peer_port;
        char tls_protocol[SESSION_INFO_PROTOCOL_MAX];   /* "" without TLS */
        char tls_cipher[SESSION_INFO_CIPHER_MAX];
        char client_cn[SESSION_INFO_CN_MAX];            /* "" without a client certificate */
        bool ktls_tx, ktls_rx;
        /* The socket as the kernel knows it: the fd (valid on the worker
         * only, while the session lives) and its 4-tuple, which stays
         * meaningful after the hop to the main thread (sockdiag.h). */
        int fd;
        struct sockaddr_storage local;  /* ss_family AF_UNSPEC when unknown */
        struct sockaddr_storage remote;
} SessionInfo;

/* Called on the main loop with every worker's sessions (the array is
 * freed after the call returns; n may be 0). */
typedef void (*worker_sessions_fn_t)(const SessionInfo *infos, size_t n, void *userdata);

/* Main thread: asks every worker for a snapshot of its sessions and calls
 * cb once all of them answered. With no workers cb runs before this
 * returns. A worker whose loop has already exited never answers (only at
 * shutdown). Returns negative errno when nothing was asked (cb not
 * called). */
int worker_collect_sessions(Worker * const *workers, size_t n_workers, worker_sessions_fn_t cb, void *userdata);

int worker_new(Manager *m, unsigned index, Mailbox *manager_mailbox, Spool *spool,
               char * const *dns_servers, Worker **ret);
int worker_start(Worker *w);
/* Joins the thread (after it has exited) and frees. */
Worker *worker_free(Worker *w);

/* Each takes ownership of its argument (setup is freed, fd closed on error). */
int worker_add_session(Worker *w, SessionSetup *setup);
int worker_add_job(Worker *w, DeliveryJob *job);
/* Finish sessions and jobs, then report manager_worker_idle(). */
void worker_drain(Worker *w);
/* Sessions get 421 and close now; the thread's loop exits. */
void worker_abort(Worker *w);
/* The loop exits (after drain/abort). */
void worker_exit(Worker *w);

/* For sessions: tell the main thread. */
void worker_session_closed(Worker *w, SmtpServer *s);
void worker_message_received(Worker *w, const Envelope *env, uint64_t size);
/* After a session unlinked itself (drain completion check). */
void worker_session_gone(Worker *w);
