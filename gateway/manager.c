/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The Manager: configuration, listeners, admission of new connections,
 * worker threads, spool, queue, status reporting to systemd, reload and
 * graceful shutdown. Everything here runs on the main thread.
 */

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "bus.h"
#include "listener.h"
#include "log.h"
#include "manager.h"
#include "route.h"
#include "staging.h"
#include "tls-contexts.h"
#include "tls.h"
#include "util/macro.h"
#include "util/parse.h"
#include "worker.h"
#include "build-config.h"

/* How often STATUS= is refreshed for systemctl status. */
#define MANAGER_STATUS_INTERVAL (1 * USEC_PER_SEC)
/* Resolver timeout for MX and route lookups (per try, c-ares retries). */
#define MANAGER_DNS_TIMEOUT (5 * USEC_PER_SEC)
/* A sane upper bound on worker threads, whatever the CPU count says. */
#define MANAGER_WORKERS_MAX 256

/* Rate limit of TLS alerts: one per destination domain per interval. */
struct AlertMark {
        AlertMark *next;
        char *domain;
        uint64_t last_usec;             /* CLOCK_MONOTONIC */
};

struct IpCount {
        IpCount *next;
        struct sockaddr_storage addr;   /* port zeroed */
        uint32_t n;
};

/* ---- per-IP connection table ---- */

static size_t ip_key(const struct sockaddr *sa, struct sockaddr_storage *ret) {
        memset(ret, 0, sizeof *ret);
        if (sa->sa_family == AF_INET6) {
                const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *) sa;
                struct sockaddr_in6 *k = (struct sockaddr_in6 *) ret;
                k->sin6_family = AF_INET6;
                k->sin6_addr = in6->sin6_addr;
                size_t h = 0;
                for (size_t i = 0; i < 16; i++)
                        h = h * 31 + in6->sin6_addr.s6_addr[i];
                return h % MANAGER_IP_BUCKETS;
        }
        const struct sockaddr_in *in = (const struct sockaddr_in *) sa;
        struct sockaddr_in *k = (struct sockaddr_in *) ret;
        k->sin_family = AF_INET;
        k->sin_addr = in->sin_addr;
        return (size_t) (in->sin_addr.s_addr * 2654435761u) % MANAGER_IP_BUCKETS;
}

static IpCount **ip_find(Manager *m, const struct sockaddr *sa, struct sockaddr_storage *key) {
        IpCount **p = &m->ip_counts[ip_key(sa, key)];
        for (; *p; p = &(*p)->next)
                if (memcmp(&(*p)->addr, key, sizeof *key) == 0)
                        break;
        return p;
}

static uint32_t ip_count(Manager *m, const struct sockaddr *sa) {
        struct sockaddr_storage key;
        IpCount **p = ip_find(m, sa, &key);
        return *p ? (*p)->n : 0;
}

static void ip_inc(Manager *m, const struct sockaddr *sa) {
        struct sockaddr_storage key;
        IpCount **p = ip_find(m, sa, &key);

        if (!*p) {
                IpCount *c = calloc(1, sizeof *c);
                if (!c)
                        return;         /* the limit is then not enforced for this one */
                c->addr = key;
                *p = c;
        }
        (*p)->n++;
}

static void ip_dec(Manager *m, const struct sockaddr *sa) {
        struct sockaddr_storage key;
        IpCount **p = ip_find(m, sa, &key);

        if (!*p)
                return;
        if (--(*p)->n == 0) {
                IpCount *c = *p;
                *p = c->next;
                free(c);
        }
}

static uint64_t now_monotonic(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000;
}

/* ---- status ---- */

static void manager_update_status(Manager *m) {
        char status[256];

        snprintf(status, sizeof status,
                 "%s; %" PRIu64 " sessions, %zu messages queued, %zu deliveries, %" PRIu64 " received",
                 m->stopping ? "Stopping" : "Serving",
                 m->n_sessions, m->queue ? queue_n_messages(m->queue) : 0,
                 m->queue ? queue_n_active(m->queue) : 0, m->n_messages_received);
        if (m->last_status && streq(m->last_status, status))
                return;
        free(m->last_status);
        m->last_status = strdup(status);
        (void) sd_notifyf(false, "STATUS=%s", status);
}

