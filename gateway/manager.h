/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * Manager: owns everything of the daemon on the main thread: the event
 * loop, the current Config, the listeners, connection admission (sender
 * groups, connection limits), the worker threads, the spool, the queue and
 * the resolver used for routing. Workers never touch the Manager directly;
 * they post closures to its Mailbox (see worker.h for the protocol).
 */

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "certstore.h"
#include "config.h"
#include "queue.h"
#include "resolver.h"
#include "spool.h"
#include "util/mailbox.h"

typedef struct Listener Listener;
typedef struct Worker Worker;
typedef struct IpCount IpCount;
typedef struct TlsContexts TlsContexts;
typedef struct AlertMark AlertMark;
typedef struct Staging Staging;

/* Buckets of the per-client-IP connection table (chained). */
#define MANAGER_IP_BUCKETS 1024

typedef struct Manager {
        sd_event *event;
        Mailbox *mailbox;
        Config *config;
        char *config_path;              /* NULL: built-in defaults */

        Spool *spool;
        Resolver *resolver;
        Queue *queue;
        CertStore *certstore;
        TlsContexts *tls;               /* contexts of the current config */
        AlertMark *alerts;              /* last TLS alert per destination domain */

        Worker **workers;
        size_t n_workers;
        size_t next_worker;

        Listener *listeners;            /* linked list */

        IpCount *ip_counts[MANAGER_IP_BUCKETS];
        uint64_t n_sessions;            /* open inbound sessions */
        uint64_t n_sessions_total;
        uint64_t n_messages_received;

        sd_event_source *status_timer;
        sd_event_source *shutdown_timer;

        sd_bus *bus;                    /* NULL: no system bus (mail is relayed anyway) */
        Staging *staging;               /* pending change set, history */
        uint32_t config_version;        /* history version running, 0 = not a committed one */

        bool reloading;                 /* inside manager_reload(), for the State property */
        bool stopping;
        bool aborting;
        char *last_status;
} Manager;

int manager_new(Manager **ret);
Manager *manager_free(Manager *m);
static inline void manager_freep(Manager **m) {
        if (*m)
                manager_free(*m);
}

/* Loads the config (path NULL = built-in defaults). */
int manager_load_config(Manager *m, const char *path);
/* Opens the spool, recovers the queue, starts workers and listeners
 * (taking systemd's fds by name). */
int manager_start(Manager *m);
int manager_run(Manager *m);

/* Applying a validated configuration live, all or nothing. Planning builds
 * every TLS context and binds every new listening socket and changes
 * nothing else; applying swaps the plan in (it cannot fail: a listener
 * whose address was held by one that goes is bound after it closed, and
 * only that is logged if it fails). Sessions keep the configuration and
 * TLS context they started with. */
typedef struct ConfigPlan ConfigPlan;
int manager_plan_config(Manager *m, Config *c, ConfigPlan **ret, char **ret_error);
void manager_plan_apply(Manager *m, ConfigPlan *p);     /* consumes p */
void manager_plan_free(ConfigPlan *p);
int manager_apply_config(Manager *m, Config *c, char **ret_error);
/* Certificates changed in the store: new handshakes use them at once. */
int manager_refresh_tls(Manager *m, char **ret_error);

/* SIGHUP: re-read, validate, apply; a bad file keeps the running config. */
int manager_reload(Manager *m);
/* The same, for the bus: *ret_error (may be NULL) says why it was refused. */
int manager_reload_config(Manager *m, char **ret_error);
/* SIGTERM: stop accepting, drain sessions within shutdown_timeout. */
void manager_stop(Manager *m);

/* From listener.c, on the main loop: a new inbound connection. Takes fd. */
void manager_new_connection(Manager *m, Listener *l, int fd, const struct sockaddr *peer, socklen_t peerlen);

/* Posted by workers (through m->mailbox) — see worker.h. */
void manager_session_closed(Manager *m, const char *listener, const struct sockaddr_storage *peer);
void manager_message_received(Manager *m, Envelope *env, uint64_t size);
void manager_job_done(Manager *m, DeliveryJob *job);
void manager_worker_idle(Manager *m, Worker *w);
