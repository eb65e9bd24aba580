/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * org.tlsgw.Gateway1.Queue and org.tlsgw.Gateway1.Diagnostics on
 * /org/tlsgw/Gateway1 (docs/dbus-api.md).
 *
 * Queue: thin handlers over the queue's administration calls (queue.h).
 * ShowMessage returns a{sv} with the keys mid (t), sender (s), state (s),
 * arrival (t, usec since the epoch), size (t) and recipients
 * (a(ssuts): address, state, attempts, next attempt in usec since the
 * epoch or 0, last reply). FlushQueue and DeleteMessage are admin only.
 *
 * Diagnostics: ListConnections asks every worker for a snapshot of its
 * sessions (worker_collect_sessions()) and answers asynchronously once all
 * of them did; the kernel's ULP view of each socket is read over
 * inet_diag by its 4-tuple (sockdiag.h). TlsVerify (admin only: it makes
 * network connections on the gateway's behalf) resolves the route on the
 * main loop as the queue does and runs a probe DeliveryJob on a worker
 * (smtp-client.h), answering when it comes back.
 *
 * Every string that reaches the bus goes through bus_text(): D-Bus wants
 * valid UTF-8, and peers' replies and certificate names are untrusted.
 * Handlers return negative errno or set a named error; they log only at
 * debug level, except the admin actions, which are logged once.
 */

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <systemd/sd-bus.h>

#include "bus.h"
#include "log.h"
#include "manager.h"
#include "queue.h"
#include "route.h"
#include "smtp-client.h"
#include "sockdiag.h"
#include "tls-contexts.h"
#include "tls.h"
#include "util/macro.h"
#include "util/parse.h"
#include "worker.h"

/* Longest text we hand to the bus from untrusted sources: a reply line
 * (RFC 5321 4.5.3.1.5, 512 octets) with room to spare. */
#define BUS_TEXT_MAX 1024

/* "2025-01-31T12:00:00Z" (RFC 3339 5.6, UTC) */
#define BUS_TIME_MAX 32

/* ---- helpers ---- */

/* A copy that is valid UTF-8 without control characters: invalid bytes
 * and controls become '?'. Truncated at BUS_TEXT_MAX. */
static char *bus_text(const char *s) {
        size_t n = strnlen(s ?: "", BUS_TEXT_MAX);
        const unsigned char *p = (const unsigned char *) (s ?: "");
        char *out = malloc(n + 1), *o = out;
        size_t i = 0;

        if (!out)
                return NULL;
        while (i < n) {
                unsigned char c = p[i];
                size_t len = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 :
                             (c & 0xf8) == 0xf0 ? 4 : 0;
                bool valid = len > 0 && i + len <= n;

                if (len == 1)
                        valid = c >= 0x20 && c != 0x7f;
                for (size_t k = 1; valid && k < len; k++)
                        if ((p[i + k] & 0xc0) != 0x80)
                                valid = false;
                /* No overlong forms (RFC 3629 3) or surrogates. */
                if (valid && len == 2 && c < 0xc2)
                        valid = false;
                if (valid && len == 3 && ((c == 0xe0 && p[i + 1] < 0xa0) || (c == 0xed && p[i + 1] >= 0xa0)))
                        valid = false;
                if (valid && len == 4 && ((c == 0xf0 && p[i + 1] < 0x90) || c > 0xf4 ||
                                          (c == 0xf4 && p[i + 1] >= 0x90)))
                        valid = false;
                if (!valid) {
                        *o++ = '?';
                        i++;
                        continue;
                }
                memcpy(o, p + i, len);
                o += len;
                i += len;
        }
        *o = '\0';
        return out;
}

static int append_text(sd_bus_message *reply, const char *s) {
        _cleanup_free_ char *t = bus_text(s);

        if (!t)
                return -ENOMEM;
        return sd_bus_message_append_basic(reply, 's', t);
}

static uint64_t now_realtime(void) {
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000;
}

static void format_time(uint64_t usec, char *buf, size_t len) {
        time_t t = (time_t) (usec / USEC_PER_SEC);
        struct tm tm;

        if (!gmtime_r(&t, &tm) || strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
                snprintf(buf, len, "@%" PRIu64, usec / USEC_PER_SEC);
}

/* ---- org.tlsgw.Gateway1.Queue ---- */

typedef struct MessageSummary {
        const char *state;              /* "active", "deferred", "queued", "done" */
        uint32_t n_pending;             /* recipients not final */
        char next[BUS_TIME_MAX];
        const char *last_reply;
} MessageSummary;

static void message_summary(const QueueMessageInfo *info, uint64_t now, MessageSummary *ret) {
        uint64_t next = UINT64_MAX;
        bool active = false, tried = false;

        *ret = (MessageSummary) { .state = "done", .last_reply = "" };
        for (size_t i = 0; i < info->n_rcpts; i++) {
                const QueueRcptInfo *r = &info->rcpts[i];

                if (streq(r->state, "active"))
                        active = true;
                else if (!streq(r->state, "pending"))
                        continue;
                ret->n_pending++;
                if (r->attempts > 0)
                        tried = true;
                if (streq(r->state, "pending") && r->next_attempt < next)
                        next = r->next_attempt;
                if (isempty(ret->last_reply) && r->last_reply)
                        ret->last_reply = r->last_reply;
        }
        if (active) {
                ret->state = "active";
                snprintf(ret->next, sizeof ret->next, "in progress");
        } else if (ret->n_pending > 0) {
                ret->state = tried ? "deferred" : "queued";
                if (next <= now)
                        snprintf(ret->next, sizeof ret->next, "now");
                else
                        format_time(next, ret->next, sizeof ret->next);
        }
}

static int list_one(const QueueMessageInfo *info, void *userdata) {
        sd_bus_message *reply = userdata;
        MessageSummary sum;
        int r;

        message_summary(info, now_realtime(), &sum);
        r = sd_bus_message_open_container(reply, 'r', "tsstuss");
        if (r < 0)
                return r;
        r = sd_bus_message_append(reply, "t", info->mid);
        if (r >= 0)
                r = append_text(reply, info->sender);
        if (r >= 0)
                r = sd_bus_message_append(reply, "stu", sum.state, info->arrival, sum.n_pending);
        if (r >= 0)
                r = append_text(reply, sum.next);
        if (r >= 0)
                r = append_text(reply, sum.last_reply);
        if (r < 0)
                return r;
        return sd_bus_message_close_container(reply);
}

static int method_list_queue(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        Manager *m = userdata;
        int r;

        if (!m->queue)
                return sd_bus_error_set(error, BUS_ERROR_FAILED, "The queue is not running.");
        r = sd_bus_message_new_method_return(msg, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(reply, 'a', "(tsstuss)");
        if (r < 0)
                return r;
        r = queue_foreach(m->queue, list_one, reply);
        if (r < 0)
                return r;
        r = sd_bus_message_close_container(reply);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

static int show_one(const QueueMessageInfo *info, void *userdata) {
        sd_bus_message *reply = userdata;
        MessageSummary sum;
        int r;

        message_summary(info, now_realtime(), &sum);
        r = sd_bus_message_open_container(reply, 'a', "{sv}");
        if (r < 0)
                return r;
        r = sd_bus_message_append(reply, "{sv}", "mid", "t", info->mid);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'e', "sv");
        if (r >= 0)
                r = sd_bus_message_append(reply, "s", "sender");
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'v', "s");
        if (r >= 0)
                r = append_text(reply, info->sender);
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        if (r >= 0)
                r = sd_bus_message_append(reply, "{sv}{sv}{sv}",
                                          "state", "s", sum.state,
                                          "arrival", "t", info->arrival,
                                          "size", "t", info->size);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'e', "sv");
        if (r >= 0)
                r = sd_bus_message_append(reply, "s", "recipients");
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'v', "a(ssuts)");
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', "(ssuts)");
        for (size_t i = 0; r >= 0 && i < info->n_rcpts; i++) {
                const QueueRcptInfo *rc = &info->rcpts[i];

                r = sd_bus_message_open_container(reply, 'r', "ssuts");
                if (r >= 0)
                        r = append_text(reply, rc->address);
                if (r >= 0)
                        r = sd_bus_message_append(reply, "sut", rc->state, rc->attempts, rc->next_attempt);
                if (r >= 0)
                        r = append_text(reply, rc->last_reply);
                if (r >= 0)
                        r = sd_bus_message_close_container(reply);
        }
        for (unsigned i = 0; r >= 0 && i < 4; i++)     /* array, variant, dict entry, dict */
                r = sd_bus_message_close_container(reply);
        return r;
}