static int on_status_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;

        manager_update_status(m);
        (void) sd_event_source_set_time(s, usec + MANAGER_STATUS_INTERVAL);
        return 0;
}

/* ---- construction ---- */

int manager_new(Manager **ret) {
        _cleanup_(manager_freep) Manager *m = NULL;
        int r;

        m = calloc(1, sizeof *m);
        if (!m)
                return -ENOMEM;
        r = sd_event_default(&m->event);
        if (r < 0)
                return r;
        (void) sd_event_set_watchdog(m->event, true);
        r = mailbox_new(m->event, &m->mailbox);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(m);
        return 0;
}

Manager *manager_free(Manager *m) {
        if (!m)
                return NULL;

        /* The bus first: its handlers and slots point into the manager. */
        bus_close(m);
        m->staging = staging_free(m->staging);

        for (size_t i = 0; i < m->n_workers; i++)
                worker_exit(m->workers[i]);
        /* Workers are joined after the spool flusher has posted its last
         * completions into their (still existing) mailboxes. */
        for (size_t i = 0; i < m->n_workers; i++)
                if (m->workers[i]->started) {
                        (void) pthread_join(m->workers[i]->thread, NULL);
                        m->workers[i]->started = false;
                }
        queue_free(m->queue);
        m->spool = spool_free(m->spool);
        for (size_t i = 0; i < m->n_workers; i++)
                worker_free(m->workers[i]);
        free(m->workers);

        while (m->listeners) {
                Listener *l = m->listeners;
                m->listeners = l->next;
                listener_free(l);
        }
        for (size_t i = 0; i < MANAGER_IP_BUCKETS; i++)
                while (m->ip_counts[i]) {
                        IpCount *c = m->ip_counts[i];
                        m->ip_counts[i] = c->next;
                        free(c);
                }
        resolver_free(m->resolver);
        tls_contexts_free(m->tls);
        certstore_free(m->certstore);
        while (m->alerts) {
                AlertMark *a = m->alerts;
                m->alerts = a->next;
                free(a->domain);
                free(a);
        }
        sd_event_source_disable_unref(m->status_timer);
        sd_event_source_disable_unref(m->shutdown_timer);
        mailbox_free(m->mailbox);
        config_unref(m->config);
        free(m->config_path);
        free(m->last_status);
        sd_event_unref(m->event);
        free(m);
        return NULL;
}

int manager_load_config(Manager *m, const char *path) {
        _cleanup_free_ char *error = NULL;
        Config *c = NULL;
        int r;

        if (path) {
                r = config_load(path, &c, &error);
                if (r < 0) {
                        /* At start the administrator is looking at the
                         * terminal (or systemd's capture of stderr), not
                         * necessarily at our journal entries. */
                        fprintf(stderr, "%s\ntlsgwd: configuration %s is not valid, refusing to start.\n",
                                error ?: strerror(-r), path);
                        return r;
                }
                m->config_path = strdup(path);
                if (!m->config_path) {
                        config_unref(c);
                        return -ENOMEM;
                }
        } else {
                r = config_new_default(NULL, &c);
                if (r < 0)
                        return log_error_errno(r, "Cannot build the built-in configuration: %m");
        }
        config_unref(m->config);
        m->config = c;
        return 0;
}

/* ---- listeners ---- */

static Listener *manager_find_listener(Manager *m, const char *name) {
        for (Listener *l = m->listeners; l; l = l->next)
                if (streq(l->name, name))
                        return l;
        return NULL;
}

static int manager_open_listener(Manager *m, const ListenerConfig *lc, int fd) {
        Listener *l;
        int r;

        r = listener_new(m, lc, fd, &l);
        if (r < 0)
                return log_error_errno(r, "Listener %s: cannot listen on %s port %u: %m",
                                       lc->name, lc->address, lc->port);
        l->next = m->listeners;
        m->listeners = l;
        log_info("Listener %s accepting on %s port %u%s", l->name, l->address, l->port,
                 l->from_systemd ? " (socket activation)" : "");
        return 0;
}