static int method_show_message(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        Manager *m = userdata;
        uint64_t mid;
        int r;

        r = sd_bus_message_read(msg, "t", &mid);
        if (r < 0)
                return r;
        if (!m->queue)
                return sd_bus_error_set(error, BUS_ERROR_FAILED, "The queue is not running.");
        r = sd_bus_message_new_method_return(msg, &reply);
        if (r < 0)
                return r;
        r = queue_get(m->queue, mid, show_one, reply);
        if (r == -ENOENT)
                return sd_bus_error_setf(error, BUS_ERROR_NOT_FOUND, "Message MID %" PRIu64 " is not in the queue.", mid);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

static int method_flush_queue(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_free_ char *user = NULL;
        Manager *m = userdata;
        size_t n;
        int r;

        r = bus_check_admin(m, msg, error);
        if (r < 0)
                return r;
        if (!m->queue)
                return sd_bus_error_set(error, BUS_ERROR_FAILED, "The queue is not running.");
        n = queue_flush_count(m->queue);
        (void) bus_caller(msg, NULL, &user);
        log_info("Queue flushed by %s: %zu recipient(s) due now", user ?: "?", n);
        return sd_bus_reply_method_return(msg, "u", (uint32_t) MIN(n, (size_t) UINT32_MAX));
}

static int method_delete_message(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_free_ char *user = NULL;
        Manager *m = userdata;
        uint64_t mid;
        int r;

        r = sd_bus_message_read(msg, "t", &mid);
        if (r < 0)
                return r;
        r = bus_check_admin(m, msg, error);
        if (r < 0)
                return r;
        if (!m->queue)
                return sd_bus_error_set(error, BUS_ERROR_FAILED, "The queue is not running.");
        r = queue_delete(m->queue, mid);
        if (r == -ENOENT)
                return sd_bus_error_setf(error, BUS_ERROR_NOT_FOUND, "Message MID %" PRIu64 " is not in the queue.", mid);
        if (r == -EBUSY)
                return sd_bus_error_setf(error, BUS_ERROR_IN_USE,
                                         "Message MID %" PRIu64 " is being delivered right now; "
                                         "delete it after this delivery attempt.", mid);
        if (r < 0)
                return sd_bus_error_setf(error, BUS_ERROR_FAILED,
                                         "Cannot remove message MID %" PRIu64 " from the spool: %s.", mid, strerror(-r));
        (void) bus_caller(msg, NULL, &user);
        log_info("MID %" PRIu64 " deleted from the queue by %s", mid, user ?: "?");
        return sd_bus_reply_method_return(msg, NULL);
}

/* ---- org.tlsgw.Gateway1.Diagnostics: ListConnections ---- */

static int append_connection(sd_bus_message *reply, const SessionInfo *si, SockDiag *diag) {
        _cleanup_free_ char *ulp = NULL;
        int r;

        if (diag && si->local.ss_family != AF_UNSPEC) {
                r = sockdiag_ulp(diag, (const struct sockaddr *) &si->local,
                                 (const struct sockaddr *) &si->remote, &ulp);
                if (r < 0)
                        log_debug_errno(r, "ICID %" PRIu64 ": inet_diag lookup failed: %m", si->icid);
        }
        r = sd_bus_message_open_container(reply, 'r', "tsssqsssbbs");
        if (r < 0)
                return r;
        r = sd_bus_message_append(reply, "t", si->icid);
        if (r >= 0)
                r = append_text(reply, si->listener);
        if (r >= 0)
                r = append_text(reply, si->state);
        if (r >= 0)
                r = append_text(reply, si->peer);
        if (r >= 0)
                r = sd_bus_message_append(reply, "q", si->peer_port);
        if (r >= 0)
                r = append_text(reply, si->tls_protocol);
        if (r >= 0)
                r = append_text(reply, si->tls_cipher);
        if (r >= 0)
                r = append_text(reply, si->client_cn);
        if (r >= 0)
                r = sd_bus_message_append(reply, "bb", si->ktls_tx, si->ktls_rx);
        if (r >= 0)
                r = append_text(reply, ulp ?: "");
        if (r < 0)
                return r;
        return sd_bus_message_close_container(reply);
}

static void connections_collected(const SessionInfo *infos, size_t n, void *userdata) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *call = userdata, *reply = NULL;
        SockDiag *diag = NULL;
        int r;

        r = sockdiag_new(&diag);
        if (r < 0)
                log_debug_errno(r, "No inet_diag socket, connections listed without kernel ULP info: %m");

        r = sd_bus_message_new_method_return(call, &reply);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', "(tsssqsssbbs)");
        for (size_t i = 0; r >= 0 && i < n; i++)
                r = append_connection(reply, &infos[i], diag);
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        if (r >= 0)
                r = sd_bus_send(NULL, reply, NULL);
        if (r < 0) {
                log_debug_errno(r, "Cannot answer ListConnections: %m");
                (void) sd_bus_reply_method_errno(call, r, NULL);
        }
        sockdiag_free(diag);
}

static int method_list_connections(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        int r;

        /* Answered from connections_collected() once every worker replied. */
        r = worker_collect_sessions(m->workers, m->n_workers, connections_collected, sd_bus_message_ref(msg));
        if (r < 0) {
                sd_bus_message_unref(msg);
                return r;
        }
        return 1;
}

/* ---- org.tlsgw.Gateway1.Diagnostics: TlsVerify ---- */

typedef struct TlsProbe {
        Manager *manager;
        sd_bus_message *call;
        char *domain;
        TlsOutbound mode;
} TlsProbe;

static void tls_probe_free(TlsProbe *p) {
        if (!p)
                return;
        sd_bus_message_unref(p->call);
        free(p->domain);
        free(p);
}

static int append_entry_text(sd_bus_message *reply, const char *key, const char *value) {
        int r;

        r = sd_bus_message_open_container(reply, 'e', "sv");
        if (r >= 0)
                r = sd_bus_message_append(reply, "s", key);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'v', "s");
        if (r >= 0)
                r = append_text(reply, value ?: "");
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        return r;
}

static int append_entry_strv(sd_bus_message *reply, const char *key, char * const *l) {
        int r;

        r = sd_bus_message_open_container(reply, 'e', "sv");
        if (r >= 0)
                r = sd_bus_message_append(reply, "s", key);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'v', "as");
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', "s");
        for (size_t i = 0; r >= 0 && l && l[i]; i++)
                r = append_text(reply, l[i]);
        for (unsigned i = 0; r >= 0 && i < 3; i++)
                r = sd_bus_message_close_container(reply);
        return r;
}