/* Matches systemd's fds to listeners by FileDescriptorName: systemd does
 * not promise that fds arrive in declaration order. */
static int manager_open_listeners(Manager *m) {
        _cleanup_strv_free_ char **names = NULL;
        int n, r;

        n = sd_listen_fds_with_names(true, &names);
        if (n < 0)
                return log_error_errno(n, "Cannot read the sockets passed by systemd: %m");

        for (int i = 0; i < n; i++) {
                int fd = SD_LISTEN_FDS_START + i;
                const char *name = names && names[i] ? names[i] : "";
                const ListenerConfig *lc = config_find_listener(m->config, name);

                if (!lc) {
                        log_warning("Socket passed by systemd with name '%s' matches no configured listener; closing it.", name);
                        safe_close(fd);
                        continue;
                }
                if (manager_find_listener(m, name)) {
                        log_warning("Two sockets passed for listener %s; closing the second.", name);
                        safe_close(fd);
                        continue;
                }
                r = manager_open_listener(m, lc, fd);
                if (r < 0) {
                        safe_close(fd);
                        return r;
                }
        }

        for (size_t i = 0; i < m->config->n_listeners; i++) {
                const ListenerConfig *lc = &m->config->listeners[i];
                if (manager_find_listener(m, lc->name))
                        continue;
                r = manager_open_listener(m, lc, -EBADF);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* ---- admission ---- */

void manager_new_connection(Manager *m, Listener *l, int fd, const struct sockaddr *peer, socklen_t peerlen) {
        const ListenerConfig *lc = l->config;
        const SenderGroup *sg;
        const MailFlowPolicy *policy;
        SessionSetup *setup;
        char ip[INET6_ADDRSTRLEN], match[CIDR_STRLEN] = "";
        uint64_t icid;
        uint32_t per_ip;
        Worker *w;

        sockaddr_to_string(peer, ip, sizeof ip);
        icid = spool_next_id(m->spool, SPOOL_ID_ICID);

        if (m->stopping) {
                safe_close(fd);
                return;
        }

        sg = config_match_sender_group(m->config, peer);
        policy = sg ? sg->policy : lc->default_policy;
        if (sg)
                for (size_t i = 0; i < sg->n_sources; i++)
                        if (cidr_match(&sg->sources[i], peer)) {
                                cidr_to_string(&sg->sources[i], match, sizeof match);
                                break;
                        }

        if (policy->action == POLICY_TCP_REFUSE) {
                log_icid_new(icid, lc->name, l->local, ip, sockaddr_port(peer), NULL, false);
                log_icid_policy(icid, "TCPREFUSE", sg ? sg->name : NULL, policy->name, sg ? match : NULL);
                log_icid_close(icid, "tcp-refuse");
                safe_close(fd);
                return;
        }

        /* RFC 5321 3.8 / 4.5.3.2: refuse with 421 when overloaded. The reply
         * is one short line written straight to a fresh socket. */
        per_ip = policy->max_connections_per_ip ?: lc->max_connections_per_ip;
        if (l->n_sessions >= lc->max_connections || (per_ip > 0 && ip_count(m, peer) >= per_ip)) {
                bool total = l->n_sessions >= lc->max_connections;
                char line[512];
                int n;

                if (total)
                        n = snprintf(line, sizeof line, "421 4.7.0 %s Error: too many connections\r\n", lc->hostname);
                else
                        n = snprintf(line, sizeof line, "421 4.7.0 %s Error: too many connections from %s\r\n",
                                     lc->hostname, ip);
                (void) !write(fd, line, (size_t) MIN(n, (int) sizeof line - 1));
                log_icid_refused(icid, lc->name, ip, total ? "too many connections" : "too many connections from this address");
                safe_close(fd);
                return;
        }

        setup = calloc(1, sizeof *setup);
        if (!setup) {
                log_error("ICID %" PRIu64 ": out of memory", icid);
                safe_close(fd);
                return;
        }
        *setup = (SessionSetup) {
                .fd = fd,
                .icid = icid,
                .config = config_ref(m->config),
                .listener = lc,
                .policy = policy,
                .sender_group = sg,
                .tls_mode = policy->tls >= 0 ? (TlsInbound) policy->tls : lc->tls,
                .tls_ctx = tls_contexts_listener(m->tls, m->config, lc),
                .peerlen = peerlen,
        };
        memcpy(&setup->peer, peer, MIN((size_t) peerlen, sizeof setup->peer));
        snprintf(setup->match, sizeof setup->match, "%s", match);
        snprintf(setup->listener_addr, sizeof setup->listener_addr, "%s", l->local);

        /* The least loaded worker; ties go round-robin. */
        w = m->workers[m->next_worker++ % m->n_workers];
        for (size_t i = 0; i < m->n_workers; i++)
                if (atomic_load(&m->workers[i]->n_sessions) < atomic_load(&w->n_sessions))
                        w = m->workers[i];

        if (worker_add_session(w, setup) < 0) {
                log_error("ICID %" PRIu64 ": cannot hand the connection to a worker", icid);
                return;
        }
        l->n_sessions++;
        ip_inc(m, peer);
        m->n_sessions++;
        m->n_sessions_total++;
}

void manager_session_closed(Manager *m, const char *listener, const struct sockaddr_storage *peer) {
        Listener *l = manager_find_listener(m, listener);

        if (l && l->n_sessions > 0)
                l->n_sessions--;
        ip_dec(m, (const struct sockaddr *) peer);
        if (m->n_sessions > 0)
                m->n_sessions--;
}

void manager_message_received(Manager *m, Envelope *env, uint64_t size) {
        int r;

        m->n_messages_received++;
        r = queue_add(m->queue, env, size);
        if (r < 0)
                log_error_errno(r, "MID %" PRIu64 ": cannot queue the message (it stays in the spool): %m", env->mid);
}

/* ---- delivery ---- */

static void manager_dispatch(DeliveryJob *job, void *userdata) {
        Manager *m = userdata;
        Worker *w = m->workers[job->dcid % m->n_workers];
        const DestinationConfig *d;
        int r;

        if (!job->maildir) {
                d = config_find_destination(m->config, job->domain);
                job->connection_message_limit = d->max_messages_per_connection;
                job->tls_mode = d->tls;
                job->tls_ctx = tls_contexts_destination(m->tls, m->config, d);
                if (!job->tls_ctx)
                        job->tls_mode = TLS_OUT_NONE;
        }

        r = worker_add_job(w, job);
        if (r < 0) {
                log_error_errno(r, "DCID %" PRIu64 ": cannot hand the delivery to a worker: %m", job->dcid);
                for (size_t i = 0; i < job->n_messages; i++)
                        for (size_t j = 0; j < job->messages[i].n_rcpts; j++) {
                                DeliveryRcpt *rc = &job->messages[i].rcpts[j];
                                rc->status = DELIVERY_DEFERRED;
                                free(rc->reply);
                                rc->reply = strdup("451 4.3.0 internal error: no worker");
                        }
                queue_job_done(m->queue, job);
        }
}

/* The alert message, in wire form (CRLF; no line starts with "."). */
static char *alert_text(Manager *m, const DeliveryJob *job, size_t *ret_len) {
        char date[64], *text = NULL;
        time_t now = time(NULL);
        struct tm tm;
        int n;

        gmtime_r(&now, &tm);
        strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S +0000", &tm);
        n = asprintf(&text,
                     "From: tlsgw on %1$s <MAILER-DAEMON@%1$s>\r\n"
                     "To: tlsgw administrators\r\n"
                     "Subject: [tlsgw alert] Required TLS delivery to %2$s failed\r\n"
                     "Date: %3$s\r\n"
                     "Auto-Submitted: auto-generated\r\n"
                     "MIME-Version: 1.0\r\n"
                     "Content-Type: text/plain; charset=us-ascii\r\n"
                     "\r\n"
                     "The destination control for %2$s requires TLS (%4$s),\r\n"
                     "and delivery DCID %5$" PRIu64 " could not meet it.\r\n"
                     "\r\n"
                     "Domain: %2$s\r\n"
                     "Reason: %6$s\r\n"
                     "Details: %7$s\r\n"
                     "\r\n"
                     "The messages stay queued and are retried.\r\n"
                     "At most one alert per domain is sent every %8$" PRIu64 " seconds.\r\n",
                     m->config->hostname, job->domain, date, tls_outbound_to_string(job->tls_mode),
                     job->dcid, job->tls_failure, job->tls_failure_details ?: "-",
                     m->config->tls_alert_interval / USEC_PER_SEC);
        if (n < 0)
                return NULL;
        /* Details come from the peer: keep them on one printable line. */
        for (char *p = text; *p; p++)
                if ((unsigned char) *p >= 0x7f || ((unsigned char) *p < ' ' && *p != '\r' && *p != '\n'))
                        *p = '?';
        *ret_len = (size_t) n;
        return text;
}

static void manager_tls_alert(Manager *m, const DeliveryJob *job) {
        _cleanup_free_ char *text = NULL;
        uint64_t now, mid = 0;
        AlertMark *a;
        size_t len = 0;
        int r;

        if (!m->config->tls_alert_enabled)
                return;
        now = now_monotonic();
        for (a = m->alerts; a; a = a->next)
                if (streq(a->domain, job->domain))
                        break;
        if (a && now - a->last_usec < m->config->tls_alert_interval)
                return;
        if (!a) {
                a = calloc(1, sizeof *a);
                if (!a || !(a->domain = strdup(job->domain))) {
                        free(a);
                        return;
                }
                a->next = m->alerts;
                m->alerts = a;
        }
        a->last_usec = now;

        if (strv_length(m->config->alert_recipients) > 0) {
                text = alert_text(m, job, &len);
                if (text) {
                        r = queue_submit(m->queue, "", m->config->alert_recipients, text, len, 0, "alert", &mid);
                        if (r < 0)
                                log_error_errno(r, "Cannot queue the TLS alert for %s: %m", job->domain);
                }
        }
        log_tls_alert(job->domain, job->tls_failure, job->tls_failure_details, mid);
}

void manager_job_done(Manager *m, DeliveryJob *job) {
        if (job->tls_failure &&
            (job->tls_mode == TLS_OUT_REQUIRED || job->tls_mode == TLS_OUT_REQUIRED_VERIFY))
                manager_tls_alert(m, job);
        queue_job_done(m->queue, job);
}

/* ---- start, reload, stop ---- */

static void manager_warn_demo(Manager *m, const Config *c, const TlsContexts *t) {
        for (size_t i = 0; i < c->n_listeners; i++)
                if (t->listener_demo[i] && c->listeners[i].tls != TLS_IN_OFF)
                        log_warning("Listener %s uses the demo certificate (CN %s): it cannot give a verifiable "
                                    "connection; install a certificate for this listener.",
                                    c->listeners[i].name, c->hostname);
}

static int manager_open_tls(Manager *m) {
        _cleanup_free_ char *dir = NULL, *error = NULL;
        int r;

        if (asprintf(&dir, "%s/certs", m->config->state_dir) < 0)
                return -ENOMEM;
        r = certstore_open(dir, &m->certstore);
        if (r < 0)
                return log_error_errno(r, "Cannot open the certificate store %s: %m", dir);

        tls_set_ticket_rotation(m->config->tls_ticket_rotation);
        r = tls_contexts_build(m->config, m->certstore, &m->tls, &error);
        if (r < 0) {
                fprintf(stderr, "tlsgwd: TLS setup failed: %s\n", error ?: strerror(-r));
                return log_error_errno(r, "TLS setup failed: %s", error ?: "see above");
        }
        manager_warn_demo(m, m->config, m->tls);
        return 0;
}

static unsigned manager_worker_count(const Config *c) {
        long n = c->workers > 0 ? (long) c->workers : sysconf(_SC_NPROCESSORS_ONLN);
        return (unsigned) CLAMP(n, 1L, (long) MANAGER_WORKERS_MAX);
}

static int on_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        Manager *m = userdata;

        if (si->ssi_signo == SIGHUP)
                (void) manager_reload(m);
        else
                manager_stop(m);
        return 0;
}

int manager_start(Manager *m) {
        _cleanup_free_ char *spool_dir = NULL;
        int r;

        assert(m->config);

        if (asprintf(&spool_dir, "%s/spool", m->config->state_dir) < 0)
                return -ENOMEM;
        r = spool_open(spool_dir, &m->spool);
        if (r < 0)
                return log_error_errno(r, "Cannot open the spool %s: %m", spool_dir);

        r = manager_open_tls(m);
        if (r < 0)
                return r;

        r = resolver_new(m->event, m->config->dns_servers, MANAGER_DNS_TIMEOUT, &m->resolver);
        if (r < 0)
                return log_error_errno(r, "Cannot set up DNS resolution: %m");

        r = queue_new(m->event, m->mailbox, m->spool, m->resolver, manager_dispatch, m, &m->queue);
        if (r < 0)
                return log_error_errno(r, "Cannot set up the queue: %m");
        queue_set_config(m->queue, m->config);

        m->n_workers = manager_worker_count(m->config);
        m->workers = calloc(m->n_workers, sizeof *m->workers);
        if (!m->workers)
                return -ENOMEM;
        for (size_t i = 0; i < m->n_workers; i++) {
                r = worker_new(m, (unsigned) i, m->mailbox, m->spool, m->config->dns_servers, &m->workers[i]);
                if (r < 0)
                        return log_error_errno(r, "Cannot create worker %zu: %m", i);
                r = worker_start(m->workers[i]);
                if (r < 0)
                        return log_error_errno(r, "Cannot start worker %zu: %m", i);
        }

        r = queue_recover(m->queue);
        if (r < 0)
                return log_error_errno(r, "Cannot recover the spool %s: %m", spool_dir);

        r = manager_open_listeners(m);
        if (r < 0)
                return r;

        r = sd_event_add_signal(m->event, NULL, SIGTERM, on_signal, m);
        if (r >= 0)
                r = sd_event_add_signal(m->event, NULL, SIGINT, on_signal, m);
        if (r >= 0)
                r = sd_event_add_signal(m->event, NULL, SIGHUP, on_signal, m);
        if (r < 0)
                return log_error_errno(r, "Cannot watch signals: %m");

        r = sd_event_add_time_relative(m->event, &m->status_timer, CLOCK_MONOTONIC,
                                       MANAGER_STATUS_INTERVAL, 0, on_status_timer, m);
        if (r < 0)
                return r;
        (void) sd_event_source_set_enabled(m->status_timer, SD_EVENT_ON);

        r = staging_new(m, &m->staging);
        if (r < 0)
                return log_error_errno(r, "Cannot set up staged configuration changes (history in %s/history): %m",
                                       m->config->state_dir);
        /* Last: once the name is ours, gwctl may ask for anything above. */
        r = bus_open(m);
        if (r < 0)
                return r;

        log_info("tlsgwd %s started: %zu listeners, %zu workers, spool %s, %zu messages recovered",
                 PACKAGE_VERSION, m->config->n_listeners, m->n_workers, spool_dir, queue_n_messages(m->queue));
        manager_update_status(m);
        (void) sd_notify(false, "READY=1");
        return 0;
}

int manager_run(Manager *m) {
        return sd_event_loop(m->event);
}

/* ---- applying a configuration ---- */

typedef struct ListenerPlan {
        const ListenerConfig *lc;
        Listener *keep;                 /* an existing listener that stays */
        Listener *fresh;                /* bound for the new configuration */
        bool late;                      /* its address is held by a listener that goes */
} ListenerPlan;

struct ConfigPlan {
        Config *config;
        TlsContexts *tls;
        ListenerPlan *listeners;
        size_t n_listeners;
};

void manager_plan_free(ConfigPlan *p) {
        if (!p)
                return;
        for (size_t i = 0; i < p->n_listeners; i++)
                listener_free(p->listeners[i].fresh);
        free(p->listeners);
        tls_contexts_free(p->tls);
        config_unref(p->config);
        free(p);
}

static bool listener_port_held(Manager *m, const ListenerConfig *lc) {
        for (Listener *l = m->listeners; l; l = l->next)
                if (l->port == lc->port)
                        return true;
        return false;
}

int manager_plan_config(Manager *m, Config *c, ConfigPlan **ret, char **ret_error) {
        ConfigPlan *p;
        int r;

        p = calloc(1, sizeof *p);
        if (!p)
                return -ENOMEM;
        p->config = config_ref(c);

        /* Certificates are read now: a missing or broken one refuses the
         * whole configuration. */
        r = tls_contexts_build(c, m->certstore, &p->tls, ret_error);
        if (r < 0)
                goto fail;

        p->listeners = calloc(MAX(c->n_listeners, (size_t) 1), sizeof *p->listeners);
        if (!p->listeners) {
                r = -ENOMEM;
                goto fail;
        }
        p->n_listeners = c->n_listeners;
        for (size_t i = 0; i < c->n_listeners; i++) {
                const ListenerConfig *lc = &c->listeners[i];
                Listener *l = manager_find_listener(m, lc->name);
                ListenerPlan *lp = &p->listeners[i];

                lp->lc = lc;
                if (l && (l->from_systemd || (streq(l->address, lc->address) && l->port == lc->port))) {
                        lp->keep = l;
                        continue;
                }
                /* Bound before anything changes; no accept can run before
                 * the swap since we do not return to the loop in between. */
                r = listener_new(m, lc, -EBADF, &lp->fresh);
                if (r == -EADDRINUSE && listener_port_held(m, lc)) {
                        /* e.g. 0.0.0.0:25 -> 192.0.2.1:25: only after the old one closes. */
                        lp->late = true;
                        continue;
                }
                if (r < 0) {
                        if (ret_error && asprintf(ret_error, "listener '%s': cannot listen on %s port %u: %s",
                                                  lc->name, lc->address, lc->port, strerror(-r)) < 0)
                                *ret_error = NULL;
                        goto fail;
                }
        }
        *ret = p;
        return 0;
fail:
        manager_plan_free(p);
        return r;
}

void manager_plan_apply(Manager *m, ConfigPlan *p) {
        Listener *list = NULL;

        /* Listeners that stay or are new, in configuration order. */
        for (size_t i = p->n_listeners; i > 0; i--) {
                ListenerPlan *lp = &p->listeners[i - 1];
                Listener *l = lp->keep ?: lp->fresh;

                if (!l)
                        continue;
                if (lp->keep) {
                        Listener **q = &m->listeners;
                        while (*q && *q != l)
                                q = &(*q)->next;
                        if (*q)
                                *q = l->next;
                }
                l->config = lp->lc;
                l->next = list;
                list = l;
                lp->fresh = NULL;
        }
        /* What is left was removed or rebound. */
        while (m->listeners) {
                Listener *l = m->listeners;
                m->listeners = l->next;
                if (!config_find_listener(p->config, l->name))
                        log_info("Listener %s removed by configuration.", l->name);
                listener_free(l);
        }
        m->listeners = list;
        for (size_t i = 0; i < p->n_listeners; i++) {
                ListenerPlan *lp = &p->listeners[i];
                Listener *l;
                int r;

                if (!lp->late)
                        continue;
                r = listener_new(m, lp->lc, -EBADF, &l);
                if (r < 0) {
                        log_error_errno(r, "Listener %s: cannot listen on %s port %u: %m",
                                        lp->lc->name, lp->lc->address, lp->lc->port);
                        continue;
                }
                l->next = m->listeners;
                m->listeners = l;
        }
        queue_set_config(m->queue, p->config);
        config_unref(m->config);
        m->config = TAKE_PTR(p->config);
        tls_contexts_free(m->tls);
        m->tls = TAKE_PTR(p->tls);
        tls_set_ticket_rotation(m->config->tls_ticket_rotation);
        manager_warn_demo(m, m->config, m->tls);
        manager_plan_free(p);
}

int manager_apply_config(Manager *m, Config *c, char **ret_error) {
        ConfigPlan *p;
        int r;

        r = manager_plan_config(m, c, &p, ret_error);
        if (r < 0)
                return r;
        manager_plan_apply(m, p);
        return 0;
}

int manager_refresh_tls(Manager *m, char **ret_error) {
        TlsContexts *tls;
        int r;

        r = tls_contexts_build(m->config, m->certstore, &tls, ret_error);
        if (r < 0)
                return r;
        tls_contexts_free(m->tls);
        m->tls = tls;
        manager_warn_demo(m, m->config, m->tls);
        return 0;
}

static void manager_set_reloading(Manager *m, bool b) {
        m->reloading = b;
        bus_manager_emit_changed(m, "State");
}

int manager_reload(Manager *m) {
        return manager_reload_config(m, NULL);
}

int manager_reload_config(Manager *m, char **ret_error) {
        _cleanup_free_ char *error = NULL;
        Config *c = NULL;
        int r;

        if (!m->config_path) {
                log_info("Reload requested; running on built-in defaults, nothing to re-read.");
                return 0;
        }

        (void) sd_notify(false, "RELOADING=1");
        manager_set_reloading(m, true);
        r = config_load(m->config_path, &c, &error);
        if (r < 0) {
                if (error)
                        log_error("%s", error);
                log_error_errno(r, "Reload refused: %s is not valid; the running configuration stays.", m->config_path);
                if (ret_error && asprintf(ret_error, "Reload refused, the running configuration stays: %s",
                                          error ?: strerror(-r)) < 0)
                        *ret_error = NULL;
                manager_set_reloading(m, false);
                (void) sd_notify(false, "READY=1");
                return r;
        }
        if (manager_worker_count(c) != m->n_workers || !streq(c->state_dir, m->config->state_dir))
                log_warning("Reload: workers and state_directory changes take effect at the next restart.");

        /* Certificates are re-read too: a replaced certificate takes effect
         * for new handshakes, established sessions keep their context. */
        r = manager_apply_config(m, c, &error);
        config_unref(c);
        if (r < 0) {
                log_error_errno(r, "Reload refused: %s; the running configuration stays.", error ?: "cannot apply it");
                if (ret_error && asprintf(ret_error, "Reload refused, the running configuration stays: %s",
                                          error ?: strerror(-r)) < 0)
                        *ret_error = NULL;
        } else {
                log_info("Configuration %s reloaded.", m->config_path);
                /* The file is the running document again (hand edits
                 * included); a pending change set stays as it is. */
                if (m->staging && staging_reloaded(m->staging) < 0)
                        log_warning("Reload: the staged-changes view of the configuration could not be refreshed.");
                bus_manager_emit_changed(m, "Listeners");
                bus_objects_config_changed(m);
                bus_cert_emit_changed(m, NULL);         /* UsedBy may have changed */
        }
        manager_set_reloading(m, false);
        (void) sd_notify(false, "READY=1");
        return r;
}

static int on_shutdown_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;

        log_warning("Shutdown timeout: closing %" PRIu64 " remaining sessions.", m->n_sessions);
        m->aborting = true;
        for (size_t i = 0; i < m->n_workers; i++)
                worker_abort(m->workers[i]);
        (void) sd_event_exit(m->event, 0);
        return 0;
}

void manager_stop(Manager *m) {
        if (m->stopping)
                return;
        m->stopping = true;
        (void) sd_notify(false, "STOPPING=1");
        bus_manager_emit_changed(m, "State");
        log_info("Stopping: no new connections, draining %" PRIu64 " sessions.", m->n_sessions);

        for (Listener *l = m->listeners; l; l = l->next)
                listener_disable(l);
        queue_stop(m->queue);
        for (size_t i = 0; i < m->n_workers; i++)
                worker_drain(m->workers[i]);
        manager_update_status(m);

        (void) sd_event_add_time_relative(m->event, &m->shutdown_timer, CLOCK_MONOTONIC,
                                          m->config->shutdown_timeout, 0, on_shutdown_timeout, m);
}

void manager_worker_idle(Manager *m, Worker *w) {
        bool all = true;

        w->reported_idle = true;
        for (size_t i = 0; i < m->n_workers; i++)
                if (!m->workers[i]->reported_idle)
                        all = false;
        if (all && m->stopping && queue_n_active(m->queue) == 0)
                (void) sd_event_exit(m->event, 0);
}