static int append_entry_bool(sd_bus_message *reply, const char *key, bool b) {
        return sd_bus_message_append(reply, "{sv}", key, "b", (int) b);
}

static int tls_probe_reply(TlsProbe *p, const DeliveryJob *job) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const DeliveryProbe *res = &job->probe_result;
        int r;

        r = sd_bus_message_new_method_return(p->call, &reply);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', "{sv}");
        if (r >= 0)
                r = append_entry_text(reply, "domain", p->domain);
        if (r >= 0)
                r = append_entry_text(reply, "mode", tls_outbound_to_string(p->mode));
        if (r >= 0)
                r = append_entry_text(reply, "host", res->host);
        if (r >= 0)
                r = append_entry_text(reply, "address", res->address);
        if (r >= 0)
                r = sd_bus_message_append(reply, "{sv}", "port", "q", res->port);
        if (r >= 0)
                r = append_entry_bool(reply, "starttls", res->starttls);
        if (r >= 0)
                r = append_entry_bool(reply, "tls", res->tls);
        if (r >= 0)
                r = append_entry_text(reply, "protocol", res->protocol);
        if (r >= 0)
                r = append_entry_text(reply, "cipher", res->cipher);
        if (r >= 0)
                r = append_entry_bool(reply, "verified", res->verified);
        if (r >= 0)
                r = append_entry_text(reply, "verify_error", res->verify_error);
        if (r >= 0)
                r = append_entry_bool(reply, "name_match", res->name_match);
        if (r >= 0)
                r = append_entry_strv(reply, "names", res->names);
        if (r >= 0)
                r = append_entry_strv(reply, "chain", res->chain);
        if (r >= 0)
                r = append_entry_bool(reply, "ktls_tx", job->ktls_tx);
        if (r >= 0)
                r = append_entry_bool(reply, "ktls_rx", job->ktls_rx);
        if (r >= 0)
                r = append_entry_text(reply, "error", res->error);
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

/* Main loop: the probe is back from its worker. */
static void tls_probe_done(DeliveryJob *job) {
        TlsProbe *p = job->userdata;
        int r;

        r = tls_probe_reply(p, job);
        if (r < 0) {
                log_debug_errno(r, "Cannot answer TlsVerify for %s: %m", p->domain);
                (void) sd_bus_reply_method_errno(p->call, r, NULL);
        }
        job->userdata = NULL;
        delivery_job_free(job);
        tls_probe_free(p);
}

/* Answers the call with a named error; 0 once answered. */
static int tls_probe_fail(TlsProbe *p, const char *name, const char *fmt, ...) _printf_(3, 4);
static int tls_probe_fail(TlsProbe *p, const char *name, const char *fmt, ...) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *text = NULL, *clean = NULL;
        va_list ap;
        int r;

        va_start(ap, fmt);
        r = vasprintf(&text, fmt, ap);
        va_end(ap);
        if (r < 0)
                return sd_bus_reply_method_errno(p->call, -ENOMEM, NULL);
        clean = bus_text(text);
        (void) sd_bus_error_set(&error, name, clean ?: "TLS verification failed.");
        r = sd_bus_reply_method_error(p->call, &error);
        return r < 0 ? r : 0;   /* answered */
}

/* A client context for a destination whose mode is none: tls verify
 * always tries TLS, with the settings that destination would use. */
static int tls_probe_context(Manager *m, const DestinationConfig *d, SSL_CTX **ret, char **ret_why) {
        const TlsClientConfig *tc = &m->config->tls_client;
        _cleanup_(certificate_unrefp) Certificate *client = NULL;
        TlsSettings s = {
                .min_version = d->tls_min_version ?: tc->min_version,
                .ciphers = tc->ciphers,
                .ciphersuites = tc->ciphersuites,
                .groups = tc->groups,
                .ktls = d->ktls,
        };
        int r;

        if (tc->certificate && m->certstore) {
                r = certstore_load(m->certstore, tc->certificate, &client, ret_why);
                if (r < 0)
                        return r;
        }
        return tls_client_ctx_new(&s, d->ca_file ?: tc->ca_file, client, ret, ret_why);
}

static int tls_probe_start(TlsProbe *p, RouteResult *res) {
        Manager *m = p->manager;
        const DestinationConfig *d = config_find_destination(m->config, p->domain);
        _cleanup_free_ char *why = NULL;
        DeliveryJob *job;
        Worker *w;
        int r;

        job = calloc(1, sizeof *job);
        if (!job)
                return -ENOMEM;
        job->probe = true;
        job->probe_done = tls_probe_done;
        job->dcid = spool_next_id(m->spool, SPOOL_ID_DCID);
        job->domain = strdup(p->domain);
        job->helo_name = strdup(m->config->hostname ?: "localhost");
        job->targets = TAKE_PTR(res->targets);
        job->n_targets = res->n_targets;
        res->n_targets = 0;
        job->connect_timeout = m->config->queue.connect_timeout;
        job->command_timeout = m->config->queue.command_timeout;
        job->data_timeout = m->config->queue.data_timeout;
        if (!job->domain || !job->helo_name) {
                delivery_job_free(job);
                return -ENOMEM;
        }

        /* The destination's mode; "none" still tries TLS, verifying. */
        job->tls_mode = d->tls == TLS_OUT_NONE ? TLS_OUT_PREFERRED_VERIFY : d->tls;
        p->mode = job->tls_mode;
        if (d->tls != TLS_OUT_NONE)
                job->tls_ctx = tls_contexts_destination(m->tls, m->config, d);
        if (!job->tls_ctx) {
                r = tls_probe_context(m, d, &job->tls_ctx, &why);
                if (r < 0) {
                        delivery_job_free(job);
                        return tls_probe_fail(p, BUS_ERROR_FAILED, "Cannot set up TLS for %s: %s.",
                                              p->domain, why ?: strerror(-r));
                }
        }

        if (m->n_workers == 0) {
                delivery_job_free(job);
                return tls_probe_fail(p, BUS_ERROR_FAILED, "No worker is running to verify %s.", p->domain);
        }
        w = m->workers[job->dcid % m->n_workers];
        job->userdata = p;
        r = worker_add_job(w, job);
        if (r < 0) {
                job->userdata = NULL;
                delivery_job_free(job);
                return r;
        }
        return 1;       /* p now belongs to the job */
}

static void tls_probe_route_done(int error, const char *errtext, RouteResult *result, void *userdata) {
        TlsProbe *p = userdata;
        int r;

        if (error < 0)
                r = tls_probe_fail(p, BUS_ERROR_FAILED, "No route to %s: %s.", p->domain,
                                   errtext ?: strerror(-error));
        else if (!result)
                r = tls_probe_fail(p, BUS_ERROR_FAILED, "No route to %s.", p->domain);
        else if (result->kind == ROUTE_MAILDIR)
                r = tls_probe_fail(p, BUS_ERROR_FAILED, "mail for %s is delivered locally (maildir)", p->domain);
        else if (result->n_targets == 0)
                r = tls_probe_fail(p, BUS_ERROR_FAILED, "No host to connect to for %s.", p->domain);
        else {
                r = tls_probe_start(p, result);
                if (r > 0)
                        p = NULL;
                else if (r < 0)
                        (void) sd_bus_reply_method_errno(p->call, r, NULL);
        }
        if (result)
                route_result_done(result);
        if (r < 0)
                log_debug_errno(r, "TlsVerify: %m");
        tls_probe_free(p);
}

static int method_tls_verify(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_free_ char *user = NULL;
        Manager *m = userdata;
        ResolverQuery *query = NULL;
        const char *domain;
        TlsProbe *p;
        int r;

        r = sd_bus_message_read(msg, "s", &domain);
        if (r < 0)
                return r;
        /* It connects out on the gateway's behalf: administrators only. */
        r = bus_check_admin(m, msg, error);
        if (r < 0)
                return r;
        if (!domain_is_valid(domain))
                return sd_bus_error_set(error, BUS_ERROR_INVALID,
                                        "Invalid domain: expected a host name such as example.com.");
        if (!m->resolver || !m->config)
                return sd_bus_error_set(error, BUS_ERROR_FAILED, "The gateway is not running.");

        p = calloc(1, sizeof *p);
        if (!p)
                return -ENOMEM;
        p->manager = m;
        p->call = sd_bus_message_ref(msg);
        p->domain = strdup(domain);
        if (!p->domain) {
                tls_probe_free(p);
                return -ENOMEM;
        }
        for (char *c = p->domain; *c; c++)
                if (*c >= 'A' && *c <= 'Z')
                        *c = (char) (*c - 'A' + 'a');

        (void) bus_caller(msg, NULL, &user);
        log_info("TLS verification of %s requested by %s", p->domain, user ?: "?");

        /* The callback may run before this returns (static routes). */
        r = route_resolve(m->resolver, m->config, p->domain, tls_probe_route_done, p, &query);
        if (r < 0) {
                tls_probe_free(p);
                if (r == -ENXIO)
                        return sd_bus_error_setf(error, BUS_ERROR_FAILED, "No route to %s.", domain);
                return r;
        }
        return 1;
}

/* ---- registration ---- */

static const sd_bus_vtable queue_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_METHOD_WITH_ARGS("ListQueue",
                                SD_BUS_NO_ARGS,
                                SD_BUS_RESULT("a(tsstuss)", messages),
                                method_list_queue, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("ShowMessage",
                                SD_BUS_ARGS("t", mid),
                                SD_BUS_RESULT("a{sv}", message),
                                method_show_message, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("FlushQueue",
                                SD_BUS_NO_ARGS,
                                SD_BUS_RESULT("u", count),
                                method_flush_queue, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("DeleteMessage",
                                SD_BUS_ARGS("t", mid),
                                SD_BUS_NO_RESULT,
                                method_delete_message, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END,
};

static const sd_bus_vtable diagnostics_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_METHOD_WITH_ARGS("ListConnections",
                                SD_BUS_NO_ARGS,
                                SD_BUS_RESULT("a(tsssqsssbbs)", connections),
                                method_list_connections, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("TlsVerify",
                                SD_BUS_ARGS("s", domain),
                                SD_BUS_RESULT("a{sv}", result),
                                method_tls_verify, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END,
};

int bus_queue_register(Manager *m, sd_bus *bus) {
        int r;

        r = sd_bus_add_object_vtable(bus, NULL, BUS_PATH, BUS_IFACE_QUEUE, queue_vtable, m);
        if (r < 0)
                return r;
        return sd_bus_add_object_vtable(bus, NULL, BUS_PATH, BUS_IFACE_DIAGNOSTICS, diagnostics_vtable, m);
}
